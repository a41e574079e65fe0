//! podwire's main job on this machine: serve a real guest and show what it gets.
//!
//! Builds a pod network namespace (198.18.0.2/24, gateway 198.18.0.1) and a far host
//! (198.18.1.1, with DNS and a UDP echo service), runs podwire in the pod and a QEMU (TCG) guest
//! on podwire's socket, then prints the guest's DHCP lease, a ping, a checked UDP transfer and
//! iperf3 TCP both ways from the guest's own console. Everything is torn down on exit. Arguments are passed to podwire.
//!
//! Run it through `scripts/demo.sh`, which installs and builds what it needs.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use podwire_perf::far;
use podwire_perf::netns::{PodTopology, Proto, FAR_HOST};
use podwire_perf::{guest, util, Podwire, PodwireConfig, Qemu, QemuConfig};

const T: Duration = Duration::from_secs(60);
const SINK_PORT: u16 = 9000;

fn section(title: &str) {
    println!("\n=== {title}");
}

/// Serves a real guest with podwire and shows what it gets.
#[derive(Debug, clap::Parser)]
#[command(name = "podwire-demo")]
struct Args {
    /// Arguments passed to podwire as they are.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    podwire_args: Vec<String>,
}

fn main() -> Result<()> {
    let extra = <Args as clap::Parser>::parse().podwire_args;
    util::require_root()?;
    let image = guest::image().context("building the test guest")?;
    let topo = PodTopology::create()?;
    let _dns = far::start_dns(&topo.far)?;
    let _echo = far::start_udp_echo(&topo.far, far::UDP_ECHO_PORT)?;
    let dir = util::TempDir::new("demo")?;

    let mut cfg = PodwireConfig::new(dir.join("vhost.sock"));
    // Test hosts here use 198.18.0.0/15 only; podwire's own default is 10.0.2.0/24.
    cfg.guest_cidr = Some("198.19.2.0/24".into());
    if extra.iter().any(|a| a == "--guest-cidr") {
        cfg.guest_cidr = None;
    }
    cfg.extra_args = extra;
    let pw = Podwire::spawn(Some(&topo.pod), &cfg)?;
    section("podwire");
    println!(
        "{} {}",
        podwire_perf::podwire_path()?.display(),
        cfg.args().join(" ")
    );
    println!("running in network namespace {}", topo.pod.name());

    let started = Instant::now();
    let mut vm = Qemu::boot(&QemuConfig::new(&image).name("demo").vhost_user(pw.socket()))?;
    section(&format!(
        "guest booted under QEMU/TCG in {:.1} s, NIC on {}",
        started.elapsed().as_secs_f64(),
        pw.socket().display()
    ));
    let c = vm.console();
    c.run_ok("ip link set eth0 up", T)?;

    section("DHCP lease (udhcpc in the guest)");
    let lease = guest::udhcpc(c, "eth0", 10, T)?;
    for key in [
        "ip", "subnet", "router", "dns", "search", "mtu", "lease", "hostname",
    ] {
        if let Some(v) = lease.get(key) {
            println!("{key:>9}: {v}");
        }
    }
    println!(
        "{}",
        c.run_ok("ip -4 addr show eth0; ip route", T)?.trim_end()
    );

    section(&format!(
        "ping {FAR_HOST} (the far host, through podwire's ping sockets)"
    ));
    let ping = c.run_ok(&format!("ping -c 4 -W 5 {FAR_HOST}"), T)?;
    println!("{}", ping.trim_end());
    ensure!(ping.contains("4 packets received"), "ping lost packets");

    section("UDP transfer: 256 KiB from the guest to the far host, checked end to end");
    let received = dir.join("received.bin");
    let _sink = topo.far.spawn(
        "udp-sink",
        &[
            "socat",
            "-u",
            &format!("UDP4-RECV:{SINK_PORT},bind={FAR_HOST}"),
            &format!("CREATE:{}", received.display()),
        ],
    )?;
    topo.far
        .wait_listening(Proto::Udp, Some(FAR_HOST), SINK_PORT, T)?;
    let sent = c.run_ok(
        &format!(
            "dd if=/dev/urandom of=/tmp/blob bs=1024 count=256 2>/dev/null; \
             socat -u -b 1024 - UDP4:{FAR_HOST}:{SINK_PORT} < /tmp/blob; md5sum < /tmp/blob"
        ),
        T,
    )?;
    let sent_md5 = sent
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    util::wait_until("the far host to receive 256 KiB", T, || {
        Ok(std::fs::metadata(&received).map(|m| m.len()).unwrap_or(0) >= 256 * 1024)
    })?;
    let got = util::run(&["md5sum", &received.display().to_string()])?;
    let got_md5 = got.split_whitespace().next().unwrap_or_default();
    println!("guest sent      262144 bytes, md5 {sent_md5}");
    println!(
        "far host got    {} bytes, md5 {got_md5}",
        std::fs::metadata(&received)?.len()
    );
    ensure!(sent_md5 == got_md5, "transfer corrupted");
    println!("transfer OK");

    section("UDP both ways: a datagram echoed by the far host");
    let echo = c.run_ok(
        &format!(
            "echo hello-from-the-guest | socat -t 3 -T 5 - UDP4:{FAR_HOST}:{}",
            far::UDP_ECHO_PORT
        ),
        T,
    )?;
    println!("{}", echo.trim_end());
    ensure!(echo.trim() == "hello-from-the-guest", "echo mismatch");

    section("TCP: iperf3 from the guest to the far host and back (3 s each)");
    let _iperf = far::start_iperf3(&topo.far, far::IPERF3_PORT)?;
    for (what, flag) in [("guest -> far", ""), ("far -> guest", "-R")] {
        let out = c.run_ok(
            &format!(
                "iperf3 -c {FAR_HOST} -p {} -t 3 {flag} -f m 2>&1",
                far::IPERF3_PORT
            ),
            T,
        )?;
        let line = out
            .lines()
            .find(|l| l.contains("receiver"))
            .unwrap_or("no summary");
        println!("{what}: {}", line.trim());
    }

    section(&format!(
        "DNS: {} through the pod's resolver",
        far::FAR_NAME
    ));
    println!(
        "{}",
        c.run_ok(&format!("nslookup -type=a {}", far::FAR_NAME), T)?
            .trim_end()
    );

    vm.poweroff(T)?;
    section("podwire's log");
    println!("{}", pw.log().trim_end());
    Ok(())
}
