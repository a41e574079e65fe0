//! The two narrow traits between a frontend (the vhost-user device, or any other producer of
//! guest frames) and podwire's dataplane.
//!
//! # Theory of operation
//!
//! A frontend owns the guest's rings; the dataplane owns sockets and protocol state. They meet
//! here and nowhere else:
//!
//! - [`NetHandler`] is what the frontend calls: a frame the guest sent (TX), "produce frames"
//!   when the dataplane's fd is readable or the guest posted buffers (RX), the end of a TX pass
//!   (flush what was held back), and link up/down.
//! - [`RxSink`] is what the dataplane calls back to deliver frames to the guest: it lends guest
//!   buffers as an [`SgList`] so that socket data is received straight into guest memory, with
//!   the offload metadata (partial checksum, segmentation) the guest negotiated.
//!
//! Neither trait names a ring, a descriptor or guest memory, so the dataplane compiles without
//! the vhost/virtio/vm-memory stack, and a second frontend (a stream socket) can drive it.

use std::os::fd::RawFd;

use crate::sg::SgList;

/// Largest frame (without virtio-net header): a 65535-byte IP packet in an Ethernet frame.
pub const MAX_FRAME_LEN: usize = 14 + 65535;

/// Where the device hands frames and asks for more.
pub trait NetHandler: Send + 'static {
    /// One Ethernet frame the guest sent (virtio-net header already removed).
    fn guest_frame(&mut self, frame: &SgList<'_>, rx: &mut dyn RxSink);
    /// The same, with what the virtio-net header said about the frame. Handlers that care
    /// about offloads override this; the default ignores the header.
    fn guest_frame_with(&mut self, frame: &SgList<'_>, _tx: TxOffload, rx: &mut dyn RxSink) {
        self.guest_frame(frame, rx)
    }
    /// The handler's fd is readable, or the guest posted RX buffers: produce frames.
    fn poll_host(&mut self, rx: &mut dyn RxSink);
    /// A pass over the TX ring ended: send what was held back to coalesce (one TCP ACK for
    /// many segments; one write for many segments' payload). Until this returns, the buffers of
    /// every frame given to `guest_frame` in the pass stay mapped and are not returned to the
    /// guest, so the handler may keep iovecs into them until then — and not a moment longer.
    fn tx_batch_done(&mut self, _rx: &mut dyn RxSink) {}
    /// An fd that becomes readable when [`NetHandler::poll_host`] has work.
    fn host_fd(&self) -> RawFd;
    /// A frontend connected (`true`) or went away (`false`).
    fn link_changed(&mut self, _up: bool) {}
    /// Live migration, source side: the handler's state (guest identity, leases, flows) for
    /// the destination, in the handler's own versioned format. Called with the rings stopped.
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        Err("this handler cannot be migrated".into())
    }
    /// Live migration, destination side: takes over what a source saved. Anything it cannot
    /// trust (garbage, truncated, another version) is refused whole, before any of it is used.
    fn load_state(&mut self, _state: &[u8]) -> Result<(), StateError> {
        Err("this handler cannot be migrated".into())
    }
}

/// Why a handler could not save or load its migration state.
pub type StateError = Box<dyn std::error::Error + Send + Sync>;

/// What the virtio-net header of a TX frame says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOffload {
    /// VIRTIO_NET_HDR_F_NEEDS_CSUM: the L4 checksum field holds only the pseudo-header sum
    /// (the guest negotiated CSUM and left the rest to the device). podwire terminates the
    /// connection, so it never completes it; it must just not reject the frame for it.
    pub partial_csum: bool,
    /// VIRTIO_NET_HDR_GSO_UDP_L4 (the guest negotiated HOST_USO): one UDP frame carrying
    /// several datagrams of this many payload bytes each (the last may be shorter).
    pub udp_segment: Option<u16>,
}

/// The kinds of segmentation offload podwire hands the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// VIRTIO_NET_HDR_GSO_TCPV4, with GUEST_TSO4.
    Tcpv4,
    /// VIRTIO_NET_HDR_GSO_TCPV6, with GUEST_TSO6.
    Tcpv6,
}

/// Where a partial checksum lives in a frame podwire hands the guest (VIRTIO_NET_HDR_F_NEEDS_CSUM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialCsum {
    /// Offset of the L4 header in the frame: the checksum covers from here to the end.
    pub start: u16,
    /// Offset of the checksum field from `start`.
    pub offset: u16,
}

/// Why a frame could not be delivered to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    #[error("no frontend or the RX ring is not ready")]
    NotReady,
    #[error("the guest has not posted enough RX buffers")]
    NoBuffers,
    #[error("the producer abandoned the frame")]
    Abandoned,
}

/// The guest's receive side, as the handler sees it.
pub trait RxSink {
    /// Lends guest buffers with room for a frame of up to `max_len` bytes (more with a single
    /// non-mergeable buffer is possible; less only if the guest's one buffer is smaller). `fill`
    /// writes the frame at offset 0 and returns its length, or `None` to give the buffers back.
    fn push(
        &mut self,
        max_len: usize,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError>;

    /// Whether the guest takes frames with a partial L4 checksum (it negotiated GUEST_CSUM).
    /// Then producers put only the pseudo-header sum in the checksum field and never read the
    /// payload to checksum it.
    fn partial_csum(&self) -> bool {
        false
    }

    /// [`RxSink::push`] for a frame whose L4 checksum is partial, at `csum`. Only called when
    /// [`RxSink::partial_csum`] is true.
    fn push_partial(
        &mut self,
        max_len: usize,
        _csum: PartialCsum,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        self.push(max_len, fill)
    }

    /// The largest TCP payload one frame may carry when the guest takes GSO frames of `kind`
    /// (it negotiated GUEST_TSO4 or GUEST_TSO6), or 0.
    fn tso_max(&self, _kind: GsoKind) -> usize {
        0
    }

    /// [`RxSink::push_partial`] for a TCP frame the guest takes as segments of `mss` bytes
    /// after `hdr_len` bytes of headers. Only called when [`RxSink::tso_max`] is non-zero for
    /// `kind`, with more than `mss` bytes of payload.
    fn push_tso(
        &mut self,
        max_len: usize,
        csum: PartialCsum,
        _kind: GsoKind,
        _mss: u16,
        _hdr_len: u16,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        self.push_partial(max_len, csum, fill)
    }

    /// Lends buffers for up to `count` (at most [`RX_BATCH`]) frames of up to `max_len` bytes
    /// each, at once, so that a producer can fill them with one system call (`recvmmsg`).
    /// `fill` gets the frames that could be lent (at least one) and writes each one's length
    /// into `lens` (0: nothing for that frame, which then reaches the guest empty), and returns
    /// how many of the leading frames it used; the rest go back to the ring untouched. With
    /// `csum`, the frames carry a partial checksum there (only when [`RxSink::partial_csum`]).
    /// Returns how many frames were used.
    fn push_batch(
        &mut self,
        count: usize,
        max_len: usize,
        csum: Option<PartialCsum>,
        fill: &mut dyn FnMut(&mut [SgList<'_>], &mut [usize]) -> usize,
    ) -> Result<usize, RxError> {
        let _ = count;
        one_of_batch(fill, |one| match csum {
            Some(c) => self.push_partial(max_len, c, one),
            None => self.push(max_len, one),
        })
    }
}

/// A batch `fill` run on one frame lent by `push`: how a single-frame push serves
/// [`RxSink::push_batch`] (the trait's default, and a frontend's fallback). Returns how many frames were used (0 or 1).
pub fn one_of_batch(
    fill: &mut dyn FnMut(&mut [SgList<'_>], &mut [usize]) -> usize,
    push: impl FnOnce(&mut dyn FnMut(&mut SgList<'_>) -> Option<usize>) -> Result<(), RxError>,
) -> Result<usize, RxError> {
    let mut used = 0;
    let result = {
        let mut one = |sg: &mut SgList<'_>| {
            let mut lens = [0usize; 1];
            let n = fill(std::slice::from_mut(sg), &mut lens);
            (n >= 1 && lens[0] > 0).then(|| {
                used = 1;
                lens[0]
            })
        };
        push(&mut one)
    };
    result.map(|()| used)
}

/// Most frames one [`RxSink::push_batch`] lends.
pub const RX_BATCH: usize = 16;
