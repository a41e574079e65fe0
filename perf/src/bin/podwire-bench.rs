//! podwire's benchmark: TCP throughput through podwire from a real guest, and what it costs.
//!
//! ```text
//! target/release/podwire-bench [--seconds N] [--out docs/perf.md] [--quiet-wait S]
//! ```
//!
//! For each direction (guest → far host, far host → guest with `iperf3 -R`) and each guest MTU
//! (1500, 65520) it builds a fresh pod/far topology, starts podwire (`--mtu`), boots the QEMU/TCG
//! test guest on it (`host_mtu=` on the virtio-net device when the MTU is not 1500; the guest
//! also learns the MTU by DHCP), and runs one iperf3 TCP stream for N seconds (default 10) from
//! the guest to the far host's iperf3 server. It records the receiver's rate and bytes (from
//! `iperf3 -J`), podwire's and QEMU's CPU time over the run (/proc/PID/stat utime+stime), and
//! podwire's peak RSS (VmHWM) right after DHCP (idle) and after the run.
//!
//! The results go between the `<!-- results:begin -->` and `<!-- results:end -->` markers of the
//! output file (default `docs/perf.md`); the rest of the file is left alone. A run that fails is
//! recorded as `failed: <reason>` and the others still run. It measures `target/release/podwire`
//! (or `$PODWIRE_BIN`). Needs root. This is a measurement, not a test: nothing is asserted about
//! speed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use podwire_perf::bench::{self, IperfResult, MemStatus};
use podwire_perf::netns::{PodTopology, FAR_HOST};
use podwire_perf::{far, guest, util, GuestImage, Podwire, PodwireConfig, Qemu, QemuConfig};

/// Timeout of a console step (DHCP, reading a file).
const T: Duration = Duration::from_secs(60);
/// The MTUs measured.
const MTUS: [u32; 2] = [1500, 65520];
/// The guest's iperf3 output files.
const JSON_FILE: &str = "/tmp/iperf3.json";
const ERR_FILE: &str = "/tmp/iperf3.err";

/// Reference figures from the issue (passt 2025-05, vhost-user mode, and the kernel TAP path of
/// KubeVirt's masquerade binding), measured earlier on this kind of machine, not by this tool.
mod reference {
    /// passt's receiver rate, Gbit/s: (reverse, mtu, figure)
    pub const PASST_GBPS: [(bool, u32, f64); 4] = [
        (false, 65520, 0.80),
        (true, 65520, 2.69),
        (false, 1500, 0.52),
        (true, 1500, 0.85),
    ];
    /// passt's CPU seconds per GB at MTU 65520: (reverse, figure)
    pub const PASST_CPU_S_PER_GB: [(bool, f64); 2] = [(false, 1.3), (true, 0.67)];
    /// passt's peak RSS with a guest, MB
    pub const PASST_RSS_MB: f64 = 76.0;
    /// passt's RSS with the guest idle, MB
    pub const PASST_IDLE_RSS_MB: f64 = 16.0;
    /// the kernel TAP path (KubeVirt masquerade) at MTU 1500, Gbit/s: (reverse, figure)
    pub const TAP_GBPS_1500: [(bool, f64); 2] = [(false, 1.24), (true, 1.62)];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Case {
    /// far host → guest (`iperf3 -R`)
    reverse: bool,
    mtu: u32,
}

impl Case {
    fn direction(&self) -> &'static str {
        if self.reverse {
            "far → guest"
        } else {
            "guest → far"
        }
    }
}

/// What one run measured (filled as it goes, so a failure keeps what came before it).
#[derive(Debug, Default)]
struct Outcome {
    guest_mtu: Option<u32>,
    boot_s: Option<f64>,
    idle_mem: Option<MemStatus>,
    iperf: Option<IperfResult>,
    wall_s: Option<f64>,
    podwire_cpu_s: Option<f64>,
    qemu_cpu_s: Option<f64>,
    /// busy CPU of the whole machine over the run minus podwire's and QEMU's (the far iperf3
    /// server, the kernel's veth and loopback work, and anything else running)
    rest_cpu_s: Option<f64>,
    end_mem: Option<MemStatus>,
    /// other QEMU processes on the machine at the start and the end of the iperf3 run
    other_qemus: Option<(usize, usize)>,
    loadavg_before: Option<f64>,
    error: Option<String>,
    counters: Option<String>,
    podwire_log: Option<PathBuf>,
    qemu_log: Option<PathBuf>,
    console_log: Option<PathBuf>,
}

impl Outcome {
    fn gbps(&self) -> Option<f64> {
        self.iperf.as_ref().map(|r| r.bits_per_second / 1e9)
    }

    fn podwire_s_per_gb(&self) -> Option<f64> {
        bench::cpu_s_per_gb(self.podwire_cpu_s?, self.iperf.as_ref()?.bytes)
    }

    fn qemu_s_per_gb(&self) -> Option<f64> {
        bench::cpu_s_per_gb(self.qemu_cpu_s?, self.iperf.as_ref()?.bytes)
    }

    fn peak_rss_mib(&self) -> Option<f64> {
        self.end_mem.map(|m| m.vm_hwm_kib as f64 / 1024.0)
    }

    fn idle_rss_mib(&self) -> Option<f64> {
        self.idle_mem.map(|m| m.vm_hwm_kib as f64 / 1024.0)
    }
}

struct Args {
    seconds: u32,
    out: PathBuf,
    quiet_wait: Duration,
}

fn usage() -> &'static str {
    "usage: podwire-bench [--seconds N] [--out FILE] [--quiet-wait SECONDS]\n\
     \n\
     --seconds N        length of each iperf3 run (default 10)\n\
     --out FILE         Markdown file whose results block is replaced (default docs/perf.md)\n\
     --quiet-wait S     before each run, wait up to S seconds for other QEMU guests on the\n\
     \x20                  machine to finish (default 120; 0: do not wait)"
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        seconds: 10,
        out: util::workspace_root().join("docs/perf.md"),
        quiet_wait: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
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
            }
            "--out" => {
                let p = PathBuf::from(value("--out")?);
                a.out = if p.is_absolute() {
                    p
                } else {
                    std::env::current_dir()?.join(p)
                };
            }
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
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    util::require_root()?;
    let started = Instant::now();
    let image = guest::image().context("building the test guest")?;
    let podwire_bin = release_podwire()?;
    let machine = Machine::probe(&image, &podwire_bin);
    println!(
        "podwire-bench: {} s per run; {}",
        args.seconds,
        machine.one_line()
    );

    let cases: Vec<Case> = MTUS
        .iter()
        .flat_map(|&mtu| [false, true].map(|reverse| Case { reverse, mtu }))
        .collect();
    let mut results = Vec::new();
    for case in cases {
        wait_for_quiet(args.quiet_wait);
        println!("\n=== TCP {}, MTU {}", case.direction(), case.mtu);
        let mut o = Outcome::default();
        if let Err(e) = run_case(case, args.seconds, &image, &podwire_bin, &mut o) {
            let reason = short_reason(&format!("{e:#}"));
            println!("FAILED: {reason}");
            println!("full error:\n{}", util::tail(&format!("{e:#}"), 4000));
            print_evidence(&o);
            o.error = Some(reason);
        }
        print_outcome(&o);
        results.push((case, o));
    }

    let generated = render(&args, &machine, &results);
    let old = std::fs::read_to_string(&args.out).unwrap_or_default();
    let doc = bench::replace_generated(&old, &generated)?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.out, doc).with_context(|| format!("writing {}", args.out.display()))?;
    println!("\n{generated}");
    println!(
        "\nwrote {} ({:.0} s in all)",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The podwire binary to measure: `$PODWIRE_BIN` if set, else the release build
/// (`target/release/podwire`), never the debug build the harness may otherwise prefer when it is
/// newer.
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

/// Waits (up to `max`) until no other QEMU runs on the machine: on 2 cores, another guest
/// would take the CPU the measured one needs. Goes on regardless after `max`; the run records
/// what it shared the machine with.
fn wait_for_quiet(max: Duration) {
    let others = bench::pids_named("qemu-system", &[]);
    if others.is_empty() || max.is_zero() {
        return;
    }
    println!(
        "waiting up to {:?} for {} other QEMU guest(s) to finish (pids {others:?})",
        max,
        others.len()
    );
    let _ = util::wait_until("other QEMU guests to finish", max, || {
        Ok(bench::pids_named("qemu-system", &[]).is_empty())
    });
}

fn run_case(
    case: Case,
    seconds: u32,
    image: &GuestImage,
    podwire_bin: &Path,
    o: &mut Outcome,
) -> Result<()> {
    let topo = PodTopology::create()?;
    let _iperf_server = far::start_iperf3(&topo.far, far::IPERF3_PORT)?;
    let dir = util::TempDir::new("bench")?;

    let mut cfg = PodwireConfig::new(dir.join("vhost.sock"));
    cfg.mtu = Some(case.mtu);
    let mut pw = Podwire::spawn_binary(podwire_bin, Some(&topo.pod), &cfg)?;
    o.podwire_log = pw.log_path().map(Path::to_path_buf);
    let pw_pid = pw.pid();
    match bench::comm(pw_pid) {
        Some(c) if c == "podwire" => {}
        other => bail!("pid {pw_pid} is {other:?}, not podwire: cannot measure it"),
    }

    let mut qcfg = QemuConfig::new(image)
        .name(&format!(
            "bench-{}-{}",
            if case.reverse { "rx" } else { "tx" },
            case.mtu
        ))
        .vhost_user(pw.socket());
    if case.mtu != 1500 {
        qcfg = qcfg.nic_prop(&format!("host_mtu={}", case.mtu));
    }
    let mut vm = Qemu::spawn(&qcfg).context("starting QEMU")?;
    o.qemu_log = Some(vm.stderr_log().to_path_buf());
    o.console_log = vm.console().log_path().map(Path::to_path_buf);
    let boot = vm
        .wait_ready(qcfg.boot_timeout)
        .context("booting the guest")?;
    o.boot_s = Some(boot.as_secs_f64());
    let qemu_pid = vm.pid();

    let c = vm.console();
    c.run_ok("ip link set eth0 up", T)?;
    let lease = guest::udhcpc(c, "eth0", 10, T).context("DHCP in the guest")?;
    let guest_mtu: u32 = c
        .run_ok("cat /sys/class/net/eth0/mtu", T)?
        .trim()
        .parse()
        .context("the guest's eth0 MTU")?;
    o.guest_mtu = Some(guest_mtu);
    o.idle_mem = Some(bench::mem_status(pw_pid)?);
    if guest_mtu != case.mtu {
        bail!(
            "the guest's eth0 has MTU {guest_mtu}, not {} (DHCP offered {:?})",
            case.mtu,
            lease.mtu()
        );
    }

    // The measured window: iperf3 in the guest, output to a file so that printing it on the
    // serial console is not part of it.
    let cmd = format!(
        "rm -f {JSON_FILE} {ERR_FILE}; iperf3 -c {FAR_HOST} -p {} -t {seconds} {} -J \
         --connect-timeout 10000 > {JSON_FILE} 2> {ERR_FILE}",
        far::IPERF3_PORT,
        if case.reverse { "-R" } else { "" },
    );
    let own = [pw_pid, qemu_pid];
    o.loadavg_before = bench::loadavg1();
    let others_before = bench::pids_named("qemu-system", &own).len();
    let pw0 = bench::cpu_seconds(pw_pid)?;
    let q0 = bench::cpu_seconds(qemu_pid)?;
    let m0 = bench::machine_busy_seconds()?;
    let t0 = Instant::now();
    let run = vm
        .console()
        .run(&cmd, Duration::from_secs(u64::from(seconds) + 90));
    let wall = t0.elapsed().as_secs_f64();
    let pw1 = bench::cpu_seconds(pw_pid);
    let q1 = bench::cpu_seconds(qemu_pid);
    let m1 = bench::machine_busy_seconds();
    let end_mem = bench::mem_status(pw_pid);
    let others_after = bench::pids_named("qemu-system", &own).len();
    o.other_qemus = Some((others_before, others_after));
    pw.ensure_running().context("podwire died during iperf3")?;
    let run = run.context("iperf3 in the guest")?;
    o.wall_s = Some(wall);
    o.podwire_cpu_s = Some(pw1? - pw0);
    o.qemu_cpu_s = Some(q1? - q0);
    o.rest_cpu_s = Some((m1? - m0) - o.podwire_cpu_s.unwrap() - o.qemu_cpu_s.unwrap());
    o.end_mem = Some(end_mem?);

    let json = vm
        .console()
        .run_ok(&format!("cat {JSON_FILE}; echo; cat {ERR_FILE}"), T)?;
    let parsed = bench::parse_iperf3_json(&json);
    if run.code != 0 {
        match parsed {
            Err(e) => return Err(e.context(format!("iperf3 exited {}", run.code))),
            Ok(_) => bail!("iperf3 exited {}: {}", run.code, util::tail(&json, 300)),
        }
    }
    o.iperf = Some(parsed?);

    let _ = vm.poweroff(Duration::from_secs(30));
    // podwire logs its session counters when the frontend leaves
    let _ = util::wait_until("podwire's session counters", Duration::from_secs(5), || {
        Ok(pw.log().contains("session counters"))
    });
    o.counters = pw
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("session counters"))
        .map(|l| l.trim().to_string());
    pw.stop();
    Ok(())
}

/// An error on one line for the table: without the console transcript the harness appends
/// ("---- last console output ----"), whitespace collapsed, at most 300 characters.
fn short_reason(e: &str) -> String {
    let e = e.split("\n----").next().unwrap_or(e);
    bench::md_cell(e, 300)
}

/// Prints the lines of podwire's log, QEMU's stderr and the console that say why a run failed.
fn print_evidence(o: &Outcome) {
    let show = |what: &str, path: &Option<PathBuf>, filter: &dyn Fn(&str) -> bool, n: usize| {
        let Some(p) = path else { return };
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| filter(l)).collect();
        println!("--- {what} ({}), last {n} relevant lines:", p.display());
        for l in &lines[lines.len().saturating_sub(n)..] {
            println!("    {l}");
        }
    };
    show(
        "podwire log",
        &o.podwire_log,
        &|l| !l.contains(" INFO ") || l.contains("counters") || l.contains("MTU"),
        15,
    );
    show("QEMU stderr", &o.qemu_log, &|l| !l.trim().is_empty(), 15);
    show(
        "guest console",
        &o.console_log,
        &|l| !l.trim().is_empty() && !l.contains("@@"),
        15,
    );
}

fn print_outcome(o: &Outcome) {
    let mut s = String::new();
    if let Some(b) = o.boot_s {
        let _ = write!(s, "boot {b:.1} s; ");
    }
    if let Some(m) = o.guest_mtu {
        let _ = write!(s, "guest MTU {m}; ");
    }
    if let Some(r) = &o.iperf {
        let _ = write!(
            s,
            "{:.3} Gbit/s, {} bytes in {:.2} s; ",
            r.bits_per_second / 1e9,
            r.bytes,
            r.seconds
        );
    }
    if let (Some(p), Some(q), Some(w)) = (o.podwire_cpu_s, o.qemu_cpu_s, o.wall_s) {
        let _ = write!(
            s,
            "CPU podwire {p:.2} s ({}/GB), QEMU {q:.2} s ({}/GB) over {w:.1} s; ",
            bench::fmt_opt(o.podwire_s_per_gb(), 2),
            bench::fmt_opt(o.qemu_s_per_gb(), 2)
        );
    }
    if let Some(r) = o.rest_cpu_s {
        let _ = write!(s, "rest of the machine {r:.2} CPU s; ");
    }
    if let Some(m) = o.idle_mem {
        let _ = write!(s, "podwire VmHWM idle {} kB; ", m.vm_hwm_kib);
    }
    if let Some(m) = o.end_mem {
        let _ = write!(
            s,
            "after {} kB (RssAnon {} kB, RssFile {} kB, RssShmem {} kB); ",
            m.vm_hwm_kib, m.rss_anon_kib, m.rss_file_kib, m.rss_shmem_kib
        );
    }
    if let Some((a, b)) = o.other_qemus {
        let _ = write!(s, "other QEMUs {a}/{b}");
    }
    println!("{}", s.trim_end_matches([' ', ';']));
    if let Some(c) = &o.counters {
        println!("podwire: {c}");
    }
}

/// Facts about the machine and the software measured.
struct Machine {
    nproc: String,
    cpu: String,
    kernel: String,
    qemu: String,
    iperf3: String,
    commit: String,
    date: String,
    guest_kernel: String,
    podwire_bin: String,
}

impl Machine {
    fn probe(image: &GuestImage, podwire_bin: &Path) -> Machine {
        let root = util::workspace_root();
        let root_s = root.display().to_string();
        let mut commit =
            bench::command_line_output(&["git", "-C", &root_s, "rev-parse", "--short", "HEAD"]);
        // podwire's own sources: everything but the harness and the docs
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
        let qemu_bin = podwire_perf::qemu::qemu_binary();
        Machine {
            nproc: bench::command_line_output(&["nproc"]),
            cpu: bench::cpu_model(),
            kernel: bench::command_line_output(&["uname", "-r"]),
            qemu: bench::command_line_output(&[&qemu_bin, "--version"]),
            iperf3: bench::command_line_output(&["iperf3", "--version"]),
            commit,
            date: bench::command_line_output(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
            guest_kernel: image.kernel_version.clone(),
            podwire_bin: podwire_bin
                .strip_prefix(&root)
                .unwrap_or(podwire_bin)
                .display()
                .to_string(),
        }
    }

    fn one_line(&self) -> String {
        format!(
            "{} × {}, kernel {}, {}, podwire {}",
            self.nproc, self.cpu, self.kernel, self.qemu, self.commit
        )
    }
}

/// The largest of the figures present.
fn best_of<I: IntoIterator<Item = Option<f64>>>(it: I) -> Option<f64> {
    it.into_iter().flatten().reduce(f64::max)
}

fn render(args: &Args, m: &Machine, results: &[(Case, Outcome)]) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "_Generated by `podwire-bench --seconds {}` on {}; do not edit by hand, re-run the tool._\n",
        args.seconds, m.date
    );
    let _ = writeln!(w, "### Machine\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| CPUs (`nproc`) | {} |", m.nproc);
    let _ = writeln!(w, "| CPU model | {} |", bench::md_cell(&m.cpu, 200));
    let _ = writeln!(w, "| host kernel | {} |", m.kernel);
    let _ = writeln!(w, "| QEMU | {} |", bench::md_cell(&m.qemu, 200));
    let _ = writeln!(w, "| iperf3 (host) | {} |", bench::md_cell(&m.iperf3, 200));
    let _ = writeln!(
        w,
        "| guest | TCG, 1 vCPU, 512 MiB, kernel {}, iperf3 from Debian 12 |",
        m.guest_kernel
    );
    let _ = writeln!(w, "| podwire | commit {}, `{}` |", m.commit, m.podwire_bin);
    let _ = writeln!(w, "| date | {} |\n", m.date);

    let _ = writeln!(w, "### Results\n");
    let _ = writeln!(
        w,
        "One TCP stream, {} s, receiver's figures. CPU is user + system time of the whole \
         process over the iperf3 run, per 10^9 bytes received. RSS is podwire's VmHWM after the \
         run (MiB).\n",
        args.seconds
    );
    let _ = writeln!(
        w,
        "| direction | MTU | Gbit/s | podwire CPU s/GB | QEMU CPU s/GB | podwire peak RSS (MiB) |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
    for (case, o) in results {
        match &o.error {
            Some(e) => {
                let _ = writeln!(
                    w,
                    "| {} | {} | failed: {} | | | {} |",
                    case.direction(),
                    case.mtu,
                    bench::md_cell(e, 220),
                    bench::fmt_opt(o.peak_rss_mib(), 1)
                );
            }
            None => {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {} |",
                    case.direction(),
                    case.mtu,
                    bench::fmt_opt(o.gbps(), 3),
                    bench::fmt_opt(o.podwire_s_per_gb(), 2),
                    bench::fmt_opt(o.qemu_s_per_gb(), 2),
                    bench::fmt_opt(o.peak_rss_mib(), 1)
                );
            }
        }
    }
    let idle = best_of(results.iter().map(|(_, o)| o.idle_rss_mib()));
    let peak = best_of(results.iter().map(|(_, o)| o.peak_rss_mib()));
    let _ = writeln!(
        w,
        "\npodwire idle (guest attached, right after DHCP): VmHWM {} MiB, the largest of the runs ({}).\n",
        bench::fmt_opt(idle, 1),
        results
            .iter()
            .map(|(c, o)| format!(
                "{} MTU {}: {}",
                c.direction(),
                c.mtu,
                bench::fmt_opt(o.idle_rss_mib(), 1)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );

    let _ = writeln!(w, "Details of each run:\n");
    let _ = writeln!(
        w,
        "| direction | MTU | bytes received | s | retransmits | podwire CPU s (% of a core) | \
         QEMU CPU s (% of a core) | rest of the machine, CPU s (% of a core) | podwire RssAnon / RssShmem after (MiB) | guest boot s | \
         other QEMUs running (start/end) | load avg before |"
    );
    let _ = writeln!(
        w,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (case, o) in results {
        let pct = |cpu: Option<f64>| match (cpu, o.wall_s) {
            // a difference of counters kept differently (/proc/stat vs the processes'):
            // a small negative value means "about nothing"
            (Some(c), Some(_)) if c < 0.0 => "≈ 0".into(),
            (Some(c), Some(t)) if t > 0.0 => format!("{c:.2} ({:.0} %)", 100.0 * c / t),
            _ => "–".into(),
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            case.direction(),
            case.mtu,
            o.iperf
                .as_ref()
                .map(|r| r.bytes.to_string())
                .unwrap_or("–".into()),
            bench::fmt_opt(o.iperf.as_ref().map(|r| r.seconds), 2),
            o.iperf
                .as_ref()
                .and_then(|r| r.retransmits)
                .map(|r| r.to_string())
                .unwrap_or("–".into()),
            pct(o.podwire_cpu_s),
            pct(o.qemu_cpu_s),
            pct(o.rest_cpu_s),
            o.end_mem
                .map(|m| format!(
                    "{:.1} / {:.1}",
                    m.rss_anon_kib as f64 / 1024.0,
                    m.rss_shmem_kib as f64 / 1024.0
                ))
                .unwrap_or("–".into()),
            bench::fmt_opt(o.boot_s, 1),
            o.other_qemus
                .map(|(a, b)| format!("{a}/{b}"))
                .unwrap_or("–".into()),
            bench::fmt_opt(o.loadavg_before, 2),
        );
    }

    let _ = writeln!(w, "\n### Compared with passt and the kernel TAP path\n");
    let _ = writeln!(
        w,
        "Reference figures: from the issue, measured earlier on this kind of machine (not by this \
         run). Ratio = podwire / reference; for Gbit/s higher is better, for CPU and RSS lower is \
         better.\n"
    );
    let _ = writeln!(
        w,
        "| figure | podwire (this run) | passt 2025-05, vhost-user | podwire / passt | kernel TAP (KubeVirt masquerade) | podwire / TAP |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
    let find = |reverse: bool, mtu: u32| {
        results
            .iter()
            .find(|(c, _)| c.reverse == reverse && c.mtu == mtu)
            .map(|(_, o)| o)
    };
    let cell =
        |v: Option<f64>, d: usize, o: Option<&Outcome>| match o.and_then(|o| o.error.as_ref()) {
            Some(_) => "failed".to_string(),
            None => bench::fmt_opt(v, d),
        };
    let ratio = |a: Option<f64>, b: f64| bench::fmt_opt(a.and_then(|a| bench::ratio(a, b)), 2);
    for &mtu in MTUS.iter().rev() {
        for reverse in [false, true] {
            let Some(&(_, _, passt)) = reference::PASST_GBPS
                .iter()
                .find(|(r, m, _)| *r == reverse && *m == mtu)
            else {
                continue;
            };
            let o = find(reverse, mtu);
            let v = o.and_then(Outcome::gbps);
            let tap = (mtu == 1500)
                .then(|| {
                    reference::TAP_GBPS_1500
                        .iter()
                        .find(|(r, _)| *r == reverse)
                        .map(|t| t.1)
                })
                .flatten();
            let case = Case { reverse, mtu };
            let _ = writeln!(
                w,
                "| Gbit/s, {}, MTU {mtu} | {} | {passt:.2} | {} | {} | {} |",
                case.direction(),
                cell(v, 3, o),
                ratio(v, passt),
                bench::fmt_opt(tap, 2),
                tap.map(|t| ratio(v, t)).unwrap_or("–".into()),
            );
        }
    }
    for (reverse, passt) in reference::PASST_CPU_S_PER_GB {
        let o = find(reverse, 65520);
        let v = o.and_then(Outcome::podwire_s_per_gb);
        let case = Case {
            reverse,
            mtu: 65520,
        };
        let _ = writeln!(
            w,
            "| CPU s/GB, {}, MTU 65520 | {} | {passt:.2} | {} | – | – |",
            case.direction(),
            cell(v, 2, o),
            ratio(v, passt),
        );
    }
    let _ = writeln!(
        w,
        "| peak RSS with a guest, MB (podwire: largest VmHWM of the runs, MiB) | {} | {:.0} | {} | – | – |",
        bench::fmt_opt(peak, 1),
        reference::PASST_RSS_MB,
        ratio(peak, reference::PASST_RSS_MB)
    );
    let _ = writeln!(
        w,
        "| RSS, guest idle, MB (podwire: VmHWM after DHCP, MiB) | {} | {:.0} | {} | – | – |",
        bench::fmt_opt(idle, 1),
        reference::PASST_IDLE_RSS_MB,
        ratio(idle, reference::PASST_IDLE_RSS_MB)
    );

    let failed: Vec<_> = results.iter().filter(|(_, o)| o.error.is_some()).collect();
    if !failed.is_empty() {
        let _ = writeln!(w, "\n### Failures\n");
        for (case, o) in failed {
            let _ = writeln!(
                w,
                "- {}, MTU {}: {}",
                case.direction(),
                case.mtu,
                bench::md_cell(o.error.as_deref().unwrap_or(""), 600)
            );
        }
    }
    s
}
