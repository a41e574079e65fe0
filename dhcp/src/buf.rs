//! A bounded byte writer for the IPv6 replies (DHCPv6 and router
//! advertisements).
//!
//! Writing never panics and never goes past the limit. The position keeps
//! counting past the limit instead, so after a failed write the caller
//! knows both that it failed ([`Writer::overflowed`]) and how much room it
//! would have needed ([`Writer::pos`]). [`Writer::optional`] turns that into
//! "written whole or not at all" for parts a reply can do without.

pub struct Writer<'b> {
    buf: &'b mut [u8],
    /// Usable prefix of `buf`.
    limit: usize,
    /// Logical end of what has been written; may exceed `limit`, and then
    /// the bytes past `limit` were dropped.
    pos: usize,
}

impl<'b> Writer<'b> {
    /// A writer that uses at most `limit` bytes of `buf`.
    pub fn new(buf: &'b mut [u8], limit: usize) -> Self {
        let limit = limit.min(buf.len());
        Self { buf, limit, pos: 0 }
    }

    /// A writer that stores nothing and only counts, to size a message.
    pub fn measure() -> Writer<'static> {
        Writer {
            buf: &mut [],
            limit: usize::MAX,
            pos: 0,
        }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn overflowed(&self) -> bool {
        self.pos > self.limit
    }

    pub fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if end <= self.limit {
            if let Some(dst) = self.buf.get_mut(self.pos..end) {
                dst.copy_from_slice(bytes);
            }
        }
        self.pos = end;
    }

    pub fn u8(&mut self, value: u8) {
        self.put(&[value]);
    }

    pub fn u16(&mut self, value: u16) {
        self.put(&value.to_be_bytes());
    }

    pub fn u32(&mut self, value: u32) {
        self.put(&value.to_be_bytes());
    }

    pub fn zeros(&mut self, count: usize) {
        for _ in 0..count {
            self.u8(0);
        }
    }

    /// Overwrites two bytes written earlier (a length field). Does nothing
    /// if they were dropped for lack of room.
    pub fn patch_u16(&mut self, at: usize, value: u16) {
        if at.saturating_add(2) <= self.limit.min(self.pos) {
            if let Some(dst) = self.buf.get_mut(at..at + 2) {
                dst.copy_from_slice(&value.to_be_bytes());
            }
        }
    }

    /// Overwrites one byte written earlier.
    pub fn patch_u8(&mut self, at: usize, value: u8) {
        if at < self.limit.min(self.pos) {
            if let Some(slot) = self.buf.get_mut(at) {
                *slot = value;
            }
        }
    }

    /// Runs `write`, and undoes it if it did not fit. Returns whether it
    /// was kept.
    pub fn optional(&mut self, write: impl FnOnce(&mut Self)) -> bool {
        let mark = self.pos;
        write(self);
        if self.overflowed() {
            self.pos = mark;
            false
        } else {
            true
        }
    }

    /// What has been written, if everything fitted.
    pub fn written(&self) -> Option<&[u8]> {
        if self.overflowed() {
            None
        } else {
            self.buf.get(..self.pos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_counts_and_drops() {
        let mut buf = [0u8; 4];
        let mut w = Writer::new(&mut buf, 10);
        w.u16(0x0102);
        assert!(w.optional(|w| w.u8(3)));
        assert!(!w.optional(|w| w.u16(0x0405)));
        assert_eq!(w.pos(), 3);
        w.u8(4);
        assert_eq!(w.written(), Some(&[1, 2, 3, 4][..]));
        w.u32(0);
        assert!(w.overflowed());
        assert_eq!(w.pos(), 8);
        assert_eq!(w.written(), None);
        w.patch_u16(6, 0xffff);
        w.patch_u8(3, 9);
        assert_eq!(buf, [1, 2, 3, 9]);
    }

    #[test]
    fn limit_below_buffer_is_respected() {
        let mut buf = [0u8; 8];
        let mut w = Writer::new(&mut buf, 2);
        w.put(&[1, 2, 3]);
        assert!(w.overflowed());
        assert_eq!(buf, [0; 8]);
    }
}
