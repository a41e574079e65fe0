//! dpdk-testpmd as a virtio-user frontend on podwire's vhost-user socket (no VM): command lines
//! for `txonly` (UDP from port 10009 to the far host's port 9) and `rxonly`, running it for a
//! fixed time, and parsing its forward statistics.

use crate::netns::Proc;
use crate::util::{self, log_dir, unique_id};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The testpmd binary (Debian's `dpdk-dev`), `PODWIRE_TESTPMD` overrides.
pub fn binary() -> String {
    std::env::var("PODWIRE_TESTPMD").unwrap_or_else(|_| "dpdk-testpmd".to_string())
}

/// podwire's gateway MAC (the Ethernet peer of txonly).
pub const GATEWAY_MAC: &str = "02:70:77:00:00:01";

/// What testpmd does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// send UDP `size`-byte frames (without FCS) from `src` to `dst`
    TxOnly { size: u32, src: String, dst: String },
    /// count what arrives
    RxOnly,
}

/// testpmd's arguments (without the binary).
pub fn args(socket: &Path, mac: &str, mode: &Mode, file_prefix: &str) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--no-huge".into(),
        "-m".into(),
        "1024".into(),
        "--no-pci".into(),
        format!(
            "--vdev=net_virtio_user0,path={},mac={mac}",
            socket.display()
        ),
        "-l".into(),
        "0,1".into(),
        format!("--file-prefix={file_prefix}"),
        "--".into(),
    ];
    match mode {
        Mode::TxOnly { size, src, dst } => a.extend([
            "--forward-mode=txonly".into(),
            format!("--txpkts={size}"),
            format!("--tx-ip={src},{dst}"),
            format!("--eth-peer=0,{GATEWAY_MAC}"),
            format!(
                "--tx-udp={},{}",
                super::pktgen::SRC_PORT,
                super::pktgen::DST_PORT
            ),
        ]),
        Mode::RxOnly => a.push("--forward-mode=rxonly".into()),
    }
    a
}

/// testpmd's "Accumulated forward statistics for all ports".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    /// packets testpmd could not put on the ring (it was full)
    pub tx_dropped: u64,
}

fn field(block: &str, key: &str) -> Result<u64> {
    let i = block
        .find(key)
        .with_context(|| format!("no {key} in testpmd's statistics"))?
        + key.len();
    block[i..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{key} is not a number"))
}

/// Parses the accumulated statistics testpmd prints when forwarding stops.
pub fn parse_stats(out: &str) -> Result<Stats> {
    let i = out
        .find("Accumulated forward statistics for all ports")
        .context("testpmd printed no accumulated forward statistics")?;
    let block = &out[i..];
    let block = &block[..block.find("\n\n").unwrap_or(block.len())];
    Ok(Stats {
        rx_packets: field(block, "RX-packets:")?,
        rx_dropped: field(block, "RX-dropped:")?,
        tx_packets: field(block, "TX-packets:")?,
        tx_dropped: field(block, "TX-dropped:")?,
    })
}

/// A testpmd run, forwarding from "Press enter to exit" until [`Testpmd::stop`].
pub struct Testpmd {
    proc: Proc,
    stdin: std::process::ChildStdin,
    log: PathBuf,
    /// when forwarding had started (testpmd said so)
    pub started: Instant,
}

impl Testpmd {
    /// Starts testpmd and waits (up to 60 s) until it forwards.
    pub fn start(socket: &Path, mac: &str, mode: &Mode) -> Result<Testpmd> {
        let id = unique_id();
        let log = log_dir().join(format!("{id}-testpmd.log"));
        let f = std::fs::File::create(&log)?;
        // testpmd's stdout is a file here: unbuffered, so that its "Press enter" shows at once
        let mut cmd = Command::new("stdbuf");
        cmd.arg("-o0").arg(binary());
        cmd.args(args(socket, mac, mode, &format!("podwire-bench-{id}")))
            .stdin(Stdio::piped())
            .stdout(f.try_clone()?)
            .stderr(f);
        let mut proc = Proc::spawn_raw("testpmd", cmd)?;
        let stdin = proc.child_mut().stdin.take().context("testpmd's stdin")?;
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        util::wait_until("testpmd to forward", Duration::from_secs(60), || {
            if let Some(st) = proc.try_wait()? {
                bail!("testpmd exited ({st}):\n{}", util::tail(&read(&log), 3000));
            }
            Ok(read(&log).contains("Press enter to exit"))
        })?;
        Ok(Testpmd {
            proc,
            stdin,
            log,
            started: Instant::now(),
        })
    }

    /// Stops forwarding (Enter), waits for testpmd to exit and returns its statistics and the
    /// time it forwarded.
    pub fn stop(mut self) -> Result<(Stats, Duration)> {
        self.stdin.write_all(b"\n")?;
        self.stdin.flush()?;
        let forwarded = self.started.elapsed();
        self.proc
            .wait_timeout(Duration::from_secs(30))
            .context("testpmd did not exit")?;
        let out = std::fs::read_to_string(&self.log)?;
        Ok((parse_stats(&out)?, forwarded))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Press enter to exit
Telling cores to stop...
Waiting for lcores to finish...

  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 5              RX-dropped: 1             RX-total: 6
  TX-packets: 905376         TX-dropped: 315739072     TX-total: 316644448
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 419797         RX-dropped: 3             RX-total: 419800
  TX-packets: 905376         TX-dropped: 315739072     TX-total: 316644448
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++

Done.
";

    #[test]
    fn parses_accumulated_stats() {
        assert_eq!(
            parse_stats(OUT).unwrap(),
            Stats {
                rx_packets: 419797,
                rx_dropped: 3,
                tx_packets: 905376,
                tx_dropped: 315739072
            }
        );
        assert!(parse_stats("EAL: Error - exiting with code: 1").is_err());
        assert!(
            parse_stats("Accumulated forward statistics for all ports\n  RX-packets: x\n").is_err()
        );
    }

    #[test]
    fn command_lines() {
        let tx = args(
            Path::new("/run/pw.sock"),
            "52:54:00:12:34:56",
            &Mode::TxOnly {
                size: 64,
                src: "198.19.0.2".into(),
                dst: "198.18.1.1".into(),
            },
            "p1",
        )
        .join(" ");
        assert_eq!(
            tx,
            "--no-huge -m 1024 --no-pci \
             --vdev=net_virtio_user0,path=/run/pw.sock,mac=52:54:00:12:34:56 -l 0,1 \
             --file-prefix=p1 -- --forward-mode=txonly --txpkts=64 \
             --tx-ip=198.19.0.2,198.18.1.1 --eth-peer=0,02:70:77:00:00:01 --tx-udp=10009,9"
        );
        let rx = args(Path::new("/s"), "52:54:00:12:34:56", &Mode::RxOnly, "p2");
        assert_eq!(rx.last().unwrap(), "--forward-mode=rxonly");
    }
}
