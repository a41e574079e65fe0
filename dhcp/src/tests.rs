//! Behavioural tests: client messages built by hand, replies decoded by a
//! small independent decoder here and cross-checked with smoltcp's.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const OTHER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
const XID: u32 = 0xdead_beef;

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const DECLINE: u8 = 4;
const ACK: u8 = 5;
const NAK: u8 = 6;
const RELEASE: u8 = 7;
const INFORM: u8 = 8;

fn server_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 2)
}
fn guest_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 15)
}

fn config() -> Dhcpv4Config {
    Dhcpv4Config {
        server_ip: server_ip(),
        guest_ip: guest_ip(),
        prefix_len: 24,
        router: Ipv4Addr::new(10, 0, 2, 1),
        dns: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
        domain_name: Some("example.internal".into()),
        search: vec!["eng.apple.com".into(), "marketing.apple.com".into()],
        mtu: Some(1450),
        lease_secs: 3600,
        hostname: Some("vm1".into()),
        extra: Default::default(),
    }
}

fn server() -> Dhcpv4Server {
    Dhcpv4Server::try_new(config()).expect("test config is valid")
}

/// A client message under construction. Fields default to what a
/// well-behaved client in INIT would send.
#[derive(Clone)]
struct Msg {
    op: u8,
    htype: u8,
    hlen: u8,
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    chaddr: [u8; 16],
    cookie: [u8; 4],
    options: Vec<u8>,
    end: bool,
}

impl Msg {
    fn new(msg_type: u8) -> Self {
        let mut chaddr = [0; 16];
        chaddr[..6].copy_from_slice(&MAC);
        Msg {
            op: 1,
            htype: 1,
            hlen: 6,
            xid: XID,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            cookie: [99, 130, 83, 99],
            options: vec![53, 1, msg_type],
            end: true,
        }
    }

    fn opt(mut self, code: u8, data: &[u8]) -> Self {
        self.options.push(code);
        self.options.push(data.len() as u8);
        self.options.extend_from_slice(data);
        self
    }

    fn requested(self, ip: Ipv4Addr) -> Self {
        self.opt(50, &ip.octets())
    }

    fn server_id(self, ip: Ipv4Addr) -> Self {
        self.opt(54, &ip.octets())
    }

    fn ciaddr(mut self, ip: Ipv4Addr) -> Self {
        self.ciaddr = ip;
        self
    }

    fn broadcast(mut self) -> Self {
        self.flags |= 0x8000;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 236];
        b[0] = self.op;
        b[1] = self.htype;
        b[2] = self.hlen;
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[10..12].copy_from_slice(&self.flags.to_be_bytes());
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[24..28].copy_from_slice(&self.giaddr.octets());
        b[28..44].copy_from_slice(&self.chaddr);
        b.extend_from_slice(&self.cookie);
        b.extend_from_slice(&self.options);
        if self.end {
            b.push(255);
        }
        b
    }
}

/// A reply decoded by this test module's own reader.
#[derive(Debug)]
struct Decoded {
    op: u8,
    htype: u8,
    hlen: u8,
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    chaddr: [u8; 16],
    /// In wire order, one entry per instance.
    instances: Vec<(u8, Vec<u8>)>,
    /// Offset just past END.
    end_at: usize,
}

impl Decoded {
    fn parse(b: &[u8]) -> Self {
        assert!(b.len() >= 240, "reply too short: {}", b.len());
        assert_eq!(&b[236..240], &[99, 130, 83, 99], "magic cookie");
        assert!(
            b[44..236].iter().all(|&x| x == 0),
            "sname/file must be zero"
        );
        let ip = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
        let mut instances = Vec::new();
        let mut i = 240;
        loop {
            match b[i] {
                0 => i += 1,
                255 => break,
                code => {
                    let len = b[i + 1] as usize;
                    instances.push((code, b[i + 2..i + 2 + len].to_vec()));
                    i += 2 + len;
                }
            }
        }
        Decoded {
            op: b[0],
            htype: b[1],
            hlen: b[2],
            xid: u32::from_be_bytes(b[4..8].try_into().unwrap()),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: ip(12),
            yiaddr: ip(16),
            siaddr: ip(20),
            giaddr: ip(24),
            chaddr: b[28..44].try_into().unwrap(),
            instances,
            end_at: i + 1,
        }
    }

    /// RFC 3396 concatenation of all instances of `code`.
    fn get(&self, code: u8) -> Option<Vec<u8>> {
        let parts: Vec<&Vec<u8>> = self
            .instances
            .iter()
            .filter(|(c, _)| *c == code)
            .map(|(_, d)| d)
            .collect();
        (!parts.is_empty()).then(|| parts.into_iter().flatten().copied().collect())
    }

    fn has(&self, code: u8) -> bool {
        self.get(code).is_some()
    }

    fn u32_opt(&self, code: u8) -> Option<u32> {
        self.get(code)
            .map(|d| u32::from_be_bytes(d[..].try_into().unwrap()))
    }

    fn msg_type(&self) -> u8 {
        self.get(53).expect("message type")[0]
    }

    /// Distinct option codes in first-appearance order.
    fn order(&self) -> Vec<u8> {
        let mut v: Vec<u8> = Vec::new();
        for (c, _) in &self.instances {
            if !v.contains(c) {
                v.push(*c);
            }
        }
        v
    }
}

struct Exchange {
    reply: Reply,
    bytes: Vec<u8>,
    decoded: Decoded,
}

fn exchange_with(s: &mut Dhcpv4Server, mac: [u8; 6], m: &Msg, now: Instant) -> Option<Exchange> {
    // Garbage in the buffer must not leak into the reply.
    let mut out = vec![0xa5u8; 1500];
    let reply = s
        .handle_at(now, mac, &m.bytes(), &mut out)
        .expect("valid message")?;
    assert!(reply.len >= 300, "BOOTP minimum");
    let bytes = out[..reply.len].to_vec();
    let decoded = Decoded::parse(&bytes);
    assert!(
        bytes[decoded.end_at..].iter().all(|&b| b == 0),
        "padding must be zero"
    );
    Some(Exchange {
        reply,
        bytes,
        decoded,
    })
}

fn exchange(s: &mut Dhcpv4Server, m: &Msg) -> Option<Exchange> {
    exchange_with(s, MAC, m, Instant::now())
}

fn assert_echoes(d: &Decoded, m: &Msg) {
    assert_eq!(d.op, 2);
    assert_eq!((d.htype, d.hlen), (1, 6));
    assert_eq!(d.xid, m.xid);
    assert_eq!(d.flags, m.flags);
    assert_eq!(d.chaddr, m.chaddr);
    assert_eq!(d.giaddr, m.giaddr);
    assert_eq!(d.siaddr, Ipv4Addr::UNSPECIFIED);
}

fn assert_lease_options(d: &Decoded) {
    assert_eq!(d.get(54), Some(server_ip().octets().to_vec()));
    assert_eq!(d.u32_opt(51), Some(3600));
    assert_eq!(d.u32_opt(58), Some(1800));
    assert_eq!(d.u32_opt(59), Some(3150));
}

fn assert_config_options(d: &Decoded) {
    assert_eq!(d.get(1), Some(vec![255, 255, 255, 0]));
    assert_eq!(d.get(3), Some(vec![10, 0, 2, 1]));
    assert_eq!(d.get(6), Some(vec![10, 0, 2, 3, 1, 1, 1, 1]));
    assert_eq!(d.get(15), Some(b"example.internal".to_vec()));
    assert_eq!(d.get(26), Some(1450u16.to_be_bytes().to_vec()));
    assert_eq!(d.get(12), Some(b"vm1".to_vec()));
    assert!(d.has(119));
}

// ---------------------------------------------------------------------------
// Message types.

#[test]
fn discover_gets_offer() {
    let mut s = server();
    let m = Msg::new(DISCOVER);
    let x = exchange(&mut s, &m).expect("offer");
    assert_eq!(x.reply.kind, MessageKind::Offer);
    assert_eq!(x.reply.dest, ReplyDest::Broadcast);
    assert_eq!(x.decoded.msg_type(), OFFER);
    assert_echoes(&x.decoded, &m);
    assert_eq!(x.decoded.yiaddr, guest_ip());
    assert_eq!(x.decoded.ciaddr, Ipv4Addr::UNSPECIFIED);
    assert_lease_options(&x.decoded);
    assert_config_options(&x.decoded);
    assert!(!x.decoded.has(121), "router is on-link");
    assert!(!x.decoded.has(80));
    assert!(s.lease().is_none(), "an offer binds nothing");
    assert_eq!(s.counters().discovers, 1);
    assert_eq!(s.counters().offers, 1);
    assert_eq!(s.counters().received, 1);
}

#[test]
fn discover_with_rapid_commit_gets_ack_and_binds() {
    let mut s = server();
    let m = Msg::new(DISCOVER).opt(80, &[]).opt(12, b"guest-host\0");
    let t0 = Instant::now();
    let x = exchange_with(&mut s, MAC, &m, t0).expect("ack");
    assert_eq!(x.reply.kind, MessageKind::Ack);
    assert_eq!(x.decoded.msg_type(), ACK);
    assert_eq!(x.decoded.get(80), Some(vec![]));
    assert_eq!(x.decoded.yiaddr, guest_ip());
    assert_lease_options(&x.decoded);
    let lease = s.lease_at(t0).expect("bound");
    assert_eq!(lease.mac, MAC);
    assert_eq!(lease.ip, guest_ip());
    assert_eq!(lease.bound_at, t0);
    assert_eq!(lease.hostname.as_deref(), Some("guest-host"));
    assert_eq!(s.counters().rapid_commits, 1);
    assert_eq!(s.counters().acks, 1);
    assert_eq!(s.counters().offers, 0);
}

#[test]
fn request_selecting_gets_ack_and_records_client() {
    let mut s = server();
    let client_id = [1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let m = Msg::new(REQUEST)
        .server_id(server_ip())
        .requested(guest_ip())
        .opt(61, &client_id)
        .opt(12, b"web-0");
    let t0 = Instant::now();
    let x = exchange_with(&mut s, MAC, &m, t0).expect("ack");
    assert_eq!(x.reply.kind, MessageKind::Ack);
    assert_eq!(x.reply.dest, ReplyDest::Broadcast);
    assert_echoes(&x.decoded, &m);
    assert_eq!(x.decoded.yiaddr, guest_ip());
    assert_eq!(x.decoded.get(61), Some(client_id.to_vec()), "RFC 6842 echo");
    assert_lease_options(&x.decoded);
    assert_config_options(&x.decoded);
    let lease = s.lease_at(t0).expect("bound");
    assert_eq!(lease.client_id.as_deref(), Some(&client_id[..]));
    assert_eq!(lease.hostname.as_deref(), Some("web-0"));
    assert_eq!(lease.lease_secs, 3600);
    assert_eq!(s.counters().requests, 1);
    assert_eq!(s.counters().acks, 1);
}

#[test]
fn request_selecting_wrong_address_gets_nak() {
    let mut s = server();
    let m = Msg::new(REQUEST)
        .server_id(server_ip())
        .requested(Ipv4Addr::new(10, 0, 2, 99));
    let x = exchange(&mut s, &m).expect("nak");
    assert_nak(&x, &m);
    assert!(s.lease().is_none());
}

#[test]
fn request_for_another_server_is_ignored() {
    let mut s = server();
    let m = Msg::new(REQUEST)
        .server_id(Ipv4Addr::new(10, 0, 2, 200))
        .requested(guest_ip());
    assert!(exchange(&mut s, &m).is_none());
    let c = s.counters();
    assert_eq!((c.requests, c.ignored, c.ignored_other_server), (1, 1, 1));
    assert_eq!(c.acks + c.naks, 0);
    assert!(s.lease().is_none());
}

fn assert_nak(x: &Exchange, m: &Msg) {
    assert_eq!(x.reply.kind, MessageKind::Nak);
    assert_eq!(
        x.reply.dest,
        ReplyDest::Broadcast,
        "NAKs are always broadcast"
    );
    assert_eq!(x.decoded.msg_type(), NAK);
    assert_echoes(&x.decoded, m);
    assert_eq!(x.decoded.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(x.decoded.ciaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(x.decoded.get(54), Some(server_ip().octets().to_vec()));
    let text = x.decoded.get(56).expect("NAK carries a message");
    assert!(!text.is_empty() && text.is_ascii());
    for code in [51, 58, 59, 1, 3, 6, 119, 121] {
        assert!(!x.decoded.has(code), "NAK must not carry option {code}");
    }
}

#[test]
fn init_reboot_right_address_gets_ack() {
    let mut s = server();
    let m = Msg::new(REQUEST).requested(guest_ip());
    let x = exchange(&mut s, &m).expect("ack");
    assert_eq!(x.reply.kind, MessageKind::Ack);
    assert_eq!(x.decoded.yiaddr, guest_ip());
    assert!(s.lease().is_some());
}

#[test]
fn init_reboot_stale_address_gets_nak() {
    let mut s = server();
    let m = Msg::new(REQUEST).requested(Ipv4Addr::new(192, 168, 122, 50));
    let x = exchange(&mut s, &m).expect("nak");
    assert_nak(&x, &m);
    assert_eq!(s.counters().naks, 1);
    assert!(s.lease().is_none());
}

#[test]
fn renewing_gets_unicast_ack_with_ciaddr() {
    let mut s = server();
    let t0 = Instant::now();
    exchange_with(&mut s, MAC, &Msg::new(REQUEST).requested(guest_ip()), t0).expect("bind");
    let m = Msg::new(REQUEST).ciaddr(guest_ip());
    let t1 = t0 + Duration::from_secs(1800);
    let x = exchange_with(&mut s, MAC, &m, t1).expect("ack");
    assert_eq!(x.reply.kind, MessageKind::Ack);
    assert_eq!(x.reply.dest, ReplyDest::Unicast(guest_ip()));
    assert_eq!(x.decoded.ciaddr, guest_ip());
    assert_eq!(x.decoded.yiaddr, guest_ip());
    let lease = s.lease_at(t1).expect("bound");
    assert_eq!(lease.bound_at, t0, "renewal keeps the original bind time");
    assert_eq!(lease.renewed_at, t1);
}

#[test]
fn rebinding_with_broadcast_flag_gets_broadcast_ack() {
    let mut s = server();
    let m = Msg::new(REQUEST).ciaddr(guest_ip()).broadcast();
    let x = exchange(&mut s, &m).expect("ack");
    assert_eq!(x.reply.kind, MessageKind::Ack);
    assert_eq!(x.reply.dest, ReplyDest::Broadcast);
    assert_eq!(x.decoded.flags, 0x8000);
}

#[test]
fn renewing_wrong_address_gets_nak() {
    let mut s = server();
    let m = Msg::new(REQUEST).ciaddr(Ipv4Addr::new(10, 0, 2, 16));
    let x = exchange(&mut s, &m).expect("nak");
    assert_nak(&x, &m);
}

#[test]
fn request_naming_no_address_gets_nak() {
    let mut s = server();
    let m = Msg::new(REQUEST);
    let x = exchange(&mut s, &m).expect("nak");
    assert_nak(&x, &m);
    let m = Msg::new(REQUEST).server_id(server_ip());
    let x = exchange(&mut s, &m).expect("nak");
    assert_nak(&x, &m);
}

#[test]
fn nak_echoes_client_identifier() {
    let mut s = server();
    let m = Msg::new(REQUEST)
        .requested(Ipv4Addr::new(1, 2, 3, 4))
        .opt(61, b"\x00opaque-id");
    let x = exchange(&mut s, &m).expect("nak");
    assert_eq!(x.decoded.get(61), Some(b"\x00opaque-id".to_vec()));
}

#[test]
fn decline_unbinds_and_is_remembered() {
    let mut s = server();
    let t0 = Instant::now();
    exchange_with(&mut s, MAC, &Msg::new(REQUEST).requested(guest_ip()), t0).expect("bind");
    assert!(s.lease_at(t0).is_some());
    let m = Msg::new(DECLINE)
        .server_id(server_ip())
        .requested(guest_ip());
    let t1 = t0 + Duration::from_secs(2);
    assert!(exchange_with(&mut s, MAC, &m, t1).is_none());
    assert!(s.lease_at(t1).is_none());
    assert_eq!(
        s.last_decline(),
        Some(DeclineInfo {
            mac: MAC,
            ip: Some(guest_ip()),
            at: t1
        })
    );
    assert_eq!(s.counters().declines, 1);
    // Still the only address there is: the next DISCOVER is answered.
    let x = exchange(&mut s, &Msg::new(DISCOVER)).expect("offer");
    assert_eq!(x.decoded.yiaddr, guest_ip());
}

#[test]
fn decline_for_another_server_is_ignored() {
    let mut s = server();
    let m = Msg::new(DECLINE)
        .server_id(Ipv4Addr::new(9, 9, 9, 9))
        .requested(guest_ip());
    assert!(exchange(&mut s, &m).is_none());
    assert!(s.last_decline().is_none());
    assert_eq!(s.counters().ignored_other_server, 1);
}

#[test]
fn release_unbinds() {
    let mut s = server();
    exchange(&mut s, &Msg::new(REQUEST).requested(guest_ip())).expect("bind");
    assert!(s.lease().is_some());
    let m = Msg::new(RELEASE).ciaddr(guest_ip()).server_id(server_ip());
    assert!(exchange(&mut s, &m).is_none());
    assert!(s.lease().is_none());
    assert_eq!(s.counters().releases, 1);
    assert_eq!(s.counters().ignored, 0);
}

#[test]
fn stale_release_keeps_the_lease() {
    let mut s = server();
    exchange(&mut s, &Msg::new(REQUEST).requested(guest_ip())).expect("bind");
    // From a MAC that does not hold the lease.
    let m = Msg::new(RELEASE).ciaddr(guest_ip());
    assert!(exchange_with(&mut s, OTHER_MAC, &m, Instant::now()).is_none());
    // For an address that is not ours.
    let m = Msg::new(RELEASE).ciaddr(Ipv4Addr::new(10, 0, 2, 16));
    assert!(exchange(&mut s, &m).is_none());
    assert!(s.lease().is_some());
    assert_eq!(s.counters().ignored_stale_release, 2);
    assert_eq!(s.counters().releases, 2);
}

#[test]
fn inform_gets_configuration_without_lease() {
    let mut s = server();
    let m = Msg::new(INFORM)
        .ciaddr(guest_ip())
        .opt(55, &[1, 3, 6, 15, 119]);
    let x = exchange(&mut s, &m).expect("ack");
    assert_eq!(x.reply.kind, MessageKind::Ack);
    assert_eq!(x.reply.dest, ReplyDest::Unicast(guest_ip()));
    assert_eq!(x.decoded.msg_type(), ACK);
    assert_eq!(x.decoded.yiaddr, Ipv4Addr::UNSPECIFIED, "RFC 2131 4.3.5");
    assert_eq!(x.decoded.ciaddr, guest_ip());
    for code in [51, 58, 59] {
        assert!(
            !x.decoded.has(code),
            "INFORM reply must not carry option {code}"
        );
    }
    assert_eq!(x.decoded.get(54), Some(server_ip().octets().to_vec()));
    assert_config_options(&x.decoded);
    assert!(s.lease().is_none(), "INFORM binds nothing");
    assert_eq!((s.counters().informs, s.counters().acks), (1, 1));
}

#[test]
fn client_only_message_types_are_ignored() {
    let mut s = server();
    for t in [OFFER, ACK, NAK, 0, 9, 13, 200, 255] {
        assert!(exchange(&mut s, &Msg::new(t)).is_none(), "type {t}");
    }
    let c = s.counters();
    assert_eq!(c.ignored_unsupported_type, 8);
    assert_eq!(c.ignored, 8);
    assert_eq!(c.offers + c.acks + c.naks, 0);
}

#[test]
fn header_fields_are_echoed() {
    let mut s = server();
    let mut m = Msg::new(DISCOVER).broadcast();
    m.xid = 0x0102_0304;
    m.giaddr = Ipv4Addr::new(172, 16, 0, 1);
    m.chaddr = *b"0123456789abcdef";
    m.chaddr[..6].copy_from_slice(&MAC);
    let x = exchange(&mut s, &m).expect("offer");
    assert_echoes(&x.decoded, &m);
    assert_eq!(s.counters().chaddr_mismatch, 0);
}

#[test]
fn chaddr_mismatch_is_served_but_counted() {
    let mut s = server();
    let mut m = Msg::new(REQUEST).requested(guest_ip());
    m.chaddr[..6].copy_from_slice(&OTHER_MAC);
    let x = exchange(&mut s, &m).expect("ack");
    assert_eq!(&x.decoded.chaddr[..6], &OTHER_MAC);
    assert_eq!(s.counters().chaddr_mismatch, 1);
    assert_eq!(
        s.lease().expect("bound").mac,
        MAC,
        "the Ethernet source is what we trust"
    );
}

#[test]
fn new_mac_takes_over_the_lease() {
    let mut s = server();
    let t0 = Instant::now();
    exchange_with(&mut s, MAC, &Msg::new(REQUEST).requested(guest_ip()), t0).expect("bind");
    let t1 = t0 + Duration::from_secs(5);
    exchange_with(
        &mut s,
        OTHER_MAC,
        &Msg::new(REQUEST).requested(guest_ip()),
        t1,
    )
    .expect("ack");
    let lease = s.lease_at(t1).expect("bound");
    assert_eq!(lease.mac, OTHER_MAC);
    assert_eq!(lease.bound_at, t1);
}

#[test]
fn lease_expires() {
    let mut s = server();
    let t0 = Instant::now();
    exchange_with(&mut s, MAC, &Msg::new(REQUEST).requested(guest_ip()), t0).expect("bind");
    assert!(s.lease_at(t0 + Duration::from_secs(3599)).is_some());
    assert!(s.lease_at(t0 + Duration::from_secs(3600)).is_none());
}

#[test]
fn infinite_lease_never_expires() {
    let mut c = config();
    c.lease_secs = u32::MAX;
    let mut s = Dhcpv4Server::try_new(c).unwrap();
    let t0 = Instant::now();
    let x = exchange_with(&mut s, MAC, &Msg::new(REQUEST).requested(guest_ip()), t0).unwrap();
    assert_eq!(x.decoded.u32_opt(51), Some(u32::MAX));
    assert_eq!(x.decoded.u32_opt(58), Some(u32::MAX / 2));
    assert_eq!(
        x.decoded.u32_opt(59),
        Some((u64::from(u32::MAX) * 7 / 8) as u32)
    );
    let lease = s.lease_at(t0).unwrap();
    assert_eq!(lease.expires_at(), None);
    assert!(!lease.is_expired(t0 + Duration::from_secs(100 * 365 * 86400)));
}

#[test]
fn changing_guest_address_drops_lease_and_naks_renewal() {
    let mut s = server();
    exchange(&mut s, &Msg::new(REQUEST).requested(guest_ip())).expect("bind");
    // A DNS change keeps the lease.
    let mut c = config();
    c.dns = vec![Ipv4Addr::new(9, 9, 9, 9)];
    s.set_config(c.clone());
    assert!(s.lease().is_some());
    let x = exchange(&mut s, &Msg::new(REQUEST).ciaddr(guest_ip())).expect("ack");
    assert_eq!(x.decoded.get(6), Some(vec![9, 9, 9, 9]));

    c.guest_ip = Ipv4Addr::new(10, 0, 2, 20);
    s.try_set_config(c).unwrap();
    assert!(s.lease().is_none());
    let m = Msg::new(REQUEST).ciaddr(guest_ip());
    assert_nak(&exchange(&mut s, &m).expect("nak"), &m);
    let x = exchange(&mut s, &Msg::new(DISCOVER)).expect("offer");
    assert_eq!(x.decoded.yiaddr, Ipv4Addr::new(10, 0, 2, 20));
}

#[test]
fn try_set_config_keeps_old_config_on_error() {
    let mut s = server();
    let mut bad = config();
    bad.prefix_len = 0;
    assert_eq!(s.try_set_config(bad), Err(ConfigError::PrefixLen(0)));
    assert_eq!(s.config(), &config());
    assert!(Dhcpv4Server::try_new({
        let mut c = config();
        c.lease_secs = 0;
        c
    })
    .is_err());
}

#[test]
fn lenient_constructor_still_serves() {
    let mut c = config();
    c.mtu = Some(1);
    c.search.push("bad..name".into());
    let mut s = Dhcpv4Server::new(c);
    let x = exchange(&mut s, &Msg::new(DISCOVER)).expect("offer");
    assert!(!x.decoded.has(26));
    assert_eq!(x.decoded.get(119).unwrap(), rfc3397_vector());
}

// ---------------------------------------------------------------------------
// Options.

/// RFC 3397 section 2, worked out by hand: "eng.apple.com" then
/// "marketing.apple.com" with the second name's "apple.com" replaced by a
/// pointer to offset 4.
fn rfc3397_vector() -> Vec<u8> {
    vec![
        3, b'e', b'n', b'g', 5, b'a', b'p', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, //
        9, b'm', b'a', b'r', b'k', b'e', b't', b'i', b'n', b'g', 0xc0, 0x04,
    ]
}

#[test]
fn search_list_matches_hand_computed_vector() {
    let mut s = server();
    let x = exchange(&mut s, &Msg::new(DISCOVER)).expect("offer");
    let raw: Vec<&(u8, Vec<u8>)> = x
        .decoded
        .instances
        .iter()
        .filter(|(c, _)| *c == 119)
        .collect();
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].1, rfc3397_vector());
    // The same bytes as they appear on the wire, header included.
    let mut on_wire = vec![119, 27];
    on_wire.extend(rfc3397_vector());
    assert!(x.bytes.windows(on_wire.len()).any(|w| w == on_wire));
}

#[test]
fn long_search_list_is_split_per_rfc3396() {
    let mut c = config();
    c.search = (0..30)
        .map(|i| format!("zone{i:02}.tenant{i:02}.example"))
        .collect();
    let mut s = Dhcpv4Server::try_new(c.clone()).unwrap();
    // A large enough limit for everything.
    let m = Msg::new(DISCOVER).opt(57, &1500u16.to_be_bytes());
    let x = exchange(&mut s, &m).expect("offer");
    let instances: Vec<&Vec<u8>> = x
        .decoded
        .instances
        .iter()
        .filter(|(c, _)| *c == 119)
        .map(|(_, d)| d)
        .collect();
    assert!(instances.len() >= 2, "over 255 bytes must be split");
    assert!(instances[..instances.len() - 1]
        .iter()
        .all(|d| d.len() == 255));
    let joined = x.decoded.get(119).unwrap();
    assert!(joined.len() > 255);
    // Decode the joined list back, following pointers, to make sure the
    // split did not disturb offsets.
    let names = decode_search_list(&joined);
    assert_eq!(names, c.search);
}

/// Minimal RFC 1035 name decoder with pointer following, for checking.
fn decode_search_list(data: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let mut labels = Vec::new();
        let mut pos = i;
        let mut jumped = false;
        loop {
            let len = data[pos];
            if len == 0 {
                if !jumped {
                    i = pos + 1;
                }
                break;
            }
            if len & 0xc0 == 0xc0 {
                let target = (usize::from(len & 0x3f) << 8) | usize::from(data[pos + 1]);
                assert!(target < pos, "pointers must point backwards");
                if !jumped {
                    i = pos + 2;
                }
                jumped = true;
                pos = target;
                continue;
            }
            let len = usize::from(len);
            labels.push(String::from_utf8(data[pos + 1..pos + 1 + len].to_vec()).unwrap());
            pos += 1 + len;
        }
        names.push(labels.join("."));
    }
    names
}

#[test]
fn classless_routes_iff_router_off_subnet() {
    // On-link router: no 121.
    let mut s = server();
    let x = exchange(&mut s, &Msg::new(DISCOVER)).expect("offer");
    assert!(!x.decoded.has(121));

    // /32 guest: the router cannot be on-link.
    let mut c = config();
    c.prefix_len = 32;
    c.guest_ip = Ipv4Addr::new(192, 168, 1, 2);
    c.router = Ipv4Addr::new(192, 168, 1, 1);
    c.server_ip = Ipv4Addr::new(192, 168, 1, 1);
    let mut s = Dhcpv4Server::try_new(c).unwrap();
    for m in [
        Msg::new(DISCOVER),
        Msg::new(REQUEST).requested(Ipv4Addr::new(192, 168, 1, 2)),
    ] {
        let x = exchange(&mut s, &m).expect("reply");
        assert_eq!(x.decoded.get(1), Some(vec![255, 255, 255, 255]));
        assert_eq!(
            x.decoded.get(121),
            Some(vec![
                32, 192, 168, 1, 1, 0, 0, 0, 0, // 192.168.1.1/32 via 0.0.0.0 (on-link)
                0, 192, 168, 1, 1, // 0.0.0.0/0 via 192.168.1.1
            ])
        );
        assert_eq!(
            x.decoded.get(3),
            Some(vec![192, 168, 1, 1]),
            "kept for non-121 clients"
        );
    }

    // /25 edge: 10.0.0.129 is in the upper half, the guest in the lower.
    let mut c = config();
    c.prefix_len = 25;
    c.guest_ip = Ipv4Addr::new(10, 0, 0, 2);
    c.router = Ipv4Addr::new(10, 0, 0, 129);
    let mut s = Dhcpv4Server::try_new(c.clone()).unwrap();
    let x = exchange(&mut s, &Msg::new(DISCOVER)).expect("offer");
    assert_eq!(
        x.decoded.get(121),
        Some(vec![32, 10, 0, 0, 129, 0, 0, 0, 0, 0, 10, 0, 0, 129])
    );
    c.router = Ipv4Addr::new(10, 0, 0, 127);
    s.set_config(c);
    let x = exchange(&mut s, &Msg::new(DISCOVER)).expect("offer");
    assert!(!x.decoded.has(121));
    // INFORM carries it as well.
    let mut c = config();
    c.prefix_len = 32;
    s.set_config(c);
    let x = exchange(&mut s, &Msg::new(INFORM).ciaddr(guest_ip())).expect("ack");
    assert!(x.decoded.has(121));
}

#[test]
fn parameter_request_list_orders_optional_options() {
    let mut s = server();
    // Duplicates and unknown codes must be harmless.
    let m = Msg::new(DISCOVER)
        .opt(55, &[12, 26, 200, 12])
        .opt(55, &[119, 1]);
    let x = exchange(&mut s, &m).expect("offer");
    let order = x.decoded.order();
    assert_eq!(
        &order[..7],
        &[53, 54, 51, 58, 59, 1, 3],
        "protocol and required first"
    );
    // Then the requested ones in request order (PRL concatenated per RFC
    // 3396), then the rest in default order.
    assert_eq!(&order[7..], &[12, 26, 119, 6, 15]);
}

#[test]
fn options_without_parameter_list_use_default_order() {
    let mut s = server();
    let x = exchange(&mut s, &Msg::new(DISCOVER)).expect("offer");
    assert_eq!(
        x.decoded.order(),
        [53, 54, 51, 58, 59, 1, 3, 6, 15, 119, 26, 12]
    );
}

/// A configuration whose options cannot all fit in 548 bytes.
fn bulky_config() -> Dhcpv4Config {
    let mut c = config();
    c.dns = (1..=60).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
    c.search = (0..20)
        .map(|i| format!("n{i:02}.zone{i:02}.example"))
        .collect();
    c.prefix_len = 32;
    c
}

#[test]
fn default_max_message_size_is_respected() {
    let mut s = Dhcpv4Server::try_new(bulky_config()).unwrap();
    let m = Msg::new(DISCOVER).opt(61, &[1, 2, 3, 4, 5, 6, 7]);
    let x = exchange(&mut s, &m).expect("offer");
    assert!(x.reply.len <= 576 - 28, "len {}", x.reply.len);
    // Required options survive.
    for code in [53, 54, 51, 58, 59, 1, 3, 121, 61] {
        assert!(x.decoded.has(code), "option {code} must survive");
    }
    assert!(s.counters().options_omitted > 0);
    // Nothing is half-written: every instance decoded cleanly and END
    // is inside the limit.
    assert!(x.decoded.end_at <= x.reply.len);
}

#[test]
fn advertised_max_message_size_is_respected() {
    // Below the legal minimum: treated as 576.
    let mut s = Dhcpv4Server::try_new(bulky_config()).unwrap();
    let m = Msg::new(DISCOVER).opt(57, &300u16.to_be_bytes());
    let x = exchange(&mut s, &m).expect("offer");
    assert!(x.reply.len <= 548 && x.reply.len > 400);

    // A larger limit lets everything through.
    let mut s = Dhcpv4Server::try_new(bulky_config()).unwrap();
    let m = Msg::new(DISCOVER).opt(57, &1500u16.to_be_bytes());
    let x = exchange(&mut s, &m).expect("offer");
    assert!(x.reply.len > 548 && x.reply.len <= 1500 - 28);
    assert_eq!(s.counters().options_omitted, 0);
    assert_eq!(x.decoded.get(6).unwrap().len(), 240);

    // Every limit in between is honoured exactly.
    for mms in 576u16..=900 {
        let m = Msg::new(DISCOVER).opt(57, &mms.to_be_bytes());
        let mut out = vec![0u8; 1500];
        let r = s.handle(MAC, &m.bytes(), &mut out).unwrap().unwrap();
        assert!(r.len <= usize::from(mms) - 28, "mms {mms} len {}", r.len);
        Decoded::parse(&out[..r.len]);
    }
}

#[test]
fn output_buffer_is_respected() {
    let mut s = Dhcpv4Server::try_new(bulky_config()).unwrap();
    let m = Msg::new(DISCOVER).opt(57, &1500u16.to_be_bytes()).bytes();
    for size in 300..=700 {
        let mut out = vec![0u8; size];
        let r = s.handle(MAC, &m, &mut out).unwrap().unwrap();
        assert!(r.len <= size);
        let d = Decoded::parse(&out[..r.len]);
        assert!(d.has(53) && d.has(54) && d.has(1));
    }
    for size in [0, 1, 239, 240, 299] {
        let mut out = vec![0u8; size];
        assert_eq!(
            s.handle(MAC, &m, &mut out),
            Err(DhcpError::OutputTooSmall {
                needed: 300,
                got: size
            })
        );
    }
    assert_eq!(s.counters().output_too_small, 5);
    assert_eq!(s.counters().malformed, 0);
}

#[test]
fn too_small_output_does_not_bind() {
    let mut s = server();
    let mut out = [0u8; 100];
    let m = Msg::new(REQUEST).requested(guest_ip()).bytes();
    assert!(s.handle(MAC, &m, &mut out).is_err());
    assert!(s.lease().is_none(), "no ACK went out, so nothing is bound");
}

#[test]
fn replies_are_padded_to_bootp_minimum() {
    let mut c = config();
    c.dns.clear();
    c.domain_name = None;
    c.search.clear();
    c.mtu = None;
    c.hostname = None;
    let mut s = Dhcpv4Server::try_new(c).unwrap();
    let m = Msg::new(REQUEST).requested(Ipv4Addr::new(1, 1, 1, 1));
    let x = exchange(&mut s, &m).expect("nak");
    assert_eq!(x.reply.len, 300);
    assert!(x.decoded.end_at < 300);
}

// ---------------------------------------------------------------------------
// Hostile input.

fn expect_malformed(payload: &[u8], check: impl Fn(&DhcpError) -> bool) {
    let mut s = server();
    let mut out = [0u8; 576];
    let err = s
        .handle(MAC, payload, &mut out)
        .expect_err("must be rejected");
    assert!(check(&err), "unexpected {err:?}");
    assert_eq!(s.counters().malformed, 1);
    assert_eq!(s.counters().received, 1);
}

#[test]
fn malformed_inputs_are_rejected() {
    expect_malformed(&[], |e| *e == DhcpError::Truncated { len: 0 });
    expect_malformed(&[1; 239], |e| *e == DhcpError::Truncated { len: 239 });

    let mut m = Msg::new(DISCOVER);
    m.op = 2;
    expect_malformed(&m.bytes(), |e| *e == DhcpError::NotBootRequest(2));

    let mut m = Msg::new(DISCOVER);
    m.htype = 6;
    expect_malformed(&m.bytes(), |e| {
        matches!(e, DhcpError::NotEthernet { htype: 6, hlen: 6 })
    });

    let mut m = Msg::new(DISCOVER);
    m.hlen = 16;
    expect_malformed(&m.bytes(), |e| {
        matches!(e, DhcpError::NotEthernet { htype: 1, hlen: 16 })
    });

    let mut m = Msg::new(DISCOVER);
    m.cookie = [0, 0, 0, 0];
    expect_malformed(&m.bytes(), |e| *e == DhcpError::BadMagicCookie(0));

    let mut m = Msg::new(DISCOVER);
    m.options.clear();
    expect_malformed(&m.bytes(), |e| *e == DhcpError::MissingMessageType);

    let m = Msg::new(REQUEST).opt(50, &[10, 0, 2]);
    expect_malformed(&m.bytes(), |e| {
        *e == DhcpError::BadOptionLength {
            code: 50,
            len: 3,
            expected: 4,
        }
    });
    let m = Msg::new(DISCOVER).opt(80, &[1]);
    expect_malformed(&m.bytes(), |e| {
        matches!(e, DhcpError::BadOptionLength { code: 80, .. })
    });
    let mut m = Msg::new(DISCOVER);
    m.options = vec![53, 2, 1, 1];
    expect_malformed(&m.bytes(), |e| {
        matches!(e, DhcpError::BadOptionLength { code: 53, .. })
    });
    let m = Msg::new(DISCOVER).opt(54, &[]);
    expect_malformed(&m.bytes(), |e| {
        matches!(e, DhcpError::BadOptionLength { code: 54, .. })
    });
    let m = Msg::new(DISCOVER).opt(57, &[2]);
    expect_malformed(&m.bytes(), |e| {
        matches!(e, DhcpError::BadOptionLength { code: 57, .. })
    });

    // A length running past the end, with and without END after it.
    let mut m = Msg::new(DISCOVER);
    m.options.extend_from_slice(&[12, 10, b'a']);
    m.end = false;
    expect_malformed(&m.bytes(), |e| {
        *e == DhcpError::OptionOverrun {
            code: 12,
            offset: 243,
        }
    });
    // A code with no length byte at all.
    let mut m = Msg::new(DISCOVER);
    m.options.push(12);
    m.end = false;
    expect_malformed(&m.bytes(), |e| {
        matches!(e, DhcpError::OptionOverrun { code: 12, .. })
    });
}

#[test]
fn lenient_option_framing_is_accepted() {
    let mut s = server();
    let mut out = [0u8; 576];
    // No END option: the walk ends at the end of the datagram.
    let mut m = Msg::new(DISCOVER);
    m.end = false;
    assert!(s.handle(MAC, &m.bytes(), &mut out).unwrap().is_some());
    // Padding before, between and after options; garbage after END.
    let mut m = Msg::new(DISCOVER);
    m.options = vec![0, 0, 53, 1, 1, 0, 12, 1, b'x', 0];
    let mut b = m.bytes();
    b.extend_from_slice(&[0xff, 0x17, 0x99]);
    assert!(s.handle(MAC, &b, &mut out).unwrap().is_some());
    // Options after END are not read: here that hides the message type.
    let mut m = Msg::new(DISCOVER);
    m.options = vec![255, 53, 1, 1];
    m.end = false;
    assert_eq!(
        s.handle(MAC, &m.bytes(), &mut out),
        Err(DhcpError::MissingMessageType)
    );
}

#[test]
fn every_truncation_of_valid_packets_is_handled() {
    let packets = [
        Msg::new(DISCOVER)
            .opt(55, &[1, 3, 6, 15, 119, 121])
            .opt(61, &[1; 7])
            .opt(12, b"host"),
        Msg::new(REQUEST)
            .server_id(server_ip())
            .requested(guest_ip())
            .opt(57, &[5, 220]),
        Msg::new(INFORM).ciaddr(guest_ip()),
        Msg::new(DECLINE)
            .server_id(server_ip())
            .requested(guest_ip()),
    ];
    let mut out = [0u8; 576];
    for m in &packets {
        let full = m.bytes();
        for len in 0..=full.len() {
            let mut s = server();
            let result = s.handle(MAC, &full[..len], &mut out);
            if len < 240 {
                assert_eq!(result, Err(DhcpError::Truncated { len }));
            }
            if let Ok(Some(r)) = result {
                assert!(r.len <= out.len());
                Decoded::parse(&out[..r.len]);
            }
            let c = s.counters();
            assert_eq!(c.received, 1);
            assert_eq!(c.malformed, u64::from(result.is_err()));
        }
    }
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut s = server();
    let mut out = vec![0u8; 576];
    for _ in 0..20_000 {
        let len = rng.below(700);
        let payload: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        if let Ok(Some(r)) = s.handle(MAC, &payload, &mut out) {
            assert!(r.len <= out.len());
        }
    }
    assert_eq!(s.counters().received, 20_000);
}

#[test]
fn random_options_after_a_valid_header_never_panic() {
    // Pure garbage rarely gets past the cookie; this drives the option
    // walker and the state machine instead.
    let mut rng = Rng(42);
    let interesting = [0u8, 255, 50, 51, 53, 54, 55, 57, 61, 12, 80, 52];
    let mut s = server();
    let mut replies = 0;
    for i in 0..50_000 {
        let mut m = Msg::new(DISCOVER);
        m.options.clear();
        if rng.below(4) != 0 {
            m.options
                .extend_from_slice(&[53, 1, 1 + rng.below(9) as u8]);
        }
        m.end = rng.below(2) == 0;
        m.ciaddr = if rng.below(2) == 0 {
            guest_ip()
        } else {
            Ipv4Addr::from(rng.next() as u32)
        };
        m.flags = rng.next() as u16;
        for _ in 0..rng.below(8) {
            let code = if rng.below(3) == 0 {
                rng.byte()
            } else {
                interesting[rng.below(interesting.len())]
            };
            m.options.push(code);
            match rng.below(4) {
                0 => m.options.push(rng.byte()),
                1 => {}
                _ => {
                    let len = [0, 1, 2, 4, 7][rng.below(5)];
                    m.options.push(len as u8);
                    if code == 53 && len == 1 {
                        m.options.push(1 + rng.below(9) as u8);
                    } else {
                        m.options.extend((0..len).map(|_| rng.byte()));
                    }
                }
            }
        }
        let out_len = if i % 10 == 0 { rng.below(700) } else { 576 };
        let mut out = vec![0u8; out_len];
        let mac = if rng.below(2) == 0 { MAC } else { OTHER_MAC };
        if let Ok(Some(r)) = s.handle(mac, &m.bytes(), &mut out) {
            replies += 1;
            assert!(r.len >= 300 && r.len <= out_len.min(548));
            Decoded::parse(&out[..r.len]);
        }
    }
    assert!(
        replies > 1000,
        "the generator should reach the reply path ({replies})"
    );
}

// ---------------------------------------------------------------------------
// Cross-check against smoltcp, an independent implementation.

#[test]
fn smoltcp_parses_our_replies() {
    use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress};

    let mut s = server();
    let client_id = [1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let cases = [
        (
            Msg::new(DISCOVER).opt(61, &client_id),
            DhcpMessageType::Offer,
        ),
        (
            Msg::new(REQUEST)
                .server_id(server_ip())
                .requested(guest_ip()),
            DhcpMessageType::Ack,
        ),
        (
            Msg::new(REQUEST).requested(Ipv4Addr::new(1, 2, 3, 4)),
            DhcpMessageType::Nak,
        ),
        (Msg::new(DISCOVER).opt(80, &[]), DhcpMessageType::Ack),
    ];
    for (m, expected) in cases {
        let x = exchange(&mut s, &m).expect("reply");
        let packet = DhcpPacket::new_checked(&x.bytes[..]).expect("smoltcp accepts length");
        let repr = DhcpRepr::parse(&packet).expect("smoltcp parses reply");
        assert_eq!(repr.message_type, expected);
        assert_eq!(repr.transaction_id, XID);
        assert_eq!(repr.client_hardware_address, EthernetAddress(MAC));
        assert_eq!(repr.server_identifier, Some(server_ip()));
        if expected == DhcpMessageType::Nak {
            assert_eq!(repr.your_ip, Ipv4Addr::UNSPECIFIED);
            assert_eq!(repr.lease_duration, None);
            continue;
        }
        assert_eq!(repr.your_ip, guest_ip());
        assert_eq!(repr.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(repr.router, Some(Ipv4Addr::new(10, 0, 2, 1)));
        assert_eq!(repr.lease_duration, Some(3600));
        assert_eq!(repr.renew_duration, Some(1800));
        assert_eq!(repr.rebind_duration, Some(3150));
        let dns: Vec<Ipv4Addr> = repr.dns_servers.expect("dns").iter().copied().collect();
        assert_eq!(dns, [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]);
        if m.options.windows(2).any(|w| w == [61, 7]) {
            assert_eq!(repr.client_identifier, Some(EthernetAddress(MAC)));
        }
    }
}

#[test]
fn we_parse_smoltcp_requests() {
    use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress};

    let mut s = server();
    let params = [1u8, 3, 6, 15, 26, 119, 121];
    let mut repr = DhcpRepr {
        message_type: DhcpMessageType::Discover,
        transaction_id: 0x1234_5678,
        secs: 0,
        client_hardware_address: EthernetAddress(MAC),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: Some(EthernetAddress(MAC)),
        server_identifier: None,
        parameter_request_list: Some(&params),
        dns_servers: None,
        max_size: Some(1432),
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let emit = |repr: &DhcpRepr| {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        buf
    };

    let mut out = [0u8; 1500];
    let r = s.handle(MAC, &emit(&repr), &mut out).unwrap().unwrap();
    assert_eq!(r.kind, MessageKind::Offer);

    repr.message_type = DhcpMessageType::Request;
    repr.requested_ip = Some(guest_ip());
    repr.server_identifier = Some(server_ip());
    let r = s.handle(MAC, &emit(&repr), &mut out).unwrap().unwrap();
    assert_eq!(r.kind, MessageKind::Ack);
    let packet = DhcpPacket::new_checked(&out[..r.len]).unwrap();
    let reply = DhcpRepr::parse(&packet).unwrap();
    assert_eq!(reply.transaction_id, 0x1234_5678);
    assert_eq!(
        s.lease().unwrap().client_id.as_deref(),
        Some(&[1, 0x52, 0x54, 0, 0x12, 0x34, 0x56][..])
    );
}

// ---------------------------------------------------------------------------
// KubeVirt's dhcpOptions: NTP (42), TFTP server (66), boot file (67), private options.

fn with_extra() -> Dhcpv4Config {
    let mut c = config();
    c.extra = crate::ExtraOptions {
        ntp: vec![Ipv4Addr::new(198, 18, 1, 5), Ipv4Addr::new(198, 18, 1, 6)],
        tftp_server: Some("tftp.podwire.test".into()),
        boot_file: Some("pxelinux.0".into()),
        fqdn: Some("vm1.podwire.test".into()),
        private: vec![
            (240, b"extra.options.kubevirt.io".to_vec()),
            (254, vec![1, 2]),
        ],
    };
    c
}

#[test]
fn extra_options_are_offered() {
    let mut s = Dhcpv4Server::try_new(with_extra()).unwrap();
    let x = exchange(&mut s, &Msg::new(DISCOVER)).expect("offer");
    let d = &x.decoded;
    assert_eq!(d.get(42), Some(vec![198, 18, 1, 5, 198, 18, 1, 6]));
    assert_eq!(d.get(66), Some(b"tftp.podwire.test".to_vec()));
    assert_eq!(d.get(67), Some(b"pxelinux.0".to_vec()));
    assert_eq!(d.get(240), Some(b"extra.options.kubevirt.io".to_vec()));
    assert_eq!(d.get(254), Some(vec![1, 2]));
    assert_eq!(
        d.get(81),
        Some(b"\x0c\xff\xff\x03vm1\x07podwire\x04test\x00".to_vec())
    );
    assert_config_options(d);
    // Without them configured, none is sent.
    let x = exchange(&mut server(), &Msg::new(DISCOVER)).expect("offer");
    for code in [42, 66, 67, 81, 240, 254] {
        assert!(!x.decoded.has(code), "{code}");
    }
}

#[test]
fn bad_extra_options_are_configuration_errors() {
    let bad = |f: &dyn Fn(&mut crate::ExtraOptions)| {
        let mut c = config();
        f(&mut c.extra);
        c.validate().unwrap_err()
    };
    assert_eq!(
        bad(&|e| e.private = vec![(223, vec![1])]),
        ConfigError::Option {
            code: 223,
            reason: "not a site-specific option (224..=254)"
        }
    );
    assert_eq!(
        bad(&|e| e.private = vec![(255, vec![1])]),
        ConfigError::Option {
            code: 255,
            reason: "not a site-specific option (224..=254)"
        }
    );
    assert_eq!(
        bad(&|e| e.private = vec![(230, vec![1]), (230, vec![2])]),
        ConfigError::Option {
            code: 230,
            reason: "given twice"
        }
    );
    assert_eq!(
        bad(&|e| e.private = vec![(230, Vec::new())]),
        ConfigError::Option {
            code: 230,
            reason: "empty"
        }
    );
    assert_eq!(
        bad(&|e| e.boot_file = Some("x".repeat(256))),
        ConfigError::Option {
            code: 67,
            reason: "longer than 255 bytes"
        }
    );
    assert!(matches!(
        bad(&|e| e.fqdn = Some("a..b".into())),
        ConfigError::Option { code: 81, .. }
    ));
    assert_eq!(
        bad(&|e| e.ntp = vec![Ipv4Addr::BROADCAST]),
        ConfigError::NtpServer(Ipv4Addr::BROADCAST)
    );
}
