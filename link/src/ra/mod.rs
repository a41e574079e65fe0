//! Router advertisements for the one guest (RFC 4861), carrying DNS
//! configuration (RFC 8106): packets in, packets out, no I/O.
//!
//! # Theory of operation
//!
//! podwire is the guest's only router, so there is no router discovery to
//! speak of: the guest solicits, podwire advertises, and the
//! advertisement is the whole of the guest's IPv6 link configuration
//! short of an address from DHCPv6. It tells the guest:
//!
//! * **Who the router is.** The source address (podwire's link-local,
//!   [`router_link_local`]), a source link-layer address option with
//!   [`RaConfig::router_mac`] so the guest need not resolve it, and a
//!   router lifetime; a non-zero lifetime makes podwire the default
//!   router.
//! * **The prefix.** One prefix information option with the L (on-link)
//!   and A (SLAAC) flags from the configuration. A is sent only for a /64:
//!   SLAAC on Ethernet forms 64-bit interface identifiers, so hosts ignore
//!   it on any other length, and sending it would only mislead someone
//!   reading a capture.
//! * **Whether to run DHCPv6.** M asks for addresses from DHCPv6 (the
//!   `podwire_dhcp::Dhcpv6Server`), O for other configuration only.
//! * **The MTU** and **DNS servers and search domains** (RDNSS and
//!   DNSSL), the latter so a guest without a DHCPv6 client still resolves
//!   names. Their lifetime is 3 × [`RaConfig::max_interval_secs`], the
//!   RFC 8106 5.1 default, so one lost advertisement does not expire them.
//!
//! [`router_advertisement`] writes the complete ICMPv6 message, checksum
//! included, so the caller only prepends IPv6 and Ethernet headers. It
//! takes a configuration rather than a compiled form because
//! advertisements are rare (startup, each solicitation, every few
//! minutes); it still allocates nothing.
//!
//! The configuration is handled like the DHCPv4 one: [`RaConfig::validate`]
//! is strict and reports the first problem, while [`router_advertisement`]
//! is lenient and leaves out what cannot be encoded (an unusable prefix
//! drops the prefix option, a bad DNS server or search name drops that
//! entry, an MTU below 1280 drops the MTU option, a preferred lifetime
//! above the valid one is clamped). RDNSS and DNSSL are written whole or
//! not at all: when `out` is short they go first, so a tight buffer costs
//! name resolution before it costs the default route or the prefix.
//! Validation checks the full advertisement fits the link.
//!
//! Solicitations come from the guest, so [`parse_router_solicitation`]
//! checks everything RFC 4861 6.1.1 asks before the caller answers, and
//! [`is_router_solicitation`] is its structural part for callers that have
//! already checked hop limit and checksum.

use std::net::Ipv6Addr;

use podwire_dhcp::buf::Writer;
use podwire_dhcp::names::{self, DomainName};
use smoltcp::time::Duration as SmolDuration;
use smoltcp::wire::{
    EthernetAddress, Icmpv6Packet, NdiscPrefixInfoFlags, NdiscPrefixInformation, NdiscRepr,
    NdiscRouterFlags,
};

mod error;
pub use error::{RaConfigError, RaError, RsError};

/// ff02::1, the destination of unsolicited advertisements and of answers
/// to solicitations from the unspecified address.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ff02::2, where guests send router solicitations.
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// IPv6 next header value of ICMPv6.
pub const ICMPV6_NEXT_HEADER: u8 = 58;
/// Hop limit of every neighbour discovery packet, and the only one a
/// receiver accepts (RFC 4861 6.1).
pub const ND_HOP_LIMIT: u8 = 255;

const TYPE_RS: u8 = 133;

/// Option types (RFC 4861 4.6, RFC 8106 5).
mod opt {
    pub const SOURCE_LL: u8 = 1;
    pub const RDNSS: u8 = 25;
    pub const DNSSL: u8 = 31;
}

const RS_HEADER_LEN: usize = 8;
/// Option lengths count 8-byte units.
const UNIT: usize = 8;
/// Option length is one byte of units.
const MAX_OPTION_LEN: usize = 255 * UNIT;
/// RDNSS length is 1 + 2 per address, in one byte.
const MAX_RDNSS_SERVERS: usize = 127;
/// Type, length, reserved and lifetime of RDNSS and DNSSL.
const DNS_OPTION_HEADER: usize = 8;

/// AdvCurHopLimit: the value from the IANA assigned numbers (RFC 4861
/// 6.2.1), what guests use anyway.
const CUR_HOP_LIMIT: u8 = 64;

const MAX_ROUTER_LIFETIME: u16 = 9000;
const IPV6_MIN_MTU: u32 = 1280;
const IPV6_HEADER_LEN: usize = 40;
const MIN_MAX_INTERVAL: u32 = 4;
const MAX_MAX_INTERVAL: u32 = 1800;

/// What podwire advertises as the guest's router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaConfig {
    /// podwire's MAC as the guest sees it: the source link-layer address
    /// option. The advertisement's source should be
    /// [`router_link_local`] of it.
    pub router_mac: [u8; 6],
    /// The guest's prefix. Bits past `prefix_len` are sent as zero.
    pub prefix: Ipv6Addr,
    /// 1..=128.
    pub prefix_len: u8,
    /// The L flag: addresses in the prefix are on-link, so the guest
    /// resolves them with neighbour solicitations instead of sending to
    /// the router. podwire answers those either way, so this mostly
    /// decides whether the guest sees the prefix as a subnet.
    pub on_link: bool,
    /// The A flag (SLAAC). Sent only when `prefix_len` is 64.
    pub autonomous: bool,
    /// The M flag: get addresses from DHCPv6.
    pub managed: bool,
    /// The O flag: get other configuration (DNS) from DHCPv6.
    pub other: bool,
    /// MTU option; omitted when `None` or below 1280.
    pub mtu: Option<u32>,
    /// RDNSS (option 25). Link-local servers are allowed.
    pub dns: Vec<Ipv6Addr>,
    /// DNSSL (option 31).
    pub search: Vec<String>,
    /// Seconds the guest keeps podwire as default router, at most 9000;
    /// 0 means "not a default router" (the prefix is still configured).
    pub router_lifetime_secs: u16,
    /// Prefix valid lifetime in seconds; `u32::MAX` is infinite.
    pub valid_lifetime: u32,
    /// Prefix preferred lifetime in seconds, at most `valid_lifetime`.
    pub preferred_lifetime: u32,
    /// MaxRtrAdvInterval, 4..=1800: the caller sends an unsolicited
    /// advertisement at least this often. RDNSS and DNSSL lifetimes are
    /// three times this.
    pub max_interval_secs: u32,
}

impl RaConfig {
    /// A configuration with RFC 4861 6.2.1 defaults: on-link, SLAAC if the
    /// prefix is a /64, no DHCPv6 flags, no MTU or DNS options, router
    /// lifetime 1800 s, prefix lifetimes 30 days valid and 7 days
    /// preferred, advertisements at least every 600 s.
    pub fn new(router_mac: [u8; 6], prefix: Ipv6Addr, prefix_len: u8) -> Self {
        Self {
            router_mac,
            prefix,
            prefix_len,
            on_link: true,
            autonomous: prefix_len == 64,
            managed: false,
            other: false,
            mtu: None,
            dns: Vec::new(),
            search: Vec::new(),
            router_lifetime_secs: 1800,
            valid_lifetime: 2_592_000,
            preferred_lifetime: 604_800,
            max_interval_secs: 600,
        }
    }

    /// Lifetime of the RDNSS and DNSSL options: 3 × the maximum interval
    /// (clamped to its legal range).
    pub fn dns_lifetime(&self) -> u32 {
        3 * self
            .max_interval_secs
            .clamp(MIN_MAX_INTERVAL, MAX_MAX_INTERVAL)
    }

    /// Checks that [`router_advertisement`] can encode everything and that
    /// the result fits in one packet on a link of [`Self::mtu`] (1280 if
    /// unset).
    pub fn validate(&self) -> Result<(), RaConfigError> {
        let mac = self.router_mac;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(RaConfigError::RouterMac(mac));
        }
        if !(1..=128).contains(&self.prefix_len) {
            return Err(RaConfigError::PrefixLen(self.prefix_len));
        }
        if let Some(reason) = prefix_problem(self.prefix, self.prefix_len) {
            return Err(RaConfigError::Prefix {
                prefix: self.prefix,
                reason,
            });
        }
        if self.autonomous && self.prefix_len != 64 {
            return Err(RaConfigError::AutonomousNeeds64(self.prefix_len));
        }
        if self.preferred_lifetime > self.valid_lifetime {
            return Err(RaConfigError::Lifetimes {
                preferred: self.preferred_lifetime,
                valid: self.valid_lifetime,
            });
        }
        if let Some(mtu) = self.mtu.filter(|&m| m < IPV6_MIN_MTU) {
            return Err(RaConfigError::Mtu(mtu));
        }
        if self.router_lifetime_secs > MAX_ROUTER_LIFETIME {
            return Err(RaConfigError::RouterLifetime(self.router_lifetime_secs));
        }
        if !(MIN_MAX_INTERVAL..=MAX_MAX_INTERVAL).contains(&self.max_interval_secs) {
            return Err(RaConfigError::MaxInterval(self.max_interval_secs));
        }
        if let Some(&server) = self.dns.iter().find(|&&a| !usable_dns_server(a)) {
            return Err(RaConfigError::DnsServer(server));
        }
        for name in &self.search {
            if let Err(reason) = names::wire_len(name) {
                return Err(RaConfigError::SearchDomain {
                    name: name.clone(),
                    reason,
                });
            }
        }
        let len = router_advertisement_len(self);
        let limit = self.mtu.unwrap_or(IPV6_MIN_MTU) as usize - IPV6_HEADER_LEN;
        if len > limit {
            return Err(RaConfigError::TooLong { len, limit });
        }
        Ok(())
    }
}

/// fe80::/64 with the modified EUI-64 interface identifier of `mac`
/// (RFC 4291 appendix A, RFC 2464 5): the universal/local bit flipped and
/// ff:fe in the middle.
pub fn router_link_local(mac: [u8; 6]) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        a ^ 0x02,
        b,
        c,
        0xff,
        0xfe,
        d,
        e,
        f,
    ])
}

/// The ICMPv6 checksum (RFC 4443 2.3) of `message` sent from `src` to
/// `dst`: the one's complement of the one's complement sum over the IPv6
/// pseudo-header (RFC 8200 8.1) and the message.
///
/// To fill in a checksum, zero bytes 2..4 of the message first and store
/// the result there; to verify one, pass the message as received: it is
/// valid if the result is 0.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    podwire_frame::Checksum::of_l4(src.into(), dst.into(), ICMPV6_NEXT_HEADER, message)
}

/// Length of the complete advertisement for `cfg`, with every option that
/// can be encoded; an `out` of this size leaves nothing out.
pub fn router_advertisement_len(cfg: &RaConfig) -> usize {
    let mut w = Writer::measure();
    emit(cfg, &mut w);
    w.pos()
}

/// Writes a complete ICMPv6 Router Advertisement, checksum included, into
/// `out` and returns its length.
///
/// `src` must be link-local (normally [`router_link_local`] of
/// [`RaConfig::router_mac`]) and `dst` is [`ALL_NODES`] or the unicast
/// address of the soliciting guest; both go into the checksum, so the
/// IPv6 header must carry exactly these, with hop limit [`ND_HOP_LIMIT`]
/// and next header [`ICMPV6_NEXT_HEADER`].
///
/// Options go in this order: source link-layer address, MTU, prefix
/// information, RDNSS, DNSSL. The first three must fit in `out` (else
/// [`RaError::OutputTooSmall`]); RDNSS and DNSSL options are each written
/// whole or left out. Size `out` with [`router_advertisement_len`], or as
/// the link MTU minus 40.
pub fn router_advertisement(
    cfg: &RaConfig,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    out: &mut [u8],
) -> Result<usize, RaError> {
    if !is_link_local(src) {
        return Err(RaError::SourceNotLinkLocal(src));
    }
    let got = out.len();
    let mut w = Writer::new(out, got);
    let mandatory = emit(cfg, &mut w);
    if mandatory > got {
        return Err(RaError::OutputTooSmall {
            needed: mandatory,
            got,
        });
    }
    let checksum = match w.written() {
        Some(message) => icmpv6_checksum(src, dst, message),
        // emit() only overflows in its mandatory part, handled above.
        None => {
            return Err(RaError::OutputTooSmall {
                needed: w.pos(),
                got,
            })
        }
    };
    w.patch_u16(2, checksum);
    Ok(w.pos())
}

/// Writes the advertisement with a zero checksum; returns where its
/// mandatory part ends.
fn emit(cfg: &RaConfig, w: &mut Writer<'_>) -> usize {
    // The header, source link-layer address, MTU and prefix options are smoltcp's
    // (`NdiscRepr::RouterAdvert`), emitted on the stack and copied in; RDNSS and DNSSL, which
    // smoltcp does not have, are podwire's own representations below.
    let mut mandatory = [0u8; MAX_MANDATORY_LEN];
    let len = mandatory_part(cfg, &mut mandatory);
    w.put(&mandatory[..len]);
    let mandatory = w.pos();

    let lifetime = cfg.dns_lifetime();
    let mut rest = &cfg.dns[..];
    while rest.iter().any(|&a| usable_dns_server(a)) {
        let take = RdnssRepr::servers_that_fit(rest);
        let (these, after) = rest.split_at(take);
        w.optional(|w| {
            RdnssRepr {
                lifetime,
                servers: these,
            }
            .emit(w)
        });
        rest = after;
    }

    // Names are packed greedily into as few options as their one-byte
    // length allows; a name is at most 255 bytes, so each option takes at
    // least one.
    let mut rest = &cfg.search[..];
    while rest.iter().any(|name| DomainName::parse(name).is_ok()) {
        let take = DnsslRepr::names_that_fit(rest);
        let (these, after) = rest.split_at(take);
        w.optional(|w| {
            DnsslRepr {
                lifetime,
                names: these,
            }
            .emit(w)
        });
        rest = after;
    }
    mandatory
}

/// Header (16), source link-layer address (8), MTU (8) and prefix information (32).
const MAX_MANDATORY_LEN: usize = 64;

/// Writes the advertisement's header and mandatory options with smoltcp into `buf` (checksum
/// zero); returns their length.
fn mandatory_part(cfg: &RaConfig, buf: &mut [u8; MAX_MANDATORY_LEN]) -> usize {
    let mut flags = NdiscRouterFlags::empty();
    flags.set(NdiscRouterFlags::MANAGED, cfg.managed);
    flags.set(NdiscRouterFlags::OTHER, cfg.other);
    let prefix_info = ((1..=128).contains(&cfg.prefix_len)
        && prefix_problem(cfg.prefix, cfg.prefix_len).is_none())
    .then(|| {
        let mut flags = NdiscPrefixInfoFlags::empty();
        flags.set(NdiscPrefixInfoFlags::ON_LINK, cfg.on_link);
        flags.set(
            NdiscPrefixInfoFlags::ADDRCONF,
            cfg.autonomous && cfg.prefix_len == 64,
        );
        NdiscPrefixInformation {
            prefix_len: cfg.prefix_len,
            flags,
            valid_lifetime: SmolDuration::from_secs(u64::from(cfg.valid_lifetime)),
            preferred_lifetime: SmolDuration::from_secs(u64::from(
                cfg.preferred_lifetime.min(cfg.valid_lifetime),
            )),
            prefix: masked(cfg.prefix, cfg.prefix_len),
        }
    });
    let repr = NdiscRepr::RouterAdvert {
        hop_limit: CUR_HOP_LIMIT,
        flags,
        router_lifetime: SmolDuration::from_secs(u64::from(
            cfg.router_lifetime_secs.min(MAX_ROUTER_LIFETIME),
        )),
        // Reachable time and retransmission timer: unspecified, so the guest keeps its
        // defaults.
        reachable_time: SmolDuration::ZERO,
        retrans_time: SmolDuration::ZERO,
        lladdr: Some(EthernetAddress(cfg.router_mac).into()),
        mtu: cfg.mtu.filter(|&m| m >= IPV6_MIN_MTU),
        prefix_info,
    };
    let len = repr.buffer_len().min(MAX_MANDATORY_LEN);
    repr.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..len]));
    len
}

/// A Recursive DNS Server option (RFC 8106 5.1): podwire's own format, in smoltcp's `Repr`
/// shape. Unusable addresses (unspecified, loopback, multicast) in `servers` are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdnssRepr<'a> {
    pub lifetime: u32,
    /// At most 127 usable ones (the length is one byte of 8-byte units): see
    /// [`RdnssRepr::servers_that_fit`].
    pub servers: &'a [Ipv6Addr],
}

impl RdnssRepr<'_> {
    /// How many of `servers` one option takes: up to the 127th usable one.
    pub fn servers_that_fit(servers: &[Ipv6Addr]) -> usize {
        let mut usable = 0;
        for (i, &a) in servers.iter().enumerate() {
            if usable_dns_server(a) {
                if usable == MAX_RDNSS_SERVERS {
                    return i;
                }
                usable += 1;
            }
        }
        servers.len()
    }

    fn usable(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.servers
            .iter()
            .copied()
            .filter(|&a| usable_dns_server(a))
            .take(MAX_RDNSS_SERVERS)
    }

    pub fn buffer_len(&self) -> usize {
        DNS_OPTION_HEADER + 16 * self.usable().count()
    }

    pub fn emit(&self, w: &mut Writer<'_>) {
        w.u8(opt::RDNSS);
        // At most 1 + 2 * 127 = 255.
        w.u8((1 + 2 * self.usable().count()) as u8);
        w.u16(0);
        w.u32(self.lifetime);
        for server in self.usable() {
            w.put(&server.octets());
        }
    }
}

/// A DNS Search List option (RFC 8106 5.2), names uncompressed and the option padded to
/// 8 bytes: podwire's own format, in smoltcp's `Repr` shape. Names
/// `podwire_dhcp::names::DomainName::parse` rejects are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsslRepr<'a> {
    pub lifetime: u32,
    /// Names that fit one option together: see [`DnsslRepr::names_that_fit`].
    pub names: &'a [String],
}

impl DnsslRepr<'_> {
    /// How many of `names` one option takes (at least one valid name: a name is at most 255
    /// bytes and an option up to 2040).
    pub fn names_that_fit(names: &[String]) -> usize {
        let mut len = DNS_OPTION_HEADER;
        for (i, name) in names.iter().enumerate() {
            let Ok(name_len) = DomainName::parse(name).map(|n| n.buffer_len()) else {
                continue;
            };
            if len + name_len > MAX_OPTION_LEN {
                return i;
            }
            len += name_len;
        }
        names.len()
    }

    fn unpadded_len(&self) -> usize {
        DNS_OPTION_HEADER
            + self
                .names
                .iter()
                .filter_map(|name| DomainName::parse(name).ok())
                .map(|name| name.buffer_len())
                .sum::<usize>()
    }

    pub fn buffer_len(&self) -> usize {
        self.unpadded_len().next_multiple_of(UNIT)
    }

    pub fn emit(&self, w: &mut Writer<'_>) {
        let len = self.unpadded_len();
        let padded = len.next_multiple_of(UNIT);
        w.u8(opt::DNSSL);
        // At most MAX_OPTION_LEN / UNIT = 255 for names that fit.
        w.u8((padded / UNIT).min(255) as u8);
        w.u16(0);
        w.u32(self.lifetime);
        // Invalid names are skipped (and were not counted).
        for name in self.names.iter().filter_map(|n| DomainName::parse(n).ok()) {
            name.emit(|bytes| w.put(bytes));
        }
        w.zeros(padded - len);
    }
}

fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

fn masked(addr: Ipv6Addr, prefix_len: u8) -> Ipv6Addr {
    let bits = u32::from(prefix_len.min(128));
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    Ipv6Addr::from(u128::from(addr) & mask)
}

/// Why hosts would ignore this prefix (RFC 4861 6.3.4, RFC 4862 5.5.3).
fn prefix_problem(prefix: Ipv6Addr, prefix_len: u8) -> Option<&'static str> {
    let net = masked(prefix, prefix_len);
    if net.is_unspecified() {
        Some("unspecified")
    } else if is_link_local(net) {
        Some("link-local")
    } else if net.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

fn usable_dns_server(addr: Ipv6Addr) -> bool {
    !(addr.is_unspecified() || addr.is_loopback() || addr.is_multicast())
}

/// A router solicitation that passed [`parse_router_solicitation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterSolicitation {
    /// The source link-layer address option, if the guest sent one.
    pub source_mac: Option<[u8; 6]>,
}

/// Whether `icmpv6` (the ICMPv6 message, from its type byte) is a
/// structurally valid router solicitation: type 133, code 0, at least 8
/// bytes, options of non-zero length that end exactly at the end.
///
/// This is the part of RFC 4861 6.1.1 that needs no IP header; see
/// [`parse_router_solicitation`] for the rest.
pub fn is_router_solicitation(icmpv6: &[u8]) -> bool {
    solicitation_options(icmpv6).is_ok()
}

/// Validates a router solicitation as RFC 4861 6.1.1 asks: hop limit 255,
/// a correct checksum, code 0, at least 8 bytes, well-formed options, and
/// no source link-layer address option from the unspecified address.
///
/// `src`, `dst` and `hop_limit` come from the IPv6 header and `icmpv6` is
/// its payload. Answer a valid one with [`router_advertisement`] to `src`,
/// or to [`ALL_NODES`] if `src` is unspecified.
pub fn parse_router_solicitation(
    icmpv6: &[u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
) -> Result<RouterSolicitation, RsError> {
    let source_mac = solicitation_options(icmpv6)?;
    if hop_limit != ND_HOP_LIMIT {
        return Err(RsError::HopLimit(hop_limit));
    }
    if icmpv6_checksum(src, dst, icmpv6) != 0 {
        return Err(RsError::BadChecksum);
    }
    if src.is_unspecified() && source_mac.is_some() {
        return Err(RsError::LinkLayerFromUnspecified);
    }
    Ok(RouterSolicitation { source_mac })
}

/// The checks of RFC 4861 6.1.1 that need the IPv6 header but not the checksum, for a caller
/// that verified (or, for a guest that left it to the device, skipped) the checksum already:
/// the structure of [`is_router_solicitation`], hop limit 255, and no source link-layer address
/// option from the unspecified address. [`parse_router_solicitation`] is this plus the
/// checksum.
pub fn check_router_solicitation(
    icmpv6: &[u8],
    src: Ipv6Addr,
    hop_limit: u8,
) -> Result<RouterSolicitation, RsError> {
    let source_mac = solicitation_options(icmpv6)?;
    if hop_limit != ND_HOP_LIMIT {
        return Err(RsError::HopLimit(hop_limit));
    }
    if src.is_unspecified() && source_mac.is_some() {
        return Err(RsError::LinkLayerFromUnspecified);
    }
    Ok(RouterSolicitation { source_mac })
}

/// Checks the fixed part and walks the options; returns the first source
/// link-layer address option's first six bytes.
fn solicitation_options(icmpv6: &[u8]) -> Result<Option<[u8; 6]>, RsError> {
    let len = icmpv6.len();
    let (header, mut rest) = icmpv6
        .split_at_checked(RS_HEADER_LEN)
        .ok_or(RsError::Truncated { len })?;
    if let [msg_type, code, ..] = *header {
        if msg_type != TYPE_RS || code != 0 {
            return Err(RsError::NotRouterSolicitation { msg_type, code });
        }
    }
    let mut offset = RS_HEADER_LEN;
    let mut source_mac = None;
    while !rest.is_empty() {
        let bad = RsError::BadOption { offset };
        let units = match *rest {
            [_, units, ..] if units != 0 => usize::from(units),
            _ => return Err(bad),
        };
        let (option, after) = rest.split_at_checked(units * UNIT).ok_or(bad)?;
        if let [opt::SOURCE_LL, _, a, b, c, d, e, f, ..] = *option {
            source_mac.get_or_insert([a, b, c, d, e, f]);
        }
        rest = after;
        offset += units * UNIT;
    }
    Ok(source_mac)
}

#[cfg(test)]
mod tests;
