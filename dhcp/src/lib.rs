//! DHCPv4 server for podwire's one guest: packets in, packets out, no I/O.
//!
//! # Theory of operation
//!
//! podwire sits on the other end of a single VM's NIC. The link has exactly
//! two stations, the guest and podwire, and podwire decides the guest's
//! addressing. That makes DHCP far simpler than on a LAN, and this crate
//! leans on it:
//!
//! * **One address, no pool.** [`Dhcpv4Server`] hands out
//!   [`Dhcpv4Config::guest_ip`] and nothing else. There is no allocation,
//!   no conflict detection and no per-client table, only one optional
//!   [`LeaseInfo`] for observability. Whoever asks gets the address, even
//!   from a new MAC: a guest that changes its MAC (firmware then OS, or a
//!   reconfigured NIC) must not be locked out by a lease only we remember,
//!   and there is nobody else it could belong to.
//! * **Authoritative.** No other server can be on the link, so a REQUEST
//!   for any address but ours is NAKed immediately (RFC 2131 4.3.2 lets
//!   only authoritative servers do that), which moves a guest carrying a
//!   stale lease from a previous boot or host back to DISCOVER without
//!   waiting out timeouts. A REQUEST that names another server id is
//!   ignored, as the RFC asks, and counted: on this link it is suspicious.
//! * **Pure.** [`Dhcpv4Server::handle`] takes the UDP payload and the
//!   Ethernet source and writes the reply's UDP payload into a caller
//!   buffer. It never touches sockets or clocks beyond `Instant::now()`
//!   ([`Dhcpv4Server::handle_at`] takes the time explicitly for tests). The
//!   caller wraps the reply in UDP/IP/Ethernet, from `server_ip`:67 to
//!   port 68 at the guest MAC, addressed as [`Reply::dest`] says.
//! * **Untrusted input.** The guest controls every byte. Parsing checks
//!   lengths before every read, uses no panicking indexing on input-derived
//!   offsets, and rejects whatever it cannot interpret with a
//!   [`DhcpError`]; every outcome, including each reason for not replying,
//!   bumps a counter in [`Dhcpv4Counters`], so drops are visible without
//!   logs a guest could flood.
//! * **Bounded output.** Replies never exceed the caller's buffer, nor the
//!   client's maximum message size (option 57, default 576-byte datagrams
//!   per RFC 2131), and are padded to the 300-byte BOOTP minimum. Options
//!   are emitted in priority order and each is written whole or skipped
//!   (and counted), so a tight limit costs the search list before it costs
//!   the address, mask or routes. Options over 255 bytes are split per
//!   RFC 3396.
//! * **Configuration is compiled.** [`Dhcpv4Server::new`] and
//!   [`Dhcpv4Server::set_config`] pre-encode every configuration option
//!   (including the compressed RFC 3397 search list and the RFC 3442
//!   routes), so handling a packet does no heap allocation except to
//!   record a client id or hostname when a lease is bound. A bad
//!   configuration is reported by [`Dhcpv4Config::validate`] /
//!   [`Dhcpv4Server::try_new`]; the infallible constructors leave out what
//!   cannot be encoded instead.
//! * **Off-subnet routers.** With a /32 guest (common, as it keeps the
//!   guest from ARPing for neighbours that do not exist) the router is not
//!   on-link. Then option 121 carries a host route to the router followed
//!   by a default route through it. Option 3 is still sent for clients
//!   that lack 121; RFC 3442 clients ignore it when 121 is present.
//!
//! Message handling follows RFC 2131: DISCOVER gets an OFFER (or, with
//! option 80, an ACK per RFC 4039); REQUEST gets ACK or NAK depending on
//! the client state it implies; DECLINE and RELEASE get no reply but update
//! the lease state; INFORM gets an ACK with configuration but no address
//! or lease time. Relay agents are not expected: `giaddr` is echoed but not
//! used for addressing.

mod config;
mod error;
mod names;
mod server;
mod wire;

pub use config::Dhcpv4Config;
pub use error::{ConfigError, DhcpError};
pub use server::{
    DeclineInfo, Dhcpv4Counters, Dhcpv4Server, LeaseInfo, MessageKind, Reply, ReplyDest,
};

/// Smallest `out` buffer [`Dhcpv4Server::handle`] accepts.
pub const MIN_REPLY_BUFFER: usize = wire::MIN_BOOTP_LEN;
/// An `out` size that always holds a complete reply for a client that
/// does not advertise a larger maximum message size.
pub const RECOMMENDED_REPLY_BUFFER: usize = wire::DEFAULT_MAX_MESSAGE;

#[cfg(test)]
mod tests;
