//! Thousands of TCP connections from a real guest through podwire.
//!
//! The guest runs `podwire-flows` (this crate's load tool, put into its initramfs by
//! [`overlay::initrd_with`]) against `podwire-flows serve` on the far host. From the host the
//! tests watch podwire itself: its descriptors (`/proc/PID/fd`), its memory (`/proc/PID/status`)
//! and the flow count of its `SIGUSR1` status line, before, while the connections are open, and
//! after they are gone.
//!
//! - 10,000 connections open at once (each checked with an 8-byte echo): podwire has a socket
//!   and a flow for each, and little memory per flow; then every one closed with FINs both ways
//!   (or half of them with a RST from the guest), after which podwire has no flow and is back
//!   at its baseline of descriptors, and so is the far server.
//! - 3,000 connections opened, echoed and closed 32 at a time: nothing left behind either.
//!
//! The tests take a lock so that only one TCG guest runs at a time (the machine has 2 cores; the
//! guest, podwire and the far server each want one).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use podwire_perf::far;
use podwire_perf::netns::{PodTopology, Proto, FAR_HOST};
use podwire_perf::rig::{self, GuestSpec};
use podwire_perf::{util, Console, Podwire, Proc, Qemu};

/// Deadline of one step.
const T: Duration = Duration::from_secs(90);
const PORT: u16 = 7100;
const FLOWS: &str = env!("CARGO_BIN_EXE_podwire-flows");
const GUEST_FLOWS: &str = "/usr/bin/podwire-flows";
/// Descriptors podwire may open or close on its own meanwhile.
const FD_SLACK: i64 = 4;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A guest with podwire-flows on podwire, and the echo server on the far host.
struct Rig {
    // fields drop in order: the guest first, the namespaces (and what runs in them) last
    vm: Qemu,
    pw: Podwire,
    server: Proc,
    _dir: util::TempDir,
    _topo: PodTopology,
    t0: Instant,
}

impl Rig {
    fn start(name: &str) -> Rig {
        let t0 = Instant::now();
        let topo = PodTopology::create().unwrap();
        let dir = util::TempDir::new(name).unwrap();
        let addr = format!("{FAR_HOST}:{PORT}");
        let mut server = topo
            .far
            .spawn("flows-serve", &[FLOWS, "serve", &addr])
            .unwrap();
        far::wait_service(&topo.far, &mut server, Proto::Tcp, FAR_HOST, PORT).unwrap();
        let pw = rig::podwire_in(&topo, &dir, None, &[]).unwrap();
        let spec = GuestSpec {
            files: &[(GUEST_FLOWS, Path::new(FLOWS))],
            ..GuestSpec::new(name)
        };
        let (mut vm, _) =
            rig::boot_on(pw.socket(), &spec, dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
        let c = vm.console();
        // The guest's default TIME-WAIT table (2048 with 512 MiB) overflows here; a socket
        // that does not fit is forgotten at once and answers a late FIN with a RST. Room for
        // every connection keeps each close a plain FIN exchange.
        c.run_ok("echo 65536 > /proc/sys/net/ipv4/tcp_max_tw_buckets", T)
            .unwrap();
        println!(
            "{name}: guest up (boot {:.2?}) and leased at {:.2?}",
            vm.boot_time().unwrap_or_default(),
            t0.elapsed()
        );
        Rig {
            vm,
            pw,
            server,
            _dir: dir,
            _topo: topo,
            t0,
        }
    }

    fn console(&mut self) -> &mut Console {
        self.vm.console()
    }

    /// podwire's status line, fresh: sends SIGUSR1 and waits for the line it logs.
    fn status(&mut self) -> String {
        self.pw.ensure_running().unwrap();
        let before = self.pw.log().matches("status: ").count();
        // SAFETY: kill(2) on podwire, our child.
        unsafe { libc::kill(self.pw.pid() as libc::pid_t, libc::SIGUSR1) };
        let mut line = String::new();
        util::wait_until("podwire's status line", T, || {
            let log = self.pw.log();
            if log.matches("status: ").count() <= before {
                return Ok(false);
            }
            line = log
                .lines()
                .rfind(|l| l.contains("status: "))
                .unwrap()
                .into();
            Ok(true)
        })
        .unwrap();
        line
    }

    fn flows(&mut self) -> usize {
        flows_in(&self.status())
    }

    /// Waits until podwire has no flows and its descriptors are back at `baseline`; returns
    /// the last status line.
    fn wait_all_gone(&mut self, baseline: usize) -> String {
        let mut last = (String::new(), 0);
        let r = util::wait_until(
            "podwire to forget every flow and close its sockets",
            T,
            || {
                let status = self.status();
                let fds = fd_count(self.pw.pid());
                let done =
                    flows_in(&status) == 0 && (fds as i64 - baseline as i64).abs() <= FD_SLACK;
                last = (status, fds);
                Ok(done)
            },
        );
        if let Err(e) = r {
            panic!(
                "{e:#}: descriptors {} (baseline {baseline}), {}",
                last.1, last.0
            );
        }
        last.0
    }

    /// The text of a guest file (its log), polled until `done` says it is complete; fails at
    /// once if podwire-flows reported an error there.
    fn wait_guest_log(&mut self, path: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let mut text = String::new();
        let c = self.vm.console();
        util::wait_until(what, T, || {
            text = c.run_ok(&format!("cat {path}"), T)?;
            if text.contains("podwire-flows:") {
                anyhow::bail!("podwire-flows failed in the guest:\n{text}");
            }
            Ok(done(&text))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{path} so far:\n{text}"));
        text
    }
}

/// A status line without the log's timestamp and level.
fn status_of(line: &str) -> &str {
    line.split_once("status: ").map_or(line, |(_, s)| s)
}

/// A counter of the status line (0 when absent: only non-zero counters are listed).
fn counter(status: &str, name: &str) -> u64 {
    status
        .split(|c: char| c.is_whitespace() || c == ';')
        .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
        .map_or(0, |n| n.parse().unwrap())
}

fn flows_in(status: &str) -> usize {
    status
        .split(|c: char| c.is_whitespace() || c == ';')
        .find_map(|t| t.strip_prefix("flows="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no flows= in {status:?}"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // the fields after the command name, which is in parentheses: utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after ") "
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((f[0] + f[1]) * 1000 / hz)
}

/// One `/proc/PID/status` field in KiB ("VmRSS", "VmHWM", "RssAnon", ...).
fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

#[derive(Debug, Clone, Copy)]
struct Mem {
    rss: u64,
    hwm: u64,
    anon: u64,
    shmem: u64,
}

impl Mem {
    fn of(pid: u32) -> Mem {
        Mem {
            rss: status_kib(pid, "VmRSS"),
            hwm: status_kib(pid, "VmHWM"),
            anon: status_kib(pid, "RssAnon"),
            shmem: status_kib(pid, "RssShmem"),
        }
    }
}

fn per_flow(kib_delta: i64, n: usize) -> String {
    format!("{:.0} B/flow", kib_delta as f64 * 1024.0 / n as f64)
}

/// Opens `N` connections from the guest and holds them; then closes them all with FINs, or
/// every second one with a RST (`rst_half`).
fn hold(name: &str, rst_half: bool) {
    const N: usize = 10_000;
    let _serial = serial();
    let mut rig = Rig::start(name);
    let pid = rig.pw.pid();
    let server_pid = rig.server.pid();
    assert_eq!(rig.flows(), 0, "no flows before the test");
    let fds0 = fd_count(pid);
    let server_fds0 = fd_count(server_pid);
    let mem0 = Mem::of(pid);
    let cpu0 = cpu_time(pid);

    // podwire-flows holds the connections until a line arrives on its stdin: a FIFO, opened
    // read-write so that opening it does not wait for a writer. It runs as an orphan (started
    // from a subshell that exits at once), not as a job of the console's shell: the guest's
    // interactive ash exits, and is respawned by /init, when a background job of its own ends
    // while it waits for input, and a command typed meanwhile can be lost.
    rig.console()
        .run_ok("mkfifo /tmp/go && : >/tmp/hold.log", T)
        .unwrap();
    let t_open = Instant::now();
    rig.console()
        .run_ok(
            &format!(
                "( ({GUEST_FLOWS} hold {FAR_HOST}:{PORT} {N} {}; echo \"exit=$?\") \
                 <>/tmp/go >/tmp/hold.log 2>&1 & )",
                if rst_half { "--rst-half" } else { "" }
            ),
            T,
        )
        .unwrap();
    let established = format!("established {N}");
    let log = rig.wait_guest_log("/tmp/hold.log", "every connection up", |t| {
        t.contains(&established) || t.contains("exit=")
    });
    assert!(log.contains(&established), "{log}");
    let open_time = t_open.elapsed();

    let status = rig.status();
    let fds1 = fd_count(pid);
    let server_fds1 = fd_count(server_pid);
    let mem1 = Mem::of(pid);
    let cpu1 = cpu_time(pid);
    let kib = |a: u64, b: u64| b as i64 - a as i64;
    println!(
        "open: {N} connections up and echoed in {open_time:.2?} (guest: {:?}); podwire CPU \
         {:.2?}",
        log.trim(),
        cpu1 - cpu0
    );
    println!("open: podwire {}", status_of(&status));
    println!(
        "open: descriptors: podwire {fds0} -> {fds1} ({:+}), far server {server_fds0} -> \
         {server_fds1} ({:+})",
        fds1 as i64 - fds0 as i64,
        server_fds1 as i64 - server_fds0 as i64
    );
    println!(
        "open: podwire memory: RssAnon {} -> {} KiB ({}), VmRSS {} -> {} KiB ({}), VmHWM {} -> \
         {} KiB ({}); of VmRSS, RssShmem (guest RAM podwire has touched) {} -> {} KiB",
        mem0.anon,
        mem1.anon,
        per_flow(kib(mem0.anon, mem1.anon), N),
        mem0.rss,
        mem1.rss,
        per_flow(kib(mem0.rss, mem1.rss), N),
        mem0.hwm,
        mem1.hwm,
        per_flow(kib(mem0.hwm, mem1.hwm), N),
        mem0.shmem,
        mem1.shmem,
    );
    assert_eq!(flows_in(&status), N, "{status}");
    assert!(
        fds1 >= fds0 + N,
        "podwire has a socket per flow: {fds0} -> {fds1}"
    );
    assert!(
        server_fds1 >= server_fds0 + N,
        "the far server has every connection: {server_fds0} -> {server_fds1}"
    );
    let anon = kib(mem0.anon, mem1.anon);
    assert!(
        anon < 16 * N as i64,
        "podwire's user memory per flow: {}",
        per_flow(anon, N)
    );

    // Release: each connection sends a FIN and waits for the far server's to come back (or,
    // every second one with --rst-half, is closed with a RST).
    let t_close = Instant::now();
    rig.console().run_ok("echo > /tmp/go", T).unwrap();
    let log = rig.wait_guest_log("/tmp/hold.log", "every connection closed", |t| {
        t.contains("exit=")
    });
    assert!(
        log.contains(&format!("closed {N}")) && log.contains("exit=0"),
        "{log}"
    );
    let guest_closed = t_close.elapsed();
    let status = rig.wait_all_gone(fds0);
    let gone = t_close.elapsed();
    util::wait_until("the far server to close its side", T, || {
        Ok(fd_count(server_pid) <= server_fds0)
    })
    .unwrap();
    let mem2 = Mem::of(pid);
    let cpu2 = cpu_time(pid);
    println!(
        "close ({}): the guest had closed every connection after {guest_closed:.2?}; podwire \
         had no flow and its descriptors back at baseline after {gone:.2?}; podwire CPU {:.2?}",
        if rst_half {
            "half with FINs both ways, half with a RST"
        } else {
            "FINs both ways"
        },
        cpu2 - cpu1
    );
    println!("close: podwire {}", status_of(&status));
    println!(
        "close: descriptors: podwire {} (baseline {fds0}), far server {} (baseline \
         {server_fds0}); podwire memory: RssAnon {} KiB, VmRSS {} KiB, VmHWM {} KiB",
        fd_count(pid),
        fd_count(server_pid),
        mem2.anon,
        mem2.rss,
        mem2.hwm
    );
    let resets = counter(&status, "tcp_rst_from_guest");
    assert_eq!(
        resets,
        if rst_half { N as u64 / 2 } else { 0 },
        "guest RSTs: {status}"
    );
    assert_eq!(counter(&status, "tcp_closed"), N as u64, "{status}");
    println!("total {:.2?}", rig.t0.elapsed());
    rig.pw.ensure_running().unwrap();
    rig.vm.poweroff(T).unwrap();
}

#[test]
fn ten_thousand_concurrent_flows_from_a_real_guest() {
    hold("e2e-flows-hold", false);
}

#[test]
fn ten_thousand_flows_half_of_them_reset_by_the_guest() {
    hold("e2e-flows-rst", true);
}

#[test]
fn connection_churn_from_a_real_guest_leaves_nothing_behind() {
    const N: usize = 3_000;
    let _serial = serial();
    let mut rig = Rig::start("e2e-flows-churn");
    let pid = rig.pw.pid();
    let server_pid = rig.server.pid();
    assert_eq!(rig.flows(), 0, "no flows before the test");
    let fds0 = fd_count(pid);
    let server_fds0 = fd_count(server_pid);
    let mem0 = Mem::of(pid);
    let cpu0 = cpu_time(pid);

    let t = Instant::now();
    let out = rig
        .console()
        .run_ok(
            &format!("{GUEST_FLOWS} churn {FAR_HOST}:{PORT} {N} --parallel 32 2>&1"),
            T,
        )
        .unwrap();
    let churned = t.elapsed();
    assert!(out.contains(&format!("churned {N}")), "{out}");
    let status = rig.wait_all_gone(fds0);
    let gone = t.elapsed();
    util::wait_until("the far server to close every connection", T, || {
        Ok(fd_count(server_pid) <= server_fds0)
    })
    .unwrap();
    let mem1 = Mem::of(pid);
    println!(
        "churn: {N} connections in {churned:.2?} (guest: {:?}); podwire had no flow and its \
         descriptors back at baseline after {gone:.2?}; podwire CPU {:.2?}",
        out.trim(),
        cpu_time(pid) - cpu0
    );
    println!("churn: podwire {}", status_of(&status));
    println!(
        "churn: descriptors: podwire {} (baseline {fds0}), far server {} (baseline \
         {server_fds0}); podwire memory: RssAnon {} -> {} KiB, VmRSS {} -> {} KiB, VmHWM {} -> \
         {} KiB",
        fd_count(pid),
        fd_count(server_pid),
        mem0.anon,
        mem1.anon,
        mem0.rss,
        mem1.rss,
        mem0.hwm,
        mem1.hwm
    );
    assert_eq!(
        counter(&status, "tcp_opened_by_guest"),
        N as u64,
        "one flow per connection: {status}"
    );
    assert_eq!(counter(&status, "tcp_closed"), N as u64, "{status}");
    assert_eq!(counter(&status, "tcp_rst_from_guest"), 0, "{status}");
    println!("total {:.2?}", rig.t0.elapsed());
    rig.pw.ensure_running().unwrap();
    rig.vm.poweroff(T).unwrap();
}
