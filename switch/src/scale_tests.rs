//! Scale tests of the switch's TCP translation: thousands of guest connections, at frame level.
//!
//! A mini guest TCP client lives in the test. It builds Ethernet/IPv4/TCP frames with smoltcp
//! (an independent implementation of the wire formats), feeds them to the switch through
//! [`NetHandler::guest_frame`] in TX batches closed by [`NetHandler::tx_batch_done`], and parses
//! every frame podwire delivers, checking addresses, checksums, sequence and acknowledgement
//! numbers as a real guest would. Socket events reach podwire through [`NetHandler::poll_host`],
//! called whenever [`NetHandler::host_fd`] is readable. The pod side is an ordinary listener on
//! 127.0.0.1 (the gateway address maps to the pod's loopback), accepting on its own thread.
//! The guest retransmits an unacknowledged FIN after 200 ms, like Linux, so that a missing ACK
//! shows up as a counted retransmission (and podwire's RST to it) rather than as a hang; every
//! deviation is collected and asserted at the end, after the figures are printed.
//!
//! Both tests take a lock so that they never run at the same time: they count the process's
//! file descriptors. Other tests of the crate may run alongside; the checks that matter (podwire's
//! sockets, the listener's streams, descriptors left behind) only look at what these tests made.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use podwire_frame::{NetHandler, RxError, RxSink, SgList};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpControl,
    TcpPacket, TcpRepr,
};

use crate::config::{Config, GATEWAY_MAC};
use crate::switch::Switch;
pub(crate) use crate::tests::{GUEST_IP, GUEST_MAC, GW_IP};

/// The MSS the guest offers, and the one podwire must offer back for a 1500-byte MTU.
const MSS: u16 = 1460;
/// The guest's receive window (no window scaling).
const GUEST_WINDOW: u16 = 65535;
/// Frames per virtqueue TX batch: `tx_batch_done` after each.
const TX_BATCH: usize = 256;
/// The guest's retransmission timeout for its FIN (Linux's minimum RTO).
const GUEST_RTO: Duration = Duration::from_millis(200);

static SERIAL: Mutex<()> = Mutex::new(());

/// These tests count the process's descriptors: one at a time.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The frame tests' configuration with room for every flow these tests open.
pub(crate) fn config() -> Config {
    Config {
        max_flows: 65536,
        ..crate::tests::config()
    }
}

// ---------------------------------------------------------------------------------------------
// Process and kernel accounting.

/// Raises RLIMIT_NOFILE to `want` (root may raise the hard limit too); at least `need` or panic.
fn raise_nofile(want: u64, need: u64) {
    // SAFETY: get/setrlimit on local structs.
    let cur = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max.max(want),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                // Unprivileged: as far as the hard limit goes.
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    };
    assert!(
        cur >= need,
        "RLIMIT_NOFILE is {cur}, this test needs {need}: run as root or raise the hard limit"
    );
}

/// The open descriptors of a table (`/proc/self/fd`, or a thread's): number → target.
fn fd_snapshot(dir: &str) -> HashMap<i32, String> {
    let mut fds = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.display().to_string();
        // The directory being read shows up too.
        if !(target.starts_with("/proc/") && target.ends_with("/fd")) {
            fds.insert(fd, target);
        }
    }
    fds
}

/// The process's descriptor table (the one podwire's sockets are in).
fn process_fds() -> HashMap<i32, String> {
    fd_snapshot("/proc/self/fd")
}

/// Descriptors open in `now` that were not open (with the same target) in `before`.
fn new_fds(before: &HashMap<i32, String>, now: &HashMap<i32, String>) -> Vec<String> {
    let mut new: Vec<String> = now
        .iter()
        .filter(|(fd, target)| before.get(fd) != Some(target))
        .map(|(fd, target)| format!("{fd} -> {target}"))
        .collect();
    new.sort();
    new
}

/// TCP sockets in `tables` connected to `port` (podwire's) and accepted on `port` (the
/// server's streams), found by socket inode in the namespace's TCP table.
fn tcp_fds(port: u16, tables: &[&HashMap<i32, String>]) -> (usize, usize) {
    let inodes: HashSet<u64> = tables
        .iter()
        .flat_map(|t| t.values())
        .filter_map(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect();
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap_or(""), 16);
    let (mut towards, mut accepted) = (0, 0);
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let inode: u64 = f[9].parse().unwrap_or(0);
        if inode == 0 || !inodes.contains(&inode) {
            continue;
        }
        let (Ok(local), Ok(remote)) = (port_of(f[1]), port_of(f[2])) else {
            continue;
        };
        if remote == port {
            towards += 1;
        } else if local == port && f[3] != "0A" {
            accepted += 1;
        }
    }
    (towards, accepted)
}

/// A TCP port on loopback with a bound socket but no listener: connections are refused.
fn refusing_port() -> (OwnedFd, u16) {
    // SAFETY: plain socket calls on a new fd, owned at once; valid sockaddr arguments.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            len,
        );
        assert_eq!(rc, 0);
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        (fd, u16::from_be(sa.sin_port))
    }
}

/// Closes a stream so that the peer sees a RST.
fn close_with_rst(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(s);
}

/// A field of a `/proc` file in kB (VmRSS in /proc/self/status, Slab in /proc/meminfo).
fn proc_kib(file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Pages of buffer memory the namespace's TCP sockets hold (/proc/net/sockstat).
fn tcp_mem_pages() -> u64 {
    let text = std::fs::read_to_string("/proc/self/net/sockstat").unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with("TCP:")).unwrap_or("");
    let f: Vec<&str> = line.split_whitespace().collect();
    f.iter()
        .position(|&w| w == "mem")
        .and_then(|i| f.get(i + 1)?.parse().ok())
        .unwrap_or(0)
}

#[derive(Clone, Copy)]
struct Memory {
    rss_kib: u64,
    slab_kib: u64,
    tcp_pages: u64,
}

impl Memory {
    fn now() -> Memory {
        Memory {
            rss_kib: proc_kib("/proc/self/status", "VmRSS"),
            slab_kib: proc_kib("/proc/meminfo", "Slab"),
            tcp_pages: tcp_mem_pages(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// podwire's status line.

pub(crate) fn flows(sw: &Switch) -> usize {
    let status = sw.status();
    status
        .split_whitespace()
        .find_map(|t| t.strip_prefix("flows="))
        .and_then(|v| v.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no flows= in status: {status}"))
}

pub(crate) fn counters(sw: &Switch) -> HashMap<String, u64> {
    let status = sw.status();
    let summary = status.split_once("; ").map_or("", |(_, s)| s);
    summary
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(u64::MAX)))
        .collect()
}

pub(crate) fn count(c: &HashMap<String, u64>, name: &str) -> u64 {
    c.get(name).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The pod side: a server on loopback, on its own thread.

/// What the pod's server has seen.
#[derive(Debug, Default)]
struct ServerStats {
    accepted: usize,
    open: usize,
    /// Streams closed after end of file, and after a reset.
    eofs: usize,
    resets: usize,
    /// Connection ids of the requests served, in arrival order.
    served: Vec<usize>,
    bytes_in: usize,
    bytes_out: usize,
    anomalies: Vec<String>,
}

/// A listener on 127.0.0.1 and the streams it accepted, served by a thread of their own.
///
/// The thread runs a tiny protocol: a request line `guest to pod I` is answered with
/// `pod to guest I` and the stream stays open; a line `request I` is answered and closed as
/// [`Mode::of`] `I` says. Streams are closed when the guest closed or reset them.
///
/// The thread gets a descriptor table of its own (`unshare(CLONE_FILES)`) when it can, so that
/// the listener's streams and podwire's sockets each fit under RLIMIT_NOFILE even where the
/// hard limit cannot be raised (it applies per table). The test then counts both tables.
struct PodServer {
    port: u16,
    /// Readable when the server did something; writing to it stops the thread.
    ctl: UnixStream,
    stats: Arc<Mutex<ServerStats>>,
    /// The server thread's own descriptor table, if it has one.
    fd_dir: Option<PathBuf>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PodServer {
    fn start() -> PodServer {
        let (ctl, theirs) = UnixStream::pair().unwrap();
        ctl.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let theirs = theirs.into_raw_fd();
        let stats = Arc::new(Mutex::new(ServerStats::default()));
        let shared = Arc::clone(&stats);
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("pod-server".into())
            .spawn(move || {
                // SAFETY: unshare/gettid have no memory effects; the fds closed are this
                // thread's private copies of everybody else's.
                let (private, tid) = unsafe {
                    let private = libc::unshare(libc::CLONE_FILES) == 0;
                    (private, libc::syscall(libc::SYS_gettid) as i32)
                };
                if private {
                    let dir = format!("/proc/self/task/{tid}/fd");
                    for fd in fd_snapshot(&dir).into_keys() {
                        if fd > 2 && fd != theirs {
                            // SAFETY: closing this table's copy of a descriptor.
                            unsafe { libc::close(fd) };
                        }
                    }
                }
                // SAFETY: `theirs` is ours in this table (a copy, or the only one).
                let ctl = unsafe { UnixStream::from_raw_fd(theirs) };
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                // std listens with a backlog of 128: make room for whole batches.
                // SAFETY: listen on a bound socket we own.
                assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);
                listener.set_nonblocking(true).unwrap();
                let port = listener.local_addr().unwrap().port();
                tx.send((port, private.then_some(tid))).unwrap();
                serve(&listener, &ctl, &shared);
            })
            .unwrap();
        let (port, tid) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server thread started");
        if tid.is_some() {
            // The thread has its own copy now: close ours.
            // SAFETY: `theirs` is a descriptor of this table nobody else owns.
            unsafe { libc::close(theirs) };
        }
        PodServer {
            port,
            ctl,
            stats,
            fd_dir: tid.map(|t| PathBuf::from(format!("/proc/self/task/{t}/fd"))),
            thread: Some(thread),
        }
    }

    fn wake_fd(&self) -> RawFd {
        self.ctl.as_raw_fd()
    }

    fn stats(&self) -> MutexGuard<'_, ServerStats> {
        let mut buf = [0u8; 256];
        while matches!((&self.ctl).read(&mut buf), Ok(n) if n > 0) {}
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open descriptors in the server thread's own table (0 if it shares the process's).
    fn table_fds(&self) -> HashMap<i32, String> {
        self.fd_dir
            .as_ref()
            .map_or_else(HashMap::new, |d| fd_snapshot(&d.display().to_string()))
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        let _ = (&self.ctl).write(&[0]);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Serving {
    Request(Vec<u8>),
    AwaitClose,
}

/// What becomes of a server stream.
enum Next {
    Keep,
    Close,
    Reset,
}

/// The server thread's loop: accept, read requests, answer, close; until told to stop.
fn serve(listener: &TcpListener, ctl: &UnixStream, stats: &Mutex<ServerStats>) {
    let mut conns: Vec<(TcpStream, Serving)> = Vec::new();
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let pollfd = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        pfds.clear();
        pfds.push(pollfd(listener.as_raw_fd()));
        pfds.push(pollfd(ctl.as_raw_fd()));
        pfds.extend(conns.iter().map(|(s, _)| pollfd(s.as_raw_fd())));
        // SAFETY: a valid pollfd array.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
        if pfds[1].revents != 0 {
            return;
        }
        let mut st = stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut worked = false;
        // Highest first, so that swap_remove only moves streams already looked at.
        for k in (0..conns.len()).rev() {
            if pfds[2 + k].revents == 0 {
                continue;
            }
            worked = true;
            let mut buf = [0u8; 256];
            let (s, state) = &mut conns[k];
            let mid_request = matches!(state, Serving::Request(l) if !l.is_empty());
            let next = match s.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => Next::Keep,
                Ok(n) if n > 0 => match state {
                    Serving::Request(line) => {
                        st.bytes_in += n;
                        line.extend_from_slice(&buf[..n]);
                        if line.ends_with(b"\n") {
                            let text = String::from_utf8_lossy(line).to_string();
                            answer(s, state, &text, &mut st)
                        } else {
                            Next::Keep
                        }
                    }
                    Serving::AwaitClose => {
                        st.anomalies.push(format!("{n} bytes after the request"));
                        Next::Close
                    }
                },
                Ok(_) if !mid_request => {
                    st.eofs += 1;
                    Next::Close
                }
                Err(e) if !mid_request && e.kind() == ErrorKind::ConnectionReset => {
                    st.resets += 1;
                    Next::Close
                }
                r => {
                    let msg = format!("server stream: unexpected read {r:?}");
                    st.anomalies.push(msg);
                    Next::Close
                }
            };
            match next {
                Next::Keep => {}
                Next::Close => drop(conns.swap_remove(k)),
                Next::Reset => close_with_rst(conns.swap_remove(k).0),
            }
        }
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(true).unwrap();
                    conns.push((s, Serving::Request(Vec::new())));
                    st.accepted += 1;
                    worked = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e) => panic!("accept: {e}"),
            }
        }
        st.open = conns.len();
        drop(st);
        if worked {
            let _ = (&*ctl).write(&[1]);
        }
    }
}
/// A whole request line arrived on `s`: answer it, and say what becomes of the stream.
fn answer(s: &mut TcpStream, state: &mut Serving, line: &str, st: &mut ServerStats) -> Next {
    let id = |prefix: &str| line.strip_prefix(prefix)?.trim_end().parse::<usize>().ok();
    let (i, reply, next) = if let Some(i) = id("guest to pod ") {
        (i, Some(format!("pod to guest {i}\n")), Next::Keep)
    } else if let Some(i) = id("request ") {
        let mode = Mode::of(i);
        let next = match mode {
            Mode::GuestCloses | Mode::GuestResets => Next::Keep,
            Mode::PodCloses => Next::Close,
            Mode::PodResets => Next::Reset,
            Mode::Refused => {
                st.anomalies
                    .push(format!("request {i} on the refusing port"));
                Next::Close
            }
        };
        (i, mode.reply(i), next)
    } else {
        st.anomalies.push(format!("bad request {line:?}"));
        return Next::Close;
    };
    st.served.push(i);
    if let Some(reply) = reply {
        s.write_all(reply.as_bytes()).unwrap();
        st.bytes_out += reply.len();
    }
    *state = Serving::AwaitClose;
    next
}

// ---------------------------------------------------------------------------------------------
// Frames.

/// Collects the frames the switch delivers to the guest; the guest always has RX buffers.
#[derive(Default)]
struct Frames(Vec<Vec<u8>>);

impl RxSink for Frames {
    fn push(
        &mut self,
        max_len: usize,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        let mut buf = vec![0u8; max_len.max(60)];
        let len = {
            let mut slices: [&mut [u8]; 1] = [&mut buf];
            let mut sg = SgList::from_slices(&mut slices).map_err(|_| RxError::Abandoned)?;
            fill(&mut sg).ok_or(RxError::Abandoned)?
        };
        buf.truncate(len);
        self.0.push(buf);
        Ok(())
    }
}

fn guest_tcp_frame(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    control: TcpControl,
    mss: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    crate::tcp_tests::guest_frame(
        sport,
        dport,
        seq,
        ack,
        control,
        GUEST_WINDOW,
        mss,
        None,
        payload,
    )
}

/// A TCP segment from podwire, as the guest sees it.
struct Seg {
    sport: u16,
    dport: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    mss: Option<u16>,
    wscale: Option<u8>,
    payload: Vec<u8>,
}

/// Parses and checks a frame from podwire: to the guest, from the gateway, valid checksums.
fn parse_frame(f: &[u8]) -> Result<Seg, String> {
    let eth = EthernetFrame::new_checked(f).map_err(|e| format!("Ethernet: {e}"))?;
    if eth.dst_addr() != EthernetAddress(GUEST_MAC)
        || eth.src_addr() != EthernetAddress(GATEWAY_MAC)
    {
        return Err(format!("MACs {} -> {}", eth.src_addr(), eth.dst_addr()));
    }
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Err(format!("EtherType {}", eth.ethertype()));
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|e| format!("IPv4: {e}"))?;
    if !ip.verify_checksum() {
        return Err("bad IPv4 header checksum".into());
    }
    if ip.src_addr() != GW_IP || ip.dst_addr() != GUEST_IP {
        return Err(format!("IPv4 {} -> {}", ip.src_addr(), ip.dst_addr()));
    }
    if ip.next_header() != IpProtocol::Tcp {
        return Err(format!("IP protocol {}", ip.next_header()));
    }
    let tcp = TcpPacket::new_checked(ip.payload()).map_err(|e| format!("TCP: {e}"))?;
    let repr = TcpRepr::parse(
        &tcp,
        &GW_IP.into(),
        &GUEST_IP.into(),
        &ChecksumCapabilities::default(),
    )
    .map_err(|e| format!("TCP (checksum or flags): {e}"))?;
    Ok(Seg {
        sport: repr.src_port,
        dport: repr.dst_port,
        control: repr.control,
        seq: repr.seq_number.0 as u32,
        ack: repr.ack_number.map(|a| a.0 as u32),
        mss: repr.max_seg_size,
        wscale: repr.window_scale,
        payload: repr.payload.to_vec(),
    })
}

fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

// ---------------------------------------------------------------------------------------------
// The mini guest.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    SynSent,
    /// Established (possibly half-closed), not yet finished.
    Open,
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum End {
    None,
    /// Both FINs sent and acknowledged.
    Graceful,
    /// podwire reset the connection (or refused it).
    RstIn,
    /// The guest reset it.
    RstOut,
}

#[derive(Debug)]
struct GConn {
    sport: u16,
    dport: u16,
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    rcv_nxt: u32,
    phase: Phase,
    end: End,
    established: bool,
    data: Vec<u8>,
    fin_in: bool,
    fin_out: Option<u32>,
    fin_at: Option<Instant>,
    /// The application's request went out (churn test).
    req_sent: bool,
    need_ack: bool,
}

impl GConn {
    fn all_acked(&self) -> bool {
        self.snd_una == self.snd_nxt
    }
}

#[derive(Debug, Default)]
struct GuestStats {
    frames_in: u64,
    frames_out: u64,
    synack_repeats: u64,
    fin_retransmits: u64,
    late_frames: u64,
    anomalies: u64,
    first_anomalies: Vec<String>,
}

struct Guest {
    conns: Vec<GConn>,
    port_base: u16,
    out: Vec<Vec<u8>>,
    acks: Vec<usize>,
    stats: GuestStats,
}

impl Guest {
    fn new(port_base: u16, n: usize) -> Guest {
        assert!(usize::from(port_base) + n <= 65536);
        let conns = (0..n)
            .map(|i| {
                // Spread the initial sequence numbers over the whole space.
                let iss = (i as u32).wrapping_mul(0x9e37_79b9) ^ 0x5bd1_e995;
                GConn {
                    sport: port_base + i as u16,
                    dport: 0,
                    iss,
                    snd_una: iss,
                    snd_nxt: iss,
                    rcv_nxt: 0,
                    phase: Phase::Idle,
                    end: End::None,
                    established: false,
                    data: Vec::new(),
                    fin_in: false,
                    fin_out: None,
                    fin_at: None,
                    req_sent: false,
                    need_ack: false,
                }
            })
            .collect();
        Guest {
            conns,
            port_base,
            out: Vec::new(),
            acks: Vec::new(),
            stats: GuestStats::default(),
        }
    }

    fn anomaly(&mut self, msg: String) {
        self.stats.anomalies += 1;
        if self.stats.first_anomalies.len() < 20 {
            self.stats.first_anomalies.push(msg);
        }
    }

    fn emit(&mut self, i: usize, seq: u32, control: TcpControl, payload: &[u8]) {
        let c = &self.conns[i];
        let ack = c.established.then_some(c.rcv_nxt);
        let frame = guest_tcp_frame(c.sport, c.dport, seq, ack, control, None, payload);
        self.out.push(frame);
    }

    fn connect(&mut self, i: usize, dport: u16) {
        let c = &mut self.conns[i];
        assert_eq!(c.phase, Phase::Idle);
        c.dport = dport;
        c.phase = Phase::SynSent;
        c.snd_nxt = c.iss.wrapping_add(1);
        let f = guest_tcp_frame(c.sport, dport, c.iss, None, TcpControl::Syn, Some(MSS), &[]);
        self.out.push(f);
    }

    fn send(&mut self, i: usize, payload: &[u8]) {
        let seq = self.conns[i].snd_nxt;
        assert_eq!(self.conns[i].phase, Phase::Open);
        self.conns[i].snd_nxt = seq.wrapping_add(payload.len() as u32);
        self.emit(i, seq, TcpControl::Psh, payload);
    }

    fn fin(&mut self, i: usize) {
        let seq = self.conns[i].snd_nxt;
        assert_eq!(self.conns[i].phase, Phase::Open);
        let c = &mut self.conns[i];
        c.fin_out = Some(seq);
        c.fin_at = Some(Instant::now());
        c.snd_nxt = seq.wrapping_add(1);
        self.emit(i, seq, TcpControl::Fin, &[]);
    }

    fn rst(&mut self, i: usize) {
        let seq = self.conns[i].snd_nxt;
        self.emit(i, seq, TcpControl::Rst, &[]);
        let c = &mut self.conns[i];
        c.phase = Phase::Finished;
        c.end = End::RstOut;
    }

    /// Takes in the frames podwire delivered; acknowledges what needs it (one ACK per
    /// connection, as after a NAPI poll).
    fn absorb(&mut self, frames: Vec<Vec<u8>>) {
        for f in frames {
            self.stats.frames_in += 1;
            match parse_frame(&f) {
                Ok(seg) => self.segment(seg),
                Err(e) => self.anomaly(format!("bad frame from podwire: {e}")),
            }
        }
        let acks = std::mem::take(&mut self.acks);
        for &i in &acks {
            let c = &mut self.conns[i];
            if !c.need_ack {
                continue;
            }
            c.need_ack = false;
            if matches!(c.end, End::RstIn | End::RstOut) {
                continue;
            }
            let seq = c.snd_nxt;
            self.emit(i, seq, TcpControl::None, &[]);
        }
        self.acks = acks;
        self.acks.clear();
    }

    fn want_ack(&mut self, i: usize) {
        if !self.conns[i].need_ack {
            self.conns[i].need_ack = true;
            self.acks.push(i);
        }
    }

    fn segment(&mut self, seg: Seg) {
        let i = usize::from(seg.dport.wrapping_sub(self.port_base));
        if seg.dport < self.port_base || i >= self.conns.len() {
            return self.anomaly(format!("segment to unknown guest port {}", seg.dport));
        }
        let c = &self.conns[i];
        if seg.sport != c.dport {
            let msg = format!("conn {i}: segment from port {}, not {}", seg.sport, c.dport);
            return self.anomaly(msg);
        }
        if c.phase == Phase::Finished {
            // Only a TIME_WAIT guest answers a repeated FIN; nobody answers a RST.
            if seg.control != TcpControl::Rst {
                self.stats.late_frames += 1;
                if c.end == End::Graceful {
                    self.want_ack(i);
                }
            }
            return;
        }
        match seg.control {
            TcpControl::Rst => {
                let c = &mut self.conns[i];
                let ok = if c.phase == Phase::SynSent {
                    seg.ack == Some(c.iss.wrapping_add(1))
                } else {
                    seg.seq == c.rcv_nxt
                };
                c.phase = Phase::Finished;
                c.end = End::RstIn;
                if !ok {
                    let msg = format!(
                        "conn {i}: unacceptable RST seq={} ack={:?} (rcv_nxt={}, iss={})",
                        seg.seq, seg.ack, self.conns[i].rcv_nxt, self.conns[i].iss
                    );
                    self.anomaly(msg);
                }
            }
            TcpControl::Syn => {
                let c = &mut self.conns[i];
                let good = seg.ack == Some(c.iss.wrapping_add(1))
                    && seg.mss == Some(MSS)
                    && seg.wscale.is_none()
                    && seg.payload.is_empty();
                if !good {
                    let msg = format!(
                        "conn {i}: bad SYN-ACK ack={:?} (want {}), mss={:?}, wscale={:?}",
                        seg.ack,
                        c.iss.wrapping_add(1),
                        seg.mss,
                        seg.wscale
                    );
                    return self.anomaly(msg);
                }
                if c.phase == Phase::SynSent {
                    c.phase = Phase::Open;
                    c.established = true;
                    c.rcv_nxt = seg.seq.wrapping_add(1);
                    c.snd_una = c.iss.wrapping_add(1);
                } else if seg.seq.wrapping_add(1) == c.rcv_nxt {
                    self.stats.synack_repeats += 1;
                } else {
                    return self.anomaly(format!("conn {i}: SYN-ACK with another ISN"));
                }
                self.want_ack(i);
            }
            TcpControl::None | TcpControl::Psh | TcpControl::Fin => {
                let c = &mut self.conns[i];
                if c.phase != Phase::Open {
                    let msg = format!("conn {i}: {:?} in {:?}", seg.control, c.phase);
                    return self.anomaly(msg);
                }
                let Some(ack) = seg.ack else {
                    return self.anomaly(format!("conn {i}: segment without ACK"));
                };
                if seq_gt(ack, c.snd_nxt) {
                    let msg = format!("conn {i}: ACK {ack} of unsent data ({})", c.snd_nxt);
                    return self.anomaly(msg);
                }
                if seq_gt(ack, c.snd_una) {
                    c.snd_una = ack;
                }
                let mut in_order = true;
                if !seg.payload.is_empty() {
                    if seg.seq == c.rcv_nxt {
                        c.data.extend_from_slice(&seg.payload);
                        c.rcv_nxt = c.rcv_nxt.wrapping_add(seg.payload.len() as u32);
                    } else {
                        in_order = false;
                    }
                    self.want_ack(i);
                }
                let c = &mut self.conns[i];
                if seg.control == TcpControl::Fin && in_order {
                    let fin_seq = seg.seq.wrapping_add(seg.payload.len() as u32);
                    if fin_seq == c.rcv_nxt && !c.fin_in {
                        c.fin_in = true;
                        c.rcv_nxt = c.rcv_nxt.wrapping_add(1);
                    }
                    self.want_ack(i);
                }
                if !in_order {
                    let rcv_nxt = self.conns[i].rcv_nxt;
                    let msg = format!("conn {i}: segment at {} expected {rcv_nxt}", seg.seq);
                    self.anomaly(msg);
                }
                let c = &mut self.conns[i];
                if c.fin_in && c.fin_out.is_some() && c.all_acked() {
                    c.phase = Phase::Finished;
                    c.end = End::Graceful;
                }
            }
        }
    }

    /// The guest's retransmission timer: an unacknowledged FIN goes again after [`GUEST_RTO`].
    fn timers(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            let (Some(fin_seq), Some(at)) = (c.fin_out, c.fin_at) else {
                continue;
            };
            if c.phase != Phase::Open || c.all_acked() || now < at + GUEST_RTO {
                continue;
            }
            c.fin_at = Some(now);
            self.stats.fin_retransmits += 1;
            self.emit(i, fin_seq, TcpControl::Fin, &[]);
        }
    }

    fn describe(&self, range: Range<usize>) -> String {
        let mut phases: HashMap<String, usize> = HashMap::new();
        let mut first = Vec::new();
        for i in range {
            let c = &self.conns[i];
            *phases
                .entry(format!("{:?}/{:?}", c.phase, c.end))
                .or_default() += 1;
            if c.phase != Phase::Finished && first.len() < 3 {
                first.push(format!(
                    "#{i} port {} {:?} una={} nxt={} rcv_nxt={} fin_in={} fin_out={:?} data={:?}",
                    c.sport,
                    c.phase,
                    c.snd_una,
                    c.snd_nxt,
                    c.rcv_nxt,
                    c.fin_in,
                    c.fin_out,
                    String::from_utf8_lossy(&c.data)
                ));
            }
        }
        format!(
            "phases {phases:?}; unfinished e.g. {first:?}; {:?}",
            self.stats
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the switch.

enum Flow {
    Done,
    Busy,
    Idle,
}

struct Harness {
    sw: Switch,
    guest: Guest,
}

impl Harness {
    fn new(guest: Guest) -> Harness {
        Harness {
            sw: Switch::new(&config()).unwrap(),
            guest,
        }
    }

    /// Sends the guest's queued frames, [`TX_BATCH`] at a time, each batch closed by
    /// `tx_batch_done`; replies go back to the guest, whose answers go out in turn.
    fn flush_guest(&mut self) -> bool {
        let mut sent = false;
        while !self.guest.out.is_empty() {
            let mut out = std::mem::take(&mut self.guest.out);
            for chunk in out.chunks_mut(TX_BATCH) {
                let mut rx = Frames::default();
                for f in chunk.iter_mut() {
                    let mut slices: [&mut [u8]; 1] = [&mut f[..]];
                    let sg = SgList::from_slices(&mut slices).unwrap();
                    self.sw.guest_frame(&sg, &mut rx);
                }
                self.sw.tx_batch_done(&mut rx);
                self.guest.stats.frames_out += chunk.len() as u64;
                self.guest.absorb(rx.0);
            }
            sent = true;
        }
        sent
    }

    /// Lets podwire handle its socket events for as long as it has some.
    fn service(&mut self) -> bool {
        let mut worked = false;
        for _ in 0..10_000 {
            if !poll_fds(&[self.sw.host_fd()], Duration::ZERO) {
                break;
            }
            let mut rx = Frames::default();
            self.sw.poll_host(&mut rx);
            self.guest.absorb(rx.0);
            self.flush_guest();
            worked = true;
        }
        worked
    }

    /// Runs guest, podwire and `step` (the test's script and server) until `step` says done.
    fn run_until(
        &mut self,
        what: &str,
        timeout: Duration,
        wait_fds: &[RawFd],
        mut step: impl FnMut(&mut Harness) -> Flow,
    ) {
        let deadline = Instant::now() + timeout;
        let mut fds = vec![self.sw.host_fd()];
        fds.extend_from_slice(wait_fds);
        loop {
            let mut busy = self.service();
            match step(self) {
                Flow::Done => return,
                Flow::Busy => busy = true,
                Flow::Idle => {}
            }
            busy |= self.flush_guest();
            self.guest.timers(Instant::now());
            busy |= self.flush_guest();
            let now = Instant::now();
            if now > deadline {
                panic!(
                    "{what}: not done after {timeout:?}; podwire: {}; guest: {}",
                    self.sw.status(),
                    self.guest.describe(0..self.guest.conns.len())
                );
            }
            if !busy {
                poll_fds(&fds, (deadline - now).min(Duration::from_millis(20)));
            }
        }
    }
}

/// Waits up to `timeout` for one of `fds` to be readable.
pub(crate) fn poll_fds(fds: &[RawFd], timeout: Duration) -> bool {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid pollfd array.
    let n = unsafe {
        libc::poll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            timeout.as_millis() as i32,
        )
    };
    n > 0
}

fn per_flow(bytes: i64, flows: usize) -> String {
    format!("{:.0} B/flow", bytes as f64 / flows as f64)
}

/// How a churn connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// Guest FIN first, then the pod closes.
    GuestCloses,
    /// The pod closes after its reply; the guest ACKs the FIN and sends its own.
    PodCloses,
    /// The guest resets after the reply.
    GuestResets,
    /// Nothing listens on the port: the guest gets a RST|ACK for its SYN.
    Refused,
    /// The pod closes with SO_LINGER 0 after the request: the guest gets a RST.
    PodResets,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::GuestCloses,
        Mode::PodCloses,
        Mode::GuestResets,
        Mode::Refused,
        Mode::PodResets,
    ];

    fn of(i: usize) -> Mode {
        Mode::ALL[i % Mode::ALL.len()]
    }

    fn request(i: usize) -> String {
        format!("request {i}\n")
    }

    fn reply(self, i: usize) -> Option<String> {
        match self {
            Mode::GuestCloses | Mode::PodCloses | Mode::GuestResets => Some(format!("reply {i}\n")),
            Mode::Refused | Mode::PodResets => None,
        }
    }

    fn end(self) -> End {
        match self {
            Mode::GuestCloses | Mode::PodCloses => End::Graceful,
            Mode::GuestResets => End::RstOut,
            Mode::Refused | Mode::PodResets => End::RstIn,
        }
    }
}

/// The guest application of a churn connection: request, wait for the reply, close per mode.
fn churn_guest(g: &mut Guest, i: usize) -> bool {
    let mode = Mode::of(i);
    let c = &g.conns[i];
    if c.phase != Phase::Open {
        return false;
    }
    if !c.req_sent {
        if mode == Mode::Refused {
            g.anomaly(format!("conn {i}: connected to the refusing port"));
            g.rst(i);
            return true;
        }
        g.conns[i].req_sent = true;
        g.send(i, Mode::request(i).as_bytes());
        return true;
    }
    let replied = mode.reply(i).is_some_and(|r| c.data == r.as_bytes());
    match mode {
        Mode::GuestCloses if replied && c.all_acked() && c.fin_out.is_none() => g.fin(i),
        Mode::PodCloses if replied && c.fin_in && c.fin_out.is_none() => g.fin(i),
        Mode::GuestResets if replied => g.rst(i),
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Descriptor tables of the process and of the server thread, at one moment.
struct Fds {
    process: HashMap<i32, String>,
    server: HashMap<i32, String>,
}

impl Fds {
    fn now(server: &PodServer) -> Fds {
        Fds {
            process: process_fds(),
            server: server.table_fds(),
        }
    }

    fn total(&self) -> usize {
        self.process.len() + self.server.len()
    }

    fn sockets(&self, port: u16) -> (usize, usize) {
        tcp_fds(port, &[&self.process, &self.server])
    }
}

#[test]
fn ten_thousand_concurrent_connections() {
    const N: usize = 10_000;
    const SYN_BATCH: usize = 500;
    const SAMPLE_EVERY: usize = 50;
    let _serial = serial();
    let t0 = Instant::now();
    let server = PodServer::start();
    let port = server.port;
    let shared_table = server.fd_dir.is_none();
    let need = if shared_table { 2 * N } else { N } as u64 + 1_000;
    raise_nofile(65_536, need);
    let wait = [server.wake_fd()];
    let mut h = Harness::new(Guest::new(10_000, N));
    let fds0 = Fds::now(&server);
    let mem0 = Memory::now();

    // Open: SYN, SYN-ACK, ACK, SYN_BATCH connections at a time.
    for b in (0..N).step_by(SYN_BATCH) {
        let batch = b..(b + SYN_BATCH).min(N);
        for i in batch.clone() {
            h.guest.connect(i, port);
        }
        h.run_until("handshakes", Duration::from_secs(60), &wait, |h| {
            if batch.clone().all(|i| h.guest.conns[i].phase == Phase::Open) {
                Flow::Done
            } else {
                Flow::Idle
            }
        });
    }
    h.run_until("accepts", Duration::from_secs(30), &wait, |_| {
        if server.stats().accepted >= N {
            Flow::Done
        } else {
            Flow::Idle
        }
    });
    let t_open = t0.elapsed();
    let mem1 = Memory::now();
    let fds1 = Fds::now(&server);
    let (towards, accepted) = fds1.sockets(port);
    let open_flows = flows(&h.sw);
    let c = counters(&h.sw);
    let grown = fds1.total() as i64 - fds0.total() as i64;
    // Other tests may open and close descriptors meanwhile: count only what is new.
    let added =
        new_fds(&fds0.process, &fds1.process).len() + new_fds(&fds0.server, &fds1.server).len();
    println!(
        "{N} connections open in {t_open:.2?}: flows={open_flows}; descriptors {} -> {} (+{grown}: \
         process table +{}, server thread's {}), podwire sockets {towards}, accepted streams \
         {accepted}",
        fds0.total(),
        fds1.total(),
        fds1.process.len() as i64 - fds0.process.len() as i64,
        if shared_table {
            "shared".to_string()
        } else {
            format!("+{}", fds1.server.len() as i64 - fds0.server.len() as i64)
        },
    );
    let rss = (mem1.rss_kib as i64 - mem0.rss_kib as i64) * 1024;
    let slab = (mem1.slab_kib as i64 - mem0.slab_kib as i64) * 1024;
    let bufs = (mem1.tcp_pages as i64 - mem0.tcp_pages as i64) * 4096;
    println!(
        "memory: VmRSS {} -> {} KiB, {} (podwire + test, user space); kernel slab +{} KiB, {} \
         (both sockets of a flow and their epoll entry; system-wide); TCP buffers {:+} KiB",
        mem0.rss_kib,
        mem1.rss_kib,
        per_flow(rss, N),
        slab / 1024,
        per_flow(slab, N),
        bufs / 1024
    );
    assert_eq!(h.guest.stats.anomalies, 0, "{:?}", h.guest.stats);
    assert!(h.guest.conns.iter().all(|c| c.established));
    assert_eq!(open_flows, N, "one flow per connection");
    assert_eq!(count(&c, "tcp_opened_by_guest"), N as u64);
    assert_eq!((towards, accepted), (N, N), "one socket each side");
    // The slack covers descriptors that tests running beside this one hold open while it runs
    // (a flow's leak would add thousands, not hundreds).
    assert!(
        (2 * N..2 * N + 256).contains(&added),
        "{added} new descriptors (+{grown} in all), expected {}",
        2 * N
    );
    assert!(
        rss < 64 * 1024 * N as i64,
        "user-space memory per flow: {}",
        per_flow(rss, N)
    );

    // Data both ways on a sample: the server answers each line on the same stream.
    let sample: Vec<usize> = (0..N).step_by(SAMPLE_EVERY).collect();
    let (mut from_guest, mut to_guest) = (0, 0);
    for &i in &sample {
        let msg = format!("guest to pod {i}\n");
        from_guest += msg.len();
        to_guest += format!("pod to guest {i}\n").len();
        h.guest.send(i, msg.as_bytes());
    }
    h.run_until("data both ways", Duration::from_secs(30), &wait, |h| {
        let all = sample.iter().all(|&i| {
            let c = &h.guest.conns[i];
            c.all_acked() && c.data.len() >= format!("pod to guest {i}\n").len()
        });
        if all {
            Flow::Done
        } else {
            Flow::Idle
        }
    });
    for (i, c) in h.guest.conns.iter().enumerate() {
        let want = if i % SAMPLE_EVERY == 0 {
            format!("pod to guest {i}\n")
        } else {
            String::new()
        };
        assert_eq!(String::from_utf8_lossy(&c.data), want, "conn {i}");
    }
    {
        let st = server.stats();
        let mut served = st.served.clone();
        served.sort_unstable();
        assert_eq!(
            served, sample,
            "the pod read each sampled connection's data once"
        );
        assert_eq!((st.bytes_in, st.bytes_out), (from_guest, to_guest));
    }
    let t_data = t0.elapsed();
    println!(
        "data: {} connections, {from_guest} bytes to the pod and {to_guest} back, done at \
         {t_data:.2?}",
        sample.len()
    );

    // Close: even connections with FINs both ways (guest first), odd ones with a guest RST.
    for i in 0..N {
        if i % 2 == 0 {
            h.guest.fin(i);
        } else {
            h.guest.rst(i);
        }
    }
    h.run_until("closing", Duration::from_secs(60), &wait, |h| {
        let finished = h.guest.conns.iter().all(|c| c.phase == Phase::Finished);
        if finished && server.stats().open == 0 && flows(&h.sw) == 0 {
            Flow::Done
        } else {
            Flow::Idle
        }
    });
    let t_close = t0.elapsed();
    let mem2 = Memory::now();
    let c = counters(&h.sw);
    let fds2 = Fds::now(&server);
    let st = server.stats();
    println!(
        "all closed at {t_close:.2?}: flows={}, descriptors {} (baseline {}), VmRSS {} KiB; the \
         pod saw {} FINs and {} RSTs; guest {:?}; podwire: {}",
        flows(&h.sw),
        fds2.total(),
        fds0.total(),
        mem2.rss_kib,
        st.eofs,
        st.resets,
        h.guest.stats,
        h.sw.status()
    );
    for (i, g) in h.guest.conns.iter().enumerate() {
        let want = if i % 2 == 0 {
            End::Graceful
        } else {
            End::RstOut
        };
        assert_eq!(g.end, want, "conn {i}");
    }
    assert!(st.anomalies.is_empty(), "{:?}", st.anomalies);
    assert_eq!((st.accepted, st.eofs, st.resets), (N, N / 2, N / 2));
    assert_eq!(flows(&h.sw), 0);
    assert_eq!(fds2.sockets(port), (0, 0), "sockets left");
    let left = new_fds(&fds0.process, &fds2.process);
    assert!(left.is_empty(), "descriptors left behind: {left:?}");
    let left = new_fds(&fds0.server, &fds2.server);
    assert!(left.is_empty(), "server descriptors left: {left:?}");
    assert_eq!(count(&c, "tcp_opened_by_guest"), N as u64);
    assert_eq!(count(&c, "tcp_closed"), N as u64);
    assert_eq!(count(&c, "tcp_rst_from_guest"), (N / 2) as u64);
    assert_eq!(count(&c, "tcp_rst_to_guest"), 0);
    assert_eq!(count(&c, "tcp_connect_failed"), 0);
    assert_eq!(count(&c, "tcp_bytes_from_guest"), from_guest as u64);
    assert_eq!(count(&c, "tcp_bytes_to_guest"), to_guest as u64);
    // The system-call counters behind the metrics' syscalls-per-packet gauges: at most one
    // write per guest segment, and at least one peek per data frame to the guest.
    let (segs, sends) = (
        count(&c, "tcp_segments_from_guest"),
        count(&c, "tcp_send_calls"),
    );
    assert!(
        sends >= 1 && sends <= segs,
        "{sends} sends for {segs} segments"
    );
    let (frames, recvs) = (
        count(&c, "tcp_data_frames_to_guest"),
        count(&c, "tcp_recv_calls"),
    );
    assert!(
        frames >= 1 && recvs >= frames,
        "{recvs} receive calls for {frames} frames"
    );
    let drops: Vec<_> = c.iter().filter(|(k, _)| k.contains("drop")).collect();
    assert!(drops.is_empty(), "drops: {drops:?}");
    assert_eq!(h.guest.stats.anomalies, 0, "{:?}", h.guest.stats);
    assert_eq!(h.guest.stats.late_frames, 0, "{:?}", h.guest.stats);
    assert_eq!(h.guest.stats.fin_retransmits, 0, "FINs podwire did not ACK");
}

#[test]
fn connection_churn_leaves_nothing_behind() {
    const N: usize = 5_000;
    const BATCH: usize = 250;
    let _serial = serial();
    raise_nofile(65_536, 4 * BATCH as u64 + 1_000);
    let t0 = Instant::now();
    let server = PodServer::start();
    let port = server.port;
    let (_refusing, refused_port) = refusing_port();
    let wait = [server.wake_fd()];
    let mut h = Harness::new(Guest::new(20_000, N));
    let fds0 = Fds::now(&server);
    let mem0 = Memory::now();

    for b in (0..N).step_by(BATCH) {
        let batch = b..(b + BATCH).min(N);
        for i in batch.clone() {
            let dport = if Mode::of(i) == Mode::Refused {
                refused_port
            } else {
                port
            };
            h.guest.connect(i, dport);
        }
        let expect_accepted = server.stats().accepted
            + batch
                .clone()
                .filter(|&i| Mode::of(i) != Mode::Refused)
                .count();
        h.run_until("churn batch", Duration::from_secs(30), &wait, |h| {
            let mut busy = false;
            for i in batch.clone() {
                busy |= churn_guest(&mut h.guest, i);
            }
            let finished = batch
                .clone()
                .all(|i| h.guest.conns[i].phase == Phase::Finished);
            let served = {
                let st = server.stats();
                st.accepted == expect_accepted && st.open == 0
            };
            if finished && served && flows(&h.sw) == 0 {
                Flow::Done
            } else if busy {
                Flow::Busy
            } else {
                Flow::Idle
            }
        });
    }
    let elapsed = t0.elapsed();
    let mem1 = Memory::now();
    let c = counters(&h.sw);
    let fds1 = Fds::now(&server);
    let st = server.stats();
    println!(
        "{N} connections in {elapsed:.2?} ({:.0}/s): flows={}, descriptors {} (baseline {}), \
         VmRSS {} -> {} KiB; the pod accepted {}, saw {} FINs and {} RSTs; guest {:?}; \
         podwire: {}",
        N as f64 / elapsed.as_secs_f64(),
        flows(&h.sw),
        fds1.total(),
        fds0.total(),
        mem0.rss_kib,
        mem1.rss_kib,
        st.accepted,
        st.eofs,
        st.resets,
        h.guest.stats,
        h.sw.status()
    );

    let mut wrong: HashMap<(Mode, End), usize> = HashMap::new();
    for (i, g) in h.guest.conns.iter().enumerate() {
        let mode = Mode::of(i);
        let data_ok = g.data == mode.reply(i).unwrap_or_default().as_bytes();
        let established_ok = g.established == (mode != Mode::Refused);
        if g.end != mode.end() || !data_ok || !established_ok {
            *wrong.entry((mode, g.end)).or_default() += 1;
        }
    }
    let per_mode = N / Mode::ALL.len();
    let sum = |f: &dyn Fn(usize) -> usize| (0..N).map(f).sum::<usize>();
    let req_bytes = sum(&|i| match Mode::of(i) {
        Mode::Refused => 0,
        _ => Mode::request(i).len(),
    });
    let reply_bytes = sum(&|i| Mode::of(i).reply(i).map_or(0, |r| r.len()));
    assert_eq!(flows(&h.sw), 0);
    assert_eq!(fds1.sockets(port), (0, 0), "sockets left");
    let left = new_fds(&fds0.process, &fds1.process);
    assert!(left.is_empty(), "descriptors left behind: {left:?}");
    let left = new_fds(&fds0.server, &fds1.server);
    assert!(left.is_empty(), "server descriptors left: {left:?}");
    assert!(st.anomalies.is_empty(), "{:?}", st.anomalies);
    assert_eq!(st.accepted, 4 * per_mode);
    assert_eq!((st.bytes_in, st.bytes_out), (req_bytes, reply_bytes));
    // Each stream closed on the guest's FIN (GuestCloses) or RST (GuestResets) was counted.
    assert_eq!((st.eofs, st.resets), (per_mode, per_mode));
    let opened = count(&c, "tcp_opened_by_guest");
    assert!(
        (4 * per_mode as u64..=N as u64).contains(&opened),
        "opened {opened} (refusals count when the connect did not fail at once)"
    );
    assert_eq!(count(&c, "tcp_closed"), opened, "every connection removed");
    assert_eq!(count(&c, "tcp_connect_failed"), per_mode as u64);
    assert_eq!(count(&c, "tcp_rst_from_guest"), per_mode as u64);
    assert_eq!(count(&c, "tcp_rst_to_guest"), per_mode as u64);
    assert_eq!(count(&c, "tcp_bytes_from_guest"), req_bytes as u64);
    assert_eq!(count(&c, "tcp_bytes_to_guest"), reply_bytes as u64);
    assert_eq!(count(&c, "nat_flows_opened"), 0, "no UDP or ICMP flows");
    assert_eq!(h.guest.stats.anomalies, 0, "{:?}", h.guest.stats);
    assert!(
        wrong.is_empty(),
        "unexpected outcomes (mode, end): {wrong:?}"
    );
    let drops: Vec<_> = c.iter().filter(|(k, _)| k.contains("drop")).collect();
    assert!(drops.is_empty(), "drops: {drops:?}");
    assert_eq!(
        h.guest.stats.fin_retransmits, 0,
        "guest FINs podwire did not acknowledge (LAST_ACK after the pod closed first)"
    );
    assert_eq!(h.guest.stats.late_frames, 0, "{:?}", h.guest.stats);
}
