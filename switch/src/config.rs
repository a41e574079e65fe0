//! The command line and what podwire makes of it.
//!
//! Option spellings follow passt where passt has one (`--vhost-user`, `-f`, `--no-map-gw`), so
//! that KubeVirt's network binding plugins can swap one for the other. Every value is checked
//! before anything is bound: a bad one ends podwire with one clear line and a non-zero status.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
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
                  NAT rules, no privileges. Accepts passt's command line (libvirt starts it as \
                  `passt`); see docs/configuration.md for what each passt option does here."
)]
pub struct Cli {
    /// UNIX socket to listen on (the frontend, e.g. QEMU, connects to it)
    #[arg(short = 's', long, alias = "socket-path", value_name = "PATH")]
    pub socket: PathBuf,
    /// Speak vhost-user on the socket. Without it the socket speaks QEMU's stream protocol
    /// (`-netdev stream`: frames each preceded by a 4-byte big-endian length), as passt does
    #[arg(long)]
    pub vhost_user: bool,
    /// Stay in the foreground. By default podwire goes to the background once its socket
    /// listens and its pid file is written
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Exit when the first frontend disconnects (removing the socket and pid file)
    #[arg(short = '1', long)]
    pub one_off: bool,
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
    /// passt's `-a`: the guest's address (one IPv4 and/or one IPv6; repeat for both). Replaces
    /// the address `--guest-cidr`/`--guest-cidr6` would give
    #[arg(short = 'a', long, value_name = "ADDR")]
    pub address: Vec<IpAddr>,
    /// passt's `-n`: the guest's IPv4 prefix, as a length (`24`) or a mask (`255.255.255.0`)
    /// [default: the pod's prefix]
    #[arg(short = 'n', long, value_name = "MASK", value_parser = parse_netmask)]
    pub netmask: Option<u8>,
    /// passt's `-g`: the gateway address the guest is given (one per family)
    #[arg(short = 'g', long, value_name = "ADDR")]
    pub gateway: Vec<IpAddr>,
    /// IPv4 only: give the guest no IPv6
    #[arg(short = '4', long = "ipv4-only", conflicts_with = "ipv6_only")]
    pub ipv4_only: bool,
    /// IPv6 only: give the guest no IPv4
    #[arg(short = '6', long = "ipv6-only")]
    pub ipv6_only: bool,
    /// The guest's MAC address, if known (otherwise learned from its frames)
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub mac: Option<[u8; 6]>,
    /// passt's `-M`: the MAC podwire itself uses towards the guest. Not supported: refused
    #[arg(short = 'M', long = "mac-addr", value_name = "MAC", value_parser = parse_mac)]
    pub mac_addr: Option<[u8; 6]>,
    /// Host name offered to the guest by DHCP
    #[arg(short = 'H', long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Fully qualified name offered to the guest by DHCP (option 81)
    #[arg(long, value_name = "NAME")]
    pub fqdn: Option<String>,
    /// Guest MTU [default: the uplink's MTU]
    #[arg(short = 'm', long, value_name = "N", value_parser = clap::value_parser!(u16).range(68..=65520))]
    pub mtu: Option<u16>,
    /// Write podwire's PID to this file (removed on exit)
    #[arg(short = 'P', long, value_name = "FILE")]
    pub pid: Option<PathBuf>,
    /// Debug logging
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Trace logging (more than --debug)
    #[arg(long)]
    pub trace: bool,
    /// Only warnings and errors
    #[arg(short = 'q', long, conflicts_with_all = ["debug", "trace"])]
    pub quiet: bool,
    /// Log to this file instead of stderr (at most --log-size bytes: then it starts over)
    #[arg(short = 'l', long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Most bytes --log-file may hold
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    pub log_size: u64,
    /// Accepted for passt compatibility: errors before podwire is ready always go to stderr
    #[arg(short = 'e', long)]
    pub stderr: bool,
    /// User (and group) to run as, `UID[:GID]` or `LOGIN[:GROUP]`
    #[arg(long, value_name = "UID[:GID]")]
    pub runas: Option<String>,
    /// Do not map the gateway address to the pod's loopback
    #[arg(long)]
    pub no_map_gw: bool,
    /// The guest address that reaches the pod's loopback: the gateway's (the default) or `none`
    #[arg(long, value_name = "ADDR|none")]
    pub map_host_loopback: Option<String>,
    /// passt's address that reaches the guest's own address from itself: only `none` is
    /// supported
    #[arg(long, value_name = "ADDR|none")]
    pub map_guest_addr: Option<String>,
    /// DNS servers offered to the guest instead of the pod's (`none`: offer none). Repeatable
    #[arg(short = 'D', long = "dns", value_name = "ADDR|none")]
    pub dns: Vec<String>,
    /// Search domains offered to the guest instead of the pod's (`none`: offer none).
    /// Repeatable
    #[arg(short = 'S', long = "search", value_name = "DOMAIN|none")]
    pub search: Vec<String>,
    /// Offer no DNS servers
    #[arg(long)]
    pub no_dhcp_dns: bool,
    /// Offer no search domains
    #[arg(long)]
    pub no_dhcp_search: bool,
    /// Do not answer DHCPv4. Not supported: refused
    #[arg(long)]
    pub no_dhcp: bool,
    /// Do not answer DHCPv6. Not supported: refused
    #[arg(long)]
    pub no_dhcpv6: bool,
    /// Do not answer neighbour solicitations. Not supported: refused
    #[arg(long)]
    pub no_ndp: bool,
    /// Do not send router advertisements. Not supported: refused
    #[arg(long)]
    pub no_ra: bool,
    /// Source address for connections to the pod's network. Not supported: refused
    #[arg(short = 'o', long, value_name = "ADDR")]
    pub outbound: Vec<IpAddr>,
    /// Interface for IPv4 connections to the pod's network. Not supported: refused
    #[arg(long, value_name = "IFACE")]
    pub outbound_if4: Option<String>,
    /// Interface for IPv6 connections to the pod's network. Not supported: refused
    #[arg(long, value_name = "IFACE")]
    pub outbound_if6: Option<String>,
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
    /// NTP server offered by DHCP (option 42). Repeatable
    #[arg(long, value_name = "ADDR")]
    pub dhcp_ntp: Vec<Ipv4Addr>,
    /// TFTP server name offered by DHCP (option 66)
    #[arg(long, value_name = "NAME")]
    pub dhcp_tftp_server: Option<String>,
    /// Boot file name offered by DHCP (option 67)
    #[arg(long, value_name = "NAME")]
    pub dhcp_boot_file: Option<String>,
    /// A site-specific DHCP option (224..=254) and its value, sent as text (KubeVirt's
    /// `privateOptions`). Repeatable
    #[arg(long, value_name = "CODE=VALUE", value_parser = parse_private_option)]
    pub dhcp_private_option: Vec<(u8, Vec<u8>)>,
    /// The control socket for `podwire status|flows|forward|capture` [default: the socket's
    /// path with `.ctl` appended]; `none` to have none
    #[arg(long, value_name = "PATH|none")]
    pub control: Option<String>,
    /// Capture every frame to and from the guest into this pcap file (switch it off and on
    /// with `podwire capture off|on`)
    #[arg(short = 'p', long, value_name = "FILE")]
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
    /// Debugging only: no seccomp filter, no Landlock, capabilities kept (see
    /// docs/hardening.md)
    #[arg(long)]
    pub no_sandbox: bool,
    /// Also let this uid connect on the vhost-user socket (podwire's own uid and root always
    /// may); others are refused
    #[arg(long, value_name = "UID")]
    pub frontend_uid: Option<u32>,
    /// Make the vhost-user socket 0660 instead of 0600, so the socket's group may connect
    /// (their uid must still pass the `--frontend-uid` check)
    #[arg(long)]
    pub socket_group: bool,
    /// UNIX socket a TCP repair helper (`passt-repair`, `podwire-repair`) connects to, for
    /// live migration that keeps the guest's TCP connections [default: the vhost-user
    /// socket's path with `.repair` appended, as passt]. `none`: no helper, connections are
    /// reset on migration
    #[arg(long, value_name = "PATH")]
    pub repair_path: Option<PathBuf>,
    /// passt's options podwire does not have, caught so that the refusal names them
    #[command(flatten)]
    pub unsupported: Unsupported,
}

/// passt options whose behaviour podwire does not provide. Each is accepted by the parser
/// only so that podwire can refuse it by name with one line, instead of clap's generic error.
#[derive(Debug, Default, clap::Args)]
pub struct Unsupported {
    #[arg(short = 'F', long, value_name = "FD", hide = true)]
    pub fd: Option<String>,
    #[arg(long, value_name = "ADDR", hide = true)]
    pub dns_forward: Option<String>,
    #[arg(long, value_name = "ADDR", hide = true)]
    pub dns_host: Option<String>,
    #[arg(long, hide = true)]
    pub freebind: bool,
    #[arg(long, hide = true)]
    pub no_tcp: bool,
    #[arg(long, hide = true)]
    pub no_udp: bool,
    #[arg(long, hide = true)]
    pub no_icmp: bool,
    #[arg(long, hide = true)]
    pub print_capabilities: bool,
    #[arg(long, hide = true)]
    pub migrate_exit: bool,
    #[arg(long, hide = true)]
    pub migrate_no_linger: bool,
}

impl Unsupported {
    /// The first unsupported option given, by its passt name.
    fn first_given(&self) -> Option<&'static str> {
        [
            (self.fd.is_some(), "--fd"),
            (self.dns_forward.is_some(), "--dns-forward"),
            (self.dns_host.is_some(), "--dns-host"),
            (self.freebind, "--freebind"),
            (self.no_tcp, "--no-tcp"),
            (self.no_udp, "--no-udp"),
            (self.no_icmp, "--no-icmp"),
            (self.print_capabilities, "--print-capabilities"),
            (self.migrate_exit, "--migrate-exit"),
            (self.migrate_no_linger, "--migrate-no-linger"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }
}

/// How the podwire process itself runs: decided before anything is resolved or bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOptions {
    pub foreground: bool,
    pub one_off: bool,
    pub vhost_user: bool,
    pub log_file: Option<PathBuf>,
    pub log_size: u64,
    /// `--log-format json`.
    pub json_logs: bool,
    /// The tracing level when `PODWIRE_LOG` does not say otherwise.
    pub level: &'static str,
}

impl Cli {
    pub fn process_options(&self) -> ProcessOptions {
        let level = if self.trace {
            "trace"
        } else if self.debug {
            "debug"
        } else if self.quiet || (!self.foreground && self.log_file.is_none()) {
            // In the background without a log file, info lines would reach the caller's
            // stderr only until podwire is ready, and then nothing: leave the caller one line
            // (libvirt shows all of it when the start fails).
            "warn"
        } else {
            "info"
        };
        ProcessOptions {
            foreground: self.foreground,
            one_off: self.one_off,
            vhost_user: self.vhost_user,
            log_file: self.log_file.clone(),
            log_size: self.log_size,
            json_logs: self.log_format == "json",
            level,
        }
    }

    /// The first option given whose behaviour podwire does not provide: podwire refuses to
    /// start rather than ignore it.
    pub fn refused_option(&self) -> Option<&'static str> {
        let mine = [
            (self.mac_addr.is_some(), "--mac-addr"),
            (self.no_dhcp, "--no-dhcp"),
            (self.no_dhcpv6, "--no-dhcpv6"),
            (self.no_ndp, "--no-ndp"),
            (self.no_ra, "--no-ra"),
            (!self.outbound.is_empty(), "--outbound"),
            (self.outbound_if4.is_some(), "--outbound-if4"),
            (self.outbound_if6.is_some(), "--outbound-if6"),
            (
                self.map_guest_addr.as_deref().is_some_and(|a| a != "none"),
                "--map-guest-addr",
            ),
        ];
        mine.into_iter()
            .find_map(|(given, name)| given.then_some(name))
            .or_else(|| self.unsupported.first_given())
    }
}

/// `CODE=VALUE` with CODE in 224..=254 and a non-empty VALUE of at most 255 bytes.
fn parse_private_option(s: &str) -> Result<(u8, Vec<u8>), String> {
    let (code, value) = s
        .split_once('=')
        .ok_or_else(|| "expected CODE=VALUE".to_string())?;
    let code: u8 = code
        .parse()
        .ok()
        .filter(|c| podwire_dhcp::PRIVATE_OPTIONS.contains(c))
        .ok_or_else(|| format!("{code}: a site-specific option is 224..=254"))?;
    if value.is_empty() || value.len() > 255 {
        return Err("the value must be 1 to 255 bytes".into());
    }
    Ok((code, value.as_bytes().to_vec()))
}

/// The DHCP options of `--dhcp-*`, checked as the DHCP server will check them.
fn dhcp_extra(cli: &Cli) -> Result<podwire_dhcp::ExtraOptions, ConfigError> {
    let extra = podwire_dhcp::ExtraOptions {
        ntp: cli.dhcp_ntp.clone(),
        tftp_server: cli.dhcp_tftp_server.clone(),
        boot_file: cli.dhcp_boot_file.clone(),
        fqdn: cli.fqdn.clone(),
        private: cli.dhcp_private_option.clone(),
    };
    let probe = podwire_dhcp::Dhcpv4Config {
        server_ip: Ipv4Addr::new(10, 0, 2, 1),
        guest_ip: Ipv4Addr::new(10, 0, 2, 2),
        prefix_len: 24,
        router: Ipv4Addr::new(10, 0, 2, 1),
        dns: Vec::new(),
        domain_name: None,
        search: Vec::new(),
        mtu: None,
        lease_secs: 3600,
        hostname: None,
        extra: extra.clone(),
    };
    probe
        .validate()
        .map_err(|e| ConfigError::BadValue("--dhcp-*", e.to_string()))?;
    Ok(extra)
}

/// passt's `-n`: a prefix length or a dotted IPv4 mask with contiguous ones.
/// `--repair-path`, or passt's default next to a vhost-user socket; `none` turns it off.
/// The stream protocol has no migration, hence no helper.
fn repair_path(socket: &Path, vhost_user: bool, given: Option<PathBuf>) -> Option<PathBuf> {
    if !vhost_user {
        return None;
    }
    match given {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p),
        None => Some(podwire_repair::RepairChannel::default_path(socket)),
    }
}

fn parse_netmask(s: &str) -> Result<u8, String> {
    if let Ok(len) = s.parse::<u8>() {
        return if len <= 32 {
            Ok(len)
        } else {
            Err("a prefix length is at most 32".into())
        };
    }
    let mask: Ipv4Addr = s
        .parse()
        .map_err(|_| "expected a prefix length or a dotted mask".to_string())?;
    let bits = u32::from(mask);
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return Err("the mask's ones must be contiguous".into());
    }
    Ok(bits.leading_ones() as u8)
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
    #[error("{0} is not supported by podwire")]
    Unsupported(&'static str),
    #[error("{0}: {1}")]
    BadValue(&'static str, String),
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
    /// DHCP options 42, 66, 67 and 224..=254.
    pub dhcp_extra: podwire_dhcp::ExtraOptions,
    /// `--runas`, as given: the sandbox decides what it means.
    pub runas: Option<String>,
    /// Whether to enter the sandbox (not `--no-sandbox`).
    pub sandbox: bool,
    /// A uid allowed on the vhost-user socket besides podwire's own and root.
    pub frontend_uid: Option<u32>,
    /// Where TCP repair helpers connect (vhost-user only; `None`: no repair channel).
    pub repair_path: Option<PathBuf>,
    /// Socket mode 0660 rather than 0600.
    pub socket_group: bool,
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

/// The guest's IPv4 from `-a`/`-n`/`-g`, passt's way: the prefix defaults to the pod's, the
/// gateway to the pod's when it lies in the guest's subnet, else to the subnet's first host
/// that is not the guest.
fn explicit_v4(
    guest: Ipv4Addr,
    netmask: Option<u8>,
    gateway: Option<Ipv4Addr>,
    pod: Option<&podnet::UplinkAddr<Ipv4Addr>>,
) -> Result<Addressing, ConfigError> {
    let prefix_len = netmask.or(pod.map(|p| p.prefix_len)).unwrap_or(24);
    if prefix_len > 30 {
        return Err(ConfigError::BadValue(
            "--netmask",
            format!("/{prefix_len} leaves no room for a gateway"),
        ));
    }
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    let network = u32::from(guest) & mask;
    let in_subnet = |a: Ipv4Addr| u32::from(a) & mask == network && a != guest;
    let gateway = gateway
        .or(pod.and_then(|p| p.gateway).filter(|g| in_subnet(*g)))
        .unwrap_or_else(|| {
            let first = Ipv4Addr::from(network + 1);
            if first == guest {
                Ipv4Addr::from(network + 2)
            } else {
                first
            }
        });
    if gateway == guest {
        return Err(ConfigError::BadValue(
            "--gateway",
            format!("{gateway} is the guest's own address"),
        ));
    }
    Ok(Addressing {
        guest,
        gateway,
        prefix_len,
    })
}

/// The guest's IPv6 from `-a`/`-g`: the prefix is the pod's (or /64), the gateway `-g` or the
/// prefix's first host that is not the guest.
fn explicit_v6(
    guest: Ipv6Addr,
    gateway: Option<Ipv6Addr>,
    pod: Option<&podnet::UplinkAddr<Ipv6Addr>>,
) -> Result<Addressing6, ConfigError> {
    let prefix_len = pod.map_or(64, |p| p.prefix_len).min(126);
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0);
    let network = u128::from(guest) & mask;
    let gateway = gateway.unwrap_or_else(|| {
        let first = Ipv6Addr::from(network + 1);
        if first == guest {
            Ipv6Addr::from(network + 2)
        } else {
            first
        }
    });
    if gateway == guest {
        return Err(ConfigError::BadValue(
            "--gateway",
            format!("{gateway} is the guest's own address"),
        ));
    }
    Ok(Addressing6 {
        guest,
        gateway,
        prefix_len,
    })
}

/// At most one address per family in `-a` or `-g`.
fn one_per_family(
    option: &'static str,
    addrs: &[IpAddr],
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), ConfigError> {
    let (mut v4, mut v6) = (None, None);
    for a in addrs {
        let twice = match a {
            IpAddr::V4(a) => v4.replace(*a).is_some(),
            IpAddr::V6(a) => v6.replace(*a).is_some(),
        };
        if twice {
            return Err(ConfigError::BadValue(
                option,
                "at most one IPv4 and one IPv6 address".into(),
            ));
        }
    }
    Ok((v4, v6))
}

/// `-D`/`-S`/`--no-dhcp-dns`/`--no-dhcp-search` applied over what resolv.conf says.
fn override_resolver(cli: &Cli, mut resolver: Resolver) -> Result<Resolver, ConfigError> {
    if !cli.dns.is_empty() {
        resolver.nameservers.clear();
        for d in cli.dns.iter().filter(|d| *d != "none") {
            let addr = d.parse().map_err(|_| {
                ConfigError::BadValue("--dns", format!("{d}: expected an IP address or `none`"))
            })?;
            resolver.nameservers.push(addr);
        }
    }
    if !cli.search.is_empty() {
        resolver.domain = None;
        resolver.search = cli
            .search
            .iter()
            .filter(|s| *s != "none")
            .cloned()
            .collect();
    }
    if cli.no_dhcp_dns {
        resolver.nameservers.clear();
    }
    if cli.no_dhcp_search {
        resolver.search.clear();
        resolver.domain = None;
    }
    Ok(resolver)
}

impl Config {
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        if let Some(option) = cli.refused_option() {
            return Err(ConfigError::Unsupported(option));
        }
        let iface = match &cli.interface {
            Some(i) => i.clone(),
            None => podnet::default_interface()?,
        };
        let uplink = podnet::uplink(&iface)?;
        let (address4, address6) = one_per_family("--address", &cli.address)?;
        let (gateway4, gateway6) = one_per_family("--gateway", &cli.gateway)?;
        // Checked even when the pod lacks the family: a typo should not wait for a dual-stack pod.
        let addressing = match (cli.guest_cidr.as_str(), uplink.v4) {
            _ if address4.is_some() || gateway4.is_some() || cli.netmask.is_some() => {
                let pod = uplink.v4.as_ref();
                let guest = match address4.or(pod.map(|p| p.addr)) {
                    Some(guest) => Some(explicit_v4(guest, cli.netmask, gateway4, pod)?),
                    None => None,
                };
                guest.filter(|_| pod.is_some())
            }
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
            _ if address6.is_some() || gateway6.is_some() => {
                let pod = uplink.v6.as_ref();
                let guest = match address6.or(pod.map(|p| p.addr)) {
                    Some(guest) => Some(explicit_v6(guest, gateway6, pod)?),
                    None => None,
                };
                guest.filter(|_| pod.is_some())
            }
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
        let addressing = addressing.filter(|_| !cli.ipv6_only);
        let addressing6 = addressing6.filter(|_| !cli.ipv4_only);
        if addressing.is_none() && addressing6.is_none() {
            return Err(ConfigError::NoFamily(iface));
        }
        let map_gateway = match cli.map_host_loopback.as_deref() {
            None => !cli.no_map_gw,
            Some("none") => false,
            Some(a) => {
                let gateways = [
                    addressing.map(|a| IpAddr::V4(a.gateway)),
                    addressing6.map(|a| IpAddr::V6(a.gateway)),
                ];
                if !a.parse().is_ok_and(|a| gateways.contains(&Some(a))) {
                    return Err(ConfigError::BadValue(
                        "--map-host-loopback",
                        format!("{a}: only the gateway's address or `none` is supported"),
                    ));
                }
                !cli.no_map_gw
            }
        };
        let mtu = cli
            .mtu
            .unwrap_or_else(|| uplink.mtu.clamp(68, 65520) as u16);
        let resolver = override_resolver(&cli, podnet::resolver(&cli.resolv_conf))?;
        let dhcp_extra = dhcp_extra(&cli)?;
        Ok(Config {
            addressing,
            addressing6,
            guest_mac: cli.mac,
            hostname: cli.hostname,
            mtu,
            pid_file: cli.pid,
            map_gateway,
            resolver,
            allow_guest_sources: cli.allow_guest_sources,
            max_flows: cli.max_flows as usize,
            udp_idle: Duration::from_secs(cli.udp_timeout),
            lease_secs: cli.lease_time,
            tcp_forwards: resolve_forwards(Proto::Tcp, &cli.tcp_ports)?,
            udp_forwards: resolve_forwards(Proto::Udp, &cli.udp_ports)?,
            dhcp_extra,
            runas: cli.runas,
            socket: cli.socket.clone(),
            sandbox: !cli.no_sandbox,
            frontend_uid: cli.frontend_uid,
            socket_group: cli.socket_group,
            repair_path: repair_path(&cli.socket, cli.vhost_user, cli.repair_path.clone()),
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

    fn parse(args: &[&str]) -> Cli {
        let mut argv = vec!["podwire"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn pod4() -> podnet::UplinkAddr<Ipv4Addr> {
        podnet::UplinkAddr {
            addr: Ipv4Addr::new(198, 18, 0, 2),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(198, 18, 0, 1)),
        }
    }

    /// The argv libvirt 11.3 built for a vhostuser passt interface (seen on this machine),
    /// plus what current libvirt adds: every option must parse and none be refused.
    #[test]
    fn libvirt_command_lines_parse() {
        let vhost = parse(&[
            "--vhost-user",
            "--one-off",
            "--socket",
            "/run/libvirt/qemu/passt/1-vm-net0.socket",
            "--pid",
            "/run/libvirt/qemu/passt/1-vm-net0-passt.pid",
            "--mtu",
            "1400",
            "--interface",
            "eth0",
            "--log-file",
            "/var/log/passt.log",
            "--hostname",
            "vm",
            "--address",
            "10.0.2.15",
            "--netmask",
            "24",
            "--address",
            "fd10::15",
            "--tcp-ports",
            "8080:80",
            "--tcp-ports",
            "198.18.0.2/2000-2010:3000-3010,~2005",
            "--udp-ports",
            "all",
            "--tcp-ports",
            "%eth0/22",
            "--udp-ports",
            "198.18.0.2%eth0/5353",
        ]);
        assert!(vhost.vhost_user && vhost.one_off && !vhost.foreground);
        assert_eq!(vhost.mtu, Some(1400));
        assert_eq!(vhost.netmask, Some(24));
        assert_eq!(vhost.address.len(), 2);
        assert_eq!(vhost.tcp_ports.len(), 3);
        assert_eq!(vhost.udp_ports.len(), 2);
        assert_eq!(vhost.tcp_ports[2].iface(), Some("eth0"));
        assert_eq!(vhost.refused_option(), None);
        let p = vhost.process_options();
        assert!(p.one_off && p.vhost_user && !p.foreground);
        assert_eq!(
            p.log_file.as_deref(),
            Some(std::path::Path::new("/var/log/passt.log"))
        );
        // The stream (`<interface type='user'>`) form is the same without --vhost-user.
        let stream = parse(&["--one-off", "--socket", "/s", "--pid", "/p"]);
        assert!(!stream.vhost_user);
    }

    #[test]
    fn passt_short_options_parse() {
        assert_eq!(
            parse(&["--socket-path", "/s"]).socket,
            std::path::Path::new("/s")
        );
        let c = parse(&[
            "-s",
            "/s",
            "-f",
            "-1",
            "-4",
            "-a",
            "10.1.0.5",
            "-n",
            "255.255.0.0",
            "-g",
            "10.1.0.254",
            "-D",
            "198.18.1.1",
            "-S",
            "example.test",
            "-H",
            "vm",
            "-m",
            "1500",
            "-P",
            "/p",
            "-q",
            "-t",
            "22",
            "-u",
            "~53",
            "-l",
            "/log",
            "-e",
            "-i",
            "eth0",
        ]);
        assert!(c.foreground && c.one_off && c.ipv4_only && c.quiet && c.stderr);
        assert_eq!(c.netmask, Some(16));
        assert_eq!(c.process_options().level, "warn");
        assert_eq!(
            parse(&["-s", "/s", "--trace"]).process_options().level,
            "trace"
        );
        assert_eq!(parse(&["-s", "/s", "-d"]).process_options().level, "debug");
        assert_eq!(parse(&["-s", "/s", "-f"]).process_options().level, "info");
        assert_eq!(parse(&["-s", "/s"]).process_options().level, "warn");
        assert_eq!(
            parse(&["-s", "/s", "-l", "/l"]).process_options().level,
            "info"
        );
        assert!(Cli::try_parse_from(["podwire", "-s", "/s", "-4", "-6"]).is_err());
        assert!(Cli::try_parse_from(["podwire", "-s", "/s", "-q", "-d"]).is_err());
    }

    #[test]
    fn port_specs_in_every_passt_spelling_parse() {
        for spec in [
            "all",
            "none",
            "22",
            "1000-2000",
            "1-1024,~22",
            "~22",
            "8080:80",
            "2000-2010:3000-3010",
            "198.18.0.2/80",
            "[fd00::2]/80",
            "%eth0/80",
            "198.18.0.2%eth0/80",
            "198.18.0.2/all",
        ] {
            parse(&["-s", "/s", "-t", spec]);
            parse(&["-s", "/s", "--udp-ports", spec]);
        }
        for bad in [
            "0",
            "70000",
            "10-5",
            "80:",
            "x/80",
            "22,~22",
            "198.18.0.2/none",
        ] {
            assert!(
                Cli::try_parse_from(["podwire", "-s", "/s", "-t", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn netmask_takes_a_length_or_a_contiguous_mask() {
        assert_eq!(parse_netmask("24"), Ok(24));
        assert_eq!(parse_netmask("255.255.255.0"), Ok(24));
        assert_eq!(parse_netmask("255.255.255.252"), Ok(30));
        assert!(parse_netmask("33").is_err());
        assert!(parse_netmask("255.0.255.0").is_err());
        assert!(parse_netmask("mask").is_err());
    }

    #[test]
    fn repair_path_defaults_next_to_the_vhost_user_socket_as_passt() {
        let dflt = |args: &[&str]| {
            let cli = parse(args);
            repair_path(&cli.socket, cli.vhost_user, cli.repair_path)
        };
        assert_eq!(
            dflt(&["--vhost-user", "-s", "/run/x/net0.socket"]),
            Some(PathBuf::from("/run/x/net0.socket.repair"))
        );
        assert_eq!(
            dflt(&["--vhost-user", "-s", "/s", "--repair-path", "/r/h.sock"]),
            Some(PathBuf::from("/r/h.sock"))
        );
        assert_eq!(
            dflt(&["--vhost-user", "-s", "/s", "--repair-path", "none"]),
            None
        );
        assert_eq!(
            dflt(&["-s", "/s"]),
            None,
            "no migration over the stream protocol"
        );
    }

    #[test]
    fn behaviour_changing_options_podwire_lacks_are_refused_by_name() {
        for (args, name) in [
            (&["--no-dhcp"][..], "--no-dhcp"),
            (&["--no-dhcpv6"], "--no-dhcpv6"),
            (&["--no-ndp"], "--no-ndp"),
            (&["--no-ra"], "--no-ra"),
            (&["-o", "198.18.0.2"], "--outbound"),
            (&["--outbound-if4", "eth0"], "--outbound-if4"),
            (&["--outbound-if6", "eth0"], "--outbound-if6"),
            (&["--map-guest-addr", "198.18.0.9"], "--map-guest-addr"),
            (&["-M", "02:00:00:00:00:01"], "--mac-addr"),
            (&["--no-tcp"], "--no-tcp"),
            (&["--freebind"], "--freebind"),
            (&["--dns-forward", "10.0.2.3"], "--dns-forward"),
        ] {
            let mut argv = vec!["-s", "/s"];
            argv.extend_from_slice(args);
            let cli = parse(&argv);
            assert_eq!(cli.refused_option(), Some(name), "{args:?}");
            let err = Config::resolve(cli).unwrap_err().to_string();
            assert_eq!(err, format!("{name} is not supported by podwire"));
        }
        let none = parse(&["-s", "/s", "--map-guest-addr", "none"]);
        assert_eq!(none.refused_option(), None);
    }

    #[test]
    fn explicit_ipv4_follows_passt() {
        let pod = pod4();
        // The pod's gateway when it is in the guest's subnet.
        let a = explicit_v4(Ipv4Addr::new(198, 18, 0, 77), None, None, Some(&pod)).unwrap();
        assert_eq!(a.gateway, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(a.prefix_len, 24);
        // Otherwise the subnet's first host, or its second when the guest has the first.
        let b = explicit_v4(Ipv4Addr::new(10, 0, 2, 15), Some(24), None, Some(&pod)).unwrap();
        assert_eq!(b.gateway, Ipv4Addr::new(10, 0, 2, 1));
        let c = explicit_v4(Ipv4Addr::new(10, 0, 2, 1), Some(24), None, None).unwrap();
        assert_eq!(c.gateway, Ipv4Addr::new(10, 0, 2, 2));
        let g = Some(Ipv4Addr::new(10, 0, 2, 254));
        let d = explicit_v4(Ipv4Addr::new(10, 0, 2, 15), Some(24), g, None).unwrap();
        assert_eq!(d.gateway, Ipv4Addr::new(10, 0, 2, 254));
        assert!(explicit_v4(Ipv4Addr::new(10, 0, 2, 1), Some(31), None, None).is_err());
        let same = Some(Ipv4Addr::new(10, 0, 2, 15));
        assert!(explicit_v4(Ipv4Addr::new(10, 0, 2, 15), Some(24), same, None).is_err());
    }

    #[test]
    fn explicit_ipv6_and_one_address_per_family() {
        let a = explicit_v6("fd10::15".parse().unwrap(), None, None).unwrap();
        assert_eq!(a.gateway, "fd10::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a.prefix_len, 64);
        let two = ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        assert!(one_per_family("--address", &two).is_err());
        let both = ["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        assert!(one_per_family("--address", &both).unwrap().1.is_some());
    }

    #[test]
    fn dns_and_search_override_resolv_conf() {
        let pod = Resolver {
            nameservers: vec![Ipv4Addr::new(198, 18, 1, 1).into()],
            search: vec!["pod.test".into()],
            domain: Some("pod.test".into()),
        };
        let same = override_resolver(&parse(&["-s", "/s"]), pod.clone()).unwrap();
        assert_eq!(same, pod);
        let cli = parse(&[
            "-s",
            "/s",
            "-D",
            "198.18.9.9",
            "-D",
            "fd00::53",
            "-S",
            "a.test",
        ]);
        let r = override_resolver(&cli, pod.clone()).unwrap();
        assert_eq!(
            r.nameservers,
            vec![
                IpAddr::from(Ipv4Addr::new(198, 18, 9, 9)),
                "fd00::53".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(r.search, vec!["a.test".to_string()]);
        assert_eq!(r.domain, None);
        let none = parse(&["-s", "/s", "-D", "none", "-S", "none"]);
        let r = override_resolver(&none, pod.clone()).unwrap();
        assert!(r.nameservers.is_empty() && r.search.is_empty());
        let off = parse(&["-s", "/s", "--no-dhcp-dns", "--no-dhcp-search"]);
        let r = override_resolver(&off, pod.clone()).unwrap();
        assert!(r.nameservers.is_empty() && r.search.is_empty() && r.domain.is_none());
        assert!(override_resolver(&parse(&["-s", "/s", "-D", "x"]), pod).is_err());
    }

    #[test]
    fn runas_is_kept_as_given() {
        assert_eq!(
            parse(&["-s", "/s", "--runas", "107:107"]).runas.as_deref(),
            Some("107:107")
        );
    }

    #[test]
    fn dhcp_extra_options_parse_and_are_checked() {
        let c = parse(&[
            "-s",
            "/s",
            "--dhcp-ntp",
            "198.18.1.5",
            "--dhcp-ntp",
            "198.18.1.6",
            "--dhcp-tftp-server",
            "tftp.podwire.test",
            "--dhcp-boot-file",
            "pxelinux.0",
            "--dhcp-private-option",
            "240=extra.options.kubevirt.io",
        ]);
        let extra = dhcp_extra(&c).unwrap();
        assert_eq!(extra.ntp.len(), 2);
        assert_eq!(extra.boot_file.as_deref(), Some("pxelinux.0"));
        let fqdn = parse(&["-s", "/s", "--fqdn", "vm1.podwire.test"]);
        assert_eq!(
            dhcp_extra(&fqdn).unwrap().fqdn.as_deref(),
            Some("vm1.podwire.test")
        );
        assert!(dhcp_extra(&parse(&["-s", "/s", "--fqdn", "a..b"])).is_err());
        assert_eq!(
            extra.private,
            vec![(240, b"extra.options.kubevirt.io".to_vec())]
        );
        for bad in ["223=x", "255=x", "240=", "240", "x=y"] {
            assert!(
                Cli::try_parse_from(["podwire", "-s", "/s", "--dhcp-private-option", bad]).is_err(),
                "{bad}"
            );
        }
        let twice = parse(&[
            "-s",
            "/s",
            "--dhcp-private-option",
            "240=a",
            "--dhcp-private-option",
            "240=b",
        ]);
        assert!(dhcp_extra(&twice).is_err());
        let long = parse(&["-s", "/s", "--dhcp-boot-file", &"x".repeat(256)]);
        assert!(dhcp_extra(&long).is_err());
    }

    /// Resolution against the host's `lo` (127.0.0.1/8, no gateway, no global IPv6).
    fn resolve_on_lo(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["-s", "/s", "-i", "lo"];
        argv.extend_from_slice(args);
        Config::resolve(parse(&argv))
    }

    #[test]
    fn address_options_and_loopback_mapping_resolve_as_passt_does() {
        let c = resolve_on_lo(&["-a", "198.19.5.15", "-n", "24"]).unwrap();
        let a = c.addressing.unwrap();
        assert_eq!(
            (a.guest, a.gateway, a.prefix_len),
            (
                Ipv4Addr::new(198, 19, 5, 15),
                Ipv4Addr::new(198, 19, 5, 1),
                24
            )
        );
        let c = resolve_on_lo(&["-a", "198.19.5.15", "-g", "198.19.5.254"]).unwrap();
        assert_eq!(
            c.addressing.unwrap().gateway,
            Ipv4Addr::new(198, 19, 5, 254)
        );
        // lo has no global IPv6: an IPv6 address is checked but not offered.
        let c = resolve_on_lo(&["-a", "fd00::15"]).unwrap();
        assert!(c.addressing6.is_none());
        // -6 on an IPv4-only uplink leaves nothing.
        assert!(matches!(
            resolve_on_lo(&["-6"]),
            Err(ConfigError::NoFamily(_))
        ));
        assert!(resolve_on_lo(&["-4"]).unwrap().addressing.is_some());
        // The gateway's address maps to the loopback (the default), `none` turns it off,
        // anything else is refused.
        assert!(
            resolve_on_lo(&["--map-host-loopback", "10.0.2.1"])
                .unwrap()
                .map_gateway
        );
        assert!(
            !resolve_on_lo(&["--map-host-loopback", "none"])
                .unwrap()
                .map_gateway
        );
        assert!(matches!(
            resolve_on_lo(&["--map-host-loopback", "10.0.2.9"]),
            Err(ConfigError::BadValue("--map-host-loopback", _))
        ));
        assert!(matches!(
            resolve_on_lo(&["-a", "10.0.0.1", "-a", "10.0.0.2"]),
            Err(ConfigError::BadValue("--address", _))
        ));
    }
}
