//! A private network namespace for the fuzzing thread, with its loopback up and a TCP peer on
//! it for the TCP target.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

/// The port of the loopback peer the TCP target's guest connects to (through the gateway
/// address, which podwire maps to the loopback).
pub const PEER_PORT: u16 = 7777;
/// What the peer sends on each connection before reading, so the guest's RX side has work.
pub const PEER_GREETING: &[u8] = &[0x5a; 3000];

thread_local! {
    static ISOLATED: Cell<bool> = const { Cell::new(false) };
}

/// Moves this thread into a new network namespace (network namespaces are per thread until a
/// process has one thread only), brings its loopback up and starts the loopback peer.
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
    // Threads started from here share this thread's (new) namespace.
    std::thread::Builder::new()
        .name("fuzz-peer".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = std::thread::Builder::new().spawn(move || serve_peer(conn));
            }
        })?;
    ISOLATED.with(|c| c.set(true));
    Ok(())
}

/// Greets, then reads until the connection ends (or stalls, when the fuzzed guest stops).
fn serve_peer(mut conn: std::net::TcpStream) {
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.write_all(PEER_GREETING);
    let mut buf = [0u8; 4096];
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
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
