//! Error types.
//!
//! Per protocol, two kinds of enum because they have different audiences:
//! [`DhcpError`] and [`Dhcpv6Error`] are about a
//! packet the (untrusted) guest sent or about the caller's buffers and
//! arguments, and are expected at runtime; [`ConfigError`] and
//! [`Dhcpv6ConfigError`] are about the operator's
//! configuration and are expected only at startup or on reconfiguration.

use std::net::{Ipv4Addr, Ipv6Addr};

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

    #[error("NTP server {0} is not a unicast address")]
    NtpServer(Ipv4Addr),

    #[error("option {code} is invalid: {reason}")]
    Option { code: u8, reason: &'static str },
}

/// Why [`crate::Dhcpv6Server::handle`] rejected a datagram.
///
/// Every variant except [`Dhcpv6Error::OutputTooSmall`] means the guest
/// sent something that is not a well-formed DHCPv6 client message; those
/// bump [`crate::Dhcpv6Counters::malformed`]. Well-formed messages the
/// server chooses not to answer are `Ok(None)`, not errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dhcpv6Error {
    /// Shorter than msg-type plus transaction id.
    #[error("datagram of {len} bytes is shorter than the 4-byte DHCPv6 header")]
    Truncated { len: usize },

    /// Fewer than the 4 bytes of an option's code and length remain in
    /// its container (the message or an enclosing option). `offset` is
    /// from the start of the UDP payload.
    #[error("option header at offset {offset} runs past the end of its container")]
    TruncatedOptionHeader { offset: usize },

    /// An option's length runs past the end of its container.
    #[error("option {code} at offset {offset} runs past the end of its container")]
    OptionOverrun { code: u16, offset: usize },

    /// An option we interpret has a length its format does not allow.
    #[error("option {code} has length {len}: {reason}")]
    BadOption {
        code: u16,
        len: usize,
        reason: &'static str,
    },

    /// An option that identifies a party (client or server id) appears
    /// twice, so which one is meant is ambiguous.
    #[error("option {code} appears more than once")]
    DuplicateOption { code: u16 },

    /// The caller's buffer cannot hold the reply's mandatory part. A
    /// caller bug, not a guest one; counted in
    /// [`crate::Dhcpv6Counters::output_too_small`].
    #[error("reply buffer of {got} bytes is smaller than the {needed} bytes this reply needs")]
    OutputTooSmall { needed: usize, got: usize },
}

/// A DHCPv6 configuration the server can only partly honour; see
/// [`crate::Dhcpv6Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dhcpv6ConfigError {
    #[error("server DUID of {len} bytes is outside 2..=130 (type plus at most 128 bytes)")]
    ServerDuid { len: usize },

    #[error("guest address {addr} is unusable: {reason}")]
    GuestAddr {
        addr: Ipv6Addr,
        reason: &'static str,
    },

    #[error("DNS server {0} is not a unicast address")]
    DnsServer(Ipv6Addr),

    #[error("valid lifetime must be at least one second")]
    ZeroLifetime,

    #[error("preferred lifetime {preferred} exceeds valid lifetime {valid}")]
    Lifetimes { preferred: u32, valid: u32 },

    #[error("search domain {name:?} is invalid: {reason}")]
    SearchDomain { name: String, reason: &'static str },
}
