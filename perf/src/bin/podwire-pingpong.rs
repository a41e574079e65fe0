//! podwire-pingpong: request/response latency through a vhost-user backend, measured with the
//! harness's own frontend (no VM), against the far host's round trip from a kernel socket.
//!
//! ```text
//! podwire-pingpong run [--via direct,podwire,passt,baseline] [--proto udp,tcp] [--count N]
//!                      [--warmup N] [--rounds R] [--features ...] [--baseline BIN]
//!                      [--pin-frontend CPUS] [--pin-backend CPUS] [--pin-far CPUS]
//!                      [--json FILE]
//!     a fresh pod/far topology, the echo server on the far host, each path in turn for R
//!     rounds (order alternating); JSON report on stdout, a Markdown summary on stderr
//! podwire-pingpong frontend --socket PATH --server ADDR:PORT [--proto ...] [--count N]
//!     our frontend on a backend that is already running (JSON on stdout)
//! podwire-pingpong direct --server ADDR:PORT [--proto ...] [--count N]
//!     kernel sockets of the current namespace (JSON on stdout)
//! podwire-pingpong echo --listen ADDR:PORT
//!     UDP and TCP echo server
//! ```
//!
//! See `podwire_perf::bench::pingpong` and `podwire_perf::frontend` for how it works, and
//! docs/perf.md for how to read the figures. Needs root for `run`.

use anyhow::{Context, Result};
use podwire_perf::bench::pingpong::{self, Plan, Via};
use podwire_perf::bench::placement::{Cpus, Placement};
use podwire_perf::frontend::pingpong::{direct_rr, serve_echo, GuestStack, Proto, RrStats};
use podwire_perf::frontend::{Features, NetDriver};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Parser)]
#[command(
    name = "podwire-pingpong",
    about = "Request/response latency through a vhost-user backend, with our own frontend"
)]
enum Cmd {
    /// The whole measurement in a fresh pod/far topology (root).
    Run(RunArgs),
    /// Our frontend on an already running backend's socket.
    Frontend {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        server: SocketAddrV4,
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        device: Device,
    },
    /// Kernel sockets of the current namespace to the echo server.
    Direct {
        #[arg(long)]
        server: SocketAddrV4,
        #[command(flatten)]
        load: Load,
    },
    /// UDP and TCP echo server on ADDR:PORT.
    Echo {
        #[arg(long)]
        listen: SocketAddrV4,
    },
}

#[derive(Debug, clap::Args)]
struct Load {
    /// Protocols, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["udp", "tcp"])]
    proto: Vec<Proto>,
    /// Timed transactions per protocol.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Untimed transactions before them.
    #[arg(long, default_value_t = 500)]
    warmup: u64,
}

#[derive(Debug, clap::Args)]
struct Device {
    /// virtio-net features to ask for (intersected with the backend's offer).
    #[arg(long, value_enum, value_delimiter = ',',
          default_values = ["version1", "mrg-rxbuf", "event-idx", "csum", "guest-csum"])]
    features: Vec<Features>,
    /// Entries per ring.
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Paths to measure, in the order of the first round.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["direct", "podwire", "passt"])]
    via: Vec<Via>,
    #[command(flatten)]
    load: Load,
    #[command(flatten)]
    device: Device,
    /// Rounds (each path once per round, the order alternating).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// The podwire binary [default: $PODWIRE_BIN, else the newer of target/{release,debug}].
    #[arg(long)]
    podwire: Option<PathBuf>,
    /// The passt binary [default: $PODWIRE_PASST, else built from Debian's source package].
    #[arg(long)]
    passt: Option<PathBuf>,
    /// A second podwire binary, measured as the path `baseline` (before/after in one run;
    /// `--via` must name it).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// An extra podwire argument (repeatable).
    #[arg(long = "podwire-arg", allow_hyphen_values = true)]
    podwire_args: Vec<String>,
    /// Trace the backends' and the frontend's syscalls (ftrace) and print where each
    /// transaction's microseconds go; adds about a µs per traced call.
    #[arg(long)]
    breakdown: bool,
    /// Pin our frontend (and `direct`'s client) to these CPUs (`0`, `0,1`); default: anywhere.
    #[arg(long)]
    pin_frontend: Option<Cpus>,
    /// Pin each backend (all its threads) to these CPUs.
    #[arg(long)]
    pin_backend: Option<Cpus>,
    /// Pin the far host's echo server to these CPUs.
    #[arg(long)]
    pin_far: Option<Cpus>,
    /// Also write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> Result<()> {
    match <Cmd as clap::Parser>::parse() {
        Cmd::Echo { listen } => serve_echo(listen),
        Cmd::Direct { server, load } => {
            let mut out: Vec<(Proto, RrStats)> = Vec::new();
            for &p in &load.proto {
                out.push((p, direct_rr(p, server, load.warmup, load.count)?));
            }
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
        Cmd::Frontend {
            socket,
            server,
            load,
            device,
        } => {
            let driver = NetDriver::connect(&socket, &device.features, device.queue_size)?;
            let negotiated = driver.negotiated();
            let mut stack = GuestStack::new(driver);
            stack.dhcp(Duration::from_secs(20))?;
            let mut out: Vec<(Proto, RrStats)> = Vec::new();
            for &p in &load.proto {
                out.push((p, stack.rr(p, server, load.warmup, load.count)?));
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "address": stack.address.map(|a| a.to_string()),
                    "negotiated": negotiated,
                    "driver": stack.phy.driver.stats,
                    "results": out,
                }))?
            );
            Ok(())
        }
        Cmd::Run(a) => run(a),
    }
}

fn run(a: RunArgs) -> Result<()> {
    let podwire_bin = match a.podwire {
        Some(p) => p,
        None => podwire_perf::podwire_path()?,
    };
    let passt_bin = if a.via.contains(&Via::Passt) {
        Some(match a.passt {
            Some(p) => p,
            None => podwire_perf::bench::passt::binary().context("building passt")?,
        })
    } else {
        None
    };
    let plan = Plan {
        paths: a.via,
        protos: a.load.proto,
        count: a.load.count,
        warmup: a.load.warmup,
        rounds: a.rounds,
        features: a.device.features,
        queue_size: a.device.queue_size,
        podwire_bin,
        passt_bin,
        baseline_bin: a.baseline,
        self_bin: std::env::current_exe()?,
        podwire_args: a.podwire_args,
        podwire_env: Vec::new(),
        breakdown: a.breakdown,
        placement: Placement {
            frontend: a.pin_frontend,
            backend: a.pin_backend,
            far: a.pin_far,
        },
    };
    let report = pingpong::run(&plan)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &a.json {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{json}");
    eprintln!("\n{}", pingpong::summary_table(&report.summary));
    if let Some(t) = pingpong::breakdown_table(&report.turns) {
        eprintln!("\n{t}");
    }
    Ok(())
}
