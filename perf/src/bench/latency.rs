//! Latency figures: ping's summary and the request/response rate `podwire-rr rr` prints (and
//! the send count of `podwire-rr flood`).

use anyhow::{Context, Result};

/// ping's statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingSummary {
    pub transmitted: u64,
    pub received: u64,
    pub min_ms: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
}

/// Parses the end of busybox's or iputils' ping output:
/// `N packets transmitted, M packets received, ...` (busybox) or `..., M received, ...`
/// (iputils), then `round-trip min/avg/max = a/b/c ms` (busybox) or
/// `rtt min/avg/max/mdev = a/b/c/d ms` (iputils).
pub fn parse_ping(out: &str) -> Result<PingSummary> {
    let stats = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .context("no 'packets transmitted' line in ping's output")?;
    let num_before = |word: &str| -> Option<u64> {
        let i = stats.find(word)?;
        stats[..i].split_whitespace().last()?.parse().ok()
    };
    let transmitted = num_before("packets transmitted").context("transmitted count")?;
    let received = num_before("packets received")
        .or_else(|| num_before("received"))
        .context("received count")?;
    let rtt = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .context("no round-trip line in ping's output (no reply?)")?;
    let values = rtt
        .split('=')
        .nth(1)
        .context("round-trip line without '='")?
        .split_whitespace()
        .next()
        .context("round-trip line without values")?;
    let v: Vec<f64> = values
        .split('/')
        .map(|x| x.parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .context("round-trip values are not numbers")?;
    if v.len() < 3 {
        anyhow::bail!("round-trip line has {} values", v.len());
    }
    Ok(PingSummary {
        transmitted,
        received,
        min_ms: v[0],
        avg_ms: v[1],
        max_ms: v[2],
    })
}

/// `podwire-rr rr`'s result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rr {
    pub transactions: u64,
    pub seconds: f64,
    /// Round-trip percentiles in µs (p50, p99, p99.9), when the tool printed them.
    pub percentiles_us: Option<(u32, u32, u32)>,
    /// UDP requests whose answer did not come back.
    pub lost: u64,
}

/// Parses `podwire-rr rr`'s result line (`transactions N seconds S rate R` and, from tools
/// that measure them, `p50 A p99 B p999 C lost L`).
pub fn parse_rr(out: &str) -> Result<Rr> {
    let line = out
        .lines()
        .find(|l| l.starts_with("transactions "))
        .with_context(|| format!("podwire-rr rr printed no result: {}", out.trim()))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| -> Option<&str> {
        let i = f.iter().position(|w| *w == key)?;
        f.get(i + 1).copied()
    };
    let n = after("transactions")
        .and_then(|v| v.parse().ok())
        .context("transactions")?;
    let s = after("seconds")
        .and_then(|v| v.parse().ok())
        .context("seconds")?;
    let pct = |key| after(key).and_then(|v| v.parse::<u32>().ok());
    Ok(Rr {
        transactions: n,
        seconds: s,
        percentiles_us: pct("p50")
            .zip(pct("p99"))
            .zip(pct("p999"))
            .map(|((a, b), c)| (a, b, c)),
        lost: after("lost").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// The virtio-net queue interrupts in a Linux guest's /proc/interrupts: (RX, TX), summed over
/// CPUs and queues (`virtioN-input.Q`, `virtioN-output.Q`).
pub fn virtio_net_interrupts(proc_interrupts: &str) -> (u64, u64) {
    let mut rx_tx = (0, 0);
    for line in proc_interrupts.lines() {
        let Some(name) = line.split_whitespace().last() else {
            continue;
        };
        let slot = if name.contains("-input.") {
            &mut rx_tx.0
        } else if name.contains("-output.") {
            &mut rx_tx.1
        } else {
            continue;
        };
        // "NN:" then one count per CPU, then the chip and the name
        *slot += line
            .split_whitespace()
            .skip(1)
            .map_while(|w| w.parse::<u64>().ok())
            .sum::<u64>();
    }
    rx_tx
}

/// `podwire-rr flood`'s result: (datagrams sent, seconds).
pub fn parse_flood(out: &str) -> Result<(u64, f64)> {
    let line = out
        .lines()
        .find(|l| l.starts_with("sent "))
        .with_context(|| format!("podwire-rr flood printed no result: {}", out.trim()))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let n = f.get(1).and_then(|v| v.parse().ok()).context("sent")?;
    let s = f.get(5).and_then(|v| v.parse().ok()).context("seconds")?;
    Ok((n, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_virtio_net_interrupts() {
        let out = "           CPU0       CPU1\n\
                   24:       1200         34  PCI-MSIX-0000:00:02.0   1-edge      virtio0-input.0\n\
                   25:        700          1  PCI-MSIX-0000:00:02.0   2-edge      virtio0-output.0\n\
                   26:          5          0  PCI-MSIX-0000:00:02.0   0-edge      virtio0-config\n\
                  LOC:      99999      88888   Local timer interrupts\n";
        assert_eq!(virtio_net_interrupts(out), (1234, 701));
    }

    #[test]
    fn busybox_ping() {
        let out = "PING 198.18.1.1 (198.18.1.1): 56 data bytes\n\
                   64 bytes from 198.18.1.1: seq=0 ttl=64 time=1.234 ms\n\n\
                   --- 198.18.1.1 ping statistics ---\n\
                   20 packets transmitted, 19 packets received, 5% packet loss\n\
                   round-trip min/avg/max = 0.512/1.503/4.020 ms\n";
        assert_eq!(
            parse_ping(out).unwrap(),
            PingSummary {
                transmitted: 20,
                received: 19,
                min_ms: 0.512,
                avg_ms: 1.503,
                max_ms: 4.02
            }
        );
    }

    #[test]
    fn iputils_ping_and_failures() {
        let out = "--- 198.18.1.1 ping statistics ---\n\
                   20 packets transmitted, 20 received, 0% packet loss, time 3805ms\n\
                   rtt min/avg/max/mdev = 0.041/0.060/0.090/0.011 ms\n";
        let p = parse_ping(out).unwrap();
        assert_eq!((p.transmitted, p.received, p.avg_ms), (20, 20, 0.06));
        let lost = "20 packets transmitted, 0 packets received, 100% packet loss\n";
        assert!(parse_ping(lost)
            .unwrap_err()
            .to_string()
            .contains("no reply"));
        assert!(parse_ping("ping: bad address").is_err());
    }

    #[test]
    fn rr_and_flood() {
        assert_eq!(
            parse_rr("transactions 12000 seconds 10.001 rate 1199.9\n").unwrap(),
            Rr {
                transactions: 12000,
                seconds: 10.001,
                percentiles_us: None,
                lost: 0
            }
        );
        assert_eq!(
            parse_rr("transactions 900 seconds 3.000 rate 300.0 p50 310 p99 870 p999 1500 lost 2")
                .unwrap(),
            Rr {
                transactions: 900,
                seconds: 3.0,
                percentiles_us: Some((310, 870, 1500)),
                lost: 2
            }
        );
        assert!(parse_rr("podwire-rr: connect: refused").is_err());
        assert_eq!(
            parse_flood("sent 740864 errors 0 seconds 4.001 rate 185179.0").unwrap(),
            (740864, 4.001)
        );
    }
}
