//! `Link6`: guest packets built with smoltcp's wire types (or by hand where they must be
//! wrong), replies parsed back with smoltcp and checked field by field.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use crate::ra::{icmpv6_checksum, router_link_local};
use podwire_dhcp::{duid_ll, ALL_DHCP_RELAY_AGENTS_AND_SERVERS};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscOption,
    NdiscPrefixInfoFlags, NdiscRepr, NdiscRouterFlags, RawHardwareAddress, UdpPacket, UdpRepr,
};

use crate::v6::*;

const GATEWAY_MAC: [u8; 6] = [0x02, 0x70, 0x77, 0x00, 0x00, 0x01];
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const CLIENT_DUID: &[u8] = &[0, 3, 0, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn addr(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn guest_ll() -> Ipv6Addr {
    addr("fe80::5054:ff:fe12:3456")
}

fn gateway_ll() -> Ipv6Addr {
    router_link_local(GATEWAY_MAC)
}

fn config() -> Link6Config {
    Link6Config {
        gateway_mac: GATEWAY_MAC,
        prefix: addr("fd10:0:2::"),
        prefix_len: 120,
        guest: addr("fd10:0:2::2"),
        gateway: addr("fd10:0:2::1"),
        dns: vec![addr("fd10:0:2::1"), addr("2001:db8::53")],
        search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
        mtu: 1500,
        lease_secs: 3600,
    }
}

fn link() -> Link6 {
    Link6::new(config())
}

fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, nh: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0; 40 + payload.len()];
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: nh,
        payload_len: payload.len(),
        hop_limit,
    }
    .emit(&mut Ipv6Packet::new_unchecked(&mut p[..]));
    p[40..].copy_from_slice(payload);
    p
}

fn icmp(src: Ipv6Addr, dst: Ipv6Addr, repr: &Icmpv6Repr<'_>) -> Vec<u8> {
    let mut b = vec![0; repr.buffer_len()];
    repr.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut b[..]),
        &ChecksumCapabilities::default(),
    );
    b
}

fn nd(src: Ipv6Addr, dst: Ipv6Addr, repr: NdiscRepr<'_>) -> Vec<u8> {
    let msg = icmp(src, dst, &Icmpv6Repr::Ndisc(repr));
    ipv6(src, dst, 255, IpProtocol::Icmpv6, &msg)
}

fn ns(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, lladdr: Option<[u8; 6]>) -> Vec<u8> {
    nd(
        src,
        dst,
        NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: lladdr.map(|m| RawHardwareAddress::from(EthernetAddress(m))),
        },
    )
}

/// The guest resolving `target` the usual way: from its link-local address to the
/// solicited-node group, with its MAC.
fn resolve(target: Ipv6Addr) -> Vec<u8> {
    ns(guest_ll(), solicited_node(target), target, Some(GUEST_MAC))
}

fn rs(src: Ipv6Addr) -> Vec<u8> {
    let lladdr =
        (!src.is_unspecified()).then(|| RawHardwareAddress::from(EthernetAddress(GUEST_MAC)));
    nd(src, addr("ff02::2"), NdiscRepr::RouterSolicit { lladdr })
}

fn echo(src: Ipv6Addr, dst: Ipv6Addr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let msg = icmp(
        src,
        dst,
        &Icmpv6Repr::EchoRequest {
            ident,
            seq_no,
            data,
        },
    );
    ipv6(src, dst, 64, IpProtocol::Icmpv6, &msg)
}

fn udp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: sport,
        dst_port: dport,
    };
    let mut b = vec![0; 8 + payload.len()];
    repr.emit(
        &mut UdpPacket::new_unchecked(&mut b[..]),
        &IpAddress::Ipv6(src),
        &IpAddress::Ipv6(dst),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    ipv6(src, dst, 1, IpProtocol::Udp, &b)
}

fn option(code: u16, data: &[u8]) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A DHCPv6 client message with a Client Identifier, an IA_NA and whatever else `extra` holds.
fn dhcp_msg(msg_type: u8, extra: &[u8]) -> Vec<u8> {
    let mut m = vec![msg_type, 0x12, 0x34, 0x56];
    m.extend(option(1, CLIENT_DUID));
    m.extend(option(3, &[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0]));
    m.extend(option(8, &[0, 0]));
    m.extend(option(6, &[0, 23, 0, 24]));
    m.extend_from_slice(extra);
    m
}

fn dhcp_packet(msg: &[u8]) -> Vec<u8> {
    udp(guest_ll(), ALL_DHCP_RELAY_AGENTS_AND_SERVERS, 546, 547, msg)
}

/// Top-level DHCPv6 options as (code, data).
fn dhcp_options(payload: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut rest = &payload[4..];
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let code = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        out.push((code, rest[4..4 + len].to_vec()));
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty(), "options end exactly at the end");
    out
}

fn find(options: &[(u16, Vec<u8>)], code: u16) -> Option<&[u8]> {
    options
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, d)| d.as_slice())
}

/// A reply frame taken apart: Ethernet, IPv6 (exact length checked), payload.
struct Frame {
    eth: EthernetRepr,
    ip: Ipv6Repr,
    payload: Vec<u8>,
}

fn parse_frame(frame: &[u8]) -> Frame {
    let e = EthernetFrame::new_checked(frame).expect("ethernet");
    let eth = EthernetRepr::parse(&e).expect("ethernet repr");
    assert_eq!(eth.ethertype, EthernetProtocol::Ipv6);
    assert_eq!(eth.src_addr, EthernetAddress(GATEWAY_MAC));
    let p = Ipv6Packet::new_checked(e.payload()).expect("ipv6");
    let ip = Ipv6Repr::parse(&p).expect("ipv6 repr");
    assert_eq!(
        40 + ip.payload_len,
        e.payload().len(),
        "frame is exactly the packet"
    );
    Frame {
        eth,
        ip,
        payload: p.payload().to_vec(),
    }
}

/// The ICMPv6 message of a reply, checksum verified by smoltcp.
fn parse_icmp<'a>(f: &'a Frame) -> Icmpv6Repr<'a> {
    assert_eq!(f.ip.next_header, IpProtocol::Icmpv6);
    let p = Icmpv6Packet::new_checked(&f.payload[..]).expect("icmpv6");
    Icmpv6Repr::parse(
        &f.ip.src_addr,
        &f.ip.dst_addr,
        &p,
        &ChecksumCapabilities::default(),
    )
    .expect("valid ICMPv6 (checksum included)")
}

fn now() -> Instant {
    Instant::now()
}

fn handle(l: &mut Link6, packet: &[u8], t: Instant) -> Result<Option<Vec<u8>>, Link6Drop> {
    let mut out = [0u8; OUT_BUFFER_LEN];
    l.handle(GUEST_MAC, packet, false, t, &mut out)
        .map(|r| r.map(|n| out[..n].to_vec()))
}

fn reply(l: &mut Link6, packet: &[u8]) -> Vec<u8> {
    handle(l, packet, now())
        .expect("accepted")
        .expect("answered")
}

/// Every `handle` call ends in exactly one reply, "taken in" or drop counter.
fn assert_accounted(l: &Link6) {
    let (_, own) = l.counter_sets()[0];
    let samples = own.samples();
    let not_outcomes = [
        "received",
        "ra_unsolicited",
        "ra_unsolicited_failed",
        "addresses_learned",
        "addresses_evicted",
    ];
    let outcomes: u64 = samples
        .iter()
        .filter(|(d, _)| !not_outcomes.contains(&d.name))
        .map(|s| s.1)
        .sum();
    assert_eq!(outcomes, own.value_of("received").unwrap(), "{samples:?}");
}

fn assert_na(frame: &[u8], target: Ipv6Addr, to: Ipv6Addr) {
    let f = parse_frame(frame);
    assert_eq!(f.eth.dst_addr, EthernetAddress(GUEST_MAC));
    assert_eq!(f.ip.src_addr, target);
    assert_eq!(f.ip.dst_addr, to);
    assert_eq!(f.ip.hop_limit, 255);
    match parse_icmp(&f) {
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        }) => {
            assert_eq!(
                flags,
                NdiscNeighborFlags::ROUTER
                    | NdiscNeighborFlags::SOLICITED
                    | NdiscNeighborFlags::OVERRIDE
            );
            assert_eq!(target_addr, target);
            assert_eq!(
                lladdr,
                Some(RawHardwareAddress::from(EthernetAddress(GATEWAY_MAC)))
            );
        }
        other => panic!("not an NA: {other:?}"),
    }
}

#[test]
fn link6_ns_for_gateway_link_local_is_answered() {
    let mut l = link();
    assert_eq!(l.gateway_link_local(), gateway_ll());
    let frame = reply(&mut l, &resolve(gateway_ll()));
    assert_na(&frame, gateway_ll(), guest_ll());
    assert_eq!(l.counters.na_sent.get(), 1);
    assert!(l.guest_addresses().contains(&guest_ll()));
    assert_accounted(&l);
}

#[test]
fn link6_ns_for_gateway_global_is_answered_multicast_or_unicast() {
    let mut l = link();
    let gw = addr("fd10:0:2::1");
    assert_na(&reply(&mut l, &resolve(gw)), gw, guest_ll());
    // Neighbour unreachability detection: unicast to the address itself, from the guest's
    // global address.
    let guest = addr("fd10:0:2::2");
    assert_na(
        &reply(&mut l, &ns(guest, gw, gw, Some(GUEST_MAC))),
        gw,
        guest,
    );
    assert_eq!(l.counters.na_sent.get(), 2);
}

#[test]
fn link6_ns_for_other_on_link_addresses_is_answered() {
    let mut l = link();
    for target in [addr("fd10:0:2::7"), addr("2001:db8:9::1")] {
        assert_na(&reply(&mut l, &resolve(target)), target, guest_ll());
    }
}

#[test]
fn link6_dad_is_never_answered_and_teaches_the_guest_address() {
    let mut l = link();
    let tentative = addr("fd10:0:2::5");
    let dad = ns(
        Ipv6Addr::UNSPECIFIED,
        solicited_node(tentative),
        tentative,
        None,
    );
    assert_eq!(handle(&mut l, &dad, now()), Ok(None));
    assert_eq!(l.guest_addresses(), &[tentative]);
    assert_eq!(l.counters.dad_probes.get(), 1);
    // Link-local DAD too.
    let dad_ll = ns(
        Ipv6Addr::UNSPECIFIED,
        solicited_node(guest_ll()),
        guest_ll(),
        None,
    );
    assert_eq!(handle(&mut l, &dad_ll, now()), Ok(None));
    assert_eq!(l.guest_addresses(), &[guest_ll(), tentative]);
    // Now a solicitation for it (the guest checking itself) is not answered either.
    assert_eq!(
        handle(&mut l, &resolve(tentative), now()),
        Err(Link6Drop::NsForGuest(tentative))
    );
    assert_eq!(l.counters.drop_ns_for_guest.get(), 1);
    assert_accounted(&l);
}

#[test]
fn link6_dad_for_gateway_address_is_not_answered_and_not_learned() {
    let mut l = link();
    let gw = addr("fd10:0:2::1");
    let dad = ns(Ipv6Addr::UNSPECIFIED, solicited_node(gw), gw, None);
    assert_eq!(
        handle(&mut l, &dad, now()),
        Err(Link6Drop::ClaimsGateway(gw))
    );
    assert!(l.guest_addresses().is_empty());
    assert!(!Link6Drop::ClaimsGateway(gw).is_routine());
}

#[test]
fn link6_ns_for_configured_guest_address_is_not_answered() {
    let mut l = link();
    let guest = addr("fd10:0:2::2");
    assert_eq!(
        handle(&mut l, &resolve(guest), now()),
        Err(Link6Drop::NsForGuest(guest))
    );
}

#[test]
fn link6_ns_for_learned_source_is_not_answered() {
    let mut l = link();
    let slaac = addr("fd10:0:2::99");
    l.learn_source(slaac);
    assert_eq!(
        handle(&mut l, &resolve(slaac), now()),
        Err(Link6Drop::NsForGuest(slaac))
    );
}

#[test]
fn link6_ns_for_unknown_link_local_is_not_answered() {
    let mut l = link();
    let other = addr("fe80::1");
    let err = handle(&mut l, &resolve(other), now()).unwrap_err();
    assert_eq!(err, Link6Drop::NsForUnknownLinkLocal(other));
    assert!(err.is_routine());
}

#[test]
fn link6_ns_with_bad_hop_limit_or_checksum_is_dropped() {
    let mut l = link();
    let mut bad_hop = resolve(gateway_ll());
    bad_hop[7] = 64;
    assert_eq!(
        handle(&mut l, &bad_hop, now()),
        Err(Link6Drop::BadHopLimit(64))
    );
    let mut bad_sum = resolve(gateway_ll());
    bad_sum[40 + 2] ^= 0x55;
    assert_eq!(handle(&mut l, &bad_sum, now()), Err(Link6Drop::BadChecksum));
    assert_eq!(l.counters.drop_bad_hop_limit.get(), 1);
    assert_eq!(l.counters.drop_bad_checksum.get(), 1);
    // With the checksum left to the device, it is not checked.
    let mut out = [0u8; OUT_BUFFER_LEN];
    assert!(matches!(
        l.handle(GUEST_MAC, &bad_sum, true, now(), &mut out),
        Ok(Some(_))
    ));
    assert_accounted(&l);
}

/// Rewrites an ICMPv6 message in a packet and fixes its checksum.
fn patch_icmp(packet: &mut [u8], edit: impl FnOnce(&mut [u8])) {
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[8..24]).expect("src"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[24..40]).expect("dst"));
    let msg = &mut packet[40..];
    edit(msg);
    msg[2..4].fill(0);
    let sum = icmpv6_checksum(src, dst, msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
}

#[test]
fn link6_malformed_ns_is_dropped() {
    let mut l = link();
    let cases: Vec<Vec<u8>> = vec![
        // Multicast target.
        ns(
            guest_ll(),
            addr("ff02::1"),
            addr("ff02::1"),
            Some(GUEST_MAC),
        ),
        // DAD with a source link-layer address option.
        ns(
            Ipv6Addr::UNSPECIFIED,
            solicited_node(addr("fd10:0:2::5")),
            addr("fd10:0:2::5"),
            Some(GUEST_MAC),
        ),
        // DAD not to a solicited-node group.
        ns(
            Ipv6Addr::UNSPECIFIED,
            addr("ff02::1"),
            addr("fd10:0:2::5"),
            None,
        ),
        {
            let mut p = resolve(gateway_ll());
            patch_icmp(&mut p, |m| m[1] = 1); // code 1
            p
        },
        {
            let mut p = resolve(gateway_ll());
            patch_icmp(&mut p, |m| m[25] = 0); // zero-length option
            p
        },
        {
            let mut p = resolve(gateway_ll());
            patch_icmp(&mut p, |m| m[25] = 2); // option past the end
            p
        },
    ];
    for (i, packet) in cases.iter().enumerate() {
        assert_eq!(
            handle(&mut l, packet, now()),
            Err(Link6Drop::BadNd),
            "case {i}"
        );
    }
    assert_eq!(l.counters.drop_bad_nd.get(), cases.len() as u64);
    assert!(l.guest_addresses().iter().all(|a| *a == guest_ll()));
    assert_accounted(&l);
}

#[test]
fn link6_na_from_guest_is_learned_not_answered() {
    let mut l = link();
    let target = addr("fd10:0:2::42");
    let unsolicited = nd(
        guest_ll(),
        addr("ff02::1"),
        NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::OVERRIDE,
            target_addr: target,
            lladdr: Some(RawHardwareAddress::from(EthernetAddress(GUEST_MAC))),
        },
    );
    assert_eq!(handle(&mut l, &unsolicited, now()), Ok(None));
    assert!(l.guest_addresses().contains(&target));
    assert_eq!(l.counters.advertisements_seen.get(), 1);

    // S set to a group is invalid (RFC 4861 7.1.2).
    let solicited_to_group = nd(
        guest_ll(),
        addr("ff02::1"),
        NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::SOLICITED,
            target_addr: addr("fd10:0:2::43"),
            lladdr: None,
        },
    );
    assert_eq!(
        handle(&mut l, &solicited_to_group, now()),
        Err(Link6Drop::BadNd)
    );
    // Claiming the gateway.
    let gw = addr("fd10:0:2::1");
    let claim = nd(
        guest_ll(),
        addr("ff02::1"),
        NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::OVERRIDE,
            target_addr: gw,
            lladdr: None,
        },
    );
    assert_eq!(
        handle(&mut l, &claim, now()),
        Err(Link6Drop::ClaimsGateway(gw))
    );
    assert!(!l.guest_addresses().contains(&gw));
    assert_accounted(&l);
}

/// Options of an RA after the 16-byte header, as (type, body after type and length).
fn nd_option_list(msg: &[u8], header: usize) -> Vec<(u8, Vec<u8>)> {
    let mut rest = &msg[header..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let opt = NdiscOption::new_checked(rest).expect("option");
        let len = usize::from(opt.data_len()) * 8;
        out.push((rest[0], rest[2..len].to_vec()));
        rest = &rest[len..];
    }
    out
}

fn dns_name(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for label in name.split('.') {
        v.push(label.len() as u8);
        v.extend_from_slice(label.as_bytes());
    }
    v.push(0);
    v
}

fn assert_ra(frame: &[u8], dst: Ipv6Addr, dst_mac: [u8; 6], prefix_len: u8, autonomous: bool) {
    let f = parse_frame(frame);
    assert_eq!(f.eth.dst_addr, EthernetAddress(dst_mac));
    assert_eq!(f.ip.src_addr, gateway_ll());
    assert_eq!(f.ip.dst_addr, dst);
    assert_eq!(f.ip.hop_limit, 255);
    match parse_icmp(&f) {
        Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            flags,
            router_lifetime,
            lladdr,
            mtu,
            prefix_info,
            ..
        }) => {
            assert_eq!(flags, NdiscRouterFlags::MANAGED | NdiscRouterFlags::OTHER);
            assert!(router_lifetime.secs() > 0, "default router");
            assert_eq!(
                lladdr,
                Some(RawHardwareAddress::from(EthernetAddress(GATEWAY_MAC)))
            );
            assert_eq!(mtu, Some(1500));
            let p = prefix_info.expect("prefix information");
            assert_eq!(p.prefix_len, prefix_len);
            let mut want = NdiscPrefixInfoFlags::ON_LINK;
            if autonomous {
                want |= NdiscPrefixInfoFlags::ADDRCONF;
            }
            assert_eq!(p.flags, want);
        }
        other => panic!("not an RA: {other:?}"),
    }
    let options = nd_option_list(&f.payload, 16);
    let rdnss = options.iter().find(|o| o.0 == 25).expect("RDNSS");
    let mut servers = Vec::new();
    for a in &config().dns {
        servers.extend_from_slice(&a.octets());
    }
    assert_eq!(&rdnss.1[6..], &servers[..]);
    let dnssl = options.iter().find(|o| o.0 == 31).expect("DNSSL");
    let mut names = Vec::new();
    for n in &config().search {
        names.extend(dns_name(n));
    }
    assert_eq!(&dnssl.1[6..6 + names.len()], &names[..]);
    assert!(
        dnssl.1[6 + names.len()..].iter().all(|&b| b == 0),
        "padding"
    );
}

#[test]
fn link6_rs_gets_unicast_ra_with_everything() {
    let mut l = link();
    let frame = reply(&mut l, &rs(guest_ll()));
    assert_ra(&frame, guest_ll(), GUEST_MAC, 120, false);
    assert_eq!(l.counters.ra_solicited.get(), 1);
    assert_accounted(&l);
}

#[test]
fn link6_ra_is_autonomous_only_for_a_64() {
    let mut cfg = config();
    cfg.prefix = addr("2001:db8:5:6::");
    cfg.prefix_len = 64;
    cfg.guest = addr("2001:db8:5:6::2");
    cfg.gateway = addr("2001:db8:5:6::1");
    let mut l = Link6::new(cfg);
    let f = parse_frame(&reply(&mut l, &rs(guest_ll())));
    match parse_icmp(&f) {
        Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            prefix_info: Some(p),
            ..
        }) => {
            assert_eq!(p.prefix, addr("2001:db8:5:6::"));
            assert_eq!(
                p.flags,
                NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF
            );
        }
        other => panic!("not an RA with a prefix: {other:?}"),
    }
}

#[test]
fn link6_rs_from_unspecified_gets_multicast_ra_spaced_3s() {
    let mut l = link();
    let t0 = now();
    let frame = handle(&mut l, &rs(Ipv6Addr::UNSPECIFIED), t0)
        .expect("accepted")
        .expect("answered");
    assert_ra(&frame, addr("ff02::1"), ALL_NODES_MAC, 120, false);
    // A second one a second later is left to the periodic advertisement at +3 s.
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(handle(&mut l, &rs(Ipv6Addr::UNSPECIFIED), t1), Ok(None));
    assert_eq!(l.counters.rs_deferred.get(), 1);
    let mut out = [0u8; OUT_BUFFER_LEN];
    assert_eq!(
        l.periodic(Some(GUEST_MAC), t0 + Duration::from_millis(2900), &mut out),
        None
    );
    let n = l
        .periodic(Some(GUEST_MAC), t0 + MIN_DELAY_BETWEEN_RAS, &mut out)
        .expect("deferred answer");
    assert_ra(&out[..n], addr("ff02::1"), ALL_NODES_MAC, 120, false);
    assert_accounted(&l);
}

#[test]
fn link6_rs_is_rate_limited() {
    let mut l = link();
    let t0 = now();
    for _ in 0..RS_BURST {
        assert!(matches!(handle(&mut l, &rs(guest_ll()), t0), Ok(Some(_))));
    }
    assert_eq!(
        handle(&mut l, &rs(guest_ll()), t0),
        Err(Link6Drop::RsRateLimited)
    );
    assert_eq!(
        handle(&mut l, &rs(guest_ll()), t0 + RS_REFILL / 2),
        Err(Link6Drop::RsRateLimited)
    );
    assert!(matches!(
        handle(&mut l, &rs(guest_ll()), t0 + RS_REFILL),
        Ok(Some(_))
    ));
    assert_eq!(
        handle(&mut l, &rs(guest_ll()), t0 + RS_REFILL),
        Err(Link6Drop::RsRateLimited)
    );
    // A long quiet spell refills the burst, no more.
    let later = t0 + Duration::from_secs(3600);
    for _ in 0..RS_BURST {
        assert!(matches!(
            handle(&mut l, &rs(guest_ll()), later),
            Ok(Some(_))
        ));
    }
    assert_eq!(
        handle(&mut l, &rs(guest_ll()), later),
        Err(Link6Drop::RsRateLimited)
    );
    assert_eq!(l.counters.drop_rs_rate_limited.get(), 4);
    assert_accounted(&l);
}

#[test]
fn link6_bad_rs_is_dropped() {
    let mut l = link();
    let mut p = rs(guest_ll());
    p[7] = 1;
    assert_eq!(handle(&mut l, &p, now()), Err(Link6Drop::BadHopLimit(1)));
    // Link-layer option from ::.
    let with_ll = nd(
        Ipv6Addr::UNSPECIFIED,
        addr("ff02::2"),
        NdiscRepr::RouterSolicit {
            lladdr: Some(RawHardwareAddress::from(EthernetAddress(GUEST_MAC))),
        },
    );
    assert_eq!(handle(&mut l, &with_ll, now()), Err(Link6Drop::BadNd));
}

#[test]
fn link6_periodic_ra_timing() {
    let mut l = link();
    let mut out = [0u8; OUT_BUFFER_LEN];
    let t0 = now();
    assert_eq!(l.periodic(None, t0, &mut out), None, "no guest, no RA");
    let n = l
        .periodic(Some(GUEST_MAC), t0, &mut out)
        .expect("first at once");
    assert_ra(&out[..n], addr("ff02::1"), ALL_NODES_MAC, 120, false);
    let mut sent = vec![Duration::ZERO];
    // Tick once a second for an hour.
    for s in 1..3600 {
        let t = t0 + Duration::from_secs(s);
        if l.periodic(Some(GUEST_MAC), t, &mut out).is_some() {
            sent.push(Duration::from_secs(s));
        }
    }
    let initial = MAX_INITIAL_RTR_ADVERT_INTERVAL;
    let mut want = vec![Duration::ZERO, initial, initial * 2];
    let mut t = initial * 2 + RA_INTERVAL;
    while t < Duration::from_secs(3600) {
        want.push(t);
        t += RA_INTERVAL;
    }
    assert_eq!(sent, want);
    assert_eq!(l.counters.ra_unsolicited.get(), want.len() as u64);
}

#[test]
fn link6_forget_restarts_advertisements_and_addresses() {
    let mut l = link();
    let mut out = [0u8; OUT_BUFFER_LEN];
    let t0 = now();
    l.learn_source(guest_ll());
    assert!(l.periodic(Some(GUEST_MAC), t0, &mut out).is_some());
    assert!(l
        .periodic(Some(GUEST_MAC), t0 + Duration::from_secs(5), &mut out)
        .is_none());
    l.forget();
    assert!(l.guest_addresses().is_empty());
    assert!(l
        .periodic(Some(GUEST_MAC), t0 + Duration::from_secs(5), &mut out)
        .is_some());
}

#[test]
fn link6_address_table_is_bounded_most_recent_first() {
    let mut l = link();
    let a = |i: u16| Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0x100 + i);
    for i in 0..MAX_GUEST_ADDRESSES as u16 + 1 {
        assert!(l.learn_source(a(i)), "new");
    }
    assert_eq!(l.guest_addresses().len(), MAX_GUEST_ADDRESSES);
    assert_eq!(l.guest_addresses()[0], a(MAX_GUEST_ADDRESSES as u16));
    assert!(!l.guest_addresses().contains(&a(0)), "oldest evicted");
    assert_eq!(l.counters.addresses_evicted.get(), 1);
    // Seeing one again moves it to the front without re-learning it.
    assert!(!l.learn_source(a(3)), "known");
    assert_eq!(l.guest_addresses()[0], a(3));
    assert_eq!(l.guest_addresses().len(), MAX_GUEST_ADDRESSES);
    assert_eq!(
        l.counters.addresses_learned.get(),
        MAX_GUEST_ADDRESSES as u64 + 1
    );
    // Never the gateway's, multicast or unspecified.
    for bad in [
        gateway_ll(),
        addr("fd10:0:2::1"),
        addr("ff02::1"),
        Ipv6Addr::UNSPECIFIED,
        Ipv6Addr::LOCALHOST,
    ] {
        l.learn_source(bad);
        assert!(!l.guest_addresses().contains(&bad));
    }
}

/// The UDP datagram of a DHCPv6 reply: ports and addresses checked, checksum verified by
/// smoltcp; returns the payload.
fn assert_dhcp_reply(frame: &[u8]) -> Vec<u8> {
    let f = parse_frame(frame);
    assert_eq!(f.eth.dst_addr, EthernetAddress(GUEST_MAC));
    assert_eq!(f.ip.src_addr, gateway_ll());
    assert_eq!(f.ip.dst_addr, guest_ll());
    assert_eq!(f.ip.next_header, IpProtocol::Udp);
    let p = UdpPacket::new_checked(&f.payload[..]).expect("udp");
    assert_ne!(p.checksum(), 0, "IPv6 UDP always has a checksum");
    let repr = UdpRepr::parse(
        &p,
        &IpAddress::Ipv6(f.ip.src_addr),
        &IpAddress::Ipv6(f.ip.dst_addr),
        &ChecksumCapabilities::default(),
    )
    .expect("valid UDP (checksum included)");
    assert_eq!((repr.src_port, repr.dst_port), (547, 546));
    assert_eq!(usize::from(p.len()), f.payload.len());
    p.payload().to_vec()
}

fn assert_assigns_guest(options: &[(u16, Vec<u8>)]) {
    let ia = find(options, 3).expect("IA_NA");
    assert_eq!(&ia[..4], &[0, 0, 0, 7], "IAID echoed");
    let iaaddr = &ia[12..];
    assert_eq!(u16::from_be_bytes([iaaddr[0], iaaddr[1]]), 5);
    assert_eq!(&iaaddr[4..20], &addr("fd10:0:2::2").octets());
    let mut dns = Vec::new();
    for a in &config().dns {
        dns.extend_from_slice(&a.octets());
    }
    assert_eq!(find(options, 23), Some(&dns[..]));
    assert!(find(options, 24).is_some(), "domain list");
    assert_eq!(find(options, 1), Some(CLIENT_DUID));
    assert_eq!(find(options, 2), Some(&duid_ll(GATEWAY_MAC)[..]));
}

#[test]
fn link6_dhcpv6_solicit_with_rapid_commit_gets_reply() {
    let mut l = link();
    assert!(!l.lease_bound());
    let solicit = dhcp_packet(&dhcp_msg(1, &option(14, &[])));
    assert!(Link6::is_control(&solicit));
    let payload = assert_dhcp_reply(&reply(&mut l, &solicit));
    assert_eq!(payload[0], 7, "REPLY");
    assert_eq!(&payload[1..4], &[0x12, 0x34, 0x56], "transaction id");
    let options = dhcp_options(&payload);
    assert_eq!(find(&options, 14), Some(&[][..]), "rapid commit");
    assert_assigns_guest(&options);
    assert!(l.lease_bound());
    assert_eq!(l.counters.dhcp_replies.get(), 1);
    assert_accounted(&l);
}

#[test]
fn link6_dhcpv6_solicit_advertise_request_reply() {
    let mut l = link();
    let advertise = assert_dhcp_reply(&reply(&mut l, &dhcp_packet(&dhcp_msg(1, &[]))));
    assert_eq!(advertise[0], 2, "ADVERTISE");
    let options = dhcp_options(&advertise);
    assert_eq!(find(&options, 7), Some(&[255][..]), "preference");
    assert_assigns_guest(&options);
    assert!(!l.lease_bound(), "nothing committed by an ADVERTISE");

    let server_id = option(2, find(&options, 2).expect("server id"));
    let reply_payload = assert_dhcp_reply(&reply(&mut l, &dhcp_packet(&dhcp_msg(3, &server_id))));
    assert_eq!(reply_payload[0], 7, "REPLY");
    assert_assigns_guest(&dhcp_options(&reply_payload));
    assert!(l.lease_bound());

    // RENEW, then INFORMATION-REQUEST (no IA, no client id needed).
    let renew = assert_dhcp_reply(&reply(&mut l, &dhcp_packet(&dhcp_msg(5, &server_id))));
    assert_eq!(renew[0], 7);
    let mut info_req = vec![11u8, 1, 2, 3];
    info_req.extend(option(6, &[0, 23]));
    let info = assert_dhcp_reply(&reply(&mut l, &dhcp_packet(&info_req)));
    assert_eq!(info[0], 7);
    assert!(find(&dhcp_options(&info), 23).is_some());
    assert_eq!(l.dhcp_counters().replies, 3);
}

#[test]
fn link6_dhcpv6_checksums_and_garbage() {
    let mut l = link();
    let mut bad = dhcp_packet(&dhcp_msg(1, &[]));
    bad[40 + 6] ^= 0x01;
    assert_eq!(handle(&mut l, &bad, now()), Err(Link6Drop::BadChecksum));
    let mut zero = dhcp_packet(&dhcp_msg(1, &[]));
    zero[40 + 6..40 + 8].fill(0);
    assert_eq!(handle(&mut l, &zero, now()), Err(Link6Drop::BadChecksum));
    // Partial checksum from the guest: not checked, and the reply's is still full.
    let mut out = [0u8; OUT_BUFFER_LEN];
    let n = l
        .handle(GUEST_MAC, &bad, true, now(), &mut out)
        .expect("accepted")
        .expect("answered");
    assert_dhcp_reply(&out[..n]);
    // UDP length past the packet.
    let mut long = dhcp_packet(&dhcp_msg(1, &[]));
    long[40 + 4..40 + 6].copy_from_slice(&1000u16.to_be_bytes());
    assert_eq!(handle(&mut l, &long, now()), Err(Link6Drop::BadUdp));
    // A truncated option inside a valid datagram.
    let broken = dhcp_packet(&[1, 0, 0, 1, 0, 1, 0, 40, 1, 2]);
    assert!(matches!(
        handle(&mut l, &broken, now()),
        Err(Link6Drop::Dhcp(_))
    ));
    // A server message from the guest is ignored by the server.
    let advertise = dhcp_packet(&dhcp_msg(2, &[]));
    assert_eq!(handle(&mut l, &advertise, now()), Ok(None));
    assert_eq!(l.counters.dhcp_ignored.get(), 1);
    assert_accounted(&l);
}

#[test]
fn link6_echo_to_gateway_link_local_is_answered() {
    let mut l = link();
    let data = b"podwire ping payload 0123456789";
    let request = echo(guest_ll(), gateway_ll(), 0x4242, 7, data);
    assert!(Link6::is_control(&request));
    let f = parse_frame(&reply(&mut l, &request));
    assert_eq!(f.eth.dst_addr, EthernetAddress(GUEST_MAC));
    assert_eq!(f.ip.src_addr, gateway_ll());
    assert_eq!(f.ip.dst_addr, guest_ll());
    match parse_icmp(&f) {
        Icmpv6Repr::EchoReply {
            ident,
            seq_no,
            data: got,
        } => {
            assert_eq!((ident, seq_no), (0x4242, 7));
            assert_eq!(got, data);
        }
        other => panic!("not an echo reply: {other:?}"),
    }
    assert_eq!(l.counters.echo_replies.get(), 1);
    // Odd length, to exercise the checksum's last byte.
    let odd = echo(guest_ll(), gateway_ll(), 1, 2, b"abc");
    let f = parse_frame(&reply(&mut l, &odd));
    assert!(matches!(
        parse_icmp(&f),
        Icmpv6Repr::EchoReply { data: b"abc", .. }
    ));
    // Echo to another link-local address is nobody's.
    assert_eq!(
        handle(
            &mut l,
            &echo(guest_ll(), addr("fe80::9"), 1, 1, b"x"),
            now()
        ),
        Err(Link6Drop::NotForUs)
    );
    // Echo to the global gateway address is the NAT's.
    assert!(!Link6::is_control(&echo(
        addr("fd10:0:2::2"),
        addr("fd10:0:2::1"),
        1,
        1,
        b"x"
    )));
    assert_accounted(&l);
}

/// An MLDv2 report as Linux sends it: hop-by-hop router alert, then ICMPv6 143.
fn mld_report() -> Vec<u8> {
    let mut payload = vec![58, 0, 5, 2, 0, 0, 1, 0]; // HBH: next ICMPv6, router alert, PadN
    let mut msg = vec![143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0];
    msg.extend_from_slice(&solicited_node(guest_ll()).octets());
    let sum = icmpv6_checksum(guest_ll(), addr("ff02::16"), &msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    payload.extend(msg);
    ipv6(
        guest_ll(),
        addr("ff02::16"),
        1,
        IpProtocol::HopByHop,
        &payload,
    )
}

#[test]
fn link6_mld_and_other_multicast_are_dropped_quietly() {
    let mut l = link();
    let report = mld_report();
    assert!(Link6::is_control(&report));
    assert_eq!(handle(&mut l, &report, now()), Err(Link6Drop::Mld));
    let mdns = udp(guest_ll(), addr("ff02::fb"), 5353, 5353, b"query");
    assert!(Link6::is_control(&mdns));
    assert_eq!(handle(&mut l, &mdns, now()), Err(Link6Drop::Multicast));
    assert_eq!(l.counters.mld_ignored.get(), 1);
    assert_eq!(l.counters.multicast_ignored.get(), 1);
    assert!(Link6Drop::Mld.is_routine() && Link6Drop::Multicast.is_routine());
    assert_accounted(&l);
}

#[test]
fn link6_router_messages_from_guest_are_dropped() {
    let mut l = link();
    let ra = nd(
        guest_ll(),
        addr("ff02::1"),
        NdiscRepr::RouterAdvert {
            hop_limit: 64,
            flags: NdiscRouterFlags::empty(),
            router_lifetime: smoltcp::time::Duration::from_secs(1800),
            reachable_time: smoltcp::time::Duration::ZERO,
            retrans_time: smoltcp::time::Duration::ZERO,
            lladdr: None,
            mtu: None,
            prefix_info: None,
        },
    );
    assert_eq!(handle(&mut l, &ra, now()), Err(Link6Drop::RouterMessage));
}

#[test]
fn link6_is_control_classification() {
    let g = addr("fd10:0:2::2");
    let remote = addr("2001:db8::80");
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("NS", resolve(gateway_ll()), true),
        (
            "NUD NS to a global address",
            ns(g, remote, remote, None),
            true,
        ),
        ("RS", rs(guest_ll()), true),
        ("MLD report", mld_report(), true),
        ("DHCPv6", dhcp_packet(&dhcp_msg(1, &[])), true),
        ("DHCPv6 unicast", udp(g, remote, 546, 547, b"x"), true),
        (
            "echo to gateway LL",
            echo(guest_ll(), gateway_ll(), 1, 1, b""),
            true,
        ),
        (
            "echo to gateway global",
            echo(g, addr("fd10:0:2::1"), 1, 1, b""),
            false,
        ),
        ("echo to remote", echo(g, remote, 1, 1, b""), false),
        ("UDP to remote", udp(g, remote, 40000, 53, b"dns"), false),
        (
            "TCP to link-local",
            ipv6(g, addr("fe80::1"), 64, IpProtocol::Tcp, &[0; 20]),
            true,
        ),
        (
            "TCP to remote",
            ipv6(g, remote, 64, IpProtocol::Tcp, &[0; 20]),
            false,
        ),
        ("IPv4", vec![0x45; 60], false),
        ("short", vec![0x60; 10], false),
    ];
    for (name, packet, want) in cases {
        assert_eq!(Link6::is_control(&packet), want, "{name}");
        // The first 44 bytes are enough when there are no extension headers.
        if packet.len() >= 44 && packet[6] != 0 {
            assert_eq!(
                Link6::is_control(&packet[..44]),
                want,
                "{name}, first bytes"
            );
        }
    }
}

#[test]
fn link6_truncated_and_odd_packets_are_dropped() {
    let mut l = link();
    let good = resolve(gateway_ll());
    // Payload length past the copy.
    assert_eq!(
        handle(&mut l, &good[..good.len() - 1], now()),
        Err(Link6Drop::Truncated)
    );
    // Ethernet padding after the packet is ignored.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 6]);
    assert!(matches!(handle(&mut l, &padded, now()), Ok(Some(_))));
    // Fragment header.
    let mut frag = good.clone();
    frag[6] = 44;
    assert_eq!(
        handle(&mut l, &frag, now()),
        Err(Link6Drop::ExtensionHeaders)
    );
    // Not version 6.
    let mut v4 = good.clone();
    v4[0] = 0x45;
    assert_eq!(handle(&mut l, &v4, now()), Err(Link6Drop::BadHeader));
    // Multicast source.
    let mut msrc = good.clone();
    msrc[8] = 0xff;
    assert!(matches!(
        handle(&mut l, &msrc, now()),
        Err(Link6Drop::BadSource(_))
    ));
    // Broadcast frame source.
    let mut out = [0u8; OUT_BUFFER_LEN];
    assert_eq!(
        l.handle([0xff; 6], &good, false, now(), &mut out),
        Err(Link6Drop::BadGuestMac([0xff; 6]))
    );
    // Caller's buffer too small.
    assert_eq!(
        l.handle(GUEST_MAC, &good, false, now(), &mut out[..60]),
        Err(Link6Drop::OutputTooSmall)
    );
    assert_eq!(l.counters.drop_output_too_small.get(), 1);
    assert_accounted(&l);
}

#[test]
fn link6_config_validation() {
    assert_eq!(config().validate(), Ok(()));
    let mut small = config();
    small.mtu = 1000;
    assert_eq!(small.validate(), Err(Link6ConfigError::Mtu(1000)));
    let mut slaac = config();
    slaac.prefix_len = 64;
    assert_eq!(slaac.validate(), Ok(()));
}

#[test]
fn link6_summary_names_are_unique() {
    let l = link();
    let mut names: Vec<String> = l
        .counter_sets()
        .iter()
        .flat_map(|(prefix, set)| {
            set.descs()
                .iter()
                .map(move |d| format!("{prefix}{}", d.name))
        })
        .collect();
    let all = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all);
}

/// xorshift64*: reproducible garbage without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn link6_garbage_never_panics_and_is_always_accounted() {
    let mut l = link();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t0 = now();
    let seeds = [
        resolve(gateway_ll()),
        resolve(addr("fd10:0:2::9")),
        ns(
            Ipv6Addr::UNSPECIFIED,
            solicited_node(guest_ll()),
            guest_ll(),
            None,
        ),
        rs(guest_ll()),
        rs(Ipv6Addr::UNSPECIFIED),
        echo(guest_ll(), gateway_ll(), 1, 1, b"ping"),
        dhcp_packet(&dhcp_msg(1, &option(14, &[]))),
        dhcp_packet(&dhcp_msg(3, &option(2, &duid_ll(GATEWAY_MAC)))),
        mld_report(),
    ];
    let mut out = vec![0u8; OUT_BUFFER_LEN];
    let mut calls = 0u64;
    let mut replies = 0u64;
    for round in 0..20_000u32 {
        let t = t0 + Duration::from_millis(u64::from(round) * 37);
        let packet: Vec<u8> = match round % 4 {
            // Pure noise, sometimes with a plausible IPv6 start.
            0 => {
                let len = rng.below(200);
                let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if len > 0 && rng.below(2) == 0 {
                    p[0] = 0x60;
                }
                p
            }
            // A valid packet cut short.
            1 => {
                let seed = &seeds[rng.below(seeds.len())];
                seed[..rng.below(seed.len() + 1)].to_vec()
            }
            // A valid packet with a few bytes flipped.
            _ => {
                let mut p = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(p.len());
                    p[i] ^= 1 << rng.below(8);
                }
                p
            }
        };
        let partial = rng.below(8) == 0;
        let _ = Link6::is_control(&packet);
        let out_len = if rng.below(16) == 0 {
            rng.below(OUT_BUFFER_LEN)
        } else {
            OUT_BUFFER_LEN
        };
        calls += 1;
        if let Ok(Some(n)) = l.handle(GUEST_MAC, &packet, partial, t, &mut out[..out_len]) {
            assert!(n <= out_len);
            // Whatever went out is a well-formed frame from the gateway.
            parse_frame(&out[..n]);
            replies += 1;
        }
        let _ = l.periodic(Some(GUEST_MAC), t, &mut out[..out_len]);
        assert!(l.guest_addresses().len() <= MAX_GUEST_ADDRESSES);
    }
    assert_eq!(l.counters.received.get(), calls);
    // The mutations leave enough intact to reach the reply paths too.
    assert!(replies > 100, "{replies} replies");
    assert_accounted(&l);
}
