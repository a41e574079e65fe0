//! TCP frames written towards the guest.
//!
//! # Theory of operation
//!
//! Every frame carries the connection's remote end as its source and the guest as its
//! destination (see [`ConnKey`]). Two shapes:
//!
//! - **data**: [`write_data_headers`] writes the Ethernet, IP and TCP headers in front of
//!   payload the socket already peeked into the guest's buffer, checksumming that payload in
//!   place (or leaving a partial checksum for a guest that takes one). No payload is copied.
//! - **control** (SYN, SYN-ACK, ACK, FIN, RST, and the ICMP error for an unreachable peer):
//!   built whole on the stack and written into one guest buffer ([`send_control`]).
//!
//! A send returns false when the guest had no RX buffer: the caller decides whether the
//! segment is owed (a SYN, an ACK) or simply lost (a RST, which the guest's next segment
//! draws again).

use podwire_frame::{Checksum, RxSink, SgList};
use smoltcp::wire::IpProtocol;

use super::conn::{ConnKey, OUR_WSCALE};
use crate::wire::{
    self, Endpoints, L4Csum, ETH_LEN, IPV6_LEN, MAX_L3_LEN, TCP_ACK, TCP_LEN, TCP_RST, TCP_SYN,
};

/// Writes the headers of a data segment of `payload_len` bytes already in `frame` after them.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_data_headers(
    frame: &mut SgList<'_>,
    ep: &Endpoints,
    key: ConnKey,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    payload_len: usize,
    partial_csum: bool,
) {
    let seg = wire::TcpSegment {
        src: (key.remote_ip, key.remote_port),
        dst: (key.guest_ip, key.guest_port),
        seq,
        ack,
        flags,
        window,
        options: &[],
    };
    let mut tcp = [0u8; 60];
    let csum = if partial_csum {
        L4Csum::Partial
    } else {
        L4Csum::Full(frame)
    };
    let payload_offset = wire::tcp_payload_offset(key.v6());
    let tcp_len = wire::tcp_header(&seg, csum, payload_offset, payload_len, &mut tcp);
    let l3 = wire::eth_ip_header(
        ep,
        key.remote_ip,
        key.guest_ip,
        IpProtocol::Tcp,
        tcp_len + payload_len,
        0,
    );
    frame.write(0, l3.bytes());
    frame.write(l3.bytes().len(), &tcp[..tcp_len]);
}

/// Sends a segment without payload; false if the guest had no RX buffer.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_control(
    rx: &mut dyn RxSink,
    ep: &Endpoints,
    key: ConnKey,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &[u8],
) -> bool {
    let seg = wire::TcpSegment {
        src: (key.remote_ip, key.remote_port),
        dst: (key.guest_ip, key.guest_port),
        seq,
        ack,
        flags,
        window,
        options,
    };
    let mut tcp = [0u8; 60];
    let empty = SgList::new();
    let tcp_len = wire::tcp_header(&seg, L4Csum::Full(&empty), 0, 0, &mut tcp);
    let l3 = wire::eth_ip_header(ep, key.remote_ip, key.guest_ip, IpProtocol::Tcp, tcp_len, 0);
    let mut frame = [0u8; MAX_L3_LEN + 60];
    let l3_len = l3.bytes().len();
    frame[..l3_len].copy_from_slice(l3.bytes());
    frame[l3_len..l3_len + tcp_len].copy_from_slice(&tcp[..tcp_len]);
    let len = l3_len + tcp_len;
    rx.push(len, &mut |buf| buf.write(0, &frame[..len]).then_some(len))
        .is_ok()
}

/// The handshake segment: a SYN (`inbound`: the connection came from the pod) or a SYN-ACK
/// acknowledging `ack`, from `iss`, with our MSS (`mss`) and, when the guest is offered or
/// offers window scaling, our window scale. The window in a SYN is never scaled.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_syn(
    rx: &mut dyn RxSink,
    ep: &Endpoints,
    key: ConnKey,
    iss: u32,
    ack: u32,
    inbound: bool,
    mss: u16,
    wscale: bool,
) -> bool {
    let mut opts = [0u8; 8];
    opts[..4].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
    let mut len = 4;
    if inbound || wscale {
        opts[4..8].copy_from_slice(&[1, 3, 3, OUR_WSCALE]);
        len = 8;
    }
    let (ack, flags) = if inbound {
        (0, TCP_SYN)
    } else {
        (ack, TCP_SYN | TCP_ACK)
    };
    send_control(rx, ep, key, iss, ack, flags, u16::MAX, &opts[..len])
}

/// Answers a guest SYN with RST|ACK (RFC 9293 3.10.7.1: acknowledging the SYN).
pub(super) fn reset_syn(rx: &mut dyn RxSink, ep: &Endpoints, key: ConnKey, syn_seq: u32) {
    let ack = syn_seq.wrapping_add(1);
    send_control(rx, ep, key, 0, ack, TCP_RST | TCP_ACK, 0, &[]);
}

/// Tells the guest its connection attempt failed: RST for a refusal, ICMP host unreachable
/// (ICMPv6 address unreachable) for routing failures and time-outs, what a router would say.
pub(super) fn refuse(rx: &mut dyn RxSink, ep: &Endpoints, key: ConnKey, syn_seq: u32, errno: i32) {
    let unreachable = matches!(
        errno,
        libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ETIMEDOUT | libc::EHOSTDOWN
    );
    if unreachable {
        send_unreachable(rx, ep, key, syn_seq);
    } else {
        reset_syn(rx, ep, key, syn_seq);
    }
}

/// The ICMP error for a guest SYN whose peer cannot be reached.
fn send_unreachable(rx: &mut dyn RxSink, ep: &Endpoints, key: ConnKey, syn_seq: u32) {
    let v6 = key.v6();
    let ip_len = wire::ip_len(v6);
    // The error quotes the guest's IP header and the first 8 bytes of its SYN.
    let quoted_hdr =
        wire::eth_ip_header(ep, key.guest_ip, key.remote_ip, IpProtocol::Tcp, TCP_LEN, 0);
    let mut icmp = [0u8; 8 + IPV6_LEN + 8];
    let icmp_len = 8 + ip_len + 8;
    // Destination unreachable: IPv4 type 3 code 1 (host), IPv6 type 1 code 3 (address).
    (icmp[0], icmp[1]) = if v6 { (1, 3) } else { (3, 1) };
    icmp[8..8 + ip_len].copy_from_slice(&quoted_hdr.bytes()[ETH_LEN..]);
    let l4 = 8 + ip_len;
    icmp[l4..l4 + 2].copy_from_slice(&key.guest_port.to_be_bytes());
    icmp[l4 + 2..l4 + 4].copy_from_slice(&key.remote_port.to_be_bytes());
    icmp[l4 + 4..l4 + 8].copy_from_slice(&syn_seq.to_be_bytes());
    let mut sum = if v6 {
        wire::pseudo_header(key.remote_ip, key.guest_ip, 58, icmp_len)
    } else {
        Checksum::new()
    };
    sum.add(&icmp[..icmp_len]);
    icmp[2..4].copy_from_slice(&sum.finish().to_be_bytes());
    // Sent from the unreachable host's own address: the guest matches the error to its
    // connection by the quoted header, whatever the source.
    let proto = if v6 {
        IpProtocol::Icmpv6
    } else {
        IpProtocol::Icmp
    };
    let l3 = wire::eth_ip_header(ep, key.remote_ip, key.guest_ip, proto, icmp_len, 0);
    let mut frame = [0u8; MAX_L3_LEN + 8 + IPV6_LEN + 8];
    let l3_len = l3.bytes().len();
    frame[..l3_len].copy_from_slice(l3.bytes());
    frame[l3_len..l3_len + icmp_len].copy_from_slice(&icmp[..icmp_len]);
    let len = l3_len + icmp_len;
    let _ = rx.push(len, &mut |buf| buf.write(0, &frame[..len]).then_some(len));
}
