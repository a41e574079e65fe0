//! The flow table: every UDP port, ping session and TCP connection the NAT holds, in one place.
//!
//! # Theory of operation
//!
//! A *flow* is one kernel socket in the pod and what podwire knows about the guest's side of it.
//! Every kind lives in one table, [`FlowTable`], with:
//!
//! - **one allocation path**: [`FlowTable::insert`] checks the budgets, takes a free slot (or
//!   grows the slot vector, never beyond the limit), registers the socket with the NAT's poll
//!   under `Token(slot)` and indexes the key; [`FlowTable::remove`] undoes all of it. The mio
//!   token of a flow *is* its slot: readiness leads to the entry in O(1), and a guest packet
//!   reaches it through one hash lookup of its [`FlowKey`]. Nothing is allocated per packet.
//! - **one limit, split in budgets** ([`FlowLimits`]): at most `max_flows` flows in all; flows
//!   the guest opens (outbound) and flows remote peers open through forwarded ports (inbound)
//!   are counted apart, so that peers filling the inbound budget never take the room the
//!   guest's own connections need, and one remote address may hold at most
//!   `max_inbound_per_source` of the inbound ones. Datagram flows (each one a bound UDP port
//!   in the pod) have a budget of their own within the outbound one, so that a guest spraying
//!   source ports cannot take the pod's port space. Forwarded UDP ports are configured, not
//!   opened by anyone, and count only against the total.
//! - **one lifecycle**: a flow is *opened* by a guest packet (UDP datagram, echo request, SYN)
//!   or by a connection accepted on a forwarded port; it is *active* while either side moves
//!   data (each move stamps [`Entry::last_active`] with the tick's coarse clock); it is
//!   *closed* by its protocol (TCP's FINs or RSTs, retransmission giving up), by *expiry* (idle
//!   past the timeout of its kind and state: see [`Timeouts`]), or when the guest goes away
//!   (link down, SIGTERM), which closes all of them but the forwarded ports. Closing removes
//!   the entry, its index key and its registration, and closes the socket: no entry, socket or
//!   buffer outlives its flow.
//!
//! Entries are plain data plus their socket (see [`Entry`]), so that the table can be written
//! out and read back (migration) without knowing more than this module.

use podwire_frame::RX_BATCH;
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::tcp::Conn;

/// What identifies a flow from the guest's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowKey {
    /// One guest UDP port: it may talk to several peers (see [`Datagram::peers`]).
    Udp { guest_ip: IpAddr, guest_port: u16 },
    /// One guest echo identifier towards one destination.
    Icmp {
        guest_ip: IpAddr,
        guest_id: u16,
        dst: IpAddr,
    },
    /// One TCP connection; the remote end as the guest sees it.
    Tcp {
        guest_ip: IpAddr,
        guest_port: u16,
        remote_ip: IpAddr,
        remote_port: u16,
    },
}

/// Who opened a flow: which budget it counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The guest (its datagram, echo request or SYN).
    Outbound,
    /// A remote peer, through a forwarded port; `source` is its address.
    Inbound { source: IpAddr },
    /// A forwarded UDP port: configured, permanent, never expires.
    Forward,
}

/// Most remote endpoints one UDP flow accepts datagrams from: the ones the guest sent to
/// most recently (endpoint-dependent filtering).
pub const UDP_PEERS: usize = 8;

/// A UDP port or a ping session.
pub struct Datagram {
    pub fd: OwnedFd,
    /// Datagrams wait in the socket for guest RX buffers.
    pub parked: bool,
    /// Where the guest sent to from this port (pod-side addresses), most recent first: only
    /// these may answer. Unused for ping sessions (their socket is connected) and forwarded
    /// ports (anyone may send to those).
    pub peers: [Option<std::net::SocketAddr>; UDP_PEERS],
    /// How many guest RX buffers the next receive lends ([`Datagram::next_rx_batch`]).
    rx_batch: std::cell::Cell<u8>,
}

impl Datagram {
    pub fn new(fd: OwnedFd) -> Datagram {
        Datagram {
            fd,
            parked: false,
            peers: [None; UDP_PEERS],
            rx_batch: std::cell::Cell::new(RX_BATCH as u8),
        }
    }

    /// How many guest RX buffers to lend the next `recvmmsg` of this flow. Each one lent is a
    /// chain mapped and a header written, and the ones no datagram filled go back unused: a
    /// request/response flow, one datagram per wake-up, would pay for [`RX_BATCH`] every time.
    /// So the batch follows what the socket held: after a receive that came back short it is
    /// one more than what came (at least 2, so that a lone datagram does not look like a full
    /// batch and cost a second call); after a full one it doubles, up to [`RX_BATCH`]. A new
    /// flow starts at [`RX_BATCH`].
    pub fn rx_batch(&self) -> usize {
        usize::from(self.rx_batch.get())
    }

    /// Records that a receive lent `lent` buffers and `got` datagrams came.
    pub fn next_rx_batch(&self, lent: usize, got: usize) {
        let next = if got >= lent {
            lent.saturating_mul(2)
        } else {
            got + 1
        };
        self.rx_batch.set(next.clamp(2, RX_BATCH) as u8);
    }

    /// Records that the guest sent to `peer`; O(UDP_PEERS), no allocation.
    pub fn note_peer(&mut self, peer: std::net::SocketAddr) {
        if self.peers[0] == Some(peer) {
            return;
        }
        let at = self
            .peers
            .iter()
            .position(|p| *p == Some(peer))
            .unwrap_or(UDP_PEERS - 1);
        self.peers.copy_within(0..at, 1);
        self.peers[0] = Some(peer);
    }

    /// Whether `from` is an endpoint the guest sent to from this port.
    pub fn expects(&self, from: std::net::SocketAddr) -> bool {
        self.peers.contains(&Some(from))
    }
}

/// What a flow holds, by kind. A datagram flow's peer list is boxed (one allocation when the
/// flow opens) so that every entry, and the table, stays the size of a TCP connection's.
pub enum FlowData {
    Datagram(Box<Datagram>),
    Tcp(Conn),
}

impl FlowData {
    fn fd(&self) -> &OwnedFd {
        match self {
            FlowData::Datagram(d) => &d.fd,
            FlowData::Tcp(c) => &c.fd,
        }
    }
}

/// One flow.
pub struct Entry {
    pub key: FlowKey,
    pub origin: Origin,
    /// The last time data moved either way (the tick's clock, see [`FlowTable::now`]).
    pub last_active: Instant,
    pub data: FlowData,
}

/// The flow table's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Flows of every kind and origin.
    pub max_flows: usize,
    /// Flows opened by remote peers through forwarded ports.
    pub max_inbound: usize,
    /// Inbound flows from one remote address.
    pub max_inbound_per_source: usize,
    /// Datagram flows the guest opens (each one a bound UDP port or ping socket in the pod).
    pub max_datagram: usize,
}

impl FlowLimits {
    /// Flows the guest may open: what the inbound share leaves.
    pub fn max_outbound(&self) -> usize {
        self.max_flows.saturating_sub(self.max_inbound).max(1)
    }

    /// The budgets for a table of `max_flows`: a quarter for inbound flows (a sixteenth of
    /// that per remote address); of the guest's share, at most half and at most 4096 for
    /// datagram flows — a small share of the pod's ephemeral port range, which the pod's other
    /// containers draw from too, and room left for the guest's TCP connections.
    pub fn for_max(max_flows: usize) -> FlowLimits {
        let max_flows = max_flows.max(1);
        let max_inbound = (max_flows / 4).max(1);
        let mut limits = FlowLimits {
            max_flows,
            max_inbound,
            max_inbound_per_source: (max_inbound / 16).max(1),
            max_datagram: 0,
        };
        limits.max_datagram = (limits.max_outbound() / 2).clamp(1, 4096);
        limits
    }
}

/// How long a flow may stay idle, by kind and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub udp: Duration,
    pub icmp: Duration,
    /// A TCP connection both ways open. The pod side has keepalives, so a dead peer is found
    /// before this; it bounds connections that are alive but forgotten.
    pub tcp_established: Duration,
    /// A TCP connection after one side's FIN.
    pub tcp_half_closed: Duration,
    /// A TCP handshake not finished (connecting, or waiting for the guest's answer).
    pub tcp_half_open: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            udp: Duration::from_secs(180),
            icmp: Duration::from_secs(60),
            tcp_established: Duration::from_secs(2 * 3600),
            tcp_half_closed: Duration::from_secs(60),
            tcp_half_open: Duration::from_secs(10),
        }
    }
}

/// Why a flow was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table is at `max_flows`.
    Full,
    /// The inbound budget is spent.
    InboundFull,
    /// This remote address holds its share of the inbound budget.
    SourceCap,
    /// The datagram budget is spent.
    DatagramFull,
    /// The socket could not be registered.
    Register,
}

/// Every flow, indexed by slot (= mio token) and by key.
pub struct FlowTable {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    index: HashMap<FlowKey, usize>,
    limits: FlowLimits,
    outbound: usize,
    inbound: usize,
    datagram: usize,
    per_source: HashMap<IpAddr, usize>,
    /// The coarse clock: set on each timer tick, stamped on activity (no clock read per packet).
    now: Instant,
}

impl FlowTable {
    pub fn new(limits: FlowLimits) -> FlowTable {
        let reserve = limits.max_flows.min(1024);
        FlowTable {
            entries: Vec::with_capacity(reserve),
            free: Vec::new(),
            index: HashMap::with_capacity(reserve),
            limits,
            outbound: 0,
            inbound: 0,
            datagram: 0,
            per_source: HashMap::new(),
            now: Instant::now(),
        }
    }

    pub fn limits(&self) -> FlowLimits {
        self.limits
    }

    /// Open flows of every kind.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Flows opened by remote peers.
    pub fn inbound(&self) -> usize {
        self.inbound
    }

    /// One past the highest slot ever used: slots below it may hold flows.
    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    /// The coarse clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Advances the coarse clock (the timer tick).
    pub fn set_now(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// Every flow with its slot, in slot order (for operators and the idle sweep's peers).
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| e.as_ref().map(|e| (slot, e)))
    }

    pub fn lookup(&self, key: &FlowKey) -> Option<usize> {
        self.index.get(key).copied()
    }

    pub fn get(&self, slot: usize) -> Option<&Entry> {
        self.entries.get(slot).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Entry> {
        self.entries.get_mut(slot).and_then(Option::as_mut)
    }

    /// Marks a flow active now.
    pub fn touch(&mut self, slot: usize) {
        let now = self.now;
        if let Some(e) = self.get_mut(slot) {
            e.last_active = now;
        }
    }

    pub fn tcp(&self, slot: usize) -> Option<&Conn> {
        match self.get(slot).map(|e| &e.data) {
            Some(FlowData::Tcp(c)) => Some(c),
            _ => None,
        }
    }

    pub fn tcp_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        match self.get_mut(slot).map(|e| &mut e.data) {
            Some(FlowData::Tcp(c)) => Some(c),
            _ => None,
        }
    }

    pub fn datagram(&self, slot: usize) -> Option<(&FlowKey, &Datagram)> {
        match self.get(slot) {
            Some(Entry {
                key,
                data: FlowData::Datagram(d),
                ..
            }) => Some((key, d)),
            _ => None,
        }
    }

    pub fn datagram_mut(&mut self, slot: usize) -> Option<&mut Datagram> {
        match self.get_mut(slot).map(|e| &mut e.data) {
            Some(FlowData::Datagram(d)) => Some(d),
            _ => None,
        }
    }

    /// Whether a flow of `origin` (and kind `datagram`) fits the budgets now.
    pub fn admits(&self, origin: Origin, datagram: bool) -> Result<(), Refused> {
        let l = &self.limits;
        if self.index.len() >= l.max_flows {
            return Err(Refused::Full);
        }
        match origin {
            Origin::Outbound if datagram && self.datagram >= l.max_datagram => {
                Err(Refused::DatagramFull)
            }
            // Each side has its own share: peers filling theirs never take the guest's.
            Origin::Outbound if self.outbound >= l.max_outbound() => Err(Refused::Full),
            Origin::Inbound { .. } if self.inbound >= l.max_inbound => Err(Refused::InboundFull),
            Origin::Inbound { source }
                if self.per_source.get(&source).copied().unwrap_or(0)
                    >= l.max_inbound_per_source =>
            {
                Err(Refused::SourceCap)
            }
            _ => Ok(()),
        }
    }

    /// The one way a flow comes to be: budgets checked, slot taken, socket registered under
    /// `Token(slot)` with `interest`, key indexed.
    pub fn insert(
        &mut self,
        registry: &Registry,
        key: FlowKey,
        origin: Origin,
        data: FlowData,
        interest: Interest,
    ) -> Result<usize, Refused> {
        let datagram = matches!(data, FlowData::Datagram(_));
        self.admits(origin, datagram)?;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.entries.push(None);
                self.entries.len() - 1
            }
        };
        let fd = data.fd().as_raw_fd();
        if registry
            .register(&mut SourceFd(&fd), Token(slot), interest)
            .is_err()
        {
            self.free.push(slot);
            return Err(Refused::Register);
        }
        self.count(origin, datagram, true);
        self.entries[slot] = Some(Entry {
            key,
            origin,
            last_active: self.now,
            data,
        });
        self.index.insert(key, slot);
        Ok(slot)
    }

    /// The one way a flow ends: deregistered, unindexed, its slot free; the caller gets the
    /// entry (and drops it, which closes the socket).
    pub fn remove(&mut self, registry: &Registry, slot: usize) -> Option<Entry> {
        let entry = self.entries.get_mut(slot).and_then(Option::take)?;
        let _ = registry.deregister(&mut SourceFd(&entry.data.fd().as_raw_fd()));
        self.index.remove(&entry.key);
        let datagram = matches!(entry.data, FlowData::Datagram(_));
        self.count(entry.origin, datagram, false);
        self.free.push(slot);
        Some(entry)
    }

    fn count(&mut self, origin: Origin, datagram: bool, up: bool) {
        let step = |n: &mut usize| {
            if up {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        };
        match origin {
            Origin::Outbound => {
                step(&mut self.outbound);
                if datagram {
                    step(&mut self.datagram);
                }
            }
            Origin::Inbound { source } => {
                step(&mut self.inbound);
                let n = self.per_source.entry(source).or_insert(0);
                step(n);
                if *n == 0 {
                    self.per_source.remove(&source);
                }
            }
            Origin::Forward => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn udp_fd() -> OwnedFd {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().into()
    }

    fn key(port: u16) -> FlowKey {
        FlowKey::Udp {
            guest_ip: Ipv4Addr::new(10, 0, 2, 2).into(),
            guest_port: port,
        }
    }

    #[test]
    fn budgets_keep_inbound_and_outbound_apart() {
        let poll = mio::Poll::new().unwrap();
        let r = poll.registry();
        let mut t = FlowTable::new(FlowLimits {
            max_flows: 8,
            max_inbound: 4,
            max_inbound_per_source: 2,
            max_datagram: 8,
        });
        let peer = |i: u8| IpAddr::from(Ipv4Addr::new(198, 18, 0, i));
        let mut port = 0;
        let mut open = |t: &mut FlowTable, origin| {
            port += 1;
            let d = FlowData::Datagram(Box::new(Datagram::new(udp_fd())));
            t.insert(r, key(port), origin, d, Interest::READABLE)
        };
        // One source: its cap, then refused; others fill the inbound budget.
        for _ in 0..2 {
            open(&mut t, Origin::Inbound { source: peer(1) }).unwrap();
        }
        assert_eq!(
            open(&mut t, Origin::Inbound { source: peer(1) }),
            Err(Refused::SourceCap)
        );
        for i in 2..4 {
            open(&mut t, Origin::Inbound { source: peer(i) }).unwrap();
        }
        assert_eq!(
            open(&mut t, Origin::Inbound { source: peer(9) }),
            Err(Refused::InboundFull)
        );
        // The guest still has its share.
        for _ in 0..4 {
            open(&mut t, Origin::Outbound).unwrap();
        }
        assert_eq!(open(&mut t, Origin::Outbound), Err(Refused::Full));
        assert_eq!(t.len(), 8);
        // Closing frees the budget it counted against.
        let slot = t.lookup(&key(1)).unwrap();
        assert!(t.remove(r, slot).is_some());
        open(&mut t, Origin::Inbound { source: peer(1) }).unwrap();
    }

    #[test]
    fn datagram_peers_are_the_most_recent_ones() {
        let mut d = Datagram::new(udp_fd());
        let at = |p: u16| SocketAddr::new(Ipv4Addr::new(198, 18, 0, 1).into(), p);
        for p in 0..UDP_PEERS as u16 + 1 {
            d.note_peer(at(p));
        }
        assert!(!d.expects(at(0)), "the oldest was forgotten");
        assert!((1..=UDP_PEERS as u16).all(|p| d.expects(at(p))));
        d.note_peer(at(3));
        assert_eq!(d.peers[0], Some(at(3)));
        assert!(!d.expects(at(99)));
    }
}
