//! Two podwire builds side by side: `--podwire-before PATH` against this build, every figure
//! measured in the same passes (interleaved, the order alternating), judged against the
//! run-to-run spread rather than by one number each.
//!
//! A row compares the passes of the two builds: every rate the guest or testpmd saw, podwire's
//! CPU per unit of it, and podwire's memory per session. "Worse beyond the spread" means that
//! every pass of this build was worse than every pass of the before build (the two ranges do
//! not overlap); if they overlap the difference is within what the machine gives from one pass
//! to the next. With one pass there is no spread to judge by, and the verdict says so.

use super::*;

/// How two builds' passes of one figure compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// every pass after is worse than every pass before
    WorseBeyondSpread,
    /// every pass after is better than every pass before
    BetterBeyondSpread,
    /// the two ranges overlap
    WithinSpread,
    /// a side has a single pass: no spread to judge by
    OnePass,
    /// a side has no successful pass
    NotMeasured,
}

impl Verdict {
    pub(crate) fn text(self) -> &'static str {
        match self {
            Verdict::WorseBeyondSpread => "**worse beyond the spread**",
            Verdict::BetterBeyondSpread => "better beyond the spread",
            Verdict::WithinSpread => "within the spread",
            Verdict::OnePass => "one pass: no spread to judge by",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// Judges the passes of a figure after a change against those before it.
pub(crate) fn verdict(before: &[f64], after: &[f64], lower_better: bool) -> Verdict {
    let (Some(b), Some(a)) = (range(before), range(after)) else {
        return Verdict::NotMeasured;
    };
    if before.len() < 2 || after.len() < 2 {
        return Verdict::OnePass;
    }
    let after_higher = a.0 > b.1;
    let after_lower = a.1 < b.0;
    match (after_higher, after_lower) {
        (false, false) => Verdict::WithinSpread,
        (higher, _) if higher != lower_better => Verdict::BetterBeyondSpread,
        _ => Verdict::WorseBeyondSpread,
    }
}

/// (min, max) of the values, None if there are none.
fn range(v: &[f64]) -> Option<(f64, f64)> {
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// One compared figure: its passes before and after (failed passes left out).
pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) before: Vec<f64>,
    pub(crate) after: Vec<f64>,
    pub(crate) lower_better: bool,
    pub(crate) decimals: usize,
}

impl Row {
    pub(crate) fn verdict(&self) -> Verdict {
        verdict(&self.before, &self.after, self.lower_better)
    }

    fn best(&self, v: &[f64]) -> Option<f64> {
        let (min, max) = range(v)?;
        Some(if self.lower_better { min } else { max })
    }
}

/// podwire's CPU per unit of what a test delivered, with the unit: per GB (TCP), per packet
/// (pktgen, testpmd), per transaction (request/response); none for ping.
fn cost(t: Test, f: &Figure) -> Option<f64> {
    match t {
        Test::Tcp { .. } => f.s_per_gb(f.podwire_cpu_s),
        Test::Pktgen { .. } | Test::TxOnly { .. } | Test::RxOnly { .. } | Test::Rr { .. } => {
            f.us_per_pkt(f.podwire_cpu_s)
        }
        Test::Ping => None,
    }
}

fn cost_label(t: Test) -> String {
    let unit = match t {
        Test::Tcp { .. } => "s/GB",
        Test::Rr { .. } => "µs/transaction",
        _ => "µs/packet",
    };
    format!("podwire CPU {unit}, {}", t.label())
}

/// The rows of every figure both builds measured, in the order of the tests.
pub(crate) fn rows(r: &Results) -> Vec<Row> {
    let (before, after) = (Backend::PodwireBefore, Backend::Podwire);
    let tests: Vec<Test> = r
        .passes
        .keys()
        .filter(|(b, t)| *b == after && r.passes.contains_key(&(before, *t)))
        .map(|(_, t)| *t)
        .collect();
    let ok_figures = |b: Backend, t: Test| -> Vec<&Figure> {
        r.passes[&(b, t)]
            .iter()
            .filter(|f| f.ok_value().is_some())
            .collect()
    };
    let mut rows = Vec::new();
    for &t in &tests {
        let value = |b| ok_figures(b, t).iter().filter_map(|f| f.value).collect();
        rows.push(Row {
            what: format!("{} ({})", t.label(), unit(t)),
            before: value(before),
            after: value(after),
            lower_better: t.lower_better(),
            decimals: if matches!(t, Test::Tcp { .. } | Test::Ping) {
                3
            } else {
                0
            },
        });
    }
    for &t in &tests {
        let costs =
            |b| -> Vec<f64> { ok_figures(b, t).iter().filter_map(|f| cost(t, f)).collect() };
        let (b, a) = (costs(before), costs(after));
        if !b.is_empty() || !a.is_empty() {
            rows.push(Row {
                what: cost_label(t),
                before: b,
                after: a,
                lower_better: true,
                decimals: 2,
            });
        }
    }
    rows.extend(memory_rows(r, before, after));
    rows
}

/// VmHWM before a frontend (every session) and at the end of each kind of session.
fn memory_rows(r: &Results, before: Backend, after: Backend) -> Vec<Row> {
    let mib_of = |b: Backend, pick: &dyn Fn(u32, &Memory) -> Option<MemStatus>| -> Vec<f64> {
        r.memory_of(b)
            .iter()
            .filter_map(|(mtu, m)| mib(pick(*mtu, m), |m| m.vm_hwm_kib))
            .collect()
    };
    let row = |what: String, pick: &dyn Fn(u32, &Memory) -> Option<MemStatus>| Row {
        what,
        before: mib_of(before, pick),
        after: mib_of(after, pick),
        lower_better: true,
        decimals: 1,
    };
    let mut rows = vec![row(
        "podwire VmHWM before a frontend, every session (MiB)".into(),
        &|_, m| m.no_guest,
    )];
    let mut kinds: Vec<u32> = r.memory_of(after).iter().map(|(mtu, _)| *mtu).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        let what = if kind == 0 {
            "podwire VmHWM at the end of a testpmd session (MiB)".to_string()
        } else {
            format!("podwire VmHWM at the end of a guest session, MTU {kind} (MiB)")
        };
        rows.push(row(what, &move |mtu, m| {
            (mtu == kind).then_some(m.end).flatten()
        }));
    }
    rows.retain(|r| !r.before.is_empty() || !r.after.is_empty());
    rows
}

fn passes_cell(v: &[f64], decimals: usize) -> String {
    if v.is_empty() {
        return "–".into();
    }
    v.iter()
        .map(|x| fmt_num(Some(*x), decimals))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// (max − min) / max of the passes, in %.
fn spread_cell(v: &[f64]) -> String {
    match range(v) {
        Some((min, max)) if v.len() > 1 && max != 0.0 => {
            format!("{:.1} %", (max - min) / max.abs() * 100.0)
        }
        _ => "–".into(),
    }
}

/// The before/after section of the report.
pub(crate) fn render(w: &mut String, args: &Args, r: &Results) {
    let _ = writeln!(w, "\n### Before/after: two podwire builds\n");
    let _ = writeln!(
        w,
        "`podwire before` is the `--podwire-before` binary, `podwire` this build (see the table \
         at the top), measured in the same {} pass(es), the order alternating. Each row lists \
         every successful pass of each build in the order run, the spread of each ((max − \
         min) / max), the best after over the best before, and the verdict: **worse beyond the \
         spread** when every pass after is worse than every pass before (the ranges do not \
         overlap).\n",
        args.passes
    );
    let _ = writeln!(
        w,
        "| figure | podwire before (passes) | podwire (passes) | spread before / after | after / before (best) | verdict |\n\
         |---|---:|---:|---:|---:|---|"
    );
    for row in rows(r) {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} / {} | {} | {} |",
            row.what,
            passes_cell(&row.before, row.decimals),
            passes_cell(&row.after, row.decimals),
            spread_cell(&row.before),
            spread_cell(&row.after),
            ratio_cell(row.best(&row.after), row.best(&row.before)),
            row.verdict().text(),
        );
    }
}
