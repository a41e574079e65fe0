//! The IPv4 control plane of the guest's link: ARP for the gateway and DHCPv4 framing. Pure:
//! packets in, frames out, no I/O — the same shape as [`crate::v6`].
//!
//! # Theory of operation
//!
//! The guest sees a two-host Ethernet segment where podwire is the gateway and owns every
//! address that is not the guest's.
//!
//! - **ARP** requests for any address but the guest's own get the gateway's MAC (proxy ARP, so
//!   the pod's other addresses reach the NAT). Probes (sender 0.0.0.0) and announcements are
//!   never answered, so the guest's duplicate address detection never sees a conflict. A
//!   request's sender address inside the subnet is learned as the guest's current address.
//! - **DHCPv4** datagrams (UDP to port 67, handed over by the switch with their UDP header)
//!   have their length and checksum checked here, their payload answered by
//!   `podwire_dhcp::Dhcpv4Server`, and the reply framed: from the gateway port 67 to port 68 at
//!   the guest's MAC, broadcast or unicast as the server says, full UDP checksum.
//!
//! Every way of not answering is a [`Link4Drop`] with a counter in [`Link4Counters`]; replies
//! are written whole into the caller's buffer and nothing allocates.

use std::net::Ipv4Addr;

use podwire_dhcp::{DhcpError, Dhcpv4Server, ReplyDest};
use podwire_frame::Checksum;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, ETHERNET_HEADER_LEN,
    IPV4_HEADER_LEN, UDP_HEADER_LEN,
};

/// UDP port DHCPv4 servers listen on (RFC 2131 4.1).
pub const DHCP_SERVER_PORT: u16 = 67;
/// UDP port DHCPv4 clients listen on.
pub const DHCP_CLIENT_PORT: u16 = 68;
/// Offset of a reply's DHCP payload in its frame.
const DHCP_PAYLOAD_OFFSET: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN;
/// Length of an ARP reply frame.
pub const ARP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + 28;
/// Largest DHCP message read or written (RFC 2131 asks for 576 at least).
pub const DHCP_MAX: usize = 1500;
/// An `out` buffer of this size holds every reply.
pub const OUT_BUFFER_LEN: usize = DHCP_PAYLOAD_OFFSET + DHCP_MAX;
/// Hop limit of DHCP replies.
const TTL: u8 = 64;

/// What podwire serves on the guest's IPv4 link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link4Config {
    /// podwire's MAC on the link.
    pub gateway_mac: [u8; 6],
    pub gateway_ip: Ipv4Addr,
    /// The address DHCP hands out: the guest's (until it uses another one of the subnet, if
    /// `allow_other_sources`).
    pub guest_ip: Ipv4Addr,
    pub prefix_len: u8,
    /// Anti-spoofing off: an ARP sender address in the subnet becomes the guest's address.
    /// Otherwise ARP from any address but the guest's (or 0.0.0.0, a probe) is refused.
    pub allow_other_sources: bool,
}

podwire_frame::counters! {
    /// What happened to the guest's ARP and DHCPv4 traffic.
    pub struct Link4Counters {
        /// ARP requests answered with the gateway's MAC.
        arp_replies: Count,
        /// DHCPv4 replies framed for the guest.
        dhcp_replies: Count,
    }
    /// Why [`Link4`] sent nothing back; each bumps the counter after `=>`.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum Link4Drop {
        /// ARP packets not answered: not a request, a probe or announcement, not Ethernet/IPv4,
        /// or malformed.
        #[error("ARP packet not answered")]
        ArpIgnored => arp_ignored,
        /// DHCPv4 datagrams whose UDP header does not fit the packet, or that are too long.
        #[error("UDP length does not fit the DHCP datagram")]
        DhcpBadUdp => dhcp_bad_udp,
        /// DHCPv4 datagrams with a bad UDP checksum.
        #[error("bad UDP checksum on a DHCP message")]
        DhcpBadChecksum => dhcp_bad_checksum,
        /// DHCPv4 messages the server rejected (malformed, or no room for the reply).
        #[error("DHCP: {0}")]
        Dhcp(DhcpError) => dhcp_errors,
        /// ARP from a sender address the guest was not given (anti-spoofing).
        #[error("ARP from {0}, not the guest's address")]
        SpoofedSender(Ipv4Addr) => arp_spoofed_sender,
    }
}

impl Link4Drop {
    /// Whether this happens on a healthy link (ARP the gateway does not answer) rather than
    /// pointing at a broken or hostile guest.
    pub fn is_routine(&self) -> bool {
        matches!(self, Link4Drop::ArpIgnored)
    }
}

/// The guest's IPv4 link: ARP answers, the guest's current address, DHCPv4 framing.
pub struct Link4 {
    cfg: Link4Config,
    guest_ip: Ipv4Addr,
    dhcp: Dhcpv4Server,
    pub counters: Link4Counters,
}

impl Link4 {
    /// `dhcp` is the DHCPv4 responder configured for the same addresses.
    pub fn new(cfg: Link4Config, dhcp: Dhcpv4Server) -> Link4 {
        Link4 {
            cfg,
            guest_ip: cfg.guest_ip,
            dhcp,
            counters: Link4Counters::default(),
        }
    }

    /// The address the guest uses now (the one handed out, or the last one its ARP used).
    pub fn guest_ip(&self) -> Ipv4Addr {
        self.guest_ip
    }

    pub fn gateway_ip(&self) -> Ipv4Addr {
        self.cfg.gateway_ip
    }

    pub fn dhcp(&self) -> &Dhcpv4Server {
        &self.dhcp
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.cfg.prefix_len))
            .unwrap_or(0)
    }

    /// Whether `ip` is in the guest's subnet.
    pub fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.cfg.guest_ip) & self.mask()
    }

    /// Broadcast, multicast, or the subnet's broadcast address.
    pub fn is_broadcast_or_multicast(&self, ip: Ipv4Addr) -> bool {
        ip.is_broadcast()
            || ip.is_multicast()
            || (self.in_subnet(ip) && u32::from(ip) | self.mask() == u32::MAX)
    }

    /// Answers one ARP packet (`arp`: the Ethernet payload); returns the reply frame's length
    /// in `out` (at least [`ARP_FRAME_LEN`] bytes).
    pub fn handle_arp(&mut self, arp: &[u8], out: &mut [u8]) -> Result<usize, Link4Drop> {
        let result = self.arp_reply(arp, out);
        match &result {
            Ok(_) => self.counters.arp_replies.inc(),
            Err(drop) => drop.counter(&self.counters).inc(),
        }
        result
    }

    fn arp_reply(&mut self, arp: &[u8], out: &mut [u8]) -> Result<usize, Link4Drop> {
        let packet = ArpPacket::new_checked(arp).map_err(|_| Link4Drop::ArpIgnored)?;
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr: sender_ip,
            target_protocol_addr: target_ip,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            return Err(Link4Drop::ArpIgnored);
        };
        if !sender_ip.is_unspecified() && sender_ip != self.guest_ip {
            if !self.cfg.allow_other_sources {
                return Err(Link4Drop::SpoofedSender(sender_ip));
            }
            if self.in_subnet(sender_ip) {
                self.guest_ip = sender_ip;
            }
        }
        let answer = operation == ArpOperation::Request
            && !sender_ip.is_unspecified()
            && target_ip != sender_ip
            && target_ip != self.guest_ip;
        let frame = out.get_mut(..ARP_FRAME_LEN);
        let (true, Some(frame)) = (answer, frame) else {
            return Err(Link4Drop::ArpIgnored);
        };
        let gateway = EthernetAddress(self.cfg.gateway_mac);
        EthernetRepr {
            src_addr: gateway,
            dst_addr: source_hardware_addr,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: gateway,
            source_protocol_addr: target_ip,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: sender_ip,
        }
        .emit(&mut ArpPacket::new_unchecked(
            &mut frame[ETHERNET_HEADER_LEN..],
        ));
        Ok(ARP_FRAME_LEN)
    }

    /// Answers one DHCPv4 datagram: `udp` is the UDP header and payload as the guest sent them
    /// from `src` to `dst`, `frame_mac` the Ethernet source (the server checks `chaddr`
    /// against it), `reply_mac` where the answer goes. `partial_csum`: the guest left the UDP
    /// checksum to the device, so it is not checked. Returns the reply frame's length in
    /// `out`, or `None` when the server has nothing to say (DECLINE, RELEASE, ignored).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_dhcp(
        &mut self,
        frame_mac: [u8; 6],
        reply_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        udp: &[u8],
        partial_csum: bool,
        out: &mut [u8],
    ) -> Result<Option<usize>, Link4Drop> {
        let result = self.dhcp_reply(frame_mac, reply_mac, (src, dst), udp, partial_csum, out);
        match &result {
            Ok(Some(_)) => self.counters.dhcp_replies.inc(),
            Ok(None) => {}
            Err(drop) => drop.counter(&self.counters).inc(),
        }
        result
    }

    fn dhcp_reply(
        &mut self,
        frame_mac: [u8; 6],
        reply_mac: [u8; 6],
        (src, dst): (Ipv4Addr, Ipv4Addr),
        udp: &[u8],
        partial_csum: bool,
        out: &mut [u8],
    ) -> Result<Option<usize>, Link4Drop> {
        let datagram = UdpPacket::new_checked(udp).map_err(|_| Link4Drop::DhcpBadUdp)?;
        let udp_len = usize::from(datagram.len());
        let datagram = udp
            .get(..udp_len)
            .filter(|_| udp_len >= UDP_HEADER_LEN)
            .ok_or(Link4Drop::DhcpBadUdp)?;
        let header = UdpPacket::new_unchecked(datagram);
        if header.checksum() != 0
            && !partial_csum
            && Checksum::of_l4(src.into(), dst.into(), IpProtocol::Udp.into(), datagram) != 0
        {
            return Err(Link4Drop::DhcpBadChecksum);
        }
        let payload = header.payload();
        let payload = payload.get(..DHCP_MAX).unwrap_or(payload);
        let Some(room) = out.get_mut(DHCP_PAYLOAD_OFFSET..) else {
            return Err(Link4Drop::Dhcp(DhcpError::OutputTooSmall {
                needed: DHCP_PAYLOAD_OFFSET,
                got: out.len(),
            }));
        };
        let room_len = room.len().min(DHCP_MAX);
        let Some(answer) = self
            .dhcp
            .handle(frame_mac, payload, &mut room[..room_len])
            .map_err(Link4Drop::Dhcp)?
        else {
            return Ok(None);
        };
        let to = match answer.dest {
            ReplyDest::Broadcast => Ipv4Addr::BROADCAST,
            ReplyDest::Unicast(ip) => ip,
        };
        let len = answer.len.min(room_len);
        self.frame_udp(out, reply_mac, to, len);
        Ok(Some(DHCP_PAYLOAD_OFFSET + len))
    }

    /// Writes Ethernet, IPv4 and UDP headers in front of the `len` bytes of DHCP payload
    /// already at [`DHCP_PAYLOAD_OFFSET`], checksum included.
    fn frame_udp(&self, out: &mut [u8], dst_mac: [u8; 6], to: Ipv4Addr, len: usize) {
        let udp_len = UDP_HEADER_LEN + len;
        EthernetRepr {
            src_addr: EthernetAddress(self.cfg.gateway_mac),
            dst_addr: EthernetAddress(dst_mac),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
        let ip = Ipv4Repr {
            src_addr: self.cfg.gateway_ip,
            dst_addr: to,
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: TTL,
        };
        let ip_bytes = &mut out[ETHERNET_HEADER_LEN..];
        ip.emit(
            &mut Ipv4Packet::new_unchecked(&mut ip_bytes[..]),
            &ChecksumCapabilities::default(),
        );
        let udp_bytes = &mut ip_bytes[IPV4_HEADER_LEN..IPV4_HEADER_LEN + udp_len];
        let mut packet = UdpPacket::new_unchecked(udp_bytes);
        packet.set_src_port(DHCP_SERVER_PORT);
        packet.set_dst_port(DHCP_CLIENT_PORT);
        packet.set_len(udp_len as u16);
        packet.set_checksum(0);
        packet.fill_checksum(&IpAddress::Ipv4(self.cfg.gateway_ip), &IpAddress::Ipv4(to));
    }

    /// Live migration: the address the guest used and the lease it held on the source.
    pub fn restore(&mut self, guest_ip: Ipv4Addr, lease: Option<podwire_dhcp::LeaseInfo>) {
        self.guest_ip = guest_ip;
        if let Some(lease) = lease {
            self.dhcp.restore_lease(lease);
        }
    }

    /// Forgets what this guest taught the link (a new frontend may be another guest).
    pub fn forget(&mut self) {
        self.guest_ip = self.cfg.guest_ip;
    }
}
