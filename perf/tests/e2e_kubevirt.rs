//! The KubeVirt binding end to end, without a cluster: the sidecar as virt-launcher's pod runs it,
//! the domain as virt-launcher shapes it, libvirt and QEMU (TCG) as virt-launcher drives them.
//!
//! The sidecar binary runs in the pod namespace as an unprivileged user (the one the private
//! libvirtd runs QEMU as, as in a virt-launcher pod, where both are uid 107), with a hooks
//! directory of its own. The test, in virt-launcher's place, calls `OnDefineDomain` over the
//! hook socket with a gRPC client, passing a VMI (JSON) and a domain shaped like virt-launcher's
//! (a tap `<interface type="ethernet">` aliased `ua-default`, or none for a plugin binding
//! without domain attachment; no shared memory backing); the sidecar starts podwire with the
//! VMI's options and answers the rewritten domain, which libvirt defines and starts.
//!
//! Checked in the guest: the lease comes from the VMI's `vmNetworkCIDR` and carries its
//! hostname; ping, UDP and TCP reach the far host; the far host reaches the VMI's forwarded
//! port. podwire's peak memory is measured against KubeVirt's 64M sidecar limit (the one it
//! applies to sidecars of VMs with guaranteed QoS).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use podwire_kubevirt::launcher::vmi_json;
use podwire_perf::libvirt::domain_xml;
use podwire_perf::netns::{PodTopology, FAR_HOST, POD_ADDR};
use podwire_perf::{far, guest, util, Console, Proc};

const T: Duration = Duration::from_secs(60);
/// KubeVirt's memory limit for sidecar containers of VMs with dedicated CPUs / guaranteed QoS.
const SIDECAR_LIMIT_BYTES: u64 = 64_000_000;
/// The user QEMU runs as in the harness's libvirtd; the sidecar runs as it too.
const QEMU_USER: &str = "nobody";

fn sidecar_path() -> PathBuf {
    let podwire = podwire_perf::podwire::podwire_path().unwrap();
    let p = podwire.with_file_name("podwire-kubevirt-sidecar");
    assert!(
        p.is_file(),
        "{} not built: cargo build -p podwire-kubevirt",
        p.display()
    );
    p
}

type Setup = podwire_perf::libvirt::LibvirtSetup;

fn setup() -> Setup {
    Setup::start().unwrap()
}

/// The sidecar in the pod, unprivileged, with its own hooks directory.
struct Sidecar {
    proc: Proc,
    hooks: PathBuf,
}

impl Sidecar {
    fn start(topo: &PodTopology, tag: &str) -> Sidecar {
        let hooks = std::env::temp_dir()
            .join(format!("pwkv-e2e-{tag}-{}", std::process::id()))
            .join("hooks");
        let _ = std::fs::remove_dir_all(&hooks);
        std::fs::create_dir_all(&hooks).unwrap();
        // The user must create its sockets here, and QEMU reach them.
        std::fs::set_permissions(&hooks, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(
            hooks.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let podwire = podwire_perf::podwire::podwire_path().unwrap();
        let proc = topo
            .pod
            .spawn(
                "sidecar",
                &[
                    "setpriv",
                    &format!("--reuid={QEMU_USER}"),
                    &format!("--regid={}", nogroup()),
                    "--clear-groups",
                    sidecar_path().to_str().unwrap(),
                    "--hooks-dir",
                    hooks.to_str().unwrap(),
                    // QEMU sees the directory where the sidecar does (no container mounts).
                    "--launcher-hooks-dir",
                    hooks.to_str().unwrap(),
                    "--podwire",
                    podwire.to_str().unwrap(),
                ],
            )
            .unwrap();
        let sock = hooks.join("podwire.sock");
        // The hook socket is in the pod's namespace: look for it there.
        util::wait_until("the hook socket", T, || {
            Ok(topo
                .pod
                .exec(&["cat", "/proc/net/unix"])
                .is_ok_and(|t| t.contains(sock.to_str().unwrap())))
        })
        .unwrap();
        Sidecar { proc, hooks }
    }

    fn define(&self, domain: &str, vmi: &str) -> String {
        podwire_kubevirt::client::on_define_domain(&self.hooks.join("podwire.sock"), domain, vmi)
            .unwrap_or_else(|e| panic!("OnDefineDomain: {e}\nsidecar log:\n{}", self.proc.log()))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.hooks.parent().unwrap());
    }
}

fn nogroup() -> &'static str {
    if std::fs::read_to_string("/etc/group").is_ok_and(|g| g.contains("\nnogroup:")) {
        "nogroup"
    } else {
        "nobody"
    }
}

/// virt-launcher's domain around the harness's bootable one: `interface` as its NIC(s), and
/// no shared memory backing (virt-launcher adds none; the hook must).
fn launcher_shaped(s: &Setup, name: &str, interfaces: &str) -> String {
    let xml = domain_xml(&s.daemon, name, &s.image, interfaces);
    let without = xml.replace(
        "  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>\n",
        "",
    );
    assert_ne!(without, xml, "the harness's domain changed shape");
    without
}

/// A masquerade-shaped interface as virt-launcher writes it for a tap attachment.
const TAP_DEFAULT: &str = r#"<interface type="ethernet">
      <source></source>
      <target dev="tap0" managed="no"></target>
      <model type="virtio-non-transitional"></model>
      <mac address="52:54:00:12:34:56"></mac>
      <mtu size="1400"></mtu>
      <alias name="ua-default"></alias>
      <rom enabled="no"></rom>
    </interface>"#;

fn podwire_pid(topo: &PodTopology) -> Option<u32> {
    topo.pod.pids().into_iter().find(|pid| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "podwire"))
    })
}

/// podwire's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

fn serve_peer_address(c: &mut Console, port: u16) {
    c.run_ok(
        &format!(
            "socat TCP-LISTEN:{port},reuseaddr,fork SYSTEM:'echo peer=$SOCAT_PEERADDR' \
             >/dev/null 2>&1 &"
        ),
        T,
    )
    .unwrap();
    c.run_ok(
        &format!("while ! netstat -ltn | grep -q ':{port} '; do sleep 0.1; done"),
        T,
    )
    .unwrap();
}

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
    assert_eq!(out.trim(), format!("peer={FAR_HOST}"), "port {pod_port}");
}

/// Boots, takes the lease the VMI asks for, reaches the far host by ping, UDP and TCP.
fn guest_is_on_the_network(
    c: &mut Console,
    guest_ip: &str,
    gateway: &str,
    hostname: &str,
    mtu: Option<u32>,
) {
    c.wait_for(podwire_perf::qemu::READY, Duration::from_secs(180))
        .unwrap();
    c.run_ok("ip link set eth0 up", T).unwrap();
    let lease = guest::udhcpc(c, "eth0", 10, T).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(lease.ip(), Some(guest_ip), "from vmNetworkCIDR: {lease:?}");
    assert_eq!(lease.routers(), vec![gateway.to_string()], "{lease:?}");
    assert_eq!(lease.get("hostname"), Some(hostname), "{lease:?}");
    if let Some(mtu) = mtu {
        assert_eq!(
            lease.mtu(),
            Some(mtu),
            "the domain's <mtu>, by DHCP: {lease:?}"
        );
    }
    let ping = c.run_ok(&format!("ping -c 2 -W 5 {FAR_HOST}"), T).unwrap();
    assert!(ping.contains("2 packets received"), "{ping}");
    let echo = c
        .run_ok(
            &format!(
                "echo kubevirt-udp | socat -t 3 -T 5 - UDP4:{FAR_HOST}:{}",
                far::UDP_ECHO_PORT
            ),
            T,
        )
        .unwrap();
    assert_eq!(echo.trim(), "kubevirt-udp");
    let tcp = c
        .run_ok(
            &format!(
                "echo kubevirt-tcp | socat -t 3 -T 5 - TCP4:{FAR_HOST}:{}",
                far::TCP_ECHO_PORT
            ),
            T,
        )
        .unwrap();
    assert_eq!(tcp.trim(), "kubevirt-tcp");
}

#[test]
fn a_masquerade_shaped_domain_rewritten_by_the_sidecar_runs_on_podwire() {
    let s = setup();
    let sidecar = Sidecar::start(&s.topo, "masq");
    let name = "ns1_vm-masq";
    let vmi = vmi_json(
        "vm-masq",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"},"macAddress":"52:54:00:12:34:56",
            "ports":[{"name":"http","port":8080}]}"#,
        r#"{"name":"default","pod":{"vmNetworkCIDR":"198.19.7.0/24"}}"#,
    );
    let domain = launcher_shaped(&s, name, TAP_DEFAULT);
    let rewritten = sidecar.define(&domain, &vmi);
    let socket = sidecar.hooks.join("podwire/default.sock");
    assert!(rewritten.contains(&format!("path=\"{}\"", socket.display())));
    s.daemon
        .define_and_start(&rewritten)
        .unwrap_or_else(|e| panic!("{e:#}\n{rewritten}\nsidecar log:\n{}", sidecar.proc.log()));
    let mut c = s.daemon.console(name).unwrap();
    guest_is_on_the_network(&mut c, "198.19.7.2", "198.19.7.1", "vm-masq", Some(1400));
    serve_peer_address(&mut c, 8080);
    far_reaches_forwarded_port(&s.topo, 8080);

    let pid = podwire_pid(&s.topo).expect("podwire runs in the pod");
    let peak = peak_rss(pid);
    eprintln!(
        "podwire peak RSS (VmHWM) after the checks: {} KiB",
        peak / 1024
    );
    assert!(
        peak < SIDECAR_LIMIT_BYTES,
        "podwire's peak RSS {peak} exceeds KubeVirt's sidecar limit"
    );
    s.daemon.destroy(name).unwrap();
}

#[test]
fn an_added_interface_next_to_a_kept_one_runs_on_podwire() {
    // Two NICs: podwire's, which virt-launcher did not generate (a plugin binding without
    // domainAttachmentType), and a bridge-bound tap on a secondary network, kept as it was.
    let s = setup();
    s.topo
        .pod
        .exec(&["ip", "tuntap", "add", "dev", "tapbr1", "mode", "tap"])
        .unwrap();
    let sidecar = Sidecar::start(&s.topo, "two");
    let name = "ns1_vm-two";
    let bridge = r#"<interface type="ethernet">
      <source></source>
      <target dev="tapbr1" managed="no"></target>
      <model type="virtio-non-transitional"></model>
      <mac address="52:54:00:00:01:01"></mac>
      <alias name="ua-br1"></alias>
      <rom enabled="no"></rom>
    </interface>"#;
    let vmi = vmi_json(
        "vm-two",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"},"macAddress":"52:54:00:12:34:57",
            "ports":[{"port":9090}]},
           {"name":"br1","bridge":{}}"#,
        r#"{"name":"default","pod":{"vmNetworkCIDR":"198.19.8.0/24"}},
           {"name":"br1","multus":{"networkName":"br1"}}"#,
    );
    let domain = launcher_shaped(&s, name, bridge);
    let rewritten = sidecar.define(&domain, &vmi);
    assert!(
        rewritten.contains(bridge),
        "the bridge interface is kept byte for byte"
    );
    s.daemon
        .define_and_start(&rewritten)
        .unwrap_or_else(|e| panic!("{e:#}\n{rewritten}\nsidecar log:\n{}", sidecar.proc.log()));
    let mut c = s.daemon.console(name).unwrap();
    c.wait_for(podwire_perf::qemu::READY, Duration::from_secs(180))
        .unwrap();
    // podwire's NIC is the one with its MAC, whatever the guest names it.
    let iface = c
        .run_ok(
            "for i in /sys/class/net/eth*; do grep -q 52:54:00:12:34:57 $i/address && \
             basename $i; done",
            T,
        )
        .unwrap();
    let iface = iface.trim().to_owned();
    assert!(
        iface.starts_with("eth"),
        "podwire's NIC in the guest: {iface:?}"
    );
    let others = c.run_ok("ls /sys/class/net | grep -c eth", T).unwrap();
    assert_eq!(others.trim(), "2", "both NICs are in the guest");
    c.run_ok(&format!("ip link set {iface} up"), T).unwrap();
    let lease = guest::udhcpc(&mut c, &iface, 10, T).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(lease.ip(), Some("198.19.8.2"), "{lease:?}");
    let ping = c.run_ok(&format!("ping -c 2 -W 5 {FAR_HOST}"), T).unwrap();
    assert!(ping.contains("2 packets received"), "{ping}");
    serve_peer_address(&mut c, 9090);
    far_reaches_forwarded_port(&s.topo, 9090);
    s.daemon.destroy(name).unwrap();
}
