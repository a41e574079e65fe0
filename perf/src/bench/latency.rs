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

/// `podwire-rr rr`'s result: (transactions, seconds).
pub fn parse_rr(out: &str) -> Result<(u64, f64)> {
    let line = out
        .lines()
        .find(|l| l.starts_with("transactions "))
        .with_context(|| format!("podwire-rr rr printed no result: {}", out.trim()))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let n = f
        .get(1)
        .and_then(|v| v.parse().ok())
        .context("transactions")?;
    let s = f.get(3).and_then(|v| v.parse().ok()).context("seconds")?;
    Ok((n, s))
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
            (12000, 10.001)
        );
        assert!(parse_rr("podwire-rr: connect: refused").is_err());
        assert_eq!(
            parse_flood("sent 740864 errors 0 seconds 4.001 rate 185179.0").unwrap(),
            (740864, 4.001)
        );
    }
}
