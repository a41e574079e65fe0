//! The bar charts (gnuplot): podwire, the kernel path and passt, all measured in this run.

use super::*;

pub(crate) fn tcp_tests(args: &Args) -> Vec<Test> {
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
pub(crate) fn issue_tcp_ref(t: Test, table: [reference::Range; 4]) -> Option<reference::Range> {
    match t {
        Test::Tcp {
            reverse,
            mtu,
            streams: 1,
        } => Some(table[usize::from(reverse) * 2 + usize::from(mtu != 65520)]),
        _ => None,
    }
}

pub(crate) fn kernel_ref_tcp(t: Test) -> Option<reference::Range> {
    let r = reference::get();
    issue_tcp_ref(
        t,
        [
            r.kernel_tcp_tx_65520,
            r.kernel_tcp_tx_1500,
            r.kernel_tcp_rx_65520,
            r.kernel_tcp_rx_1500,
        ],
    )
}

/// The charts to draw: (file name, chart).
pub(crate) fn charts(args: &Args, r: &Results) -> Vec<(String, Chart)> {
    let three = || {
        vec![
            ("podwire".to_string(), plot::PODWIRE.to_string()),
            (
                "kernel path (TAP+bridge+NAT)".to_string(),
                plot::KERNEL.to_string(),
            ),
            ("passt (vhost-user)".to_string(), plot::PASST.to_string()),
        ]
    };
    let group = |label: String, t: Test| Group {
        label,
        values: vec![
            r.value(Backend::Podwire, t),
            r.value(Backend::Kernel, t),
            r.value(Backend::Passt, t),
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
                    .map(|t| group(t.short(), t))
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
                    ("passt process".into(), plot::PASST.into()),
                ],
                groups: tcp_tests(args)
                    .into_iter()
                    .filter(|t| matches!(t, Test::Tcp { streams: 1, .. }))
                    .map(|t| Group {
                        label: t.short(),
                        values: vec![
                            cpu(Backend::Podwire, t, false),
                            cpu(Backend::Podwire, t, true),
                            cpu(Backend::Kernel, t, true),
                            cpu(Backend::Passt, t, false),
                        ],
                    })
                    .collect(),
            },
        ));
    }
    if args.has("pktgen") {
        let mut groups = Vec::new();
        for size in [64, 1400] {
            let t = Test::Pktgen { size };
            groups.push(group(format!("{size} B delivered"), t));
            let offered = |b| {
                r.get(b, t)
                    .filter(|f| f.error.is_none())
                    .and_then(|f| f.offered)
            };
            groups.push(Group {
                label: format!("{size} B sent by the guest"),
                values: vec![
                    offered(Backend::Podwire),
                    offered(Backend::Kernel),
                    offered(Backend::Passt),
                ],
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
                    r.value(Backend::Passt, t),
                ],
            });
        }
        out.push((
            "testpmd.png".to_string(),
            Chart {
                title: "dpdk-testpmd (virtio-user, no VM) on podwire and passt: packets per \
                        second delivered (kernel path: n/a)"
                    .into(),
                ylabel: "packets/s".into(),
                series: vec![
                    ("podwire: delivered".into(), plot::PODWIRE.into()),
                    (
                        "offered (txonly: put on the ring by testpmd; rxonly: sent by the far host)"
                            .into(),
                        "#9ecae1".into(),
                    ),
                    ("passt: delivered".into(), plot::PASST.into()),
                ],
                groups,
            },
        ));
    }
    if args.has("latency") {
        out.push((
            "rr.png".to_string(),
            Chart {
                title: "Request/response, 1 byte each way (higher is better)".into(),
                ylabel: "transactions/s".into(),
                series: three(),
                groups: vec![
                    group("TCP".into(), Test::Rr { udp: false }),
                    group("UDP".into(), Test::Rr { udp: true }),
                ],
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
                        r.value(Backend::Passt, Test::Ping),
                    ],
                }],
            },
        ));
    }
    out
}

/// Draws the charts; returns (file name, outcome).
pub(crate) fn write_charts(args: &Args, r: &Results, work: &Path) -> Vec<(String, Result<()>)> {
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
