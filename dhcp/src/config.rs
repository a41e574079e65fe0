//! Operator configuration and its pre-encoded option form.

use std::net::Ipv4Addr;

use crate::error::ConfigError;
use crate::names;
use crate::wire::opt;

/// What the server hands to its one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcpv4Config {
    /// Server identifier (option 54): the gateway address the guest sees.
    /// Replies must be sent from this address.
    pub server_ip: Ipv4Addr,
    /// The one address this server hands out.
    pub guest_ip: Ipv4Addr,
    /// Guest subnet prefix length, 1..=32.
    pub prefix_len: u8,
    /// Default gateway (option 3, and option 121 when off-subnet).
    pub router: Ipv4Addr,
    /// Option 6; omitted when empty.
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain_name: Option<String>,
    /// Option 119, RFC 3397.
    pub search: Vec<String>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 51, in seconds; `u32::MAX` means infinite (RFC 2132 9.2).
    /// T1 (58) and T2 (59) are derived as 1/2 and 7/8 of it.
    pub lease_secs: u32,
    /// Option 12 sent to the guest.
    pub hostname: Option<String>,
    /// What KubeVirt's `dhcpOptions` add: NTP, TFTP, boot file, private options.
    pub extra: ExtraOptions,
}

/// Options an operator adds for network boot and site-specific clients (KubeVirt's
/// `dhcpOptions`). Sent when the client asks for them, and after everything else otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraOptions {
    /// Option 42: NTP servers.
    pub ntp: Vec<Ipv4Addr>,
    /// Option 66: TFTP server name.
    pub tftp_server: Option<String>,
    /// Option 67: boot file name.
    pub boot_file: Option<String>,
    /// Option 81 (RFC 4702): the guest's fully qualified name, in wire format, with the N flag
    /// (this server updates no DNS records).
    pub fqdn: Option<String>,
    /// Site-specific options 224..=254 (RFC 2132 section 2), each code at most once, with its
    /// value as given (1..=255 bytes).
    pub private: Vec<(u8, Vec<u8>)>,
}

/// The site-specific option codes (RFC 2132 section 2; 255 is END).
pub const PRIVATE_OPTIONS: std::ops::RangeInclusive<u8> = 224..=254;

impl Dhcpv4Config {
    /// Checks everything [`crate::Dhcpv4Server::try_new`] checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match compile(self).1 {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The subnet mask sent in option 1. Prefix lengths outside 1..=32 are
    /// clamped, as [`crate::Dhcpv4Server::new`] does.
    pub fn subnet_mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len))
    }

    /// Whether the router is off the guest's subnet, in which case the guest
    /// needs an explicit host route to reach it (option 121).
    pub fn router_off_subnet(&self) -> bool {
        let mask = mask_bits(self.prefix_len);
        u32::from(self.router) & mask != u32::from(self.guest_ip) & mask
    }
}

fn mask_bits(prefix_len: u8) -> u32 {
    let prefix = u32::from(prefix_len.clamp(1, 32));
    u32::MAX << (32 - prefix)
}

/// A configuration option pre-encoded at configuration time, so the
/// per-packet path is a copy.
#[derive(Debug, Clone)]
pub(crate) struct ConfigOption {
    pub code: u8,
    /// Sent first, before anything the client asked for, so a tight size
    /// limit never costs the guest its address or route.
    pub required: bool,
    pub data: Vec<u8>,
}

/// The configuration in the form the reply path consumes.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub server_ip: Ipv4Addr,
    pub guest_ip: Ipv4Addr,
    pub lease_secs: u32,
    /// In default emission order; required ones first.
    pub options: Vec<ConfigOption>,
}

impl Compiled {
    pub fn option(&self, code: u8) -> Option<&ConfigOption> {
        self.options.iter().find(|o| o.code == code)
    }
}

fn note(slot: &mut Option<ConfigError>, err: ConfigError) {
    slot.get_or_insert(err);
}

fn unusable_unicast(addr: Ipv4Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("unspecified")
    } else if addr.is_broadcast() {
        Some("limited broadcast")
    } else if addr.is_multicast() {
        Some("multicast")
    } else if addr.is_loopback() {
        Some("loopback")
    } else {
        None
    }
}

/// Builds the option set leniently and reports the first problem found.
///
/// Leniency (rather than refusing) lets `new`/`set_config` keep their
/// infallible signatures: a half-right configuration still gets the guest
/// an address, and the strict entry points exist for callers who prefer to
/// fail loudly.
pub(crate) fn compile(config: &Dhcpv4Config) -> (Compiled, Option<ConfigError>) {
    let mut err = None;

    if !(1..=32).contains(&config.prefix_len) {
        note(&mut err, ConfigError::PrefixLen(config.prefix_len));
    }
    let mask = mask_bits(config.prefix_len);
    let guest = u32::from(config.guest_ip);

    if let Some(reason) = unusable_unicast(config.guest_ip) {
        note(
            &mut err,
            ConfigError::GuestIp {
                addr: config.guest_ip,
                reason,
            },
        );
    } else if config.prefix_len <= 30 && guest & !mask == 0 {
        note(
            &mut err,
            ConfigError::GuestIp {
                addr: config.guest_ip,
                reason: "is the subnet's network address",
            },
        );
    } else if config.prefix_len <= 30 && guest & !mask == !mask {
        note(
            &mut err,
            ConfigError::GuestIp {
                addr: config.guest_ip,
                reason: "is the subnet's broadcast address",
            },
        );
    }
    if let Some(reason) = unusable_unicast(config.server_ip) {
        note(
            &mut err,
            ConfigError::ServerIp {
                addr: config.server_ip,
                reason,
            },
        );
    } else if config.server_ip == config.guest_ip {
        note(
            &mut err,
            ConfigError::ServerIp {
                addr: config.server_ip,
                reason: "equals the guest address",
            },
        );
    }
    if config.lease_secs == 0 {
        note(&mut err, ConfigError::ZeroLease);
    }

    let mut options = vec![ConfigOption {
        code: opt::SUBNET_MASK,
        required: true,
        data: mask.to_be_bytes().to_vec(),
    }];

    let router_reason = unusable_unicast(config.router)
        .or_else(|| (config.router == config.guest_ip).then_some("equals the guest address"));
    match router_reason {
        Some(reason) => note(
            &mut err,
            ConfigError::Router {
                addr: config.router,
                reason,
            },
        ),
        None => {
            // Sent even alongside 121: RFC 3442 clients ignore it then, and
            // clients without 121 support still get a default route.
            options.push(ConfigOption {
                code: opt::ROUTER,
                required: true,
                data: config.router.octets().to_vec(),
            });
            if config.router_off_subnet() {
                options.push(ConfigOption {
                    code: opt::CLASSLESS_ROUTES,
                    required: true,
                    data: classless_routes(config.router),
                });
            }
        }
    }

    if !config.dns.is_empty() {
        let mut data = Vec::with_capacity(config.dns.len() * 4);
        for &server in &config.dns {
            if unusable_unicast(server).is_some() {
                note(&mut err, ConfigError::DnsServer(server));
                continue;
            }
            data.extend_from_slice(&server.octets());
        }
        if !data.is_empty() {
            options.push(ConfigOption {
                code: opt::DNS,
                required: false,
                data,
            });
        }
    }

    if let Some(name) = &config.domain_name {
        match names::split_labels(name) {
            Ok(_) => options.push(ConfigOption {
                code: opt::DOMAIN_NAME,
                required: false,
                data: name.as_bytes().to_vec(),
            }),
            Err(reason) => note(
                &mut err,
                ConfigError::DomainName {
                    name: name.clone(),
                    reason,
                },
            ),
        }
    }

    let (search, search_err) = names::encode_search_list(&config.search);
    if let Some((index, reason)) = search_err {
        let name = config.search.get(index).cloned().unwrap_or_default();
        note(&mut err, ConfigError::SearchDomain { name, reason });
    }
    if !search.is_empty() {
        options.push(ConfigOption {
            code: opt::DOMAIN_SEARCH,
            required: false,
            data: search,
        });
    }

    if let Some(mtu) = config.mtu {
        if mtu < 68 {
            note(&mut err, ConfigError::Mtu(mtu));
        } else {
            options.push(ConfigOption {
                code: opt::MTU,
                required: false,
                data: mtu.to_be_bytes().to_vec(),
            });
        }
    }

    if let Some(name) = &config.hostname {
        // Clients tend to feed option 12 straight to sethostname(2), which
        // accepts at most 64 bytes on Linux; a dotted FQDN is tolerated.
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > 64 {
            Some("longer than 64 bytes")
        } else if name.bytes().any(|b| b == 0) {
            Some("contains NUL")
        } else {
            None
        };
        match reason {
            Some(reason) => note(
                &mut err,
                ConfigError::Hostname {
                    name: name.clone(),
                    reason,
                },
            ),
            None => options.push(ConfigOption {
                code: opt::HOSTNAME,
                required: false,
                data: name.as_bytes().to_vec(),
            }),
        }
    }

    compile_extra(&config.extra, &mut options, &mut err);

    let compiled = Compiled {
        server_ip: config.server_ip,
        guest_ip: config.guest_ip,
        lease_secs: config.lease_secs,
        options,
    };
    (compiled, err)
}

/// Options 42, 66, 67 and 224..=254 from `extra`, each checked.
fn compile_extra(
    extra: &ExtraOptions,
    options: &mut Vec<ConfigOption>,
    err: &mut Option<ConfigError>,
) {
    let mut push = |code: u8, data: Vec<u8>, err: &mut Option<ConfigError>| {
        let reason = if data.is_empty() {
            Some("empty")
        } else if data.len() > 255 {
            Some("longer than 255 bytes")
        } else if options.iter().any(|o| o.code == code) {
            Some("given twice")
        } else {
            None
        };
        match reason {
            Some(reason) => note(err, ConfigError::Option { code, reason }),
            None => options.push(ConfigOption {
                code,
                required: false,
                data,
            }),
        }
    };
    if !extra.ntp.is_empty() {
        let mut data = Vec::with_capacity(extra.ntp.len() * 4);
        for &server in &extra.ntp {
            if unusable_unicast(server).is_some() {
                note(err, ConfigError::NtpServer(server));
                continue;
            }
            data.extend_from_slice(&server.octets());
        }
        push(opt::NTP_SERVERS, data, err);
    }
    if let Some(name) = &extra.tftp_server {
        push(opt::TFTP_SERVER, name.as_bytes().to_vec(), err);
    }
    if let Some(name) = &extra.boot_file {
        push(opt::BOOT_FILE, name.as_bytes().to_vec(), err);
    }
    if let Some(name) = &extra.fqdn {
        // Flags N and E (RFC 4702 2.1), then RCODE1 and RCODE2, which a server sets to 255.
        let mut data = vec![0x0c, 255, 255];
        match names::write_uncompressed(name, |b| data.extend_from_slice(b)) {
            Ok(_) => push(opt::CLIENT_FQDN, data, err),
            Err(reason) => note(
                err,
                ConfigError::Option {
                    code: opt::CLIENT_FQDN,
                    reason,
                },
            ),
        }
    }
    for (code, value) in &extra.private {
        if !PRIVATE_OPTIONS.contains(code) {
            note(
                err,
                ConfigError::Option {
                    code: *code,
                    reason: "not a site-specific option (224..=254)",
                },
            );
            continue;
        }
        push(*code, value.clone(), err);
    }
}

/// RFC 3442 routes for an off-subnet router: a host route making the
/// router on-link (gateway 0.0.0.0), then the default route through it.
/// Order matters to some clients, which install routes as listed and
/// cannot add a route via a gateway they cannot yet reach.
fn classless_routes(router: Ipv4Addr) -> Vec<u8> {
    let mut data = Vec::with_capacity(14);
    push_route(&mut data, router, 32, Ipv4Addr::UNSPECIFIED);
    push_route(&mut data, Ipv4Addr::UNSPECIFIED, 0, router);
    data
}

/// One RFC 3442 entry: width, the destination's significant octets only,
/// then the gateway.
fn push_route(out: &mut Vec<u8>, dest: Ipv4Addr, width: u8, gateway: Ipv4Addr) {
    let width = width.min(32);
    out.push(width);
    let significant = usize::from(width).div_ceil(8);
    out.extend(dest.octets().iter().take(significant));
    out.extend_from_slice(&gateway.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Dhcpv4Config {
        Dhcpv4Config {
            server_ip: Ipv4Addr::new(10, 0, 2, 2),
            guest_ip: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            router: Ipv4Addr::new(10, 0, 2, 2),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain_name: Some("example.internal".into()),
            search: vec!["example.internal".into()],
            mtu: Some(1500),
            lease_secs: 3600,
            hostname: Some("guest".into()),
            extra: ExtraOptions::default(),
        }
    }

    #[test]
    fn base_config_is_valid() {
        assert_eq!(base().validate(), Ok(()));
    }

    #[test]
    fn masks() {
        let mut c = base();
        for (prefix, mask) in [
            (1, [128, 0, 0, 0]),
            (8, [255, 0, 0, 0]),
            (24, [255, 255, 255, 0]),
            (25, [255, 255, 255, 128]),
            (32, [255, 255, 255, 255]),
            // Clamped.
            (0, [128, 0, 0, 0]),
            (40, [255, 255, 255, 255]),
        ] {
            c.prefix_len = prefix;
            assert_eq!(c.subnet_mask(), Ipv4Addr::from(mask), "prefix {prefix}");
        }
    }

    #[test]
    fn route_encoding_uses_significant_octets_only() {
        let mut v = Vec::new();
        push_route(
            &mut v,
            Ipv4Addr::new(10, 17, 0, 0),
            16,
            Ipv4Addr::new(10, 0, 0, 1),
        );
        push_route(
            &mut v,
            Ipv4Addr::new(10, 27, 129, 0),
            24,
            Ipv4Addr::new(10, 0, 0, 1),
        );
        push_route(
            &mut v,
            Ipv4Addr::new(10, 229, 0, 128),
            25,
            Ipv4Addr::new(10, 0, 0, 1),
        );
        // Examples from the table in RFC 3442 section 2.
        assert_eq!(
            v,
            [
                16, 10, 17, 10, 0, 0, 1, //
                24, 10, 27, 129, 10, 0, 0, 1, //
                25, 10, 229, 0, 128, 10, 0, 0, 1
            ]
        );
    }

    #[test]
    fn each_problem_is_reported() {
        type Case = (Box<dyn Fn(&mut Dhcpv4Config)>, fn(&ConfigError) -> bool);
        let cases: Vec<Case> = vec![
            (Box::new(|c| c.prefix_len = 0), |e| {
                matches!(e, ConfigError::PrefixLen(0))
            }),
            (Box::new(|c| c.prefix_len = 33), |e| {
                matches!(e, ConfigError::PrefixLen(33))
            }),
            (Box::new(|c| c.guest_ip = Ipv4Addr::UNSPECIFIED), |e| {
                matches!(e, ConfigError::GuestIp { .. })
            }),
            (Box::new(|c| c.guest_ip = Ipv4Addr::new(10, 0, 2, 0)), |e| {
                matches!(e, ConfigError::GuestIp { .. })
            }),
            (
                Box::new(|c| c.guest_ip = Ipv4Addr::new(10, 0, 2, 255)),
                |e| matches!(e, ConfigError::GuestIp { .. }),
            ),
            (Box::new(|c| c.server_ip = c.guest_ip), |e| {
                matches!(e, ConfigError::ServerIp { .. })
            }),
            (Box::new(|c| c.server_ip = Ipv4Addr::BROADCAST), |e| {
                matches!(e, ConfigError::ServerIp { .. })
            }),
            (Box::new(|c| c.router = Ipv4Addr::UNSPECIFIED), |e| {
                matches!(e, ConfigError::Router { .. })
            }),
            (Box::new(|c| c.dns.push(Ipv4Addr::new(224, 0, 0, 1))), |e| {
                matches!(e, ConfigError::DnsServer(_))
            }),
            (Box::new(|c| c.lease_secs = 0), |e| {
                matches!(e, ConfigError::ZeroLease)
            }),
            (Box::new(|c| c.mtu = Some(67)), |e| {
                matches!(e, ConfigError::Mtu(67))
            }),
            (Box::new(|c| c.domain_name = Some("a..b".into())), |e| {
                matches!(e, ConfigError::DomainName { .. })
            }),
            (Box::new(|c| c.search.push("".into())), |e| {
                matches!(e, ConfigError::SearchDomain { .. })
            }),
            (Box::new(|c| c.hostname = Some("".into())), |e| {
                matches!(e, ConfigError::Hostname { .. })
            }),
            (Box::new(|c| c.hostname = Some("h".repeat(65))), |e| {
                matches!(e, ConfigError::Hostname { .. })
            }),
        ];
        for (i, (mutate, check)) in cases.iter().enumerate() {
            let mut c = base();
            mutate(&mut c);
            let err = c
                .validate()
                .expect_err(&format!("case {i} should be rejected"));
            assert!(check(&err), "case {i}: unexpected {err:?}");
        }
    }

    #[test]
    fn slash_32_and_31_guests_are_fine() {
        let mut c = base();
        c.prefix_len = 32;
        c.guest_ip = Ipv4Addr::new(10, 0, 2, 0);
        assert_eq!(c.validate(), Ok(()));
        c.prefix_len = 31;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn lenient_compile_drops_only_the_bad_parts() {
        let mut c = base();
        c.mtu = Some(10);
        c.hostname = Some(String::new());
        let (compiled, err) = compile(&c);
        assert!(err.is_some());
        let codes: Vec<u8> = compiled.options.iter().map(|o| o.code).collect();
        assert_eq!(
            codes,
            [
                opt::SUBNET_MASK,
                opt::ROUTER,
                opt::DNS,
                opt::DOMAIN_NAME,
                opt::DOMAIN_SEARCH
            ]
        );
    }
}
