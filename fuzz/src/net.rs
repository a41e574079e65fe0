//! A private network namespace for the fuzzing thread, with its loopback up and a TCP peer on
//! it for the TCP target.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};

/// The port of the loopback peer the TCP target's guest connects to (through the gateway
/// address, which podwire maps to the loopback).
pub const PEER_PORT: u16 = 7777;
/// What the peer sends on each connection before reading, so the guest's RX side has work.
pub const PEER_GREETING: &[u8] = &[0x5a; 3000];

thread_local! {
    static ISOLATED: Cell<bool> = const { Cell::new(false) };
    /// The loopback peer: its listener, and the connections it accepted for this input.
    static PEER: RefCell<Option<Peer>> = const { RefCell::new(None) };
}

/// The loopback peer, driven by the fuzzing thread itself between the switch's steps (no
/// thread per connection: an input costs one connection and nothing else).
struct Peer {
    listener: TcpListener,
    conns: Vec<TcpStream>,
}

/// Moves this thread into a new network namespace (network namespaces are per thread until a
/// process has one thread only), brings its loopback up and opens the loopback peer.
pub fn isolate() -> io::Result<()> {
    if ISOLATED.with(Cell::get) {
        return Ok(());
    }
    // SAFETY: unshare with a flag only; affects this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    loopback_up()?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, PEER_PORT))?;
    listener.set_nonblocking(true)?;
    PEER.with(|p| {
        *p.borrow_mut() = Some(Peer {
            listener,
            conns: Vec::new(),
        })
    });
    ISOLATED.with(|c| c.set(true));
    Ok(())
}

/// Lets the peer act: accepts the connections waiting (greeting each) and reads what the
/// guest's side sent on the others, without blocking.
pub fn serve_peer() {
    PEER.with(|p| {
        let mut p = p.borrow_mut();
        let Some(peer) = p.as_mut() else {
            return;
        };
        while let Ok((mut conn, _)) = peer.listener.accept() {
            let _ = conn.set_nonblocking(true);
            let _ = conn.write(PEER_GREETING);
            peer.conns.push(conn);
        }
        let mut buf = [0u8; 4096];
        for conn in &mut peer.conns {
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
}

/// Ends this input's peer connections with a reset (no TIME_WAIT: ten million inputs must
/// not run out of loopback ports), including any still waiting to be accepted.
pub fn reset_peer() {
    PEER.with(|p| {
        let mut p = p.borrow_mut();
        let Some(peer) = p.as_mut() else {
            return;
        };
        while let Ok((conn, _)) = peer.listener.accept() {
            peer.conns.push(conn);
        }
        for conn in peer.conns.drain(..) {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid linger struct of the size passed, on our own socket.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&conn),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
    });
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket for the interface ioctls; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an all-zero ifreq is valid; the name is NUL-terminated within IFNAMSIZ.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed; the union's flags
    // member is the one these requests use.
    let rc = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        } else {
            -1
        }
    };
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(())
}
