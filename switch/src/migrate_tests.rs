//! Live migration of a guest TCP connection with its socket, between two switches in one
//! process: the guest is played by hand (frames built with smoltcp), the pod side is a
//! listener on 127.0.0.1 reached through the gateway address, and a repair helper
//! ([`podwire_repair::serve_helper`], the `podwire-repair` binary's loop) runs on a thread
//! of its own, which needs CAP_NET_ADMIN: the tests skip, saying so, when not run as root.
//!
//! What must hold: the pod's peer never notices (every byte once, in order, no FIN, no
//! RST), and the guest goes on with the same sequence numbers on the destination — the
//! bytes it already had are not sent again, the ones the source had not sent yet are.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use podwire_frame::NetHandler;
use podwire_repair::RepairChannel;
use smoltcp::wire::{EthernetFrame, IpProtocol, Ipv4Packet, TcpControl, TcpPacket};

use crate::scale_tests::{poll_fds, serial};
use crate::switch::Switch;
use crate::tests::{config, send, Captured, GUEST_IP, GW_IP};

const TIMEOUT: Duration = Duration::from_secs(5);
const GUEST_PORT: u16 = 40123;
/// The guest's initial sequence number.
const ISS: u32 = 1000;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A repair channel at a fresh path with an in-process helper connected to it.
fn channel_with_helper(name: &str) -> RepairChannel {
    let dir = std::env::temp_dir().join(format!("podwire-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.sock.repair"));
    let mut channel = RepairChannel::bind(&path).unwrap();
    let mut stream = UnixStream::connect(&path).unwrap();
    std::thread::spawn(move || podwire_repair::serve_helper(&mut stream));
    assert!(channel.wait_for_helper(TIMEOUT).unwrap());
    channel
}

/// A guest TCP segment to the gateway's `port` (a SYN offers MSS 1460 and window scale 7).
fn guest_segment(
    port: u16,
    seq: u32,
    ack: Option<u32>,
    control: TcpControl,
    data: &[u8],
) -> Vec<u8> {
    let syn = control == TcpControl::Syn;
    crate::tcp_tests::guest_frame(
        GUEST_PORT,
        port,
        seq,
        ack,
        control,
        65535,
        syn.then_some(1460),
        syn.then_some(7),
        data,
    )
}

/// (seq, ack, syn, fin, rst, payload) of a TCP frame to the guest.
fn segment_of(frame: &[u8]) -> (u32, u32, bool, bool, bool, Vec<u8>) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::Tcp);
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(tcp.verify_checksum(&GW_IP.into(), &GUEST_IP.into()));
    (
        tcp.seq_number().0 as u32,
        tcp.ack_number().0 as u32,
        tcp.syn(),
        tcp.fin(),
        tcp.rst(),
        tcp.payload().to_vec(),
    )
}

/// Runs the switch's host side until the guest got a frame (or the deadline passed).
fn poll_for_frames(sw: &mut Switch) -> Captured {
    let deadline = Instant::now() + TIMEOUT;
    let mut rx = Captured::default();
    while rx.frames.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(poll_fds(&[sw.host_fd()], left), "nothing for the guest");
        sw.poll_host(&mut rx);
    }
    rx
}

/// Waits until the pod's socket has no unacknowledged bytes: they are in the switch's socket.
fn wait_delivered(s: &TcpStream) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes an int.
        assert_eq!(
            unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) },
            0
        );
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the switch's socket never took the data"
        );
        std::thread::yield_now();
    }
}

fn pod_read(s: &mut TcpStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).unwrap();
    got
}

/// An established guest connection on `sw` to the listener; returns the pod's end and the
/// sequence number of the first byte towards the guest.
fn connect(sw: &mut Switch, listener: &TcpListener) -> (TcpStream, u32) {
    let port = listener.local_addr().unwrap().port();
    let syn = guest_segment(port, ISS, None, TcpControl::Syn, &[]);
    let rx = send(sw, &syn);
    assert!(rx.frames.is_empty(), "SYN-ACK only once connected");
    let rx = poll_for_frames(sw);
    let (seq, ack, syn, ..) = segment_of(&rx.frames[0]);
    assert!(syn && ack == ISS + 1);
    send(
        sw,
        &guest_segment(port, ISS + 1, Some(seq + 1), TcpControl::None, &[]),
    );
    let (pod, _) = listener.accept().unwrap();
    (pod, seq + 1)
}

#[test]
fn an_established_connection_moves_with_its_socket_and_the_peer_never_notices() {
    let _serial = serial();
    let Some((listener, mut src, mut pod, first)) = source_with_connection("src") else {
        return;
    };
    let port = listener.local_addr().unwrap().port();

    // The guest sends; the pod answers "world", which the guest gets and does not
    // acknowledge yet, then "more-data", which the source never sends to the guest.
    send(
        &mut src,
        &guest_segment(port, ISS + 1, Some(first), TcpControl::Psh, b"hello"),
    );
    assert_eq!(pod_read(&mut pod, 5), b"hello");
    pod.write_all(b"world").unwrap();
    let rx = poll_for_frames(&mut src);
    let (seq, ack, .., data) = segment_of(&rx.frames[0]);
    assert_eq!((seq, ack, data.as_slice()), (first, ISS + 6, &b"world"[..]));
    pod.write_all(b"more-data").unwrap();
    wait_delivered(&pod);

    let state = src.save_state().unwrap();
    assert!(src.status().contains("flows=0"), "{}", src.status());

    let mut dst = Switch::new(&config()).unwrap();
    dst.set_repair_channel(channel_with_helper("dst"));
    dst.load_state(&state).unwrap();
    assert!(dst.status().contains("flows=1"), "{}", dst.status());
    // The guest acknowledges "world" on the destination, which then sends what the source
    // had not: from the next byte, nothing twice.
    let rx = send(
        &mut dst,
        &guest_segment(port, ISS + 6, Some(first + 5), TcpControl::None, &[]),
    );
    let mut to_guest = Vec::new();
    let mut next = first + 5;
    for f in &rx.frames {
        let (seq, ack, syn, fin, rst, data) = segment_of(f);
        assert!(!syn && !fin && !rst, "only data and ACKs");
        assert_eq!(ack, ISS + 6);
        if !data.is_empty() {
            assert_eq!(seq, next, "in sequence, nothing resent");
            next += data.len() as u32;
            to_guest.extend_from_slice(&data);
        }
    }
    assert_eq!(to_guest, b"more-data");
    // And the guest's next bytes reach the same peer, right after "hello".
    send(
        &mut dst,
        &guest_segment(port, ISS + 6, Some(next), TcpControl::Psh, b"again"),
    );
    assert_eq!(pod_read(&mut pod, 5), b"again");
    pod.write_all(b"last").unwrap();
    let rx = poll_for_frames(&mut dst);
    let (seq, .., data) = segment_of(&rx.frames[0]);
    assert_eq!((seq, data.as_slice()), (next, &b"last"[..]));
}

/// The guest's connection as reset by the destination: its first frame after the load is a RST
/// at the guest's next sequence number `first`.
fn assert_reset_towards_guest(dst: &mut Switch, first: u32) {
    let mut rx = Captured::default();
    dst.poll_host(&mut rx);
    let (seq, .., rst, _) = segment_of(&rx.frames[0]);
    assert!(rst);
    assert_eq!(seq, first);
}

/// A source switch served by a repair helper (named `helper`) with one established guest
/// connection to a pod listener; `None`, and the test skipped, unless run as root.
fn source_with_connection(helper: &str) -> Option<(TcpListener, Switch, TcpStream, u32)> {
    if !is_root() {
        eprintln!("SKIP: the repair helper needs CAP_NET_ADMIN; run as root");
        return None;
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut src = Switch::new(&config()).unwrap();
    src.set_repair_channel(channel_with_helper(helper));
    let (pod, first) = connect(&mut src, &listener);
    Some((listener, src, pod, first))
}

/// Without a helper on the destination, the connection cannot be rebuilt there: the guest's
/// side is reset at once rather than left hanging.
#[test]
fn without_a_helper_on_the_destination_the_guest_connection_is_reset() {
    let _serial = serial();
    let Some((_listener, mut src, _pod, first)) = source_with_connection("src-alone") else {
        return;
    };
    let state = src.save_state().unwrap();

    let mut dst = Switch::new(&config()).unwrap();
    dst.load_state(&state).unwrap();
    assert_reset_towards_guest(&mut dst, first);
}

/// A destination pod with another address: the dumped socket cannot be bound there, so the
/// connection is reset towards the guest, helper or not.
#[test]
fn a_socket_whose_address_the_destination_lacks_is_reset() {
    let _serial = serial();
    let Some((_listener, mut src, _pod, first)) = source_with_connection("src-moved") else {
        return;
    };
    let mut state = crate::state::StateRepr::parse(&src.save_state().unwrap()).unwrap();
    let repair = state.tcp[0].repair.as_mut().expect("the socket travels");
    // An address of the test range no interface here has.
    repair
        .socket
        .local
        .set_ip(Ipv4Addr::new(198, 18, 99, 99).into());

    let mut dst = Switch::new(&config()).unwrap();
    dst.set_repair_channel(channel_with_helper("dst-moved"));
    dst.load_state(&state.emit()).unwrap();
    assert!(dst.status().contains("flows=0"), "{}", dst.status());
    assert_reset_towards_guest(&mut dst, first);
}
