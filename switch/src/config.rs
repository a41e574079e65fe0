//! The command line and what podwire makes of it.
//!
//! Option spellings follow passt where passt has one (`--vhost-user`, `-f`, `--no-map-gw`), so
//! that KubeVirt's network binding plugins can swap one for the other. Every value is checked
//! before anything is bound: a bad one ends podwire with one clear line and a non-zero status.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use podwire_nat::ports::{Forward, ForwardTable, PortSpec, PortSpecError, Proto};

use crate::podnet::{self, Resolver, Uplink};

/// KubeVirt's masquerade binding uses this subnet for the guest by default.
pub const DEFAULT_GUEST_CIDR: &str = "10.0.2.0/24";
/// And this one for IPv6.
pub const DEFAULT_GUEST_CIDR6: &str = "fd10:0:2::/120";
/// The gateway's MAC as the guest sees it: locally administered, stable across restarts.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x70, 0x77, 0x00, 0x00, 0x01];

#[derive(Debug, Parser)]
#[command(
    name = "podwire",
    version,
    about = "Userspace vhost-user network backend for a VM in a Kubernetes pod",
    long_about = "Serves a guest's virtio-net NIC over vhost-user, answers ARP and DHCP, and \
                  translates the guest's traffic to sockets in the pod: no TAP, no bridge, no \
                  NAT rules, no privileges."
)]
pub struct Cli {
    /// vhost-user UNIX socket to listen on (the frontend, e.g. QEMU, connects to it)
    #[arg(short = 's', long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Accepted for passt compatibility; podwire always speaks vhost-user
    #[arg(long)]
    pub vhost_user: bool,
    /// Accepted for passt compatibility; podwire always runs in the foreground
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// The pod's uplink [default: the interface of the IPv4 default route]
    #[arg(short = 'i', long, value_name = "IFACE")]
    pub interface: Option<String>,
    /// Guest IPv4 addressing: a subnet (guest gets its 2nd address, gateway the 1st), `pod`
    /// (the guest gets the pod's own address, prefix and gateway) or `none`. Only offered when
    /// the pod has IPv4
    #[arg(long, value_name = "CIDR|pod|none", default_value = DEFAULT_GUEST_CIDR)]
    pub guest_cidr: String,
    /// Guest IPv6 addressing, the same way (by router advertisements and DHCPv6). Only offered
    /// when the pod has a global IPv6 address
    #[arg(long, value_name = "CIDR|pod|none", default_value = DEFAULT_GUEST_CIDR6)]
    pub guest_cidr6: String,
    /// The guest's MAC address, if known (otherwise learned from its frames)
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub mac: Option<[u8; 6]>,
    /// Host name offered to the guest by DHCP
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Guest MTU [default: the uplink's MTU]
    #[arg(short = 'm', long, value_name = "N", value_parser = clap::value_parser!(u16).range(68..=65520))]
    pub mtu: Option<u16>,
    /// Write podwire's PID to this file
    #[arg(short = 'P', long, value_name = "FILE")]
    pub pid: Option<PathBuf>,
    /// Debug logging
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Do not map the gateway address to the pod's loopback
    #[arg(long)]
    pub no_map_gw: bool,
    /// Accept frames from any source MAC and IP address, not only those the guest was given
    #[arg(long)]
    pub allow_guest_sources: bool,
    /// Where the pod's resolver configuration is read from
    #[arg(long, value_name = "PATH", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Most concurrent flows of every kind (TCP connections, UDP ports, ping sessions): a
    /// quarter for connections to forwarded ports, the rest for the guest's; more are refused
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_flows: u32,
    /// Seconds a UDP flow may stay idle before it is closed
    #[arg(long, value_name = "SECS", default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub udp_timeout: u64,
    /// Forward TCP ports of the pod to the guest, in passt's syntax: `PORT`, `FIRST-LAST`,
    /// `PORT:GUESTPORT`, `FIRST-LAST:GFIRST-GLAST`, `~EXCLUDED`, `ADDR/PORT`, `all`, `none`.
    /// Repeatable
    #[arg(short = 't', long = "tcp-ports", value_name = "SPEC")]
    pub tcp_ports: Vec<PortSpec>,
    /// Forward UDP ports of the pod to the guest; the same syntax as `--tcp-ports`. Repeatable
    #[arg(short = 'u', long = "udp-ports", value_name = "SPEC")]
    pub udp_ports: Vec<PortSpec>,
    /// The control socket for `podwire status|flows|forward|capture` [default: the socket's
    /// path with `.ctl` appended]; `none` to have none
    #[arg(long, value_name = "PATH|none")]
    pub control: Option<String>,
    /// Capture every frame to and from the guest into this pcap file (switch it off and on
    /// with `podwire capture off|on`)
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Size in MiB at which the capture file is rotated to FILE.1
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub pcap_max_size: u64,
    /// Log format: `text`, or `json` (one object per line)
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Serve Prometheus metrics (OpenMetrics text) on a TCP `HOST:PORT` or `unix:PATH`
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// DHCP lease time in seconds
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u32).range(60..))]
    pub lease_time: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--guest-cidr {0}: expected ADDRESS/PREFIX, `pod` or `none`")]
    BadCidr(String),
    #[error("--guest-cidr {0}: too small for a gateway and a guest (prefix must be /30 or wider)")]
    CidrTooSmall(String),
    #[error("--guest-cidr6 {0}: expected ADDRESS/PREFIX, `pod` or `none`")]
    BadCidr6(String),
    #[error(
        "--guest-cidr6 {0}: too small for a gateway and a guest (prefix must be /126 or wider)"
    )]
    Cidr6TooSmall(String),
    #[error("--guest-cidr pod: interface {0} has no default gateway")]
    PodWithoutGateway(String),
    #[error("--guest-cidr6 pod: interface {0} has no IPv6 default gateway")]
    PodWithoutGateway6(String),
    #[error("interface {0} has neither IPv4 nor IPv6 for the guest (check --guest-cidr and --guest-cidr6)")]
    NoFamily(String),
    #[error(transparent)]
    PodNet(#[from] podnet::PodNetError),
    #[error(transparent)]
    Ports(#[from] PortSpecError),
    #[error("{0} forwarding of {1}: {2}")]
    Forward(Proto, String, &'static str),
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err("expected six hex bytes separated by ':'".into());
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| format!("bad hex byte {part:?}"))?;
    }
    if mac[0] & 1 != 0 {
        return Err("a multicast address cannot be a NIC's".into());
    }
    Ok(mac)
}

/// The guest's IPv4 identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    pub guest: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
}

fn parse_cidr(s: &str) -> Result<Addressing, ConfigError> {
    let bad = || ConfigError::BadCidr(s.into());
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix_len: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix_len > 32 {
        return Err(bad());
    }
    if prefix_len > 30 {
        return Err(ConfigError::CidrTooSmall(s.into()));
    }
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    let network = u32::from(addr) & mask;
    Ok(Addressing {
        gateway: Ipv4Addr::from(network + 1),
        guest: Ipv4Addr::from(network + 2),
        prefix_len,
    })
}

/// The guest's IPv6 identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing6 {
    pub guest: Ipv6Addr,
    pub gateway: Ipv6Addr,
    pub prefix_len: u8,
}

fn parse_cidr6(s: &str) -> Result<Addressing6, ConfigError> {
    let bad = || ConfigError::BadCidr6(s.into());
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
    let prefix_len: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix_len > 128 {
        return Err(bad());
    }
    if prefix_len > 126 {
        return Err(ConfigError::Cidr6TooSmall(s.into()));
    }
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0);
    let network = u128::from(addr) & mask;
    Ok(Addressing6 {
        gateway: Ipv6Addr::from(network + 1),
        guest: Ipv6Addr::from(network + 2),
        prefix_len,
    })
}

/// Everything podwire needs, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub uplink: Uplink,
    /// The guest's IPv4, if it gets IPv4 at all.
    pub addressing: Option<Addressing>,
    /// The guest's IPv6, if it gets IPv6 at all.
    pub addressing6: Option<Addressing6>,
    pub guest_mac: Option<[u8; 6]>,
    pub hostname: Option<String>,
    pub mtu: u16,
    pub pid_file: Option<PathBuf>,
    pub map_gateway: bool,
    /// Turn anti-spoofing off: the guest may use any source MAC and address.
    pub allow_guest_sources: bool,
    pub resolver: Resolver,
    pub max_flows: usize,
    pub udp_idle: Duration,
    pub lease_secs: u32,
    pub tcp_forwards: Vec<Forwarding>,
    pub udp_forwards: Vec<Forwarding>,
}

/// One forwarded port, and whether the user named it (rather than it coming from `all`).
#[derive(Debug, Clone)]
pub struct Forwarding {
    pub forward: Forward,
    pub explicit: bool,
}

/// Resolves `-t`/`-u` specs into forwards. `all` leaves out ports the pod already uses and
/// its ephemeral range (the ports outgoing connections, podwire's own included, draw from).
pub(crate) fn resolve_forwards(
    proto: Proto,
    specs: &[PortSpec],
) -> Result<Vec<Forwarding>, ConfigError> {
    let table = ForwardTable::new(specs)?;
    if table.is_empty() {
        return Ok(Vec::new());
    }
    let ephemeral = podwire_nat::ports::ephemeral_ports();
    let forwards = table.resolve(&mut |port| {
        ephemeral.is_some_and(|r| r.contains(port)) || podwire_nat::ports::port_in_use(proto, port)
    });
    for f in &forwards {
        if f.iface.is_some() {
            return Err(ConfigError::Forward(
                proto,
                f.to_string(),
                "binding to an interface is not supported",
            ));
        }
    }
    Ok(forwards
        .into_iter()
        .map(|forward| Forwarding {
            explicit: table.is_explicit(forward.host_port),
            forward,
        })
        .collect())
}

impl Config {
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        let iface = match cli.interface {
            Some(i) => i,
            None => podnet::default_interface()?,
        };
        let uplink = podnet::uplink(&iface)?;
        // Checked even when the pod lacks the family: a typo should not wait for a dual-stack pod.
        let addressing = match (cli.guest_cidr.as_str(), uplink.v4) {
            ("none", _) | ("pod", None) => None,
            ("pod", Some(v4)) => Some(Addressing {
                guest: v4.addr,
                gateway: v4
                    .gateway
                    .ok_or_else(|| ConfigError::PodWithoutGateway(iface.clone()))?,
                prefix_len: v4.prefix_len,
            }),
            (cidr, pod) => Some(parse_cidr(cidr)?).filter(|_| pod.is_some()),
        };
        let addressing6 = match (cli.guest_cidr6.as_str(), uplink.v6) {
            ("none", _) | ("pod", None) => None,
            ("pod", Some(v6)) => Some(Addressing6 {
                guest: v6.addr,
                gateway: v6
                    .gateway
                    .ok_or_else(|| ConfigError::PodWithoutGateway6(iface.clone()))?,
                prefix_len: v6.prefix_len,
            }),
            (cidr, pod) => Some(parse_cidr6(cidr)?).filter(|_| pod.is_some()),
        };
        if addressing.is_none() && addressing6.is_none() {
            return Err(ConfigError::NoFamily(iface));
        }
        let mtu = cli
            .mtu
            .unwrap_or_else(|| uplink.mtu.clamp(68, 65520) as u16);
        Ok(Config {
            socket: cli.socket,
            addressing,
            addressing6,
            guest_mac: cli.mac,
            hostname: cli.hostname,
            mtu,
            pid_file: cli.pid,
            map_gateway: !cli.no_map_gw,
            allow_guest_sources: cli.allow_guest_sources,
            resolver: podnet::resolver(&cli.resolv_conf),
            max_flows: cli.max_flows as usize,
            udp_idle: Duration::from_secs(cli.udp_timeout),
            lease_secs: cli.lease_time,
            tcp_forwards: resolve_forwards(Proto::Tcp, &cli.tcp_ports)?,
            udp_forwards: resolve_forwards(Proto::Udp, &cli.udp_ports)?,
            uplink,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_gives_first_host_to_gateway_and_second_to_guest() {
        let a = parse_cidr("10.0.2.0/24").unwrap();
        assert_eq!(a.gateway, Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(a.guest, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(a.prefix_len, 24);
        let b = parse_cidr("198.19.7.77/30").unwrap();
        assert_eq!(b.gateway, Ipv4Addr::new(198, 19, 7, 77 & !3 | 1));
    }

    #[test]
    fn cidr_too_small_or_malformed_is_rejected() {
        assert!(matches!(
            parse_cidr("10.0.2.0/31"),
            Err(ConfigError::CidrTooSmall(_))
        ));
        assert!(matches!(
            parse_cidr("10.0.2.0/32"),
            Err(ConfigError::CidrTooSmall(_))
        ));
        for bad in [
            "10.0.2.0",
            "10.0.2/24",
            "10.0.2.0/33",
            "x/24",
            "10.0.2.0/-1",
        ] {
            assert!(
                matches!(parse_cidr(bad), Err(ConfigError::BadCidr(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn cidr6_gives_first_host_to_gateway_and_second_to_guest() {
        let a = parse_cidr6(DEFAULT_GUEST_CIDR6).unwrap();
        assert_eq!(a.gateway, "fd10:0:2::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a.guest, "fd10:0:2::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a.prefix_len, 120);
        let b = parse_cidr6("fd00:1:2:3::abcd/64").unwrap();
        assert_eq!(b.guest, "fd00:1:2:3::2".parse::<Ipv6Addr>().unwrap());
        assert!(matches!(
            parse_cidr6("fd00::/127"),
            Err(ConfigError::Cidr6TooSmall(_))
        ));
        for bad in ["fd00::", "fd00::/129", "10.0.2.0/24", "x/64"] {
            assert!(
                matches!(parse_cidr6(bad), Err(ConfigError::BadCidr6(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56").unwrap(),
            [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        );
        assert!(parse_mac("52:54:00:12:34").is_err());
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("52:54:00:12:34:zz").is_err());
    }

    #[test]
    fn unknown_option_and_bad_values_fail_to_parse() {
        assert!(Cli::try_parse_from(["podwire", "--socket", "/s", "--bogus"]).is_err());
        assert!(Cli::try_parse_from(["podwire", "--socket", "/s", "--mtu", "67"]).is_err());
        assert!(Cli::try_parse_from(["podwire", "--socket", "/s", "--mtu", "65521"]).is_err());
        assert!(
            Cli::try_parse_from(["podwire"]).is_err(),
            "--socket is required"
        );
        let ok = Cli::try_parse_from(["podwire", "--vhost-user", "-f", "--socket", "/s"]).unwrap();
        assert!(ok.vhost_user && ok.foreground);
    }
}
