//! Every syscall on a TCP connection's socket or a forwarded port's listener.
//!
//! # Theory of operation
//!
//! The rest of the TCP code decides; this module does, each function one syscall (or a fixed
//! few, when a socket is set up), non-blocking, with no allocation. Payload moves between the
//! socket and guest memory through iovecs: [`send_iov`] writes what the guest sent, [`peek`]
//! reads into guest RX buffers without consuming, [`discard`] drops what the guest
//! acknowledged. An ioctl and a `getsockopt` tell how much is queued each way ([`unread`],
//! [`send_room`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use podwire_frame::{SgList, MAX_SEGS};

use crate::sock;

/// Silence after which the pod side of a connection sends keepalive probes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(300);
/// Send buffer asked for on every connection (the kernel doubles it, capped by wmem_max).
const SNDBUF: i32 = 2 * 1024 * 1024;
/// Bytes in flight towards the guest without SO_PEEK_OFF: what the scratch prefix can skip.
pub(super) const SCRATCH_LEN: usize = 64 * 1024;
pub(super) const MAX_SCRATCH_SEGS: usize = 64;

const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a valid int option value for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value = 0i32;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: valid out-parameters.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// A TCP socket of `ip`'s family.
pub(super) fn tcp_socket(ip: IpAddr) -> io::Result<OwnedFd> {
    sock::socket(sock::family(ip), libc::SOCK_STREAM, 0)
}

/// A listening socket on `bind`, for a forwarded port.
pub(super) fn listener(bind: SocketAddr) -> io::Result<OwnedFd> {
    let fd = tcp_socket(bind.ip())?;
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    sock::bind(&fd, bind)?;
    // SAFETY: a bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Accepts one client on a listener: its socket (non-blocking) and address, or `None` when
/// none is waiting.
pub(super) fn accept(listener: &OwnedFd) -> Option<(OwnedFd, SocketAddr)> {
    let mut sa = sock::RawAddr::zeroed();
    let mut len = sock::RawAddr::capacity();
    // SAFETY: valid out-parameters; the new fd is owned at once.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            sa.as_mut_ptr(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: accept4 returned a new fd.
    Some((unsafe { OwnedFd::from_raw_fd(fd) }, sa.get()))
}

/// Starts a non-blocking connect to `dst`; `EINPROGRESS` is success.
pub(super) fn connect(fd: &OwnedFd, dst: SocketAddr) -> io::Result<()> {
    let sa = sock::RawAddr::new(dst);
    // SAFETY: a valid socket address for the duration of the call.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), sa.as_ptr(), sa.len()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(())
}

/// The socket's pending error (`SO_ERROR`), which reading clears.
pub(super) fn take_error(fd: &OwnedFd) -> io::Result<i32> {
    getsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR)
}

/// Sets a new connection's socket up: a large send buffer, keepalives. Returns the send
/// buffer's size.
///
/// The window offered to the guest is the room in the send buffer: it starts large, or the
/// guest's small window keeps the socket app-limited and autotuning never grows it.
pub(super) fn set_up(fd: &OwnedFd) -> u32 {
    let fd = fd.as_raw_fd();
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF);
    let sndbuf = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)
        .unwrap_or(0)
        .max(0) as u32;
    keepalive(fd);
    sndbuf
}

/// Keepalive probes on the pod side after [`KEEPALIVE_IDLE`] of silence: a peer that went
/// away without a word is found, and its connection reset, long before the idle timeout.
fn keepalive(fd: RawFd) {
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    let idle = KEEPALIVE_IDLE.as_secs() as i32;
    let _ = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle);
    let _ = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 30);
    let _ = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 8);
}

/// Makes peeks start at the oldest unread byte and continue where the last ended
/// (`SO_PEEK_OFF` = 0); false if the kernel cannot.
pub(super) fn start_peek_offset(fd: &OwnedFd) -> bool {
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).is_ok()
}

/// Makes the next peek start `offset` bytes into the receive queue (a connection rebuilt
/// after a migration, whose first `offset` bytes the guest already has).
pub(super) fn set_peek_offset(fd: &OwnedFd, offset: u32) {
    let offset = offset.min(i32::MAX as u32) as libc::c_int;
    let _ = setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, offset);
}

/// Closes a socket so that the peer sees a RST.
pub(super) fn abort(fd: &OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid linger struct; closing happens when the OwnedFd drops.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Half-closes the socket: the peer sees a FIN.
pub(super) fn shutdown_write(fd: &OwnedFd) {
    // SAFETY: shutdown on our socket.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
}

pub(super) fn random_u32() -> u32 {
    let mut v = 0u32;
    // SAFETY: getrandom writes at most 4 bytes into v.
    unsafe { libc::getrandom((&mut v as *mut u32).cast(), 4, libc::GRND_NONBLOCK) };
    v
}

/// Writes the iovecs (into guest memory) to the socket, without blocking.
pub(super) fn send_iov(fd: &OwnedFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr zeroed is valid; the iovecs point into mapped memory.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: valid msghdr for the call.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Drops `n` acknowledged bytes from the socket without copying them.
pub(super) fn discard(fd: &OwnedFd, n: usize) {
    if n == 0 {
        return;
    }
    // SAFETY: with MSG_TRUNC, TCP discards the bytes and writes nothing to the buffer.
    unsafe {
        libc::recv(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            n,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
}

/// What a peek at the socket found.
pub(super) enum Peeked {
    Data(usize),
    /// Nothing beyond what was already sent, for now.
    Nothing,
    /// The peer closed its side and everything was sent.
    Eof,
    /// The connection failed (reset by the peer, for one).
    Failed,
}

/// Peeks up to `len` bytes into `frame` at `offset`. Without SO_PEEK_OFF (`peek_off` false)
/// the `skip` bytes already sent are peeked into the scratch buffer first.
pub(super) fn peek(
    fd: &OwnedFd,
    frame: &SgList<'_>,
    offset: usize,
    len: usize,
    peek_off: bool,
    skip: usize,
    scratch: *mut u8,
) -> Peeked {
    let mut payload = [EMPTY_IOVEC; MAX_SEGS];
    let m = frame.iovecs(offset, len, &mut payload);
    // With SO_PEEK_OFF (the common case) the frame's own iovecs are the whole read: no larger
    // array to clear and copy into per peek.
    let got = if peek_off {
        peek_iov(fd, &mut payload[..m])
    } else {
        let mut iov = [EMPTY_IOVEC; MAX_SEGS + MAX_SCRATCH_SEGS];
        let mut n = 0;
        let mut left = skip;
        while left > 0 && n < MAX_SCRATCH_SEGS {
            let take = left.min(SCRATCH_LEN);
            iov[n] = libc::iovec {
                iov_base: scratch.cast(),
                iov_len: take,
            };
            left -= take;
            n += 1;
        }
        iov[n..n + m].copy_from_slice(&payload[..m]);
        peek_iov(fd, &mut iov[..n + m])
    };
    if got < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Peeked::Nothing,
            _ => Peeked::Failed,
        };
    }
    let prefix = if peek_off { 0 } else { skip };
    match (got as usize).saturating_sub(prefix) {
        0 => Peeked::Eof,
        n => Peeked::Data(n),
    }
}

/// One `recvmsg(MSG_PEEK)` into `iov`: the byte count, or -1 (errno set).
fn peek_iov(fd: &OwnedFd, iov: &mut [libc::iovec]) -> isize {
    // SAFETY: msghdr zeroed is valid; iovecs point into guest memory or the scratch buffer.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: valid msghdr for the call.
    unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    }
}

/// Bytes in the socket's receive queue not yet consumed (peeked ones included). One ioctl.
pub(super) fn unread(fd: &OwnedFd) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD (SIOCINQ) writes an int.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut queued) };
    queued.max(0) as usize
}

/// Room in the socket's send buffer (`sndbuf` bytes, fixed since podwire set it): the window
/// offered to the guest. One `getsockopt`.
///
/// Counted as the kernel counts it before it refuses a write: the memory the queue takes
/// (`SK_MEMINFO_WMEM_QUEUED`, buffers and their overhead), not the payload in it (`TIOCOUTQ`).
/// Payload-based room stays a few tens of KiB above zero once the buffer is full, and a
/// guest offered it sends into writes that fail, over and over, until the pod reads.
pub(super) fn send_room(fd: &OwnedFd, sndbuf: u32) -> u32 {
    // SK_MEMINFO_VARS, 9 since Linux 4.x; a kernel with fewer writes fewer.
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: info and len are valid for the call and len is info's size; the kernel writes
    // at most len bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return 0;
    }
    sndbuf.saturating_sub(info[libc::SK_MEMINFO_WMEM_QUEUED as usize])
}

/// Payload bytes in the socket's send queue, sent or not (for operators). One ioctl.
pub(super) fn unsent(fd: &OwnedFd) -> u32 {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes an int.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    queued.max(0) as u32
}
