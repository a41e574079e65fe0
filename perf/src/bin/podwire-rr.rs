//! podwire-rr: the benchmark's small network tools. Pure Rust (std, libc, clap), so that the
//! same binary runs on the host and in the test guest (put into its initramfs by `overlay::initrd_with`).
//!
//! ```text
//! podwire-rr serve ADDR:PORT              request/response server: answers each TCP request
//!                                         with as many bytes (TCP_NODELAY, a thread per
//!                                         connection) and echoes each UDP datagram on the same
//!                                         port; prints `listening`
//! podwire-rr rr [--udp] ADDR:PORT SECONDS [SIZE]
//!                                         one TCP connection (TCP_NODELAY) or connected UDP
//!                                         socket, SIZE-byte (default 1, like netperf TCP_RR /
//!                                         UDP_RR) request, wait for the SIZE-byte response,
//!                                         repeat for SECONDS; prints `transactions N seconds S
//!                                         rate R p50 A p99 B p999 C lost L` (round trips in µs;
//!                                         a UDP answer not back in 200 ms counts as lost)
//! podwire-rr flood ADDR:PORT SECONDS SIZE [SRCPORT]
//!                                         UDP datagrams of SIZE payload bytes as fast as the
//!                                         socket takes them, for SECONDS; prints
//!                                         `sent N errors E seconds S rate R`
//! ```
//!
//! Nothing here is timed against a threshold: the tools report what they measured.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, String>;

#[derive(Debug, clap::Parser)]
#[command(name = "podwire-rr", about = "The benchmark's small network tools")]
enum Cmd {
    /// Request/response server (TCP and UDP on ADDR): answers each request with as many
    /// bytes; prints `listening`.
    Serve { addr: SocketAddrV4 },
    /// One TCP connection (or UDP socket) of SIZE-byte requests and responses for SECONDS;
    /// prints `transactions N seconds S rate R p50 A p99 B p999 C lost L`.
    Rr {
        /// UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        addr: SocketAddrV4,
        seconds: u64,
        #[arg(default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        size: u64,
    },
    /// UDP datagrams of SIZE payload bytes as fast as the socket takes them, for SECONDS;
    /// prints `sent N errors E seconds S rate R`.
    Flood {
        addr: SocketAddrV4,
        seconds: u64,
        size: usize,
        #[arg(default_value_t = 0)]
        src_port: u16,
    },
}

fn main() {
    let r = match <Cmd as clap::Parser>::parse() {
        Cmd::Serve { addr } => serve(addr),
        Cmd::Rr {
            udp,
            addr,
            seconds,
            size,
        } => {
            if udp {
                udp_rr(addr, seconds, size as usize)
            } else {
                rr(addr, seconds, size as usize)
            }
        }
        Cmd::Flood {
            addr,
            seconds,
            size,
            src_port,
        } => flood(addr, seconds, size, src_port),
    };
    if let Err(e) = r {
        eprintln!("podwire-rr: {e}");
        std::process::exit(1);
    }
}

fn serve(at: SocketAddrV4) -> Result<()> {
    let l = TcpListener::bind(at).map_err(|e| format!("bind {at}: {e}"))?;
    let u = UdpSocket::bind(at).map_err(|e| format!("bind UDP {at}: {e}"))?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, peer)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&buf[..n], peer);
        }
    });
    println!("listening");
    let _ = std::io::stdout().flush();
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 65536];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

fn rr(to: SocketAddrV4, seconds: u64, size: usize) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(10))
        .map_err(|e| format!("connect {to}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let req = vec![b'r'; size];
    let mut resp = vec![0u8; size];
    let mut rtts = Rtts::new(seconds);
    let end = rtts.start + Duration::from_secs(seconds);
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        s.write_all(&req).map_err(|e| format!("send: {e}"))?;
        s.read_exact(&mut resp)
            .map_err(|e| format!("receive after {} transactions: {e}", rtts.us.len()))?;
        rtts.push(sent);
    }
    rtts.print(0);
    Ok(())
}

/// Like [`rr`] over a connected UDP socket. Each request's bytes carry a sequence number
/// (mod 256), so that an answer that comes back after its request was given up for lost is
/// not taken for the next one's.
fn udp_rr(to: SocketAddrV4, seconds: u64, size: usize) -> Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    s.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let mut req = vec![0u8; size];
    let mut resp = vec![0u8; size.max(1) + 1];
    let mut rtts = Rtts::new(seconds);
    let end = rtts.start + Duration::from_secs(seconds);
    let (mut seq, mut lost) = (0u8, 0u64);
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        seq = seq.wrapping_add(1);
        req.fill(seq);
        s.send(&req).map_err(|e| format!("send: {e}"))?;
        loop {
            match s.recv(&mut resp) {
                Ok(n) if n == size && resp[0] == seq => {
                    rtts.push(sent);
                    break;
                }
                Ok(_) => continue, // a late answer to an earlier request
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    lost += 1;
                    break;
                }
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
    }
    rtts.print(lost);
    Ok(())
}

/// Round-trip times of one run, in µs.
struct Rtts {
    start: Instant,
    us: Vec<u32>,
}

impl Rtts {
    fn new(seconds: u64) -> Rtts {
        Rtts {
            start: Instant::now(),
            // a TCG guest makes a few thousand per second
            us: Vec::with_capacity(usize::try_from(seconds).unwrap_or(0).saturating_mul(8192)),
        }
    }

    fn push(&mut self, sent: Instant) {
        let us = sent.elapsed().as_micros();
        self.us.push(u32::try_from(us).unwrap_or(u32::MAX));
    }

    fn print(mut self, lost: u64) {
        let secs = self.start.elapsed().as_secs_f64();
        let n = self.us.len();
        self.us.sort_unstable();
        let at = |q: f64| {
            self.us
                .get(((n as f64 * q) as usize).min(n.saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "transactions {n} seconds {secs:.3} rate {:.1} p50 {} p99 {} p999 {} lost {lost}",
            n as f64 / secs,
            at(0.5),
            at(0.99),
            at(0.999)
        );
    }
}

fn flood(to: SocketAddrV4, seconds: u64, size: usize, src_port: u16) -> Result<()> {
    let s = UdpSocket::bind(("0.0.0.0", src_port)).map_err(|e| format!("bind: {e}"))?;
    s.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    let buf = vec![0x55u8; size];
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let (mut sent, mut errors) = (0u64, 0u64);
    'outer: loop {
        // look at the clock every 256 datagrams only
        for _ in 0..256 {
            match s.send(&buf) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
        if Instant::now() >= end {
            break 'outer;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {sent} errors {errors} seconds {secs:.3} rate {:.1}",
        sent as f64 / secs
    );
    Ok(())
}
