//! Serving frontends on a vhost-user socket, one at a time, for as long as podwire runs.
//!
//! # Theory of operation
//!
//! The socket is bound once. For each frontend a fresh [`NetDevice`] and `VhostUserDaemon` are
//! made (the library's exit event is never drained, so neither is reusable); the handler — the
//! switch with its flows and leases — outlives them and is shared through an `Arc<Mutex<_>>`.
//!
//! While a frontend is connected the library does not accept on the socket, so a second frontend
//! would sit in the listen backlog forever. Instead this thread keeps polling the socket and
//! accepts and closes every extra connection at once, with a log line: the second QEMU fails
//! fast with a clear error instead of hanging. When the session ends (QEMU quit, guest reset,
//! socket closed), the worker thread is stopped, the handler is told the link went down, and the
//! loop waits for the next frontend on the same socket.
//!
//! Access: the socket file is made mode 0600 (0660 with [`FrontendAccess::group`]) whatever the
//! umask, and every accepted connection's peer credentials (SO_PEERCRED) are checked: only
//! podwire's own uid, root and [`FrontendAccess::uid`] may be the frontend. Anyone else is
//! refused at once with a log line, so that no other local process can take the only frontend
//! slot even where the file mode does not keep it out (a shared uid namespace, a mode changed
//! by hand, a connection made before the mode was set).

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::Listener;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::counters::DeviceCounters;
use crate::device::{NetConfig, NetDevice, HANDLER_EVENT, TX_TIMER_EVENT};
use crate::relay;
use crate::session::SessionInfo;
use podwire_frame::NetHandler;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("vhost-user: {0}")]
    Daemon(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Who may connect on the vhost-user socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrontendAccess {
    /// Mode 0660 rather than 0600: the socket's group may connect (its uid is still checked).
    pub group: bool,
    /// A uid allowed as frontend besides podwire's own and root.
    pub uid: Option<u32>,
}

impl FrontendAccess {
    fn mode(&self) -> u32 {
        if self.group {
            0o660
        } else {
            0o600
        }
    }

    /// Whether a peer with `uid` may be the frontend (checked against podwire's uid at the
    /// time, which may have changed since start-up when root dropped privileges).
    pub fn allows(&self, uid: u32) -> bool {
        // SAFETY: geteuid cannot fail.
        let own = unsafe { libc::geteuid() };
        uid == own || uid == 0 || self.uid == Some(uid)
    }
}

/// The vhost-user socket and what it serves.
pub struct Server<H: NetHandler> {
    listener: UnixListener,
    access: FrontendAccess,
    handler: Arc<Mutex<H>>,
    counters: Arc<DeviceCounters>,
    config: NetConfig,
    last_refusal_log: Cell<Option<Instant>>,
    session: Arc<SessionInfo>,
}

/// Least time between two log lines about refused frontends.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl<H: NetHandler> Server<H> {
    /// Binds `path`, replacing a stale socket file left by an earlier run.
    pub fn bind(
        path: &Path,
        handler: Arc<Mutex<H>>,
        counters: Arc<DeviceCounters>,
        config: NetConfig,
    ) -> Result<Self, ServeError> {
        let bind_err = |source| ServeError::Bind {
            path: path.display().to_string(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let access = FrontendAccess::default();
        set_mode(path, access.mode()).map_err(bind_err)?;
        Ok(Server {
            listener,
            access,
            handler,
            counters,
            config,
            last_refusal_log: Cell::new(None),
            session: Arc::default(),
        })
    }

    /// Sets who may connect: the socket's mode and the uids accepted as frontend.
    pub fn with_access(mut self, access: FrontendAccess) -> Result<Self, ServeError> {
        if let Ok(addr) = self.listener.local_addr() {
            if let Some(path) = addr.as_pathname() {
                set_mode(path, access.mode())?;
            }
        }
        self.access = access;
        Ok(self)
    }

    /// What the current frontend session negotiated, for readers on other threads.
    pub fn session(&self) -> Arc<SessionInfo> {
        self.session.clone()
    }

    /// Serves frontends one after another; returns only on an unrecoverable error.
    pub fn run(&self) -> Result<(), ServeError> {
        loop {
            self.serve_one()?;
        }
    }

    /// Waits for one frontend and serves it until it goes away.
    pub fn serve_one(&self) -> Result<(), ServeError> {
        let device = NetDevice::<H>::new(self.handler.clone(), self.counters.clone(), self.config)?
            .with_session(self.session.clone());
        let exit = device.exit_notifier()?;
        // Owned by the device, which the daemon keeps until this function returns.
        let tx_timer_fd = device.tx_timer_fd();
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<BitmapMmapRegion>::new());
        let mut daemon =
            VhostUserDaemon::new("podwire-vhost".into(), Arc::new(Mutex::new(device)), mem)
                .map_err(|e| ServeError::Daemon(e.to_string()))?;
        let frontend = self.accept_allowed()?;
        // Counted, marked connected and told to the handler before the relay starts: from then
        // on the frontend's first request may be answered at once, and whoever sees the answer
        // must also see the session.
        self.counters.sessions.inc();
        self.session.connected();
        lock(&self.handler).link_changed(true);
        tracing::info!(
            event = "frontend_connected",
            session = self.counters.sessions.get(),
            "frontend connected"
        );
        // The frontend talks to the library through the relay (see relay.rs), which reaches
        // the library through a private, abstract-namespace listener made for this session.
        let private = private_listener_name(self.counters.sessions.get());
        let mut listener = Listener::from(UnixListener::bind_addr(&private)?);
        let ours = UnixStream::connect_addr(&private)?;
        let frontend_probe = frontend.try_clone()?;
        let relay_threads = relay::start(frontend, ours)?;
        daemon
            .start(&mut listener)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        drop(listener);

        let host_fd = lock(&self.handler).host_fd();
        for h in daemon.get_epoll_handlers() {
            h.register_listener(host_fd, EventSet::IN, u64::from(HANDLER_EVENT))?;
            h.register_listener(tx_timer_fd, EventSet::IN, u64::from(TX_TIMER_EVENT))?;
        }

        let ended = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let ended_signal = ended.try_clone()?;
        let waiter = std::thread::Builder::new()
            .name("podwire-session".into())
            .spawn(move || {
                let result = daemon.wait();
                let _ = ended_signal.write(1);
                (daemon, result)
            })?;
        self.refuse_until(ended.as_raw_fd(), frontend_probe.as_raw_fd());
        let (daemon, result) = waiter
            .join()
            .map_err(|_| ServeError::Daemon("session thread panicked".into()))?;
        for t in relay_threads {
            let _ = t.join();
        }
        let _ = exit.notify();
        for h in daemon.get_epoll_handlers() {
            let _ = h.unregister_listener(host_fd, EventSet::IN, u64::from(HANDLER_EVENT));
            let _ = h.unregister_listener(tx_timer_fd, EventSet::IN, u64::from(TX_TIMER_EVENT));
        }
        drop(daemon);
        self.session.disconnected();
        lock(&self.handler).link_changed(false);
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => tracing::info!(
                event = "frontend_disconnected",
                "frontend disconnected; waiting for the next one"
            ),
            Err(e) => tracing::warn!("frontend session ended: {e}; waiting for the next one"),
        }
        Ok(())
    }

    /// Accepts the next connection whose peer may be the frontend, refusing the others.
    fn accept_allowed(&self) -> Result<UnixStream, ServeError> {
        loop {
            let (conn, _) = self.listener.accept()?;
            match peer_uid(&conn) {
                Ok(uid) if self.access.allows(uid) => return Ok(conn),
                Ok(uid) => {
                    self.counters.refused_peers.inc();
                    self.log_refusal(format_args!(
                        "refused a vhost-user frontend with uid {uid}: only podwire's own uid, \
                         root or --frontend-uid may connect"
                    ));
                }
                Err(e) => {
                    self.counters.refused_peers.inc();
                    self.log_refusal(format_args!(
                        "refused a vhost-user frontend whose credentials cannot be read: {e}"
                    ));
                }
            }
        }
    }

    /// Logs a refusal: the first, then at most one line per interval (a refused peer may retry
    /// in a tight loop).
    fn log_refusal(&self, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        let due = self
            .last_refusal_log
            .get()
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL);
        if due {
            self.last_refusal_log.set(Some(now));
            tracing::warn!("{what}");
        }
    }

    /// Accepts and closes extra frontends until `ended` is readable. Once the current frontend
    /// has hung up, a newcomer is its successor, not an intruder: it is left in the backlog for
    /// the next session instead.
    fn refuse_until(&self, ended: RawFd, frontend: RawFd) {
        let listen = self.listener.as_raw_fd();
        loop {
            if !peer_connected(frontend) {
                wait_readable(ended);
                return;
            }
            let mut fds = [
                libc::pollfd {
                    fd: ended,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: listen,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: fds is a valid array of two pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            // The session's end wins over a waiting connection: that one is for the next session.
            if fds[0].revents != 0 {
                return;
            }
            if fds[1].revents & libc::POLLIN != 0 && peer_connected(frontend) {
                self.refuse_one();
            }
        }
    }

    fn refuse_one(&self) {
        self.listener.set_nonblocking(true).ok();
        if let Ok((conn, _)) = self.listener.accept() {
            self.counters.refused_frontends.inc();
            drop(conn);
            // QEMU retries a refused vhost-user connection in a tight loop.
            self.log_refusal(format_args!(
                "refused a second vhost-user frontend: this podwire already serves one \
                 (one podwire per guest NIC; {} refused so far)",
                self.counters.refused_frontends.get()
            ));
        }
        self.listener.set_nonblocking(false).ok();
    }
}

/// The uid of the process at the other end of `conn`, as the kernel recorded it at connect.
fn peer_uid(conn: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the call and len is cred's size.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Sets the socket file's mode, whatever the umask gave it.
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Whether the other end of a stream is still there (no hang-up seen). The kernel marks the
/// hang-up when the peer closes, before any later connect from the same peer can complete.
fn peer_connected(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd; zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 0 || pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) == 0
}

fn wait_readable(fd: RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; EINTR just ends the wait early, which callers tolerate.
    while unsafe { libc::poll(&mut pfd, 1, -1) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
}

/// A per-process, per-session name no other process is expected to know.
fn private_listener_name(session: u64) -> std::os::unix::net::SocketAddr {
    let name = format!("podwire-{}-{}-{}", std::process::id(), session, nonce());
    // Abstract names cannot fail to parse when shorter than sun_path.
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .unwrap_or_else(|_| unreachable_name())
}

fn nonce() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into v.
    unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, libc::GRND_NONBLOCK) };
    v
}

fn unreachable_name() -> std::os::unix::net::SocketAddr {
    std::os::unix::net::SocketAddr::from_abstract_name(b"podwire").expect("short abstract name")
}

fn lock<H>(m: &Mutex<H>) -> std::sync::MutexGuard<'_, H> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
