//! The command line (clap), and which tests each guest runs.

use super::*;

#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) seconds: u32,
    pub(crate) quick: bool,
    pub(crate) sections: Vec<String>,
    pub(crate) backends: Vec<Backend>,
    pub(crate) out: PathBuf,
    pub(crate) plots: PathBuf,
    pub(crate) quiet_wait: Duration,
    /// passes over the backends (their order alternating), the best of them reported
    pub(crate) passes: u32,
    /// the guest MTUs, one guest session per backend each
    pub(crate) mtus: Vec<u32>,
    /// how the guest's NIC reaches podwire
    pub(crate) nic: NicKind,
    /// more arguments for every podwire started (e.g. `--pcap FILE`)
    pub(crate) podwire_args: Vec<String>,
    /// more virtio-net-pci properties for the guest's NIC (e.g. `csum=off`)
    pub(crate) nic_props: Vec<String>,
    /// a second podwire binary, measured as the backend `podwire-before`
    pub(crate) podwire_before: Option<PathBuf>,
    /// the command line as given (for the report)
    pub(crate) command: String,
}

pub(crate) const SECTIONS: [&str; 4] = ["tcp", "pktgen", "testpmd", "latency"];

/// How the guest's virtio-net reaches podwire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum NicKind {
    /// vhost-user: podwire reads and writes the guest's rings in shared memory.
    VhostUser,
    /// QEMU's `-netdev stream` on a UNIX socket (podwire without `--vhost-user`): every frame
    /// crosses the socket, copied by the kernel each way.
    Stream,
}

/// podwire's benchmark suite: podwire and the kernel path of KubeVirt's masquerade binding,
/// measured side by side in one run (needs root).
#[derive(Debug, clap::Parser)]
#[command(name = "podwire-bench")]
struct Cli {
    /// Length of each timed run, in seconds [default: 10; 3 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3600))]
    seconds: Option<u32>,
    /// A short smoke run: 3 s runs, one TCP stream only.
    #[arg(long)]
    quick: bool,
    /// Comma-separated subset of the sections to run.
    #[arg(long = "only", value_name = "SECTIONS", value_delimiter = ',', value_parser = SECTIONS,
          default_values = SECTIONS)]
    sections: Vec<String>,
    /// Comma-separated subset of the backends, in the order of the first pass.
    #[arg(long, value_delimiter = ',', value_enum, default_values = ["podwire", "passt", "kernel"])]
    backends: Vec<Backend>,
    /// Passes over the backends: each measures every figure once per pass, in the order given
    /// and then reversed (ABC CBA ...); the best pass is reported, all are listed.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    passes: u32,
    /// Markdown file whose results block is replaced [default: docs/perf.md].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the PNG charts go [default: perf/ beside --out].
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Before each guest, wait up to this many seconds for other QEMU guests on the machine to
    /// finish (0: do not wait).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    quiet_wait: u64,
    /// Comma-separated guest MTUs, a guest session per backend for each.
    #[arg(long, value_delimiter = ',', default_values_t = [65520u32, 1500],
          value_parser = clap::value_parser!(u32).range(1280..=65520))]
    mtus: Vec<u32>,
    /// How the guest's NIC reaches podwire: `stream` serves it through QEMU's `-netdev stream`
    /// (podwire without `--vhost-user`); podwire only, guest sections only.
    #[arg(long, value_enum, default_value_t = NicKind::VhostUser)]
    nic: NicKind,
    /// One more argument for every podwire started, after the harness's own (repeat it:
    /// `--podwire-arg=--pcap --podwire-arg=/tmp/guest.pcap`).
    #[arg(long = "podwire-arg", value_name = "ARG", allow_hyphen_values = true)]
    podwire_args: Vec<String>,
    /// One more property of the guest's virtio-net-pci device, repeatable (`--nic-prop
    /// csum=off --nic-prop host_tso4=off`: the guest without the offloads the stream netdev
    /// cannot give it).
    #[arg(long = "nic-prop", value_name = "PROP")]
    nic_props: Vec<String>,
    /// A second podwire binary (e.g. a build of an older commit), measured as the backend
    /// `podwire-before` beside this build's podwire, in the same passes, with the same
    /// arguments; the report then compares the two pass by pass. Added to --backends right
    /// after `podwire` unless listed there.
    #[arg(long, value_name = "PATH")]
    podwire_before: Option<PathBuf>,
}

pub(crate) fn parse_args() -> Result<Args> {
    args_from(std::env::args_os())
}

/// [`Args`] from a command line (program name first).
pub(crate) fn args_from(
    argv: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<Args> {
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    let cli = <Cli as clap::Parser>::try_parse_from(&argv).unwrap_or_else(|e| e.exit());
    let abs = |p: PathBuf| -> Result<PathBuf> {
        Ok(if p.is_absolute() {
            p
        } else {
            std::env::current_dir()?.join(p)
        })
    };
    let out = abs(cli
        .out
        .unwrap_or_else(|| util::workspace_root().join("docs/perf.md")))?;
    let plots = match cli.plots {
        Some(p) => abs(p)?,
        None => out
            .parent()
            .map(|d| d.join("perf"))
            .unwrap_or_else(|| PathBuf::from("perf")),
    };
    let backends = backends_with_before(cli.backends, cli.podwire_before.is_some())?;
    if cli.nic == NicKind::Stream {
        if backends.iter().any(|b| !b.is_podwire()) {
            bail!("--nic stream measures podwire only: add --backends podwire");
        }
        if cli.sections.iter().any(|s| s == "testpmd") {
            bail!("testpmd is a vhost-user frontend: with --nic stream leave it out of --only");
        }
    }
    Ok(Args {
        seconds: cli.seconds.unwrap_or(if cli.quick { 3 } else { 10 }),
        quick: cli.quick,
        sections: cli.sections,
        backends,
        out,
        plots,
        quiet_wait: Duration::from_secs(cli.quiet_wait),
        passes: cli.passes,
        mtus: cli.mtus,
        nic: cli.nic,
        podwire_args: cli.podwire_args,
        nic_props: cli.nic_props,
        podwire_before: cli.podwire_before.map(abs).transpose()?,
        command: std::iter::once("target/release/podwire-bench".to_string())
            .chain(
                argv.iter()
                    .skip(1)
                    .map(|a| a.to_string_lossy().into_owned()),
            )
            .collect::<Vec<_>>()
            .join(" "),
    })
}

/// The backends to measure: `podwire-before` runs if and only if its binary is given, right
/// after `podwire` (so that the two alternate most closely) when `--backends` does not place it.
fn backends_with_before(mut backends: Vec<Backend>, have_before: bool) -> Result<Vec<Backend>> {
    let listed = backends.contains(&Backend::PodwireBefore);
    if listed && !have_before {
        bail!("the backend podwire-before needs --podwire-before PATH");
    }
    if have_before && !listed {
        let at = backends
            .iter()
            .position(|b| *b == Backend::Podwire)
            .map_or(0, |i| i + 1);
        backends.insert(at, Backend::PodwireBefore);
    }
    Ok(backends)
}

impl Args {
    /// The backends in pass `pass`'s order: as given, reversed on odd passes.
    pub(crate) fn pass_order(&self, pass: u32) -> Vec<Backend> {
        let mut v = self.backends.clone();
        if pass % 2 == 1 {
            v.reverse();
        }
        v
    }

    pub(crate) fn has(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }

    pub(crate) fn streams(&self) -> Vec<u32> {
        if self.quick {
            vec![1]
        } else {
            vec![1, 4]
        }
    }

    /// The tests one guest of `mtu` runs.
    pub(crate) fn guest_tests(&self, mtu: u32) -> Vec<Test> {
        let mut v = Vec::new();
        if self.has("tcp") {
            for reverse in [false, true] {
                for &streams in &self.streams() {
                    v.push(Test::Tcp {
                        reverse,
                        mtu,
                        streams,
                    });
                }
            }
        }
        if mtu == 1500 {
            if self.has("pktgen") {
                v.extend([Test::Pktgen { size: 64 }, Test::Pktgen { size: 1400 }]);
            }
            if self.has("latency") {
                v.extend([Test::Ping, Test::Rr { udp: false }, Test::Rr { udp: true }]);
            }
        }
        v
    }
}
