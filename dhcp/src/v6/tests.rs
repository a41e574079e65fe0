//! DHCPv6 behaviour: client messages built by hand, replies decoded by a
//! small independent decoder here.

use std::net::Ipv6Addr;

use crate::error::{Dhcpv6ConfigError, Dhcpv6Error};
use crate::v6::server::on_link;
use crate::v6::*;

const ROUTER_MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];
/// DUID-LLT of the guest: type 1, hardware 1, time, MAC.
const CLIENT_DUID: &[u8] = &[
    0, 1, 0, 1, 0x2c, 0x4d, 0x1e, 0x12, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
];
const OTHER_DUID: &[u8] = &[0, 3, 0, 1, 0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
const XID: [u8; 3] = [0xab, 0xcd, 0xef];
const IAID: u32 = 0x1234_5678;

const SOLICIT: u8 = 1;
const ADVERTISE: u8 = 2;
const REQUEST: u8 = 3;
const CONFIRM: u8 = 4;
const RENEW: u8 = 5;
const REBIND: u8 = 6;
const REPLY: u8 = 7;
const RELEASE: u8 = 8;
const DECLINE: u8 = 9;
const RECONFIGURE: u8 = 10;
const INFORMATION_REQUEST: u8 = 11;
const RELAY_FORW: u8 = 12;
const RELAY_REPL: u8 = 13;

const SUCCESS: u16 = 0;
const NO_ADDRS_AVAIL: u16 = 2;
const NOT_ON_LINK: u16 = 4;
const NO_PREFIX_AVAIL: u16 = 6;

fn addr(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn guest() -> Ipv6Addr {
    addr("2001:db8:1:2::15")
}

fn server_duid() -> Vec<u8> {
    duid_ll(ROUTER_MAC)
}

fn config() -> Dhcpv6Config {
    Dhcpv6Config {
        server_duid: server_duid(),
        guest_addr: guest(),
        prefix_len: 64,
        dns: vec![addr("2001:db8::53"), addr("fd00::3")],
        search: vec!["svc.cluster.local".into(), "cluster.local".into()],
        preferred_lifetime: 3600,
        valid_lifetime: 7200,
    }
}

fn server() -> Dhcpv6Server {
    Dhcpv6Server::try_new(config()).expect("test config is valid")
}

/// A client message under construction.
#[derive(Clone)]
struct Msg {
    msg_type: u8,
    xid: [u8; 3],
    options: Vec<u8>,
}

fn option(code: u16, data: &[u8]) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn iaaddr(a: Ipv6Addr, preferred: u32, valid: u32) -> Vec<u8> {
    let mut data = a.octets().to_vec();
    data.extend_from_slice(&preferred.to_be_bytes());
    data.extend_from_slice(&valid.to_be_bytes());
    option(5, &data)
}

impl Msg {
    /// A bare message: no options at all.
    fn bare(msg_type: u8) -> Self {
        Msg {
            msg_type,
            xid: XID,
            options: Vec::new(),
        }
    }

    /// With our client id and an elapsed-time option, as clients send.
    fn new(msg_type: u8) -> Self {
        Self::bare(msg_type).client(CLIENT_DUID).opt(8, &[0, 0])
    }

    fn opt(mut self, code: u16, data: &[u8]) -> Self {
        self.options.extend(option(code, data));
        self
    }

    fn client(self, duid: &[u8]) -> Self {
        self.opt(1, duid)
    }

    fn server(self, duid: &[u8]) -> Self {
        self.opt(2, duid)
    }

    fn ours(self) -> Self {
        self.server(&server_duid())
    }

    fn ia_na(self, iaid: u32, addrs: &[Ipv6Addr]) -> Self {
        let mut data = iaid.to_be_bytes().to_vec();
        data.extend_from_slice(&[0; 8]);
        for &a in addrs {
            data.extend(iaaddr(a, 0, 0));
        }
        self.opt(3, &data)
    }

    fn ia_ta(self, iaid: u32, addrs: &[Ipv6Addr]) -> Self {
        let mut data = iaid.to_be_bytes().to_vec();
        for &a in addrs {
            data.extend(iaaddr(a, 0, 0));
        }
        self.opt(4, &data)
    }

    fn ia_pd(self, iaid: u32) -> Self {
        let mut data = iaid.to_be_bytes().to_vec();
        data.extend_from_slice(&[0; 8]);
        // An IAPREFIX hint: ::/56.
        let mut prefix = vec![0; 8];
        prefix.push(56);
        prefix.extend_from_slice(&[0; 16]);
        data.extend(option(26, &prefix));
        self.opt(25, &data)
    }

    fn oro(self, codes: &[u16]) -> Self {
        let data: Vec<u8> = codes.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.opt(6, &data)
    }

    fn rapid(self) -> Self {
        self.opt(14, &[])
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![self.msg_type];
        b.extend_from_slice(&self.xid);
        b.extend_from_slice(&self.options);
        b
    }
}

/// An IA from a reply.
#[derive(Debug, PartialEq)]
struct DecodedIa {
    code: u16,
    iaid: u32,
    t1: Option<u32>,
    t2: Option<u32>,
    /// (address, preferred, valid)
    addrs: Vec<(Ipv6Addr, u32, u32)>,
    status: Option<u16>,
}

/// A reply decoded by this module's own reader.
#[derive(Debug)]
struct Decoded {
    msg_type: u8,
    xid: [u8; 3],
    options: Vec<(u16, Vec<u8>)>,
}

fn split_options(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 4, "option header cut");
        let code = u16::from_be_bytes([b[0], b[1]]);
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        assert!(b.len() >= 4 + len, "option {code} overruns");
        out.push((code, b[4..4 + len].to_vec()));
        b = &b[4 + len..];
    }
    out
}

fn status_of(options: &[(u16, Vec<u8>)]) -> Option<u16> {
    options.iter().find(|(c, _)| *c == 13).map(|(_, d)| {
        assert!(d.len() >= 2);
        assert!(
            std::str::from_utf8(&d[2..]).is_ok(),
            "status message is UTF-8"
        );
        u16::from_be_bytes([d[0], d[1]])
    })
}

impl Decoded {
    fn parse(b: &[u8]) -> Self {
        assert!(b.len() >= 4);
        Decoded {
            msg_type: b[0],
            xid: [b[1], b[2], b[3]],
            options: split_options(&b[4..]),
        }
    }

    fn get(&self, code: u16) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d.as_slice())
    }

    fn count(&self, code: u16) -> usize {
        self.options.iter().filter(|(c, _)| *c == code).count()
    }

    fn codes(&self) -> Vec<u16> {
        self.options.iter().map(|(c, _)| *c).collect()
    }

    fn status(&self) -> Option<u16> {
        status_of(&self.options)
    }

    fn ias(&self) -> Vec<DecodedIa> {
        self.options
            .iter()
            .filter(|(c, _)| matches!(c, 3 | 4 | 25))
            .map(|(code, d)| {
                let iaid = u32::from_be_bytes(d[0..4].try_into().unwrap());
                let (t1, t2, rest) = if *code == 4 {
                    (None, None, &d[4..])
                } else {
                    (
                        Some(u32::from_be_bytes(d[4..8].try_into().unwrap())),
                        Some(u32::from_be_bytes(d[8..12].try_into().unwrap())),
                        &d[12..],
                    )
                };
                let inner = split_options(rest);
                let addrs = inner
                    .iter()
                    .filter(|(c, _)| *c == 5)
                    .map(|(_, a)| {
                        assert_eq!(a.len(), 24, "IAADDR without options");
                        (
                            Ipv6Addr::from(<[u8; 16]>::try_from(&a[..16]).unwrap()),
                            u32::from_be_bytes(a[16..20].try_into().unwrap()),
                            u32::from_be_bytes(a[20..24].try_into().unwrap()),
                        )
                    })
                    .collect();
                DecodedIa {
                    code: *code,
                    iaid,
                    t1,
                    t2,
                    addrs,
                    status: status_of(&inner),
                }
            })
            .collect()
    }

    fn dns(&self) -> Vec<Ipv6Addr> {
        self.get(23)
            .map(|d| {
                d.chunks(16)
                    .map(|c| Ipv6Addr::from(<[u8; 16]>::try_from(c).unwrap()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn domains(&self) -> Vec<String> {
        let Some(mut d) = self.get(24) else {
            return Vec::new();
        };
        let mut names = Vec::new();
        while !d.is_empty() {
            let mut labels = Vec::new();
            loop {
                let len = usize::from(d[0]);
                d = &d[1..];
                if len == 0 {
                    break;
                }
                assert!(len <= 63, "compressed or bad label");
                labels.push(String::from_utf8(d[..len].to_vec()).unwrap());
                d = &d[len..];
            }
            names.push(labels.join("."));
        }
        names
    }
}

fn exchange(s: &mut Dhcpv6Server, m: &Msg) -> Option<Decoded> {
    let mut out = [0u8; MAX_DHCPV6_REPLY];
    let len = s.handle(&m.bytes(), &mut out).expect("well-formed")?;
    assert!(len <= MAX_DHCPV6_REPLY);
    let d = Decoded::parse(&out[..len]);
    assert_eq!(d.xid, m.xid, "transaction id echoed");
    assert_eq!(d.get(2), Some(&server_duid()[..]), "server id");
    assert_eq!(d.count(2), 1);
    assert!(d.count(1) <= 1);
    Some(d)
}

fn assert_assigned(d: &Decoded) {
    let ias = d.ias();
    assert_eq!(
        ias[0],
        DecodedIa {
            code: 3,
            iaid: IAID,
            t1: Some(1800),
            t2: Some(2880),
            addrs: vec![(guest(), 3600, 7200)],
            status: None,
        }
    );
    assert_eq!(d.status(), None);
    assert_eq!(d.dns(), [addr("2001:db8::53"), addr("fd00::3")]);
    assert_eq!(d.domains(), ["svc.cluster.local", "cluster.local"]);
}

#[test]
fn solicit_gets_advertise_with_the_address() {
    let mut s = server();
    let d = exchange(&mut s, &Msg::new(SOLICIT).ia_na(IAID, &[]).oro(&[23, 24])).unwrap();
    assert_eq!(d.msg_type, ADVERTISE);
    assert_eq!(d.get(1), Some(CLIENT_DUID));
    assert_eq!(d.get(7), Some(&[255][..]), "preference 255");
    assert_eq!(d.get(14), None, "no rapid commit");
    assert_assigned(&d);
    assert_eq!(d.codes(), [2, 1, 7, 3, 23, 24]);
    // An advertisement commits nothing.
    assert_eq!(s.binding(), None);
    let c = s.counters();
    assert_eq!(
        (c.received, c.solicits, c.advertises, c.replies),
        (1, 1, 1, 0)
    );
}

#[test]
fn solicit_address_hints_are_ignored() {
    let mut s = server();
    let d = exchange(
        &mut s,
        &Msg::new(SOLICIT).ia_na(IAID, &[addr("2001:db8:9::1")]),
    )
    .unwrap();
    assert_eq!(d.ias()[0].addrs, [(guest(), 3600, 7200)]);
    assert_eq!(s.counters().foreign_addresses, 0);
}

#[test]
fn rapid_commit_solicit_gets_reply_and_binds() {
    let mut s = server();
    let d = exchange(&mut s, &Msg::new(SOLICIT).rapid().ia_na(IAID, &[])).unwrap();
    assert_eq!(d.msg_type, REPLY);
    assert_eq!(d.get(14), Some(&[][..]), "rapid commit echoed");
    assert_eq!(d.get(7), None, "no preference in a reply");
    assert_assigned(&d);
    assert_eq!(
        s.binding(),
        Some(&Dhcpv6Binding {
            client_duid: CLIENT_DUID.to_vec(),
            iaid: IAID,
            addr: guest(),
        })
    );
    let c = s.counters();
    assert_eq!(
        (c.solicits, c.replies, c.rapid_commits, c.advertises),
        (1, 1, 1, 0)
    );
}

#[test]
fn request_renew_rebind_get_reply_and_bind() {
    for (msg_type, with_server_id) in [(REQUEST, true), (RENEW, true), (REBIND, false)] {
        let mut s = server();
        let mut m = Msg::new(msg_type).ia_na(IAID, &[guest()]);
        if with_server_id {
            m = m.ours();
        }
        let d = exchange(&mut s, &m).unwrap_or_else(|| panic!("type {msg_type}"));
        assert_eq!(d.msg_type, REPLY);
        assert_eq!(d.get(1), Some(CLIENT_DUID));
        assert_assigned(&d);
        assert_eq!(d.ias().len(), 1);
        assert_eq!(s.binding().map(|b| b.iaid), Some(IAID));
        assert_eq!(s.counters().replies, 1);
        assert_eq!(s.counters().foreign_addresses, 0);
    }
    let mut s = server();
    exchange(&mut s, &Msg::new(REQUEST).ours().ia_na(1, &[])).unwrap();
    exchange(&mut s, &Msg::new(RENEW).ours().ia_na(1, &[guest()])).unwrap();
    exchange(&mut s, &Msg::new(REBIND).ia_na(1, &[guest()])).unwrap();
    let c = s.counters();
    assert_eq!((c.requests, c.renews, c.rebinds, c.replies), (1, 1, 1, 3));
}

#[test]
fn rebind_naming_us_is_accepted() {
    // RFC 8415 wants no server id in REBIND; one naming us is harmless.
    let mut s = server();
    let d = exchange(&mut s, &Msg::new(REBIND).ours().ia_na(IAID, &[guest()])).unwrap();
    assert_assigned(&d);
    let d = exchange(&mut s, &Msg::new(SOLICIT).ours().ia_na(IAID, &[])).unwrap();
    assert_eq!(d.msg_type, ADVERTISE);
}

#[test]
fn foreign_addresses_are_returned_with_zero_lifetimes() {
    let mut s = server();
    let stale = addr("2001:db8:9::1");
    let d = exchange(
        &mut s,
        &Msg::new(RENEW).ours().ia_na(IAID, &[stale, guest()]),
    )
    .unwrap();
    assert_eq!(
        d.ias()[0].addrs,
        [(guest(), 3600, 7200), (stale, 0, 0)],
        "the right address first, the stale one revoked"
    );
    assert_eq!(s.counters().foreign_addresses, 1);
}

#[test]
fn changed_guest_address_renumbers_at_renew() {
    let mut s = server();
    exchange(&mut s, &Msg::new(REQUEST).ours().ia_na(IAID, &[])).unwrap();
    assert!(s.binding().is_some());
    let mut cfg = config();
    cfg.guest_addr = addr("2001:db8:1:2::99");
    s.set_config(cfg);
    assert_eq!(s.binding(), None);
    let d = exchange(&mut s, &Msg::new(RENEW).ours().ia_na(IAID, &[guest()])).unwrap();
    assert_eq!(
        d.ias()[0].addrs,
        [(addr("2001:db8:1:2::99"), 3600, 7200), (guest(), 0, 0)]
    );
    assert_eq!(s.binding().map(|b| b.addr), Some(addr("2001:db8:1:2::99")));
}

#[test]
fn release_replies_success_and_unbinds_only_its_client() {
    let mut s = server();
    exchange(&mut s, &Msg::new(REQUEST).ours().ia_na(IAID, &[])).unwrap();

    // A late release from another client keeps the binding.
    let other = Msg::bare(RELEASE)
        .client(OTHER_DUID)
        .ours()
        .ia_na(7, &[guest()]);
    let d = exchange(&mut s, &other).unwrap();
    assert_eq!(d.msg_type, REPLY);
    assert_eq!(d.status(), Some(SUCCESS));
    assert!(s.binding().is_some());

    let d = exchange(&mut s, &Msg::new(RELEASE).ours().ia_na(IAID, &[guest()])).unwrap();
    assert_eq!(d.msg_type, REPLY);
    assert_eq!(d.get(1), Some(CLIENT_DUID));
    assert_eq!(d.status(), Some(SUCCESS));
    assert!(d.ias().is_empty());
    assert_eq!(d.get(23), None, "no configuration in a release reply");
    assert_eq!(s.binding(), None);
    assert_eq!(s.counters().releases, 2);
}

#[test]
fn decline_replies_success_and_unbinds() {
    let mut s = server();
    exchange(&mut s, &Msg::new(REQUEST).ours().ia_na(IAID, &[])).unwrap();
    let d = exchange(&mut s, &Msg::new(DECLINE).ours().ia_na(IAID, &[guest()])).unwrap();
    assert_eq!(d.msg_type, REPLY);
    assert_eq!(d.status(), Some(SUCCESS));
    assert_eq!(s.binding(), None);
    assert_eq!(s.counters().declines, 1);
}

#[test]
fn confirm_checks_addresses_are_on_link() {
    let cases: &[(&[&str], Option<u16>)] = &[
        (&["2001:db8:1:2::15"], Some(SUCCESS)),
        // Same /64, another interface identifier.
        (&["2001:db8:1:2:aaaa:bbbb:cccc:dddd"], Some(SUCCESS)),
        (&["2001:db8:1:2::15", "2001:db8:1:2::16"], Some(SUCCESS)),
        // Neighbouring /64.
        (&["2001:db8:1:3::15"], Some(NOT_ON_LINK)),
        (&["2001:db8:1:2::15", "2001:db8:9::1"], Some(NOT_ON_LINK)),
        (&["fe80::1"], Some(NOT_ON_LINK)),
        // Nothing to confirm: no reply (RFC 8415 18.3.3).
        (&[], None),
    ];
    for (addrs, expected) in cases {
        let mut s = server();
        let list: Vec<Ipv6Addr> = addrs.iter().map(|a| addr(a)).collect();
        let d = exchange(&mut s, &Msg::new(CONFIRM).ia_na(IAID, &list));
        assert_eq!(d.as_ref().and_then(|d| d.status()), *expected, "{addrs:?}");
        if let Some(d) = d {
            assert_eq!(d.msg_type, REPLY);
            assert_eq!(d.get(1), Some(CLIENT_DUID));
            assert!(d.ias().is_empty(), "no IA in a confirm reply");
        }
        let c = s.counters();
        assert_eq!(c.confirms, 1);
        assert_eq!(c.not_on_link, u64::from(*expected == Some(NOT_ON_LINK)));
        assert_eq!(
            c.ignored_confirm_without_addresses,
            u64::from(expected.is_none())
        );
    }

    // Addresses in IA_TA count too; prefixes in IA_PD do not.
    let mut s = server();
    let m = Msg::new(CONFIRM).ia_ta(1, &[addr("2001:db8:9::1")]);
    assert_eq!(exchange(&mut s, &m).unwrap().status(), Some(NOT_ON_LINK));
    let m = Msg::new(CONFIRM).ia_pd(1);
    assert!(exchange(&mut s, &m).is_none());
}

#[test]
fn on_link_is_the_guest_slash_64() {
    let g = guest();
    assert!(on_link(g, g, 64));
    assert!(on_link(addr("2001:db8:1:2::"), g, 64));
    assert!(on_link(addr("2001:db8:1:2:ffff:ffff:ffff:ffff"), g, 64));
    assert!(!on_link(addr("2001:db8:1:3::15"), g, 64));
    assert!(!on_link(addr("2001:db8:1:1:ffff:ffff:ffff:ffff"), g, 64));
    assert!(!on_link(Ipv6Addr::UNSPECIFIED, g, 64));
    // A /120 (podwire's default guest subnet) is narrower than the /64 around it.
    let g = addr("fd10:0:2::2");
    assert!(on_link(addr("fd10:0:2::ff"), g, 120));
    assert!(!on_link(addr("fd10:0:2::100"), g, 120));
    assert!(on_link(g, g, 128));
}

#[test]
fn information_request_gets_configuration_only() {
    let mut s = server();
    let d = exchange(&mut s, &Msg::new(INFORMATION_REQUEST).oro(&[23, 24])).unwrap();
    assert_eq!(d.msg_type, REPLY);
    assert_eq!(d.codes(), [2, 1, 23, 24]);
    assert_eq!(d.dns(), [addr("2001:db8::53"), addr("fd00::3")]);
    assert_eq!(d.domains(), ["svc.cluster.local", "cluster.local"]);

    // A client id is optional here.
    let d = exchange(&mut s, &Msg::bare(INFORMATION_REQUEST)).unwrap();
    assert_eq!(d.codes(), [2, 23, 24]);
    // One naming us is fine, another server is not.
    assert!(exchange(&mut s, &Msg::new(INFORMATION_REQUEST).ours()).is_some());
    assert!(exchange(&mut s, &Msg::new(INFORMATION_REQUEST).server(OTHER_DUID)).is_none());
    // IAs are not allowed (RFC 8415 16.12).
    assert!(exchange(&mut s, &Msg::new(INFORMATION_REQUEST).ia_na(IAID, &[])).is_none());
    let c = s.counters();
    assert_eq!(c.information_requests, 5);
    assert_eq!(c.replies, 3);
    assert_eq!(c.ignored_other_server, 1);
    assert_eq!(c.ignored_ia_in_information_request, 1);
    assert_eq!(c.ignored, 2);
    assert_eq!(s.binding(), None);
}

#[test]
fn dns_options_are_sent_whatever_the_option_request() {
    let mut s = server();
    for m in [
        Msg::new(SOLICIT).ia_na(IAID, &[]),
        Msg::new(SOLICIT).ia_na(IAID, &[]).oro(&[]),
        Msg::new(SOLICIT).ia_na(IAID, &[]).oro(&[82]),
        Msg::new(SOLICIT).ia_na(IAID, &[]).oro(&[24, 23]),
    ] {
        let d = exchange(&mut s, &m).unwrap();
        assert_eq!(d.count(23), 1);
        assert_eq!(d.count(24), 1);
    }
    // And are left out when not configured.
    let mut cfg = config();
    cfg.dns.clear();
    cfg.search.clear();
    let mut s = Dhcpv6Server::try_new(cfg).unwrap();
    let d = exchange(&mut s, &Msg::new(INFORMATION_REQUEST).oro(&[23, 24])).unwrap();
    assert_eq!(d.codes(), [2, 1]);
}

#[test]
fn another_servers_messages_are_ignored() {
    for msg_type in [SOLICIT, REQUEST, CONFIRM, RENEW, REBIND, RELEASE, DECLINE] {
        let mut s = server();
        let m = Msg::new(msg_type)
            .server(OTHER_DUID)
            .ia_na(IAID, &[guest()]);
        assert!(exchange(&mut s, &m).is_none(), "type {msg_type}");
        let c = s.counters();
        assert_eq!(
            (c.ignored, c.ignored_other_server),
            (1, 1),
            "type {msg_type}"
        );
        assert_eq!(c.replies + c.advertises, 0);
    }
    // A server id that differs only in length is still another server.
    let mut s = server();
    let mut longer = server_duid();
    longer.push(0);
    assert!(exchange(&mut s, &Msg::new(REQUEST).server(&longer).ia_na(IAID, &[])).is_none());
    assert_eq!(s.binding(), None);
}

#[test]
fn missing_identifiers_are_ignored() {
    for msg_type in [REQUEST, RENEW, RELEASE, DECLINE] {
        let mut s = server();
        assert!(exchange(&mut s, &Msg::new(msg_type).ia_na(IAID, &[guest()])).is_none());
        assert_eq!(s.counters().ignored_missing_server_id, 1, "type {msg_type}");
    }
    for msg_type in [SOLICIT, REQUEST, CONFIRM, RENEW, REBIND, RELEASE, DECLINE] {
        let mut s = server();
        let m = Msg::bare(msg_type).ours().ia_na(IAID, &[guest()]);
        assert!(exchange(&mut s, &m).is_none(), "type {msg_type}");
        let c = s.counters();
        assert_eq!(
            (c.ignored, c.ignored_missing_client_id),
            (1, 1),
            "type {msg_type}"
        );
    }
}

#[test]
fn relay_and_server_messages_are_ignored_unparsed() {
    let mut s = server();
    let mut out = [0u8; MAX_DHCPV6_REPLY];
    for msg_type in [RELAY_FORW, RELAY_REPL] {
        // Not even a valid relay header: still just ignored.
        assert_eq!(s.handle(&[msg_type, 0xff], &mut out), Ok(None));
        assert_eq!(s.handle(&Msg::new(msg_type).bytes(), &mut out), Ok(None));
    }
    for msg_type in [0, ADVERTISE, REPLY, RECONFIGURE, 14, 20, 35, 255] {
        assert_eq!(s.handle(&Msg::new(msg_type).bytes(), &mut out), Ok(None));
        assert_eq!(s.handle(&[msg_type], &mut out), Ok(None));
    }
    let c = s.counters();
    assert_eq!(c.ignored_relay, 4);
    assert_eq!(c.ignored_unsupported_type, 16);
    assert_eq!(c.received, 20);
    assert_eq!(c.malformed, 0);
    assert_eq!(c.ignored, 0);
}

#[test]
fn unfilled_ias_get_their_status() {
    let mut s = server();
    let m = Msg::new(REQUEST)
        .ours()
        .ia_pd(0xaa)
        .ia_na(IAID, &[])
        .ia_ta(0xbb, &[])
        .ia_na(0xcc, &[]);
    let d = exchange(&mut s, &m).unwrap();
    let ias = d.ias();
    assert_eq!(ias.len(), 4);
    assert_eq!(ias[0].iaid, IAID, "the address-bearing IA_NA first");
    assert_eq!(ias[0].addrs, [(guest(), 3600, 7200)]);
    let rest: Vec<_> = ias[1..]
        .iter()
        .map(|ia| (ia.code, ia.iaid, ia.t1, ia.status, ia.addrs.len()))
        .collect();
    assert_eq!(
        rest,
        [
            (25, 0xaa, Some(0), Some(NO_PREFIX_AVAIL), 0),
            (4, 0xbb, None, Some(NO_ADDRS_AVAIL), 0),
            (3, 0xcc, Some(0), Some(NO_ADDRS_AVAIL), 0),
        ]
    );
    assert_eq!(d.status(), None);
    assert_eq!(s.binding().map(|b| b.iaid), Some(IAID));
}

#[test]
fn no_ia_na_gets_only_no_addrs_avail() {
    for m in [
        Msg::new(SOLICIT),
        Msg::new(SOLICIT).ia_pd(1),
        Msg::new(SOLICIT).rapid().ia_ta(1, &[]),
        Msg::new(REQUEST).ours().ia_pd(1),
        Msg::new(RENEW).ours(),
    ] {
        let mut s = server();
        let d = exchange(&mut s, &m).unwrap();
        assert_eq!(d.status(), Some(NO_ADDRS_AVAIL));
        assert!(d.ias().is_empty());
        assert_eq!(d.get(23), None);
        assert_eq!(s.binding(), None);
    }
}

#[test]
fn infinite_and_clamped_lifetimes() {
    let mut cfg = config();
    cfg.preferred_lifetime = u32::MAX;
    cfg.valid_lifetime = u32::MAX;
    assert_eq!((cfg.t1(), cfg.t2()), (u32::MAX, u32::MAX));
    let mut s = Dhcpv6Server::try_new(cfg).unwrap();
    let d = exchange(&mut s, &Msg::new(SOLICIT).ia_na(IAID, &[])).unwrap();
    let ia = &d.ias()[0];
    assert_eq!((ia.t1, ia.t2), (Some(u32::MAX), Some(u32::MAX)));
    assert_eq!(ia.addrs, [(guest(), u32::MAX, u32::MAX)]);

    // Lenient constructor: preferred above valid is clamped.
    let mut cfg = config();
    cfg.preferred_lifetime = 10_000;
    cfg.valid_lifetime = 1_000;
    assert_eq!(
        cfg.validate(),
        Err(Dhcpv6ConfigError::Lifetimes {
            preferred: 10_000,
            valid: 1_000
        })
    );
    assert_eq!((cfg.t1(), cfg.t2()), (500, 800));
    let mut s = Dhcpv6Server::new(cfg);
    let d = exchange(&mut s, &Msg::new(SOLICIT).ia_na(IAID, &[])).unwrap();
    assert_eq!(d.ias()[0].addrs, [(guest(), 1_000, 1_000)]);

    // 0.8 of an odd large value rounds down without overflow.
    let mut cfg = config();
    cfg.preferred_lifetime = u32::MAX - 1;
    cfg.valid_lifetime = u32::MAX;
    assert_eq!(cfg.t1(), (u32::MAX - 1) / 2);
    assert_eq!(cfg.t2(), ((u64::from(u32::MAX - 1) * 4) / 5) as u32);
}

#[test]
fn duid_ll_format() {
    assert_eq!(
        duid_ll([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
        [0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]
    );
}

#[test]
fn configuration_validation() {
    assert_eq!(config().validate(), Ok(()));
    type Case = (fn(&mut Dhcpv6Config), Dhcpv6ConfigError);
    let cases: Vec<Case> = vec![
        (
            |c| c.server_duid = vec![0],
            Dhcpv6ConfigError::ServerDuid { len: 1 },
        ),
        (
            |c| c.server_duid = vec![0; 131],
            Dhcpv6ConfigError::ServerDuid { len: 131 },
        ),
        (
            |c| c.guest_addr = Ipv6Addr::UNSPECIFIED,
            Dhcpv6ConfigError::GuestAddr {
                addr: Ipv6Addr::UNSPECIFIED,
                reason: "unspecified",
            },
        ),
        (
            |c| c.guest_addr = "fe80::1".parse().unwrap(),
            Dhcpv6ConfigError::GuestAddr {
                addr: "fe80::1".parse().unwrap(),
                reason: "link-local (the guest forms its own)",
            },
        ),
        (
            |c| c.guest_addr = "ff02::1".parse().unwrap(),
            Dhcpv6ConfigError::GuestAddr {
                addr: "ff02::1".parse().unwrap(),
                reason: "multicast",
            },
        ),
        (
            |c| c.dns.push(Ipv6Addr::LOCALHOST),
            Dhcpv6ConfigError::DnsServer(Ipv6Addr::LOCALHOST),
        ),
        (
            |c| {
                c.valid_lifetime = 0;
                c.preferred_lifetime = 0;
            },
            Dhcpv6ConfigError::ZeroLifetime,
        ),
        (
            |c| c.search.insert(0, "x.".repeat(200)),
            Dhcpv6ConfigError::SearchDomain {
                name: "x.".repeat(200),
                reason: "name longer than 255 bytes on the wire",
            },
        ),
    ];
    for (i, (mutate, expected)) in cases.into_iter().enumerate() {
        let mut c = config();
        mutate(&mut c);
        assert_eq!(c.validate(), Err(expected.clone()), "case {i}");
        assert_eq!(Dhcpv6Server::try_new(c).err(), Some(expected), "case {i}");
    }

    // try_set_config keeps the old configuration on error.
    let mut s = server();
    let mut bad = config();
    bad.dns.push(Ipv6Addr::UNSPECIFIED);
    assert!(s.try_set_config(bad.clone()).is_err());
    assert_eq!(s.config(), &config());
    // The lenient path drops only the bad server.
    s.set_config(bad);
    let d = exchange(&mut s, &Msg::new(INFORMATION_REQUEST)).unwrap();
    assert_eq!(d.dns(), [addr("2001:db8::53"), addr("fd00::3")]);
    let mut bad = config();
    bad.search.push("a..b".into());
    s.set_config(bad);
    let d = exchange(&mut s, &Msg::new(INFORMATION_REQUEST)).unwrap();
    assert_eq!(d.domains(), ["svc.cluster.local", "cluster.local"]);
}

// ---------------------------------------------------------------------------
// Malformed input, buffers and robustness.

fn expect_malformed(payload: &[u8], expected: Dhcpv6Error) {
    let mut s = server();
    let mut out = [0u8; MAX_DHCPV6_REPLY];
    assert_eq!(s.handle(payload, &mut out), Err(expected));
    let c = s.counters();
    assert_eq!((c.received, c.malformed), (1, 1));
}

#[test]
fn malformed_messages_are_rejected() {
    use Dhcpv6Error::*;
    expect_malformed(&[], Truncated { len: 0 });
    expect_malformed(&[SOLICIT, 1, 2], Truncated { len: 3 });

    let base = Msg::new(SOLICIT).ia_na(IAID, &[]);
    let mut b = base.bytes();
    b.extend_from_slice(&[0, 1, 0]);
    expect_malformed(
        &b,
        TruncatedOptionHeader {
            offset: b.len() - 3,
        },
    );
    let mut b = base.bytes();
    let at = b.len();
    b.extend_from_slice(&[0, 99, 0, 5, 1, 2, 3, 4]);
    expect_malformed(
        &b,
        OptionOverrun {
            code: 99,
            offset: at,
        },
    );

    expect_malformed(
        &Msg::new(SOLICIT).client(CLIENT_DUID).bytes(),
        DuplicateOption { code: 1 },
    );
    expect_malformed(
        &Msg::new(REQUEST).ours().ours().bytes(),
        DuplicateOption { code: 2 },
    );
    for len in [0, 1, 131] {
        expect_malformed(
            &Msg::bare(SOLICIT).client(&vec![0; len]).bytes(),
            BadOption {
                code: 1,
                len,
                reason: "a DUID is 2 to 130 bytes",
            },
        );
        expect_malformed(
            &Msg::new(REQUEST).server(&vec![0; len]).bytes(),
            BadOption {
                code: 2,
                len,
                reason: "a DUID is 2 to 130 bytes",
            },
        );
    }
    expect_malformed(
        &Msg::new(SOLICIT).opt(14, &[0]).bytes(),
        BadOption {
            code: 14,
            len: 1,
            reason: "rapid commit carries no data",
        },
    );
    expect_malformed(
        &Msg::new(SOLICIT).opt(6, &[0, 23, 0]).bytes(),
        BadOption {
            code: 6,
            len: 3,
            reason: "odd length for a list of option codes",
        },
    );
    for (code, len) in [(3u16, 11usize), (4, 3), (25, 11)] {
        expect_malformed(
            &Msg::new(SOLICIT).opt(code, &vec![0; len]).bytes(),
            BadOption {
                code,
                len,
                reason: "shorter than its fixed fields",
            },
        );
    }

    // Inside an IA: an IAADDR too short for its fields, an inner option
    // overrunning the IA, and one overrunning the IAADDR's own options.
    let mut ia = IAID.to_be_bytes().to_vec();
    ia.extend_from_slice(&[0; 8]);
    let mut short = ia.clone();
    short.extend(option(5, &[0; 23]));
    let m = Msg::new(SOLICIT).opt(3, &short).bytes();
    expect_malformed(
        &m,
        BadOption {
            code: 5,
            len: 23,
            reason: "shorter than its fixed fields",
        },
    );
    let mut overrun = ia.clone();
    overrun.extend_from_slice(&[0, 5, 0, 30]);
    overrun.extend_from_slice(&[0; 24]);
    let m = Msg::new(SOLICIT).opt(3, &overrun).bytes();
    let ia_data = Msg::new(SOLICIT).bytes().len() + 4;
    expect_malformed(
        &m,
        OptionOverrun {
            code: 5,
            offset: ia_data + 12,
        },
    );
    let mut nested = ia.clone();
    let mut addr_data = guest().octets().to_vec();
    addr_data.extend_from_slice(&[0; 8]);
    addr_data.extend_from_slice(&[0, 13, 0, 9, 0, 0]);
    nested.extend(option(5, &addr_data));
    let m = Msg::new(SOLICIT).opt(3, &nested).bytes();
    expect_malformed(
        &m,
        OptionOverrun {
            code: 13,
            offset: ia_data + 12 + 4 + 24,
        },
    );
    // IAPREFIX inside IA_PD is checked the same way.
    let mut pd = ia.clone();
    pd.extend(option(26, &[0; 24]));
    expect_malformed(
        &Msg::new(SOLICIT).opt(25, &pd).bytes(),
        BadOption {
            code: 26,
            len: 24,
            reason: "shorter than its fixed fields",
        },
    );
}

#[test]
fn lenient_framing_is_accepted() {
    let mut s = server();
    // Unknown options, elapsed time of odd size, status options inside an
    // IAADDR, an empty ORO: all fine.
    let mut ia = IAID.to_be_bytes().to_vec();
    ia.extend_from_slice(&[0; 8]);
    let mut a = guest().octets().to_vec();
    a.extend_from_slice(&[0; 8]);
    a.extend(option(13, &[0, 0, b'o', b'k']));
    ia.extend(option(5, &a));
    ia.extend(option(999, &[1, 2, 3]));
    let m = Msg::new(REQUEST)
        .ours()
        .opt(3, &ia)
        .opt(8, &[1])
        .opt(0xffff, &[])
        .oro(&[]);
    let d = exchange(&mut s, &m).unwrap();
    assert_assigned(&d);
}

#[test]
fn every_truncation_of_a_valid_solicit_is_handled() {
    let packets = [
        Msg::new(SOLICIT)
            .ia_na(IAID, &[guest()])
            .ia_pd(3)
            .oro(&[23, 24])
            .rapid()
            .bytes(),
        Msg::new(REQUEST).ours().ia_na(IAID, &[guest()]).bytes(),
        Msg::new(CONFIRM).ia_na(IAID, &[guest()]).bytes(),
    ];
    let mut out = [0u8; MAX_DHCPV6_REPLY];
    for full in &packets {
        for len in 0..=full.len() {
            let mut s = server();
            let result = s.handle(&full[..len], &mut out);
            if len < 4 {
                assert_eq!(result, Err(Dhcpv6Error::Truncated { len }));
            }
            if let Ok(Some(n)) = result {
                let d = Decoded::parse(&out[..n]);
                d.ias();
            }
            let c = s.counters();
            assert_eq!(c.received, 1);
            assert_eq!(c.malformed, u64::from(result.is_err()), "length {len}");
        }
        // The whole message is answered.
        let mut s = server();
        assert!(matches!(s.handle(full, &mut out), Ok(Some(_))));
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

fn assert_accounted(c: &Dhcpv6Counters) {
    let per_type = c.solicits
        + c.requests
        + c.confirms
        + c.renews
        + c.rebinds
        + c.releases
        + c.declines
        + c.information_requests;
    assert_eq!(
        c.received,
        c.malformed + per_type + c.ignored_relay + c.ignored_unsupported_type
    );
    assert_eq!(
        per_type,
        c.advertises + c.replies + c.ignored + c.output_too_small
    );
    assert_eq!(
        c.ignored,
        c.ignored_other_server
            + c.ignored_missing_server_id
            + c.ignored_missing_client_id
            + c.ignored_ia_in_information_request
            + c.ignored_confirm_without_addresses
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut s = server();
    let mut out = vec![0u8; MAX_DHCPV6_REPLY];
    for i in 0..5_000 {
        let len = rng.below(300);
        let mut payload: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        if i % 2 == 0 && len > 0 {
            // A client message type, so the option walker runs.
            payload[0] = [1, 3, 4, 5, 6, 8, 9, 11][rng.below(8)];
        }
        if let Ok(Some(n)) = s.handle(&payload, &mut out) {
            assert!(n <= out.len());
            Decoded::parse(&out[..n]);
        }
    }
    assert_eq!(s.counters().received, 5_000);
    assert_accounted(s.counters());
}

#[test]
fn random_options_after_a_valid_header_never_panic() {
    // Mostly well-framed options with interesting codes and lengths, so the
    // state machine and the reply writer run, not just the framing checks.
    let mut rng = Rng(42);
    let codes = [1u16, 2, 3, 4, 5, 6, 8, 13, 14, 23, 24, 25, 26, 9999];
    let mut s = server();
    let mut replies = 0;
    for i in 0..20_000 {
        let msg_type = [1, 3, 4, 5, 6, 8, 9, 11][rng.below(8)];
        let mut m = Msg::bare(msg_type);
        if rng.below(4) != 0 {
            m = m.client(CLIENT_DUID);
        }
        match rng.below(4) {
            0 => m = m.ours(),
            1 => m = m.server(OTHER_DUID),
            _ => {}
        }
        for _ in 0..rng.below(6) {
            match rng.below(6) {
                0 => m = m.ia_na(rng.next() as u32, &[guest(), addr("2001:db8:9::1")]),
                1 => m = m.ia_pd(rng.next() as u32),
                2 => m = m.ia_ta(rng.next() as u32, &[]),
                3 => m = m.rapid(),
                4 => {
                    let len = [0, 1, 2, 3, 11, 12, 24, 40][rng.below(8)];
                    let data: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                    m = m.opt(codes[rng.below(codes.len())], &data);
                }
                _ => m.options.push(rng.byte()),
            }
        }
        let out_len = if i % 10 == 0 {
            rng.below(400)
        } else {
            MAX_DHCPV6_REPLY
        };
        let mut out = vec![0u8; out_len];
        if let Ok(Some(n)) = s.handle(&m.bytes(), &mut out) {
            replies += 1;
            assert!(n <= out_len);
            let d = Decoded::parse(&out[..n]);
            d.ias();
            assert_eq!(d.xid, XID);
        }
    }
    assert!(
        replies > 2_000,
        "the generator reaches the reply path ({replies})"
    );
    assert_accounted(s.counters());
}

#[test]
fn output_buffer_is_respected() {
    let m = Msg::new(REQUEST)
        .ours()
        .ia_na(IAID, &[guest(), addr("2001:db8:9::1")])
        .ia_pd(9);
    let mut big = [0u8; MAX_DHCPV6_REPLY];
    let full = server().handle(&m.bytes(), &mut big).unwrap().unwrap();
    // Header, server id, client id, IA_NA with the guest address.
    let mandatory = 4 + (4 + 10) + (4 + CLIENT_DUID.len()) + (4 + 12 + 28);
    for size in 0..=full {
        let mut s = server();
        let mut out = vec![0u8; size];
        match s.handle(&m.bytes(), &mut out) {
            Ok(Some(n)) => {
                assert!(size >= mandatory, "size {size}");
                let d = Decoded::parse(&out[..n]);
                assert_eq!(d.ias()[0].addrs[0], (guest(), 3600, 7200));
                assert_eq!(n == full, s.counters().options_omitted == 0, "size {size}");
                assert!(s.binding().is_some());
            }
            Err(err) => {
                assert!(size < mandatory, "size {size}");
                assert_eq!(
                    err,
                    Dhcpv6Error::OutputTooSmall {
                        needed: mandatory,
                        got: size
                    }
                );
                assert_eq!(s.counters().output_too_small, 1);
                assert_eq!(s.binding(), None, "nothing sent, nothing bound");
                assert_accounted(s.counters());
            }
            Ok(None) => panic!("size {size}: no reply"),
        }
    }
}

#[test]
fn replies_never_exceed_the_minimum_mtu() {
    // Many IAs: the reply is cut at 1232 bytes, the rest counted.
    let mut m = Msg::new(REQUEST).ours().ia_na(IAID, &[]);
    for i in 0..200 {
        m = m.ia_pd(i);
    }
    let mut s = server();
    let mut out = vec![0u8; 9000];
    let n = s.handle(&m.bytes(), &mut out).unwrap().unwrap();
    assert!(n <= MAX_DHCPV6_REPLY);
    let d = Decoded::parse(&out[..n]);
    assert_eq!(d.ias()[0].addrs[0].0, guest());
    let echoed = d.ias().len() - 1;
    assert!(echoed > 10);
    assert_eq!(s.counters().options_omitted, (200 - echoed) as u64);
}
