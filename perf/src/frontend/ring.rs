//! The driver's side of one virtio split ring (virtio 1.x, 2.7): this process writes
//! descriptors and the available ring, the backend the used ring.
//!
//! Layout in guest memory, from the ring's base: the descriptor table (16 bytes × size), the
//! available ring on the next page (flags, idx, ring[size], used_event), the used ring on the
//! page after (flags, idx, ring[size] of {id, len}, avail_event). Every chain here is a single
//! descriptor whose id is its table index, so ids double as buffer numbers.
//!
//! Notifications follow the driver's rules: with VIRTIO_RING_F_EVENT_IDX a kick is sent only
//! when the new available index passes the backend's `avail_event`, and interrupts are asked for
//! by writing `used_event` = the next used index we have not seen (as Linux's
//! `virtqueue_enable_cb` does); without it, by the used ring's NO_NOTIFY flag and the available
//! ring's NO_INTERRUPT flag (always left clear: we want every interrupt).

use super::memory::SharedMemory;
use anyhow::{bail, Result};
use std::sync::atomic::{fence, Ordering};

/// Descriptor flags.
const DESC_F_WRITE: u16 = 2;
/// Used ring flag: the device does not need kicks.
const USED_F_NO_NOTIFY: u16 = 1;
const PAGE: u64 = 4096;

/// Bytes of guest memory one ring of `size` entries takes (three page-aligned parts).
pub fn ring_bytes(size: u16) -> u64 {
    let desc = (16 * size as u64).next_multiple_of(PAGE);
    let avail = (6 + 2 * size as u64).next_multiple_of(PAGE);
    let used = (6 + 8 * size as u64).next_multiple_of(PAGE);
    desc + avail + used
}

/// One split ring, driven from this side.
#[derive(Debug)]
pub struct SplitRing {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    /// The available index we will publish next.
    avail_idx: u16,
    /// The available index at our last kick decision.
    notified_idx: u16,
    /// The next used index to read.
    last_used: u16,
}

impl SplitRing {
    /// A ring of `size` (a power of two) entries at `base` in `mem`, zeroed.
    pub fn new(mem: &SharedMemory, base: u64, size: u16, event_idx: bool) -> Result<SplitRing> {
        if !size.is_power_of_two() {
            bail!("ring size {size} is not a power of two");
        }
        let bytes = ring_bytes(size);
        mem.write(base, &vec![0u8; bytes as usize])?;
        let desc = base;
        let avail = desc + (16 * size as u64).next_multiple_of(PAGE);
        let used = avail + (6 + 2 * size as u64).next_multiple_of(PAGE);
        Ok(SplitRing {
            size,
            desc,
            avail,
            used,
            event_idx,
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn desc_addr(&self) -> u64 {
        self.desc
    }
    pub fn avail_addr(&self) -> u64 {
        self.avail
    }
    pub fn used_addr(&self) -> u64 {
        self.used
    }

    /// Writes descriptor `id` (one buffer of `len` bytes at `addr`; `device_writes` for RX) and
    /// appends it to the available ring; not visible to the backend until [`publish`](Self::publish).
    pub fn push(
        &mut self,
        mem: &SharedMemory,
        id: u16,
        addr: u64,
        len: u32,
        device_writes: bool,
    ) -> Result<()> {
        if id >= self.size {
            bail!("descriptor {id} outside a ring of {}", self.size);
        }
        let d = self.desc + 16 * id as u64;
        mem.write_u64(d, addr)?;
        mem.write_u32(d + 8, len)?;
        mem.write_u16(d + 12, if device_writes { DESC_F_WRITE } else { 0 })?;
        mem.write_u16(d + 14, 0)?;
        let slot = self.avail_idx % self.size;
        mem.write_u16(self.avail + 4 + 2 * slot as u64, id)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Makes what was pushed visible and says whether the backend wants a kick for it.
    pub fn publish(&mut self, mem: &SharedMemory) -> Result<bool> {
        // descriptors and ring entries before the index
        fence(Ordering::Release);
        mem.write_u16(self.avail + 2, self.avail_idx)?;
        // the index before reading the backend's suppression state
        fence(Ordering::SeqCst);
        let old = self.notified_idx;
        let new = self.avail_idx;
        self.notified_idx = new;
        if old == new {
            return Ok(false);
        }
        Ok(if self.event_idx {
            let avail_event = mem.read_u16(self.used + 4 + 8 * self.size as u64)?;
            need_event(avail_event, new, old)
        } else {
            mem.read_u16(self.used)? & USED_F_NO_NOTIFY == 0
        })
    }

    /// The next used element (id, bytes written), if the backend returned one.
    pub fn pop_used(&mut self, mem: &SharedMemory) -> Result<Option<(u16, u32)>> {
        let used_idx = mem.read_u16(self.used + 2)?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        // the index before the element it covers
        fence(Ordering::Acquire);
        let e = self.used + 4 + 8 * (self.last_used % self.size) as u64;
        let id = mem.read_u32(e)?;
        let len = mem.read_u32(e + 4)?;
        self.last_used = self.last_used.wrapping_add(1);
        if id >= self.size as u32 {
            bail!(
                "backend returned descriptor id {id} of a ring of {}",
                self.size
            );
        }
        Ok(Some((id as u16, len)))
    }

    /// Whether used elements are waiting.
    pub fn has_used(&self, mem: &SharedMemory) -> Result<bool> {
        Ok(mem.read_u16(self.used + 2)? != self.last_used)
    }

    /// Asks for an interrupt at the next used element; returns whether one is already waiting
    /// (then no interrupt may come for it: the caller must not sleep).
    pub fn enable_interrupts(&mut self, mem: &SharedMemory) -> Result<bool> {
        if self.event_idx {
            mem.write_u16(self.avail + 4 + 2 * self.size as u64, self.last_used)?;
        } else {
            mem.write_u16(self.avail, 0)?;
        }
        fence(Ordering::SeqCst);
        self.has_used(mem)
    }
}

/// virtio's `vring_need_event`: whether moving an index from `old` to `new` passes `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_wraps() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(5, 10, 3));
        assert!(!need_event(10, 10, 3));
        assert!(need_event(65535, 0, 65534));
    }

    /// Plays the backend by hand: what the driver pushes appears in the avail ring, used
    /// elements written like a device come back, and EVENT_IDX suppression is honoured.
    #[test]
    fn driver_and_a_hand_written_device() {
        let mem = SharedMemory::new(ring_bytes(8) as usize).unwrap();
        let mut r = SplitRing::new(&mem, 0, 8, true).unwrap();
        r.push(&mem, 3, 0x1000, 100, true).unwrap();
        // the device's avail_event is 0: publishing index 1 passes it
        assert!(r.publish(&mem).unwrap());
        assert_eq!(mem.read_u16(r.avail_addr() + 2).unwrap(), 1);
        assert_eq!(mem.read_u16(r.avail_addr() + 4).unwrap(), 3);
        // the device asks for a kick only after index 5
        mem.write_u16(r.used_addr() + 4 + 8 * 8, 5).unwrap();
        r.push(&mem, 4, 0x2000, 100, true).unwrap();
        assert!(!r.publish(&mem).unwrap());
        assert!(!r.publish(&mem).unwrap(), "nothing new, no kick");
        assert!(r.pop_used(&mem).unwrap().is_none());
        assert!(!r.enable_interrupts(&mem).unwrap());
        // the device returns descriptor 3 with 42 bytes
        mem.write_u32(r.used_addr() + 4, 3).unwrap();
        mem.write_u32(r.used_addr() + 8, 42).unwrap();
        mem.write_u16(r.used_addr() + 2, 1).unwrap();
        assert!(r.enable_interrupts(&mem).unwrap(), "a used element waits");
        assert_eq!(r.pop_used(&mem).unwrap(), Some((3, 42)));
        assert!(r.pop_used(&mem).unwrap().is_none());
        r.enable_interrupts(&mem).unwrap();
        assert_eq!(
            mem.read_u16(r.avail_addr() + 4 + 2 * 8).unwrap(),
            1,
            "used_event"
        );
        // a bad id from the device is an error, not a panic
        mem.write_u32(r.used_addr() + 12, 99).unwrap();
        mem.write_u16(r.used_addr() + 2, 2).unwrap();
        assert!(r.pop_used(&mem).is_err());
    }
}
