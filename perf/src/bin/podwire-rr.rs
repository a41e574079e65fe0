//! podwire-rr: the benchmark's small network tools. Pure Rust (std, libc, clap), so that the
//! same binary runs on the host and in the test guest (put into its initramfs by `overlay::initrd_with`).
//!
//! ```text
//! podwire-rr serve ADDR:PORT              TCP request/response server: answers each SIZE-byte
//!                                         request with SIZE bytes (TCP_NODELAY), a thread per
//!                                         connection; prints `listening`
//! podwire-rr rr ADDR:PORT SECONDS [SIZE]  one TCP connection (TCP_NODELAY), SIZE-byte (default
//!                                         1, like netperf TCP_RR) request, wait for the SIZE-byte
//!                                         response, repeat for SECONDS; prints
//!                                         `transactions N seconds S rate R`
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
    /// TCP request/response server: answers each request with as many bytes; prints
    /// `listening`.
    Serve { addr: SocketAddrV4 },
    /// One TCP connection of SIZE-byte requests and responses for SECONDS; prints
    /// `transactions N seconds S rate R`.
    Rr {
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
            addr,
            seconds,
            size,
        } => rr(addr, seconds, size as usize),
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
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut n: u64 = 0;
    while Instant::now() < end {
        s.write_all(&req).map_err(|e| format!("send: {e}"))?;
        s.read_exact(&mut resp)
            .map_err(|e| format!("receive after {n} transactions: {e}"))?;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "transactions {n} seconds {secs:.3} rate {:.1}",
        n as f64 / secs
    );
    Ok(())
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
