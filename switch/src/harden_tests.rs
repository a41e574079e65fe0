//! What a hostile or broken guest must not get: the pod's loopback, spoofed sources, unbounded
//! pod resources, one log line per frame.
//!
//! Frames are built with smoltcp and fed through [`NetHandler::guest_frame`]; outcomes are read
//! from the status line's counters and flow count, and from sockets in the test's namespace.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use podwire_frame::NetHandler;
use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};

use crate::scale_tests::{count, counters, flows, serial};
use crate::switch::Switch;
use crate::tests::{config, ipv4_udp, send, GUEST_IP, GW_IP};

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
    crate::tcp_tests::guest_tcp_frame(dst.0, &tcp)
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

// ---------------------------------------------------------------------------------------------
// Anti-spoofing and rate-limited logs.

/// Counts the lines logged while `f` runs (on this thread).
fn log_lines(f: impl FnOnce()) -> usize {
    use std::sync::{Arc, Mutex};
    let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || Writer(sink.clone()))
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = buf.lock().unwrap().clone();
    String::from_utf8_lossy(&text).lines().count()
}

struct Writer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `frame` with its Ethernet source replaced.
fn from_mac(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[6..12].copy_from_slice(&mac);
    frame
}

/// Once the guest's MAC is known, frames from any other source MAC are dropped and counted;
/// however many there are, they log a bounded number of lines.
#[test]
fn frames_from_another_source_mac_are_dropped_and_logged_rate_limited() {
    // The scale tests count the process's descriptors: never alongside them.
    let _serial = serial();
    let mut sw = Switch::new(&config()).unwrap();
    let lines = log_lines(|| {
        send(&mut sw, &crate::tests::arp_request(GUEST_IP, GW_IP));
        for i in 0..1000u16 {
            let mac = [0x52, 0x54, 0, 0xee, (i >> 8) as u8, i as u8];
            let arp = from_mac(crate::tests::arp_request(GUEST_IP, GW_IP), mac);
            assert!(
                send(&mut sw, &arp).frames.is_empty(),
                "no ARP reply to a spoofer"
            );
            let udp = from_mac(ipv4_udp((GUEST_IP, 40000), (GW_IP, 9), b"x"), mac);
            send(&mut sw, &udp);
        }
    });
    assert!(lines <= 20, "{lines} log lines for 2000 spoofed frames");
    let c = counters(&sw);
    assert_eq!(count(&c, "drop_spoofed_mac"), 2000, "{c:?}");
    assert_eq!(flows(&sw), 0);
    assert!(
        sw.status().contains("mac=52-54-00-12-34-56"),
        "{}",
        sw.status()
    );
}

/// With `--allow-guest-sources` the guest may change its MAC and its ARP sender address, as
/// before; the log stays bounded all the same.
#[test]
fn allow_guest_sources_relearns_but_logs_rate_limited() {
    // The scale tests count the process's descriptors: never alongside them.
    let _serial = serial();
    let mut sw = Switch::new(&crate::config::Config {
        allow_guest_sources: true,
        ..config()
    })
    .unwrap();
    let lines = log_lines(|| {
        for i in 0..1000u16 {
            let mac = [0x52, 0x54, 0, 0xee, (i >> 8) as u8, i as u8];
            let sender = Ipv4Addr::new(10, 0, 2, 10 + (i % 2) as u8);
            let arp = from_mac(crate::tests::arp_request(sender, GW_IP), mac);
            assert_eq!(send(&mut sw, &arp).frames.len(), 1);
        }
    });
    assert!(lines <= 20, "{lines} log lines for 1000 frames");
    assert_eq!(count(&counters(&sw), "drop_spoofed_mac"), 0);
}

/// IPv4 from an address the guest was not given is dropped and counted (DHCP's 0.0.0.0
/// excepted); ARP from such a sender does not change the guest's address.
#[test]
fn ipv4_from_an_address_the_guest_was_not_given_is_dropped() {
    // The scale tests count the process's descriptors: never alongside them.
    let _serial = serial();
    let mut sw = Switch::new(&config()).unwrap();
    let other = Ipv4Addr::new(10, 0, 2, 77);
    send(&mut sw, &crate::tests::arp_request(other, GW_IP));
    assert!(sw.status().contains("ip=10.0.2.2 "), "{}", sw.status());
    send(&mut sw, &ipv4_udp((other, 40000), (GW_IP, 9), b"x"));
    send(
        &mut sw,
        &ipv4_udp((Ipv4Addr::new(198, 18, 0, 9), 40000), (GW_IP, 9), b"x"),
    );
    send(&mut sw, &syn_to(40001, (GW_IP, 9)));
    assert_eq!(flows(&sw), 1, "only the guest's own SYN");
    let c = counters(&sw);
    assert_eq!(count(&c, "drop_spoofed_ipv4"), 3, "{c:?}");
    // Allowed, the same datagram is translated.
    let mut sw = Switch::new(&crate::config::Config {
        allow_guest_sources: true,
        ..config()
    })
    .unwrap();
    send(&mut sw, &ipv4_udp((other, 40000), (GW_IP, 9), b"x"));
    assert_eq!(flows(&sw), 1);
}

/// IPv6 from outside the guest's prefix (::1 included) is dropped and counted; an address in
/// its prefix (SLAAC, privacy addresses) is fine.
#[test]
fn ipv6_from_outside_the_guests_prefix_is_dropped() {
    // The scale tests count the process's descriptors: never alongside them.
    let _serial = serial();
    use crate::ipv6_tests::{dual_stack, udp6, GUEST6};
    let mut sw = Switch::new(&dual_stack()).unwrap();
    let far: std::net::Ipv6Addr = "fd00:198:18:1::1".parse().unwrap();
    for src in ["::1", "fd00:198:18::2", "2001:db8::5", "::ffff:10.0.2.2"] {
        let src: std::net::Ipv6Addr = src.parse().unwrap();
        send(&mut sw, &udp6((src, 40000), (far, 9), b"x"));
    }
    assert_eq!(flows(&sw), 0);
    assert_eq!(count(&counters(&sw), "drop_spoofed_ipv6"), 4);
    let slaac = std::net::Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0x42);
    send(&mut sw, &udp6((slaac, 40000), (far, 9), b"x"));
    send(&mut sw, &udp6((GUEST6, 40000), (far, 9), b"x"));
    assert_eq!(flows(&sw), 2);
}

// ---------------------------------------------------------------------------------------------
// Flow budgets and timeouts.

/// A TCP client of `port` on the pod's loopback, from source address `src`, connecting
/// without blocking.
fn client_from(src: Ipv4Addr, port: u16) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor owned at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let addr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = addr(src, 0);
        assert_eq!(
            libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len),
            0
        );
        let remote = addr(Ipv4Addr::LOCALHOST, port);
        libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        owned
    }
}

/// Runs the switch until its host fd stays quiet.
fn settle(sw: &mut Switch) -> Vec<Vec<u8>> {
    let mut rx = crate::tests::Captured::default();
    for _ in 0..1000 {
        sw.poll_host(&mut rx);
        if !crate::scale_tests::poll_fds(&[sw.host_fd()], std::time::Duration::from_millis(50)) {
            break;
        }
    }
    rx.frames
}

/// Remote peers filling the inbound budget of a forwarded port (one source at most its share)
/// leave the guest every connection of its own.
#[test]
fn remote_peers_filling_inbound_leave_the_guest_its_connections() {
    let _serial = serial();
    let fwd_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = config();
    c.max_flows = 16;
    c.tcp_forwards = vec![crate::config::Forwarding {
        forward: podwire_nat::ports::Forward {
            bind: Some(Ipv4Addr::LOCALHOST.into()),
            iface: None,
            host_port: fwd_port,
            guest_port: 80,
        },
        explicit: true,
    }];
    let mut sw = Switch::new(&c).unwrap();
    send(&mut sw, &crate::tests::arp_request(GUEST_IP, GW_IP));
    // 40 connection attempts from 8 addresses; the guest never answers them.
    let clients: Vec<_> = (0..40u8)
        .map(|i| client_from(Ipv4Addr::new(127, 0, 0, 10 + i % 8), fwd_port))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        settle(&mut sw);
        let c = counters(&sw);
        let seen = count(&c, "tcp_opened_from_pod") + count(&c, "tcp_drop_inbound_budget");
        if seen >= 40 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "accepts: {c:?}");
    }
    let inbound = flows(&sw);
    assert_eq!(inbound, 4, "a quarter of 16 for remote peers");
    // The guest opens as many connections as its share holds: none is refused.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let sport = server.local_addr().unwrap().port();
    for i in 0..12 {
        let got = send(&mut sw, &syn_to(41000 + i, (GW_IP, sport)));
        assert!(got.frames.is_empty(), "guest SYN {i} refused");
    }
    assert_eq!(flows(&sw), inbound + 12);
    let c = counters(&sw);
    assert_eq!(count(&c, "tcp_drop_table_full"), 0, "{c:?}");
    assert_eq!(count(&c, "tcp_drop_inbound_budget"), 36, "{c:?}");
    drop(clients);
}

/// Idle flows expire, each kind and state after its own timeout: UDP after 180 s, a TCP
/// handshake the guest never finishes after 10 s.
#[test]
fn idle_flows_expire() {
    let _serial = serial();
    let mut sw = Switch::new(&config()).unwrap();
    send(&mut sw, &crate::tests::arp_request(GUEST_IP, GW_IP));
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let start = std::time::Instant::now();
    send(&mut sw, &ipv4_udp((GUEST_IP, 40000), (GW_IP, 9), b"x"));
    send(&mut sw, &syn_to(40001, (GW_IP, port)));
    // The pod's connect completes; the guest never ACKs the SYN-ACK.
    let deadline = start + std::time::Duration::from_secs(10);
    while settle(&mut sw).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no SYN-ACK");
    }
    assert_eq!(flows(&sw), 2);
    let mut rx = crate::tests::Captured::default();
    let secs = std::time::Duration::from_secs;
    sw.expire_idle_at(start + secs(9), &mut rx);
    assert_eq!(flows(&sw), 2);
    sw.expire_idle_at(start + secs(60), &mut rx);
    assert_eq!(flows(&sw), 1, "the half-open connection expired");
    assert_eq!(rx.frames.len(), 1, "the guest gets a RST for it");
    sw.expire_idle_at(start + secs(179), &mut rx);
    assert_eq!(flows(&sw), 1);
    sw.expire_idle_at(start + secs(200), &mut rx);
    assert_eq!(flows(&sw), 0, "the UDP flow expired");
    assert_eq!(count(&counters(&sw), "nat_flows_expired"), 2);
}

// ---------------------------------------------------------------------------------------------
// UDP: the pod's port space and endpoint-dependent filtering.

/// A guest spraying datagrams from many source ports binds at most its datagram budget of
/// pod ports; the rest are dropped and counted, and its TCP connections still open.
#[test]
fn udp_source_port_spray_is_bounded() {
    let _serial = serial();
    let mut c = config();
    c.max_flows = 16;
    let mut sw = Switch::new(&c).unwrap();
    send(&mut sw, &crate::tests::arp_request(GUEST_IP, GW_IP));
    for sport in 0..20 {
        send(
            &mut sw,
            &ipv4_udp((GUEST_IP, 42000 + sport), (GW_IP, 9), b"x"),
        );
    }
    assert_eq!(flows(&sw), 6, "half of the guest's 12");
    assert_eq!(count(&counters(&sw), "nat_drop_datagram_budget"), 14);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    assert!(send(&mut sw, &syn_to(43000, (GW_IP, port)))
        .frames
        .is_empty());
    assert_eq!(flows(&sw), 7);
}

/// Replies reach a guest port only from an endpoint it sent to from that port: another peer
/// that learned the pod-side port cannot send into the flow.
#[test]
fn udp_replies_only_from_the_peer_the_guest_addressed() {
    let _serial = serial();
    let mut sw = Switch::new(&config()).unwrap();
    send(&mut sw, &crate::tests::arp_request(GUEST_IP, GW_IP));
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let port = server.local_addr().unwrap().port();
    send(
        &mut sw,
        &ipv4_udp((GUEST_IP, 44000), (GW_IP, port), b"query"),
    );
    let mut buf = [0u8; 16];
    let (_, flow_addr) = server.recv_from(&mut buf).unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"intrusion", flow_addr).unwrap();
    server.send_to(b"answer", flow_addr).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut got = Vec::new();
    while count(&counters(&sw), "nat_udp_in") + count(&counters(&sw), "nat_udp_drop_unsolicited")
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "{}", sw.status());
        got.extend(settle(&mut sw));
    }
    got.extend(settle(&mut sw));
    let payloads: Vec<_> = got.iter().map(|f| f[14 + 20 + 8..].to_vec()).collect();
    assert_eq!(payloads, vec![b"answer".to_vec()]);
    assert_eq!(count(&counters(&sw), "nat_udp_drop_unsolicited"), 1);
}
