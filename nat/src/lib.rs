//! podwire's translation of guest traffic to sockets in the pod.
//!
//! # Theory of operation
//!
//! The guest believes it sits on an Ethernet segment behind a router. There is no router: every
//! UDP "conversation" and every ICMP echo "session" the guest starts becomes an ordinary,
//! unprivileged socket in the pod's network namespace, and the kernel does the routing, source
//! address selection and port allocation. This is outbound NAT without NAT rules.
//!
//! - **UDP**: one socket per guest (address, source port), bound to the same port in the pod
//!   when it is free (so port-preserving protocols keep working), otherwise to any. It is not
//!   connected: the guest may talk to many peers from one port (endpoint-independent mapping),
//!   but only the endpoints it sent to recently may answer (endpoint-dependent filtering, as a
//!   connected socket would give): a datagram from anyone else is dropped and counted.
//! - **ICMP echo**: one ping socket (`SOCK_DGRAM`/`IPPROTO_ICMP`) per guest (address,
//!   identifier, destination), connected to the destination. Ping sockets need `net.ipv4.ping_group_range` to include
//!   podwire's group; without it echo requests are dropped, counted and logged once.
//! - **Addresses the guest sees differ from the pod's** only through [`AddrMap`]: the gateway
//!   address maps to the pod's loopback (so services on the pod's 127.0.0.1 answer on the
//!   gateway address), and a loopback resolver from the pod's resolv.conf is reached through
//!   the DNS address given to the guest. Replies are mapped back the same way.
//!
//! Payload is never copied by podwire: guest→pod datagrams are sent with `sendmsg` from iovecs
//! into guest memory; pod→guest datagrams are received with `recvmsg` straight into the guest's
//! RX buffers, and only headers are written around them. When the guest has no RX buffers, the
//! flow is parked and the datagrams stay in the socket until the guest posts more (the kernel's
//! socket buffer is the only queue).
//!
//! - **TCP** ([`tcp`]): one kernel socket per connection, with podwire keeping the two byte
//!   streams in step rather than running a TCP stack; see that module.
//! - **Forwarded pod ports** ([`ports`] parses passt's `-t`/`-u` syntax): TCP listeners whose
//!   clients become connections towards the guest, and UDP sockets that are permanent flows.
//!
//! Every flow of every kind lives in the one [`flow::FlowTable`]: slot = mio token, a hash map
//! from the guest-side key to the slot, one insert and one remove path, budgets per origin
//! (guest, remote peers on forwarded ports, per remote address) and for datagram flows, beyond
//! which new flows are refused and counted. Lookup is O(1) and nothing is allocated per packet.
//! One timerfd ticks every 100 ms for TCP retransmission and sets the table's coarse clock;
//! once a second the same tick closes flows idle past the timeout of their kind and state.
//! Only the gateway mapping (or a loopback resolver's rule) may lead to the pod's loopback:
//! a guest packet to a loopback or unspecified address is dropped and counted.

pub mod flow;
mod inspect;
pub mod ports;
pub mod sock;
pub mod tcp;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod udp_batch;
pub mod wire;

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use podwire_frame::{
    log_limited, warn_once, Checksum, Counter, PartialCsum, RxError, RxSink, SgList, MAX_SEGS,
    RX_BATCH,
};
use smoltcp::wire::IpProtocol;

use crate::flow::{Datagram, Entry, FlowData, FlowKey, FlowLimits, FlowTable, Origin, Refused};
pub use crate::inspect::{FlowCounts, FlowInfo, FlowProto, TcpDetail};
use crate::wire::{Endpoints, IpInfo, L4Csum, ICMP_LEN, UDP_LEN};

/// ICMPv6's protocol number.
const ICMPV6: u8 = 58;

const TIMER_TOKEN: Token = Token(usize::MAX - 1);
/// The one-shot timer of held-back TCP ACKs ([`tcp::DELACK`]).
const DELACK_TOKEN: Token = Token(usize::MAX - 2);
const EVENTS_PER_POLL: usize = 256;
/// The timer's period: TCP retransmission granularity.
const TICK: Duration = Duration::from_millis(100);
/// Idle datagram flows are looked for once a second.
const TICKS_PER_SWEEP: u32 = 10;

/// One guest-visible address (and optionally port) that stands for another in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRule {
    pub guest: IpAddr,
    /// Only this destination port, or every port.
    pub port: Option<u16>,
    pub host: IpAddr,
}

/// Translation between addresses the guest uses and addresses in the pod.
#[derive(Debug, Clone, Default)]
pub struct AddrMap {
    /// Port-specific rules first: they win over whole-address rules.
    rules: Vec<MapRule>,
}

impl AddrMap {
    pub fn new(mut rules: Vec<MapRule>) -> Self {
        rules.sort_by_key(|r| r.port.is_none());
        AddrMap { rules }
    }

    /// Where a packet the guest sends to `dst` really goes, or `None` if it may not go there.
    ///
    /// Only a rule leads to the pod itself: a destination that is the pod's loopback or
    /// unspecified address (127.0.0.0/8, 0.0.0.0/8, ::1, ::, and those as IPv4-mapped IPv6),
    /// addressed directly, would reach services that listen only there (a service mesh's admin
    /// port, say). Rules are configured by the operator (the gateway mapping, a loopback
    /// resolver), so what they lead to is reachable as configured.
    pub fn outbound(&self, dst: SocketAddr) -> Option<SocketAddr> {
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.guest == dst.ip() && r.port.is_none_or(|p| p == dst.port()))
        {
            return Some(SocketAddr::new(r.host, dst.port()));
        }
        (!is_host_local(dst.ip())).then_some(dst)
    }

    /// Which address the guest should see as the source of a reply from `src`.
    pub fn inbound(&self, src: SocketAddr) -> SocketAddr {
        self.rules
            .iter()
            .find(|r| r.host == src.ip() && r.port.is_none_or(|p| p == src.port()))
            .map_or(src, |r| SocketAddr::new(r.guest, src.port()))
    }
}

/// Whether `ip` names the pod itself whatever its interfaces: loopback, or unspecified (which
/// the kernel takes as "this host" in `connect` and `sendto`), in either family or mapped.
pub fn is_host_local(ip: IpAddr) -> bool {
    let v4_local = |v4: std::net::Ipv4Addr| v4.is_loopback() || v4.octets()[0] == 0;
    match ip {
        IpAddr::V4(v4) => v4_local(v4),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.to_ipv4_mapped().is_some_and(v4_local)
                // IPv4-compatible (::a.b.c.d, deprecated): ::1 and :: are covered above.
                || (v6.segments()[..6] == [0; 6] && v4_local(v6.to_ipv4().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)))
        }
    }
}

#[derive(Debug, Clone)]
pub struct NatConfig {
    /// Most flows (of all kinds) at once.
    pub max_flows: usize,
    /// Idle timeouts by kind and state.
    pub timeouts: flow::Timeouts,
    /// The guest's MTU: the largest IP packet it accepts.
    pub guest_mtu: usize,
    /// The pod's MTU: guest datagrams that fit it unfragmented may be sent coalesced (UDP GSO).
    pub pod_mtu: usize,
    pub map: AddrMap,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            max_flows: 65536,
            timeouts: flow::Timeouts::default(),
            guest_mtu: 1500,
            pod_mtu: 1500,
            map: AddrMap::default(),
        }
    }
}

podwire_frame::counters! {
    /// What the NAT did with guest datagrams and ICMP, and with their flows.
    pub struct NatCounters {
        /// Guest UDP datagrams sent to the pod.
        udp_out: Count,
        /// Messages that carried several guest datagrams (UDP GSO).
        udp_coalesced: Count,
        /// Send syscalls for guest UDP (`udp_out` / this = datagrams per call).
        udp_send_calls: Count,
        /// `recvmmsg` calls that brought datagrams for the guest (`udp_in` / this = batch size).
        udp_recv_calls: Count,
        /// UDP datagrams from the pod delivered to the guest.
        udp_in: Count,
        /// Guest ICMP echo requests sent through ping sockets.
        icmp_out: Count,
        /// ICMP echo replies delivered to the guest.
        icmp_in: Count,
        /// UDP and ICMP flows opened.
        flows_opened: Count,
        /// Flows of every kind closed for being idle.
        flows_expired: Count,
        /// Datagrams to a guest port from an endpoint the guest never sent to from it
        /// (endpoint-dependent filtering).
        udp_drop_unsolicited: Drop,
        /// Datagrams from the pod larger than the guest's MTU.
        drop_too_big_for_guest: Drop,
        /// Times a flow had to wait for guest RX buffers.
        rx_stalls: Count,
    }
    /// Why a guest packet was not translated; each bumps the counter after `=>`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum NatDrop {
        /// Guest packets whose L4 header was cut short.
        #[error("truncated L4 header")]
        Truncated => drop_truncated,
        /// Guest packets with a bad L4 checksum.
        #[error("bad L4 checksum")]
        BadChecksum => drop_bad_checksum,
        /// Guest packets that would have opened a flow in a full table.
        #[error("flow table full")]
        TableFull => drop_table_full,
        /// Guest packets for which no socket could be opened.
        #[error("cannot open a socket")]
        Socket => drop_socket,
        /// Guest ICMP messages of a type podwire does not forward.
        #[error("ICMP type podwire does not forward")]
        UnsupportedIcmp => drop_unsupported_icmp,
        /// Guest pings dropped because ping sockets are not permitted.
        #[error("ping sockets not permitted (net.ipv4.ping_group_range)")]
        PingNotPermitted => drop_ping_not_permitted,
        /// Guest datagrams whose send to the pod failed.
        #[error("send failed")]
        SendFailed => drop_send_failed,
        /// Guest datagrams and echo requests to the pod's own loopback or unspecified address.
        #[error("destination is the pod's loopback or unspecified address")]
        Loopback => drop_loopback,
        /// Guest datagrams from a new source port (or echo requests of a new session) beyond
        /// the datagram budget ([`flow::FlowLimits::max_datagram`]).
        #[error("the guest's UDP port and ping session budget is spent")]
        DatagramBudget => drop_datagram_budget,
    }
}

/// The flow table and its sockets.
pub struct Nat {
    config: NatConfig,
    poll: Poll,
    events: Events,
    timer: OwnedFd,
    delack: OwnedFd,
    delack_armed: bool,
    /// Every flow, of every kind (see [`flow`]).
    flows: FlowTable,
    /// Datagram flows waiting for guest RX buffers.
    parked: Vec<usize>,
    ip_ident: Cell<u16>,
    ticks: u32,
    /// Guest datagrams of this TX pass, sent at [`Nat::flush`].
    udp_batch: udp_batch::UdpBatch,
    pub tcp: tcp::TcpTable,
    pub counters: NatCounters,
}

/// What a flow's receive loop saw for one datagram.
enum RecvOutcome {
    Delivered,
    Drained,
    Dropped,
    Stalled,
}

impl Nat {
    pub fn new(config: NatConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        let timer = new_timer(Some(TICK))?;
        let delack = new_timer(None)?;
        poll.registry().register(
            &mut SourceFd(&delack.as_raw_fd()),
            DELACK_TOKEN,
            Interest::READABLE,
        )?;
        poll.registry().register(
            &mut SourceFd(&timer.as_raw_fd()),
            TIMER_TOKEN,
            Interest::READABLE,
        )?;
        let tcp = tcp::TcpTable::new(config.guest_mtu);
        let flows = FlowTable::new(FlowLimits::for_max(config.max_flows));
        // IPv6's header is the longer: a payload that fits it fits IPv4 too.
        let coalesce_max = config.pod_mtu.saturating_sub(wire::IPV6_LEN + UDP_LEN);
        Ok(Nat {
            config,
            poll,
            events: Events::with_capacity(EVENTS_PER_POLL),
            timer,
            delack,
            delack_armed: false,
            flows,
            parked: Vec::new(),
            ip_ident: Cell::new(0),
            ticks: 0,
            udp_batch: udp_batch::UdpBatch::new(coalesce_max),
            tcp,
            counters: NatCounters::default(),
        })
    }

    /// Readable when [`Nat::poll`] has work.
    /// Every guest TCP connection as the guest knows it, for live migration: where a
    /// destination podwire cannot take the sockets over, it resets these towards the guest.
    pub fn tcp_guest_view(&self) -> impl Iterator<Item = tcp::GuestConn> + '_ {
        self.flows.iter().filter_map(|(_, e)| match &e.data {
            FlowData::Tcp(conn) => Some(conn.guest_view()),
            FlowData::Datagram(_) => None,
        })
    }

    pub fn poll_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// Open flows of every kind.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// One guest TCP segment.
    pub fn guest_tcp(
        &mut self,
        ip: &IpInfo,
        frame: &SgList<'_>,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        self.tcp.guest_segment(
            &mut self.flows,
            self.poll.registry(),
            &self.config.map,
            ip,
            frame,
            rx,
            ep,
        );
    }

    /// Work owed at the end of a batch of guest frames: the batch's UDP datagrams, coalesced
    /// ACKs. Must run before the guest may reuse the batch's TX buffers.
    pub fn flush(&mut self, rx: &mut dyn RxSink, ep: &Endpoints) {
        self.flush_udp();
        self.tcp
            .flush_acks(&mut self.flows, self.poll.registry(), rx, ep);
        if self.tcp.has_delayed_acks() && !self.delack_armed {
            self.delack_armed = arm_once(&self.delack, tcp::DELACK).is_ok();
        }
    }

    /// Sends the guest datagrams recorded so far.
    pub fn flush_udp(&mut self) {
        if self.udp_batch.is_empty() {
            return;
        }
        let done = self.udp_batch.flush();
        let c = &self.counters;
        c.udp_out.add(done.sent);
        c.udp_coalesced.add(done.coalesced);
        c.udp_send_calls.add(done.syscalls);
        if done.failed > 0 {
            c.drop_send_failed.add(done.failed);
            warn_once!(
                "UDP sends from the guest failed ({} datagrams)",
                done.failed
            );
        }
    }

    /// Runs the TCP timers as if the time were `now`, then sends the ACKs they queued: what the
    /// timer tick in [`Nat::poll`] does with the real time. For tests that drive retransmission.
    #[doc(hidden)]
    pub fn tick_at(&mut self, now: Instant, rx: &mut dyn RxSink, ep: &Endpoints) {
        // A tick is longer than the delayed-ACK timer: held-back ACKs are due too.
        self.tcp.release_delayed_acks(&mut self.flows);
        self.tcp
            .tick(&mut self.flows, self.poll.registry(), now, rx, ep);
        self.tcp
            .flush_acks(&mut self.flows, self.poll.registry(), rx, ep);
    }

    /// Forwards TCP connections to `bind` in the pod to the guest's `guest_port`.
    pub fn listen_tcp(&mut self, bind: SocketAddr, guest_port: u16) -> io::Result<()> {
        self.tcp.listen(self.poll.registry(), bind, guest_port)
    }

    fn drop_packet(&self, d: NatDrop) {
        d.counter(&self.counters).inc();
        if d != NatDrop::PingNotPermitted {
            warn_once!("dropped a guest packet: {d}");
        }
    }

    /// Translates one guest UDP datagram.
    pub fn guest_udp(&mut self, ip: &IpInfo, frame: &SgList<'_>) {
        if let Err(d) = self.try_guest_udp(ip, frame) {
            self.drop_packet(d);
        }
    }

    fn try_guest_udp(&mut self, ip: &IpInfo, frame: &SgList<'_>) -> Result<(), NatDrop> {
        let mut hdr = [0u8; UDP_LEN];
        if ip.l4_len < UDP_LEN || frame.read(ip.l4_offset, &mut hdr) < UDP_LEN {
            return Err(NatDrop::Truncated);
        }
        let wire::UdpHeader {
            src_port: sport,
            dst_port: dport,
            len: udp_len,
            checksum: csum,
        } = wire::UdpHeader::parse(&hdr);
        if udp_len < UDP_LEN || udp_len > ip.l4_len {
            return Err(NatDrop::Truncated);
        }
        if csum != 0 && !ip.partial_csum {
            let mut sum = wire::pseudo_header(ip.src, ip.dst, 17, udp_len);
            frame.checksum(ip.l4_offset, udp_len, &mut sum);
            if sum.fold() != 0xffff {
                return Err(NatDrop::BadChecksum);
            }
        }
        let dst = self
            .config
            .map
            .outbound(SocketAddr::new(ip.dst, dport))
            .ok_or(NatDrop::Loopback)?;
        let key = FlowKey::Udp {
            guest_ip: ip.src,
            guest_port: sport,
        };
        let slot = match self.flows.lookup(&key) {
            Some(s) => s,
            None => self.open_udp(key, sport)?,
        };
        let mut iov = [EMPTY_IOVEC; MAX_SEGS];
        let n = frame.iovecs(ip.l4_offset + UDP_LEN, udp_len - UDP_LEN, &mut iov);
        if !self.udp_batch.has_room(n) {
            self.flush_udp();
        }
        self.flows.touch(slot);
        let flow = self.flows.datagram_mut(slot).ok_or(NatDrop::Socket)?;
        // Replies are accepted from where the guest sends to (endpoint-dependent filtering).
        flow.note_peer(dst);
        // Sent at the end of the TX pass, with the others (see `udp_batch`).
        let fd = flow.fd.as_raw_fd();
        self.udp_batch
            .push(fd, dst, &iov[..n], udp_len - UDP_LEN, ip.udp_segment);
        Ok(())
    }

    fn open_udp(&mut self, key: FlowKey, guest_port: u16) -> Result<usize, NatDrop> {
        let FlowKey::Udp { guest_ip, .. } = key else {
            return Err(NatDrop::Socket);
        };
        let fd = sock::dgram_socket(guest_ip, libc::IPPROTO_UDP).map_err(|e| {
            warn_once!("cannot open a UDP socket: {e}");
            NatDrop::Socket
        })?;
        // Keep the guest's port when the pod has it free; otherwise let the kernel choose.
        if sock::bind(&fd, sock::any(guest_ip, guest_port)).is_err() {
            sock::bind(&fd, sock::any(guest_ip, 0)).map_err(|_| NatDrop::Socket)?;
        }
        self.insert(key, Origin::Outbound, fd)
    }

    /// Forwards UDP datagrams arriving on `bind` in the pod to the guest's `guest_port`, from
    /// the sender's real address. The same socket carries the guest's replies from that port,
    /// so they come from the port the client sent to.
    pub fn forward_udp(
        &mut self,
        bind: SocketAddr,
        guest_ip: IpAddr,
        guest_port: u16,
    ) -> io::Result<()> {
        let fd = sock::dgram_socket(bind.ip(), libc::IPPROTO_UDP)?;
        sock::bind(&fd, bind)?;
        let key = FlowKey::Udp {
            guest_ip,
            guest_port,
        };
        if self.flows.lookup(&key).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("guest UDP port {guest_port} is already forwarded"),
            ));
        }
        self.insert(key, Origin::Forward, fd)
            .map_err(|d| io::Error::other(d.to_string()))?;
        Ok(())
    }

    /// Translates one guest ICMP message (echo requests only).
    pub fn guest_icmp(&mut self, ip: &IpInfo, frame: &SgList<'_>) {
        if let Err(d) = self.try_guest_icmp(ip, frame) {
            self.drop_packet(d);
        }
    }

    fn try_guest_icmp(&mut self, ip: &IpInfo, frame: &SgList<'_>) -> Result<(), NatDrop> {
        let mut hdr = [0u8; ICMP_LEN];
        if ip.l4_len < ICMP_LEN || frame.read(ip.l4_offset, &mut hdr) < ICMP_LEN {
            return Err(NatDrop::Truncated);
        }
        if !ip.partial_csum {
            // ICMPv6 covers a pseudo-header; ICMP for IPv4 does not.
            let mut sum = if ip.is_v6() {
                wire::pseudo_header(ip.src, ip.dst, ICMPV6, ip.l4_len)
            } else {
                Checksum::new()
            };
            frame.checksum(ip.l4_offset, ip.l4_len, &mut sum);
            if sum.fold() != 0xffff {
                return Err(NatDrop::BadChecksum);
            }
        }
        let echo = wire::EchoHeader::parse(&hdr, ip.is_v6());
        if !echo.is_request {
            return Err(NatDrop::UnsupportedIcmp);
        }
        let guest_id = echo.ident;
        let dst = self
            .config
            .map
            .outbound(SocketAddr::new(ip.dst, 0))
            .ok_or(NatDrop::Loopback)?;
        let key = FlowKey::Icmp {
            guest_ip: ip.src,
            guest_id,
            dst: ip.dst,
        };
        let slot = match self.flows.lookup(&key) {
            Some(s) => s,
            None => self.open_icmp(key, guest_id, dst)?,
        };
        let mut iov = [EMPTY_IOVEC; MAX_SEGS];
        let n = frame.iovecs(ip.l4_offset, ip.l4_len, &mut iov);
        self.flows.touch(slot);
        let flow = self.flows.datagram_mut(slot).ok_or(NatDrop::Socket)?;
        // The kernel sets the identifier to the socket's and computes the checksum.
        match sock::send_to(&flow.fd, &iov[..n], dst) {
            Ok(_) => {
                self.counters.icmp_out.inc();
                Ok(())
            }
            Err(e) => {
                warn_once!("ICMP echo to {dst} failed: {e}");
                Err(NatDrop::SendFailed)
            }
        }
    }

    fn open_icmp(
        &mut self,
        key: FlowKey,
        guest_id: u16,
        dst: SocketAddr,
    ) -> Result<usize, NatDrop> {
        let FlowKey::Icmp { guest_ip, .. } = key else {
            return Err(NatDrop::Socket);
        };
        let protocol = if guest_ip.is_ipv6() {
            libc::IPPROTO_ICMPV6
        } else {
            libc::IPPROTO_ICMP
        };
        let fd = match sock::dgram_socket(guest_ip, protocol) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
                warn_once!(
                    "cannot open an ICMP ping socket ({e}): podwire's group is outside \
                     net.ipv4.ping_group_range; guest pings are dropped"
                );
                return Err(NatDrop::PingNotPermitted);
            }
            Err(e) => {
                warn_once!("cannot open an ICMP ping socket: {e}");
                return Err(NatDrop::Socket);
            }
        };
        // A ping socket's port is its echo identifier: keep the guest's when it is free.
        if sock::bind(&fd, sock::any(guest_ip, guest_id)).is_err() {
            sock::bind(&fd, sock::any(guest_ip, 0)).map_err(|_| NatDrop::Socket)?;
        }
        // One peer per session: connected, the socket takes replies from it alone.
        sock::connect(&fd, dst).map_err(|_| NatDrop::Socket)?;
        self.insert(key, Origin::Outbound, fd)
    }

    /// Opens a datagram flow (see [`FlowTable::insert`]).
    fn insert(&mut self, key: FlowKey, origin: Origin, fd: OwnedFd) -> Result<usize, NatDrop> {
        let data = FlowData::Datagram(Box::new(Datagram::new(fd)));
        let registry = self.poll.registry();
        match self
            .flows
            .insert(registry, key, origin, data, Interest::READABLE)
        {
            Ok(slot) => {
                self.counters.flows_opened.inc();
                Ok(slot)
            }
            Err(Refused::DatagramFull) => {
                log_limited!(
                    warn,
                    "guest opened {} UDP ports and ping sessions: no more until some expire",
                    self.flows.limits().max_datagram
                );
                Err(NatDrop::DatagramBudget)
            }
            Err(Refused::Register) => Err(NatDrop::Socket),
            Err(why) => {
                log_limited!(warn, "flow table full ({why:?})");
                Err(NatDrop::TableFull)
            }
        }
    }

    fn remove(&mut self, slot: usize) {
        // The batch holds raw descriptors: none may close (and be reused) under it.
        self.flush_udp();
        if self.flows.datagram(slot).is_some() {
            self.flows.remove(self.poll.registry(), slot);
        }
    }

    /// Moves whatever the pod sent towards the guest, as long as it has RX buffers.
    pub fn poll(&mut self, rx: &mut dyn RxSink, ep: &Endpoints) {
        // Flows that stalled on a full RX ring go first: their data is the oldest.
        let mut parked = std::mem::take(&mut self.parked);
        for &slot in &parked {
            if let Some(flow) = self.flows.datagram_mut(slot) {
                flow.parked = false;
            }
            self.drain_flow(slot, rx, ep);
        }
        parked.clear();
        if self.parked.is_empty() {
            // Keep the vector's capacity for next time: no allocation in the steady state.
            self.parked = parked;
        }
        if self
            .poll
            .poll(&mut self.events, Some(Duration::ZERO))
            .is_err()
        {
            return;
        }
        self.tcp.resume_parked(&mut self.flows, rx, ep);
        let mut tick = false;
        let mut ready = [(0usize, (false, false)); EVENTS_PER_POLL];
        let mut nready = 0;
        for ev in self.events.iter() {
            if ev.token() == TIMER_TOKEN {
                tick = true;
            } else if ev.token() == DELACK_TOKEN {
                drain_timer(&self.delack);
                self.delack_armed = false;
                self.tcp.release_delayed_acks(&mut self.flows);
            } else if nready < ready.len() {
                ready[nready] = (ev.token().0, (ev.is_writable(), ev.is_read_closed()));
                nready += 1;
            }
        }
        for &(token, readiness) in &ready[..nready] {
            if token >= tcp::LISTEN_BASE {
                let registry = self.poll.registry();
                self.tcp.listener_event(
                    &mut self.flows,
                    registry,
                    &self.config.map,
                    token - tcp::LISTEN_BASE,
                    rx,
                    ep,
                );
            } else if self.flows.tcp(token).is_some() {
                let registry = self.poll.registry();
                self.tcp
                    .socket_event(&mut self.flows, registry, token, readiness, rx, ep);
            } else {
                self.drain_flow(token, rx, ep);
            }
        }
        if tick {
            self.on_tick(rx, ep);
        }
        self.tcp
            .flush_acks(&mut self.flows, self.poll.registry(), rx, ep);
    }

    /// The timer: TCP retransmissions every tick, idle datagram flows once a second.
    fn on_tick(&mut self, rx: &mut dyn RxSink, ep: &Endpoints) {
        drain_timer(&self.timer);
        let now = Instant::now();
        self.flows.set_now(now);
        self.tcp
            .tick(&mut self.flows, self.poll.registry(), now, rx, ep);
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(TICKS_PER_SWEEP) {
            self.expire_idle(now, rx, ep);
        }
    }

    fn drain_flow(&mut self, slot: usize, rx: &mut dyn RxSink, ep: &Endpoints) {
        self.flows.touch(slot);
        loop {
            let outcome = match self.flows.get(slot) {
                Some(Entry {
                    data: FlowData::Datagram(flow),
                    ..
                }) if flow.parked => return,
                Some(Entry {
                    key,
                    origin,
                    data: FlowData::Datagram(flow),
                    ..
                }) => match key {
                    FlowKey::Udp { .. } => self.recv_udp(*key, *origin, flow, rx, ep),
                    FlowKey::Icmp { .. } => self.recv_icmp(*key, flow, rx, ep),
                    FlowKey::Tcp { .. } => return,
                },
                _ => return,
            };
            match outcome {
                RecvOutcome::Delivered | RecvOutcome::Dropped => {}
                RecvOutcome::Drained => return,
                RecvOutcome::Stalled => {
                    self.counters.rx_stalls.inc();
                    if let Some(flow) = self.flows.datagram_mut(slot) {
                        flow.parked = true;
                        self.parked.push(slot);
                    }
                    return;
                }
            }
        }
    }

    /// The IPv4 identification for the next frame to the guest. A `Cell` because the
    /// receive closures only borrow `self`.
    fn next_ident(&self) -> u16 {
        let id = self.ip_ident.get().wrapping_add(1);
        self.ip_ident.set(id);
        id
    }

    /// Receives one datagram from `flow` straight into guest RX buffers at `offset` (at most
    /// `max` bytes), then lets `frame_it` write the headers in front; returns what happened.
    #[allow(clippy::too_many_arguments)]
    fn recv_datagram(
        &self,
        flow: &Datagram,
        rx: &mut dyn RxSink,
        offset: usize,
        max: usize,
        partial: Option<PartialCsum>,
        delivered: &Counter,
        frame_it: &mut dyn FnMut(&mut SgList<'_>, &sock::Received) -> bool,
    ) -> RecvOutcome {
        let mut outcome = RecvOutcome::Drained;
        let mut fill = |frame: &mut SgList<'_>| {
            let mut iov = [EMPTY_IOVEC; MAX_SEGS];
            let n = frame.iovecs(offset, max, &mut iov);
            let got = match sock::recv_from(&flow.fd, &mut iov[..n]) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(_) => {
                    outcome = RecvOutcome::Dropped;
                    return None;
                }
            };
            if got.truncated {
                self.counters.drop_too_big_for_guest.inc();
                warn_once!("datagram from {} larger than the guest MTU", got.from);
                outcome = RecvOutcome::Dropped;
                return None;
            }
            if !frame_it(frame, &got) {
                outcome = RecvOutcome::Dropped;
                return None;
            }
            outcome = RecvOutcome::Delivered;
            Some(offset + got.len)
        };
        let result = match partial {
            Some(csum) => rx.push_partial(offset + max, csum, &mut fill),
            None => rx.push(offset + max, &mut fill),
        };
        match result {
            Ok(()) => {
                delivered.inc();
                RecvOutcome::Delivered
            }
            Err(RxError::NoBuffers) | Err(RxError::NotReady) => RecvOutcome::Stalled,
            Err(RxError::Abandoned) => outcome,
        }
    }

    /// Receives a flow's datagrams into the guest's RX buffers, up to [`RX_BATCH`] with one
    /// `recvmmsg`, and writes the headers in front of each.
    fn recv_udp(
        &self,
        key: FlowKey,
        origin: Origin,
        flow: &Datagram,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) -> RecvOutcome {
        // A forwarded port takes datagrams from anyone; a guest's port only from where it sent.
        let filtered = origin != Origin::Forward;
        let FlowKey::Udp {
            guest_ip,
            guest_port,
        } = key
        else {
            return RecvOutcome::Drained;
        };
        let v6 = guest_ip.is_ipv6();
        let offset = wire::udp_payload_offset(v6);
        let max_payload = self
            .config
            .guest_mtu
            .saturating_sub(wire::ip_len(v6) + UDP_LEN);
        let partial = rx.partial_csum();
        let mut outcome = RecvOutcome::Drained;
        let mut fill = |frames: &mut [SgList<'_>], lens: &mut [usize]| -> usize {
            // One pool of iovecs carved frame by frame: a frame is usually one or two buffers.
            let mut pool = [EMPTY_IOVEC; MAX_SEGS * 2];
            let mut iovs: [&mut [libc::iovec]; RX_BATCH] = Default::default();
            let mut rest: &mut [libc::iovec] = &mut pool;
            let mut lent = 0;
            for (frame, slot) in frames.iter().zip(iovs.iter_mut()) {
                let Some(room) = rest.get_mut(..MAX_SEGS) else {
                    break;
                };
                let Ok(room) = <&mut [libc::iovec; MAX_SEGS]>::try_from(room) else {
                    break;
                };
                let n = frame.iovecs(offset, max_payload, room);
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut(n);
                *slot = mine;
                rest = tail;
                lent += 1;
            }
            let mut batch = sock::RecvBatch::new();
            let got = match sock::recv_many(&flow.fd, &mut iovs[..lent], &mut batch) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return 0,
                Err(_) => {
                    outcome = RecvOutcome::Dropped;
                    return 0;
                }
            };
            if got > 0 {
                self.counters.udp_recv_calls.inc();
            }
            for i in 0..got {
                let d = batch.received(i);
                lens[i] = if d.truncated {
                    self.counters.drop_too_big_for_guest.inc();
                    warn_once!("datagram from {} larger than the guest MTU", d.from);
                    0
                } else if filtered && !flow.expects(d.from) {
                    self.counters.udp_drop_unsolicited.inc();
                    log_limited!(
                        debug,
                        "dropped a datagram from {} to a guest port that never sent there",
                        d.from
                    );
                    0
                } else {
                    let src = self.config.map.inbound(d.from);
                    let frame = &mut frames[i];
                    let csum = if partial {
                        L4Csum::Partial
                    } else {
                        L4Csum::Full(frame)
                    };
                    let headers = wire::udp_frame_headers(
                        ep,
                        (src.ip(), src.port()),
                        (guest_ip, guest_port),
                        d.len,
                        self.next_ident(),
                        csum,
                    );
                    let ok = headers.write_to(frame);
                    if ok {
                        self.counters.udp_in.inc();
                        offset + d.len
                    } else {
                        0
                    }
                };
            }
            flow.next_rx_batch(lent, got);
            // A full batch may have more behind it.
            if got == lent {
                outcome = RecvOutcome::Delivered;
            }
            got
        };
        let csum = partial.then_some(wire::udp_csum(v6));
        match rx.push_batch(flow.rx_batch(), offset + max_payload, csum, &mut fill) {
            Ok(_) => outcome,
            Err(RxError::NoBuffers) | Err(RxError::NotReady) => RecvOutcome::Stalled,
            Err(RxError::Abandoned) => outcome,
        }
    }

    fn recv_icmp(
        &self,
        key: FlowKey,
        flow: &Datagram,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) -> RecvOutcome {
        let FlowKey::Icmp {
            guest_ip, guest_id, ..
        } = key
        else {
            return RecvOutcome::Drained;
        };
        let v6 = guest_ip.is_ipv6();
        let offset = wire::l4_offset(v6);
        let max_msg = self.config.guest_mtu.saturating_sub(wire::ip_len(v6));
        let ident = self.next_ident();
        let counter = &self.counters.icmp_in;
        let proto = if v6 {
            IpProtocol::Icmpv6
        } else {
            IpProtocol::Icmp
        };
        self.recv_datagram(
            flow,
            rx,
            offset,
            max_msg,
            None,
            counter,
            &mut |frame, got| {
                let mut hdr = [0u8; ICMP_LEN];
                if got.len < ICMP_LEN || frame.read(offset, &mut hdr) < ICMP_LEN {
                    return false;
                }
                let src = self.config.map.inbound(got.from);
                // Give the guest back its own identifier, with a checksum to match.
                let kernel = wire::EchoHeader::parse(&hdr, v6);
                let csum = if v6 {
                    // The pseudo-header holds the addresses the guest sees: sum it all anew.
                    wire::EchoHeader::set_ident_and_checksum(&mut hdr, guest_id, 0);
                    let mut sum = wire::pseudo_header(src.ip(), guest_ip, ICMPV6, got.len);
                    sum.add(&hdr);
                    frame.checksum(offset + ICMP_LEN, got.len - ICMP_LEN, &mut sum);
                    sum.finish()
                } else {
                    wire::adjust_checksum(kernel.checksum, kernel.ident, guest_id)
                };
                wire::EchoHeader::set_ident_and_checksum(&mut hdr, guest_id, csum);
                let l3 = wire::eth_ip_header(ep, src.ip(), guest_ip, proto, got.len, ident);
                frame.write(0, l3.bytes()) && frame.write(offset, &hdr)
            },
        )
    }

    /// Closes every flow that has been idle longer than the timeout of its kind and state at
    /// `now` (see [`flow::Timeouts`]); a TCP connection is reset both ways.
    pub fn expire_idle(&mut self, now: Instant, rx: &mut dyn RxSink, ep: &Endpoints) {
        let t = self.config.timeouts;
        for slot in 0..self.flows.slots() {
            let Some(entry) = self.flows.get(slot) else {
                continue;
            };
            let idle = match (&entry.key, &entry.data) {
                _ if entry.origin == Origin::Forward => continue,
                (FlowKey::Udp { .. }, _) => t.udp,
                (FlowKey::Icmp { .. }, _) => t.icmp,
                (FlowKey::Tcp { .. }, FlowData::Tcp(conn)) => conn.idle_timeout(&t),
                (FlowKey::Tcp { .. }, FlowData::Datagram(_)) => continue,
            };
            if now.saturating_duration_since(entry.last_active) <= idle {
                continue;
            }
            self.counters.flows_expired.inc();
            if matches!(entry.data, FlowData::Tcp(_)) {
                let registry = self.poll.registry();
                self.tcp.expire(&mut self.flows, registry, slot, rx, ep);
            } else {
                self.remove(slot);
            }
        }
    }

    /// Closes every flow but the forwarded ports (the guest went away, or podwire is ending).
    pub fn clear(&mut self) {
        self.tcp.clear(&mut self.flows, self.poll.registry());
        for slot in 0..self.flows.slots() {
            if self
                .flows
                .get(slot)
                .is_some_and(|f| f.origin != Origin::Forward)
            {
                self.remove(slot);
            }
        }
        self.parked.clear();
    }
}

const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// A non-blocking timerfd, ticking every `period`, or disarmed (see [`arm_once`]).
fn new_timer(period: Option<Duration>) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned at once.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd, ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(period) = period {
        set_timer(&fd, period, period)?;
    }
    Ok(fd)
}

/// Fires `timer` once, `after` from now.
fn arm_once(timer: &OwnedFd, after: Duration) -> io::Result<()> {
    set_timer(timer, after, Duration::ZERO)
}

fn set_timer(timer: &OwnedFd, first: Duration, period: Duration) -> io::Result<()> {
    let ts = |d: Duration| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: ts(period),
        it_value: ts(first),
    };
    // SAFETY: a valid itimerspec on a timerfd we own.
    if unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a timerfd's expiration count, so it stops being readable.
fn drain_timer(timer: &OwnedFd) {
    let mut expirations = 0u64;
    // SAFETY: reading 8 bytes into a local u64.
    unsafe { libc::read(timer.as_raw_fd(), (&mut expirations as *mut u64).cast(), 8) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn only_a_rule_leads_to_the_pods_loopback() {
        let gw: IpAddr = Ipv4Addr::new(10, 0, 2, 1).into();
        let map = AddrMap::new(vec![MapRule {
            guest: gw,
            port: None,
            host: Ipv4Addr::LOCALHOST.into(),
        }]);
        let to = |ip: IpAddr| map.outbound(SocketAddr::new(ip, 80));
        assert_eq!(
            to(gw),
            Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 80))
        );
        for local in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = local.parse().unwrap();
            assert!(is_host_local(ip), "{local}");
            assert_eq!(to(ip), None, "{local}");
        }
        for remote in ["198.18.0.1", "fd00::1", "::ffff:198.18.0.1", "2001:db8::1"] {
            let ip: IpAddr = remote.parse().unwrap();
            assert_eq!(to(ip), Some(SocketAddr::new(ip, 80)), "{remote}");
        }
    }
}
