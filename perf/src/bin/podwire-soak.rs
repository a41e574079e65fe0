//! podwire-soak: long-running load, fault and flood runs against a real TCG guest, on demand.
//!
//! These take minutes to hours and a quiet machine, so they are not part of `cargo test`; run
//! them as root after `cargo build -p podwire -p podwire-perf` (the guest image is built on
//! first use, as for the end-to-end tests):
//!
//! ```text
//! podwire-soak soak [--secs N]         (default 600) iperf3 both ways, TCP connection churn,
//!                                      a UDP source-port spray and malformed frames, all at
//!                                      once for N seconds, with an md5-checked download every
//!                                      30 s; then: every transfer intact, podwire's descriptors
//!                                      back at their baseline and its RSS (RssAnon) flat, and the guest
//!                                      still gets a DHCP lease
//! podwire-soak reconnect [--cycles N]  (default 100) N times: boot a guest, start a download,
//!   [--pause-while PATH]               kill QEMU mid-transfer; podwire must be back at its
//!                                      baseline each time, and serve guest N+1 (DHCP, an
//!                                      md5-checked download). With --pause-while, waits
//!                                      between cycles for as long as PATH exists (a shared
//!                                      machine's quiet window: a cycle's deadlines cannot
//!                                      survive being stopped in the middle)
//! podwire-soak flood [--attempts N]    (default 100000) a remote host opens N connections at
//!                                      a forwarded port while the guest's own outbound
//!                                      connections (rounds of 500, for as long as the
//!                                      flood lasts) must all succeed
//! ```
//!
//! Each prints what it measured and exits 0 when everything held, 1 with the reason otherwise.
//! Every load stays between network namespaces this process creates (198.18.0.0/15).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use podwire_perf::far;
use podwire_perf::netns::{PodTopology, FAR_HOST, POD_ADDR};
use podwire_perf::rig::{self, GuestSpec};
use podwire_perf::{guest, util, Podwire, Qemu};

/// Deadline of one step.
const T: Duration = Duration::from_secs(120);
const GUEST_FLOWS: &str = "/usr/bin/podwire-flows";
const FLOWS_PORT: u16 = 7100;
const SPRAY_PORT: u16 = 7200;
const FILE_PORT: u16 = 7300;
const IPERF_UP: u16 = 5201;
const IPERF_DOWN: u16 = 5202;
const FORWARD_PORT: u16 = 8080;
/// Descriptors podwire may open or close on its own meanwhile.
const FD_SLACK: i64 = 4;
/// RSS growth still called flat: the allocator keeps some of what a burst used.
const RSS_SLACK_KIB: u64 = 8 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |flag: &str, default: u64| -> Result<u64> {
        match args.iter().position(|a| a == flag) {
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{flag} needs a number")),
            None => Ok(default),
        }
    };
    let r = match args.first().map(String::as_str) {
        Some("soak") => num("--secs", 600).and_then(soak),
        Some("reconnect") => {
            let pause_while = args
                .iter()
                .position(|a| a == "--pause-while")
                .and_then(|i| args.get(i + 1))
                .map(PathBuf::from);
            num("--cycles", 100).and_then(|n| reconnect(n, pause_while.as_deref()))
        }
        Some("flood") => num("--attempts", 100_000).and_then(flood),
        _ => Err(anyhow::anyhow!(
            "usage: podwire-soak soak [--secs N] | reconnect [--cycles N] | flood [--attempts N]"
        )),
    };
    match r {
        Ok(summary) => println!("podwire-soak: PASS: {summary}"),
        Err(e) => {
            eprintln!("podwire-soak: FAIL: {e:#}");
            std::process::exit(1);
        }
    }
}

/// podwire-flows, built next to this binary.
fn flows_binary() -> Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name("podwire-flows");
    ensure!(
        p.is_file(),
        "{} missing: cargo build -p podwire-perf",
        p.display()
    );
    Ok(p)
}

/// Boots a guest called `name` on podwire's socket, with podwire-flows in it if `flows`, and
/// gets it a lease (the shared rig's steps).
fn boot(pw: &Podwire, name: &str, flows: Option<&Path>, work: &Path) -> Result<Qemu> {
    let files = flows.map(|f| [(GUEST_FLOWS, f)]);
    let spec = GuestSpec {
        files: files.as_ref().map_or(&[][..], |f| &f[..]),
        ..GuestSpec::new(name)
    };
    Ok(rig::boot_on(pw.socket(), &spec, work)?.0)
}

/// podwire's status line, fresh: SIGUSR1, then the line it logs.
fn status(pw: &mut Podwire) -> Result<String> {
    pw.ensure_running()?;
    let before = pw.log().matches("status: ").count();
    // SAFETY: kill(2) on podwire, our child.
    unsafe { libc::kill(pw.pid() as libc::pid_t, libc::SIGUSR1) };
    let mut line = String::new();
    util::wait_until("podwire's status line", T, || {
        let log = pw.log();
        if log.matches("status: ").count() <= before {
            return Ok(false);
        }
        line = log
            .lines()
            .rfind(|l| l.contains("status: "))
            .unwrap_or_default()
            .into();
        Ok(true)
    })?;
    Ok(line)
}

fn field(status: &str, name: &str) -> u64 {
    status
        .split(|c: char| c.is_whitespace() || c == ';')
        .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// podwire's footprint: descriptors and resident anonymous memory (its own heap and stacks;
/// the guest's memory, mapped shared, is not podwire's and grows with the buffers it touched).
#[derive(Debug, Clone, Copy)]
struct Footprint {
    fds: usize,
    rss_kib: u64,
}

impl Footprint {
    fn of(pw: &Podwire) -> Footprint {
        Footprint {
            fds: fd_count(pw.pid()),
            rss_kib: rss_kib(pw.pid()),
        }
    }
}

/// Waits until podwire holds no flow and its descriptors are back at `base`; then checks that
/// its RSS is flat. Returns the footprint.
fn back_to_baseline(pw: &mut Podwire, base: Footprint, what: &str) -> Result<Footprint> {
    let mut last = (String::new(), base);
    let r = util::wait_until(&format!("podwire back at its baseline ({what})"), T, || {
        let s = status(pw)?;
        let now = Footprint::of(pw);
        let done = field(&s, "flows") == 0 && (now.fds as i64 - base.fds as i64).abs() <= FD_SLACK;
        last = (s, now);
        Ok(done)
    });
    let (s, now) = last;
    r.with_context(|| format!("{now:?} against {base:?}; {s}"))?;
    let limit = base.rss_kib + RSS_SLACK_KIB.max(base.rss_kib / 10);
    ensure!(
        now.rss_kib <= limit,
        "RSS grew: {} KiB against {} KiB ({what})",
        now.rss_kib,
        base.rss_kib
    );
    Ok(now)
}

// --------------------------------------------------------------------- soak ----

fn soak(secs: u64) -> Result<String> {
    let topo = PodTopology::create()?;
    let dir = util::TempDir::new("soak")?;
    let flows = flows_binary()?;
    let flows_s = flows.display().to_string();
    let _iperf_up = far::start_iperf3(&topo.far, IPERF_UP)?;
    let _iperf_down = far::start_iperf3(&topo.far, IPERF_DOWN)?;
    let _echo = topo.far.spawn(
        "flows-serve",
        &[&flows_s, "serve", &format!("{FAR_HOST}:{FLOWS_PORT}")],
    )?;
    let _spray_sink = far::start_udp_echo(&topo.far, SPRAY_PORT)?;
    let file = dir.join("file");
    let md5 = far::random_file(&file, 8)?;
    let _files = far::start_file_server(&topo.far, FAR_HOST.into(), FILE_PORT, &file)?;
    // UDP flows of the spray close soon after it, so the end state can be compared.
    let mut pw = rig::podwire_in(&topo, &dir, None, &["--udp-timeout", "5"])?;
    let mut vm = boot(&pw, "soak", Some(&flows), dir.path())?;
    let c = vm.console();
    ensure!(
        guest::download_md5(c, FAR_HOST.into(), FILE_PORT, T)? == md5,
        "warm-up download"
    );
    let warm = Footprint::of(&pw);
    let base = back_to_baseline(&mut pw, warm, "after the warm-up")?;
    println!("soak: baseline {base:?}; {secs} s of load");

    let c = vm.console();
    let until = format!("end=$(($(date +%s)+{secs}))");
    let loop_of = |cmd: &str, log: &str| {
        format!(
            "({until}; while [ $(date +%s) -lt $end ]; do {cmd} || echo FAILED; done) \
             > {log} 2>&1 &"
        )
    };
    c.run_ok(
        &format!("iperf3 -c {FAR_HOST} -p {IPERF_UP} -t {secs} > /tmp/up.log 2>&1 &"),
        T,
    )?;
    c.run_ok(
        &format!("iperf3 -c {FAR_HOST} -p {IPERF_DOWN} -R -t {secs} > /tmp/down.log 2>&1 &"),
        T,
    )?;
    let churn = format!("{GUEST_FLOWS} churn {FAR_HOST}:{FLOWS_PORT} 200");
    c.run_ok(&loop_of(&churn, "/tmp/churn.log"), T)?;
    let spray = format!("{GUEST_FLOWS} spray {FAR_HOST}:{SPRAY_PORT} 500");
    c.run_ok(&loop_of(&spray, "/tmp/spray.log"), T)?;
    let garbage = format!("{GUEST_FLOWS} garbage eth0 2000 $(date +%s)");
    c.run_ok(&loop_of(&garbage, "/tmp/garbage.log"), T)?;

    let t0 = Instant::now();
    let mut downloads = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        let got = guest::download_md5(vm.console(), FAR_HOST.into(), FILE_PORT, T)?;
        ensure!(got == md5, "download {downloads} corrupted: {got} != {md5}");
        downloads += 1;
        pw.ensure_running()?;
        let left = Duration::from_secs(secs).saturating_sub(t0.elapsed());
        // One transfer every 30 s: the console waits on the guest, not this process.
        if left > Duration::ZERO {
            let pause = left.min(Duration::from_secs(30)).as_secs().max(1);
            vm.console()
                .run_ok(&format!("sleep {pause}"), T + Duration::from_secs(pause))?;
        }
    }
    let c = vm.console();
    util::wait_until("iperf3 both ways to finish", T, || {
        let up = c.run_ok("cat /tmp/up.log", T)?;
        let down = c.run_ok("cat /tmp/down.log", T)?;
        Ok(up.contains("iperf Done") && down.contains("iperf Done"))
    })?;
    let up = c.run_ok("grep receiver /tmp/up.log", T)?;
    let down = c.run_ok("grep receiver /tmp/down.log", T)?;
    // The loops end on their own at $end; wait for the last round of each.
    util::wait_until("the load loops to end", T, || {
        Ok(c.run_ok("jobs | grep -c Running || true", T)?.trim() == "0")
    })?;
    let churned = c.run_ok("grep -c churned /tmp/churn.log || true", T)?;
    let failed = c.run_ok("cat /tmp/*.log | grep -c FAILED || true", T)?;
    let end = back_to_baseline(&mut pw, base, "after the load")?;
    let lease = guest::udhcpc(vm.console(), "eth0", 3, T).context("DHCP after the soak")?;
    ensure!(lease.ip().is_some(), "no address after the soak");
    let s = status(&mut pw)?;
    Ok(format!(
        "{secs} s: {downloads} md5-checked downloads intact; iperf3 up {} / down {}; \
         {} churn rounds, {} failed rounds; podwire {end:?} (baseline {base:?}); DHCP ok; {s}",
        up.trim(),
        down.trim(),
        churned.trim(),
        failed.trim()
    ))
}

// ---------------------------------------------------------------- reconnect ----

/// Waits, idle, for as long as `path` exists (checked every 5 s).
fn wait_while_exists(path: Option<&Path>) {
    let Some(path) = path else {
        return;
    };
    let mut said = false;
    while path.exists() {
        if !said {
            println!("reconnect: pausing while {} exists", path.display());
            said = true;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn reconnect(cycles: u64, pause_while: Option<&Path>) -> Result<String> {
    let topo = PodTopology::create()?;
    let dir = util::TempDir::new("reconnect")?;
    let file = dir.join("file");
    let md5 = far::random_file(&file, 64)?;
    let _files = far::start_file_server(&topo.far, FAR_HOST.into(), FILE_PORT, &file)?;
    let mut pw = rig::podwire_in(&topo, &dir, None, &[])?;
    // A status round trip first: podwire has finished starting (all its threads and
    // descriptors are there) once it answers.
    status(&mut pw)?;
    let base = Footprint::of(&pw);
    println!("reconnect: baseline {base:?}; {cycles} cycles");
    for i in 0..cycles {
        wait_while_exists(pause_while);
        let mut vm = boot(&pw, &format!("reconnect-{i}"), None, dir.path())?;
        vm.console().run_ok(
            &format!("socat -u TCP4:{FAR_HOST}:{FILE_PORT} - > /dev/null &"),
            T,
        )?;
        util::wait_until("the download to be under way", T, || {
            Ok(field(&status(&mut pw)?, "tcp_bytes_to_guest") > 0)
        })?;
        // SAFETY: kill(2) on QEMU, our child: the frontend dies mid-transfer.
        unsafe { libc::kill(vm.pid() as libc::pid_t, libc::SIGKILL) };
        drop(vm);
        let now = back_to_baseline(&mut pw, base, &format!("cycle {i}"))?;
        println!("reconnect: cycle {i}: {now:?}");
    }
    wait_while_exists(pause_while);
    let mut vm = boot(&pw, "reconnect-last", None, dir.path())?;
    let got = guest::download_md5(vm.console(), FAR_HOST.into(), FILE_PORT, T)?;
    ensure!(got == md5, "the last guest's download corrupted");
    drop(vm);
    let end = back_to_baseline(&mut pw, base, "at the end")?;
    Ok(format!(
        "{cycles} kill-and-reconnect cycles; guest {} served (DHCP, md5-checked download); \
         podwire {end:?} (baseline {base:?})",
        cycles + 1
    ))
}

// -------------------------------------------------------------------- flood ----

fn flood(attempts: u64) -> Result<String> {
    let topo = PodTopology::create()?;
    let dir = util::TempDir::new("flood")?;
    let flows = flows_binary()?;
    let flows_s = flows.display().to_string();
    let _echo = topo.far.spawn(
        "flows-serve",
        &[&flows_s, "serve", &format!("{FAR_HOST}:{FLOWS_PORT}")],
    )?;
    // A small table, so that the flood meets the inbound budget.
    let forward = FORWARD_PORT.to_string();
    let mut pw = rig::podwire_in(&topo, &dir, None, &["-t", &forward, "--max-flows", "4096"])?;
    let mut vm = boot(&pw, "flood", Some(&flows), dir.path())?;
    let base = Footprint::of(&pw);
    let c = vm.console();
    c.run_ok(
        &format!("{GUEST_FLOWS} serve 0.0.0.0:{FORWARD_PORT} > /tmp/serve.log 2>&1 &"),
        T,
    )?;
    let mut flood = topo.far.spawn(
        "flood",
        &[
            &flows_s,
            "flood",
            &format!("{POD_ADDR}:{FORWARD_PORT}"),
            &attempts.to_string(),
            "--parallel",
            "512",
        ],
    )?;
    // While the flood runs: rounds of the guest's own connections, all of which must succeed.
    let mut rounds = 0;
    let mut connections = 0;
    while flood.is_running() || rounds == 0 {
        let churn = c.run(
            &format!("{GUEST_FLOWS} churn {FAR_HOST}:{FLOWS_PORT} 500"),
            Duration::from_secs(600),
        )?;
        if churn.code != 0 || !churn.output.contains("churned 500") {
            bail!(
                "the guest's connections failed during the flood (round {rounds}): {}",
                churn.output
            );
        }
        rounds += 1;
        connections += 500;
    }
    let status_code = flood.wait_timeout(Duration::from_secs(3600))?;
    let flood_log = flood.log();
    ensure!(status_code.success(), "the flood tool failed: {flood_log}");
    let s = status(&mut pw)?;
    let after = back_to_baseline(&mut pw, base, "after the flood")?;
    Ok(format!(
        "{}; meanwhile {connections} guest connections in {rounds} rounds, none failed; \
         podwire refused {} inbound connections (budget) and is back at its baseline \
         ({after:?}, baseline {base:?}); {s}",
        flood_log
            .lines()
            .rfind(|l| l.contains("flooded"))
            .unwrap_or("?"),
        field(&s, "tcp_drop_inbound_budget")
    ))
}
