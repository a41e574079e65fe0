//! Runs the test guest in QEMU (TCG: guests hang under KVM on these
//! machines) with its serial console on stdio and its NIC on a vhost-user
//! socket (or a tap, or none).

use crate::console::{CmdOutput, Console};
use crate::guest::GuestImage;
use crate::netns::{Netns, Proc};
use crate::util::{self, log_dir, unique_id};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The guest NIC's default MAC.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";
/// Default guest memory (MiB).
pub const MEMORY_MB: u32 = 512;
/// Default kernel command line.
pub const APPEND: &str = "console=ttyS0 quiet panic=-1";
/// What the guest prints when its shell is ready.
pub const READY: &str = "PODWIRE-GUEST-READY";
/// What /init prints when a module fails to load.
pub const INSMOD_FAILED: &str = "PODWIRE-INSMOD-FAILED";
/// Default boot timeout (a TCG boot takes a few seconds alone, but CI may
/// run several guests on 2 cores).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The QEMU binary (override with `PODWIRE_QEMU`).
pub fn qemu_binary() -> String {
    std::env::var("PODWIRE_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

/// The guest's network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// No NIC at all.
    None,
    /// virtio-net-pci on a vhost-user socket (a path; QEMU is the client and
    /// fails at once if nothing listens there). Guest memory is then a shared
    /// memfd.
    VhostUser { socket: PathBuf },
    /// virtio-net-pci on QEMU's stream netdev, connecting to a UNIX stream socket (frames each
    /// preceded by a 4-byte length: podwire or passt without `--vhost-user`). Guest memory is
    /// private: the backend never sees it.
    Stream { socket: PathBuf },
    /// virtio-net-pci on an existing tap interface (QEMU must run in the tap's
    /// namespace), without vhost-net.
    Tap { ifname: String },
    /// virtio-net-pci on QEMU's user-mode network, restricted (restrict=on: no
    /// traffic leaves QEMU), on `net` (e.g. "198.18.5.0/24"). For harness
    /// self-tests: QEMU's built-in DHCP server answers.
    UserRestricted { net: String },
}

/// How to run the guest.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Name for logs and messages.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
    pub memory_mb: u32,
    pub smp: u32,
    pub nic: Nic,
    pub mac: String,
    /// Extra properties of the virtio-net-pci device, e.g. "host_mtu=1400",
    /// "mrg_rxbuf=off", "mq=on".
    pub nic_props: Vec<String>,
    /// Run QEMU in this namespace (`ip netns exec`); None: the caller's.
    pub netns: Option<String>,
    /// A QMP monitor on this UNIX socket (see [`Qmp`]).
    pub qmp: Option<PathBuf>,
    /// Wait for an incoming migration on this URI (`-incoming`, e.g. "unix:/tmp/m.sock")
    /// instead of booting.
    pub incoming: Option<String>,
    /// More QEMU arguments, appended last.
    pub extra_args: Vec<String>,
    pub boot_timeout: Duration,
}

impl QemuConfig {
    /// Defaults for `image`: 512 MiB, 1 vCPU, no NIC.
    pub fn new(image: &GuestImage) -> QemuConfig {
        QemuConfig {
            name: format!("guest-{}", unique_id()),
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            append: APPEND.to_string(),
            memory_mb: MEMORY_MB,
            smp: 1,
            nic: Nic::None,
            mac: GUEST_MAC.to_string(),
            nic_props: Vec::new(),
            netns: None,
            qmp: None,
            incoming: None,
            extra_args: Vec::new(),
            boot_timeout: BOOT_TIMEOUT,
        }
    }

    /// Serves QMP on the UNIX socket `path`.
    pub fn qmp(mut self, path: impl Into<PathBuf>) -> Self {
        self.qmp = Some(path.into());
        self
    }

    /// Starts as the destination of a migration arriving on `uri`.
    pub fn incoming(mut self, uri: &str) -> Self {
        self.incoming = Some(uri.to_string());
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub fn nic(mut self, nic: Nic) -> Self {
        self.nic = nic;
        self
    }

    /// The NIC on the vhost-user socket at `socket`.
    pub fn vhost_user(self, socket: impl Into<PathBuf>) -> Self {
        self.nic(Nic::VhostUser {
            socket: socket.into(),
        })
    }

    /// Adds a virtio-net-pci property ("host_mtu=1400").
    pub fn nic_prop(mut self, prop: &str) -> Self {
        self.nic_props.push(prop.to_string());
        self
    }

    pub fn in_netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.name().to_string());
        self
    }

    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    /// Appends to the kernel command line.
    pub fn append(mut self, extra: &str) -> Self {
        self.append.push(' ');
        self.append.push_str(extra);
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra_args.push(a.to_string());
        self
    }

    /// QEMU's arguments (without the binary).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            &self.memory_mb.to_string(),
            "-smp",
            &self.smp.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let device = |netdev: &str| -> String {
            let mut d = format!("virtio-net-pci,netdev={netdev},mac={}", self.mac);
            for p in &self.nic_props {
                d.push(',');
                d.push_str(p);
            }
            d
        };
        match &self.nic {
            Nic::None => {}
            Nic::VhostUser { socket } => {
                a.extend([
                    "-object".to_string(),
                    format!(
                        "memory-backend-memfd,id=mem,size={}M,share=on",
                        self.memory_mb
                    ),
                    "-numa".to_string(),
                    "node,memdev=mem".to_string(),
                    "-chardev".to_string(),
                    format!("socket,id=c0,path={}", socket.display()),
                    "-netdev".to_string(),
                    "vhost-user,id=n0,chardev=c0".to_string(),
                    "-device".to_string(),
                    device("n0"),
                ]);
            }
            Nic::Stream { socket } => {
                a.extend([
                    "-netdev".to_string(),
                    format!(
                        "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                        socket.display()
                    ),
                    "-device".to_string(),
                    device("n0"),
                ]);
            }
            Nic::Tap { ifname } => {
                a.extend([
                    "-netdev".to_string(),
                    format!("tap,id=n0,ifname={ifname},script=no,downscript=no,vhost=off"),
                    "-device".to_string(),
                    device("n0"),
                ]);
            }
            Nic::UserRestricted { net } => {
                a.extend([
                    "-netdev".to_string(),
                    format!("user,id=n0,net={net},restrict=on"),
                    "-device".to_string(),
                    device("n0"),
                ]);
            }
        }
        a.extend([
            "-kernel".to_string(),
            self.kernel.display().to_string(),
            "-initrd".to_string(),
            self.initrd.display().to_string(),
            "-append".to_string(),
            self.append.clone(),
        ]);
        if let Some(qmp) = &self.qmp {
            a.extend([
                "-qmp".to_string(),
                format!("unix:{},server=on,wait=off", qmp.display()),
            ]);
        }
        if let Some(uri) = &self.incoming {
            a.extend(["-incoming".to_string(), uri.clone()]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// A QMP client on a QEMU's monitor socket: capabilities negotiated, one command at a time,
/// events skipped.
pub struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Qmp {
    /// Connects to `path` (waiting up to `timeout` for QEMU to create it) and leaves
    /// capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let mut stream = None;
        util::wait_until(&format!("QMP socket {}", path.display()), timeout, || {
            stream = std::os::unix::net::UnixStream::connect(path).ok();
            Ok(stream.is_some())
        })?;
        let stream = stream.context("QMP socket")?;
        stream.set_read_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            reader: std::io::BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("not a QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QMP connection closed");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent {line:?}"))
    }

    /// Runs `command` with `arguments`; returns its "return" value, or its error as an error.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value> {
        use std::io::Write;
        let msg = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}")?;
        loop {
            let reply = self.read_message()?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                bail!("QMP {command}: {e}");
            }
            // An event: not the answer.
        }
    }
}

impl Qmp {
    /// Turns a migration capability on or off (`migrate-set-capabilities`). "return-path",
    /// on both sides, lets the source learn that the destination failed to load the state
    /// (and resume the guest) instead of reporting the migration completed.
    pub fn set_migration_capability(&mut self, capability: &str, on: bool) -> Result<()> {
        self.execute(
            "migrate-set-capabilities",
            serde_json::json!({"capabilities": [{"capability": capability, "state": on}]}),
        )?;
        Ok(())
    }
}

/// What `query-migrate` said when a migration ended.
#[derive(Debug, Clone)]
pub struct MigrationResult {
    pub status: String,
    /// QEMU's own figures, in milliseconds.
    pub total_time_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    /// The whole `query-migrate` answer.
    pub info: serde_json::Value,
}

/// Migrates the guest behind `source` to `uri` and waits (polling `query-migrate`) until the
/// migration completed, failed or was cancelled.
pub fn migrate(source: &mut Qmp, uri: &str, timeout: Duration) -> Result<MigrationResult> {
    source.execute("migrate", serde_json::json!({"uri": uri}))?;
    let mut last = serde_json::Value::Null;
    let done = util::wait_until("the migration to end", timeout, || {
        last = source.execute("query-migrate", serde_json::json!({}))?;
        let status = last.get("status").and_then(|s| s.as_str()).unwrap_or("");
        Ok(matches!(status, "completed" | "failed" | "cancelled"))
    });
    if let Err(e) = done {
        return Err(e.context(format!("last query-migrate: {last}")));
    }
    Ok(MigrationResult {
        status: last["status"].as_str().unwrap_or("").to_string(),
        total_time_ms: last.get("total-time").and_then(|v| v.as_u64()),
        downtime_ms: last.get("downtime").and_then(|v| v.as_u64()),
        info: last,
    })
}

/// A running guest. Dropping it kills QEMU; when dropped during a panic, or
/// after a console operation failed, it prints the console transcript and
/// QEMU's stderr.
pub struct Qemu {
    name: String,
    proc: Proc,
    console: Console,
    stderr_log: PathBuf,
    boot_time: Option<Duration>,
    started: Instant,
    force_dump: bool,
}

impl std::fmt::Debug for Qemu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qemu")
            .field("name", &self.name)
            .field("pid", &self.proc.pid())
            .finish()
    }
}

impl Qemu {
    /// Starts QEMU (does not wait for the guest).
    pub fn spawn(cfg: &QemuConfig) -> Result<Qemu> {
        let qemu = qemu_binary();
        let mut cmd = match &cfg.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &qemu]);
                c
            }
            None => Command::new(&qemu),
        };
        cmd.args(cfg.args());
        let id = unique_id();
        let stderr_log = log_dir().join(format!("{id}-{}-qemu.log", cfg.name));
        let console_log = log_dir().join(format!("{id}-{}-console.log", cfg.name));
        let err = File::create(&stderr_log)
            .with_context(|| format!("cannot create {}", stderr_log.display()))?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(err);
        let mut proc = Proc::spawn_raw(&cfg.name, cmd)?;
        let stdout = proc.child_mut().stdout.take().unwrap();
        let stdin = proc.child_mut().stdin.take().unwrap();
        let console = Console::new(&cfg.name, stdout, stdin, Some(console_log));
        Ok(Qemu {
            name: cfg.name.clone(),
            proc,
            console,
            stderr_log,
            boot_time: None,
            started: Instant::now(),
            force_dump: false,
        })
    }

    /// Starts QEMU and waits until the guest shell is ready.
    pub fn boot(cfg: &QemuConfig) -> Result<Qemu> {
        let mut q = Qemu::spawn(cfg)?;
        q.wait_ready(cfg.boot_timeout)?;
        Ok(q)
    }

    /// Waits for the guest's ready line; fails if a module did not load.
    /// Returns the time since QEMU was started.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let boot = match self.console.wait_for(READY, timeout) {
            Ok(b) => b,
            Err(e) => {
                return Err(e.context(format!(
                    "guest {} did not boot; QEMU's stderr:\n{}",
                    self.name,
                    self.stderr()
                )))
            }
        };
        if let Some(line) = boot.lines().find(|l| l.contains(INSMOD_FAILED)) {
            self.console_failed();
            bail!("guest {}: {}", self.name, line.trim());
        }
        let t = self.started.elapsed();
        self.boot_time = Some(t);
        Ok(t)
    }

    fn console_failed(&mut self) {
        // make Drop print the transcript
        self.force_dump = true;
    }

    /// Print the transcript and QEMU's stderr when dropped, even on success.
    pub fn dump_on_drop(&mut self) {
        self.force_dump = true;
    }

    /// Time from spawn to the ready line (after [`wait_ready`](Self::wait_ready)).
    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_time
    }

    pub fn console(&mut self) -> &mut Console {
        &mut self.console
    }

    /// See [`Console::run`].
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        self.console.run(cmd, timeout)
    }

    /// See [`Console::run_ok`].
    pub fn run_ok(&mut self, cmd: &str, timeout: Duration) -> Result<String> {
        self.console.run_ok(cmd, timeout)
    }

    /// QEMU's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read(&self.stderr_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Powers the guest off (`poweroff -f`) and waits for QEMU to exit.
    pub fn poweroff(&mut self, timeout: Duration) -> Result<()> {
        if !self.proc.is_running() {
            return Ok(());
        }
        self.console.send("\npoweroff -f\n")?;
        self.proc
            .wait_timeout(timeout)
            .with_context(|| format!("guest {} did not power off", self.name))?;
        Ok(())
    }

    /// Prints the console transcript and QEMU's stderr.
    pub fn dump(&self) {
        self.console.dump_transcript();
        eprintln!(
            "---- QEMU stderr of {} ({}) ----\n{}\n---- end ----",
            self.name,
            self.stderr_log.display(),
            util::tail(&self.stderr(), 16000)
        );
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.proc.stop();
        if std::thread::panicking() || self.console.failed() || self.force_dump {
            self.dump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> GuestImage {
        GuestImage {
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initramfs.gz".into(),
            kernel_version: "6.1".into(),
            modules: vec![],
        }
    }

    #[test]
    fn args_without_nic() {
        let a = QemuConfig::new(&image()).args().join(" ");
        assert!(
            a.starts_with("-machine q35 -accel tcg -m 512 -smp 1 -nodefaults"),
            "{a}"
        );
        assert!(a.contains("-serial stdio"), "{a}");
        assert!(!a.contains("kvm"), "{a}");
        assert!(!a.contains("-netdev"), "{a}");
        assert!(!a.contains("memfd"), "{a}");
        assert!(a.ends_with(
            "-kernel /img/vmlinuz -initrd /img/initramfs.gz -append console=ttyS0 quiet panic=-1"
        ));
    }

    #[test]
    fn args_with_vhost_user() {
        let cfg = QemuConfig::new(&image())
            .vhost_user("/tmp/s/vhost.sock")
            .nic_prop("host_mtu=1400")
            .memory_mb(256)
            .arg("-S");
        let a = cfg.args();
        let s = a.join(" ");
        assert!(
            s.contains(
                "-object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
             -chardev socket,id=c0,path=/tmp/s/vhost.sock -netdev vhost-user,id=n0,chardev=c0 \
             -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,host_mtu=1400"
            ),
            "{s}"
        );
        assert_eq!(a.last().unwrap(), "-S");
        // -append's value is one argument
        let i = a.iter().position(|x| x == "-append").unwrap();
        assert_eq!(a[i + 1], APPEND);
    }

    #[test]
    fn args_with_tap_and_user() {
        let s = QemuConfig::new(&image())
            .nic(Nic::Tap {
                ifname: "tap0".into(),
            })
            .args()
            .join(" ");
        assert!(s.contains("-netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off"));
        let s = QemuConfig::new(&image())
            .nic(Nic::UserRestricted {
                net: "198.18.5.0/24".into(),
            })
            .args()
            .join(" ");
        assert!(
            s.contains("-netdev user,id=n0,net=198.18.5.0/24,restrict=on"),
            "{s}"
        );
    }

    #[test]
    fn args_with_stream() {
        let s = QemuConfig::new(&image())
            .nic(Nic::Stream {
                socket: "/tmp/s/pw.sock".into(),
            })
            .args()
            .join(" ");
        assert!(
            s.contains(
                "-netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/s/pw.sock \
                 -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"
            ),
            "{s}"
        );
        // no shared memory: the stream backend never maps the guest's RAM
        assert!(!s.contains("memfd"), "{s}");
    }
}
