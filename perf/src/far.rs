//! Services on the far host (198.18.1.1 in the far namespace): DNS (dnsmasq,
//! no DHCP), UDP and TCP echo (socat), iperf3. Each start function returns
//! once the service listens (polled with `ss`, with a deadline).

use crate::netns::{Netns, Proc, Proto, FAR_HOST, FAR_HOST6, SEARCH_DOMAIN};
use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Name dnsmasq resolves to [`FAR_HOST`].
pub const FAR_NAME: &str = "far.podwire.test";
pub const DNS_PORT: u16 = 53;
pub const UDP_ECHO_PORT: u16 = 7;
pub const TCP_ECHO_PORT: u16 = 7;
pub const IPERF3_PORT: u16 = 5201;
/// How long a service may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until `proc` listens on `addr:port`, failing early (with its log)
/// if it exits.
pub fn wait_service(
    ns: &Netns,
    proc: &mut Proc,
    proto: Proto,
    addr: Ipv4Addr,
    port: u16,
) -> Result<()> {
    let name = proc.name().to_string();
    crate::util::wait_until(
        &format!("{name} to listen on {proto:?} {addr}:{port}"),
        START_TIMEOUT,
        || {
            proc.ensure_running()?;
            let flag = if proto == Proto::Tcp { "-t" } else { "-u" };
            let out = ns.exec(&["ss", "-Hln", flag])?;
            Ok(crate::netns::ss_listening(&out, Some(addr), port))
        },
    )
}

/// dnsmasq answering DNS on 198.18.1.1:53: `far.podwire.test` (and any name
/// under it) is 198.18.1.1 and fd00:198:18:1::1, other names under `podwire.test` are NXDOMAIN,
/// names elsewhere are REFUSED (no upstream). `extra` adds dnsmasq options
/// (e.g. `--address=/x.podwire.test/198.18.1.7`).
pub fn start_dns_with(far: &Netns, extra: &[&str]) -> Result<Proc> {
    let listen = format!("--listen-address={FAR_HOST}");
    let address = format!("--address=/{FAR_NAME}/{FAR_HOST}");
    let address6 = format!("--address=/{FAR_NAME}/{FAR_HOST6}");
    let local = format!("--local=/{SEARCH_DOMAIN}/");
    let mut argv = vec![
        "dnsmasq",
        "--no-daemon",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        &listen,
        "--port=53",
        &address,
        &address6,
        &local,
        "--user=root",
        "--group=root",
        "--pid-file",
        "--log-facility=-",
        "--log-queries",
    ];
    argv.extend_from_slice(extra);
    let mut p = far.spawn("dnsmasq", &argv)?;
    wait_service(far, &mut p, Proto::Udp, FAR_HOST, DNS_PORT).context("starting dnsmasq")?;
    Ok(p)
}

/// [`start_dns_with`] without extra options.
pub fn start_dns(far: &Netns) -> Result<Proc> {
    start_dns_with(far, &[])
}

/// A UDP echo server on 198.18.1.1:`port` (socat, one child per peer,
/// 30 s idle timeout).
pub fn start_udp_echo(far: &Netns, port: u16) -> Result<Proc> {
    let spec = format!("UDP4-RECVFROM:{port},bind={FAR_HOST},reuseaddr,fork");
    let mut p = far.spawn(
        &format!("udp-echo-{port}"),
        &["socat", "-T", "30", &spec, "PIPE"],
    )?;
    wait_service(far, &mut p, Proto::Udp, FAR_HOST, port).context("starting the UDP echo")?;
    Ok(p)
}

/// A TCP echo server on 198.18.1.1:`port` (socat, a child per connection).
pub fn start_tcp_echo(far: &Netns, port: u16) -> Result<Proc> {
    let spec = format!("TCP4-LISTEN:{port},bind={FAR_HOST},reuseaddr,fork");
    let mut p = far.spawn(
        &format!("tcp-echo-{port}"),
        &["socat", "-T", "30", &spec, "PIPE"],
    )?;
    wait_service(far, &mut p, Proto::Tcp, FAR_HOST, port).context("starting the TCP echo")?;
    Ok(p)
}

/// An iperf3 server on 198.18.1.1:`port`.
pub fn start_iperf3(far: &Netns, port: u16) -> Result<Proc> {
    let port_s = port.to_string();
    let bind = FAR_HOST.to_string();
    let mut p = far.spawn(
        &format!("iperf3-{port}"),
        &["iperf3", "-s", "-B", &bind, "-p", &port_s, "--forceflush"],
    )?;
    wait_service(far, &mut p, Proto::Tcp, FAR_HOST, port).context("starting iperf3")?;
    Ok(p)
}

/// All far services on their default ports.
#[derive(Debug)]
pub struct FarServices {
    pub dns: Proc,
    pub udp_echo: Proc,
    pub tcp_echo: Proc,
    pub iperf3: Proc,
}

impl FarServices {
    pub fn start(far: &Netns) -> Result<FarServices> {
        Ok(FarServices {
            dns: start_dns(far)?,
            udp_echo: start_udp_echo(far, UDP_ECHO_PORT)?,
            tcp_echo: start_tcp_echo(far, TCP_ECHO_PORT)?,
            iperf3: start_iperf3(far, IPERF3_PORT)?,
        })
    }
}

/// A file of `mib` MiB of random bytes at `path`; returns its md5 (hex).
pub fn random_file(path: &std::path::Path, mib: u32) -> Result<String> {
    crate::util::run(&[
        "dd",
        "if=/dev/urandom",
        &format!("of={}", path.display()),
        "bs=1M",
        &format!("count={mib}"),
        "status=none",
    ])?;
    md5(path)
}

/// The md5 (hex) of the file at `path`.
pub fn md5(path: &std::path::Path) -> Result<String> {
    let out = crate::util::run(&["md5sum", &path.display().to_string()])?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("md5sum printed nothing")
}

/// socat's listening address for TCP `port` on `ip` (either family).
fn tcp_listen_spec(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V4(a) => format!("TCP4-LISTEN:{port},bind={a},reuseaddr"),
        std::net::IpAddr::V6(a) => format!("TCP6-LISTEN:{port},bind=[{a}],reuseaddr"),
    }
}

/// Serves the file at `path` to every TCP client of `ip`:`port` (socat, a child per client).
pub fn start_file_server(
    far: &Netns,
    ip: std::net::IpAddr,
    port: u16,
    path: &std::path::Path,
) -> Result<Proc> {
    let listen = format!("{},fork", tcp_listen_spec(ip, port));
    let mut p = far.spawn(
        &format!("tcp-file-{port}"),
        &["socat", &listen, &format!("OPEN:{},rdonly", path.display())],
    )?;
    wait_listening_any(far, &mut p, port).context("starting the file server")?;
    Ok(p)
}

/// Writes what the first TCP client of `ip`:`port` sends into a new file at `path`.
pub fn start_file_sink(
    far: &Netns,
    ip: std::net::IpAddr,
    port: u16,
    path: &std::path::Path,
) -> Result<Proc> {
    let mut p = far.spawn(
        &format!("tcp-sink-{port}"),
        &[
            "socat",
            "-u",
            &tcp_listen_spec(ip, port),
            &format!("CREATE:{}", path.display()),
        ],
    )?;
    wait_listening_any(far, &mut p, port).context("starting the file sink")?;
    Ok(p)
}

fn wait_listening_any(far: &Netns, p: &mut Proc, port: u16) -> Result<()> {
    crate::util::wait_until(&format!("TCP port {port} to listen"), START_TIMEOUT, || {
        p.ensure_running()?;
        let out = far.exec(&["ss", "-Hltn"])?;
        Ok(crate::netns::ss_listening(&out, None, port))
    })
}

/// Waits until the file at `path` holds `len` bytes, then returns its md5.
pub fn md5_once_complete(path: &std::path::Path, len: u64, timeout: Duration) -> Result<String> {
    crate::util::wait_until(
        &format!("{} to reach {len} bytes", path.display()),
        timeout,
        || Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) >= len),
    )?;
    md5(path)
}
