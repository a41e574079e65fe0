//! Socket readiness → frames to the guest.
//!
//! # Theory of operation
//!
//! The NAT's poll reports a connection's socket ([`TcpTable::socket_event`]) or a forwarded
//! port's listener ([`TcpTable::listener_event`]) ready:
//!
//! - a **connecting** socket that completed: the guest gets its SYN-ACK
//!   ([`Event::SockConnected`]); one that failed: a RST or an ICMP error, and it is forgotten.
//! - a **listener**: each waiting client is accepted and the guest gets a SYN from the client's
//!   address ([`Event::SockAccepted`]).
//! - an **established** socket: data is sent ([`TcpTable::send_data`]) — peeked from the
//!   socket straight into guest RX buffers, one frame per segment (or per 64 KiB for a guest
//!   taking TSO frames), as far as the guest's window allows, headers written around it. At
//!   end of file the guest gets a FIN after the last byte ([`Event::SockFinRcvd`],
//!   [`Event::TapFinSent`]). Room in the send buffer after a small window: a window update.
//!
//! When the guest's RX ring is full, the connection is **stalled** ([`Flags::STALLED`]) and
//! nothing more is read from its socket; a SYN or SYN-ACK that found no room is **owed**
//! ([`Flags::SYN_OWED`]). Both resume on the guest's next RX kick ([`TcpTable::resume_parked`]),
//! oldest first, stopping as soon as the ring is full again.

use std::time::Instant;

use mio::Registry;
use podwire_frame::{GsoKind, PartialCsum, RxError, RxSink, SgList};

use super::conn::{Conn, ConnKey, Event, Flags, State};
use super::socket::{self, Peeked, MAX_SCRATCH_SEGS, SCRATCH_LEN};
use super::{frame, Cx, TcpTable};
use crate::flow::{FlowKey, FlowTable, Origin};
use crate::wire::{self, Endpoints, TCP_ACK, TCP_FIN, TCP_PSH};
use crate::AddrMap;

impl TcpTable {
    /// A readiness event on a connection's socket.
    pub fn socket_event(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        slot: usize,
        (writable, read_closed): (bool, bool),
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        let mut cx = Cx {
            flows,
            registry,
            rx,
            ep,
        };
        cx.flows.touch(slot);
        let Some(conn) = cx.flows.tcp_mut(slot) else {
            return;
        };
        match conn.state() {
            State::Connecting => self.connect_event(&mut cx, slot, writable),
            State::SynAckSent | State::SynSent => {}
            State::Established => {
                conn.clear(Flags::SOCK_DRAINED);
                if read_closed {
                    conn.set(Flags::SOCK_READ_CLOSED);
                }
                // A peek reports a failed connection by itself; only when none will be made
                // (the guest's window or its RX ring is full) is the error asked for.
                let no_peek = conn.in_flight() >= conn.snd_wnd || conn.has(Flags::STALLED);
                if no_peek && socket::take_error(&conn.fd).unwrap_or(0) != 0 {
                    self.reset(&mut cx, slot);
                    return;
                }
                if writable && conn.window_update_wanted() {
                    // Room again: tell the guest, which may be waiting on a closed window.
                    conn.set(Flags::ACK_DUE);
                    self.work.queue_ack(conn, slot);
                }
                self.send_data(cx.flows, slot, cx.rx, cx.ep);
                if cx.flows.tcp(slot).is_some_and(Conn::done) {
                    self.remove(cx.flows, cx.registry, slot);
                }
            }
        }
    }

    /// The connecting socket is ready: connected (the guest gets its SYN-ACK), or failed
    /// (the guest's SYN is refused, and the connection forgotten).
    fn connect_event(&mut self, cx: &mut Cx<'_>, slot: usize, writable: bool) {
        let Some(conn) = cx.flows.tcp_mut(slot) else {
            return;
        };
        let err = socket::take_error(&conn.fd).unwrap_or(libc::EIO);
        if err == 0 {
            if !writable {
                return;
            }
            conn.event(Event::SockConnected);
            self.send_syn_or_owe(conn, slot, cx.rx, cx.ep);
        } else if err != libc::EINPROGRESS {
            let (key, syn) = (conn.key, conn.syn_seq);
            self.counters.connect_failed.inc();
            frame::refuse(cx.rx, cx.ep, key, syn, err);
            self.remove(cx.flows, cx.registry, slot);
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
            let Some((fd, peer)) = socket::accept(&listener.fd) else {
                return;
            };
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
                socket::abort(&fd);
                continue;
            }
            let conn = Conn::new(key, fd, Event::SockAccepted);
            let origin = Origin::Inbound { source: peer.ip() };
            if let Some(slot) = self.insert(flows, registry, origin, conn) {
                self.counters.opened_from_pod.inc();
                if let Some(conn) = flows.tcp_mut(slot) {
                    self.send_syn_or_owe(conn, slot, rx, ep);
                }
            }
        }
    }

    /// Sends (or resends) the SYN-ACK for a guest connection, or the SYN of an inbound one,
    /// and (re)starts the retransmission timer. Returns false if the guest's RX ring had no
    /// room.
    pub(super) fn send_syn(&self, conn: &mut Conn, rx: &mut dyn RxSink, ep: &Endpoints) -> bool {
        let mss = conn.key.mss_limit(self.mss_limit);
        let inbound = conn.state() == State::SynSent;
        let wscale = conn.guest_wscale.is_some();
        let sent = frame::send_syn(
            rx,
            ep,
            conn.key,
            conn.iss,
            conn.rcv_nxt,
            inbound,
            mss,
            wscale,
        );
        conn.rto_deadline = Some(Instant::now() + conn.rto);
        sent
    }

    /// [`TcpTable::send_syn`]; if the ring was full, the SYN is owed (see `owed_syns`).
    pub(super) fn send_syn_or_owe(
        &mut self,
        conn: &mut Conn,
        slot: usize,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        if !self.send_syn(conn, rx, ep) {
            self.work.owe_syn(conn, slot);
        }
    }

    /// Sends the guest as much socket data as its window allows, then a FIN at end of file.
    pub(super) fn send_data(
        &mut self,
        flows: &mut FlowTable,
        slot: usize,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        if !self.peek_off && self.scratch.is_empty() {
            self.scratch = vec![0u8; SCRATCH_LEN];
        }
        let scratch = self.scratch.as_mut_ptr();
        let Some(conn) = flows.tcp_mut(slot) else {
            return;
        };
        let fin_owed = conn.has_seen(Event::SockFinRcvd);
        if conn.state() != State::Established
            || conn.has_seen(Event::TapFinSent)
            || conn.has(Flags::STALLED)
            || (conn.has(Flags::SOCK_DRAINED) && !fin_owed)
        {
            return;
        }
        self.settle(conn);
        let shape = FrameShape::new(conn, rx, self.mss_limit);
        let window = conn.advertise(&self.counters);
        loop {
            let in_flight = conn.in_flight();
            if in_flight >= conn.snd_wnd
                || conn.has(Flags::SOCK_DRAINED)
                || (!self.peek_off && in_flight as usize >= SCRATCH_LEN * MAX_SCRATCH_SEGS)
            {
                break;
            }
            match self.send_one(conn, rx, ep, &shape, window, scratch) {
                Sent::Frame => {}
                Sent::Nothing => break,
                Sent::Failed => {
                    // Reset by the peer: the guest gets a RST once we can deregister.
                    self.work.failed.push(slot);
                    return;
                }
                Sent::Stalled => {
                    conn.set(Flags::STALLED);
                    self.work.stalled.push(slot);
                    self.counters.rx_stalls.inc();
                    return;
                }
            }
        }
        if conn.has_seen(Event::SockFinRcvd)
            && !conn.has_seen(Event::TapFinSent)
            && conn.in_flight() < conn.snd_wnd.max(1)
        {
            send_fin(conn, rx, ep, window);
        }
    }

    /// Peeks the next segment (or TSO frame) of socket data into a guest buffer and sends it.
    fn send_one(
        &self,
        conn: &mut Conn,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
        shape: &FrameShape,
        window: u16,
        scratch: *mut u8,
    ) -> Sent {
        let FrameShape {
            mss,
            gso,
            tso_max,
            payload_offset,
            csum_at,
        } = *shape;
        let in_flight = conn.in_flight();
        let mut room = ((conn.snd_wnd - in_flight) as usize).min(tso_max.max(mss));
        // The frame asks for all the socket holds: filling it drains the socket.
        let mut all_of_it = false;
        if room > mss {
            // Ask only for what is there: a GSO frame must carry more than one segment.
            let unsent = socket::unread(&conn.fd).saturating_sub(in_flight as usize);
            room = room.min(unsent).max(mss.min(room));
            all_of_it = room == unsent;
        }
        let tso = room > mss;
        let (key, seq, ack) = (conn.key, conn.snd_nxt, conn.rcv_nxt);
        let (fd, peek_off) = (&conn.fd, self.peek_off);
        let partial = rx.partial_csum();
        let (mut got, mut eof, mut failed, mut peeks) = (0usize, false, false, 0u64);
        let mut drained = false;
        let read_closed = conn.has(Flags::SOCK_READ_CLOSED);
        let mut fill = |frame: &mut SgList<'_>| {
            let skip = in_flight as usize;
            peeks += 1;
            let n = match socket::peek(fd, frame, payload_offset, room, peek_off, skip, scratch) {
                // Short: TCP's peek stops only at the end of what the socket holds.
                Peeked::Data(n) => {
                    drained = (n < room || all_of_it) && !read_closed;
                    n
                }
                Peeked::Nothing => {
                    drained = true;
                    return None;
                }
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
            frame::write_data_headers(frame, ep, key, seq, ack, flags, window, n, partial);
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
        if drained {
            conn.set(Flags::SOCK_DRAINED);
        }
        match result {
            Ok(()) => {
                self.counters.data_frames_to_guest.inc();
                self.counters.bytes_to_guest.add(got as u64);
                data_sent(conn, got);
                Sent::Frame
            }
            Err(RxError::Abandoned) => {
                if eof {
                    conn.event(Event::SockFinRcvd);
                }
                if failed {
                    Sent::Failed
                } else {
                    Sent::Nothing
                }
            }
            Err(RxError::NoBuffers | RxError::NotReady) => Sent::Stalled,
        }
    }

    /// Retries sends that stalled on a full guest RX ring.
    pub fn resume_parked(&mut self, flows: &mut FlowTable, rx: &mut dyn RxSink, ep: &Endpoints) {
        self.resume_owed_syns(flows, rx, ep);
        let mut stalled = std::mem::take(&mut self.work.stalled);
        let mut tried = 0;
        for &slot in &stalled {
            tried += 1;
            if let Some(conn) = flows.tcp_mut(slot) {
                conn.clear(Flags::STALLED);
            }
            self.send_data(flows, slot, rx, ep);
            if !self.work.stalled.is_empty() {
                // The ring is full again: the rest stay parked, in order, without a try each
                // (which would cost O(parked) failed pushes per wake-up).
                break;
            }
        }
        self.work.stalled.extend_from_slice(&stalled[tried..]);
        stalled.clear();
        if self.work.stalled.is_empty() {
            self.work.stalled = stalled;
        }
    }

    /// Sends owed SYNs and SYN-ACKs, oldest last-in first, until the ring is full again.
    fn resume_owed_syns(&mut self, flows: &mut FlowTable, rx: &mut dyn RxSink, ep: &Endpoints) {
        while let Some(&slot) = self.work.owed_syns.last() {
            let Some(conn) = flows.tcp_mut(slot) else {
                self.work.owed_syns.pop();
                continue;
            };
            if matches!(conn.state(), State::SynSent | State::SynAckSent)
                && !self.send_syn(conn, rx, ep)
            {
                // Still no room: keep it owed, and the others, for the next kick.
                break;
            }
            conn.clear(Flags::SYN_OWED);
            self.work.owed_syns.pop();
        }
    }
}

/// How a connection's data frames are cut, fixed for one [`TcpTable::send_data`].
#[derive(Clone, Copy)]
struct FrameShape {
    /// The largest segment the guest takes.
    mss: usize,
    gso: GsoKind,
    /// The largest payload of one TSO frame, or 0 (the guest takes none).
    tso_max: usize,
    payload_offset: usize,
    csum_at: PartialCsum,
}

impl FrameShape {
    fn new(conn: &Conn, rx: &dyn RxSink, mss_limit: u16) -> FrameShape {
        let v6 = conn.key.v6();
        // A guest taking TCP GSO frames gets up to 64 KiB per frame, segmented on its side.
        let gso = if v6 { GsoKind::Tcpv6 } else { GsoKind::Tcpv4 };
        FrameShape {
            mss: usize::from(conn.guest_mss.min(conn.key.mss_limit(mss_limit))).max(1),
            gso,
            tso_max: if rx.partial_csum() {
                rx.tso_max(gso)
            } else {
                0
            },
            payload_offset: wire::tcp_payload_offset(v6),
            csum_at: wire::tcp_csum(v6),
        }
    }
}

/// What one try at sending socket data found.
enum Sent {
    /// A frame went to the guest.
    Frame,
    /// Nothing more to send for now (no data, or end of file).
    Nothing,
    /// The socket failed.
    Failed,
    /// The guest's RX ring is full.
    Stalled,
}

/// `n` bytes went to the guest: they carry the ACK (a delayed one included) and start the
/// retransmission timer.
fn data_sent(conn: &mut Conn, n: usize) {
    conn.snd_nxt = conn.snd_nxt.wrapping_add(n as u32);
    conn.advance_max();
    conn.clear(Flags::ACK_DUE);
    conn.clear(Flags::ACK_DELAYED);
    conn.unacked = 0;
    conn.arm_rto();
}

/// The socket reached end of file and every byte went: the guest gets our FIN.
fn send_fin(conn: &mut Conn, rx: &mut dyn RxSink, ep: &Endpoints, window: u16) {
    if !conn.send_segment(rx, ep, TCP_FIN | TCP_ACK, window) {
        return;
    }
    conn.fin_seq = Some(conn.snd_nxt);
    conn.snd_nxt = conn.snd_nxt.wrapping_add(1);
    conn.advance_max();
    conn.event(Event::TapFinSent);
    conn.clear(Flags::ACK_DUE);
    conn.clear(Flags::ACK_DELAYED);
    conn.arm_rto();
}
