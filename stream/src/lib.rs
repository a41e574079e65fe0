//! podwire's stream frontend: the guest's Ethernet frames over a UNIX stream socket, each
//! preceded by its length as a 4-byte big-endian number — QEMU's `-netdev stream` (what libvirt
//! gives QEMU for `<interface type='user'><backend type='passt'/>`), passt's default protocol.
//!
//! # Theory of operation
//!
//! [`StreamServer`] binds the socket and serves one frontend at a time, driving the same
//! [`NetHandler`] (switch, NAT, DHCP) as the vhost-user device, through the same traits: no
//! shared memory, so it also serves VMs that cannot use memfd.
//!
//! One session is one thread and one `poll` loop over three descriptors: the frontend's
//! connection, the handler's [`NetHandler::host_fd`], and the listening socket (a second
//! frontend is accepted and closed at once, counted, as the vhost-user server does).
//!
//! - **Guest → pod.** Bytes are read with one `readv` into a fixed ring ([`InRing`], allocated
//!   once per session). Every complete frame is handed to the handler as an [`SgList`] of one
//!   or two segments of that ring (two when it wraps): the frame is never copied by podwire, the
//!   handler's `sendmsg` is the one copy after the kernel's. The ring is not written again until
//!   [`NetHandler::tx_batch_done`] has returned, as the trait requires. A length below an
//!   Ethernet header or above [`MAX_FRAME_LEN`] cannot be resynchronised: the connection is
//!   dropped, counted as `drop_bad_length`, logged once (QEMU reconnects).
//! - **Pod → guest.** [`StreamSink`] lends the handler room in a fixed output buffer
//!   ([`OutBuf`]) behind a 4-byte gap for the length, so socket data is received straight into
//!   the bytes that will be written; the buffer is flushed with one `send` per loop turn. When
//!   the frontend does not read and the buffer is full, `push` answers
//!   [`RxError::NoBuffers`] and the handler's descriptor is left out of the `poll` set until the
//!   buffer drains: backpressure, not growth.

mod buffers;
mod server;

pub use buffers::{InRing, OutBuf, StreamSink, IN_RING_LEN, OUT_BUF_LEN};
pub use server::{serve_connection, SessionEnd, StreamServer};

pub use podwire_frame::{NetHandler, RxError, RxSink, SgList, MAX_FRAME_LEN};

/// Shortest frame accepted from the frontend: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

podwire_frame::counters! {
    /// The stream frontend's counters.
    pub struct StreamCounters {
        /// Frontend connections served.
        sessions: Count,
        /// Frames from the frontend handed to the dataplane.
        frames_in: Count,
        /// Bytes of those frames.
        bytes_in: Bytes,
        /// Frames written for the frontend.
        frames_out: Count,
        /// Bytes of those frames.
        bytes_out: Bytes,
        /// Frames the dataplane could not deliver because the frontend was not reading.
        rx_full: Drop,
        /// Connections dropped for a length outside 14..=65549.
        drop_bad_length: Drop,
        /// Frontends refused because one was already connected.
        refused_frontends: Count,
    }
}

#[cfg(test)]
mod tests;
