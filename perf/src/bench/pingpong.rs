//! The ping-pong benchmark: request/response latency added by a vhost-user backend, measured
//! with this crate's own frontend ([`crate::frontend`]) instead of a VM.
//!
//! In a fresh pod/far topology an echo server (`podwire-pingpong echo`) listens on the far host
//! (198.18.1.1:7010, UDP and TCP). Then, round after round, each path is measured in turn:
//!
//! - `direct`: a kernel socket in the pod namespace to the echo server (`podwire-pingpong
//!   direct`, run through `ip netns exec`): the far host's own round trip, the baseline;
//! - `podwire`: `podwire --guest-cidr 198.19.0.0/24` in the pod namespace, our frontend on its
//!   socket, smoltcp as the guest's stack (DHCP, then UDP and TCP transactions);
//! - `passt`: `passt --vhost-user -f` in the pod namespace, the same frontend.
//!
//! The order of the paths alternates from round to round (ABC, CBA, ...) so that a drift in
//! the machine's load does not favour one. Each backend is started fresh for its turn and its
//! CPU time over the turn is read from /proc. The summary takes, per path and protocol, the
//! median over the rounds of each figure; "added" is a backend's figure minus direct's.

use crate::bench;
use crate::bench::breakdown::{self, Breakdown, Trace};
use crate::bench::placement::{self, Placement};
use crate::frontend::pingpong::{GuestStack, Proto, RrStats};
use crate::frontend::{Features, NetDriver};
use crate::netns::{PodTopology, Proto as SsProto, FAR_HOST};
use crate::util::{self, TempDir};
use crate::{far, Podwire, PodwireConfig};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The echo server's port on the far host.
pub const ECHO_PORT: u16 = 7010;
/// The guest subnet podwire serves (outside the pod's and the far host's).
pub const GUEST_CIDR: &str = "198.19.0.0/24";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Direct,
    Podwire,
    Passt,
    /// podwire again, from another binary (`Plan::baseline_bin`): a before/after pair in one
    /// interleaved run.
    Baseline,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Podwire => "podwire",
            Via::Passt => "passt",
            Via::Baseline => "baseline",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub paths: Vec<Via>,
    pub protos: Vec<Proto>,
    pub count: u64,
    pub warmup: u64,
    pub rounds: u32,
    pub features: Vec<Features>,
    pub queue_size: u16,
    pub podwire_bin: PathBuf,
    /// Needed when `paths` has passt.
    pub passt_bin: Option<PathBuf>,
    /// Needed when `paths` has baseline: the podwire binary to compare with.
    pub baseline_bin: Option<PathBuf>,
    /// This program (run in the namespaces for `echo` and `direct`).
    pub self_bin: PathBuf,
    /// Extra podwire arguments (e.g. a trace option).
    pub podwire_args: Vec<String>,
    /// Environment for podwire.
    pub podwire_env: Vec<(String, String)>,
    /// Trace the backend's and the frontend's syscalls and cut each transaction into segments
    /// ([`super::breakdown`]); costs about a µs per traced call, so not for the headline figures.
    pub breakdown: bool,
    /// Where the frontend, the backend and the echo server run (default: where the scheduler
    /// puts them).
    pub placement: Placement,
}

/// One path's turn in one round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Turn {
    pub round: u32,
    pub path: Via,
    pub proto: Proto,
    pub stats: RrStats,
    /// The backend's CPU time over the turn (all protocols), µs per transaction.
    pub backend_cpu_us_per_transaction: Option<f64>,
    pub negotiated: Vec<Features>,
    /// The frontend's counters over this turn (warm-up included).
    pub driver: Option<crate::frontend::net::DriverStats>,
    pub breakdown: Option<Breakdown>,
}

/// The median over the rounds of one path's figures, and what it adds to direct's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub path: Via,
    pub proto: Proto,
    pub rounds: usize,
    pub trans_per_s: f64,
    pub median_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub added_median_us: Option<f64>,
    pub added_p99_us: Option<f64>,
    pub added_p999_us: Option<f64>,
    pub backend_cpu_us_per_transaction: Option<f64>,
    pub lost: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub echo_server: String,
    pub count: u64,
    pub warmup: u64,
    pub rounds: u32,
    pub features_asked: Vec<Features>,
    pub podwire: String,
    pub passt: Option<String>,
    pub load_average_at_start: Option<f64>,
    pub placement: Placement,
    pub summary: Vec<Summary>,
    pub turns: Vec<Turn>,
}

/// The order of the paths in round `r`: as given in even rounds, reversed in odd ones.
pub fn round_order(paths: &[Via], r: u32) -> Vec<Via> {
    let mut v = paths.to_vec();
    if r % 2 == 1 {
        v.reverse();
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per path and protocol, the median over the rounds; "added" against direct's medians.
pub fn summarize(turns: &[Turn]) -> Vec<Summary> {
    let mut groups: BTreeMap<(Proto, Via), Vec<&Turn>> = BTreeMap::new();
    for t in turns {
        groups.entry((t.proto, t.path)).or_default().push(t);
    }
    let fig =
        |ts: &[&Turn], f: fn(&RrStats) -> f64| median(ts.iter().map(|t| f(&t.stats)).collect());
    let mut out = Vec::new();
    for ((proto, path), ts) in &groups {
        let direct = groups.get(&(*proto, Via::Direct));
        let added = |f: fn(&RrStats) -> f64| -> Option<f64> {
            match (path, direct) {
                (Via::Direct, _) | (_, None) => None,
                (_, Some(d)) => Some(fig(ts, f) - fig(d, f)),
            }
        };
        let cpu: Vec<f64> = ts
            .iter()
            .filter_map(|t| t.backend_cpu_us_per_transaction)
            .collect();
        out.push(Summary {
            path: *path,
            proto: *proto,
            rounds: ts.len(),
            trans_per_s: fig(ts, |s| s.trans_per_s),
            median_us: fig(ts, |s| s.median_us),
            p99_us: fig(ts, |s| s.p99_us),
            p999_us: fig(ts, |s| s.p999_us),
            added_median_us: added(|s| s.median_us),
            added_p99_us: added(|s| s.p99_us),
            added_p999_us: added(|s| s.p999_us),
            backend_cpu_us_per_transaction: (!cpu.is_empty()).then(|| median(cpu)),
            lost: ts.iter().map(|t| t.stats.lost).sum(),
        });
    }
    out
}

/// A Markdown table of the summary.
pub fn summary_table(summary: &[Summary]) -> String {
    let opt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:+.1}"));
    let mut s = String::from(
        "| path | proto | trans/s | median µs | p99 µs | p99.9 µs | added median | added p99 | \
         added p99.9 | backend CPU µs/trans |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for x in summary {
        s.push_str(&format!(
            "| {} | {:?} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |\n",
            x.path.name(),
            x.proto,
            x.trans_per_s,
            x.median_us,
            x.p99_us,
            x.p999_us,
            opt(x.added_median_us),
            opt(x.added_p99_us),
            opt(x.added_p999_us),
            x.backend_cpu_us_per_transaction
                .map_or("–".into(), |v| format!("{v:.1}")),
        ));
    }
    s
}

/// The breakdowns of the turns that have one, as a Markdown table (one column per turn).
pub fn breakdown_table(turns: &[Turn]) -> Option<String> {
    let cols: Vec<(String, &Breakdown)> = turns
        .iter()
        .filter_map(|t| {
            let b = t.breakdown.as_ref()?;
            Some((format!("{} {:?} r{}", t.path.name(), t.proto, t.round), b))
        })
        .collect();
    (!cols.is_empty()).then(|| breakdown::table(&cols))
}

/// Runs the plan in a fresh topology.
pub fn run(plan: &Plan) -> Result<Report> {
    util::require_root()?;
    if plan.paths.contains(&Via::Passt) && plan.passt_bin.is_none() {
        bail!("the plan has passt but no passt binary");
    }
    if plan.paths.contains(&Via::Baseline) && plan.baseline_bin.is_none() {
        bail!("the plan has baseline but no baseline binary");
    }
    let load = bench::loadavg1();
    if let Some(cpus) = &plan.placement.frontend {
        // Before anything is spawned: `direct`'s client inherits the frontend's CPUs.
        placement::pin_process(std::process::id(), cpus).context("pinning the frontend")?;
    }
    let topo = PodTopology::create()?;
    let server = SocketAddrV4::new(FAR_HOST, ECHO_PORT);
    let self_s = plan.self_bin.display().to_string();
    let server_s = server.to_string();
    let mut echo = topo
        .far
        .spawn("echo", &[&self_s, "echo", "--listen", &server_s])?;
    far::wait_service(&topo.far, &mut echo, SsProto::Udp, FAR_HOST, ECHO_PORT)?;
    far::wait_service(&topo.far, &mut echo, SsProto::Tcp, FAR_HOST, ECHO_PORT)?;
    if let Some(cpus) = &plan.placement.far {
        placement::pin_process(echo.pid(), cpus).context("pinning the echo server")?;
    }
    let dir = TempDir::new("pingpong")?;
    let mut turns = Vec::new();
    for r in 0..plan.rounds {
        for path in round_order(&plan.paths, r) {
            eprintln!("round {} of {}: {}", r + 1, plan.rounds, path.name());
            let t = match path {
                Via::Direct => direct_turn(plan, &topo, server),
                Via::Podwire | Via::Passt | Via::Baseline => {
                    backend_turn(plan, &topo, path, server, &dir, echo.pid())
                }
            }
            .with_context(|| format!("round {}, {}", r + 1, path.name()))?;
            turns.extend(t.into_iter().map(|mut t| {
                t.round = r + 1;
                t
            }));
        }
    }
    echo.stop();
    Ok(Report {
        echo_server: server_s,
        count: plan.count,
        warmup: plan.warmup,
        rounds: plan.rounds,
        features_asked: plan.features.clone(),
        podwire: plan.podwire_bin.display().to_string(),
        passt: plan
            .passt_bin
            .as_ref()
            .map(|p| format!("{} ({})", p.display(), super::passt::version(p))),
        load_average_at_start: load,
        placement: plan.placement.clone(),
        summary: summarize(&turns),
        turns,
    })
}

fn direct_turn(plan: &Plan, topo: &PodTopology, server: SocketAddrV4) -> Result<Vec<Turn>> {
    let protos: Vec<String> = plan
        .protos
        .iter()
        .map(|p| format!("{p:?}").to_lowercase())
        .collect();
    let out = topo.pod.exec(&[
        &plan.self_bin.display().to_string(),
        "direct",
        "--server",
        &server.to_string(),
        "--proto",
        &protos.join(","),
        "--count",
        &plan.count.to_string(),
        "--warmup",
        &plan.warmup.to_string(),
    ])?;
    let stats: Vec<(Proto, RrStats)> =
        serde_json::from_str(&out).context("reading `podwire-pingpong direct`'s JSON")?;
    Ok(stats
        .into_iter()
        .map(|(proto, stats)| Turn {
            round: 0,
            path: Via::Direct,
            proto,
            stats,
            backend_cpu_us_per_transaction: None,
            negotiated: Vec::new(),
            driver: None,
            breakdown: None,
        })
        .collect())
}

fn backend_turn(
    plan: &Plan,
    topo: &PodTopology,
    path: Via,
    server: SocketAddrV4,
    dir: &TempDir,
    far_pid: u32,
) -> Result<Vec<Turn>> {
    let socket = dir.join(&format!("{}.sock", path.name()));
    let mut podwire = None;
    let mut passt = None;
    let pid = match path {
        Via::Podwire | Via::Baseline => {
            let mut cfg = PodwireConfig::new(&socket);
            cfg.guest_cidr = Some(GUEST_CIDR.into());
            cfg.extra_args = plan.podwire_args.clone();
            cfg.env = plan.podwire_env.clone();
            let bin = match path {
                Via::Baseline => plan.baseline_bin.as_ref().context("no baseline binary")?,
                _ => &plan.podwire_bin,
            };
            let p = Podwire::spawn_binary(bin, Some(&topo.pod), &cfg)?;
            let pid = p.pid();
            podwire = Some(p);
            pid
        }
        Via::Passt => {
            let bin = plan.passt_bin.as_ref().context("no passt binary")?;
            let p = super::passt::Passt::spawn(&topo.pod, bin, &socket, &[])?;
            let pid = p.pid();
            passt = Some(p);
            pid
        }
        Via::Direct => unreachable!("direct has no backend"),
    };
    if let Some(cpus) = &plan.placement.backend {
        // Before the frontend connects, so the threads made for it inherit the pinning.
        placement::pin_process(pid, cpus).context("pinning the backend")?;
    }
    let turns = guest_turns(plan, &socket, path, server, pid, far_pid);
    drop(podwire);
    drop(passt);
    turns
}

/// Connects our frontend, gets an address by DHCP and runs each protocol's transactions.
fn guest_turns(
    plan: &Plan,
    socket: &Path,
    path: Via,
    server: SocketAddrV4,
    backend_pid: u32,
    far_pid: u32,
) -> Result<Vec<Turn>> {
    let driver = NetDriver::connect(socket, &plan.features, plan.queue_size)?;
    let negotiated = driver.negotiated();
    let mut stack = GuestStack::new(driver);
    stack.dhcp(Duration::from_secs(20))?;
    let kick_fd = stack.phy.driver.tx_kick_fd();
    let mut turns = Vec::new();
    for &proto in &plan.protos {
        let cpu0 = bench::cpu_seconds(backend_pid).ok();
        let counted0 = stack.phy.driver.stats;
        let trace = if plan.breakdown {
            let mut tids = breakdown::threads(backend_pid);
            let far_tids = breakdown::threads(far_pid);
            // SAFETY: gettid has no preconditions.
            let me = unsafe { libc::gettid() } as u32;
            tids.push(me);
            Some((Trace::start(&tids)?, tids, me, far_tids))
        } else {
            None
        };
        let stats = stack.rr(proto, server, plan.warmup, plan.count)?;
        let cpu1 = bench::cpu_seconds(backend_pid).ok();
        let breakdown = match trace {
            Some((trace, tids, me, far_tids)) => {
                let recorded = trace.stop()?;
                let fds = breakdown::fd_kinds(backend_pid);
                let backend_tids = tids.into_iter().filter(|&t| t != me).collect();
                let mut b = breakdown::analyze(
                    &recorded.calls,
                    &breakdown::Sides {
                        backend_tids: &backend_tids,
                        backend_fds: &fds,
                        frontend_tid: me,
                        kick_fd: kick_fd as i64,
                    },
                    recorded.overrun,
                );
                b.scheduling = Some(breakdown::runs(
                    &recorded,
                    me,
                    &backend_tids,
                    &far_tids,
                    plan.warmup + plan.count,
                ));
                Some(b)
            }
            None => None,
        };
        let total = plan.warmup + plan.count;
        turns.push(Turn {
            round: 0,
            path,
            proto,
            backend_cpu_us_per_transaction: cpu0
                .zip(cpu1)
                .map(|(a, b)| (b - a) * 1e6 / total.max(1) as f64),
            stats,
            negotiated: negotiated.clone(),
            driver: Some(stack.phy.driver.stats.since(&counted0)),
            breakdown,
        });
    }
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(path: Via, round: u32, median: f64) -> Turn {
        let mut samples: Vec<u64> = vec![(median * 1000.0) as u64; 10];
        Turn {
            round,
            path,
            proto: Proto::Udp,
            stats: RrStats::from_samples(&mut samples, 0, Duration::from_secs(1)),
            backend_cpu_us_per_transaction: None,
            negotiated: Vec::new(),
            driver: None,
            breakdown: None,
        }
    }

    #[test]
    fn rounds_alternate() {
        let p = [Via::Direct, Via::Podwire, Via::Passt];
        assert_eq!(round_order(&p, 0), p.to_vec());
        assert_eq!(
            round_order(&p, 1),
            vec![Via::Passt, Via::Podwire, Via::Direct]
        );
    }

    /// One noisy round cannot move the summary: it is the median over the rounds.
    #[test]
    fn summary_is_the_median_over_rounds_minus_direct() {
        let turns = vec![
            turn(Via::Direct, 1, 20.0),
            turn(Via::Direct, 2, 22.0),
            turn(Via::Direct, 3, 21.0),
            turn(Via::Podwire, 1, 50.0),
            turn(Via::Podwire, 2, 500.0),
            turn(Via::Podwire, 3, 52.0),
        ];
        let s = summarize(&turns);
        let pw = s.iter().find(|x| x.path == Via::Podwire).unwrap();
        assert_eq!(pw.median_us, 52.0);
        assert_eq!(pw.added_median_us, Some(31.0));
        let d = s.iter().find(|x| x.path == Via::Direct).unwrap();
        assert_eq!(d.added_median_us, None);
        assert!(summary_table(&s).contains("| podwire | Udp | 10 | 52.0 |"));
    }
}
