//! What the pod's network looks like: the uplink, its address, gateway and MTU, and resolv.conf.
//!
//! Read once at start-up, without privileges and without netlink: `/proc/net/route` for the
//! default route, `getifaddrs(3)` for addresses, sysfs for the MTU. These are the facts the
//! guest learns through DHCP.

use std::net::Ipv4Addr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("no IPv4 default route in this network namespace; pass --interface")]
    NoDefaultRoute,
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The pod's uplink as podwire found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

/// The parts of resolv.conf the guest gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    pub nameservers: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    pub domain: Option<String>,
}

fn read(path: &str) -> Result<String, PodNetError> {
    std::fs::read_to_string(path).map_err(|source| PodNetError::Read {
        path: path.into(),
        source,
    })
}

/// Default routes in `/proc/net/route` as (interface, gateway).
fn default_routes(route_table: &str) -> Vec<(String, Ipv4Addr)> {
    route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, gw, mask) = (f.first()?, f.get(1)?, f.get(2)?, f.get(7)?);
            if *dest != "00000000" || *mask != "00000000" {
                return None;
            }
            // The kernel prints the network-order address as a native-endian u32.
            let gw = u32::from_str_radix(gw, 16).ok()?;
            Some((iface.to_string(), Ipv4Addr::from(gw.to_ne_bytes())))
        })
        .collect()
}

/// The interface of the IPv4 default route.
pub fn default_interface() -> Result<String, PodNetError> {
    default_routes(&read("/proc/net/route")?)
        .into_iter()
        .next()
        .map(|(iface, _)| iface)
        .ok_or(PodNetError::NoDefaultRoute)
}

/// Finds `name`'s first IPv4 address, its default gateway and MTU.
pub fn uplink(name: &str) -> Result<Uplink, PodNetError> {
    let mtu_path = format!("/sys/class/net/{name}/mtu");
    if name.contains('/') || !Path::new(&mtu_path).exists() {
        return Err(PodNetError::NoSuchInterface(name.into()));
    }
    let mtu = read(&mtu_path)?.trim().parse().unwrap_or(1500);
    let (addr, prefix_len) =
        ipv4_address(name).ok_or_else(|| PodNetError::NoAddress(name.into()))?;
    let gateway = default_routes(&read("/proc/net/route")?)
        .into_iter()
        .find(|(iface, _)| iface == name)
        .map(|(_, gw)| gw)
        .filter(|gw| !gw.is_unspecified());
    Ok(Uplink {
        name: name.into(),
        addr,
        prefix_len,
        gateway,
        mtu,
    })
}

fn ipv4_address(name: &str) -> Option<(Ipv4Addr, u8)> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr points to a sockaddr of at least its family's size.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if ifname.to_bytes() != name.as_bytes() || i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: family is AF_INET, so both are sockaddr_in.
        let (addr, mask) = unsafe {
            (
                *(ifa.ifa_addr as *const libc::sockaddr_in),
                *(ifa.ifa_netmask as *const libc::sockaddr_in),
            )
        };
        let addr = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        let prefix = u32::from_be(mask.sin_addr.s_addr).count_ones() as u8;
        found = Some((addr, prefix));
        break;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// Parses resolv.conf text. Unknown lines and IPv6 nameservers are skipped.
pub fn parse_resolv_conf(text: &str) -> Resolver {
    let mut r = Resolver::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(Ok(ip)) = words.next().map(str::parse::<Ipv4Addr>) {
                    r.nameservers.push(ip);
                }
            }
            // The last of `search` and `domain` wins, as in resolv.conf(5).
            Some("search") => {
                r.search = words.map(String::from).collect();
                r.domain = None;
            }
            Some("domain") => {
                r.domain = words.next().map(String::from);
                r.search.clear();
            }
            _ => {}
        }
    }
    r
}

pub fn resolver(path: &Path) -> Resolver {
    std::fs::read_to_string(path)
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_is_found_and_decoded() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            default_routes(table),
            vec![("eth0".to_string(), Ipv4Addr::new(198, 18, 0, 1))]
        );
    }

    #[test]
    fn resolv_conf_nameservers_and_search() {
        let r = parse_resolv_conf(
            "# comment\nnameserver 198.18.1.1\nnameserver fd00::1\nsearch a.test b.test\noptions ndots:5\n",
        );
        assert_eq!(r.nameservers, vec![Ipv4Addr::new(198, 18, 1, 1)]);
        assert_eq!(r.search, vec!["a.test", "b.test"]);
        assert_eq!(r.domain, None);
    }

    #[test]
    fn loopback_interface_has_an_address() {
        let lo = uplink("lo").expect("lo exists in every namespace");
        assert_eq!(lo.addr, Ipv4Addr::LOCALHOST);
        assert_eq!(lo.prefix_len, 8);
        assert!(matches!(
            uplink("nonexistent0"),
            Err(PodNetError::NoSuchInterface(_))
        ));
    }
}
