//! Dumping and rebuilding one established TCP socket in repair mode.
//!
//! Source (socket already in repair mode, guest stopped): read `TCP_INFO` (state, options,
//! window scales), `TCP_MAXSEG`, `TCP_TIMESTAMP`, `TCP_REPAIR_WINDOW`; select the send queue
//! with `TCP_REPAIR_QUEUE`, peek its bytes and read its end sequence (`TCP_QUEUE_SEQ`); same
//! for the receive queue. The sequences are stored as the *start* of each queue, so the
//! destination can write the queued bytes back and land on the same end sequence.
//!
//! Destination: [`TcpDump::new_socket`], then the helper switches repair on, then
//! [`TcpDump::restore_in_repair`] (bind to the same local address, set both queue
//! sequences, `connect` — no SYN in repair mode — refill the receive queue and the
//! already-sent part of the send queue, options, window), then the helper switches repair
//! off, then [`TcpDump::finish`] writes the not-yet-sent tail normally.
//!
//! Only `ESTABLISHED` sockets are dumped; anything else is refused and the caller resets the
//! guest's connection. Queues are capped at [`MAX_QUEUE`] so a dump stays bounded.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Largest send or receive queue carried per socket (larger ones are reset instead).
pub const MAX_QUEUE: usize = 16 << 20;

const TCP_ESTABLISHED: u8 = 1;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
const TCP_TIMESTAMP: libc::c_int = 24;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const SIOCINQ: libc::c_ulong = 0x541B;
const SIOCOUTQ: libc::c_ulong = 0x5411;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
/// The largest MSS `TCP_MAXSEG` accepts (the kernel's MAX_TCP_WINDOW).
const MAX_USER_MSS: u32 = 32767;

/// The kernel's `struct tcp_repair_window`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// Everything needed to rebuild one established TCP socket elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpDump {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Sequence number of the first byte of `send_queue`.
    pub seq_snd: u32,
    /// Sequence number of the first byte of `recv_queue`.
    pub seq_rcv: u32,
    pub window: RepairWindow,
    pub mss: u32,
    /// `TCPI_OPT_*` bits negotiated at connection time.
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub timestamp: u32,
    /// Sent-but-unacknowledged bytes followed by not-yet-sent bytes.
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` were never sent.
    pub notsent: u32,
    /// Received bytes the application (podwire) had not read yet.
    pub recv_queue: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("socket is not established (state {0})")]
    NotEstablished(u8),
    #[error("queue of {0} bytes exceeds the migration cap")]
    QueueTooLarge(usize),
    #[error("data kept arriving while the receive queue was read")]
    Unsettled,
    #[error("{what}: {err}")]
    Sys { what: &'static str, err: io::Error },
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{what}: {err}")]
    Sys { what: &'static str, err: io::Error },
    #[error("short write restoring a queue ({0} bytes left)")]
    ShortQueue(usize),
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record truncated")]
    Truncated,
    #[error("unknown address family {0}")]
    BadFamily(u8),
    #[error("local and remote address families differ")]
    MixedFamilies,
    #[error("queue length {0} exceeds the cap")]
    QueueTooLarge(usize),
    #[error("not-sent count {notsent} exceeds send queue {len}")]
    BadNotsent { notsent: u32, len: usize },
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

fn sys(what: &'static str) -> impl FnOnce(io::Error) -> DumpError {
    move |err| DumpError::Sys { what, err }
}

fn rsys(what: &'static str) -> impl FnOnce(io::Error) -> RestoreError {
    move |err| RestoreError::Sys { what, err }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt_raw<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &mut T,
) -> io::Result<u32> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: val is a valid, writable T of `len` bytes; the kernel writes at most len.
    check(unsafe { libc::getsockopt(fd, level, name, (val as *mut T).cast(), &mut len) })?;
    Ok(len)
}

fn setsockopt_raw<T: ?Sized>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> io::Result<()> {
    let len = std::mem::size_of_val(val) as libc::socklen_t;
    // SAFETY: val is a valid readable value of `len` bytes for the duration of the call.
    check(unsafe { libc::setsockopt(fd, level, name, (val as *const T).cast(), len) })
}

fn ioctl_int(fd: RawFd, req: libc::c_ulong) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these ioctls write one int to the pointer given.
    check(unsafe { libc::ioctl(fd, req, &mut v) })?;
    Ok(v.max(0) as u32)
}

fn select_queue(fd: RawFd, queue: libc::c_int) -> io::Result<()> {
    setsockopt_raw(fd, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, &queue)
}

/// How often the receive queue's head, or its newly arrived tail, is read again when data
/// keeps arriving during the dump.
const RECV_ATTEMPTS: u32 = 16;

/// One `MSG_PEEK` into `buf` from the head of the selected repair queue.
fn peek_into(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(0),
            _ => return Err(err),
        }
    }
}

/// The whole send queue (selected), in one peek: the kernel copies it skb by skb from the
/// oldest unacknowledged byte and fails rather than return part of it.
fn peek_send_queue(fd: RawFd, at_most: usize) -> Result<Vec<u8>, DumpError> {
    let mut buf = vec![0u8; at_most];
    if at_most == 0 {
        return Ok(buf);
    }
    let n = peek_into(fd, &mut buf).map_err(sys("peek send queue"))?;
    buf.truncate(n);
    Ok(buf)
}

/// The sequence number of the receive queue's first byte (selected), read between two reads
/// of its end that agree; `None` if data arrived meanwhile.
fn receive_queue_head(fd: RawFd) -> Result<Option<u32>, DumpError> {
    let mut end: u32 = 0;
    getsockopt_raw(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &mut end)
        .map_err(sys("TCP_QUEUE_SEQ recv"))?;
    let queued = ioctl_int(fd, SIOCINQ).map_err(sys("SIOCINQ"))?;
    let mut again: u32 = 0;
    getsockopt_raw(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &mut again)
        .map_err(sys("TCP_QUEUE_SEQ recv"))?;
    if queued as usize > MAX_QUEUE {
        return Err(DumpError::QueueTooLarge(queued as usize));
    }
    Ok((end == again).then(|| end.wrapping_sub(queued)))
}

/// The receive queue (selected) from `offset` bytes past its head to its end, however much
/// arrives while it is read. podwire's sockets use `SO_PEEK_OFF` (peeks start past the bytes
/// already sent to the guest): it is moved to `offset` for the dump and put back after, so a
/// migration that fails leaves the source's socket as it was.
fn peek_receive_queue(fd: RawFd, offset: usize) -> Result<Vec<u8>, DumpError> {
    let mut old: libc::c_int = -1;
    getsockopt_raw(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &mut old)
        .map_err(sys("SO_PEEK_OFF"))?;
    let at = offset.min(i32::MAX as usize) as libc::c_int;
    let moved = old >= 0 || at > 0;
    if moved {
        setsockopt_raw(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &at).map_err(sys("SO_PEEK_OFF"))?;
    }
    let data = peek_all(fd, offset);
    if moved {
        setsockopt_raw(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &old)
            .map_err(sys("SO_PEEK_OFF"))?;
    }
    data
}

/// Peeks until a peek leaves room in its buffer: then it returned all there was.
fn peek_all(fd: RawFd, skipped: usize) -> Result<Vec<u8>, DumpError> {
    let queued = ioctl_int(fd, SIOCINQ).map_err(sys("SIOCINQ"))? as usize;
    let mut len = (queued.saturating_sub(skipped) + 65536).min(MAX_QUEUE + 1);
    loop {
        let mut buf = vec![0u8; len];
        let n = peek_into(fd, &mut buf).map_err(sys("peek receive queue"))?;
        if n < len {
            buf.truncate(n);
            return Ok(buf);
        }
        if len > MAX_QUEUE {
            return Err(DumpError::QueueTooLarge(n));
        }
        len = (len * 2).min(MAX_QUEUE + 1);
    }
}

fn write_queue(fd: RawFd, data: &[u8]) -> Result<(), RestoreError> {
    let mut off = 0;
    while off < data.len() {
        // SAFETY: data[off..] is readable for the given length.
        let n = unsafe {
            libc::send(
                fd,
                data[off..].as_ptr().cast(),
                data.len() - off,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if err.kind() != io::ErrorKind::WouldBlock {
                    return Err(RestoreError::Sys {
                        what: "writing queue",
                        err,
                    });
                }
            }
            return Err(RestoreError::ShortQueue(data.len() - off));
        }
        off += n as usize;
    }
    Ok(())
}

fn sockaddr_of(fd: RawFd, peer: bool) -> io::Result<SocketAddr> {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&ss) as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    // SAFETY: ss is writable for len bytes.
    check(unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    })?;
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                0,
                sin6.sin6_scope_id,
            )))
        }
        f => Err(io::Error::other(format!("address family {f}"))),
    }
}

/// A sockaddr for `addr`, as bytes plus length (for `bind`/`connect` through libc).
pub fn raw_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as _,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as _,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

impl TcpDump {
    /// Reads the state of `sock`, which the helper has put in repair mode.
    ///
    /// A socket in repair mode still runs TCP with its peer: ACKs move its send queue's head,
    /// data grows its receive queue (and is acknowledged), and unless the send queue is the
    /// selected repair queue it still transmits. So each queue is read so that such events
    /// cannot make the dump inconsistent, and the socket is left with the send queue
    /// selected, where it transmits nothing more: the caller closes it as soon as it can
    /// (data that arrives between the dump and the close is acknowledged and lost, so that
    /// window must stay short — see `Switch::hand_over_sockets`).
    ///
    /// - Send queue: its end (`write_seq`) is fixed, as nobody writes; its head moves with
    ///   ACKs. Its start is the end minus the bytes one peek returned. Never-sent bytes are
    ///   counted only while nothing can be transmitted, and counted again at the end: the
    ///   smaller count wins, because a byte treated as sent is merely sent again by the
    ///   destination, whereas a byte the peer already has but the destination thinks unsent
    ///   makes the peer's ACKs look like ACKs of unsent data, and the connection stalls.
    /// - Receive queue: its head (`copied_seq`) is fixed, as nobody reads; its end grows with
    ///   arrivals. The head is the end sequence minus the queued bytes, read where no arrival
    ///   came between; the peek returns everything from the head, however much arrived.
    pub fn dump(sock: BorrowedFd<'_>) -> Result<Self, DumpError> {
        let fd = sock.as_raw_fd();
        let mut info = [0u8; 256];
        getsockopt_raw(fd, libc::SOL_TCP, libc::TCP_INFO, &mut info).map_err(sys("TCP_INFO"))?;
        if info[0] != TCP_ESTABLISHED {
            return Err(DumpError::NotEstablished(info[0]));
        }
        let options = info[5];
        let (snd_wscale, rcv_wscale) = (info[6] & 0x0f, info[6] >> 4);
        let mut mss: libc::c_int = 0;
        getsockopt_raw(fd, libc::SOL_TCP, libc::TCP_MAXSEG, &mut mss).map_err(sys("TCP_MAXSEG"))?;
        let mut timestamp: u32 = 0;
        getsockopt_raw(fd, libc::SOL_TCP, TCP_TIMESTAMP, &mut timestamp)
            .map_err(sys("TCP_TIMESTAMP"))?;
        // Before the queues: the destination checks rcv_wup against the receive queue's end,
        // which only grows.
        let mut window = RepairWindow::default();
        getsockopt_raw(fd, libc::SOL_TCP, libc::TCP_REPAIR_WINDOW, &mut window)
            .map_err(sys("TCP_REPAIR_WINDOW"))?;

        select_queue(fd, TCP_SEND_QUEUE).map_err(sys("TCP_REPAIR_QUEUE send"))?;
        let mut notsent = ioctl_int(fd, SIOCOUTQNSD).map_err(sys("SIOCOUTQNSD"))?;
        let sndq = ioctl_int(fd, SIOCOUTQ).map_err(sys("SIOCOUTQ"))? as usize;
        if sndq > MAX_QUEUE {
            return Err(DumpError::QueueTooLarge(sndq));
        }
        // The queue can only have shrunk since SIOCOUTQ: a buffer of that size holds it.
        let send_queue = peek_send_queue(fd, sndq)?;
        let mut snd_end: u32 = 0;
        getsockopt_raw(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &mut snd_end)
            .map_err(sys("TCP_QUEUE_SEQ send"))?;

        select_queue(fd, TCP_RECV_QUEUE).map_err(sys("TCP_REPAIR_QUEUE recv"))?;
        let mut seq_rcv = None;
        for _ in 0..RECV_ATTEMPTS {
            seq_rcv = receive_queue_head(fd)?;
            if seq_rcv.is_some() {
                break;
            }
        }
        let seq_rcv = seq_rcv.ok_or(DumpError::Unsettled)?;
        let mut recv_queue = peek_receive_queue(fd, 0)?;
        // Bytes that arrived while it was read are peeked after it, until none did.
        for attempt in 0.. {
            // Nothing is sent from here to the close.
            select_queue(fd, TCP_SEND_QUEUE).map_err(sys("TCP_REPAIR_QUEUE send"))?;
            let queued = ioctl_int(fd, SIOCINQ).map_err(sys("SIOCINQ"))? as usize;
            if queued <= recv_queue.len() {
                break;
            }
            if attempt == RECV_ATTEMPTS {
                return Err(DumpError::Unsettled);
            }
            select_queue(fd, TCP_RECV_QUEUE).map_err(sys("TCP_REPAIR_QUEUE recv"))?;
            let more = peek_receive_queue(fd, recv_queue.len())?;
            recv_queue.extend_from_slice(&more);
            if recv_queue.len() > MAX_QUEUE {
                return Err(DumpError::QueueTooLarge(recv_queue.len()));
            }
        }
        // While the receive queue was selected an ACK may have let more go out.
        notsent = notsent.min(ioctl_int(fd, SIOCOUTQNSD).map_err(sys("SIOCOUTQNSD"))?);
        let notsent = notsent.min(send_queue.len() as u32);

        Ok(TcpDump {
            local: sockaddr_of(fd, false).map_err(sys("getsockname"))?,
            remote: sockaddr_of(fd, true).map_err(sys("getpeername"))?,
            seq_snd: snd_end.wrapping_sub(send_queue.len() as u32),
            seq_rcv,
            window,
            mss: mss.max(0) as u32,
            options,
            snd_wscale,
            rcv_wscale,
            timestamp,
            send_queue,
            notsent,
            recv_queue,
        })
    }

    /// A fresh non-blocking TCP socket of the right family, for the helper to switch on.
    pub fn new_socket(&self) -> Result<OwnedFd, RestoreError> {
        let family = if self.local.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(RestoreError::Sys {
                what: "socket",
                err: io::Error::last_os_error(),
            });
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Before repair mode, which then upgrades it to force-reuse (see restore_in_repair).
        let one: libc::c_int = 1;
        setsockopt_raw(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)
            .map_err(rsys("SO_REUSEADDR"))?;
        Ok(fd)
    }

    /// Rebuilds the connection on `sock`, which must be in repair mode.
    pub fn restore_in_repair(&self, sock: BorrowedFd<'_>) -> Result<(), RestoreError> {
        let fd = sock.as_raw_fd();
        // No SO_REUSEADDR here: switching repair on made the socket force-reuse its address
        // (it may share a port with a listener: a connection accepted on a forwarded port),
        // and setting SO_REUSEADDR now would take that back.
        let (local, len) = raw_sockaddr(&self.local);
        // SAFETY: local holds a valid sockaddr of len bytes.
        check(unsafe { libc::bind(fd, (&local as *const libc::sockaddr_storage).cast(), len) })
            .map_err(rsys("bind"))?;
        if self.options & TCPI_OPT_TIMESTAMPS != 0 {
            setsockopt_raw(fd, libc::SOL_TCP, TCP_TIMESTAMP, &self.timestamp)
                .map_err(rsys("TCP_TIMESTAMP"))?;
        }
        // The MSS before connect: connect sizes its segments from the MSS it knows then, and
        // the repair options set later do not resize them (without this the rebuilt socket
        // sends 536-byte segments for the rest of its life).
        // (The kernel takes at most MAX_TCP_WINDOW, 32767: loopback's larger MSS is left to
        // the route, as before.)
        if self.mss > 0 && self.mss <= MAX_USER_MSS {
            let mss = self.mss as libc::c_int;
            setsockopt_raw(fd, libc::SOL_TCP, libc::TCP_MAXSEG, &mss)
                .map_err(rsys("TCP_MAXSEG"))?;
        }
        select_queue(fd, TCP_SEND_QUEUE).map_err(rsys("TCP_REPAIR_QUEUE send"))?;
        setsockopt_raw(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &self.seq_snd)
            .map_err(rsys("TCP_QUEUE_SEQ send"))?;
        select_queue(fd, TCP_RECV_QUEUE).map_err(rsys("TCP_REPAIR_QUEUE recv"))?;
        setsockopt_raw(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &self.seq_rcv)
            .map_err(rsys("TCP_QUEUE_SEQ recv"))?;
        let (remote, len) = raw_sockaddr(&self.remote);
        // SAFETY: remote holds a valid sockaddr of len bytes. In repair mode connect sends no
        // SYN and completes at once.
        check(unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_storage).cast(), len) })
            .map_err(rsys("connect"))?;
        write_queue(fd, &self.recv_queue)?;
        select_queue(fd, TCP_SEND_QUEUE).map_err(rsys("TCP_REPAIR_QUEUE send"))?;
        let sent = self.send_queue.len() - self.notsent as usize;
        write_queue(fd, &self.send_queue[..sent])?;
        self.restore_options(fd)?;
        setsockopt_raw(fd, libc::SOL_TCP, libc::TCP_REPAIR_WINDOW, &self.window)
            .map_err(rsys("TCP_REPAIR_WINDOW"))?;
        Ok(())
    }

    fn restore_options(&self, fd: RawFd) -> Result<(), RestoreError> {
        let mut opts = [[0u32; 2]; 4];
        let mut n = 0;
        let mut push = |code, val| {
            opts[n] = [code, val];
            n += 1;
        };
        push(TCPOPT_MSS, self.mss);
        if self.options & TCPI_OPT_WSCALE != 0 {
            push(
                TCPOPT_WINDOW,
                u32::from(self.snd_wscale) | (u32::from(self.rcv_wscale) << 16),
            );
        }
        if self.options & TCPI_OPT_SACK != 0 {
            push(TCPOPT_SACK_PERM, 0);
        }
        if self.options & TCPI_OPT_TIMESTAMPS != 0 {
            push(TCPOPT_TIMESTAMP, 0);
        }
        setsockopt_raw(fd, libc::SOL_TCP, libc::TCP_REPAIR_OPTIONS, &opts[..n])
            .map_err(rsys("TCP_REPAIR_OPTIONS"))
    }

    /// After repair mode is off: queues as many of the never-sent bytes as the new socket's
    /// send buffer takes now, and returns how many it took. The caller keeps
    /// [`TcpDump::unsent_tail`]`[taken..]` and writes it as the socket drains, as it does for
    /// any data its peer is slow to accept (a larger send queue than the fresh socket's
    /// buffer is normal: the source's buffer had grown by auto-tuning).
    pub fn finish(&self, sock: BorrowedFd<'_>) -> Result<usize, RestoreError> {
        let tail = self.unsent_tail();
        let mut off = 0;
        while off < tail.len() {
            match write_queue(sock.as_raw_fd(), &tail[off..]) {
                Ok(()) => return Ok(tail.len()),
                Err(RestoreError::ShortQueue(left)) => {
                    let taken = tail.len() - off - left;
                    if taken == 0 {
                        break;
                    }
                    off += taken;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(off)
    }

    /// The bytes the source had queued but never sent.
    pub fn unsent_tail(&self) -> &[u8] {
        &self.send_queue[self.send_queue.len() - self.notsent as usize..]
    }

    /// Appends the record body: addresses, sequences, window, options, queues (big endian).
    pub fn encode(&self, out: &mut Vec<u8>) {
        for addr in [&self.local, &self.remote] {
            match addr.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&addr.port().to_be_bytes());
        }
        let w = &self.window;
        for v in [
            self.seq_snd,
            self.seq_rcv,
            w.snd_wl1,
            w.snd_wnd,
            w.max_window,
            w.rcv_wnd,
            w.rcv_wup,
            self.mss,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&[self.options, self.snd_wscale, self.rcv_wscale]);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.notsent.to_be_bytes());
        for q in [&self.send_queue, &self.recv_queue] {
            out.extend_from_slice(&(q.len() as u32).to_be_bytes());
            out.extend_from_slice(q);
        }
    }

    /// Parses a record body made by [`TcpDump::encode`]; the whole of `buf` must be used.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(buf);
        let local = r.addr()?;
        let remote = r.addr()?;
        if local.is_ipv4() != remote.is_ipv4() {
            return Err(DecodeError::MixedFamilies);
        }
        let seq_snd = r.u32()?;
        let seq_rcv = r.u32()?;
        let window = RepairWindow {
            snd_wl1: r.u32()?,
            snd_wnd: r.u32()?,
            max_window: r.u32()?,
            rcv_wnd: r.u32()?,
            rcv_wup: r.u32()?,
        };
        let mss = r.u32()?;
        let [options, snd_wscale, rcv_wscale] = r.array::<3>()?;
        let timestamp = r.u32()?;
        let notsent = r.u32()?;
        let send_queue = r.queue()?;
        let recv_queue = r.queue()?;
        if notsent as usize > send_queue.len() {
            return Err(DecodeError::BadNotsent {
                notsent,
                len: send_queue.len(),
            });
        }
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing(r.0.len()));
        }
        Ok(TcpDump {
            local,
            remote,
            seq_snd,
            seq_rcv,
            window,
            mss,
            options,
            snd_wscale,
            rcv_wscale,
            timestamp,
            send_queue,
            notsent,
            recv_queue,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.array::<1>()?[0] {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            f => return Err(DecodeError::BadFamily(f)),
        };
        let port = u16::from_be_bytes(self.array()?);
        Ok(SocketAddr::new(ip, port))
    }

    fn queue(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()? as usize;
        if len > MAX_QUEUE {
            return Err(DecodeError::QueueTooLarge(len));
        }
        Ok(self.take(len)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TcpDump {
        TcpDump {
            local: "198.18.0.2:40000".parse().unwrap(),
            remote: "198.19.0.1:80".parse().unwrap(),
            seq_snd: 0xffff_fff0,
            seq_rcv: 7,
            window: RepairWindow {
                snd_wl1: 1,
                snd_wnd: 2,
                max_window: 3,
                rcv_wnd: 4,
                rcv_wup: 5,
            },
            mss: 1460,
            options: 7,
            snd_wscale: 7,
            rcv_wscale: 9,
            timestamp: 12345,
            send_queue: b"hello world".to_vec(),
            notsent: 5,
            recv_queue: b"abc".to_vec(),
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut buf = Vec::new();
        sample().encode(&mut buf);
        assert_eq!(TcpDump::decode(&buf), Ok(sample()));
        let mut v6 = sample();
        v6.local = "[fd00::2]:1".parse().unwrap();
        v6.remote = "[fd00::1]:2".parse().unwrap();
        buf.clear();
        v6.encode(&mut buf);
        assert_eq!(TcpDump::decode(&buf), Ok(v6));
    }

    #[test]
    fn decode_refuses_truncated_trailing_and_inconsistent() {
        let mut buf = Vec::new();
        sample().encode(&mut buf);
        for cut in 0..buf.len() {
            assert!(
                TcpDump::decode(&buf[..cut]).is_err(),
                "prefix {cut} accepted"
            );
        }
        let mut long = buf.clone();
        long.push(0);
        assert_eq!(TcpDump::decode(&long), Err(DecodeError::Trailing(1)));
        let mut bad = buf.clone();
        bad[0] = 5;
        assert_eq!(TcpDump::decode(&bad), Err(DecodeError::BadFamily(5)));
        let mut mixed = sample();
        mixed.remote = "[fd00::1]:2".parse().unwrap();
        let mut m = Vec::new();
        mixed.encode(&mut m);
        assert_eq!(TcpDump::decode(&m), Err(DecodeError::MixedFamilies));
        let mut ns = sample();
        ns.notsent = 100;
        let mut n = Vec::new();
        ns.encode(&mut n);
        assert!(matches!(
            TcpDump::decode(&n),
            Err(DecodeError::BadNotsent { .. })
        ));
        // A queue length beyond the cap is refused before any allocation.
        let mut huge = Vec::new();
        let mut s = sample();
        s.send_queue.clear();
        s.notsent = 0;
        s.encode(&mut huge);
        let qoff = huge.len() - 4 - 3 - 4;
        huge[qoff..qoff + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            TcpDump::decode(&huge),
            Err(DecodeError::QueueTooLarge(u32::MAX as usize))
        );
    }
}
