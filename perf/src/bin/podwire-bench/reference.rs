//! The figures the report sets beside the measured ones for scale: the kernel TAP path as the issue
//! quoted it (passt and the kernel path are measured in every run),
//! measured earlier on this kind of machine (not by this tool). They are data, in
//! `perf/reference-figures.json` (compiled in), each range `[low, high]`.

use std::sync::OnceLock;

use super::*;

pub(crate) type Range = (f64, f64);

/// `perf/reference-figures.json`; every field must be there and nothing else.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reference {
    /// Where the figures come from.
    #[allow(dead_code)]
    pub(crate) about: String,
    pub(crate) kernel_tcp_tx_65520: Range,
    pub(crate) kernel_tcp_tx_1500: Range,
    pub(crate) kernel_tcp_rx_65520: Range,
    pub(crate) kernel_tcp_rx_1500: Range,
    pub(crate) kernel_pktgen_64: Range,
    pub(crate) kernel_rr: Range,
    pub(crate) kernel_ping_ms: Range,
}

const FIGURES: &str = include_str!("../../../reference-figures.json");

/// The reference figures (parsed once; a unit test checks the file parses).
pub(crate) fn get() -> &'static Reference {
    static PARSED: OnceLock<Reference> = OnceLock::new();
    PARSED.get_or_init(|| parse(FIGURES).expect("perf/reference-figures.json"))
}

pub(crate) fn parse(json: &str) -> Result<Reference> {
    serde_json::from_str(json).context("reading the reference figures")
}

pub(crate) fn fmt(r: Range, decimals: usize) -> String {
    let f = |v: f64| fmt_num(Some(v), decimals);
    if r.0 == r.1 {
        f(r.0)
    } else {
        format!("{}–{}", f(r.0), f(r.1))
    }
}
