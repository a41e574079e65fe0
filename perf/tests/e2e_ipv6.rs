//! IPv6 through podwire in a real guest: the guest configures IPv6 by router advertisement and
//! DHCPv6 (dhcpcd, as distributions ship it: busybox has no DHCPv6 client), then pings a far host,
//! moves TCP (iperf3 and checked file transfers) and UDP both ways over IPv6, and is reached on
//! forwarded pod ports over IPv6 with the client's real address. A dual-stack, an IPv6-only and
//! an IPv4-only pod each get what they have, and nothing else. The dual-stack guest negotiates
//! every offload (GUEST_TSO6 and HOST_TSO6 included); the IPv6-only one none.
//!
//! The guest's IPv6 subnet is podwire's default, fd10:0:2::/120 (inside fd00::/8, which test
//! hosts may use); the pod is fd00:198:18::2/64 behind fd00:198:18::1, the far host
//! fd00:198:18:1::1.

use std::time::Duration;

use podwire_perf::netns::{
    Netns, PodTopology, Proto, FAR_HOST, FAR_HOST6, POD_ADDR, POD_ADDR6, POD_GATEWAY6, POD_PREFIX,
    POD_PREFIX6,
};
use podwire_perf::rig::{self, GuestSpec};
use podwire_perf::{far, guest, util, Podwire, Proc, Qemu};

const T: Duration = Duration::from_secs(120);
const GUEST6: &str = "fd10:0:2::2";
/// The gateway's link-local address: EUI-64 of podwire's gateway MAC 02:70:77:00:00:01.
const ROUTER_LL: &str = "fe80::70:77ff:fe00:1";
const UDP_ECHO6: u16 = 7007;
const FILE_PORT: u16 = 8006;

/// The address in socat's `$SOCAT_PEERADDR` after `tag` (written out in full, in brackets).
fn peer6(out: &str, tag: &str) -> std::net::Ipv6Addr {
    let addr = out
        .trim()
        .strip_prefix(tag)
        .and_then(|s| s.strip_prefix('['))
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("no {tag}[...] in {out:?}"));
    addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"))
}

fn podwire(topo: &PodTopology, dir: &util::TempDir, extra: &[&str]) -> Podwire {
    rig::podwire_in(topo, dir, Some("198.19.6.0/24"), extra).unwrap()
}

/// A guest on `pw`, link up but no DHCPv4 lease; `nic_props` for its virtio-net device (e.g.
/// `csum=off`).
fn boot(pw: &Podwire, name: &str, nic_props: &[&str], dir: &util::TempDir) -> Qemu {
    let spec = GuestSpec {
        nic_props,
        lease: false,
        ..GuestSpec::new(name)
    };
    rig::boot_on(pw.socket(), &spec, dir.path())
        .unwrap_or_else(|e| panic!("{e:#}"))
        .0
}

/// dhcpcd in IPv6-only mode: router solicitation, then DHCPv6 as the RA's M flag asks; the
/// guest must end up with `expect`.
fn configure_ipv6(vm: &mut Qemu, expect: &str) -> String {
    let c = vm.console();
    let out = c.run("dhcpcd -6 -1 -w -t 40 eth0 2>&1", T).unwrap();
    assert_eq!(out.code, 0, "dhcpcd -6: {}", out.output);
    let addrs = c.run_ok("ip -6 addr show dev eth0", T).unwrap();
    assert!(addrs.contains(&format!("inet6 {expect}/")), "{addrs}");
    assert!(
        !addrs.contains("dadfailed"),
        "DAD never sees a conflict: {addrs}"
    );
    let routes = c.run_ok("ip -6 route show", T).unwrap();
    assert!(
        routes.contains(&format!("default via {ROUTER_LL} dev eth0")),
        "{routes}"
    );
    out.output
}

fn far_udp_echo6(far: &Netns) -> Proc {
    let p = far
        .spawn(
            "udp-echo6",
            &[
                "socat",
                "-T",
                "30",
                &format!("UDP6-RECVFROM:{UDP_ECHO6},bind=[{FAR_HOST6}],reuseaddr,fork"),
                "PIPE",
            ],
        )
        .unwrap();
    far.wait_listening(Proto::Udp, None, UDP_ECHO6, T).unwrap();
    p
}

fn far_iperf3_6(far: &Netns, port: u16) -> Proc {
    let p = far
        .spawn(
            "iperf3-6",
            &[
                "iperf3",
                "-s",
                "-B",
                &FAR_HOST6.to_string(),
                "-p",
                &port.to_string(),
            ],
        )
        .unwrap();
    far.wait_listening(Proto::Tcp, None, port, T).unwrap();
    p
}

/// ping, UDP echo and iperf3 both ways over IPv6 from the guest to the far host.
fn ping_udp_iperf6(vm: &mut Qemu) {
    let c = vm.console();
    let ping = c
        .run_ok(&format!("ping -6 -c 3 -W 5 {FAR_HOST6}"), T)
        .unwrap();
    assert!(ping.contains("3 packets received"), "{ping}");
    let ping_gw = c
        .run_ok(&format!("ping -6 -c 1 -W 5 {ROUTER_LL}%eth0"), T)
        .unwrap();
    assert!(ping_gw.contains("1 packets received"), "{ping_gw}");
    let payload = "podwire-udp6-".repeat(80);
    let echo = c
        .run_ok(
            &format!("echo {payload} | socat -t 3 -T 5 - UDP6:[{FAR_HOST6}]:{UDP_ECHO6}"),
            T,
        )
        .unwrap();
    assert_eq!(echo.trim(), payload);
    for reverse in ["", "-R"] {
        let out = c
            .run_ok(
                &format!("iperf3 -6 -c {FAR_HOST6} -p 5206 -t 3 {reverse} -f m 2>&1"),
                T,
            )
            .unwrap();
        let line = out
            .lines()
            .find(|l| l.contains("receiver"))
            .unwrap_or_else(|| panic!("no receiver line: {out}"));
        eprintln!("iperf3 over IPv6 {reverse}: {line}");
        assert!(!line.contains(" 0.00 Bytes"), "{line}");
    }
}

#[test]
fn dual_stack_guest_gets_ipv6_by_ra_and_dhcpv6_and_uses_it() {
    let topo = PodTopology::create().unwrap();
    let dir = util::TempDir::new("e2e-ipv6").unwrap();
    let _echo = far_udp_echo6(&topo.far);
    let _iperf = far_iperf3_6(&topo.far, 5206);
    // A 4 MiB file from the far host over IPv6, and a sink for the upload.
    let file = dir.join("served6.bin");
    let want = far::random_file(&file, 4).unwrap();
    let far6 = std::net::IpAddr::V6(FAR_HOST6);
    let _files = far::start_file_server(&topo.far, far6, FILE_PORT, &file).unwrap();
    let upload = dir.join("uploaded6.bin");
    let _sink = far::start_file_sink(&topo.far, far6, FILE_PORT + 1, &upload).unwrap();
    // An IPv6 resolver in the pod's resolv.conf is offered by DHCPv6 and RDNSS.
    topo.pod
        .write_etc(
            "resolv.conf",
            &format!("nameserver {FAR_HOST}\nnameserver {FAR_HOST6}\nsearch podwire.test\n"),
        )
        .unwrap();
    let mut pw = podwire(&topo, &dir, &["-t", "8086:80", "-u", "5356:53"]);
    let mut vm = boot(&pw, "e2e-ipv6", &[], &dir);
    // IPv4 still works alongside.
    let lease = guest::udhcpc(vm.console(), "eth0", 10, T).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(lease.ip(), Some("198.19.6.2"), "{lease:?}");
    let dhcpcd = configure_ipv6(&mut vm, GUEST6);
    eprintln!("dhcpcd: {dhcpcd}");
    let c = vm.console();
    // The RA's MTU and the DHCPv6 DNS server reached the guest.
    let mtu = c.run_ok("cat /proc/sys/net/ipv6/conf/eth0/mtu", T).unwrap();
    assert_eq!(mtu.trim(), "1500");
    let resolv = c.run_ok("cat /etc/resolv.conf", T).unwrap();
    assert!(
        resolv.contains(&FAR_HOST6.to_string()),
        "DHCPv6 DNS: {resolv}"
    );

    ping_udp_iperf6(&mut vm);
    let c = vm.console();

    // Checked transfers over IPv6, both directions.
    let got = guest::download_md5(c, std::net::IpAddr::V6(FAR_HOST6), FILE_PORT, T).unwrap();
    assert_eq!(got, want, "download");
    let sent =
        guest::upload_random(c, std::net::IpAddr::V6(FAR_HOST6), FILE_PORT + 1, 2048, T).unwrap();
    let landed = far::md5_once_complete(&upload, 2048 * 1024, T).unwrap();
    assert_eq!(landed, sent, "upload");

    // Forwarded pod ports over IPv6: the guest sees the far host's own IPv6 address.
    c.run_ok(
        "( (socat TCP6-LISTEN:80,reuseaddr,fork SYSTEM:'echo peer=$SOCAT_PEERADDR' >/dev/null 2>&1) & )",
        T,
    )
    .unwrap();
    c.run_ok(
        "( (socat UDP6-RECVFROM:53,fork SYSTEM:'echo udp-peer=$SOCAT_PEERADDR' >/dev/null 2>&1) & )",
        T,
    )
    .unwrap();
    c.run_ok(
        "for i in $(seq 100); do netstat -ltn | grep -q ':80 ' && break; sleep 0.1; done",
        T,
    )
    .unwrap();
    let out = topo
        .far
        .exec(&[
            "socat",
            "-T",
            "30",
            "-",
            &format!("TCP6:[{POD_ADDR6}]:8086,bind=[{FAR_HOST6}]"),
        ])
        .unwrap();
    assert_eq!(peer6(&out, "peer="), FAR_HOST6, "{out}");
    let out = topo
        .far
        .sh(&format!(
            "echo q | socat -t 3 -T 10 - UDP6:[{POD_ADDR6}]:5356,bind=[{FAR_HOST6}]"
        ))
        .unwrap();
    assert_eq!(peer6(&out, "udp-peer="), FAR_HOST6, "{out}");
    // And an IPv4 client of the same port still reaches the guest over IPv4.
    let out = topo
        .far
        .exec(&[
            "socat",
            "-T",
            "30",
            "-",
            &format!("TCP4:{POD_ADDR}:8086,bind={FAR_HOST}"),
        ])
        .unwrap_or_default();
    // The guest's TCP6-LISTEN socket takes IPv4 too (bindv6only is 0): a mapped address.
    assert_eq!(
        peer6(&out, "peer=").to_ipv4_mapped(),
        Some(FAR_HOST),
        "{out}"
    );
    pw.ensure_running().unwrap();
    vm.poweroff(T).unwrap();
}

#[test]
fn ipv6_only_pod_in_pod_mode_serves_an_ipv6_only_guest_without_offloads() {
    let topo = PodTopology::create().unwrap();
    topo.pod
        .ip(&[
            "addr",
            "del",
            &format!("{POD_ADDR}/{POD_PREFIX}"),
            "dev",
            "eth0",
        ])
        .unwrap();
    let dir = util::TempDir::new("e2e-ipv6-only").unwrap();
    let _echo = far_udp_echo6(&topo.far);
    let _iperf = far_iperf3_6(&topo.far, 5206);
    // `pod` mode: the guest gets the pod's own IPv6 address (and prefix, and gateway).
    let mut pw = podwire(&topo, &dir, &["--guest-cidr6", "pod"]);
    // Without checksum offloads (and so without TSO): podwire computes and verifies every
    // IPv6 checksum itself.
    let mut vm = boot(&pw, "e2e-ipv6-only", &["csum=off", "guest_csum=off"], &dir);
    configure_ipv6(&mut vm, &POD_ADDR6.to_string());
    ping_udp_iperf6(&mut vm);
    // No IPv4 is offered: udhcpc gets no lease.
    let c = vm.console();
    let out = c
        .run("udhcpc -i eth0 -n -q -t 2 -T 1 -s /bin/true 2>&1", T)
        .unwrap();
    assert_ne!(out.code, 0, "no DHCPv4 in an IPv6-only pod: {}", out.output);
    pw.ensure_running().unwrap();
    vm.poweroff(T).unwrap();
    let _ = POD_GATEWAY6;
}

#[test]
fn ipv4_only_pod_offers_no_ipv6() {
    let topo = PodTopology::create().unwrap();
    topo.pod
        .ip(&[
            "-6",
            "addr",
            "del",
            &format!("{POD_ADDR6}/{POD_PREFIX6}"),
            "dev",
            "eth0",
        ])
        .unwrap();
    let dir = util::TempDir::new("e2e-ipv4-only").unwrap();
    let mut pw = podwire(&topo, &dir, &[]);
    let mut vm = boot(&pw, "e2e-ipv4-only", &[], &dir);
    let c = vm.console();
    let lease = guest::udhcpc(c, "eth0", 10, T).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(lease.ip(), Some("198.19.6.2"), "{lease:?}");
    let ping = c.run_ok(&format!("ping -c 2 -W 5 {FAR_HOST}"), T).unwrap();
    assert!(ping.contains("2 packets received"), "{ping}");
    // No router advertisement and no DHCPv6 answer: dhcpcd gives up, no global address.
    let out = c.run("dhcpcd -6 -1 -w -t 8 eth0 2>&1", T).unwrap();
    assert_ne!(out.code, 0, "{}", out.output);
    let addrs = c
        .run_ok("ip -6 addr show dev eth0 scope global", T)
        .unwrap();
    assert!(addrs.trim().is_empty(), "{addrs}");
    pw.ensure_running().unwrap();
    vm.poweroff(T).unwrap();
}

/// ISC dhclient (Debian's `isc-dhcp-client`, the DHCPv6 client of many distributions' older
/// releases), put into the guest: a second, independent client. Its packaged `dhclient-script`
/// needs iproute2 options busybox lacks, so a minimal script applies the address instead.
const DHCLIENT_SCRIPT: &str = r#"#!/bin/sh
case "$reason" in
  BOUND6|RENEW6|REBIND6|REBOOT6)
    ip -6 addr add "$new_ip6_address/$new_ip6_prefixlen" dev "$interface"
    echo "$new_dhcp6_name_servers" > /tmp/dhclient6-dns ;;
esac
exit 0
"#;

#[test]
fn isc_dhclient_gets_the_guests_ipv6_address_too() {
    let dhclient = std::path::Path::new("/sbin/dhclient");
    assert!(
        dhclient.exists(),
        "install isc-dhcp-client (scripts/install-deps.sh does)"
    );
    let topo = PodTopology::create().unwrap();
    topo.pod
        .write_etc(
            "resolv.conf",
            &format!("nameserver {FAR_HOST}\nnameserver {FAR_HOST6}\nsearch podwire.test\n"),
        )
        .unwrap();
    let dir = util::TempDir::new("e2e-dhclient6").unwrap();
    let script = dir.join("dhclient-script");
    std::fs::write(&script, DHCLIENT_SCRIPT).unwrap();
    let pw = podwire(&topo, &dir, &[]);
    let spec = GuestSpec {
        files: &[
            ("/sbin/dhclient", dhclient),
            ("/sbin/dhclient-podwire", &script),
        ],
        lease: false,
        ..GuestSpec::new("e2e-dhclient6")
    };
    let (mut vm, _) = rig::boot_on(pw.socket(), &spec, dir.path()).unwrap();
    let c = vm.console();
    c.run_ok("mkdir -p /var/lib/dhcp /etc/dhcp", T).unwrap();
    // Wait for the link-local address to leave DAD: dhclient -6 needs it to bind.
    c.run_ok(
        "for i in $(seq 100); do ip -6 addr show dev eth0 | grep 'inet6 fe80' | grep -qv tentative && break; sleep 0.1; done",
        T,
    )
    .unwrap();
    let out = c
        .run("dhclient -6 -1 -v -sf /sbin/dhclient-podwire eth0 2>&1", T)
        .unwrap();
    assert_eq!(out.code, 0, "dhclient -6: {}", out.output);
    assert!(out.output.contains("Reply"), "{}", out.output);
    let addrs = c.run_ok("ip -6 addr show dev eth0", T).unwrap();
    assert!(addrs.contains(&format!("inet6 {GUEST6}/")), "{addrs}");
    let leases = c.run_ok("cat /var/lib/dhcp/dhclient6.leases", T).unwrap();
    assert!(leases.contains(GUEST6), "{leases}");
    let dns = c.run_ok("cat /tmp/dhclient6-dns", T).unwrap();
    assert_eq!(dns.trim().parse(), Ok(FAR_HOST6), "option 23");
    // And the address works: a ping to the far host over IPv6 (the default route comes from
    // the kernel's own handling of podwire's router advertisements).
    // The new address is usable once its duplicate address detection is over.
    c.run_ok(
        "for i in $(seq 100); do ip -6 addr show dev eth0 | grep 'inet6 fd10' | grep -qv tentative && break; sleep 0.1; done",
        T,
    )
    .unwrap();
    let ping = c
        .run_ok(&format!("ping -6 -c 2 -W 5 {FAR_HOST6}"), T)
        .unwrap();
    assert!(ping.contains("2 packets received"), "{ping}");
    vm.poweroff(T).unwrap();
}
