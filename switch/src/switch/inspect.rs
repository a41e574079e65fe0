//! What the control socket and the metrics read from the switch, and the forwards they may
//! change: read-only snapshots plus [`Switch::open_forward`]/[`Switch::close_forward`].
//!
//! # Theory of operation
//!
//! Every function here runs on the control or metrics thread with the switch lock held, so it
//! copies what it needs and returns; nothing here is reached from the per-frame path. Forwards
//! opened at run time go through the same NAT calls as the ones on the command line; a request
//! that cannot bind every port it names closes the ones it did bind, so a failure changes
//! nothing.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use podwire_nat::ports::{Forward, Proto};
use podwire_nat::{FlowCounts, FlowInfo};

use super::Switch;

/// The guest's IPv4 identity as the switch knows it now.
#[derive(Debug, Clone)]
pub struct Guest4View {
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub lease: Option<podwire_dhcp::LeaseInfo>,
}

/// The guest's IPv6 identity as the switch knows it now.
#[derive(Debug, Clone)]
pub struct Guest6View {
    pub address: Ipv6Addr,
    pub offered: Ipv6Addr,
    pub dhcpv6_bound: bool,
    pub seen: Vec<Ipv6Addr>,
}

/// One copy of everything dynamic in `podwire status`.
#[derive(Debug, Clone)]
pub struct SwitchView {
    pub guest_mac: Option<[u8; 6]>,
    pub mac_pinned: bool,
    pub v4: Option<Guest4View>,
    pub v6: Option<Guest6View>,
    pub flows: FlowCounts,
    /// Every counter of every set, with its status-line name.
    pub counters: Vec<(String, &'static podwire_frame::CounterDesc, u64)>,
    pub taken_at: Instant,
}

impl Switch {
    pub fn view(&self) -> SwitchView {
        let mut counters = Vec::new();
        for (prefix, set) in self.counter_sets() {
            set.visit(&mut |d, v| counters.push((format!("{prefix}{}", d.name), d, v)));
        }
        SwitchView {
            guest_mac: self.guest_mac,
            mac_pinned: self.pinned_mac.is_some(),
            v4: self.v4.as_ref().map(|v4| Guest4View {
                address: v4.guest_ip(),
                gateway: v4.gateway_ip(),
                lease: v4.dhcp().lease(),
            }),
            v6: self.v6.as_ref().map(|v6| Guest6View {
                address: v6.guest_ip,
                offered: v6.handed_out,
                dhcpv6_bound: v6.link.lease_bound(),
                seen: v6.link.guest_addresses().to_vec(),
            }),
            flows: self.nat.flow_counts(),
            counters,
            taken_at: Instant::now(),
        }
    }

    /// Up to `limit` flows.
    pub fn flows(&self, limit: usize) -> Vec<FlowInfo> {
        self.nat.flows(limit)
    }

    /// The guest addresses forwarded ports lead to: one per family the guest has.
    fn forward_targets(&self) -> Vec<IpAddr> {
        let v4 = self.v4.as_ref().map(|v4| IpAddr::V4(v4.guest_ip()));
        let v6 = self.v6.as_ref().map(|v6| IpAddr::V6(v6.handed_out));
        [v4, v6].into_iter().flatten().collect()
    }

    /// Opens one forward in every family it applies to; returns the pod addresses bound. On
    /// any failure closes what it opened and returns the error.
    pub fn open_forward(&mut self, proto: Proto, f: &Forward) -> io::Result<Vec<SocketAddr>> {
        let mut bound = Vec::new();
        for guest in self.forward_targets() {
            let bind = match f.bind {
                Some(ip) if ip.is_ipv6() != guest.is_ipv6() => continue,
                Some(ip) => SocketAddr::new(ip, f.host_port),
                None => podwire_nat::sock::any(guest, f.host_port),
            };
            let result = match proto {
                Proto::Tcp => self.nat.listen_tcp(bind, f.guest_port),
                Proto::Udp => self.nat.forward_udp(bind, guest, f.guest_port),
            };
            if let Err(e) = result {
                for b in bound {
                    self.close_forward(proto, b);
                }
                return Err(io::Error::new(
                    e.kind(),
                    format!("{proto} {f} ({bind}): {e}"),
                ));
            }
            bound.push(bind);
        }
        // Remembered for a live migration's state (the destination compares its own).
        let repr = crate::state::ForwardRepr {
            udp: matches!(proto, Proto::Udp),
            host_port: f.host_port,
            guest_port: f.guest_port,
        };
        if !bound.is_empty() && !self.forwards.contains(&repr) {
            self.forwards.push(repr);
            self.forwards.sort();
        }
        Ok(bound)
    }

    /// Closes the forward bound to `bind`. Connections it accepted stay.
    pub fn close_forward(&mut self, proto: Proto, bind: SocketAddr) -> bool {
        let udp = matches!(proto, Proto::Udp);
        self.forwards
            .retain(|f| f.udp != udp || f.host_port != bind.port());
        match proto {
            Proto::Tcp => self.nat.unlisten_tcp(bind),
            Proto::Udp => self.nat.unforward_udp(bind),
        }
    }
}
