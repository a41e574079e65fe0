//! When the guest is acknowledged.
//!
//! # Theory of operation
//!
//! Each ACK costs the guest an interrupt and a pass of its stack, which under emulation is most
//! of what a byte costs it; so ACKs are few:
//!
//! - **coalesced**: a connection owing an ACK ([`Flags::ACK_DUE`]) is queued once
//!   ([`Flags::ACK_QUEUED`]) and acknowledged once, at the end of the TX pass
//!   ([`TcpTable::flush_acks`]), after the pass's gathered write decided what it acknowledges.
//! - **delayed** ([`decide`](TcpTable::decide_ack)): a small request's ACK (a pushed segment
//!   shorter than a full one, in order, nothing else owed) waits [`DELACK`] to ride on the
//!   answer; bulk data in order is acknowledged every [`BULK_ACK`] bytes or after [`DELACK`].
//!   Held-back ACKs are listed ([`Flags::ACK_DELAYED`]); the NAT arms a one-shot timer while
//!   any is held, and when it fires they become due ([`TcpTable::release_delayed_acks`]).
//!   Data sent to the guest carries the ACK, which then is neither due nor held.
//! - **at once** (due at the end of the pass): out-of-order data, a second small segment, a
//!   FIN, a keepalive probe, a window update.
//!
//! An ACK that finds the guest's RX ring full stays due and queued for the next flush (the
//! guest's next RX kick brings one) rather than leaving the guest to time out.

use mio::Registry;
use podwire_frame::RxSink;

use super::conn::{Conn, Flags, State};
use super::guest::Segment;
#[cfg(doc)]
use super::DELACK;
use super::{Cx, TcpCounters, TcpTable, BULK_ACK};
use crate::flow::FlowTable;
use crate::wire::{Endpoints, TCP_ACK, TCP_FIN, TCP_PSH};

impl TcpTable {
    /// Decides how payload the guest sent in `seg` is acknowledged: held back (see
    /// [`DELACK`]) or due at the end of the pass. `expected` is the next byte in order.
    pub(super) fn decide_ack(
        &mut self,
        conn: &mut Conn,
        slot: usize,
        seg: &Segment,
        expected: u32,
    ) {
        let established = conn.state() == State::Established;
        let in_order = seg.seq == expected;
        // A request (a pushed segment shorter than a full one, in order, with nothing else
        // unacknowledged) is usually answered at once: its ACK waits a moment to ride on
        // the answer. Anything else — bulk data, a second small segment — is acknowledged
        // at the end of the TX pass, as before, so the guest's sending is never slowed.
        let small_request = seg.flags & TCP_PSH != 0
            && seg.flags & TCP_FIN == 0
            && in_order
            && seg.payload_len < usize::from(conn.key.mss_limit(self.mss_limit))
            && established
            && !conn.has(Flags::ACK_DELAYED)
            && !conn.has(Flags::ACK_DUE);
        // Bulk data in order is acknowledged every BULK_ACK bytes (and at least every
        // DELACK): each ACK costs the guest an interrupt and a pass of its stack, which under
        // emulation is most of what a byte costs it.
        let bulk_in_order = in_order && established;
        conn.unacked = conn.unacked.saturating_add(seg.payload_len as u32);
        let hold = small_request
            || (bulk_in_order && conn.unacked < BULK_ACK && !conn.has(Flags::ACK_DUE));
        if !hold {
            conn.set(Flags::ACK_DUE);
        } else if !conn.has(Flags::ACK_DELAYED) {
            conn.set(Flags::ACK_DELAYED);
            self.work.delayed.push(slot);
        }
    }

    /// Whether ACKs are being held back (the caller arms a [`DELACK`] timer).
    pub fn has_delayed_acks(&self) -> bool {
        !self.work.delayed.is_empty()
    }

    /// The [`DELACK`] timer expired: the held-back ACKs no answer carried are owed now (sent
    /// by the next [`TcpTable::flush_acks`]).
    pub fn release_delayed_acks(&mut self, flows: &mut FlowTable) {
        let mut delayed = std::mem::take(&mut self.work.delayed);
        for &slot in &delayed {
            if let Some(conn) = flows.tcp_mut(slot).filter(|c| c.has(Flags::ACK_DELAYED)) {
                conn.clear(Flags::ACK_DELAYED);
                conn.set(Flags::ACK_DUE);
                self.work.queue_ack(conn, slot);
            }
        }
        delayed.clear();
        if self.work.delayed.is_empty() {
            self.work.delayed = delayed;
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
        self.settle_discards(flows);
        let mut cx = Cx {
            flows,
            registry,
            rx,
            ep,
        };
        while let Some(slot) = self.work.failed.pop() {
            if cx.flows.tcp(slot).is_some() {
                self.reset(&mut cx, slot);
            }
        }
        self.send_queued_acks(&mut cx);
    }

    fn send_queued_acks(&mut self, cx: &mut Cx<'_>) {
        let mut acks = std::mem::take(&mut self.work.acks);
        let mut ring_full = false;
        for &slot in &acks {
            let Some(conn) = cx.flows.tcp_mut(slot) else {
                continue;
            };
            if ring_full && conn.has(Flags::ACK_DUE) {
                // The ring refused the last ACK: this one stays owed (and queued) untried.
                self.work.acks.push(slot);
                continue;
            }
            conn.clear(Flags::ACK_QUEUED);
            if conn.has(Flags::ACK_DUE) && !send_ack(conn, cx.rx, cx.ep, &self.counters) {
                // With the guest's RX ring full the ACK stays owed, for the next flush (the
                // guest's next RX kick brings one), rather than leaving the guest to time out.
                ring_full = true;
                conn.set(Flags::ACK_QUEUED);
                self.work.acks.push(slot);
            }
        }
        acks.clear();
        if self.work.acks.is_empty() {
            self.work.acks = acks;
        }
    }
}

/// Sends the ACK `conn` owes, with the current window; false (still owed) if the guest's RX
/// ring had no room.
fn send_ack(conn: &mut Conn, rx: &mut dyn RxSink, ep: &Endpoints, counters: &TcpCounters) -> bool {
    let window = conn.advertise(counters);
    let sent = conn.send_segment(rx, ep, TCP_ACK, window);
    if sent {
        conn.clear(Flags::ACK_DELAYED);
        conn.clear(Flags::ACK_DUE);
        conn.unacked = 0;
    }
    sent
}
