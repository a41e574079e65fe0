//! Linux's pktgen in the guest: the script that sends UDP from port 10009 to the far host's
//! port 9 for a fixed time, parsing `/proc/net/pktgen/eth0`, and the far host's packet counter
//! (an nftables rule in the far namespace that counts and drops UDP to port 9, so that no
//! receiving socket and no ICMP port-unreachable replies take part).

use crate::netns::{Netns, Proc, FAR_HOST};
use anyhow::{bail, Context, Result};
use std::time::Duration;

/// UDP source port of the load (pktgen and testpmd).
pub const SRC_PORT: u16 = 10009;
/// UDP destination port on the far host (discard).
pub const DST_PORT: u16 = 9;

/// What pktgen sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PktgenJob {
    pub iface: String,
    /// Ethernet frame size without the FCS (pktgen's `pkt_size`)
    pub pkt_size: u32,
    pub src: String,
    pub dst: String,
    pub dst_mac: String,
    pub seconds: u32,
}

/// The guest shell script: configure one device on kpktgend_0, start it in the background,
/// stop it after `seconds`, print the device's report.
pub fn script(j: &PktgenJob) -> String {
    let params = [
        "count 0".to_string(),
        "clone_skb 0".to_string(),
        format!("pkt_size {}", j.pkt_size),
        "delay 0".to_string(),
        format!("dst {}", j.dst),
        format!("src_min {}", j.src),
        format!("src_max {}", j.src),
        format!("dst_mac {}", j.dst_mac),
        format!("udp_src_min {SRC_PORT}"),
        format!("udp_src_max {SRC_PORT}"),
        format!("udp_dst_min {DST_PORT}"),
        format!("udp_dst_max {DST_PORT}"),
    ];
    let mut s = String::from("PG=/proc/net/pktgen; echo rem_device_all > $PG/kpktgend_0; ");
    s.push_str(&format!(
        "echo 'add_device {0}' > $PG/kpktgend_0; D=$PG/{0}; ",
        j.iface
    ));
    for p in params {
        s.push_str(&format!(
            "echo '{p}' > $D || echo 'PKTGEN-PARAM-FAILED {p}'; "
        ));
    }
    s.push_str(&format!(
        "(echo start > $PG/pgctrl) & sleep {}; echo stop > $PG/pgctrl; wait; cat $D",
        j.seconds
    ));
    s
}

/// What pktgen reported.
#[derive(Debug, Clone, PartialEq)]
pub struct PktgenResult {
    /// packets sent (`Current: pkts-sofar`)
    pub sent: u64,
    /// transmit errors (`Current: errors`)
    pub errors: u64,
    /// the run's length (`Result: OK: <usec>(...)`), seconds
    pub seconds: f64,
    /// pktgen's own rate (`Result: ... <n>pps`)
    pub pps: f64,
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let i = text.find(key)? + key.len();
    text[i..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Parses `/proc/net/pktgen/<dev>` after a run.
pub fn parse_result(text: &str) -> Result<PktgenResult> {
    if let Some(line) = text.lines().find(|l| l.contains("PKTGEN-PARAM-FAILED")) {
        bail!("pktgen refused a parameter: {}", line.trim());
    }
    let cur = text
        .find("Current:")
        .context("no 'Current:' section in pktgen's report")?;
    let current = &text[cur..];
    let sent = number_after(current, "pkts-sofar:").context("no pkts-sofar")?;
    let errors = number_after(current, "errors:").unwrap_or(0);
    let res = text
        .find("Result:")
        .context("no 'Result:' line in pktgen's report")?;
    let result = &text[res..];
    if !result["Result:".len()..].trim_start().starts_with("OK:") {
        bail!("pktgen: {}", result.lines().next().unwrap_or(result).trim());
    }
    let usec = number_after(result, "OK:").context("no run time in pktgen's Result")?;
    let pps = result
        .split_whitespace()
        .find_map(|w| w.strip_suffix("pps")?.parse::<f64>().ok())
        .context("no pps in pktgen's Result")?;
    Ok(PktgenResult {
        sent,
        errors,
        seconds: usec as f64 / 1e6,
        pps,
    })
}

/// The MAC address of `ip` in the text of /proc/net/arp (a complete entry only).
pub fn arp_mac(proc_net_arp: &str, ip: &str) -> Option<String> {
    proc_net_arp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // IP address, HW type, Flags, HW address, Mask, Device
        (f.len() >= 4 && f[0] == ip && f[2] != "0x0" && f[3] != "00:00:00:00:00:00")
            .then(|| f[3].to_string())
    })
}

/// The far host's sink for UDP to [`DST_PORT`]: a socket bound there that never reads.
///
/// Datagrams are counted by the far kernel's UDP layer (`/proc/net/snmp`: `InDatagrams` for
/// those queued, `RcvbufErrors` for those dropped because the queue is full), not by a packet
/// filter: a sender that uses UDP GSO (podwire coalesces a guest's same-sized datagrams into
/// one GSO message) can deliver many datagrams in one packet through the veth, and only the
/// socket layer splits them again and counts each one.
pub fn install_sink(far: &Netns) -> Result<Proc> {
    let script = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{FAR_HOST}', {DST_PORT}))\n\
         print('bound', flush=True)\n\
         time.sleep(1e7)\n"
    );
    let mut p = far.spawn("udp-sink", &["python3", "-c", &script])?;
    crate::util::wait_until("the UDP sink to bind", Duration::from_secs(20), || {
        p.ensure_running()?;
        Ok(p.log().contains("bound"))
    })?;
    Ok(p)
}

/// Datagrams the far host's UDP layer has taken in so far (queued or dropped for room).
pub fn sink_packets(far: &Netns) -> Result<u64> {
    let snmp = far.exec(&["cat", "/proc/net/snmp"])?;
    udp_datagrams_in(&snmp).context("reading the far host's UDP counters")
}

/// `InDatagrams + RcvbufErrors` from the `Udp:` lines of /proc/net/snmp.
pub fn udp_datagrams_in(snmp: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some(field("InDatagrams")? + field("RcvbufErrors")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Params: count 0  min_pkt_size: 64  max_pkt_size: 64
     frags: 0  delay: 0  clone_skb: 0  ifname: eth0
     flows: 0 flowlen: 0
     dst_min: 198.18.1.1  dst_max: 
     src_mac: 52:54:00:12:34:56 dst_mac: 02:70:77:00:00:01
     udp_src_min: 10009  udp_src_max: 10009  udp_dst_min: 9  udp_dst_max: 9
     Flags: 
Current:
     pkts-sofar: 123456  errors: 7
     started: 1234us  stopped: 5001234us idle: 12us
     seq_num: 123457  cur_dst_mac_offset: 0  cur_src_mac_offset: 0
     cur_saddr: 198.19.0.2  cur_daddr: 198.18.1.1
Result: OK: 5000000(c4900000+d100000) usec, 123456 (64byte,0frags)
  24691pps 12Mb/sec (12641792bps) errors: 7
";

    #[test]
    fn parses_a_report() {
        let r = parse_result(REPORT).unwrap();
        assert_eq!(
            r,
            PktgenResult {
                sent: 123456,
                errors: 7,
                seconds: 5.0,
                pps: 24691.0
            }
        );
        // with console noise before it
        assert!(parse_result(&format!("[1] 123\n{REPORT}")).is_ok());
    }

    #[test]
    fn reports_failures() {
        let idle = REPORT.replace(
            "Result: OK: 5000000(c4900000+d100000) usec, 123456 (64byte,0frags)",
            "Result: Idle",
        );
        assert_eq!(
            parse_result(&idle).unwrap_err().to_string(),
            "pktgen: Result: Idle"
        );
        assert!(parse_result("sh: can't create /proc/net/pktgen/eth0").is_err());
        let e = parse_result(&format!("PKTGEN-PARAM-FAILED dst_mac x\n{REPORT}")).unwrap_err();
        assert!(e.to_string().contains("dst_mac"), "{e}");
    }

    #[test]
    fn script_sets_ports_and_stops() {
        let s = script(&PktgenJob {
            iface: "eth0".into(),
            pkt_size: 64,
            src: "198.19.0.2".into(),
            dst: "198.18.1.1".into(),
            dst_mac: "02:70:77:00:00:01".into(),
            seconds: 3,
        });
        for want in [
            "echo 'add_device eth0' > $PG/kpktgend_0",
            "echo 'pkt_size 64' > $D",
            "echo 'udp_src_min 10009' > $D",
            "echo 'udp_dst_max 9' > $D",
            "echo 'dst_mac 02:70:77:00:00:01' > $D",
            "(echo start > $PG/pgctrl) & sleep 3; echo stop > $PG/pgctrl; wait; cat $D",
        ] {
            assert!(s.contains(want), "{want} not in {s}");
        }
    }

    #[test]
    fn arp_and_counter() {
        let arp =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
                   198.19.0.1       0x1         0x2         02:70:77:00:00:01     *        eth0\n\
                   198.19.0.9       0x1         0x0         00:00:00:00:00:00     *        eth0\n";
        assert_eq!(
            arp_mac(arp, "198.19.0.1").as_deref(),
            Some("02:70:77:00:00:01")
        );
        assert_eq!(arp_mac(arp, "198.19.0.9"), None);
        assert_eq!(arp_mac(arp, "198.19.0.3"), None);
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 1000 3 40 7 40 0\n\
                    UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        assert_eq!(udp_datagrams_in(snmp), Some(1040));
        assert_eq!(udp_datagrams_in("nothing"), None);
    }
}
