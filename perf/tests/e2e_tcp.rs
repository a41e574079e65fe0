//! TCP through podwire in a real guest: connections the guest opens to the far host, data both
//! ways, refusals, and transfers checked byte for byte.

use std::time::Duration;

use podwire_perf::far;
use podwire_perf::netns::{PodTopology, Proto, FAR_HOST};
use podwire_perf::rig::{self, GuestSpec};
use podwire_perf::{guest, util, Podwire, PodwireConfig, Qemu};

const T: Duration = Duration::from_secs(120);
const FILE_PORT: u16 = 8000;
const CLOSED_PORT: u16 = 8001;

/// iperf3's summary line for the receiving side, and that it moved data.
fn receiver_line(out: &str) -> &str {
    let line = out
        .lines()
        .find(|l| l.contains("receiver"))
        .unwrap_or_else(|| panic!("no receiver line: {out}"));
    assert!(!line.contains(" 0.00 Bytes"), "no data moved: {line}");
    line
}

/// podwire with `extra` arguments, and a guest whose virtio-net device has `nic_props` (e.g.
/// `csum=off` to keep the checksum offloads from being negotiated), leased.
fn boot_with(
    topo: &PodTopology,
    dir: &util::TempDir,
    extra: &[&str],
    nic_props: &[&str],
) -> (Podwire, Qemu) {
    let pw = rig::podwire_in(topo, dir, None, extra).unwrap();
    let spec = GuestSpec {
        nic_props,
        ..GuestSpec::new("e2e-tcp")
    };
    let (vm, _) = rig::boot_on(pw.socket(), &spec, dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    (pw, vm)
}

fn boot(topo: &PodTopology, dir: &util::TempDir, extra: &[&str]) -> (Podwire, Qemu) {
    boot_with(topo, dir, extra, &[])
}

#[test]
fn guest_connects_out_fetches_a_file_and_sends_one() {
    transfer_files_both_ways(&[]);
}

/// The same with the checksum offloads off: podwire computes and verifies every checksum.
#[test]
fn file_transfers_without_checksum_offloads() {
    transfer_files_both_ways(&["csum=off", "guest_csum=off"]);
}

fn transfer_files_both_ways(nic_props: &[&str]) {
    let topo = PodTopology::create().unwrap();
    let dir = util::TempDir::new("e2e-tcp").unwrap();
    // A 4 MiB file served by the far host, checked by its md5 on both ends.
    let file = dir.join("served.bin");
    let want = far::random_file(&file, 4).unwrap();
    let far4 = std::net::IpAddr::V4(FAR_HOST);
    let _server = far::start_file_server(&topo.far, far4, FILE_PORT, &file).unwrap();
    let upload = dir.join("uploaded.bin");
    let _sink = far::start_file_sink(&topo.far, far4, FILE_PORT + 2, &upload).unwrap();
    let (mut pw, mut vm) = boot_with(&topo, &dir, &[], nic_props);
    let c = vm.console();

    // Download: far → guest.
    let got = guest::download_md5(c, std::net::IpAddr::V4(FAR_HOST), FILE_PORT, T).unwrap();
    assert_eq!(got, want, "download");
    // Upload: guest → far, checked the same way.
    let sent =
        guest::upload_random(c, std::net::IpAddr::V4(FAR_HOST), FILE_PORT + 2, 2048, T).unwrap();
    let landed = far::md5_once_complete(&upload, 2048 * 1024, T).unwrap();
    assert_eq!(landed, sent, "upload");

    // A closed port is refused, as the guest's stack reports it.
    let refused = c
        .run(
            &format!("socat -T 10 - TCP4:{FAR_HOST}:{CLOSED_PORT} </dev/null 2>&1"),
            T,
        )
        .unwrap();
    assert_ne!(refused.code, 0);
    assert!(
        refused.output.contains("Connection refused"),
        "{}",
        refused.output
    );
    pw.ensure_running().unwrap();
    // All of it under the sandbox.
    let _ = pw.assert_sandboxed();
    vm.poweroff(T).unwrap();
    let _ = far::FAR_NAME;
}

#[test]
fn iperf3_guest_to_far_and_back() {
    let topo = PodTopology::create().unwrap();
    let dir = util::TempDir::new("e2e-iperf").unwrap();
    let _iperf = far::start_iperf3(&topo.far, far::IPERF3_PORT).unwrap();
    let (mut pw, mut vm) = boot(&topo, &dir, &[]);
    let c = vm.console();
    for reverse in ["", "-R"] {
        let out = c
            .run_ok(
                &format!(
                    "iperf3 -c {FAR_HOST} -p {} -t 3 {reverse} -f m 2>&1",
                    far::IPERF3_PORT
                ),
                T,
            )
            .unwrap();
        let receiver = receiver_line(&out);
        eprintln!("iperf3 {reverse}: {receiver}");
        let mbits: f64 = receiver
            .split_whitespace()
            .zip(receiver.split_whitespace().skip(1))
            .find(|(_, unit)| *unit == "Mbits/sec")
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or(0.0);
        assert!(mbits > 0.0, "data moved ({reverse}): {receiver}");
    }
    pw.ensure_running().unwrap();
    vm.poweroff(T).unwrap();
}

#[test]
fn forwarded_ports_reach_the_guest_with_the_clients_real_address() {
    let topo = PodTopology::create().unwrap();
    let dir = util::TempDir::new("e2e-fwd").unwrap();
    let (mut pw, mut vm) = boot(
        &topo,
        &dir,
        &["-t", "8080:80", "-t", "5201-5202", "-u", "5353:53"],
    );
    let c = vm.console();
    // Guest services: who connected (TCP and UDP), and an iperf3 server.
    c.run_ok(
        "socat TCP4-LISTEN:80,reuseaddr,fork SYSTEM:'echo peer=$SOCAT_PEERADDR' >/dev/null 2>&1 &",
        T,
    )
    .unwrap();
    c.run_ok(
        "socat UDP4-RECVFROM:53,fork SYSTEM:'echo udp-peer=$SOCAT_PEERADDR' >/dev/null 2>&1 &",
        T,
    )
    .unwrap();
    // One server per run: a TCG guest's iperf3 server re-arms slowly after a test, and a client
    // arriving in that gap is reset by the guest (seen in CI), which is not what this checks.
    c.run_ok("iperf3 -s -D -p 5201; iperf3 -s -D -p 5202", T)
        .unwrap();
    c.run_ok(
        "for i in $(seq 100); do netstat -ltn | grep -q ':5202 ' && break; sleep 0.1; done",
        T,
    )
    .unwrap();
    let pod = podwire_perf::netns::POD_ADDR;

    // From the far host: the guest sees the far host's own address.
    let out = topo
        .far
        .exec(&[
            "socat",
            "-T",
            "30",
            "-",
            &format!("TCP4:{pod}:8080,bind={FAR_HOST}"),
        ])
        .unwrap();
    assert_eq!(out.trim(), format!("peer={FAR_HOST}"));
    // From the pod's loopback: the guest sees the gateway.
    let out = topo
        .pod
        .exec(&["socat", "-T", "30", "-", "TCP4:127.0.0.1:8080"])
        .unwrap();
    assert_eq!(
        out.trim(),
        format!("peer={}", podwire_perf::netns::POD_GATEWAY)
    );
    // UDP: the same.
    let out = topo
        .far
        .sh(&format!(
            "echo q | socat -t 3 -T 10 - UDP4:{pod}:5353,bind={FAR_HOST}"
        ))
        .unwrap();
    assert_eq!(out.trim(), format!("udp-peer={FAR_HOST}"));

    // iperf3 from the far host into the guest, and back, through the forwarded port.
    for (port, reverse) in [(5201, ""), (5202, "-R")] {
        let out = topo
            .far
            .sh(&format!(
                "iperf3 -c {pod} -p {port} -t 3 {reverse} -f m 2>&1"
            ))
            .unwrap();
        let receiver = receiver_line(&out);
        eprintln!("iperf3 far->guest {reverse}: {receiver}");
        assert!(!receiver.contains(" 0.00 Bytes"), "{receiver}");
    }
    pw.ensure_running().unwrap();
    vm.poweroff(T).unwrap();
}

#[test]
fn resets_and_refusals_are_seen_by_the_guest() {
    let topo = PodTopology::create().unwrap();
    let dir = util::TempDir::new("e2e-rst").unwrap();
    // A far server that accepts and resets every connection.
    let script = dir.join("rst.py");
    std::fs::write(
        &script,
        format!(
            "import socket, struct\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{FAR_HOST}', 8100)); s.listen(16)\n\
             while True:\n\
             \x20   c, _ = s.accept(); c.recv(100)\n\
             \x20   c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); c.close()\n"
        ),
    )
    .unwrap();
    let _rst = topo
        .far
        .spawn("rst-server", &["python3", &script.display().to_string()])
        .unwrap();
    topo.far
        .wait_listening(Proto::Tcp, Some(FAR_HOST), 8100, T)
        .unwrap();
    let (mut pw, mut vm) = boot(&topo, &dir, &[]);
    let c = vm.console();
    let reset = c
        .run(
            // -d: socat reports a reset as a warning (and still exits 0).
            &format!("echo hi | socat -d -t 10 -T 10 - TCP4:{FAR_HOST}:8100 2>&1"),
            T,
        )
        .unwrap();
    assert!(
        reset.output.contains("Connection reset by peer"),
        "{}",
        reset.output
    );
    let refused = c
        .run(
            &format!("socat -T 10 - TCP4:{FAR_HOST}:{CLOSED_PORT} </dev/null 2>&1"),
            T,
        )
        .unwrap();
    assert!(
        refused.output.contains("Connection refused"),
        "{}",
        refused.output
    );
    // An address the pod has no way to reach: the guest hears "unreachable" (ICMP), as from a
    // router. The route keeps the attempt inside the pod namespace.
    topo.pod
        .ip(&["route", "add", "unreachable", "198.19.99.0/24"])
        .unwrap();
    let unreachable = c
        .run("socat -T 10 - TCP4:198.19.99.1:80 </dev/null 2>&1", T)
        .unwrap();
    assert!(
        unreachable.output.contains("No route to host"),
        "{}",
        unreachable.output
    );
    pw.ensure_running().unwrap();
    vm.poweroff(T).unwrap();
}

#[test]
fn jumbo_mtu_65520_moves_64k_segments_both_ways() {
    let topo = PodTopology::create().unwrap();
    let dir = util::TempDir::new("e2e-jumbo").unwrap();
    let _iperf = far::start_iperf3(&topo.far, far::IPERF3_PORT).unwrap();
    let mut cfg = PodwireConfig::new(dir.join("vhost.sock"));
    cfg.mtu = Some(65520);
    let mut pw = Podwire::spawn(Some(&topo.pod), &cfg).unwrap();
    let spec = GuestSpec {
        nic_props: &["host_mtu=65520"],
        ..GuestSpec::new("e2e-jumbo")
    };
    let (mut vm, lease) =
        rig::boot_on(pw.socket(), &spec, dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    let lease = lease.unwrap();
    assert_eq!(lease.mtu(), Some(65520));
    let c = vm.console();
    let link = c.run_ok("ip link show eth0", T).unwrap();
    assert!(link.contains("mtu 65520"), "{link}");
    // A ping larger than 1500 bytes needs the big MTU on the guest's link.
    let ping = c
        .run_ok(&format!("ping -c 2 -s 30000 -W 5 {FAR_HOST}"), T)
        .unwrap();
    assert!(ping.contains("2 packets received"), "{ping}");
    for reverse in ["", "-R"] {
        let out = c
            .run_ok(
                &format!(
                    "iperf3 -c {FAR_HOST} -p {} -t 3 {reverse} -f m 2>&1",
                    far::IPERF3_PORT
                ),
                T,
            )
            .unwrap();
        let receiver = receiver_line(&out);
        eprintln!("iperf3 MTU 65520 {reverse}: {receiver}");
        assert!(!receiver.contains(" 0.00 Bytes"), "{receiver}");
    }
    pw.ensure_running().unwrap();
    vm.poweroff(T).unwrap();
}
