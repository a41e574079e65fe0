//! Why a router solicitation is not valid, why an advertisement was not written, and which
//! configurations an advertisement cannot carry.

use std::net::Ipv6Addr;

/// Why a packet is not a valid Router Solicitation (RFC 4861 6.1.1); see
/// [`crate::ra::parse_router_solicitation`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RsError {
    #[error("ICMPv6 message of {len} bytes is shorter than the 8-byte solicitation")]
    Truncated { len: usize },

    #[error("ICMPv6 type {msg_type} code {code} is not a router solicitation")]
    NotRouterSolicitation { msg_type: u8, code: u8 },

    /// An option has length zero or runs past the end of the message.
    #[error("option at offset {offset} has length zero or runs past the end")]
    BadOption { offset: usize },

    /// The IPv6 hop limit is not 255, so the packet may come from off-link.
    #[error("hop limit {0} is not 255")]
    HopLimit(u8),

    #[error("ICMPv6 checksum does not match the pseudo-header and message")]
    BadChecksum,

    /// RFC 4861 6.1.1: a solicitation from the unspecified address must
    /// not carry a source link-layer address option.
    #[error("source link-layer address option from the unspecified address")]
    LinkLayerFromUnspecified,
}

/// Why [`crate::ra::router_advertisement`] wrote nothing. Both are caller bugs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaError {
    /// RFC 4861 6.1.2: hosts discard advertisements whose source is not
    /// link-local.
    #[error("source {0} is not a link-local address")]
    SourceNotLinkLocal(Ipv6Addr),

    /// Not even the header, source link-layer address, MTU and prefix
    /// options fit.
    #[error("buffer of {got} bytes is smaller than the {needed} bytes the advertisement needs")]
    OutputTooSmall { needed: usize, got: usize },
}

/// A router advertisement configuration that can only partly be honoured;
/// see [`crate::ra::RaConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaConfigError {
    #[error("router MAC {0:02x?} is not a unicast address")]
    RouterMac([u8; 6]),

    #[error("prefix length {0} is outside 1..=128")]
    PrefixLen(u8),

    #[error("prefix {prefix} is unusable: {reason}")]
    Prefix {
        prefix: Ipv6Addr,
        reason: &'static str,
    },

    /// SLAAC on Ethernet forms 64-bit interface identifiers (RFC 4862
    /// 5.5.3 d, RFC 2464), so hosts ignore the A flag on other lengths.
    #[error("autonomous (SLAAC) configuration needs a /64 prefix, not /{0}")]
    AutonomousNeeds64(u8),

    #[error("preferred lifetime {preferred} exceeds valid lifetime {valid}")]
    Lifetimes { preferred: u32, valid: u32 },

    #[error("MTU {0} is below the 1280-byte IPv6 minimum")]
    Mtu(u32),

    #[error("router lifetime {0} exceeds the 9000-second maximum")]
    RouterLifetime(u16),

    #[error("maximum advertisement interval {0} is outside 4..=1800 seconds")]
    MaxInterval(u32),

    #[error("DNS server {0} is not a unicast address")]
    DnsServer(Ipv6Addr),

    #[error("search domain {name:?} is invalid: {reason}")]
    SearchDomain { name: String, reason: &'static str },

    /// The whole advertisement does not fit in one packet on the link, so
    /// [`crate::ra::router_advertisement`] would leave out DNS options.
    #[error("advertisement of {len} bytes exceeds the {limit} bytes the link MTU leaves")]
    TooLong { len: usize, limit: usize },
}
