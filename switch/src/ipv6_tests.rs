//! Frame-level tests of the IPv6 dataplane: UDP, TCP and forwarded ports over IPv6, v4-only and
//! v6-only guests, and what never reaches the NAT.
//!
//! Guest frames are built with smoltcp; the pod side is sockets on `::1`, reached through the
//! gateway's IPv6 address (mapped to the pod's loopback like the IPv4 gateway).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use podwire_frame::NetHandler;
use podwire_nat::ports::Forward;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

use crate::config::{Addressing6, Config, Forwarding};
use crate::podnet::UplinkAddr;
use crate::switch::Switch;
use crate::tests::{
    self, arp_request, eth, ipv4_udp, send, send_mutations, wait_readable, Captured,
};

pub(crate) const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 2);
const GW6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 1);
const TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn dual_stack() -> Config {
    let mut c = tests::config();
    c.uplink.v6 = Some(UplinkAddr {
        addr: "fd00:198:18::2".parse().unwrap(),
        prefix_len: 64,
        gateway: Some("fd00:198:18::1".parse().unwrap()),
    });
    c.addressing6 = Some(Addressing6 {
        guest: GUEST6,
        gateway: GW6,
        prefix_len: 120,
    });
    c
}

fn v6_only() -> Config {
    let mut c = dual_stack();
    c.uplink.v4 = None;
    c.addressing = None;
    c
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 40 + l4.len()];
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4.len(),
        hop_limit: 64,
    }
    .emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
    buf[40..].copy_from_slice(l4);
    eth(EthernetProtocol::Ipv6, &buf)
}

pub(crate) fn udp6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + payload.len()];
    UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut l4[..]),
        &src.0.into(),
        &dst.0.into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    ipv6(src.0, dst.0, IpProtocol::Udp, &l4)
}

fn tcp6(
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    seq: u32,
    ack: Option<u32>,
    control: TcpControl,
    payload: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: src.1,
        dst_port: dst.1,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1440),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let mut l4 = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        &src.0.into(),
        &dst.0.into(),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    ipv6(src.0, dst.0, IpProtocol::Tcp, &l4)
}

/// An IPv6 frame to the guest, checked: source and destination, next header, L4 bytes.
fn parse6(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr, IpProtocol, Vec<u8>) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Ipv6);
    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
    let repr = Ipv6Repr::parse(&ip).unwrap();
    (
        repr.src_addr,
        repr.dst_addr,
        repr.next_header,
        ip.payload().to_vec(),
    )
}

/// Polls the switch until it delivered a frame satisfying `done`.
fn poll_until(sw: &mut Switch, mut done: impl FnMut(&[Vec<u8>]) -> bool) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + TIMEOUT;
    let mut rx = Captured::default();
    while !done(&rx.frames) {
        assert!(
            Instant::now() < deadline,
            "timed out; got {} frames",
            rx.frames.len()
        );
        wait_readable(sw, deadline);
        sw.poll_host(&mut rx);
    }
    rx.frames
}

fn tcp_segment(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr, u16, u16, u32, u32, bool, bool, Vec<u8>) {
    let (src, dst, proto, l4) = parse6(frame);
    assert_eq!(proto, IpProtocol::Tcp);
    let tcp = TcpPacket::new_checked(&l4[..]).unwrap();
    assert!(
        tcp.verify_checksum(&src.into(), &dst.into()),
        "TCP checksum over IPv6"
    );
    (
        src,
        dst,
        tcp.src_port(),
        tcp.dst_port(),
        tcp.seq_number().0 as u32,
        tcp.ack_number().0 as u32,
        tcp.syn(),
        tcp.ack(),
        tcp.payload().to_vec(),
    )
}

#[test]
fn udp_over_ipv6_to_the_gateway_reaches_pod_loopback_and_comes_back() {
    let mut sw = Switch::new(&dual_stack()).unwrap();
    let server = UdpSocket::bind("[::1]:0").unwrap();
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let port = server.local_addr().unwrap().port();
    assert!(send(&mut sw, &udp6((GUEST6, 40000), (GW6, port), b"six"))
        .frames
        .is_empty());
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"six");
    assert!(from.is_ipv6());
    server.send_to(b"xis", from).unwrap();
    let frames = poll_until(&mut sw, |f| !f.is_empty());
    let (src, dst, proto, l4) = parse6(&frames[0]);
    assert_eq!(
        (src, dst, proto),
        (GW6, GUEST6, IpProtocol::Udp),
        "::1 is seen as the gateway"
    );
    let udp = UdpPacket::new_checked(&l4[..]).unwrap();
    assert!(udp.verify_checksum(&src.into(), &dst.into()));
    assert_eq!((udp.src_port(), udp.dst_port()), (port, 40000));
    assert_eq!(udp.payload(), b"xis");
}

#[test]
fn tcp_over_ipv6_connects_and_moves_data_both_ways() {
    let mut sw = Switch::new(&dual_stack()).unwrap();
    let listener = TcpListener::bind("[::1]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (guest, gw) = ((GUEST6, 41000), (GW6, port));
    send(&mut sw, &tcp6(guest, gw, 1000, None, TcpControl::Syn, &[]));
    let frames = poll_until(&mut sw, |f| !f.is_empty());
    let (src, dst, sport, dport, iss, ack, syn, is_ack, _) = tcp_segment(&frames[0]);
    assert_eq!((src, dst, sport, dport), (GW6, GUEST6, port, 41000));
    assert!(syn && is_ack);
    assert_eq!(ack, 1001);
    let mut rx = Captured::default();
    let batch = |sw: &mut Switch, frame: Vec<u8>, rx: &mut Captured| {
        let mut copy = frame;
        let mut slices: [&mut [u8]; 1] = [&mut copy];
        let sg = podwire_frame::SgList::from_slices(&mut slices).unwrap();
        sw.guest_frame(&sg, rx);
        sw.tx_batch_done(rx);
    };
    batch(
        &mut sw,
        tcp6(guest, gw, 1001, Some(iss + 1), TcpControl::None, &[]),
        &mut rx,
    );
    let (mut pod, peer) = listener.accept().unwrap();
    assert!(peer.is_ipv6());
    batch(
        &mut sw,
        tcp6(
            guest,
            gw,
            1001,
            Some(iss + 1),
            TcpControl::Psh,
            b"from guest",
        ),
        &mut rx,
    );
    pod.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 10];
    pod.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from guest");
    pod.write_all(b"from pod").unwrap();
    let frames = poll_until(&mut sw, |f| {
        f.iter().any(|fr| !tcp_segment(fr).8.is_empty())
    });
    let data = frames
        .iter()
        .map(|f| tcp_segment(f))
        .find(|s| !s.8.is_empty())
        .unwrap();
    assert_eq!(data.8, b"from pod");
    assert_eq!(data.4, iss + 1);
    assert_eq!(data.5, 1011, "the guest's data is acknowledged");
}

#[test]
fn forwarded_ports_reach_the_guest_over_ipv6_from_the_clients_address() {
    let mut c = dual_stack();
    let tcp_port = TcpListener::bind("[::]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let udp_port = UdpSocket::bind("[::]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fwd = |host_port, guest_port| Forwarding {
        forward: Forward {
            bind: None,
            iface: None,
            host_port,
            guest_port,
        },
        explicit: true,
    };
    c.tcp_forwards = vec![fwd(tcp_port, 80)];
    c.udp_forwards = vec![fwd(udp_port, 53)];
    let mut sw = Switch::new(&c).unwrap();
    send(&mut sw, &arp_request(tests::GUEST_IP, tests::GW_IP));

    let _client = TcpStream::connect(("::1", tcp_port)).unwrap();
    let frames = poll_until(&mut sw, |f| !f.is_empty());
    let (src, dst, _, dport, _, _, syn, is_ack, _) = tcp_segment(&frames[0]);
    assert_eq!(
        (src, dst, dport),
        (GW6, GUEST6, 80),
        "an IPv6 client reaches the guest's IPv6"
    );
    assert!(syn && !is_ack);

    let client = UdpSocket::bind("[::1]:0").unwrap();
    client.send_to(b"query", ("::1", udp_port)).unwrap();
    let frames = poll_until(&mut sw, |f| !f.is_empty());
    let (src, dst, proto, l4) = parse6(&frames[0]);
    assert_eq!((src, dst, proto), (GW6, GUEST6, IpProtocol::Udp));
    let udp = UdpPacket::new_checked(&l4[..]).unwrap();
    assert_eq!(
        udp.src_port(),
        client.local_addr().unwrap().port(),
        "the client's own port"
    );
    assert_eq!((udp.dst_port(), udp.payload()), (53, &b"query"[..]));

    // IPv4 clients of the same ports still reach the guest over IPv4.
    let _client4 = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    let frames = poll_until(&mut sw, |f| !f.is_empty());
    let eth = EthernetFrame::new_checked(&frames[0][..]).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
}

#[test]
fn a_guest_gets_only_the_families_the_pod_has() {
    // v6-only: IPv4 and ARP are dropped, IPv6 works.
    let mut sw = Switch::new(&v6_only()).unwrap();
    assert!(send(&mut sw, &arp_request(tests::GUEST_IP, tests::GW_IP))
        .frames
        .is_empty());
    let v4 = ipv4_udp((tests::GUEST_IP, 40000), (tests::GW_IP, 9), b"x");
    assert!(send(&mut sw, &v4).frames.is_empty());
    assert_eq!(sw.counters.drop_family_off.get(), 2);
    let server = UdpSocket::bind("[::1]:0").unwrap();
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let port = server.local_addr().unwrap().port();
    send(&mut sw, &udp6((GUEST6, 40001), (GW6, port), b"v6 only"));
    let mut buf = [0u8; 16];
    assert_eq!(server.recv(&mut buf).unwrap(), 7);
    assert!(sw.status().contains("ip=none"), "{}", sw.status());

    // v4-only (the default test config): IPv6 is dropped and counted.
    let mut sw = Switch::new(&tests::config()).unwrap();
    send(&mut sw, &udp6((GUEST6, 40000), (GW6, port), b"x"));
    assert_eq!(sw.counters.drop_family_off.get(), 1);
    assert!(sw.status().contains("ip6=none"), "{}", sw.status());
}

#[test]
fn ipv6_the_nat_cannot_answer_is_dropped_and_counted() {
    let mut sw = Switch::new(&dual_stack()).unwrap();
    let far: Ipv6Addr = "fd00:198:18:1::1".parse().unwrap();
    let ll: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
    // From a link-local source to the world: there is no way back.
    send(&mut sw, &udp6((ll, 40000), (far, 9), b"x"));
    assert_eq!(sw.counters.drop_ipv6_source.get(), 1);
    // To a multicast group: the link's business, never the NAT's.
    let mdns: Ipv6Addr = "ff02::fb".parse().unwrap();
    send(&mut sw, &udp6((GUEST6, 5353), (mdns, 5353), b"x"));
    assert!(
        sw.status().contains("ipv6_multicast_ignored=1"),
        "{}",
        sw.status()
    );
    // A fragment header.
    send(
        &mut sw,
        &ipv6(
            GUEST6,
            far,
            IpProtocol::Ipv6Frag,
            &[17, 0, 0, 1, 0, 0, 0, 1, 0, 0],
        ),
    );
    assert_eq!(sw.counters.drop_ipv6_extension.get(), 1);
    // A payload length beyond the frame.
    let mut bad = udp6((GUEST6, 40000), (far, 9), b"x");
    bad[14 + 4] = 0x40;
    send(&mut sw, &bad);
    assert_eq!(sw.counters.drop_bad_ipv6_header.get(), 1);
    assert_eq!(sw.nat_counters().udp_out.get(), 0);
    let _ = IpAddr::V6(far);
}

/// An ICMPv6 message from the guest with NDP's hop limit (255).
fn ndp_frame(repr: smoltcp::wire::Icmpv6Repr, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut l4 = vec![0u8; repr.buffer_len()];
    repr.emit(
        &src,
        &dst,
        &mut smoltcp::wire::Icmpv6Packet::new_unchecked(&mut l4[..]),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    let mut f = ipv6(src, dst, IpProtocol::Icmpv6, &l4);
    f[14 + 7] = 255;
    f
}

#[test]
fn router_solicitation_and_neighbor_solicitation_are_answered_through_the_switch() {
    use smoltcp::wire::{
        EthernetAddress, Icmpv6Packet, Icmpv6Repr, NdiscNeighborFlags, NdiscRepr,
        RawHardwareAddress,
    };
    let mut sw = Switch::new(&dual_stack()).unwrap();
    let ll: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
    let router_ll: Ipv6Addr = "fe80::70:77ff:fe00:1".parse().unwrap();
    let mac = RawHardwareAddress::from(EthernetAddress(tests::GUEST_MAC));
    let icmp = ndp_frame;
    let all_routers: Ipv6Addr = "ff02::2".parse().unwrap();
    let rs = icmp(
        Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit { lladdr: Some(mac) }),
        ll,
        all_routers,
    );
    let out = send(&mut sw, &rs);
    assert_eq!(out.frames.len(), 1, "an RA");
    let (src, dst, proto, l4) = parse6(&out.frames[0]);
    assert_eq!((src, dst, proto), (router_ll, ll, IpProtocol::Icmpv6));
    assert_eq!(l4[0], 134, "router advertisement");
    assert_eq!(l4[5] & 0xc0, 0xc0, "managed and other-config flags");

    // NS for the gateway's global address → NA with the gateway MAC.
    let snm: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
    let ns = icmp(
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: GW6,
            lladdr: Some(mac),
        }),
        GUEST6,
        snm,
    );
    let out = send(&mut sw, &ns);
    assert_eq!(out.frames.len(), 1, "an NA");
    let (src, dst, _, l4) = parse6(&out.frames[0]);
    assert_eq!((src, dst), (GW6, GUEST6));
    let na = Icmpv6Packet::new_checked(&l4[..]).unwrap();
    match Icmpv6Repr::parse(&src, &dst, &na, &Default::default()).unwrap() {
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        }) => {
            assert_eq!(target_addr, GW6);
            assert!(flags.contains(NdiscNeighborFlags::SOLICITED));
            assert_eq!(
                lladdr,
                Some(RawHardwareAddress::from(EthernetAddress(
                    crate::config::GATEWAY_MAC
                )))
            );
        }
        other => panic!("{other:?}"),
    }
    // Duplicate address detection for the guest's address: never answered.
    let dad = icmp(
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: GUEST6,
            lladdr: None,
        }),
        Ipv6Addr::UNSPECIFIED,
        "ff02::1:ff00:2".parse().unwrap(),
    );
    assert!(send(&mut sw, &dad).frames.is_empty());

    // The periodic advertisement goes out once the guest has spoken.
    let mut rx = Captured::default();
    sw.poll_host(&mut rx);
    assert!(
        rx.frames.iter().any(|f| parse6(f).3.first() == Some(&134)),
        "an unsolicited RA"
    );
}

#[test]
fn mangled_ipv6_frames_never_panic() {
    let mut sw = Switch::new(&dual_stack()).unwrap();
    let far: Ipv6Addr = "fd00:198:18:1::1".parse().unwrap();
    let templates = [
        udp6(
            (GUEST6, 546),
            ("ff02::1:2".parse().unwrap(), 547),
            &[1u8; 60],
        ),
        udp6((GUEST6, 5000), (GW6, 9), b"payload"),
        tcp6((GUEST6, 40000), (far, 80), 1, None, TcpControl::Syn, &[]),
        ipv6(
            GUEST6,
            far,
            IpProtocol::Icmpv6,
            &[128, 0, 0, 0, 0, 1, 0, 1, 9, 9],
        ),
        ipv6(
            GUEST6,
            "ff02::1:ff00:1".parse().unwrap(),
            IpProtocol::Icmpv6,
            &[135; 32],
        ),
        ipv6(
            GUEST6,
            far,
            IpProtocol::HopByHop,
            &[58, 0, 5, 2, 0, 0, 1, 0, 143, 0],
        ),
    ];
    send_mutations(&mut sw, &templates, 5000, 0x2545_f491_4f6c_dd1d);
    // Still serving afterwards: the link control plane answers a neighbour solicitation...
    use smoltcp::wire::{EthernetAddress, Icmpv6Repr, NdiscRepr};
    let ns = ndp_frame(
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: GW6,
            lladdr: Some(EthernetAddress(tests::GUEST_MAC).into()),
        }),
        GUEST6,
        "ff02::1:ff00:1".parse().unwrap(),
    );
    let out = send(&mut sw, &ns);
    assert_eq!(out.frames.len(), 1, "an NA");
    assert_eq!(parse6(&out.frames[0]).3.first(), Some(&136));
    // ...and the NAT forwards.
    let server = UdpSocket::bind("[::1]:0").unwrap();
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let port = server.local_addr().unwrap().port();
    send(&mut sw, &udp6((GUEST6, 40002), (GW6, port), b"alive"));
    let mut buf = [0u8; 16];
    assert_eq!(server.recv(&mut buf).unwrap(), 5);
}
