//! libvirt starts, configures and stops podwire as its `passt` backend.
//!
//! A private libvirtd (11.x) runs in the pod's network namespace with podwire first on its
//! `PATH` as `passt` (see `perf/src/libvirt.rs`). A TCG domain boots the test guest with
//! `<interface type='vhostuser'><backend type='passt'/>`; libvirt builds podwire's command line
//! from the XML (`--address/--netmask` from `<ip>`, `--tcp-ports`/`--udp-ports` from
//! `<portForward>`, `--log-file` from the backend's `logFile`), waits for it to go to the
//! background, starts QEMU on its socket, and kills it on `virsh destroy`.
//!
//! Checked in the guest: the lease carries the address of `<ip>`; ping and UDP to the far host;
//! TCP both ways (to the far host's echo; from the far host to both `<portForward>` ranges,
//! where the guest sees the far host's own address). Then: `virsh destroy` leaves no podwire
//! process, socket or pid file; a second `virsh start` works; a domain whose XML podwire cannot
//! honour fails to start with podwire's one line in virsh's error.

use std::time::Duration;

use podwire_perf::libvirt::{domain_xml, Libvirtd};
use podwire_perf::netns::{PodTopology, FAR_HOST, POD_ADDR};
use podwire_perf::{far, guest, Console};

const T: Duration = Duration::from_secs(60);
const GUEST_IP: &str = "198.19.5.15";
const GUEST_GW: &str = "198.19.5.1";

/// `<interface type='vhostuser'>` with a passt backend, an `<ip>` and two `<portForward>`s:
/// TCP 8080 → 80 and 9000-9001 → 9100-9101; UDP 5353 → 53 (only parsed, not exercised).
fn vhostuser_interface(daemon: &Libvirtd, name: &str) -> String {
    passt_interface("vhostuser", daemon, name)
}

/// The same with `type` `user` (QEMU's stream netdev) or `vhostuser`.
fn passt_interface(kind: &str, daemon: &Libvirtd, name: &str) -> String {
    format!(
        "<interface type='{kind}'>
      <mac address='52:54:00:12:34:56'/>
      <source dev='eth0'/>
      <model type='virtio'/>
      <backend type='passt' logFile='{log}'/>
      <ip family='ipv4' address='{GUEST_IP}' prefix='24'/>
      <portForward proto='tcp'>
        <range start='8080' to='80'/>
        <range start='9000' end='9001' to='9100'/>
      </portForward>
      <portForward proto='udp'>
        <range start='5353' to='53'/>
      </portForward>
    </interface>",
        log = daemon.passt_log_dir().join(format!("{name}.log")).display()
    )
}

/// The guest answers on `port` with the address its TCP peer has, as the guest sees it.
fn serve_peer_address(c: &mut Console, port: u16) {
    c.run_ok(
        &format!(
            "socat TCP-LISTEN:{port},reuseaddr,fork SYSTEM:'echo peer=$SOCAT_PEERADDR' \
             >/dev/null 2>&1 &"
        ),
        T,
    )
    .unwrap();
    // Listening before the far host connects (the guest waits on its own condition).
    c.run_ok(
        &format!("while ! netstat -ltn | grep -q ':{port} '; do sleep 0.1; done"),
        T,
    )
    .unwrap();
}

/// Boots (console connected), takes a lease and checks ping, UDP and TCP to the far host.
fn guest_reaches_the_far_host(c: &mut Console) {
    c.wait_for(podwire_perf::qemu::READY, Duration::from_secs(180))
        .unwrap();
    c.run_ok("ip link set eth0 up", T).unwrap();
    let lease = guest::udhcpc(c, "eth0", 10, T).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        lease.ip(),
        Some(GUEST_IP),
        "the address from <ip>: {lease:?}"
    );
    assert_eq!(lease.prefix(), Some(24), "{lease:?}");
    assert_eq!(lease.routers(), vec![GUEST_GW.to_string()], "{lease:?}");
    // The pod's MTU: libvirt 11.3 refuses `<mtu>` on both passt interface types ("Cannot set
    // interface MTU on '(null)': No such device"), so `--mtu` cannot come from the XML here.
    assert_eq!(lease.mtu(), Some(1500), "{lease:?}");

    let ping = c.run_ok(&format!("ping -c 2 -W 5 {FAR_HOST}"), T).unwrap();
    assert!(ping.contains("2 packets received"), "{ping}");
    let payload = "podwire-libvirt-udp";
    let echo = c
        .run_ok(
            &format!(
                "echo {payload} | socat -t 3 -T 5 - UDP4:{FAR_HOST}:{}",
                far::UDP_ECHO_PORT
            ),
            T,
        )
        .unwrap();
    assert_eq!(echo.trim(), payload);
    let tcp = c
        .run_ok(
            &format!(
                "echo podwire-libvirt-tcp | socat -t 3 -T 5 - TCP4:{FAR_HOST}:{}",
                far::TCP_ECHO_PORT
            ),
            T,
        )
        .unwrap();
    assert_eq!(tcp.trim(), "podwire-libvirt-tcp");
}

/// From the far host, `pod_port` reaches the guest's `guest_port`, and the guest sees the far
/// host's own address.
fn far_reaches_forwarded_port(topo: &PodTopology, pod_port: u16) {
    let out = topo
        .far
        .exec(&[
            "socat",
            "-t",
            "5",
            "-T",
            "10",
            "-",
            &format!("TCP4:{POD_ADDR}:{pod_port},bind={FAR_HOST}"),
        ])
        .unwrap();
    let listening = topo.pod.exec(&["ss", "-ltnp"]).unwrap_or_default();
    assert_eq!(
        out.trim(),
        format!("peer={FAR_HOST}"),
        "port {pod_port}; the pod listens on:\n{listening}"
    );
}

/// No podwire left in the pod, and nothing left in libvirt's passt directory.
fn assert_podwire_gone(topo: &PodTopology, daemon: &Libvirtd) {
    let podwire_pids = || -> Vec<u32> {
        topo.pod
            .pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "podwire"))
            })
            .collect()
    };
    podwire_perf::util::wait_until("podwire to exit after virsh destroy", T, || {
        Ok(podwire_pids().is_empty())
    })
    .unwrap();
    let left: Vec<_> = std::fs::read_dir(daemon.passt_dir())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the passt directory: {left:?}");
}

/// The far host's services, a private libvirtd and the guest image.
type Setup = podwire_perf::libvirt::LibvirtSetup;

fn setup() -> Setup {
    Setup::start().unwrap()
}

/// Defines and starts `name` with a passt interface of `kind`, checks the guest's network
/// both ways and podwire's log file, destroys it and checks nothing is left.
fn exercise(s: &Setup, kind: &str, name: &str, connected: &str) {
    let daemon = &s.daemon;
    let xml = domain_xml(daemon, name, &s.image, &passt_interface(kind, daemon, name));
    daemon.define_and_start(&xml).unwrap();
    let mut c = daemon.console(name).unwrap();
    guest_reaches_the_far_host(&mut c);
    serve_peer_address(&mut c, 80);
    serve_peer_address(&mut c, 9101);
    far_reaches_forwarded_port(&s.topo, 8080);
    far_reaches_forwarded_port(&s.topo, 9001);
    let log = passt_log(daemon, name);
    assert!(log.contains("listening on"), "--log-file: {log:?}");
    assert!(log.contains(connected), "{log:?}");
    daemon.destroy(name).unwrap();
    drop(c);
    assert_podwire_gone(&s.topo, daemon);
}

fn passt_log(daemon: &Libvirtd, name: &str) -> String {
    std::fs::read_to_string(daemon.passt_log_dir().join(format!("{name}.log"))).unwrap_or_default()
}

#[test]
fn libvirt_runs_podwire_as_passt_for_a_vhostuser_interface() {
    let s = setup();
    let name = "pw-vhostuser";
    exercise(&s, "vhostuser", name, "frontend connected");

    // Again: the same domain starts a fresh podwire, which QEMU connects to.
    let daemon = &s.daemon;
    daemon.start_domain(name).unwrap();
    podwire_perf::util::wait_until("QEMU to connect to the second podwire", T, || {
        Ok(passt_log(daemon, name)
            .matches("frontend connected")
            .count()
            >= 1)
    })
    .unwrap();
    daemon.destroy(name).unwrap();
    assert_podwire_gone(&s.topo, daemon);

    // A forward bound to an interface is something podwire refuses: the start fails at once
    // with podwire's line, and leaves nothing behind.
    let bad = "pw-refused";
    let iface = vhostuser_interface(daemon, bad).replace(
        "<portForward proto='udp'>",
        "<portForward proto='udp' dev='eth0'>",
    );
    let xml = domain_xml(daemon, bad, &s.image, &iface);
    let err = daemon.define_and_start(&xml).unwrap_err().to_string();
    eprintln!("virsh start of a domain podwire refuses: {err}");
    assert!(
        err.contains("binding to an interface is not supported"),
        "virsh's error carries podwire's line: {err}"
    );
    assert_podwire_gone(&s.topo, daemon);
}

#[test]
fn libvirt_runs_podwire_as_passt_for_a_user_interface() {
    let s = setup();
    exercise(&s, "user", "pw-user", "stream frontend connected");
}
