//! TCP through the switch: what only the switch does with connections. The TCP translation's
//! own behaviour (options, windows, retransmission, a full RX ring, half-close, ACK policy,
//! expiry) is tested with the NAT, in `nat/tests/tcp.rs`.
//!
//! Also the guest TCP frame builders the switch's other tests share (the hardening and scale
//! tests), over [`podwire_nat::testing`] with the switch tests' addresses.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use podwire_frame::{NetHandler, SgList};
use podwire_nat::testing::{self, CaptureSink, Seg, ACK, RST, SYN};
use podwire_nat::wire::Endpoints;
use smoltcp::wire::{TcpControl, TcpRepr};

use crate::config::GATEWAY_MAC;
use crate::scale_tests::{config, flows, poll_fds, serial, GUEST_IP, GUEST_MAC, GW_IP};
use crate::switch::Switch;

/// How long any wait may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The guest link as the switch tests configure it.
const EP: Endpoints = Endpoints {
    guest_mac: GUEST_MAC,
    gateway_mac: GATEWAY_MAC,
    guest_ip: GUEST_IP,
    guest_ip6: std::net::Ipv6Addr::UNSPECIFIED,
};

/// A guest frame: Ethernet, IPv4 and TCP from the guest to the gateway.
#[allow(clippy::too_many_arguments)]
pub(crate) fn guest_frame(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    control: TcpControl,
    window: u16,
    mss: Option<u16>,
    wscale: Option<u8>,
    payload: &[u8],
) -> Vec<u8> {
    let tcp = testing::tcp_repr(
        sport, dport, seq, ack, control, window, mss, wscale, payload,
    );
    guest_tcp_frame(GW_IP, &tcp)
}

/// `tcp` from the guest to `dst` in an Ethernet/IPv4 frame, checksums filled in.
pub(crate) fn guest_tcp_frame(dst: Ipv4Addr, tcp: &TcpRepr<'_>) -> Vec<u8> {
    testing::guest_tcp_frame(&EP, dst, tcp)
}

/// Parses a frame the switch delivered from the gateway address.
fn parse(f: &[u8]) -> Seg {
    testing::parse_seg(&EP, GW_IP, f)
}

/// Waits until `fd` is readable, or fails the test at the deadline.
fn wait_fd(fd: RawFd, what: &str, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    assert!(poll_fds(&[fd], left), "{what}: nothing within {TIMEOUT:?}");
}

/// One TX batch of guest frames.
fn tx(sw: &mut Switch, rx: &mut CaptureSink, frames: &[Vec<u8>]) {
    for f in frames {
        let mut f = f.clone();
        let mut slices: [&mut [u8]; 1] = [&mut f[..]];
        let sg = SgList::from_slices(&mut slices).unwrap();
        sw.guest_frame(&sg, rx);
    }
    sw.tx_batch_done(rx);
}

/// After a migration the destination has none of the guest's sockets: each connection the
/// state lists is reset towards the guest, once, with the sequence numbers the guest expects
/// (so it is accepted at once rather than answered with a challenge ACK).
#[test]
fn migrated_connections_are_reset_towards_the_guest_once() {
    use crate::state::{State4, StateRepr, TcpRepr as ConnRepr};
    let mut sw = Switch::new(&config()).unwrap();
    let state = StateRepr {
        guest_mac: Some(GUEST_MAC),
        v4: Some(State4 {
            guest_ip: GUEST_IP,
            lease: None,
        }),
        tcp: vec![ConnRepr {
            guest: (GUEST_IP, 40000).into(),
            remote: (GW_IP, 7000).into(),
            seq_to_guest: 1000,
            ack_from_guest: 2000,
            repair: None,
        }],
        ..StateRepr::default()
    };
    sw.load_state(&state.emit()).unwrap();
    let mut rx = crate::tests::Captured::default();
    sw.poll_host(&mut rx);
    let segs: Vec<Seg> = rx.frames.iter().map(|f| parse(f)).collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    let rst = &segs[0];
    assert_eq!((rst.sport, rst.dport), (7000, 40000));
    assert_eq!((rst.flags, rst.seq, rst.ack), (RST | ACK, 1000, 2000));
    let mut again = crate::tests::Captured::default();
    sw.poll_host(&mut again);
    assert!(again.frames.is_empty(), "reset twice");
}

/// SIGTERM resets the guest's connections towards their peers, as the link going down does:
/// the pod side sees a reset, not a clean end of a stream that was cut short.
#[test]
fn sigterm_resets_the_connections_peers() {
    let _serial = serial();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut sw = Switch::new(&config()).unwrap();
    let mut rx = CaptureSink::default();
    let (sport, iss) = (47001, 1000u32);
    let syn = guest_frame(
        sport,
        port,
        iss,
        None,
        TcpControl::Syn,
        65535,
        Some(1460),
        None,
        &[],
    );
    tx(&mut sw, &mut rx, &[syn]);
    let deadline = Instant::now() + TIMEOUT;
    while rx.frames.is_empty() {
        wait_fd(sw.host_fd(), "SYN-ACK", deadline);
        sw.poll_host(&mut rx);
    }
    let syn_ack = parse(&rx.take()[0]);
    assert_eq!(syn_ack.flags, SYN | ACK, "{syn_ack:?}");
    wait_fd(listener.as_raw_fd(), "accept", deadline);
    let (mut pod, _) = listener.accept().unwrap();
    pod.set_nonblocking(true).unwrap();
    let ack = Some(syn_ack.seq.wrapping_add(1));
    let seq = iss.wrapping_add(1);
    let request = b"half a request";
    tx(
        &mut sw,
        &mut rx,
        &[
            guest_frame(
                sport,
                port,
                seq,
                ack,
                TcpControl::None,
                65535,
                None,
                None,
                &[],
            ),
            guest_frame(
                sport,
                port,
                seq,
                ack,
                TcpControl::Psh,
                65535,
                None,
                None,
                request,
            ),
        ],
    );
    crate::signals::terminate(&mut sw);
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    let err = loop {
        match pod.read(&mut buf) {
            Ok(0) => panic!("a clean end of stream after {got:?}, not a reset"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_fd(pod.as_raw_fd(), "reset", deadline);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert_eq!(flows(&sw), 0);
}
