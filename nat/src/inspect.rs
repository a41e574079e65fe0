//! Read-only views of the one flow table for operators (`podwire flows`, status counts), and the
//! removal of forwarded ports at run time.
//!
//! # Theory of operation
//!
//! Called with the dataplane lock held, from the control thread, never from the per-frame path.
//! Each call walks at most `limit` flows and makes at most one `getsockname`/`getsockopt` per
//! flow, so the time the dataplane waits is bounded by the caller's limit. Byte counts and idle
//! times of TCP flows come from the pod-side socket's `TCP_INFO` (what the kernel already keeps),
//! so the dataplane keeps no per-flow statistics for this.

use std::net::SocketAddr;
use std::time::Duration;

use crate::flow::{FlowData, FlowKey, Origin};
use crate::{sock, Nat};

/// The protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowProto {
    Tcp,
    Udp,
    Icmp,
}

impl FlowProto {
    pub fn name(self) -> &'static str {
        match self {
            FlowProto::Tcp => "tcp",
            FlowProto::Udp => "udp",
            FlowProto::Icmp => "icmp",
        }
    }
}

/// One flow as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowInfo {
    pub proto: FlowProto,
    /// Opened from the pod (a forwarded port) rather than by the guest.
    pub inbound: bool,
    /// The guest's end.
    pub guest: SocketAddr,
    /// The peer as the guest sees it (TCP, ICMP); `None` for a UDP flow, which is one socket
    /// per guest port talking to any number of peers.
    pub remote: Option<SocketAddr>,
    /// The pod-side socket's local address.
    pub pod: Option<SocketAddr>,
    pub state: &'static str,
    pub bytes_from_guest: Option<u64>,
    pub bytes_to_guest: Option<u64>,
    pub age: Option<Duration>,
    pub idle: Option<Duration>,
    /// A TCP connection's internal state, for debugging a stuck transfer.
    pub tcp: Option<TcpDetail>,
}

/// Where a TCP connection's two sequence spaces and its socket's queues stand: what an
/// operator (or a test) needs to tell which side a stuck transfer waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpDetail {
    /// The events that happened to it (`ESTABLISHED`, `SOCK_FIN_RCVD`, ...).
    pub events: Vec<&'static str>,
    /// The work lists it is on and other bookkeeping (`STALLED`, `SOCK_DRAINED`, ...).
    pub flags: Vec<&'static str>,
    /// Oldest byte towards the guest it has not acknowledged.
    pub snd_una: u32,
    /// Bytes sent to the guest and not acknowledged.
    pub in_flight: u32,
    /// The guest's receive window.
    pub guest_window: u32,
    /// Next byte expected from the guest.
    pub rcv_nxt: u32,
    /// The window last offered to the guest.
    pub offered_window: u32,
    /// Bytes in the socket's receive queue (from the peer, not yet acknowledged by the guest).
    pub socket_unread: u32,
    /// Bytes in the socket's send queue (from the guest, not yet acknowledged by the peer).
    pub socket_unsent: u32,
    /// Milliseconds to the retransmission timer, if it runs.
    pub rto_in_ms: Option<u64>,
    pub retries: u8,
}

/// Flow counts by protocol and direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounts {
    pub tcp_outbound: usize,
    pub tcp_inbound: usize,
    pub udp_outbound: usize,
    /// Forwarded UDP ports (each one socket).
    pub udp_forwarded: usize,
    pub icmp: usize,
}

impl Nat {
    /// Up to `limit` flows, TCP first.
    pub fn flows(&self, limit: usize) -> Vec<FlowInfo> {
        let mut out = self.tcp.flows(&self.flows, limit);
        let now = self.flows.now();
        for (_, entry) in self.flows.iter() {
            if out.len() >= limit {
                break;
            }
            let FlowData::Datagram(d) = &entry.data else {
                continue;
            };
            let (proto, guest, remote) = match entry.key {
                FlowKey::Udp {
                    guest_ip,
                    guest_port,
                } => (FlowProto::Udp, SocketAddr::new(guest_ip, guest_port), None),
                FlowKey::Icmp {
                    guest_ip,
                    guest_id,
                    dst,
                } => (
                    FlowProto::Icmp,
                    SocketAddr::new(guest_ip, guest_id),
                    Some(SocketAddr::new(dst, 0)),
                ),
                FlowKey::Tcp { .. } => continue,
            };
            let forwarded = entry.origin == Origin::Forward;
            out.push(FlowInfo {
                proto,
                inbound: forwarded,
                guest,
                remote,
                pod: sock::local_addr(&d.fd).ok(),
                state: if forwarded { "forwarded" } else { "open" },
                bytes_from_guest: None,
                bytes_to_guest: None,
                age: None,
                idle: Some(now.saturating_duration_since(entry.last_active)),
                tcp: None,
            });
        }
        out
    }

    /// How many flows of each kind are open.
    pub fn flow_counts(&self) -> FlowCounts {
        let mut c = FlowCounts::default();
        for (_, entry) in self.flows.iter() {
            match (&entry.key, entry.origin) {
                (FlowKey::Tcp { .. }, Origin::Inbound { .. }) => c.tcp_inbound += 1,
                (FlowKey::Tcp { .. }, _) => c.tcp_outbound += 1,
                (FlowKey::Udp { .. }, Origin::Forward) => c.udp_forwarded += 1,
                (FlowKey::Udp { .. }, _) => c.udp_outbound += 1,
                (FlowKey::Icmp { .. }, _) => c.icmp += 1,
            }
        }
        c
    }

    /// Stops forwarding TCP connections to `bind`. Established connections stay.
    pub fn unlisten_tcp(&mut self, bind: SocketAddr) -> bool {
        self.tcp.unlisten(self.poll.registry(), bind)
    }

    /// Stops forwarding UDP datagrams arriving on `bind` (closes that port's socket).
    pub fn unforward_udp(&mut self, bind: SocketAddr) -> bool {
        let slot = self.flows.iter().find_map(|(slot, e)| match &e.data {
            FlowData::Datagram(d)
                if e.origin == Origin::Forward && sock::local_addr(&d.fd).ok() == Some(bind) =>
            {
                Some(slot)
            }
            _ => None,
        });
        match slot {
            Some(slot) => {
                self.remove(slot);
                true
            }
            None => false,
        }
    }
}
