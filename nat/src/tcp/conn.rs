//! One TCP connection: who it joins, where its two sequence spaces stand, what has happened to
//! it, and what work it is queued for.
//!
//! # Theory of operation
//!
//! A connection's state is the set of [`Event`]s that have happened to it, as in passt: each
//! names one thing seen on one side (`SOCK_` the pod's socket, `TAP_` the guest), and the
//! state is read off the set rather than kept beside it, so the two cannot disagree.
//! [`Conn::event`] is the one function that changes it; each event's documentation says what
//! it means and which [`State`] it leads to:
//!
//! ```text
//!  guest opens:   TAP_SYN_RCVD ──► Connecting ──SOCK_CONNECTED──► SynAckSent ─┐
//!  pod opens:     SOCK_ACCEPTED ─► SynSent ────────────────────────────────────┤ ESTABLISHED
//!                                                                              ▼
//!                                                                         Established
//!  closing, each half on its own:
//!    pod → guest:  SOCK_FIN_RCVD (end of file) ─► TAP_FIN_SENT (FIN to the guest)
//!                  (RETRANSMIT takes TAP_FIN_SENT back: the FIN goes again)
//!    guest → pod:  TAP_FIN_RCVD (the guest's FIN; the socket shut down for writing)
//!  done:          TAP_FIN_RCVD + TAP_FIN_SENT + everything acknowledged
//! ```
//!
//! RST, retransmission giving up and expiry need no event: they end the connection at once.
//!
//! Apart from its state, a connection carries [`Flags`]: which of the table's work lists it is
//! on (an ACK owed or held back, stalled on a full RX ring, a SYN owed). They are bookkeeping,
//! not protocol state: each is set when the connection joins a list and cleared when it leaves.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use podwire_frame::RxSink;

use super::{frame, socket, GuestConn, TcpCounters};
use crate::flow::{FlowKey, Timeouts};
use crate::wire::{Endpoints, IPV4_LEN, IPV6_LEN};

/// The window scale podwire offers the guest: windows up to 8 MiB.
pub(crate) const OUR_WSCALE: u8 = 7;
pub(crate) const INITIAL_RTO: Duration = Duration::from_secs(1);
/// The MSS of a guest that sends no MSS option (RFC 9293 3.7.1).
pub(crate) const DEFAULT_MSS: u16 = 536;

/// A connection as the guest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub guest_ip: IpAddr,
    pub guest_port: u16,
    /// The remote end as the guest sees it.
    pub remote_ip: IpAddr,
    pub remote_port: u16,
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
    pub fn v6(&self) -> bool {
        self.guest_ip.is_ipv6()
    }

    /// The largest segment towards the guest: `limit` is for IPv4, whose header is 20 bytes
    /// shorter than IPv6's.
    pub fn mss_limit(&self, limit: u16) -> u16 {
        if self.v6() {
            limit.saturating_sub((IPV6_LEN - IPV4_LEN) as u16)
        } else {
            limit
        }
    }
}

/// Where a connection is in its handshake (read off its [`Event`]s by [`Conn::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// The guest sent SYN; the pod socket is connecting.
    Connecting,
    /// Connected; SYN-ACK sent to the guest (or owed), waiting for its ACK.
    SynAckSent,
    /// Inbound: SYN sent to the guest (or owed), waiting for its SYN-ACK.
    SynSent,
    /// Both sides are open; either may have half-closed since (see [`Conn::half_closed`]).
    Established,
}

/// What can happen to a connection. All but [`Event::Retransmit`] are remembered in the
/// connection's event set; see [`Conn::event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Event {
    /// SOCK_ACCEPTED: a client of a forwarded port was accepted; the guest is sent a SYN.
    /// A connection opened from the pod starts with it, in [`State::SynSent`].
    SockAccepted,
    /// TAP_SYN_RCVD: the guest's SYN; the socket's non-blocking connect is under way.
    /// A connection the guest opens starts with it, in [`State::Connecting`].
    TapSynRcvd,
    /// SOCK_CONNECTED: the socket's connect completed; the guest is sent the SYN-ACK.
    /// [`State::Connecting`] → [`State::SynAckSent`].
    SockConnected,
    /// ESTABLISHED: the guest completed the handshake (its ACK of our SYN-ACK, or its SYN-ACK
    /// to our SYN). → [`State::Established`]; the handshake's retransmission timer stops.
    Established,
    /// SOCK_FIN_RCVD: the socket reached end of file. A FIN to the guest follows the last byte.
    SockFinRcvd,
    /// TAP_FIN_RCVD: the guest's FIN, in sequence. The socket is shut down for writing at
    /// once (the pod's peer sees the FIN); the guest may still receive.
    TapFinRcvd,
    /// TAP_FIN_SENT: a FIN went to the guest (or the guest acknowledged one sent before a
    /// retransmission took it back). Nothing more is sent but retransmissions.
    TapFinSent,
    /// RETRANSMIT: the guest is to get everything it has not acknowledged again (the timer
    /// expired, or three duplicate ACKs): sending resumes at the oldest unacknowledged byte,
    /// and a FIN sent counts as unsent (TAP_FIN_SENT is taken back). Not remembered.
    Retransmit,
}

impl Event {
    /// Every event that is remembered, in order.
    pub(crate) const ALL: [Event; 7] = [
        Event::SockAccepted,
        Event::TapSynRcvd,
        Event::SockConnected,
        Event::Established,
        Event::SockFinRcvd,
        Event::TapFinRcvd,
        Event::TapFinSent,
    ];

    const fn bit(self) -> u8 {
        1 << self as u8
    }

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Event::SockAccepted => "SOCK_ACCEPTED",
            Event::TapSynRcvd => "TAP_SYN_RCVD",
            Event::SockConnected => "SOCK_CONNECTED",
            Event::Established => "ESTABLISHED",
            Event::SockFinRcvd => "SOCK_FIN_RCVD",
            Event::TapFinRcvd => "TAP_FIN_RCVD",
            Event::TapFinSent => "TAP_FIN_SENT",
            Event::Retransmit => "RETRANSMIT",
        }
    }
}

/// Which of the table's work lists a connection is on (see the module comment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags(u8);

impl Flags {
    /// ACK_DUE: the guest is owed an ACK (of data, a FIN, a probe, or a window update).
    pub const ACK_DUE: Flags = Flags(1 << 0);
    /// ACK_QUEUED: on the list of ACKs sent at the end of the pass.
    pub const ACK_QUEUED: Flags = Flags(1 << 1);
    /// ACK_DELAYED: the ACK is held back for [`super::DELACK`], to ride on an answer.
    pub const ACK_DELAYED: Flags = Flags(1 << 2);
    /// STALLED: sending to the guest waits for RX buffers.
    pub const STALLED: Flags = Flags(1 << 3);
    /// SYN_OWED: the SYN or SYN-ACK found the guest's RX ring full; it goes on the next kick.
    pub const SYN_OWED: Flags = Flags(1 << 4);
    /// SOCK_DRAINED: the last peek found nothing more to send (it came back short or empty),
    /// so nothing is peeked again until the socket reports new data — its events are
    /// edge-triggered, one per arrival — or a retransmission rewinds. Saves a peek (and the
    /// window's ioctl) per guest segment that acknowledges everything: two system calls of
    /// every request/response.
    pub const SOCK_DRAINED: Flags = Flags(1 << 5);
    /// SOCK_READ_CLOSED: a readiness event said the peer has closed its side (EPOLLRDHUP), so
    /// an end of file may wait behind the data: a short peek no longer means drained, and
    /// the next peek finds the end of file. Without it, a reply and a FIN that arrive together
    /// (one edge-triggered event) leave the FIN unseen.
    pub const SOCK_READ_CLOSED: Flags = Flags(1 << 6);
    /// DISCARD_QUEUED: bytes the guest acknowledged wait in the socket ([`Conn::discard_owed`])
    /// to be dropped after the pass's writes: a request goes to the pod before the previous
    /// answer is cleared away, one system call sooner.
    pub const DISCARD_QUEUED: Flags = Flags(1 << 7);

    /// Every flag with its name, for operators.
    pub const NAMED: [(Flags, &'static str); 8] = [
        (Flags::ACK_DUE, "ACK_DUE"),
        (Flags::ACK_QUEUED, "ACK_QUEUED"),
        (Flags::ACK_DELAYED, "ACK_DELAYED"),
        (Flags::STALLED, "STALLED"),
        (Flags::SYN_OWED, "SYN_OWED"),
        (Flags::SOCK_DRAINED, "SOCK_DRAINED"),
        (Flags::SOCK_READ_CLOSED, "SOCK_READ_CLOSED"),
        (Flags::DISCARD_QUEUED, "DISCARD_QUEUED"),
    ];
}

pub struct Conn {
    pub(crate) key: ConnKey,
    pub(crate) fd: OwnedFd,
    /// What has happened, as [`Event::bit`]s: written only by [`Conn::event`].
    events: u8,
    flags: Flags,
    /// Our sequence numbers (towards the guest).
    pub(crate) iss: u32,
    pub(crate) snd_una: u32,
    pub(crate) snd_nxt: u32,
    /// The highest sequence number sent: after a rewind, ACKs up to here are still valid.
    pub(crate) snd_max: u32,
    /// Where our FIN sits in sequence space, once sent.
    pub(crate) fin_seq: Option<u32>,
    /// The guest's window, in bytes.
    pub(crate) snd_wnd: u32,
    /// Next sequence number expected from the guest.
    pub(crate) rcv_nxt: u32,
    pub(crate) guest_mss: u16,
    /// The guest's window scale, if it offered one (then ours is [`OUR_WSCALE`]).
    pub(crate) guest_wscale: Option<u8>,
    /// Payload bytes from the guest since the last segment that acknowledged them.
    pub(crate) unacked: u32,
    /// The receive window last offered to the guest, in bytes. When it was small, a window
    /// update follows as soon as the socket has room again.
    pub(crate) adv_wnd: u32,
    /// The socket's send buffer size, read once after podwire set it (setting it turns the
    /// kernel's autotuning off, so it stays).
    pub(crate) sndbuf: u32,
    /// Acknowledged bytes still at the head of the socket's receive queue (see
    /// [`Flags::DISCARD_QUEUED`]); every peek and rewind drops them first.
    pub(crate) discard_owed: u32,
    /// The send buffer's room when last asked, and `rcv_nxt` then (see `advertise`).
    room_asked: u32,
    rcv_nxt_when_asked: u32,
    pub(crate) dup_acks: u8,
    pub(crate) retries: u8,
    pub(crate) rto: Duration,
    pub(crate) rto_deadline: Option<Instant>,
    /// The guest's SYN, for an ICMP error about it.
    pub(crate) syn_seq: u32,
    /// For operators (`podwire flows`): when it was opened.
    pub(crate) opened: Instant,
}

impl Conn {
    /// A connection that `first` opened ([`Event::SockAccepted`] or [`Event::TapSynRcvd`]),
    /// with nothing sent or received yet.
    pub(crate) fn new(key: ConnKey, fd: OwnedFd, first: Event) -> Conn {
        debug_assert!(matches!(first, Event::SockAccepted | Event::TapSynRcvd));
        let iss = socket::random_u32();
        Conn {
            key,
            fd,
            events: first.bit(),
            flags: Flags::default(),
            iss,
            snd_una: iss,
            snd_nxt: iss.wrapping_add(1),
            snd_max: iss.wrapping_add(1),
            fin_seq: None,
            snd_wnd: 0,
            rcv_nxt: 0,
            guest_mss: DEFAULT_MSS,
            guest_wscale: None,
            unacked: 0,
            adv_wnd: 0,
            sndbuf: 0,
            discard_owed: 0,
            room_asked: 0,
            rcv_nxt_when_asked: 0,
            dup_acks: 0,
            retries: 0,
            rto: INITIAL_RTO,
            rto_deadline: None,
            syn_seq: 0,
            opened: Instant::now(),
        }
    }

    /// Applies `event`: the one place where a connection's state changes.
    pub(crate) fn event(&mut self, event: Event) {
        match event {
            Event::SockAccepted | Event::TapSynRcvd => {
                debug_assert!(false, "{event:?} opens a connection: see Conn::new")
            }
            Event::SockConnected => debug_assert_eq!(self.state(), State::Connecting),
            Event::Established => {
                self.rto_deadline = None;
                self.retries = 0;
            }
            Event::SockFinRcvd | Event::TapFinRcvd | Event::TapFinSent => {}
            Event::Retransmit => {
                self.snd_nxt = self.snd_una;
                self.clear(Flags::SOCK_DRAINED);
                self.events &= !Event::TapFinSent.bit();
                self.dup_acks = 0;
                return;
            }
        }
        self.events |= event.bit();
    }

    /// Whether `event` has happened.
    pub(crate) fn has_seen(&self, event: Event) -> bool {
        self.events & event.bit() != 0
    }

    pub(crate) fn state(&self) -> State {
        if self.has_seen(Event::Established) {
            State::Established
        } else if self.has_seen(Event::SockAccepted) {
            State::SynSent
        } else if self.has_seen(Event::SockConnected) {
            State::SynAckSent
        } else {
            State::Connecting
        }
    }

    /// Opened by a client of a forwarded port (for operators).
    pub(crate) fn opened_from_pod(&self) -> bool {
        self.has_seen(Event::SockAccepted)
    }

    /// Either side has sent its FIN (the guest's taken, ours sent and not taken back).
    pub(crate) fn half_closed(&self) -> bool {
        self.has_seen(Event::TapFinRcvd) || self.has_seen(Event::TapFinSent)
    }

    /// Both FINs are through and the guest acknowledged everything: the connection is over.
    pub(crate) fn done(&self) -> bool {
        self.has_seen(Event::TapFinRcvd)
            && self.has_seen(Event::TapFinSent)
            && self.snd_una == self.snd_nxt
    }

    pub(crate) fn has(&self, flag: Flags) -> bool {
        self.flags.0 & flag.0 != 0
    }

    pub(crate) fn set(&mut self, flag: Flags) {
        self.flags.0 |= flag.0;
    }

    pub(crate) fn clear(&mut self, flag: Flags) {
        self.flags.0 &= !flag.0;
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
    ///
    /// Only our writes fill the send buffer, so the room last asked less what was written
    /// since is a floor of the room now. While that floor is above half the buffer it is
    /// offered as it is: request/response and socket-to-guest bulk then make no query
    /// per frame, and the window's right edge stays where it was (the floor shrinks exactly
    /// as `rcv_nxt` grows). Below half, or after anything else moved `rcv_nxt`, the kernel is
    /// asked again.
    pub(crate) fn advertise(&mut self, counters: &TcpCounters) -> u16 {
        let shift = self.window_shift();
        let written = self.rcv_nxt.wrapping_sub(self.rcv_nxt_when_asked);
        let floor = self.room_asked.saturating_sub(written);
        // `floor > 0`: a send buffer of unknown size (0) is always asked.
        let room = if floor >= self.sndbuf / 2 && floor > 0 {
            floor
        } else {
            counters.send_room_queries.inc();
            let room = socket::send_room(&self.fd, self.sndbuf);
            (self.room_asked, self.rcv_nxt_when_asked) = (room, self.rcv_nxt);
            room
        };
        let field = (room >> shift).min(u32::from(u16::MAX)) as u16;
        self.adv_wnd = u32::from(field) << shift;
        field
    }

    /// Sends a segment without payload at the connection's current sequence and ACK numbers;
    /// false if the guest's RX ring had no room.
    pub(crate) fn send_segment(
        &self,
        rx: &mut dyn RxSink,
        ep: &Endpoints,
        flags: u8,
        window: u16,
    ) -> bool {
        let (seq, ack) = (self.snd_nxt, self.rcv_nxt);
        frame::send_control(rx, ep, self.key, seq, ack, flags, window, &[])
    }

    /// The guest was offered less than two segments' worth: it may be stalled on us.
    pub(crate) fn window_update_wanted(&self) -> bool {
        self.state() == State::Established && self.adv_wnd < 2 * u32::from(self.guest_mss.max(1))
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.snd_nxt.wrapping_sub(self.snd_una)
    }

    /// Records that sending reached `snd_nxt`.
    pub(crate) fn advance_max(&mut self) {
        if seq_gt(self.snd_nxt, self.snd_max) {
            self.snd_max = self.snd_nxt;
        }
    }

    /// Starts the retransmission timer unless it runs.
    pub(crate) fn arm_rto(&mut self) {
        let rto = self.rto;
        self.rto_deadline
            .get_or_insert_with(|| Instant::now() + rto);
    }

    /// How long this connection may stay idle in its state before it is reset.
    pub(crate) fn idle_timeout(&self, t: &Timeouts) -> Duration {
        match self.state() {
            State::Connecting | State::SynAckSent | State::SynSent => t.tcp_half_open,
            State::Established if self.half_closed() => t.tcp_half_closed,
            State::Established => t.tcp_established,
        }
    }

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

/// `a` comes after `b` in sequence space.
pub(crate) fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

pub(crate) fn seq_ge(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn conn(first: Event) -> Conn {
        let key = ConnKey {
            guest_ip: Ipv4Addr::new(10, 0, 2, 15).into(),
            guest_port: 40000,
            remote_ip: Ipv4Addr::new(198, 18, 0, 1).into(),
            remote_port: 80,
        };
        let fd = socket::tcp_socket(key.guest_ip).unwrap();
        Conn::new(key, fd, first)
    }

    #[test]
    fn handshake_states_follow_the_events() {
        let mut out = conn(Event::TapSynRcvd);
        assert_eq!(out.state(), State::Connecting);
        assert!(!out.opened_from_pod());
        out.event(Event::SockConnected);
        assert_eq!(out.state(), State::SynAckSent);
        out.rto_deadline = Some(Instant::now());
        out.retries = 3;
        out.event(Event::Established);
        assert_eq!(out.state(), State::Established);
        assert_eq!(
            (out.rto_deadline, out.retries),
            (None, 0),
            "the handshake timer stops"
        );

        let mut inbound = conn(Event::SockAccepted);
        assert_eq!(inbound.state(), State::SynSent);
        assert!(inbound.opened_from_pod());
        inbound.event(Event::Established);
        assert_eq!(inbound.state(), State::Established);
    }

    #[test]
    fn done_once_both_fins_are_through_and_acknowledged() {
        let mut c = conn(Event::TapSynRcvd);
        c.event(Event::SockConnected);
        c.event(Event::Established);
        c.event(Event::TapFinRcvd);
        assert!(c.half_closed() && !c.done());
        c.event(Event::SockFinRcvd);
        c.fin_seq = Some(c.snd_nxt);
        c.snd_nxt = c.snd_nxt.wrapping_add(1);
        c.event(Event::TapFinSent);
        assert!(!c.done(), "our FIN is not acknowledged yet");
        // Retransmission takes the FIN back: it goes again, and the connection is not done
        // even if everything before it is acknowledged.
        c.dup_acks = 3;
        c.event(Event::Retransmit);
        assert_eq!((c.snd_nxt, c.dup_acks), (c.snd_una, 0));
        assert!(!c.has_seen(Event::TapFinSent) && c.has_seen(Event::SockFinRcvd));
        assert!(!c.done());
        c.snd_nxt = c.snd_nxt.wrapping_add(1);
        c.event(Event::TapFinSent);
        c.snd_una = c.snd_nxt;
        assert!(c.done());
    }

    #[test]
    fn flags_are_independent_of_the_state() {
        let mut c = conn(Event::TapSynRcvd);
        c.set(Flags::ACK_DUE);
        c.set(Flags::SYN_OWED);
        assert!(c.has(Flags::ACK_DUE) && c.has(Flags::SYN_OWED) && !c.has(Flags::STALLED));
        c.clear(Flags::ACK_DUE);
        assert!(!c.has(Flags::ACK_DUE) && c.has(Flags::SYN_OWED));
        assert_eq!(c.state(), State::Connecting);
    }
}
