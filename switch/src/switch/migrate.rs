//! Live migration of the guest's TCP connections with their sockets (same pod address).
//!
//! # Theory of operation
//!
//! The device-state transfer (see `state.rs`) always carries each guest TCP connection as the
//! guest knows it, so that a destination that cannot take it over resets it at once. When a
//! repair helper is connected on `--repair-path`, the connections also take their sockets:
//!
//! - **Source**, at save time (the guest and the rings are stopped): every established
//!   connection's socket goes to the helper, which switches repair mode on; each is dumped
//!   ([`TcpDump::dump`]: sequence numbers, windows, options, both queues) into the state next
//!   to the NAT's side of it, and the NAT forgets it — the socket, closed in repair mode, sends
//!   nothing, and its address is free for the destination. A socket that cannot be dumped
//!   goes back out of repair mode and travels as a reset, as today. The connections handed
//!   over are also kept as resets owed to the guest: if the migration fails and the guest
//!   resumes here, it learns at once that they are gone.
//! - **Destination**, at load time (after every check of the state passed): a socket per
//!   connection, repair mode on for all of them in one batch, each rebuilt
//!   ([`TcpDump::restore_in_repair`]: bound to the same local address — which fails when the
//!   pod's address changed — and connected without a SYN), repair mode off in one batch,
//!   the never-sent tail of the send queue written, and the NAT adopts it
//!   (`Nat::tcp_adopt`). Any connection that fails a step is reset towards the guest.
//!
//! No helper, a helper that refuses, or no `--repair-path` at all: the state travels without
//! sockets and the destination resets the guest's connections, as when the address changed.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use podwire_nat::tcp::{size_send_buffer, TcpFlowState};
use podwire_repair::{RepairChannel, RepairCmd, TcpDump};

use super::Switch;
use crate::state::{StateRepr, TcpRepairRepr, TcpRepr};

/// How long a migration waits for a helper that is not connected yet (passt waits as long):
/// the guest is stopped meanwhile, so this is downtime.
const HELPER_WAIT: Duration = Duration::from_millis(10);

/// Most queued bytes, over all connections, a source puts in the state (the destination reads
/// at most `podwire_vhost::transfer::MAX_STATE_LEN`); connections past it are reset instead.
pub const MAX_DUMPED_BYTES: usize = 96 << 20;

impl Switch {
    /// The channel repair helpers connect to (`--repair-path`).
    pub fn set_repair_channel(&mut self, channel: RepairChannel) {
        tracing::info!(
            "TCP repair helpers may connect on {}",
            channel.path().display()
        );
        self.repair = Some(channel);
    }

    /// Whether a helper is connected and ready, waiting [`HELPER_WAIT`] for one.
    fn repair_helper(&mut self) -> Option<&mut RepairChannel> {
        let channel = self.repair.as_mut()?;
        match channel.wait_for_helper(HELPER_WAIT) {
            Ok(true) => Some(channel),
            Ok(false) => {
                tracing::info!(
                    "migration: no TCP repair helper connected on {}",
                    channel.path().display()
                );
                None
            }
            Err(e) => {
                tracing::warn!("migration: repair channel: {e}");
                None
            }
        }
    }

    /// Source: dumps the sockets of the connections in `state` that can move, and forgets
    /// them here.
    pub(super) fn hand_over_sockets(&mut self, state: &mut StateRepr) {
        let conns = self.nat.tcp_migratable();
        if conns.is_empty() {
            return;
        }
        if self.repair_helper().is_none() {
            return;
        }
        let Some(channel) = self.repair.as_mut() else {
            return;
        };
        let fds: Vec<BorrowedFd<'_>> = conns
            .iter()
            .filter_map(|(slot, _)| self.nat.tcp_socket(*slot))
            .collect();
        if let Err(e) = channel.set(&fds, RepairCmd::On) {
            tracing::warn!(
                "migration: the repair helper did not switch {} sockets: {e}; their \
                 connections will be reset",
                fds.len()
            );
            return;
        }
        let mut budget = MAX_DUMPED_BYTES;
        let mut moved = 0;
        let mut kept = Vec::new();
        let mut queued = 0;
        for (slot, flow) in &conns {
            let Some(repr) = state
                .tcp
                .iter_mut()
                .find(|t| t.guest == flow.guest && t.remote == flow.remote)
            else {
                kept.push(*slot);
                continue;
            };
            let Some(fd) = self.nat.tcp_socket(*slot) else {
                continue;
            };
            let dump = match TcpDump::dump(fd) {
                Ok(d) if d.send_queue.len() + d.recv_queue.len() <= budget => Ok(d),
                Ok(_) => Err("too much queued data to move".to_string()),
                Err(e) => Err(format!("cannot dump its socket ({e})")),
            };
            let dump = match dump {
                Ok(d) => d,
                Err(why) => {
                    tracing::warn!(
                        "migration: {} -> {}: {why}; reset instead",
                        flow.guest,
                        flow.remote
                    );
                    kept.push(*slot);
                    continue;
                }
            };
            // Closed at once (in repair mode: nothing is sent): until then the socket still
            // acknowledges whatever its peer sends, and bytes acknowledged after the dump
            // would be lost to the destination.
            self.nat.tcp_forget_migrated(&[*slot]);
            let size = dump.send_queue.len() + dump.recv_queue.len();
            budget -= size;
            queued += size;
            repr.repair = Some(Box::new(TcpRepairRepr {
                snd_una: flow.snd_una,
                snd_wnd: flow.snd_wnd,
                guest_mss: flow.guest_mss,
                guest_wscale: flow.guest_wscale,
                inbound_from: flow.inbound_from,
                socket: dump,
            }));
            // If the guest resumes here (the migration failed), these are gone: reset them.
            self.pending_resets.push(TcpRepr {
                repair: None,
                ..repr.clone()
            });
            moved += 1;
        }
        if !kept.is_empty() {
            let fds: Vec<BorrowedFd<'_>> = kept
                .iter()
                .filter_map(|slot| self.nat.tcp_socket(*slot))
                .collect();
            if let Err(e) = channel.set(&fds, RepairCmd::Off) {
                tracing::warn!(
                    "migration: cannot take {} sockets out of repair: {e}",
                    fds.len()
                );
            }
        }
        tracing::info!(
            "migration: handing over {} TCP connections with their sockets ({queued} bytes \
             queued); {} will be reset",
            moved,
            state.tcp.len() - moved
        );
    }

    /// Destination: rebuilds the sockets of the connections that brought one and hands them to
    /// the NAT. Returns the connections to reset towards the guest.
    pub(super) fn take_over_sockets(&mut self, conns: Vec<TcpRepr>) -> Vec<TcpRepr> {
        let (with, mut resets): (Vec<TcpRepr>, Vec<TcpRepr>) =
            conns.into_iter().partition(|t| t.repair.is_some());
        if with.is_empty() {
            return resets;
        }
        let Some(channel) = self.repair_helper() else {
            resets.extend(with);
            return resets;
        };
        // 1. A socket for each, sized as the source's, then repair mode on all at once.
        let mut work: Vec<(TcpRepr, OwnedFd)> = Vec::with_capacity(with.len());
        for t in with {
            let socket = t.repair.as_ref().map(|r| r.socket.new_socket());
            match socket {
                Some(Ok(fd)) => {
                    size_send_buffer(&fd);
                    work.push((t, fd));
                }
                Some(Err(e)) => {
                    tracing::warn!("migration: {}: {e}", t.guest);
                    resets.push(t);
                }
                None => resets.push(t),
            }
        }
        let fds: Vec<BorrowedFd<'_>> = work.iter().map(|(_, fd)| fd.as_fd()).collect();
        if let Err(e) = channel.set(&fds, RepairCmd::On) {
            tracing::warn!("migration: the repair helper did not switch the new sockets: {e}");
            resets.extend(work.into_iter().map(|(t, _)| t));
            return resets;
        }
        // 2. Each rebuilt in repair mode; a failure closes its socket (silently, in repair).
        let mut rebuilt = Vec::with_capacity(work.len());
        for (t, fd) in work {
            let result = match &t.repair {
                Some(r) => r.socket.restore_in_repair(fd.as_fd()),
                None => continue,
            };
            match result {
                Ok(()) => rebuilt.push((t, fd)),
                Err(e) => {
                    tracing::warn!(
                        "migration: {} -> {}: cannot rebuild its socket ({e}); reset",
                        t.guest,
                        t.remote
                    );
                    resets.push(t);
                }
            }
        }
        // 3. Repair mode off (with a window probe: the peer learns where we are), then the
        //    never-sent bytes are written as usual and the NAT takes the connection.
        let fds: Vec<BorrowedFd<'_>> = rebuilt.iter().map(|(_, fd)| fd.as_fd()).collect();
        if let Err(e) = channel.set(&fds, RepairCmd::Off) {
            tracing::warn!("migration: the repair helper did not release the sockets: {e}");
            resets.extend(rebuilt.into_iter().map(|(t, _)| t));
            return resets;
        }
        let mut adopted = 0;
        for (t, fd) in rebuilt {
            match self.adopt(&t, fd) {
                Ok(()) => adopted += 1,
                Err(why) => {
                    tracing::warn!(
                        "migration: {} -> {}: cannot take it over ({why}); reset",
                        t.guest,
                        t.remote
                    );
                    resets.push(t);
                }
            }
        }
        tracing::info!("migration: took over {adopted} TCP connections with their sockets");
        resets
    }

    /// Writes the never-sent tail and hands the connection to the NAT.
    fn adopt(&mut self, t: &TcpRepr, fd: OwnedFd) -> Result<(), String> {
        let r = t.repair.as_ref().ok_or("no socket")?;
        let tail = r.socket.unsent_tail().len();
        let taken = r.socket.finish(fd.as_fd()).map_err(|e| e.to_string())?;
        if taken < tail {
            return Err(format!(
                "the new socket took {taken} of the {tail} bytes never sent"
            ));
        }
        let flow = TcpFlowState {
            guest: t.guest,
            remote: t.remote,
            snd_una: r.snd_una,
            snd_nxt: t.seq_to_guest,
            rcv_nxt: t.ack_from_guest,
            snd_wnd: r.snd_wnd,
            guest_mss: r.guest_mss,
            guest_wscale: r.guest_wscale,
            inbound_from: r.inbound_from,
        };
        self.nat
            .tcp_adopt(fd, &flow, r.socket.recv_queue.len())
            .map_err(|e| e.to_string())
    }
}
