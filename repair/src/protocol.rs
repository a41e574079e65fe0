//! The repair-helper channel: podwire's listening end and the helper's end.
//!
//! Message from podwire: exactly one byte (the [`RepairCmd`], a signed 8-bit value as the
//! kernel's `TCP_REPAIR` option takes it) with one `SCM_RIGHTS` control message carrying
//! 1..=[`SCM_MAX_FD`] socket fds. Reply from the helper: the same byte. The helper closes
//! its copies of the fds after the `setsockopt`, so the sockets stay owned by podwire.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest number of fds the kernel passes in one `SCM_RIGHTS` message (`SCM_MAX_FD` in
/// include/net/scm.h, not in the UAPI headers).
pub const SCM_MAX_FD: usize = 253;

/// How long podwire waits for the helper's reply to one batch. The helper only does a few
/// `setsockopt` calls, so this bounds a stuck helper, not a slow one.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The command byte: the value the helper passes to `setsockopt(TCP_REPAIR)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairCmd {
    /// `TCP_REPAIR_ON`: enter repair mode.
    On,
    /// `TCP_REPAIR_OFF`: leave repair mode, sending a window probe.
    Off,
    /// `TCP_REPAIR_OFF_NO_WP`: leave repair mode without a window probe.
    OffNoWindowProbe,
}

impl RepairCmd {
    /// The byte on the wire.
    pub fn to_byte(self) -> i8 {
        match self {
            RepairCmd::On => 1,
            RepairCmd::Off => 0,
            RepairCmd::OffNoWindowProbe => -1,
        }
    }

    /// Parses a byte from the wire; `None` for anything the protocol does not define.
    pub fn from_byte(byte: i8) -> Option<Self> {
        match byte {
            1 => Some(RepairCmd::On),
            0 => Some(RepairCmd::Off),
            -1 => Some(RepairCmd::OffNoWindowProbe),
            _ => None,
        }
    }
}

/// Why podwire could not get a batch of sockets switched.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("no repair helper is connected")]
    NoHelper,
    #[error("repair helper closed the connection (it refused the batch or exited)")]
    HelperClosed,
    #[error("repair helper replied {got:#04x} to command {sent:#04x}")]
    BadReply { sent: i8, got: i8 },
    #[error("repair helper channel: {0}")]
    Io(#[from] io::Error),
}

/// podwire's end: a listening UNIX socket and at most one connected helper.
pub struct RepairChannel {
    listener: UnixListener,
    path: PathBuf,
    helper: Option<UnixStream>,
}

impl RepairChannel {
    /// The default path passt uses too: the vhost-user socket path with `.repair` appended.
    pub fn default_path(vhost_user_socket: &Path) -> PathBuf {
        let mut path = vhost_user_socket.as_os_str().to_owned();
        path.push(".repair");
        PathBuf::from(path)
    }

    /// Listens on `path` (a stale socket file there is replaced). Accepting is non-blocking:
    /// call [`RepairChannel::accept_pending`] when the listener is readable.
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            helper: None,
        })
    }

    /// The listening socket's fd, to register with the event loop.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The path listened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts a waiting helper, if any; a newer helper replaces an older one (the node agent
    /// restarts it). Returns whether a helper is connected afterwards.
    pub fn accept_pending(&mut self) -> io::Result<bool> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false)?;
                    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
                    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
                    self.helper = Some(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(self.helper.is_some())
    }

    /// Waits up to `timeout` for a helper to connect (used at migration time, when a helper
    /// that the node agent starts late is worth a short wait).
    pub fn wait_for_helper(&mut self, timeout: Duration) -> io::Result<bool> {
        if self.accept_pending()? {
            return Ok(true);
        }
        let mut pfd = libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: pfd is a valid pollfd for the duration of the call, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.accept_pending()
    }

    /// Whether a helper is connected.
    pub fn has_helper(&self) -> bool {
        self.helper.is_some()
    }

    /// Switches every socket in `fds` with `cmd`, in batches of at most [`SCM_MAX_FD`].
    /// On any error the helper connection is dropped (its state is unknown).
    pub fn set(&mut self, fds: &[BorrowedFd<'_>], cmd: RepairCmd) -> Result<(), RepairError> {
        let result = self.set_batches(fds, cmd);
        if result.is_err() {
            self.helper = None;
        }
        result
    }

    fn set_batches(&mut self, fds: &[BorrowedFd<'_>], cmd: RepairCmd) -> Result<(), RepairError> {
        let helper = self.helper.as_mut().ok_or(RepairError::NoHelper)?;
        let mut raw = [0 as RawFd; SCM_MAX_FD];
        for batch in fds.chunks(SCM_MAX_FD) {
            for (slot, fd) in raw.iter_mut().zip(batch) {
                *slot = fd.as_raw_fd();
            }
            send_with_fds(helper, cmd.to_byte(), &raw[..batch.len()])?;
            let mut reply = [0u8; 1];
            match helper.read(&mut reply) {
                Ok(0) => return Err(RepairError::HelperClosed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(RepairError::HelperClosed)
                }
                Err(e) => return Err(e.into()),
            }
            let got = reply[0] as i8;
            if got != cmd.to_byte() {
                return Err(RepairError::BadReply {
                    sent: cmd.to_byte(),
                    got,
                });
            }
        }
        Ok(())
    }
}

impl Drop for RepairChannel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Control buffer big enough for [`SCM_MAX_FD`] fds, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64 + 4 * SCM_MAX_FD]);

fn send_with_fds(stream: &mut UnixStream, byte: i8, fds: &[RawFd]) -> io::Result<()> {
    let mut data = [byte as u8];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = CmsgBuf([0; 64 + 4 * SCM_MAX_FD]);
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure computation on its argument.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    debug_assert!(space <= cbuf.0.len());
    // SAFETY: an all-zero msghdr is valid; the fields set below point into live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points to `space` writable, aligned bytes, enough for one cmsghdr
    // and `fd_bytes` of data, so CMSG_FIRSTHDR is non-null and CMSG_DATA is in bounds.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fd_bytes);
    }
    loop {
        // SAFETY: msg is fully initialised above and its buffers outlive the call.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n == 1 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n < 0 && err.raw_os_error() == Some(libc::EPIPE) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "helper gone",
            ));
        }
        return Err(if n < 0 {
            err
        } else {
            io::Error::other("short sendmsg")
        });
    }
}

/// Why the helper stopped.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("channel: {0}")]
    Io(#[from] io::Error),
    #[error("message without exactly one SCM_RIGHTS control message")]
    BadControl,
    #[error("unsupported command byte {0:#04x}")]
    BadCommand(i8),
    #[error("setsockopt(TCP_REPAIR, {cmd}) on a passed socket: {err}")]
    Setsockopt { cmd: i8, err: io::Error },
}

/// The helper's end: serves podwire on `stream` until podwire closes it (`Ok`) or a message
/// cannot be honoured (`Err`; the caller exits, which podwire sees as a refusal).
pub fn serve_helper(stream: &mut UnixStream) -> Result<(), HelperError> {
    loop {
        let Some((byte, fds)) = recv_with_fds(stream)? else {
            return Ok(());
        };
        let cmd = RepairCmd::from_byte(byte).ok_or(HelperError::BadCommand(byte))?;
        let value: libc::c_int = cmd.to_byte().into();
        for fd in &fds {
            // SAFETY: fd is an open descriptor we own; value outlives the call.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_TCP,
                    libc::TCP_REPAIR,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            if rc != 0 {
                return Err(HelperError::Setsockopt {
                    cmd: byte,
                    err: io::Error::last_os_error(),
                });
            }
        }
        drop(fds);
        stream.write_all(&[byte as u8])?;
    }
}

/// Receives one message; `None` at end of stream. The received fds are owned (closed on
/// drop) whatever happens next.
fn recv_with_fds(stream: &mut UnixStream) -> Result<Option<(i8, Vec<OwnedFd>)>, HelperError> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = CmsgBuf([0; 64 + 4 * SCM_MAX_FD]);
    // SAFETY: an all-zero msghdr is valid; the fields set below point into live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len() as _;
    let n = loop {
        // SAFETY: msg points to live buffers of the given sizes.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::ConnectionReset => return Ok(None),
            _ => return Err(err.into()),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: msg was filled by recvmsg; the CMSG_* walk stays within msg_controllen, and
    // each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors now owned by us.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 {
        return Ok(None);
    }
    if fds.is_empty() || msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(HelperError::BadControl);
    }
    Ok(Some((data[0] as i8, fds)))
}
