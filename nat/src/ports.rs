//! Port forwarding from the pod to the guest: passt-compatible `-t`/`-u` specs, parsed and
//! resolved into concrete forwards.
//!
//! # Theory of operation
//!
//! Each `-t SPEC` (TCP) or `-u SPEC` (UDP) argument is parsed into a [`PortSpec`]. The grammar
//! is passt's:
//!
//! ```text
//! SPEC  := "none" | [ADDR "/"] PORTS
//! ADDR  := [IP] ["%" IFACE]          IP: IPv4 or IPv6, IPv6 plain or in brackets
//!                                    ("[fe80::1]%eth0" and "[fe80::1%eth0]" both work)
//! PORTS := "all" | ITEM ("," ITEM)*
//! ITEM  := RANGE [":" RANGE]         host (pod) ports, then the guest ports they map to
//!        | "~" RANGE                 exclusion
//! RANGE := PORT | PORT "-" PORT      1..=65535, first <= last
//! ```
//!
//! A spec selects host ports in one of two ways:
//!
//! - **A list** (`22`, `8000-8010`, `8080:80`, `1-1024,~22`): the listed ranges minus the spec's
//!   own exclusions. These ports are *explicit*: the user named them, so [`ForwardTable::resolve`]
//!   returns them whether or not something in the pod already holds them (the caller's bind then
//!   fails and it can say so), and even when they are KubeVirt's migration ports.
//! - **`all`, or only exclusions** (`~22` means "all but 22"): every port minus the exclusions,
//!   decided at [`ForwardTable::resolve`] time: ports the pod already uses (the caller's
//!   `is_taken`), KubeVirt's migration ports ([`MIGRATION_PORTS`]) and ports that any spec of the
//!   table names explicitly are skipped. Such forwards always map a port to the same guest port.
//!
//! Exclusions only act within the spec that carries them: `-t 22 -t ~22` forwards every port.
//! A bind address or interface applies to the whole spec.
//!
//! [`ForwardTable::new`] merges all the specs of one protocol. It records which guest port each
//! explicitly named host port maps to, and rejects a table in which one host port would map to
//! two different guest ports (even through different bind addresses: the hot-path lookup,
//! [`PortMap`], is by host port only). The same port named twice with the same mapping is fine.
//!
//! [`ForwardTable::resolve`] turns the table into a sorted list of [`Forward`]s, one socket to
//! open each. It never returns the same (bind address, interface, host port) twice, and when a
//! port is forwarded on the wildcard address without an interface, it drops the narrower forwards
//! of that port (e.g. `127.0.0.1/8080` next to `8080`): the wildcard socket already receives
//! their traffic, and binding both would fail. `is_taken` is asked at most once per port and only
//! for ports that `all` would otherwise forward, so the cost of `all` is dominated by the
//! caller's probe ([`port_in_use`] tries two binds per port).
//!
//! [`guest_port_of`] builds a [`PortMap`], a flat 64 Ki-entry table from host port to guest port,
//! for O(1), allocation-free lookups on the data path.
//!
//! # Differences from passt
//!
//! - passt's `all` also leaves out the kernel's ephemeral port range; this module only leaves out
//!   what the caller's `is_taken` says (see [`ephemeral_ports`] to add that range).
//! - `ADDR/all` and `ADDR/~PORT` are accepted; `ADDR/none` is rejected.
//! - A spec that selects no port at all (`22,~22`) is rejected rather than ignored.
//! - pasta's `auto` is not supported.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::str::FromStr;

/// Ports KubeVirt uses for live migration inside the virt-launcher pod: `all` never takes them.
pub const MIGRATION_PORTS: [u16; 2] = [49152, 49153];

/// Number of entries in a per-port table (port 0 included, unused).
const NPORTS: usize = 1 << 16;

/// Longest interface name Linux accepts (`IFNAMSIZ` minus the terminating NUL).
const IFNAME_MAX: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// One socket to open in the pod: traffic to `host_port` (on `bind`, or every address, and on
/// `iface`, or every interface) goes to the guest's `guest_port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Forward {
    pub bind: Option<IpAddr>,
    pub iface: Option<String>,
    pub host_port: u16,
    pub guest_port: u16,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bind {
            None => f.write_str("*")?,
            Some(IpAddr::V4(a)) => write!(f, "{a}")?,
            Some(IpAddr::V6(a)) => write!(f, "[{a}]")?,
        }
        if let Some(iface) = &self.iface {
            write!(f, "%{iface}")?;
        }
        write!(f, ":{} -> guest port {}", self.host_port, self.guest_port)
    }
}

/// An inclusive range of ports, `first..=last`, never containing 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

/// Host ports `host` forwarded to guest ports starting at `guest_first` (same length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host: PortRange,
    pub guest_first: u16,
}

impl PortMapping {
    /// The guest port for `host_port`, which must lie in `self.host`.
    fn guest_of(&self, host_port: u16) -> u16 {
        // Cannot overflow: the parser checked that the guest range has the same length and
        // ends at or below 65535.
        self.guest_first
            .wrapping_add(host_port.wrapping_sub(self.host.first))
    }
}

/// Which host ports one spec selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSelection {
    /// `none`.
    None,
    /// `all`, or exclusions only: every port but these, minus taken ones at resolve time.
    All { exclude: Vec<PortRange> },
    /// Explicit ranges minus exclusions.
    List {
        include: Vec<PortMapping>,
        exclude: Vec<PortRange>,
    },
}

/// The parsed form of one `-t`/`-u` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    text: String,
    bind: Option<IpAddr>,
    iface: Option<String>,
    ports: PortSelection,
}

impl PortSpec {
    /// The argument as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn bind(&self) -> Option<IpAddr> {
        self.bind
    }

    pub fn iface(&self) -> Option<&str> {
        self.iface.as_deref()
    }

    pub fn ports(&self) -> &PortSelection {
        &self.ports
    }

    fn exclusions(&self) -> PortSet {
        let mut set = PortSet::new();
        if let PortSelection::All { exclude } | PortSelection::List { exclude, .. } = &self.ports {
            for r in exclude {
                set.insert_range(*r);
            }
        }
        set
    }

    /// Every explicitly selected host port with its guest port, exclusions applied.
    fn for_each_explicit(
        &self,
        f: &mut dyn FnMut(u16, u16) -> Result<(), PortSpecError>,
    ) -> Result<(), PortSpecError> {
        let PortSelection::List { include, .. } = &self.ports else {
            return Ok(());
        };
        let excluded = self.exclusions();
        for m in include {
            for p in m.host.ports() {
                if !excluded.contains(p) {
                    f(p, m.guest_of(p))?;
                }
            }
        }
        Ok(())
    }

    /// The first guest port this spec explicitly maps `host_port` to.
    fn explicit_guest_port(&self, host_port: u16) -> Option<u16> {
        let PortSelection::List { include, exclude } = &self.ports else {
            return None;
        };
        if exclude.iter().any(|r| r.contains(host_port)) {
            return None;
        }
        include
            .iter()
            .find(|m| m.host.contains(host_port))
            .map(|m| m.guest_of(host_port))
    }

    /// Whether the spec can select any port at all.
    fn selects_something(&self) -> bool {
        match &self.ports {
            PortSelection::None => true,
            PortSelection::All { .. } => {
                let excluded = self.exclusions();
                (1..=u16::MAX).any(|p| !excluded.contains(p) && !MIGRATION_PORTS.contains(&p))
            }
            PortSelection::List { include, .. } => {
                let excluded = self.exclusions();
                include
                    .iter()
                    .any(|m| m.host.ports().any(|p| !excluded.contains(p)))
            }
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a port spec, or a set of them, was rejected. Every message names the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    #[error("port spec {spec:?}: no ports given")]
    Empty { spec: String },
    #[error("port spec {spec:?}: empty item in the comma-separated list")]
    EmptyItem { spec: String },
    #[error("port spec {spec:?}: {item:?} is not a port or port range")]
    Syntax { spec: String, item: String },
    #[error("port spec {spec:?}: port 0 cannot be forwarded")]
    PortZero { spec: String },
    #[error("port spec {spec:?}: port {port} is above 65535")]
    PortTooLarge { spec: String, port: String },
    #[error("port spec {spec:?}: range {item:?} ends before it starts")]
    ReversedRange { spec: String, item: String },
    #[error("port spec {spec:?}: {item:?} maps {host} host ports to {guest} guest ports")]
    RangeLengthMismatch {
        spec: String,
        item: String,
        host: u32,
        guest: u32,
    },
    #[error("port spec {spec:?}: exclusion {item:?} cannot have guest ports")]
    MappedExclusion { spec: String, item: String },
    #[error(
        "port spec {spec:?}: {keyword:?} cannot be combined with other items (exclusions alone, \
         like \"~22\", mean all ports but those)"
    )]
    KeywordMixed { spec: String, keyword: String },
    #[error("port spec {spec:?}: {addr:?} is not an IPv4 or IPv6 address")]
    BadAddress { spec: String, addr: String },
    #[error("port spec {spec:?}: {iface:?} is not a valid interface name")]
    BadInterface { spec: String, iface: String },
    #[error("port spec {spec:?}: a bind address or interface makes no sense with \"none\"")]
    BindWithNone { spec: String },
    #[error("port spec {spec:?}: selects no port (everything is excluded)")]
    NothingSelected { spec: String },
    #[error(
        "port specs {first:?} and {second:?}: host port {host_port} forwarded to guest ports \
         {first_guest} and {second_guest}"
    )]
    Conflict {
        first: String,
        second: String,
        host_port: u16,
        first_guest: u16,
        second_guest: u16,
    },
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec = || s.to_string();
        if s.is_empty() {
            return Err(PortSpecError::Empty { spec: spec() });
        }
        let (addr, ports) = match s.split_once('/') {
            Some((addr, ports)) => (Some(addr), ports),
            None => (None, s),
        };
        let (bind, iface) = match addr {
            Some(addr) => parse_bind(s, addr)?,
            None => (None, None),
        };
        let ports = parse_ports(s, ports)?;
        if addr.is_some() && ports == PortSelection::None {
            return Err(PortSpecError::BindWithNone { spec: spec() });
        }
        let parsed = PortSpec {
            text: spec(),
            bind,
            iface,
            ports,
        };
        if !parsed.selects_something() {
            return Err(PortSpecError::NothingSelected { spec: spec() });
        }
        // Within one spec, a host port must not map to two guest ports (`80:8080,80:8081`).
        ForwardTable::new(std::slice::from_ref(&parsed))?;
        Ok(parsed)
    }
}

/// Parses `[IP][%IFACE]` (the part before `/`).
fn parse_bind(spec: &str, addr: &str) -> Result<(Option<IpAddr>, Option<String>), PortSpecError> {
    let bad_addr = || PortSpecError::BadAddress {
        spec: spec.to_string(),
        addr: addr.to_string(),
    };
    let (ip, iface) = if let Some(rest) = addr.strip_prefix('[') {
        // "[v6]", "[v6]%if" or "[v6%if]".
        let (inside, after) = rest.split_once(']').ok_or_else(bad_addr)?;
        let (ip, inner_iface) = match inside.split_once('%') {
            Some((ip, i)) => (ip, Some(i)),
            None => (inside, None),
        };
        let outer_iface = match after {
            "" => None,
            _ => Some(after.strip_prefix('%').ok_or_else(bad_addr)?),
        };
        if ip.is_empty() {
            return Err(bad_addr());
        }
        let iface = match (inner_iface, outer_iface) {
            (Some(_), Some(_)) => return Err(bad_addr()),
            (i, None) | (None, i) => i,
        };
        (Some(ip), iface)
    } else {
        match addr.split_once('%') {
            Some(("", i)) => (None, Some(i)),
            Some((ip, i)) => (Some(ip), Some(i)),
            None => (Some(addr), None),
        }
    };
    let ip = match ip {
        Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| bad_addr())?),
        None => None,
    };
    if ip.is_none() && iface.is_none() {
        return Err(bad_addr());
    }
    let iface = match iface {
        Some(i) if valid_ifname(i) => Some(i.to_string()),
        Some(i) => {
            return Err(PortSpecError::BadInterface {
                spec: spec.to_string(),
                iface: i.to_string(),
            })
        }
        None => None,
    };
    Ok((ip, iface))
}

/// Linux's rules for interface names (`dev_valid_name`).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '%' || c.is_whitespace() || c.is_control())
}

/// Parses the part after `/` (or the whole spec when there is no address).
fn parse_ports(spec: &str, ports: &str) -> Result<PortSelection, PortSpecError> {
    if ports.is_empty() {
        return Err(PortSpecError::Empty {
            spec: spec.to_string(),
        });
    }
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    let mut items = 0usize;
    let mut keyword = None;
    for item in ports.split(',') {
        items += 1;
        match item {
            "" => {
                return Err(PortSpecError::EmptyItem {
                    spec: spec.to_string(),
                })
            }
            "all" | "none" => keyword = keyword.or(Some(item)),
            _ => {
                if let Some(range) = item.strip_prefix('~') {
                    if range.contains(':') {
                        return Err(PortSpecError::MappedExclusion {
                            spec: spec.to_string(),
                            item: item.to_string(),
                        });
                    }
                    exclude.push(parse_range(spec, item, range)?);
                } else {
                    include.push(parse_mapping(spec, item)?);
                }
            }
        }
    }
    match keyword {
        Some(k) if items > 1 => Err(PortSpecError::KeywordMixed {
            spec: spec.to_string(),
            keyword: k.to_string(),
        }),
        Some("none") => Ok(PortSelection::None),
        Some(_) => Ok(PortSelection::All {
            exclude: Vec::new(),
        }),
        None if include.is_empty() => Ok(PortSelection::All { exclude }),
        None => Ok(PortSelection::List { include, exclude }),
    }
}

/// `RANGE[:RANGE]`.
fn parse_mapping(spec: &str, item: &str) -> Result<PortMapping, PortSpecError> {
    let (host, guest) = match item.split_once(':') {
        Some((h, g)) => (h, Some(g)),
        None => (item, None),
    };
    let host = parse_range(spec, item, host)?;
    let Some(guest) = guest else {
        return Ok(PortMapping {
            host,
            guest_first: host.first,
        });
    };
    let guest = parse_range(spec, item, guest)?;
    if guest.len() != host.len() {
        return Err(PortSpecError::RangeLengthMismatch {
            spec: spec.to_string(),
            item: item.to_string(),
            host: host.len(),
            guest: guest.len(),
        });
    }
    Ok(PortMapping {
        host,
        guest_first: guest.first,
    })
}

/// `PORT` or `PORT-PORT`; `item` is only for error messages.
fn parse_range(spec: &str, item: &str, text: &str) -> Result<PortRange, PortSpecError> {
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (parse_port(spec, item, a)?, parse_port(spec, item, b)?),
        None => {
            let p = parse_port(spec, item, text)?;
            (p, p)
        }
    };
    if first > last {
        return Err(PortSpecError::ReversedRange {
            spec: spec.to_string(),
            item: item.to_string(),
        });
    }
    Ok(PortRange { first, last })
}

/// Decimal digits only (no sign, no spaces), 1..=65535.
fn parse_port(spec: &str, item: &str, text: &str) -> Result<u16, PortSpecError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortSpecError::Syntax {
            spec: spec.to_string(),
            item: item.to_string(),
        });
    }
    let value = text.bytes().fold(0u32, |v, d| {
        v.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    });
    match u16::try_from(value) {
        Ok(0) => Err(PortSpecError::PortZero {
            spec: spec.to_string(),
        }),
        Ok(p) => Ok(p),
        Err(_) => Err(PortSpecError::PortTooLarge {
            spec: spec.to_string(),
            port: text.to_string(),
        }),
    }
}

/// A set of ports as a 64 Ki-bit bitmap.
struct PortSet(Box<[u64; NPORTS / 64]>);

impl PortSet {
    fn new() -> Self {
        PortSet(Box::new([0; NPORTS / 64]))
    }

    fn insert_range(&mut self, r: PortRange) {
        for p in r.ports() {
            self.0[usize::from(p / 64)] |= 1 << (p % 64);
        }
    }

    fn contains(&self, p: u16) -> bool {
        self.0[usize::from(p / 64)] & (1 << (p % 64)) != 0
    }
}

/// All forwards of a protocol, from every -t (or -u) argument given.
#[derive(Clone)]
pub struct ForwardTable {
    specs: Vec<PortSpec>,
    /// The guest port each explicitly named host port maps to; 0 for none.
    explicit: Box<[u16; NPORTS]>,
}

impl fmt::Debug for ForwardTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardTable")
            .field("specs", &self.specs)
            .finish_non_exhaustive()
    }
}

impl ForwardTable {
    /// Merges the specs of one protocol; fails if a host port would go to two guest ports.
    pub fn new(specs: &[PortSpec]) -> Result<ForwardTable, PortSpecError> {
        let mut explicit = Box::new([0u16; NPORTS]);
        for (i, spec) in specs.iter().enumerate() {
            spec.for_each_explicit(&mut |host, guest| {
                let slot = &mut explicit[usize::from(host)];
                if *slot == 0 || *slot == guest {
                    *slot = guest;
                    return Ok(());
                }
                let earlier = specs[..=i]
                    .iter()
                    .find(|s| s.explicit_guest_port(host) == Some(*slot))
                    .unwrap_or(spec);
                Err(PortSpecError::Conflict {
                    first: earlier.text.clone(),
                    second: spec.text.clone(),
                    host_port: host,
                    first_guest: *slot,
                    second_guest: guest,
                })
            })?;
        }
        Ok(ForwardTable {
            specs: specs.to_vec(),
            explicit,
        })
    }

    /// Nothing was asked for (no spec, or only `none`).
    pub fn is_empty(&self) -> bool {
        self.specs.iter().all(|s| s.ports == PortSelection::None)
    }

    /// Whether some spec names `port` explicitly (not through `all` or exclusions only). A
    /// caller should report a failure to bind an explicit port; ports from `all` may vanish
    /// between [`ForwardTable::resolve`] and the bind, and are better skipped quietly.
    pub fn is_explicit(&self, port: u16) -> bool {
        self.explicit[usize::from(port)] != 0
    }

    /// Whether some spec is `all` or exclusions only (resolution then probes ports).
    pub fn has_all(&self) -> bool {
        self.specs
            .iter()
            .any(|s| matches!(s.ports, PortSelection::All { .. }))
    }

    /// Resolves `all` and ranges into concrete forwards. `is_taken(port)` says whether the pod
    /// already has something bound on that port for that protocol (the caller checks with a
    /// bind attempt); `all` skips taken ports, KubeVirt's migration ports 49152 and 49153, and
    /// ports named explicitly by any spec. Explicit ports are returned even when taken or
    /// 49152/49153 (the user asked). No (address, interface, port) is returned twice. The result
    /// is sorted by host port.
    pub fn resolve(&self, is_taken: &mut dyn FnMut(u16) -> bool) -> Vec<Forward> {
        let mut out = Vec::new();
        let mut auto = Vec::new();
        for spec in &self.specs {
            match spec.ports {
                PortSelection::None => {}
                PortSelection::All { .. } => auto.push((spec, spec.exclusions())),
                PortSelection::List { .. } => {
                    // Conflicts were rejected in `new`, so this cannot fail.
                    let _ = spec.for_each_explicit(&mut |host, guest| {
                        out.push(Forward {
                            bind: spec.bind,
                            iface: spec.iface.clone(),
                            host_port: host,
                            guest_port: guest,
                        });
                        Ok(())
                    });
                }
            }
        }
        if !auto.is_empty() {
            for port in 1..=u16::MAX {
                if self.is_explicit(port) || MIGRATION_PORTS.contains(&port) {
                    continue;
                }
                if auto.iter().all(|(_, excluded)| excluded.contains(port)) {
                    continue;
                }
                if is_taken(port) {
                    continue;
                }
                for (spec, _) in auto.iter().filter(|(_, ex)| !ex.contains(port)) {
                    out.push(Forward {
                        bind: spec.bind,
                        iface: spec.iface.clone(),
                        host_port: port,
                        guest_port: port,
                    });
                }
            }
        }
        // Wildcard (no address, no interface) sorts first among the forwards of a port.
        out.sort_by(|a, b| (a.host_port, a.bind, &a.iface).cmp(&(b.host_port, b.bind, &b.iface)));
        // `dedup_by` passes (later, kept): drop exact repeats, then anything a wildcard covers.
        out.dedup_by(|a, b| a.host_port == b.host_port && a.bind == b.bind && a.iface == b.iface);
        out.dedup_by(|a, b| a.host_port == b.host_port && b.bind.is_none() && b.iface.is_none());
        out
    }
}

/// Host port to guest port, for lookups on the data path: one flat table, O(1), no allocation.
#[derive(Clone)]
pub struct PortMap {
    /// Guest port per host port; 0 for "not forwarded".
    guest: Box<[u16; NPORTS]>,
}

impl PortMap {
    /// The guest port traffic to `host_port` goes to, if it is forwarded.
    #[inline]
    pub fn get(&self, host_port: u16) -> Option<u16> {
        match self.guest[usize::from(host_port)] {
            0 => None,
            g => Some(g),
        }
    }
}

impl fmt::Debug for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.guest.iter().filter(|&&g| g != 0).count();
        write!(f, "PortMap({n} ports)")
    }
}

/// Builds the host→guest port map of `forwards`. Should two forwards give one host port
/// different guest ports (not possible with [`ForwardTable::resolve`]'s output), the first wins.
pub fn guest_port_of(forwards: &[Forward]) -> PortMap {
    let mut guest = Box::new([0u16; NPORTS]);
    for f in forwards {
        let slot = &mut guest[usize::from(f.host_port)];
        if *slot == 0 {
            *slot = f.guest_port;
        }
    }
    PortMap { guest }
}

/// Whether something in the current network namespace holds `port` for `proto`: tries to bind
/// a socket to 0.0.0.0:`port`, then one with `IPV6_V6ONLY` to `[::]:port`, both without
/// `SO_REUSEADDR`, and reports true if either fails with `EADDRINUSE`. The sockets are closed
/// before returning. Without `SO_REUSEADDR`, a TCP port that only has outgoing connections or
/// `TIME_WAIT` leftovers counts as taken too.
///
/// Other failures (e.g. `EACCES` for ports below `net.ipv4.ip_unprivileged_port_start` without
/// `CAP_NET_BIND_SERVICE`) are not "in use"; see [`probe_port`] for those.
pub fn port_in_use(proto: Proto, port: u16) -> bool {
    [false, true].iter().any(|&v6| {
        matches!(probe_bind(proto, v6, port), Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE))
    })
}

/// Tries the same binds as [`port_in_use`] and returns the first failure of any kind (IPv6
/// being unavailable is not one). `|p| probe_port(proto, p).is_err()` as `is_taken` makes `all`
/// skip ports podwire could not bind anyway, like privileged ones.
pub fn probe_port(proto: Proto, port: u16) -> io::Result<()> {
    probe_bind(proto, false, port)?;
    match probe_bind(proto, true, port) {
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Ok(()),
        r => r,
    }
}

fn probe_bind(proto: Proto, v6: bool, port: u16) -> io::Result<()> {
    let ty = match proto {
        Proto::Tcp => libc::SOCK_STREAM,
        Proto::Udp => libc::SOCK_DGRAM,
    } | libc::SOCK_CLOEXEC;
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain syscall; the fd is owned immediately.
    let fd = unsafe { libc::socket(family, ty, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let rc = if v6 {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads a c_int from a live local; bind reads a fully initialised
        // sockaddr_in6 of the length given.
        unsafe {
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = port.to_be();
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    } else {
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: libc::INADDR_ANY,
            },
            sin_zero: [0; 8],
        };
        // SAFETY: bind reads a fully initialised sockaddr_in of the length given.
        unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), which passt's `all`
/// leaves alone so that the pod keeps ports for its own outgoing connections. Add it to
/// `is_taken` to get passt's behaviour.
pub fn ephemeral_ports() -> Option<PortRange> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<u16>().ok());
    let (first, last) = (it.next()??, it.next()??);
    (first >= 1 && first <= last).then_some(PortRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
    use std::time::Instant;

    fn spec(s: &str) -> PortSpec {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn err(s: &str) -> PortSpecError {
        match s.parse::<PortSpec>() {
            Ok(p) => panic!("{s:?} should be rejected, got {p:?}"),
            Err(e) => {
                assert!(
                    e.to_string().contains(&format!("{s:?}")),
                    "error for {s:?} does not name it: {e}"
                );
                e
            }
        }
    }

    fn table(specs: &[&str]) -> ForwardTable {
        let specs: Vec<PortSpec> = specs.iter().map(|s| spec(s)).collect();
        ForwardTable::new(&specs).unwrap()
    }

    fn never_taken(_: u16) -> bool {
        false
    }

    /// (host, guest) pairs of a resolution.
    fn pairs(fw: &[Forward]) -> Vec<(u16, u16)> {
        fw.iter().map(|f| (f.host_port, f.guest_port)).collect()
    }

    fn resolve(specs: &[&str]) -> Vec<Forward> {
        table(specs).resolve(&mut never_taken)
    }

    fn fwd(host: u16, guest: u16) -> Forward {
        Forward {
            bind: None,
            iface: None,
            host_port: host,
            guest_port: guest,
        }
    }

    fn range(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn none_forwards_nothing() {
        let s = spec("none");
        assert_eq!(s.ports(), &PortSelection::None);
        let t = table(&["none"]);
        assert!(t.is_empty());
        assert!(!t.has_all());
        assert!(t.resolve(&mut |_| panic!("no probing for none")).is_empty());
        assert!(ForwardTable::new(&[]).unwrap().is_empty());
    }

    #[test]
    fn single_port() {
        let s = spec("22");
        assert_eq!(s.bind(), None);
        assert_eq!(s.iface(), None);
        assert_eq!(s.as_str(), "22");
        assert_eq!(s.to_string(), "22");
        assert_eq!(
            s.ports(),
            &PortSelection::List {
                include: vec![PortMapping {
                    host: range(22, 22),
                    guest_first: 22
                }],
                exclude: vec![]
            }
        );
        assert_eq!(resolve(&["22"]), vec![fwd(22, 22)]);
        assert_eq!(pairs(&resolve(&["1"])), [(1, 1)]);
        assert_eq!(pairs(&resolve(&["65535"])), [(65535, 65535)]);
        assert_eq!(
            pairs(&resolve(&["00080"])),
            [(80, 80)],
            "leading zeros, like strtoul"
        );
    }

    #[test]
    fn port_range() {
        let fw = resolve(&["8000-8010"]);
        assert_eq!(fw.len(), 11);
        assert!(fw.iter().all(|f| f.host_port == f.guest_port));
        assert_eq!((fw[0].host_port, fw[10].host_port), (8000, 8010));
        assert_eq!(pairs(&resolve(&["7-7"])), [(7, 7)]);
        assert_eq!(resolve(&["1-65535"]).len(), 65535);
    }

    #[test]
    fn mapped_port() {
        assert_eq!(resolve(&["8080:80"]), vec![fwd(8080, 80)]);
        assert_eq!(pairs(&resolve(&["80:8080"])), [(80, 8080)]);
        assert_eq!(pairs(&resolve(&["5-5:6"])), [(5, 6)]);
        assert_eq!(pairs(&resolve(&["5:6-6"])), [(5, 6)]);
    }

    #[test]
    fn mapped_range() {
        assert_eq!(
            pairs(&resolve(&["8000-8002:9000-9002"])),
            [(8000, 9000), (8001, 9001), (8002, 9002)]
        );
        assert_eq!(
            pairs(&resolve(&["65533-65535:1-3"])),
            [(65533, 1), (65534, 2), (65535, 3)]
        );
        assert_eq!(
            pairs(&resolve(&["1-3:65533-65535"])),
            [(1, 65533), (2, 65534), (3, 65535)]
        );
    }

    #[test]
    fn comma_lists_and_exclusions() {
        assert_eq!(
            pairs(&resolve(&["22,80,443"])),
            [(22, 22), (80, 80), (443, 443)]
        );
        let fw = resolve(&["1-1024,~22"]);
        assert_eq!(fw.len(), 1023);
        assert!(!fw.iter().any(|f| f.host_port == 22));
        let fw = resolve(&["~20-30,1-100,~50"]);
        assert_eq!(fw.len(), 100 - 11 - 1, "exclusions may come first");
        // Exclusions are of host ports, also in mapped ranges.
        assert_eq!(
            pairs(&resolve(&["8000-8003:9000-9003,~8001-8002"])),
            [(8000, 9000), (8003, 9003)]
        );
        let t = table(&["1-1024,~22"]);
        assert!(t.is_explicit(21) && !t.is_explicit(22) && !t.has_all());
    }

    #[test]
    fn all_forwards_every_free_port_but_migration_ones() {
        let t = table(&["all"]);
        assert!(t.has_all() && !t.is_empty() && !t.is_explicit(80));
        let mut asked = Vec::new();
        let fw = t.resolve(&mut |p| {
            asked.push(p);
            p == 8080
        });
        assert_eq!(fw.len(), 65535 - 3);
        assert!(fw
            .iter()
            .all(|f| f.host_port == f.guest_port && f.bind.is_none()));
        for skipped in [8080, 49152, 49153] {
            assert!(!fw.iter().any(|f| f.host_port == skipped), "{skipped}");
        }
        assert!(fw.windows(2).all(|w| w[0].host_port < w[1].host_port));
        // Each port asked at most once, and never the migration ports (no need to probe).
        assert_eq!(asked.len(), 65535 - 2);
        assert!(!asked.contains(&49152) && !asked.contains(&0));
    }

    #[test]
    fn exclusions_alone_mean_all_but_those() {
        let s = spec("~22");
        assert_eq!(
            s.ports(),
            &PortSelection::All {
                exclude: vec![range(22, 22)]
            }
        );
        let mut asked = 0;
        let fw = table(&["~22,~1000-1999"]).resolve(&mut |p| {
            asked += 1;
            p == 5000
        });
        assert_eq!(fw.len(), 65535 - 1 - 1000 - 2 - 1);
        assert!(!fw
            .iter()
            .any(|f| [22, 1000, 1999, 5000, 49152].contains(&f.host_port)));
        assert_eq!(asked, 65535 - 1 - 1000 - 2, "excluded ports are not probed");
    }

    #[test]
    fn explicit_ports_are_returned_even_when_taken_or_migration_ports() {
        let fw = table(&["22,49152-49153"]).resolve(&mut |_| panic!("explicit ports not probed"));
        assert_eq!(pairs(&fw), [(22, 22), (49152, 49152), (49153, 49153)]);
    }

    #[test]
    fn explicit_mapping_beats_all() {
        let t = table(&["all", "8080:80"]);
        let mut asked = Vec::new();
        let fw = t.resolve(&mut |p| {
            asked.push(p);
            false
        });
        assert!(!asked.contains(&8080), "explicit port not probed for all");
        let on_8080: Vec<_> = fw.iter().filter(|f| f.host_port == 8080).collect();
        assert_eq!(on_8080, [&fwd(8080, 80)]);
        // Port 80 itself still comes from `all`, to guest port 80.
        assert!(fw.contains(&fwd(80, 80)));
        assert_eq!(fw.len(), 65535 - 2);
        assert_eq!(guest_port_of(&fw).get(8080), Some(80));
        // Even when the port is taken: the user asked for it explicitly.
        let fw = table(&["8080", "all"]).resolve(&mut |p| p == 8080);
        assert!(fw.contains(&fwd(8080, 8080)));
    }

    #[test]
    fn bind_address_v4_v6_and_brackets() {
        let s = spec("127.0.0.1/8080");
        assert_eq!(s.bind(), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(s.iface(), None);
        let fw = resolve(&["0.0.0.0/80:8080"]);
        assert_eq!(fw[0].bind, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(pairs(&fw), [(80, 8080)]);
        for v6 in ["::1/22", "[::1]/22"] {
            assert_eq!(
                spec(v6).bind(),
                Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                "{v6}"
            );
        }
        assert_eq!(
            spec("[2001:db8::1]/1-5,~3").bind(),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            spec("::/all").ports(),
            &PortSelection::All { exclude: vec![] }
        );
        assert_eq!(
            spec("10.0.0.1/~22").ports(),
            &PortSelection::All {
                exclude: vec![range(22, 22)]
            }
        );
        let f = &resolve(&["192.0.2.1/8080:80"])[0];
        assert_eq!(f.to_string(), "192.0.2.1:8080 -> guest port 80");
        let f = &resolve(&["[::1]%lo/22"])[0];
        assert_eq!(f.to_string(), "[::1]%lo:22 -> guest port 22");
    }

    #[test]
    fn interface_suffix() {
        let s = spec("fe80::1%eth0/22");
        assert_eq!(s.bind(), Some("fe80::1".parse().unwrap()));
        assert_eq!(s.iface(), Some("eth0"));
        for form in ["[fe80::1%eth0]/22", "[fe80::1]%eth0/22"] {
            let s = spec(form);
            assert_eq!(s.bind(), Some("fe80::1".parse().unwrap()), "{form}");
            assert_eq!(s.iface(), Some("eth0"), "{form}");
        }
        let s = spec("127.0.0.1%lo/8080:80");
        assert_eq!(
            (s.bind(), s.iface()),
            (Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), Some("lo"))
        );
        let s = spec("%net1/22");
        assert_eq!(
            (s.bind(), s.iface()),
            (None, Some("net1")),
            "interface only"
        );
        let fw = resolve(&["%net1/22"]);
        assert_eq!(fw[0].iface.as_deref(), Some("net1"));
        assert_eq!(spec("%a23456789012345/1").iface().map(str::len), Some(15));
    }

    #[test]
    fn rejects_bad_addresses_and_interfaces() {
        for s in [
            "/22",
            "localhost/22",
            "1.2.3/22",
            "1.2.3.4.5/22",
            "[::1/22",
            "::1]/22",
            "[]/22",
            "[::1]x/22",
            "[::1%a]%b/22",
            "%/22",
            "::1%/22",
            "256.0.0.1/22",
            " 1.2.3.4/22",
            "[1:2:3:4:5:6:7:8:9]/22",
        ] {
            assert!(
                matches!(
                    err(s),
                    PortSpecError::BadAddress { .. } | PortSpecError::BadInterface { .. }
                ),
                "{s}"
            );
        }
        for s in [
            "%a234567890123456/1",
            "%eth 0/1",
            "%./1",
            "%../1",
            "%a:b/1",
            "1.2.3.4%a%b/1",
        ] {
            assert!(matches!(err(s), PortSpecError::BadInterface { .. }), "{s}");
        }
        assert!(matches!(
            err("127.0.0.1/none"),
            PortSpecError::BindWithNone { .. }
        ));
        assert!(matches!(err("1.2.3.4/"), PortSpecError::Empty { .. }));
        assert!(matches!(err("1.2.3.4/5/6"), PortSpecError::Syntax { .. }));
    }

    #[test]
    fn rejects_port_zero_and_too_large() {
        for s in ["0", "0-10", "10-0", "0:80", "80:0", "~0", "00", "1,0"] {
            assert!(matches!(err(s), PortSpecError::PortZero { .. }), "{s}");
        }
        for s in [
            "65536",
            "1-65536",
            "80:65536",
            "99999999999999999999999",
            "~70000",
        ] {
            assert!(matches!(err(s), PortSpecError::PortTooLarge { .. }), "{s}");
        }
    }

    #[test]
    fn rejects_reversed_ranges_and_mismatched_lengths() {
        for s in ["10-5", "~10-5", "2-1:1-2", "1-2:2-1"] {
            assert!(matches!(err(s), PortSpecError::ReversedRange { .. }), "{s}");
        }
        let e = err("8000-8010:9000-9005");
        assert_eq!(
            e,
            PortSpecError::RangeLengthMismatch {
                spec: "8000-8010:9000-9005".into(),
                item: "8000-8010:9000-9005".into(),
                host: 11,
                guest: 6
            }
        );
        assert_eq!(
            e.to_string(),
            "port spec \"8000-8010:9000-9005\": \"8000-8010:9000-9005\" maps 11 host ports to \
             6 guest ports"
        );
        for s in ["1-2:5", "1:5-6"] {
            assert!(
                matches!(err(s), PortSpecError::RangeLengthMismatch { .. }),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_empty_items_and_garbage() {
        assert!(matches!(err(""), PortSpecError::Empty { .. }));
        for s in [",", "22,", ",22", "22,,23", "~22,"] {
            assert!(matches!(err(s), PortSpecError::EmptyItem { .. }), "{s}");
        }
        for s in [
            "x", "22x", "+22", "-22", "22-", "1-2-3", " 22", "22 ", "~", "~~22", "1:2:3", "8080:",
            ":80", "ALL", "None", "0x16", "２２", "22;23", "1..5", "~all", "all:80",
        ] {
            assert!(matches!(err(s), PortSpecError::Syntax { .. }), "{s}");
        }
        for s in ["~22:80", "~1-2:3-4"] {
            assert!(
                matches!(err(s), PortSpecError::MappedExclusion { .. }),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_all_or_none_mixed_with_other_items() {
        for (s, kw) in [
            ("all,22", "all"),
            ("22,all", "all"),
            ("all,~22", "all"),
            ("none,22", "none"),
            ("all,all", "all"),
            ("all,none", "all"),
            ("1.2.3.4/all,80", "all"),
        ] {
            assert_eq!(
                err(s),
                PortSpecError::KeywordMixed {
                    spec: s.into(),
                    keyword: kw.into()
                }
            );
        }
    }

    #[test]
    fn rejects_specs_that_select_nothing() {
        for s in [
            "22,~22",
            "~1-65535",
            "~1-49151,~49154-65535",
            "10-20,~1-100",
        ] {
            assert!(
                matches!(err(s), PortSpecError::NothingSelected { .. }),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_one_host_port_to_two_guest_ports() {
        let e = err("8080:80,8080:81");
        assert!(matches!(
            e,
            PortSpecError::Conflict {
                host_port: 8080,
                first_guest: 80,
                second_guest: 81,
                ..
            }
        ));
        let specs = [spec("22"), spec("8000-8100"), spec("127.0.0.1/8050:80")];
        assert_eq!(
            ForwardTable::new(&specs).unwrap_err(),
            PortSpecError::Conflict {
                first: "8000-8100".into(),
                second: "127.0.0.1/8050:80".into(),
                host_port: 8050,
                first_guest: 8050,
                second_guest: 80,
            }
        );
        assert_eq!(
            ForwardTable::new(&specs).unwrap_err().to_string(),
            "port specs \"8000-8100\" and \"127.0.0.1/8050:80\": host port 8050 forwarded to \
             guest ports 8050 and 80"
        );
        // An exclusion can resolve the overlap.
        let fw = resolve(&["8000-8100,~8050", "127.0.0.1/8050:80"]);
        assert_eq!(fw.len(), 101);
        assert_eq!(guest_port_of(&fw).get(8050), Some(80));
    }

    #[test]
    fn merging_specs() {
        let t = table(&["22", "8000-8002:9000-9002", "none", "1.2.3.4/443"]);
        assert!(!t.is_empty());
        let fw = t.resolve(&mut never_taken);
        assert_eq!(
            pairs(&fw),
            [
                (22, 22),
                (443, 443),
                (8000, 9000),
                (8001, 9001),
                (8002, 9002)
            ]
        );
        assert_eq!(fw[1].bind, Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
        // Exclusions stay within their spec.
        let fw = resolve(&["1-100,~50", "50"]);
        assert_eq!(fw.len(), 100);
        let fw = resolve(&["22", "~22"]);
        assert_eq!(fw.len(), 65535 - 2);
        assert!(fw.contains(&fwd(22, 22)));
    }

    #[test]
    fn overlapping_specs_do_not_duplicate_forwards() {
        let fw = resolve(&["1-100", "50-150", "75", "all"]);
        assert_eq!(fw.len(), 65535 - 2);
        assert!(fw.windows(2).all(|w| w[0].host_port < w[1].host_port));
        let fw = resolve(&["1-10,5-15", "8:8"]);
        assert_eq!(pairs(&fw), (1..=15).map(|p| (p, p)).collect::<Vec<_>>());
        // Two `all` specs: every port once, each probed once.
        let mut asked = 0;
        let fw = table(&["all", "~22"]).resolve(&mut |_| {
            asked += 1;
            false
        });
        assert_eq!(fw.len(), 65535 - 2);
        assert_eq!(asked, 65535 - 2);
    }

    #[test]
    fn wildcard_covers_narrower_binds_of_the_same_port() {
        let fw = resolve(&["127.0.0.1/8080", "8080", "%lo/8080", "::1/8080"]);
        assert_eq!(fw, vec![fwd(8080, 8080)]);
        // Different addresses for one port are all kept, in a stable order.
        let fw = resolve(&["::1/8080", "127.0.0.1/8080", "10.0.0.1%eth0/8080"]);
        let binds: Vec<String> = fw.iter().map(ToString::to_string).collect();
        assert_eq!(
            binds,
            [
                "10.0.0.1%eth0:8080 -> guest port 8080",
                "127.0.0.1:8080 -> guest port 8080",
                "[::1]:8080 -> guest port 8080"
            ]
        );
        // Same address twice: once.
        assert_eq!(resolve(&["127.0.0.1/22", "127.0.0.1/20-30"]).len(), 11);
        // `0.0.0.0` is an address like any other (the caller binds it IPv4-only).
        assert_eq!(resolve(&["0.0.0.0/22", "::/22"]).len(), 2);
    }

    #[test]
    fn port_map_lookups() {
        let fw = resolve(&["22", "8080:80", "9000-9001:7000-7001"]);
        let map = guest_port_of(&fw);
        assert_eq!(map.get(22), Some(22));
        assert_eq!(map.get(8080), Some(80));
        assert_eq!(map.get(9001), Some(7001));
        assert_eq!(map.get(80), None);
        assert_eq!(map.get(0), None);
        assert_eq!(map.get(65535), None);
        assert_eq!(format!("{map:?}"), "PortMap(4 ports)");
        let map = guest_port_of(&[fwd(1, 2), fwd(1, 3)]);
        assert_eq!(map.get(1), Some(2), "first wins");
    }

    #[test]
    fn garbage_never_panics() {
        // xorshift64*: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        const ALPHABET: &[&str] = &[
            "0",
            "1",
            "2",
            "5",
            "9",
            "6553",
            "65535",
            "65536",
            "49152",
            "-",
            ":",
            "~",
            ",",
            "/",
            "%",
            "[",
            "]",
            ".",
            "all",
            "none",
            "::",
            "::1",
            "127.0.0.1",
            "fe80::1",
            "eth0",
            " ",
            "\0",
            "\u{feff}",
            "é",
            "💥",
            "x",
            "+",
            "99999999999",
        ];
        const SEEDS: &[&str] = &[
            "22",
            "8000-8010",
            "8080:80",
            "1-3:5-7",
            "1-1024,~22",
            "~22",
            "all",
            "none",
            "127.0.0.1/8080",
            "[::1]%lo/22",
            "fe80::1%eth0/1-5:6-10",
        ];
        let mut accepted = 0;
        for i in 0..4000 {
            let mut s = String::new();
            if i % 2 == 0 {
                for _ in 0..next() % 12 {
                    s.push_str(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
                }
            } else {
                // Mutate a valid spec: insert, delete or replace a character.
                let mut chars: Vec<char> = SEEDS[(next() % SEEDS.len() as u64) as usize]
                    .chars()
                    .collect();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % (chars.len() as u64 + 1)) as usize;
                    let c = char::from_u32((next() % 0x80) as u32).unwrap_or('?');
                    match next() % 3 {
                        0 => chars.insert(at, c),
                        1 if at < chars.len() => {
                            chars.remove(at);
                        }
                        _ if at < chars.len() => chars[at] = c,
                        _ => chars.push(c),
                    }
                }
                s = chars.into_iter().collect();
            }
            match s.parse::<PortSpec>() {
                Ok(p) => {
                    accepted += 1;
                    assert_eq!(p.as_str(), s);
                    let t = ForwardTable::new(&[p]).unwrap();
                    if !t.has_all() {
                        let fw = t.resolve(&mut never_taken);
                        assert!(fw.iter().all(|f| f.host_port != 0 && f.guest_port != 0));
                    }
                }
                Err(e) => assert!(e.to_string().contains(&format!("{s:?}")), "{s:?}: {e}"),
            }
        }
        assert!(accepted > 0, "the mutations should keep some specs valid");
    }

    #[test]
    fn probing_sees_tcp_and_udp_sockets_and_leaves_nothing_bound() {
        let tcp = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        assert!(port_in_use(Proto::Tcp, port));
        assert!(probe_port(Proto::Tcp, port).is_err());
        drop(tcp);
        // An IPv6-only UDP socket is seen by the second probe.
        let udp = UdpSocket::bind("[::1]:0");
        if let Ok(udp) = udp {
            let port = udp.local_addr().unwrap().port();
            assert!(port_in_use(Proto::Udp, port));
        }
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        assert!(port_in_use(Proto::Udp, port));
        drop(udp);
        assert!(!port_in_use(Proto::Udp, port));
        // Probing twice in a row: the first probe left nothing behind.
        assert!(!port_in_use(Proto::Udp, port));
        assert!(probe_port(Proto::Udp, port).is_ok());
    }

    #[test]
    fn ephemeral_range_is_read() {
        if let Some(r) = ephemeral_ports() {
            assert!(r.first >= 1 && r.first <= r.last);
            assert!(r.contains(r.first) && r.contains(r.last));
        }
    }

    /// Not a benchmark with a bound: prints how long `all` takes with real probes here.
    #[test]
    fn all_with_real_probes_timing() {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let held = listener.local_addr().unwrap().port();
        for proto in [Proto::Tcp, Proto::Udp] {
            let t = table(&["all"]);
            let start = Instant::now();
            let fw = t.resolve(&mut |p| port_in_use(proto, p));
            let took = start.elapsed();
            println!(
                "{proto} `all` with real port_in_use probes: {} forwards in {took:?}",
                fw.len()
            );
            if proto == Proto::Tcp {
                assert!(!fw.iter().any(|f| f.host_port == held));
            }
            assert!(!fw.is_empty());
        }
    }
}
