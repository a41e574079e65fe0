//! podwire's benchmark suite: podwire and the kernel path of KubeVirt's masquerade binding,
//! measured side by side in one run.
//!
//! ```text
//! target/release/podwire-bench [--seconds N] [--quick] [--only tcp,pktgen,testpmd,latency]
//!                              [--backends podwire,kernel] [--out docs/perf.md]
//!                              [--plots docs/perf] [--quiet-wait S]
//! ```
//!
//! Two backends serve the same QEMU/TCG test guest (1 vCPU, 512 MiB):
//!
//! - **podwire**: `podwire --guest-cidr 198.19.0.0/24 --mtu M` in the pod namespace, the guest's
//!   virtio-net on its vhost-user socket;
//! - **kernel path**: tap0 + Linux bridge br0 (198.19.0.1/24) + nftables masquerade out of the
//!   pod's eth0 + dnsmasq DHCP on br0, QEMU's own virtio-net on the tap (`vhost=off`), QEMU in
//!   the pod namespace (see `podwire_perf::bench::kernel_path`).
//!
//! In both the guest gets 198.19.0.2/24 by DHCP (busybox udhcpc) and reaches the far host
//! 198.18.1.1 through the pod's eth0 (a veth whose MTU is the guest's). For each backend and
//! guest MTU (65520, 1500) one guest is booted and, in it:
//!
//! - `tcp`: iperf3 TCP guest → far and far → guest (`-R`), 1 and 4 streams (`-P`);
//! - `pktgen` (MTU 1500): Linux pktgen sends 64- and 1400-byte UDP frames from port 10009 to the
//!   far host's port 9 for N seconds (dst MAC: the gateway's, from the guest's ARP table after
//!   a ping); the far host counts what arrives with an nftables counter-and-drop rule;
//! - `latency` (MTU 1500): `ping -c 20 -i 0.2` RTT, and TCP request/response (1 byte each way,
//!   `podwire-rr rr`, put into the guest's initramfs) for N seconds.
//!
//! `testpmd` (podwire only; the kernel path has no vhost-user socket): dpdk-testpmd as a
//! virtio-user frontend (no VM) in `txonly` (64/1400-byte UDP to the far host's port 9, counted
//! there) and `rxonly` (a UDP flood from the far host to the pod's port 9000, forwarded by
//! `podwire -u 9000`, counted by testpmd).
//!
//! Over every measured window it reads the CPU time (utime+stime, /proc/PID/stat) of podwire
//! and QEMU, and podwire's VmHWM (peak RSS). Results go between the
//! `<!-- results:begin -->` / `<!-- results:end -->` markers of the output file, and bar charts
//! (gnuplot, `pngcairo`) into the plots directory. A failed measurement is recorded as
//! `failed: <reason>`; the others still run. Needs root. This is a measurement, not a test:
//! nothing is asserted about speed (the targets table only reports met / not met).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use podwire_perf::bench::kernel_path::{self, KernelPath};
use podwire_perf::bench::pktgen::{self, PktgenJob};
use podwire_perf::bench::plot::{self, Chart, Group};
use podwire_perf::bench::testpmd::{self, Testpmd};
use podwire_perf::bench::{self, latency, MemStatus};
use podwire_perf::netns::{PodTopology, TopologyOptions, FAR_HOST, POD_ADDR};
use podwire_perf::{
    far, guest, overlay, qemu, util, GuestImage, Netns, Nic, Podwire, PodwireConfig, Proc, Qemu,
    QemuConfig,
};

/// Timeout of a console step (DHCP, reading a file).
const T: Duration = Duration::from_secs(60);
/// The guest's iperf3 output files.
const JSON_FILE: &str = "/tmp/iperf3.json";
const ERR_FILE: &str = "/tmp/iperf3.err";
/// Where podwire-rr goes in the guest.
const GUEST_RR: &str = "/usr/bin/podwire-rr";
/// The far host's request/response server port.
const RR_PORT: u16 = 7001;
/// The pod port podwire forwards to the guest (testpmd rxonly).
const FWD_UDP_PORT: u16 = 9000;

// -------------------------------------------------------------- reference ----

/// Figures from the issue (passt with vhost-user, and the kernel TAP path, measured earlier on
/// this kind of machine; not by this tool): (low, high).
mod reference {
    pub type Range = (f64, f64);
    pub const PASST_TCP_TX_65520: Range = (0.77, 0.83);
    pub const PASST_TCP_TX_1500: Range = (0.50, 0.53);
    pub const KERNEL_TCP_TX_65520: Range = (1.18, 1.18);
    pub const KERNEL_TCP_TX_1500: Range = (1.14, 1.24);
    pub const PASST_TCP_RX_65520: Range = (2.65, 2.72);
    pub const PASST_TCP_RX_1500: Range = (0.84, 0.85);
    pub const KERNEL_TCP_RX_65520: Range = (1.49, 1.65);
    pub const KERNEL_TCP_RX_1500: Range = (1.62, 1.72);
    pub const PASST_CPU_TX: Range = (1.2, 1.4);
    pub const PASST_CPU_RX: Range = (0.66, 0.69);
    pub const PASST_PKTGEN_64: Range = (38_800.0, 46_000.0);
    pub const KERNEL_PKTGEN_64: Range = (21_800.0, 22_300.0);
    pub const PASST_TXONLY_64: Range = (217_000.0, 229_000.0);
    pub const PASST_TXONLY_US_PER_PKT: Range = (4.3, 4.6);
    pub const PASST_RR: Range = (1_730.0, 2_070.0);
    pub const KERNEL_RR: Range = (1_690.0, 2_440.0);
    pub const PASST_PING_MS: Range = (1.5, 2.1);
    pub const KERNEL_PING_MS: Range = (1.5, 1.5);
    pub const PASST_RSS_IDLE_MB: f64 = 16.0;
    pub const PASST_RSS_PEAK_MB: f64 = 76.0;

    pub fn fmt(r: Range, decimals: usize) -> String {
        let f = |v: f64| super::fmt_num(Some(v), decimals);
        if r.0 == r.1 {
            f(r.0)
        } else {
            format!("{}–{}", f(r.0), f(r.1))
        }
    }
}

// ------------------------------------------------------------------ model ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Backend {
    Podwire,
    Kernel,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Podwire => "podwire",
            Backend::Kernel => "kernel path",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Test {
    Tcp {
        reverse: bool,
        mtu: u32,
        streams: u32,
    },
    Pktgen {
        size: u32,
    },
    Ping,
    Rr,
    TxOnly {
        size: u32,
    },
    RxOnly {
        size: u32,
    },
}

impl Test {
    fn label(self) -> String {
        match self {
            Test::Tcp {
                reverse,
                mtu,
                streams,
            } => format!(
                "TCP {}, MTU {mtu}, {streams} stream{}",
                if reverse {
                    "far → guest"
                } else {
                    "guest → far"
                },
                if streams == 1 { "" } else { "s" }
            ),
            Test::Pktgen { size } => format!("guest pktgen {size} B"),
            Test::Ping => "ping RTT".into(),
            Test::Rr => "TCP request/response".into(),
            Test::TxOnly { size } => format!("testpmd txonly {size} B"),
            Test::RxOnly { size } => format!("testpmd rxonly {size} B"),
        }
    }

    fn short(self) -> String {
        match self {
            Test::Tcp {
                reverse,
                mtu,
                streams,
            } => format!(
                "{} {mtu} ×{streams}",
                if reverse {
                    "far→guest"
                } else {
                    "guest→far"
                }
            ),
            Test::Pktgen { size } | Test::TxOnly { size } | Test::RxOnly { size } => {
                format!("{size} B")
            }
            Test::Ping => "ping".into(),
            Test::Rr => "RR".into(),
        }
    }
}

/// One measurement.
#[derive(Debug, Default, Clone)]
struct Figure {
    /// the headline: Gbit/s, delivered pps, ms, trans/s
    value: Option<f64>,
    /// offered rate (pktgen / testpmd / flood sent pps)
    offered: Option<f64>,
    /// packets sent and received (pktgen, testpmd)
    sent: Option<u64>,
    received: Option<u64>,
    bytes: Option<u64>,
    wall_s: Option<f64>,
    podwire_cpu_s: Option<f64>,
    qemu_cpu_s: Option<f64>,
    rest_cpu_s: Option<f64>,
    retransmits: Option<u64>,
    /// other QEMU processes on the machine at the start and the end of the window
    other_qemus: Option<(usize, usize)>,
    note: String,
    error: Option<String>,
}

impl Figure {
    fn failed(reason: String) -> Figure {
        Figure {
            error: Some(reason),
            ..Figure::default()
        }
    }

    fn ok_value(&self) -> Option<f64> {
        if self.error.is_some() {
            None
        } else {
            self.value
        }
    }

    fn loss(&self) -> Option<f64> {
        let (s, r) = (self.sent?, self.received?);
        (s > 0).then(|| 1.0 - r as f64 / s as f64)
    }

    fn s_per_gb(&self, cpu: Option<f64>) -> Option<f64> {
        bench::cpu_s_per_gb(cpu?, self.bytes?)
    }

    /// CPU microseconds per packet received at the far end (or by testpmd).
    fn us_per_pkt(&self, cpu: Option<f64>) -> Option<f64> {
        let (r, cpu) = (self.received?, cpu?);
        (r > 0).then(|| cpu * 1e6 / r as f64)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    /// podwire's VmHWM before any frontend connected
    no_guest: Option<MemStatus>,
    /// right after the guest's DHCP
    after_dhcp: Option<MemStatus>,
    /// at the end of the session
    end: Option<MemStatus>,
}

#[derive(Default)]
struct Results {
    figures: BTreeMap<(Backend, Test), Figure>,
    /// podwire's memory per session (MTU, or 0 for testpmd)
    memory: Vec<(u32, Memory)>,
    /// boot time per (backend, MTU)
    boots: Vec<(Backend, u32, f64)>,
    notes: Vec<String>,
}

impl Results {
    fn get(&self, b: Backend, t: Test) -> Option<&Figure> {
        self.figures.get(&(b, t))
    }

    fn value(&self, b: Backend, t: Test) -> Option<f64> {
        self.get(b, t).and_then(Figure::ok_value)
    }
}

// ------------------------------------------------------------------- args ----

#[derive(Debug, Clone)]
struct Args {
    seconds: u32,
    quick: bool,
    sections: Vec<String>,
    backends: Vec<Backend>,
    out: PathBuf,
    plots: PathBuf,
    quiet_wait: Duration,
    /// the command line as given (for the report)
    command: String,
}

const SECTIONS: [&str; 4] = ["tcp", "pktgen", "testpmd", "latency"];

fn usage() -> &'static str {
    "usage: podwire-bench [--seconds N] [--quick] [--only SECTIONS] [--backends LIST]\n\
     \x20                    [--out FILE] [--plots DIR] [--quiet-wait SECONDS]\n\
     \n\
     --seconds N        length of each timed run (default 10)\n\
     --quick            a short smoke run: 3 s runs, one TCP stream only\n\
     --only SECTIONS    comma-separated subset of tcp,pktgen,testpmd,latency (default all)\n\
     --backends LIST    comma-separated subset of podwire,kernel (default both)\n\
     --out FILE         Markdown file whose results block is replaced (default docs/perf.md)\n\
     --plots DIR        where the PNG charts go (default: perf/ beside --out)\n\
     --quiet-wait S     before each guest, wait up to S seconds for other QEMU guests on the\n\
     \x20                  machine to finish (default 120; 0: do not wait)"
}

fn parse_args() -> Result<Args> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut a = Args {
        seconds: 10,
        quick: false,
        sections: SECTIONS.iter().map(|s| s.to_string()).collect(),
        backends: vec![Backend::Podwire, Backend::Kernel],
        out: util::workspace_root().join("docs/perf.md"),
        plots: PathBuf::new(),
        quiet_wait: Duration::from_secs(120),
        command: std::iter::once("target/release/podwire-bench".to_string())
            .chain(raw.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut seconds_given = false;
    let abs = |p: PathBuf| -> Result<PathBuf> {
        Ok(if p.is_absolute() {
            p
        } else {
            std::env::current_dir()?.join(p)
        })
    };
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                a.seconds = value("--seconds")?
                    .parse()
                    .context("--seconds takes a whole number")?;
                if !(1..=3600).contains(&a.seconds) {
                    bail!("--seconds must be 1..=3600");
                }
                seconds_given = true;
            }
            "--quick" => a.quick = true,
            "--only" => {
                a.sections = value("--only")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                for s in &a.sections {
                    if !SECTIONS.contains(&s.as_str()) {
                        bail!("unknown section {s:?} (tcp, pktgen, testpmd, latency)");
                    }
                }
            }
            "--backends" => {
                a.backends = value("--backends")?
                    .split(',')
                    .map(|s| match s.trim() {
                        "podwire" => Ok(Backend::Podwire),
                        "kernel" => Ok(Backend::Kernel),
                        o => bail!("unknown backend {o:?} (podwire, kernel)"),
                    })
                    .collect::<Result<_>>()?;
            }
            "--out" => a.out = abs(PathBuf::from(value("--out")?))?,
            "--plots" => a.plots = abs(PathBuf::from(value("--plots")?))?,
            "--quiet-wait" => {
                a.quiet_wait = Duration::from_secs(
                    value("--quiet-wait")?
                        .parse()
                        .context("--quiet-wait takes whole seconds")?,
                );
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    if a.quick && !seconds_given {
        a.seconds = 3;
    }
    if a.plots.as_os_str().is_empty() {
        a.plots = a
            .out
            .parent()
            .map(|d| d.join("perf"))
            .unwrap_or_else(|| PathBuf::from("perf"));
    }
    Ok(a)
}

impl Args {
    fn has(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }

    fn streams(&self) -> Vec<u32> {
        if self.quick {
            vec![1]
        } else {
            vec![1, 4]
        }
    }

    /// The tests one guest of `mtu` runs.
    fn guest_tests(&self, mtu: u32) -> Vec<Test> {
        let mut v = Vec::new();
        if self.has("tcp") {
            for reverse in [false, true] {
                for &streams in &self.streams() {
                    v.push(Test::Tcp {
                        reverse,
                        mtu,
                        streams,
                    });
                }
            }
        }
        if mtu == 1500 {
            if self.has("pktgen") {
                v.extend([Test::Pktgen { size: 64 }, Test::Pktgen { size: 1400 }]);
            }
            if self.has("latency") {
                v.extend([Test::Ping, Test::Rr]);
            }
        }
        v
    }
}

// ------------------------------------------------------------------- main ----

fn main() -> Result<()> {
    let args = parse_args()?;
    util::require_root()?;
    let started = Instant::now();
    let podwire_bin = release_podwire()?;
    let rr_bin = sibling_binary("podwire-rr")?;
    let work = util::TempDir::new("bench")?;
    let mut image = guest::image().context("building the test guest")?;
    let machine = Machine::probe(&image, &podwire_bin);
    let initrd = work.join("initramfs-rr.gz");
    overlay::initrd_with(&image.initrd, &[(GUEST_RR, rr_bin.as_path())], &initrd)
        .context("adding podwire-rr to the guest's initramfs")?;
    image.initrd = initrd;
    println!(
        "podwire-bench: {} s per run; sections {}; {}",
        args.seconds,
        args.sections.join(","),
        machine.one_line()
    );

    let mut results = Results::default();
    let env = Env {
        args: &args,
        image: &image,
        podwire_bin: &podwire_bin,
        rr_bin: &rr_bin,
    };
    for mtu in [65520, 1500] {
        let tests = args.guest_tests(mtu);
        if tests.is_empty() {
            continue;
        }
        for &backend in &args.backends {
            wait_for_quiet(args.quiet_wait, &[]);
            println!("\n=== {} guest, MTU {mtu}", backend.name());
            run_guest_session(&env, backend, mtu, &tests, &mut results);
        }
    }
    if args.has("testpmd") && args.backends.contains(&Backend::Podwire) {
        wait_for_quiet(args.quiet_wait, &[]);
        println!("\n=== dpdk-testpmd on podwire");
        run_testpmd_session(&env, &mut results);
    }

    let charts = write_charts(&args, &results, work.path());
    let generated = render(&args, &machine, &results, &charts);
    let old = std::fs::read_to_string(&args.out).unwrap_or_default();
    let doc = bench::replace_generated(&old, &generated)?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.out, doc).with_context(|| format!("writing {}", args.out.display()))?;
    println!("\n{generated}");
    println!(
        "\nwrote {} and {} chart(s) in {} ({:.0} s in all)",
        args.out.display(),
        charts.iter().filter(|c| c.1.is_ok()).count(),
        args.plots.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Env<'a> {
    args: &'a Args,
    image: &'a GuestImage,
    podwire_bin: &'a Path,
    rr_bin: &'a Path,
}

/// The podwire binary to measure: `$PODWIRE_BIN` if set, else `target/release/podwire`.
fn release_podwire() -> Result<PathBuf> {
    if std::env::var_os("PODWIRE_BIN").is_some_and(|v| !v.is_empty()) {
        return podwire_perf::podwire_path();
    }
    let p = util::target_dir().join("release").join("podwire");
    if !p.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p podwire -p podwire-perf)",
            p.display()
        );
    }
    Ok(p)
}

/// A binary of this crate built with this one (same directory).
fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p podwire-perf)",
            p.display()
        );
    }
    Ok(p)
}

/// Waits (up to `max`) until no other QEMU runs on the machine: on 2 cores, another guest
/// would take the CPU the measured one needs.
fn wait_for_quiet(max: Duration, own: &[u32]) {
    let others = bench::pids_named("qemu-system", own);
    if others.is_empty() || max.is_zero() {
        return;
    }
    println!(
        "waiting up to {:?} for {} other QEMU guest(s) to finish (pids {others:?})",
        max,
        others.len()
    );
    let _ = util::wait_until("other QEMU guests to finish", max, || {
        Ok(bench::pids_named("qemu-system", own).is_empty())
    });
}

/// An error on one line for the tables: without the console transcript the harness appends,
/// whitespace collapsed, at most 300 characters.
fn short_reason(e: &anyhow::Error) -> String {
    let e = format!("{e:#}");
    let e = e.split("\n----").next().unwrap_or(&e).to_string();
    bench::md_cell(&e, 300)
}

// ---------------------------------------------------------- CPU windows ----

/// CPU counters at the start of a measured window.
struct Window {
    pids: (Option<u32>, Option<u32>),
    others: usize,
    pw0: Option<f64>,
    q0: Option<f64>,
    m0: f64,
    t0: Instant,
}

impl Window {
    fn start(podwire: Option<u32>, qemu: Option<u32>) -> Result<Window> {
        Ok(Window {
            pids: (podwire, qemu),
            others: bench::pids_named("qemu-system", &[qemu.unwrap_or(0)]).len(),
            pw0: podwire.map(bench::cpu_seconds).transpose()?,
            q0: qemu.map(bench::cpu_seconds).transpose()?,
            m0: bench::machine_busy_seconds()?,
            t0: Instant::now(),
        })
    }

    /// Fills the figure's wall time and CPU seconds.
    fn end(self, f: &mut Figure) -> Result<()> {
        f.wall_s = Some(self.t0.elapsed().as_secs_f64());
        let others = bench::pids_named("qemu-system", &[self.pids.1.unwrap_or(0)]).len();
        f.other_qemus = Some((self.others, others));
        let pw = match (self.pids.0, self.pw0) {
            (Some(p), Some(a)) => Some(bench::cpu_seconds(p)? - a),
            _ => None,
        };
        let q = match (self.pids.1, self.q0) {
            (Some(p), Some(a)) => Some(bench::cpu_seconds(p)? - a),
            _ => None,
        };
        let m = bench::machine_busy_seconds()? - self.m0;
        f.podwire_cpu_s = pw;
        f.qemu_cpu_s = q;
        f.rest_cpu_s = Some(m - pw.unwrap_or(0.0) - q.unwrap_or(0.0));
        Ok(())
    }
}

// ---------------------------------------------------------- guest session ----

/// One guest on one backend: sets everything up, runs `tests`, records each.
fn run_guest_session(env: &Env, backend: Backend, mtu: u32, tests: &[Test], results: &mut Results) {
    let mut mem = Memory::default();
    let mut done = Vec::new();
    let r = guest_session(env, backend, mtu, tests, &mut mem, &mut done, results);
    if let Err(e) = r {
        let reason = short_reason(&e);
        println!("SESSION FAILED: {reason}");
        println!("{}", util::tail(&format!("{e:#}"), 4000));
        for t in tests {
            if !done.contains(t) {
                results
                    .figures
                    .insert((backend, *t), Figure::failed(reason.clone()));
            }
        }
    }
    if backend == Backend::Podwire {
        results.memory.push((mtu, mem));
    }
}

struct Guest {
    vm: Qemu,
    podwire: Option<Podwire>,
    qemu_pid: u32,
}

impl Guest {
    fn podwire_pid(&self) -> Option<u32> {
        self.podwire.as_ref().map(Podwire::pid)
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(pw) = self.podwire.as_mut() {
            pw.ensure_running().context("podwire died")?;
        }
        if !self.vm.is_running() {
            bail!("QEMU exited; its stderr:\n{}", self.vm.stderr());
        }
        Ok(())
    }
}

fn guest_session(
    env: &Env,
    backend: Backend,
    mtu: u32,
    tests: &[Test],
    mem: &mut Memory,
    done: &mut Vec<Test>,
    results: &mut Results,
) -> Result<()> {
    let topo = PodTopology::create_with(&TopologyOptions { mtu: Some(mtu) })?;
    let dir = util::TempDir::new("bench-session")?;
    let _iperf = far::start_iperf3(&topo.far, far::IPERF3_PORT)?;
    let _rr = start_rr_server(&topo.far, env.rr_bin)?;
    let _sink = pktgen::install_sink(&topo.far)?;

    let name = format!(
        "bench-{}-{mtu}",
        match backend {
            Backend::Podwire => "pw",
            Backend::Kernel => "kp",
        }
    );
    let mut qcfg = QemuConfig::new(env.image).name(&name);
    if mtu != 1500 {
        qcfg = qcfg.nic_prop(&format!("host_mtu={mtu}"));
    }
    let mut podwire = None;
    let mut _kpath = None;
    match backend {
        Backend::Podwire => {
            let mut cfg = PodwireConfig::new(dir.join("vhost.sock"));
            cfg.mtu = Some(mtu);
            cfg.guest_cidr = Some(kernel_path::GUEST_CIDR.to_string());
            let pw = Podwire::spawn_binary(env.podwire_bin, Some(&topo.pod), &cfg)?;
            match bench::comm(pw.pid()) {
                Some(c) if c == "podwire" => {}
                other => bail!("pid {} is {other:?}, not podwire", pw.pid()),
            }
            mem.no_guest = Some(bench::mem_status(pw.pid())?);
            qcfg = qcfg.vhost_user(pw.socket());
            podwire = Some(pw);
        }
        Backend::Kernel => {
            _kpath = Some(KernelPath::setup(&topo.pod, mtu, FAR_HOST)?);
            qcfg = qcfg
                .nic(Nic::Tap {
                    ifname: kernel_path::TAP.into(),
                })
                .in_netns(&topo.pod);
        }
    }
    let mut vm = Qemu::spawn(&qcfg).context("starting QEMU")?;
    let boot = vm
        .wait_ready(qcfg.boot_timeout)
        .context("booting the guest")?;
    results.boots.push((backend, mtu, boot.as_secs_f64()));
    let qemu_pid = vm.pid();
    match bench::comm(qemu_pid) {
        Some(c) if c.starts_with("qemu-system") => {}
        other => bail!("pid {qemu_pid} is {other:?}, not QEMU"),
    }
    let c = vm.console();
    c.run_ok("ip link set eth0 up", T)?;
    let lease = guest::udhcpc(c, "eth0", 10, T).context("DHCP in the guest")?;
    let guest_mtu: u32 = c
        .run_ok("cat /sys/class/net/eth0/mtu", T)?
        .trim()
        .parse()
        .context("the guest's eth0 MTU")?;
    if guest_mtu != mtu {
        bail!(
            "the guest's eth0 has MTU {guest_mtu}, not {mtu} (DHCP offered {:?})",
            lease.mtu()
        );
    }
    if lease.ip() != Some(&kernel_path::GUEST_ADDR.to_string()) {
        bail!(
            "the guest got {:?}, not {}",
            lease.ip(),
            kernel_path::GUEST_ADDR
        );
    }
    // the path works (and the gateway's MAC is in the ARP table)
    c.run_ok(&format!("ping -c 2 -W 5 {FAR_HOST}"), T)
        .context("a first ping to the far host")?;
    if let Some(pw) = &podwire {
        mem.after_dhcp = Some(bench::mem_status(pw.pid())?);
    }
    let mut g = Guest {
        vm,
        podwire,
        qemu_pid,
    };

    for &t in tests {
        wait_for_quiet(env.args.quiet_wait, &[g.qemu_pid]);
        println!("--- {} on {}", t.label(), backend.name());
        let mut f = Figure::default();
        let r = match t {
            Test::Tcp {
                reverse, streams, ..
            } => tcp(env, &mut g, reverse, streams, &mut f),
            Test::Pktgen { size } => run_pktgen(env, &mut g, &topo.far, size, &mut f),
            Test::Ping => ping(&mut g, &mut f),
            Test::Rr => rr(env, &mut g, &mut f),
            _ => Ok(()),
        };
        let r = r.and_then(|_| g.check_alive());
        if let Err(e) = r {
            let reason = short_reason(&e);
            println!("FAILED: {reason}");
            f.error = Some(reason);
        }
        print_figure(t, &f);
        results.figures.insert((backend, t), f);
        done.push(t);
        if !g.vm.is_running() {
            bail!("QEMU is gone");
        }
    }
    if let Some(pw) = &g.podwire {
        mem.end = Some(bench::mem_status(pw.pid())?);
    }
    let _ = g.vm.poweroff(Duration::from_secs(30));
    if let Some(pw) = g.podwire.as_mut() {
        let _ = util::wait_until("podwire's session counters", Duration::from_secs(5), || {
            Ok(pw.log().contains("session counters"))
        });
        if let Some(l) = pw
            .log()
            .lines()
            .rev()
            .find(|l| l.contains("session counters"))
        {
            println!("podwire: {}", l.trim());
        }
        pw.stop();
    }
    Ok(())
}

fn start_rr_server(far: &Netns, rr_bin: &Path) -> Result<Proc> {
    let at = format!("{FAR_HOST}:{RR_PORT}");
    let mut p = far.spawn("rr", &[&rr_bin.display().to_string(), "serve", &at])?;
    far::wait_service(
        far,
        &mut p,
        podwire_perf::netns::Proto::Tcp,
        FAR_HOST,
        RR_PORT,
    )?;
    Ok(p)
}

fn tcp(env: &Env, g: &mut Guest, reverse: bool, streams: u32, f: &mut Figure) -> Result<()> {
    let seconds = env.args.seconds;
    let cmd = format!(
        "rm -f {JSON_FILE} {ERR_FILE}; iperf3 -c {FAR_HOST} -p {} -t {seconds} -P {streams} {} -J \
         --connect-timeout 10000 > {JSON_FILE} 2> {ERR_FILE}",
        far::IPERF3_PORT,
        if reverse { "-R" } else { "" },
    );
    let w = Window::start(g.podwire_pid(), Some(g.qemu_pid))?;
    let run =
        g.vm.console()
            .run(&cmd, Duration::from_secs(u64::from(seconds) + 90));
    w.end(f)?;
    let run = run.context("iperf3 in the guest")?;
    let json =
        g.vm.console()
            .run_ok(&format!("cat {JSON_FILE}; echo; cat {ERR_FILE}"), T)?;
    let parsed = bench::parse_iperf3_json(&json);
    if run.code != 0 {
        match parsed {
            Err(e) => return Err(e.context(format!("iperf3 exited {}", run.code))),
            Ok(_) => bail!("iperf3 exited {}: {}", run.code, util::tail(&json, 300)),
        }
    }
    let r = parsed?;
    f.value = Some(r.bits_per_second / 1e9);
    f.bytes = Some(r.bytes);
    f.retransmits = r.retransmits;
    // the iperf3 server on the far host needs a moment before the next test
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn run_pktgen(env: &Env, g: &mut Guest, far: &Netns, size: u32, f: &mut Figure) -> Result<()> {
    let c = g.vm.console();
    c.run_ok(&format!("ping -c 1 -W 5 {FAR_HOST}"), T)?;
    let arp = c.run_ok("cat /proc/net/arp", T)?;
    let gw = kernel_path::GATEWAY.to_string();
    let mac = pktgen::arp_mac(&arp, &gw)
        .with_context(|| format!("no ARP entry for the gateway {gw}:\n{arp}"))?;
    let job = PktgenJob {
        iface: "eth0".into(),
        pkt_size: size,
        src: kernel_path::GUEST_ADDR.to_string(),
        dst: FAR_HOST.to_string(),
        dst_mac: mac.clone(),
        seconds: env.args.seconds,
    };
    let before = pktgen::sink_packets(far)?;
    let w = Window::start(g.podwire_pid(), Some(g.qemu_pid))?;
    let out = g.vm.console().run(
        &pktgen::script(&job),
        Duration::from_secs(u64::from(env.args.seconds) + 120),
    );
    // what is still queued arrives within moments
    std::thread::sleep(Duration::from_millis(300));
    w.end(f)?;
    let after = pktgen::sink_packets(far)?;
    let out = out.context("pktgen in the guest")?;
    let r = pktgen::parse_result(&out.output)?;
    let received = after - before;
    f.sent = Some(r.sent);
    f.received = Some(received);
    f.offered = Some(r.sent as f64 / r.seconds);
    f.value = Some(received as f64 / r.seconds);
    f.bytes = Some(received * u64::from(size));
    f.note = format!(
        "pktgen: {:.2} s, {} errors, dst MAC {mac}",
        r.seconds, r.errors
    );
    Ok(())
}

fn ping(g: &mut Guest, f: &mut Figure) -> Result<()> {
    let w = Window::start(g.podwire_pid(), Some(g.qemu_pid))?;
    let out =
        g.vm.console()
            .run(&format!("ping -c 20 -i 0.2 {FAR_HOST} 2>&1"), T)?;
    w.end(f)?;
    let p = latency::parse_ping(&out.output)?;
    f.value = Some(p.avg_ms);
    f.sent = Some(p.transmitted);
    f.received = Some(p.received);
    f.note = format!(
        "min/avg/max {:.3}/{:.3}/{:.3} ms",
        p.min_ms, p.avg_ms, p.max_ms
    );
    Ok(())
}

fn rr(env: &Env, g: &mut Guest, f: &mut Figure) -> Result<()> {
    let w = Window::start(g.podwire_pid(), Some(g.qemu_pid))?;
    let out = g.vm.console().run(
        &format!(
            "{GUEST_RR} rr {FAR_HOST}:{RR_PORT} {} 1 2>&1",
            env.args.seconds
        ),
        Duration::from_secs(u64::from(env.args.seconds) + 60),
    )?;
    w.end(f)?;
    let (n, s) = latency::parse_rr(&out.output)?;
    f.value = Some(n as f64 / s);
    f.received = Some(n);
    f.note = format!("{n} transactions in {s:.2} s, 1 byte each way");
    Ok(())
}

// -------------------------------------------------------- testpmd session ----

fn run_testpmd_session(env: &Env, results: &mut Results) {
    let tests = [
        Test::TxOnly { size: 64 },
        Test::TxOnly { size: 1400 },
        Test::RxOnly { size: 64 },
        Test::RxOnly { size: 1400 },
    ];
    let mut mem = Memory::default();
    let r = testpmd_session(env, &tests, &mut mem, results);
    if let Err(e) = r {
        let reason = short_reason(&e);
        println!("TESTPMD SESSION FAILED: {reason}");
        for t in tests {
            results
                .figures
                .entry((Backend::Podwire, t))
                .or_insert_with(|| Figure::failed(reason.clone()));
        }
    }
    results.memory.push((0, mem));
}

fn testpmd_session(
    env: &Env,
    tests: &[Test],
    mem: &mut Memory,
    results: &mut Results,
) -> Result<()> {
    if !util::have_tool(&testpmd::binary()) {
        bail!("dpdk-testpmd is not installed (apt-get install dpdk-dev)");
    }
    let topo = PodTopology::create()?;
    let dir = util::TempDir::new("bench-testpmd")?;
    let _sink = pktgen::install_sink(&topo.far)?;
    let mut cfg = PodwireConfig::new(dir.join("vhost.sock"));
    cfg.guest_cidr = Some(kernel_path::GUEST_CIDR.to_string());
    cfg.mac = Some(qemu::GUEST_MAC.to_string());
    cfg.extra_args = vec!["-u".into(), FWD_UDP_PORT.to_string()];
    let mut pw = Podwire::spawn_binary(env.podwire_bin, Some(&topo.pod), &cfg)?;
    mem.no_guest = Some(bench::mem_status(pw.pid())?);
    let seconds = env.args.seconds;
    for &t in tests {
        wait_for_quiet(env.args.quiet_wait, &[]);
        println!("--- {} on podwire", t.label());
        let mut f = Figure::default();
        let r = match t {
            Test::TxOnly { size } => txonly(&pw, &topo.far, size, seconds, &mut f),
            Test::RxOnly { size } => rxonly(env, &pw, &topo.far, size, seconds, &mut f),
            _ => Ok(()),
        };
        let r = r.and_then(|_| pw.ensure_running().context("podwire died"));
        if let Err(e) = r {
            let reason = short_reason(&e);
            println!("FAILED: {reason}");
            f.error = Some(reason);
        }
        print_figure(t, &f);
        results.figures.insert((Backend::Podwire, t), f);
        // podwire notices the frontend left
        std::thread::sleep(Duration::from_millis(500));
    }
    mem.end = Some(bench::mem_status(pw.pid())?);
    pw.stop();
    Ok(())
}

fn txonly(pw: &Podwire, far: &Netns, size: u32, seconds: u32, f: &mut Figure) -> Result<()> {
    let mode = testpmd::Mode::TxOnly {
        size,
        src: kernel_path::GUEST_ADDR.to_string(),
        dst: FAR_HOST.to_string(),
    };
    let tp = Testpmd::start(pw.socket(), qemu::GUEST_MAC, &mode)?;
    let before = pktgen::sink_packets(far)?;
    let w = Window::start(Some(pw.pid()), None)?;
    std::thread::sleep(Duration::from_secs(u64::from(seconds)));
    let t = w.t0.elapsed().as_secs_f64();
    let log = tp.log_path().to_path_buf();
    let (stats, forwarded) = tp
        .stop()
        .with_context(|| format!("testpmd's log: {}", log.display()))?;
    std::thread::sleep(Duration::from_millis(300));
    w.end(f)?;
    let after = pktgen::sink_packets(far)?;
    let received = after - before;
    f.received = Some(received);
    f.sent = None;
    f.value = Some(received as f64 / t);
    f.offered = Some(stats.tx_packets as f64 / forwarded.as_secs_f64());
    f.bytes = Some(received * u64::from(size));
    f.note = format!(
        "testpmd: {} packets on the ring in {:.2} s ({} more refused: ring full); \
         far host counted {received} in the {t:.2} s window",
        stats.tx_packets,
        forwarded.as_secs_f64(),
        stats.tx_dropped
    );
    Ok(())
}

fn rxonly(
    env: &Env,
    pw: &Podwire,
    far: &Netns,
    size: u32,
    seconds: u32,
    f: &mut Figure,
) -> Result<()> {
    let tp = Testpmd::start(pw.socket(), qemu::GUEST_MAC, &testpmd::Mode::RxOnly)?;
    let payload = size.saturating_sub(42).max(1).to_string();
    let to = format!("{POD_ADDR}:{FWD_UDP_PORT}");
    let w = Window::start(Some(pw.pid()), None)?;
    let out = far.exec(&[
        &env.rr_bin.display().to_string(),
        "flood",
        &to,
        &seconds.to_string(),
        &payload,
        &pktgen::SRC_PORT.to_string(),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    w.end(f)?;
    let (stats, _) = tp.stop()?;
    let (sent, s) = latency::parse_flood(&out?)?;
    f.sent = Some(sent);
    f.received = Some(stats.rx_packets);
    f.offered = Some(sent as f64 / s);
    f.value = Some(stats.rx_packets as f64 / s);
    f.bytes = Some(stats.rx_packets * u64::from(size));
    f.note = format!(
        "far host sent {sent} UDP datagrams ({payload}-byte payload) to the pod's port \
         {FWD_UDP_PORT} in {s:.2} s; testpmd received {}",
        stats.rx_packets
    );
    Ok(())
}

// ----------------------------------------------------------------- output ----

fn print_figure(t: Test, f: &Figure) {
    let mut s = format!("{}: ", t.label());
    if let Some(e) = &f.error {
        let _ = write!(s, "failed: {e}");
    } else {
        let _ = write!(s, "{} {}", bench::fmt_opt(f.value, 3), unit(t));
        if let Some(o) = f.offered {
            let _ = write!(s, ", offered {o:.0} pps");
        }
        if let Some(l) = f.loss() {
            let _ = write!(s, ", loss {:.1} %", l * 100.0);
        }
        if let Some(r) = f.retransmits {
            let _ = write!(s, ", {r} retransmits");
        }
    }
    let _ = write!(
        s,
        "; CPU podwire {} s, QEMU {} s, rest {} s over {} s",
        bench::fmt_opt(f.podwire_cpu_s, 2),
        bench::fmt_opt(f.qemu_cpu_s, 2),
        bench::fmt_opt(f.rest_cpu_s, 2),
        bench::fmt_opt(f.wall_s, 1)
    );
    if !f.note.is_empty() {
        let _ = write!(s, "; {}", f.note);
    }
    println!("{s}");
}

fn unit(t: Test) -> &'static str {
    match t {
        Test::Tcp { .. } => "Gbit/s",
        Test::Pktgen { .. } | Test::TxOnly { .. } | Test::RxOnly { .. } => "pps",
        Test::Ping => "ms",
        Test::Rr => "trans/s",
    }
}

/// Facts about the machine and the software measured.
struct Machine {
    nproc: String,
    cpu: String,
    kernel: String,
    qemu: String,
    iperf3: String,
    testpmd: String,
    commit: String,
    date: String,
    guest_kernel: String,
    podwire_bin: String,
    loadavg: String,
}

impl Machine {
    fn probe(image: &GuestImage, podwire_bin: &Path) -> Machine {
        let root = util::workspace_root();
        let root_s = root.display().to_string();
        let mut commit =
            bench::command_line_output(&["git", "-C", &root_s, "rev-parse", "--short", "HEAD"]);
        let branch = bench::command_line_output(&[
            "git",
            "-C",
            &root_s,
            "rev-parse",
            "--abbrev-ref",
            "HEAD",
        ]);
        commit = format!("{commit} (branch {branch})");
        let dirty = std::process::Command::new("git")
            .args([
                "-C",
                &root_s,
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
            ])
            .args([".", ":(exclude)perf", ":(exclude)docs"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if dirty {
            commit.push_str(" (podwire's sources had uncommitted changes)");
        }
        let qemu_bin = qemu::qemu_binary();
        let testpmd = match util::find_tool(&testpmd::binary()) {
            Some(p) => {
                let v =
                    bench::command_line_output(&["dpkg-query", "-W", "-f=${Version}", "dpdk-dev"]);
                format!("{} (dpdk-dev {v})", p.display())
            }
            None => "not installed".into(),
        };
        Machine {
            nproc: bench::command_line_output(&["nproc"]),
            cpu: bench::cpu_model(),
            kernel: bench::command_line_output(&["uname", "-r"]),
            qemu: bench::command_line_output(&[&qemu_bin, "--version"]),
            iperf3: bench::command_line_output(&["iperf3", "--version"]),
            testpmd,
            commit,
            date: bench::command_line_output(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
            guest_kernel: image.kernel_version.clone(),
            podwire_bin: podwire_bin
                .strip_prefix(&root)
                .unwrap_or(podwire_bin)
                .display()
                .to_string(),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }

    fn one_line(&self) -> String {
        format!(
            "{} × {}, kernel {}, {}, podwire {}, loadavg {}",
            self.nproc, self.cpu, self.kernel, self.qemu, self.commit, self.loadavg
        )
    }
}

// ----------------------------------------------------------------- charts ----

fn tcp_tests(args: &Args) -> Vec<Test> {
    let mut v = Vec::new();
    for mtu in [65520, 1500] {
        for reverse in [false, true] {
            for &streams in &args.streams() {
                v.push(Test::Tcp {
                    reverse,
                    mtu,
                    streams,
                });
            }
        }
    }
    v
}

/// The issue's single-stream TCP reference for `t` from `table`, ordered guest → far at 65520,
/// guest → far at 1500, far → guest at 65520, far → guest at 1500.
fn issue_tcp_ref(t: Test, table: [reference::Range; 4]) -> Option<reference::Range> {
    match t {
        Test::Tcp {
            reverse,
            mtu,
            streams: 1,
        } => Some(table[usize::from(reverse) * 2 + usize::from(mtu != 65520)]),
        _ => None,
    }
}

fn passt_tcp(t: Test) -> Option<reference::Range> {
    use reference::*;
    issue_tcp_ref(
        t,
        [
            PASST_TCP_TX_65520,
            PASST_TCP_TX_1500,
            PASST_TCP_RX_65520,
            PASST_TCP_RX_1500,
        ],
    )
}

fn kernel_ref_tcp(t: Test) -> Option<reference::Range> {
    use reference::*;
    issue_tcp_ref(
        t,
        [
            KERNEL_TCP_TX_65520,
            KERNEL_TCP_TX_1500,
            KERNEL_TCP_RX_65520,
            KERNEL_TCP_RX_1500,
        ],
    )
}

/// The charts to draw: (file name, chart).
fn charts(args: &Args, r: &Results) -> Vec<(String, Chart)> {
    let three = || {
        vec![
            ("podwire".to_string(), plot::PODWIRE.to_string()),
            (
                "kernel path (TAP+bridge+NAT)".to_string(),
                plot::KERNEL.to_string(),
            ),
            (
                "passt (issue, not measured)".to_string(),
                plot::PASST.to_string(),
            ),
        ]
    };
    let group = |label: String, t: Test, passt: Option<reference::Range>| Group {
        label,
        values: vec![
            r.value(Backend::Podwire, t),
            r.value(Backend::Kernel, t),
            passt.map(|p| p.1),
        ],
    };
    let mut out = Vec::new();
    if args.has("tcp") {
        out.push((
            "tcp.png".to_string(),
            Chart {
                title: format!(
                    "iperf3 TCP, receiver's rate, {} s (guest: QEMU TCG, 1 vCPU)",
                    args.seconds
                ),
                ylabel: "Gbit/s".into(),
                series: three(),
                groups: tcp_tests(args)
                    .into_iter()
                    .map(|t| group(t.short(), t, passt_tcp(t)))
                    .collect(),
            },
        ));
        let cpu = |b: Backend, t: Test, qemu: bool| {
            r.get(b, t)
                .filter(|f| f.error.is_none())
                .and_then(|f| f.s_per_gb(if qemu { f.qemu_cpu_s } else { f.podwire_cpu_s }))
        };
        out.push((
            "cpu.png".to_string(),
            Chart {
                title: "CPU seconds per GB received, TCP, 1 stream".into(),
                ylabel: "CPU s / GB".into(),
                series: vec![
                    ("podwire process".into(), plot::PODWIRE.into()),
                    ("QEMU, podwire path".into(), "#6baed6".into()),
                    ("QEMU, kernel path".into(), plot::KERNEL.into()),
                    ("passt (issue, not measured)".into(), plot::PASST.into()),
                ],
                groups: tcp_tests(args)
                    .into_iter()
                    .filter(|t| matches!(t, Test::Tcp { streams: 1, .. }))
                    .map(|t| {
                        let passt = match t {
                            Test::Tcp {
                                reverse,
                                mtu: 65520,
                                ..
                            } => Some(if reverse {
                                reference::PASST_CPU_RX.0
                            } else {
                                reference::PASST_CPU_TX.0
                            }),
                            _ => None,
                        };
                        Group {
                            label: t.short(),
                            values: vec![
                                cpu(Backend::Podwire, t, false),
                                cpu(Backend::Podwire, t, true),
                                cpu(Backend::Kernel, t, true),
                                passt,
                            ],
                        }
                    })
                    .collect(),
            },
        ));
    }
    if args.has("pktgen") {
        let mut groups = Vec::new();
        for size in [64, 1400] {
            let t = Test::Pktgen { size };
            groups.push(group(
                format!("{size} B delivered"),
                t,
                (size == 64).then_some(reference::PASST_PKTGEN_64),
            ));
            let offered = |b| {
                r.get(b, t)
                    .filter(|f| f.error.is_none())
                    .and_then(|f| f.offered)
            };
            groups.push(Group {
                label: format!("{size} B sent by the guest"),
                values: vec![offered(Backend::Podwire), offered(Backend::Kernel), None],
            });
        }
        out.push((
            "pktgen.png".to_string(),
            Chart {
                title: format!(
                    "guest pktgen UDP to the far host, {} s: packets per second",
                    args.seconds
                ),
                ylabel: "packets/s".into(),
                series: three(),
                groups,
            },
        ));
    }
    if args.has("testpmd") {
        let mut groups = Vec::new();
        for t in [
            Test::TxOnly { size: 64 },
            Test::TxOnly { size: 1400 },
            Test::RxOnly { size: 64 },
            Test::RxOnly { size: 1400 },
        ] {
            let offered = r
                .get(Backend::Podwire, t)
                .filter(|f| f.error.is_none())
                .and_then(|f| f.offered);
            groups.push(Group {
                label: t.label().replace("testpmd ", ""),
                values: vec![
                    r.value(Backend::Podwire, t),
                    offered,
                    (t == Test::TxOnly { size: 64 }).then_some(reference::PASST_TXONLY_64.1),
                ],
            });
        }
        out.push((
            "testpmd.png".to_string(),
            Chart {
                title: "dpdk-testpmd (virtio-user, no VM) on podwire: packets per second \
                        delivered (kernel path: n/a)"
                    .into(),
                ylabel: "packets/s".into(),
                series: vec![
                    ("podwire: delivered".into(), plot::PODWIRE.into()),
                    (
                        "offered (txonly: put on the ring by testpmd; rxonly: sent by the far host)"
                            .into(),
                        "#9ecae1".into(),
                    ),
                    ("passt (issue, not measured)".into(), plot::PASST.into()),
                ],
                groups,
            },
        ));
    }
    if args.has("latency") {
        out.push((
            "rr.png".to_string(),
            Chart {
                title: "TCP request/response, 1 byte each way (higher is better)".into(),
                ylabel: "transactions/s".into(),
                series: three(),
                groups: vec![group(
                    "guest ↔ far host".into(),
                    Test::Rr,
                    Some(reference::PASST_RR),
                )],
            },
        ));
        out.push((
            "rtt.png".to_string(),
            Chart {
                title: "ping RTT guest → far host, average of 20 (lower is better)".into(),
                ylabel: "ms".into(),
                series: three(),
                groups: vec![Group {
                    label: "ping -c 20 -i 0.2".into(),
                    values: vec![
                        r.value(Backend::Podwire, Test::Ping),
                        r.value(Backend::Kernel, Test::Ping),
                        Some(reference::PASST_PING_MS.0),
                    ],
                }],
            },
        ));
    }
    out
}

/// Draws the charts; returns (file name, outcome).
fn write_charts(args: &Args, r: &Results, work: &Path) -> Vec<(String, Result<()>)> {
    charts(args, r)
        .into_iter()
        .map(|(file, chart)| {
            let res = plot::render(&chart, &args.plots.join(&file), work);
            if let Err(e) = &res {
                println!("chart {file}: {e:#}");
            }
            (file, res)
        })
        .collect()
}

// ----------------------------------------------------------------- report ----

fn ratio_cell(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => bench::fmt_opt(bench::ratio(a, b), 2) + "×",
        _ => "–".into(),
    }
}

fn value_cell(r: &Results, b: Backend, t: Test, decimals: usize) -> String {
    match r.get(b, t) {
        None => "not run".into(),
        Some(f) => match &f.error {
            Some(_) => "failed".into(),
            None => fmt_num(f.value, decimals),
        },
    }
}

/// A number with thousands separators when it has no decimals.
fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() && decimals == 0 => {
            let s = format!("{:.0}", v);
            let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
            let mut out = String::new();
            for (i, ch) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(ch);
            }
            format!("{sign}{out}")
        }
        other => bench::fmt_opt(other, decimals),
    }
}

struct Target {
    what: String,
    measured: Option<f64>,
    /// passt's figure from the issue (the better end of its range)
    passt: Option<f64>,
    /// the kernel path in this run, where it has the figure
    kernel: Option<f64>,
    factor: f64,
    /// lower is better (CPU, RSS)
    lower_better: bool,
    decimals: usize,
}

impl Target {
    /// The reference: the better of passt (issue) and the kernel path (this run).
    fn reference(&self) -> Option<f64> {
        let both = [self.passt, self.kernel].into_iter().flatten();
        if self.lower_better {
            both.reduce(f64::min)
        } else {
            both.reduce(f64::max)
        }
    }

    fn reference_src(&self) -> &'static str {
        match (self.passt, self.kernel) {
            (Some(p), Some(k)) if (k > p) != self.lower_better && k != p => "kernel path",
            (Some(_), _) => "passt",
            (None, Some(_)) => "kernel path",
            (None, None) => "–",
        }
    }

    fn verdict(&self, reference: Option<f64>) -> &'static str {
        match (self.measured, reference) {
            (Some(m), Some(r)) => {
                let req = r * self.factor;
                let ok = if self.lower_better {
                    m <= req
                } else {
                    m >= req
                };
                if ok {
                    "**met**"
                } else {
                    "not met"
                }
            }
            _ => "not measured",
        }
    }
}

fn targets(r: &Results) -> Vec<Target> {
    let tcp = |reverse, mtu| Test::Tcp {
        reverse,
        mtu,
        streams: 1,
    };
    let pw = |t| r.value(Backend::Podwire, t);
    let kp = |t| r.value(Backend::Kernel, t);
    let mut v = Vec::new();
    for (reverse, mtu, factor) in [
        (false, 1500, 1.25),
        (true, 1500, 1.1),
        (false, 65520, 1.5),
        (true, 65520, 1.3),
    ] {
        let t = tcp(reverse, mtu);
        v.push(Target {
            what: format!("{} (Gbit/s)", t.label()),
            measured: pw(t),
            passt: passt_tcp(t).map(|p| p.1),
            kernel: kp(t),
            factor,
            lower_better: false,
            decimals: 3,
        });
    }
    let t = Test::Pktgen { size: 64 };
    v.push(Target {
        what: "guest pktgen 64 B delivered (pps)".into(),
        measured: pw(t),
        passt: Some(reference::PASST_PKTGEN_64.1),
        kernel: kp(t),
        factor: 1.5,
        lower_better: false,
        decimals: 0,
    });
    let t = Test::TxOnly { size: 64 };
    v.push(Target {
        what: "testpmd txonly 64 B delivered (pps)".into(),
        measured: pw(t),
        passt: Some(reference::PASST_TXONLY_64.1),
        kernel: None,
        factor: 4.0,
        lower_better: false,
        decimals: 0,
    });
    v.push(Target {
        what: "podwire CPU per packet, testpmd txonly 64 B (µs)".into(),
        measured: r
            .get(Backend::Podwire, t)
            .filter(|f| f.error.is_none())
            .and_then(|f| f.us_per_pkt(f.podwire_cpu_s)),
        passt: Some(reference::PASST_TXONLY_US_PER_PKT.0),
        kernel: None,
        factor: 0.25,
        lower_better: true,
        decimals: 3,
    });
    for (reverse, passt) in [
        (false, reference::PASST_CPU_TX.0),
        (true, reference::PASST_CPU_RX.0),
    ] {
        let t = tcp(reverse, 65520);
        v.push(Target {
            what: format!("podwire CPU s/GB, {}", t.label()),
            measured: r
                .get(Backend::Podwire, t)
                .filter(|f| f.error.is_none())
                .and_then(|f| f.s_per_gb(f.podwire_cpu_s)),
            passt: Some(passt),
            kernel: None,
            factor: 0.5,
            lower_better: true,
            decimals: 3,
        });
    }
    v.push(Target {
        what: "podwire peak RSS with a guest (MiB; passt: MB)".into(),
        measured: peak_rss_mib(r),
        passt: Some(reference::PASST_RSS_PEAK_MB),
        kernel: None,
        factor: 1.0,
        lower_better: true,
        decimals: 1,
    });
    v.push(Target {
        what: "podwire RSS idle, before a guest (MiB; passt: MB)".into(),
        measured: idle_rss_mib(r),
        passt: Some(reference::PASST_RSS_IDLE_MB),
        kernel: None,
        factor: 1.0,
        lower_better: true,
        decimals: 1,
    });
    v.push(Target {
        what: "TCP request/response (trans/s)".into(),
        measured: pw(Test::Rr),
        passt: Some(reference::PASST_RR.1),
        kernel: kp(Test::Rr),
        factor: 1.2,
        lower_better: false,
        decimals: 0,
    });
    v
}

fn mib(m: Option<MemStatus>, f: impl Fn(&MemStatus) -> u64) -> Option<f64> {
    m.map(|m| f(&m) as f64 / 1024.0)
}

/// The largest VmHWM podwire reached in a guest session.
fn peak_rss_mib(r: &Results) -> Option<f64> {
    r.memory
        .iter()
        .filter(|(mtu, _)| *mtu != 0)
        .filter_map(|(_, m)| mib(m.end, |m| m.vm_hwm_kib))
        .reduce(f64::max)
}

/// podwire's VmHWM before a frontend connected (the largest of the sessions).
fn idle_rss_mib(r: &Results) -> Option<f64> {
    r.memory
        .iter()
        .filter_map(|(_, m)| mib(m.no_guest, |m| m.vm_hwm_kib))
        .reduce(f64::max)
}

fn render(args: &Args, m: &Machine, r: &Results, charts: &[(String, Result<()>)]) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "_Generated by `{}` on {}; do not edit by hand, re-run the tool._\n",
        args.command, m.date
    );
    let _ = writeln!(w, "### Machine and software\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| command | `{}` (as root) |", args.command);
    let _ = writeln!(w, "| CPUs (`nproc`) | {} |", m.nproc);
    let _ = writeln!(w, "| CPU model | {} |", bench::md_cell(&m.cpu, 200));
    let _ = writeln!(w, "| load average at the start | {} |", m.loadavg);
    let _ = writeln!(w, "| host kernel | {} |", m.kernel);
    let _ = writeln!(w, "| QEMU | {} |", bench::md_cell(&m.qemu, 200));
    let _ = writeln!(w, "| iperf3 (host) | {} |", bench::md_cell(&m.iperf3, 200));
    let _ = writeln!(w, "| dpdk-testpmd | {} |", bench::md_cell(&m.testpmd, 200));
    let _ = writeln!(
        w,
        "| guest | QEMU TCG, 1 vCPU, 512 MiB, kernel {}, busybox, iperf3 from Debian 12, \
         podwire-rr |",
        m.guest_kernel
    );
    let _ = writeln!(w, "| podwire | commit {}, `{}` |", m.commit, m.podwire_bin);
    let _ = writeln!(w, "| date | {} |\n", m.date);
    if !r.boots.is_empty() {
        let _ = writeln!(
            w,
            "Guest boot times (s): {}.\n",
            r.boots
                .iter()
                .map(|(b, mtu, t)| format!("{} MTU {mtu}: {t:.1}", b.name()))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    // ---- summary
    let _ = writeln!(w, "### Side by side\n");
    let _ = writeln!(
        w,
        "podwire and the kernel path measured in this run, same guest, same machine; the passt and \
         kernel figures of the issue are references, not measured here. Ratio = podwire / kernel \
         path (for RTT and CPU lower is better).\n"
    );
    let _ = writeln!(
        w,
        "| figure | podwire | kernel path | podwire / kernel | passt (issue) | kernel (issue) |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
    let row = |w: &mut String, t: Test, d: usize, passt: String, kref: String| {
        let _ = writeln!(
            w,
            "| {} ({}) | {} | {} | {} | {passt} | {kref} |",
            t.label(),
            unit(t),
            value_cell(r, Backend::Podwire, t, d),
            value_cell(r, Backend::Kernel, t, d),
            ratio_cell(r.value(Backend::Podwire, t), r.value(Backend::Kernel, t)),
        );
    };
    if args.has("tcp") {
        for t in tcp_tests(args) {
            row(
                w,
                t,
                3,
                passt_tcp(t)
                    .map(|p| reference::fmt(p, 2))
                    .unwrap_or("–".into()),
                kernel_ref_tcp(t)
                    .map(|p| reference::fmt(p, 2))
                    .unwrap_or("–".into()),
            );
        }
    }
    if args.has("pktgen") {
        for size in [64, 1400] {
            let t = Test::Pktgen { size };
            let (p, k) = if size == 64 {
                (
                    reference::fmt(reference::PASST_PKTGEN_64, 0),
                    reference::fmt(reference::KERNEL_PKTGEN_64, 0),
                )
            } else {
                ("–".into(), "–".into())
            };
            let _ = writeln!(
                w,
                "| guest pktgen {size} B delivered to the far host (pps) | {} | {} | {} | {p} | {k} |",
                value_cell(r, Backend::Podwire, t, 0),
                value_cell(r, Backend::Kernel, t, 0),
                ratio_cell(r.value(Backend::Podwire, t), r.value(Backend::Kernel, t)),
            );
            let get = |b| r.get(b, t).filter(|f| f.error.is_none());
            let off = |b| get(b).and_then(|f| f.offered);
            let loss = |b| get(b).and_then(Figure::loss).map(|l| l * 100.0);
            let _ = writeln!(
                w,
                "| guest pktgen {size} B sent by the guest (pps) | {} | {} | {} | – | – |",
                fmt_num(off(Backend::Podwire), 0),
                fmt_num(off(Backend::Kernel), 0),
                ratio_cell(off(Backend::Podwire), off(Backend::Kernel))
            );
            let _ = writeln!(
                w,
                "| guest pktgen {size} B loss (%) | {} | {} | – | – | – |",
                bench::fmt_opt(loss(Backend::Podwire), 1),
                bench::fmt_opt(loss(Backend::Kernel), 1),
            );
        }
    }
    if args.has("testpmd") {
        for t in [
            Test::TxOnly { size: 64 },
            Test::TxOnly { size: 1400 },
            Test::RxOnly { size: 64 },
            Test::RxOnly { size: 1400 },
        ] {
            let f = r.get(Backend::Podwire, t).filter(|f| f.error.is_none());
            let us = f.and_then(|f| f.us_per_pkt(f.podwire_cpu_s));
            let passt = if t == (Test::TxOnly { size: 64 }) {
                format!(
                    "{}; {} µs/pkt",
                    reference::fmt(reference::PASST_TXONLY_64, 0),
                    reference::fmt(reference::PASST_TXONLY_US_PER_PKT, 1)
                )
            } else {
                "–".into()
            };
            let _ = writeln!(
                w,
                "| {} delivered (pps); podwire µs/pkt | {}; {} | n/a | n/a | {passt} | n/a |",
                t.label(),
                value_cell(r, Backend::Podwire, t, 0),
                bench::fmt_opt(us, 2),
            );
        }
    }
    if args.has("latency") {
        row(
            w,
            Test::Rr,
            0,
            reference::fmt(reference::PASST_RR, 0),
            reference::fmt(reference::KERNEL_RR, 0),
        );
        row(
            w,
            Test::Ping,
            3,
            reference::fmt(reference::PASST_PING_MS, 1),
            reference::fmt(reference::KERNEL_PING_MS, 1),
        );
    }
    if args.has("tcp") {
        for reverse in [false, true] {
            let t = Test::Tcp {
                reverse,
                mtu: 65520,
                streams: 1,
            };
            let cpu = |b: Backend, qemu: bool| {
                r.get(b, t)
                    .filter(|f| f.error.is_none())
                    .and_then(|f| f.s_per_gb(if qemu { f.qemu_cpu_s } else { f.podwire_cpu_s }))
            };
            let passt = reference::fmt(
                if reverse {
                    reference::PASST_CPU_RX
                } else {
                    reference::PASST_CPU_TX
                },
                2,
            );
            let _ = writeln!(
                w,
                "| backend CPU s/GB, {} | podwire {} (+ QEMU {}) | n/a (QEMU {}) | QEMU: {} | {passt} | (in QEMU) |",
                t.label(),
                bench::fmt_opt(cpu(Backend::Podwire, false), 3),
                bench::fmt_opt(cpu(Backend::Podwire, true), 2),
                bench::fmt_opt(cpu(Backend::Kernel, true), 2),
                ratio_cell(cpu(Backend::Podwire, true), cpu(Backend::Kernel, true)),
            );
        }
    }
    let _ = writeln!(
        w,
        "| backend peak RSS (MiB), idle / with the guest | {} / {} | n/a | n/a | 16 / 76 | n/a |\n",
        bench::fmt_opt(idle_rss_mib(r), 1),
        bench::fmt_opt(peak_rss_mib(r), 1),
    );

    // ---- targets
    let _ = writeln!(w, "### Targets\n");
    let _ = writeln!(
        w,
        "The issue's targets, each a ratio to a reference: the better of passt and the kernel \
         path. passt's figure is the issue's (the better end of its range: the higher rate, the \
         lower CPU), since passt with vhost-user cannot be installed here; the kernel path's is \
         the one measured in this run, where the kernel path has that figure. Where the kernel \
         path measured here is much faster than the issue's kernel figures (see the table \
         above), this machine is faster than the one the issue's figures come from, and the last \
         column, against passt's figure alone, is the weaker test.\n"
    );
    let _ = writeln!(
        w,
        "| target | podwire | passt (issue) | kernel path (this run) | required | met? | against passt (issue) alone |\n\
         |---|---:|---:|---:|---:|---|---|"
    );
    for t in targets(r) {
        let cmp = if t.lower_better { "≤" } else { "≥" };
        let _ = writeln!(
            w,
            "| {} {cmp} {}× {} | {} | {} | {} | {cmp} {} | {} | {cmp} {}: {} |",
            t.what,
            t.factor,
            t.reference_src(),
            fmt_num(t.measured, t.decimals),
            fmt_num(t.passt, t.decimals),
            if t.kernel.is_some() {
                fmt_num(t.kernel, t.decimals)
            } else {
                "n/a".into()
            },
            fmt_num(t.reference().map(|x| x * t.factor), t.decimals),
            t.verdict(t.reference()),
            fmt_num(t.passt.map(|x| x * t.factor), t.decimals),
            t.verdict(t.passt),
        );
    }

    // ---- charts
    let _ = writeln!(w, "\n### Charts\n");
    for (file, res) in charts {
        let rel = args
            .plots
            .strip_prefix(args.out.parent().unwrap_or(Path::new("")))
            .unwrap_or(&args.plots)
            .join(file);
        match res {
            Ok(()) => {
                let _ = writeln!(w, "![{file}]({})\n", rel.display());
            }
            Err(e) => {
                let _ = writeln!(
                    w,
                    "- {file}: not drawn: {}\n",
                    bench::md_cell(&format!("{e:#}"), 200)
                );
            }
        }
    }

    // ---- details
    let _ = writeln!(w, "### Details of each measurement\n");
    let _ = writeln!(
        w,
        "CPU: user + system time of the whole process over the measured window (the rest: busy \
         time of the machine minus podwire and QEMU: the far side, the kernel's forwarding, \
         iperf3 or the flood sender on the host, testpmd). s/GB is per 10^9 bytes received.\n"
    );
    let _ = writeln!(
        w,
        "| measurement | backend | result | bytes | window s | podwire CPU s | QEMU CPU s | rest CPU s | podwire s/GB | QEMU s/GB | notes |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for ((b, t), f) in &r.figures {
        let result = match &f.error {
            Some(e) => format!("failed: {}", bench::md_cell(e, 300)),
            None => format!(
                "{} {}",
                fmt_num(
                    f.value,
                    if unit(*t) == "pps" || *t == Test::Rr {
                        0
                    } else {
                        3
                    }
                ),
                unit(*t)
            ),
        };
        let mut notes = f.note.clone();
        if let Some(rt) = f.retransmits {
            notes = format!("{rt} retransmits; {notes}");
        }
        if let Some((a, b)) = f.other_qemus.filter(|o| *o != (0, 0)) {
            notes = format!("other QEMU guests running: {a} at the start, {b} at the end; {notes}");
        }
        if let Some(l) = f.loss() {
            notes = format!(
                "sent {} received {} (loss {:.1} %); {notes}",
                f.sent.unwrap_or(0),
                f.received.unwrap_or(0),
                l * 100.0
            );
        }
        let _ = writeln!(
            w,
            "| {} | {} | {result} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.label(),
            b.name(),
            f.bytes.map(|b| b.to_string()).unwrap_or("–".into()),
            bench::fmt_opt(f.wall_s, 1),
            bench::fmt_opt(f.podwire_cpu_s, 2),
            bench::fmt_opt(f.qemu_cpu_s, 2),
            bench::fmt_opt(f.rest_cpu_s, 2),
            bench::fmt_opt(f.s_per_gb(f.podwire_cpu_s), 2),
            bench::fmt_opt(f.s_per_gb(f.qemu_cpu_s), 2),
            bench::md_cell(notes.trim_end_matches([';', ' ']), 300),
        );
    }
    if !r.memory.is_empty() {
        let _ = writeln!(
            w,
            "\npodwire's memory (VmHWM, MiB; RssAnon / RssShmem at the end):\n"
        );
        let _ = writeln!(
            w,
            "| session | before a frontend | after the guest's DHCP | end | RssAnon / RssShmem at the end |\n|---|---:|---:|---:|---:|"
        );
        for (mtu, m) in &r.memory {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                if *mtu == 0 {
                    "testpmd (virtio-user, 1 GiB)".to_string()
                } else {
                    format!("guest, MTU {mtu}")
                },
                bench::fmt_opt(mib(m.no_guest, |m| m.vm_hwm_kib), 1),
                bench::fmt_opt(mib(m.after_dhcp, |m| m.vm_hwm_kib), 1),
                bench::fmt_opt(mib(m.end, |m| m.vm_hwm_kib), 1),
                match m.end {
                    Some(e) => format!(
                        "{:.1} / {:.1}",
                        e.rss_anon_kib as f64 / 1024.0,
                        e.rss_shmem_kib as f64 / 1024.0
                    ),
                    None => "–".into(),
                }
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(w, "\n{n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(passt: Option<f64>, kernel: Option<f64>, lower_better: bool) -> Target {
        Target {
            what: "x".into(),
            measured: Some(10.0),
            passt,
            kernel,
            factor: if lower_better { 0.5 } else { 1.5 },
            lower_better,
            decimals: 0,
        }
    }

    #[test]
    fn targets_use_the_better_reference() {
        let t = target(Some(4.0), Some(8.0), false);
        assert_eq!(t.reference(), Some(8.0));
        assert_eq!(t.reference_src(), "kernel path");
        assert_eq!(t.verdict(t.reference()), "not met"); // 10 < 12
        assert_eq!(t.verdict(t.passt), "**met**"); // 10 >= 6
        let t = target(Some(8.0), Some(4.0), false);
        assert_eq!((t.reference(), t.reference_src()), (Some(8.0), "passt"));
        let t = target(Some(30.0), None, true);
        assert_eq!(t.reference_src(), "passt");
        assert_eq!(t.verdict(t.reference()), "**met**"); // 10 <= 15
        let mut t = target(None, None, false);
        assert_eq!(t.verdict(t.reference()), "not measured");
        t.kernel = Some(1.0);
        assert_eq!(t.reference_src(), "kernel path");
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(fmt_num(Some(1234567.4), 0), "1,234,567");
        assert_eq!(fmt_num(Some(999.0), 0), "999");
        assert_eq!(fmt_num(Some(-1234.0), 0), "-1,234");
        assert_eq!(fmt_num(Some(1.23456), 3), "1.235");
        assert_eq!(fmt_num(None, 0), "–");
        assert_eq!(reference::fmt((217_000.0, 229_000.0), 0), "217,000–229,000");
        assert_eq!(reference::fmt((1.5, 1.5), 1), "1.5");
    }

    #[test]
    fn figures_derive_loss_and_cost() {
        let f = Figure {
            sent: Some(200),
            received: Some(150),
            podwire_cpu_s: Some(0.0003),
            bytes: Some(2_000_000_000),
            ..Figure::default()
        };
        assert_eq!(f.loss(), Some(0.25));
        assert!((f.us_per_pkt(f.podwire_cpu_s).unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(f.s_per_gb(Some(1.0)), Some(0.5));
        assert_eq!(Figure::failed("x".into()).ok_value(), None);
    }

    #[test]
    fn sessions_run_what_the_sections_ask() {
        let mut a = Args {
            seconds: 3,
            quick: true,
            sections: vec!["tcp".into(), "latency".into()],
            backends: vec![Backend::Podwire],
            out: "/d/perf.md".into(),
            plots: "/d/perf".into(),
            quiet_wait: Duration::ZERO,
            command: String::new(),
        };
        assert_eq!(a.guest_tests(65520).len(), 2);
        assert_eq!(
            a.guest_tests(1500),
            vec![
                Test::Tcp {
                    reverse: false,
                    mtu: 1500,
                    streams: 1
                },
                Test::Tcp {
                    reverse: true,
                    mtu: 1500,
                    streams: 1
                },
                Test::Ping,
                Test::Rr
            ]
        );
        a.quick = false;
        a.sections = vec!["pktgen".into()];
        assert!(a.guest_tests(65520).is_empty());
        assert_eq!(
            a.guest_tests(1500),
            vec![Test::Pktgen { size: 64 }, Test::Pktgen { size: 1400 }]
        );
    }
}
