//! DHCPv6 configuration and its pre-encoded form.

use std::net::Ipv6Addr;

use crate::error::Dhcpv6ConfigError;
use crate::names;

/// What the DHCPv6 server hands to its one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcpv6Config {
    /// The server identifier (option 2), 2..=130 bytes; [`duid_ll`] of
    /// podwire's MAC is the natural choice. Clients echo it, so it must
    /// not change while the guest runs.
    pub server_duid: Vec<u8>,
    /// The one address handed out, in IA_NA option 5.
    pub guest_addr: Ipv6Addr,
    /// The on-link prefix around it (what router advertisements announce): CONFIRM answers
    /// NotOnLink for addresses outside it.
    pub prefix_len: u8,
    /// Option 23; omitted when empty.
    pub dns: Vec<Ipv6Addr>,
    /// Option 24, uncompressed as RFC 8415 section 10 requires.
    pub search: Vec<String>,
    /// Seconds; `u32::MAX` is infinite. T1 and T2 are 0.5 and 0.8 of it.
    pub preferred_lifetime: u32,
    /// Seconds; `u32::MAX` is infinite. At least `preferred_lifetime`.
    pub valid_lifetime: u32,
}

/// DUID-LL (RFC 8415 11.4): type 3, hardware type 1 (Ethernet), the MAC.
pub fn duid_ll(mac: [u8; 6]) -> Vec<u8> {
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(&mac);
    duid
}

/// RFC 8415 11.1: a two-byte type and at most 128 bytes of identifier.
pub(crate) const MIN_DUID: usize = 2;
pub(crate) const MAX_DUID: usize = 130;
pub(crate) const INFINITY: u32 = u32::MAX;

impl Dhcpv6Config {
    /// Checks everything [`crate::Dhcpv6Server::try_new`] checks.
    pub fn validate(&self) -> Result<(), Dhcpv6ConfigError> {
        match compile(self).1 {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// T1 (renew) as sent in IA_NA: half the preferred lifetime, or
    /// infinite with it.
    pub fn t1(&self) -> u32 {
        fraction(self.effective_preferred(), 1, 2)
    }

    /// T2 (rebind) as sent in IA_NA: 0.8 of the preferred lifetime, or
    /// infinite with it.
    pub fn t2(&self) -> u32 {
        fraction(self.effective_preferred(), 4, 5)
    }

    /// The preferred lifetime as sent: clamped to the valid lifetime.
    fn effective_preferred(&self) -> u32 {
        self.preferred_lifetime.min(self.valid_lifetime)
    }
}

fn fraction(lifetime: u32, num: u64, den: u64) -> u32 {
    if lifetime == INFINITY {
        return INFINITY;
    }
    // The result is below `lifetime`, so it fits back in u32.
    (u64::from(lifetime) * num / den) as u32
}

/// The configuration in the form the reply path consumes.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub server_duid: Vec<u8>,
    pub guest_addr: Ipv6Addr,
    pub prefix_len: u8,
    pub preferred: u32,
    pub valid: u32,
    pub t1: u32,
    pub t2: u32,
    /// Option 23 data; empty means omit.
    pub dns: Vec<u8>,
    /// Option 24 data; empty means omit.
    pub domains: Vec<u8>,
}

fn note(slot: &mut Option<Dhcpv6ConfigError>, err: Dhcpv6ConfigError) {
    slot.get_or_insert(err);
}

/// Builds the reply material leniently and reports the first problem, as
/// the DHCPv4 configuration does: bad DNS servers and search names are
/// left out, a preferred lifetime above the valid one is clamped, and
/// everything else is used as given.
pub(crate) fn compile(config: &Dhcpv6Config) -> (Compiled, Option<Dhcpv6ConfigError>) {
    let mut err = None;

    let duid_len = config.server_duid.len();
    if !(MIN_DUID..=MAX_DUID).contains(&duid_len) {
        note(&mut err, Dhcpv6ConfigError::ServerDuid { len: duid_len });
    }

    let addr = config.guest_addr;
    let reason = if addr.is_unspecified() {
        Some("unspecified")
    } else if addr.is_loopback() {
        Some("loopback")
    } else if addr.is_multicast() {
        Some("multicast")
    } else if addr.segments()[0] & 0xffc0 == 0xfe80 {
        Some("link-local (the guest forms its own)")
    } else {
        None
    };
    if let Some(reason) = reason {
        note(&mut err, Dhcpv6ConfigError::GuestAddr { addr, reason });
    }

    if config.valid_lifetime == 0 {
        note(&mut err, Dhcpv6ConfigError::ZeroLifetime);
    }
    if config.preferred_lifetime > config.valid_lifetime {
        note(
            &mut err,
            Dhcpv6ConfigError::Lifetimes {
                preferred: config.preferred_lifetime,
                valid: config.valid_lifetime,
            },
        );
    }

    let mut dns = Vec::with_capacity(config.dns.len() * 16);
    for &server in &config.dns {
        if server.is_unspecified() || server.is_loopback() || server.is_multicast() {
            note(&mut err, Dhcpv6ConfigError::DnsServer(server));
            continue;
        }
        dns.extend_from_slice(&server.octets());
    }

    let (domains, search_err) = names::encode_uncompressed(&config.search);
    if let Some((index, reason)) = search_err {
        let name = config.search.get(index).cloned().unwrap_or_default();
        note(&mut err, Dhcpv6ConfigError::SearchDomain { name, reason });
    }

    let compiled = Compiled {
        server_duid: config.server_duid.clone(),
        guest_addr: addr,
        prefix_len: config.prefix_len.min(128),
        preferred: config.effective_preferred(),
        valid: config.valid_lifetime,
        t1: config.t1(),
        t2: config.t2(),
        dns,
        domains,
    };
    (compiled, err)
}
