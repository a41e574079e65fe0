//! The kernel path that KubeVirt's masquerade binding uses today, built in a pod namespace for
//! the benchmark to compare podwire with:
//!
//! ```text
//!  guest eth0 (QEMU's own virtio-net, vhost=off)
//!    └ tap0 ── br0 198.19.0.1/24 (gateway; dnsmasq DHCP hands out 198.19.0.2)
//!                 └ forwarding (ip_forward=1) + nftables masquerade of 198.19.0.0/24 out of eth0
//! ```
//!
//! QEMU must run in the pod namespace (`QemuConfig::in_netns`) with `Nic::Tap { "tap0" }`.

use crate::netns::{Netns, Proc, POD_IFACE};
use crate::util;
use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::time::Duration;

/// The guest subnet both backends use in the benchmark (`podwire --guest-cidr`).
pub const GUEST_CIDR: &str = "198.19.0.0/24";
/// The gateway (br0's address; podwire's gateway address in the same subnet).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The address the guest gets by DHCP.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
pub const TAP: &str = "tap0";
pub const BRIDGE: &str = "br0";

/// The nftables ruleset of the pod: masquerade what the guest subnet sends out of eth0.
pub fn nft_ruleset(uplink: &str) -> String {
    format!(
        "table ip podwire_bench_nat {{\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr {GUEST_CIDR} oifname \"{uplink}\" masquerade\n\
         \x20 }}\n\
         }}\n"
    )
}

/// dnsmasq's arguments: DHCP only (no DNS: `--port=0`) on br0, one address, router, DNS
/// server (the far host) and MTU options.
pub fn dnsmasq_args(leasefile: &str, mtu: u32, dns: Ipv4Addr) -> Vec<String> {
    [
        "dnsmasq",
        "--no-daemon",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--port=0",
        "--bind-interfaces",
        "--user=root",
        "--group=root",
        "--pid-file",
        "--log-facility=-",
        "--dhcp-authoritative",
        "--no-ping",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--interface={BRIDGE}"),
        format!("--dhcp-leasefile={leasefile}"),
        format!("--dhcp-range={GUEST_ADDR},{GUEST_ADDR},255.255.255.0,1h"),
        format!("--dhcp-option=option:router,{GATEWAY}"),
        format!("--dhcp-option=option:dns-server,{dns}"),
        format!("--dhcp-option=option:mtu,{mtu}"),
    ])
    .collect()
}

/// The kernel path's pieces in a pod namespace; the DHCP server stops on drop (the namespace's
/// owner removes the interfaces and rules with the namespace).
#[derive(Debug)]
pub struct KernelPath {
    pub dnsmasq: Proc,
    _leases: util::TempDir,
}

impl KernelPath {
    /// Builds tap0 + br0 + NAT + DHCP in `pod` for a guest MTU of `mtu`.
    pub fn setup(pod: &Netns, mtu: u32, dns: Ipv4Addr) -> Result<KernelPath> {
        let mtu_s = mtu.to_string();
        pod.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])
            .context("creating tap0")?;
        pod.ip(&["link", "add", BRIDGE, "type", "bridge"])
            .context("creating br0")?;
        pod.ip(&["link", "set", TAP, "mtu", &mtu_s, "master", BRIDGE])?;
        pod.ip(&["link", "set", BRIDGE, "mtu", &mtu_s])?;
        pod.add_addr(BRIDGE, &format!("{GATEWAY}/24"))?;
        pod.ip(&["link", "set", TAP, "up"])?;
        pod.ip(&["link", "set", BRIDGE, "up"])?;
        pod.sysctl("net.ipv4.ip_forward", "1")?;
        let leases = util::TempDir::new("kpath")?;
        let rules = leases.join("nat.nft");
        std::fs::write(&rules, nft_ruleset(POD_IFACE))?;
        pod.exec(&["nft", "-f", &rules.display().to_string()])
            .context("loading the NAT rules")?;
        let args = dnsmasq_args(&leases.join("leases").display().to_string(), mtu, dns);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut dnsmasq = pod.spawn("dhcp", &argv)?;
        util::wait_until("dnsmasq to listen on 67", Duration::from_secs(20), || {
            dnsmasq.ensure_running()?;
            let out = pod.exec(&["ss", "-Hlnu"])?;
            Ok(crate::netns::ss_listening(&out, None, 67))
        })?;
        Ok(KernelPath {
            dnsmasq,
            _leases: leases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_and_dhcp_options() {
        let r = nft_ruleset("eth0");
        assert!(
            r.contains("type nat hook postrouting priority srcnat"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr 198.19.0.0/24 oifname \"eth0\" masquerade"),
            "{r}"
        );
        let a = dnsmasq_args("/tmp/l", 65520, Ipv4Addr::new(198, 18, 1, 1)).join(" ");
        assert!(a.contains("--interface=br0"), "{a}");
        assert!(
            a.contains("--dhcp-range=198.19.0.2,198.19.0.2,255.255.255.0,1h"),
            "{a}"
        );
        assert!(a.contains("--dhcp-option=option:router,198.19.0.1"), "{a}");
        assert!(a.contains("--dhcp-option=option:mtu,65520"), "{a}");
        assert!(a.contains("--port=0"), "{a}");
    }
}
