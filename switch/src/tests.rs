//! Frame-level tests of the switch: what the guest sends in, what comes back out.
//!
//! Frames are built with smoltcp (an independent implementation of the wire formats) and fed
//! through [`NetHandler::guest_frame`]; replies are captured by a test [`RxSink`].

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use podwire_frame::{NetHandler, PartialCsum, RxError, RxSink, SgList, TxOffload};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket,
    UdpRepr,
};

use crate::config::{Addressing, Config, GATEWAY_MAC};
use crate::podnet::{Resolver, Uplink, UplinkAddr};
use crate::switch::{dns_plan, map_rules, Switch};
use podwire_nat::MapRule;

pub(crate) const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
pub(crate) const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub(crate) const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);

pub(crate) fn config() -> Config {
    Config {
        socket: PathBuf::from("/nonexistent"),
        uplink: Uplink {
            name: "lo".into(),
            v4: Some(UplinkAddr {
                addr: Ipv4Addr::LOCALHOST,
                prefix_len: 8,
                gateway: None,
            }),
            v6: None,
            mtu: 1500,
        },
        addressing: Some(Addressing {
            guest: GUEST_IP,
            gateway: GW_IP,
            prefix_len: 24,
        }),
        addressing6: None,
        guest_mac: None,
        hostname: Some("vm1".into()),
        mtu: 1500,
        pid_file: None,
        runas: None,
        dhcp_extra: Default::default(),
        map_gateway: true,
        allow_guest_sources: false,
        resolver: Resolver {
            nameservers: vec![Ipv4Addr::new(198, 18, 1, 1).into()],
            search: vec!["podwire.test".into()],
            domain: None,
        },
        max_flows: 16,
        udp_idle: Duration::from_secs(180),
        lease_secs: 3600,
        tcp_forwards: Vec::new(),
        udp_forwards: Vec::new(),
        sandbox: true,
        frontend_uid: None,
        socket_group: false,
        repair_path: None,
    }
}

/// Collects the frames the switch delivers to the guest.
#[derive(Default)]
pub(crate) struct Captured {
    pub(crate) frames: Vec<Vec<u8>>,
    /// Behave like a guest that negotiated GUEST_CSUM.
    guest_csum: bool,
    /// The partial-checksum location given with each frame pushed that way.
    partial: Vec<Option<PartialCsum>>,
}

impl RxSink for Captured {
    fn push(
        &mut self,
        max_len: usize,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        // Two segments, to exercise scatter-gather writes.
        let mut a = vec![0u8; 20];
        let mut b = vec![0u8; max_len.max(60)];
        let mut slices: [&mut [u8]; 2] = [&mut a, &mut b];
        let mut sg = SgList::from_slices(&mut slices).map_err(|_| RxError::Abandoned)?;
        let len = fill(&mut sg).ok_or(RxError::Abandoned)?;
        let mut frame = vec![0u8; len];
        sg.read(0, &mut frame);
        self.frames.push(frame);
        self.partial.push(None);
        Ok(())
    }

    fn partial_csum(&self) -> bool {
        self.guest_csum
    }

    fn push_partial(
        &mut self,
        max_len: usize,
        csum: PartialCsum,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        self.push(max_len, fill)?;
        if let Some(last) = self.partial.last_mut() {
            *last = Some(csum);
        }
        Ok(())
    }
}

pub(crate) fn send(sw: &mut Switch, frame: &[u8]) -> Captured {
    let mut copy = frame.to_vec();
    let mut slices: [&mut [u8]; 1] = [&mut copy];
    let sg = SgList::from_slices(&mut slices).unwrap();
    let mut rx = Captured::default();
    sw.guest_frame(&sg, &mut rx);
    // The end of the TX pass, as the device runs it, before the frame's memory is reused.
    sw.tx_batch_done(&mut rx);
    rx
}

pub(crate) fn eth(ethertype: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + payload.len()];
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress([0xff; 6]),
        ethertype,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    f[14..].copy_from_slice(payload);
    f
}

pub(crate) fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut p = [0u8; 28];
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: sender,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut p[..]));
    eth(EthernetProtocol::Arp, &p)
}

pub(crate) fn ipv4_udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    };
    let ip = Ipv4Repr {
        src_addr: src.0,
        dst_addr: dst.0,
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 20 + 8 + payload.len()];
    let mut pkt = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut pkt, &ChecksumCapabilities::default());
    udp.emit(
        &mut UdpPacket::new_unchecked(pkt.payload_mut()),
        &src.0.into(),
        &dst.0.into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    eth(EthernetProtocol::Ipv4, &buf)
}

fn parse_udp_reply(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16, Vec<u8>) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.src_addr(), EthernetAddress(GATEWAY_MAC));
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum(), "IPv4 header checksum");
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(
        udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()),
        "UDP checksum"
    );
    (
        ip.src_addr(),
        ip.dst_addr(),
        udp.src_port(),
        udp.dst_port(),
        udp.payload().to_vec(),
    )
}

#[test]
fn arp_for_the_gateway_and_any_other_address_is_answered_with_the_gateway_mac() {
    let mut sw = Switch::new(&config()).unwrap();
    for target in [
        GW_IP,
        Ipv4Addr::new(10, 0, 2, 77),
        Ipv4Addr::new(198, 18, 1, 1),
    ] {
        let rx = send(&mut sw, &arp_request(GUEST_IP, target));
        assert_eq!(rx.frames.len(), 1, "reply for {target}");
        let f = EthernetFrame::new_checked(&rx.frames[0][..]).unwrap();
        assert_eq!(f.dst_addr(), EthernetAddress(GUEST_MAC));
        let repr = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = repr
        else {
            panic!("not an Ethernet/IPv4 ARP reply");
        };
        assert_eq!(operation, ArpOperation::Reply);
        assert_eq!(source_hardware_addr, EthernetAddress(GATEWAY_MAC));
        assert_eq!(source_protocol_addr, target);
        assert_eq!(target_protocol_addr, GUEST_IP);
    }
    assert_eq!(sw.link4_counters().arp_replies.get(), 3);
}

#[test]
fn arp_probes_announcements_and_the_guests_own_address_are_never_answered() {
    let mut sw = Switch::new(&config()).unwrap();
    // Duplicate address detection: sender 0.0.0.0, target the address being probed.
    assert!(send(&mut sw, &arp_request(Ipv4Addr::UNSPECIFIED, GUEST_IP))
        .frames
        .is_empty());
    assert!(send(&mut sw, &arp_request(Ipv4Addr::UNSPECIFIED, GW_IP))
        .frames
        .is_empty());
    // Gratuitous announcement.
    assert!(send(&mut sw, &arp_request(GUEST_IP, GUEST_IP))
        .frames
        .is_empty());
    assert_eq!(sw.link4_counters().arp_ignored.get(), 3);
}

#[test]
fn dhcp_discover_gets_an_offer_from_the_gateway() {
    let mut sw = Switch::new(&config()).unwrap();
    assert_offer(&send(&mut sw, &dhcp_discover()));
}

/// A broadcast DHCPDISCOVER from the guest, built with smoltcp.
fn dhcp_discover() -> Vec<u8> {
    let repr = DhcpRepr {
        message_type: DhcpMessageType::Discover,
        transaction_id: 0x1234_5678,
        secs: 0,
        client_hardware_address: EthernetAddress(GUEST_MAC),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: true,
        requested_ip: None,
        client_identifier: Some(EthernetAddress(GUEST_MAC)),
        server_identifier: None,
        parameter_request_list: Some(&[1, 3, 6, 15, 26, 119]),
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut dhcp = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut dhcp[..]))
        .unwrap();
    ipv4_udp(
        (Ipv4Addr::UNSPECIFIED, 68),
        (Ipv4Addr::BROADCAST, 67),
        &dhcp,
    )
}

/// `rx` holds exactly one frame: a DHCPOFFER of the guest address from the gateway.
fn assert_offer(rx: &Captured) {
    assert_eq!(rx.frames.len(), 1);
    let (src, dst, sport, dport, payload) = parse_udp_reply(&rx.frames[0]);
    assert_eq!(
        (src, dst, sport, dport),
        (GW_IP, Ipv4Addr::BROADCAST, 67, 68)
    );
    let packet = DhcpPacket::new_checked(&payload[..]).unwrap();
    let offer = DhcpRepr::parse(&packet).unwrap();
    assert_eq!(offer.message_type, DhcpMessageType::Offer);
    assert_eq!(offer.your_ip, GUEST_IP);
    assert_eq!(offer.router, Some(GW_IP));
    assert_eq!(offer.transaction_id, 0x1234_5678);
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let mut sw = Switch::new(&config()).unwrap();
    let good = ipv4_udp((GUEST_IP, 5000), (Ipv4Addr::new(198, 18, 1, 1), 9), b"x");

    assert!(send(&mut sw, &good[..10]).frames.is_empty());
    assert_eq!(sw.counters.drop_short.get(), 1, "shorter than Ethernet");

    let mut bad_csum = good.clone();
    bad_csum[14 + 10] ^= 0xff;
    send(&mut sw, &bad_csum);
    assert_eq!(sw.counters.drop_bad_ipv4_checksum.get(), 1);

    let mut too_long = good.clone();
    too_long[14 + 2..14 + 4].copy_from_slice(&1400u16.to_be_bytes());
    send(&mut sw, &too_long);
    assert_eq!(
        sw.counters.drop_bad_ipv4_header.get(),
        1,
        "total length past frame"
    );

    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    send(&mut sw, &bad_ihl);
    assert_eq!(sw.counters.drop_bad_ipv4_header.get(), 2, "IHL < 5");

    let mut fragment = good.clone();
    fragment[14 + 6] |= 0x20; // more fragments
    let mut p = Ipv4Packet::new_unchecked(&mut fragment[14..]);
    p.fill_checksum();
    send(&mut sw, &fragment);
    assert_eq!(sw.counters.drop_fragment.get(), 1);

    let mut bad_udp = good.clone();
    let last = bad_udp.len() - 1;
    bad_udp[last] ^= 0x55;
    send(&mut sw, &bad_udp);
    assert_eq!(sw.nat_counters().drop_bad_checksum.get(), 1, "UDP checksum");

    let mut truncated_udp = good.clone();
    truncated_udp[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&200u16.to_be_bytes());
    send(&mut sw, &truncated_udp);
    assert_eq!(
        sw.nat_counters().drop_truncated.get(),
        1,
        "UDP length past IP"
    );

    send(&mut sw, &eth(EthernetProtocol::Unknown(0x88b5), &[0u8; 46]));
    assert_eq!(sw.counters.drop_unknown_ethertype.get(), 1);

    let multicast = ipv4_udp(
        (GUEST_IP, 5353),
        (Ipv4Addr::new(224, 0, 0, 251), 5353),
        b"m",
    );
    send(&mut sw, &multicast);
    let subnet_bcast = ipv4_udp((GUEST_IP, 137), (Ipv4Addr::new(10, 0, 2, 255), 137), b"b");
    send(&mut sw, &subnet_bcast);
    assert_eq!(sw.counters.drop_multicast_broadcast.get(), 2);

    // A truncated ARP.
    send(&mut sw, &eth(EthernetProtocol::Arp, &[0u8; 10]));
    assert_eq!(sw.counters.drop_short.get(), 2);
    assert_eq!(
        sw.nat_counters().flows_opened.get(),
        0,
        "nothing reached a socket"
    );
}

#[test]
fn garbage_frames_never_panic() {
    let mut sw = Switch::new(&config()).unwrap();
    let templates = [
        arp_request(GUEST_IP, GW_IP),
        ipv4_udp((GUEST_IP, 68), (Ipv4Addr::BROADCAST, 67), &[0u8; 300]),
        ipv4_udp((GUEST_IP, 5000), (GW_IP, 9), b"payload"),
    ];
    send_mutations(&mut sw, &templates, 3000, 0x9e37_79b9_7f4a_7c15);
    // Still serving afterwards: ARP for the gateway and DHCP get their answers.
    let rx = send(&mut sw, &arp_request(GUEST_IP, GW_IP));
    assert_eq!(rx.frames.len(), 1, "an ARP reply");
    let f = EthernetFrame::new_checked(&rx.frames[0][..]).unwrap();
    assert_eq!(f.ethertype(), EthernetProtocol::Arp);
    assert_offer(&send(&mut sw, &dhcp_discover()));
}

/// Sends `count` frames made from `templates`, each truncated at a random length and with up
/// to seven random bytes overwritten (a xorshift generator from `seed`: reproducible), after one
/// unmangled first frame.
pub(crate) fn send_mutations(sw: &mut Switch, templates: &[Vec<u8>], count: usize, seed: u64) {
    // The guest speaks first, unmangled: its MAC is the one learned (anti-spoofing then drops
    // the mangled source MACs, as it would a spoofer's).
    send(sw, &templates[0]);
    let mut seed = seed;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..count {
        let mut f = templates[i % templates.len()].clone();
        let len = (next() as usize) % (f.len() + 1);
        f.truncate(len.max(1));
        for _ in 0..(next() % 8) {
            let at = (next() as usize) % f.len();
            f[at] = next() as u8;
        }
        send(sw, &f);
    }
}

/// Waits until the switch's host fd is readable, with a deadline.
pub(crate) fn wait_readable(sw: &Switch, deadline: Instant) {
    let fd = sw.host_fd();
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
}

#[test]
fn udp_to_the_gateway_reaches_pod_loopback_and_the_reply_comes_back() {
    let mut sw = Switch::new(&config()).unwrap();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    // Learn the guest's MAC first, as a real guest's ARP would.
    send(&mut sw, &arp_request(GUEST_IP, GW_IP));

    let frame = ipv4_udp((GUEST_IP, 40000), (GW_IP, port), b"ping-over-udp");
    assert!(send(&mut sw, &frame).frames.is_empty());
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping-over-udp");
    server.send_to(b"pong", from).unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rx = Captured::default();
    while rx.frames.is_empty() && Instant::now() < deadline {
        wait_readable(&sw, deadline);
        sw.poll_host(&mut rx);
    }
    assert_eq!(rx.frames.len(), 1, "reply delivered");
    let (src, dst, sport, dport, payload) = parse_udp_reply(&rx.frames[0]);
    assert_eq!(src, GW_IP, "loopback is seen as the gateway");
    assert_eq!(dst, GUEST_IP);
    assert_eq!((sport, dport), (port, 40000));
    assert_eq!(payload, b"pong");
    assert_eq!(
        EthernetFrame::new_checked(&rx.frames[0][..])
            .unwrap()
            .dst_addr(),
        EthernetAddress(GUEST_MAC)
    );
    let _ = server.as_raw_fd();
}

#[test]
fn gateway_maps_to_pod_loopback_unless_disabled() {
    let mut c = config();
    assert_eq!(
        map_rules(&c),
        vec![MapRule {
            guest: GW_IP.into(),
            port: None,
            host: Ipv4Addr::LOCALHOST.into()
        }]
    );
    c.map_gateway = false;
    assert!(map_rules(&c).is_empty(), "--no-map-gw");
}

#[test]
fn loopback_or_gateway_resolvers_are_offered_as_the_gateway() {
    let mut c = config();
    let plan = dns_plan(&c);
    assert_eq!(
        plan.v4,
        vec![Ipv4Addr::new(198, 18, 1, 1)],
        "reachable: as is"
    );
    assert!(plan.rules.is_empty());

    c.resolver.nameservers = vec![
        Ipv4Addr::new(127, 0, 0, 53).into(),
        Ipv4Addr::new(198, 18, 1, 1).into(),
    ];
    let dns_rule = MapRule {
        guest: GW_IP.into(),
        port: Some(53),
        host: Ipv4Addr::new(127, 0, 0, 53).into(),
    };
    let plan = dns_plan(&c);
    assert_eq!(plan.v4, vec![GW_IP, Ipv4Addr::new(198, 18, 1, 1)]);
    assert_eq!(plan.rules, vec![dns_rule]);
    c.map_gateway = false;
    assert_eq!(
        map_rules(&c),
        vec![dns_rule],
        "DNS works even with --no-map-gw"
    );
}

#[test]
fn partial_checksums_from_a_csum_guest_are_accepted_only_when_flagged() {
    let mut sw = Switch::new(&config()).unwrap();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    // A CSUM guest leaves only the pseudo-header sum in the field: wrong as a full checksum.
    let mut frame = ipv4_udp((GUEST_IP, 40001), (GW_IP, port), b"partial");
    let csum_at = 14 + 20 + 6;
    frame[csum_at] ^= 0x5a;
    send(&mut sw, &frame);
    assert_eq!(
        sw.nat_counters().drop_bad_checksum.get(),
        1,
        "unflagged: verified, dropped"
    );
    let mut copy = frame.clone();
    let mut slices: [&mut [u8]; 1] = [&mut copy];
    let sg = SgList::from_slices(&mut slices).unwrap();
    let tx = TxOffload {
        partial_csum: true,
        ..TxOffload::default()
    };
    let mut rx = Captured::default();
    sw.guest_frame_with(&sg, tx, &mut rx);
    sw.tx_batch_done(&mut rx);
    assert_eq!(
        sw.nat_counters().drop_bad_checksum.get(),
        1,
        "flagged: not verified"
    );
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"partial");
}

#[test]
fn frames_to_a_guest_csum_guest_carry_only_the_pseudo_header_sum() {
    let mut sw = Switch::new(&config()).unwrap();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    send(&mut sw, &arp_request(GUEST_IP, GW_IP));
    send(&mut sw, &ipv4_udp((GUEST_IP, 40002), (GW_IP, port), b"hi"));
    let mut buf = [0u8; 16];
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (_, from) = server.recv_from(&mut buf).unwrap();
    server.send_to(b"reply-payload", from).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rx = Captured {
        guest_csum: true,
        ..Captured::default()
    };
    while rx.frames.is_empty() && Instant::now() < deadline {
        wait_readable(&sw, deadline);
        sw.poll_host(&mut rx);
    }
    assert_eq!(rx.frames.len(), 1);
    assert_eq!(
        rx.partial[0],
        Some(PartialCsum {
            start: 34,
            offset: 6
        }),
        "pushed as a partial-checksum frame"
    );
    let f = &rx.frames[0];
    let field = u16::from_be_bytes([f[34 + 6], f[34 + 7]]);
    let udp_len = 8 + b"reply-payload".len();
    let pseudo = podwire_nat::wire::pseudo_header(GW_IP.into(), GUEST_IP.into(), 17, udp_len);
    assert_eq!(field, pseudo.fold(), "the pseudo-header sum, not inverted");
    // What the guest's stack computes from it is the real checksum.
    let mut sum = podwire_frame::Checksum::new();
    sum.add(&f[34..]);
    let full = sum.finish();
    let mut fixed = f.clone();
    fixed[34 + 6..34 + 8].copy_from_slice(&full.to_be_bytes());
    parse_udp_reply(&fixed);
}

/// A guest RX ring that lends many frames per call, like the device's `push_batch`.
#[derive(Default)]
struct BatchSink {
    frames: Vec<Vec<u8>>,
    /// How many frames each `push_batch` filled (0: none came).
    batches: Vec<usize>,
    /// How many frames each `push_batch` was asked to lend.
    asked: Vec<usize>,
}

impl RxSink for BatchSink {
    fn push(
        &mut self,
        max_len: usize,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        let mut buf = vec![0u8; max_len.max(60)];
        let mut slices: [&mut [u8]; 1] = [&mut buf];
        let mut sg = SgList::from_slices(&mut slices).map_err(|_| RxError::Abandoned)?;
        let len = fill(&mut sg).ok_or(RxError::Abandoned)?;
        buf.truncate(len);
        self.frames.push(buf);
        Ok(())
    }

    fn push_batch(
        &mut self,
        count: usize,
        max_len: usize,
        _csum: Option<PartialCsum>,
        fill: &mut dyn FnMut(&mut [SgList<'_>], &mut [usize]) -> usize,
    ) -> Result<usize, RxError> {
        self.asked.push(count);
        let n = count.min(podwire_frame::RX_BATCH);
        let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; max_len]).collect();
        let mut lens = vec![0usize; n];
        let used = {
            let mut lists: Vec<SgList<'_>> = bufs
                .iter_mut()
                .map(|b| {
                    let mut sg = SgList::new();
                    // SAFETY: `b` outlives the SgList, which is dropped before `bufs` is read.
                    unsafe { sg.push_raw(b.as_mut_ptr(), b.len()) }.unwrap();
                    sg
                })
                .collect();
            fill(&mut lists, &mut lens)
        };
        self.batches.push(used);
        if used == 0 {
            return Err(RxError::Abandoned);
        }
        for (mut b, &len) in bufs.into_iter().zip(&lens).take(used) {
            b.truncate(len);
            self.frames.push(b);
        }
        Ok(used)
    }
}

#[test]
fn datagrams_from_the_pod_arrive_many_per_receive_call() {
    let mut sw = Switch::new(&config()).unwrap();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    send(&mut sw, &arp_request(GUEST_IP, GW_IP));
    send(
        &mut sw,
        &ipv4_udp((GUEST_IP, 40100), (GW_IP, port), b"hello"),
    );
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let (_, guest) = server.recv_from(&mut buf).unwrap();
    for i in 0..5u8 {
        server.send_to(&[b'a' + i; 3], guest).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rx = BatchSink::default();
    while rx.frames.len() < 5 && Instant::now() < deadline {
        wait_readable(&sw, deadline);
        sw.poll_host(&mut rx);
    }
    assert_eq!(rx.frames.len(), 5);
    assert_eq!(
        rx.batches[0], 5,
        "all five in one recvmmsg: {:?}",
        rx.batches
    );
    for (i, f) in rx.frames.iter().enumerate() {
        let (src, dst, sport, dport, payload) = parse_udp_reply(f);
        assert_eq!((src, dst, sport, dport), (GW_IP, GUEST_IP, port, 40100));
        assert_eq!(payload, vec![b'a' + i as u8; 3], "in order");
    }
}

/// Request/response over one UDP flow: after the first answer each receive lends the guest's
/// RX ring two buffers, not a whole batch (each lent buffer is a chain mapped and a header
/// written, and the unused ones go back); a burst then grows the batch again.
#[test]
fn a_request_response_flow_lends_few_rx_buffers_per_receive() {
    let mut sw = Switch::new(&config()).unwrap();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    send(&mut sw, &arp_request(GUEST_IP, GW_IP));
    let mut rx = BatchSink::default();
    let mut buf = [0u8; 16];
    for i in 0..4u8 {
        send(&mut sw, &ipv4_udp((GUEST_IP, 40200), (GW_IP, port), &[i]));
        let (_, guest) = server.recv_from(&mut buf).unwrap();
        server.send_to(&[i], guest).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while rx.frames.len() <= usize::from(i) && Instant::now() < deadline {
            wait_readable(&sw, deadline);
            sw.poll_host(&mut rx);
        }
    }
    assert_eq!(rx.frames.len(), 4);
    let full = podwire_frame::RX_BATCH;
    assert_eq!(rx.asked, vec![full, 2, 2, 2], "buffers asked per receive");
    // A burst: the batch grows again. Each ask follows the receive before it: doubled (at
    // most a whole batch) after a full one, one more than came (at least 2) after a short one.
    let (_, guest) = {
        send(&mut sw, &ipv4_udp((GUEST_IP, 40200), (GW_IP, port), b"x"));
        server.recv_from(&mut buf).unwrap()
    };
    for i in 0..11u8 {
        server.send_to(&[i], guest).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.frames.len() < 15 && Instant::now() < deadline {
        wait_readable(&sw, deadline);
        sw.poll_host(&mut rx);
    }
    assert_eq!(rx.frames.len(), 15);
    for i in 4..rx.asked.len() - 1 {
        let (asked, got) = (rx.asked[i], rx.batches[i]);
        let next = if got == 0 {
            asked // nothing came: nothing learned
        } else if got == asked {
            (2 * asked).min(full)
        } else {
            (got + 1).max(2)
        };
        assert_eq!(
            rx.asked[i + 1],
            next,
            "asked {:?}, got {:?}",
            rx.asked,
            rx.batches
        );
    }
    assert!(
        rx.asked[4..].iter().any(|&a| a > 2),
        "the burst never grew the batch: asked {:?}, got {:?}",
        rx.asked,
        rx.batches
    );
}

/// A DHCPv4 REQUEST for the guest address, from the guest's MAC.
fn dhcp_request_frame() -> Vec<u8> {
    let repr = DhcpRepr {
        message_type: DhcpMessageType::Request,
        transaction_id: 0x4242,
        secs: 0,
        client_hardware_address: EthernetAddress(GUEST_MAC),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: true,
        requested_ip: Some(GUEST_IP),
        client_identifier: Some(EthernetAddress(GUEST_MAC)),
        server_identifier: Some(GW_IP),
        parameter_request_list: Some(&[1, 3, 6]),
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut dhcp = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut dhcp[..]))
        .unwrap();
    ipv4_udp(
        (Ipv4Addr::UNSPECIFIED, 68),
        (Ipv4Addr::BROADCAST, 67),
        &dhcp,
    )
}

#[test]
fn migrated_state_carries_the_guest_mac_address_and_lease_and_garbage_changes_nothing() {
    use podwire_frame::NetHandler;
    let mut source = Switch::new(&config()).unwrap();
    assert_eq!(
        send(&mut source, &dhcp_request_frame()).frames.len(),
        1,
        "ACK"
    );
    let before = source.to_state();
    let lease = before
        .v4
        .as_ref()
        .unwrap()
        .lease
        .clone()
        .expect("lease bound");
    assert_eq!((lease.mac, lease.ip), (GUEST_MAC, GUEST_IP));
    assert_eq!(before.guest_mac, Some(GUEST_MAC));

    let mut dest = Switch::new(&config()).unwrap();
    let fresh = dest.to_state();
    assert!(fresh.v4.as_ref().unwrap().lease.is_none());
    for bad in [&b"garbage"[..], &source.save_state().unwrap()[..20]] {
        let e = dest.load_state(bad).unwrap_err().to_string();
        assert!(e.contains("bad magic") || e.contains("truncated"), "{e}");
        assert_eq!(dest.to_state(), fresh, "a refused state changed the switch");
    }
    dest.load_state(&source.save_state().unwrap()).unwrap();
    let after = dest.to_state();
    assert_eq!(after.guest_mac, Some(GUEST_MAC));
    assert_eq!(after.v4.as_ref().unwrap().guest_ip, GUEST_IP);
    let moved = after.v4.unwrap().lease.expect("lease moved");
    assert_eq!(
        (moved.mac, moved.ip, moved.lease_secs, &moved.client_id),
        (lease.mac, lease.ip, lease.lease_secs, &lease.client_id)
    );

    // A destination without IPv4 refuses a guest that had it.
    let mut v6_only = config();
    v6_only.addressing = None;
    let mut other = Switch::new(&v6_only).unwrap();
    let e = other.load_state(&source.save_state().unwrap()).unwrap_err();
    assert!(e.to_string().contains("IPv4"), "{e}");
}

#[test]
fn counter_names_are_unique_across_the_status_line() {
    let sw = Switch::new(&config()).unwrap();
    let mut names: Vec<String> = sw
        .counter_sets()
        .iter()
        .flat_map(|(prefix, set)| {
            set.descs()
                .iter()
                .map(move |d| format!("{prefix}{}", d.name))
        })
        .collect();
    let all = names.len();
    assert!(all > 50, "{all} counters");
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all, "a name appears twice");
}

/// The value of DHCP option `code` in a BOOTP payload, walking the options after the cookie.
fn dhcp_option(payload: &[u8], code: u8) -> Option<Vec<u8>> {
    let mut i = 240;
    while i < payload.len() {
        match payload[i] {
            0 => i += 1,
            255 => return None,
            c => {
                let len = usize::from(*payload.get(i + 1)?);
                let value = payload.get(i + 2..i + 2 + len)?;
                if c == code {
                    return Some(value.to_vec());
                }
                i += 2 + len;
            }
        }
    }
    None
}

#[test]
fn dhcp_offer_carries_the_configured_extra_options() {
    let mut cfg = config();
    cfg.dhcp_extra = podwire_dhcp::ExtraOptions {
        ntp: vec![Ipv4Addr::new(198, 18, 1, 5)],
        tftp_server: Some("tftp.podwire.test".into()),
        boot_file: Some("pxelinux.0".into()),
        fqdn: None,
        private: vec![(240, b"extra.options.kubevirt.io".to_vec())],
    };
    let mut sw = Switch::new(&cfg).unwrap();
    let repr = DhcpRepr {
        message_type: DhcpMessageType::Discover,
        transaction_id: 7,
        secs: 0,
        client_hardware_address: EthernetAddress(GUEST_MAC),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: true,
        requested_ip: None,
        client_identifier: None,
        server_identifier: None,
        parameter_request_list: Some(&[1, 3, 42, 66, 67, 240]),
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut dhcp = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut dhcp[..]))
        .unwrap();
    let frame = ipv4_udp(
        (Ipv4Addr::UNSPECIFIED, 68),
        (Ipv4Addr::BROADCAST, 67),
        &dhcp,
    );
    let rx = send(&mut sw, &frame);
    assert_eq!(rx.frames.len(), 1);
    let (.., payload) = parse_udp_reply(&rx.frames[0]);
    assert_eq!(dhcp_option(&payload, 42), Some(vec![198, 18, 1, 5]));
    assert_eq!(
        dhcp_option(&payload, 66),
        Some(b"tftp.podwire.test".to_vec())
    );
    assert_eq!(dhcp_option(&payload, 67), Some(b"pxelinux.0".to_vec()));
    assert_eq!(
        dhcp_option(&payload, 240),
        Some(b"extra.options.kubevirt.io".to_vec())
    );
}
