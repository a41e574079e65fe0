//! The guest's one link: frame dispatch, ARP and NDP, the guest's identity, DHCP, and the way out.
//!
//! # Theory of operation
//!
//! The guest sees a two-host Ethernet segment: itself and a gateway that owns every other
//! address. [`Switch`] plays the gateway, for IPv4, IPv6 or both (the families the pod has).
//! For each frame from the guest it copies at most [`HEADER_COPY`] bytes of headers to the
//! stack, checks them, and then:
//!
//! - **ARP** and **DHCPv4** (UDP to port 67) go to `podwire_link::Link4`, which answers in whole
//!   frames (the gateway's MAC for every address but the guest's; the DHCPv4 reply framed).
//! - **IPv6 control traffic** (neighbor discovery, router solicitations, DHCPv6, pings to the
//!   gateway's link-local address) goes to `podwire_link::Link6`, which answers in whole frames;
//!   it also sends the periodic router advertisements, from the NAT's timer tick.
//! - **UDP, TCP, ICMP and ICMPv6 echo** go to the NAT, with the frame still in guest memory.
//! - Anything else (unknown EtherTypes, fragments, IPv6 extension headers, bad checksums,
//!   multicast, a family the guest was not given) is dropped and counted, and each reason is
//!   logged once.
//!
//! The guest's MAC and addresses are learned from its frames (the `--mac` option pins the MAC);
//! when the frontend goes away they are forgotten together with every flow, because the next
//! frontend may be a different guest.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::time::Instant;

use podwire_dhcp::{Dhcpv4Config, Dhcpv4Server};
use podwire_frame::{
    log_limited, summary_of, warn_once, CounterSet, NetHandler, RxSink, SgList, TxOffload,
};
use podwire_link::v4::DHCP_SERVER_PORT;
use podwire_link::{Link4, Link4Config, Link6, Link6Config};
use podwire_nat::wire::{Endpoints, IpInfo, ETH_LEN, IPV4_LEN, IPV6_LEN};
use podwire_nat::{AddrMap, MapRule, Nat, NatConfig};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet,
};

use crate::config::{Config, Forwarding, GATEWAY_MAC};
use crate::state::{Binding6, ForwardRepr, Lease4, State4, State6, StateRepr, TcpRepr};

pub mod inspect;
mod migrate;

/// Header bytes copied out of guest memory per frame: Ethernet + the longest IP header +
/// an L4 header.
pub const HEADER_COPY: usize = ETH_LEN + 60 + 20;
/// Largest IPv6 control packet (NDP, DHCPv6) podwire reads; longer ones are dropped by [`Link6`].
const CONTROL6_MAX: usize = 1500;
/// Largest DHCPv4 datagram (UDP header and message) podwire reads.
const DHCP4_MAX: usize = 8 + podwire_link::v4::DHCP_MAX;

podwire_frame::counters! {
    /// What the switch did with guest frames before handing them on.
    pub struct SwitchCounters {
        /// IPv4 control replies (ARP, DHCPv4) delivered to the guest.
        control4_replies: Count,
        /// IPv6 control replies (NDP, RA, DHCPv6, echo) delivered to the guest.
        control6_replies: Count,
    }
    /// Why the switch itself dropped a guest frame (or a reply to it); each bumps the counter
    /// after `=>`. Reasons further down have their own enums (`podwire_link::Link4Drop`,
    /// `podwire_link::Link6Drop`, `podwire_nat::NatDrop`, the TCP counters).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum SwitchDrop {
        /// Frames shorter than their Ethernet or IP header.
        #[error("shorter than its Ethernet or IP header")]
        Short => drop_short,
        /// Frames of an EtherType podwire does not serve.
        #[error("an EtherType podwire does not serve")]
        UnknownEthertype => drop_unknown_ethertype,
        /// IPv4 frames when the guest has no IPv4, IPv6 frames when it has no IPv6.
        #[error("an address family the guest is not given")]
        FamilyOff => drop_family_off,
        /// IPv4 headers that are not valid.
        #[error("an invalid IPv4 header")]
        BadIpv4Header => drop_bad_ipv4_header,
        /// IPv4 headers with a bad checksum.
        #[error("a bad IPv4 header checksum")]
        BadIpv4Checksum => drop_bad_ipv4_checksum,
        /// IPv6 headers that are not valid.
        #[error("an invalid IPv6 header")]
        BadIpv6Header => drop_bad_ipv6_header,
        /// IPv6 packets to the world with extension headers.
        #[error("IPv6 extension headers")]
        Ipv6Extension => drop_ipv6_extension,
        /// IPv6 packets to the world from a source the NAT cannot answer (link-local, unspecified).
        #[error("an IPv6 source the NAT cannot answer")]
        Ipv6Source => drop_ipv6_source,
        /// IPv4 control packets (ARP, DHCPv4) the link control plane did not answer for a
        /// reason that is not routine (see `podwire_link::Link4Drop`).
        #[error("an IPv4 control packet not answered")]
        Control4 => drop_control4,
        /// IPv6 control packets the link control plane did not answer.
        #[error("an IPv6 control packet not answered")]
        Control6 => drop_control6,
        /// IPv4 fragments.
        #[error("an IPv4 fragment")]
        Fragment => drop_fragment,
        /// Packets to multicast or broadcast addresses podwire does not serve.
        #[error("a multicast or broadcast destination")]
        MulticastBroadcast => drop_multicast_broadcast,
        /// IP protocols other than TCP, UDP and ICMP.
        #[error("an IP protocol other than TCP, UDP and ICMP")]
        OtherProtocol => drop_other_protocol,
        /// Replies not delivered because the guest had no RX buffers.
        #[error("no guest RX buffer for a reply")]
        RxFull => drop_rx_full,
        /// Frames from a source MAC other than the guest's (anti-spoofing).
        #[error("a source MAC not the guest's")]
        SpoofedMac => drop_spoofed_mac,
        /// IPv4 packets and ARP from an address the guest was not given.
        #[error("an IPv4 source not the guest's")]
        SpoofedIpv4 => drop_spoofed_ipv4,
        /// IPv6 packets from outside the guest's prefix.
        #[error("an IPv6 source outside the guest's prefix")]
        SpoofedIpv6 => drop_spoofed_ipv6,
    }
}

/// The guest's IPv6 side.
struct Side6 {
    /// The address traffic from the pod is sent to: the one handed out, or the last global
    /// source the guest used.
    guest_ip: Ipv6Addr,
    handed_out: Ipv6Addr,
    /// The guest's prefix: sources in it (SLAAC, privacy addresses) are its own.
    prefix_len: u8,
    link: Link6,
}

/// Why a destination podwire refused a well-formed migrated state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationRefused {
    #[error("the guest had {0} on the source but this podwire serves none")]
    Family(&'static str),
    #[error("the guest's MAC was {0} on the source but this podwire is pinned to {1}")]
    Mac(EthernetAddress, EthernetAddress),
}

impl Side6 {
    fn owns(&self, src: Ipv6Addr) -> bool {
        let bits = u32::from(self.prefix_len.min(128));
        let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
        u128::from(src) & mask == u128::from(self.handed_out) & mask
    }
}

/// What podwire serves to the guest.
pub struct Switch {
    guest_mac: Option<[u8; 6]>,
    pinned_mac: Option<[u8; 6]>,
    v4: Option<Link4>,
    v6: Option<Side6>,
    /// Anti-spoofing off (`--allow-guest-sources`).
    allow_sources: bool,
    nat: Nat,
    /// The forwarded pod ports, as the command line gave them (compared on migration).
    forwards: Vec<ForwardRepr>,
    /// After a migration: the guest's TCP connections this podwire could not take over, to
    /// reset towards the guest as soon as it has RX buffers (rather than let them hang).
    pending_resets: Vec<TcpRepr>,
    /// Where TCP repair helpers connect, for live migration with sockets (see `migrate.rs`).
    repair: Option<podwire_repair::RepairChannel>,
    pub counters: SwitchCounters,
}

/// DNS servers to offer per family, and the map rules that make them reachable.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DnsPlan {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    pub rules: Vec<MapRule>,
}

/// A resolver the guest cannot reach directly (on the pod's loopback, or at the gateway's own
/// address) is offered as the gateway address, port 53. A resolver of a family the guest does
/// not have is not offered.
pub fn dns_plan(config: &Config) -> DnsPlan {
    let gw4 = config.addressing.map(|a| IpAddr::V4(a.gateway));
    let gw6 = config.addressing6.map(|a| IpAddr::V6(a.gateway));
    let mut plan = DnsPlan::default();
    for &ns in &config.resolver.nameservers {
        let Some(gw) = (if ns.is_ipv6() { gw6 } else { gw4 }) else {
            continue;
        };
        let hidden = ns.is_loopback() || ns.is_unspecified() || (ns == gw && config.map_gateway);
        let offer = if hidden {
            if plan.rules.iter().any(|r| r.guest == gw) {
                continue;
            }
            let host = match ns {
                IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                other => other,
            };
            plan.rules.push(MapRule {
                guest: gw,
                port: Some(53),
                host,
            });
            gw
        } else {
            ns
        };
        match offer {
            IpAddr::V4(a) if !plan.v4.contains(&a) => plan.v4.push(a),
            IpAddr::V6(a) if !plan.v6.contains(&a) => plan.v6.push(a),
            _ => {}
        }
    }
    plan
}

/// The address map for the NAT: DNS rules first, then gateway → pod loopback rules (per
/// family) unless `--no-map-gw`.
pub fn map_rules(config: &Config) -> Vec<MapRule> {
    let mut rules = dns_plan(config).rules;
    if config.map_gateway {
        if let Some(a) = config.addressing {
            rules.push(MapRule {
                guest: a.gateway.into(),
                port: None,
                host: Ipv4Addr::LOCALHOST.into(),
            });
        }
        if let Some(a) = config.addressing6 {
            rules.push(MapRule {
                guest: a.gateway.into(),
                port: None,
                host: Ipv6Addr::LOCALHOST.into(),
            });
        }
    }
    rules
}

/// Listens on the forwarded pod ports, in each family the guest has (or the one the bind
/// address names). A port named explicitly that cannot be bound is an error; one that came
/// from `all` is skipped (something else took it meanwhile).
fn open_forwards(nat: &mut Nat, config: &Config) -> std::io::Result<()> {
    let guest_v4 = config.addressing.map(|a| IpAddr::V4(a.guest));
    let guest_v6 = config.addressing6.map(|a| IpAddr::V6(a.guest));
    for (forwards, tcp) in [(&config.tcp_forwards, true), (&config.udp_forwards, false)] {
        for Forwarding {
            forward: f,
            explicit,
        } in forwards
        {
            for guest in [guest_v4, guest_v6].into_iter().flatten() {
                let bind = match f.bind {
                    Some(ip) if ip.is_ipv6() != guest.is_ipv6() => continue,
                    Some(ip) => SocketAddr::new(ip, f.host_port),
                    None => podwire_nat::sock::any(guest, f.host_port),
                };
                let result = if tcp {
                    nat.listen_tcp(bind, f.guest_port)
                } else {
                    nat.forward_udp(bind, guest, f.guest_port)
                };
                let proto = if tcp { "TCP" } else { "UDP" };
                match result {
                    Ok(()) => tracing::info!(
                        event = "forward_added",
                        proto,
                        spec = %f,
                        bind = %bind,
                        guest_port = f.guest_port,
                        "forwarding {proto} {f} ({bind})"
                    ),
                    Err(e) if *explicit => {
                        tracing::error!(
                            event = "forward_failed",
                            proto,
                            spec = %f,
                            bind = %bind,
                            error = %e,
                            "cannot forward {proto} {f} ({bind}): {e}"
                        );
                        return Err(std::io::Error::new(e.kind(), format!("{proto} {f}: {e}")));
                    }
                    Err(_) => {}
                }
            }
        }
    }
    let (t, u) = (config.tcp_forwards.len(), config.udp_forwards.len());
    if t + u > 0 {
        tracing::info!("forwarding {t} TCP and {u} UDP ports of the pod to the guest");
    }
    Ok(())
}

impl Switch {
    pub fn new(config: &Config) -> std::io::Result<Switch> {
        let dns = dns_plan(config);
        let nat = Nat::new(NatConfig {
            max_flows: config.max_flows,
            timeouts: podwire_nat::flow::Timeouts {
                udp: config.udp_idle,
                ..Default::default()
            },
            guest_mtu: usize::from(config.mtu),
            pod_mtu: config.uplink.mtu as usize,
            map: AddrMap::new(map_rules(config)),
        })?;
        let v4 = config.addressing.map(|a| {
            let dhcp = Dhcpv4Server::new(Dhcpv4Config {
                server_ip: a.gateway,
                guest_ip: a.guest,
                prefix_len: a.prefix_len,
                router: a.gateway,
                dns: dns.v4.clone(),
                domain_name: config.resolver.domain.clone(),
                search: config.resolver.search.clone(),
                mtu: Some(config.mtu),
                lease_secs: config.lease_secs,
                hostname: config.hostname.clone(),
                extra: config.dhcp_extra.clone(),
            });
            let link = Link4Config {
                gateway_mac: GATEWAY_MAC,
                gateway_ip: a.gateway,
                guest_ip: a.guest,
                prefix_len: a.prefix_len,
                allow_other_sources: config.allow_guest_sources,
            };
            Link4::new(link, dhcp)
        });
        let search6 = match &config.resolver.domain {
            Some(d) if config.resolver.search.is_empty() => vec![d.clone()],
            _ => config.resolver.search.clone(),
        };
        let v6 = match config.addressing6 {
            Some(a) => Some(Side6 {
                guest_ip: a.guest,
                handed_out: a.guest,
                prefix_len: a.prefix_len,
                link: ipv6_link(a, dns.v6.clone(), search6, config)?,
            }),
            None => None,
        };
        let mut nat = nat;
        open_forwards(&mut nat, config)?;
        let mut forwards: Vec<ForwardRepr> =
            [(&config.tcp_forwards, false), (&config.udp_forwards, true)]
                .into_iter()
                .flat_map(|(list, udp)| {
                    list.iter().map(move |f| ForwardRepr {
                        udp,
                        host_port: f.forward.host_port,
                        guest_port: f.forward.guest_port,
                    })
                })
                .collect();
        forwards.sort();
        Ok(Switch {
            guest_mac: config.guest_mac,
            pinned_mac: config.guest_mac,
            v4,
            v6,
            allow_sources: config.allow_guest_sources,
            nat,
            forwards,
            pending_resets: Vec::new(),
            repair: None,
            counters: SwitchCounters::default(),
        })
    }

    #[cfg(test)]
    pub fn nat_counters(&self) -> &podwire_nat::NatCounters {
        &self.nat.counters
    }

    /// Runs the idle sweep as if the time were `now` (tests drive the timeouts this way).
    #[cfg(test)]
    pub fn expire_idle_at(&mut self, now: Instant, rx: &mut dyn RxSink) {
        let ep = self.endpoints();
        self.nat.expire_idle(now, rx, &ep);
    }

    #[cfg(test)]
    pub fn link4_counters(&self) -> &podwire_link::Link4Counters {
        &self.v4.as_ref().expect("IPv4 configured").counters
    }

    fn endpoints(&self) -> Endpoints {
        Endpoints {
            // Until the guest has spoken, broadcast: it is the only other host on the link.
            guest_mac: self.guest_mac.unwrap_or([0xff; 6]),
            gateway_mac: GATEWAY_MAC,
            guest_ip: self
                .v4
                .as_ref()
                .map_or(Ipv4Addr::UNSPECIFIED, |v4| v4.guest_ip()),
            guest_ip6: self
                .v6
                .as_ref()
                .map_or(Ipv6Addr::UNSPECIFIED, |v6| v6.guest_ip),
        }
    }

    /// Takes the first unicast source MAC as the guest's (unless `--mac` pinned it); false for a
    /// frame from any other source, which is then dropped (anti-spoofing). With
    /// `--allow-guest-sources` the guest may change its MAC at will.
    fn check_mac(&mut self, src: [u8; 6]) -> bool {
        let unicast = src[0] & 1 == 0 && src != [0; 6];
        if self.guest_mac == Some(src) {
            return true;
        }
        let learn = unicast
            && self.pinned_mac.is_none()
            && (self.guest_mac.is_none() || self.allow_sources);
        if learn {
            log_limited!(info, "guest MAC is {}", EthernetAddress(src));
            self.guest_mac = Some(src);
            return true;
        }
        self.count(SwitchDrop::SpoofedMac);
        log_limited!(
            warn,
            "dropped a guest frame from source MAC {}: not the guest's",
            EthernetAddress(src)
        );
        false
    }

    /// ARP: answered by [`Link4`], which also learns the guest's address from it.
    fn handle_arp(&mut self, arp: &[u8], rx: &mut dyn RxSink) {
        let Some(v4) = self.v4.as_mut() else {
            self.count(SwitchDrop::FamilyOff);
            return;
        };
        let before = v4.guest_ip();
        let mut out = [0u8; podwire_link::v4::ARP_FRAME_LEN];
        let result = v4.handle_arp(arp, &mut out).map(Some);
        if v4.guest_ip() != before {
            log_limited!(info, "guest uses address {}", v4.guest_ip());
        }
        self.deliver_control4(result, &out, rx);
    }

    /// Delivers what [`Link4`] answered, or counts and logs why it did not.
    fn deliver_control4(
        &self,
        result: Result<Option<usize>, podwire_link::Link4Drop>,
        out: &[u8],
        rx: &mut dyn RxSink,
    ) {
        match result {
            Ok(Some(len)) => {
                self.counters.control4_replies.inc();
                self.deliver(rx, &out[..len.min(out.len())]);
            }
            Ok(None) => {}
            Err(podwire_link::Link4Drop::SpoofedSender(ip)) => {
                self.count(SwitchDrop::SpoofedIpv4);
                log_limited!(warn, "ignored ARP from {ip}: not the guest's address");
            }
            // Link4 counts each reason itself; ARP it does not answer is not news.
            Err(e) if e.is_routine() => {}
            Err(e) => {
                self.count(SwitchDrop::Control4);
                warn_once!("dropped an IPv4 control packet from the guest: {e}");
            }
        }
    }

    /// Counts a frame the switch dropped (the caller logs, if it is news).
    fn count(&self, reason: SwitchDrop) {
        reason.counter(&self.counters).inc();
    }

    /// Copies a frame podwire built itself into the guest's RX ring.
    fn deliver(&self, rx: &mut dyn RxSink, frame: &[u8]) {
        if rx
            .push(frame.len(), &mut |buf| {
                buf.write(0, frame).then_some(frame.len())
            })
            .is_err()
        {
            self.count(SwitchDrop::RxFull);
        }
    }

    /// Validates the IPv4 header in `hdr` (copied from `frame`) and returns what L4 needs.
    fn parse_ipv4(&self, hdr: &[u8], frame_len: usize) -> Result<(IpInfo, IpProtocol), SwitchDrop> {
        let ip_bytes = hdr.get(ETH_LEN..).ok_or(SwitchDrop::Short)?;
        if ip_bytes.len() < IPV4_LEN {
            return Err(SwitchDrop::Short);
        }
        let ip = Ipv4Packet::new_unchecked(ip_bytes);
        let ihl = usize::from(ip.header_len());
        let total = usize::from(ip.total_len());
        if ip.version() != 4
            || ihl < IPV4_LEN
            || ihl > ip_bytes.len()
            || total < ihl
            || ETH_LEN + total > frame_len
        {
            return Err(SwitchDrop::BadIpv4Header);
        }
        if !ip.verify_checksum() {
            return Err(SwitchDrop::BadIpv4Checksum);
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Err(SwitchDrop::Fragment);
        }
        Ok((
            IpInfo {
                src: ip.src_addr().into(),
                dst: ip.dst_addr().into(),
                l4_offset: ETH_LEN + ihl,
                l4_len: total - ihl,
                partial_csum: false,
                udp_segment: None,
            },
            ip.next_header(),
        ))
    }

    fn handle_ipv4(&mut self, frame: &SgList<'_>, hdr: &[u8], tx: TxOffload, rx: &mut dyn RxSink) {
        let Some(v4) = self.v4.as_ref() else {
            self.count(SwitchDrop::FamilyOff);
            warn_once!("dropped IPv4 from the guest: the pod has no IPv4 for it");
            return;
        };
        let (mut info, proto) = match self.parse_ipv4(hdr, frame.len()) {
            Ok(v) => v,
            Err(reason) => {
                self.count(reason);
                warn_once!("dropped a malformed IPv4 packet from the guest");
                return;
            }
        };
        info.partial_csum = tx.partial_csum;
        info.udp_segment = tx.udp_segment;
        let l4 = hdr.get(info.l4_offset..).unwrap_or(&[]);
        let dport = l4.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
        if proto == IpProtocol::Udp && dport == Some(DHCP_SERVER_PORT) {
            return self.handle_dhcp(frame, &info, rx);
        }
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (info.src, info.dst) else {
            return;
        };
        if src != v4.guest_ip() && !self.allow_sources {
            self.count(SwitchDrop::SpoofedIpv4);
            log_limited!(
                warn,
                "dropped guest IPv4 from {src}: not the guest's address"
            );
            return;
        }
        if v4.is_broadcast_or_multicast(dst) {
            self.count(SwitchDrop::MulticastBroadcast);
            return;
        }
        self.translate(proto, &info, frame, rx);
    }

    /// Hands a guest packet of either family to the NAT.
    fn translate(
        &mut self,
        proto: IpProtocol,
        info: &IpInfo,
        frame: &SgList<'_>,
        rx: &mut dyn RxSink,
    ) {
        match proto {
            IpProtocol::Udp => self.nat.guest_udp(info, frame),
            IpProtocol::Icmp if !info.is_v6() => self.nat.guest_icmp(info, frame),
            IpProtocol::Icmpv6 if info.is_v6() => self.nat.guest_icmp(info, frame),
            IpProtocol::Tcp => {
                let ep = self.endpoints();
                self.nat.guest_tcp(info, frame, rx, &ep);
            }
            other => {
                self.count(SwitchDrop::OtherProtocol);
                warn_once!("dropped guest IP protocol {other}");
            }
        }
    }

    fn handle_ipv6(&mut self, frame: &SgList<'_>, hdr: &[u8], tx: TxOffload, rx: &mut dyn RxSink) {
        if self.v6.is_none() {
            self.count(SwitchDrop::FamilyOff);
            warn_once!("dropped IPv6 from the guest: the pod has no IPv6 for it");
            return;
        }
        let Some(ip_bytes) = hdr.get(ETH_LEN..).filter(|b| b.len() >= IPV6_LEN) else {
            self.count(SwitchDrop::Short);
            return;
        };
        let ip = Ipv6Packet::new_unchecked(ip_bytes);
        let payload_len = usize::from(ip.payload_len());
        if ip.version() != 6 || ETH_LEN + IPV6_LEN + payload_len > frame.len() {
            self.count(SwitchDrop::BadIpv6Header);
            warn_once!("dropped a malformed IPv6 packet from the guest");
            return;
        }
        let (src, dst, proto) = (ip.src_addr(), ip.dst_addr(), ip.next_header());
        let packet_len = IPV6_LEN + payload_len;
        // The header copy reaches past a few extension headers (MLD's hop-by-hop option).
        if Link6::is_control(&ip_bytes[..ip_bytes.len().min(packet_len)]) {
            return self.handle_control6(frame, packet_len, tx, rx);
        }
        if dst.is_multicast() {
            self.count(SwitchDrop::MulticastBroadcast);
            return;
        }
        if !matches!(
            proto,
            IpProtocol::Udp | IpProtocol::Tcp | IpProtocol::Icmpv6
        ) {
            // Extension headers (fragments, routing, options) are not worth parsing from a
            // guest whose stack has no reason to send them through a NAT.
            let reason = match proto {
                IpProtocol::HopByHop
                | IpProtocol::Ipv6Route
                | IpProtocol::Ipv6Frag
                | IpProtocol::Ipv6Opts => SwitchDrop::Ipv6Extension,
                _ => SwitchDrop::OtherProtocol,
            };
            self.count(reason);
            warn_once!("dropped a guest IPv6 packet with next header {proto}");
            return;
        }
        let unicast_source =
            !src.is_unspecified() && !src.is_multicast() && (src.segments()[0] & 0xffc0) != 0xfe80;
        if !unicast_source {
            self.count(SwitchDrop::Ipv6Source);
            warn_once!("dropped a guest IPv6 packet from {src}: no way back to that source");
            return;
        }
        // The pod's own addresses are never a guest's, allowed sources or not.
        let own = self.v6.as_ref().is_some_and(|v6| v6.owns(src));
        if podwire_nat::is_host_local(src.into()) || !(own || self.allow_sources) {
            self.count(SwitchDrop::SpoofedIpv6);
            log_limited!(
                warn,
                "dropped guest IPv6 from {src}: outside the guest's prefix"
            );
            return;
        }
        if let Some(v6) = self.v6.as_mut() {
            // A guest may alternate between several sources: logged rate-limited.
            if v6.link.learn_source(src) {
                log_limited!(info, "guest uses IPv6 address {src}");
            }
            v6.guest_ip = src;
        }
        let info = IpInfo {
            src: src.into(),
            dst: dst.into(),
            l4_offset: ETH_LEN + IPV6_LEN,
            l4_len: payload_len,
            partial_csum: tx.partial_csum,
            udp_segment: tx.udp_segment,
        };
        self.translate(proto, &info, frame, rx);
    }

    /// NDP, router solicitations, DHCPv6 and pings to the gateway: answered by [`Link6`].
    fn handle_control6(
        &mut self,
        frame: &SgList<'_>,
        packet_len: usize,
        tx: TxOffload,
        rx: &mut dyn RxSink,
    ) {
        let Some(v6) = self.v6.as_mut() else {
            return;
        };
        let mut packet = [0u8; CONTROL6_MAX];
        let n = frame.read(ETH_LEN, &mut packet[..packet_len.min(CONTROL6_MAX)]);
        let mut out = [0u8; podwire_link::v6::OUT_BUFFER_LEN];
        let guest_mac = frame_src_mac(frame);
        match v6.link.handle(
            guest_mac,
            &packet[..n],
            tx.partial_csum,
            Instant::now(),
            &mut out,
        ) {
            Ok(Some(len)) => {
                self.counters.control6_replies.inc();
                self.deliver(rx, &out[..len.min(out.len())]);
            }
            Ok(None) => {}
            // Link6 counts each reason itself; the routine ones (MLD, DAD) are not news.
            Err(e) if e.is_routine() => {}
            Err(e) => {
                self.count(SwitchDrop::Control6);
                warn_once!("dropped an IPv6 control packet from the guest: {e}");
            }
        }
    }

    /// Resets migrated TCP connections towards the guest, keeping those its ring had no room for.
    fn send_pending_resets(&mut self, rx: &mut dyn RxSink, ep: &Endpoints) {
        let before = self.pending_resets.len();
        self.pending_resets.retain(|t| {
            let conn = podwire_nat::tcp::GuestConn {
                guest: t.guest,
                remote: t.remote,
                seq_to_guest: t.seq_to_guest,
                ack_from_guest: t.ack_from_guest,
            };
            !podwire_nat::tcp::reset_guest_conn(rx, ep, &conn)
        });
        let sent = before - self.pending_resets.len();
        if sent > 0 {
            tracing::info!("migration: reset {sent} TCP connections the guest had on the source");
        }
    }

    /// Periodic router advertisements.
    fn send_periodic(&mut self, rx: &mut dyn RxSink) {
        let guest_mac = self.guest_mac;
        let Some(v6) = self.v6.as_mut() else {
            return;
        };
        let mut out = [0u8; podwire_link::v6::OUT_BUFFER_LEN];
        if let Some(len) = v6.link.periodic(guest_mac, Instant::now(), &mut out) {
            self.deliver(rx, &out[..len.min(out.len())]);
        }
    }

    /// DHCPv4: the UDP datagram copied out and handed to [`Link4`], which frames the reply.
    fn handle_dhcp(&mut self, frame: &SgList<'_>, info: &IpInfo, rx: &mut dyn RxSink) {
        let reply_mac = self.endpoints().guest_mac;
        let Some(v4) = self.v4.as_mut() else {
            return;
        };
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (info.src, info.dst) else {
            return;
        };
        let mut udp = [0u8; DHCP4_MAX];
        let n = frame.read(info.l4_offset, &mut udp[..info.l4_len.min(DHCP4_MAX)]);
        let mut out = [0u8; podwire_link::v4::OUT_BUFFER_LEN];
        // The chaddr check inside the responder compares against the frame's real sender.
        let renewed_before = v4.dhcp().lease().map(|l| l.renewed_at);
        let result = v4.handle_dhcp(
            frame_src_mac(frame),
            reply_mac,
            src,
            dst,
            &udp[..n],
            info.partial_csum,
            &mut out,
        );
        if let Some(lease) = v4
            .dhcp()
            .lease()
            .filter(|l| Some(l.renewed_at) != renewed_before)
        {
            tracing::info!(
                event = "lease_granted",
                family = "ipv4",
                address = %lease.ip,
                mac = %lease.mac.map(|b| format!("{b:02x}")).join(":"),
                lease_secs = lease.lease_secs,
                hostname = lease.hostname.as_deref().map(|h| h.escape_debug().to_string()),
                "DHCP lease of {} to {}",
                lease.ip,
                EthernetAddress(lease.mac)
            );
        }
        self.deliver_control4(result, &out, rx);
    }

    /// Live migration, source: what the destination needs to go on serving this guest.
    pub fn to_state(&self) -> StateRepr {
        let now = Instant::now();
        let ago = |t: Instant| {
            now.saturating_duration_since(t)
                .as_secs()
                .min(u64::from(u32::MAX)) as u32
        };
        StateRepr {
            guest_mac: self.guest_mac,
            v4: self.v4.as_ref().map(|v4| State4 {
                guest_ip: v4.guest_ip(),
                lease: v4.dhcp().lease_at(now).map(|l| Lease4 {
                    mac: l.mac,
                    ip: l.ip,
                    bound_secs_ago: ago(l.bound_at),
                    renewed_secs_ago: ago(l.renewed_at),
                    lease_secs: l.lease_secs,
                    client_id: l.client_id,
                    hostname: l.hostname,
                }),
            }),
            v6: self.v6.as_ref().map(|v6| State6 {
                guest_ip: v6.guest_ip,
                handed_out: v6.handed_out,
                // The table lists the most recent first; oldest first restores the same order.
                seen: v6.link.guest_addresses().iter().rev().copied().collect(),
                binding: v6.link.dhcp_binding().map(|b| Binding6 {
                    duid: b.client_duid.clone(),
                    iaid: b.iaid,
                    addr: b.addr,
                }),
            }),
            forwards: self.forwards.clone(),
            tcp: self
                .nat
                .tcp_guest_view()
                .map(|c| TcpRepr {
                    guest: c.guest,
                    remote: c.remote,
                    seq_to_guest: c.seq_to_guest,
                    ack_from_guest: c.ack_from_guest,
                    repair: None,
                })
                .collect(),
        }
    }

    /// Live migration, destination: takes over a source's state. Everything is checked
    /// against this podwire's own configuration first; on a refusal nothing has changed.
    pub fn apply_state(&mut self, state: StateRepr) -> Result<(), MigrationRefused> {
        use MigrationRefused as R;
        if state.v4.is_some() && self.v4.is_none() {
            return Err(R::Family("IPv4"));
        }
        if state.v6.is_some() && self.v6.is_none() {
            return Err(R::Family("IPv6"));
        }
        if let (Some(pinned), Some(mac)) = (self.pinned_mac, state.guest_mac) {
            if pinned != mac {
                return Err(R::Mac(EthernetAddress(mac), EthernetAddress(pinned)));
            }
        }
        if state.forwards != self.forwards {
            tracing::warn!(
                "migration: the source forwarded other pod ports ({:?}) than this podwire \
                 ({:?}); serving this podwire's",
                state.forwards,
                self.forwards
            );
        }
        let now = Instant::now();
        let back = |secs: u32| {
            now.checked_sub(std::time::Duration::from_secs(u64::from(secs)))
                .unwrap_or(now)
        };
        if let Some(mac) = state.guest_mac {
            self.guest_mac = Some(mac);
        }
        if let (Some(v4), Some(s4)) = (self.v4.as_mut(), state.v4) {
            let lease = s4.lease.map(|l| podwire_dhcp::LeaseInfo {
                mac: l.mac,
                ip: l.ip,
                bound_at: back(l.bound_secs_ago),
                renewed_at: back(l.renewed_secs_ago),
                lease_secs: l.lease_secs,
                client_id: l.client_id,
                hostname: l.hostname,
            });
            v4.restore(s4.guest_ip, lease);
        }
        if let (Some(v6), Some(s6)) = (self.v6.as_mut(), state.v6) {
            v6.guest_ip = s6.guest_ip;
            let binding = s6.binding.map(|b| podwire_dhcp::Dhcpv6Binding {
                client_duid: b.duid,
                iaid: b.iaid,
                addr: b.addr,
            });
            v6.link.restore(&s6.seen, binding);
        }
        // Connections whose sockets could not be rebuilt here (or stayed with the source):
        // reset the guest's side at once.
        self.pending_resets = self.take_over_sockets(state.tcp);
        tracing::info!(
            "migration: took over the guest (MAC {}, IPv4 {}, IPv6 {}); resetting {} TCP \
             connections it had",
            self.guest_mac
                .map_or("unknown".to_string(), |m| EthernetAddress(m).to_string()),
            self.v4
                .as_ref()
                .map_or("none".to_string(), |v| v.guest_ip().to_string()),
            self.v6
                .as_ref()
                .map_or("none".to_string(), |v| v.guest_ip.to_string()),
            self.pending_resets.len(),
        );
        Ok(())
    }

    /// The guest's identity, flows and leases, then every non-zero counter: one log line.
    pub fn status(&self) -> String {
        let mac = self
            .guest_mac
            .map_or("unknown".to_string(), |m| EthernetAddress(m).to_string());
        let ip = self.v4.as_ref().map_or("none".to_string(), |v4| {
            let lease = if v4.dhcp().lease().is_some() {
                "bound"
            } else {
                "none"
            };
            format!("{} lease={lease}", v4.guest_ip())
        });
        let ip6 = self.v6.as_ref().map_or("none".to_string(), |v6| {
            let lease = if v6.link.lease_bound() {
                "bound"
            } else {
                "none"
            };
            let seen: Vec<String> = v6
                .link
                .guest_addresses()
                .iter()
                .map(|a| a.to_string())
                .collect();
            format!("{} lease6={lease} seen6=[{}]", v6.guest_ip, seen.join(","))
        });
        format!(
            "guest mac={mac} ip={ip} ip6={ip6} flows={}; {}",
            self.nat.flow_count(),
            self.summary()
        )
    }

    /// A one-line summary of every non-zero counter, for logs.
    pub fn summary(&self) -> String {
        summary_of(&self.counter_sets())
    }

    /// Every counter set of the dataplane with the prefix its names take in the status line
    /// (the device's are the device's): for the summary, a status command or metrics, through
    /// [`CounterSet`].
    pub fn counter_sets(&self) -> Vec<(&'static str, &dyn CounterSet)> {
        let mut sets: Vec<(&'static str, &dyn CounterSet)> = vec![
            ("", &self.counters),
            ("nat_", &self.nat.counters),
            ("tcp_", &self.nat.tcp.counters),
        ];
        if let Some(v4) = &self.v4 {
            sets.push(("", &v4.counters));
            sets.push(("dhcpv4_", v4.dhcp().counters()));
        }
        if let Some(v6) = &self.v6 {
            sets.extend(v6.link.counter_sets());
        }
        sets
    }
}

/// The IPv6 control plane for `a`, checked: a configuration the router advertisement or
/// DHCPv6 cannot carry is an error at start-up, not a silent guest without IPv6.
fn ipv6_link(
    a: crate::config::Addressing6,
    dns: Vec<Ipv6Addr>,
    search: Vec<String>,
    config: &Config,
) -> std::io::Result<Link6> {
    let cfg = Link6Config {
        gateway_mac: GATEWAY_MAC,
        prefix: a.guest,
        prefix_len: a.prefix_len,
        guest: a.guest,
        gateway: a.gateway,
        dns,
        search,
        // IPv6 needs at least 1280 on every link.
        mtu: config.mtu.max(1280),
        lease_secs: config.lease_secs,
    };
    cfg.validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("IPv6: {e}")))?;
    let link = Link6::new(cfg);
    tracing::info!(
        "IPv6 router {} for {}/{}",
        link.gateway_link_local(),
        a.guest,
        a.prefix_len
    );
    Ok(link)
}

fn frame_src_mac(frame: &SgList<'_>) -> [u8; 6] {
    let mut mac = [0u8; 6];
    frame.read(6, &mut mac);
    mac
}

impl AsMut<Switch> for Switch {
    fn as_mut(&mut self) -> &mut Switch {
        self
    }
}

impl NetHandler for Switch {
    fn guest_frame(&mut self, frame: &SgList<'_>, rx: &mut dyn RxSink) {
        self.guest_frame_with(frame, TxOffload::default(), rx)
    }

    fn guest_frame_with(&mut self, frame: &SgList<'_>, tx: TxOffload, rx: &mut dyn RxSink) {
        let mut hdr = [0u8; HEADER_COPY];
        let n = frame.read(0, &mut hdr);
        if n < ETH_LEN {
            self.count(SwitchDrop::Short);
            return;
        }
        let eth = EthernetFrame::new_unchecked(&hdr[..n]);
        if !self.check_mac(eth.src_addr().0) {
            return;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let mut arp = [0u8; 28];
                if frame.read(ETH_LEN, &mut arp) < arp.len() {
                    self.count(SwitchDrop::Short);
                    return;
                }
                self.handle_arp(&arp, rx);
            }
            EthernetProtocol::Ipv4 => self.handle_ipv4(frame, &hdr[..n], tx, rx),
            EthernetProtocol::Ipv6 => self.handle_ipv6(frame, &hdr[..n], tx, rx),
            other => {
                self.count(SwitchDrop::UnknownEthertype);
                warn_once!("dropped a guest frame with EtherType {other}");
            }
        }
    }

    fn poll_host(&mut self, rx: &mut dyn RxSink) {
        let ep = self.endpoints();
        if !self.pending_resets.is_empty() {
            self.send_pending_resets(rx, &ep);
        }
        self.nat.poll(rx, &ep);
        self.send_periodic(rx);
    }

    fn tx_batch_done(&mut self, rx: &mut dyn RxSink) {
        let ep = self.endpoints();
        self.nat.flush(rx, &ep);
    }

    fn host_fd(&self) -> RawFd {
        self.nat.poll_fd()
    }

    fn save_state(&mut self) -> Result<Vec<u8>, podwire_frame::StateError> {
        let mut state = self.to_state();
        self.hand_over_sockets(&mut state);
        Ok(state.emit())
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), podwire_frame::StateError> {
        let state = StateRepr::parse(bytes)?;
        self.apply_state(state)?;
        Ok(())
    }

    fn link_changed(&mut self, up: bool) {
        if up {
            return;
        }
        tracing::info!("session counters: {}", self.summary());
        // The next frontend may be another guest: forget this one.
        self.nat.clear();
        self.pending_resets.clear();
        self.guest_mac = self.pinned_mac;
        if let Some(v6) = self.v6.as_mut() {
            v6.link.forget();
            v6.guest_ip = v6.handed_out;
        }
    }
}
