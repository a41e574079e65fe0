//! The Pod topology and the far services, without QEMU or podwire.

use podwire_perf::far::{self, FarServices};
use podwire_perf::netns::{self, PodTopology, Proto, FAR_HOST, POD_ADDR, POD_GATEWAY};
use podwire_perf::util;
use std::path::Path;

fn tools_present() -> bool {
    let missing = util::missing_tools(&["ip", "ss", "dnsmasq", "socat", "iperf3", "busybox"]);
    if !missing.is_empty() {
        eprintln!("SKIPPED: missing tools: {missing:?}");
        return false;
    }
    true
}

#[test]
fn pod_topology_and_far_services() {
    if !tools_present() {
        return;
    }
    let topo = PodTopology::create().unwrap();
    let (pod, far) = (&topo.pod, &topo.far);
    let pod_name = pod.name().to_string();
    let far_name = far.name().to_string();
    assert!(pod_name.starts_with("pod-") && far_name.starts_with("far-"));

    // addresses, routes, sysctl, resolv.conf
    let a = pod
        .ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(a.contains(&format!("{POD_ADDR}/24")), "{a}");
    let r = pod.ip(&["route", "show", "default"]).unwrap();
    assert!(r.contains(&format!("via {POD_GATEWAY}")), "{r}");
    let lo = far.ip(&["-4", "-o", "addr", "show", "dev", "lo"]).unwrap();
    assert!(lo.contains(&format!("{FAR_HOST}/32")), "{lo}");
    assert_eq!(
        pod.get_sysctl("net.ipv4.ping_group_range").unwrap(),
        "0\t2147483647"
    );
    let resolv = pod.exec(&["cat", "/etc/resolv.conf"]).unwrap();
    assert!(resolv.contains("nameserver 198.18.1.1"), "{resolv}");
    assert!(resolv.contains("search podwire.test"), "{resolv}");

    // the far host is reachable through the gateway, v4 and v6
    pod.exec(&[
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        &FAR_HOST.to_string(),
    ])
    .unwrap();
    pod.exec(&[
        "busybox",
        "ping",
        "-6",
        "-c",
        "1",
        "-W",
        "5",
        &netns::FAR_HOST6.to_string(),
    ])
    .unwrap();

    let mut svc = FarServices::start(far).unwrap();
    // DNS through the pod's resolv.conf (busybox nslookup reads it)
    let ns = pod.exec(&["busybox", "nslookup", far::FAR_NAME]).unwrap();
    assert!(ns.contains("198.18.1.1"), "{ns}");
    let nx = pod
        .exec_output(&["busybox", "nslookup", "nope.podwire.test"])
        .unwrap();
    assert!(!nx.status.success());
    // UDP and TCP echo
    let udp = pod
        .sh(&format!(
            "echo ping-udp | socat -T 5 - UDP4:{FAR_HOST}:{}",
            far::UDP_ECHO_PORT
        ))
        .unwrap();
    assert_eq!(udp, "ping-udp\n");
    let tcp = pod
        .sh(&format!(
            "echo ping-tcp | socat -T 5 - TCP4:{FAR_HOST}:{},shut-down",
            far::TCP_ECHO_PORT
        ))
        .unwrap();
    assert_eq!(tcp, "ping-tcp\n");
    // a short iperf3 run
    let j = pod
        .exec(&["iperf3", "-c", &FAR_HOST.to_string(), "-t", "1", "-J"])
        .unwrap();
    assert!(j.contains("\"sum_received\""), "{j}");
    pod.wait_listening(
        Proto::Tcp,
        Some(FAR_HOST),
        far::IPERF3_PORT,
        std::time::Duration::from_secs(1),
    )
    .expect_err("nothing listens in the pod namespace");
    svc.dns.ensure_running().unwrap();

    // a process spawned in the pod is killed with it
    let sleeper = pod.spawn("sleeper", &["sleep", "1000"]).unwrap();
    let spid = sleeper.pid();
    std::mem::forget(sleeper);
    let pids = pod.pids();
    assert!(pids.contains(&spid), "{pids:?}");

    drop(svc);
    drop(topo);
    assert!(!Path::new("/run/netns").join(&pod_name).exists());
    assert!(!Path::new("/run/netns").join(&far_name).exists());
    assert!(!Path::new("/etc/netns").join(&pod_name).exists());
    util::wait_until(
        "the sleeper to be gone",
        std::time::Duration::from_secs(5),
        || {
            Ok(std::fs::read_to_string(format!("/proc/{spid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true))
        },
    )
    .unwrap();
}

#[test]
fn topologies_are_independent() {
    if !tools_present() {
        return;
    }
    let a = PodTopology::create().unwrap();
    let b = PodTopology::create().unwrap();
    assert_ne!(a.pod.name(), b.pod.name());
    // same addresses in both, no interference
    a.pod
        .exec(&[
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            &FAR_HOST.to_string(),
        ])
        .unwrap();
    b.pod
        .exec(&[
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            &FAR_HOST.to_string(),
        ])
        .unwrap();
}
