//! Network namespaces as test hosts, processes spawned in them, and the "Pod"
//! topology.
//!
//! Every name carries a [`unique_id`] so that tests (threads of one test
//! binary, or several binaries) can run at the same time. Only addresses in
//! 198.18.0.0/15 and fd00::/8 are used.

use crate::util::{self, cmdline, log_dir, run_cmd, run_cmd_output, unique_id, wait_until};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

/// The pod's address on its `eth0`.
pub const POD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Prefix length of the pod's subnet.
pub const POD_PREFIX: u8 = 24;
/// The pod's default gateway (the far namespace's end of the link).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The "far host": an address of the far namespace that is not on the pod's
/// subnet (reached through the gateway); services run here.
pub const FAR_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// IPv6 counterparts (fd00::/8 only).
pub const POD_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 2);
pub const POD_PREFIX6: u8 = 64;
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 1);
pub const FAR_HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 1);
/// Interface names inside the namespaces.
pub const POD_IFACE: &str = "eth0";
pub const FAR_IFACE: &str = "eth0";
/// The search domain written to the pod's resolv.conf.
pub const SEARCH_DOMAIN: &str = "podwire.test";

/// Prefixes of the namespaces this module creates (`<prefix>-<unique id>`).
const NS_PREFIXES: &[&str] = &["pod", "far", "lan", "ns"];

// ------------------------------------------------------------------ Proc ----

/// A spawned process, killed (SIGTERM, then SIGKILL) on drop. Its stdout and
/// stderr go to a log file (unless the caller set them up otherwise); the
/// log's tail is printed when dropped during a panic.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    status: Option<ExitStatus>,
    print_log_on_panic: bool,
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr appended to a
    /// fresh log file in [`log_dir`] named after `name`.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        let log = log_dir().join(format!("{}-{}.log", unique_id(), sanitize(name)));
        let f = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let f2 = f.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn `{}`", cmdline(&cmd)))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: Some(log),
            status: None,
            print_log_on_panic: true,
        })
    }

    /// Spawns `cmd` with whatever stdio the caller configured (no log file).
    pub fn spawn_raw(name: &str, mut cmd: Command) -> Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn `{}`", cmdline(&cmd)))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: None,
            status: None,
            print_log_on_panic: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child (e.g. to take its piped stdio).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The log so far ("" if there is none).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the log should be printed when dropped during a panic.
    pub fn set_print_log_on_panic(&mut self, on: bool) {
        self.print_log_on_panic = on;
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Fails, with the log's tail, if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(st) = self.try_wait()? {
            bail!(
                "{} exited ({st}); its log:\n{}",
                self.name,
                util::tail(&self.log(), 4000)
            );
        }
        Ok(())
    }

    /// Waits for the process to exit by itself, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let name = self.name.clone();
        wait_until(&format!("{name} to exit"), timeout, || {
            Ok(self.try_wait()?.is_some())
        })?;
        Ok(self.status.unwrap())
    }

    /// Sends `sig` to the process (if it still runs).
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.is_running() {
            // SAFETY: plain kill(2) on our own child, which has not been reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL if it has not exited within
    /// 3 s. Returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.is_running() {
            self.signal(libc::SIGTERM);
            if self.wait_timeout(Duration::from_secs(3)).is_err() {
                let _ = self.child.kill();
            }
            self.status = self.child.wait().ok();
        }
        self.status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && self.print_log_on_panic {
            if let Some(p) = &self.log {
                eprintln!(
                    "---- log of {} ({}) ----\n{}\n---- end of log of {} ----",
                    self.name,
                    p.display(),
                    util::tail(&self.log(), 16000),
                    self.name
                );
            }
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

// ----------------------------------------------------------------- Netns ----

/// A network namespace, deleted on drop together with every process still in
/// it and its /etc/netns/NAME directory.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (deleting a leftover of the same name) with
    /// `lo` up.
    pub fn create(name: &str) -> Result<Netns> {
        util::require_root()?;
        if ns_exists(name) {
            delete_ns(name);
        }
        util::run(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates `<prefix>-<unique id>`.
    pub fn create_unique(prefix: &str) -> Result<Netns> {
        Netns::create(&format!("{prefix}-{}", unique_id()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`); add its arguments.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    fn argv_command(&self, argv: &[&str]) -> Command {
        let mut c = self.command(argv[0]);
        c.args(&argv[1..]);
        c
    }

    /// Runs argv inside the namespace; fails unless it exits 0. Returns stdout.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        run_cmd(&mut self.argv_command(argv))
    }

    /// Runs argv inside the namespace, whatever its exit status.
    pub fn exec_output(&self, argv: &[&str]) -> Result<Output> {
        run_cmd_output(&mut self.argv_command(argv))
    }

    /// Runs a shell snippet (`sh -c SCRIPT`) inside the namespace.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.exec(&["sh", "-c", script])
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        run_cmd(&mut c)
    }

    /// Sets a sysctl inside the namespace (`net.*` ones are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.exec(&[
            "sh",
            "-c",
            "printf '%s\\n' \"$1\" > \"$2\"",
            "sh",
            value,
            &path,
        ])
        .with_context(|| format!("sysctl {key}={value} in {}", self.name))?;
        Ok(())
    }

    /// Reads a sysctl inside the namespace.
    pub fn get_sysctl(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        Ok(self.exec(&["cat", &path])?.trim().to_string())
    }

    /// Spawns argv inside the namespace (see [`Proc::spawn`]).
    pub fn spawn(&self, name: &str, argv: &[&str]) -> Result<Proc> {
        Proc::spawn(&format!("{}-{}", self.name, name), self.argv_command(argv))
    }

    /// Pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        ns_pids(&self.name)
    }

    /// `/etc/netns/NAME`: files here replace their /etc counterparts for
    /// commands run through `ip netns exec NAME`.
    pub fn etc_dir(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    /// Writes /etc/netns/NAME/FILE (e.g. "resolv.conf").
    pub fn write_etc(&self, file: &str, contents: &str) -> Result<()> {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        std::fs::write(dir.join(file), contents)
            .with_context(|| format!("write {}", dir.join(file).display()))
    }

    /// Adds an address to an interface (`ip addr add ADDR dev IFACE`).
    pub fn add_addr(&self, iface: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", iface];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Waits until a socket listens in the namespace (see [`ss_listening`]).
    pub fn wait_listening(
        &self,
        proto: Proto,
        addr: Option<Ipv4Addr>,
        port: u16,
        timeout: Duration,
    ) -> Result<()> {
        wait_until(
            &format!("{proto:?} port {port} to listen in {}", self.name),
            timeout,
            || {
                let out = self.exec(&["ss", "-Hln", proto.ss_flag()])?;
                Ok(ss_listening(&out, addr, port))
            },
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_ns(&self.name);
    }
}

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn ns_pids(name: &str) -> Vec<u32> {
    let mut c = Command::new("ip");
    c.args(["netns", "pids", name]);
    match run_cmd_output(&mut c) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Kills every process in the namespace, deletes it and its /etc/netns dir.
fn delete_ns(name: &str) {
    for _ in 0..3 {
        let pids = ns_pids(name);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            // SAFETY: kill(2); these processes were started by the harness in
            // a namespace it created.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = wait_until("namespace processes to die", Duration::from_secs(2), || {
            Ok(pids.iter().all(|p| {
                !Path::new(&format!("/proc/{p}")).exists()
                    || std::fs::read_to_string(format!("/proc/{p}/stat"))
                        .map(|s| s.contains(") Z "))
                        .unwrap_or(true)
            }))
        });
    }
    let mut c = Command::new("ip");
    c.args(["netns", "del", name]);
    let _ = run_cmd_output(&mut c);
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
}

/// Deletes namespaces left behind by harness processes that no longer run
/// (names `pod-`/`far-`/`lan-`/`ns-` followed by a [`unique_id`] whose pid is
/// gone). Returns the names deleted.
pub fn cleanup_stale() -> Vec<String> {
    let mut deleted = Vec::new();
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return deleted;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((prefix, id)) = name.split_once('-') else {
            continue;
        };
        if !NS_PREFIXES.contains(&prefix) {
            continue;
        }
        if let Some(pid) = util::unique_id_pid(id) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                delete_ns(&name);
                deleted.push(name);
            }
        }
    }
    deleted
}

// ------------------------------------------------------------------- ss ----

/// Transport protocol of a listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn ss_flag(self) -> &'static str {
        match self {
            Proto::Tcp => "-t",
            Proto::Udp => "-u",
        }
    }
}

/// Whether `ss -Hln[tu]` output shows a socket bound to `port` on `addr`
/// (or on a wildcard address; any address if `addr` is None).
pub fn ss_listening(ss_output: &str, addr: Option<Ipv4Addr>, port: u16) -> bool {
    ss_output.lines().any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // State Recv-Q Send-Q Local:Port Peer:Port [Process]
        let Some(local) = cols.get(3) else {
            return false;
        };
        let Some((host, p)) = local.rsplit_once(':') else {
            return false;
        };
        if p != port.to_string() {
            return false;
        }
        // "198.18.1.1%lo" when bound to a device too
        let host = host.split('%').next().unwrap_or(host);
        match addr {
            None => true,
            Some(a) => {
                host == a.to_string()
                    || matches!(host, "*" | "0.0.0.0" | "[::]" | "[::ffff:0.0.0.0]")
            }
        }
    })
}

// -------------------------------------------------------------- topology ----

/// Options for [`PodTopology`].
#[derive(Debug, Clone, Default)]
pub struct TopologyOptions {
    /// MTU of the pod<->far veth pair (default: the kernel's 1500).
    pub mtu: Option<u32>,
}

/// The "Pod" topology:
///
/// ```text
///  pod-X                                   far-X
///  eth0 198.18.0.2/24  <--- veth --->      eth0 198.18.0.1/24 (the gateway)
///  default via 198.18.0.1                  lo   198.18.1.1/32 (the far host)
///  fd00:198:18::2/64                       eth0 fd00:198:18::1/64, lo fd00:198:18:1::1/128
/// ```
///
/// The pod namespace allows unprivileged ICMP echo sockets
/// (`net.ipv4.ping_group_range = 0 2147483647`) and has an
/// /etc/netns/pod-X/resolv.conf with `nameserver 198.18.1.1` and
/// `search podwire.test`. Dropping it removes both namespaces, the processes
/// in them and the /etc/netns directories.
#[derive(Debug)]
pub struct PodTopology {
    pub id: String,
    pub pod: Netns,
    pub far: Netns,
}

impl PodTopology {
    pub fn create() -> Result<PodTopology> {
        PodTopology::create_with(&TopologyOptions::default())
    }

    pub fn create_with(opts: &TopologyOptions) -> Result<PodTopology> {
        util::require_root()?;
        cleanup_stale();
        let id = unique_id();
        let pod = Netns::create(&format!("pod-{id}"))?;
        let far = Netns::create(&format!("far-{id}"))?;
        pod.ip(&[
            "link",
            "add",
            POD_IFACE,
            "type",
            "veth",
            "peer",
            "name",
            FAR_IFACE,
            "netns",
            far.name(),
        ])
        .context("creating the pod<->far veth pair")?;
        if let Some(mtu) = opts.mtu {
            let mtu = mtu.to_string();
            pod.ip(&["link", "set", POD_IFACE, "mtu", &mtu])?;
            far.ip(&["link", "set", FAR_IFACE, "mtu", &mtu])?;
        }
        // far side: gateway on the link, far host on lo
        far.add_addr(FAR_IFACE, &format!("{POD_GATEWAY}/{POD_PREFIX}"))?;
        far.add_addr(FAR_IFACE, &format!("{POD_GATEWAY6}/{POD_PREFIX6}"))?;
        far.add_addr("lo", &format!("{FAR_HOST}/32"))?;
        far.add_addr("lo", &format!("{FAR_HOST6}/128"))?;
        far.ip(&["link", "set", FAR_IFACE, "up"])?;
        // pod side
        pod.add_addr(POD_IFACE, &format!("{POD_ADDR}/{POD_PREFIX}"))?;
        pod.add_addr(POD_IFACE, &format!("{POD_ADDR6}/{POD_PREFIX6}"))?;
        pod.ip(&["link", "set", POD_IFACE, "up"])?;
        pod.ip(&["route", "add", "default", "via", &POD_GATEWAY.to_string()])?;
        pod.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &POD_GATEWAY6.to_string(),
        ])?;
        pod.sysctl("net.ipv4.ping_group_range", "0 2147483647")?;
        pod.write_etc(
            "resolv.conf",
            &format!("nameserver {FAR_HOST}\nsearch {SEARCH_DOMAIN}\n"),
        )?;
        Ok(PodTopology { id, pod, far })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_parsing() {
        let udp = "UNCONN 0      0      198.18.1.1:53        0.0.0.0:*\n\
                   UNCONN 0      0      198.18.1.1%lo:7      0.0.0.0:*\n\
                   UNCONN 0      0               *:9999            *:*\n";
        let far = Some(FAR_HOST);
        assert!(ss_listening(udp, far, 53));
        assert!(ss_listening(udp, far, 7));
        assert!(ss_listening(udp, far, 9999));
        assert!(!ss_listening(udp, far, 54));
        assert!(!ss_listening(udp, Some(POD_ADDR), 53));
        assert!(ss_listening(udp, None, 53));
        let tcp = "LISTEN 0      4096       [::]:5201          [::]:*\n\
                   LISTEN 0      5      0.0.0.0:8080       0.0.0.0:*\n\
                   LISTEN 0      5     198.18.1.1:22       0.0.0.0:*";
        assert!(ss_listening(tcp, far, 5201));
        assert!(ss_listening(tcp, far, 8080));
        assert!(ss_listening(tcp, far, 22));
        assert!(!ss_listening(tcp, Some(POD_GATEWAY), 22));
        assert!(!ss_listening("", None, 1));
        assert!(!ss_listening("garbage", None, 1));
    }

    #[test]
    fn names_fit_in_limits() {
        let id = unique_id();
        // netns names are files in /run/netns; keep them short anyway
        assert!(format!("pod-{id}").len() <= 15);
        assert_eq!(sanitize("a b/c"), "a_b_c");
    }

    #[test]
    fn proc_logs_and_stops() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo started; echo err >&2; exec sleep 1000"]);
        let mut p = Proc::spawn("sleeper", c).unwrap();
        wait_until("log", Duration::from_secs(5), || {
            Ok(p.log().contains("err"))
        })
        .unwrap();
        assert!(p.log().contains("started"));
        p.ensure_running().unwrap();
        let st = p.stop().unwrap();
        assert!(!st.success());
        assert!(!p.is_running());
        let e = p.ensure_running().unwrap_err();
        assert!(e.to_string().contains("started"), "{e}");
    }

    #[test]
    fn proc_wait_timeout() {
        let mut c = Command::new("sh");
        c.args(["-c", "exit 3"]);
        let mut p = Proc::spawn("exit3", c).unwrap();
        let st = p.wait_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(st.code(), Some(3));
    }
}
