//! Thin, allocation-free wrappers over the socket calls the dataplane makes.
//!
//! Payload never passes through a podwire buffer: `send_to` takes iovecs that point into guest
//! memory, `recv_from` fills iovecs that point into the guest's RX buffers.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use podwire_vhost::MAX_SEGS;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn sockaddr_v4(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr_v4(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

/// A non-blocking IPv4 datagram socket: UDP, or an unprivileged ICMP "ping" socket.
pub fn dgram_socket(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned immediately.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn bind(fd: &OwnedFd, addr: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr_v4(addr);
    // SAFETY: sa is a valid sockaddr_in for the duration of the call.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddrV4> {
    // SAFETY: zeroed sockaddr_in is a valid out-parameter.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sa/len are valid out-parameters.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    })?;
    Ok(from_sockaddr_v4(&sa))
}

/// Sends one datagram gathered from `iov` to `dst`.
pub fn send_to(fd: &OwnedFd, iov: &[libc::iovec], dst: SocketAddrV4) -> io::Result<usize> {
    let mut sa = sockaddr_v4(dst);
    // SAFETY: msghdr is plain data; zeroed is a valid starting point.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut sa as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len().min(MAX_SEGS) as _;
    // SAFETY: every pointer in msg is valid for the call; iovecs point into mapped memory.
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

/// What one `recv_from` produced.
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
    /// The datagram was longer than the buffers and was cut.
    pub truncated: bool,
}

/// Receives one datagram, scattering it into `iov`.
pub fn recv_from(fd: &OwnedFd, iov: &mut [libc::iovec]) -> io::Result<Received> {
    // SAFETY: zeroed sockaddr_in / msghdr are valid starting points.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut sa as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: every pointer in msg is valid for the call; iovecs point into writable memory.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Received {
        len: n as usize,
        from: from_sockaddr_v4(&sa),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    })
}
