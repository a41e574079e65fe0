//! Frame-level tests of podwire's TCP translation, one behaviour at a time: options, windows,
//! retransmission, a full guest RX ring, keepalives, half-close, delayed ACKs, expiry.
//!
//! The test plays the guest by hand against the NAT alone, through its own API: every frame it
//! sends is built with smoltcp (an independent implementation of the wire format, see
//! [`podwire_nat::testing`]) and fed through [`Nat::guest_tcp`] in TX batches closed by
//! [`Nat::flush`]; every frame podwire delivers to the test's RX ring ([`CaptureSink`]) is
//! parsed and checked (addresses, checksums, flags, exact sequence and acknowledgement numbers).
//! Socket events reach the NAT through [`Nat::poll`] once [`Nat::poll_fd`] is readable. The pod
//! side is a listener on 127.0.0.1, reached through the gateway address. The retransmission
//! timer is driven with a synthetic time ([`Nat::tick_at`]), so no test waits for it; every
//! wait is a poll(2) with a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use podwire_frame::{CounterSet, SgList};
use podwire_nat::testing::{
    guest_tcp_frame, ipv4_info, parse_seg, tcp_repr, CaptureSink, Seg, ACK, FIN, PSH, SYN,
};
use podwire_nat::wire::Endpoints;
use podwire_nat::{AddrMap, MapRule, Nat, NatConfig};
use smoltcp::wire::TcpControl;

/// The guest's addresses and the gateway's.
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const EP: Endpoints = Endpoints {
    guest_mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
    gateway_mac: [0x52, 0x54, 0x00, 0x00, 0x00, 0x01],
    guest_ip: GUEST_IP,
    guest_ip6: Ipv6Addr::UNSPECIFIED,
};

/// The MSS podwire offers for the configured guest MTU of 1500 (1500 − 20 − 20).
const OUR_MSS: u16 = 1460;
/// The window scale podwire answers a guest's window scale with.
const OUR_WSCALE: u8 = 7;
/// The MSS a guest that sends no MSS option gets (RFC 9293 3.7.1).
const DEFAULT_MSS: usize = 536;
/// podwire's initial retransmission timeout.
const RTO: Duration = Duration::from_secs(1);
/// How long any wait may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Frames.

/// A guest frame: Ethernet, IPv4 and TCP from the guest to the gateway.
#[allow(clippy::too_many_arguments)]
fn guest_frame(
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
    let tcp = tcp_repr(
        sport, dport, seq, ack, control, window, mss, wscale, payload,
    );
    guest_tcp_frame(&EP, GW_IP, &tcp)
}

/// Parses a frame podwire delivered from the gateway address.
fn parse(f: &[u8]) -> Seg {
    parse_seg(&EP, GW_IP, f)
}

/// Waits up to `timeout` for `fd` to be readable.
fn poll_fd(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) > 0 }
}

/// Bytes that show where in a stream they came from.
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

fn lens(segs: &[Seg]) -> Vec<usize> {
    segs.iter().map(|s| s.payload.len()).collect()
}

fn payload_bytes(segs: &[Seg]) -> usize {
    segs.iter().map(|s| s.payload.len()).sum()
}

/// `[full; n]` followed by the remainder: how `total` bytes are cut into `mss`-sized segments.
fn cut(total: usize, mss: usize) -> Vec<usize> {
    let mut v = vec![mss; total / mss];
    let rest = total - v.len() * mss;
    if rest > 0 {
        v.push(rest);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The pod side.

/// Waits until `fd` is readable, or fails the test at the deadline.
fn wait_fd(fd: RawFd, what: &str, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    assert!(poll_fd(fd, left), "{what}: nothing within {TIMEOUT:?}");
}

/// Bytes the pod's socket has sent that its peer (podwire's socket) has not acknowledged.
fn unacked(s: &TcpStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes an int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0);
    n
}

/// Writes `data` from the pod and waits until all of it is in podwire's socket (acknowledged by
/// its kernel), so that what podwire sends next does not depend on timing.
fn pod_write(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    // Loopback delivers within the write or just after it: a short spin, not a wait.
    while unacked(s) > 0 {
        assert!(
            Instant::now() < deadline,
            "podwire's socket never took the data"
        );
        std::thread::yield_now();
    }
}

/// Reads from the pod's stream until `n` bytes or end of file; `eof` says whether it came.
fn pod_read(s: &mut TcpStream, n: usize) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < n {
        wait_fd(s.as_raw_fd(), "pod read", deadline);
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("pod read: {e}"),
        }
    }
    (got, false)
}

/// Send buffer podwire's sockets end up with: podwire asks for 2 MiB, the kernel doubles what
/// `wmem_max` allows. The window podwire offers is what is free in it.
fn podwire_sndbuf() -> u32 {
    let s = TcpStream::connect(
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap(),
    )
    .unwrap();
    let fd = s.as_raw_fd();
    let want: libc::c_int = 2 * 1024 * 1024;
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid int option values and out-parameters.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&want as *const libc::c_int).cast(),
            len,
        );
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        );
    }
    got as u32
}

// ---------------------------------------------------------------------------------------------
// The rig: the NAT, the pod's listener, the guest's RX ring.

struct Rig {
    nat: Nat,
    listener: TcpListener,
    port: u16,
    sink: CaptureSink,
}

/// SYN options of a guest connection.
#[derive(Clone, Copy)]
struct SynOpts {
    mss: Option<u16>,
    wscale: Option<u8>,
}

/// One guest connection, from the guest's side.
struct Conn {
    sport: u16,
    dport: u16,
    /// The window field the guest advertises.
    window: u16,
    /// The guest's next sequence number.
    snd_nxt: u32,
    /// podwire's initial sequence number.
    irs: u32,
    /// The next sequence number the guest expects from podwire.
    rcv_nxt: u32,
    /// The pod's end of the connection.
    pod: TcpStream,
}

impl Conn {
    fn frame(&self, seq: u32, control: TcpControl, payload: &[u8]) -> Vec<u8> {
        guest_frame(
            self.sport,
            self.dport,
            seq,
            Some(self.rcv_nxt),
            control,
            self.window,
            None,
            None,
            payload,
        )
    }

    /// A pure ACK of everything received so far, with the current window.
    fn ack(&self) -> Vec<u8> {
        self.frame(self.snd_nxt, TcpControl::None, &[])
    }

    /// A pure ACK of `ack` (which may be less than what was received).
    fn ack_of(&self, ack: u32) -> Vec<u8> {
        guest_frame(
            self.sport,
            self.dport,
            self.snd_nxt,
            Some(ack),
            TcpControl::None,
            self.window,
            None,
            None,
            &[],
        )
    }

    fn data(&mut self, payload: &[u8]) -> Vec<u8> {
        let seq = self.snd_nxt;
        self.snd_nxt = seq.wrapping_add(payload.len() as u32);
        self.frame(seq, TcpControl::Psh, payload)
    }

    fn fin(&mut self, payload: &[u8]) -> Vec<u8> {
        let seq = self.snd_nxt;
        self.snd_nxt = seq.wrapping_add(payload.len() as u32 + 1);
        self.frame(seq, TcpControl::Fin, payload)
    }

    /// Takes in podwire's data segments: each must continue the stream exactly where the last
    /// ended and acknowledge everything the guest sent. Returns the payload.
    fn receive(&mut self, segs: &[Seg]) -> Vec<u8> {
        let mut data = Vec::new();
        for s in segs {
            assert_eq!((s.sport, s.dport), (self.dport, self.sport), "{s:?}");
            assert_eq!(s.flags, ACK | PSH, "a data segment: {s:?}");
            assert!(!s.payload.is_empty(), "{s:?}");
            assert_eq!(s.seq, self.rcv_nxt, "continues the stream");
            assert_eq!(s.ack, self.snd_nxt, "acknowledges the guest's data");
            data.extend_from_slice(&s.payload);
            self.rcv_nxt = self.rcv_nxt.wrapping_add(s.payload.len() as u32);
        }
        data
    }

    /// podwire's sequence number `n` bytes into its stream.
    fn at(&self, n: usize) -> u32 {
        self.irs.wrapping_add(1).wrapping_add(n as u32)
    }
}

impl Rig {
    fn new() -> Rig {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        // The gateway address stands for the pod's loopback, as podwire configures it.
        let map = AddrMap::new(vec![MapRule {
            guest: IpAddr::V4(GW_IP),
            port: None,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }]);
        let config = NatConfig {
            map,
            ..NatConfig::default()
        };
        Rig {
            nat: Nat::new(config).unwrap(),
            listener,
            port,
            sink: CaptureSink::default(),
        }
    }

    fn take(&mut self) -> Vec<Seg> {
        self.sink.frames.drain(..).map(|f| parse(&f)).collect()
    }

    /// One TX batch of guest frames; returns what podwire delivered meanwhile.
    fn tx(&mut self, frames: &[Vec<u8>]) -> Vec<Seg> {
        let mut frames = frames.to_vec();
        for f in &mut frames {
            let ip = ipv4_info(f);
            let mut slices: [&mut [u8]; 1] = [&mut f[..]];
            let sg = SgList::from_slices(&mut slices).unwrap();
            self.nat.guest_tcp(&ip, &sg, &mut self.sink, &EP);
        }
        self.nat.flush(&mut self.sink, &EP);
        self.take()
    }

    /// Runs `poll_host` once, and again while the host fd is readable.
    fn poll(&mut self) -> Vec<Seg> {
        for _ in 0..1000 {
            self.nat.poll(&mut self.sink, &EP);
            if !poll_fd(self.nat.poll_fd(), Duration::ZERO) {
                break;
            }
        }
        self.take()
    }

    /// Polls podwire, waiting on its fd, until `done` holds for what it delivered.
    fn wait(&mut self, what: &str, mut done: impl FnMut(&[Seg]) -> bool) -> Vec<Seg> {
        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        loop {
            got.extend(self.poll());
            if done(&got) {
                return got;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "{what}: not within {TIMEOUT:?}; got {got:?}; podwire: {}",
                self.status()
            );
            poll_fd(self.nat.poll_fd(), deadline - now);
        }
    }

    /// Runs podwire's timers as if the time were `now`.
    fn tick_at(&mut self, now: Instant) -> Vec<Seg> {
        self.nat.tick_at(now, &mut self.sink, &EP);
        self.take()
    }

    /// Closes the flows idle at `now` (what the NAT's once-a-second sweep does).
    fn expire_idle_at(&mut self, now: Instant) {
        self.nat.expire_idle(now, &mut self.sink, &EP);
    }

    fn flows(&self) -> usize {
        self.nat.flow_count()
    }

    /// The NAT's counters, as podwire's status line names them (`tcp_retransmits`...).
    fn counter(&self, name: &str) -> u64 {
        let sets: [(&str, &dyn CounterSet); 2] = [
            ("tcp_", &self.nat.tcp.counters),
            ("nat_", &self.nat.counters),
        ];
        let mut found = None;
        for (prefix, set) in sets {
            let Some(field) = name.strip_prefix(prefix) else {
                continue;
            };
            set.visit(&mut |desc, value| {
                if desc.name == field {
                    found = Some(value);
                }
            });
        }
        found.unwrap_or_else(|| panic!("no counter {name}"))
    }

    fn status(&self) -> String {
        podwire_frame::summary_of(&[("tcp", &self.nat.tcp.counters), ("nat", &self.nat.counters)])
    }

    /// Opens a connection from guest port `sport` to the pod's listener: SYN (window 65535,
    /// `opts`), SYN-ACK, ACK with `window`. Returns it with podwire's SYN-ACK.
    fn connect(&mut self, sport: u16, opts: SynOpts, window: u16) -> (Conn, Seg) {
        // The guest's sequence numbers start just short of the wrap: its data crosses it.
        let iss = u32::MAX - 1;
        let syn = guest_frame(
            sport,
            self.port,
            iss,
            None,
            TcpControl::Syn,
            65535,
            opts.mss,
            opts.wscale,
            &[],
        );
        assert_eq!(
            self.tx(&[syn]),
            [],
            "nothing before the pod's connect completes"
        );
        let got = self.wait("SYN-ACK", |s| !s.is_empty());
        assert_eq!(got.len(), 1, "{got:?}");
        let sa = got[0].clone();
        assert_eq!((sa.sport, sa.dport), (self.port, sport));
        assert_eq!(sa.flags, SYN | ACK, "{sa:?}");
        assert_eq!(sa.ack, iss.wrapping_add(1));
        assert_eq!(sa.window, 65535, "the window in a SYN is never scaled");
        assert!(sa.payload.is_empty());
        wait_fd(
            self.listener.as_raw_fd(),
            "accept",
            Instant::now() + TIMEOUT,
        );
        let (pod, _) = self.listener.accept().unwrap();
        pod.set_nonblocking(true).unwrap();
        let conn = Conn {
            sport,
            dport: self.port,
            window,
            snd_nxt: iss.wrapping_add(1),
            irs: sa.seq,
            rcv_nxt: sa.seq.wrapping_add(1),
            pod,
        };
        assert_eq!(
            self.tx(&[conn.ack()]),
            [],
            "nothing owed after the handshake"
        );
        (conn, sa)
    }
}

fn plain(mss: u16) -> SynOpts {
    SynOpts {
        mss: Some(mss),
        wscale: None,
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn syn_ack_carries_mss_and_window_scale() {
    let mut rig = Rig::new();
    let room = podwire_sndbuf();
    // A: MSS 1200 and window scale 6; its window field 100 means 6400 bytes.
    let a_opts = SynOpts {
        mss: Some(1200),
        wscale: Some(6),
    };
    let (mut a, sa) = rig.connect(41001, a_opts, 100);
    assert_eq!(sa.mss, Some(OUR_MSS), "MSS = guest MTU - 40");
    assert_eq!(sa.wscale, Some(OUR_WSCALE));
    // B: an MSS above podwire's, no window scale; window 3000 means 3000 bytes.
    let (mut b, sb) = rig.connect(41002, plain(9000), 3000);
    assert_eq!(sb.mss, Some(OUR_MSS));
    assert_eq!(
        sb.wscale, None,
        "no window scale unless the guest offers one"
    );
    // C: no options at all.
    let c_opts = SynOpts {
        mss: None,
        wscale: None,
    };
    let (mut c, sc) = rig.connect(41003, c_opts, 65535);
    assert_eq!(sc.mss, Some(OUR_MSS));
    assert_eq!(sc.wscale, None);

    const TOTAL: usize = 8000;
    let data = pattern(0, TOTAL);
    for conn in [&mut a, &mut b, &mut c] {
        pod_write(&mut conn.pod, &data);
    }
    let (want_a, want_b, want_c) = (6400, 3000, TOTAL);
    let got = rig.wait("first flights", |s| {
        payload_bytes(s) >= want_a + want_b + want_c
    });
    assert_eq!(rig.poll(), [], "nothing beyond the windows");
    let to = |port: u16| -> Vec<Seg> { got.iter().filter(|s| s.dport == port).cloned().collect() };
    let (sa, sb, sc) = (to(a.sport), to(b.sport), to(c.sport));
    assert_eq!(sa.len() + sb.len() + sc.len(), got.len());
    // Segments of min(guest MSS, 1460), as much as the (scaled or not) window allows.
    assert_eq!(
        lens(&sa),
        cut(want_a, 1200),
        "guest MSS 1200, window 100 << 6"
    );
    assert_eq!(lens(&sb), cut(want_b, 1460), "guest MSS 9000, window 3000");
    assert_eq!(lens(&sc), cut(want_c, DEFAULT_MSS), "no MSS option: 536");
    // Windows towards a guest that scales are scaled by 7; the others are not.
    let scaled = (room >> OUR_WSCALE).min(65535) as u16;
    let unscaled = room.min(65535) as u16;
    assert!(sa.iter().all(|s| s.window == scaled), "{sa:?}, room {room}");
    assert!(
        sb.iter().all(|s| s.window == unscaled),
        "{sb:?}, room {room}"
    );
    assert!(
        sc.iter().all(|s| s.window == unscaled),
        "{sc:?}, room {room}"
    );
    assert!(got.iter().all(|s| s.mss.is_none() && s.wscale.is_none()));
    let (stream_a, stream_b, stream_c) = (a.receive(&sa), b.receive(&sb), c.receive(&sc));

    // The rest, acknowledging each flight: never a segment above min(guest MSS, 1460).
    for (conn, limit, stream) in [
        (&mut a, 1200, stream_a),
        (&mut b, 1460, stream_b),
        (&mut c, DEFAULT_MSS, stream_c),
    ] {
        let mut stream = stream;
        while stream.len() < TOTAL {
            let segs = rig.tx(&[conn.ack()]);
            assert!(!segs.is_empty(), "an ACK opens the window again");
            assert!(
                segs.iter().all(|s| s.payload.len() <= limit),
                "{:?} above {limit}",
                lens(&segs)
            );
            stream.extend(conn.receive(&segs));
        }
        assert_eq!(stream, data);
        assert_eq!(rig.tx(&[conn.ack()]), []);
    }
    assert_eq!(rig.counter("tcp_retransmits"), 0);
}

#[test]
fn lost_segment_is_retransmitted_after_the_timeout() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(42001, plain(1460), 65535);
    let data = pattern(0, 2000);
    let t0 = Instant::now();
    pod_write(&mut g.pod, &data);
    let first = rig.wait("the pod's data", |s| payload_bytes(s) >= data.len());
    assert_eq!(lens(&first), [1460, 540]);
    assert_eq!(
        (first[0].seq, first[1].seq),
        (g.at(0), g.at(1460)),
        "{first:?}"
    );
    assert!(first
        .iter()
        .all(|s| s.ack == g.snd_nxt && s.flags == ACK | PSH));
    // The first frame is lost; the second arrives out of order: the guest repeats its ACK.
    assert_eq!(rig.tx(&[g.ack()]), [], "one duplicate ACK is not a loss");
    assert_eq!(rig.tick_at(t0 + RTO / 2), [], "the timer has not expired");

    let again = rig.tick_at(Instant::now() + RTO + Duration::from_millis(100));
    assert_eq!(
        again, first,
        "everything from the oldest unacknowledged byte again, same numbers and bytes"
    );
    assert_eq!(rig.counter("tcp_retransmits"), 1);

    // Lost again: the timeout has doubled.
    let t1 = Instant::now();
    assert_eq!(rig.tick_at(t1 + 2 * RTO - Duration::from_millis(100)), []);
    let third = rig.tick_at(Instant::now() + 2 * RTO + Duration::from_millis(100));
    assert_eq!(third, first);
    assert_eq!(rig.counter("tcp_retransmits"), 2);
    assert_eq!(g.receive(&third), data);

    assert_eq!(rig.tx(&[g.ack()]), []);
    assert_eq!(
        rig.tick_at(Instant::now() + 120 * RTO),
        [],
        "all acknowledged"
    );
    assert_eq!(rig.poll(), []);
    assert_eq!(rig.counter("tcp_retransmits"), 2);
    assert_eq!(rig.counter("tcp_bytes_to_guest"), 3 * data.len() as u64);
}

#[test]
fn three_duplicate_acks_trigger_fast_retransmit() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(43001, plain(1460), 65535);
    let data = pattern(0, 4 * 1460);
    pod_write(&mut g.pod, &data);
    let first = rig.wait("the pod's data", |s| payload_bytes(s) >= data.len());
    assert_eq!(lens(&first), [1460; 4]);
    for (k, s) in first.iter().enumerate() {
        assert_eq!((s.seq, s.ack), (g.at(k * 1460), g.snd_nxt), "{s:?}");
    }
    // The first is lost; each of the other three draws a duplicate ACK.
    assert_eq!(rig.tx(&[g.ack()]), [], "first duplicate ACK");
    assert_eq!(rig.tx(&[g.ack()]), [], "second duplicate ACK");
    let again = rig.tx(&[g.ack()]);
    assert_eq!(
        again, first,
        "the third: everything from the lost segment again, same numbers and bytes"
    );
    assert_eq!(rig.counter("tcp_retransmits"), 1);
    assert_eq!(g.receive(&again), data);

    // The guest has it all now; duplicates of what it had draw more of the same ACK.
    let all = g.ack();
    assert_eq!(rig.tx(&[all.clone(), all.clone(), all.clone(), all]), []);
    assert_eq!(rig.tick_at(Instant::now() + 120 * RTO), []);
    assert_eq!(rig.poll(), []);
    assert_eq!(rig.counter("tcp_retransmits"), 1);
}

#[test]
fn guest_rx_ring_full_parks_and_resumes() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(44001, plain(1460), 65535);
    let data = pattern(0, 15_000);
    pod_write(&mut g.pod, &data[..10_000]);
    // Buffers for two frames, then the ring is full.
    rig.sink.budget = Some(2);
    let got = rig.wait("two frames", |s| s.len() >= 2);
    assert_eq!(lens(&got), [1460, 1460]);
    let mut stream = g.receive(&got);
    assert_eq!(rig.sink.refused, 1, "the third frame found no buffer");
    assert_eq!(rig.counter("tcp_rx_stalls"), 1);

    // While the ring stays full: more pod data, the guest's ACK, timer ticks. Nothing gets
    // through, and nothing is consumed from the socket.
    pod_write(&mut g.pod, &data[10_000..]);
    assert_eq!(rig.poll(), []);
    assert_eq!(rig.tx(&[g.ack()]), []);
    assert_eq!(rig.tick_at(Instant::now()), []);
    assert_eq!(rig.poll(), []);

    // The guest posts buffers: the device runs poll_host.
    rig.sink.budget = None;
    let rest = rig.poll();
    assert_eq!(lens(&rest), cut(data.len() - 2 * 1460, 1460));
    assert_eq!(rest[0].seq, g.at(2 * 1460), "resumes where it stopped");
    stream.extend(g.receive(&rest));
    assert_eq!(stream, data, "in order, nothing lost");
    assert_eq!(rig.tx(&[g.ack()]), []);
    assert_eq!(rig.counter("tcp_retransmits"), 0);
}

#[test]
fn keepalive_probe_is_answered() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(45001, plain(1460), 65535);
    let ping = g.data(b"ping");
    assert_eq!(
        rig.tx(&[ping]),
        [],
        "a small request's ACK waits for an answer"
    );
    // None comes: the ACK follows on its own once the delayed-ACK timer fires.
    let out = rig.wait("the delayed ACK", |segs| !segs.is_empty());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].flags, out[0].seq, out[0].ack),
        (ACK, g.at(0), g.snd_nxt)
    );
    assert_eq!(pod_read(&mut g.pod, 4), (b"ping".to_vec(), false));

    // Linux's probe: no data, one before the next sequence number.
    let probe = g.frame(g.snd_nxt.wrapping_sub(1), TcpControl::None, &[]);
    let out = rig.tx(&[probe]);
    assert_eq!(out.len(), 1, "{out:?}");
    let a = &out[0];
    assert_eq!((a.sport, a.dport), (g.dport, g.sport));
    assert_eq!((a.flags, a.seq, a.ack), (ACK, g.at(0), g.snd_nxt), "{a:?}");
    assert!(a.payload.is_empty());

    // Some stacks put one old byte in the probe: acknowledged, never written again.
    let probe = g.frame(g.snd_nxt.wrapping_sub(1), TcpControl::None, b"g");
    let out = rig.tx(&[probe]);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].flags, out[0].seq, out[0].ack),
        (ACK, g.at(0), g.snd_nxt)
    );
    assert_eq!(rig.counter("tcp_bytes_from_guest"), 4);
    assert_eq!(rig.flows(), 1);
}

#[test]
fn zero_window_then_window_update() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(46001, plain(1460), 0);
    let data = pattern(0, 5000);
    pod_write(&mut g.pod, &data[..3000]);
    assert_eq!(rig.poll(), [], "a closed window");
    assert_eq!(
        rig.tick_at(Instant::now() + 120 * RTO),
        [],
        "nothing to time out"
    );

    g.window = 65535;
    let got = rig.tx(&[g.ack()]);
    assert_eq!(
        lens(&got),
        [1460, 1460, 80],
        "the window update opens the flow"
    );
    assert_eq!(got[0].seq, g.at(0));
    let mut stream = g.receive(&got);

    // The guest's application stops reading: it acknowledges with a zero window.
    g.window = 0;
    assert_eq!(rig.tx(&[g.ack()]), []);
    pod_write(&mut g.pod, &data[3000..]);
    assert_eq!(rig.poll(), [], "a closed window");
    assert_eq!(rig.tick_at(Instant::now() + 120 * RTO), []);
    // It reads a little: 1000 bytes of room.
    g.window = 1000;
    let got = rig.tx(&[g.ack()]);
    assert_eq!(lens(&got), [1000]);
    assert_eq!(got[0].seq, g.at(3000));
    stream.extend(g.receive(&got));
    g.window = 65535;
    let got = rig.tx(&[g.ack()]);
    assert_eq!(lens(&got), [1000]);
    stream.extend(g.receive(&got));
    assert_eq!(stream, data);
    assert_eq!(rig.tx(&[g.ack()]), []);
    assert_eq!(rig.counter("tcp_retransmits"), 0);
}

#[test]
fn half_close_each_way() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(47001, plain(1460), 65535);
    // The guest's last data and its FIN in one segment.
    let fin = g.fin(b"bye");
    let out = rig.tx(&[fin]);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].flags, out[0].seq, out[0].ack),
        (ACK, g.at(0), g.snd_nxt),
        "the data and the FIN acknowledged"
    );
    assert_eq!(
        pod_read(&mut g.pod, 100),
        (b"bye".to_vec(), true),
        "then EOF"
    );
    assert_eq!(rig.flows(), 1, "half-closed, still open the other way");

    // The pod can still write.
    let reply = pattern(0, 3000);
    pod_write(&mut g.pod, &reply);
    let got = rig.wait("the pod's reply", |s| payload_bytes(s) >= reply.len());
    assert_eq!(lens(&got), [1460, 1460, 80]);
    assert_eq!(g.receive(&got), reply);
    assert_eq!(rig.tx(&[g.ack()]), []);

    // The pod closes: the guest gets a FIN after the last byte.
    g.pod.shutdown(std::net::Shutdown::Write).unwrap();
    let got = rig.wait("FIN", |s| !s.is_empty());
    assert_eq!(got.len(), 1, "{got:?}");
    let f = &got[0];
    assert_eq!(
        (f.flags, f.seq, f.ack),
        (FIN | ACK, g.at(3000), g.snd_nxt),
        "{f:?}"
    );
    assert!(f.payload.is_empty());
    assert_eq!(rig.flows(), 1, "until the FIN is acknowledged");
    g.rcv_nxt = g.rcv_nxt.wrapping_add(1);
    assert_eq!(rig.tx(&[g.ack()]), [], "the last ACK needs no answer");
    assert_eq!(rig.flows(), 0);
    assert_eq!(rig.counter("tcp_closed"), 1);
    assert_eq!(rig.counter("tcp_rst_to_guest"), 0);
    assert_eq!(rig.tick_at(Instant::now() + 120 * RTO), []);
    assert_eq!(rig.poll(), []);
    assert_eq!(pod_read(&mut g.pod, 1), (Vec::new(), true));
}

#[test]
fn guest_window_limits_data_in_flight() {
    const W: usize = 3000;
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(48001, plain(1460), W as u16);
    let data = pattern(0, 20_000);
    pod_write(&mut g.pod, &data);
    let got = rig.wait("the first window", |s| payload_bytes(s) >= W);
    assert_eq!(rig.poll(), [], "nothing beyond the window");
    assert_eq!(lens(&got), [1460, 1460, 80]);
    let mut segs: std::collections::VecDeque<Seg> = got.iter().cloned().collect();
    let mut stream = g.receive(&got);
    // The guest acknowledges one segment at a time: each ACK moves the window's right edge by
    // that segment, and podwire fills it to the byte, never past it.
    let mut acked = 0usize;
    while let Some(oldest) = segs.pop_front() {
        acked += oldest.payload.len();
        let out = rig.tx(&[g.ack_of(g.at(acked))]);
        stream.extend(g.receive(&out));
        let in_flight = stream.len() - acked;
        assert_eq!(
            in_flight,
            W.min(data.len() - acked),
            "after the ACK of {acked}: {:?}",
            lens(&out)
        );
        assert!(out.iter().all(|s| s.payload.len() <= 1460));
        segs.extend(out);
    }
    assert_eq!(stream, data);
    assert_eq!(acked, data.len());
    assert_eq!(rig.tx(&[g.ack()]), []);
    assert_eq!(rig.counter("tcp_retransmits"), 0);
}

#[test]
fn a_small_requests_ack_rides_on_the_answer() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(45002, plain(1460), 65535);
    let request = g.data(b"GET");
    assert_eq!(rig.tx(&[request]), [], "no bare ACK for a request");
    assert_eq!(pod_read(&mut g.pod, 3), (b"GET".to_vec(), false));
    pod_write(&mut g.pod, b"200 OK");
    let out = rig.wait("the answer", |segs| !segs.is_empty());
    assert_eq!(
        out.len(),
        1,
        "one frame: the answer, acknowledging the request: {out:?}"
    );
    assert_eq!((out[0].flags & ACK, out[0].ack), (ACK, g.snd_nxt));
    assert_eq!(g.receive(&out), b"200 OK");
    // The held-back ACK was carried: once the guest has the answer, nothing follows when the
    // delayed-ACK timer is due (driven with a synthetic time, well before any retransmission).
    assert_eq!(rig.tx(&[g.ack()]), []);
    let later = Instant::now() + podwire_nat::tcp::DELACK * 50;
    assert_eq!(rig.tick_at(later), [], "no second ACK");
}

/// Request/response costs one peek per answer: a guest segment that acknowledges everything
/// sent does not look for more (the socket was drained and reported nothing new), nor does an
/// answer that came back short look again. Per exchange: the answer's peek and the discard of
/// what the next request acknowledges.
#[test]
fn request_response_peeks_once_per_answer() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(45003, plain(1460), 65535);
    let before = rig.counter("tcp_recv_calls");
    for _ in 0..5 {
        let request = g.data(b"GET");
        assert_eq!(rig.tx(&[request]), [], "no bare ACK for a request");
        assert_eq!(pod_read(&mut g.pod, 3), (b"GET".to_vec(), false));
        pod_write(&mut g.pod, b"200 OK");
        let out = rig.wait("the answer", |segs| !segs.is_empty());
        assert_eq!(g.receive(&out), b"200 OK");
    }
    let calls = rig.counter("tcp_recv_calls") - before;
    assert_eq!(calls, 5 + 4, "5 answers peeked, 4 of them discarded");
}

/// The window offered to the guest costs no `TIOCOUTQ` per segment while the send buffer is
/// mostly free: request/response asks the kernel once, not once per answer.
#[test]
fn request_response_asks_the_send_room_once() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(45005, plain(1460), 65535);
    let before = rig.counter("tcp_send_room_queries");
    let mut windows = Vec::new();
    for _ in 0..5 {
        let request = g.data(b"GET");
        assert_eq!(rig.tx(&[request]), []);
        assert_eq!(pod_read(&mut g.pod, 3), (b"GET".to_vec(), false));
        pod_write(&mut g.pod, b"200 OK");
        let out = rig.wait("the answer", |segs| !segs.is_empty());
        assert_eq!(g.receive(&out), b"200 OK");
        windows.push(out[0].window);
    }
    assert_eq!(
        rig.counter("tcp_send_room_queries") - before,
        0,
        "what the SYN-ACK asked serves every answer"
    );
    assert!(windows.iter().all(|&w| w == 65535), "{windows:?}");
}

/// A guest that writes into a pod which does not read sees the window close — the floor kept
/// of the send buffer's room shrinks with every byte written, and below half the buffer the
/// kernel is asked — and reopen once the pod reads; the stream arrives whole.
#[test]
fn a_guest_filling_a_pod_that_does_not_read_sees_the_window_close_and_reopen() {
    const SEG: usize = 1460;
    let mut rig = Rig::new();
    let opts = SynOpts {
        mss: Some(1460),
        wscale: Some(OUR_WSCALE),
    };
    let (mut g, sa) = rig.connect(45006, opts, 65535);
    let shift = OUR_WSCALE;
    // Where the guest may send up to: the last ACK's number plus its (scaled) window.
    let base = g.snd_nxt;
    let mut edge = base.wrapping_add(u32::from(sa.window));
    let mut sent = 0usize;
    let mut pod_got = Vec::new();
    let mut closed_at = None;
    for round in 0.. {
        assert!(round < 2000, "the window never closed: {sent} bytes taken");
        let room = edge.wrapping_sub(g.snd_nxt) as usize;
        if room < SEG {
            closed_at = Some(sent);
            break;
        }
        let n = (room / SEG).min(44);
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|i| g.data(&pattern(sent + i * SEG, SEG)))
            .collect();
        sent += n * SEG;
        let mut out = rig.tx(&frames);
        out.extend(rig.tick_at(Instant::now() + 10 * podwire_nat::tcp::DELACK));
        if let Some(last) = out.last() {
            // A write the socket took only in part is acknowledged in part: the guest goes
            // back to where the ACK says.
            g.snd_nxt = last.ack;
            sent = last.ack.wrapping_sub(base) as usize;
            edge = last.ack.wrapping_add(u32::from(last.window) << shift);
        }
    }
    let closed_at = closed_at.expect("the window never closed");
    assert!(
        closed_at > podwire_sndbuf() as usize / 2,
        "closed at {closed_at}"
    );
    // The pod reads everything: the next window update reopens the flow.
    pod_got.extend(pod_read(&mut g.pod, sent).0);
    let update = rig.tx(&[g.ack()]);
    let update = match update.last() {
        Some(u) => u.clone(),
        None => rig
            .tick_at(Instant::now() + 10 * RTO)
            .pop()
            .expect("a window update"),
    };
    assert!(u32::from(update.window) << shift >= 64 * 1024, "{update:?}");
    let last = g.data(&pattern(sent, SEG));
    rig.tx(&[last]);
    sent += SEG;
    pod_got.extend(pod_read(&mut g.pod, SEG).0);
    assert_eq!(pod_got.len(), sent);
    assert!(pod_got == pattern(0, sent), "the stream arrives whole");
}

#[test]
fn bulk_data_is_acknowledged_every_128_kib_or_after_the_delay() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(45003, plain(1460), 65535);
    // Less than 128 KiB: the ACK waits for more data or for the delayed-ACK timer.
    let seg = g.data(&[7u8; 1460]);
    assert_eq!(rig.tx(&[seg]), [], "held back");
    let out = rig.wait("the delayed ACK", |segs| !segs.is_empty());
    assert_eq!((out.len(), out[0].ack), (1, g.snd_nxt));
    let _ = pod_read(&mut g.pod, 1460);
    // 90 full segments (131,400 bytes) in one TX pass: one ACK for all of them, at once.
    let frames: Vec<Vec<u8>> = (0..90).map(|_| g.data(&[8u8; 1460])).collect();
    let mut out = Vec::new();
    for chunk in frames.chunks(30) {
        out.extend(rig.tx(chunk));
        let _ = pod_read(&mut g.pod, 30 * 1460);
    }
    assert_eq!(out.len(), 1, "one ACK per 128 KiB: {out:?}");
    assert_eq!(out[0].ack, g.snd_nxt);
}

/// A guest repeating its SYN while its RX ring is full owes one SYN-ACK, not one per repeat:
/// the list of owed handshakes is bounded by the connections, whatever the guest sends.
#[test]
fn repeated_syns_with_a_full_ring_owe_one_syn_ack() {
    let mut rig = Rig::new();
    let iss = 1000;
    let syn = guest_frame(
        46001,
        rig.port,
        iss,
        None,
        TcpControl::Syn,
        65535,
        Some(1460),
        None,
        &[],
    );
    rig.sink.budget = Some(0);
    assert_eq!(rig.tx(std::slice::from_ref(&syn)), []);
    // The pod's connect completes; the SYN-ACK finds no buffer and is owed.
    let deadline = Instant::now() + TIMEOUT;
    while rig.sink.refused == 0 {
        assert!(Instant::now() < deadline, "connect did not complete");
        poll_fd(rig.nat.poll_fd(), deadline - Instant::now());
        rig.poll();
    }
    for _ in 0..1000 {
        assert_eq!(rig.tx(std::slice::from_ref(&syn)), []);
    }
    assert_eq!(rig.nat.tcp.owed_syns(), 1);
    rig.sink.budget = None;
    let got = rig.poll();
    assert_eq!(got.len(), 1, "one SYN-ACK once there is room: {got:?}");
    assert_eq!(got[0].flags, SYN | ACK);
}

/// An established connection expires after two idle hours, one half-closed by the guest after
/// a minute; the pod side sees a reset either way. Activity (a segment) restarts the clock.
#[test]
fn idle_established_and_half_closed_connections_expire() {
    let mut rig = Rig::new();
    let (mut open, _) = rig.connect(48001, plain(1460), 65535);
    let (mut closing, _) = rig.connect(48002, plain(1460), 65535);
    let fin = closing.fin(&[]);
    rig.tx(&[fin]);
    let t0 = Instant::now();
    let hours = |h: u64| Duration::from_secs(h * 3600);
    rig.expire_idle_at(t0 + Duration::from_secs(30));
    assert_eq!(rig.flows(), 2, "nothing idle long enough yet");
    rig.expire_idle_at(t0 + Duration::from_secs(120));
    assert_eq!(rig.flows(), 1, "the half-closed one expired");
    rig.expire_idle_at(t0 + hours(2) - Duration::from_secs(60));
    assert_eq!(rig.flows(), 1);
    rig.expire_idle_at(t0 + hours(3));
    assert_eq!(rig.flows(), 0, "the established one expired");
    // The established one's peer sees a reset (the half-closed one's saw the guest's FIN).
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 16];
    let err = loop {
        match open.pod.read(&mut buf) {
            Ok(n) => panic!("read {n} bytes, not a reset"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_fd(open.pod.as_raw_fd(), "reset", deadline)
            }
            Err(e) => break e.kind(),
        }
    };
    assert_eq!(err, ErrorKind::ConnectionReset);
    drop(closing);
    assert_eq!(rig.counter("nat_flows_expired"), 2);
}

#[test]
fn flows_show_where_a_connection_waits() {
    let mut rig = Rig::new();
    let (mut g, _) = rig.connect(46011, plain(1460), 2000);
    let data = pattern(0, 5000);
    pod_write(&mut g.pod, &data);
    let got = rig.poll();
    assert_eq!(lens(&got), [1460, 540], "the guest's window fills");
    let detail = |rig: &Rig| {
        let flows = rig.nat.flows(10);
        assert_eq!(flows.len(), 1);
        flows[0].tcp.clone().expect("a TCP flow has its detail")
    };
    let t = detail(&rig);
    assert_eq!(t.events, ["TAP_SYN_RCVD", "SOCK_CONNECTED", "ESTABLISHED"]);
    assert_eq!((t.in_flight, t.guest_window), (2000, 2000), "{t:?}");
    assert_eq!(t.snd_una, g.at(0));
    assert_eq!(t.rcv_nxt, g.snd_nxt);
    assert_eq!(
        t.socket_unread, 5000,
        "the socket keeps what the guest has not acknowledged"
    );
    assert!(t.rto_in_ms.is_some(), "data in flight: the timer runs");

    // The guest acknowledges it all and closes its window: nothing in flight, timer off.
    g.receive(&got);
    g.window = 0;
    assert_eq!(rig.tx(&[g.ack()]), []);
    let t = detail(&rig);
    assert_eq!(
        (t.in_flight, t.guest_window, t.socket_unread),
        (0, 0, 3000),
        "{t:?}"
    );
    assert_eq!(t.rto_in_ms, None);
}
