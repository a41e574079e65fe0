//! Where a backend's microseconds go in one request/response, from the kernel's own record of
//! the system calls of the backend's threads and of our frontend.
//!
//! [`Trace`] holds a private ftrace instance (`/sys/kernel/tracing/instances/...`, so other
//! tracing on the machine is untouched) with the `raw_syscalls` enter/exit events, filtered to
//! the calls that matter (read, write, poll, epoll_wait/epoll_pwait, send*/recv*) and to the
//! threads of two processes, stamped with `trace_clock=mono` (µs resolution in the text
//! output). Nothing in the backend changes and nothing is traced when it is not asked for; when
//! on, each traced call costs the kernel about a microsecond, so a breakdown run's totals are a
//! little above an untraced run's.
//!
//! [`analyze`] walks the events in time order with one transaction in flight at a time (which
//! ping-pong guarantees) and cuts it into segments:
//!
//! | segment | from → to |
//! |---|---|
//! | `kick→wake` | frontend's write to the TX kick eventfd → backend's epoll_wait returns |
//! | `wake→send` | → backend's first send/sendmsg/sendmmsg/sendto starts (ring pop, parse, NAT) |
//! | `send` | the send call itself |
//! | `far` | send returns → the backend's epoll_wait returns before its receive (network, echo server, wake-up) |
//! | `wake→recv` | → the receive call starts |
//! | `recv` | the receive call itself |
//! | `recv→irq` | → the backend's first eventfd write after it (frame into the RX ring, used ring) |
//! | `irq→frontend` | that write starts → the frontend's poll returns |
//! | `total` | kick → the frontend's poll returns |
//!
//! A transaction whose events do not follow this order (a suppressed kick, the TCP delayed-ACK
//! timer's extra frame in between, an event lost in an overrun) is counted as skipped.
//!
//! A second instance records every `sched_switch` and `sched_process_fork` of the machine (the
//! far host's echo server starts a thread per connection). [`runs`] counts, per party and
//! transaction, how often it ran and how often the CPU it got had been idle — a wake-up that found its CPU
//! asleep, which on a VM without guest halt-polling is a halt and an inter-processor interrupt,
//! the dearest kind — and on which CPUs it ran. That is what decides whether a round trip is
//! fast on a machine with few CPUs, and it is measured rather than guessed.

use crate::util;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// x86_64 system call numbers the analysis looks at.
mod nr {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const POLL: u32 = 7;
    pub const SENDTO: u32 = 44;
    pub const RECVFROM: u32 = 45;
    pub const SENDMSG: u32 = 46;
    pub const RECVMSG: u32 = 47;
    pub const EPOLL_WAIT: u32 = 232;
    pub const PPOLL: u32 = 271;
    pub const EPOLL_PWAIT: u32 = 281;
    pub const RECVMMSG: u32 = 299;
    pub const SENDMMSG: u32 = 307;
    pub const EPOLL_PWAIT2: u32 = 441;
    pub const ALL: [u32; 13] = [
        READ,
        WRITE,
        POLL,
        SENDTO,
        RECVFROM,
        SENDMSG,
        RECVMSG,
        EPOLL_WAIT,
        PPOLL,
        EPOLL_PWAIT,
        RECVMMSG,
        SENDMMSG,
        EPOLL_PWAIT2,
    ];
}

const TRACING: &str = "/sys/kernel/tracing";

/// One syscall event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub ts_us: f64,
    pub tid: u32,
    pub enter: bool,
    pub nr: u32,
    /// First argument (enter) or return value (exit).
    pub arg: i64,
}

/// Parses one line of ftrace's text output for `raw_syscalls` events.
pub fn parse_line(line: &str) -> Option<Event> {
    let (head, rest) = line.split_once(": sys_")?;
    let enter = rest.starts_with("enter");
    if !enter && !rest.starts_with("exit") {
        return None;
    }
    // head: "  comm-TID  [CPU] FLAGS  SECONDS.MICROS"
    let ts_us = head.split_whitespace().last()?.parse::<f64>().ok()? * 1e6;
    let before_cpu = head.split(" [").next()?.trim_end();
    let tid = before_cpu.rsplit('-').next()?.parse().ok()?;
    let rest = rest.split_once("NR ")?.1;
    let (nr_s, tail) = rest.split_once(' ')?;
    let nr = nr_s.parse().ok()?;
    let arg = if enter {
        let a = tail.trim_start_matches('(');
        let a = a.split([',', ')']).next()?.trim();
        i64::from_str_radix(a, 16).ok()?
    } else {
        tail.trim_start_matches("= ").trim().parse().ok()?
    };
    Some(Event {
        ts_us,
        tid,
        enter,
        nr,
        arg,
    })
}

/// One `sched_switch` event: on `cpu`, `prev` stopped running and `next` started (pid 0 is the
/// idle task).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Switch {
    pub cpu: u32,
    pub prev: u32,
    pub next: u32,
}

/// The number after ` name=` in an event's fields (each field but the first follows a space,
/// so ` pid=` is not found inside `child_pid=`).
fn field(fields: &str, name: &str) -> Option<u32> {
    let key = format!(" {name}=");
    let at = fields.find(&key)? + key.len();
    fields[at..].split_whitespace().next()?.parse().ok()
}

/// Parses one line of ftrace's text output for a `sched_switch` event.
pub fn parse_switch(line: &str) -> Option<Switch> {
    let (head, fields) = line.split_once(": sched_switch: ")?;
    let cpu = head.split_once(" [")?.1.split(']').next()?.parse().ok()?;
    Some(Switch {
        cpu,
        prev: field(fields, "prev_pid")?,
        next: field(fields, "next_pid")?,
    })
}

/// Parses one line of ftrace's text output for a `sched_process_fork` event: (parent, child).
pub fn parse_fork(line: &str) -> Option<(u32, u32)> {
    let fields = line.split_once(": sched_process_fork: ")?.1;
    Some((field(fields, "pid")?, field(fields, "child_pid")?))
}

/// How one party was scheduled over a turn.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Runs {
    /// Times it ran (counted when it stopped), per transaction.
    pub per_transaction: f64,
    /// Of those, the times its CPU had been idle (it was woken on a sleeping CPU).
    pub after_idle_per_transaction: f64,
    /// Share of its runs on each CPU.
    pub cpu_share: BTreeMap<u32, f64>,
}

/// The three parties' scheduling over a turn.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Scheduling {
    pub frontend: Runs,
    pub backend: Runs,
    /// The echo server and the threads it started.
    pub far: Runs,
}

/// Counts each party's runs (see the module comment) over `transactions`. The far host
/// is `far_tids` and every thread they started during the trace (`forks`); other tasks of the
/// machine are not counted.
pub fn runs(
    recorded: &Recorded,
    frontend_tid: u32,
    backend_tids: &HashSet<u32>,
    far_tids: &[u32],
    transactions: u64,
) -> Scheduling {
    #[derive(Default)]
    struct Count {
        runs: u64,
        after_idle: u64,
        cpus: BTreeMap<u32, u64>,
    }
    let mut far: HashSet<u32> = far_tids.iter().copied().collect();
    for &(parent, child) in &recorded.forks {
        if far.contains(&parent) {
            far.insert(child);
        }
    }
    let party_of = |tid: u32| {
        if tid == frontend_tid {
            Some(0)
        } else if backend_tids.contains(&tid) {
            Some(1)
        } else if far.contains(&tid) {
            Some(2)
        } else {
            None
        }
    };
    // A run is counted when it ends (the switch-out is recorded on every CPU; on this VM the
    // idle task's switch-outs are missing on one). It began after idle if the CPU's previous
    // event switched to it from the idle task, or switched to the idle task itself.
    let mut last_on_cpu: HashMap<u32, Switch> = HashMap::new();
    let mut by_party: [Count; 3] = Default::default();
    for sw in &recorded.switches {
        if let Some(party) = party_of(sw.prev) {
            let after_idle = match last_on_cpu.get(&sw.cpu) {
                Some(before) if before.next == sw.prev => before.prev == 0,
                Some(before) => before.next == 0,
                None => false,
            };
            let c = &mut by_party[party];
            c.runs += 1;
            c.after_idle += u64::from(after_idle);
            *c.cpus.entry(sw.cpu).or_default() += 1;
        }
        last_on_cpu.insert(sw.cpu, *sw);
    }
    let n = transactions.max(1) as f64;
    let [f, b, x] = by_party.map(|c| Runs {
        per_transaction: c.runs as f64 / n,
        after_idle_per_transaction: c.after_idle as f64 / n,
        cpu_share: c
            .cpus
            .iter()
            .map(|(&cpu, &k)| (cpu, k as f64 / c.runs.max(1) as f64))
            .collect(),
    });
    Scheduling {
        frontend: f,
        backend: b,
        far: x,
    }
}

/// One private ftrace instance (`/sys/kernel/tracing/instances/podwire-*`), removed on drop.
struct Instance {
    dir: PathBuf,
}

impl Instance {
    fn new() -> Result<Instance> {
        if !Path::new(TRACING).join("instances").is_dir() {
            util::run(&["mount", "-t", "tracefs", "nodev", TRACING]).context("mounting tracefs")?;
        }
        let dir = Path::new(TRACING)
            .join("instances")
            .join(format!("podwire-{}", util::unique_id()));
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let i = Instance { dir };
        i.write("trace_clock", "mono")?;
        i.write("buffer_size_kb", "32768")?;
        Ok(i)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let p = self.dir.join(file);
        std::fs::write(&p, value).with_context(|| format!("writing {value:?} to {}", p.display()))
    }

    /// Stops recording; the text, and whether the buffer overran.
    fn stop(&self) -> Result<(String, bool)> {
        self.write("tracing_on", "0")?;
        let text = std::fs::read_to_string(self.dir.join("trace"))?;
        let overrun = text
            .lines()
            .any(|l| l.contains("LOST") && l.contains("EVENTS"));
        Ok((text, overrun))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("tracing_on"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The system calls of some threads (one instance, filtered by pid) and every context switch
/// and thread start of the machine (another, unfiltered: the kernel's pid filter drops some
/// switches from the idle task here, exactly the ones [`runs`] needs).
pub struct Trace {
    calls: Instance,
    sched: Instance,
}

/// What a [`Trace`] recorded.
pub struct Recorded {
    pub calls: Vec<Event>,
    pub switches: Vec<Switch>,
    /// (parent, child) thread ids of every thread or process started.
    pub forks: Vec<(u32, u32)>,
    /// Whether either buffer overran.
    pub overrun: bool,
}

impl Trace {
    /// Starts recording the listed threads' calls and the machine's context switches (mounting
    /// tracefs if it is not mounted).
    pub fn start(tids: &[u32]) -> Result<Trace> {
        let calls = Instance::new()?;
        let pids: Vec<String> = tids.iter().map(u32::to_string).collect();
        calls.write("set_event_pid", &pids.join(" "))?;
        let filter = nr::ALL
            .iter()
            .map(|n| format!("id == {n}"))
            .collect::<Vec<_>>()
            .join(" || ");
        for ev in ["sys_enter", "sys_exit"] {
            calls.write(&format!("events/raw_syscalls/{ev}/filter"), &filter)?;
            calls.write(&format!("events/raw_syscalls/{ev}/enable"), "1")?;
        }
        let sched = Instance::new()?;
        sched.write("events/sched/sched_switch/enable", "1")?;
        sched.write("events/sched/sched_process_fork/enable", "1")?;
        calls.write("tracing_on", "1")?;
        sched.write("tracing_on", "1")?;
        Ok(Trace { calls, sched })
    }

    /// Stops recording and returns what was recorded.
    pub fn stop(self) -> Result<Recorded> {
        let (calls, calls_overrun) = self.calls.stop()?;
        let (sched, sched_overrun) = self.sched.stop()?;
        // for looking at a trace by hand
        if let Some(p) = std::env::var_os("PODWIRE_BREAKDOWN_DUMP") {
            let _ = std::fs::write(&p, format!("{calls}\n{sched}"));
        }
        Ok(Recorded {
            calls: calls.lines().filter_map(parse_line).collect(),
            switches: sched.lines().filter_map(parse_switch).collect(),
            forks: sched.lines().filter_map(parse_fork).collect(),
            overrun: calls_overrun || sched_overrun,
        })
    }
}

/// The threads of a process.
pub fn threads(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What kind of file each of a process's fds is ("eventfd", "socket", ...).
pub fn fd_kinds(pid: u32) -> HashMap<i64, String> {
    let mut m = HashMap::new();
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in d.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Ok(t) = std::fs::read_link(e.path()) {
                let t = t.to_string_lossy();
                let kind = if t.starts_with("socket:") {
                    "socket"
                } else if t.contains("eventfd") {
                    "eventfd"
                } else if t.contains("timerfd") {
                    "timerfd"
                } else {
                    "other"
                };
                m.insert(fd, kind.to_string());
            }
        }
    }
    m
}

/// The two sides' identities in a trace.
pub struct Sides<'a> {
    pub backend_tids: &'a HashSet<u32>,
    pub backend_fds: &'a HashMap<i64, String>,
    pub frontend_tid: u32,
    pub kick_fd: i64,
}

pub const SEGMENTS: [&str; 9] = [
    "kick→wake",
    "wake→send",
    "send",
    "far",
    "wake→recv",
    "recv",
    "recv→irq",
    "irq→frontend",
    "total",
];

/// Median and mean of each segment over the transactions that parsed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Breakdown {
    pub transactions: usize,
    pub skipped: usize,
    pub overrun: bool,
    /// segment → (median µs, mean µs)
    pub segments: BTreeMap<String, (f64, f64)>,
    /// Filled in by the caller from the same trace ([`runs`]).
    pub scheduling: Option<Scheduling>,
}

#[derive(Default)]
struct Txn {
    kick: Option<f64>,
    wake: Option<f64>,
    send_enter: Option<f64>,
    send_exit: Option<f64>,
    last_wake: Option<f64>,
    recv_enter: Option<f64>,
    recv_exit: Option<f64>,
    irq: Option<f64>,
}

impl Txn {
    fn segments(&self, frontend_wake: f64) -> Option<[f64; 9]> {
        let k = self.kick?;
        let w = self.wake?;
        let se = self.send_enter?;
        let sx = self.send_exit?;
        let lw = self.last_wake?;
        let re = self.recv_enter?;
        let rx = self.recv_exit?;
        let i = self.irq?;
        Some([
            w - k,
            se - w,
            sx - se,
            lw - sx,
            re - lw,
            rx - re,
            i - rx,
            frontend_wake - i,
            frontend_wake - k,
        ])
    }
}

/// Socket calls only (a TCP socket may be closed before its fd could be looked at, so sockets
/// are recognised by the call, eventfds by the fd).
fn is_send(nr: u32) -> bool {
    matches!(nr, nr::SENDTO | nr::SENDMSG | nr::SENDMMSG)
}
fn is_recv(nr: u32) -> bool {
    matches!(nr, nr::RECVFROM | nr::RECVMSG | nr::RECVMMSG)
}
fn is_wait(nr: u32) -> bool {
    matches!(nr, nr::EPOLL_WAIT | nr::EPOLL_PWAIT | nr::EPOLL_PWAIT2)
}

/// Cuts the trace into transactions and segments (see the module comment).
pub fn analyze(events: &[Event], sides: &Sides, overrun: bool) -> Breakdown {
    let mut per_seg: Vec<Vec<f64>> = vec![Vec::new(); SEGMENTS.len()];
    let mut skipped = 0;
    let mut cur: Option<Txn> = None;
    // the fd of each thread's call in progress (exit events carry only the return value)
    let mut pending: HashMap<u32, (u32, i64)> = HashMap::new();
    let kind = |fd: i64| sides.backend_fds.get(&fd).map(String::as_str);
    for e in events {
        let fd = if e.enter {
            pending.insert(e.tid, (e.nr, e.arg));
            e.arg
        } else {
            // a call entered before the trace started has no known fd: waits need none
            match pending.remove(&e.tid) {
                Some((n, fd)) if n == e.nr => fd,
                _ => -1,
            }
        };
        if e.tid == sides.frontend_tid {
            if e.enter && e.nr == nr::WRITE && fd == sides.kick_fd {
                if cur.is_some() {
                    skipped += 1;
                }
                cur = Some(Txn {
                    kick: Some(e.ts_us),
                    ..Txn::default()
                });
            } else if !e.enter && matches!(e.nr, nr::POLL | nr::PPOLL) {
                if let Some(t) = &cur {
                    if t.irq.is_some() {
                        match t.segments(e.ts_us) {
                            Some(s) => s.iter().zip(&mut per_seg).for_each(|(v, d)| d.push(*v)),
                            None => skipped += 1,
                        }
                        cur = None;
                    }
                }
            }
            continue;
        }
        if !sides.backend_tids.contains(&e.tid) {
            continue;
        }
        let Some(t) = cur.as_mut() else { continue };
        if !e.enter && is_wait(e.nr) {
            if t.wake.is_none() {
                t.wake = Some(e.ts_us);
            } else if t.send_exit.is_some() && t.recv_enter.is_none() {
                t.last_wake = Some(e.ts_us);
            }
        } else if is_send(e.nr) && t.send_exit.is_none() {
            if e.enter && t.wake.is_some() {
                t.send_enter = Some(e.ts_us);
            } else if !e.enter && t.send_enter.is_some() {
                t.send_exit = Some(e.ts_us);
            }
        } else if is_recv(e.nr) && t.last_wake.is_some() {
            if e.enter && t.recv_enter.is_none() {
                t.recv_enter = Some(e.ts_us);
            } else if !e.enter && e.arg > 0 && t.recv_exit.is_none() {
                t.recv_exit = Some(e.ts_us);
            }
        } else if e.enter
            && e.nr == nr::WRITE
            && kind(fd) == Some("eventfd")
            && t.recv_exit.is_some()
            && t.irq.is_none()
        {
            t.irq = Some(e.ts_us);
        }
    }
    let mut segments = BTreeMap::new();
    for (name, mut v) in SEGMENTS.iter().zip(per_seg.clone()) {
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied().unwrap_or(0.0);
        let mean = if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        segments.insert(name.to_string(), (median, mean));
    }
    Breakdown {
        transactions: per_seg[0].len(),
        skipped,
        overrun,
        segments,
        scheduling: None,
    }
}

/// A Markdown table of breakdowns (one column per label).
pub fn table(columns: &[(String, &Breakdown)]) -> String {
    let mut s = String::from("| segment (median / mean µs) |");
    for (label, _) in columns {
        s.push_str(&format!(" {label} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(columns.len()));
    s.push('\n');
    for seg in SEGMENTS {
        s.push_str(&format!("| {seg} |"));
        for (_, b) in columns {
            let (m, a) = b.segments.get(seg).copied().unwrap_or_default();
            s.push_str(&format!(" {m:.0} / {a:.1} |"));
        }
        s.push('\n');
    }
    s.push_str("| transactions parsed / skipped |");
    for (_, b) in columns {
        s.push_str(&format!(" {} / {} |", b.transactions, b.skipped));
    }
    s.push('\n');
    type Party = fn(&Scheduling) -> &Runs;
    let parties: [(&str, Party); 3] = [
        ("frontend", |x| &x.frontend),
        ("backend", |x| &x.backend),
        ("far host", |x| &x.far),
    ];
    for (name, party) in parties {
        s.push_str(&format!(
            "| {name}: runs / after idle per transaction; CPUs |"
        ));
        for (_, b) in columns {
            match &b.scheduling {
                Some(x) => {
                    let r = party(x);
                    let cpus: Vec<String> = r
                        .cpu_share
                        .iter()
                        .map(|(c, f)| format!("{c}: {:.0} %", f * 100.0))
                        .collect();
                    s.push_str(&format!(
                        " {:.2} / {:.2}; {} |",
                        r.per_transaction,
                        r.after_idle_per_transaction,
                        cpus.join(", ")
                    ));
                }
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ftrace_lines() {
        let e = parse_line(
            "   podwire-pingp-4242    [001] .....  1234.567890: sys_enter: NR 1 (5, 7ffd1234, 8, 0, 0, 0)",
        )
        .unwrap();
        assert_eq!((e.tid, e.enter, e.nr, e.arg), (4242, true, 1, 5));
        assert!((e.ts_us - 1_234_567_890.0).abs() < 1.0);
        let x =
            parse_line("  vhost worker-77 [000] d..1. 10.000001: sys_exit: NR 232 = 1").unwrap();
        assert_eq!((x.tid, x.enter, x.nr, x.arg), (77, false, 232, 1));
        assert_eq!(
            parse_line(" x-1 [000] ..... 1.0: sys_exit: NR 0 = -11")
                .unwrap()
                .arg,
            -11
        );
        assert!(parse_line("# tracer: nop").is_none());
    }

    #[test]
    fn parses_sched_switch_lines() {
        let sw = parse_switch(
            "          <idle>-0       [001] d..2.   123.456789: sched_switch: prev_comm=swapper/1 \
             prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=vring_worker next_pid=77 \
             next_prio=120",
        )
        .unwrap();
        assert_eq!(
            sw,
            Switch {
                cpu: 1,
                prev: 0,
                next: 77
            }
        );
        assert!(parse_switch(" x-1 [000] ..... 1.0: sys_exit: NR 0 = -11").is_none());
    }

    #[test]
    fn parses_fork_lines() {
        assert_eq!(
            parse_fork(
                " podwire-pingpon-11669 [000] ..... 1.0: sched_process_fork: \
                 comm=podwire-pingpon pid=11669 child_comm=podwire-pingpon child_pid=11700"
            ),
            Some((11669, 11700))
        );
    }

    /// Switch-ins are counted per party; those right after the idle task count as woken on an
    /// idle CPU; a thread the echo server starts is the far host's, other tasks no one's.
    #[test]
    fn runs_per_party() {
        let (fe, be, echo, conn, other) = (1, 2, 3, 4, 5);
        let sw = |cpu, prev, next| Switch { cpu, prev, next };
        let recorded = Recorded {
            calls: Vec::new(),
            switches: vec![
                sw(1, 0, be),     // kick wakes the backend on idle CPU 1
                sw(0, 0, conn),   // the request wakes the echo thread on idle CPU 0
                sw(0, conn, fe),  // the answer finds CPU 0 busy with the echo server
                sw(1, be, 0),     // the backend sleeps: a run after idle
                sw(0, fe, 0),     // the frontend sleeps: a run, not after idle
                sw(1, be, other), // switched in from idle unrecorded, then out: after idle
                sw(1, other, 0),  // not a party
                sw(0, 0, conn),
                sw(0, conn, 0), // the echo thread: after idle, twice
            ],
            forks: vec![(echo, conn)],
            overrun: false,
        };
        let tids: HashSet<u32> = [be].into();
        let r = runs(&recorded, fe, &tids, &[echo], 1);
        let counts = |r: &Runs| (r.per_transaction, r.after_idle_per_transaction);
        assert_eq!(counts(&r.backend), (2.0, 2.0));
        assert_eq!(counts(&r.frontend), (1.0, 0.0));
        assert_eq!(counts(&r.far), (2.0, 2.0));
        assert_eq!(r.backend.cpu_share, [(1, 1.0)].into());
    }

    fn ev(ts: f64, tid: u32, enter: bool, nr: u32, arg: i64) -> Event {
        Event {
            ts_us: ts,
            tid,
            enter,
            nr,
            arg,
        }
    }

    /// One synthetic transaction cut into its segments; an unrelated process is ignored.
    #[test]
    fn segments_one_transaction() {
        let (fe, be) = (1, 2);
        let evs = vec![
            ev(0.0, fe, true, nr::WRITE, 10), // kick
            ev(1.0, fe, false, nr::WRITE, 8),
            ev(2.0, fe, true, nr::POLL, 0),
            ev(5.0, be, false, nr::EPOLL_WAIT, 1), // wake (enter before the trace)
            ev(6.0, 99, true, nr::SENDMSG, 3),     // another process
            ev(8.0, be, true, nr::SENDMSG, 20),
            ev(12.0, be, false, nr::SENDMSG, 1),
            ev(13.0, be, true, nr::EPOLL_WAIT, 4),
            ev(40.0, be, false, nr::EPOLL_WAIT, 1), // socket readable
            ev(41.0, be, true, nr::RECVMMSG, 20),
            ev(44.0, be, false, nr::RECVMMSG, 1),
            ev(50.0, be, true, nr::WRITE, 30), // interrupt
            ev(51.0, be, false, nr::WRITE, 8),
            ev(60.0, fe, false, nr::POLL, 1),
        ];
        let tids: HashSet<u32> = [be].into();
        let fds: HashMap<i64, String> =
            [(20, "socket".to_string()), (30, "eventfd".to_string())].into();
        let b = analyze(
            &evs,
            &Sides {
                backend_tids: &tids,
                backend_fds: &fds,
                frontend_tid: fe,
                kick_fd: 10,
            },
            false,
        );
        assert_eq!((b.transactions, b.skipped), (1, 0));
        let seg = |s: &str| b.segments[s].0;
        assert_eq!(seg("kick→wake"), 5.0);
        assert_eq!(seg("wake→send"), 3.0);
        assert_eq!(seg("send"), 4.0);
        assert_eq!(seg("far"), 28.0);
        assert_eq!(seg("wake→recv"), 1.0);
        assert_eq!(seg("recv"), 3.0);
        assert_eq!(seg("recv→irq"), 6.0);
        assert_eq!(seg("irq→frontend"), 10.0);
        assert_eq!(seg("total"), 60.0);
        assert!(table(&[("podwire UDP".into(), &b)]).contains("| far | 28 / 28.0 |"));
    }
}
