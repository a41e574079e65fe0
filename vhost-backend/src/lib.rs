//! podwire's virtio-net device over vhost-user.
//!
//! # Theory of operation
//!
//! This crate is the NIC and nothing else: it speaks vhost-user to a frontend (QEMU, DPDK's
//! virtio-user), owns the two split rings and guest-memory access, and moves frames between the
//! rings and a [`NetHandler`]. It knows no protocol above Ethernet.
//!
//! - [`sg`]: frames as scatter-gather lists of host pointers into guest memory, so payload can
//!   go to and from sockets with `sendmsg`/`recvmsg` and no copy of podwire's own.
//! - [`device`]: the `VhostUserBackendMut` implementation: features, config space, ring
//!   processing, batching of used entries and interrupts.
//! - [`relay`]: a filter on the control channel that smooths over a QEMU/vhost-crate
//!   ordering mismatch.
//! - [`server`]: the socket, one frontend at a time, reconnects, refusal of a second frontend.
//! - [`counters`]: per-reason drop counters and the log-once macro.

pub mod counters;
pub mod device;
pub mod relay;
pub mod server;
pub mod sg;

pub use counters::{nonzero_summary, Counter, DeviceCounters};
pub use device::{
    GsoKind, NetConfig, NetDevice, NetHandler, PartialCsum, RxError, RxSink, TxOffload,
    MAX_FRAME_LEN, RX_BATCH,
};
pub use server::{ServeError, Server};
pub use sg::{Checksum, SgList, MAX_SEGS};
