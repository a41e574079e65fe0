//! Headers of the frames podwire writes into guest RX buffers, and the guest's L3 view.
//!
//! Frames towards the guest are built in place: the payload is already in guest memory (the
//! kernel put it there), so only the Ethernet, IPv4 and L4 headers are written here, on the
//! stack, and copied in front of it. The Ethernet and IPv4 headers are emitted with smoltcp's
//! wire types; L4 checksums are summed over the payload where it lies.

use std::net::Ipv4Addr;

use podwire_vhost::{Checksum, PartialCsum, SgList};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr,
};

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const ICMP_LEN: usize = 8;
/// Where a UDP payload starts in a frame podwire builds.
pub const UDP_PAYLOAD_OFFSET: usize = ETH_LEN + IPV4_LEN + UDP_LEN;
/// Where an ICMP message starts in a frame podwire builds.
pub const ICMP_OFFSET: usize = ETH_LEN + IPV4_LEN;

/// The guest's one link: its two link-layer addresses and the guest's current IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub guest_mac: [u8; 6],
    pub gateway_mac: [u8; 6],
    pub guest_ip: Ipv4Addr,
}

/// What the switch learned from a guest IPv4 header, for the L4 handlers.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Info {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Offset of the L4 header in the frame.
    pub l4_offset: usize,
    /// Bytes of L4 header and payload, from the IP total length (Ethernet padding excluded).
    pub l4_len: usize,
    /// The guest left the L4 checksum partial (it negotiated CSUM): do not verify it.
    pub partial_csum: bool,
}

/// Writes Ethernet + IPv4 headers (gateway → guest) for `payload_len` bytes of `proto`.
pub fn eth_ipv4_header(
    ep: &Endpoints,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    payload_len: usize,
    ident: u16,
) -> [u8; ETH_LEN + IPV4_LEN] {
    let mut hdr = [0u8; ETH_LEN + IPV4_LEN];
    let mut eth = EthernetFrame::new_unchecked(&mut hdr[..]);
    EthernetRepr {
        src_addr: EthernetAddress(ep.gateway_mac),
        dst_addr: EthernetAddress(ep.guest_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut ip = Ipv4Packet::new_unchecked(&mut hdr[ETH_LEN..]);
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
    hdr
}

/// The pseudo-header sum of an IPv4 L4 checksum.
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Checksum {
    let mut c = Checksum::new();
    c.add(&src.octets());
    c.add(&dst.octets());
    c.add_u16(u16::from(proto));
    c.add_u16(len as u16);
    c
}

/// A UDP header whose checksum covers `frame[payload_offset..payload_offset + payload_len]`.
pub fn udp_header(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    csum: L4Csum<'_, '_>,
    payload_offset: usize,
    payload_len: usize,
) -> [u8; UDP_LEN] {
    let udp_len = UDP_LEN + payload_len;
    let mut hdr = [0u8; UDP_LEN];
    hdr[0..2].copy_from_slice(&src.1.to_be_bytes());
    hdr[2..4].copy_from_slice(&dst.1.to_be_bytes());
    hdr[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let mut sum = pseudo_header(src.0, dst.0, 17, udp_len);
    let field = match csum {
        L4Csum::Partial => sum.fold(),
        L4Csum::Full(frame) => {
            sum.add(&hdr);
            frame.checksum(payload_offset, payload_len, &mut sum);
            // A computed zero is sent as all ones: zero means "no checksum" over IPv4.
            match sum.finish() {
                0 => 0xffff,
                c => c,
            }
        }
    };
    hdr[6..8].copy_from_slice(&field.to_be_bytes());
    hdr
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

/// Where the checksum of a UDP or TCP frame built by podwire sits, for `RxSink::push_partial`.
pub const UDP_CSUM: PartialCsum = PartialCsum {
    start: (ETH_LEN + IPV4_LEN) as u16,
    offset: 6,
};
pub const TCP_CSUM: PartialCsum = PartialCsum {
    start: (ETH_LEN + IPV4_LEN) as u16,
    offset: 16,
};

pub const TCP_LEN: usize = 20;
/// Where a TCP payload starts in a frame podwire builds (no TCP options on data segments).
pub const TCP_PAYLOAD_OFFSET: usize = ETH_LEN + IPV4_LEN + TCP_LEN;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// The fields of a TCP segment podwire sends to the guest.
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<'a> {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
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
    out[0..2].copy_from_slice(&seg.src.1.to_be_bytes());
    out[2..4].copy_from_slice(&seg.dst.1.to_be_bytes());
    out[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    out[8..12].copy_from_slice(&seg.ack.to_be_bytes());
    out[12] = ((hdr_len / 4) as u8) << 4;
    out[13] = seg.flags;
    out[14..16].copy_from_slice(&seg.window.to_be_bytes());
    out[TCP_LEN..hdr_len].copy_from_slice(&seg.options[..opt_len]);
    let mut sum = pseudo_header(seg.src.0, seg.dst.0, 6, hdr_len + payload_len);
    let field = match csum {
        L4Csum::Partial => sum.fold(),
        L4Csum::Full(frame) => {
            sum.add(&out[..hdr_len]);
            frame.checksum(payload_offset, payload_len, &mut sum);
            sum.finish()
        }
    };
    out[16..18].copy_from_slice(&field.to_be_bytes());
    hdr_len
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

    #[test]
    fn headers_parse_back_with_smoltcp() {
        let ep = Endpoints {
            guest_mac: [2, 0, 0, 0, 0, 2],
            gateway_mac: [2, 0, 0, 0, 0, 1],
            guest_ip: Ipv4Addr::new(10, 0, 2, 2),
        };
        let mut frame = [0u8; UDP_PAYLOAD_OFFSET + 5];
        frame[UDP_PAYLOAD_OFFSET..].copy_from_slice(b"hello");
        let src = Ipv4Addr::new(198, 18, 1, 1);
        let dst = Ipv4Addr::new(10, 0, 2, 2);
        let l3 = eth_ipv4_header(&ep, src, dst, IpProtocol::Udp, UDP_LEN + 5, 7);
        frame[..ICMP_OFFSET].copy_from_slice(&l3);
        let udp = {
            let mut slices: [&mut [u8]; 1] = [&mut frame[..]];
            let sg = SgList::from_slices(&mut slices).unwrap();
            udp_header(
                (src, 53),
                (dst, 40000),
                L4Csum::Full(&sg),
                UDP_PAYLOAD_OFFSET,
                5,
            )
        };
        frame[ICMP_OFFSET..UDP_PAYLOAD_OFFSET].copy_from_slice(&udp);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress(ep.guest_mac));
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let repr = Ipv4Repr::parse(&ip, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(repr.src_addr, src);
        let udp = smoltcp::wire::UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&src.into(), &dst.into()));
        assert_eq!(udp.payload(), b"hello");
    }
}
