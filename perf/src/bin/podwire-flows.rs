//! podwire-flows: many TCP connections at once, for podwire's scale tests. Pure Rust (std, libc,
//! clap), so that the same binary runs on the host and in the test guest.
//!
//! ```text
//! podwire-flows serve ADDR:PORT                  echo server: echoes whatever each connection
//!                                                sends, never closes first; prints `listening`
//! podwire-flows hold ADDR:PORT N [--rst-half]    opens N connections, checks an 8-byte echo on
//!                                                each, prints `established N`, then waits for a
//!                                                line (or EOF) on stdin and closes them all,
//!                                                each with a FIN (waiting for the server's FIN
//!                                                back), or every second one with a RST
//!                                                (--rst-half); prints `closed N`
//! podwire-flows churn ADDR:PORT N [--parallel P] N connect/echo/close cycles, at most P
//!                                                (default 32) at a time; prints `churned N`
//! podwire-flows flood ADDR:PORT N [--parallel P] N connection attempts, at most P (default
//!                                                256) at a time, each closed as soon as it
//!                                                connected or failed; failures are expected
//!                                                and counted; prints `flooded N ok=.. failed=..`
//! podwire-flows spray ADDR:PORT N                one UDP datagram from each of N fresh source
//!                                                ports; prints `sprayed N`
//! podwire-flows garbage IFACE N [SEED]           N random Ethernet frames (the interface's own
//!                                                source MAC, an IPv4/IPv6/ARP/other EtherType,
//!                                                random bytes and length) through an AF_PACKET
//!                                                socket (root); prints `garbage N`
//! ```
//!
//! Every descriptor is non-blocking and waited on with one epoll set. Failures are counted by
//! error; the tool exits 1 with a summary if any connection failed, or if nothing happened for
//! a minute.

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Connections connecting (or waiting for their echo) at once in `hold`.
const WAVE: usize = 500;
/// Give up when no event arrives for this long.
const STALL: Duration = Duration::from_secs(60);
/// Bytes sent (and expected back) on each connection.
const PING: usize = 8;

type Result<T> = std::result::Result<T, String>;

#[derive(Debug, clap::Parser)]
#[command(
    name = "podwire-flows",
    about = "Many TCP connections at once, for scale tests"
)]
enum Cmd {
    /// Echo server: echoes whatever each connection sends, never closes first; prints
    /// `listening`.
    Serve { addr: SocketAddrV4 },
    /// Opens N connections, checks an echo on each, prints `established N`, then on a line
    /// (or EOF) on stdin closes them all; prints `closed N`.
    Hold {
        addr: SocketAddrV4,
        n: usize,
        /// Close every second connection with a RST instead of a FIN.
        #[arg(long)]
        rst_half: bool,
    },
    /// N connect/echo/close cycles; prints `churned N`.
    Churn {
        addr: SocketAddrV4,
        n: usize,
        /// At most this many at a time.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
        parallel: u64,
    },
    /// N connection attempts, each closed as soon as it connected or failed (failures are
    /// expected and counted); prints `flooded N ok=.. failed=..`.
    Flood {
        addr: SocketAddrV4,
        n: usize,
        /// At most this many at a time.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
        parallel: u64,
    },
    /// One UDP datagram from each of N fresh source ports; prints `sprayed N`.
    Spray { addr: SocketAddrV4, n: usize },
    /// N random Ethernet frames through an AF_PACKET socket on IFACE (root); prints
    /// `garbage N`.
    Garbage {
        iface: String,
        n: usize,
        /// Seed of the frames' randomness.
        #[arg(default_value_t = 0x9e37_79b9)]
        seed: u64,
    },
}

fn main() {
    let r = match <Cmd as clap::Parser>::parse() {
        Cmd::Serve { addr } => serve(addr),
        Cmd::Hold { addr, n, rst_half } => hold(addr, n, rst_half),
        Cmd::Churn { addr, n, parallel } => churn(addr, n, parallel as usize),
        Cmd::Flood { addr, n, parallel } => flood(addr, n, parallel as usize),
        Cmd::Spray { addr, n } => spray(addr, n),
        Cmd::Garbage { iface, n, seed } => garbage(&iface, n, seed),
    };
    if let Err(e) = r {
        eprintln!("podwire-flows: {e}");
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------ serve ----

fn serve(addr: SocketAddrV4) -> Result<()> {
    raise_nofile(None)?;
    let listener = socket()?;
    let one: libc::c_int = 1;
    setsockopt(&listener, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    let sa = sockaddr(addr);
    // SAFETY: a valid sockaddr_in and its size.
    if unsafe { libc::bind(listener.as_raw_fd(), sa_ptr(&sa), SA_LEN) } != 0 {
        return Err(os_err(&format!("bind {addr}")));
    }
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(os_err("listen"));
    }
    let ep = Epoll::new()?;
    const LISTENER: u64 = u64::MAX;
    ep.add(listener.as_raw_fd(), libc::EPOLLIN as u32, LISTENER)?;
    println!("listening on {addr}");

    // Accepted connections by fd, each with what could not be written back yet.
    let mut conns: BTreeMap<RawFd, (OwnedFd, Vec<u8>)> = BTreeMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let mut accept_error_shown = false;
    loop {
        let n = ep.wait(&mut events, -1)?;
        for ev in &events[..n] {
            let (flags, token) = (ev.events, ev.u64);
            if token == LISTENER {
                loop {
                    // SAFETY: accept4 on our listener; addresses are not wanted.
                    let fd = unsafe {
                        libc::accept4(
                            listener.as_raw_fd(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::WouldBlock && !accept_error_shown {
                            eprintln!("podwire-flows: accept: {e}");
                            accept_error_shown = true;
                        }
                        break;
                    }
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    ep.add(fd.as_raw_fd(), libc::EPOLLIN as u32, fd.as_raw_fd() as u64)?;
                    conns.insert(fd.as_raw_fd(), (fd, Vec::new()));
                }
                continue;
            }
            let raw = token as RawFd;
            let Some((fd, pending)) = conns.get_mut(&raw) else {
                continue;
            };
            let mut close = flags & (libc::EPOLLERR as u32) != 0;
            if !close && !pending.is_empty() {
                match send(fd, pending) {
                    Ok(k) => drop(pending.drain(..k)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => close = true,
                }
            }
            // Read only while everything read so far has been written back.
            while !close && pending.is_empty() {
                match recv(fd, &mut buf) {
                    Ok(0) => close = true, // the peer's FIN: close in turn
                    Ok(k) => {
                        let sent = match send(fd, &buf[..k]) {
                            Ok(s) => s,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                            Err(_) => {
                                close = true;
                                0
                            }
                        };
                        pending.extend_from_slice(&buf[sent..k]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => close = true,
                }
            }
            if close {
                // dropping the fd closes it, which also removes it from the epoll set
                conns.remove(&raw);
            } else {
                let want = if pending.is_empty() {
                    libc::EPOLLIN
                } else {
                    libc::EPOLLOUT
                };
                ep.modify(raw, want as u32, token)?;
            }
        }
    }
}

// ---------------------------------------------------------------- clients ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// Sent the ping, waiting for the echo.
    Echo,
    /// Echo checked; idle.
    Up,
    /// Sent a FIN, waiting for the server's.
    Closing,
}

struct Client {
    fd: OwnedFd,
    id: u64,
    phase: Phase,
    got: [u8; PING],
    got_len: usize,
}

/// Client connections in a slab (the index is the epoll token), and the failures so far.
struct Clients {
    addr: SocketAddrV4,
    ep: Epoll,
    slots: Vec<Option<Client>>,
    free: Vec<usize>,
    failures: BTreeMap<String, usize>,
    failed: usize,
    next_id: u64,
    last_event: Instant,
}

enum Step {
    /// Nothing to report.
    Busy,
    /// The connection's echo arrived and matched.
    Up(usize),
    /// The server's FIN arrived after ours; the connection is closed.
    Closed,
    /// The connection failed (counted) and is gone.
    Failed,
}

impl Clients {
    fn new(addr: SocketAddrV4) -> Result<Clients> {
        Ok(Clients {
            addr,
            ep: Epoll::new()?,
            slots: Vec::new(),
            free: Vec::new(),
            failures: BTreeMap::new(),
            failed: 0,
            next_id: 0,
            last_event: Instant::now(),
        })
    }

    /// Starts a non-blocking connect. Returns false if it failed at once (counted).
    fn connect(&mut self) -> Result<bool> {
        let id = self.next_id;
        self.next_id += 1;
        let fd = match socket() {
            Ok(fd) => fd,
            Err(e) => {
                self.fail(&e);
                return Ok(false);
            }
        };
        let sa = sockaddr(self.addr);
        // SAFETY: a valid sockaddr_in and its size.
        let rc = unsafe { libc::connect(fd.as_raw_fd(), sa_ptr(&sa), SA_LEN) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                self.fail(&format!("connect: {e}"));
                return Ok(false);
            }
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.ep
            .add(fd.as_raw_fd(), libc::EPOLLOUT as u32, slot as u64)?;
        self.slots[slot] = Some(Client {
            fd,
            id,
            phase: Phase::Connecting,
            got: [0; PING],
            got_len: 0,
        });
        Ok(true)
    }

    fn fail(&mut self, what: &str) {
        *self.failures.entry(what.to_string()).or_default() += 1;
        self.failed += 1;
    }

    /// Closes the connection in `slot` (with a RST if `rst`).
    fn close(&mut self, slot: usize, rst: bool) -> Result<()> {
        let c = self.slots[slot].take().expect("a client in the slot");
        if rst {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            setsockopt(&c.fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger)?;
        }
        self.free.push(slot);
        Ok(())
    }

    /// Sends a FIN on an idle connection and waits for the server's.
    fn shutdown(&mut self, slot: usize) -> Result<()> {
        let c = self.slots[slot].as_mut().expect("a client in the slot");
        // SAFETY: shutdown(2) on our socket.
        if unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_WR) } != 0 {
            let e = os_err("shutdown");
            self.slots[slot] = None;
            self.free.push(slot);
            self.fail(&e);
            return Ok(());
        }
        c.phase = Phase::Closing;
        self.ep
            .add(c.fd.as_raw_fd(), libc::EPOLLIN as u32, slot as u64)
    }

    /// Waits for events (up to 1 s) and advances the connections they are about. `on_step`
    /// sees every result. Fails when nothing at all happened for [`STALL`].
    fn poll(&mut self, mut on_step: impl FnMut(&mut Clients, Step) -> Result<()>) -> Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        let n = self.ep.wait(&mut events, 1000)?;
        if n == 0 {
            if self.last_event.elapsed() > STALL {
                return Err(format!(
                    "nothing happened for {STALL:?}: {}",
                    self.phases_summary()
                ));
            }
            return Ok(());
        }
        self.last_event = Instant::now();
        for ev in &events[..n] {
            let step = self.advance(ev.u64 as usize)?;
            on_step(self, step)?;
        }
        Ok(())
    }

    fn advance(&mut self, slot: usize) -> Result<Step> {
        let Some(c) = self.slots[slot].as_mut() else {
            return Ok(Step::Busy);
        };
        let fd = c.fd.as_raw_fd();
        let outcome: std::result::Result<Step, String> = match c.phase {
            Phase::Connecting => {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: SO_ERROR into an int of the right size.
                unsafe {
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut err as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                if err != 0 {
                    Err(format!("connect: {}", io::Error::from_raw_os_error(err)))
                } else {
                    match send(&c.fd, &c.id.to_be_bytes()) {
                        Ok(PING) => {
                            c.phase = Phase::Echo;
                            self.ep.modify(fd, libc::EPOLLIN as u32, slot as u64)?;
                            Ok(Step::Busy)
                        }
                        Ok(k) => Err(format!("short send ({k} of {PING} bytes)")),
                        Err(e) => Err(format!("send: {e}")),
                    }
                }
            }
            Phase::Echo => match recv(&c.fd, &mut c.got[c.got_len..]) {
                Ok(0) => Err("closed by the server before the echo".to_string()),
                Ok(k) => {
                    c.got_len += k;
                    if c.got_len < PING {
                        Ok(Step::Busy)
                    } else if c.got != c.id.to_be_bytes() {
                        Err(format!("wrong echo {:?}", c.got))
                    } else {
                        c.phase = Phase::Up;
                        self.ep.delete(fd)?;
                        Ok(Step::Up(slot))
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Step::Busy),
                Err(e) => Err(format!("recv: {e}")),
            },
            Phase::Up => Ok(Step::Busy),
            Phase::Closing => {
                let mut b = [0u8; 64];
                match recv(&c.fd, &mut b) {
                    Ok(0) => {
                        self.slots[slot] = None; // closes it
                        self.free.push(slot);
                        Ok(Step::Closed)
                    }
                    Ok(k) => Err(format!("{k} unexpected bytes while closing")),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Step::Busy),
                    Err(e) => Err(format!("recv while closing: {e}")),
                }
            }
        };
        match outcome {
            Ok(step) => Ok(step),
            Err(what) => {
                let phase = self.slots[slot].take().map(|c| c.phase);
                self.free.push(slot);
                self.fail(&format!("{what} (while {:?})", phase.unwrap()));
                Ok(Step::Failed)
            }
        }
    }

    fn phases_summary(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for c in self.slots.iter().flatten() {
            *counts.entry(format!("{:?}", c.phase)).or_default() += 1;
        }
        format!("{counts:?}, failed {}", self.failed)
    }

    /// Err with a summary of the failures, if any.
    fn check(&self, total: usize) -> Result<()> {
        if self.failed == 0 {
            return Ok(());
        }
        let list: Vec<String> = self
            .failures
            .iter()
            .map(|(what, n)| format!("{n} x {what}"))
            .collect();
        Err(format!(
            "{} of {total} connections to {} failed: {}",
            self.failed,
            self.addr,
            list.join("; ")
        ))
    }
}

// ------------------------------------------------------------------- hold ----

fn hold(addr: SocketAddrV4, n: usize, rst_half: bool) -> Result<()> {
    raise_nofile(Some(n as u64 + 1024))?;
    let t0 = Instant::now();
    let mut cl = Clients::new(addr)?;
    let (mut started, mut in_flight, mut up) = (0usize, 0usize, Vec::with_capacity(n));
    while up.len() + cl.failed < n {
        while started < n && in_flight < WAVE {
            started += 1;
            if cl.connect()? {
                in_flight += 1;
            }
        }
        cl.poll(|_, step| {
            match step {
                Step::Up(slot) => {
                    up.push(slot);
                    in_flight -= 1;
                }
                Step::Failed => in_flight -= 1,
                Step::Busy | Step::Closed => {}
            }
            Ok(())
        })?;
    }
    cl.check(n)?;
    println!("established {n} in {:.2?}", t0.elapsed());

    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("stdin: {e}"))?;

    let t1 = Instant::now();
    let (mut fins, mut rsts, mut closing) = (0, 0, 0);
    for (i, &slot) in up.iter().enumerate() {
        if rst_half && i % 2 == 1 {
            cl.close(slot, true)?;
            rsts += 1;
        } else {
            cl.shutdown(slot)?;
            closing += 1;
        }
    }
    while closing > 0 {
        cl.poll(|_, step| {
            match step {
                Step::Closed => {
                    fins += 1;
                    closing -= 1;
                }
                Step::Failed => closing -= 1,
                Step::Busy | Step::Up(_) => {}
            }
            Ok(())
        })?;
    }
    cl.check(n)?;
    println!(
        "closed {n} in {:.2?} ({fins} with FIN both ways, {rsts} with RST)",
        t1.elapsed()
    );
    Ok(())
}

// ------------------------------------------------------------------ churn ----

fn churn(addr: SocketAddrV4, n: usize, parallel: usize) -> Result<()> {
    raise_nofile(None)?;
    let t0 = Instant::now();
    let mut cl = Clients::new(addr)?;
    let (mut started, mut in_flight, mut done) = (0usize, 0usize, 0usize);
    while done + cl.failed < n {
        while started < n && in_flight < parallel {
            started += 1;
            if cl.connect()? {
                in_flight += 1;
            }
        }
        cl.poll(|cl, step| {
            match step {
                Step::Up(slot) => {
                    cl.close(slot, false)?;
                    done += 1;
                    in_flight -= 1;
                }
                Step::Failed => in_flight -= 1,
                Step::Busy | Step::Closed => {}
            }
            Ok(())
        })?;
    }
    cl.check(n)?;
    let t = t0.elapsed();
    println!(
        "churned {n} in {t:.2?} ({:.0} connections/s, {parallel} at a time)",
        n as f64 / t.as_secs_f64()
    );
    Ok(())
}

// ------------------------------------------------------------------ flood ----

fn flood(addr: SocketAddrV4, n: usize, parallel: usize) -> Result<()> {
    raise_nofile(None)?;
    let t0 = Instant::now();
    let ep = Epoll::new()?;
    let sa = sockaddr(addr);
    let mut pending: BTreeMap<RawFd, OwnedFd> = BTreeMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let (mut started, mut ok, mut failed) = (0usize, 0usize, 0usize);
    let mut last_progress = Instant::now();
    while ok + failed < n {
        while started < n && pending.len() < parallel {
            started += 1;
            let fd = socket()?;
            // SAFETY: a valid sockaddr_in and its size.
            let rc = unsafe { libc::connect(fd.as_raw_fd(), sa_ptr(&sa), SA_LEN) };
            if rc == 0 {
                ok += 1;
                continue;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
                failed += 1;
                continue;
            }
            ep.add(fd.as_raw_fd(), libc::EPOLLOUT as u32, fd.as_raw_fd() as u64)?;
            pending.insert(fd.as_raw_fd(), fd);
        }
        let got = ep.wait(&mut events, 1000)?;
        if got > 0 {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            return Err(format!("flood stalled: ok={ok} failed={failed}"));
        }
        for ev in &events[..got] {
            let Some(fd) = pending.remove(&(ev.u64 as RawFd)) else {
                continue;
            };
            let _ = ep.delete(fd.as_raw_fd());
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: SO_ERROR into a valid int.
            unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if err == 0 {
                ok += 1;
            } else {
                failed += 1;
            }
        }
    }
    println!(
        "flooded {n} ok={ok} failed={failed} in {:.2?}",
        t0.elapsed()
    );
    Ok(())
}

// ------------------------------------------------------------------ spray ----

fn spray(addr: SocketAddrV4, n: usize) -> Result<()> {
    let sa = sockaddr(addr);
    for _ in 0..n {
        // SAFETY: socket(2); owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os_err("socket"));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A fresh socket sends from a fresh ephemeral port. Errors (a full queue) are the
        // point of the exercise, not a failure of it.
        // SAFETY: the buffer, the address and their sizes.
        unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                b"spray".as_ptr().cast(),
                5,
                libc::MSG_DONTWAIT,
                sa_ptr(&sa),
                SA_LEN,
            )
        };
    }
    println!("sprayed {n}");
    Ok(())
}

// ---------------------------------------------------------------- garbage ----

fn garbage(iface: &str, n: usize, seed: u64) -> Result<()> {
    let mac_text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .map_err(|e| format!("{iface}: {e}"))?;
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(mac_text.trim().split(':')) {
        *b = u8::from_str_radix(part, 16).map_err(|_| format!("bad MAC {mac_text:?}"))?;
    }
    let name = std::ffi::CString::new(iface).map_err(|_| "bad interface name".to_string())?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(os_err(iface));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: socket(2); owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(os_err("AF_PACKET socket (root needed)"));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_ifindex = ifindex as i32;
    ll.sll_halen = 6;
    let mut state = seed | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut frame = [0u8; 1514];
    for _ in 0..n {
        let len = 14 + (next() as usize) % (frame.len() - 14 + 1);
        for b in frame[14..len].iter_mut() {
            *b = next() as u8;
        }
        frame[..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&mac);
        let ethertype: u16 = match next() % 4 {
            0 => 0x0800,
            1 => 0x86dd,
            2 => 0x0806,
            _ => next() as u16,
        };
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        if ethertype == 0x0800 && len > 14 {
            frame[14] = 0x45; // mostly a plausible IPv4 header start, to get past the first check
        }
        // SAFETY: the frame, the link-layer address and their sizes.
        unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                len,
                0,
                (&ll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
    }
    println!("garbage {n}");
    Ok(())
}

// --------------------------------------------------------------- plumbing ----

struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> Result<Epoll> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(os_err("epoll_create1"));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: epoll_ctl with a valid event struct.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(os_err("epoll_ctl"));
        }
        Ok(())
    }

    fn add(&self, fd: RawFd, events: u32, token: u64) -> Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    fn modify(&self, fd: RawFd, events: u32, token: u64) -> Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    fn delete(&self, fd: RawFd) -> Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` (-1: forever); an interrupted wait returns 0 events.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> Result<usize> {
        // SAFETY: the buffer and its length.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(format!("epoll_wait: {e}"));
        }
        Ok(n as usize)
    }
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// A non-blocking IPv4 TCP socket.
fn socket() -> Result<OwnedFd> {
    // SAFETY: socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(os_err("socket"));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const SA_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn sa_ptr(sa: &libc::sockaddr_in) -> *const libc::sockaddr {
    (sa as *const libc::sockaddr_in).cast()
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: &T) -> Result<()> {
    // SAFETY: `v` is a valid value of the option's type, with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err("setsockopt"));
    }
    Ok(())
}

fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the buffer and its length; MSG_NOSIGNAL: an EPIPE error, not a signal.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer and its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, or, if `want` is above the hard limit,
/// both to `want` (which needs root or CAP_SYS_RESOURCE).
fn raise_nofile(want: Option<u64>) -> Result<()> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(os_err("getrlimit"));
    }
    let hard = r.rlim_max;
    match want {
        Some(w) if w > hard => {
            r.rlim_cur = w;
            r.rlim_max = w;
        }
        _ => r.rlim_cur = hard,
    }
    // SAFETY: setrlimit from a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(os_err(&format!(
            "cannot raise the descriptor limit to {} (hard limit {hard})",
            r.rlim_cur
        )));
    }
    Ok(())
}
