//! TCP connections that survive a live migration, without privilege in podwire.
//!
//! # Theory of operation
//!
//! The kernel can dump and rebuild an established TCP socket (sequence numbers, window,
//! options, queued data) only while the socket is in *repair mode*, and switching a socket
//! into or out of repair mode needs `CAP_NET_ADMIN`, which podwire never holds. As passt
//! does, a tiny privileged helper does only that switch: podwire listens on a UNIX socket
//! (`--repair-path`, by default the vhost-user socket path with `.repair` appended), the
//! helper connects, and for each batch podwire sends up to [`SCM_MAX_FD`] socket fds with
//! `SCM_RIGHTS` plus a one-byte [`RepairCmd`]; the helper sets `TCP_REPAIR` on every fd and
//! echoes the byte back. Anything else (a failed `setsockopt`, a bad message) makes the
//! helper exit, which podwire sees as the connection closing. The wire protocol is the one
//! `passt-repair` speaks, so KubeVirt's node agent can serve podwire as it serves passt.
//!
//! * [`protocol`]: both ends of that channel ([`RepairChannel`] for podwire,
//!   [`serve_helper`] for the `podwire-repair` binary).
//! * [`socket`]: what podwire does with a socket once it is in repair mode: [`TcpDump`]
//!   reads its state on the source, [`TcpDump::restore_in_repair`] rebuilds it on the
//!   destination, and [`TcpDump::encode`]/[`TcpDump::decode`] carry it in the device state
//!   with strict validation (the stream comes from another process).
//!
//! Every failure is an error value: the caller falls back to resetting the guest's
//! connection, which is what happens when no helper is connected or the pod address moved.

pub mod protocol;
pub mod socket;

pub use protocol::{serve_helper, HelperError, RepairChannel, RepairCmd, RepairError, SCM_MAX_FD};
pub use socket::{raw_sockaddr, DecodeError, DumpError, RestoreError, TcpDump};
