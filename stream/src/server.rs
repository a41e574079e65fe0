//! The listening socket and one session's `poll` loop (see the crate documentation).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use podwire_frame::{warn_once, CounterSet, NetHandler};

use crate::buffers::{InRing, OutBuf, StreamSink};
use crate::StreamCounters;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot listen on {path}: {source}")]
    Bind { path: String, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The frontend closed the connection.
    Closed,
    /// Reading or writing failed (reset, broken pipe).
    Failed,
    /// The frontend sent a length that cannot be a frame.
    BadLength(u32),
}

/// The stream socket and what it serves.
pub struct StreamServer<H: NetHandler> {
    listener: UnixListener,
    handler: Arc<Mutex<H>>,
    counters: Arc<StreamCounters>,
}

impl<H: NetHandler> StreamServer<H> {
    /// Binds `path`, replacing a stale socket file left by an earlier run.
    pub fn bind(
        path: &Path,
        handler: Arc<Mutex<H>>,
        counters: Arc<StreamCounters>,
    ) -> Result<Self, StreamError> {
        let bind_err = |source| StreamError::Bind {
            path: path.display().to_string(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        Ok(StreamServer {
            listener,
            handler,
            counters,
        })
    }

    /// Serves frontends one after another; returns only on an unrecoverable error.
    pub fn run(&self) -> Result<(), StreamError> {
        loop {
            self.serve_one()?;
        }
    }

    /// Waits for one frontend and serves it until it goes away.
    pub fn serve_one(&self) -> Result<SessionEnd, StreamError> {
        let (conn, _) = self.listener.accept()?;
        tracing::info!("stream frontend connected");
        let end = serve_connection(conn, &self.handler, &self.counters, Some(&self.listener))?;
        match end {
            SessionEnd::Closed => tracing::info!("stream frontend disconnected"),
            SessionEnd::Failed => tracing::info!("stream frontend connection failed"),
            SessionEnd::BadLength(len) => {
                warn_once!("stream frontend sent a frame length of {len}: connection dropped")
            }
        }
        tracing::info!("stream counters: {}", self.counters.summary());
        Ok(end)
    }
}

fn lock<H>(m: &Mutex<H>) -> MutexGuard<'_, H> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves one connected frontend until it goes away; `listener`, if given, is watched so that a
/// second frontend is refused at once rather than left waiting.
pub fn serve_connection<H: NetHandler>(
    conn: UnixStream,
    handler: &Mutex<H>,
    counters: &StreamCounters,
    listener: Option<&UnixListener>,
) -> Result<SessionEnd, StreamError> {
    conn.set_nonblocking(true)?;
    counters.sessions.inc();
    let mut ring = InRing::new();
    let mut out = OutBuf::new();
    let fd = conn.as_raw_fd();
    let host_fd = lock(handler).host_fd();
    lock(handler).link_changed(true);
    let end = session_loop(
        fd, host_fd, handler, counters, listener, &mut ring, &mut out,
    );
    lock(handler).link_changed(false);
    end
}

fn session_loop<H: NetHandler>(
    fd: RawFd,
    host_fd: RawFd,
    handler: &Mutex<H>,
    counters: &StreamCounters,
    listener: Option<&UnixListener>,
    ring: &mut InRing,
    out: &mut OutBuf,
) -> Result<SessionEnd, StreamError> {
    let listen_fd = listener.map_or(-1, |l| l.as_raw_fd());
    loop {
        // While the frontend is not reading, producing more would only fail: wait for it.
        let may_produce = out.has_room_for_a_frame();
        let mut fds = [
            pollfd(
                fd,
                libc::POLLIN | if out.pending() > 0 { libc::POLLOUT } else { 0 },
            ),
            pollfd(host_fd, if may_produce { libc::POLLIN } else { 0 }),
            pollfd(listen_fd, libc::POLLIN),
        ];
        // SAFETY: a valid array of three pollfd (a negative fd is ignored by poll).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        let mut sink = StreamSink {
            out,
            fd,
            counters,
            broken: false,
        };
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match ring.read_from(fd) {
                Ok(0) => return Ok(SessionEnd::Closed),
                Ok(_) => {
                    if let Err(bad) = guest_frames(ring, handler, counters, &mut sink) {
                        counters.drop_bad_length.inc();
                        return Ok(SessionEnd::BadLength(bad.0));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(SessionEnd::Failed),
            }
        }
        let drained = fds[0].revents & libc::POLLOUT != 0 && sink.out.pending() > 0;
        if drained {
            match sink.out.flush(fd) {
                Ok(_) => {}
                Err(_) => return Ok(SessionEnd::Failed),
            }
        }
        // Room again after a drain is what "the guest posted buffers" is for vhost-user.
        if fds[1].revents & libc::POLLIN != 0 || (drained && sink.out.has_room_for_a_frame()) {
            lock(handler).poll_host(&mut sink);
        }
        if fds[2].revents & libc::POLLIN != 0 {
            if let Some(l) = listener {
                refuse_one(l, counters);
            }
        }
        if sink.out.pending() > 0 && sink.out.flush(fd).is_err() || sink.broken {
            return Ok(SessionEnd::Failed);
        }
    }
}

/// Hands every complete frame in the ring to the handler, then ends the TX pass.
fn guest_frames<H: NetHandler>(
    ring: &mut InRing,
    handler: &Mutex<H>,
    counters: &StreamCounters,
    sink: &mut StreamSink<'_>,
) -> Result<(), crate::buffers::BadLength> {
    let mut h = lock(handler);
    let mut result = Ok(());
    loop {
        match ring.next_frame_len() {
            Ok(Some(len)) => {
                counters.frames_in.inc();
                counters.bytes_in.add(len as u64);
                ring.take_frame(len, |frame| h.guest_frame(frame, sink));
            }
            Ok(None) => break,
            Err(bad) => {
                result = Err(bad);
                break;
            }
        }
    }
    // Before the ring is read into again: the handler may hold iovecs into it until now.
    h.tx_batch_done(sink);
    result
}

fn refuse_one(listener: &UnixListener, counters: &StreamCounters) {
    listener.set_nonblocking(true).ok();
    if let Ok((conn, _)) = listener.accept() {
        counters.refused_frontends.inc();
        drop(conn);
        warn_once!("refused a second stream frontend: this podwire already serves one");
    }
    listener.set_nonblocking(false).ok();
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
