//! Error types.
//!
//! Two enums because they have different audiences: [`DhcpError`] is about a
//! datagram the (untrusted) guest sent, or about the caller's reply buffer,
//! and is expected at runtime; [`ConfigError`] is about the operator's
//! configuration and is expected only at startup or on reconfiguration.

use std::net::Ipv4Addr;

/// Why [`crate::Dhcpv4Server::handle`] produced no reply.
///
/// Every variant except [`DhcpError::OutputTooSmall`] means the guest sent
/// something that is not a DHCP client message; those bump
/// [`crate::Dhcpv4Counters::malformed`]. They are worth a rate-limited log
/// line at most: a guest can produce them at line rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    /// Shorter than the fixed BOOTP header plus the magic cookie.
    #[error("datagram of {len} bytes is shorter than the 240-byte BOOTP header and magic cookie")]
    Truncated { len: usize },

    /// `op` is not BOOTREQUEST (1).
    #[error("op {0} is not BOOTREQUEST")]
    NotBootRequest(u8),

    /// `htype`/`hlen` do not describe a 6-byte Ethernet address.
    #[error("hardware type {htype} with address length {hlen} is not Ethernet")]
    NotEthernet { htype: u8, hlen: u8 },

    /// The options area does not start with 99.130.83.99, so this is plain
    /// BOOTP or garbage.
    #[error("magic cookie {0:#010x} is not the DHCP cookie")]
    BadMagicCookie(u32),

    /// An option's length byte (or the length byte itself) runs past the end
    /// of the datagram. `offset` is from the start of the UDP payload.
    #[error("option {code} at offset {offset} runs past the end of the datagram")]
    OptionOverrun { code: u8, offset: usize },

    /// A fixed-size option we interpret has the wrong length.
    #[error("option {code} has length {len}, expected {expected}")]
    BadOptionLength {
        code: u8,
        len: usize,
        expected: usize,
    },

    /// No option 53, so this is BOOTP, which we do not serve.
    #[error("no DHCP message type option (53)")]
    MissingMessageType,

    /// The caller's reply buffer cannot hold even a minimal BOOTP reply.
    /// A caller bug, not a guest one; counted in
    /// [`crate::Dhcpv4Counters::output_too_small`].
    #[error("reply buffer of {got} bytes is smaller than the {needed} bytes a reply needs")]
    OutputTooSmall { needed: usize, got: usize },
}

/// A configuration the server can only partly honour.
///
/// [`crate::Dhcpv4Server::try_new`] and
/// [`crate::Dhcpv4Server::try_set_config`] refuse such a configuration;
/// [`crate::Dhcpv4Server::new`] and [`crate::Dhcpv4Server::set_config`]
/// accept it and leave out whatever cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("prefix length {0} is outside 1..=32")]
    PrefixLen(u8),

    #[error("guest address {addr} is unusable: {reason}")]
    GuestIp {
        addr: Ipv4Addr,
        reason: &'static str,
    },

    #[error("server identifier {addr} is unusable: {reason}")]
    ServerIp {
        addr: Ipv4Addr,
        reason: &'static str,
    },

    #[error("router {addr} is unusable: {reason}")]
    Router {
        addr: Ipv4Addr,
        reason: &'static str,
    },

    #[error("DNS server {0} is not a unicast address")]
    DnsServer(Ipv4Addr),

    #[error("lease time must be at least one second")]
    ZeroLease,

    #[error("MTU {0} is below the 68-byte IPv4 minimum")]
    Mtu(u16),

    #[error("domain name {name:?} is invalid: {reason}")]
    DomainName { name: String, reason: &'static str },

    #[error("search domain {name:?} is invalid: {reason}")]
    SearchDomain { name: String, reason: &'static str },

    #[error("hostname {name:?} is invalid: {reason}")]
    Hostname { name: String, reason: &'static str },
}
