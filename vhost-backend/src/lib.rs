//! podwire's virtio-net device over vhost-user.
//!
//! # Theory of operation
//!
//! This crate is the NIC and nothing else: it speaks vhost-user to a frontend (QEMU, DPDK's
//! virtio-user), owns the two split rings and guest-memory access, and moves frames between the
//! rings and a [`NetHandler`]. It knows no protocol above Ethernet.
//!
//! The frame vocabulary it shares with the dataplane above — scatter-gather lists of host
//! pointers into guest memory ([`SgList`]), the [`NetHandler`] and [`RxSink`] traits, counters —
//! lives in `podwire-frame`, which knows nothing of vhost-user; it is re-exported here.
//!
//! - [`device`]: the `VhostUserBackendMut` implementation: features, config space, ring
//!   processing, batching of used entries and interrupts.
//! - [`relay`]: a filter on the control channel that smooths over a QEMU/vhost-crate
//!   ordering mismatch.
//! - [`server`]: the socket, one frontend at a time, reconnects, refusal of a second frontend.
//! - [`transfer`]: live migration's device-state transfer (SET_DEVICE_STATE_FD).
//! - [`counters`]: the device's own per-reason drop counters.
//! - [`vnet`]: the virtio-net header and config space over virtio-bindings' types.

pub mod counters;
pub mod device;
pub mod relay;
pub mod server;
pub mod session;
pub mod transfer;
pub mod vnet;

pub use counters::{ChainError, DeviceCounters};
pub use device::feature_names;
pub use device::{NetConfig, NetDevice};
pub use podwire_frame::{
    nonzero_summary, sg, warn_once, Checksum, Counter, GsoKind, NetHandler, PartialCsum, RxError,
    RxSink, SgList, StateError, TxOffload, MAX_FRAME_LEN, MAX_SEGS, RX_BATCH,
};
pub use server::{FrontendAccess, ServeError, Server};
pub use session::{SessionInfo, SessionSnapshot};
