//! Request/response transactions, 1 byte each way, and their latency statistics.
//!
//! - [`GuestStack`]: smoltcp on a [`RingPhy`]: DHCP for the address and router, then UDP or TCP
//!   transactions with the far host's echo server through the backend. It never spins: between
//!   polls it sleeps on the call eventfds (or until smoltcp's next timer).
//! - [`direct_rr`]: the same transactions from a kernel socket (run in the pod namespace), the
//!   baseline the backend's "added latency" is measured against.
//! - [`serve_echo`]: the far host's echo server (UDP and TCP on one port, TCP_NODELAY, a thread
//!   per TCP connection): socat's UDP mode forks per datagram, which would swamp the figures.
//!
//! Each transaction is timed from just before the request is handed to the stack to the moment
//! its answer is read (std's monotonic clock).

use super::phy::RingPhy;
use super::NetDriver;
use anyhow::{bail, Context, Result};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{dhcpv4, tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpEndpoint, Ipv4Address};
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// The guest's MAC (QEMU's default).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// How long one transaction may take before it counts as lost (UDP) or fails (TCP).
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Udp,
    Tcp,
}

/// Latency figures of one series of transactions.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RrStats {
    pub transactions: u64,
    /// UDP requests whose answer did not come within the timeout.
    pub lost: u64,
    pub seconds: f64,
    pub trans_per_s: f64,
    pub min_us: f64,
    pub mean_us: f64,
    pub median_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl RrStats {
    /// Figures from round-trip times in ns and the wall time of the whole series.
    pub fn from_samples(samples: &mut [u64], lost: u64, wall: Duration) -> RrStats {
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        let n = samples.len();
        let pct = |per_mille: usize| -> f64 {
            if n == 0 {
                return 0.0;
            }
            // nearest rank, in integers (0.999 * 1000 is not 999 in floating point)
            let rank = (per_mille * n).div_ceil(1000);
            us(samples[rank.clamp(1, n) - 1])
        };
        let sum: u128 = samples.iter().map(|&s| s as u128).sum();
        RrStats {
            transactions: n as u64,
            lost,
            seconds: wall.as_secs_f64(),
            trans_per_s: if wall.is_zero() {
                0.0
            } else {
                n as f64 / wall.as_secs_f64()
            },
            min_us: samples.first().map_or(0.0, |&s| us(s)),
            mean_us: if n == 0 {
                0.0
            } else {
                sum as f64 / n as f64 / 1000.0
            },
            median_us: pct(500),
            p99_us: pct(990),
            p999_us: pct(999),
            max_us: samples.last().map_or(0.0, |&s| us(s)),
        }
    }
}

/// Runs `count` transactions after `warmup` untimed ones; `one` does one and returns its RTT
/// (None: lost).
fn series(
    warmup: u64,
    count: u64,
    mut one: impl FnMut(u8) -> Result<Option<Duration>>,
) -> Result<RrStats> {
    for i in 0..warmup {
        one(i as u8)?;
    }
    let mut samples = Vec::with_capacity(count as usize);
    let mut lost = 0;
    let start = Instant::now();
    for i in 0..count {
        match one(i as u8)? {
            Some(d) => samples.push(d.as_nanos() as u64),
            None => lost += 1,
        }
    }
    Ok(RrStats::from_samples(&mut samples, lost, start.elapsed()))
}

// ---------------------------------------------------------------- direct ----

/// Transactions from a kernel socket of this namespace to `server`.
pub fn direct_rr(proto: Proto, server: SocketAddrV4, warmup: u64, count: u64) -> Result<RrStats> {
    let mut buf = [0u8; 16];
    match proto {
        Proto::Udp => {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(server)?;
            s.set_read_timeout(Some(TRANSACTION_TIMEOUT))?;
            series(warmup, count, |b| {
                let t = Instant::now();
                s.send(&[b])?;
                loop {
                    match s.recv(&mut buf) {
                        Ok(1) if buf[0] == b => return Ok(Some(t.elapsed())),
                        Ok(_) => continue, // a late answer to a lost request
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            return Ok(None)
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            })
        }
        Proto::Tcp => {
            let mut s = TcpStream::connect_timeout(&SocketAddr::V4(server), TRANSACTION_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(TRANSACTION_TIMEOUT))?;
            series(warmup, count, |b| {
                let t = Instant::now();
                s.write_all(&[b])?;
                s.read_exact(&mut buf[..1]).context("TCP echo answer")?;
                if buf[0] != b {
                    bail!("TCP echo answered {} to {b}", buf[0]);
                }
                Ok(Some(t.elapsed()))
            })
        }
    }
}

// ------------------------------------------------------------------ echo ----

/// Serves UDP and TCP echo on `addr` until the process is killed.
pub fn serve_echo(addr: SocketAddrV4) -> Result<()> {
    let udp = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
    let tcp = TcpListener::bind(addr).with_context(|| format!("binding TCP {addr}"))?;
    serve_echo_on(udp, tcp);
    Ok(())
}

/// Serves echo on bound sockets: UDP in a thread of its own, TCP in this one.
pub fn serve_echo_on(udp: UdpSocket, tcp: TcpListener) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], peer);
        }
    });
    for conn in tcp.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let mut buf = [0u8; 65536];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

// ----------------------------------------------------------------- guest ----

/// smoltcp as the guest's stack on the rings.
pub struct GuestStack {
    pub phy: RingPhy,
    iface: Interface,
    sockets: SocketSet<'static>,
    /// The address DHCP gave (with its prefix) and the router.
    pub address: Option<IpCidr>,
    pub router: Option<Ipv4Address>,
}

impl GuestStack {
    pub fn new(driver: NetDriver) -> GuestStack {
        let mut phy = RingPhy::new(driver);
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let iface = Interface::new(config, &mut phy, now());
        GuestStack {
            phy,
            iface,
            sockets: SocketSet::new(Vec::new()),
            address: None,
            router: None,
        }
    }

    /// One round of smoltcp's processing, then fails on a driver error.
    fn poll(&mut self) -> Result<()> {
        self.iface.poll(now(), &mut self.phy, &mut self.sockets);
        if let Some(e) = self.phy.error.take() {
            return Err(e.context("the rings"));
        }
        Ok(())
    }

    /// Sleeps until an interrupt, smoltcp's next timer or `deadline`, whichever is first.
    fn sleep(&mut self, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        let timer = self
            .iface
            .poll_delay(now(), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(left);
        self.phy.driver.wait(left.min(timer))?;
        Ok(())
    }

    /// Gets an address by DHCPv4 and installs it and the default route.
    pub fn dhcp(&mut self, timeout: Duration) -> Result<()> {
        let h = self.sockets.add(dhcpv4::Socket::new());
        let deadline = Instant::now() + timeout;
        loop {
            self.poll()?;
            if let Some(dhcpv4::Event::Configured(c)) =
                self.sockets.get_mut::<dhcpv4::Socket>(h).poll()
            {
                let cidr = IpCidr::Ipv4(c.address);
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(cidr);
                });
                if let Some(r) = c.router {
                    self.iface
                        .routes_mut()
                        .add_default_ipv4_route(r)
                        .map_err(|e| anyhow::anyhow!("default route: {e:?}"))?;
                }
                self.address = Some(cidr);
                self.router = c.router;
                break;
            }
            if Instant::now() >= deadline {
                bail!("no DHCP lease within {timeout:?}");
            }
            self.sleep(deadline)?;
        }
        self.sockets.remove(h);
        Ok(())
    }

    /// Transactions with the echo server at `server` over `proto`.
    pub fn rr(
        &mut self,
        proto: Proto,
        server: SocketAddrV4,
        warmup: u64,
        count: u64,
    ) -> Result<RrStats> {
        match proto {
            Proto::Udp => self.udp_rr(server, warmup, count),
            Proto::Tcp => self.tcp_rr(server, warmup, count),
        }
    }

    fn udp_rr(&mut self, server: SocketAddrV4, warmup: u64, count: u64) -> Result<RrStats> {
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 4096]);
        let mut s = udp::Socket::new(buf(), buf());
        s.bind(40_007)
            .map_err(|e| anyhow::anyhow!("UDP bind: {e:?}"))?;
        let h = self.sockets.add(s);
        let remote = IpEndpoint::from(SocketAddr::V4(server));
        // the first exchange also resolves the router's MAC: give it longer
        self.udp_one(h, remote, 0, Duration::from_secs(5))?
            .context("no UDP answer from the echo server")?;
        let r = series(warmup, count, |b| {
            self.udp_one(h, remote, b, TRANSACTION_TIMEOUT)
        });
        self.sockets.remove(h);
        r
    }

    fn udp_one(
        &mut self,
        h: SocketHandle,
        remote: IpEndpoint,
        b: u8,
        timeout: Duration,
    ) -> Result<Option<Duration>> {
        let t = Instant::now();
        let deadline = t + timeout;
        self.sockets
            .get_mut::<udp::Socket>(h)
            .send_slice(&[b], remote)
            .map_err(|e| anyhow::anyhow!("UDP send: {e:?}"))?;
        loop {
            self.poll()?;
            let s = self.sockets.get_mut::<udp::Socket>(h);
            while let Ok((data, _)) = s.recv() {
                if data == [b] {
                    return Ok(Some(t.elapsed()));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.sleep(deadline)?;
        }
    }

    fn tcp_rr(&mut self, server: SocketAddrV4, warmup: u64, count: u64) -> Result<RrStats> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 4096]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        );
        // like TCP_NODELAY; the ACK delay stays smoltcp's default so that, as from a Linux
        // guest, the acknowledgement of an answer rides on the next request
        s.set_nagle_enabled(false);
        let h = self.sockets.add(s);
        let remote = IpEndpoint::from(SocketAddr::V4(server));
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(self.iface.context(), remote, 40_008)
            .map_err(|e| anyhow::anyhow!("TCP connect: {e:?}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.sockets.get_mut::<tcp::Socket>(h).may_send() {
            self.poll()?;
            if Instant::now() >= deadline {
                bail!("the TCP connection to {server} did not open within 5 s");
            }
            if self.sockets.get_mut::<tcp::Socket>(h).may_send() {
                break;
            }
            self.sleep(deadline)?;
        }
        let r = series(warmup, count, |b| {
            let t = Instant::now();
            let deadline = t + TRANSACTION_TIMEOUT;
            self.sockets
                .get_mut::<tcp::Socket>(h)
                .send_slice(&[b])
                .map_err(|e| anyhow::anyhow!("TCP send: {e:?}"))?;
            loop {
                self.poll()?;
                let s = self.sockets.get_mut::<tcp::Socket>(h);
                let mut got = [0u8; 1];
                match s.recv_slice(&mut got) {
                    Ok(1) if got[0] == b => return Ok(Some(t.elapsed())),
                    Ok(1) => bail!("TCP echo answered {} to {b}", got[0]),
                    Ok(_) => {}
                    Err(e) => bail!("TCP receive: {e:?}"),
                }
                if Instant::now() >= deadline {
                    bail!("no TCP answer within {TRANSACTION_TIMEOUT:?}");
                }
                self.sleep(deadline)?;
            }
        });
        self.sockets.get_mut::<tcp::Socket>(h).close();
        let _ = self.poll();
        self.sockets.remove(h);
        r
    }
}

fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        s.reverse();
        let st = RrStats::from_samples(&mut s, 2, Duration::from_secs(2));
        assert_eq!(st.transactions, 1000);
        assert_eq!(st.lost, 2);
        assert_eq!(st.trans_per_s, 500.0);
        assert_eq!(st.min_us, 1.0);
        assert_eq!(st.median_us, 500.0);
        assert_eq!(st.p99_us, 990.0);
        assert_eq!(st.p999_us, 999.0);
        assert_eq!(st.max_us, 1000.0);
        assert_eq!(st.mean_us, 500.5);
        let e = RrStats::from_samples(&mut [], 0, Duration::ZERO);
        assert_eq!((e.transactions, e.median_us, e.trans_per_s), (0, 0.0, 0.0));
    }

    /// The echo server and the direct client agree over loopback (no namespaces needed).
    #[test]
    fn direct_against_the_echo_server() {
        // a free TCP port, then UDP on the same number (another port if that one is taken)
        let (tcp, udp) = (0..20)
            .find_map(|_| {
                let tcp = TcpListener::bind("127.0.0.1:0").ok()?;
                let udp = UdpSocket::bind(tcp.local_addr().ok()?).ok()?;
                Some((tcp, udp))
            })
            .unwrap();
        let std::net::SocketAddr::V4(addr) = tcp.local_addr().unwrap() else {
            unreachable!()
        };
        // bound before the server thread starts: nothing to wait for
        std::thread::spawn(move || serve_echo_on(udp, tcp));
        for proto in [Proto::Udp, Proto::Tcp] {
            let st = direct_rr(proto, addr, 5, 50).unwrap();
            assert_eq!(st.transactions + st.lost, 50, "{proto:?}");
            assert!(st.transactions > 0);
        }
    }
}
