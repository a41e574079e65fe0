//! Headers of the frames podwire writes into guest RX buffers, and the guest's L3 view.
//!
//! Frames towards the guest are built in place: the payload is already in guest memory (the
//! kernel put it there), so only the Ethernet, IP and L4 headers are written here, on the
//! stack, and copied in front of it. IPv4 and IPv6 frames differ only in the IP header (20 or
//! 40 bytes), so every offset is a function of the family; the Ethernet and IP headers are
//! emitted with smoltcp's wire types, the UDP, TCP and echo headers read and written through
//! smoltcp's views over the header bytes copied to the stack; L4 checksums are summed (with
//! `podwire_frame::Checksum`) over the payload where it lies in guest memory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use podwire_frame::{Checksum, PartialCsum, SgList};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Message, Icmpv4Packet,
    Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket,
    TcpSeqNumber, UdpPacket,
};

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const UDP_LEN: usize = 8;
pub const ICMP_LEN: usize = 8;
/// Room for the longest Ethernet + IP header podwire writes.
pub const MAX_L3_LEN: usize = ETH_LEN + IPV6_LEN;

/// The IP header length of frames podwire builds for this family.
pub const fn ip_len(v6: bool) -> usize {
    if v6 {
        IPV6_LEN
    } else {
        IPV4_LEN
    }
}

/// Where the L4 header starts in a frame podwire builds.
pub const fn l4_offset(v6: bool) -> usize {
    ETH_LEN + ip_len(v6)
}

/// Where a UDP payload starts in a frame podwire builds.
pub const fn udp_payload_offset(v6: bool) -> usize {
    l4_offset(v6) + UDP_LEN
}

/// Where a TCP payload starts in a frame podwire builds (no TCP options on data segments).
pub const fn tcp_payload_offset(v6: bool) -> usize {
    l4_offset(v6) + TCP_LEN
}

/// The guest's one link: its two link-layer addresses and the guest's current addresses
/// (unspecified for a family the guest does not have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub guest_mac: [u8; 6],
    pub gateway_mac: [u8; 6],
    pub guest_ip: Ipv4Addr,
    pub guest_ip6: Ipv6Addr,
}

impl Endpoints {
    /// The guest's address in IPv6 (`v6`) or IPv4.
    pub fn guest_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.guest_ip6)
        } else {
            IpAddr::V4(self.guest_ip)
        }
    }
}

/// What the switch learned from a guest IP header, for the L4 handlers.
#[derive(Debug, Clone, Copy)]
pub struct IpInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Offset of the L4 header in the frame.
    pub l4_offset: usize,
    /// Bytes of L4 header and payload, from the IP length field (Ethernet padding excluded).
    pub l4_len: usize,
    /// The guest left the L4 checksum partial (it negotiated CSUM): do not verify it.
    pub partial_csum: bool,
    /// A UDP frame of many datagrams of this payload size (virtio USO).
    pub udp_segment: Option<u16>,
}

impl IpInfo {
    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }
}

/// An Ethernet + IP header, IPv4 or IPv6.
#[derive(Clone, Copy)]
pub struct L3Header {
    buf: [u8; MAX_L3_LEN],
    len: usize,
}

impl L3Header {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Both ends in one family: a v4 address paired with a v6 one is widened (v4-mapped), which
/// podwire never does on purpose but must not panic on.
fn same_family(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V6(b)) => (IpAddr::V6(a.to_ipv6_mapped()), IpAddr::V6(b)),
        (IpAddr::V6(a), IpAddr::V4(b)) => (IpAddr::V6(a), IpAddr::V6(b.to_ipv6_mapped())),
        pair => pair,
    }
}

/// Writes Ethernet + IP headers (gateway → guest) for `payload_len` bytes of `proto`. `ident`
/// is the IPv4 identification (IPv6 has none in its fixed header).
pub fn eth_ip_header(
    ep: &Endpoints,
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    payload_len: usize,
    ident: u16,
) -> L3Header {
    let mut hdr = L3Header {
        buf: [0u8; MAX_L3_LEN],
        len: 0,
    };
    let (src, dst) = same_family(src, dst);
    let ethertype = match src {
        IpAddr::V4(_) => EthernetProtocol::Ipv4,
        IpAddr::V6(_) => EthernetProtocol::Ipv6,
    };
    let mut eth = EthernetFrame::new_unchecked(&mut hdr.buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(ep.gateway_mac),
        dst_addr: EthernetAddress(ep.guest_mac),
        ethertype,
    }
    .emit(&mut eth);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut ip = Ipv4Packet::new_unchecked(&mut hdr.buf[ETH_LEN..]);
            Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: proto,
                payload_len,
                hop_limit: 64,
            }
            .emit(&mut ip, &ChecksumCapabilities::ignored());
            ip.set_ident(ident);
            ip.fill_checksum();
            hdr.len = ETH_LEN + IPV4_LEN;
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut ip = Ipv6Packet::new_unchecked(&mut hdr.buf[ETH_LEN..]);
            Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: proto,
                payload_len,
                hop_limit: 64,
            }
            .emit(&mut ip);
            hdr.len = ETH_LEN + IPV6_LEN;
        }
        _ => unreachable!("same_family pairs the families"),
    }
    hdr
}

/// The pseudo-header sum of a TCP, UDP or ICMPv6 checksum (RFC 793 / RFC 8200 8.1). For the
/// one's complement sum, IPv6's 32-bit length and next header fold to the same words as
/// IPv4's for lengths under 64 KiB.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Checksum {
    Checksum::pseudo_header(src, dst, proto, len)
}

/// A UDP header whose checksum covers `frame[payload_offset..payload_offset + payload_len]`.
pub fn udp_header(
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    csum: L4Csum<'_, '_>,
    payload_offset: usize,
    payload_len: usize,
) -> [u8; UDP_LEN] {
    let udp_len = UDP_LEN + payload_len;
    let mut hdr = [0u8; UDP_LEN];
    let mut view = UdpPacket::new_unchecked(&mut hdr);
    view.set_src_port(src.1);
    view.set_dst_port(dst.1);
    view.set_len(udp_len as u16);
    view.set_checksum(0);
    let mut sum = pseudo_header(src.0, dst.0, 17, udp_len);
    // The payload is in guest memory, where smoltcp cannot sum it: the header is summed here
    // and the payload where it lies.
    let field = match csum {
        L4Csum::Partial => sum.fold(),
        L4Csum::Full(frame) => {
            sum.add(&hdr);
            frame.checksum(payload_offset, payload_len, &mut sum);
            // A computed zero is sent as all ones: zero means "no checksum" over IPv4 and is
            // invalid over IPv6.
            match sum.finish() {
                0 => 0xffff,
                c => c,
            }
        }
    };
    UdpPacket::new_unchecked(&mut hdr).set_checksum(field);
    hdr
}

/// The Ethernet, IP and UDP headers of a frame podwire builds around a UDP payload.
pub struct UdpFrameHeaders {
    l3: L3Header,
    udp: [u8; UDP_LEN],
}

impl UdpFrameHeaders {
    /// Writes the headers in front of the payload, which is already in `frame`.
    pub fn write_to(&self, frame: &mut SgList<'_>) -> bool {
        let l3 = self.l3.bytes();
        frame.write(0, l3) && frame.write(l3.len(), &self.udp)
    }
}

/// The headers (gateway → guest) of a UDP datagram of `len` payload bytes from `src` to `dst`
/// whose payload sits at [`udp_payload_offset`] of the frame `csum` may read it from.
pub fn udp_frame_headers(
    ep: &Endpoints,
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    len: usize,
    ident: u16,
    csum: L4Csum<'_, '_>,
) -> UdpFrameHeaders {
    let v6 = dst.0.is_ipv6();
    UdpFrameHeaders {
        l3: eth_ip_header(ep, src.0, dst.0, IpProtocol::Udp, UDP_LEN + len, ident),
        udp: udp_header(src, dst, csum, udp_payload_offset(v6), len),
    }
}

/// How the L4 checksum of a frame to the guest is filled in.
#[derive(Clone, Copy)]
pub enum L4Csum<'f, 'm> {
    /// Computed in full, over the payload where it lies in this frame.
    Full(&'f SgList<'m>),
    /// Only the pseudo-header sum, for a guest that negotiated GUEST_CSUM (the frame goes out
    /// with VIRTIO_NET_HDR_F_NEEDS_CSUM): the payload is never read.
    Partial,
}

/// Where the checksum of a UDP frame built by podwire sits, for `RxSink::push_partial`.
pub const fn udp_csum(v6: bool) -> PartialCsum {
    PartialCsum {
        start: l4_offset(v6) as u16,
        offset: 6,
    }
}

/// Where the checksum of a TCP frame built by podwire sits.
pub const fn tcp_csum(v6: bool) -> PartialCsum {
    PartialCsum {
        start: l4_offset(v6) as u16,
        offset: 16,
    }
}

pub const TCP_LEN: usize = 20;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// The fields of a TCP segment podwire sends to the guest.
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<'a> {
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Already padded to a multiple of 4 bytes (at most 40).
    pub options: &'a [u8],
}

/// Writes the TCP header of `seg` into `out` (returns its length), with a checksum covering
/// `frame[payload_offset..payload_offset + payload_len]`.
pub fn tcp_header(
    seg: &TcpSegment<'_>,
    csum: L4Csum<'_, '_>,
    payload_offset: usize,
    payload_len: usize,
    out: &mut [u8; 60],
) -> usize {
    let opt_len = seg.options.len().min(40) & !3;
    let hdr_len = TCP_LEN + opt_len;
    out[..hdr_len].fill(0);
    let mut view = TcpPacket::new_unchecked(&mut out[..hdr_len]);
    view.set_src_port(seg.src.1);
    view.set_dst_port(seg.dst.1);
    view.set_seq_number(TcpSeqNumber(seg.seq as i32));
    view.set_ack_number(TcpSeqNumber(seg.ack as i32));
    view.set_header_len(hdr_len as u8);
    set_tcp_flags(&mut view, seg.flags);
    view.set_window_len(seg.window);
    view.options_mut().copy_from_slice(&seg.options[..opt_len]);
    let mut sum = pseudo_header(seg.src.0, seg.dst.0, 6, hdr_len + payload_len);
    let field = match csum {
        L4Csum::Partial => sum.fold(),
        L4Csum::Full(frame) => {
            sum.add(&out[..hdr_len]);
            frame.checksum(payload_offset, payload_len, &mut sum);
            sum.finish()
        }
    };
    TcpPacket::new_unchecked(&mut out[..hdr_len]).set_checksum(field);
    hdr_len
}

/// Sets the eight flag bits of a TCP header (`TCP_FIN` .. CWR) from their wire byte.
fn set_tcp_flags<T: AsRef<[u8]> + AsMut<[u8]>>(view: &mut TcpPacket<T>, flags: u8) {
    view.clear_flags();
    view.set_fin(flags & TCP_FIN != 0);
    view.set_syn(flags & TCP_SYN != 0);
    view.set_rst(flags & TCP_RST != 0);
    view.set_psh(flags & TCP_PSH != 0);
    view.set_ack(flags & TCP_ACK != 0);
    view.set_urg(flags & 0x20 != 0);
    view.set_ece(flags & 0x40 != 0);
    view.set_cwr(flags & 0x80 != 0);
}

/// The eight flag bits of a TCP header as their wire byte (`TCP_FIN` .. CWR).
pub fn tcp_flags<T: AsRef<[u8]>>(view: &TcpPacket<T>) -> u8 {
    [
        (view.fin(), TCP_FIN),
        (view.syn(), TCP_SYN),
        (view.rst(), TCP_RST),
        (view.psh(), TCP_PSH),
        (view.ack(), TCP_ACK),
        (view.urg(), 0x20),
        (view.ece(), 0x40),
        (view.cwr(), 0x80),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .fold(0, |acc, (_, bit)| acc | bit)
}

/// The fixed UDP header fields of a guest datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpHeader {
    pub src_port: u16,
    pub dst_port: u16,
    /// The length field: header and payload.
    pub len: usize,
    pub checksum: u16,
}

impl UdpHeader {
    /// Reads the fixed header through smoltcp's view; the length field is the caller's to
    /// check against the packet.
    pub fn parse(hdr: &[u8; UDP_LEN]) -> UdpHeader {
        let view = UdpPacket::new_unchecked(&hdr[..]);
        UdpHeader {
            src_port: view.src_port(),
            dst_port: view.dst_port(),
            len: usize::from(view.len()),
            checksum: view.checksum(),
        }
    }
}

/// The fields of an ICMP or ICMPv6 echo header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoHeader {
    /// Whether the message is an echo request (type 8 or 128, code 0).
    pub is_request: bool,
    pub ident: u16,
    pub checksum: u16,
}

impl EchoHeader {
    /// Reads an ICMP (`v6` false) or ICMPv6 echo header through smoltcp's views.
    pub fn parse(hdr: &[u8; ICMP_LEN], v6: bool) -> EchoHeader {
        if v6 {
            let view = Icmpv6Packet::new_unchecked(&hdr[..]);
            EchoHeader {
                is_request: view.msg_type() == Icmpv6Message::EchoRequest && view.msg_code() == 0,
                ident: view.echo_ident(),
                checksum: view.checksum(),
            }
        } else {
            let view = Icmpv4Packet::new_unchecked(&hdr[..]);
            EchoHeader {
                is_request: view.msg_type() == Icmpv4Message::EchoRequest && view.msg_code() == 0,
                ident: view.echo_ident(),
                checksum: view.checksum(),
            }
        }
    }

    /// Writes `ident` and `checksum` into an echo header of either family.
    pub fn set_ident_and_checksum(hdr: &mut [u8; ICMP_LEN], ident: u16, checksum: u16) {
        // Both families put the identifier at bytes 4..6 and the checksum at 2..4.
        let mut view = Icmpv4Packet::new_unchecked(&mut hdr[..]);
        view.set_echo_ident(ident);
        view.set_checksum(checksum);
    }
}

/// Rewrites a 16-bit field covered by a checksum, updating the checksum (RFC 1624, eqn. 3).
pub fn adjust_checksum(csum: u16, old: u16, new: u16) -> u16 {
    let mut c = Checksum::new();
    c.add_u16(!csum);
    c.add_u16(!old);
    c.add_u16(new);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_checksum_matches_full_recompute() {
        let mut msg = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        let mut c = Checksum::new();
        c.add(&msg);
        let csum = c.finish();
        msg[2..4].copy_from_slice(&csum.to_be_bytes());
        let adjusted = adjust_checksum(csum, 0x1234, 0xbeef);
        msg[4..6].copy_from_slice(&0xbeefu16.to_be_bytes());
        msg[2..4].copy_from_slice(&[0, 0]);
        let mut full = Checksum::new();
        full.add(&msg);
        assert_eq!(adjusted, full.finish());
    }

    fn endpoints() -> Endpoints {
        Endpoints {
            guest_mac: [2, 0, 0, 0, 0, 2],
            gateway_mac: [2, 0, 0, 0, 0, 1],
            guest_ip: Ipv4Addr::new(10, 0, 2, 2),
            guest_ip6: "fd10:0:2::2".parse().unwrap(),
        }
    }

    /// A UDP frame gateway → guest with "hello", built the way the NAT builds them.
    fn udp_frame(src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let v6 = src.is_ipv6();
        let off = udp_payload_offset(v6);
        let mut frame = vec![0u8; off + 5];
        frame[off..].copy_from_slice(b"hello");
        let l3 = eth_ip_header(&endpoints(), src, dst, IpProtocol::Udp, UDP_LEN + 5, 7);
        frame[..l4_offset(v6)].copy_from_slice(l3.bytes());
        let udp = {
            let mut slices: [&mut [u8]; 1] = [&mut frame[..]];
            let sg = SgList::from_slices(&mut slices).unwrap();
            udp_header((src, 53), (dst, 40000), L4Csum::Full(&sg), off, 5)
        };
        frame[l4_offset(v6)..off].copy_from_slice(&udp);
        frame
    }

    #[test]
    fn ipv4_headers_parse_back_with_smoltcp() {
        let src = Ipv4Addr::new(198, 18, 1, 1);
        let dst = Ipv4Addr::new(10, 0, 2, 2);
        let frame = udp_frame(src.into(), dst.into());
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress(endpoints().guest_mac));
        assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let repr = Ipv4Repr::parse(&ip, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(repr.src_addr, src);
        let udp = smoltcp::wire::UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&src.into(), &dst.into()));
        assert_eq!(udp.payload(), b"hello");
    }

    #[test]
    fn ipv6_headers_parse_back_with_smoltcp() {
        let src: Ipv6Addr = "fd00:198:18:1::1".parse().unwrap();
        let dst: Ipv6Addr = "fd10:0:2::2".parse().unwrap();
        let frame = udp_frame(src.into(), dst.into());
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.ethertype(), EthernetProtocol::Ipv6);
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        let repr = Ipv6Repr::parse(&ip).unwrap();
        assert_eq!((repr.src_addr, repr.dst_addr), (src, dst));
        assert_eq!(repr.next_header, IpProtocol::Udp);
        assert_eq!(repr.payload_len, UDP_LEN + 5);
        let udp = smoltcp::wire::UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&src.into(), &dst.into()));
        assert_eq!(udp.payload(), b"hello");
    }

    #[test]
    fn tcp_headers_round_trip_through_smoltcp() {
        let seg = TcpSegment {
            src: (IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)), 443),
            dst: (IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)), 40000),
            seq: 0xfedc_ba98,
            ack: 7,
            flags: TCP_SYN | TCP_ACK | 0x80,
            window: 65535,
            options: &[2, 4, 0x05, 0xb4],
        };
        let mut out = [0u8; 60];
        let len = tcp_header(&seg, L4Csum::Partial, 0, 0, &mut out);
        assert_eq!(len, 24);
        let view = TcpPacket::new_checked(&out[..len]).unwrap();
        assert_eq!((view.src_port(), view.dst_port()), (443, 40000));
        assert_eq!(view.seq_number().0 as u32, 0xfedc_ba98);
        assert_eq!(view.ack_number().0, 7);
        assert!(view.syn() && view.ack() && view.cwr() && !view.fin());
        assert_eq!(tcp_flags(&view), seg.flags);
        assert_eq!(view.options(), &[2, 4, 0x05, 0xb4]);
        assert_eq!(view.header_len(), 24);
    }

    #[test]
    fn udp_and_echo_headers_parse_through_smoltcp_views() {
        let udp = [0x12, 0x34, 0, 53, 0, 20, 0xab, 0xcd];
        assert_eq!(
            UdpHeader::parse(&udp),
            UdpHeader {
                src_port: 0x1234,
                dst_port: 53,
                len: 20,
                checksum: 0xabcd
            }
        );
        let mut echo4 = [8, 0, 0x11, 0x22, 0xbe, 0xef, 0, 1];
        let e = EchoHeader::parse(&echo4, false);
        assert!(e.is_request);
        assert_eq!((e.ident, e.checksum), (0xbeef, 0x1122));
        assert!(
            !EchoHeader::parse(&echo4, true).is_request,
            "type 8 is not ICMPv6 echo"
        );
        let echo6 = [128, 0, 0, 0, 0, 9, 0, 1];
        assert!(EchoHeader::parse(&echo6, true).is_request);
        let bad_code = [128, 1, 0, 0, 0, 9, 0, 1];
        assert!(!EchoHeader::parse(&bad_code, true).is_request);
        EchoHeader::set_ident_and_checksum(&mut echo4, 0x0102, 0x0304);
        assert_eq!(echo4, [8, 0, 3, 4, 1, 2, 0, 1]);
    }

    #[test]
    fn mixed_families_do_not_panic() {
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
        let v6 = IpAddr::V6("fd10:0:2::2".parse().unwrap());
        let l3 = eth_ip_header(&endpoints(), v4, v6, IpProtocol::Udp, 8, 0);
        assert_eq!(l3.bytes().len(), ETH_LEN + IPV6_LEN);
    }
}
