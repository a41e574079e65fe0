//! Running podwire next to the hook.
//!
//! Theory of operation. The sidecar container shares the virt-launcher pod's network namespace,
//! so podwire runs right here, as the sidecar's child, in the foreground. It cannot start
//! before `OnDefineDomain`: its options come from the VMI, which only arrives with that call.
//! [`Supervisor::ensure_running`] starts one podwire per NIC (or finds it already started by an
//! earlier call) and waits, up to a deadline, until podwire's socket is *listening*. Listening
//! is read from `/proc/net/unix` rather than probed by connecting: a probe would take the one
//! frontend slot podwire offers. A waiter task owns each child; when a podwire exits, the
//! [`Supervisor::exited`] channel says so, and the sidecar ends non-zero unless it was asked to
//! shut down.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use crate::options::{Capabilities, PodwireOptions};

#[derive(Debug, thiserror::Error)]
pub enum PodwireError {
    #[error("cannot prepare podwire's socket directory {0}: {1}")]
    SocketDir(PathBuf, std::io::Error),
    #[error("cannot start podwire ({0}): {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error("podwire is not ready: {socket} is not listening after {waited:?}")]
    NotReady { socket: PathBuf, waited: Duration },
    #[error("podwire {0}")]
    Exited(String),
}

struct Running {
    argv: Vec<OsString>,
    pid: u32,
}

/// The podwire processes of this sidecar, one per socket.
pub struct Supervisor {
    binary: PathBuf,
    caps: Capabilities,
    ready_timeout: Duration,
    running: Mutex<BTreeMap<PathBuf, Running>>,
    exited_tx: watch::Sender<Option<String>>,
    stopping: AtomicBool,
}

impl Supervisor {
    pub fn new(binary: PathBuf, caps: Capabilities, ready_timeout: Duration) -> Self {
        Self {
            binary,
            caps,
            ready_timeout,
            running: Mutex::new(BTreeMap::new()),
            exited_tx: watch::channel(None).0,
            stopping: AtomicBool::new(false),
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Becomes `Some(what happened)` when a podwire exits.
    pub fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited_tx.subscribe()
    }

    /// Whether the exits are expected (after [`Supervisor::stop`]).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// podwire for `opts` is running and listening, or an error saying why not.
    pub async fn ensure_running(&self, opts: &PodwireOptions) -> Result<(), PodwireError> {
        if let Some(what) = self.exited_tx.borrow().clone() {
            return Err(PodwireError::Exited(what));
        }
        let (argv, not_applied) = opts.argv(self.caps);
        for line in &not_applied {
            tracing::warn!("not applied: {line}");
        }
        {
            let mut running = self.running.lock().await;
            match running.get(&opts.socket) {
                Some(r) if r.argv != argv => tracing::warn!(
                    "podwire on {} already runs with {:?}; the VMI now asks for {:?}: kept \
                     (the guest may be connected)",
                    opts.socket.display(),
                    r.argv,
                    argv
                ),
                Some(_) => {}
                None => {
                    let pid = self.spawn(&opts.socket, &argv)?;
                    running.insert(opts.socket.clone(), Running { argv, pid });
                }
            }
        }
        self.wait_ready(&opts.socket).await
    }

    fn spawn(&self, socket: &Path, argv: &[OsString]) -> Result<u32, PodwireError> {
        let dir = socket.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| PodwireError::SocketDir(dir.into(), e))?;
        // A socket left by an earlier podwire of this pod (none listens on it: we start the
        // only one) would make the bind fail.
        if !is_listening(socket) {
            let _ = std::fs::remove_file(socket);
        }
        tracing::info!("starting {} {:?}", self.binary.display(), argv);
        let mut child = tokio::process::Command::new(&self.binary)
            .args(argv)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| PodwireError::Spawn(self.binary.clone(), e))?;
        let pid = child.id().unwrap_or(0);
        let tx = self.exited_tx.clone();
        let socket = socket.to_path_buf();
        tokio::spawn(async move {
            let what = match child.wait().await {
                Ok(status) => format!("on {} exited ({status})", socket.display()),
                Err(e) => format!("on {}: cannot wait for it: {e}", socket.display()),
            };
            tracing::warn!("podwire {what}");
            tx.send_replace(Some(what));
        });
        Ok(pid)
    }

    async fn wait_ready(&self, socket: &Path) -> Result<(), PodwireError> {
        let started = tokio::time::Instant::now();
        let mut exited = self.exited();
        loop {
            if let Some(what) = exited.borrow_and_update().clone() {
                return Err(PodwireError::Exited(format!(
                    "{what} before its socket was ready (its log is the sidecar's)"
                )));
            }
            if is_listening(socket) {
                return Ok(());
            }
            if started.elapsed() >= self.ready_timeout {
                return Err(PodwireError::NotReady {
                    socket: socket.into(),
                    waited: self.ready_timeout,
                });
            }
            // Wake on the deadline tick or on an exit, whichever comes first.
            let _ = tokio::time::timeout(Duration::from_millis(20), exited.changed()).await;
        }
    }

    /// Terminates every podwire (SIGTERM) and waits for them, up to `grace`.
    pub async fn stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let running = std::mem::take(&mut *self.running.lock().await);
        let mut exited = self.exited();
        for r in running.values() {
            if let Ok(pid) = libc::pid_t::try_from(r.pid) {
                // SAFETY: kill(2) with a pid of our own child and a constant signal has no
                // memory effects.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        if !running.is_empty() {
            let _ = tokio::time::timeout(grace, exited.wait_for(|e| e.is_some())).await;
        }
    }
}

/// Whether a UNIX socket bound to `path` is listening in this network namespace.
///
/// `/proc/net/unix` lines are `Num RefCount Protocol Flags Type St Inode Path`; flag
/// `__SO_ACCEPTCON` (0x10000) marks a listening socket.
pub fn is_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.as_os_str().to_string_lossy();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8
            && fields[7] == want
            && u32::from_str_radix(fields[3], 16).is_ok_and(|f| f & 0x10000 != 0)
    })
}
