//! [`Link4`] on its own: ARP answers and DHCPv4 framing, checked with smoltcp's parsers.

use std::net::Ipv4Addr;

use podwire_dhcp::{Dhcpv4Config, Dhcpv4Server};
use podwire_frame::Checksum;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol,
    Ipv4Packet, UdpPacket,
};

use crate::v4::*;

const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 7];
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GUEST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn link() -> Link4 {
    link_with(false)
}

fn link_with(allow_other_sources: bool) -> Link4 {
    let dhcp = Dhcpv4Server::new(Dhcpv4Config {
        server_ip: GATEWAY,
        guest_ip: GUEST,
        prefix_len: 24,
        router: GATEWAY,
        dns: vec![],
        domain_name: None,
        search: vec![],
        mtu: Some(1500),
        lease_secs: 3600,
        hostname: None,
        extra: Default::default(),
    });
    Link4::new(
        Link4Config {
            gateway_mac: GATEWAY_MAC,
            gateway_ip: GATEWAY,
            guest_ip: GUEST,
            prefix_len: 24,
            allow_other_sources,
        },
        dhcp,
    )
}

fn arp(op: ArpOperation, sender: Ipv4Addr, target: Ipv4Addr) -> [u8; 28] {
    let mut b = [0u8; 28];
    ArpRepr::EthernetIpv4 {
        operation: op,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: sender,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut b[..]));
    b
}

#[test]
fn arp_requests_for_other_addresses_get_the_gateway_mac() {
    let mut l = link();
    let mut out = [0u8; ARP_FRAME_LEN];
    let n = l
        .handle_arp(&arp(ArpOperation::Request, GUEST, GATEWAY), &mut out)
        .unwrap();
    let eth = EthernetFrame::new_checked(&out[..n]).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
    assert_eq!(eth.dst_addr(), EthernetAddress(GUEST_MAC));
    let reply = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    assert_eq!(
        reply,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(GATEWAY_MAC),
            source_protocol_addr: GATEWAY,
            target_hardware_addr: EthernetAddress(GUEST_MAC),
            target_protocol_addr: GUEST,
        }
    );
    assert_eq!(l.counters.arp_replies.get(), 1);
}

#[test]
fn probes_announcements_and_garbage_are_ignored_and_counted() {
    let mut l = link();
    let mut out = [0u8; ARP_FRAME_LEN];
    let probe = arp(ArpOperation::Request, Ipv4Addr::UNSPECIFIED, GUEST);
    let announce = arp(ArpOperation::Request, GUEST, GUEST);
    for packet in [&probe[..], &announce[..], &[1, 2, 3][..]] {
        assert_eq!(l.handle_arp(packet, &mut out), Err(Link4Drop::ArpIgnored));
    }
    assert_eq!(l.counters.arp_ignored.get(), 3);
    assert_eq!(l.counters.arp_replies.get(), 0);
}

/// Anti-spoofing: ARP from an address the guest was not given is refused, and the guest's
/// address stays.
#[test]
fn an_arp_sender_other_than_the_guest_is_refused() {
    let mut l = link();
    let mut out = [0u8; ARP_FRAME_LEN];
    let other = Ipv4Addr::new(198, 18, 0, 9);
    let got = l.handle_arp(&arp(ArpOperation::Request, other, GATEWAY), &mut out);
    assert_eq!(got, Err(Link4Drop::SpoofedSender(other)));
    assert_eq!(l.guest_ip(), GUEST);
    assert_eq!(l.counters.arp_spoofed_sender.get(), 1);
    assert!(l
        .handle_arp(&arp(ArpOperation::Request, GUEST, GATEWAY), &mut out)
        .is_ok());
}

/// With other sources allowed (`--allow-guest-sources`).
#[test]
fn an_arp_sender_in_the_subnet_becomes_the_guest_address() {
    let mut l = link_with(true);
    let mut out = [0u8; ARP_FRAME_LEN];
    let other = Ipv4Addr::new(198, 18, 0, 9);
    l.handle_arp(&arp(ArpOperation::Request, other, GATEWAY), &mut out)
        .unwrap();
    assert_eq!(l.guest_ip(), other);
    let outside = Ipv4Addr::new(198, 19, 0, 9);
    l.handle_arp(&arp(ArpOperation::Request, outside, GATEWAY), &mut out)
        .unwrap();
    assert_eq!(l.guest_ip(), other);
    l.forget();
    assert_eq!(l.guest_ip(), GUEST);
}

/// A DHCPDISCOVER from the guest in a UDP datagram 0.0.0.0:68 → 255.255.255.255:67.
fn discover_datagram() -> Vec<u8> {
    let mut bootp = vec![0u8; 240];
    bootp[0] = 1; // BOOTREQUEST
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
    bootp[28..34].copy_from_slice(&GUEST_MAC);
    bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    bootp.extend_from_slice(&[53, 1, 1, 255]);
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&68u16.to_be_bytes());
    udp[2..4].copy_from_slice(&67u16.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + bootp.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&bootp);
    let sum = Checksum::of_l4(
        Ipv4Addr::UNSPECIFIED.into(),
        Ipv4Addr::BROADCAST.into(),
        17,
        &udp,
    );
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    udp
}

fn dhcp(l: &mut Link4, udp: &[u8], out: &mut [u8]) -> Result<Option<usize>, Link4Drop> {
    l.handle_dhcp(
        GUEST_MAC,
        GUEST_MAC,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        udp,
        false,
        out,
    )
}

#[test]
fn a_discover_gets_an_offer_framed_with_valid_checksums() {
    let mut l = link();
    let mut out = [0u8; OUT_BUFFER_LEN];
    let n = dhcp(&mut l, &discover_datagram(), &mut out)
        .unwrap()
        .unwrap();
    let eth = EthernetFrame::new_checked(&out[..n]).unwrap();
    assert_eq!(eth.dst_addr(), EthernetAddress(GUEST_MAC));
    assert_eq!(eth.src_addr(), EthernetAddress(GATEWAY_MAC));
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.next_header(), IpProtocol::Udp);
    assert_eq!(ip.src_addr(), GATEWAY);
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
    assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    assert_eq!(udp.payload()[0], 2, "BOOTREPLY");
    assert_eq!(l.counters.dhcp_replies.get(), 1);
    assert_eq!(l.dhcp().counters().offers, 1);
}

#[test]
fn dhcp_with_a_bad_checksum_or_length_is_dropped_and_counted() {
    let mut l = link();
    let mut out = [0u8; OUT_BUFFER_LEN];
    let mut bad_sum = discover_datagram();
    bad_sum[6] ^= 0x55;
    assert_eq!(
        dhcp(&mut l, &bad_sum, &mut out),
        Err(Link4Drop::DhcpBadChecksum)
    );
    let mut too_long = discover_datagram();
    too_long[4..6].copy_from_slice(&5000u16.to_be_bytes());
    assert_eq!(
        dhcp(&mut l, &too_long, &mut out),
        Err(Link4Drop::DhcpBadUdp)
    );
    assert_eq!(
        dhcp(&mut l, &[0, 68, 0], &mut out),
        Err(Link4Drop::DhcpBadUdp)
    );
    assert_eq!(l.counters.dhcp_bad_checksum.get(), 1);
    assert_eq!(l.counters.dhcp_bad_udp.get(), 2);
    assert_eq!(l.dhcp().counters().received, 0, "never reached the server");
}
