//! podwire end to end: guest (QEMU, vhost-user) <-> podwire in the pod
//! namespace <-> far host. Needs the podwire binary (PODWIRE_BIN or
//! target/{release,debug}/podwire).

use podwire_perf::far;
use podwire_perf::netns::{PodTopology, FAR_HOST, POD_ADDR, POD_GATEWAY};
use podwire_perf::{guest, qemu, util, Podwire, PodwireConfig, Qemu, QemuConfig};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[test]
fn guest_reaches_the_far_host_through_podwire() {
    let missing = util::missing_tools(&[&qemu::qemu_binary(), "ip", "ss", "dnsmasq", "socat"]);
    if !missing.is_empty() {
        eprintln!("SKIPPED: missing tools: {missing:?}");
        return;
    }
    let bin = match podwire_perf::podwire_path() {
        Ok(b) => b,
        Err(e) => panic!("{e:#}"),
    };
    eprintln!("podwire: {}", bin.display());
    let image = guest::image().unwrap();
    let topo = PodTopology::create().unwrap();
    let _dns = far::start_dns(&topo.far).unwrap();
    let _echo = far::start_udp_echo(&topo.far, far::UDP_ECHO_PORT).unwrap();
    let tmp = util::TempDir::new("e2e").unwrap();
    let mut cfg = PodwireConfig::new(tmp.join("vhost.sock"));
    cfg.debug = true;
    let mut pw = Podwire::spawn(Some(&topo.pod), &cfg).unwrap();

    let qcfg = QemuConfig::new(&image).name("e2e").vhost_user(pw.socket());
    let mut vm = Qemu::boot(&qcfg).unwrap();
    let c = vm.console();
    c.run_ok("ip link set eth0 up", T).unwrap();
    let lease = guest::udhcpc(c, "eth0", 10, T).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("lease: {lease:?}");
    assert_eq!(lease.ip(), Some(POD_ADDR.to_string().as_str()));
    assert_eq!(lease.prefix(), Some(24));
    let routes = c.run_ok("ip route", T).unwrap();
    assert!(
        routes.contains(&format!("default via {POD_GATEWAY}")),
        "{routes}"
    );

    c.run_ok(&format!("ping -c 3 -W 5 {FAR_HOST}"), T).unwrap();
    let echo = c
        .run_ok(
            &format!(
                "echo hi-udp | socat -T 5 - UDP4:{FAR_HOST}:{}",
                far::UDP_ECHO_PORT
            ),
            T,
        )
        .unwrap();
    assert_eq!(echo, "hi-udp\n");
    let ns = c.run_ok("nslookup -type=a far", T).unwrap();
    assert!(ns.contains("198.18.1.1"), "{ns}");
    pw.ensure_running().unwrap();
    vm.poweroff(T).unwrap();
}
