//! The guest's network stack over a tap (no podwire): virtio-net, the
//! udhcpc hook (address, routes, option 121, MTU, resolv.conf), dhcpcd, DNS,
//! ping and iperf3 against a host namespace. This checks the image and the
//! harness; podwire's own end-to-end tests swap the tap for vhost-user.

use podwire_perf::netns::{Netns, Proto};
use podwire_perf::{guest, qemu, util, Nic, Qemu, QemuConfig};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const HOST: &str = "198.18.2.1";

#[test]
fn guest_network_over_a_tap() {
    let missing = util::missing_tools(&[&qemu::qemu_binary(), "ip", "ss", "dnsmasq", "iperf3"]);
    if !missing.is_empty() {
        eprintln!("SKIPPED guest_network_over_a_tap: missing tools: {missing:?}");
        return;
    }
    let image = guest::image().unwrap();
    let lan = Netns::create_unique("lan").unwrap();
    let tmp = util::TempDir::new("lan").unwrap();
    lan.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"])
        .unwrap();
    lan.ip(&["addr", "add", &format!("{HOST}/24"), "dev", "tap0"])
        .unwrap();
    lan.ip(&["link", "set", "tap0", "up"]).unwrap();
    // also give the host a "far" address, reached through option 121's route
    lan.ip(&["addr", "add", "198.18.3.1/32", "dev", "lo"])
        .unwrap();

    let leases = tmp.join("leases").display().to_string();
    let leasefile = format!("--dhcp-leasefile={leases}");
    let mut dnsmasq = lan
        .spawn(
            "dnsmasq",
            &[
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--interface=tap0",
                "--bind-interfaces",
                "--user=root",
                "--group=root",
                "--pid-file",
                "--log-facility=-",
                "--log-dhcp",
                &leasefile,
                "--dhcp-authoritative",
                "--no-ping",
                "--dhcp-range=198.18.2.100,198.18.2.150,255.255.255.0,1h",
                "--dhcp-option=option:router,198.18.2.1",
                "--dhcp-option=option:dns-server,198.18.2.1",
                "--dhcp-option=option:domain-name,podwire.test",
                "--dhcp-option=option:domain-search,podwire.test,x.podwire.test",
                "--dhcp-option=option:mtu,1400",
                "--dhcp-option=option:classless-static-route,198.18.3.0/24,198.18.2.1,0.0.0.0/0,198.18.2.1",
                "--address=/far.podwire.test/198.18.3.1",
            ],
        )
        .unwrap();
    util::wait_until("dnsmasq to listen", Duration::from_secs(20), || {
        dnsmasq.ensure_running()?;
        let out = lan.exec(&["ss", "-Hlnu"])?;
        Ok(podwire_perf::netns::ss_listening(&out, None, 67)
            && podwire_perf::netns::ss_listening(&out, None, 53))
    })
    .unwrap();
    let _iperf = lan.spawn("iperf3", &["iperf3", "-s", "-B", HOST]).unwrap();
    lan.wait_listening(Proto::Tcp, None, 5201, Duration::from_secs(20))
        .unwrap();

    let cfg = QemuConfig::new(&image)
        .name("tap")
        .in_netns(&lan)
        .nic(Nic::Tap {
            ifname: "tap0".into(),
        });
    let mut vm = Qemu::boot(&cfg).unwrap();
    eprintln!("guest booted in {:?}", vm.boot_time().unwrap());

    // udhcpc asking only for the classic options: default route via the router
    let c = vm.console();
    c.run_ok("ip link set eth0 up", T).unwrap();
    let classic = "-o -O subnet -O router -O dns -O domain -O search -O mtu";
    let l = guest::udhcpc_with(c, "eth0", classic, 10, T).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(l.ip().unwrap().starts_with("198.18.2."), "{l:?}");
    assert_eq!(l.prefix(), Some(24));
    assert_eq!(l.routers(), vec![HOST]);
    assert_eq!(l.mtu(), Some(1400));
    assert!(l.static_routes().is_empty(), "{l:?}");
    let routes = c.run_ok("ip route", T).unwrap();
    assert!(
        routes.contains("default via 198.18.2.1 dev eth0"),
        "{routes}"
    );
    let link = c.run_ok("ip link show eth0", T).unwrap();
    assert!(link.contains("mtu 1400"), "{link}");
    let resolv = c.run_ok("cat /etc/resolv.conf", T).unwrap();
    assert!(resolv.contains("nameserver 198.18.2.1"), "{resolv}");
    assert!(
        resolv.contains("search podwire.test podwire.test x.podwire.test"),
        "{resolv}"
    );

    // with option 121: its routes, and the router option ignored (RFC 3442)
    c.run_ok("ip route flush dev eth0; ip addr flush dev eth0", T)
        .unwrap();
    let l = guest::udhcpc(c, "eth0", 10, T).unwrap();
    assert_eq!(
        l.static_routes(),
        vec![
            ("198.18.3.0/24".to_string(), HOST.to_string()),
            ("0.0.0.0/0".to_string(), HOST.to_string())
        ]
    );
    let routes = c.run_ok("ip route", T).unwrap();
    assert!(
        routes.contains("198.18.3.0/24 via 198.18.2.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("default via 198.18.2.1 dev eth0"),
        "{routes}"
    );

    // traffic: ping, DNS through resolv.conf's server, iperf3
    c.run_ok("ping -c 2 -W 5 198.18.3.1", T).unwrap();
    let ns = c.run_ok("nslookup -type=a far.podwire.test", T).unwrap();
    assert!(ns.contains("198.18.3.1"), "{ns}");
    let j = c.run_ok(&format!("iperf3 -c {HOST} -t 2 -J"), T).unwrap();
    let bps = j
        .split("\"sum_received\"")
        .nth(1)
        .and_then(|s| s.split("\"bits_per_second\":").nth(1))
        .and_then(|s| s.split([',', '\n', '}']).next())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no throughput in {j}"));
    eprintln!("guest -> tap iperf3: {:.1} Mbit/s", bps / 1e6);
    assert!(bps > 0.0);

    // dhcpcd (as packaged) gets a lease too
    c.run_ok("ip route flush dev eth0; ip addr flush dev eth0", T)
        .unwrap();
    let out = c.run("dhcpcd -4 -1 -w -t 30 eth0 2>&1", T).unwrap();
    assert_eq!(out.code, 0, "{}", out.output);
    let a = c.run_ok("ip -4 addr show eth0", T).unwrap();
    assert!(a.contains("inet 198.18.2."), "{a}");
    vm.poweroff(T).unwrap();
}
