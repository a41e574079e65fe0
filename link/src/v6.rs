//! The IPv6 control plane of the guest's link: neighbour discovery, router advertisements,
//! DHCPv6 and pings to the gateway's link-local address. Pure: packets in, frames out, no I/O.
//!
//! # Theory of operation
//!
//! As with IPv4 and ARP, the guest sees a two-host Ethernet segment where podwire is the
//! router and owns every address that is not the guest's. [`Link6`] answers everything on that
//! segment that is about the link itself rather than about the world behind it; the switch
//! sends it the guest packets [`Link6::is_control`] claims and hands everything else to the NAT.
//!
//! - **Neighbour discovery** (RFC 4861). A neighbour solicitation for any address that is not
//!   the guest's gets a solicited advertisement (R, S and O set, target link-layer address =
//!   the gateway MAC), like proxy ARP: the gateway's link-local and global addresses, and also
//!   other addresses of the prefix the guest believes on-link (in `pod` mode the pod's real
//!   gateway, other hosts of the pod's /64), whose traffic then reaches the NAT. Link-local
//!   targets other than the gateway's are not answered: nothing behind podwire can be reached
//!   at a link-local address, and an unanswered solicitation gives the guest a prompt
//!   "unreachable" instead of a black hole.
//! - **The guest's addresses** are learned, never defended against: duplicate address detection
//!   (a solicitation from `::`) is never answered, and its target is learned as the guest's, as
//!   are the targets of the guest's own advertisements and the sources of its packets (the
//!   switch reports those of NAT-bound packets with [`Link6::learn_source`]). The configured
//!   DHCPv6 address is always the guest's. The table is small and fixed ([`MAX_GUEST_ADDRESSES`],
//!   most recently seen first) so a guest cycling through source addresses costs nothing but
//!   the oldest entries.
//! - **Router advertisements** (built by [`crate::ra::router_advertisement`]) make the gateway
//!   link-local address the default router and carry M and O (addresses and DNS from DHCPv6),
//!   the prefix (on-link; autonomous only for a /64, since SLAAC needs 64-bit interface
//!   identifiers), the MTU, RDNSS and DNSSL. A solicitation gets one unicast to its source, or
//!   to all-nodes when it comes from `::`. Solicitations are the guest's to repeat, so answers are
//!   bounded by a token bucket ([`RS_BURST`], one more per [`RS_REFILL`]) and multicast ones are
//!   kept [`MIN_DELAY_BETWEEN_RAS`] apart (RFC 4861 6.2.6): a multicast answer that would come too
//!   soon is left to [`Link6::periodic`], which sends it when the gap has passed. Unsolicited
//!   advertisements start as soon as the switch reports a guest, come
//!   [`MAX_INITIAL_RTR_ADVERT_INTERVAL`] apart for the first [`MAX_INITIAL_RTR_ADVERTISEMENTS`]
//!   (RFC 4861 6.2.4), then every [`RA_INTERVAL`].
//! - **DHCPv6** goes to `podwire_dhcp::Dhcpv6Server`, which hands out [`Link6Config::guest`];
//!   this module checks the UDP header and checksum and frames the reply: from the gateway
//!   link-local address port 547 to the request's source address and port, full checksum.
//! - **Echo requests to the gateway's link-local address** are answered here (same identifier,
//!   sequence and data), so `ping fe80::…%eth0` works. Echo requests to the gateway's global
//!   address are *not* control: the switch NATs them (to the pod's `::1` when gateway mapping is
//!   on), exactly as for IPv4.
//! - **Everything else on the link** — MLD reports, mDNS and other multicast, redirects or
//!   advertisements from the guest, other ICMPv6 informational messages — is dropped and counted.
//!
//! Every packet is the guest's: the fixed header, the extension header chain (at most
//! [`MAX_EXTENSION_HEADERS`], no fragments) and each message are bounds-checked before they are
//! read, ND messages are validated as RFC 4861 7.1 asks (hop limit 255, checksum, code 0,
//! length, options, multicast targets, the rules for `::` sources), and UDP and ICMPv6
//! checksums are verified unless the guest left them to the device (virtio CSUM). Every way of
//! not answering is a [`Link6Drop`] with a counter in [`Link6Counters`]; replies are written into
//! the caller's buffer, and nothing on the packet path allocates (the DHCPv6 server records a
//! new client's DUID, once per client).

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use podwire_dhcp::{
    duid_ll, Dhcpv6Config, Dhcpv6ConfigError, Dhcpv6Error, Dhcpv6Server, DHCPV6_SERVER_PORT,
    MAX_DHCPV6_REPLY,
};
use podwire_frame::CounterSet;

use crate::ra::{
    check_router_solicitation, icmpv6_checksum, router_advertisement, router_link_local, RaConfig,
    RaConfigError, RsError, ALL_NODES, ICMPV6_NEXT_HEADER, ND_HOP_LIMIT,
};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Message, Icmpv6Packet,
    Icmpv6Repr, IpProtocol, Ipv6ExtHeader, Ipv6Packet, Ipv6Repr,
    NdiscNeighborFlags as NeighborFlags, NdiscRepr, UdpPacket, ETHERNET_HEADER_LEN,
    IPV6_HEADER_LEN, UDP_HEADER_LEN,
};

/// Offset of the IPv6 payload in a reply frame.
const L4_OFFSET: usize = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
/// An `out` buffer of this size holds every reply to a packet of up to 1500 bytes (an echo
/// reply is as long as its request; DHCPv6 replies and advertisements are shorter).
pub const OUT_BUFFER_LEN: usize = ETHERNET_HEADER_LEN + 1500;
/// IPv6 minimum link MTU (RFC 8200 5).
const IPV6_MIN_MTU: usize = 1280;

/// Addresses remembered as the guest's: a link-local, a DHCPv6 and a SLAAC address, temporary
/// addresses, and room to spare.
pub const MAX_GUEST_ADDRESSES: usize = 8;
/// Extension headers skipped before giving up: real packets carry at most a hop-by-hop header
/// (MLD's router alert); the bound keeps a guest's chain from costing more.
pub const MAX_EXTENSION_HEADERS: usize = 4;

/// RFC 4861 10: at most one multicast advertisement per 3 s.
pub const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);
/// RFC 4861 10: the first advertisements come at most 16 s apart...
pub const MAX_INITIAL_RTR_ADVERT_INTERVAL: Duration = Duration::from_secs(16);
/// ...for the first three.
pub const MAX_INITIAL_RTR_ADVERTISEMENTS: u8 = 3;
/// Unsolicited advertisements after the initial ones: `RaConfig`'s MaxRtrAdvInterval. RDNSS and
/// DNSSL live three times as long, so one lost advertisement costs nothing.
pub const RA_INTERVAL: Duration = Duration::from_secs(600);
/// Solicited advertisements that may go out back to back...
pub const RS_BURST: u32 = 3;
/// ...and how often one more is allowed after that.
pub const RS_REFILL: Duration = Duration::from_secs(1);

/// Router lifetime advertised: RFC 4861's default (3 × MaxRtrAdvInterval).
const ROUTER_LIFETIME_SECS: u16 = 1800;
/// Hop limit of the replies that are not neighbour discovery (echo, DHCPv6).
const HOP_LIMIT: u8 = 64;

/// IPv6 next header values (IANA).
mod proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const DEST_OPTS: u8 = 60;
}

/// ICMPv6 types (RFC 4443, 2710, 3810, 4861).
mod icmp {
    pub const ECHO_REQUEST: u8 = 128;
    /// The first informational type that is not an echo: everything from here on is about
    /// the link (MLD, ND, router renumbering, node information, ...), never for the NAT.
    pub const FIRST_LINK_TYPE: u8 = 130;
    pub const MLD_QUERY: u8 = 130;
    pub const MLD_REPORT: u8 = 131;
    pub const MLD_DONE: u8 = 132;
    pub const MLDV2_REPORT: u8 = 143;
    pub const RS: u8 = 133;
    pub const RA: u8 = 134;
    pub const NS: u8 = 135;
    pub const NA: u8 = 136;
    pub const REDIRECT: u8 = 137;
}

/// ND option types (RFC 4861 4.6).
const OPT_SOURCE_LL: u8 = 1;
/// Type, code, checksum, reserved/flags, target.
const NS_NA_LEN: usize = 24;
/// Type, code, checksum, identifier, sequence.
const ECHO_LEN: usize = 8;
/// NA with one target link-layer address option.
const NA_REPLY_LEN: usize = NS_NA_LEN + 8;

/// 33:33 + the last 32 bits of ff02::1 (RFC 2464 7).
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// What podwire serves on the guest's IPv6 link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link6Config {
    /// podwire's MAC on the link; its modified EUI-64 link-local address is the router.
    pub gateway_mac: [u8; 6],
    /// The on-link prefix advertised (e.g. fd10:0:2::/120, or the pod's /64).
    pub prefix: Ipv6Addr,
    pub prefix_len: u8,
    /// The address DHCPv6 hands out; always considered the guest's.
    pub guest: Ipv6Addr,
    /// The gateway's global address: solicitations for it are answered like those for the
    /// link-local one, and the guest may never claim it.
    pub gateway: Ipv6Addr,
    /// RDNSS and DHCPv6 option 23.
    pub dns: Vec<Ipv6Addr>,
    /// DNSSL and DHCPv6 option 24.
    pub search: Vec<String>,
    /// Link MTU: the advertised MTU option and the bound on advertisement size.
    pub mtu: u16,
    /// DHCPv6 preferred and valid lifetime of the address, in seconds.
    pub lease_secs: u32,
}

/// A configuration [`Link6`] can only partly honour; see [`Link6Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Link6ConfigError {
    #[error("router advertisement: {0}")]
    Ra(#[from] RaConfigError),
    #[error("DHCPv6: {0}")]
    Dhcp(#[from] Dhcpv6ConfigError),
    #[error("MTU {0} is below the 1280 bytes IPv6 needs")]
    Mtu(u16),
}

impl Link6Config {
    fn ra_config(&self) -> RaConfig {
        let mut ra = RaConfig::new(self.gateway_mac, self.prefix, self.prefix_len);
        // Addresses and DNS come from DHCPv6; RDNSS and DNSSL are also in the advertisement
        // for guests without a DHCPv6 client.
        ra.managed = true;
        ra.other = true;
        ra.on_link = true;
        ra.autonomous = self.prefix_len == 64;
        ra.mtu = Some(u32::from(self.mtu));
        ra.dns = self.dns.clone();
        ra.search = self.search.clone();
        ra.router_lifetime_secs = ROUTER_LIFETIME_SECS;
        ra.max_interval_secs = RA_INTERVAL.as_secs() as u32;
        ra
    }

    fn dhcp_config(&self) -> Dhcpv6Config {
        Dhcpv6Config {
            server_duid: duid_ll(self.gateway_mac),
            guest_addr: self.guest,
            prefix_len: self.prefix_len,
            dns: self.dns.clone(),
            search: self.search.clone(),
            preferred_lifetime: self.lease_secs,
            valid_lifetime: self.lease_secs,
        }
    }

    /// Reports the first thing [`Link6`] would leave out or get wrong. [`Link6::new`] takes any
    /// configuration and leaves out what cannot be encoded.
    pub fn validate(&self) -> Result<(), Link6ConfigError> {
        if usize::from(self.mtu) < IPV6_MIN_MTU {
            return Err(Link6ConfigError::Mtu(self.mtu));
        }
        self.ra_config().validate()?;
        self.dhcp_config().validate()?;
        Ok(())
    }
}

podwire_frame::counters! {
    /// What happened to the guest's IPv6 control traffic. `received` counts every
    /// [`Link6::handle`] call; each ends in one reply counter, one of `dad_probes`,
    /// `advertisements_seen`, `rs_deferred` or `dhcp_ignored`, or one [`Link6Drop`] counter.
    pub struct Link6Counters {
        /// Calls to handle: IPv6 control packets from the guest.
        received: Count,
        /// Neighbour advertisements sent (answers to solicitations).
        na_sent: Count,
        /// Router advertisements sent in answer to a solicitation.
        ra_solicited: Count,
        /// Periodic (unsolicited) router advertisements sent.
        ra_unsolicited: Count,
        /// Unsolicited advertisements that did not fit the caller's buffer.
        ra_unsolicited_failed: Count,
        /// Solicitations from `::` answered by the next periodic advertisement because a
        /// multicast one went out less than 3 s before.
        rs_deferred: Count,
        /// DHCPv6 replies sent.
        dhcp_replies: Count,
        /// Well-formed DHCPv6 messages the server chose not to answer (see its counters).
        dhcp_ignored: Count,
        /// Echo replies sent for the gateway's addresses.
        echo_replies: Count,
        /// Duplicate address detection probes seen (never answered; the target is learned).
        dad_probes: Count,
        /// Neighbour advertisements from the guest (never answered; the target is learned).
        advertisements_seen: Count,
        /// Addresses added to the guest's table.
        addresses_learned: Count,
        /// Addresses pushed out of the guest's table by newer ones.
        addresses_evicted: Count,
    }
    /// Why [`Link6::handle`] sent nothing back; each bumps the counter after `=>`.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum Link6Drop {
        /// Packets shorter than their headers or their payload length.
        #[error("packet shorter than its headers or its payload length")]
        Truncated => drop_truncated,
        /// Packets whose IPv6 header is not valid.
        #[error("not an IPv6 header")]
        BadHeader => drop_bad_header,
        /// Packets from a source address not usable here.
        #[error("source address {0} is not usable here")]
        BadSource(Ipv6Addr) => drop_bad_source,
        /// Frames whose source is not a unicast MAC.
        #[error("frame source {0:02x?} is not a unicast MAC")]
        BadGuestMac([u8; 6]) => drop_bad_guest_mac,
        /// Fragments, misplaced hop-by-hop headers or too many extension headers.
        #[error("fragment, misplaced hop-by-hop header or too many extension headers")]
        ExtensionHeaders => drop_extension_headers,
        /// Neighbour discovery with a hop limit other than 255.
        #[error("neighbour discovery with hop limit {0}, not 255")]
        BadHopLimit(u8) => drop_bad_hop_limit,
        /// Bad ICMPv6 or UDP checksums.
        #[error("bad ICMPv6 or UDP checksum")]
        BadChecksum => drop_bad_checksum,
        /// Malformed neighbour discovery messages.
        #[error("malformed neighbour discovery message")]
        BadNd => drop_bad_nd,
        /// Malformed echo requests.
        #[error("malformed echo request")]
        BadEcho => drop_bad_echo,
        /// UDP lengths that do not fit the packet.
        #[error("UDP length does not fit the packet")]
        BadUdp => drop_bad_udp,
        /// Solicitations for the guest's own address.
        #[error("solicitation for the guest's own address {0}")]
        NsForGuest(Ipv6Addr) => drop_ns_for_guest,
        /// Solicitations for a link-local address nobody has.
        #[error("solicitation for {0}, a link-local address nobody has")]
        NsForUnknownLinkLocal(Ipv6Addr) => drop_ns_unknown_link_local,
        /// Guest messages claiming the gateway's address.
        #[error("the guest claims the gateway's address {0}")]
        ClaimsGateway(Ipv6Addr) => drop_claims_gateway,
        /// Router advertisements or redirects from the guest.
        #[error("router advertisement or redirect from the guest")]
        RouterMessage => drop_router_message,
        /// MLD messages (ignored).
        #[error("MLD message")]
        Mld => mld_ignored,
        /// Multicast podwire does not serve (ignored).
        #[error("multicast podwire does not serve")]
        Multicast => multicast_ignored,
        /// ICMPv6 types that are not served.
        #[error("ICMPv6 type {0} is not served")]
        IcmpIgnored(u8) => drop_icmp_other,
        /// Packets not addressed to anything podwire serves.
        #[error("not addressed to anything podwire serves")]
        NotForUs => drop_not_for_us,
        /// Router solicitations over the rate limit.
        #[error("router solicitation over the rate limit")]
        RsRateLimited => drop_rs_rate_limited,
        /// Malformed DHCPv6 messages.
        #[error("DHCPv6: {0}")]
        Dhcp(Dhcpv6Error) => drop_dhcp_malformed,
        /// Replies that did not fit the caller's buffer.
        #[error("reply does not fit the output buffer")]
        OutputTooSmall => drop_output_too_small,
    }
}

impl Link6Drop {
    /// Whether this happens on a healthy link (multicast chatter, rate limiting, lookups of
    /// addresses podwire does not answer for) rather than pointing at a broken or hostile
    /// guest, or a caller bug. The switch can log the others once.
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            Link6Drop::NsForGuest(_)
                | Link6Drop::NsForUnknownLinkLocal(_)
                | Link6Drop::Mld
                | Link6Drop::Multicast
                | Link6Drop::IcmpIgnored(_)
                | Link6Drop::NotForUs
                | Link6Drop::RsRateLimited
        )
    }
}

/// The guest's addresses, most recently seen first, in fixed storage.
#[derive(Debug, Clone)]
struct AddressTable {
    addrs: [Ipv6Addr; MAX_GUEST_ADDRESSES],
    len: usize,
}

impl AddressTable {
    const fn new() -> Self {
        Self {
            addrs: [Ipv6Addr::UNSPECIFIED; MAX_GUEST_ADDRESSES],
            len: 0,
        }
    }

    fn as_slice(&self) -> &[Ipv6Addr] {
        self.addrs.get(..self.len).unwrap_or(&[])
    }

    fn contains(&self, addr: Ipv6Addr) -> bool {
        self.as_slice().contains(&addr)
    }

    /// Moves `addr` to the front, inserting it if new. Returns (inserted, evicted).
    fn touch(&mut self, addr: Ipv6Addr) -> (bool, bool) {
        match self.as_slice().iter().position(|&a| a == addr) {
            // The common case, every NAT-bound packet from the guest's usual address.
            Some(0) => (false, false),
            Some(i) => {
                self.addrs[..=i].rotate_right(1);
                (false, false)
            }
            None => {
                let evicted = self.len == MAX_GUEST_ADDRESSES;
                self.len = (self.len + 1).min(MAX_GUEST_ADDRESSES);
                self.addrs[..self.len].rotate_right(1);
                self.addrs[0] = addr;
                (true, evicted)
            }
        }
    }
}

/// Admits a burst of [`RS_BURST`], then one per [`RS_REFILL`].
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: u32,
    /// When `tokens` was last brought up to date; `None` means full.
    stamp: Option<Instant>,
}

impl TokenBucket {
    const FULL: Self = Self {
        tokens: RS_BURST,
        stamp: None,
    };

    fn take(&mut self, now: Instant) -> bool {
        if let Some(stamp) = self.stamp {
            let earned = now.saturating_duration_since(stamp).as_nanos() / RS_REFILL.as_nanos();
            let tokens = u128::from(self.tokens) + earned;
            if tokens >= u128::from(RS_BURST) {
                self.tokens = RS_BURST;
                self.stamp = None;
            } else {
                // Below RS_BURST, so both fit in u32; the remainder of the interval is kept.
                self.tokens = tokens as u32;
                self.stamp = Some(stamp + RS_REFILL * earned as u32);
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        self.stamp.get_or_insert(now);
        true
    }
}

/// The IPv6 control plane of the guest's link. See the module documentation.
pub struct Link6 {
    cfg: Link6Config,
    gateway_ll: Ipv6Addr,
    ra: RaConfig,
    dhcp: Dhcpv6Server,
    guest_addrs: AddressTable,
    rs_bucket: TokenBucket,
    /// When the next unsolicited advertisement is due; `None` until a guest is reported.
    next_ra: Option<Instant>,
    last_multicast_ra: Option<Instant>,
    /// Unsolicited advertisements still to send at the initial, shorter interval.
    initial_left: u8,
    pub counters: Link6Counters,
}

/// The fixed IPv6 header fields the control plane uses.
#[derive(Debug, Clone, Copy)]
struct Header {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    /// Upper-layer protocol, after the extension headers.
    proto: u8,
    /// Offset of the upper-layer message in the packet.
    l4_offset: usize,
    /// End of the IPv6 payload in the packet (Ethernet padding excluded).
    end: usize,
}

impl Header {
    /// Parses the fixed header and walks the extension headers. `strict` requires the whole
    /// payload to be present; otherwise it is cut to what `packet` holds, for decisions taken
    /// from the first bytes only.
    fn parse(packet: &[u8], strict: bool) -> Result<Header, Link6Drop> {
        let fixed = packet.get(..IPV6_HEADER_LEN).ok_or(Link6Drop::Truncated)?;
        let ip = Ipv6Packet::new_unchecked(fixed);
        if ip.version() != 6 {
            return Err(Link6Drop::BadHeader);
        }
        let claimed = IPV6_HEADER_LEN + usize::from(ip.payload_len());
        if strict && claimed > packet.len() {
            return Err(Link6Drop::Truncated);
        }
        let end = claimed.min(packet.len());
        let (proto, l4_offset) = upper_layer(&packet[..end], u8::from(ip.next_header()))?;
        Ok(Header {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            hop_limit: ip.hop_limit(),
            proto,
            l4_offset,
            end,
        })
    }
}

/// Skips hop-by-hop, routing and destination options headers (RFC 8200 4); returns the
/// upper-layer protocol and its offset. A fragment header ends the walk with an error: no
/// control message is legitimately fragmented, and reassembly is not worth its state here.
fn upper_layer(packet: &[u8], first: u8) -> Result<(u8, usize), Link6Drop> {
    let mut next = first;
    let mut offset = IPV6_HEADER_LEN;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        match next {
            proto::HOP_BY_HOP | proto::ROUTING | proto::DEST_OPTS => {
                // RFC 8200 4.1: hop-by-hop options only directly after the fixed header.
                if next == proto::HOP_BY_HOP && offset != IPV6_HEADER_LEN {
                    return Err(Link6Drop::ExtensionHeaders);
                }
                // The view checks that the whole header is inside the packet.
                let ext = packet
                    .get(offset..)
                    .and_then(|rest| Ipv6ExtHeader::new_checked(rest).ok())
                    .ok_or(Link6Drop::Truncated)?;
                // Hdr Ext Len counts 8-byte units after the first 8.
                offset += (usize::from(ext.header_len()) + 1) * 8;
                next = u8::from(ext.next_header());
            }
            proto::FRAGMENT => return Err(Link6Drop::ExtensionHeaders),
            upper => return Ok((upper, offset)),
        }
    }
    Err(Link6Drop::ExtensionHeaders)
}

fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// ff02::1:ffXX:XXXX (RFC 4291 2.7.1).
fn is_solicited_node(addr: Ipv6Addr) -> bool {
    let o = addr.octets();
    o[..13] == [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]
}

fn is_unicast_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

/// The checksum of an upper-layer message over the IPv6 pseudo-header (RFC 8200 8.1): 0 for a
/// valid received message; to fill one in, compute with the field zeroed and store the result.
fn l4_checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, message: &[u8]) -> u16 {
    podwire_frame::Checksum::of_l4(src.into(), dst.into(), next_header, message)
}

/// Walks ND options (RFC 4861 4.6): each non-empty and inside the message. Returns whether a
/// source link-layer address option is present.
fn nd_options(mut options: &[u8]) -> Result<bool, Link6Drop> {
    let mut source_ll = false;
    // Each option is at least 8 bytes, so this ends within len / 8 steps.
    while !options.is_empty() {
        let units = match *options {
            [kind, units, ..] if units != 0 => {
                source_ll |= kind == OPT_SOURCE_LL;
                usize::from(units)
            }
            _ => return Err(Link6Drop::BadNd),
        };
        options = options.get(units * 8..).ok_or(Link6Drop::BadNd)?;
    }
    Ok(source_ll)
}

/// Writes the Ethernet and IPv6 headers of a reply in front of its `payload_len` bytes.
#[allow(clippy::too_many_arguments)]
fn write_headers(
    out: &mut [u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: IpProtocol,
    hop_limit: u8,
    payload_len: usize,
) {
    let Some(headers) = out.get_mut(..L4_OFFSET) else {
        return;
    };
    EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv6,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut headers[..]));
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header,
        payload_len,
        hop_limit,
    }
    .emit(&mut Ipv6Packet::new_unchecked(
        &mut headers[ETHERNET_HEADER_LEN..],
    ));
}

impl Link6 {
    /// Takes any configuration; what cannot be encoded is left out of advertisements and
    /// DHCPv6 replies (see [`Link6Config::validate`]).
    pub fn new(cfg: Link6Config) -> Link6 {
        Link6 {
            gateway_ll: router_link_local(cfg.gateway_mac),
            ra: cfg.ra_config(),
            dhcp: Dhcpv6Server::new(cfg.dhcp_config()),
            guest_addrs: AddressTable::new(),
            rs_bucket: TokenBucket::FULL,
            next_ra: None,
            last_multicast_ra: None,
            initial_left: MAX_INITIAL_RTR_ADVERTISEMENTS,
            counters: Link6Counters::default(),
            cfg,
        }
    }

    /// The router's address: fe80:: with the modified EUI-64 of the gateway MAC.
    pub fn gateway_link_local(&self) -> Ipv6Addr {
        self.gateway_ll
    }

    /// Whether a guest IPv6 packet (`packet` from the IPv6 header on; the fixed header, any
    /// extension headers and the first 4 bytes of the upper layer suffice) is for
    /// [`Link6::handle`] rather than the NAT:
    ///
    /// - anything to a multicast destination (ND, MLD, DHCPv6, mDNS...: nothing multicast is
    ///   NATed);
    /// - anything to a link-local destination (echo to the gateway's link-local address is
    ///   answered; nothing link-local can be reached through the NAT);
    /// - ICMPv6 informational messages other than echo (type 130 and up: MLD, ND, router
    ///   renumbering, node information), whatever the destination, so unicast ND (NUD probes
    ///   to the gateway's global address) is answered;
    /// - UDP to port 547 (DHCPv6), whatever the destination.
    ///
    /// Everything else, including echo requests to the gateway's global address, ICMPv6 errors
    /// and anything that is not a parseable IPv6 header, is the NAT's (which validates it).
    pub fn is_control(packet: &[u8]) -> bool {
        let Some(fixed) = packet.get(..IPV6_HEADER_LEN) else {
            return false;
        };
        let ip = Ipv6Packet::new_unchecked(fixed);
        if ip.version() != 6 {
            return false;
        }
        let dst = ip.dst_addr();
        if dst.is_multicast() || is_link_local(dst) {
            return true;
        }
        let Ok(h) = Header::parse(packet, false) else {
            return false;
        };
        let l4 = packet.get(h.l4_offset..h.end).unwrap_or(&[]);
        match (h.proto, l4) {
            (ICMPV6_NEXT_HEADER, [kind, ..]) => *kind >= icmp::FIRST_LINK_TYPE,
            (proto::UDP, [_, _, hi, lo, ..]) => {
                u16::from_be_bytes([*hi, *lo]) == DHCPV6_SERVER_PORT
            }
            _ => false,
        }
    }

    /// Handles one guest IPv6 packet that [`Link6::is_control`] claimed.
    ///
    /// `packet` is the whole IPv6 packet (header onward) copied out of guest memory; one whose
    /// payload length runs past it is dropped as [`Link6Drop::Truncated`]. `guest_mac` is the
    /// frame's Ethernet source, where unicast replies go. `partial_csum` says the guest left the
    /// L4 checksum to the device (virtio CSUM), so it is not verified. At most one reply frame,
    /// Ethernet header included, is written to `out` ([`OUT_BUFFER_LEN`] always suffices) and its
    /// length returned. `Ok(None)` means the packet was taken in without a reply (duplicate
    /// address detection, the guest's advertisements, a deferred solicitation, a DHCPv6 message
    /// the server ignores); every `Err` has been counted.
    pub fn handle(
        &mut self,
        guest_mac: [u8; 6],
        packet: &[u8],
        partial_csum: bool,
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<usize>, Link6Drop> {
        self.counters.received.inc();
        let result = self.dispatch(guest_mac, packet, partial_csum, now, out);
        if let Err(drop) = &result {
            drop.counter(&self.counters).inc();
        }
        result
    }

    fn dispatch(
        &mut self,
        guest_mac: [u8; 6],
        packet: &[u8],
        partial_csum: bool,
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<usize>, Link6Drop> {
        let h = Header::parse(packet, true)?;
        if h.src.is_multicast() {
            return Err(Link6Drop::BadSource(h.src));
        }
        if !is_unicast_mac(guest_mac) {
            return Err(Link6Drop::BadGuestMac(guest_mac));
        }
        let l4 = packet.get(h.l4_offset..h.end).ok_or(Link6Drop::Truncated)?;
        match h.proto {
            ICMPV6_NEXT_HEADER => self.icmpv6(guest_mac, &h, l4, partial_csum, now, out),
            proto::UDP => self.udp(guest_mac, &h, l4, partial_csum, out),
            _ if h.dst.is_multicast() => Err(Link6Drop::Multicast),
            _ => Err(Link6Drop::NotForUs),
        }
    }

    fn icmpv6(
        &mut self,
        guest_mac: [u8; 6],
        h: &Header,
        msg: &[u8],
        partial_csum: bool,
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<usize>, Link6Drop> {
        let Some(&[kind, _, _, _]) = msg.get(..4) else {
            return Err(Link6Drop::Truncated);
        };
        // Membership reports are expected chatter and never answered: not worth a checksum.
        if matches!(
            kind,
            icmp::MLD_QUERY | icmp::MLD_REPORT | icmp::MLD_DONE | icmp::MLDV2_REPORT
        ) {
            return Err(Link6Drop::Mld);
        }
        if !partial_csum && icmpv6_checksum(h.src, h.dst, msg) != 0 {
            return Err(Link6Drop::BadChecksum);
        }
        match kind {
            icmp::NS => self.neighbor_solicitation(guest_mac, h, msg, out),
            icmp::NA => self.neighbor_advertisement(h, msg),
            icmp::RS => self.router_solicitation(guest_mac, h, msg, now, out),
            icmp::RA | icmp::REDIRECT => Err(Link6Drop::RouterMessage),
            icmp::ECHO_REQUEST => self.echo(guest_mac, h, msg, out),
            _ if h.dst.is_multicast() => Err(Link6Drop::Multicast),
            other => Err(Link6Drop::IcmpIgnored(other)),
        }
    }

    /// The checks every ND message gets (RFC 4861 7.1): hop limit 255 (so it cannot come from
    /// off-link), code 0, the fixed part present, well-formed options. Returns whether a source
    /// link-layer address option is present.
    fn nd_common(h: &Header, msg: &[u8], fixed_len: usize) -> Result<bool, Link6Drop> {
        if h.hop_limit != ND_HOP_LIMIT {
            return Err(Link6Drop::BadHopLimit(h.hop_limit));
        }
        if msg.get(1) != Some(&0) {
            return Err(Link6Drop::BadNd);
        }
        let options = msg.get(fixed_len..).ok_or(Link6Drop::BadNd)?;
        nd_options(options)
    }

    fn is_gateway(&self, addr: Ipv6Addr) -> bool {
        addr == self.gateway_ll || addr == self.cfg.gateway
    }

    fn is_guest(&self, addr: Ipv6Addr) -> bool {
        addr == self.cfg.guest || self.guest_addrs.contains(addr)
    }

    fn learn(&mut self, addr: Ipv6Addr) -> bool {
        if addr.is_unspecified()
            || addr.is_multicast()
            || addr.is_loopback()
            || self.is_gateway(addr)
        {
            return false;
        }
        let (inserted, evicted) = self.guest_addrs.touch(addr);
        if inserted {
            self.counters.addresses_learned.inc();
        }
        if evicted {
            self.counters.addresses_evicted.inc();
        }
        inserted
    }

    fn neighbor_solicitation(
        &mut self,
        guest_mac: [u8; 6],
        h: &Header,
        msg: &[u8],
        out: &mut [u8],
    ) -> Result<Option<usize>, Link6Drop> {
        let source_ll = Self::nd_common(h, msg, NS_NA_LEN)?;
        // nd_common checked the fixed part is there.
        let target = Icmpv6Packet::new_unchecked(msg).target_addr();
        if target.is_multicast() || target.is_unspecified() || target.is_loopback() {
            return Err(Link6Drop::BadNd);
        }
        if h.src.is_unspecified() {
            // Duplicate address detection (RFC 4862 5.4.2): the guest is about to use
            // `target`. It must go to the solicited-node group and carry no link-layer
            // address (RFC 4861 7.1.1). Never answered: on this link the address is the
            // guest's whatever it is.
            if !is_solicited_node(h.dst) || source_ll {
                return Err(Link6Drop::BadNd);
            }
            if self.is_gateway(target) {
                return Err(Link6Drop::ClaimsGateway(target));
            }
            self.learn(target);
            self.counters.dad_probes.inc();
            return Ok(None);
        }
        self.learn(h.src);
        if self.is_guest(target) {
            return Err(Link6Drop::NsForGuest(target));
        }
        if is_link_local(target) && target != self.gateway_ll {
            return Err(Link6Drop::NsForUnknownLinkLocal(target));
        }

        let frame = out
            .get_mut(..L4_OFFSET + NA_REPLY_LEN)
            .ok_or(Link6Drop::OutputTooSmall)?;
        let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags: NeighborFlags::ROUTER | NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
            target_addr: target,
            lladdr: Some(EthernetAddress(self.cfg.gateway_mac).into()),
        });
        // Sent from the target itself, as its owner would; the guest checks only the target.
        na.emit(
            &target,
            &h.src,
            &mut Icmpv6Packet::new_unchecked(&mut frame[L4_OFFSET..]),
            &ChecksumCapabilities::default(),
        );
        write_headers(
            frame,
            guest_mac,
            self.cfg.gateway_mac,
            target,
            h.src,
            IpProtocol::Icmpv6,
            ND_HOP_LIMIT,
            NA_REPLY_LEN,
        );
        self.counters.na_sent.inc();
        Ok(Some(L4_OFFSET + NA_REPLY_LEN))
    }

    fn neighbor_advertisement(
        &mut self,
        h: &Header,
        msg: &[u8],
    ) -> Result<Option<usize>, Link6Drop> {
        Self::nd_common(h, msg, NS_NA_LEN)?;
        // nd_common checked the fixed part is there.
        let na = Icmpv6Packet::new_unchecked(msg);
        let target = na.target_addr();
        let solicited = na.neighbor_flags().contains(NeighborFlags::SOLICITED);
        // RFC 4861 7.1.2: no multicast target, and no S flag when sent to a group.
        if target.is_multicast() || (h.dst.is_multicast() && solicited) {
            return Err(Link6Drop::BadNd);
        }
        if self.is_gateway(target) {
            return Err(Link6Drop::ClaimsGateway(target));
        }
        self.learn(h.src);
        self.learn(target);
        self.counters.advertisements_seen.inc();
        Ok(None)
    }

    fn router_solicitation(
        &mut self,
        guest_mac: [u8; 6],
        h: &Header,
        msg: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<usize>, Link6Drop> {
        // One validator for solicitations (RFC 4861 6.1.1), shared with anyone parsing them;
        // the checksum was verified with every ICMPv6 message above.
        check_router_solicitation(msg, h.src, h.hop_limit).map_err(|e| match e {
            RsError::HopLimit(hops) => Link6Drop::BadHopLimit(hops),
            _ => Link6Drop::BadNd,
        })?;
        self.learn(h.src);
        if h.src.is_unspecified() {
            // The answer goes to all nodes, so RFC 4861 6.2.6's spacing applies: too soon
            // after the last one, the next periodic advertisement is brought forward instead.
            if let Some(earliest) = self
                .last_multicast_ra
                .map(|last| last + MIN_DELAY_BETWEEN_RAS)
                .filter(|&earliest| now < earliest)
            {
                self.next_ra = Some(self.next_ra.map_or(earliest, |due| due.min(earliest)));
                self.counters.rs_deferred.inc();
                return Ok(None);
            }
        }
        if !self.rs_bucket.take(now) {
            return Err(Link6Drop::RsRateLimited);
        }
        let len = if h.src.is_unspecified() {
            let len = self.write_ra(ALL_NODES, ALL_NODES_MAC, out)?;
            self.sent_multicast_ra(now);
            len
        } else {
            self.write_ra(h.src, guest_mac, out)?
        };
        self.counters.ra_solicited.inc();
        Ok(Some(len))
    }

    /// Writes an advertisement from the gateway's link-local address, no larger than the link
    /// MTU (the RDNSS and DNSSL options are left out if they do not fit).
    fn write_ra(
        &self,
        dst: Ipv6Addr,
        dst_mac: [u8; 6],
        out: &mut [u8],
    ) -> Result<usize, Link6Drop> {
        let limit = usize::from(self.cfg.mtu).max(IPV6_MIN_MTU) - IPV6_HEADER_LEN;
        let body = out.get_mut(L4_OFFSET..).ok_or(Link6Drop::OutputTooSmall)?;
        let body_len = body.len().min(limit);
        let len = router_advertisement(&self.ra, self.gateway_ll, dst, &mut body[..body_len])
            .map_err(|_| Link6Drop::OutputTooSmall)?;
        write_headers(
            out,
            dst_mac,
            self.cfg.gateway_mac,
            self.gateway_ll,
            dst,
            IpProtocol::Icmpv6,
            ND_HOP_LIMIT,
            len,
        );
        Ok(L4_OFFSET + len)
    }

    /// Restarts the unsolicited timer after any advertisement to all nodes (RFC 4861 6.2.4).
    fn sent_multicast_ra(&mut self, now: Instant) {
        self.last_multicast_ra = Some(now);
        let interval = if self.initial_left > 1 {
            MAX_INITIAL_RTR_ADVERT_INTERVAL
        } else {
            RA_INTERVAL
        };
        self.initial_left = self.initial_left.saturating_sub(1);
        self.next_ra = Some(now + interval);
    }

    fn echo(
        &mut self,
        guest_mac: [u8; 6],
        h: &Header,
        msg: &[u8],
        out: &mut [u8],
    ) -> Result<Option<usize>, Link6Drop> {
        if h.dst != self.gateway_ll {
            // Multicast pings go unanswered; unicast ones to the gateway's global address are
            // the NAT's and never get here.
            return Err(if h.dst.is_multicast() {
                Link6Drop::Multicast
            } else {
                Link6Drop::NotForUs
            });
        }
        if msg.len() < ECHO_LEN || msg.get(1) != Some(&0) {
            return Err(Link6Drop::BadEcho);
        }
        if h.src.is_unspecified() {
            return Err(Link6Drop::BadSource(h.src));
        }
        self.learn(h.src);
        let frame = out
            .get_mut(..L4_OFFSET + msg.len())
            .ok_or(Link6Drop::OutputTooSmall)?;
        let reply = &mut frame[L4_OFFSET..];
        reply.copy_from_slice(msg);
        // Same identifier, sequence and data: only the type and the checksum change.
        let mut reply = Icmpv6Packet::new_unchecked(reply);
        reply.set_msg_type(Icmpv6Message::EchoReply);
        reply.fill_checksum(&self.gateway_ll, &h.src);
        write_headers(
            frame,
            guest_mac,
            self.cfg.gateway_mac,
            self.gateway_ll,
            h.src,
            IpProtocol::Icmpv6,
            HOP_LIMIT,
            msg.len(),
        );
        self.counters.echo_replies.inc();
        Ok(Some(L4_OFFSET + msg.len()))
    }

    fn udp(
        &mut self,
        guest_mac: [u8; 6],
        h: &Header,
        l4: &[u8],
        partial_csum: bool,
        out: &mut [u8],
    ) -> Result<Option<usize>, Link6Drop> {
        if l4.len() < UDP_HEADER_LEN {
            return Err(Link6Drop::Truncated);
        }
        // The fixed header is there; its length field is checked below.
        let request = UdpPacket::new_unchecked(l4);
        if request.dst_port() != DHCPV6_SERVER_PORT {
            return Err(if h.dst.is_multicast() {
                Link6Drop::Multicast
            } else {
                Link6Drop::NotForUs
            });
        }
        let udp_len = usize::from(request.len());
        let datagram = l4.get(..udp_len).ok_or(Link6Drop::BadUdp)?;
        if udp_len < UDP_HEADER_LEN {
            return Err(Link6Drop::BadUdp);
        }
        // RFC 8200 8.1: a zero UDP checksum is invalid over IPv6.
        if !partial_csum
            && (request.checksum() == 0 || l4_checksum(h.src, h.dst, proto::UDP, datagram) != 0)
        {
            return Err(Link6Drop::BadChecksum);
        }
        // DHCPv6 clients send from their link-local address; the reply goes back there.
        if h.src.is_unspecified() {
            return Err(Link6Drop::BadSource(h.src));
        }
        self.learn(h.src);
        let client_port = request.src_port();

        let payload_at = L4_OFFSET + UDP_HEADER_LEN;
        let room = out.get_mut(payload_at..).ok_or(Link6Drop::OutputTooSmall)?;
        let room_len = room.len().min(MAX_DHCPV6_REPLY);
        let reply_len = match self
            .dhcp
            .handle(&datagram[UDP_HEADER_LEN..], &mut room[..room_len])
        {
            Ok(Some(len)) => len,
            Ok(None) => {
                self.counters.dhcp_ignored.inc();
                return Ok(None);
            }
            Err(Dhcpv6Error::OutputTooSmall { .. }) => return Err(Link6Drop::OutputTooSmall),
            Err(e) => return Err(Link6Drop::Dhcp(e)),
        };
        let udp_total = UDP_HEADER_LEN + reply_len;
        let frame = out
            .get_mut(..L4_OFFSET + udp_total)
            .ok_or(Link6Drop::OutputTooSmall)?;
        let mut udp = UdpPacket::new_unchecked(&mut frame[L4_OFFSET..]);
        udp.set_src_port(DHCPV6_SERVER_PORT);
        // RFC 8415 relies on clients listening on 546; answering the source port also
        // serves a client that sent from elsewhere.
        udp.set_dst_port(client_port);
        udp.set_len(udp_total as u16);
        // A computed zero goes out as all ones: zero means "no checksum".
        udp.fill_checksum(&self.gateway_ll.into(), &h.src.into());
        write_headers(
            frame,
            guest_mac,
            self.cfg.gateway_mac,
            self.gateway_ll,
            h.src,
            IpProtocol::Udp,
            HOP_LIMIT,
            udp_total,
        );
        self.counters.dhcp_replies.inc();
        Ok(Some(L4_OFFSET + udp_total))
    }

    /// An unsolicited advertisement to all nodes when one is due; `None` otherwise. Call it
    /// from a timer (once a second is plenty) and whenever the guest may have appeared.
    /// `guest_mac` only says whether there is a guest: advertisements start with the first
    /// call that has one (the first goes out at once), and nothing is sent while there is
    /// none.
    pub fn periodic(
        &mut self,
        guest_mac: Option<[u8; 6]>,
        now: Instant,
        out: &mut [u8],
    ) -> Option<usize> {
        guest_mac?;
        let due = *self.next_ra.get_or_insert(now);
        if now < due {
            return None;
        }
        if let Some(earliest) = self
            .last_multicast_ra
            .map(|last| last + MIN_DELAY_BETWEEN_RAS)
            .filter(|&earliest| now < earliest)
        {
            self.next_ra = Some(earliest);
            return None;
        }
        match self.write_ra(ALL_NODES, ALL_NODES_MAC, out) {
            Ok(len) => {
                self.sent_multicast_ra(now);
                self.counters.ra_unsolicited.inc();
                Some(len)
            }
            Err(_) => {
                self.counters.ra_unsolicited_failed.inc();
                // Try again at the next regular time rather than on every tick.
                self.next_ra = Some(now + RA_INTERVAL);
                None
            }
        }
    }

    /// The guest's addresses seen so far, most recent first: targets of its duplicate address
    /// detection and advertisements, sources of its packets. [`Link6Config::guest`] is the
    /// guest's too, whether or not it is listed.
    pub fn guest_addresses(&self) -> &[Ipv6Addr] {
        self.guest_addrs.as_slice()
    }

    /// Records the source of a guest packet the NAT took, so solicitations for it are not
    /// answered. Cheap when the address is the most recent one.
    /// Returns whether the address is new to the table.
    pub fn learn_source(&mut self, addr: Ipv6Addr) -> bool {
        self.learn(addr)
    }

    /// The frontend went away and the next guest may be another: forget its addresses and
    /// start advertisements afresh. The DHCPv6 binding and the counters stay.
    pub fn forget(&mut self) {
        self.guest_addrs = AddressTable::new();
        self.rs_bucket = TokenBucket::FULL;
        self.next_ra = None;
        self.last_multicast_ra = None;
        self.initial_left = MAX_INITIAL_RTR_ADVERTISEMENTS;
    }

    /// The DHCPv6 binding, if the guest address was given to a client.
    pub fn dhcp_binding(&self) -> Option<&podwire_dhcp::Dhcpv6Binding> {
        self.dhcp.binding()
    }

    /// Live migration: the addresses the guest used (oldest first) and its DHCPv6 binding on
    /// the source.
    pub fn restore(&mut self, addrs: &[Ipv6Addr], binding: Option<podwire_dhcp::Dhcpv6Binding>) {
        for &a in addrs {
            self.learn(a);
        }
        if let Some(b) = binding {
            self.dhcp.restore_binding(b);
        }
    }

    /// Whether DHCPv6 has given the guest address to a client.
    pub fn lease_bound(&self) -> bool {
        self.dhcp.binding().is_some()
    }

    pub fn dhcp_counters(&self) -> &podwire_dhcp::Dhcpv6Counters {
        self.dhcp.counters()
    }

    /// The link's counter sets with their prefixes in the summary line: its own, and the
    /// DHCPv6 server's.
    pub fn counter_sets(&self) -> [(&'static str, &dyn CounterSet); 2] {
        [("ipv6_", &self.counters), ("dhcpv6_", self.dhcp.counters())]
    }
}
