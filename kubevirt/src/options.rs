//! From a VMI interface to podwire's command line.
//!
//! The binding keeps masquerade's promises, so the mapping follows what KubeVirt's masquerade
//! binding does with the same fields:
//! - `ports` → forwarded ports; an empty list forwards every port (TCP and UDP), as masquerade
//!   does; a non-empty list forwards exactly those, TCP unless the protocol says UDP;
//! - the network's `vmNetworkCIDR` / `vmIPv6NetworkCIDR` → `--guest-cidr` / `--guest-cidr6`
//!   (same layout: gateway first address, guest second);
//! - `spec.hostname` (else the VMI's name) → `--hostname`; with `spec.subdomain`, the FQDN
//!   `<host>.<subdomain>.<namespace>.svc.<cluster domain>` → `--fqdn`, when podwire has it;
//! - `macAddress` → `--mac`; the domain interface's `<mtu>` (if any) → `--mtu`;
//! - `dhcpOptions` → `--dhcp-boot-file` (67), `--dhcp-tftp-server` (66), `--dhcp-ntp` (42, one
//!   per server), `--dhcp-private-option CODE=VALUE` (224-254), when podwire has them; an older
//!   podwire without them gets none, and the options are reported back as not applied.
//!
//! Which optional flags the podwire binary understands is probed once from its `--help`
//! ([`Capabilities::probe`]), so the sidecar works with podwire builds older or newer than itself.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::vmi::{DhcpOptions, PodwireNic, Vmi};

/// Ports forwarded for one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarding {
    /// Nothing: podwire's default.
    None,
    /// Every port of the pod (masquerade's behaviour with an empty `ports` list).
    All,
    /// Exactly these, sorted and without duplicates.
    Ports(Vec<u16>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("interface {iface:?}: port {port} is not a TCP/UDP port number (1-65535)")]
    BadPort { iface: String, port: i64 },
    #[error("interface {iface:?}: port {port} uses protocol {proto:?}; podwire forwards TCP and UDP only")]
    UnsupportedProtocol {
        iface: String,
        port: i64,
        proto: String,
    },
}

/// Optional podwire flags the binary at hand understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub fqdn: bool,
    /// `--dhcp-boot-file`, `--dhcp-tftp-server`, `--dhcp-ntp`, `--dhcp-private-option`.
    pub dhcp_options: bool,
}

impl Capabilities {
    /// Reads `podwire --help` once. A binary that cannot even print its help gets no optional
    /// flags (and will fail at start, with its own message).
    pub fn probe(podwire: &Path) -> Self {
        let help = std::process::Command::new(podwire)
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Self::from_help(&help)
    }

    pub fn from_help(help: &str) -> Self {
        Self {
            fqdn: help.contains("--fqdn"),
            dhcp_options: ["--dhcp-boot-file", "--dhcp-tftp-server", "--dhcp-ntp"]
                .iter()
                .chain(&["--dhcp-private-option"])
                .all(|flag| help.contains(flag)),
        }
    }
}

/// Everything podwire is started with for one NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodwireOptions {
    pub socket: PathBuf,
    pub tcp: Forwarding,
    pub udp: Forwarding,
    pub guest_cidr: Option<String>,
    pub guest_cidr6: Option<String>,
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub mac: Option<String>,
    pub mtu: Option<u16>,
    pub dhcp: Option<DhcpOptions>,
}

impl PodwireOptions {
    /// The options for `nic` of `vmi`, podwire listening on `socket`. `mtu` is the domain
    /// interface's MTU, when virt-launcher set one.
    pub fn from_vmi(
        vmi: &Vmi,
        nic: &PodwireNic<'_>,
        socket: PathBuf,
        mtu: Option<u16>,
        cluster_domain: &str,
    ) -> Result<Self, OptionsError> {
        let (tcp, udp) = forwarding(&nic.iface.name, &nic.iface.ports)?;
        let hostname = vmi.hostname().map(str::to_owned);
        let fqdn = match (&hostname, vmi.spec.subdomain.as_deref()) {
            (Some(host), Some(sub)) if !sub.is_empty() && !vmi.metadata.namespace.is_empty() => {
                Some(format!(
                    "{host}.{sub}.{}.svc.{cluster_domain}",
                    vmi.metadata.namespace
                ))
            }
            _ => None,
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Ok(Self {
            socket,
            tcp,
            udp,
            guest_cidr: non_empty(&nic.pod.vm_network_cidr),
            guest_cidr6: non_empty(&nic.pod.vm_ipv6_network_cidr),
            hostname,
            fqdn,
            mac: non_empty(&nic.iface.mac_address),
            mtu,
            dhcp: nic
                .iface
                .dhcp_options
                .clone()
                .filter(|d| *d != DhcpOptions::default()),
        })
    }

    /// podwire's arguments, and a line for each VMI setting this podwire cannot apply.
    pub fn argv(&self, caps: Capabilities) -> (Vec<OsString>, Vec<String>) {
        // `--vhost-user` and `-f` are accepted by every podwire (passt's spellings): the sidecar
        // supervises podwire as its child, so it must stay in the foreground.
        let mut args: Vec<OsString> = vec!["--vhost-user".into(), "-f".into()];
        let mut not_applied = Vec::new();
        args.push("--socket".into());
        args.push(self.socket.clone().into_os_string());
        for (flag, fwd) in [("--tcp-ports", &self.tcp), ("--udp-ports", &self.udp)] {
            match fwd {
                Forwarding::None => {}
                Forwarding::All => args.extend([flag.into(), "all".into()]),
                Forwarding::Ports(ports) => {
                    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                    args.extend([flag.into(), list.join(",").into()]);
                }
            }
        }
        let mut opt = |flag: &str, value: &Option<String>| {
            if let Some(v) = value {
                args.extend([flag.into(), v.into()]);
            }
        };
        opt("--guest-cidr", &self.guest_cidr);
        opt("--guest-cidr6", &self.guest_cidr6);
        opt("--hostname", &self.hostname);
        opt("--mac", &self.mac);
        opt("--mtu", &self.mtu.map(|m| m.to_string()));
        match &self.fqdn {
            Some(fqdn) if caps.fqdn => args.extend(["--fqdn".into(), fqdn.into()]),
            Some(fqdn) => not_applied.push(format!("FQDN {fqdn}: this podwire has no --fqdn")),
            None => {}
        }
        match &self.dhcp {
            Some(dhcp) if caps.dhcp_options => args.extend(dhcp_args(dhcp)),
            Some(dhcp) => not_applied.push(format!(
                "dhcpOptions {dhcp:?}: this podwire has no --dhcp-boot-file, --dhcp-tftp-server, \
                 --dhcp-ntp or --dhcp-private-option"
            )),
            None => {}
        }
        (args, not_applied)
    }
}

/// KubeVirt's `dhcpOptions` as podwire's `--dhcp-*` flags (podwire checks the values: an NTP
/// server that is not an IPv4 address or a private option outside 224-254 stops it with one
/// line, which the hook reports).
fn dhcp_args(dhcp: &DhcpOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if let Some(file) = dhcp.boot_file_name.as_deref().filter(|f| !f.is_empty()) {
        args.extend(["--dhcp-boot-file".into(), file.into()]);
    }
    if let Some(server) = dhcp.tftp_server_name.as_deref().filter(|s| !s.is_empty()) {
        args.extend(["--dhcp-tftp-server".into(), server.into()]);
    }
    for ntp in &dhcp.ntp_servers {
        args.extend(["--dhcp-ntp".into(), ntp.into()]);
    }
    for p in &dhcp.private_options {
        args.extend([
            "--dhcp-private-option".into(),
            format!("{}={}", p.option, p.value).into(),
        ]);
    }
    args
}

/// Masquerade's port rule: no ports listed forwards everything; listed ports forward exactly
/// those.
fn forwarding(
    iface: &str,
    ports: &[crate::vmi::Port],
) -> Result<(Forwarding, Forwarding), OptionsError> {
    if ports.is_empty() {
        return Ok((Forwarding::All, Forwarding::All));
    }
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    for p in ports {
        let number =
            u16::try_from(p.port)
                .ok()
                .filter(|&n| n != 0)
                .ok_or(OptionsError::BadPort {
                    iface: iface.into(),
                    port: p.port,
                })?;
        match p.protocol.as_deref().unwrap_or("") {
            "" => tcp.push(number),
            proto if proto.eq_ignore_ascii_case("tcp") => tcp.push(number),
            proto if proto.eq_ignore_ascii_case("udp") => udp.push(number),
            proto => {
                return Err(OptionsError::UnsupportedProtocol {
                    iface: iface.into(),
                    port: p.port,
                    proto: proto.into(),
                })
            }
        }
    }
    let list = |mut v: Vec<u16>| {
        v.sort_unstable();
        v.dedup();
        if v.is_empty() {
            Forwarding::None
        } else {
            Forwarding::Ports(v)
        }
    };
    Ok((list(tcp), list(udp)))
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
