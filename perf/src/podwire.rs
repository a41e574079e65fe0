//! Finding and running the podwire binary.
//!
//! CLI (foreground, logs on stderr):
//! `podwire --socket PATH [--interface IFACE] [--guest-cidr CIDR|pod] [--mac MAC]
//!  [--mtu N] [--pid FILE] [-d]`

use crate::netns::{Netns, Proc};
use crate::util::{self, wait_until, workspace_root};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long podwire may take to create its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The podwire binary: `$PODWIRE_BIN`, else `target/release/podwire` or
/// `target/debug/podwire` (under the workspace's target directory): the more
/// recently built one when both exist, so a stale release build does not
/// shadow the debug build `cargo test` just made.
pub fn podwire_path() -> Result<PathBuf> {
    podwire_path_in(
        std::env::var_os("PODWIRE_BIN").map(PathBuf::from),
        &util::target_dir(),
    )
}

fn podwire_path_in(env: Option<PathBuf>, target: &Path) -> Result<PathBuf> {
    if let Some(p) = env.filter(|p| !p.as_os_str().is_empty()) {
        let p = if p.is_absolute() {
            p
        } else {
            workspace_root().join(p)
        };
        if !p.is_file() {
            bail!("PODWIRE_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("podwire"))
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok().filter(|m| m.is_file())?;
            Some((m.modified().ok()?, p))
        })
        // on equal times, release (first) wins
        .reduce(|a, b| if b.0 > a.0 { b } else { a });
    if let Some((_, p)) = newest {
        return Ok(p);
    }
    bail!(
        "podwire binary not found: set PODWIRE_BIN or build it (cargo build --release): \
         looked in {}/{{release,debug}}/podwire",
        target.display()
    )
}

/// podwire's command line.
#[derive(Debug, Clone)]
pub struct PodwireConfig {
    pub socket: PathBuf,
    pub interface: Option<String>,
    /// A CIDR or "pod". Defaults to "pod": podwire's own default (10.0.2.0/24)
    /// is outside the ranges tests may use.
    pub guest_cidr: Option<String>,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub pid_file: Option<PathBuf>,
    /// `-d` (debug logging)
    pub debug: bool,
    /// `--vhost-user` (the default); false: the socket speaks QEMU's stream protocol.
    pub vhost_user: bool,
    pub extra_args: Vec<String>,
    /// Environment variables (e.g. RUST_LOG).
    pub env: Vec<(String, String)>,
    pub start_timeout: Duration,
}

impl PodwireConfig {
    pub fn new(socket: impl Into<PathBuf>) -> PodwireConfig {
        PodwireConfig {
            socket: socket.into(),
            interface: None,
            guest_cidr: Some("pod".to_string()),
            mac: None,
            mtu: None,
            pid_file: None,
            debug: false,
            vhost_user: true,
            extra_args: Vec::new(),
            env: Vec::new(),
            start_timeout: START_TIMEOUT,
        }
    }

    /// The arguments (without the binary).
    pub fn args(&self) -> Vec<String> {
        // In front (the harness owns the process); vhost-user unless the stream frontend is
        // asked for (passt's default protocol).
        let mut a = Vec::new();
        if self.vhost_user {
            a.push("--vhost-user".to_string());
        }
        a.extend([
            "-f".to_string(),
            "--socket".to_string(),
            self.socket.display().to_string(),
        ]);
        if let Some(i) = &self.interface {
            a.extend(["--interface".into(), i.clone()]);
        }
        if let Some(c) = &self.guest_cidr {
            a.extend(["--guest-cidr".into(), c.clone()]);
        }
        if let Some(m) = &self.mac {
            a.extend(["--mac".into(), m.clone()]);
        }
        if let Some(m) = self.mtu {
            a.extend(["--mtu".into(), m.to_string()]);
        }
        if let Some(p) = &self.pid_file {
            a.extend(["--pid".into(), p.display().to_string()]);
        }
        if self.debug {
            a.push("-d".into());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// A running podwire, killed on drop (its log is printed if dropped during a
/// panic).
#[derive(Debug)]
pub struct Podwire {
    proc: Proc,
    socket: PathBuf,
}

impl Podwire {
    /// Spawns podwire (in `ns`, or in the caller's namespace) and waits until
    /// its socket exists; fails early, with its log, if it exits.
    pub fn spawn(ns: Option<&Netns>, cfg: &PodwireConfig) -> Result<Podwire> {
        let bin = podwire_path()?;
        Podwire::spawn_binary(&bin, ns, cfg)
    }

    /// Like [`spawn`](Self::spawn) with an explicit binary.
    pub fn spawn_binary(bin: &Path, ns: Option<&Netns>, cfg: &PodwireConfig) -> Result<Podwire> {
        let bin_s = bin.display().to_string();
        let mut cmd = match ns {
            Some(ns) => ns.command(&bin_s),
            None => Command::new(&bin_s),
        };
        cmd.args(cfg.args());
        for (k, v) in &cfg.env {
            cmd.env(k, v);
        }
        if let Some(dir) = cfg.socket.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        let _ = std::fs::remove_file(&cfg.socket);
        let name = match ns {
            Some(ns) => format!("{}-podwire", ns.name()),
            None => "podwire".to_string(),
        };
        let mut proc = Proc::spawn(&name, cmd)?;
        let socket = cfg.socket.clone();
        wait_until(
            &format!("podwire's socket {}", socket.display()),
            cfg.start_timeout,
            || {
                proc.ensure_running()?;
                Ok(std::fs::metadata(&socket)
                    .map(|m| m.file_type().is_socket())
                    .unwrap_or(false))
            },
        )
        .context("starting podwire")?;
        Ok(Podwire { proc, socket })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// One field of `/proc/<pid>/status` ("Seccomp:", "CapEff:", ...), trimmed.
    pub fn status_field(&self, name: &str) -> Result<String> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| path.clone())?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("{path} has no {name}"))
    }

    /// Panics unless podwire runs in its sandbox as the kernel reports it, on every one of its
    /// threads (each has its own seccomp mode, no_new_privs, capabilities and credentials): a
    /// seccomp filter, no_new_privs, no capabilities, and (when the tests run as root) another
    /// user than root. Returns the threads' names. Landlock, which shows nowhere in `/proc`,
    /// holds for all of them because podwire refuses to enter its sandbox while any other
    /// thread runs (`sandbox::ensure_single_threaded`): each is started after, from a thread
    /// already inside.
    pub fn assert_sandboxed(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.pid());
        let mut names = Vec::new();
        for task in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let path = task.unwrap().path();
            // A thread that ended since the listing (a control client's) is no longer there.
            let Ok(status) = std::fs::read_to_string(path.join("status")) else {
                continue;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_else(|| panic!("{}: no {name}", path.display()))
            };
            let name = field("Name:");
            let what = format!("thread {name} ({})", path.display());
            assert_eq!(field("Seccomp:"), "2", "seccomp filter mode of {what}");
            assert_eq!(field("NoNewPrivs:"), "1", "{what}");
            assert_eq!(field("CapEff:"), "0000000000000000", "{what}");
            assert_eq!(field("CapPrm:"), "0000000000000000", "{what}");
            // SAFETY: geteuid cannot fail.
            if unsafe { libc::geteuid() } == 0 {
                let uid = field("Uid:");
                assert!(
                    !uid.starts_with("0\t") && uid != "0",
                    "{what} still root: Uid {uid}"
                );
            }
            names.push(name);
        }
        names
    }

    /// Its stderr (and stdout) so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.proc.log_path()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Fails, with the log, if podwire has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }

    /// SIGTERM (then SIGKILL after 3 s); returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.stop()
    }

    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let mut c = PodwireConfig::new("/tmp/x.sock");
        assert_eq!(
            c.args(),
            vec![
                "--vhost-user",
                "-f",
                "--socket",
                "/tmp/x.sock",
                "--guest-cidr",
                "pod"
            ]
        );
        c.guest_cidr = None;
        assert_eq!(
            c.args(),
            vec!["--vhost-user", "-f", "--socket", "/tmp/x.sock"]
        );
        c.interface = Some("eth0".into());
        c.guest_cidr = Some("pod".into());
        c.mac = Some("52:54:00:12:34:56".into());
        c.mtu = Some(1400);
        c.pid_file = Some("/tmp/p".into());
        c.debug = true;
        assert_eq!(
            c.args().join(" "),
            "--vhost-user -f --socket /tmp/x.sock --interface eth0 --guest-cidr pod --mac 52:54:00:12:34:56 \
             --mtu 1400 --pid /tmp/p -d"
        );
        // the stream frontend: the same without --vhost-user
        c.vhost_user = false;
        assert!(c
            .args()
            .join(" ")
            .starts_with("-f --socket /tmp/x.sock --interface eth0"));
    }

    #[test]
    fn finds_the_binary() {
        let d = util::TempDir::new("bin").unwrap();
        assert!(podwire_path_in(None, d.path()).is_err());
        std::fs::create_dir_all(d.join("debug")).unwrap();
        std::fs::write(d.join("debug/podwire"), b"").unwrap();
        assert_eq!(
            podwire_path_in(None, d.path()).unwrap(),
            d.join("debug/podwire")
        );
        std::fs::create_dir_all(d.join("release")).unwrap();
        std::fs::write(d.join("release/podwire"), b"").unwrap();
        assert_eq!(
            podwire_path_in(None, d.path()).unwrap(),
            d.join("release/podwire")
        );
        let custom = d.join("custom");
        std::fs::write(&custom, b"").unwrap();
        assert_eq!(
            podwire_path_in(Some(custom.clone()), d.path()).unwrap(),
            custom
        );
        assert!(podwire_path_in(Some(d.join("nope")), d.path()).is_err());
        // an empty PODWIRE_BIN counts as unset
        assert_eq!(
            podwire_path_in(Some(PathBuf::new()), d.path()).unwrap(),
            d.join("release/podwire")
        );
    }

    #[test]
    fn spawn_waits_for_the_socket() {
        // a stand-in that creates a unix socket with socat, then lingers
        if !util::have_tool("socat") {
            eprintln!("skipped: socat is not installed");
            return;
        }
        let d = util::TempDir::new("pw").unwrap();
        let script = d.join("fake-podwire");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"fake podwire $*\" >&2\n\
             exec socat UNIX-LISTEN:\"$4\",fork /dev/null\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let cfg = PodwireConfig::new(d.join("vhost.sock"));
        let mut pw = Podwire::spawn_binary(&script, None, &cfg).unwrap();
        assert!(pw.is_running());
        assert!(pw.log().contains("fake podwire --vhost-user -f --socket"));
        pw.stop();
        // one that dies is reported with its log
        std::fs::write(&script, "#!/bin/sh\necho 'bad flag' >&2\nexit 2\n").unwrap();
        let e = Podwire::spawn_binary(&script, None, &cfg).unwrap_err();
        assert!(format!("{e:#}").contains("bad flag"), "{e:#}");
    }
}
