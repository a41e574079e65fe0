//! What a hostile or broken guest must not get: the pod's loopback, spoofed sources, unbounded
//! pod resources, one log line per frame.
//!
//! Frames are built with smoltcp and fed through [`NetHandler::guest_frame`]; outcomes are read
//! from the status line's counters and flow count, and from sockets in the test's namespace.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use podwire_frame::NetHandler;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::config::GATEWAY_MAC;
use crate::scale_tests::{count, counters, flows, serial};
use crate::switch::Switch;
use crate::tests::{config, ipv4_udp, send, GUEST_IP, GUEST_MAC, GW_IP};

/// A guest TCP SYN from `sport` to `dst`.
fn syn_to(sport: u16, dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: sport,
        dst_port: dst.1,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 65535,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst.0,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut f = vec![0u8; 14 + 20 + tcp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(GATEWAY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let caps = ChecksumCapabilities::default();
    let mut ipp = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut ipp, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(ipp.payload_mut()),
        &GUEST_IP.into(),
        &dst.0.into(),
        &caps,
    );
    f
}

// ---------------------------------------------------------------------------------------------
// Loopback.

/// Datagrams and SYNs to the pod's loopback or unspecified address, addressed directly, open
/// no socket, with or without the gateway mapping: dropped and counted.
#[test]
fn guest_cannot_reach_pod_loopback_directly() {
    let _serial = serial();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uport = server.local_addr().unwrap().port();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = listener.local_addr().unwrap().port();
    for map_gateway in [true, false] {
        let mut sw = Switch::new(&crate::config::Config {
            map_gateway,
            ..config()
        })
        .unwrap();
        for dst in [
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(127, 1, 2, 3),
            Ipv4Addr::UNSPECIFIED,
        ] {
            send(&mut sw, &ipv4_udp((GUEST_IP, 40000), (dst, uport), b"x"));
            let rst = send(&mut sw, &syn_to(40001, (dst, tport)));
            assert_eq!(rst.frames.len(), 1, "the SYN to {dst} is refused");
        }
        assert_eq!(
            flows(&sw),
            0,
            "no socket opened (map_gateway {map_gateway})"
        );
        let c = counters(&sw);
        assert_eq!(count(&c, "nat_drop_loopback"), 3, "{c:?}");
        assert_eq!(count(&c, "tcp_drop_loopback"), 3, "{c:?}");
    }
    // The gateway address, mapped, still leads there (and only it).
    let mut sw = Switch::new(&config()).unwrap();
    send(&mut sw, &ipv4_udp((GUEST_IP, 40000), (GW_IP, uport), b"y"));
    assert_eq!(flows(&sw), 1);
}
