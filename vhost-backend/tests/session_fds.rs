//! Every descriptor and thread a frontend session costs is released when the session ends.
//!
//! A frontend that sets the device up as QEMU does — memory table (a memfd), both rings with
//! kick, call and error eventfds, rings enabled and kicked — then hangs up without a word (a
//! killed QEMU), again and again: after each session, once the server waits for the next
//! frontend, the process holds exactly the descriptors and threads it held before the first.
//! One file, one test: nothing else runs in this process to move the counts.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod common;

const PROTOCOL_FEATURES: u64 = 1 << 30;
const QUEUE_SIZE: u16 = 256;
/// Guest memory: both rings (descriptors, avail, used: well under 16 KiB each) and slack.
const MEM_LEN: usize = 1 << 20;
const SESSIONS: usize = 6;
const DEADLINE: Duration = Duration::from_secs(20);

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Whether thread `tid` of this process is blocked in accept4 (the server waiting for the
/// next frontend, with everything of the previous session behind it).
fn in_accept(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .is_ok_and(|s| s.split_whitespace().next() == Some(&libc::SYS_accept4.to_string()))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// A shared memfd mapping standing for guest RAM; unmapped and closed on drop.
struct GuestRam {
    fd: OwnedFd,
    base: *mut libc::c_void,
}

impl GuestRam {
    fn new() -> GuestRam {
        // SAFETY: a valid NUL-terminated name; the result is checked.
        let raw = unsafe { libc::memfd_create(c"session-fds-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(
            raw >= 0,
            "memfd_create: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our own fd.
        assert_eq!(
            unsafe { libc::ftruncate(fd.as_raw_fd(), MEM_LEN as libc::off_t) },
            0
        );
        // SAFETY: a new shared mapping of the whole file; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        GuestRam { fd, base }
    }

    fn host_addr(&self) -> u64 {
        self.base as u64
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of that length, no longer used.
        unsafe { libc::munmap(self.base, MEM_LEN) };
    }
}

/// One session as a QEMU whose guest driver came up: everything set, rings enabled and
/// kicked. Returns what the frontend holds, to be dropped at once (the frontend is killed).
fn frontend_session(path: &Path) -> (Frontend, GuestRam, Vec<EventFd>) {
    let mut fe = Frontend::connect(path, 2).unwrap();
    let offered = fe.get_features().unwrap();
    assert_ne!(offered & PROTOCOL_FEATURES, 0);
    let pf = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(pf & VhostUserProtocolFeatures::REPLY_ACK)
        .unwrap();
    fe.set_owner().unwrap();
    fe.set_features(offered).unwrap();
    let ram = GuestRam::new();
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM_LEN as u64,
        userspace_addr: ram.host_addr(),
        mmap_offset: 0,
        mmap_handle: ram.fd.as_raw_fd(),
    }])
    .unwrap();
    let mut fds = Vec::new();
    for q in 0..2usize {
        // Ring q at 64 KiB * (q + 1): descriptors, then avail, then used, each 4 KiB aligned.
        let at = ram.host_addr() + 0x10000 * (q as u64 + 1);
        fe.set_vring_num(q, QUEUE_SIZE).unwrap();
        fe.set_vring_base(q, 0).unwrap();
        fe.set_vring_addr(
            q,
            &VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: at,
                avail_ring_addr: at + 0x1000,
                used_ring_addr: at + 0x2000,
                log_addr: None,
            },
        )
        .unwrap();
        let (kick, call, err) = (
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        );
        fe.set_vring_kick(q, &kick).unwrap();
        fe.set_vring_call(q, &call).unwrap();
        fe.set_vring_err(q, &err).unwrap();
        fds.extend([kick, call, err]);
    }
    for q in 0..2 {
        fe.set_vring_enable(q, true).unwrap();
    }
    for kick in fds.iter().step_by(3) {
        kick.write(1).unwrap();
    }
    (fe, ram, fds)
}

fn socket_path() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("podwire-test-{}-fds", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join("vhost.sock")
}

#[test]
fn sessions_of_killed_frontends_leave_no_descriptor_or_thread_behind() {
    let path = socket_path();
    let (server, handler, counters) = common::bind(&path);
    let server_tid = Arc::new(AtomicI32::new(0));
    let tid = server_tid.clone();
    std::thread::spawn(move || {
        // SAFETY: gettid cannot fail.
        tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
        server.run()
    });
    wait_for("the server thread", || {
        server_tid.load(Ordering::SeqCst) != 0
    });
    let tid = server_tid.load(Ordering::SeqCst);
    wait_for("the server to wait for a frontend", || in_accept(tid));
    let base = (fd_count(), thread_count());

    for session in 1..=SESSIONS {
        let kicks = counters.kicks.get();
        let held = frontend_session(&path);
        wait_for("the worker to take the kicks", || {
            counters.kicks.get() > kicks
        });
        // The frontend is killed: its socket, memory and eventfds go at once.
        drop(held);
        wait_for("the session to end", || {
            handler.lock().unwrap().links.len() == 2 * session
        });
        wait_for("the server to wait for the next frontend", || {
            in_accept(tid)
        });
        assert_eq!(
            (fd_count(), thread_count()),
            base,
            "descriptors and threads (against before the first session) after session {session}"
        );
    }
    assert_eq!(counters.sessions.get(), SESSIONS as u64);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
