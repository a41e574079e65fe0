//! podwire's benchmark suite: podwire and the kernel path of KubeVirt's masquerade binding,
//! measured side by side in one run.
//!
//! ```text
//! target/release/podwire-bench [--seconds N] [--quick] [--only tcp,pktgen,testpmd,latency]
//!                              [--backends podwire,kernel] [--out docs/perf.md]
//!                              [--plots docs/perf] [--quiet-wait S] [--passes N]
//!                              [--mtus 65520,1500] [--nic vhost-user|stream]
//!                              [--podwire-arg ARG]... [--podwire-before PATH]
//! ```
//!
//! Two backends serve the same QEMU/TCG test guest (1 vCPU, 512 MiB):
//!
//! - **podwire**: `podwire --guest-cidr 198.19.0.0/24 --mtu M` in the pod namespace, the guest's
//!   virtio-net on its vhost-user socket;
//! - **kernel path**: tap0 + Linux bridge br0 (198.19.0.1/24) + nftables masquerade out of the
//!   pod's eth0 + dnsmasq DHCP on br0, QEMU's own virtio-net on the tap (`vhost=off`), QEMU in
//!   the pod namespace (see `podwire_perf::bench::kernel_path`).
//!
//! In both the guest gets 198.19.0.2/24 by DHCP (busybox udhcpc) and reaches the far host
//! 198.18.1.1 through the pod's eth0 (a veth whose MTU is the guest's). For each backend and
//! guest MTU (65520, 1500) one guest is booted and, in it:
//!
//! - `tcp`: iperf3 TCP guest → far and far → guest (`-R`), 1 and 4 streams (`-P`);
//! - `pktgen` (MTU 1500): Linux pktgen sends 64- and 1400-byte UDP frames from port 10009 to the
//!   far host's port 9 for N seconds (dst MAC: the gateway's, from the guest's ARP table after
//!   a ping); the far host counts what arrives with an nftables counter-and-drop rule;
//! - `latency` (MTU 1500): `ping -c 20 -i 0.2` RTT, and TCP request/response (1 byte each way,
//!   `podwire-rr rr`, put into the guest's initramfs) for N seconds.
//!
//! `testpmd` (podwire only; the kernel path has no vhost-user socket): dpdk-testpmd as a
//! virtio-user frontend (no VM) in `txonly` (64/1400-byte UDP to the far host's port 9, counted
//! there) and `rxonly` (a UDP flood from the far host to the pod's port 9000, forwarded by
//! `podwire -u 9000`, counted by testpmd).
//!
//! Over every measured window it reads the CPU time (utime+stime, /proc/PID/stat) of podwire
//! and QEMU, and podwire's VmHWM (peak RSS). Results go between the
//! `<!-- results:begin -->` / `<!-- results:end -->` markers of the output file, and bar charts
//! (gnuplot, `pngcairo`) into the plots directory. A failed measurement is recorded as
//! `failed: <reason>`; the others still run. Needs root. This is a measurement, not a test:
//! nothing is asserted about speed (the targets table only reports met / not met).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use podwire_perf::bench::kernel_path::{self, KernelPath};
use podwire_perf::bench::pktgen::{self, PktgenJob};
use podwire_perf::bench::plot::{self, Chart, Group};
use podwire_perf::bench::testpmd::{self, Testpmd};
use podwire_perf::bench::{self, latency, MemStatus};
use podwire_perf::netns::{PodTopology, TopologyOptions, FAR_HOST, POD_ADDR};
use podwire_perf::rig::{self, GuestSpec};
use podwire_perf::{far, qemu, util, GuestImage, Netns, Nic, Podwire, PodwireConfig, Proc, Qemu};

/// Timeout of a console step (DHCP, reading a file).
pub(crate) const T: Duration = Duration::from_secs(60);
/// The guest's iperf3 output files.
pub(crate) const JSON_FILE: &str = "/tmp/iperf3.json";
pub(crate) const ERR_FILE: &str = "/tmp/iperf3.err";
/// Where podwire-rr goes in the guest.
pub(crate) const GUEST_RR: &str = "/usr/bin/podwire-rr";
/// The far host's request/response server port.
pub(crate) const RR_PORT: u16 = 7001;
/// The pod port podwire forwards to the guest (testpmd rxonly).
pub(crate) const FWD_UDP_PORT: u16 = 9000;

mod args;
mod backend;
mod before_after;
mod charts;
mod model;
mod output;
mod reference;
mod report;
mod session;
mod targets;
#[cfg(test)]
mod tests;

use args::*;
use backend::*;
use charts::*;
use model::*;
use output::*;
use report::*;
use session::*;
use targets::*;

fn main() -> Result<()> {
    let args = parse_args()?;
    util::require_root()?;
    let started = Instant::now();
    let podwire_bin = release_podwire()?;
    let rr_bin = sibling_binary("podwire-rr")?;
    let work = util::TempDir::new("bench")?;
    let spec = GuestSpec {
        files: &[(GUEST_RR, rr_bin.as_path())],
        ..GuestSpec::new("bench")
    };
    let image = rig::image(&spec, work.path()).context("the guest with podwire-rr")?;
    let machine = Machine::probe(&image, &podwire_bin, args.podwire_before.as_deref());
    println!(
        "podwire-bench: {} s per run; sections {}; {}",
        args.seconds,
        args.sections.join(","),
        machine.one_line()
    );

    let mut results = Results::default();
    let passt_bin = passt_binary(&args.backends);
    if let Some(b) = &args.podwire_before {
        if !b.is_file() {
            bail!("--podwire-before {}: no such file", b.display());
        }
        println!(
            "podwire before: {}",
            machine.podwire_before.as_deref().unwrap_or("?")
        );
    }
    let env = Env {
        args: &args,
        image: &image,
        podwire_bin: &podwire_bin,
        rr_bin: &rr_bin,
        passt_bin: passt_bin.as_deref(),
    };
    for &mtu in &args.mtus {
        let tests = args.guest_tests(mtu);
        if tests.is_empty() {
            continue;
        }
        for pass in 0..args.passes {
            for backend in args.pass_order(pass) {
                wait_for_quiet(args.quiet_wait, &[]);
                println!(
                    "\n=== {} guest, MTU {mtu}, pass {} of {}",
                    backend.name(),
                    pass + 1,
                    args.passes
                );
                run_guest_session(&env, backend, mtu, &tests, &mut results);
            }
        }
    }
    if args.has("testpmd") {
        for pass in 0..args.passes {
            for backend in args.pass_order(pass) {
                if backend == Backend::Kernel {
                    continue;
                }
                wait_for_quiet(args.quiet_wait, &[]);
                println!(
                    "\n=== dpdk-testpmd on {}, pass {} of {}",
                    backend.name(),
                    pass + 1,
                    args.passes
                );
                run_testpmd_session(&env, backend, &mut results);
            }
        }
    }

    let charts = write_charts(&args, &results, work.path());
    let generated = render(&args, &machine, &results, &charts);
    let old = std::fs::read_to_string(&args.out).unwrap_or_default();
    let doc = bench::replace_generated(&old, &generated)?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.out, doc).with_context(|| format!("writing {}", args.out.display()))?;
    println!("\n{generated}");
    println!(
        "\nwrote {} and {} chart(s) in {} ({:.0} s in all)",
        args.out.display(),
        charts.iter().filter(|c| c.1.is_ok()).count(),
        args.plots.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(crate) struct Env<'a> {
    pub(crate) args: &'a Args,
    pub(crate) image: &'a GuestImage,
    pub(crate) podwire_bin: &'a Path,
    pub(crate) rr_bin: &'a Path,
    /// None when passt is not measured or could not be had
    pub(crate) passt_bin: Option<&'a Path>,
}

impl Env<'_> {
    /// The podwire binary that serves `backend` (this build's, or the `--podwire-before` one).
    pub(crate) fn podwire_binary(&self, backend: Backend) -> Result<&Path> {
        match backend {
            Backend::PodwireBefore => self
                .args
                .podwire_before
                .as_deref()
                .context("podwire-before has no binary (--podwire-before PATH)"),
            _ => Ok(self.podwire_bin),
        }
    }
}

/// The podwire binary to measure: `$PODWIRE_BIN` if set, else `target/release/podwire`.
pub(crate) fn release_podwire() -> Result<PathBuf> {
    if std::env::var_os("PODWIRE_BIN").is_some_and(|v| !v.is_empty()) {
        return podwire_perf::podwire_path();
    }
    let p = util::target_dir().join("release").join("podwire");
    if !p.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p podwire -p podwire-perf)",
            p.display()
        );
    }
    Ok(p)
}

/// A binary of this crate built with this one (same directory).
pub(crate) fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p podwire-perf)",
            p.display()
        );
    }
    Ok(p)
}

/// Waits (up to `max`) until no other QEMU runs on the machine: on 2 cores, another guest
/// would take the CPU the measured one needs.
pub(crate) fn wait_for_quiet(max: Duration, own: &[u32]) {
    let others = bench::pids_named("qemu-system", own);
    if others.is_empty() || max.is_zero() {
        return;
    }
    println!(
        "waiting up to {:?} for {} other QEMU guest(s) to finish (pids {others:?})",
        max,
        others.len()
    );
    let _ = util::wait_until("other QEMU guests to finish", max, || {
        Ok(bench::pids_named("qemu-system", own).is_empty())
    });
}

/// An error on one line for the tables: without the console transcript the harness appends,
/// whitespace collapsed, at most 300 characters.
pub(crate) fn short_reason(e: &anyhow::Error) -> String {
    let e = format!("{e:#}");
    let e = e.split("\n----").next().unwrap_or(&e).to_string();
    bench::md_cell(&e, 300)
}
