//! Unit tests of the benchmark's bookkeeping and report.

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
        passes: 2,
        mtus: vec![65520, 1500],
        nic: NicKind::VhostUser,
        podwire_args: Vec::new(),
        nic_props: Vec::new(),
        podwire_before: None,
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
            Test::Rr { udp: false },
            Test::Rr { udp: true }
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

#[test]
fn the_command_line_has_clap_defaults_and_checks() {
    let a = args_from(["podwire-bench"]).unwrap();
    assert_eq!((a.seconds, a.quick), (10, false));
    assert_eq!(a.sections, SECTIONS);
    assert_eq!(
        a.backends,
        [Backend::Podwire, Backend::Passt, Backend::Kernel]
    );
    assert_eq!(a.passes, 2);
    assert_eq!(a.mtus, [65520, 1500]);
    assert_eq!(a.nic, NicKind::VhostUser);
    assert!(a.podwire_args.is_empty());
    assert!(a.out.ends_with("docs/perf.md") && a.plots.ends_with("docs/perf"));
    let a = args_from([
        "podwire-bench",
        "--quick",
        "--only",
        "tcp,latency",
        "--backends",
        "kernel",
        "--quiet-wait",
        "0",
    ])
    .unwrap();
    assert_eq!(a.seconds, 3);
    assert_eq!(a.sections, ["tcp", "latency"]);
    assert_eq!(a.backends, [Backend::Kernel]);
    assert_eq!(a.quiet_wait, Duration::ZERO);
    assert!(a
        .command
        .ends_with("--quick --only tcp,latency --backends kernel --quiet-wait 0"));
}

#[test]
fn the_reference_figures_are_data_that_parse() {
    let r = reference::get();
    assert_eq!(r.kernel_tcp_tx_65520, (1.18, 1.18));
    assert!(
        !FIGURES_JSON.contains("\"passt_"),
        "passt is measured in every run: no hard-coded passt figures"
    );
    assert!(
        reference::parse(r#"{"about": "x"}"#).is_err(),
        "every figure is needed"
    );
}

const FIGURES_JSON: &str = include_str!("../../../reference-figures.json");

#[test]
fn passes_alternate_and_the_best_pass_is_reported() {
    let a = args_from(["podwire-bench", "--passes", "3"]).unwrap();
    assert_eq!(a.passes, 3);
    assert_eq!(
        a.pass_order(0),
        [Backend::Podwire, Backend::Passt, Backend::Kernel]
    );
    assert_eq!(
        a.pass_order(1),
        [Backend::Kernel, Backend::Passt, Backend::Podwire]
    );
    let fig = |v: f64| Figure {
        value: Some(v),
        ..Figure::default()
    };
    let mut r = Results::default();
    // a failed pass, then a slow one, then a fast one: the fast one is reported
    r.record(
        Backend::Passt,
        Test::Rr { udp: false },
        Figure::failed("x".into()),
    );
    r.record(Backend::Passt, Test::Rr { udp: false }, fig(2000.0));
    r.record(Backend::Passt, Test::Rr { udp: false }, fig(3000.0));
    r.record(
        Backend::Passt,
        Test::Rr { udp: false },
        Figure::failed("y".into()),
    );
    assert_eq!(
        r.value(Backend::Passt, Test::Rr { udp: false }),
        Some(3000.0)
    );
    assert_eq!(
        r.pass_values(Backend::Passt, Test::Rr { udp: false }),
        [None, Some(2000.0), Some(3000.0), None]
    );
    // for an RTT the lower pass is the better
    r.record(Backend::Podwire, Test::Ping, fig(1.2));
    r.record(Backend::Podwire, Test::Ping, fig(0.9));
    r.record(Backend::Podwire, Test::Ping, fig(1.5));
    assert_eq!(r.value(Backend::Podwire, Test::Ping), Some(0.9));
    // passt figures are the measured ones in the targets
    let t = targets(&r)
        .into_iter()
        .find(|t| t.what.starts_with("TCP request/response"))
        .unwrap();
    assert_eq!(t.passt, Some(3000.0));
}

#[test]
fn stream_nic_mtus_and_podwire_args_parse() {
    let a = args_from([
        "podwire-bench",
        "--only",
        "tcp",
        "--backends",
        "podwire",
        "--mtus",
        "1500",
        "--nic",
        "stream",
    ])
    .unwrap();
    assert_eq!(a.nic, NicKind::Stream);
    assert_eq!(a.mtus, [1500]);
    assert!(a.command.ends_with("--mtus 1500 --nic stream"));
    // the stream NIC is podwire's only, and testpmd cannot use it
    let e = args_from(["podwire-bench", "--only", "tcp", "--nic", "stream"]).unwrap_err();
    assert!(e.to_string().contains("--backends podwire"), "{e}");
    let e = args_from(["podwire-bench", "--backends", "podwire", "--nic", "stream"]).unwrap_err();
    assert!(e.to_string().contains("testpmd"), "{e}");
    // podwire arguments that look like options, in both spellings, in order
    let a = args_from([
        "podwire-bench",
        "--podwire-arg",
        "--pcap",
        "--podwire-arg=/tmp/g.pcap",
        "--mtus",
        "1500,65520",
    ])
    .unwrap();
    assert_eq!(a.podwire_args, ["--pcap", "/tmp/g.pcap"]);
    assert!(a.nic_props.is_empty());
    assert_eq!(a.mtus, [1500, 65520]);
    assert_eq!(a.nic, NicKind::VhostUser);
    let a = args_from([
        "podwire-bench",
        "--nic-prop",
        "csum=off",
        "--nic-prop=host_tso4=off",
    ])
    .unwrap();
    assert_eq!(a.nic_props, ["csum=off", "host_tso4=off"]);
}

#[test]
fn virtio_feature_bits_are_named() {
    let mut bits = vec![b'0'; 64];
    for b in [0, 1, 11, 15] {
        bits[b] = b'1';
    }
    let bits = String::from_utf8(bits).unwrap();
    assert_eq!(
        virtio_offloads(&bits),
        "CSUM GUEST_CSUM HOST_TSO4 MRG_RXBUF"
    );
    assert_eq!(virtio_offloads(&"0".repeat(64)), "no offloads");
    assert_eq!(virtio_offloads(""), "no offloads");
}

#[test]
fn a_second_podwire_binary_is_a_backend_of_its_own() {
    // given, it runs right after podwire, so that the two builds alternate most closely
    let a = args_from(["podwire-bench", "--podwire-before", "/b/podwire"]).unwrap();
    assert_eq!(a.podwire_before.as_deref(), Some(Path::new("/b/podwire")));
    assert_eq!(
        a.backends,
        [
            Backend::Podwire,
            Backend::PodwireBefore,
            Backend::Passt,
            Backend::Kernel
        ]
    );
    assert_eq!(
        a.pass_order(1),
        [
            Backend::Kernel,
            Backend::Passt,
            Backend::PodwireBefore,
            Backend::Podwire
        ]
    );
    // where --backends places it, it stays there
    let a = args_from([
        "podwire-bench",
        "--backends",
        "podwire-before,podwire",
        "--podwire-before=rel/podwire",
    ])
    .unwrap();
    assert_eq!(a.backends, [Backend::PodwireBefore, Backend::Podwire]);
    assert!(a.podwire_before.unwrap().is_absolute());
    // the backend without a binary is refused; without the option nothing changes
    let e = args_from(["podwire-bench", "--backends", "podwire,podwire-before"]).unwrap_err();
    assert!(e.to_string().contains("--podwire-before"), "{e}");
    let a = args_from(["podwire-bench", "--backends", "podwire"]).unwrap();
    assert_eq!(
        (a.backends, a.podwire_before),
        (vec![Backend::Podwire], None)
    );
    // both builds are podwire: the stream NIC may measure them
    let a = args_from([
        "podwire-bench",
        "--backends",
        "podwire",
        "--podwire-before",
        "/b/podwire",
        "--nic",
        "stream",
        "--only",
        "tcp",
    ])
    .unwrap();
    assert_eq!(a.backends, [Backend::Podwire, Backend::PodwireBefore]);
}

#[test]
fn before_and_after_are_judged_against_the_spread() {
    use before_after::{verdict, Verdict};
    // rates: overlapping ranges are within the spread, disjoint ones beyond it
    assert_eq!(
        verdict(&[3.0, 3.6], &[3.4, 3.9], false),
        Verdict::WithinSpread
    );
    assert_eq!(
        verdict(&[3.0, 3.6], &[2.5, 2.9], false),
        Verdict::WorseBeyondSpread
    );
    assert_eq!(
        verdict(&[3.0, 3.6], &[3.7, 3.8], false),
        Verdict::BetterBeyondSpread
    );
    // costs and RTTs: lower is better
    assert_eq!(
        verdict(&[0.5, 0.6], &[0.7, 0.8], true),
        Verdict::WorseBeyondSpread
    );
    assert_eq!(
        verdict(&[0.5, 0.6], &[0.3, 0.4], true),
        Verdict::BetterBeyondSpread
    );
    assert_eq!(
        verdict(&[3.6, 3.6], &[3.6, 3.6], true),
        Verdict::WithinSpread
    );
    assert_eq!(verdict(&[3.0], &[1.0], false), Verdict::OnePass);
    assert_eq!(verdict(&[], &[1.0, 2.0], false), Verdict::NotMeasured);

    // the rows come from every pass of both builds, failed passes left out
    let fig = |v: f64, cpu: f64| Figure {
        value: Some(v),
        bytes: Some(1_000_000_000),
        podwire_cpu_s: Some(cpu),
        ..Figure::default()
    };
    let t = Test::Tcp {
        reverse: false,
        mtu: 1500,
        streams: 1,
    };
    let mut r = Results::default();
    r.record(Backend::PodwireBefore, t, fig(3.5, 0.5));
    r.record(Backend::Podwire, t, fig(3.6, 0.8));
    r.record(Backend::Podwire, t, Figure::failed("x".into()));
    r.record(Backend::Podwire, t, fig(3.4, 0.9));
    r.record(Backend::PodwireBefore, t, fig(3.7, 0.6));
    r.record(Backend::Kernel, Test::Rr { udp: false }, fig(4000.0, 0.0));
    let rows = before_after::rows(&r);
    assert_eq!(
        rows.len(),
        2,
        "the rate and podwire's CPU per GB; the kernel's RR is not compared"
    );
    assert_eq!(
        (rows[0].before.as_slice(), rows[0].after.as_slice()),
        (&[3.5, 3.7][..], &[3.6, 3.4][..])
    );
    assert_eq!(rows[0].verdict(), Verdict::WithinSpread);
    assert!(rows[1].what.contains("s/GB"));
    assert_eq!(rows[1].verdict(), Verdict::WorseBeyondSpread);
    let args = args_from(["podwire-bench", "--podwire-before", "/b/podwire"]).unwrap();
    let mut out = String::new();
    before_after::render(&mut out, &args, &r);
    assert!(
        out.contains(
            "| 3.500 / 3.700 | 3.600 / 3.400 | 5.4 % / 5.6 % | 0.97× | within the spread |"
        ),
        "{out}"
    );
    assert!(out.contains("**worse beyond the spread**"), "{out}");
}
