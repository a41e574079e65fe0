//! DHCPv4 and DHCPv6 responders for podwire's one
//! guest: packets in, packets out, no I/O.
//!
//! # Theory of operation (DHCPv4)
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
//!
//! # DHCPv6
//!
//! [`Dhcpv6Server`] applies the same principles to RFC 8415: one address
//! ([`Dhcpv6Config::guest_addr`]) for whoever asks, pure and allocation-free
//! per packet except to record a new client's DUID, untrusted input
//! validated down to the options nested in IA addresses, and a counter in
//! [`Dhcpv6Counters`] for every outcome. What differs:
//!
//! * **Messages.** SOLICIT gets an ADVERTISE with preference 255 (so the
//!   client does not wait for other servers), or a REPLY if it carries
//!   Rapid Commit. REQUEST, RENEW and REBIND get a REPLY whose first IA_NA
//!   holds the guest address with the configured lifetimes and T1/T2 of
//!   0.5/0.8 of the preferred lifetime. CONFIRM gets Success if every
//!   address listed is on-link (the guest address or inside its configured prefix) and
//!   NotOnLink otherwise; RELEASE and DECLINE get Success;
//!   INFORMATION-REQUEST gets only the DNS options. Every reply carries
//!   our Server Identifier and echoes the transaction id and the Client
//!   Identifier.
//! * **No renumbering dance.** An address the client lists in REQUEST,
//!   RENEW or REBIND that is not the guest address is returned with zero
//!   lifetimes next to the right one (RFC 8415 18.3.4/18.3.5), rather
//!   than answered with NotOnLink or NoBinding: the client switches
//!   address in one exchange. The server keeps no lease state it could
//!   disagree with the guest about; [`Dhcpv6Server::binding`] is for
//!   observability.
//! * **What is not served.** One address per client: further IA_NAs get
//!   NoAddrsAvail inside the IA, IA_TA gets NoAddrsAvail and IA_PD gets
//!   NoPrefixAvail, each echoed with its IAID. A SOLICIT, REQUEST, RENEW
//!   or REBIND with no IA_NA at all gets only the identifiers and a
//!   top-level NoAddrsAvail (RFC 8415 18.3.1). Relay messages are counted
//!   and dropped unparsed: there is no relay on this link.
//! * **Identifiers.** A Server Identifier naming another server is
//!   ignored; one naming us is accepted even on SOLICIT, CONFIRM and
//!   REBIND, where the RFC expects none, since it cannot mean anyone else.
//!   REQUEST, RENEW, RELEASE and DECLINE without one, and anything but
//!   INFORMATION-REQUEST without a Client Identifier, are ignored, as
//!   RFC 8415 section 16 asks. Repeated identifiers are malformed.
//! * **DNS options are always sent** when configured, whether or not the
//!   Option Request Option lists them: every client that can use them
//!   asks anyway, and some forget to.
//! * **Bounded output.** Replies fit in [`MAX_DHCPV6_REPLY`] (1232) bytes,
//!   so they never need fragmenting. The mandatory part must fit in `out`;
//!   DNS options, extra IAs and zero-lifetime addresses are each written
//!   whole or skipped and counted.
//!
//! The caller receives UDP to port 547 (normally to
//! [`ALL_DHCP_RELAY_AGENTS_AND_SERVERS`], from the guest's link-local
//! address and port 546), passes the payload to [`Dhcpv6Server::handle`],
//! and sends the reply from podwire's link-local address
//! ([`router_link_local`]) port 547 to the request's source address and
//! port, to the guest's MAC.
//!
//! Router advertisements and solicitations are link control, in
//! `podwire-link`, which shares this crate's DNS name encoding ([`names`])
//! and bounded writer ([`buf`]) for its DNSSL option.

pub mod buf;
mod config;
mod error;
pub mod names;
mod server;
mod v6;
mod wire;

pub use config::{Dhcpv4Config, ExtraOptions, PRIVATE_OPTIONS};
pub use error::{ConfigError, DhcpError, Dhcpv6ConfigError, Dhcpv6Error};
pub use server::{
    DeclineInfo, Dhcpv4Counters, Dhcpv4Server, LeaseInfo, MessageKind, Reply, ReplyDest,
};
pub use v6::{
    duid_ll, Dhcpv6Binding, Dhcpv6Config, Dhcpv6Counters, Dhcpv6Server, MAX_DHCPV6_REPLY,
};

/// UDP port DHCPv6 clients listen on (RFC 8415 7.2).
pub const DHCPV6_CLIENT_PORT: u16 = 546;
/// UDP port DHCPv6 servers listen on (RFC 8415 7.2).
pub const DHCPV6_SERVER_PORT: u16 = 547;
/// ff02::1:2, where DHCPv6 clients send (RFC 8415 7.1).
pub const ALL_DHCP_RELAY_AGENTS_AND_SERVERS: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// Smallest `out` buffer [`Dhcpv4Server::handle`] accepts.
pub const MIN_REPLY_BUFFER: usize = wire::MIN_BOOTP_LEN;
/// An `out` size that always holds a complete reply for a client that
/// does not advertise a larger maximum message size.
pub const RECOMMENDED_REPLY_BUFFER: usize = wire::DEFAULT_MAX_MESSAGE;

#[cfg(test)]
mod tests;
