//! Segments from the guest → the pod's socket.
//!
//! # Theory of operation
//!
//! [`TcpTable::guest_segment`] is the whole path of one guest segment, in order:
//!
//! 1. **parse** ([`parse_segment`]): the header (options included) is copied to the stack and
//!    read through smoltcp's view; the checksum is verified unless the guest left it partial.
//! 2. **find** the connection by its key. None: a SYN opens one (a non-blocking connect,
//!    [`Event::TapSynRcvd`]); anything else but a RST draws a RST.
//! 3. **RST** aborts both sides. In a handshake state, the segment completes the handshake
//!    ([`Event::Established`]) or repeats it.
//! 4. **ACK** of our data: the acknowledged bytes are dropped from the socket (`MSG_TRUNC`);
//!    three duplicate ACKs retransmit ([`Event::Retransmit`]).
//! 5. **payload** in order joins this TX pass's gathered write ([`Gather`]): one `sendmsg` per
//!    connection per pass, straight from guest memory, flushed at the end of the pass (or
//!    before another connection's payload). Only what the socket took is acknowledged.
//! 6. **FIN** in sequence shuts the socket down for writing ([`Event::TapFinRcvd`]).
//! 7. the ACK is queued or held back (see `ack`), and whatever the guest's new window allows
//!    is sent (see `to_guest`); a connection both of whose FINs are through is forgotten.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Registry;
use podwire_frame::{log_limited, warn_once, RxSink, SgList, MAX_SEGS};
use smoltcp::wire::{TcpOption, TcpPacket};

use super::conn::{seq_ge, seq_gt, Conn, ConnKey, Event, Flags, State, DEFAULT_MSS, INITIAL_RTO};
use super::{frame, socket, Cx, TcpTable};
use crate::flow::{FlowKey, FlowTable, Origin};
use crate::wire::{self, Endpoints, IpInfo, TCP_ACK, TCP_FIN, TCP_LEN, TCP_RST, TCP_SYN};
use crate::AddrMap;

/// The guest's TCP header, as far as podwire cares.
pub(super) struct Segment {
    sport: u16,
    dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    mss: Option<u16>,
    wscale: Option<u8>,
    pub payload_offset: usize,
    pub payload_len: usize,
}

impl Segment {
    fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }
}

/// Why a guest segment could not be read.
enum ParseError {
    Truncated,
    Checksum,
}

fn parse_segment(ip: &IpInfo, frame: &SgList<'_>) -> Result<Segment, ParseError> {
    let mut hdr = [0u8; 60];
    if ip.l4_len < TCP_LEN || frame.read(ip.l4_offset, &mut hdr[..TCP_LEN]) < TCP_LEN {
        return Err(ParseError::Truncated);
    }
    let hdr_len = usize::from(TcpPacket::new_unchecked(&hdr[..TCP_LEN]).header_len());
    if hdr_len < TCP_LEN || hdr_len > ip.l4_len {
        return Err(ParseError::Truncated);
    }
    frame.read(ip.l4_offset + TCP_LEN, &mut hdr[TCP_LEN..hdr_len]);
    let mut sum = wire::pseudo_header(ip.src, ip.dst, 6, ip.l4_len);
    if !ip.partial_csum {
        frame.checksum(ip.l4_offset, ip.l4_len, &mut sum);
    }
    if !ip.partial_csum && sum.fold() != 0xffff {
        return Err(ParseError::Checksum);
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
    parse_options(view.options(), &mut seg);
    Ok(seg)
}

/// The options podwire uses: MSS and window scale.
fn parse_options(mut opts: &[u8], seg: &mut Segment) {
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
}

impl TcpTable {
    /// One TCP segment from the guest.
    // The flow table, the poll registry, the guest's RX side and the link's addresses are the
    // NAT's; they become one context (`Cx`) here.
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
        let mut cx = Cx {
            flows,
            registry,
            rx,
            ep,
        };
        self.counters.segments_from_guest.inc();
        let seg = match parse_segment(ip, frame) {
            Ok(s) => s,
            Err(ParseError::Checksum) => {
                self.counters.drop_bad_checksum.inc();
                warn_once!("dropped a guest TCP segment with a bad checksum");
                return;
            }
            Err(ParseError::Truncated) => {
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
        let Some(slot) = cx.flows.lookup(&FlowKey::from(key)) else {
            self.no_connection(&mut cx, map, key, &seg);
            return;
        };
        cx.flows.touch(slot);
        if seg.flags & TCP_RST != 0 {
            self.counters.rst_from_guest.inc();
            if let Some(conn) = cx.flows.tcp_mut(slot) {
                socket::abort(&conn.fd);
            }
            self.remove(cx.flows, cx.registry, slot);
            return;
        }
        let Some(conn) = cx.flows.tcp_mut(slot) else {
            return;
        };
        match conn.state() {
            State::Connecting => {}
            State::SynAckSent if seg.flags & TCP_SYN != 0 => {
                // Our SYN-ACK was lost: the guest repeats its SYN.
                self.send_syn_or_owe(conn, slot, cx.rx, cx.ep);
            }
            State::SynSent => {
                if seg.has(TCP_SYN | TCP_ACK) && seg.ack == conn.iss.wrapping_add(1) {
                    established_by_syn_ack(conn, &seg);
                    self.work.queue_ack(conn, slot);
                    self.send_data(cx.flows, slot, cx.rx, cx.ep);
                }
            }
            State::SynAckSent => {
                if seg.flags & TCP_ACK == 0 || seg.ack != conn.iss.wrapping_add(1) {
                    return;
                }
                conn.snd_una = seg.ack;
                conn.event(Event::Established);
                self.established_segment(&mut cx, slot, &seg, frame);
            }
            State::Established => self.established_segment(&mut cx, slot, &seg, frame),
        }
    }

    /// A segment for a connection podwire does not know: a SYN opens one, anything else but
    /// a RST is answered with a RST.
    fn no_connection(&mut self, cx: &mut Cx<'_>, map: &AddrMap, key: ConnKey, seg: &Segment) {
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
            frame::send_control(cx.rx, cx.ep, key, seq, ack, flags, 0, &[]);
            return;
        }
        self.open_from_guest(cx, map, key, seg);
    }

    /// The guest's SYN: a non-blocking connect towards where the guest asked, and a
    /// connection in [`State::Connecting`]. The SYN-ACK waits for the connect.
    fn open_from_guest(&mut self, cx: &mut Cx<'_>, map: &AddrMap, key: ConnKey, seg: &Segment) {
        let Some(dst) = map.outbound(SocketAddr::new(key.remote_ip, key.remote_port)) else {
            self.counters.drop_loopback.inc();
            warn_once!("refused a guest connection to the pod's loopback or unspecified address");
            frame::reset_syn(cx.rx, cx.ep, key, seg.seq);
            return;
        };
        let fd = match socket::tcp_socket(dst.ip()) {
            Ok(fd) => fd,
            Err(e) => {
                warn_once!("cannot open a TCP socket: {e}");
                frame::reset_syn(cx.rx, cx.ep, key, seg.seq);
                return;
            }
        };
        if let Err(e) = socket::connect(&fd, dst) {
            self.counters.connect_failed.inc();
            frame::refuse(cx.rx, cx.ep, key, seg.seq, e.raw_os_error().unwrap_or(0));
            return;
        }
        let mut conn = Conn::new(key, fd, Event::TapSynRcvd);
        conn.snd_wnd = u32::from(seg.window);
        conn.rcv_nxt = seg.seq.wrapping_add(1);
        conn.guest_mss = seg.mss.unwrap_or(DEFAULT_MSS);
        conn.guest_wscale = seg.wscale;
        conn.syn_seq = seg.seq;
        if self
            .insert(cx.flows, cx.registry, Origin::Outbound, conn)
            .is_some()
        {
            self.counters.opened_by_guest.inc();
        } else {
            frame::reset_syn(cx.rx, cx.ep, key, seg.seq);
        }
    }

    /// A segment on an established connection (or the one that established it).
    fn established_segment(
        &mut self,
        cx: &mut Cx<'_>,
        slot: usize,
        seg: &Segment,
        frame: &SgList<'_>,
    ) {
        if seg.flags & TCP_ACK != 0 {
            self.ack_from_guest(cx.flows, slot, seg);
        }
        if seg.payload_len > 0 {
            self.payload_from_guest(cx.flows, slot, seg, frame);
        } else if let Some(conn) = cx.flows.tcp_mut(slot) {
            if seg.seq == conn.rcv_nxt.wrapping_sub(1) {
                // A keepalive probe (one byte before what we expect): answer it.
                conn.set(Flags::ACK_DUE);
            }
        }
        if seg.flags & TCP_FIN != 0 {
            self.fin_from_guest(cx.flows, slot, seg);
        }
        let Some(conn) = cx.flows.tcp_mut(slot) else {
            return;
        };
        if conn.has(Flags::ACK_DUE) {
            self.work.queue_ack(conn, slot);
        }
        self.send_data(cx.flows, slot, cx.rx, cx.ep);
        if let Some(conn) = cx.flows.tcp_mut(slot).filter(|c| c.done()) {
            // The guest's FIN may be what finished the connection: acknowledge it now, as
            // the coalesced ACKs flushed after this batch no longer find the connection.
            if conn.has(Flags::ACK_DUE) {
                conn.clear(Flags::ACK_DUE);
                let window = conn.advertise(&self.counters);
                conn.send_segment(cx.rx, cx.ep, TCP_ACK, window);
            }
            self.remove(cx.flows, cx.registry, slot);
        }
    }

    /// The ACK field of a guest segment: what it acknowledges of our data leaves the socket;
    /// three duplicates mean a lost segment.
    fn ack_from_guest(&mut self, flows: &mut FlowTable, slot: usize, seg: &Segment) {
        let Some(conn) = flows.tcp_mut(slot) else {
            return;
        };
        let window = u32::from(seg.window) << conn.guest_wscale.unwrap_or(0);
        if seq_gt(seg.ack, conn.snd_una) && seq_ge(conn.snd_max, seg.ack) {
            self.acked(conn, slot, seg.ack);
        } else if seg.ack == conn.snd_una
            && seg.payload_len == 0
            && window == conn.snd_wnd
            && conn.in_flight() > 0
        {
            conn.dup_acks = conn.dup_acks.saturating_add(1);
            if conn.dup_acks == 3 {
                self.rewind(conn);
                self.counters.retransmits.inc();
            }
        }
        conn.snd_wnd = window;
    }

    /// The guest acknowledged our data up to `ack` (new, and no further than we sent). The
    /// bytes leave the socket after the pass's writes ([`Flags::DISCARD_QUEUED`]).
    fn acked(&mut self, conn: &mut Conn, slot: usize, ack: u32) {
        let acked = ack.wrapping_sub(conn.snd_una);
        // The FIN takes a sequence number but no byte in the socket.
        let fin_acked = conn
            .fin_seq
            .is_some_and(|f| seq_ge(f, conn.snd_una) && seq_gt(ack, f));
        let bytes = acked - u32::from(fin_acked);
        if bytes != 0 {
            conn.discard_owed += bytes;
            if !conn.has(Flags::DISCARD_QUEUED) {
                conn.set(Flags::DISCARD_QUEUED);
                self.work.discards.push(slot);
            }
        }
        conn.snd_una = ack;
        // The guest may acknowledge what it got before a rewind: skip resending it.
        if seq_gt(ack, conn.snd_nxt) {
            conn.snd_nxt = ack;
        }
        if fin_acked {
            // Sent after all, even if a retransmission had taken it back.
            conn.event(Event::TapFinSent);
        }
        conn.dup_acks = 0;
        conn.retries = 0;
        conn.rto = INITIAL_RTO;
        conn.rto_deadline = (conn.snd_nxt != conn.snd_una).then(|| Instant::now() + conn.rto);
    }

    /// Goes back to the oldest unacknowledged byte (and FIN) to send them again.
    pub(super) fn rewind(&self, conn: &mut Conn) {
        self.settle(conn);
        conn.event(Event::Retransmit);
        if self.peek_off {
            socket::start_peek_offset(&conn.fd);
        }
    }

    /// Payload from the guest: in order, it joins the write gathered for this pass; either
    /// way the ACK it is owed is decided (see `ack`).
    fn payload_from_guest(
        &mut self,
        flows: &mut FlowTable,
        slot: usize,
        seg: &Segment,
        frame: &SgList<'_>,
    ) {
        let Some(conn) = flows.tcp_mut(slot) else {
            return;
        };
        // In-order data continues the write being gathered for this pass (see `Gather`).
        let expected = conn
            .rcv_nxt
            .wrapping_add(self.gather.bytes_for(slot) as u32);
        self.decide_ack(conn, slot, seg, expected);
        let offset_in_seg = expected.wrapping_sub(seg.seq);
        if seq_gt(seg.seq, expected) {
            // A hole before it: the guest will resend; the ACK says where we are.
            self.counters.drop_out_of_window.inc();
        } else if (offset_in_seg as usize) < seg.payload_len && !conn.has_seen(Event::TapFinRcvd) {
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

    /// The guest's FIN: in sequence (after all its data was written), the socket is shut down
    /// for writing. It is acknowledged either way.
    fn fin_from_guest(&mut self, flows: &mut FlowTable, slot: usize, seg: &Segment) {
        if self.gather.slot == Some(slot) {
            self.flush_write(flows);
        }
        let Some(conn) = flows.tcp_mut(slot) else {
            return;
        };
        if conn.has_seen(Event::TapFinRcvd) {
            return;
        }
        let fin_seq = seg.seq.wrapping_add(seg.payload_len as u32);
        if fin_seq == conn.rcv_nxt {
            conn.rcv_nxt = conn.rcv_nxt.wrapping_add(1);
            conn.event(Event::TapFinRcvd);
            socket::shutdown_write(&conn.fd);
        }
        conn.set(Flags::ACK_DUE);
    }

    /// Drops the bytes the guest acknowledged from the head of the socket, before anything
    /// peeks at it or moves the peek offset.
    pub(super) fn settle(&self, conn: &mut Conn) {
        if conn.discard_owed != 0 {
            self.counters.recv_calls.inc();
            socket::discard(&conn.fd, conn.discard_owed as usize);
            conn.discard_owed = 0;
        }
    }

    /// The discards owed after the pass's writes went out.
    pub(super) fn settle_discards(&mut self, flows: &mut FlowTable) {
        let mut discards = std::mem::take(&mut self.work.discards);
        for &slot in &discards {
            if let Some(conn) = flows.tcp_mut(slot) {
                conn.clear(Flags::DISCARD_QUEUED);
                self.settle(conn);
            }
        }
        discards.clear();
        self.work.discards = discards;
    }

    /// Writes the payload gathered in this TX pass to its socket, in one `sendmsg`.
    pub(super) fn flush_write(&mut self, flows: &mut FlowTable) {
        let Some(slot) = self.gather.slot.take() else {
            return;
        };
        let bytes = self.gather.bytes;
        let result = flows
            .tcp(slot)
            .map(|conn| socket::send_iov(&conn.fd, self.gather.iovecs()));
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
            Some(Err(_)) => self.work.failed.push(slot),
            None => {}
        }
    }
}

/// The guest's SYN-ACK to our SYN (an inbound connection): its sequence space, MSS, window
/// scale and window are known now.
fn established_by_syn_ack(conn: &mut Conn, seg: &Segment) {
    conn.rcv_nxt = seg.seq.wrapping_add(1);
    conn.snd_una = seg.ack;
    conn.snd_nxt = seg.ack;
    conn.snd_max = seg.ack;
    conn.guest_mss = seg.mss.unwrap_or(DEFAULT_MSS);
    conn.guest_wscale = seg.wscale;
    conn.snd_wnd = u32::from(seg.window) << conn.guest_wscale.unwrap_or(0);
    conn.event(Event::Established);
    conn.set(Flags::ACK_DUE);
}

/// In-order payload of one connection, gathered over a pass of the TX ring so that it reaches
/// the socket in one `sendmsg` rather than one per segment.
///
/// The iovecs point into guest memory. That is sound only because the device promises (see
/// `NetHandler::tx_batch_done`) that the TX buffers of a pass are neither returned to the guest
/// nor unmapped until `tx_batch_done` has run, and it is there that this is flushed.
pub(super) struct Gather {
    pub slot: Option<usize>,
    iov: Box<[libc::iovec; GATHER_IOVECS]>,
    len: usize,
    pub bytes: usize,
}

/// Most iovecs one gathered write holds (the kernel takes up to 1024).
const GATHER_IOVECS: usize = 1024;
/// Most bytes one gathered write holds.
const GATHER_BYTES: usize = 1 << 20;

const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

// SAFETY: the raw pointers are only dereferenced (by the kernel) on the thread that filled them,
// within the same TX pass; the table moves between threads only between passes, empty.
unsafe impl Send for Gather {}

impl Gather {
    pub fn new() -> Gather {
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

    /// Drops what was gathered for a connection that closed.
    pub fn forget(&mut self, slot: usize) {
        if self.slot == Some(slot) {
            self.slot = None;
            self.clear();
        }
    }
}
