//! The targets. Each takes any bytes and must neither panic nor hang.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use podwire_dhcp::{Dhcpv4Config, Dhcpv4Server, Dhcpv6Config, Dhcpv6Server};
use podwire_frame::{NetHandler, PartialCsum, RxError, RxSink, SgList};
use podwire_link::{Link6, Link6Config};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpPacket,
};

use crate::config::{Addressing, Addressing6, Config};
use crate::net::PEER_PORT;
use crate::podnet::{Resolver, Uplink, UplinkAddr};
use crate::records;
use crate::switch::Switch;

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
pub const GATEWAY_MAC: [u8; 6] = crate::config::GATEWAY_MAC;
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
pub const GUEST_IP6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 2);
pub const GW_IP6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 1);

// ---------------------------------------------------------------------------------------------
// DHCP and the IPv6 link.

fn dhcpv4_config() -> Dhcpv4Config {
    Dhcpv4Config {
        server_ip: GW_IP,
        guest_ip: GUEST_IP,
        prefix_len: 24,
        router: GW_IP,
        dns: vec![GW_IP, Ipv4Addr::new(198, 18, 0, 53)],
        domain_name: Some("podwire.test".into()),
        search: vec!["a.podwire.test".into(), "podwire.test".into()],
        mtu: Some(1500),
        lease_secs: 3600,
        hostname: Some("vm1".into()),
        extra: Default::default(),
    }
}

/// DHCPv4: a run of client messages (UDP payloads to port 67) through one server.
pub fn dhcpv4(data: &[u8]) {
    let mut server = Dhcpv4Server::new(dhcpv4_config());
    let mut out = [0u8; podwire_dhcp::RECOMMENDED_REPLY_BUFFER];
    for msg in records(data) {
        if let Ok(Some(reply)) = server.handle(GUEST_MAC, msg, &mut out) {
            assert!(reply.len <= out.len());
        }
    }
}

/// DHCPv6: a run of client messages (UDP payloads to port 547) through one server.
pub fn dhcpv6(data: &[u8]) {
    let mut server = Dhcpv6Server::new(Dhcpv6Config {
        server_duid: podwire_dhcp::duid_ll(GATEWAY_MAC),
        guest_addr: GUEST_IP6,
        prefix_len: 120,
        dns: vec![GW_IP6],
        search: vec!["podwire.test".into()],
        preferred_lifetime: 3600,
        valid_lifetime: 3600,
    });
    let mut out = [0u8; podwire_dhcp::MAX_DHCPV6_REPLY];
    for msg in records(data) {
        if let Ok(Some(len)) = server.handle(msg, &mut out) {
            assert!(len <= out.len());
        }
    }
}

/// Router and neighbour discovery, echo and DHCPv6 as the IPv6 link sees them: a run of IPv6
/// packets (header onward). A record's first byte picks partial checksums (bit 0) and advances
/// the clock (the rest, in seconds), so rate limits and timers are exercised too.
pub fn link6(data: &[u8]) {
    let mut link = Link6::new(Link6Config {
        gateway_mac: GATEWAY_MAC,
        prefix: Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0),
        prefix_len: 120,
        guest: GUEST_IP6,
        gateway: GW_IP6,
        dns: vec![GW_IP6],
        search: vec!["podwire.test".into()],
        mtu: 1500,
        lease_secs: 3600,
    });
    let mut now = Instant::now();
    let mut out = [0u8; podwire_link::v6::OUT_BUFFER_LEN];
    for rec in records(data) {
        let Some((&ctl, packet)) = rec.split_first() else {
            continue;
        };
        now += Duration::from_secs(u64::from(ctl >> 1));
        if let Ok(Some(len)) = link.handle(GUEST_MAC, packet, ctl & 1 != 0, now, &mut out) {
            assert!(len <= out.len());
        }
        if let Some(len) = link.periodic(Some(GUEST_MAC), now, &mut out) {
            assert!(len <= out.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The switch.

/// A dual-stack switch as podwire would run it, with the gateway mapped to the loopback.
pub fn switch_config() -> Config {
    Config {
        socket: PathBuf::from("/nonexistent"),
        repair_path: None,
        uplink: Uplink {
            name: "lo".into(),
            v4: Some(UplinkAddr {
                addr: Ipv4Addr::LOCALHOST,
                prefix_len: 8,
                gateway: None,
            }),
            v6: Some(UplinkAddr {
                addr: Ipv6Addr::LOCALHOST,
                prefix_len: 128,
                gateway: None,
            }),
            mtu: 1500,
        },
        addressing: Some(Addressing {
            guest: GUEST_IP,
            gateway: GW_IP,
            prefix_len: 24,
        }),
        addressing6: Some(Addressing6 {
            guest: GUEST_IP6,
            gateway: GW_IP6,
            prefix_len: 120,
        }),
        guest_mac: None,
        hostname: Some("vm1".into()),
        mtu: 1500,
        pid_file: None,
        map_gateway: true,
        resolver: Resolver {
            nameservers: vec![Ipv4Addr::new(198, 18, 0, 53).into()],
            search: vec!["podwire.test".into()],
            domain: None,
        },
        max_flows: 64,
        udp_idle: Duration::from_secs(180),
        lease_secs: 3600,
        tcp_forwards: Vec::new(),
        udp_forwards: Vec::new(),
        allow_guest_sources: false,
        dhcp_extra: Default::default(),
        runas: None,
        sandbox: true,
        frontend_uid: None,
        socket_group: false,
    }
}

/// A guest RX ring as a test sees it: two buffers per frame (headers and payload may straddle
/// them), a budget of frames after which it is full, partial checksums when negotiated.
pub struct Sink {
    pub frames: Vec<Vec<u8>>,
    pub budget: usize,
    pub guest_csum: bool,
}

impl Sink {
    pub fn new(budget: usize, guest_csum: bool) -> Sink {
        Sink {
            frames: Vec::new(),
            budget,
            guest_csum,
        }
    }
}

impl RxSink for Sink {
    fn push(
        &mut self,
        max_len: usize,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        if self.budget == 0 {
            return Err(RxError::NoBuffers);
        }
        let mut a = vec![0u8; 40];
        let mut b = vec![0u8; max_len.max(60)];
        let len = {
            let mut slices: [&mut [u8]; 2] = [&mut a, &mut b];
            let mut sg = SgList::from_slices(&mut slices).map_err(|_| RxError::Abandoned)?;
            fill(&mut sg).ok_or(RxError::Abandoned)?
        };
        assert!(len <= a.len() + b.len(), "a frame longer than its buffers");
        a.extend_from_slice(&b);
        a.truncate(len);
        self.frames.push(a);
        self.budget -= 1;
        Ok(())
    }

    fn partial_csum(&self) -> bool {
        self.guest_csum
    }

    fn push_partial(
        &mut self,
        max_len: usize,
        _csum: PartialCsum,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        self.push(max_len, fill)
    }
}

/// Sends one frame as the device would: from its own buffer, split in two segments at `split`
/// (scatter-gather as the guest's descriptors may be).
fn send(sw: &mut Switch, frame: &[u8], split: usize, rx: &mut Sink) {
    let mut copy = frame.to_vec();
    let (a, b) = copy.split_at_mut(split.min(frame.len()));
    let mut slices: [&mut [u8]; 2] = [a, b];
    if let Ok(sg) = SgList::from_slices(&mut slices) {
        sw.guest_frame(&sg, rx);
    }
}

fn readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) == 1 }
}

/// The switch's frame path: a run of Ethernet frames from the guest. A record's first byte
/// sets where the frame is split into two segments, whether the guest takes partial checksums
/// (bit 7) and closes a TX batch (bit 6); socket events are taken after every batch.
pub fn switch_frames(data: &[u8]) {
    crate::init();
    let Ok(mut sw) = Switch::new(&switch_config()) else {
        return;
    };
    sw.link_changed(true);
    let mut rx = Sink::new(64, false);
    for rec in records(data) {
        let Some((&ctl, frame)) = rec.split_first() else {
            continue;
        };
        rx.guest_csum = ctl & 0x80 != 0;
        send(&mut sw, frame, usize::from(ctl & 0x3f), &mut rx);
        if ctl & 0x40 != 0 {
            sw.tx_batch_done(&mut rx);
            crate::net::serve_peer();
            if readable(sw.host_fd(), 0) {
                sw.poll_host(&mut rx);
            }
            rx.budget = 64;
        }
    }
    sw.tx_batch_done(&mut rx);
    crate::net::reset_peer();
    sw.link_changed(false);
}

// ---------------------------------------------------------------------------------------------
// TCP conversations.

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const GUEST_PORT: u16 = 40000;
const GUEST_ISN: u32 = 1_000_000;

/// One guest TCP segment to the loopback peer, any flags and options.
fn tcp_frame(
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let options = &options[..options.len().min(40) & !3];
    let tcp_len = 20 + options.len() + payload.len();
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: GW_IP,
        next_header: IpProtocol::Tcp,
        payload_len: tcp_len,
        hop_limit: 64,
    };
    let mut f = vec![0u8; 14 + 20 + tcp_len];
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(GATEWAY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut f[14..34]),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    let seg = &mut f[34..];
    seg[20..20 + options.len()].copy_from_slice(options);
    seg[20 + options.len()..].copy_from_slice(payload);
    let mut tcp = TcpPacket::new_unchecked(seg);
    tcp.set_src_port(GUEST_PORT);
    tcp.set_dst_port(PEER_PORT);
    tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(seq as i32));
    tcp.set_ack_number(smoltcp::wire::TcpSeqNumber(ack as i32));
    tcp.set_header_len((20 + options.len()) as u8);
    tcp.set_fin(flags & FIN != 0);
    tcp.set_syn(flags & SYN != 0);
    tcp.set_rst(flags & 0x04 != 0);
    tcp.set_psh(flags & 0x08 != 0);
    tcp.set_ack(flags & ACK != 0);
    tcp.set_urg(flags & 0x20 != 0);
    tcp.set_window_len(window);
    tcp.fill_checksum(&GUEST_IP.into(), &GW_IP.into());
    f
}

/// podwire's initial sequence number, from its SYN-ACK among `frames`.
fn syn_ack_isn(frames: &[Vec<u8>]) -> Option<u32> {
    frames.iter().find_map(|f| {
        let ip = Ipv4Packet::new_checked(f.get(14..)?).ok()?;
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        (tcp.syn() && tcp.ack()).then_some(tcp.seq_number().0 as u32)
    })
}

/// Runs socket events (the peer's too) until `done` or a short deadline.
fn pump(sw: &mut Switch, rx: &mut Sink, done: impl Fn(&Sink) -> bool) {
    let deadline = Instant::now() + Duration::from_millis(200);
    while !done(rx) && Instant::now() < deadline {
        crate::net::serve_peer();
        if readable(sw.host_fd(), 10) {
            sw.poll_host(rx);
        }
    }
}

/// The guest's SYN, podwire's SYN-ACK (once the loopback peer accepted), the guest's ACK;
/// podwire's initial sequence number.
fn handshake(sw: &mut Switch, rx: &mut Sink) -> Option<u32> {
    let syn = tcp_frame(
        SYN,
        GUEST_ISN,
        0,
        65535,
        &[2, 4, 0x05, 0xb4, 1, 3, 3, 7],
        &[],
    );
    send(sw, &syn, 0, rx);
    sw.tx_batch_done(rx);
    pump(sw, rx, |rx| syn_ack_isn(&rx.frames).is_some());
    let isn = syn_ack_isn(&rx.frames)?;
    let ack = tcp_frame(
        ACK,
        GUEST_ISN.wrapping_add(1),
        isn.wrapping_add(1),
        65535,
        &[],
        &[],
    );
    send(sw, &ack, 0, rx);
    sw.tx_batch_done(rx);
    Some(isn)
}

/// Whether the TCP target's connection gets established and the peer's greeting reaches the
/// guest (else the target would fuzz nothing but the handshake).
pub fn tcp_target_reaches_the_peer() -> bool {
    crate::init();
    let Ok(mut sw) = Switch::new(&switch_config()) else {
        return false;
    };
    sw.link_changed(true);
    let mut rx = Sink::new(64, false);
    if handshake(&mut sw, &mut rx).is_none() {
        return false;
    }
    let payload_bytes = |rx: &Sink| -> usize {
        rx.frames
            .iter()
            .filter_map(|f| {
                let ip = Ipv4Packet::new_checked(f.get(14..)?).ok()?;
                Some(TcpPacket::new_checked(ip.payload()).ok()?.payload().len())
            })
            .sum()
    };
    pump(&mut sw, &mut rx, |rx| {
        payload_bytes(rx) >= crate::net::PEER_GREETING.len()
    });
    crate::net::reset_peer();
    payload_bytes(&rx) >= crate::net::PEER_GREETING.len()
}

/// Sequences of guest TCP segments against the TCP translation, on a connection really
/// established to a peer on the pod's loopback. The handshake is done here; then each record
/// is one segment: flags, sequence offset (u16, from the guest's next sequence number),
/// acknowledgement offset (i16, from podwire's), window (u16), option length (u8, bytes of the
/// record's tail that are TCP options), the rest payload. Every fourth segment also lets the
/// peer's data and acknowledgements in; the guest's RX ring fills after 32 frames per round.
pub fn tcp_segments(data: &[u8]) {
    crate::init();
    let Ok(mut sw) = Switch::new(&switch_config()) else {
        return;
    };
    sw.link_changed(true);
    let mut rx = Sink::new(32, false);
    let Some(isn) = handshake(&mut sw, &mut rx) else {
        crate::net::reset_peer();
        return;
    };
    // The peer accepts and greets at once, as a server would.
    crate::net::serve_peer();
    let guest_next = GUEST_ISN.wrapping_add(1);
    let ours_next = isn.wrapping_add(1);
    for (i, rec) in records(data).enumerate() {
        if rec.len() < 8 {
            continue;
        }
        let flags = rec[0];
        let seq = guest_next.wrapping_add(u32::from(u16::from_le_bytes([rec[1], rec[2]])));
        let ack = ours_next.wrapping_add(i16::from_le_bytes([rec[3], rec[4]]) as u32);
        let window = u16::from_le_bytes([rec[5], rec[6]]);
        let opt_len = usize::from(rec[7]).min(rec.len() - 8);
        let (options, payload) = rec[8..].split_at(opt_len);
        let frame = tcp_frame(flags, seq, ack, window, options, payload);
        send(&mut sw, &frame, 34 + (i % 7), &mut rx);
        if i % 4 == 3 {
            sw.tx_batch_done(&mut rx);
            crate::net::serve_peer();
            if readable(sw.host_fd(), 0) {
                sw.poll_host(&mut rx);
            }
            rx.frames.clear();
            rx.budget = 32;
        }
    }
    sw.tx_batch_done(&mut rx);
    crate::net::reset_peer();
    sw.link_changed(false);
}

// ---------------------------------------------------------------------------------------------
// The vhost-user control channel relay.

/// The relay between a frontend and the vhost crate: the input is what a frontend writes on
/// the control socket. Everything is relayed or answered and both sides see the end.
///
/// The relay's request direction ([`podwire_vhost::relay::forward_requests`], all of its
/// parsing) runs on the calling thread, as the relay's own thread runs it; what it writes to
/// the library and back to the frontend is read by one drain thread made once per fuzzing
/// thread, so that an input costs two socket pairs and no thread.
pub fn relay(data: &[u8]) {
    let Ok((mut frontend, theirs)) = UnixStream::pair() else {
        return;
    };
    let Ok((library, ours)) = UnixStream::pair() else {
        return;
    };
    use std::io::Write;
    // The whole input fits the socket's buffer (libFuzzer's inputs are a few KiB): the
    // frontend has written everything and hung up before the relay reads.
    let _ = frontend.write_all(data);
    let _ = frontend.shutdown(std::net::Shutdown::Write);
    let Some(done) = relay_drain(frontend, library) else {
        return;
    };
    let _ = podwire_vhost::relay::forward_requests(&theirs, &ours);
    // As the relay does when its request direction ends: both sides see the end.
    let _ = theirs.shutdown(std::net::Shutdown::Both);
    let _ = ours.shutdown(std::net::Shutdown::Both);
    let _ = done.recv();
}

thread_local! {
    /// The drain thread's work queue, made on first use by each fuzzing thread.
    static RELAY_DRAIN: std::cell::RefCell<Option<std::sync::mpsc::Sender<RelayEnds>>> =
        const { std::cell::RefCell::new(None) };
}

/// The frontend's and the library's ends of one input's relay, and where to say they are done.
type RelayEnds = ([UnixStream; 2], std::sync::mpsc::Sender<()>);

/// Hands both ends to the drain thread, which reads them to their end; the receiver hears
/// when it has.
fn relay_drain(frontend: UnixStream, library: UnixStream) -> Option<std::sync::mpsc::Receiver<()>> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    RELAY_DRAIN.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<RelayEnds>();
            std::thread::Builder::new()
                .name("fuzz-relay-drain".into())
                .spawn(move || {
                    for (ends, done) in rx {
                        drain_to_end(&ends);
                        let _ = done.send(());
                    }
                })
                .ok()?;
            *cell = Some(tx);
        }
        cell.as_ref()?.send(([frontend, library], done_tx)).ok()
    })?;
    Some(done_rx)
}

/// Reads both streams until each has ended (EOF or error), whichever speaks first.
fn drain_to_end(ends: &[UnixStream; 2]) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut open = [true, true];
    let mut buf = [0u8; 4096];
    while open.iter().any(|&o| o) {
        let mut fds = [0, 1].map(|i| libc::pollfd {
            fd: if open[i] { ends[i].as_raw_fd() } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds (a negative fd is ignored by poll).
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        for i in 0..2 {
            if fds[i].revents != 0 && !matches!((&ends[i]).read(&mut buf), Ok(n) if n > 0) {
                open[i] = false;
            }
        }
    }
}
