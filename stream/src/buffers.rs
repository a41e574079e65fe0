//! The session's two fixed buffers: the input ring frames are parsed in place from, and the
//! output buffer frames are produced in place into.

use std::io;
use std::os::fd::RawFd;

use podwire_frame::{RxError, RxSink, SgList, MAX_FRAME_LEN};

use crate::{StreamCounters, MIN_FRAME_LEN};

/// The input ring: two largest frames with their lengths, so that after the complete frames of
/// a read are consumed, the one partial frame left always has room to complete.
pub const IN_RING_LEN: usize = 2 * (4 + MAX_FRAME_LEN);

/// The output buffer: room for several largest frames before a flush is needed.
pub const OUT_BUF_LEN: usize = 4 * (4 + MAX_FRAME_LEN);

/// Why the input cannot be parsed further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame length {0} is outside 14..=65549")]
pub struct BadLength(pub u32);

/// A ring of bytes read from the frontend.
pub struct InRing {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
}

impl Default for InRing {
    fn default() -> Self {
        InRing::new()
    }
}

impl InRing {
    pub fn new() -> InRing {
        InRing {
            buf: vec![0u8; IN_RING_LEN].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads what the socket has into the free space (up to two segments) with one `readv`.
    /// `Ok(0)` is the end of the stream.
    pub fn read_from(&mut self, fd: RawFd) -> io::Result<usize> {
        let cap = self.buf.len();
        let tail = (self.head + self.len) % cap;
        let free = cap - self.len;
        let first = free.min(cap - tail);
        let base = self.buf.as_mut_ptr();
        let iov = [
            libc::iovec {
                // SAFETY: tail < cap, so the pointer stays inside buf.
                iov_base: unsafe { base.add(tail) }.cast(),
                iov_len: first,
            },
            libc::iovec {
                iov_base: base.cast(),
                iov_len: free - first,
            },
        ];
        let count = if free > first { 2 } else { 1 };
        // SAFETY: both iovecs lie in buf's free space, which nothing else references now.
        let n = unsafe { libc::readv(fd, iov.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.len += n as usize;
        Ok(n as usize)
    }

    fn byte(&self, at: usize) -> u8 {
        self.buf[(self.head + at) % self.buf.len()]
    }

    /// The length of the next frame if it is complete in the ring, `None` if more bytes are
    /// needed, or the bad length.
    pub fn next_frame_len(&self) -> Result<Option<usize>, BadLength> {
        if self.len < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.byte(0), self.byte(1), self.byte(2), self.byte(3)]);
        let frame_len = len as usize;
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame_len) {
            return Err(BadLength(len));
        }
        Ok((self.len >= 4 + frame_len).then_some(frame_len))
    }

    /// Lends the next frame (of `frame_len` bytes, from [`InRing::next_frame_len`]) as an
    /// `SgList` of one or two segments, then consumes it. The bytes stay untouched until the
    /// next [`InRing::read_from`].
    pub fn take_frame<R>(
        &mut self,
        frame_len: usize,
        use_frame: impl FnOnce(&SgList<'_>) -> R,
    ) -> R {
        let cap = self.buf.len();
        let start = (self.head + 4) % cap;
        let (wrapped, from_start) = self.buf.split_at_mut(start);
        let result = if frame_len <= from_start.len() {
            let mut slices = [&mut from_start[..frame_len]];
            let sg = SgList::from_slices(&mut slices).expect("one segment");
            use_frame(&sg)
        } else {
            let rest = frame_len - from_start.len();
            let mut slices = [from_start, &mut wrapped[..rest]];
            let sg = SgList::from_slices(&mut slices).expect("two segments");
            use_frame(&sg)
        };
        self.head = (self.head + 4 + frame_len) % cap;
        self.len -= 4 + frame_len;
        result
    }
}

/// Frames produced for the frontend, each behind its 4-byte length, waiting to be sent.
pub struct OutBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Default for OutBuf {
    fn default() -> Self {
        OutBuf::new()
    }
}

impl OutBuf {
    pub fn new() -> OutBuf {
        OutBuf {
            buf: vec![0u8; OUT_BUF_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Bytes produced and not yet sent.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Whether a largest frame fits without a flush.
    pub fn has_room_for_a_frame(&self) -> bool {
        self.buf.len() - self.end >= 4 + MAX_FRAME_LEN
    }

    /// Sends what is pending, as far as the socket takes it. `Ok(true)` when all went.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<bool> {
        while self.start < self.end {
            let pending = &self.buf[self.start..self.end];
            // SAFETY: a valid buffer of `pending.len()` bytes; MSG_NOSIGNAL: a gone peer is an
            // error here, not a signal.
            let n = unsafe {
                libc::send(
                    fd,
                    pending.as_ptr().cast(),
                    pending.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(false),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            self.start += n as usize;
        }
        // Drained: start over at the beginning, so that no frame is ever split or moved.
        self.start = 0;
        self.end = 0;
        Ok(true)
    }
}

/// The handler's view of the frontend's receive side: room in the [`OutBuf`].
pub struct StreamSink<'a> {
    pub out: &'a mut OutBuf,
    pub fd: RawFd,
    pub counters: &'a StreamCounters,
    /// A send failed: the session ends after this turn.
    pub broken: bool,
}

impl RxSink for StreamSink<'_> {
    fn push(
        &mut self,
        max_len: usize,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        let max_len = max_len.min(MAX_FRAME_LEN);
        if self.out.buf.len() - self.out.end < 4 + max_len {
            match self.out.flush(self.fd) {
                Ok(_) => {}
                Err(_) => self.broken = true,
            }
            if self.out.buf.len() - self.out.end < 4 + max_len {
                self.counters.rx_full.inc();
                return Err(RxError::NoBuffers);
            }
        }
        let at = self.out.end;
        let mut slices = [&mut self.out.buf[at + 4..at + 4 + max_len]];
        let mut sg = SgList::from_slices(&mut slices).expect("one segment");
        let len = match fill(&mut sg) {
            Some(len) if len <= max_len => len,
            _ => return Err(RxError::Abandoned),
        };
        self.out.buf[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
        self.out.end = at + 4 + len;
        self.counters.frames_out.inc();
        self.counters.bytes_out.add(len as u64);
        Ok(())
    }
}
