//! Test helpers: guest TCP frames built, and podwire's frames parsed, with smoltcp (feature
//! `test-util`; for this crate's tests and the switch's).
//!
//! # Theory of operation
//!
//! A test plays the guest by hand. The frames it sends are built here with smoltcp, an
//! implementation of the wire format independent of podwire's own; the frames podwire
//! delivers are parsed back with it, and anything a guest would reject (a wrong address,
//! length or checksum) fails the test. Only IPv4 over Ethernet: the guest link's addresses
//! come from the [`Endpoints`] under test.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::wire::{Endpoints, IpInfo, ETH_LEN};

pub use crate::wire::TCP_SYN as SYN;
pub use crate::wire::{TCP_ACK as ACK, TCP_FIN as FIN, TCP_PSH as PSH, TCP_RST as RST};
pub use podwire_frame::testing::CaptureSink;

/// A TCP header from the guest, as smoltcp represents it.
#[allow(clippy::too_many_arguments)]
pub fn tcp_repr<'a>(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    control: TcpControl,
    window: u16,
    mss: Option<u16>,
    wscale: Option<u8>,
    payload: &'a [u8],
) -> TcpRepr<'a> {
    TcpRepr {
        src_port: sport,
        dst_port: dport,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: window,
        window_scale: wscale,
        max_seg_size: mss,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    }
}

/// `tcp` from the guest (`ep`'s guest addresses) to `dst` in an Ethernet/IPv4 frame to the
/// gateway, checksums filled in.
pub fn guest_tcp_frame(ep: &Endpoints, dst: Ipv4Addr, tcp: &TcpRepr<'_>) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: ep.guest_ip,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut f = vec![0u8; ETH_LEN + 20 + tcp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    EthernetRepr {
        src_addr: EthernetAddress(ep.guest_mac),
        dst_addr: EthernetAddress(ep.gateway_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let caps = ChecksumCapabilities::default();
    let mut ipp = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut ipp, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(ipp.payload_mut()),
        &ep.guest_ip.into(),
        &dst.into(),
        &caps,
    );
    f
}

/// What the switch would tell the NAT about an IPv4 frame built by [`guest_tcp_frame`].
pub fn ipv4_info(frame: &[u8]) -> IpInfo {
    let ip = Ipv4Packet::new_checked(&frame[ETH_LEN..]).expect("an IPv4 frame");
    let ihl = usize::from(ip.header_len());
    IpInfo {
        src: ip.src_addr().into(),
        dst: ip.dst_addr().into(),
        l4_offset: ETH_LEN + ihl,
        l4_len: usize::from(ip.total_len()) - ihl,
        partial_csum: false,
        udp_segment: None,
    }
}

/// A TCP segment from podwire, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seg {
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// The window field as sent (unscaled).
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub payload: Vec<u8>,
}

/// Parses a frame podwire delivered from `from` to the guest; anything a guest would reject
/// fails the test.
pub fn parse_seg(ep: &Endpoints, from: Ipv4Addr, f: &[u8]) -> Seg {
    let eth = EthernetFrame::new_checked(f).expect("Ethernet header");
    assert_eq!(
        eth.dst_addr(),
        EthernetAddress(ep.guest_mac),
        "to the guest"
    );
    assert_eq!(
        eth.src_addr(),
        EthernetAddress(ep.gateway_mac),
        "from the gateway"
    );
    assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
    let ip = Ipv4Packet::new_checked(eth.payload()).expect("IPv4 header");
    assert!(ip.verify_checksum(), "IPv4 header checksum");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (from, ep.guest_ip));
    assert_eq!(ip.next_header(), IpProtocol::Tcp);
    assert_eq!(
        usize::from(ip.total_len()),
        f.len() - ETH_LEN,
        "IP length = frame"
    );
    let tcp = TcpPacket::new_checked(ip.payload()).expect("TCP header");
    assert!(
        tcp.verify_checksum(&from.into(), &ep.guest_ip.into()),
        "TCP checksum"
    );
    let repr = TcpRepr::parse(
        &tcp,
        &from.into(),
        &ep.guest_ip.into(),
        &ChecksumCapabilities::default(),
    )
    .expect("a valid TCP segment");
    let flags = [
        (tcp.fin(), FIN),
        (tcp.syn(), SYN),
        (tcp.rst(), RST),
        (tcp.psh(), PSH),
        (tcp.ack(), ACK),
        (tcp.urg(), 0x20),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .fold(0, |f, (_, bit)| f | bit);
    Seg {
        sport: repr.src_port,
        dport: repr.dst_port,
        flags,
        seq: tcp.seq_number().0 as u32,
        ack: tcp.ack_number().0 as u32,
        window: tcp.window_len(),
        mss: repr.max_seg_size,
        wscale: repr.window_scale,
        payload: repr.payload.to_vec(),
    }
}
