//! A private libvirt daemon in the pod's network namespace, with podwire as its `passt`.
//!
//! # Theory of operation
//!
//! [`Libvirtd::start`] runs the system's `libvirtd` (11.x, from bookworm-backports) inside the
//! pod namespace and inside a mount namespace of its own, in which a fresh directory tree is
//! bind-mounted over `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`, `/var/log/libvirt` and
//! `/var/cache/libvirt`: a system libvirtd (if any) and other tests never see its sockets, pid
//! files or domains, and stale `1-<dom>-net0*` files of an earlier daemon cannot collide (domain
//! ids restart at 1 with each daemon). Only `/var/cache/libvirt` (QEMU's probed capabilities) is
//! shared between the daemons, to probe once. Its own pid file is in that tree too (the default,
//! `/run/libvirtd.pid`, would make a second daemon exit at once). Its `qemu.conf` runs QEMU as `nobody` with no security
//! driver, no namespaces and no cgroups, so nothing outside the test tree is touched; `/dev/kvm`
//! is hidden from it (an empty file bound over it), since the guests run under TCG.
//!
//! libvirt looks up `passt` on its own `PATH`: the daemon's `PATH` starts with a `bin/`
//! directory of the tree holding a symlink `passt` → the podwire binary. No system file is
//! replaced.
//!
//! `virsh` reaches the daemon through its socket in the tree (`qemu+unix:///system?socket=…`).
//! A domain's serial console is a UNIX socket QEMU listens on ([`Libvirtd::console`]), wrapped
//! in the harness's [`Console`]. On drop every domain is destroyed, then the daemon is stopped,
//! then any QEMU or podwire still named by a pid file in the tree is killed.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::console::Console;
use crate::guest::GuestImage;
use crate::netns::{Netns, Proc};
use crate::qemu::{qemu_binary, APPEND, MEMORY_MB};
use crate::util::{self, log_dir, unique_id, wait_until};

/// How long the daemon may take to answer its first `virsh`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directories libvirt keeps its state in, and where each goes in the private tree.
const PRIVATE_DIRS: [(&str, &str); 5] = [
    ("/etc/libvirt", "etc"),
    ("/run/libvirt", "run"),
    ("/var/lib/libvirt", "lib"),
    ("/var/log/libvirt", "log"),
    ("/var/cache/libvirt", "cache"),
];

/// The uid and gid QEMU and podwire run as (`nobody`, `nogroup`).
const NOBODY: u32 = 65534;

/// A running private libvirtd. Dropping it destroys its domains and stops it.
pub struct Libvirtd {
    root: PathBuf,
    uri: String,
    proc: Option<Proc>,
}

impl std::fmt::Debug for Libvirtd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirtd")
            .field("root", &self.root)
            .finish()
    }
}

fn qemu_conf() -> String {
    "user = \"nobody\"\n\
     group = \"nogroup\"\n\
     security_driver = \"none\"\n\
     namespaces = [ ]\n\
     cgroup_controllers = [ ]\n\
     stdio_handler = \"file\"\n\
     remember_owner = 0\n"
        .to_string()
}

fn libvirtd_conf() -> String {
    "unix_sock_rw_perms = \"0700\"\n\
     auth_unix_rw = \"none\"\n\
     auth_unix_ro = \"none\"\n\
     log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n"
        .to_string()
}

impl Libvirtd {
    /// Starts a private libvirtd in `pod` whose `passt` is the podwire binary.
    pub fn start(pod: &Netns) -> Result<Libvirtd> {
        Libvirtd::start_with(pod, &crate::podwire::podwire_path()?)
    }

    /// Like [`start`](Self::start) with `passt` being `passt_binary`.
    pub fn start_with(pod: &Netns, passt_binary: &Path) -> Result<Libvirtd> {
        let missing = util::missing_tools(&["libvirtd", "virsh", "unshare", "mount"]);
        if !missing.is_empty() {
            bail!(
                "missing {}: run scripts/install-deps.sh (libvirt from bookworm-backports)",
                missing.join(", ")
            );
        }
        let root = std::env::temp_dir().join(format!("podwire-libvirt-{}", unique_id()));
        let _ = std::fs::remove_dir_all(&root);
        for (_, dir) in PRIVATE_DIRS {
            std::fs::create_dir_all(root.join(dir))?;
        }
        std::fs::create_dir_all(root.join("etc/qemu"))?;
        std::fs::write(root.join("etc/qemu.conf"), qemu_conf())?;
        std::fs::write(root.join("etc/libvirtd.conf"), libvirtd_conf())?;
        std::fs::write(root.join("etc/libvirt.conf"), "")?;
        // Consoles and podwire logs: written by QEMU and podwire as nobody.
        for dir in ["console", "passt-log"] {
            let d = root.join(dir);
            std::fs::create_dir_all(&d)?;
            std::os::unix::fs::chown(&d, Some(NOBODY), Some(NOBODY))?;
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::os::unix::fs::symlink(passt_binary, bin.join("passt"))?;

        let mut script = String::from("set -e\n");
        for (system, private) in PRIVATE_DIRS {
            // The cache holds what libvirt learnt by probing QEMU (tens of seconds on a busy
            // machine): shared by every private daemon, keyed by libvirt on the binaries' times.
            let source = if private == "cache" {
                shared_cache_dir()?
            } else {
                root.join(private)
            };
            script.push_str(&format!(
                "mkdir -p {system}\nmount --bind {} {system}\n",
                source.display()
            ));
        }
        // No KVM in here: the guests are TCG anyway, and with /dev/kvm present but closed to
        // QEMU's user libvirt would find its probed capabilities stale at every lookup and
        // probe QEMU again (tens of probes, minutes, per domain start).
        std::fs::write(root.join("no-kvm"), "")?;
        script.push_str(&format!(
            "if [ -e /dev/kvm ]; then mount --bind {} /dev/kvm; fi\n",
            root.join("no-kvm").display()
        ));
        script.push_str(&format!(
            "export PATH={}:$PATH\nexec libvirtd --pid-file /run/libvirt/libvirtd.pid\n",
            bin.display()
        ));
        // The mount points must exist on the host for the bind mounts (harmless if they do).
        for (system, _) in PRIVATE_DIRS {
            std::fs::create_dir_all(system)?;
        }
        let mut cmd = pod.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        let proc = Proc::spawn(&format!("{}-libvirtd", pod.name()), cmd)?;
        let uri = format!(
            "qemu+unix:///system?socket={}",
            root.join("run/libvirt-sock").display()
        );
        let mut daemon = Libvirtd {
            root,
            uri,
            proc: Some(proc),
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let sock = self.root.join("run/libvirt-sock");
        let proc = self.proc.as_mut().expect("started");
        wait_until("libvirtd's socket", START_TIMEOUT, || {
            proc.ensure_running()?;
            Ok(sock.exists())
        })?;
        wait_until("libvirtd to answer", START_TIMEOUT, || {
            Ok(self.virsh_output(&["version"])?.status.success())
        })
    }

    /// The URI virsh uses for this daemon.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The private tree (`etc/`, `run/`, `lib/`, `log/`, `cache/`, `bin/passt`, `console/`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where libvirt puts passt's sockets and pid files (its `/run/libvirt/qemu/passt`).
    pub fn passt_dir(&self) -> PathBuf {
        self.root.join("run/qemu/passt")
    }

    /// A directory QEMU and podwire (as nobody) may write to, for logs.
    pub fn passt_log_dir(&self) -> PathBuf {
        self.root.join("passt-log")
    }

    /// Runs virsh against this daemon; whatever the outcome.
    pub fn virsh_output(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("virsh");
        cmd.args(["--quiet", "-c", &self.uri]).args(args);
        util::run_cmd_output(&mut cmd)
    }

    /// Runs virsh; its stdout, or an error carrying its stderr.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let out = self.virsh_output(args)?;
        if !out.status.success() {
            bail!(
                "virsh {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Defines the domain of `xml` (persistent) and starts it.
    pub fn define_and_start(&self, xml: &str) -> Result<()> {
        let name = domain_name(xml).context("the domain XML has no <name>")?;
        let file = self.root.join(format!("{name}.xml"));
        std::fs::write(&file, xml)?;
        self.virsh(&["define", &file.display().to_string()])?;
        self.start_domain(&name)
    }

    /// `virsh start NAME`.
    pub fn start_domain(&self, name: &str) -> Result<()> {
        self.virsh(&["start", name]).map(drop)
    }

    /// `virsh destroy NAME`.
    pub fn destroy(&self, name: &str) -> Result<()> {
        self.virsh(&["destroy", name]).map(drop)
    }

    /// The serial console socket of domain `name` (see [`domain_xml`]).
    pub fn console_socket(&self, name: &str) -> PathBuf {
        self.root.join("console").join(format!("{name}.sock"))
    }

    /// Connects to the running domain's serial console.
    pub fn console(&self, name: &str) -> Result<Console> {
        let path = self.console_socket(name);
        let mut stream = None;
        wait_until(
            &format!("the console socket {}", path.display()),
            START_TIMEOUT,
            || {
                stream = UnixStream::connect(&path).ok();
                Ok(stream.is_some())
            },
        )?;
        let stream = stream.expect("connected");
        let log = log_dir().join(format!("{}-{name}-console.log", unique_id()));
        Ok(Console::new(name, stream.try_clone()?, stream, Some(log)))
    }

    /// The daemon's own log (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("log/libvirtd.log")).unwrap_or_default()
    }

    /// Pids named by `*.pid` files under `dir` of the tree.
    fn pids_in(&self, dir: &str) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(self.root.join(dir)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if let Ok(names) = self.virsh(&["list", "--name"]) {
            for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
                let _ = self.destroy(name);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- libvirtd log ({}) ----\n{}\n---- end ----",
                self.root.display(),
                util::tail(&self.log(), 8000)
            );
        }
        let leftovers = [self.pids_in("run/qemu"), self.pids_in("run/qemu/passt")].concat();
        drop(self.proc.take());
        for pid in leftovers {
            // SAFETY: kill has no memory effects; a stale pid of a dead process fails harmlessly.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// libvirt's `/var/cache/libvirt` for every private daemon of this target directory.
fn shared_cache_dir() -> Result<PathBuf> {
    let dir = util::target_dir()
        .join("podwire-perf")
        .join("libvirt-cache");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The text of the first `<name>` element.
pub fn domain_name(xml: &str) -> Option<String> {
    let start = xml.find("<name>")? + "<name>".len();
    let end = start + xml[start..].find("</name>")?;
    Some(xml[start..end].trim().to_string())
}

/// A TCG domain booting the test guest, its serial console on [`Libvirtd::console_socket`],
/// with `interface` (an `<interface>` element) as its NIC. Shared memfd memory, as vhost-user
/// needs.
pub fn domain_xml(daemon: &Libvirtd, name: &str, image: &GuestImage, interface: &str) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{MEMORY_MB}</memory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{APPEND}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{emulator}</emulator>
    <serial type='unix'>
      <source mode='bind' path='{console}'/>
      <target port='0'/>
    </serial>
    {interface}
    <memballoon model='none'/>
  </devices>
</domain>
",
        kernel = image.kernel.display(),
        initrd = image.initrd.display(),
        emulator = emulator(),
        console = daemon.console_socket(name).display(),
    )
}

/// QEMU as the harness runs it, by absolute path (libvirt wants one).
fn emulator() -> String {
    let q = qemu_binary();
    if Path::new(&q).is_absolute() {
        return q;
    }
    util::find_tool(&q).map_or(q, |p| p.display().to_string())
}

/// What every libvirt end-to-end test starts from: a pod and a far host (DNS, UDP and TCP echo
/// servers on the far host), the test guest image, and a private libvirtd in the pod.
pub struct LibvirtSetup {
    pub topo: crate::netns::PodTopology,
    pub image: crate::GuestImage,
    pub daemon: Libvirtd,
    _services: Vec<crate::Proc>,
}

impl LibvirtSetup {
    pub fn start() -> Result<Self> {
        use crate::far;
        let topo = crate::netns::PodTopology::create()?;
        let services = vec![
            far::start_dns(&topo.far)?,
            far::start_udp_echo(&topo.far, far::UDP_ECHO_PORT)?,
            far::start_tcp_echo(&topo.far, far::TCP_ECHO_PORT)?,
        ];
        let image = crate::guest::image()?;
        let daemon = Libvirtd::start(&topo.pod)?;
        Ok(Self {
            topo,
            image,
            daemon,
            _services: services,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_name_is_found() {
        assert_eq!(
            domain_name("<domain><name> vm1 </name></domain>").as_deref(),
            Some("vm1")
        );
        assert_eq!(domain_name("<domain/>"), None);
    }

    #[test]
    fn qemu_conf_has_what_the_private_daemon_needs() {
        let c = qemu_conf();
        for line in [
            "user = \"nobody\"",
            "group = \"nogroup\"",
            "security_driver = \"none\"",
            "namespaces = [ ]",
            "cgroup_controllers = [ ]",
            "stdio_handler = \"file\"",
        ] {
            assert!(c.contains(line), "{line}");
        }
    }
}
