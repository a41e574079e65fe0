//! Helpers for `podwire-bench`: reading a process's CPU time and memory from
//! /proc, pulling figures out of iperf3's `--json` report, formatting, and
//! replacing the generated part of a Markdown file between markers.
//!
//! Nothing here asserts on speed: the benchmark records what it measures.

use anyhow::{bail, Context, Result};
use std::process::Command;

pub mod breakdown;
pub mod kernel_path;
pub mod latency;
pub mod passt;
pub mod pingpong;
pub mod pktgen;
pub mod placement;
pub mod plot;
pub mod testpmd;

/// Marks the start of the part of `docs/perf.md` the benchmark writes.
pub const BEGIN_MARKER: &str = "<!-- results:begin -->";
/// Marks its end.
pub const END_MARKER: &str = "<!-- results:end -->";

// ------------------------------------------------------------------ /proc ----

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of the times in
/// /proc/PID/stat.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime (fields 14 and 15, in clock ticks) from the text of
/// /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Result<u64> {
    let close = stat.rfind(')').context("no ')' in /proc/PID/stat")?;
    // after ")": field 3 (state) is the first
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("/proc/PID/stat has no field {n}"))?
            .parse::<u64>()
            .with_context(|| format!("/proc/PID/stat field {n} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// CPU seconds (user + system, all threads) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(parse_stat_cpu_ticks(&stat)? as f64 / clock_ticks_per_second() as f64)
}

/// Memory figures of a process from /proc/PID/status, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStatus {
    /// peak resident set size
    pub vm_hwm_kib: u64,
    /// resident set size now
    pub vm_rss_kib: u64,
    /// of which anonymous memory
    pub rss_anon_kib: u64,
    /// of which file mappings
    pub rss_file_kib: u64,
    /// of which shared memory (for podwire and QEMU: the guest's RAM, a memfd)
    pub rss_shmem_kib: u64,
}

/// Parses the `VmHWM`, `VmRSS`, `RssAnon`, `RssFile` and `RssShmem` lines of
/// /proc/PID/status; fails without `VmHWM`.
pub fn parse_status_mem(status: &str) -> Result<MemStatus> {
    let mut m = MemStatus::default();
    let mut have_hwm = false;
    for line in status.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kib = || -> Option<u64> {
            let mut it = rest.split_whitespace();
            let v = it.next()?.parse().ok()?;
            (it.next() == Some("kB")).then_some(v)
        };
        let slot = match key {
            "VmHWM" => {
                have_hwm = true;
                &mut m.vm_hwm_kib
            }
            "VmRSS" => &mut m.vm_rss_kib,
            "RssAnon" => &mut m.rss_anon_kib,
            "RssFile" => &mut m.rss_file_kib,
            "RssShmem" => &mut m.rss_shmem_kib,
            _ => continue,
        };
        *slot = kib().with_context(|| format!("cannot parse {line:?}"))?;
    }
    if !have_hwm {
        bail!("no VmHWM line in /proc/PID/status");
    }
    Ok(m)
}

/// [`MemStatus`] of process `pid`.
pub fn mem_status(pid: u32) -> Result<MemStatus> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_mem(&s)
}

/// The command name of process `pid` (/proc/PID/comm), if it exists.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Pids of running processes whose command name starts with `prefix`
/// (e.g. "qemu-system"), excluding `except`.
pub fn pids_named(prefix: &str, except: &[u32]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !except.contains(pid))
        .filter(|&pid| comm(pid).is_some_and(|c| c.starts_with(prefix)))
        .collect();
    v.sort_unstable();
    v
}

/// Busy CPU time of the whole machine so far, in seconds summed over all CPUs: user, nice,
/// system, irq, softirq and steal of the `cpu` line of /proc/stat (guest time is part of user).
pub fn parse_machine_busy_ticks(proc_stat: &str) -> Result<u64> {
    let line = proc_stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no 'cpu' line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().context("/proc/stat: not a number"))
        .collect::<Result<_>>()?;
    if v.len() < 8 {
        bail!("/proc/stat: short 'cpu' line");
    }
    // user nice system idle iowait irq softirq steal
    Ok(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// [`parse_machine_busy_ticks`] of this machine, in seconds.
pub fn machine_busy_seconds() -> Result<f64> {
    let s = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    Ok(parse_machine_busy_ticks(&s)? as f64 / clock_ticks_per_second() as f64)
}

/// The 1-minute load average.
pub fn loadavg1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ----------------------------------------------------------------- iperf3 ----

/// What the benchmark takes from an iperf3 `--json` report.
#[derive(Debug, Clone, PartialEq)]
pub struct IperfResult {
    /// bytes counted by the receiver (`end.sum_received.bytes`)
    pub bytes: u64,
    /// the receiver's rate (`end.sum_received.bits_per_second`)
    pub bits_per_second: f64,
    /// the receiver's measuring time (`end.sum_received.seconds`)
    pub seconds: f64,
    /// the sender's retransmissions, when reported (`end.sum_sent.retransmits`)
    pub retransmits: Option<u64>,
    /// CPU use of the iperf3 process in the guest, % (`host_total`)
    pub guest_iperf_cpu_percent: Option<f64>,
}

/// The parts of iperf3's `--json` report the benchmark reads; serde ignores the rest.
#[derive(Debug, serde::Deserialize)]
struct IperfReport {
    error: Option<String>,
    end: Option<IperfEnd>,
}

#[derive(Debug, serde::Deserialize)]
struct IperfEnd {
    sum_received: Option<IperfSum>,
    sum_sent: Option<IperfSum>,
    cpu_utilization_percent: Option<IperfCpu>,
}

#[derive(Debug, serde::Deserialize)]
struct IperfSum {
    bytes: Option<f64>,
    bits_per_second: Option<f64>,
    seconds: Option<f64>,
    retransmits: Option<f64>,
}

#[derive(Debug, serde::Deserialize)]
struct IperfCpu {
    host_total: Option<f64>,
}

/// Reads an iperf3 `--json` report (anything before its first `{`, such as a shell line, and
/// after its closing brace is skipped). An `"error"` member, or a report without
/// `end.sum_received`, is an error (with iperf3's own message).
pub fn parse_iperf3_json(json: &str) -> Result<IperfResult> {
    let Some(start) = json.find('{') else {
        bail!(
            "iperf3 printed no JSON: {}",
            crate::util::tail(json.trim(), 300)
        );
    };
    let report: IperfReport = serde_json::Deserializer::from_str(&json[start..])
        .into_iter()
        .next()
        .context("iperf3 printed no JSON")?
        .context("iperf3's JSON report does not parse")?;
    if let Some(err) = report.error {
        bail!(
            "iperf3: {}",
            err.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    let end = report.end.context("iperf3's report has no end")?;
    let received = end
        .sum_received
        .context("iperf3's report has no end.sum_received")?;
    let bytes = received
        .bytes
        .context("iperf3's report has no end.sum_received.bytes")?;
    let bps = received
        .bits_per_second
        .context("iperf3's report has no end.sum_received.bits_per_second")?;
    Ok(IperfResult {
        bytes: bytes as u64,
        bits_per_second: bps,
        seconds: received.seconds.unwrap_or(0.0),
        retransmits: end.sum_sent.and_then(|s| s.retransmits).map(|r| r as u64),
        guest_iperf_cpu_percent: end.cpu_utilization_percent.and_then(|c| c.host_total),
    })
}

// ----------------------------------------------------------- arithmetic ----

/// CPU seconds per 10^9 bytes moved; None when nothing moved.
pub fn cpu_s_per_gb(cpu_seconds: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_seconds / (bytes as f64 / 1e9))
}

/// `a / b`, None when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// Formats an optional figure with `decimals`, "–" when absent.
pub fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".to_string(),
    }
}

/// Makes text safe for one Markdown table cell (no '|', no line breaks),
/// cut to `max` chars.
pub fn md_cell(s: &str, max: usize) -> String {
    let one_line: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max).collect();
        format!("{cut}…")
    }
}

// ------------------------------------------------------------- markdown ----

/// Puts `generated` between [`BEGIN_MARKER`] and [`END_MARKER`] in
/// `document`, keeping everything outside them. Without markers, the block is
/// appended (with the markers) at the end.
pub fn replace_generated(document: &str, generated: &str) -> Result<String> {
    let block = format!("{BEGIN_MARKER}\n{}\n{END_MARKER}", generated.trim_end());
    match (document.find(BEGIN_MARKER), document.find(END_MARKER)) {
        (Some(b), Some(e)) if b < e => Ok(format!(
            "{}{block}{}",
            &document[..b],
            &document[e + END_MARKER.len()..]
        )),
        (None, None) => {
            let mut d = document.trim_end().to_string();
            if !d.is_empty() {
                d.push_str("\n\n");
            }
            d.push_str(&block);
            d.push('\n');
            Ok(d)
        }
        _ => bail!("the results markers are unbalanced ({BEGIN_MARKER} … {END_MARKER})"),
    }
}

// --------------------------------------------------------------- machine ----

/// Runs a program and returns its trimmed stdout's first line, or
/// "unknown (why)".
pub fn command_line_output(argv: &[&str]) -> String {
    match Command::new(argv[0]).args(&argv[1..]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Ok(o) => format!(
            "unknown ({} failed: {})",
            argv.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("unknown ({}: {e})", argv[0]),
    }
}

/// The first "model name" in /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks() {
        let stat = "1234 (pod wire) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 500 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat).unwrap(), 325);
        assert!(parse_stat_cpu_ticks("1 (x) S 1").is_err());
        assert!(parse_stat_cpu_ticks("garbage").is_err());
        // our own process
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
    }

    #[test]
    fn status_mem() {
        let s = "Name:\tpodwire\nVmPeak:\t  100 kB\nVmHWM:\t    9876 kB\nVmRSS:\t    5432 kB\n\
                 RssAnon:\t    1000 kB\nRssFile:\t    2000 kB\nRssShmem:\t    2432 kB\nThreads:\t2\n";
        assert_eq!(
            parse_status_mem(s).unwrap(),
            MemStatus {
                vm_hwm_kib: 9876,
                vm_rss_kib: 5432,
                rss_anon_kib: 1000,
                rss_file_kib: 2000,
                rss_shmem_kib: 2432
            }
        );
        assert!(parse_status_mem("Name:\tx\n").is_err());
        assert!(mem_status(std::process::id()).unwrap().vm_hwm_kib > 0);
    }

    #[test]
    fn machine_busy() {
        let s = "cpu  100 5 50 1000 7 3 2 1 40 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1\n";
        assert_eq!(parse_machine_busy_ticks(s).unwrap(), 161);
        assert!(parse_machine_busy_ticks("cpu0 1 2\n").is_err());
        assert!(parse_machine_busy_ticks("cpu  1 2 3\n").is_err());
        assert!(machine_busy_seconds().unwrap() > 0.0);
    }

    const IPERF_OK: &str = r#"{
        "start": {"connected": [{"socket": 5}], "test_start": {"protocol": "TCP"}},
        "intervals": [{"streams": [{"bytes": 1}], "sum": {"bytes": 2, "bits_per_second": 3}}],
        "end": {
            "streams": [{"sender": {"bytes": 7, "bits_per_second": 8},
                         "receiver": {"bytes": 9, "bits_per_second": 10}}],
            "sum_sent": {"start": 0, "end": 10.0, "seconds": 10.0, "bytes": 1250000000,
                         "bits_per_second": 1000000000.5, "retransmits": 12, "sender": true},
            "sum_received": {"start": 0, "end": 10.02, "seconds": 10.02,
                             "bytes": 1240000000, "bits_per_second": 9.9e8, "sender": true},
            "cpu_utilization_percent": {"host_total": 97.5, "host_user": 1.0,
                                        "remote_total": 12.0}
        }
    }"#;

    #[test]
    fn iperf3_json() {
        let r = parse_iperf3_json(IPERF_OK).unwrap();
        assert_eq!(r.bytes, 1_240_000_000);
        assert_eq!(r.bits_per_second, 9.9e8);
        assert_eq!(r.seconds, 10.02);
        assert_eq!(r.retransmits, Some(12));
        assert_eq!(r.guest_iperf_cpu_percent, Some(97.5));
        // leading noise (a shell line) is skipped
        assert!(parse_iperf3_json(&format!("noise\n{IPERF_OK}")).is_ok());
    }

    #[test]
    fn iperf3_errors() {
        let e = parse_iperf3_json(
            r#"{"start": {"connected": []}, "intervals": [], "end": {},
                "error": "unable to connect to server: Connection refused"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "iperf3: unable to connect to server: Connection refused"
        );
        assert!(parse_iperf3_json("iperf3: not found")
            .unwrap_err()
            .to_string()
            .contains("no JSON"));
        assert!(parse_iperf3_json(r#"{"end": {}}"#).is_err());
    }

    #[test]
    fn arithmetic_and_formatting() {
        assert_eq!(cpu_s_per_gb(2.0, 4_000_000_000), Some(0.5));
        assert_eq!(cpu_s_per_gb(2.0, 0), None);
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(fmt_opt(Some(1.234), 2), "1.23");
        assert_eq!(fmt_opt(None, 2), "–");
        assert_eq!(md_cell("a | b\nc", 100), "a \\| b c");
        assert_eq!(md_cell("abcdef", 3), "abc…");
    }

    #[test]
    fn generated_part_is_replaced_and_prose_kept() {
        let doc = format!("# T\n\nprose\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\n\nmore prose\n");
        let out = replace_generated(&doc, "new\n").unwrap();
        assert_eq!(
            out,
            format!("# T\n\nprose\n\n{BEGIN_MARKER}\nnew\n{END_MARKER}\n\nmore prose\n")
        );
        // idempotent
        assert_eq!(replace_generated(&out, "new").unwrap(), out);
        let fresh = replace_generated("# T\n", "x").unwrap();
        assert_eq!(fresh, format!("# T\n\n{BEGIN_MARKER}\nx\n{END_MARKER}\n"));
        assert!(replace_generated(&format!("{END_MARKER}{BEGIN_MARKER}"), "x").is_err());
        assert!(replace_generated(BEGIN_MARKER, "x").is_err());
    }

    #[test]
    fn machine_facts() {
        assert!(!cpu_model().is_empty());
        assert_eq!(command_line_output(&["echo", "a\nb"]), "a");
        assert!(command_line_output(&["/nonexistent/x"]).starts_with("unknown"));
    }
}
