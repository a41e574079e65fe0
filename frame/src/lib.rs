//! podwire's frame vocabulary: what a frontend and the dataplane say to each other.
//!
//! # Theory of operation
//!
//! podwire is layered as frontend (the vhost-user device; later others) → switch → NAT. The
//! frontend owns the guest's rings and memory; the switch and the NAT own protocols and sockets.
//! This crate is the one thing both sides share, and it depends on neither:
//!
//! - [`sg`]: a frame in guest memory as a fixed-capacity list of host `iovec`s ([`SgList`]),
//!   with bounded reads and writes of header bytes and Internet checksums over any range
//!   ([`Checksum`], podwire's one checksum, with the pseudo-header of TCP, UDP and ICMPv6) —
//!   so payload goes to and from sockets with no copy of podwire's own.
//! - [`sink`]: [`NetHandler`] (frames from the guest, "produce frames", end of a TX pass, link
//!   up/down) and [`RxSink`] (guest buffers lent to the dataplane, with the offloads the guest
//!   negotiated: [`PartialCsum`], [`GsoKind`]; [`TxOffload`] for what the guest's header said).
//! - [`counters`](mod@counters): counter sets declared once ([`counters!`], each counter's name, help and kind,
//!   drop-reason enums with their counters), listed through [`CounterSet`] for the status line
//!   and metrics; lock-free [`Counter`]s and the log-once macro used on every drop path.
//!
//! Nothing here knows a ring, a descriptor, vhost-user or vm-memory: `cargo tree -p
//! podwire-nat` shows none of those crates.

pub mod counters;
mod pseudo;
pub mod sg;
pub mod sink;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use counters::{
    nonzero_summary, summary_of, Counter, CounterDesc, CounterKind, CounterSet, CounterValue,
    RateLimit,
};
pub use sg::{Checksum, SgError, SgList, MAX_SEGS};
pub use sink::{
    one_of_batch, GsoKind, NetHandler, PartialCsum, RxError, RxSink, StateError, TxOffload,
    MAX_FRAME_LEN, RX_BATCH,
};
