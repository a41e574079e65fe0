//! TCP between the guest and the pod, without a TCP stack of podwire's own.
//!
//! # Theory of operation
//!
//! Each guest TCP connection is mirrored onto one kernel TCP socket in the pod. podwire speaks
//! just enough TCP towards the guest to keep two byte streams in step with that socket; the
//! kernel does congestion control, retransmission and everything else towards the real peer.
//! No payload is ever held in podwire's memory:
//!
//! - **guest → pod**: a segment's payload is written with `sendmsg` straight from guest memory.
//!   Only what the socket accepted is acknowledged; the window offered to the guest is the room
//!   left in the socket's send buffer, so a well-behaved guest never sends what cannot be taken.
//!   When the socket was full and drains, a window update tells the guest to go on.
//! - **pod → guest**: data is read with `MSG_PEEK` straight into the guest's RX buffers, one
//!   segment per frame, as far as the guest's window allows. It stays in the socket until the
//!   guest acknowledges it; then it is dropped with `MSG_TRUNC` (no copy). `SO_PEEK_OFF` makes
//!   each peek continue where the last one ended; on kernels without it (before 6.9), the bytes
//!   already sent are peeked into a scratch buffer first. Retransmission (timeout, or three
//!   duplicate ACKs) rewinds the peek offset to the oldest unacknowledged byte and sends again.
//!
//! Connections the guest opens: its SYN becomes a non-blocking `connect`; the SYN-ACK is sent
//! only once the connect succeeded, a RST if it was refused, an ICMP host-unreachable if the
//! kernel reports the peer unreachable. Connections to forwarded pod ports: podwire accepts,
//! sends the guest a SYN from the client's real address, and relays once the guest answers.
//!
//! FIN in either direction is a half-close (`shutdown(SHUT_WR)` on the socket, or a FIN to the
//! guest once the socket reached end of file and every byte was sent); RST in either direction
//! aborts both sides (a socket closed with a zero linger sends RST to the peer). A connection is
//! forgotten once both FINs are acknowledged, on RST, when retransmission gives up, or when the
//! guest goes away: no socket, table entry or buffer outlives it.
//!
//! ACKs to the guest are few, because each costs it an interrupt and a pass of its stack: bulk
//! data is acknowledged every [`BULK_ACK`] bytes or after [`DELACK`], and a small request's
//! ACK waits those 2 ms to ride on the answer; out-of-order data, FINs and probes get one at once.
//!
//! MSS is the smaller of the guest's and the guest MTU's; window scaling is used when the guest
//! offers it. No SACK, no timestamps: the guest link neither loses nor reorders frames by itself.
//! Per connection podwire keeps one `Conn` and a table entry (about 180 bytes in all, measured by
//! `perf/tests/e2e_flows.rs`); the bytes in flight live in the kernel's socket buffers.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use smoltcp::wire::{TcpOption, TcpPacket};

use podwire_frame::{log_limited, warn_once, Checksum, GsoKind, RxError, RxSink, SgList, MAX_SEGS};
use smoltcp::wire::IpProtocol;

use crate::flow::{FlowData, FlowKey, FlowTable, Origin, Refused, Timeouts};
use crate::wire::{
    self, Endpoints, IpInfo, L4Csum, ETH_LEN, IPV4_LEN, IPV6_LEN, MAX_L3_LEN, TCP_ACK, TCP_FIN,
    TCP_LEN, TCP_PSH, TCP_RST, TCP_SYN,
};
use crate::{sock, AddrMap};

mod inspect;
mod migrate;

pub use migrate::{size_send_buffer, AdoptError, TcpFlowState};

/// mio tokens of forwarded-port listeners start here; below are the flows (token = slot).
pub const LISTEN_BASE: usize = 1 << 41;
/// Silence after which the pod side of a connection sends keepalive probes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(300);
/// The window scale podwire offers the guest: windows up to 8 MiB.
const OUR_WSCALE: u8 = 7;
const INITIAL_RTO: Duration = Duration::from_secs(1);
const MAX_RTO: Duration = Duration::from_secs(60);
/// Retransmissions of one segment before the connection is reset.
const MAX_RETRIES: u8 = 8;
/// SYNs sent to the guest for an inbound connection before giving up.
const MAX_SYN_RETRIES: u8 = 5;
/// Bytes in flight towards the guest without SO_PEEK_OFF: what the scratch prefix can skip.
const SCRATCH_LEN: usize = 64 * 1024;
const MAX_SCRATCH_SEGS: usize = 64;
/// Send buffer asked for on every connection (the kernel doubles it, capped by wmem_max).
const SNDBUF: i32 = 2 * 1024 * 1024;
/// How long the ACK of a small pushed segment waits for data to ride on: a request answered
/// within this time costs the guest one frame instead of two.
pub const DELACK: Duration = Duration::from_millis(2);
/// Bulk data from the guest is acknowledged at least this often.
pub const BULK_ACK: u32 = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    guest_ip: IpAddr,
    guest_port: u16,
    /// The remote end as the guest sees it.
    remote_ip: IpAddr,
    remote_port: u16,
}

impl From<ConnKey> for FlowKey {
    fn from(k: ConnKey) -> FlowKey {
        FlowKey::Tcp {
            guest_ip: k.guest_ip,
            guest_port: k.guest_port,
            remote_ip: k.remote_ip,
            remote_port: k.remote_port,
        }
    }
}

impl ConnKey {
    fn v6(&self) -> bool {
        self.guest_ip.is_ipv6()
    }

    /// The largest segment towards the guest: `limit` is for IPv4, whose header is 20 bytes
    /// shorter than IPv6's.
    fn mss_limit(&self, limit: u16) -> u16 {
        if self.v6() {
            limit.saturating_sub((IPV6_LEN - IPV4_LEN) as u16)
        } else {
            limit
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Guest sent SYN; the pod socket is connecting.
    Connecting,
    /// Connected; SYN-ACK sent to the guest, waiting for its ACK.
    SynAckSent,
    /// Inbound: SYN sent to the guest, waiting for its SYN-ACK.
    SynSent,
    Established,
}

pub struct Conn {
    key: ConnKey,
    pub(crate) fd: OwnedFd,
    state: State,
    /// Our sequence numbers (towards the guest).
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    /// The highest sequence number sent: after a rewind, ACKs up to here are still valid.
    snd_max: u32,
    /// Where our FIN sits in sequence space, once sent.
    fin_seq: Option<u32>,
    /// The guest's window, in bytes.
    snd_wnd: u32,
    /// Next sequence number expected from the guest.
    rcv_nxt: u32,
    guest_mss: u16,
    /// The guest's window scale, if it offered one (then ours is [`OUR_WSCALE`]).
    guest_wscale: Option<u8>,
    ack_pending: bool,
    queued_ack: bool,
    /// The ACK for a small pushed segment is held back for [`DELACK`], to ride on the
    /// answer (see [`TcpTable::guest_segment`]).
    ack_delayed: bool,
    /// Payload bytes from the guest since the last segment that acknowledged them.
    unacked: u32,
    parked: bool,
    /// The receive window last offered to the guest, in bytes. When it was small, a window
    /// update follows as soon as the socket has room again.
    adv_wnd: u32,
    /// The socket's send buffer size, read once after podwire set it (setting it turns the
    /// kernel's autotuning off, so it stays).
    sndbuf: u32,
    /// The pod side reached end of file.
    sock_eof: bool,
    fin_from_guest: bool,
    fin_sent: bool,
    dup_acks: u8,
    retries: u8,
    rto: Duration,
    rto_deadline: Option<Instant>,
    /// The guest's SYN, for an ICMP error about it.
    syn_seq: u32,
    /// On [`TcpTable::owed_syns`]: the list holds each connection at most once.
    syn_owed: bool,
    /// For operators (`podwire flows`): when it was opened, and whether from the pod.
    opened: Instant,
    from_pod: bool,
}

impl Conn {
    /// A connection in `state` with nothing sent or received yet.
    fn new(key: ConnKey, fd: OwnedFd, state: State) -> Conn {
        let iss = random_u32();
        Conn {
            key,
            fd,
            state,
            iss,
            snd_una: iss,
            snd_nxt: iss.wrapping_add(1),
            snd_max: iss.wrapping_add(1),
            fin_seq: None,
            snd_wnd: 0,
            rcv_nxt: 0,
            guest_mss: 536,
            guest_wscale: None,
            ack_pending: false,
            queued_ack: false,
            ack_delayed: false,
            unacked: 0,
            parked: false,
            adv_wnd: 0,
            sndbuf: 0,
            sock_eof: false,
            fin_from_guest: false,
            fin_sent: false,
            dup_acks: 0,
            retries: 0,
            rto: INITIAL_RTO,
            rto_deadline: None,
            syn_seq: 0,
            syn_owed: false,
            opened: Instant::now(),
            from_pod: state == State::SynSent,
        }
    }

    fn window_shift(&self) -> u8 {
        if self.guest_wscale.is_some() {
            OUR_WSCALE
        } else {
            0
        }
    }

    /// The window field to send now: the room in the socket's send buffer. Remembered, so
    /// that a small window can be reopened later.
    fn advertise(&mut self) -> u16 {
        let shift = self.window_shift();
        let field = (send_room(&self.fd, self.sndbuf) >> shift).min(u32::from(u16::MAX)) as u16;
        self.adv_wnd = u32::from(field) << shift;
        field
    }

    /// Sends a segment without payload at the connection's current sequence and ACK numbers;
    /// false if the guest's RX ring had no room.
    fn send_segment(&self, rx: &mut dyn RxSink, ep: &Endpoints, flags: u8, window: u16) -> bool {
        send_control(
            rx,
            ep,
            self.key,
            self.snd_nxt,
            self.rcv_nxt,
            flags,
            window,
            &[],
        )
    }

    /// The guest was offered less than two segments' worth: it may be stalled on us.
    fn window_update_wanted(&self) -> bool {
        self.state == State::Established && self.adv_wnd < 2 * u32::from(self.guest_mss.max(1))
    }

    fn in_flight(&self) -> u32 {
        self.snd_nxt.wrapping_sub(self.snd_una)
    }

    fn done(&self) -> bool {
        self.fin_from_guest && self.fin_sent && self.snd_una == self.snd_nxt
    }

    /// How long this connection may stay idle in its state before it is reset.
    pub(crate) fn idle_timeout(&self, t: &Timeouts) -> Duration {
        match self.state {
            State::Connecting | State::SynAckSent | State::SynSent => t.tcp_half_open,
            State::Established if self.fin_from_guest || self.fin_sent => t.tcp_half_closed,
            State::Established => t.tcp_established,
        }
    }
}

struct Listener {
    fd: OwnedFd,
    guest_port: u16,
}

podwire_frame::counters! {
    /// What the TCP translation did.
    pub struct TcpCounters {
        /// Connections the guest opened.
        opened_by_guest: Count,
        /// Connections from the pod forwarded to the guest.
        opened_from_pod: Count,
        /// Connections closed.
        closed: Count,
        /// Guest connections whose connect to the pod failed.
        connect_failed: Count,
        /// Resets the guest sent.
        rst_from_guest: Count,
        /// Resets sent to the guest.
        rst_to_guest: Count,
        /// Segments sent to the guest again.
        retransmits: Count,
        /// Payload bytes from the guest written to sockets.
        bytes_from_guest: Bytes,
        /// Payload bytes from sockets delivered to the guest.
        bytes_to_guest: Bytes,
        /// Socket writes that took less than the guest sent.
        short_writes: Count,
        /// Guest segments with a bad checksum.
        drop_bad_checksum: Drop,
        /// Guest segments cut short.
        drop_truncated: Drop,
        /// Guest segments outside the receive window.
        drop_out_of_window: Drop,
        /// Guest SYNs that found the flow table (the guest's share of it) full.
        drop_table_full: Drop,
        /// Connections on forwarded ports refused: the inbound budget, or one remote
        /// address's share of it, was spent.
        drop_inbound_budget: Drop,
        /// Guest SYNs to the pod's own loopback or unspecified address (refused with a RST).
        drop_loopback: Drop,
        /// Guest segments for no known connection.
        drop_no_connection: Drop,
        /// Times a connection had to wait for guest RX buffers.
        rx_stalls: Count,
        /// TCP segments the guest sent (data, ACKs and control alike).
        segments_from_guest: Count,
        /// Frames carrying socket data to the guest.
        data_frames_to_guest: Count,
        /// `sendmsg` calls writing guest payload to sockets.
        send_calls: Count,
        /// Receive calls on TCP sockets: peeks into guest buffers and discards of acknowledged data.
        recv_calls: Count,
    }
}

/// The TCP connections and listeners.
pub struct TcpTable {
    /// Indexed by token; a removed forward leaves `None` (reused by the next one).
    listeners: Vec<Option<Listener>>,
    acks: Vec<usize>,
    /// Connections holding back an ACK (see [`DELACK`]).
    delayed: Vec<usize>,
    parked: Vec<usize>,
    /// Connections whose socket failed, to reset at the end of the pass.
    failed: Vec<usize>,
    /// Handshakes whose SYN or SYN-ACK found the guest's RX ring full: sent again on the next
    /// RX kick rather than a second later by the retransmission timer.
    owed_syns: Vec<usize>,
    gather: Gather,
    peek_off: bool,
    scratch: Vec<u8>,
    mss_limit: u16,
    pub counters: TcpCounters,
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a valid int option value for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value = 0i32;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: valid out-parameters.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// A TCP socket of `ip`'s family.
/// Keepalive probes on the pod side after [`KEEPALIVE_IDLE`] of silence: a peer that went
/// away without a word is found, and its connection reset, long before the idle timeout.
fn keepalive(fd: RawFd) {
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    let idle = KEEPALIVE_IDLE.as_secs() as i32;
    let _ = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle);
    let _ = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 30);
    let _ = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 8);
}

fn tcp_socket(ip: IpAddr) -> io::Result<OwnedFd> {
    sock::socket(sock::family(ip), libc::SOCK_STREAM, 0)
}

/// Closes a socket so that the peer sees a RST.
fn abort_socket(fd: &OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid linger struct; closing happens when the OwnedFd drops.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

fn random_u32() -> u32 {
    let mut v = 0u32;
    // SAFETY: getrandom writes at most 4 bytes into v.
    unsafe { libc::getrandom((&mut v as *mut u32).cast(), 4, libc::GRND_NONBLOCK) };
    v
}

/// The guest's TCP header, as far as podwire cares.
struct Segment {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    mss: Option<u16>,
    wscale: Option<u8>,
    payload_offset: usize,
    payload_len: usize,
}

fn parse_segment(ip: &IpInfo, frame: &SgList<'_>) -> Result<Segment, &'static str> {
    let mut hdr = [0u8; 60];
    if ip.l4_len < TCP_LEN || frame.read(ip.l4_offset, &mut hdr[..TCP_LEN]) < TCP_LEN {
        return Err("truncated");
    }
    let hdr_len = usize::from(TcpPacket::new_unchecked(&hdr[..TCP_LEN]).header_len());
    if hdr_len < TCP_LEN || hdr_len > ip.l4_len {
        return Err("truncated");
    }
    frame.read(ip.l4_offset + TCP_LEN, &mut hdr[TCP_LEN..hdr_len]);
    let mut sum = wire::pseudo_header(ip.src, ip.dst, 6, ip.l4_len);
    if !ip.partial_csum {
        frame.checksum(ip.l4_offset, ip.l4_len, &mut sum);
    }
    if !ip.partial_csum && sum.fold() != 0xffff {
        return Err("checksum");
    }
    // The whole header (options included) is on the stack: smoltcp's view reads it.
    let view = TcpPacket::new_unchecked(&hdr[..hdr_len]);
    let mut seg = Segment {
        sport: view.src_port(),
        dport: view.dst_port(),
        seq: view.seq_number().0 as u32,
        ack: view.ack_number().0 as u32,
        flags: wire::tcp_flags(&view),
        window: view.window_len(),
        mss: None,
        wscale: None,
        payload_offset: ip.l4_offset + hdr_len,
        payload_len: ip.l4_len - hdr_len,
    };
    let mut opts = view.options();
    while !opts.is_empty() {
        match TcpOption::parse(opts) {
            Ok((_, TcpOption::EndOfList)) => break,
            Ok((rest, option)) => {
                match option {
                    TcpOption::MaxSegmentSize(mss) => seg.mss = Some(mss),
                    TcpOption::WindowScale(shift) => seg.wscale = Some(shift.min(14)),
                    _ => {}
                }
                opts = rest;
            }
            // An option smoltcp rejects (an MSS or window scale of the wrong length) is
            // skipped if its length is sound, as any unknown option; otherwise parsing ends.
            Err(_) => match opts.get(1).map(|&len| usize::from(len)) {
                Some(len) if len >= 2 && len <= opts.len() => opts = &opts[len..],
                _ => break,
            },
        }
    }
    Ok(seg)
}

/// `a` comes after `b` in sequence space.
fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn seq_ge(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

impl TcpTable {
    pub fn new(guest_mtu: usize) -> TcpTable {
        TcpTable {
            listeners: Vec::new(),
            acks: Vec::new(),
            delayed: Vec::new(),
            parked: Vec::new(),
            failed: Vec::new(),
            owed_syns: Vec::new(),
            gather: Gather::new(),
            peek_off: true,
            scratch: Vec::new(),
            mss_limit: guest_mtu
                .saturating_sub(IPV4_LEN + TCP_LEN)
                .clamp(536, 65495) as u16,
            counters: TcpCounters::default(),
        }
    }

    /// Handshakes waiting for guest RX buffers (for tests: bounded by the connections).
    #[doc(hidden)]
    pub fn owed_syns(&self) -> usize {
        self.owed_syns.len()
    }

    /// Listens on `bind` in the pod and forwards connections to the guest's `guest_port`.
    pub fn listen(
        &mut self,
        registry: &Registry,
        bind: SocketAddr,
        guest_port: u16,
    ) -> io::Result<()> {
        let fd = tcp_socket(bind.ip())?;
        setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        sock::bind(&fd, bind)?;
        // SAFETY: a bound socket.
        if unsafe { libc::listen(fd.as_raw_fd(), 1024) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let index = self
            .listeners
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.listeners.len());
        let token = Token(LISTEN_BASE + index);
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        let listener = Some(Listener { fd, guest_port });
        match self.listeners.get_mut(index) {
            Some(slot) => *slot = listener,
            None => self.listeners.push(listener),
        }
        Ok(())
    }

    /// Opens a connection's flow (see [`FlowTable::insert`]), counting a refusal.
    fn insert(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        origin: Origin,
        conn: Conn,
    ) -> Option<usize> {
        if let Err(why) = flows.admits(origin, false) {
            self.count_refused(why);
            // The peer (or the guest's connect, already under way) gets a reset, not a close.
            abort_socket(&conn.fd);
            return None;
        }
        // The window offered to the guest is the room in this buffer: start it large, or the
        // guest's small window keeps the socket app-limited and autotuning never grows it.
        let mut conn = conn;
        let fd = conn.fd.as_raw_fd();
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF);
        conn.sndbuf = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)
            .unwrap_or(0)
            .max(0) as u32;
        keepalive(fd);
        if self.peek_off && setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).is_err() {
            self.peek_off = false;
            warn_once!("kernel without SO_PEEK_OFF for TCP: peeking past sent data costs a copy");
        }
        let key = FlowKey::from(conn.key);
        let interest = Interest::READABLE | Interest::WRITABLE;
        match flows.insert(registry, key, origin, FlowData::Tcp(conn), interest) {
            Ok(slot) => Some(slot),
            Err(why) => {
                self.count_refused(why);
                None
            }
        }
    }

    fn count_refused(&self, why: Refused) {
        match why {
            Refused::InboundFull | Refused::SourceCap => {
                self.counters.drop_inbound_budget.inc();
                log_limited!(warn, "refused a connection on a forwarded port: {why:?}");
            }
            _ => {
                self.counters.drop_table_full.inc();
                log_limited!(warn, "refused a TCP connection: flow table {why:?}");
            }
        }
    }

    fn remove(&mut self, flows: &mut FlowTable, registry: &Registry, slot: usize) {
        let Some(syn_owed) = flows.tcp(slot).map(|c| c.syn_owed) else {
            return;
        };
        if flows.remove(registry, slot).is_some() {
            // A failure queued for this connection must not reset the next one in its slot,
            // nor its gathered payload go to that one's socket. (`failed` lives for one pass;
            // `owed_syns` holds this slot only if flagged, so closing stays O(1) otherwise.)
            self.failed.retain(|&s| s != slot);
            if syn_owed {
                self.owed_syns.retain(|&s| s != slot);
            }
            if self.gather.slot == Some(slot) {
                self.gather.slot = None;
                self.gather.clear();
            }
            self.counters.closed.inc();
        }
    }

    /// Ends a connection that stayed idle past its timeout: both sides see a RST.
    pub fn expire(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        slot: usize,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        self.reset(flows, registry, slot, rx, ep);
    }

    /// Closes every connection (the guest went away): peers see a RST.
    pub fn clear(&mut self, flows: &mut FlowTable, registry: &Registry) {
        for slot in 0..flows.slots() {
            if let Some(conn) = flows.tcp(slot) {
                abort_socket(&conn.fd);
                self.remove(flows, registry, slot);
            }
        }
        self.acks.clear();
        self.parked.clear();
    }

    /// One TCP segment from the guest.
    // The flow table and the poll registry travel together here; the later split of this
    // file by concern gives them one context.
    #[allow(clippy::too_many_arguments)]
    pub fn guest_segment(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        map: &AddrMap,
        ip: &IpInfo,
        frame: &SgList<'_>,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        self.counters.segments_from_guest.inc();
        let seg = match parse_segment(ip, frame) {
            Ok(s) => s,
            Err("checksum") => {
                self.counters.drop_bad_checksum.inc();
                warn_once!("dropped a guest TCP segment with a bad checksum");
                return;
            }
            Err(_) => {
                self.counters.drop_truncated.inc();
                warn_once!("dropped a truncated guest TCP segment");
                return;
            }
        };
        let key = ConnKey {
            guest_ip: ip.src,
            guest_port: seg.sport,
            remote_ip: ip.dst,
            remote_port: seg.dport,
        };
        let Some(slot) = flows.lookup(&FlowKey::from(key)) else {
            self.no_connection(flows, registry, map, key, &seg, rx, ep);
            return;
        };
        flows.touch(slot);
        if seg.flags & TCP_RST != 0 {
            self.counters.rst_from_guest.inc();
            if let Some(conn) = flows.tcp_mut(slot) {
                abort_socket(&conn.fd);
            }
            self.remove(flows, registry, slot);
            return;
        }
        let Some(conn) = flows.tcp_mut(slot) else {
            return;
        };
        match conn.state {
            State::Connecting => {}
            State::SynAckSent if seg.flags & TCP_SYN != 0 => {
                // Our SYN-ACK was lost: the guest repeats its SYN.
                if !Self::send_syn(conn, rx, ep, self.mss_limit) {
                    owe_syn(&mut self.owed_syns, conn, slot);
                }
            }
            State::SynSent => {
                let syn_ack = TCP_SYN | TCP_ACK;
                if seg.flags & syn_ack == syn_ack && seg.ack == conn.iss.wrapping_add(1) {
                    conn.rcv_nxt = seg.seq.wrapping_add(1);
                    conn.snd_una = seg.ack;
                    conn.snd_nxt = seg.ack;
                    conn.snd_max = seg.ack;
                    conn.guest_mss = seg.mss.unwrap_or(536);
                    conn.guest_wscale = seg.wscale;
                    conn.snd_wnd = u32::from(seg.window) << conn.guest_wscale.unwrap_or(0);
                    conn.state = State::Established;
                    conn.rto_deadline = None;
                    conn.retries = 0;
                    conn.ack_pending = true;
                    self.queue_ack(flows, slot);
                    self.send_data(flows, slot, rx, ep);
                }
            }
            State::SynAckSent | State::Established => {
                if conn.state == State::SynAckSent {
                    if seg.flags & TCP_ACK == 0 || seg.ack != conn.iss.wrapping_add(1) {
                        return;
                    }
                    conn.state = State::Established;
                    conn.snd_una = seg.ack;
                    conn.rto_deadline = None;
                    conn.retries = 0;
                }
                self.established_segment(flows, registry, slot, &seg, frame, rx, ep);
            }
        }
    }

    /// A segment for a connection podwire does not know.
    // The flow table and the poll registry travel together here; the later split of this
    // file by concern gives them one context.
    #[allow(clippy::too_many_arguments)]
    fn no_connection(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        map: &AddrMap,
        key: ConnKey,
        seg: &Segment,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        if seg.flags & TCP_RST != 0 {
            return;
        }
        if seg.flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            self.counters.drop_no_connection.inc();
            log_limited!(
                debug,
                "TCP segment for no connection: {}:{} -> {}:{} flags {:#04x} seq {} ack {} len {}",
                key.guest_ip,
                key.guest_port,
                key.remote_ip,
                key.remote_port,
                seg.flags,
                seg.seq,
                seg.ack,
                seg.payload_len
            );
            // RFC 9293 3.10.7.1: a RST that the guest will accept.
            let (seq, ack, flags) = if seg.flags & TCP_ACK != 0 {
                (seg.ack, 0, TCP_RST)
            } else {
                let len = seg.payload_len as u32 + u32::from(seg.flags & TCP_FIN != 0);
                (0, seg.seq.wrapping_add(len), TCP_RST | TCP_ACK)
            };
            send_control(rx, ep, key, seq, ack, flags, 0, &[]);
            return;
        }
        let Some(dst) = map.outbound(SocketAddr::new(key.remote_ip, key.remote_port)) else {
            self.counters.drop_loopback.inc();
            warn_once!("refused a guest connection to the pod's loopback or unspecified address");
            reset_syn(rx, ep, key, seg.seq);
            return;
        };
        let fd = match tcp_socket(dst.ip()) {
            Ok(fd) => fd,
            Err(e) => {
                warn_once!("cannot open a TCP socket: {e}");
                reset_syn(rx, ep, key, seg.seq);
                return;
            }
        };
        let sa = sock::RawAddr::new(dst);
        // SAFETY: a valid socket address for the duration of the call.
        let rc = unsafe { libc::connect(fd.as_raw_fd(), sa.as_ptr(), sa.len()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                self.counters.connect_failed.inc();
                refuse(rx, ep, key, seg.seq, e.raw_os_error().unwrap_or(0));
                return;
            }
        }
        let conn = Conn {
            snd_wnd: u32::from(seg.window),
            rcv_nxt: seg.seq.wrapping_add(1),
            guest_mss: seg.mss.unwrap_or(536),
            guest_wscale: seg.wscale,
            syn_seq: seg.seq,
            ..Conn::new(key, fd, State::Connecting)
        };
        if self
            .insert(flows, registry, Origin::Outbound, conn)
            .is_some()
        {
            self.counters.opened_by_guest.inc();
        } else {
            reset_syn(rx, ep, key, seg.seq);
        }
    }

    // The flow table and the poll registry travel together here; the later split of this
    // file by concern gives them one context.
    #[allow(clippy::too_many_arguments)]
    fn established_segment(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        slot: usize,
        seg: &Segment,
        frame: &SgList<'_>,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        let peek_off = self.peek_off;
        let Some(conn) = flows.tcp_mut(slot) else {
            return;
        };
        if seg.flags & TCP_ACK != 0 {
            let window = u32::from(seg.window) << conn.guest_wscale.unwrap_or(0);
            if seq_gt(seg.ack, conn.snd_una) && seq_ge(conn.snd_max, seg.ack) {
                let acked = seg.ack.wrapping_sub(conn.snd_una);
                // The FIN takes a sequence number but no byte in the socket.
                let fin_acked = conn
                    .fin_seq
                    .is_some_and(|f| seq_ge(f, conn.snd_una) && seq_gt(seg.ack, f));
                let bytes = acked - u32::from(fin_acked);
                if bytes != 0 {
                    self.counters.recv_calls.inc();
                }
                discard(&conn.fd, bytes as usize);
                conn.snd_una = seg.ack;
                // The guest may acknowledge what it got before a rewind: skip resending it.
                if seq_gt(seg.ack, conn.snd_nxt) {
                    conn.snd_nxt = seg.ack;
                }
                if fin_acked {
                    conn.fin_sent = true;
                }
                conn.dup_acks = 0;
                conn.retries = 0;
                conn.rto = INITIAL_RTO;
                conn.rto_deadline =
                    (conn.snd_nxt != conn.snd_una).then(|| Instant::now() + conn.rto);
            } else if seg.ack == conn.snd_una
                && seg.payload_len == 0
                && window == conn.snd_wnd
                && conn.in_flight() > 0
            {
                conn.dup_acks = conn.dup_acks.saturating_add(1);
                if conn.dup_acks == 3 {
                    rewind(conn, peek_off);
                    self.counters.retransmits.inc();
                }
            }
            conn.snd_wnd = window;
        }
        let conn = match flows.tcp_mut(slot) {
            Some(c) => c,
            None => return,
        };
        if seg.payload_len == 0 && seg.seq == conn.rcv_nxt.wrapping_sub(1) {
            // A keepalive probe (one byte before what we expect): answer it.
            conn.ack_pending = true;
        }
        if seg.payload_len > 0 {
            // In-order data joins the write being gathered for this pass (see `Gather`).
            let expected = conn
                .rcv_nxt
                .wrapping_add(self.gather.bytes_for(slot) as u32);
            let offset_in_seg = expected.wrapping_sub(seg.seq);
            // A request (a pushed segment shorter than a full one, in order, with nothing else
            // unacknowledged) is usually answered at once: its ACK waits a moment to ride on
            // the answer. Anything else — bulk data, a second small segment — is acknowledged
            // at the end of the TX pass, as before, so the guest's sending is never slowed.
            let small_request = seg.flags & TCP_PSH != 0
                && seg.flags & TCP_FIN == 0
                && seg.seq == expected
                && seg.payload_len < usize::from(conn.key.mss_limit(self.mss_limit))
                && conn.state == State::Established
                && !conn.ack_delayed
                && !conn.ack_pending;
            // Bulk data in order is acknowledged every BULK_ACK bytes (and at least every
            // DELACK): each ACK costs the guest an interrupt and a pass of its stack, which under
            // emulation is most of what a byte costs it.
            let bulk_in_order = seg.seq == expected && conn.state == State::Established;
            conn.unacked = conn.unacked.saturating_add(seg.payload_len as u32);
            let hold =
                small_request || (bulk_in_order && conn.unacked < BULK_ACK && !conn.ack_pending);
            if hold {
                if !conn.ack_delayed {
                    conn.ack_delayed = true;
                    self.delayed.push(slot);
                }
            } else {
                conn.ack_pending = true;
            }
            if seq_gt(seg.seq, expected) {
                // A hole before it: the guest will resend; the ACK says where we are.
                self.counters.drop_out_of_window.inc();
            } else if (offset_in_seg as usize) < seg.payload_len && !conn.fin_from_guest {
                let skip = offset_in_seg as usize;
                if self.gather.slot.is_some_and(|s| s != slot) || self.gather.is_full() {
                    self.flush_write(flows);
                }
                self.gather.slot = Some(slot);
                self.gather
                    .append(frame, seg.payload_offset + skip, seg.payload_len - skip);
            }
            // Otherwise old data or a keepalive probe: the ACK says where we are.
        }
        if seg.flags & TCP_FIN != 0 && self.gather.slot == Some(slot) {
            self.flush_write(flows);
        }
        let conn = match flows.tcp_mut(slot) {
            Some(c) => c,
            None => return,
        };
        if seg.flags & TCP_FIN != 0 && !conn.fin_from_guest {
            let fin_seq = seg.seq.wrapping_add(seg.payload_len as u32);
            if fin_seq == conn.rcv_nxt {
                conn.rcv_nxt = conn.rcv_nxt.wrapping_add(1);
                conn.fin_from_guest = true;
                // SAFETY: shutdown on our socket.
                unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_WR) };
            }
            conn.ack_pending = true;
        }
        if conn.ack_pending {
            self.queue_ack(flows, slot);
        }
        self.send_data(flows, slot, rx, ep);
        if let Some(conn) = flows.tcp_mut(slot).filter(|c| c.done()) {
            // The guest's FIN may be what finished the connection: acknowledge it now, as
            // the coalesced ACKs flushed after this batch no longer find the connection.
            if conn.ack_pending {
                conn.ack_pending = false;
                let window = conn.advertise();
                conn.send_segment(rx, ep, TCP_ACK, window);
            }
            self.remove(flows, registry, slot);
        }
    }

    /// Whether ACKs are being held back (the caller arms a [`DELACK`] timer).
    pub fn has_delayed_acks(&self) -> bool {
        !self.delayed.is_empty()
    }

    /// The [`DELACK`] timer expired: the held-back ACKs no answer carried are owed now (sent
    /// by the next [`TcpTable::flush_acks`]).
    pub fn release_delayed_acks(&mut self, flows: &mut FlowTable) {
        let mut delayed = std::mem::take(&mut self.delayed);
        for &slot in &delayed {
            if let Some(conn) = flows.tcp_mut(slot).filter(|c| c.ack_delayed) {
                conn.ack_delayed = false;
                conn.ack_pending = true;
                self.queue_ack(flows, slot);
            }
        }
        delayed.clear();
        if self.delayed.is_empty() {
            self.delayed = delayed;
        }
    }

    fn queue_ack(&mut self, flows: &mut FlowTable, slot: usize) {
        if let Some(conn) = flows.tcp_mut(slot) {
            if !conn.queued_ack {
                conn.queued_ack = true;
                self.acks.push(slot);
            }
        }
    }

    /// Writes the payload gathered in this TX pass to its socket, in one `sendmsg`.
    fn flush_write(&mut self, flows: &mut FlowTable) {
        let Some(slot) = self.gather.slot.take() else {
            return;
        };
        let bytes = self.gather.bytes;
        let result = flows
            .tcp(slot)
            .map(|conn| send_iov(&conn.fd, self.gather.iovecs()));
        self.gather.clear();
        if result.is_some() {
            self.counters.send_calls.inc();
        }
        let Some(conn) = flows.tcp_mut(slot) else {
            return;
        };
        match result {
            Some(Ok(written)) => {
                conn.rcv_nxt = conn.rcv_nxt.wrapping_add(written as u32);
                self.counters.bytes_from_guest.add(written as u64);
                if written < bytes {
                    // Not acknowledged: the guest sends the rest again, into the window
                    // this closes.
                    conn.adv_wnd = 0;
                    self.counters.short_writes.inc();
                }
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.adv_wnd = 0;
                self.counters.short_writes.inc();
            }
            Some(Err(_)) => self.failed.push(slot),
            None => {}
        }
    }

    /// Sends the ACKs owed after a batch of guest frames (one per connection, not per frame)
    /// and resets connections whose socket failed. The gathered write goes first: it decides
    /// what the ACKs acknowledge.
    pub fn flush_acks(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        self.flush_write(flows);
        while let Some(slot) = self.failed.pop() {
            if flows.tcp(slot).is_some() {
                self.reset(flows, registry, slot, rx, ep);
            }
        }
        let mut acks = std::mem::take(&mut self.acks);
        let mut ring_full = false;
        for &slot in &acks {
            let Some(conn) = flows.tcp_mut(slot) else {
                continue;
            };
            if ring_full && conn.ack_pending {
                // The ring refused the last ACK: this one stays owed (and queued) untried.
                self.acks.push(slot);
                continue;
            }
            conn.queued_ack = false;
            if conn.ack_pending {
                let window = conn.advertise();
                let sent = conn.send_segment(rx, ep, TCP_ACK, window);
                conn.ack_delayed &= !sent;
                if sent {
                    conn.unacked = 0;
                }
                // With the guest's RX ring full the ACK stays owed, for the next flush (the
                // guest's next RX kick brings one), rather than leaving the guest to time out.
                conn.ack_pending = !sent;
                if !sent {
                    ring_full = true;
                    conn.queued_ack = true;
                    self.acks.push(slot);
                }
            }
        }
        acks.clear();
        if self.acks.is_empty() {
            self.acks = acks;
        }
    }

    /// Sends the guest as much socket data as its window allows, then a FIN at end of file.
    fn send_data(
        &mut self,
        flows: &mut FlowTable,
        slot: usize,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        let peek_off = self.peek_off;
        let mss_limit = self.mss_limit;
        if !peek_off && self.scratch.is_empty() {
            self.scratch = vec![0u8; SCRATCH_LEN];
        }
        let scratch = self.scratch.as_mut_ptr();
        let Some(conn) = flows.tcp_mut(slot) else {
            return;
        };
        if conn.state != State::Established || conn.fin_sent || conn.parked {
            return;
        }
        let v6 = conn.key.v6();
        let mss = usize::from(conn.guest_mss.min(conn.key.mss_limit(mss_limit))).max(1);
        let window = conn.advertise();
        // A guest taking TCP GSO frames gets up to 64 KiB per frame, segmented on its side.
        let gso = if v6 { GsoKind::Tcpv6 } else { GsoKind::Tcpv4 };
        let tso_max = if rx.partial_csum() {
            rx.tso_max(gso)
        } else {
            0
        };
        let payload_offset = wire::tcp_payload_offset(v6);
        let csum_at = wire::tcp_csum(v6);
        loop {
            let in_flight = conn.in_flight();
            if in_flight >= conn.snd_wnd
                || (!peek_off && in_flight as usize >= SCRATCH_LEN * MAX_SCRATCH_SEGS)
            {
                break;
            }
            let mut room = ((conn.snd_wnd - in_flight) as usize).min(tso_max.max(mss));
            if room > mss {
                // Ask only for what is there: a GSO frame must carry more than one segment.
                let unsent = unread(&conn.fd).saturating_sub(in_flight as usize);
                room = room.min(unsent).max(mss.min(room));
            }
            let tso = room > mss;
            let mut got = 0usize;
            let mut eof = false;
            let mut failed = false;
            let key = conn.key;
            let (seq, ack) = (conn.snd_nxt, conn.rcv_nxt);
            let fd = &conn.fd;
            let partial = rx.partial_csum();
            let mut peeks = 0u64;
            let mut fill = |frame: &mut SgList<'_>| {
                let skip = in_flight as usize;
                peeks += 1;
                let n = match peek_into(fd, frame, payload_offset, room, peek_off, skip, scratch) {
                    Peeked::Data(n) => n,
                    Peeked::Nothing => return None,
                    Peeked::Eof => {
                        eof = true;
                        return None;
                    }
                    Peeked::Failed => {
                        failed = true;
                        return None;
                    }
                };
                got = n;
                let flags = TCP_ACK | TCP_PSH;
                write_tcp_frame(frame, ep, key, seq, ack, flags, window, n, partial);
                Some(payload_offset + n)
            };
            let max = payload_offset + room;
            let result = if tso {
                let hdr_len = payload_offset as u16;
                rx.push_tso(max, csum_at, gso, mss as u16, hdr_len, &mut fill)
            } else if partial {
                rx.push_partial(max, csum_at, &mut fill)
            } else {
                rx.push(max, &mut fill)
            };
            self.counters.recv_calls.add(peeks);
            match result {
                Ok(()) => {
                    self.counters.data_frames_to_guest.inc();
                    conn.snd_nxt = conn.snd_nxt.wrapping_add(got as u32);
                    if seq_gt(conn.snd_nxt, conn.snd_max) {
                        conn.snd_max = conn.snd_nxt;
                    }
                    // The data carries the ACK, the delayed one included.
                    conn.ack_pending = false;
                    conn.ack_delayed = false;
                    conn.unacked = 0;
                    conn.rto_deadline
                        .get_or_insert_with(|| Instant::now() + conn.rto);
                    self.counters.bytes_to_guest.add(got as u64);
                }
                Err(RxError::Abandoned) => {
                    if eof {
                        conn.sock_eof = true;
                    }
                    if failed {
                        // Reset by the peer: the guest gets a RST once we can deregister.
                        self.failed.push(slot);
                        return;
                    }
                    break;
                }
                Err(RxError::NoBuffers) | Err(RxError::NotReady) => {
                    conn.parked = true;
                    self.parked.push(slot);
                    self.counters.rx_stalls.inc();
                    return;
                }
            }
        }
        if conn.sock_eof && !conn.fin_sent && conn.in_flight() < conn.snd_wnd.max(1) {
            let sent = conn.send_segment(rx, ep, TCP_FIN | TCP_ACK, window);
            if sent {
                conn.fin_sent = true;
                conn.fin_seq = Some(conn.snd_nxt);
                conn.snd_nxt = conn.snd_nxt.wrapping_add(1);
                if seq_gt(conn.snd_nxt, conn.snd_max) {
                    conn.snd_max = conn.snd_nxt;
                }
                conn.ack_pending = false;
                conn.ack_delayed = false;
                conn.rto_deadline
                    .get_or_insert_with(|| Instant::now() + conn.rto);
            }
        }
    }

    /// Sends (or resends) the SYN-ACK for a guest connection, or the SYN of an inbound one.
    /// Returns false if the guest's RX ring had no room: the SYN is then owed (see `owed_syns`).
    fn send_syn(conn: &mut Conn, rx: &mut dyn RxSink, ep: &Endpoints, mss_limit: u16) -> bool {
        let mss_limit = conn.key.mss_limit(mss_limit);
        let mut opts = [0u8; 8];
        opts[..4].copy_from_slice(&[2, 4, (mss_limit >> 8) as u8, mss_limit as u8]);
        let inbound = conn.state == State::SynSent;
        let mut len = 4;
        if inbound || conn.guest_wscale.is_some() {
            opts[4..8].copy_from_slice(&[1, 3, 3, OUR_WSCALE]);
            len = 8;
        }
        let (ack, flags) = if inbound {
            (0, TCP_SYN)
        } else {
            (conn.rcv_nxt, TCP_SYN | TCP_ACK)
        };
        // The window in a SYN is never scaled.
        let sent = send_control(
            rx,
            ep,
            conn.key,
            conn.iss,
            ack,
            flags,
            u16::MAX,
            &opts[..len],
        );
        conn.rto_deadline = Some(Instant::now() + conn.rto);
        sent
    }

    /// Resets both sides of a connection and forgets it.
    fn reset(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        slot: usize,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        if let Some(conn) = flows.tcp_mut(slot) {
            abort_socket(&conn.fd);
            conn.send_segment(rx, ep, TCP_RST | TCP_ACK, 0);
            self.counters.rst_to_guest.inc();
        }
        self.remove(flows, registry, slot);
    }

    /// A readiness event on a connection's socket.
    pub fn socket_event(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        slot: usize,
        writable: bool,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        let mss_limit = self.mss_limit;
        flows.touch(slot);
        let Some(conn) = flows.tcp_mut(slot) else {
            return;
        };
        match conn.state {
            State::Connecting => {
                let err = getsockopt_int(conn.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR)
                    .unwrap_or(libc::EIO);
                if err == 0 {
                    if !writable {
                        return;
                    }
                    conn.state = State::SynAckSent;
                    if !Self::send_syn(conn, rx, ep, mss_limit) {
                        owe_syn(&mut self.owed_syns, conn, slot);
                    }
                } else if err != libc::EINPROGRESS {
                    let (key, syn) = (conn.key, conn.syn_seq);
                    self.counters.connect_failed.inc();
                    refuse(rx, ep, key, syn, err);
                    self.remove(flows, registry, slot);
                }
            }
            State::SynAckSent | State::SynSent => {}
            State::Established => {
                let err = getsockopt_int(conn.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR)
                    .unwrap_or(0);
                if err != 0 {
                    self.reset(flows, registry, slot, rx, ep);
                    return;
                }
                if writable && conn.window_update_wanted() {
                    // Room again: tell the guest, which may be waiting on a closed window.
                    conn.ack_pending = true;
                    self.queue_ack(flows, slot);
                }
                self.send_data(flows, slot, rx, ep);
                if flows.tcp(slot).is_some_and(Conn::done) {
                    self.remove(flows, registry, slot);
                }
            }
        }
    }

    /// Accepts on a forwarded port and opens the connection towards the guest.
    pub fn listener_event(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        map: &AddrMap,
        index: usize,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        loop {
            let Some(listener) = self.listeners.get(index).and_then(Option::as_ref) else {
                return;
            };
            let guest_port = listener.guest_port;
            let mut sa = sock::RawAddr::zeroed();
            let mut len = sock::RawAddr::capacity();
            // SAFETY: valid out-parameters; the new fd is owned at once.
            let fd = unsafe {
                libc::accept4(
                    listener.fd.as_raw_fd(),
                    sa.as_mut_ptr(),
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: accept4 returned a new fd.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let peer = sa.get();
            // The guest sees the client's real address (loopback clients as the gateway), over
            // the client's family.
            let remote = map.inbound(peer);
            let key = ConnKey {
                guest_ip: ep.guest_addr(remote.is_ipv6()),
                guest_port,
                remote_ip: remote.ip(),
                remote_port: remote.port(),
            };
            if flows.lookup(&FlowKey::from(key)).is_some() {
                abort_socket(&fd);
                continue;
            }
            let conn = Conn::new(key, fd, State::SynSent);
            let mss_limit = self.mss_limit;
            if let Some(slot) =
                self.insert(flows, registry, Origin::Inbound { source: peer.ip() }, conn)
            {
                self.counters.opened_from_pod.inc();
                if let Some(conn) = flows.tcp_mut(slot) {
                    if !Self::send_syn(conn, rx, ep, mss_limit) {
                        owe_syn(&mut self.owed_syns, conn, slot);
                    }
                }
            }
        }
    }

    /// Retries sends that stalled on a full guest RX ring.
    pub fn resume_parked(&mut self, flows: &mut FlowTable, rx: &mut dyn RxSink, ep: &Endpoints) {
        let mss_limit = self.mss_limit;
        while let Some(&slot) = self.owed_syns.last() {
            let Some(conn) = flows.tcp_mut(slot) else {
                self.owed_syns.pop();
                continue;
            };
            if !matches!(conn.state, State::SynSent | State::SynAckSent) {
                conn.syn_owed = false;
                self.owed_syns.pop();
                continue;
            }
            if !Self::send_syn(conn, rx, ep, mss_limit) {
                // Still no room: keep it owed, and the others, for the next kick.
                break;
            }
            conn.syn_owed = false;
            self.owed_syns.pop();
        }
        let mut parked = std::mem::take(&mut self.parked);
        let mut tried = 0;
        for &slot in &parked {
            tried += 1;
            if let Some(conn) = flows.tcp_mut(slot) {
                conn.parked = false;
            }
            self.send_data(flows, slot, rx, ep);
            if !self.parked.is_empty() {
                // The ring is full again: the rest stay parked, in order, without a try each
                // (which would cost O(parked) failed pushes per wake-up).
                break;
            }
        }
        self.parked.extend_from_slice(&parked[tried..]);
        parked.clear();
        if self.parked.is_empty() {
            self.parked = parked;
        }
    }

    /// Retransmission and handshake timers (called on every timer tick).
    pub fn tick(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        now: Instant,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        let peek_off = self.peek_off;
        let mss_limit = self.mss_limit;
        for slot in 0..flows.slots() {
            let Some(conn) = flows.tcp_mut(slot) else {
                continue;
            };
            // The socket's write-space edge may never come (it was not full, just busy): look
            // again every tick while the guest's window is nearly closed.
            if conn.window_update_wanted()
                && send_room(&conn.fd, conn.sndbuf) >= 2 * u32::from(conn.guest_mss)
            {
                conn.ack_pending = true;
                self.queue_ack(flows, slot);
                continue;
            }
            let Some(conn) = flows.tcp_mut(slot) else {
                continue;
            };
            let Some(deadline) = conn.rto_deadline else {
                continue;
            };
            if now < deadline {
                continue;
            }
            conn.retries += 1;
            conn.rto = (conn.rto * 2).min(MAX_RTO);
            let limit = match conn.state {
                State::SynSent | State::SynAckSent => MAX_SYN_RETRIES,
                _ => MAX_RETRIES,
            };
            if conn.retries > limit {
                self.reset(flows, registry, slot, rx, ep);
                continue;
            }
            self.counters.retransmits.inc();
            match conn.state {
                State::SynSent | State::SynAckSent => {
                    if !Self::send_syn(conn, rx, ep, mss_limit) {
                        owe_syn(&mut self.owed_syns, conn, slot);
                    }
                }
                State::Established => {
                    rewind(conn, peek_off);
                    conn.rto_deadline = None;
                    self.send_data(flows, slot, rx, ep);
                }
                State::Connecting => conn.rto_deadline = None,
            }
        }
    }
}

/// Puts a connection on the owed-handshake list once, however often its SYN or SYN-ACK fails.
fn owe_syn(owed_syns: &mut Vec<usize>, conn: &mut Conn, slot: usize) {
    if !conn.syn_owed {
        conn.syn_owed = true;
        owed_syns.push(slot);
    }
}

/// In-order payload of one connection, gathered over a pass of the TX ring so that it reaches
/// the socket in one `sendmsg` rather than one per segment.
///
/// The iovecs point into guest memory. That is sound only because the device promises (see
/// `NetHandler::tx_batch_done`) that the TX buffers of a pass are neither returned to the guest
/// nor unmapped until `tx_batch_done` has run, and it is there that this is flushed.
struct Gather {
    slot: Option<usize>,
    iov: Box<[libc::iovec; GATHER_IOVECS]>,
    len: usize,
    bytes: usize,
}

/// Most iovecs one gathered write holds (the kernel takes up to 1024).
const GATHER_IOVECS: usize = 1024;
/// Most bytes one gathered write holds.
const GATHER_BYTES: usize = 1 << 20;

// SAFETY: the raw pointers are only dereferenced (by the kernel) on the thread that filled them,
// within the same TX pass; the table moves between threads only between passes, empty.
unsafe impl Send for Gather {}

impl Gather {
    fn new() -> Gather {
        Gather {
            slot: None,
            iov: Box::new([EMPTY_IOVEC; GATHER_IOVECS]),
            len: 0,
            bytes: 0,
        }
    }

    fn bytes_for(&self, slot: usize) -> usize {
        if self.slot == Some(slot) {
            self.bytes
        } else {
            0
        }
    }

    fn is_full(&self) -> bool {
        self.len + MAX_SEGS > GATHER_IOVECS || self.bytes >= GATHER_BYTES
    }

    fn append(&mut self, frame: &SgList<'_>, offset: usize, len: usize) {
        let mut iov = [EMPTY_IOVEC; MAX_SEGS];
        let n = frame.iovecs(offset, len, &mut iov);
        let room = GATHER_IOVECS - self.len;
        let n = n.min(room);
        self.iov[self.len..self.len + n].copy_from_slice(&iov[..n]);
        self.len += n;
        self.bytes += iov[..n].iter().map(|v| v.iov_len).sum::<usize>();
    }

    fn iovecs(&self) -> &[libc::iovec] {
        &self.iov[..self.len]
    }

    fn clear(&mut self) {
        self.len = 0;
        self.bytes = 0;
    }
}

/// Goes back to the oldest unacknowledged byte (and FIN) to send them again.
fn rewind(conn: &mut Conn, peek_off: bool) {
    conn.snd_nxt = conn.snd_una;
    if conn.fin_sent {
        conn.fin_sent = false;
    }
    conn.dup_acks = 0;
    if peek_off {
        let _ = setsockopt_int(conn.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0);
    }
}

const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

fn send_iov(fd: &OwnedFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr zeroed is valid; the iovecs point into mapped memory.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: valid msghdr for the call.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Drops `n` acknowledged bytes from the socket without copying them.
fn discard(fd: &OwnedFd, n: usize) {
    if n == 0 {
        return;
    }
    // SAFETY: with MSG_TRUNC, TCP discards the bytes and writes nothing to the buffer.
    unsafe {
        libc::recv(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            n,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
}

/// Peeks up to `len` bytes into `frame` at `offset`. Without SO_PEEK_OFF the `skip` bytes
/// already sent are peeked into the scratch buffer first.
fn peek_into(
    fd: &OwnedFd,
    frame: &SgList<'_>,
    offset: usize,
    len: usize,
    peek_off: bool,
    skip: usize,
    scratch: *mut u8,
) -> Peeked {
    let mut iov = [EMPTY_IOVEC; MAX_SEGS + MAX_SCRATCH_SEGS];
    let mut n = 0;
    if !peek_off {
        let mut left = skip;
        while left > 0 && n < MAX_SCRATCH_SEGS {
            let take = left.min(SCRATCH_LEN);
            iov[n] = libc::iovec {
                iov_base: scratch.cast(),
                iov_len: take,
            };
            left -= take;
            n += 1;
        }
    }
    let mut payload = [EMPTY_IOVEC; MAX_SEGS];
    let m = frame.iovecs(offset, len, &mut payload);
    iov[n..n + m].copy_from_slice(&payload[..m]);
    // SAFETY: msghdr zeroed is valid; iovecs point into guest memory or the scratch buffer.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = (n + m) as _;
    // SAFETY: valid msghdr for the call.
    let got = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if got < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Peeked::Nothing,
            _ => Peeked::Failed,
        };
    }
    let prefix = if peek_off { 0 } else { skip };
    match (got as usize).saturating_sub(prefix) {
        0 => Peeked::Eof,
        n => Peeked::Data(n),
    }
}

/// What a peek at the socket found.
enum Peeked {
    Data(usize),
    /// Nothing beyond what was already sent, for now.
    Nothing,
    /// The peer closed its side and everything was sent.
    Eof,
    /// The connection failed (reset by the peer, for one).
    Failed,
}

/// Bytes in the socket's receive queue not yet consumed (peeked ones included). One ioctl.
fn unread(fd: &OwnedFd) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD (SIOCINQ) writes an int.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut queued) };
    queued.max(0) as usize
}

/// Room in the socket's send buffer (`sndbuf` bytes, fixed since podwire set it): the window
/// offered to the guest. One ioctl.
fn send_room(fd: &OwnedFd, sndbuf: u32) -> u32 {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes an int.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    sndbuf.saturating_sub(queued.max(0) as u32)
}

#[allow(clippy::too_many_arguments)]
fn write_tcp_frame(
    frame: &mut SgList<'_>,
    ep: &Endpoints,
    key: ConnKey,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    payload_len: usize,
    partial_csum: bool,
) {
    let seg = wire::TcpSegment {
        src: (key.remote_ip, key.remote_port),
        dst: (key.guest_ip, key.guest_port),
        seq,
        ack,
        flags,
        window,
        options: &[],
    };
    let mut tcp = [0u8; 60];
    let csum = if partial_csum {
        L4Csum::Partial
    } else {
        L4Csum::Full(frame)
    };
    let payload_offset = wire::tcp_payload_offset(key.v6());
    let tcp_len = wire::tcp_header(&seg, csum, payload_offset, payload_len, &mut tcp);
    let l3 = wire::eth_ip_header(
        ep,
        key.remote_ip,
        key.guest_ip,
        IpProtocol::Tcp,
        tcp_len + payload_len,
        0,
    );
    frame.write(0, l3.bytes());
    frame.write(l3.bytes().len(), &tcp[..tcp_len]);
}

/// Sends a segment without payload; false if the guest had no RX buffer.
#[allow(clippy::too_many_arguments)]
fn send_control(
    rx: &mut dyn RxSink,
    ep: &Endpoints,
    key: ConnKey,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &[u8],
) -> bool {
    let seg = wire::TcpSegment {
        src: (key.remote_ip, key.remote_port),
        dst: (key.guest_ip, key.guest_port),
        seq,
        ack,
        flags,
        window,
        options,
    };
    let mut tcp = [0u8; 60];
    let empty = SgList::new();
    let tcp_len = wire::tcp_header(&seg, L4Csum::Full(&empty), 0, 0, &mut tcp);
    let l3 = wire::eth_ip_header(ep, key.remote_ip, key.guest_ip, IpProtocol::Tcp, tcp_len, 0);
    let mut frame = [0u8; MAX_L3_LEN + 60];
    let l3_len = l3.bytes().len();
    frame[..l3_len].copy_from_slice(l3.bytes());
    frame[l3_len..l3_len + tcp_len].copy_from_slice(&tcp[..tcp_len]);
    let len = l3_len + tcp_len;
    rx.push(len, &mut |buf| buf.write(0, &frame[..len]).then_some(len))
        .is_ok()
}

impl Conn {
    /// The connection as the guest knows it (for live migration).
    pub fn guest_view(&self) -> GuestConn {
        GuestConn {
            guest: SocketAddr::new(self.key.guest_ip, self.key.guest_port),
            remote: SocketAddr::new(self.key.remote_ip, self.key.remote_port),
            seq_to_guest: self.snd_nxt,
            ack_from_guest: self.rcv_nxt,
        }
    }
}

/// One guest TCP connection as the guest sees it (see [`crate::Nat::tcp_guest_view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestConn {
    pub guest: SocketAddr,
    pub remote: SocketAddr,
    /// The next sequence number the guest expects.
    pub seq_to_guest: u32,
    /// The next sequence number expected from the guest.
    pub ack_from_guest: u32,
}

/// Resets a connection the guest believes in but podwire does not have (after a migration
/// to a pod that could not take its socket over). A guest whose idea of the sequence differs
/// answers with a challenge ACK, which meets the no-connection RST with its exact number.
/// Returns false when the guest had no RX buffer for it.
pub fn reset_guest_conn(rx: &mut dyn RxSink, ep: &Endpoints, conn: &GuestConn) -> bool {
    let key = ConnKey {
        guest_ip: conn.guest.ip(),
        guest_port: conn.guest.port(),
        remote_ip: conn.remote.ip(),
        remote_port: conn.remote.port(),
    };
    send_control(
        rx,
        ep,
        key,
        conn.seq_to_guest,
        conn.ack_from_guest,
        TCP_RST | TCP_ACK,
        0,
        &[],
    )
}

/// Answers a guest SYN with RST|ACK (RFC 9293 3.10.7.1: acknowledging the SYN).
fn reset_syn(rx: &mut dyn RxSink, ep: &Endpoints, key: ConnKey, syn_seq: u32) {
    let ack = syn_seq.wrapping_add(1);
    send_control(rx, ep, key, 0, ack, TCP_RST | TCP_ACK, 0, &[]);
}

/// Tells the guest its connection attempt failed: RST for a refusal, ICMP host unreachable
/// (ICMPv6 address unreachable) for routing failures and time-outs, what a router would say.
fn refuse(rx: &mut dyn RxSink, ep: &Endpoints, key: ConnKey, syn_seq: u32, errno: i32) {
    let unreachable = matches!(
        errno,
        libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ETIMEDOUT | libc::EHOSTDOWN
    );
    if !unreachable {
        reset_syn(rx, ep, key, syn_seq);
        return;
    }
    let v6 = key.v6();
    let ip_len = wire::ip_len(v6);
    // The error quotes the guest's IP header and the first 8 bytes of its SYN.
    let quoted_hdr =
        wire::eth_ip_header(ep, key.guest_ip, key.remote_ip, IpProtocol::Tcp, TCP_LEN, 0);
    let mut icmp = [0u8; 8 + IPV6_LEN + 8];
    let icmp_len = 8 + ip_len + 8;
    // Destination unreachable: IPv4 type 3 code 1 (host), IPv6 type 1 code 3 (address).
    (icmp[0], icmp[1]) = if v6 { (1, 3) } else { (3, 1) };
    icmp[8..8 + ip_len].copy_from_slice(&quoted_hdr.bytes()[ETH_LEN..]);
    let l4 = 8 + ip_len;
    icmp[l4..l4 + 2].copy_from_slice(&key.guest_port.to_be_bytes());
    icmp[l4 + 2..l4 + 4].copy_from_slice(&key.remote_port.to_be_bytes());
    icmp[l4 + 4..l4 + 8].copy_from_slice(&syn_seq.to_be_bytes());
    let mut sum = if v6 {
        wire::pseudo_header(key.remote_ip, key.guest_ip, 58, icmp_len)
    } else {
        Checksum::new()
    };
    sum.add(&icmp[..icmp_len]);
    icmp[2..4].copy_from_slice(&sum.finish().to_be_bytes());
    // Sent from the unreachable host's own address: the guest matches the error to its
    // connection by the quoted header, whatever the source.
    let proto = if v6 {
        IpProtocol::Icmpv6
    } else {
        IpProtocol::Icmp
    };
    let l3 = wire::eth_ip_header(ep, key.remote_ip, key.guest_ip, proto, icmp_len, 0);
    let mut frame = [0u8; MAX_L3_LEN + 8 + IPV6_LEN + 8];
    let l3_len = l3.bytes().len();
    frame[..l3_len].copy_from_slice(l3.bytes());
    frame[l3_len..l3_len + icmp_len].copy_from_slice(&icmp[..icmp_len]);
    let len = l3_len + icmp_len;
    let _ = rx.push(len, &mut |buf| buf.write(0, &frame[..len]).then_some(len));
}
