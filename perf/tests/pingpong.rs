//! The ping-pong harness end to end: our own vhost-user frontend (memfd memory, split rings,
//! smoltcp as the guest stack) gets a DHCP lease from the backend and plays UDP and TCP
//! request/response with the far host's echo server through it, and the direct path measures
//! the same from a kernel socket in the pod namespace. Against podwire always; against passt
//! when a passt binary can be had (`$PODWIRE_PASST`, or built from Debian's source package),
//! else that part is skipped with a message.
//!
//! Asserts that transactions completed (every TCP one; UDP ones may be lost on a loaded
//! machine, but not all), never how fast.

use podwire_perf::bench::passt;
use podwire_perf::bench::pingpong::{self, Plan, Via};
use podwire_perf::bench::placement::{Cpus, Placement};
use podwire_perf::frontend::pingpong::Proto;
use podwire_perf::frontend::Features;
use podwire_perf::util;
use std::path::PathBuf;

const COUNT: u64 = 200;

fn plan(paths: Vec<Via>, passt_bin: Option<PathBuf>) -> Plan {
    Plan {
        paths,
        protos: vec![Proto::Udp, Proto::Tcp],
        count: COUNT,
        warmup: 10,
        rounds: 1,
        features: Features::LINUX_DEFAULT.to_vec(),
        queue_size: 256,
        podwire_bin: podwire_perf::podwire_path().unwrap(),
        passt_bin,
        baseline_bin: None,
        self_bin: PathBuf::from(env!("CARGO_BIN_EXE_podwire-pingpong")),
        podwire_args: Vec::new(),
        podwire_env: Vec::new(),
        breakdown: false,
        placement: Placement::default(),
    }
}

/// podwire alone, UDP only, traced (`--breakdown`).
fn traced_udp_plan() -> Plan {
    let mut p = plan(vec![Via::Podwire], None);
    p.protos = vec![Proto::Udp];
    p.breakdown = true;
    p
}

fn check(report: &pingpong::Report, via: Via) {
    for proto in [Proto::Udp, Proto::Tcp] {
        let t = report
            .turns
            .iter()
            .find(|t| t.path == via && t.proto == proto)
            .unwrap_or_else(|| panic!("no {via:?} {proto:?} turn"));
        assert_eq!(
            t.stats.transactions + t.stats.lost,
            COUNT,
            "{via:?} {proto:?}"
        );
        match proto {
            Proto::Tcp => assert_eq!(t.stats.lost, 0),
            Proto::Udp => assert!(t.stats.transactions > 0, "{via:?}: every UDP answer lost"),
        }
        if via != Via::Direct {
            let d = t.driver.expect("frontend counters");
            assert!(d.rx_frames > 0 && d.tx_frames > 0, "{d:?}");
            assert!(
                d.interrupts > 0,
                "the frontend never woke on a call eventfd"
            );
            assert!(
                t.negotiated.contains(&Features::Version1),
                "{:?}",
                t.negotiated
            );
        }
    }
}

#[test]
fn podwire_and_direct() {
    if !util::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let report = pingpong::run(&plan(vec![Via::Direct, Via::Podwire], None)).unwrap();
    check(&report, Via::Direct);
    check(&report, Via::Podwire);
    // EVENT_IDX is offered by podwire and asked for by default
    let t = report
        .turns
        .iter()
        .find(|t| t.path == Via::Podwire)
        .unwrap();
    assert!(
        t.negotiated.contains(&Features::EventIdx),
        "{:?}",
        t.negotiated
    );
    let s = pingpong::summary_table(&report.summary);
    assert!(s.contains("| podwire | Tcp |"), "{s}");
}

#[test]
fn passt() {
    if !util::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let bin = match passt::binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped: no passt binary ({e:#})");
            return;
        }
    };
    let report = pingpong::run(&plan(vec![Via::Passt], Some(bin))).unwrap();
    check(&report, Via::Passt);
}

/// `--breakdown`: the syscall trace of podwire and the frontend is cut into segments for most
/// UDP transactions, and the segments add up to no more than the whole.
#[test]
fn breakdown_of_podwire() {
    if !util::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let report = pingpong::run(&traced_udp_plan()).unwrap();
    let t = &report.turns[0];
    let b = t.breakdown.as_ref().expect("a breakdown");
    assert!(
        b.transactions as u64 > COUNT / 2,
        "only {} of {} transactions parsed ({} skipped)",
        b.transactions,
        COUNT,
        b.skipped
    );
    let mean = |s: &str| b.segments[s].1;
    let parts: f64 = podwire_perf::bench::breakdown::SEGMENTS
        .iter()
        .filter(|s| **s != "total")
        .map(|s| mean(s))
        .sum();
    assert!(
        (parts - mean("total")).abs() < 1.0,
        "{parts} vs {}",
        mean("total")
    );
    assert!(pingpong::breakdown_table(&report.turns).is_some());
}

/// `--pin-*` with `--breakdown`: every party pinned to CPU 0 is seen by the scheduler trace
/// running there and nowhere else, each party's runs are counted, and the pinned run completes.
#[test]
fn pinned_parties_run_where_pinned() {
    if !util::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut p = traced_udp_plan();
    let cpu0 = || Some(Cpus(vec![0]));
    p.placement = Placement {
        frontend: cpu0(),
        backend: cpu0(),
        far: cpu0(),
    };
    let report = pingpong::run(&p).unwrap();
    let t = &report.turns[0];
    assert!(t.stats.transactions > 0);
    let sched = t
        .breakdown
        .as_ref()
        .and_then(|b| b.scheduling.clone())
        .expect("scheduling counts");
    for (name, runs) in [
        ("frontend", &sched.frontend),
        ("backend", &sched.backend),
        ("far host", &sched.far),
    ] {
        assert!(runs.per_transaction > 0.0, "{name}: {runs:?}");
        assert_eq!(
            runs.cpu_share.keys().copied().collect::<Vec<_>>(),
            vec![0],
            "{name} ran outside CPU 0: {runs:?}"
        );
    }
    let table = pingpong::breakdown_table(&report.turns).unwrap();
    assert!(table.contains("| backend: runs / after idle"), "{table}");
}

/// `--baseline`: a second podwire binary is measured as a path of its own in the same run
/// (here the same binary twice). And the held TX interrupt end to end: the frontend wakes once
/// per transaction (for the answer), not twice (the request's TX completion, then the answer),
/// although it asks for both as Linux's `napi_tx` does.
#[test]
fn podwire_against_a_baseline_binary() {
    if !util::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut p = plan(vec![Via::Podwire, Via::Baseline], None);
    p.baseline_bin = Some(podwire_perf::podwire_path().unwrap());
    let report = pingpong::run(&p).unwrap();
    check(&report, Via::Podwire);
    check(&report, Via::Baseline);
    for t in &report.turns {
        let d = t.driver.expect("frontend counters");
        // warm-up and timed transactions, plus a few frames of setup (ARP, the handshake)
        let transactions = COUNT + 10;
        assert!(
            2 * d.interrupts < 3 * transactions,
            "{:?} {:?}: {} interrupts for {transactions} transactions",
            t.path,
            t.proto,
            d.interrupts
        );
    }
    let s = pingpong::summary_table(&report.summary);
    assert!(s.contains("| baseline | Udp |"), "{s}");
}
