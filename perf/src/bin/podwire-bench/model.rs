//! What is measured: backends, tests, the figures of one run, and all the results.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Backend {
    Podwire,
    Kernel,
    Passt,
    /// A second podwire binary (`--podwire-before PATH`), driven exactly as `Podwire`: the
    /// "before" column of a before/after comparison of two builds.
    PodwireBefore,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Podwire => "podwire",
            Backend::Kernel => "kernel path",
            Backend::Passt => "passt",
            Backend::PodwireBefore => "podwire before",
        }
    }

    /// A podwire process serves this backend (this build or the `--podwire-before` one).
    pub(crate) fn is_podwire(self) -> bool {
        matches!(self, Backend::Podwire | Backend::PodwireBefore)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Test {
    Tcp {
        reverse: bool,
        mtu: u32,
        streams: u32,
    },
    Pktgen {
        size: u32,
    },
    Ping,
    /// 1-byte request/response, TCP or UDP.
    Rr {
        udp: bool,
    },
    TxOnly {
        size: u32,
    },
    RxOnly {
        size: u32,
    },
}

impl Test {
    /// Lower is better (an RTT); everything else is a rate.
    pub(crate) fn lower_better(self) -> bool {
        matches!(self, Test::Ping)
    }

    pub(crate) fn label(self) -> String {
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
            Test::Rr { udp: false } => "TCP request/response".into(),
            Test::Rr { udp: true } => "UDP request/response".into(),
            Test::TxOnly { size } => format!("testpmd txonly {size} B"),
            Test::RxOnly { size } => format!("testpmd rxonly {size} B"),
        }
    }

    pub(crate) fn short(self) -> String {
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
            Test::Rr { udp: false } => "RR".into(),
            Test::Rr { udp: true } => "UDP RR".into(),
        }
    }
}

/// One measurement.
#[derive(Debug, Default, Clone)]
pub(crate) struct Figure {
    /// the headline: Gbit/s, delivered pps, ms, trans/s
    pub(crate) value: Option<f64>,
    /// offered rate (pktgen / testpmd / flood sent pps)
    pub(crate) offered: Option<f64>,
    /// packets sent and received (pktgen, testpmd)
    pub(crate) sent: Option<u64>,
    pub(crate) received: Option<u64>,
    pub(crate) bytes: Option<u64>,
    pub(crate) wall_s: Option<f64>,
    pub(crate) podwire_cpu_s: Option<f64>,
    pub(crate) qemu_cpu_s: Option<f64>,
    pub(crate) rest_cpu_s: Option<f64>,
    pub(crate) retransmits: Option<u64>,
    /// other QEMU processes on the machine at the start and the end of the window
    pub(crate) other_qemus: Option<(usize, usize)>,
    pub(crate) note: String,
    pub(crate) error: Option<String>,
}

impl Figure {
    pub(crate) fn failed(reason: String) -> Figure {
        Figure {
            error: Some(reason),
            ..Figure::default()
        }
    }

    pub(crate) fn ok_value(&self) -> Option<f64> {
        if self.error.is_some() {
            None
        } else {
            self.value
        }
    }

    pub(crate) fn loss(&self) -> Option<f64> {
        let (s, r) = (self.sent?, self.received?);
        (s > 0).then(|| 1.0 - r as f64 / s as f64)
    }

    pub(crate) fn s_per_gb(&self, cpu: Option<f64>) -> Option<f64> {
        bench::cpu_s_per_gb(cpu?, self.bytes?)
    }

    /// CPU microseconds per packet received at the far end (or by testpmd).
    pub(crate) fn us_per_pkt(&self, cpu: Option<f64>) -> Option<f64> {
        let (r, cpu) = (self.received?, cpu?);
        (r > 0).then(|| cpu * 1e6 / r as f64)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Memory {
    /// podwire's VmHWM before any frontend connected
    pub(crate) no_guest: Option<MemStatus>,
    /// right after the guest's DHCP
    pub(crate) after_dhcp: Option<MemStatus>,
    /// at the end of the session
    pub(crate) end: Option<MemStatus>,
}

#[derive(Default)]
pub(crate) struct Results {
    /// The best pass of each figure (see [`Results::record`]).
    pub(crate) figures: BTreeMap<(Backend, Test), Figure>,
    /// Every pass, in order.
    pub(crate) passes: BTreeMap<(Backend, Test), Vec<Figure>>,
    /// The backend process's memory per session (MTU, or 0 for testpmd), per backend
    pub(crate) memory: BTreeMap<Backend, Vec<(u32, Memory)>>,
    /// boot time per (backend, MTU)
    pub(crate) boots: Vec<(Backend, u32, f64)>,
    pub(crate) notes: Vec<String>,
}

impl Results {
    /// Records one pass of a figure. The figure reported is the best pass (the higher rate,
    /// the lower RTT; a failed pass only where no pass succeeded), so that one pass slowed by
    /// the machine's neighbours cannot decide a comparison; every pass is listed in the details.
    pub(crate) fn record(&mut self, b: Backend, t: Test, f: Figure) {
        self.passes.entry((b, t)).or_default().push(f.clone());
        let old = self.figures.get(&(b, t));
        let better = match (old.and_then(Figure::ok_value), f.ok_value()) {
            (_, None) => old.is_none(),
            (None, Some(_)) => true,
            (Some(o), Some(n)) => {
                if t.lower_better() {
                    n < o
                } else {
                    n > o
                }
            }
        };
        if better {
            self.figures.insert((b, t), f);
        }
    }

    pub(crate) fn get(&self, b: Backend, t: Test) -> Option<&Figure> {
        self.figures.get(&(b, t))
    }

    pub(crate) fn value(&self, b: Backend, t: Test) -> Option<f64> {
        self.get(b, t).and_then(Figure::ok_value)
    }

    /// Every pass's value, in order (None: failed).
    pub(crate) fn pass_values(&self, b: Backend, t: Test) -> Vec<Option<f64>> {
        self.passes
            .get(&(b, t))
            .map(|v| v.iter().map(Figure::ok_value).collect())
            .unwrap_or_default()
    }

    /// The sessions' memory of one backend (empty if it ran none).
    pub(crate) fn memory_of(&self, b: Backend) -> &[(u32, Memory)] {
        self.memory.get(&b).map(Vec::as_slice).unwrap_or_default()
    }
}
