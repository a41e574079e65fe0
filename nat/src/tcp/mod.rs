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
//!
//! # Where things are
//!
//! - `conn`: one connection — its key, sequence space, its state as named *events* (what has
//!   happened to it: `SOCK_ACCEPTED`, `TAP_SYN_RCVD`, `ESTABLISHED`, `TAP_FIN_RCVD`...) and
//!   *flags* (the work it is queued for), and `Conn::event`, the one place where a
//!   connection changes state.
//! - `guest`: segments from the guest → the socket (parse, handshake, ACKs of our data,
//!   payload gathered into one `sendmsg` per pass, FIN).
//! - `ack`: when the guest is acknowledged (coalesced, delayed, at once).
//! - `to_guest`: socket readiness → frames to the guest (connect completion, accept on a
//!   forwarded port, data peeked into guest buffers, FIN, resuming after a full RX ring).
//! - `timers`: retransmission, handshake retries, window updates the socket never signalled.
//! - `frame`: TCP frames written towards the guest (data headers, control segments, the ICMP
//!   error for an unreachable peer).
//! - `socket`: every syscall on a connection's socket.
//! - `inspect`: read-only views for operators.
//! - `migrate`: live migration of established connections with their sockets.
//!
//! This module holds the table ([`TcpTable`]): listeners, the work lists (connections owing an
//! ACK, holding one back, stalled on the guest's RX ring, owing a SYN, failed), the counters,
//! and opening and closing connections in the [`FlowTable`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use podwire_frame::{log_limited, warn_once, RxSink};

use crate::flow::{FlowData, FlowKey, FlowTable, Origin, Refused};
use crate::wire::{Endpoints, IPV4_LEN, TCP_ACK, TCP_LEN, TCP_RST};

mod ack;
pub(crate) mod conn;
mod frame;
mod guest;
mod inspect;
mod migrate;
mod socket;
mod timers;
mod to_guest;

pub use conn::Conn;
use conn::{ConnKey, Flags};
use guest::Gather;
pub use migrate::{size_send_buffer, AdoptError, TcpFlowState};

/// mio tokens of forwarded-port listeners start here; below are the flows (token = slot).
pub const LISTEN_BASE: usize = 1 << 41;
/// How long the ACK of a small pushed segment waits for data to ride on: a request answered
/// within this time costs the guest one frame instead of two.
pub const DELACK: Duration = Duration::from_millis(2);
/// Bulk data from the guest is acknowledged at least this often.
pub const BULK_ACK: u32 = 128 * 1024;

/// What every TCP operation works with: the flow table holding the connections, the poll
/// they are registered with, the guest's receive side and the addresses on the guest link.
pub(crate) struct Cx<'a> {
    pub flows: &'a mut FlowTable,
    pub registry: &'a Registry,
    pub rx: &'a mut dyn RxSink,
    pub ep: &'a Endpoints,
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
        /// `SO_MEMINFO` calls asking a socket's send-buffer room for the window offered to the
        /// guest (made only when what is known of the room runs low, see `Conn::advertise`).
        send_room_queries: Count,
    }
}

/// Connections queued for work, by slot. Each list holds a connection at most once, which
/// the connection's matching flag records (so that queueing is O(1) and the lists are bounded
/// by the connections, whatever the guest sends). Vectors keep their capacity between passes:
/// nothing is allocated in the steady state.
#[derive(Default)]
struct WorkLists {
    /// Owing an ACK, sent at the end of the pass ([`Flags::ACK_QUEUED`]).
    acks: Vec<usize>,
    /// Holding an ACK back for [`DELACK`] ([`Flags::ACK_DELAYED`]).
    delayed: Vec<usize>,
    /// Stalled on a full guest RX ring ([`Flags::STALLED`]).
    stalled: Vec<usize>,
    /// Whose socket failed, to reset at the end of the pass (they live one pass).
    failed: Vec<usize>,
    /// Owing the socket a discard of acknowledged bytes, after the pass's writes
    /// ([`Flags::DISCARD_QUEUED`]).
    discards: Vec<usize>,
    /// Handshakes whose SYN or SYN-ACK found the guest's RX ring full: sent again on the next
    /// RX kick rather than a second later by the retransmission timer ([`Flags::SYN_OWED`]).
    owed_syns: Vec<usize>,
}

impl WorkLists {
    /// Queues `conn`'s ACK for the end of the pass, once.
    fn queue_ack(&mut self, conn: &mut Conn, slot: usize) {
        if !conn.has(Flags::ACK_QUEUED) {
            conn.set(Flags::ACK_QUEUED);
            self.acks.push(slot);
        }
    }

    /// Puts a connection on the owed-handshake list once, however often its SYN or SYN-ACK
    /// fails.
    fn owe_syn(&mut self, conn: &mut Conn, slot: usize) {
        if !conn.has(Flags::SYN_OWED) {
            conn.set(Flags::SYN_OWED);
            self.owed_syns.push(slot);
        }
    }

    /// Forgets a closed connection's slot, so that its successor there inherits no work.
    /// (`failed` lives for one pass; `owed_syns` holds the slot only if flagged, so closing
    /// stays O(1) otherwise.)
    fn forget(&mut self, slot: usize, syn_owed: bool) {
        self.failed.retain(|&s| s != slot);
        if syn_owed {
            self.owed_syns.retain(|&s| s != slot);
        }
    }
}

/// The TCP connections and listeners.
pub struct TcpTable {
    /// Indexed by token; a removed forward leaves `None` (reused by the next one).
    listeners: Vec<Option<Listener>>,
    work: WorkLists,
    gather: Gather,
    /// Whether the kernel has `SO_PEEK_OFF` for TCP (assumed until a connection finds not).
    peek_off: bool,
    /// Where already-sent bytes are peeked to without `SO_PEEK_OFF` (allocated on first use).
    scratch: Vec<u8>,
    /// The largest segment towards an IPv4 guest (the guest MTU's).
    mss_limit: u16,
    pub counters: TcpCounters,
}

impl TcpTable {
    pub fn new(guest_mtu: usize) -> TcpTable {
        TcpTable {
            listeners: Vec::new(),
            work: WorkLists::default(),
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
        self.work.owed_syns.len()
    }

    /// Listens on `bind` in the pod and forwards connections to the guest's `guest_port`.
    pub fn listen(
        &mut self,
        registry: &Registry,
        bind: SocketAddr,
        guest_port: u16,
    ) -> io::Result<()> {
        let fd = socket::listener(bind)?;
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
        mut conn: Conn,
    ) -> Option<usize> {
        if let Err(why) = flows.admits(origin, false) {
            self.count_refused(why);
            // The peer (or the guest's connect, already under way) gets a reset, not a close.
            socket::abort(&conn.fd);
            return None;
        }
        conn.sndbuf = socket::set_up(&conn.fd);
        if self.peek_off && !socket::start_peek_offset(&conn.fd) {
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

    /// Forgets a connection: its flow, its socket, and any work queued for its slot.
    fn remove(&mut self, flows: &mut FlowTable, registry: &Registry, slot: usize) {
        let Some(syn_owed) = flows.tcp(slot).map(|c| c.has(Flags::SYN_OWED)) else {
            return;
        };
        if flows.remove(registry, slot).is_some() {
            // A failure queued for this connection must not reset the next one in its slot,
            // nor its gathered payload go to that one's socket.
            self.work.forget(slot, syn_owed);
            self.gather.forget(slot);
            self.counters.closed.inc();
        }
    }

    /// Resets both sides of a connection and forgets it.
    fn reset(&mut self, cx: &mut Cx<'_>, slot: usize) {
        if let Some(conn) = cx.flows.tcp_mut(slot) {
            socket::abort(&conn.fd);
            conn.send_segment(cx.rx, cx.ep, TCP_RST | TCP_ACK, 0);
            self.counters.rst_to_guest.inc();
        }
        self.remove(cx.flows, cx.registry, slot);
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
        let mut cx = Cx {
            flows,
            registry,
            rx,
            ep,
        };
        self.reset(&mut cx, slot);
    }

    /// Closes every connection (the guest went away): peers see a RST.
    pub fn clear(&mut self, flows: &mut FlowTable, registry: &Registry) {
        for slot in 0..flows.slots() {
            if let Some(conn) = flows.tcp(slot) {
                socket::abort(&conn.fd);
                self.remove(flows, registry, slot);
            }
        }
        self.work.acks.clear();
        self.work.stalled.clear();
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
    frame::send_control(
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
