//! Read-only views of the TCP table for operators, and removing a listener (see `inspect.rs`
//! one level up).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::Registry;

use super::conn::{Conn, Event, Flags, State};
use super::socket;
use super::TcpTable;
use crate::flow::FlowTable;
use crate::inspect::{FlowInfo, FlowProto, TcpDetail};
use crate::sock;

/// What the kernel knows about a TCP socket: bytes acknowledged by the peer, bytes received
/// from it, and milliseconds since data last moved either way.
fn tcp_info(fd: RawFd) -> Option<(u64, u64, u32)> {
    // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid pointers to a local struct and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| {
        let idle = info.tcpi_last_data_sent.min(info.tcpi_last_data_recv);
        // The peer's acknowledgement of our SYN counts one byte that was never data.
        let sent = info.tcpi_bytes_acked.saturating_sub(1);
        (sent, info.tcpi_bytes_received, idle)
    })
}

impl Conn {
    fn detail(&self, now: Instant) -> TcpDetail {
        TcpDetail {
            events: Event::ALL
                .iter()
                .filter(|&&e| self.has_seen(e))
                .map(|&e| e.name())
                .collect(),
            flags: Flags::NAMED
                .iter()
                .filter(|(f, _)| self.has(*f))
                .map(|&(_, name)| name)
                .collect(),
            snd_una: self.snd_una,
            in_flight: self.in_flight(),
            guest_window: self.snd_wnd,
            rcv_nxt: self.rcv_nxt,
            offered_window: self.adv_wnd,
            socket_unread: socket::unread(&self.fd) as u32,
            socket_unsent: socket::unsent(&self.fd),
            rto_in_ms: self
                .rto_deadline
                .map(|d| d.saturating_duration_since(now).as_millis() as u64),
            retries: self.retries,
        }
    }
}

impl TcpTable {
    /// Up to `limit` connections.
    pub fn flows(&self, flows: &FlowTable, limit: usize) -> Vec<FlowInfo> {
        let now = Instant::now();
        flows
            .iter()
            .filter_map(|(slot, _)| flows.tcp(slot))
            .take(limit)
            .map(|c| {
                let info = tcp_info(c.fd.as_raw_fd());
                let state = match c.state() {
                    _ if c.half_closed() || c.has_seen(Event::SockFinRcvd) => "closing",
                    State::Connecting => "connecting",
                    State::SynAckSent => "syn-ack-sent",
                    State::SynSent => "syn-sent",
                    State::Established => "established",
                };
                FlowInfo {
                    proto: FlowProto::Tcp,
                    inbound: c.opened_from_pod(),
                    guest: SocketAddr::new(c.key.guest_ip, c.key.guest_port),
                    remote: Some(SocketAddr::new(c.key.remote_ip, c.key.remote_port)),
                    pod: sock::local_addr(&c.fd).ok(),
                    state,
                    bytes_from_guest: info.map(|i| i.0),
                    bytes_to_guest: info.map(|i| i.1),
                    age: Some(now.saturating_duration_since(c.opened)),
                    idle: info.map(|i| Duration::from_millis(u64::from(i.2))),
                    tcp: Some(c.detail(now)),
                }
            })
            .collect()
    }

    /// Closes the listener bound to `bind`; its accepted connections are not touched.
    pub fn unlisten(&mut self, registry: &Registry, bind: SocketAddr) -> bool {
        for slot in self.listeners.iter_mut() {
            let matches = slot
                .as_ref()
                .is_some_and(|l| sock::local_addr(&l.fd).ok() == Some(bind));
            if matches {
                if let Some(l) = slot.take() {
                    let _ = registry.deregister(&mut SourceFd(&l.fd.as_raw_fd()));
                }
                return true;
            }
        }
        false
    }
}
