//! Writes the seed inputs of each target to `fuzz/corpus/<target>/seed-*`: one well-formed
//! exchange per protocol, for the fuzzer to start from. `cargo run -p podwire-fuzz --example
//! seed_corpus`; the fuzzer's own finds are added next to them (minimised, see
//! docs/hardening.md).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use podwire_fuzz::{join_records, GATEWAY_MAC, GUEST_IP, GUEST_MAC, GW_IP, GW_IP6};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol,
    Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

fn dhcp(kind: DhcpMessageType, requested: Option<Ipv4Addr>) -> Vec<u8> {
    let repr = DhcpRepr {
        message_type: kind,
        transaction_id: 0x1234_5678,
        secs: 0,
        client_hardware_address: EthernetAddress(GUEST_MAC),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: requested,
        client_identifier: Some(EthernetAddress(GUEST_MAC)),
        server_identifier: requested.map(|_| GW_IP),
        parameter_request_list: Some(&[1, 3, 6, 15, 26, 119]),
        dns_servers: None,
        max_size: Some(1500),
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut buf)).unwrap();
    buf
}

fn dhcpv6(kind: u8) -> Vec<u8> {
    let mut m = vec![kind, 0xab, 0xcd, 0xef];
    let mut opt = |code: u16, body: &[u8]| {
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(body);
    };
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(&GUEST_MAC);
    opt(1, &duid);
    if kind == 3 {
        opt(2, &podwire_dhcp::duid_ll(GATEWAY_MAC));
    }
    opt(3, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    opt(6, &[0, 23, 0, 24]);
    opt(8, &[0, 0]);
    m
}

fn eth(ethertype: EthernetProtocol, dst: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + payload.len()];
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(dst),
        ethertype,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    f[14..].copy_from_slice(payload);
    f
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4.len(),
        hop_limit: 64,
    };
    let mut p = vec![0u8; 20 + l4.len()];
    repr.emit(
        &mut Ipv4Packet::new_unchecked(&mut p[..]),
        &ChecksumCapabilities::default(),
    );
    p[20..].copy_from_slice(l4);
    p
}

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload.len()];
    UdpRepr {
        src_port: sport,
        dst_port: dport,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut u[..]),
        &src.into(),
        &dst.into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    eth(
        EthernetProtocol::Ipv4,
        GATEWAY_MAC,
        &ipv4(src, dst, IpProtocol::Udp, &u),
    )
}

/// An IPv6 packet carrying ICMPv6 `icmp` (checksum left zero: the seeds set "partial").
fn ipv6_icmp(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    p.extend_from_slice(&[58, 255]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(icmp);
    p
}

fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 2, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    )
}

fn router_solicitation() -> Vec<u8> {
    let mut icmp = vec![133, 0, 0, 0, 0, 0, 0, 0, 1, 1];
    icmp.extend_from_slice(&GUEST_MAC);
    ipv6_icmp(link_local(GUEST_MAC), "ff02::2".parse().unwrap(), &icmp)
}

fn neighbour_solicitation() -> Vec<u8> {
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&GW_IP6.octets());
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&GUEST_MAC);
    let mut sn = "ff02::1:ff00:0".parse::<Ipv6Addr>().unwrap().octets();
    sn[13..].copy_from_slice(&GW_IP6.octets()[13..]);
    ipv6_icmp(link_local(GUEST_MAC), sn.into(), &icmp)
}

fn arp_request() -> Vec<u8> {
    let mut p = [0u8; 28];
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: GW_IP,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut p[..]));
    eth(EthernetProtocol::Arp, [0xff; 6], &p)
}

fn ping(dst: Ipv4Addr) -> Vec<u8> {
    let data = [0x42u8; 32];
    let repr = Icmpv4Repr::EchoRequest {
        ident: 7,
        seq_no: 1,
        data: &data,
    };
    let mut p = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut p[..]),
        &ChecksumCapabilities::default(),
    );
    eth(
        EthernetProtocol::Ipv4,
        GATEWAY_MAC,
        &ipv4(GUEST_IP, dst, IpProtocol::Icmp, &p),
    )
}

/// A switch record: control byte (split at 14, end the batch), then the frame.
fn frame_record(frame: &[u8], partial: bool) -> Vec<u8> {
    let mut r = vec![0x40 | 14 | if partial { 0x80 } else { 0 }];
    r.extend_from_slice(frame);
    r
}

/// A TCP record: flags, seq offset, ack offset, window, option length, payload.
fn tcp_record(flags: u8, seq: u16, ack: i16, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![flags];
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(&ack.to_le_bytes());
    r.extend_from_slice(&65535u16.to_le_bytes());
    r.push(0);
    r.extend_from_slice(payload);
    r
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn main() {
    let discover = dhcp(DhcpMessageType::Discover, None);
    let request = dhcp(DhcpMessageType::Request, Some(GUEST_IP));
    write(
        "dhcpv4",
        "discover-request",
        &join_records(&[&discover, &request]),
    );

    let (solicit, request6) = (dhcpv6(1), dhcpv6(3));
    write(
        "dhcpv6",
        "solicit-request",
        &join_records(&[&solicit, &request6]),
    );
    write(
        "dhcpv6",
        "information-request",
        &join_records(&[&dhcpv6(11)]),
    );

    let mut rs = vec![1u8];
    rs.extend_from_slice(&router_solicitation());
    let mut ns = vec![1u8];
    ns.extend_from_slice(&neighbour_solicitation());
    write("link6", "rs-ns", &join_records(&[&rs, &ns]));

    let dhcp_frame = udp4(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        68,
        67,
        &discover,
    );
    let dns = udp4(
        GUEST_IP,
        GW_IP,
        33000,
        53,
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03far\x04test\x00\x00\x01\x00\x01",
    );
    let udp = udp4(GUEST_IP, GW_IP, 33001, 7000, b"get");
    let mut rs_frame = router_solicitation();
    rs_frame = eth(EthernetProtocol::Ipv6, [0x33, 0x33, 0, 0, 0, 2], &rs_frame);
    write(
        "switch_frames",
        "arp-dhcp-dns-udp-ping-rs",
        &join_records(&[
            &frame_record(&arp_request(), false),
            &frame_record(&dhcp_frame, false),
            &frame_record(&dns, false),
            &frame_record(&udp, true),
            &frame_record(&ping(Ipv4Addr::new(198, 18, 0, 1)), false),
            &frame_record(&rs_frame, true),
        ]),
    );

    write(
        "tcp_segments",
        "data-ack-fin",
        &join_records(&[
            &tcp_record(0x18, 0, 0, b"hello, peer"),
            &tcp_record(0x10, 11, 3000, &[]),
            &tcp_record(0x11, 11, 3000, &[]),
            &tcp_record(0x10, 12, 3001, &[]),
        ]),
    );
    write(
        "tcp_segments",
        "reset",
        &join_records(&[&tcp_record(0x04, 0, 0, &[])]),
    );

    // vhost-user: GET_FEATURES, SET_OWNER, an early SET_VRING_ENABLE (held), SET_FEATURES
    // (which replays it), GET_PROTOCOL_FEATURES.
    let msg = |req: u32, flags: u32, payload: &[u8]| {
        let mut m = req.to_le_bytes().to_vec();
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    };
    let mut relay = Vec::new();
    relay.extend(msg(1, 1, &[]));
    relay.extend(msg(3, 1, &[]));
    relay.extend(msg(18, 1 | 8, &[0, 0, 0, 0, 1, 0, 0, 0]));
    relay.extend(msg(2, 1, &(1u64 << 32 | 1 << 30).to_le_bytes()));
    relay.extend(msg(15, 1, &[]));
    write("relay", "early-enable", &relay);

    write("device", "one-frame-each-way", &device_seed());
}

/// Rings of 8 at 0x100.. (RX) and 0x400.. (TX); a TX chain of header and 60-byte frame, an RX
/// buffer of 1600 bytes; every event kind in turn.
fn device_seed() -> Vec<u8> {
    let mut d = vec![0u8; 16 + 0x900];
    d[0] = 0;
    d[1] = 3;
    d[2] = 3;
    for (i, addr) in [0x100u16, 0x200, 0x300, 0x400, 0x500, 0x600]
        .iter()
        .enumerate()
    {
        d[3 + 2 * i..5 + 2 * i].copy_from_slice(&(addr / 8).to_le_bytes());
    }
    d[15] = 0b1010_1010;
    let mem = &mut d[16..];
    let desc = |mem: &mut [u8], at: usize, addr: u64, len: u32, flags: u16, next: u16| {
        mem[at..at + 8].copy_from_slice(&addr.to_le_bytes());
        mem[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
        mem[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
        mem[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
    };
    // RX: one device-writable buffer, offered.
    desc(mem, 0x100, 0x900, 1600, 2, 0);
    mem[0x202..0x204].copy_from_slice(&1u16.to_le_bytes());
    // TX: header then frame, offered.
    desc(mem, 0x400, 0x800, 12, 1, 1);
    desc(mem, 0x410, 0x820, 60, 0, 0);
    mem[0x502..0x504].copy_from_slice(&1u16.to_le_bytes());
    for b in &mut mem[0x820..0x85c] {
        *b = 0x42;
    }
    d
}
