//! DHCPv6 (RFC 8415) for the one guest: configuration, wire format and
//! server. The theory of operation is in the crate documentation, section
//! "DHCPv6".

mod config;
mod server;
mod wire;

pub use config::{duid_ll, Dhcpv6Config};
pub use server::{Dhcpv6Binding, Dhcpv6Counters, Dhcpv6Server, MAX_DHCPV6_REPLY};

#[cfg(test)]
mod tests;
