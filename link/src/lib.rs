//! podwire's link control plane: everything on the guest's Ethernet segment that is about the
//! link itself rather than the world behind it. Pure: packets in, frames out, no I/O.
//!
//! # Theory of operation
//!
//! The guest sees a two-host segment where podwire is the router and owns every address that is
//! not the guest's. The switch dispatches each guest frame: what is about the link goes to one
//! of the two families here, which answer with whole frames written into the caller's buffer;
//! everything else goes to the NAT. Both families have the same shape — a config, a state
//! struct with `handle_*` methods taking the guest's packet bytes (already copied out of guest
//! memory) and an output buffer, a drop-reason enum and a counter set declared once with
//! `podwire_frame::counters!`:
//!
//! - [`v4::Link4`]: ARP for the gateway (proxy ARP for every address but the guest's), the
//!   guest's current IPv4 address, DHCPv4 framing around `podwire_dhcp::Dhcpv4Server`.
//! - [`v6::Link6`]: neighbour discovery, router solicitations and the advertisement schedule,
//!   echo to the gateway's link-local address, DHCPv6 framing around
//!   `podwire_dhcp::Dhcpv6Server`, the table of the guest's addresses.
//! - [`ra`]: router advertisement content (RFC 4861, RDNSS/DNSSL of RFC 8106) and the one
//!   router solicitation validator.
//!
//! The DHCP protocols (leases, options, message rules) stay in `podwire-dhcp`, which knows
//! nothing of Ethernet or IP headers; this crate knows nothing of sockets, rings or the NAT.

pub mod ra;
pub mod v4;
pub mod v6;

#[cfg(test)]
mod v4_tests;
#[cfg(test)]
mod v6_tests;

pub use v4::{Link4, Link4Config, Link4Counters, Link4Drop};
pub use v6::{Link6, Link6Config, Link6ConfigError, Link6Counters, Link6Drop};
