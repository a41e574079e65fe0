//! The figures the report sets beside podwire's: passt with vhost-user and the kernel TAP path,
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
    pub(crate) passt_tcp_tx_65520: Range,
    pub(crate) passt_tcp_tx_1500: Range,
    pub(crate) kernel_tcp_tx_65520: Range,
    pub(crate) kernel_tcp_tx_1500: Range,
    pub(crate) passt_tcp_rx_65520: Range,
    pub(crate) passt_tcp_rx_1500: Range,
    pub(crate) kernel_tcp_rx_65520: Range,
    pub(crate) kernel_tcp_rx_1500: Range,
    pub(crate) passt_cpu_tx: Range,
    pub(crate) passt_cpu_rx: Range,
    pub(crate) passt_pktgen_64: Range,
    pub(crate) kernel_pktgen_64: Range,
    pub(crate) passt_txonly_64: Range,
    pub(crate) passt_txonly_us_per_pkt: Range,
    pub(crate) passt_rr: Range,
    pub(crate) kernel_rr: Range,
    pub(crate) passt_ping_ms: Range,
    pub(crate) kernel_ping_ms: Range,
    pub(crate) passt_rss_idle_mb: f64,
    pub(crate) passt_rss_peak_mb: f64,
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
