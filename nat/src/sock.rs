//! Thin, allocation-free wrappers over the socket calls the dataplane makes.
//!
//! Payload never passes through a podwire buffer: `send_to` takes iovecs that point into guest
//! memory, `recv_from` fills iovecs that point into the guest's RX buffers. Addresses are
//! `SocketAddr`s of either family, converted to the kernel's layout on the stack.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use podwire_frame::MAX_SEGS;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A socket address in the kernel's layout, IPv4 or IPv6.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    /// Room for either family, as an out-parameter.
    pub(crate) fn zeroed() -> RawAddr {
        // SAFETY: both members are plain data for which all-zero bytes are valid.
        unsafe { std::mem::zeroed() }
    }

    pub(crate) fn new(addr: SocketAddr) -> RawAddr {
        match addr {
            SocketAddr::V4(a) => RawAddr {
                v4: libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                },
            },
            SocketAddr::V6(a) => RawAddr {
                v6: libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                },
            },
        }
    }

    pub(crate) fn len(&self) -> libc::socklen_t {
        // SAFETY: the family field sits at the same offset in both members.
        let family = i32::from(unsafe { self.v4.sin_family });
        if family == libc::AF_INET6 {
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        } else {
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
    }

    /// Room for the kernel to write either family.
    pub(crate) fn capacity() -> libc::socklen_t {
        std::mem::size_of::<RawAddr>() as libc::socklen_t
    }

    pub(crate) fn as_ptr(&self) -> *const libc::sockaddr {
        (self as *const RawAddr).cast()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        (self as *mut RawAddr).cast()
    }

    /// What the kernel wrote; an IPv4-mapped IPv6 peer is reported as IPv4.
    pub(crate) fn get(&self) -> SocketAddr {
        // SAFETY: the family field says which member the kernel filled in.
        unsafe {
            if i32::from(self.v4.sin_family) == libc::AF_INET6 {
                let a = &self.v6;
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                let port = u16::from_be(a.sin6_port);
                match ip.to_ipv4_mapped() {
                    Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                    None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, a.sin6_scope_id)),
                }
            } else {
                let a = &self.v4;
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                ))
            }
        }
    }
}

/// The socket family for addresses like `ip`.
pub fn family(ip: IpAddr) -> libc::c_int {
    if ip.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    }
}

/// The unspecified address of `ip`'s family, with `port`.
pub fn any(ip: IpAddr, port: u16) -> SocketAddr {
    match ip {
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
    }
}

/// A non-blocking socket of `family` and `kind`. IPv6 sockets are IPv6-only: an IPv4 peer
/// always has its own IPv4 socket.
pub fn socket(
    family: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned immediately.
    let fd = cvt(unsafe {
        libc::socket(
            family,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if family == libc::AF_INET6 {
        set_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    Ok(fd)
}

pub(crate) fn set_int(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a valid int option value for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A non-blocking datagram socket of `ip`'s family: UDP, or an unprivileged ping socket
/// (`IPPROTO_ICMP` / `IPPROTO_ICMPV6`).
pub fn dgram_socket(ip: IpAddr, protocol: libc::c_int) -> io::Result<OwnedFd> {
    socket(family(ip), libc::SOCK_DGRAM, protocol)
}

pub fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let sa = RawAddr::new(addr);
    // SAFETY: sa is a valid socket address for the duration of the call.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), sa.as_ptr(), sa.len()) }).map(drop)
}

/// Fixes the socket's one peer: the kernel then takes datagrams from it alone.
pub fn connect(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let sa = RawAddr::new(addr);
    // SAFETY: sa is a valid socket address for the duration of the call.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), sa.as_ptr(), sa.len()) }).map(drop)
}

pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let mut sa = RawAddr::zeroed();
    let mut len = RawAddr::capacity();
    // SAFETY: sa/len are valid out-parameters.
    cvt(unsafe { libc::getsockname(fd.as_raw_fd(), sa.as_mut_ptr(), &mut len) })?;
    Ok(sa.get())
}

/// Sends one datagram gathered from `iov` to `dst`.
pub fn send_to(fd: &OwnedFd, iov: &[libc::iovec], dst: SocketAddr) -> io::Result<usize> {
    send_to_raw(fd.as_raw_fd(), iov, dst)
}

/// [`send_to`] on a descriptor the caller keeps open for the call.
pub fn send_to_raw(fd: RawFd, iov: &[libc::iovec], dst: SocketAddr) -> io::Result<usize> {
    let mut sa = RawAddr::new(dst);
    // SAFETY: msghdr is plain data; zeroed is a valid starting point.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = sa.as_mut_ptr().cast();
    msg.msg_namelen = sa.len();
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len().min(MAX_SEGS) as _;
    // SAFETY: every pointer in msg is valid for the call; iovecs point into mapped memory.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// What one `recv_from` produced.
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// The datagram was longer than the buffers and was cut.
    pub truncated: bool,
}

/// Receives one datagram, scattering it into `iov`.
pub fn recv_from(fd: &OwnedFd, iov: &mut [libc::iovec]) -> io::Result<Received> {
    let mut sa = RawAddr::zeroed();
    // SAFETY: a zeroed msghdr is a valid starting point.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = sa.as_mut_ptr().cast();
    msg.msg_namelen = RawAddr::capacity();
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: every pointer in msg is valid for the call; iovecs point into writable memory.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Received {
        len: n as usize,
        from: sa.get(),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    })
}

/// Storage for one `recv_many` call: message headers and the senders' addresses.
pub struct RecvBatch {
    msgs: [libc::mmsghdr; podwire_frame::RX_BATCH],
    addrs: [RawAddr; podwire_frame::RX_BATCH],
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            // SAFETY: mmsghdr is plain data; all-zero is a valid value.
            msgs: unsafe { std::mem::zeroed() },
            addrs: [RawAddr::zeroed(); podwire_frame::RX_BATCH],
        }
    }

    /// Message `i` of the last call: its length, sender, and whether it was cut.
    pub fn received(&self, i: usize) -> Received {
        let m = &self.msgs[i];
        Received {
            len: m.msg_len as usize,
            from: self.addrs[i].get(),
            truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        }
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

/// Receives up to `iovs.len()` datagrams with one `recvmmsg`, datagram `i` scattered into
/// `iovs[i]`; returns how many arrived (see [`RecvBatch::received`]).
pub fn recv_many(
    fd: &OwnedFd,
    iovs: &mut [&mut [libc::iovec]],
    batch: &mut RecvBatch,
) -> io::Result<usize> {
    let n = iovs.len().min(podwire_frame::RX_BATCH);
    let slots = batch.msgs.iter_mut().zip(batch.addrs.iter_mut());
    for ((msg, addr), iov) in slots.zip(iovs.iter_mut()).take(n) {
        *addr = RawAddr::zeroed();
        // SAFETY: a zeroed msghdr is a valid starting point.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = addr.as_mut_ptr().cast();
        hdr.msg_namelen = RawAddr::capacity();
        hdr.msg_iov = iov.as_mut_ptr();
        hdr.msg_iovlen = iov.len() as _;
        *msg = libc::mmsghdr {
            msg_hdr: hdr,
            msg_len: 0,
        };
    }
    // SAFETY: msgs[..n] point at address storage in `batch` and iovecs into writable memory,
    // all valid for the call; a null timeout with MSG_DONTWAIT never blocks.
    let got = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            batch.msgs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(got as usize)
    }
}
