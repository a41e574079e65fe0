//! The guest's one link: frame dispatch, ARP, the guest's identity, DHCP, and the way out.
//!
//! # Theory of operation
//!
//! The guest sees a two-host Ethernet segment: itself and a gateway that owns every other
//! address. [`Switch`] plays the gateway. For each frame from the guest it copies at most
//! [`HEADER_COPY`] bytes of headers to the stack, checks them, and then:
//!
//! - **ARP** requests for any address but the guest's own get the gateway's MAC; probes (sender
//!   0.0.0.0) and announcements are never answered, so the guest's duplicate address detection
//!   never sees a conflict.
//! - **DHCPv4** (UDP to port 67) goes to the `podwire-dhcp` responder; its reply is framed here.
//! - **UDP and ICMP** go to the NAT, with the frame still in guest memory.
//! - Anything else (unknown EtherTypes, fragments, bad checksums, multicast, TCP for now) is
//!   dropped and counted, and each reason is logged once.
//!
//! The guest's MAC and address are learned from its frames (the `--mac` option pins the MAC);
//! when the frontend goes away they are forgotten together with every flow, because the next
//! frontend may be a different guest.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

use podwire_dhcp::{Dhcpv4Config, Dhcpv4Server, ReplyDest};
use podwire_nat::ports::Forward;
use podwire_nat::wire::{self, Endpoints, Ipv4Info, L4Csum, ETH_LEN, IPV4_LEN, UDP_PAYLOAD_OFFSET};
use podwire_nat::{AddrMap, MapRule, Nat, NatConfig};
use podwire_vhost::{nonzero_summary, warn_once, Counter, NetHandler, RxSink, SgList, TxOffload};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpProtocol, Ipv4Packet,
};

use crate::config::{Config, Forwarding, GATEWAY_MAC};

/// Header bytes copied out of guest memory per frame: Ethernet + the longest IPv4 header +
/// an L4 header.
pub const HEADER_COPY: usize = ETH_LEN + 60 + 20;
/// Largest DHCP message podwire reads or writes (RFC 2131 asks for 576 at least).
const DHCP_MAX: usize = 1500;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;

#[derive(Debug, Default)]
pub struct SwitchCounters {
    pub arp_replies: Counter,
    pub arp_ignored: Counter,
    pub dhcp_replies: Counter,
    pub dhcp_errors: Counter,
    pub drop_short: Counter,
    pub drop_unknown_ethertype: Counter,
    pub drop_ipv6: Counter,
    pub drop_bad_ipv4_header: Counter,
    pub drop_bad_ipv4_checksum: Counter,
    pub drop_fragment: Counter,
    pub drop_multicast_broadcast: Counter,
    pub drop_other_protocol: Counter,
    pub drop_rx_full: Counter,
}

/// What podwire serves to the guest.
pub struct Switch {
    guest_mac: Option<[u8; 6]>,
    pinned_mac: Option<[u8; 6]>,
    guest_ip: Ipv4Addr,
    gateway_ip: Ipv4Addr,
    prefix_len: u8,
    dhcp: Dhcpv4Server,
    nat: Nat,
    pub counters: SwitchCounters,
}

/// DNS servers to offer, and the map rules that make them reachable: a resolver on the pod's
/// loopback (or at the gateway's own address) is offered as the gateway address, port 53.
pub fn dns_plan(config: &Config) -> (Vec<Ipv4Addr>, Vec<MapRule>) {
    let gw = config.addressing.gateway;
    let mut offered = Vec::new();
    let mut rules = Vec::new();
    for &ns in &config.resolver.nameservers {
        let hidden = ns.is_loopback() || ns.is_unspecified() || (ns == gw && config.map_gateway);
        if hidden {
            if rules.is_empty() {
                rules.push(MapRule {
                    guest: gw,
                    port: Some(53),
                    host: if ns.is_unspecified() {
                        Ipv4Addr::LOCALHOST
                    } else {
                        ns
                    },
                });
                offered.push(gw);
            }
        } else if !offered.contains(&ns) {
            offered.push(ns);
        }
    }
    (offered, rules)
}

/// The address map for the NAT: DNS rules first, then the gateway → pod loopback rule
/// unless `--no-map-gw`.
pub fn map_rules(config: &Config) -> Vec<MapRule> {
    let (_, mut rules) = dns_plan(config);
    if config.map_gateway {
        rules.push(MapRule {
            guest: config.addressing.gateway,
            port: None,
            host: Ipv4Addr::LOCALHOST,
        });
    }
    rules
}

/// Listens on the forwarded pod ports. A port named explicitly that cannot be bound is an error;
/// one that came from `all` is skipped (something else took it meanwhile).
fn open_forwards(nat: &mut Nat, config: &Config) -> std::io::Result<()> {
    let bind_of = |f: &Forward| {
        let ip = match f.bind {
            Some(std::net::IpAddr::V4(ip)) => ip,
            _ => Ipv4Addr::UNSPECIFIED,
        };
        SocketAddrV4::new(ip, f.host_port)
    };
    for (forwards, tcp) in [(&config.tcp_forwards, true), (&config.udp_forwards, false)] {
        for Forwarding {
            forward: f,
            explicit,
        } in forwards
        {
            let result = if tcp {
                nat.listen_tcp(bind_of(f), f.guest_port)
            } else {
                nat.forward_udp(bind_of(f), config.addressing.guest, f.guest_port)
            };
            match result {
                Ok(()) => tracing::debug!("forwarding {} {f}", if tcp { "TCP" } else { "UDP" }),
                Err(e) if *explicit => {
                    let proto = if tcp { "TCP" } else { "UDP" };
                    return Err(std::io::Error::new(e.kind(), format!("{proto} {f}: {e}")));
                }
                Err(_) => {}
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
        let a = config.addressing;
        let (dns, _) = dns_plan(config);
        let rules = map_rules(config);
        let nat = Nat::new(NatConfig {
            max_flows: config.max_flows,
            udp_idle: config.udp_idle,
            guest_mtu: usize::from(config.mtu),
            map: AddrMap::new(rules),
            ..NatConfig::default()
        })?;
        let dhcp = Dhcpv4Server::new(Dhcpv4Config {
            server_ip: a.gateway,
            guest_ip: a.guest,
            prefix_len: a.prefix_len,
            router: a.gateway,
            dns,
            domain_name: config.resolver.domain.clone(),
            search: config.resolver.search.clone(),
            mtu: Some(config.mtu),
            lease_secs: config.lease_secs,
            hostname: config.hostname.clone(),
        });
        let mut nat = nat;
        open_forwards(&mut nat, config)?;
        Ok(Switch {
            guest_mac: config.guest_mac,
            pinned_mac: config.guest_mac,
            guest_ip: a.guest,
            gateway_ip: a.gateway,
            prefix_len: a.prefix_len,
            dhcp,
            nat,
            counters: SwitchCounters::default(),
        })
    }

    #[cfg(test)]
    pub fn nat_counters(&self) -> &podwire_nat::NatCounters {
        &self.nat.counters
    }

    #[cfg(test)]
    pub fn nat_mut(&mut self) -> &mut Nat {
        &mut self.nat
    }

    fn endpoints(&self) -> Endpoints {
        Endpoints {
            // Until the guest has spoken, broadcast: it is the only other host on the link.
            guest_mac: self.guest_mac.unwrap_or([0xff; 6]),
            gateway_mac: GATEWAY_MAC,
            guest_ip: self.guest_ip,
        }
    }

    fn learn_mac(&mut self, src: [u8; 6]) {
        let unicast = src[0] & 1 == 0 && src != [0; 6];
        if self.pinned_mac.is_none() && unicast && self.guest_mac != Some(src) {
            tracing::info!("guest MAC is {}", EthernetAddress(src));
            self.guest_mac = Some(src);
        }
    }

    fn handle_arp(&mut self, arp: &[u8], rx: &mut dyn RxSink) {
        let Ok(repr) = ArpRepr::parse(&ArpPacket::new_unchecked(arp)) else {
            self.counters.arp_ignored.inc();
            return;
        };
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr: sender_ip,
            target_protocol_addr: target_ip,
            ..
        } = repr
        else {
            self.counters.arp_ignored.inc();
            return;
        };
        if !sender_ip.is_unspecified() && sender_ip != self.guest_ip && self.in_subnet(sender_ip) {
            tracing::info!("guest uses address {sender_ip}");
            self.guest_ip = sender_ip;
        }
        let answer = operation == ArpOperation::Request
            && !sender_ip.is_unspecified()
            && target_ip != sender_ip
            && target_ip != self.guest_ip;
        if !answer {
            self.counters.arp_ignored.inc();
            return;
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(GATEWAY_MAC),
            source_protocol_addr: target_ip,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: sender_ip,
        };
        let mut frame = [0u8; ETH_LEN + 28];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        EthernetRepr {
            src_addr: EthernetAddress(GATEWAY_MAC),
            dst_addr: source_hardware_addr,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut eth);
        reply.emit(&mut ArpPacket::new_unchecked(&mut frame[ETH_LEN..]));
        self.deliver(rx, &frame);
        self.counters.arp_replies.inc();
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.guest_ip) & mask
    }

    fn is_broadcast_or_multicast(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        ip.is_broadcast()
            || ip.is_multicast()
            || (self.in_subnet(ip) && u32::from(ip) | mask == u32::MAX)
    }

    /// Copies a frame podwire built itself into the guest's RX ring.
    fn deliver(&self, rx: &mut dyn RxSink, frame: &[u8]) {
        if rx
            .push(frame.len(), &mut |buf| {
                buf.write(0, frame).then_some(frame.len())
            })
            .is_err()
        {
            self.counters.drop_rx_full.inc();
        }
    }

    /// Validates the IPv4 header in `hdr` (copied from `frame`) and returns what L4 needs.
    fn parse_ipv4(&self, hdr: &[u8], frame_len: usize) -> Result<(Ipv4Info, IpProtocol), &Counter> {
        let c = &self.counters;
        let ip_bytes = hdr.get(ETH_LEN..).ok_or(&c.drop_short)?;
        if ip_bytes.len() < IPV4_LEN {
            return Err(&c.drop_short);
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
            return Err(&c.drop_bad_ipv4_header);
        }
        if !ip.verify_checksum() {
            return Err(&c.drop_bad_ipv4_checksum);
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Err(&c.drop_fragment);
        }
        Ok((
            Ipv4Info {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
                l4_offset: ETH_LEN + ihl,
                l4_len: total - ihl,
                partial_csum: false,
            },
            ip.next_header(),
        ))
    }

    fn handle_ipv4(&mut self, frame: &SgList<'_>, hdr: &[u8], tx: TxOffload, rx: &mut dyn RxSink) {
        let (mut info, proto) = match self.parse_ipv4(hdr, frame.len()) {
            Ok(v) => v,
            Err(counter) => {
                counter.inc();
                warn_once!("dropped a malformed IPv4 packet from the guest");
                return;
            }
        };
        info.partial_csum = tx.partial_csum;
        let l4 = hdr.get(info.l4_offset..).unwrap_or(&[]);
        let dport = l4.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
        if proto == IpProtocol::Udp && dport == Some(DHCP_SERVER_PORT) {
            return self.handle_dhcp(frame, &info, rx);
        }
        if self.is_broadcast_or_multicast(info.dst) {
            self.counters.drop_multicast_broadcast.inc();
            return;
        }
        match proto {
            IpProtocol::Udp => self.nat.guest_udp(&info, frame),
            IpProtocol::Icmp => self.nat.guest_icmp(&info, frame),
            IpProtocol::Tcp => {
                let ep = self.endpoints();
                self.nat.guest_tcp(&info, frame, rx, &ep);
            }
            other => {
                self.counters.drop_other_protocol.inc();
                warn_once!("dropped guest IPv4 protocol {other}");
            }
        }
    }

    fn handle_dhcp(&mut self, frame: &SgList<'_>, info: &Ipv4Info, rx: &mut dyn RxSink) {
        let mut udp = [0u8; 8];
        frame.read(info.l4_offset, &mut udp);
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if udp_len < 8 || udp_len > info.l4_len {
            self.counters.dhcp_errors.inc();
            return;
        }
        if udp[6..8] != [0, 0] && !info.partial_csum {
            let mut sum = wire::pseudo_header(info.src, info.dst, 17, udp_len);
            frame.checksum(info.l4_offset, udp_len, &mut sum);
            if sum.fold() != 0xffff {
                self.counters.dhcp_errors.inc();
                warn_once!("dropped a DHCP message with a bad UDP checksum");
                return;
            }
        }
        let mut request = [0u8; DHCP_MAX];
        let n = frame.read(
            info.l4_offset + 8,
            &mut request[..(udp_len - 8).min(DHCP_MAX)],
        );
        // The chaddr check inside the responder compares against the frame's real sender.
        let client_mac = frame_src_mac(frame);
        let mut reply = [0u8; DHCP_MAX];
        let answer = match self.dhcp.handle(client_mac, &request[..n], &mut reply) {
            Ok(Some(answer)) => answer,
            Ok(None) => return,
            Err(e) => {
                self.counters.dhcp_errors.inc();
                warn_once!("dropped a DHCP message: {e}");
                return;
            }
        };
        let dst = match answer.dest {
            ReplyDest::Broadcast => Ipv4Addr::BROADCAST,
            ReplyDest::Unicast(ip) => ip,
        };
        let payload = &reply[..answer.len.min(DHCP_MAX)];
        let ep = self.endpoints();
        let src = self.gateway_ip;
        let ident = 0;
        let pushed = rx.push(UDP_PAYLOAD_OFFSET + payload.len(), &mut |buf| {
            if !buf.write(UDP_PAYLOAD_OFFSET, payload) {
                return None;
            }
            let l3 =
                wire::eth_ipv4_header(&ep, src, dst, IpProtocol::Udp, 8 + payload.len(), ident);
            let udp = wire::udp_header(
                (src, DHCP_SERVER_PORT),
                (dst, DHCP_CLIENT_PORT),
                L4Csum::Full(buf),
                UDP_PAYLOAD_OFFSET,
                payload.len(),
            );
            buf.write(0, &l3);
            buf.write(ETH_LEN + IPV4_LEN, &udp);
            Some(UDP_PAYLOAD_OFFSET + payload.len())
        });
        match pushed {
            Ok(()) => self.counters.dhcp_replies.inc(),
            Err(_) => self.counters.drop_rx_full.inc(),
        }
    }

    /// The guest's identity, flows and lease, then every non-zero counter: one log line.
    pub fn status(&self) -> String {
        let mac = self
            .guest_mac
            .map_or("unknown".to_string(), |m| EthernetAddress(m).to_string());
        let lease = if self.dhcp.lease().is_some() {
            "bound"
        } else {
            "none"
        };
        format!(
            "guest mac={mac} ip={} lease={lease} flows={}; {}",
            self.guest_ip,
            self.nat.flow_count(),
            self.summary()
        )
    }

    /// A one-line summary of every non-zero counter, for logs.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let n = &self.nat.counters;
        let t = &self.nat.tcp.counters;
        let pairs = [
            ("arp_replies", c.arp_replies.get()),
            ("dhcp_replies", c.dhcp_replies.get()),
            ("dhcp_errors", c.dhcp_errors.get()),
            ("udp_out", n.udp_out.get()),
            ("udp_in", n.udp_in.get()),
            ("icmp_out", n.icmp_out.get()),
            ("icmp_in", n.icmp_in.get()),
            ("flows_opened", n.flows_opened.get()),
            ("flows_expired", n.flows_expired.get()),
            ("drop_short", c.drop_short.get()),
            ("drop_unknown_ethertype", c.drop_unknown_ethertype.get()),
            ("drop_ipv6", c.drop_ipv6.get()),
            ("drop_bad_ipv4_header", c.drop_bad_ipv4_header.get()),
            ("drop_bad_ipv4_checksum", c.drop_bad_ipv4_checksum.get()),
            ("drop_fragment", c.drop_fragment.get()),
            ("drop_multicast_broadcast", c.drop_multicast_broadcast.get()),
            ("drop_other_protocol", c.drop_other_protocol.get()),
            ("drop_rx_full", c.drop_rx_full.get()),
            ("nat_drop_truncated", n.drop_truncated.get()),
            ("nat_drop_bad_checksum", n.drop_bad_checksum.get()),
            ("nat_drop_table_full", n.drop_table_full.get()),
            ("nat_drop_socket", n.drop_socket.get()),
            ("nat_drop_unsupported_icmp", n.drop_unsupported_icmp.get()),
            (
                "nat_drop_ping_not_permitted",
                n.drop_ping_not_permitted.get(),
            ),
            ("nat_drop_send_failed", n.drop_send_failed.get()),
            ("nat_drop_too_big_for_guest", n.drop_too_big_for_guest.get()),
            ("tcp_opened_by_guest", t.opened_by_guest.get()),
            ("tcp_opened_from_pod", t.opened_from_pod.get()),
            ("tcp_closed", t.closed.get()),
            ("tcp_connect_failed", t.connect_failed.get()),
            ("tcp_rst_from_guest", t.rst_from_guest.get()),
            ("tcp_rst_to_guest", t.rst_to_guest.get()),
            ("tcp_retransmits", t.retransmits.get()),
            ("tcp_bytes_from_guest", t.bytes_from_guest.get()),
            ("tcp_bytes_to_guest", t.bytes_to_guest.get()),
            ("tcp_short_writes", t.short_writes.get()),
            ("tcp_drop_bad_checksum", t.drop_bad_checksum.get()),
            ("tcp_drop_truncated", t.drop_truncated.get()),
            ("tcp_drop_out_of_window", t.drop_out_of_window.get()),
            ("tcp_drop_table_full", t.drop_table_full.get()),
            ("tcp_drop_no_connection", t.drop_no_connection.get()),
            ("tcp_rx_stalls", t.rx_stalls.get()),
        ];
        nonzero_summary(&pairs)
    }
}

fn frame_src_mac(frame: &SgList<'_>) -> [u8; 6] {
    let mut mac = [0u8; 6];
    frame.read(6, &mut mac);
    mac
}

impl NetHandler for Switch {
    fn guest_frame(&mut self, frame: &SgList<'_>, rx: &mut dyn RxSink) {
        self.guest_frame_with(frame, TxOffload::default(), rx)
    }

    fn guest_frame_with(&mut self, frame: &SgList<'_>, tx: TxOffload, rx: &mut dyn RxSink) {
        let mut hdr = [0u8; HEADER_COPY];
        let n = frame.read(0, &mut hdr);
        if n < ETH_LEN {
            self.counters.drop_short.inc();
            return;
        }
        let eth = EthernetFrame::new_unchecked(&hdr[..n]);
        self.learn_mac(eth.src_addr().0);
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let mut arp = [0u8; 28];
                if frame.read(ETH_LEN, &mut arp) < arp.len() {
                    self.counters.drop_short.inc();
                    return;
                }
                self.handle_arp(&arp, rx);
            }
            EthernetProtocol::Ipv4 => self.handle_ipv4(frame, &hdr[..n], tx, rx),
            EthernetProtocol::Ipv6 => {
                self.counters.drop_ipv6.inc();
            }
            other => {
                self.counters.drop_unknown_ethertype.inc();
                warn_once!("dropped a guest frame with EtherType {other}");
            }
        }
    }

    fn poll_host(&mut self, rx: &mut dyn RxSink) {
        let ep = self.endpoints();
        self.nat.poll(rx, &ep);
    }

    fn tx_batch_done(&mut self, rx: &mut dyn RxSink) {
        let ep = self.endpoints();
        self.nat.flush(rx, &ep);
    }

    fn host_fd(&self) -> RawFd {
        self.nat.poll_fd()
    }

    fn link_changed(&mut self, up: bool) {
        if up {
            return;
        }
        tracing::info!("session counters: {}", self.summary());
        // The next frontend may be another guest: forget this one.
        self.nat.clear();
        self.guest_mac = self.pinned_mac;
    }
}
