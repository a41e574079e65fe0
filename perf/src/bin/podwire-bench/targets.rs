//! The targets, each met or not met by this run.

use super::*;

pub(crate) struct Target {
    pub(crate) what: String,
    pub(crate) measured: Option<f64>,
    /// passt's figure in this run
    pub(crate) passt: Option<f64>,
    /// the kernel path in this run, where it has the figure
    pub(crate) kernel: Option<f64>,
    pub(crate) factor: f64,
    /// lower is better (CPU, RSS)
    pub(crate) lower_better: bool,
    pub(crate) decimals: usize,
}

impl Target {
    /// The reference: the better of passt and the kernel path.
    pub(crate) fn reference(&self) -> Option<f64> {
        let both = [self.passt, self.kernel].into_iter().flatten();
        if self.lower_better {
            both.reduce(f64::min)
        } else {
            both.reduce(f64::max)
        }
    }

    pub(crate) fn reference_src(&self) -> &'static str {
        match (self.passt, self.kernel) {
            (Some(p), Some(k)) if (k > p) != self.lower_better && k != p => "kernel path",
            (Some(_), _) => "passt",
            (None, Some(_)) => "kernel path",
            (None, None) => "–",
        }
    }

    pub(crate) fn verdict(&self, reference: Option<f64>) -> &'static str {
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

pub(crate) fn targets(r: &Results) -> Vec<Target> {
    let tcp = |reverse, mtu| Test::Tcp {
        reverse,
        mtu,
        streams: 1,
    };
    let pw = |t| r.value(Backend::Podwire, t);
    let kp = |t| r.value(Backend::Kernel, t);
    let pa = |t| r.value(Backend::Passt, t);
    let ok = |b, t| r.get(b, t).filter(|f| f.error.is_none());
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
            passt: pa(t),
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
        passt: pa(t),
        kernel: kp(t),
        factor: 1.5,
        lower_better: false,
        decimals: 0,
    });
    let t = Test::TxOnly { size: 64 };
    v.push(Target {
        what: "testpmd txonly 64 B delivered (pps)".into(),
        measured: pw(t),
        passt: pa(t),
        kernel: None,
        factor: 4.0,
        lower_better: false,
        decimals: 0,
    });
    v.push(Target {
        what: "podwire CPU per packet, testpmd txonly 64 B (µs)".into(),
        measured: ok(Backend::Podwire, t).and_then(|f| f.us_per_pkt(f.podwire_cpu_s)),
        passt: ok(Backend::Passt, t).and_then(|f| f.us_per_pkt(f.podwire_cpu_s)),
        kernel: None,
        factor: 0.25,
        lower_better: true,
        decimals: 3,
    });
    for reverse in [false, true] {
        let t = tcp(reverse, 65520);
        v.push(Target {
            what: format!("podwire CPU s/GB, {}", t.label()),
            measured: ok(Backend::Podwire, t).and_then(|f| f.s_per_gb(f.podwire_cpu_s)),
            passt: ok(Backend::Passt, t).and_then(|f| f.s_per_gb(f.podwire_cpu_s)),
            kernel: None,
            factor: 0.5,
            lower_better: true,
            decimals: 3,
        });
    }
    v.push(Target {
        what: "podwire peak RSS with a guest (MiB)".into(),
        measured: peak_rss_mib(r, Backend::Podwire),
        passt: peak_rss_mib(r, Backend::Passt),
        kernel: None,
        factor: 1.0,
        lower_better: true,
        decimals: 1,
    });
    v.push(Target {
        what: "podwire RSS idle, before a guest (MiB)".into(),
        measured: idle_rss_mib(r, Backend::Podwire),
        passt: idle_rss_mib(r, Backend::Passt),
        kernel: None,
        factor: 1.0,
        lower_better: true,
        decimals: 1,
    });
    v.push(Target {
        what: "TCP request/response (trans/s)".into(),
        measured: pw(Test::Rr { udp: false }),
        passt: pa(Test::Rr { udp: false }),
        kernel: kp(Test::Rr { udp: false }),
        factor: 1.2,
        lower_better: false,
        decimals: 0,
    });
    v
}
