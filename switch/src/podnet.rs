//! What the pod's network looks like: the uplink, its address, gateway and MTU, and resolv.conf.
//!
//! Read once at start-up, without privileges and without netlink: `/proc/net/route` and
//! `/proc/net/ipv6_route` for the default routes, `getifaddrs(3)` for addresses, sysfs for the
//! MTU. These are the facts the guest learns through DHCP and router advertisements. A pod may
//! have IPv4, IPv6 or both; the guest is offered the families the pod has.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("no default route in this network namespace; pass --interface")]
    NoDefaultRoute,
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("interface {0} has neither an IPv4 nor a global IPv6 address")]
    NoAddress(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// One address family of the uplink: its first address and the default gateway, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkAddr<A> {
    pub addr: A,
    pub prefix_len: u8,
    pub gateway: Option<A>,
}

/// The pod's uplink as podwire found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub v4: Option<UplinkAddr<Ipv4Addr>>,
    /// Its first global (not link-local) IPv6 address.
    pub v6: Option<UplinkAddr<Ipv6Addr>>,
    pub mtu: u32,
}

/// The parts of resolv.conf the guest gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    pub nameservers: Vec<IpAddr>,
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

/// IPv6 default routes in `/proc/net/ipv6_route` as (interface, next hop).
fn default_routes6(route_table: &str) -> Vec<(String, Ipv6Addr)> {
    route_table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, dest_len, next_hop, iface) = (f.first()?, f.get(1)?, f.get(4)?, f.get(9)?);
            if dest.len() != 32 || dest.bytes().any(|b| b != b'0') || *dest_len != "00" {
                return None;
            }
            let hop = u128::from_str_radix(next_hop, 16).ok()?;
            Some((iface.to_string(), Ipv6Addr::from(hop)))
        })
        .collect()
}

/// The interface of the IPv4 default route, or else of the IPv6 one.
pub fn default_interface() -> Result<String, PodNetError> {
    let v4 = read("/proc/net/route").map(|t| default_routes(&t));
    let v6 = read("/proc/net/ipv6_route").map(|t| default_routes6(&t));
    v4.unwrap_or_default()
        .into_iter()
        .map(|(iface, _)| iface)
        .chain(v6.unwrap_or_default().into_iter().map(|(iface, _)| iface))
        .find(|iface| iface != "lo")
        .ok_or(PodNetError::NoDefaultRoute)
}

/// Finds `name`'s first IPv4 and first global IPv6 address, their default gateways and the MTU.
pub fn uplink(name: &str) -> Result<Uplink, PodNetError> {
    let mtu_path = format!("/sys/class/net/{name}/mtu");
    if name.contains('/') || !Path::new(&mtu_path).exists() {
        return Err(PodNetError::NoSuchInterface(name.into()));
    }
    let mtu = read(&mtu_path)?.trim().parse().unwrap_or(1500);
    let (v4, v6) = addresses(name);
    let gateway4 = read("/proc/net/route")
        .map(|t| default_routes(&t))
        .unwrap_or_default()
        .into_iter()
        .find(|(iface, _)| iface == name)
        .map(|(_, gw)| gw)
        .filter(|gw| !gw.is_unspecified());
    // No ipv6_route file: the pod's kernel has IPv6 off.
    let gateway6 = read("/proc/net/ipv6_route")
        .map(|t| default_routes6(&t))
        .unwrap_or_default()
        .into_iter()
        .find(|(iface, _)| iface == name)
        .map(|(_, gw)| gw)
        .filter(|gw| !gw.is_unspecified());
    if v4.is_none() && v6.is_none() {
        return Err(PodNetError::NoAddress(name.into()));
    }
    Ok(Uplink {
        name: name.into(),
        v4: v4.map(|(addr, prefix_len)| UplinkAddr {
            addr,
            prefix_len,
            gateway: gateway4,
        }),
        v6: v6.map(|(addr, prefix_len)| UplinkAddr {
            addr,
            prefix_len,
            gateway: gateway6,
        }),
        mtu,
    })
}

/// An IPv6 address the guest can use to reach the world: not link-local, loopback or multicast.
fn is_global6(ip: &Ipv6Addr) -> bool {
    !ip.is_loopback()
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && (ip.segments()[0] & 0xffc0) != 0xfe80
}

/// `name`'s first IPv4 address and first global IPv6 address, with their prefix lengths.
#[allow(clippy::type_complexity)]
fn addresses(name: &str) -> (Option<(Ipv4Addr, u8)>, Option<(Ipv6Addr, u8)>) {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return (None, None);
    }
    let (mut v4, mut v6) = (None, None);
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
        if ifname.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr of at least its family's size.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_INET && v4.is_none() {
            // SAFETY: family is AF_INET, so both are sockaddr_in.
            let (addr, mask) = unsafe {
                (
                    *(ifa.ifa_addr as *const libc::sockaddr_in),
                    *(ifa.ifa_netmask as *const libc::sockaddr_in),
                )
            };
            let addr = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            let prefix = u32::from_be(mask.sin_addr.s_addr).count_ones() as u8;
            v4 = Some((addr, prefix));
        } else if family == libc::AF_INET6 && v6.is_none() {
            // SAFETY: family is AF_INET6, so both are sockaddr_in6.
            let (addr, mask) = unsafe {
                (
                    *(ifa.ifa_addr as *const libc::sockaddr_in6),
                    *(ifa.ifa_netmask as *const libc::sockaddr_in6),
                )
            };
            let addr = Ipv6Addr::from(addr.sin6_addr.s6_addr);
            let prefix = u128::from_be_bytes(mask.sin6_addr.s6_addr).count_ones() as u8;
            if is_global6(&addr) {
                v6 = Some((addr, prefix));
            }
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    (v4, v6)
}

/// Parses resolv.conf text. Unknown lines are skipped.
pub fn parse_resolv_conf(text: &str) -> Resolver {
    let mut r = Resolver::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // A scoped address (fe80::1%eth0) means nothing to the guest: skipped.
                if let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) {
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
    fn ipv6_default_route_is_found() {
        let table = "\
fd000198001800000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000198001800000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        assert_eq!(
            default_routes6(table),
            vec![
                ("eth0".to_string(), "fd00:198:18::1".parse().unwrap()),
                ("lo".to_string(), Ipv6Addr::UNSPECIFIED)
            ]
        );
        assert!(!is_global6(&"fe80::1".parse().unwrap()));
        assert!(is_global6(&"fd00:198:18::2".parse().unwrap()));
    }

    #[test]
    fn resolv_conf_nameservers_and_search() {
        let r = parse_resolv_conf(
            "# comment\nnameserver 198.18.1.1\nnameserver fd00::1\nsearch a.test b.test\noptions ndots:5\n",
        );
        let ns: Vec<IpAddr> = vec![
            Ipv4Addr::new(198, 18, 1, 1).into(),
            "fd00::1".parse::<Ipv6Addr>().unwrap().into(),
        ];
        assert_eq!(r.nameservers, ns);
        assert_eq!(r.search, vec!["a.test", "b.test"]);
        assert_eq!(r.domain, None);
    }

    #[test]
    fn loopback_interface_has_an_address() {
        let lo = uplink("lo").expect("lo exists in every namespace");
        let v4 = lo.v4.expect("127.0.0.1");
        assert_eq!(v4.addr, Ipv4Addr::LOCALHOST);
        assert_eq!(v4.prefix_len, 8);
        assert_eq!(lo.v6, None, "::1 is not a global address");
        assert!(matches!(
            uplink("nonexistent0"),
            Err(PodNetError::NoSuchInterface(_))
        ));
    }
}
