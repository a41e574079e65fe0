//! The "guest RAM" a frontend shares with a vhost-user backend: one memfd, mapped shared in this
//! process, whose guest-physical addresses start at 0.
//!
//! The backend maps the same file (SET_MEM_TABLE sends the fd) and writes into it concurrently:
//! every access to ring or buffer memory goes through volatile reads/writes on raw pointers,
//! never through references that would let the compiler assume the bytes are stable.

use anyhow::{bail, Context, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A shared memfd mapping; guest-physical address `gpa` is byte `gpa` of the mapping.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping lives as long as the value; all access is through volatile raw-pointer
// operations bounded by `len` (see `ptr`), so moving it to another thread is sound.
unsafe impl Send for SharedMemory {}

impl SharedMemory {
    /// Creates and maps a memfd of `len` bytes (rounded up to a page).
    pub fn new(len: usize) -> Result<SharedMemory> {
        let len = len.next_multiple_of(4096);
        let name = c"podwire-pingpong-ram";
        // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("memfd_create");
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our own fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error()).context("ftruncate of the memfd");
        }
        // SAFETY: a new shared mapping of the whole file; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of the memfd");
        }
        Ok(SharedMemory {
            fd,
            base: base.cast(),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The mapping's address in this process (the "userspace address" of SET_MEM_TABLE).
    pub fn host_addr(&self) -> u64 {
        self.base as u64
    }

    /// A pointer to `len` bytes at `gpa`; fails if they are not all inside the mapping.
    pub fn ptr(&self, gpa: u64, len: usize) -> Result<*mut u8> {
        let end = gpa.checked_add(len as u64);
        match end {
            Some(end) if end <= self.len as u64 => {
                // SAFETY: gpa + len is within the mapping (checked above).
                Ok(unsafe { self.base.add(gpa as usize) })
            }
            _ => bail!(
                "{len} bytes at {gpa:#x} are outside the {} byte memory",
                self.len
            ),
        }
    }

    /// Copies `data` into memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let p = self.ptr(gpa, data.len())?;
        // SAFETY: `p..p+len` is inside the mapping (checked by `ptr`); the backend does not
        // touch a buffer the driver has not made available, so a plain copy cannot race.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    /// Copies `out.len()` bytes at `gpa` into `out`.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Result<()> {
        let p = self.ptr(gpa, out.len())?;
        // SAFETY: inside the mapping (checked by `ptr`); the buffer was returned by the
        // backend through the used ring, so it no longer writes to it.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    pub fn read_u16(&self, gpa: u64) -> Result<u16> {
        let p = self.ptr(gpa, 2)?.cast::<u16>();
        // SAFETY: in bounds (checked); ring fields are 2-byte aligned by the layout.
        Ok(u16::from_le(unsafe { std::ptr::read_volatile(p) }))
    }

    pub fn write_u16(&self, gpa: u64, v: u16) -> Result<()> {
        let p = self.ptr(gpa, 2)?.cast::<u16>();
        // SAFETY: in bounds (checked); ring fields are 2-byte aligned by the layout.
        unsafe { std::ptr::write_volatile(p, v.to_le()) };
        Ok(())
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        let p = self.ptr(gpa, 4)?.cast::<u32>();
        // SAFETY: in bounds (checked); used-ring elements are 4-byte aligned by the layout.
        Ok(u32::from_le(unsafe { std::ptr::read_volatile(p) }))
    }

    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<()> {
        let p = self.ptr(gpa, 4)?.cast::<u32>();
        // SAFETY: in bounds (checked); 4-byte aligned by the layout.
        unsafe { std::ptr::write_volatile(p, v.to_le()) };
        Ok(())
    }

    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<()> {
        let p = self.ptr(gpa, 8)?.cast::<u64>();
        // SAFETY: in bounds (checked); descriptors are 16-byte aligned by the layout.
        unsafe { std::ptr::write_volatile(p, v.to_le()) };
        Ok(())
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; nothing refers to it any more.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let m = SharedMemory::new(5000).unwrap();
        assert_eq!(m.len(), 8192);
        m.write_u16(8190, 0xbeef).unwrap();
        assert_eq!(m.read_u16(8190).unwrap(), 0xbeef);
        assert!(m.read_u16(8191).is_err());
        assert!(m.ptr(u64::MAX, 2).is_err());
        m.write(100, b"hello").unwrap();
        let mut b = [0u8; 5];
        m.read(100, &mut b).unwrap();
        assert_eq!(&b, b"hello");
    }
}
