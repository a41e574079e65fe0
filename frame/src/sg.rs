//! Scatter-gather views of frames that live in guest memory.
//!
//! # Theory of operation
//!
//! A frame the guest hands us (TX) or a buffer it lends us (RX) is a descriptor chain: a list of
//! guest-physical ranges, each of which may itself cross memory regions. [`SgList`] is that list
//! translated once into host pointers (`iovec`s), so that the rest of podwire can:
//!
//! - copy a few header bytes out to parse them on the stack ([`SgList::read`]),
//! - write headers in ([`SgList::write`]),
//! - hand the payload range straight to `sendmsg`/`recvmsg` ([`SgList::iovecs`]), so that the
//!   kernel makes the one copy of payload per direction, and
//! - compute Internet checksums over any range without copying ([`SgList::checksum`]).
//!
//! The list has a fixed capacity ([`MAX_SEGS`]) and lives on the stack: no allocation per frame.
//! A chain that needs more segments is dropped by the device and counted.
//!
//! The pointers are only valid while the guest-memory snapshot they were taken from is alive;
//! the lifetime `'m` ties an `SgList` to that borrow. Guest memory is shared with a running guest,
//! which may change it under us at any time: every read copies bytes out before they are
//! interpreted, so a racing guest can only corrupt its own frame, never our state.

use std::marker::PhantomData;

/// Most segments one frame may occupy. A 64 KiB frame in 4 KiB pages needs 17; Linux guests use
/// at most `MAX_SKB_FRAGS + 2` (19 on most kernels).
pub const MAX_SEGS: usize = 64;

/// Why a segment could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SgError {
    #[error("frame has more than {MAX_SEGS} segments")]
    TooManySegments,
}

/// A frame or buffer as a list of host memory segments.
pub struct SgList<'m> {
    segs: [libc::iovec; MAX_SEGS],
    count: usize,
    len: usize,
    _mem: PhantomData<&'m mut [u8]>,
}

impl Default for SgList<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'m> SgList<'m> {
    pub const fn new() -> Self {
        SgList {
            segs: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_SEGS],
            count: 0,
            len: 0,
            _mem: PhantomData,
        }
    }

    /// Builds a list over ordinary byte slices: for tests and for frames podwire makes itself.
    pub fn from_slices(slices: &'m mut [&mut [u8]]) -> Result<Self, SgError> {
        let mut sg = SgList::new();
        for s in slices.iter_mut() {
            // SAFETY: the slice is borrowed mutably for 'm, so the pointer stays valid and unaliased.
            unsafe { sg.push_raw(s.as_mut_ptr(), s.len())? };
        }
        Ok(sg)
    }

    /// Adds a segment.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay mapped and writable for `'m`.
    // SAFETY: an unsafe fn: the caller upholds the contract above; the body only records it.
    pub unsafe fn push_raw(&mut self, ptr: *mut u8, len: usize) -> Result<(), SgError> {
        if len == 0 {
            return Ok(());
        }
        let slot = self
            .segs
            .get_mut(self.count)
            .ok_or(SgError::TooManySegments)?;
        *slot = libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        };
        self.count += 1;
        self.len += len;
        Ok(())
    }

    pub fn clear(&mut self) {
        self.count = 0;
        self.len = 0;
    }

    /// Total bytes in the list.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn segments(&self) -> &[libc::iovec] {
        &self.segs[..self.count]
    }

    /// Keeps only the first `len` bytes (no-op if the list is shorter).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let mut left = len;
        let mut keep = 0;
        for seg in self.segs[..self.count].iter_mut() {
            if left == 0 {
                break;
            }
            seg.iov_len = seg.iov_len.min(left);
            left -= seg.iov_len;
            keep += 1;
        }
        self.count = keep;
        self.len = len;
    }

    /// Drops the first `n` bytes (e.g. the virtio-net header in front of a frame).
    pub fn advance(&mut self, n: usize) {
        let n = n.min(self.len);
        let mut left = n;
        let mut drop_segs = 0;
        for seg in self.segs[..self.count].iter_mut() {
            if left < seg.iov_len {
                // SAFETY: left < iov_len keeps the pointer inside the segment.
                seg.iov_base = unsafe { (seg.iov_base as *mut u8).add(left) }.cast();
                seg.iov_len -= left;
                break;
            }
            left -= seg.iov_len;
            drop_segs += 1;
        }
        self.segs.copy_within(drop_segs..self.count, 0);
        self.count -= drop_segs;
        self.len -= n;
    }

    /// Visits the pieces that make up `offset..offset+len` (clamped to the list).
    fn for_each_piece(&self, offset: usize, len: usize, mut f: impl FnMut(*mut u8, usize)) {
        let mut skip = offset;
        let mut left = len;
        for seg in self.segments() {
            if left == 0 {
                break;
            }
            if skip >= seg.iov_len {
                skip -= seg.iov_len;
                continue;
            }
            let take = (seg.iov_len - skip).min(left);
            // SAFETY: skip < iov_len, so the pointer stays inside the segment.
            let ptr = unsafe { (seg.iov_base as *mut u8).add(skip) };
            f(ptr, take);
            left -= take;
            skip = 0;
        }
    }

    /// Copies bytes from `offset` into `buf`; returns how many were copied.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> usize {
        let mut done = 0;
        self.for_each_piece(offset, buf.len(), |ptr, n| {
            // SAFETY: ptr..ptr+n lies in a segment valid for 'm; buf[done..done+n] is ours.
            unsafe { std::ptr::copy_nonoverlapping(ptr, buf[done..].as_mut_ptr(), n) };
            done += n;
        });
        done
    }

    /// Copies `data` in at `offset`. Fails, writing nothing, if it does not fit.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.len)
        {
            return false;
        }
        let mut done = 0;
        self.for_each_piece(offset, data.len(), |ptr, n| {
            // SAFETY: as in `read`, the other way round.
            unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), ptr, n) };
            done += n;
        });
        true
    }

    /// Fills `out` with iovecs covering `offset..offset+len`; returns how many were used.
    /// These are what `sendmsg`/`recvmsg` take, so payload moves between a socket and guest
    /// memory in one kernel copy.
    pub fn iovecs(&self, offset: usize, len: usize, out: &mut [libc::iovec; MAX_SEGS]) -> usize {
        let mut n = 0;
        self.for_each_piece(offset, len, |ptr, take| {
            out[n] = libc::iovec {
                iov_base: ptr.cast(),
                iov_len: take,
            };
            n += 1;
        });
        n
    }

    /// Adds `offset..offset+len` to an Internet checksum.
    pub fn checksum(&self, offset: usize, len: usize, sum: &mut Checksum) {
        self.for_each_piece(offset, len, |ptr, n| {
            // SAFETY: ptr..ptr+n lies in a segment valid for 'm. Guest memory may change while we
            // read it; the worst outcome is a wrong checksum on the guest's own frame.
            let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, n) };
            sum.add(bytes);
        });
    }
}

/// An Internet (RFC 1071) checksum accumulated over any number of byte runs of any length.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checksum {
    sum: u64,
    /// The total so far had an odd length: the next run starts on a low-order byte.
    odd: bool,
}

impl Checksum {
    pub fn new() -> Self {
        Self::default()
    }

    /// One's-complement addition: a carry out of the top wraps around to the bottom. Every
    /// addition goes through here, as the running sum may be anywhere up to `u64::MAX` (a
    /// plain `+=` after a long run of 64-bit groups overflowed).
    fn add_word(&mut self, w: u64) {
        let (s, carry) = self.sum.overflowing_add(w);
        // No overflow: with a carry, s < w <= u64::MAX.
        self.sum = s + u64::from(carry);
    }

    pub fn add(&mut self, mut bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.odd {
            self.add_word(u64::from(bytes[0]));
            bytes = &bytes[1..];
            self.odd = false;
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            // Summing 16-bit big-endian words in 64-bit groups: one's-complement addition is
            // associative, so any grouping folds to the same result.
            let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.add_word(w);
        }
        let mut rest = chunks.remainder();
        while rest.len() >= 2 {
            self.add_word(u64::from(u16::from_be_bytes([rest[0], rest[1]])));
            rest = &rest[2..];
        }
        if let Some(&last) = rest.first() {
            self.add_word(u64::from(last) << 8);
            self.odd = true;
        }
    }

    pub fn add_u16(&mut self, v: u16) {
        self.add(&v.to_be_bytes());
    }

    pub fn add_u32(&mut self, v: u32) {
        self.add(&v.to_be_bytes());
    }

    /// The folded one's-complement sum, not yet inverted.
    pub fn fold(&self) -> u16 {
        let mut s = self.sum;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The value to put in a checksum field.
    pub fn finish(&self) -> u16 {
        !self.fold()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_checksum(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            s += u32::from(w);
        }
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    /// Found by the link6 fuzz target: after 64-bit groups left the running sum at its top, a
    /// trailing 16-bit word, odd byte or odd-aligned start overflowed it (a panic with overflow
    /// checks, a wrong checksum without).
    #[test]
    fn a_sum_at_its_top_takes_more_words_without_overflow() {
        for tail in [&[0xffu8, 0xff][..], &[0xff], &[0xff, 0xff, 0xff]] {
            let mut data = vec![0xffu8; 16];
            data.extend_from_slice(tail);
            let mut c = Checksum::new();
            c.add(&data[..16]);
            c.add(&data[16..]);
            assert_eq!(c.finish(), naive_checksum(&data), "tail {tail:?}");
            // Odd first: the next run starts on a low-order byte.
            let mut c = Checksum::new();
            c.add(&data[..15]);
            c.add(&data[15..]);
            assert_eq!(
                c.finish(),
                naive_checksum(&data),
                "odd split, tail {tail:?}"
            );
        }
    }

    #[test]
    fn checksum_matches_naive_over_any_split() {
        let data: Vec<u8> = (0..301u32).map(|i| (i * 7 + 3) as u8).collect();
        let want = naive_checksum(&data);
        for split in 0..data.len() {
            for split2 in split..data.len().min(split + 13) {
                let mut c = Checksum::new();
                c.add(&data[..split]);
                c.add(&data[split..split2]);
                c.add(&data[split2..]);
                assert_eq!(c.finish(), want, "split at {split},{split2}");
            }
        }
    }

    #[test]
    fn read_write_and_iovecs_cross_segments() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 5];
        let mut c = [0u8; 4];
        let mut slices: [&mut [u8]; 3] = [&mut a, &mut b, &mut c];
        let mut sg = SgList::from_slices(&mut slices).unwrap();
        assert_eq!(sg.len(), 12);
        assert!(sg.write(2, &[1, 2, 3, 4, 5, 6, 7]));
        assert!(!sg.write(10, &[0; 3]), "write past the end must fail");
        let mut out = [0u8; 12];
        assert_eq!(sg.read(0, &mut out), 12);
        assert_eq!(out, [0, 0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0]);
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_SEGS];
        let n = sg.iovecs(2, 7, &mut iov);
        assert_eq!(n, 3);
        assert_eq!(
            iov[..n].iter().map(|v| v.iov_len).collect::<Vec<_>>(),
            vec![1, 5, 1]
        );
        let mut sum = Checksum::new();
        sg.checksum(2, 7, &mut sum);
        assert_eq!(sum.finish(), naive_checksum(&[1, 2, 3, 4, 5, 6, 7]));
        let mut tail = SgList::new();
        for seg in sg.segments() {
            // SAFETY: the segments point into buffers this test keeps alive.
            unsafe { tail.push_raw(seg.iov_base.cast(), seg.iov_len).unwrap() };
        }
        tail.advance(4);
        assert_eq!(tail.len(), 8);
        assert_eq!(tail.segments().len(), 2);
        let mut out8 = [0u8; 8];
        tail.read(0, &mut out8);
        assert_eq!(out8, [3, 4, 5, 6, 7, 0, 0, 0]);
        tail.advance(100);
        assert!(tail.is_empty());
        sg.truncate(4);
        assert_eq!(sg.len(), 4);
        assert_eq!(sg.segments().len(), 2);
    }

    #[test]
    fn too_many_segments_is_an_error_not_a_panic() {
        let mut bufs = [[0u8; 1]; MAX_SEGS + 1];
        let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        assert_eq!(
            SgList::from_slices(&mut slices).err(),
            Some(SgError::TooManySegments)
        );
    }
}
