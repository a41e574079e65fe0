//! Retransmission, handshake retries, and window updates the socket never signalled.
//!
//! # Theory of operation
//!
//! The NAT's timer ticks every 100 ms and calls [`TcpTable::tick`], which looks at every
//! connection once:
//!
//! - **window update**: a guest offered a nearly closed window may be waiting on us, and the
//!   socket's write-space edge may never come (it was not full, just busy): once the send
//!   buffer has room for two segments, an ACK reopens the window.
//! - **retransmission**: a connection with data (or a FIN, SYN or SYN-ACK) unacknowledged past
//!   its deadline sends it again ([`Event::Retransmit`] for data: from the oldest
//!   unacknowledged byte), with the timeout doubled up to [`MAX_RTO`]. After [`MAX_RETRIES`]
//!   (a handshake: [`MAX_SYN_RETRIES`]) it gives up and resets both sides.
//!
//! The delayed-ACK timer is the NAT's own one-shot timerfd (see `ack`); idle expiry is the
//! flow table's (see [`crate::flow::Timeouts`]).

use std::time::{Duration, Instant};

use mio::Registry;
use podwire_frame::RxSink;

use super::conn::{Conn, Flags, State};
use super::{socket, Cx, TcpTable};
use crate::flow::FlowTable;
use crate::wire::Endpoints;

#[cfg(doc)]
use super::conn::Event;

const MAX_RTO: Duration = Duration::from_secs(60);
/// Retransmissions of one segment before the connection is reset.
const MAX_RETRIES: u8 = 8;
/// SYNs sent to the guest for an inbound connection before giving up.
const MAX_SYN_RETRIES: u8 = 5;

impl TcpTable {
    /// Retransmission and handshake timers (called on every timer tick).
    pub fn tick(
        &mut self,
        flows: &mut FlowTable,
        registry: &Registry,
        now: Instant,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
    ) {
        let mut cx = Cx {
            flows,
            registry,
            rx,
            ep,
        };
        for slot in 0..cx.flows.slots() {
            let Some(conn) = cx.flows.tcp_mut(slot) else {
                continue;
            };
            if window_update_due(conn) {
                conn.set(Flags::ACK_DUE);
                self.work.queue_ack(conn, slot);
                continue;
            }
            if conn.rto_deadline.is_some_and(|deadline| now >= deadline) {
                self.timeout(&mut cx, slot);
            }
        }
    }

    /// `slot`'s retransmission timer expired: send again, or give up.
    fn timeout(&mut self, cx: &mut Cx<'_>, slot: usize) {
        let Some(conn) = cx.flows.tcp_mut(slot) else {
            return;
        };
        conn.retries += 1;
        conn.rto = (conn.rto * 2).min(MAX_RTO);
        let limit = match conn.state() {
            State::SynSent | State::SynAckSent => MAX_SYN_RETRIES,
            _ => MAX_RETRIES,
        };
        if conn.retries > limit {
            self.reset(cx, slot);
            return;
        }
        self.counters.retransmits.inc();
        match conn.state() {
            State::SynSent | State::SynAckSent => self.send_syn_or_owe(conn, slot, cx.rx, cx.ep),
            State::Established => {
                self.rewind(conn);
                conn.rto_deadline = None;
                self.send_data(cx.flows, slot, cx.rx, cx.ep);
            }
            State::Connecting => conn.rto_deadline = None,
        }
    }
}

/// The guest's window is nearly closed and the socket has room for two segments again.
fn window_update_due(conn: &Conn) -> bool {
    conn.window_update_wanted()
        && socket::send_room(&conn.fd, conn.sndbuf) >= 2 * u32::from(conn.guest_mss)
}
