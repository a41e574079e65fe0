//! A filter on the vhost-user control channel between the frontend and the vhost crate.
//!
//! # Theory of operation
//!
//! QEMU's virtio-net enables its rings with `SET_VRING_ENABLE` while it realizes the device,
//! long before it sends `SET_FEATURES`. The vhost-user spec allows that once the backend has
//! offered `VHOST_USER_F_PROTOCOL_FEATURES`, but the vhost crate answers any
//! `SET_VRING_ENABLE` that precedes `SET_FEATURES` by closing the connection. QEMU in turn
//! refuses to start a vhost-user NIC whose backend does not offer protocol features.
//!
//! So each frontend connection is relayed: control messages from the frontend are read whole
//! (header, payload, passed fds) and forwarded, except a `SET_VRING_ENABLE` that arrives before
//! `SET_FEATURES`. That one is acknowledged here (if the frontend asked for a reply) and held;
//! right after `SET_FEATURES` has been forwarded, the held ring states are replayed to the
//! library, latest per ring, without asking for replies the frontend would not expect. QEMU
//! sends its only enable before `SET_FEATURES` on every device start, so the replay is what
//! turns the rings on. Replies flow back byte for byte. Only the
//! control channel passes through here: ring kicks and interrupts are eventfds that the
//! frontend hands over and that never touch the relay.
//!
//! Each direction runs in its own thread; when either side closes, both are shut down, which
//! ends the library's session like a frontend hang-up would.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

const HDR_LEN: usize = 12;
/// Largest payload a vhost-user message may carry (the vhost crate's limit).
const MAX_PAYLOAD: usize = 0x1000;
/// Most fds one message may carry.
const MAX_FDS: usize = 32;
const REQ_SET_FEATURES: u32 = 2;
const REQ_SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION: u32 = 0x1;
/// Most rings whose early enable state is held.
const MAX_HELD: usize = 64;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

/// Relays `frontend` to `ours`, a stream whose peer the vhost crate serves.
pub fn start(frontend: UnixStream, ours: UnixStream) -> io::Result<[JoinHandle<()>; 2]> {
    let front_rx = frontend.try_clone()?;
    let front_tx = frontend;
    let lib_rx = ours.try_clone()?;
    let lib_tx = ours;
    let to_library = std::thread::Builder::new()
        .name("podwire-relay-in".into())
        .spawn(move || {
            if let Err(e) = forward_requests(&front_rx, &lib_tx) {
                tracing::debug!("vhost-user relay (frontend side) ended: {e}");
            }
            let _ = front_rx.shutdown(Shutdown::Both);
            let _ = lib_tx.shutdown(Shutdown::Both);
        })?;
    let to_frontend = std::thread::Builder::new()
        .name("podwire-relay-out".into())
        .spawn(move || {
            let mut from = &lib_rx;
            let mut to = &front_tx;
            let _ = io::copy(&mut from, &mut to);
            let _ = lib_rx.shutdown(Shutdown::Both);
            let _ = front_tx.shutdown(Shutdown::Both);
        })?;
    Ok([to_library, to_frontend])
}

/// The frontend-to-library direction on the calling thread: forwards whole messages from
/// `frontend` to `library` (holding and replaying early ring enables, acknowledging on
/// `frontend`) until either side closes or a message is malformed, which is the error
/// returned. [`start`] runs it on a thread of its own; the fuzzer calls it directly, so that
/// every input costs no thread.
pub fn forward_requests(frontend: &UnixStream, library: &UnixStream) -> io::Result<()> {
    let mut features_seen = false;
    // Ring enable states held until SET_FEATURES: (vring index, enable), latest per ring.
    let mut held: [(u32, u32); MAX_HELD] = [(0, 0); MAX_HELD];
    let mut nheld = 0;
    let mut payload = [0u8; MAX_PAYLOAD];
    loop {
        let mut hdr = [0u8; HDR_LEN];
        let fds = recv_with_fds(frontend, &mut hdr)?;
        let request = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        if size > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("vhost-user message {request} claims {size} bytes"),
            ));
        }
        (&mut &*frontend).read_exact(&mut payload[..size])?;
        if request == REQ_SET_VRING_ENABLE && !features_seen && size >= 8 {
            let index = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
            let num = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
            tracing::debug!(
                "vhost-user: holding SET_VRING_ENABLE({index}, {num}) until SET_FEATURES"
            );
            match held[..nheld].iter_mut().find(|(i, _)| *i == index) {
                Some(slot) => slot.1 = num,
                None if nheld < MAX_HELD => {
                    held[nheld] = (index, num);
                    nheld += 1;
                }
                None => {}
            }
            if flags & FLAG_NEED_REPLY != 0 {
                ack(frontend, request)?;
            }
            continue;
        }
        send_with_fds(library, &hdr, &payload[..size], &fds)?;
        if request == REQ_SET_FEATURES && !features_seen {
            features_seen = true;
            for &(index, num) in &held[..nheld] {
                replay_enable(library, index, num)?;
            }
        }
    }
}

/// Sends a held SET_VRING_ENABLE to the library, asking for no reply.
fn replay_enable(library: &UnixStream, index: u32, num: u32) -> io::Result<()> {
    let mut msg = [0u8; HDR_LEN + 8];
    msg[..4].copy_from_slice(&REQ_SET_VRING_ENABLE.to_le_bytes());
    msg[4..8].copy_from_slice(&FLAG_VERSION.to_le_bytes());
    msg[8..12].copy_from_slice(&8u32.to_le_bytes());
    msg[12..16].copy_from_slice(&index.to_le_bytes());
    msg[16..20].copy_from_slice(&num.to_le_bytes());
    (&mut &*library).write_all(&msg)
}

fn ack(frontend: &UnixStream, request: u32) -> io::Result<()> {
    let mut msg = [0u8; HDR_LEN + 8];
    msg[..4].copy_from_slice(&request.to_le_bytes());
    msg[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
    msg[8..12].copy_from_slice(&8u32.to_le_bytes());
    (&mut &*frontend).write_all(&msg)
}

/// Space for a control message carrying up to [`MAX_FDS`] descriptors.
#[repr(C)]
struct FdCmsg {
    hdr: libc::cmsghdr,
    fds: [RawFd; MAX_FDS],
}

/// Reads exactly `buf.len()` bytes; the fds that came with them are returned owned.
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: zeroed plain-data structs are valid out-parameters.
        let mut cmsg: FdCmsg = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: buf.len() - got,
        };
        // SAFETY: a zeroed msghdr is a valid out-parameter.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = (&mut cmsg as *mut FdCmsg).cast();
        msg.msg_controllen = std::mem::size_of::<FdCmsg>();
        // SAFETY: every pointer in msg is valid for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n as usize;
        // SAFETY: walking the control buffer the kernel filled, with the libc macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const RawFd;
                    let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many fds in one vhost-user message",
            ));
        }
    }
    Ok(fds)
}

/// Sends header and payload as one message, with `fds` attached to its first byte.
fn send_with_fds(sock: &UnixStream, hdr: &[u8], payload: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let mut iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut _,
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        },
    ];
    // SAFETY: zeroed plain-data structs.
    let mut cmsg: FdCmsg = unsafe { std::mem::zeroed() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = if payload.is_empty() { 1 } else { 2 };
    let nfds = fds.len().min(MAX_FDS);
    if nfds > 0 {
        // SAFETY: cmsg has room for MAX_FDS descriptors; the macros stay inside it.
        unsafe {
            msg.msg_control = (&mut cmsg as *mut FdCmsg).cast();
            msg.msg_controllen =
                libc::CMSG_SPACE((nfds * std::mem::size_of::<RawFd>()) as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((nfds * std::mem::size_of::<RawFd>()) as u32) as usize;
            let data = libc::CMSG_DATA(c) as *mut RawFd;
            for (i, fd) in fds.iter().take(nfds).enumerate() {
                std::ptr::write_unaligned(data.add(i), fd.as_raw_fd());
            }
        }
    }
    let total = hdr.len() + payload.len();
    // SAFETY: every pointer in msg is valid for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n < total {
        // A stream socket may take part of it; the fds went with the first byte.
        let mut rest = Vec::with_capacity(total - n);
        rest.extend_from_slice(hdr);
        rest.extend_from_slice(payload);
        (&mut &*sock).write_all(&rest[n..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn early_vring_enables_are_acked_held_and_replayed_after_set_features() {
        let (mut qemu, frontend) = UnixStream::pair().unwrap();
        let (ours, mut library) = UnixStream::pair().unwrap();
        let _threads = start(frontend, ours).unwrap();
        let enable = [0u8, 0, 0, 0, 1, 0, 0, 0];
        qemu.write_all(&msg(REQ_SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, &enable))
            .unwrap();
        let mut reply = [0u8; HDR_LEN + 8];
        qemu.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[..4], &REQ_SET_VRING_ENABLE.to_le_bytes());
        assert_eq!(&reply[12..], &[0u8; 8]);
        let disable_ring1 = [1u8, 0, 0, 0, 0, 0, 0, 0];
        qemu.write_all(&msg(REQ_SET_VRING_ENABLE, 1, &disable_ring1))
            .unwrap();
        let features = msg(REQ_SET_FEATURES, 1, &[0xff; 8]);
        qemu.write_all(&features).unwrap();
        let late = msg(REQ_SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, &enable);
        qemu.write_all(&late).unwrap();
        // SET_FEATURES, then the held states without NEED_REPLY, then the late one as sent.
        let replay0 = msg(REQ_SET_VRING_ENABLE, 1, &enable);
        let replay1 = msg(REQ_SET_VRING_ENABLE, 1, &disable_ring1);
        let want = [features, replay0, replay1, late].concat();
        let mut got = vec![0u8; want.len()];
        library.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
        // Replies go back untouched.
        library.write_all(b"reply-bytes").unwrap();
        let mut back = [0u8; 11];
        qemu.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"reply-bytes");
    }

    #[test]
    fn oversized_message_ends_the_relay() {
        let (mut qemu, frontend) = UnixStream::pair().unwrap();
        let (ours, mut library) = UnixStream::pair().unwrap();
        let threads = start(frontend, ours).unwrap();
        let mut hdr = msg(1, 1, &[]);
        hdr[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        qemu.write_all(&hdr).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(library.read(&mut buf).unwrap(), 0, "library side sees EOF");
        for t in threads {
            t.join().unwrap();
        }
    }
}
