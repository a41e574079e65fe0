//! Live migration of established guest TCP connections: the NAT's half.
//!
//! # Theory of operation
//!
//! A guest connection is two things: the kernel socket in the pod (its sequence numbers,
//! windows and queues, which only repair mode can read and rebuild — podwire-repair's
//! business) and the NAT's [`Conn`], which maps the guest's sequence space onto that socket.
//! The mapping is simple because podwire holds no payload: the socket's receive queue starts
//! exactly at the oldest byte the guest has not acknowledged (`snd_una`; acknowledged bytes
//! are dropped from it), and every byte the guest sent up to `rcv_nxt` is already in the
//! socket's send queue. So what has to travel is [`TcpFlowState`]: the guest-side sequence
//! numbers, the guest's window, MSS and window scale, and where the connection came from.
//!
//! - Source: [`Nat::tcp_migratable`] lists the connections worth moving (established, no FIN
//!   either way) with their sockets; once the switch has dumped them,
//!   [`Nat::tcp_forget_migrated`] drops them without a word to the peer (a socket closed in
//!   repair mode sends nothing) — the peer's side now belongs to the destination.
//! - Destination: [`size_send_buffer`] before the send queue is refilled (the queue must fit
//!   as it did on the source), then [`Nat::tcp_adopt`] builds the `Conn` around the rebuilt
//!   socket: the bytes in flight to the guest are skipped by the peek offset, as they were on
//!   the source, and an ACK goes to the guest at once so that it learns the window.
//!
//! Everything else (timers, delayed ACKs, retransmission state) starts afresh; the guest's
//! own retransmissions cover anything lost in the switch-over.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use super::conn::{ConnKey, Event, Flags, State};
use super::{socket, Conn};
use crate::flow::{FlowData, FlowKey, Origin};
use crate::Nat;

/// The NAT's side of one guest TCP connection, as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlowState {
    /// The guest's end.
    pub guest: SocketAddr,
    /// The remote end as the guest sees it (which may be a mapped address).
    pub remote: SocketAddr,
    /// Oldest sequence number towards the guest not acknowledged by it: the first byte of
    /// the socket's receive queue.
    pub snd_una: u32,
    /// Next sequence number towards the guest.
    pub snd_nxt: u32,
    /// Next sequence number expected from the guest.
    pub rcv_nxt: u32,
    /// The guest's receive window, in bytes.
    pub snd_wnd: u32,
    pub guest_mss: u16,
    pub guest_wscale: Option<u8>,
    /// For a connection that came in on a forwarded port: the peer's real address (the
    /// inbound budget counts it).
    pub inbound_from: Option<IpAddr>,
}

impl TcpFlowState {
    /// Bytes sent to the guest and not yet acknowledged.
    pub fn in_flight(&self) -> u32 {
        self.snd_nxt.wrapping_sub(self.snd_una)
    }
}

/// Why a rebuilt connection could not join the flow table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdoptError {
    #[error("a connection with the same addresses already exists")]
    Duplicate,
    #[error("{in_flight} bytes in flight to the guest but only {queued} in the socket")]
    Inconsistent { in_flight: u32, queued: usize },
    #[error("the flow table refused it")]
    Refused,
}

/// Sets a socket about to be rebuilt up as a connection's (see `TcpTable::insert`), before
/// its send queue is written back: the queue fitted the source's send buffer of this size.
pub fn size_send_buffer(fd: &OwnedFd) {
    socket::set_up(fd);
}

impl Conn {
    /// Worth moving: established, both directions open, nothing half-done.
    fn migratable(&self) -> bool {
        self.state() == State::Established
            && !self.half_closed()
            && !self.has_seen(Event::SockFinRcvd)
            && self.fin_seq.is_none()
    }

    fn flow_state(&self, origin: Origin) -> TcpFlowState {
        // Owed discards are settled at the end of every TX pass; state is saved between passes.
        debug_assert_eq!(
            self.discard_owed, 0,
            "saved between an ACK and its pass's end"
        );
        TcpFlowState {
            guest: SocketAddr::new(self.key.guest_ip, self.key.guest_port),
            remote: SocketAddr::new(self.key.remote_ip, self.key.remote_port),
            snd_una: self.snd_una,
            snd_nxt: self.snd_nxt,
            rcv_nxt: self.rcv_nxt,
            snd_wnd: self.snd_wnd,
            guest_mss: self.guest_mss,
            guest_wscale: self.guest_wscale,
            inbound_from: match origin {
                Origin::Inbound { source } => Some(source),
                _ => None,
            },
        }
    }
}

impl Nat {
    /// Source: the connections that can move with their sockets, by slot.
    pub fn tcp_migratable(&self) -> Vec<(usize, TcpFlowState)> {
        self.flows
            .iter()
            .filter_map(|(slot, e)| match &e.data {
                FlowData::Tcp(conn) if conn.migratable() => Some((slot, conn.flow_state(e.origin))),
                _ => None,
            })
            .collect()
    }

    /// The socket of the connection in `slot`.
    pub fn tcp_socket(&self, slot: usize) -> Option<BorrowedFd<'_>> {
        self.flows.tcp(slot).map(|c| c.fd.as_fd())
    }

    /// Source: forgets connections whose sockets were handed over. Their sockets are in
    /// repair mode, so closing them sends nothing to the peer.
    pub fn tcp_forget_migrated(&mut self, slots: &[usize]) {
        let registry = self.poll.registry();
        for &slot in slots {
            self.tcp.remove(&mut self.flows, registry, slot);
        }
    }

    /// Destination: takes over a connection whose socket `fd` was rebuilt from the source's
    /// dump (connected, out of repair mode), with `recv_queued` bytes in its receive queue.
    pub fn tcp_adopt(
        &mut self,
        fd: OwnedFd,
        state: &TcpFlowState,
        recv_queued: usize,
    ) -> Result<(), AdoptError> {
        let in_flight = state.in_flight();
        if in_flight as usize > recv_queued {
            return Err(AdoptError::Inconsistent {
                in_flight,
                queued: recv_queued,
            });
        }
        let key = ConnKey {
            guest_ip: state.guest.ip(),
            guest_port: state.guest.port(),
            remote_ip: state.remote.ip(),
            remote_port: state.remote.port(),
        };
        if self.flows.lookup(&FlowKey::from(key)).is_some() {
            return Err(AdoptError::Duplicate);
        }
        let (first, origin) = match state.inbound_from {
            Some(source) => (Event::SockAccepted, Origin::Inbound { source }),
            None => (Event::TapSynRcvd, Origin::Outbound),
        };
        let mut conn = Conn::new(key, fd, first);
        if first == Event::TapSynRcvd {
            conn.event(Event::SockConnected);
        }
        conn.event(Event::Established);
        conn.iss = state.snd_una.wrapping_sub(1);
        conn.snd_una = state.snd_una;
        conn.snd_nxt = state.snd_nxt;
        conn.snd_max = state.snd_nxt;
        conn.snd_wnd = state.snd_wnd;
        conn.rcv_nxt = state.rcv_nxt;
        conn.guest_mss = state.guest_mss;
        conn.guest_wscale = state.guest_wscale;
        if in_flight > 0 {
            // Anything the switch-over lost is sent again after one timeout.
            conn.rto_deadline = Some(Instant::now() + conn.rto);
        }
        let registry = self.poll.registry();
        let slot = self
            .tcp
            .insert(&mut self.flows, registry, origin, conn)
            .ok_or(AdoptError::Refused)?;
        let peek_off = self.tcp.peek_off;
        if let Some(conn) = self.flows.tcp_mut(slot) {
            // The next peek starts after the bytes the guest already has, as on the source
            // (without SO_PEEK_OFF the send path skips `in_flight` bytes by itself).
            if peek_off {
                socket::set_peek_offset(&conn.fd, in_flight);
            }
            // The guest learns the window (and where podwire is) at once.
            conn.set(Flags::ACK_DUE);
            self.tcp.work.queue_ack(conn, slot);
        }
        Ok(())
    }
}
