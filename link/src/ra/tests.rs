//! Router advertisement and solicitation tests: a hand-computed vector,
//! a small option decoder of our own, and smoltcp's NDISC parser as an
//! independent cross-check.

use std::net::Ipv6Addr;

use super::*;
use podwire_dhcp::buf::Writer;

const MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn addr(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn src() -> Ipv6Addr {
    router_link_local(MAC)
}

/// The configuration of the hand-computed vector.
fn config() -> RaConfig {
    RaConfig {
        router_mac: MAC,
        // Host bits set on purpose: they must go out as zero.
        prefix: addr("2001:db8:1:2::15"),
        prefix_len: 64,
        on_link: true,
        autonomous: true,
        managed: true,
        other: true,
        mtu: Some(1500),
        dns: vec![addr("2001:db8::53")],
        search: vec!["example.com".into()],
        router_lifetime_secs: 1800,
        valid_lifetime: 86_400,
        preferred_lifetime: 14_400,
        max_interval_secs: 600,
    }
}

fn build(cfg: &RaConfig, dst: Ipv6Addr) -> Vec<u8> {
    let mut out = vec![0u8; 1500];
    let len = router_advertisement(cfg, src(), dst, &mut out).expect("advertisement");
    out.truncate(len);
    out
}

/// The RFC 4443 checksum written out independently of the crate's: the
/// pseudo-header is built as bytes and summed as 16-bit words.
fn reference_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut data = Vec::new();
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(message.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 58]);
    data.extend_from_slice(message);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let mut sum: u32 = 0;
    for i in (0..data.len()).step_by(2) {
        sum += (u32::from(data[i]) << 8) | u32::from(data[i + 1]);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Options as (type, whole option bytes), checking framing on the way.
fn options(ra: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut rest = &ra[16..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[1]) * 8;
        assert!(len > 0 && len <= rest.len(), "bad option framing");
        out.push((rest[0], rest[..len].to_vec()));
        rest = &rest[len..];
    }
    out
}

fn option_types(ra: &[u8]) -> Vec<u8> {
    options(ra).into_iter().map(|(t, _)| t).collect()
}

#[test]
fn link_local_is_modified_eui64() {
    assert_eq!(router_link_local(MAC), addr("fe80::9855:9aff:fe55:9a55"));
    assert_eq!(
        router_link_local(GUEST_MAC),
        addr("fe80::5054:ff:fe12:3456")
    );
    // A locally administered MAC loses the bit.
    assert_eq!(
        router_link_local([0x02, 0, 0, 0, 0, 1]),
        addr("fe80::ff:fe00:1")
    );
}

#[test]
fn advertisement_matches_hand_computed_vector() {
    let ra = build(&config(), ALL_NODES);
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        // Type 134, code 0, checksum, hop limit 64, M|O, lifetime 1800.
        0x86, 0x00, 0x51, 0x57, 0x40, 0xc0, 0x07, 0x08,
        // Reachable time, retransmission timer: unspecified.
        0, 0, 0, 0, 0, 0, 0, 0,
        // Source link-layer address.
        0x01, 0x01, 0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55,
        // MTU 1500.
        0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x05, 0xdc,
        // Prefix information: /64, L|A, valid 86400, preferred 14400.
        0x03, 0x04, 0x40, 0xc0, 0x00, 0x01, 0x51, 0x80,
        0x00, 0x00, 0x38, 0x40, 0x00, 0x00, 0x00, 0x00,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0x00, 0x02,
        0, 0, 0, 0, 0, 0, 0, 0,
        // RDNSS, lifetime 3 * 600.
        0x19, 0x03, 0x00, 0x00, 0x00, 0x00, 0x07, 0x08,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0x00, 0x53,
        // DNSSL: example.com, padded from 21 to 24 bytes.
        0x1f, 0x03, 0x00, 0x00, 0x00, 0x00, 0x07, 0x08,
        0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e',
        0x03, b'c', b'o', b'm', 0x00, 0x00, 0x00, 0x00,
    ];
    assert_eq!(ra, expected);
    assert_eq!(router_advertisement_len(&config()), expected.len());

    // The checksum, recomputed from the pseudo-header with the field
    // zeroed, and verified over the message as sent.
    let mut zeroed = ra.clone();
    zeroed[2..4].fill(0);
    assert_eq!(reference_checksum(src(), ALL_NODES, &zeroed), 0x5157);
    assert_eq!(reference_checksum(src(), ALL_NODES, &ra), 0);
    assert_eq!(icmpv6_checksum(src(), ALL_NODES, &ra), 0);
}

#[test]
fn checksum_covers_the_destination() {
    let guest = router_link_local(GUEST_MAC);
    let ra = build(&config(), guest);
    assert_eq!(reference_checksum(src(), guest, &ra), 0);
    assert_ne!(reference_checksum(src(), ALL_NODES, &ra), 0);
    // Everything but the checksum is the same whatever the destination.
    let multicast = build(&config(), ALL_NODES);
    assert_eq!(ra[4..], multicast[4..]);
}

#[test]
fn checksum_of_odd_length_messages() {
    for len in 0..40 {
        let message: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let a = addr("fe80::1");
        let b = addr("fe80::2");
        assert_eq!(
            icmpv6_checksum(a, b, &message),
            reference_checksum(a, b, &message),
            "length {len}"
        );
    }
}

#[test]
fn smoltcp_parses_the_advertisement() {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::time::Duration;
    use smoltcp::wire::{
        Icmpv6Packet, Icmpv6Repr, NdiscOption, NdiscOptionRepr, NdiscPrefixInfoFlags, NdiscRepr,
        NdiscRouterFlags,
    };

    let dst = router_link_local(GUEST_MAC);
    let ra = build(&config(), dst);
    let packet = Icmpv6Packet::new_checked(&ra[..]).expect("length");
    assert!(packet.verify_checksum(&src(), &dst));
    let repr = Icmpv6Repr::parse(&src(), &dst, &packet, &ChecksumCapabilities::default())
        .expect("smoltcp parses the advertisement");
    let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
        hop_limit,
        flags,
        router_lifetime,
        reachable_time,
        retrans_time,
        lladdr,
        mtu,
        prefix_info,
    }) = repr
    else {
        panic!("not a router advertisement: {repr:?}");
    };
    assert_eq!(hop_limit, 64);
    assert_eq!(flags, NdiscRouterFlags::MANAGED | NdiscRouterFlags::OTHER);
    assert_eq!(router_lifetime, Duration::from_secs(1800));
    assert_eq!(reachable_time, Duration::ZERO);
    assert_eq!(retrans_time, Duration::ZERO);
    assert_eq!(lladdr.expect("source link-layer address").as_bytes(), MAC);
    assert_eq!(mtu, Some(1500));
    let prefix = prefix_info.expect("prefix information");
    assert_eq!(prefix.prefix, addr("2001:db8:1:2::"));
    assert_eq!(prefix.prefix_len, 64);
    assert_eq!(
        prefix.flags,
        NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF
    );
    assert_eq!(prefix.valid_lifetime, Duration::from_secs(86_400));
    assert_eq!(prefix.preferred_lifetime, Duration::from_secs(14_400));

    // smoltcp does not know RDNSS and DNSSL; it must still frame them.
    let mut unknown = Vec::new();
    let mut rest = packet.payload();
    while !rest.is_empty() {
        let opt = NdiscOption::new_checked(rest).expect("option framing");
        let len = usize::from(opt.data_len()) * 8;
        if let Ok(NdiscOptionRepr::Unknown { type_, length, .. }) = NdiscOptionRepr::parse(&opt) {
            unknown.push((type_, length));
        }
        rest = &rest[len..];
    }
    assert_eq!(unknown, [(25, 3), (31, 3)]);
}

#[test]
fn flags_follow_the_configuration() {
    let mut cfg = config();
    cfg.managed = false;
    cfg.other = true;
    cfg.on_link = false;
    let ra = build(&cfg, ALL_NODES);
    assert_eq!(ra[5], 0x40);
    let pio = &options(&ra)[2].1;
    assert_eq!(pio[0], 3);
    assert_eq!(pio[3], 0x40, "A without L");

    cfg.managed = true;
    cfg.other = false;
    cfg.autonomous = false;
    cfg.on_link = true;
    let ra = build(&cfg, ALL_NODES);
    assert_eq!(ra[5], 0x80);
    assert_eq!(options(&ra)[2].1[3], 0x80, "L without A");
}

#[test]
fn autonomous_flag_needs_a_slash_64() {
    let mut cfg = config();
    cfg.prefix_len = 56;
    assert_eq!(cfg.validate(), Err(RaConfigError::AutonomousNeeds64(56)));
    let ra = build(&cfg, ALL_NODES);
    let pio = &options(&ra)[2].1;
    assert_eq!(pio[2], 56);
    assert_eq!(pio[3], 0x80, "A cleared, L kept");
    // Masked to 56 bits: 2001:db8:1:: (the 2 is in bits 48..64).
    assert_eq!(&pio[16..32], &addr("2001:db8:1::").octets());

    assert!(!RaConfig::new(MAC, addr("2001:db8::"), 48).autonomous);
    assert!(RaConfig::new(MAC, addr("2001:db8::"), 64).autonomous);
}

#[test]
fn dnssl_encoding_and_padding() {
    let dnssl = |names: &[&str]| {
        let mut cfg = config();
        cfg.search = names.iter().map(|s| s.to_string()).collect();
        let ra = build(&cfg, ALL_NODES);
        options(&ra)
            .into_iter()
            .filter(|(t, _)| *t == 31)
            .map(|(_, o)| o)
            .collect::<Vec<_>>()
    };

    // 8 + 13 + 19 = 40: a multiple of 8, so no padding.
    let opts = dnssl(&["example.com", "svc.cluster.local."]);
    assert_eq!(opts.len(), 1);
    let mut expected = vec![31, 5, 0, 0, 0, 0, 0x07, 0x08];
    expected.extend_from_slice(b"\x07example\x03com\x00\x03svc\x07cluster\x05local\x00");
    assert_eq!(opts[0], expected);

    // 8 + 3 = 11, padded to 16.
    let opts = dnssl(&["a"]);
    assert_eq!(
        opts[0],
        [31, 2, 0, 0, 0, 0, 0x07, 0x08, 1, b'a', 0, 0, 0, 0, 0, 0]
    );

    // Invalid names are left out; all invalid means no option at all.
    let opts = dnssl(&["", "a..b", "ok"]);
    assert_eq!(opts.len(), 1);
    assert_eq!(&opts[0][8..12], b"\x02ok\x00");
    assert!(dnssl(&["a..b"]).is_empty());
    assert!(dnssl(&[]).is_empty());
}

#[test]
fn long_search_lists_span_several_dnssl_options() {
    // 20 names of 64 + 3 * 62 + 1 = 251 bytes each: 8 fit in the 2032
    // bytes of an option after its header, so 8 + 8 + 4.
    let label = "x".repeat(61);
    let names: Vec<String> = (0..20)
        .map(|i| format!("{i:02}{label}.{label}.{label}.{label}"))
        .collect();
    for name in &names {
        assert_eq!(names::wire_len(name), Ok(251));
    }
    let mut cfg = config();
    cfg.search = names.clone();
    let mut out = vec![0u8; 8000];
    let len = router_advertisement(&cfg, src(), ALL_NODES, &mut out).unwrap();
    let ra = &out[..len];
    assert_eq!(icmpv6_checksum(src(), ALL_NODES, ra), 0);
    let dnssl: Vec<_> = options(ra)
        .into_iter()
        .filter(|(t, _)| *t == 31)
        .map(|(_, o)| o)
        .collect();
    assert_eq!(dnssl.len(), 3);
    let mut decoded = Vec::new();
    for (opt, count) in dnssl.iter().zip([8, 8, 4]) {
        assert!(opt.len() <= 255 * 8);
        assert_eq!(opt.len() % 8, 0);
        let names = decode_names(&opt[8..]);
        assert_eq!(names.len(), count);
        decoded.extend(names);
    }
    assert_eq!(decoded, names);
    assert_eq!(router_advertisement_len(&cfg), len);
    assert!(matches!(cfg.validate(), Err(RaConfigError::TooLong { .. })));
}

/// Names in an uncompressed, zero-padded DNSSL body.
fn decode_names(mut body: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    while let Some(&first) = body.first() {
        if first == 0 {
            // Padding: the rest must be zero too.
            assert!(body.iter().all(|&b| b == 0));
            break;
        }
        let mut labels = Vec::new();
        loop {
            let len = usize::from(body[0]);
            body = &body[1..];
            if len == 0 {
                break;
            }
            assert!(len <= 63, "compression or bad label");
            labels.push(String::from_utf8(body[..len].to_vec()).unwrap());
            body = &body[len..];
        }
        names.push(labels.join("."));
    }
    names
}

#[test]
fn rdnss_skips_unusable_servers_and_splits_after_127() {
    let mut cfg = config();
    cfg.dns = vec![
        Ipv6Addr::UNSPECIFIED,
        addr("fe80::53"),
        Ipv6Addr::LOCALHOST,
        addr("ff02::fb"),
        addr("2001:db8::1"),
    ];
    assert_eq!(
        cfg.validate(),
        Err(RaConfigError::DnsServer(Ipv6Addr::UNSPECIFIED))
    );
    let ra = build(&cfg, ALL_NODES);
    let rdnss: Vec<_> = options(&ra).into_iter().filter(|(t, _)| *t == 25).collect();
    assert_eq!(rdnss.len(), 1);
    let o = &rdnss[0].1;
    assert_eq!(o[1], 5);
    assert_eq!(&o[8..24], &addr("fe80::53").octets());
    assert_eq!(&o[24..40], &addr("2001:db8::1").octets());

    cfg.dns = (0..130u16)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i + 1))
        .collect();
    cfg.search.clear();
    let mut out = vec![0u8; 4000];
    let len = router_advertisement(&cfg, src(), ALL_NODES, &mut out).unwrap();
    let rdnss: Vec<_> = options(&out[..len])
        .into_iter()
        .filter(|(t, _)| *t == 25)
        .collect();
    assert_eq!(rdnss.len(), 2);
    assert_eq!(rdnss[0].1[1], 255);
    assert_eq!(rdnss[1].1[1], 7);
    assert_eq!(
        &rdnss[1].1[8 + 32..],
        &Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 130).octets()
    );
}

#[test]
fn dns_lifetime_is_three_intervals() {
    let mut cfg = config();
    cfg.max_interval_secs = 200;
    assert_eq!(cfg.dns_lifetime(), 600);
    let ra = build(&cfg, ALL_NODES);
    for (t, o) in options(&ra) {
        if t == 25 || t == 31 {
            assert_eq!(&o[4..8], &600u32.to_be_bytes());
        }
    }
    cfg.max_interval_secs = 0;
    assert_eq!(cfg.dns_lifetime(), 12, "clamped to the 4 s minimum");
    cfg.max_interval_secs = u32::MAX;
    assert_eq!(cfg.dns_lifetime(), 5400, "clamped to the 1800 s maximum");
}

#[test]
fn lenient_emission_drops_only_the_bad_parts() {
    let mut cfg = config();
    cfg.mtu = Some(1000);
    cfg.preferred_lifetime = 100_000;
    cfg.router_lifetime_secs = 10_000;
    let ra = build(&cfg, ALL_NODES);
    assert_eq!(option_types(&ra), [1, 3, 25, 31], "no MTU option");
    assert_eq!(&ra[6..8], &9000u16.to_be_bytes(), "router lifetime clamped");
    let pio = &options(&ra)[1].1;
    assert_eq!(&pio[4..8], &86_400u32.to_be_bytes());
    assert_eq!(&pio[8..12], &86_400u32.to_be_bytes(), "preferred clamped");

    for (prefix, len) in [
        ("fe80::", 64),
        ("ff00::", 8),
        ("::", 64),
        ("2001:db8::", 0),
        ("2001:db8::", 129),
    ] {
        let mut cfg = config();
        cfg.prefix = addr(prefix);
        cfg.prefix_len = len;
        assert!(cfg.validate().is_err(), "{prefix}/{len}");
        let ra = build(&cfg, ALL_NODES);
        assert_eq!(option_types(&ra), [1, 5, 25, 31], "{prefix}/{len}");
    }
}

#[test]
fn full_length_prefix_and_infinite_lifetimes() {
    let mut cfg = config();
    cfg.prefix = addr("2001:db8::15");
    cfg.prefix_len = 128;
    cfg.autonomous = false;
    cfg.valid_lifetime = u32::MAX;
    cfg.preferred_lifetime = u32::MAX;
    assert_eq!(cfg.validate(), Ok(()));
    let ra = build(&cfg, ALL_NODES);
    let pio = &options(&ra)[2].1;
    assert_eq!(pio[2], 128);
    assert_eq!(&pio[4..12], &[0xff; 8]);
    assert_eq!(&pio[16..32], &addr("2001:db8::15").octets());
}

#[test]
fn tight_buffers_drop_dns_options_first() {
    let cfg = config();
    let full = router_advertisement_len(&cfg);
    let mandatory = 16 + 8 + 8 + 32;
    for size in 0..=full + 8 {
        let mut out = vec![0u8; size];
        match router_advertisement(&cfg, src(), ALL_NODES, &mut out) {
            Ok(len) => {
                assert!(size >= mandatory);
                assert!(len <= size);
                let ra = &out[..len];
                assert_eq!(reference_checksum(src(), ALL_NODES, ra), 0, "size {size}");
                let types = option_types(ra);
                assert_eq!(types[..3], [1, 5, 3]);
                let expected: &[u8] = if size >= full {
                    &[1, 5, 3, 25, 31]
                } else if size >= mandatory + 24 {
                    &[1, 5, 3, 25]
                } else {
                    &[1, 5, 3]
                };
                assert_eq!(types, expected, "size {size}");
            }
            Err(err) => {
                assert!(size < mandatory, "size {size}: {err}");
                assert_eq!(
                    err,
                    RaError::OutputTooSmall {
                        needed: mandatory,
                        got: size
                    }
                );
            }
        }
    }
}

#[test]
fn source_must_be_link_local() {
    let mut out = [0u8; 200];
    for bad in ["2001:db8::1", "::", "ff02::1", "fec0::1"] {
        assert_eq!(
            router_advertisement(&config(), addr(bad), ALL_NODES, &mut out),
            Err(RaError::SourceNotLinkLocal(addr(bad)))
        );
    }
    assert!(router_advertisement(&config(), addr("febf::1"), ALL_NODES, &mut out).is_ok());
}

#[test]
fn validation_reports_each_problem() {
    assert_eq!(config().validate(), Ok(()));
    assert_eq!(
        RaConfig::new(MAC, addr("2001:db8::"), 64).validate(),
        Ok(())
    );
    type Case = (fn(&mut RaConfig), RaConfigError);
    let cases: Vec<Case> = vec![
        (
            |c| c.router_mac = [1, 0, 0, 0, 0, 0],
            RaConfigError::RouterMac([1, 0, 0, 0, 0, 0]),
        ),
        (|c| c.router_mac = [0; 6], RaConfigError::RouterMac([0; 6])),
        (|c| c.prefix_len = 0, RaConfigError::PrefixLen(0)),
        (|c| c.prefix_len = 129, RaConfigError::PrefixLen(129)),
        (
            |c| c.prefix = "fe80::".parse().unwrap(),
            RaConfigError::Prefix {
                prefix: "fe80::".parse().unwrap(),
                reason: "link-local",
            },
        ),
        (|c| c.prefix_len = 48, RaConfigError::AutonomousNeeds64(48)),
        (
            |c| c.preferred_lifetime = c.valid_lifetime + 1,
            RaConfigError::Lifetimes {
                preferred: 86_401,
                valid: 86_400,
            },
        ),
        (|c| c.mtu = Some(1279), RaConfigError::Mtu(1279)),
        (
            |c| c.router_lifetime_secs = 9001,
            RaConfigError::RouterLifetime(9001),
        ),
        (|c| c.max_interval_secs = 3, RaConfigError::MaxInterval(3)),
        (
            |c| c.max_interval_secs = 1801,
            RaConfigError::MaxInterval(1801),
        ),
        (
            |c| c.dns.push("ff02::1".parse().unwrap()),
            RaConfigError::DnsServer("ff02::1".parse().unwrap()),
        ),
        (
            |c| c.search.push("a..b".into()),
            RaConfigError::SearchDomain {
                name: "a..b".into(),
                reason: "empty label",
            },
        ),
    ];
    for (i, (mutate, expected)) in cases.into_iter().enumerate() {
        let mut c = config();
        mutate(&mut c);
        assert_eq!(c.validate(), Err(expected), "case {i}");
    }

    // Too long for 1280 without an MTU option; fine once the MTU says so.
    let mut c = config();
    c.mtu = None;
    c.dns = (0..80u16)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i + 1))
        .collect();
    let len = router_advertisement_len(&c);
    assert!(len > 1240);
    assert_eq!(
        c.validate(),
        Err(RaConfigError::TooLong { len, limit: 1240 })
    );
    c.mtu = Some(1500);
    assert_eq!(c.validate(), Ok(()));
}

// ---------------------------------------------------------------------------
// Router solicitations.

/// A router solicitation as smoltcp builds it, with a valid checksum.
fn smoltcp_rs(src: Ipv6Addr, lladdr: Option<[u8; 6]>) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Icmpv6Packet, Icmpv6Repr, NdiscRepr, RawHardwareAddress};

    let repr = Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit {
        lladdr: lladdr.map(|m| RawHardwareAddress::from_bytes(&m)),
    });
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(
        &src,
        &ALL_ROUTERS,
        &mut Icmpv6Packet::new_unchecked(&mut buf[..]),
        &ChecksumCapabilities::default(),
    );
    buf
}

fn guest_ll() -> Ipv6Addr {
    router_link_local(GUEST_MAC)
}

#[test]
fn valid_solicitations_are_accepted() {
    let rs = smoltcp_rs(guest_ll(), Some(GUEST_MAC));
    assert_eq!(rs.len(), 16);
    assert!(is_router_solicitation(&rs));
    assert_eq!(
        parse_router_solicitation(&rs, guest_ll(), ALL_ROUTERS, 255),
        Ok(RouterSolicitation {
            source_mac: Some(GUEST_MAC)
        })
    );

    let rs = smoltcp_rs(Ipv6Addr::UNSPECIFIED, None);
    assert_eq!(rs.len(), 8);
    assert_eq!(
        parse_router_solicitation(&rs, Ipv6Addr::UNSPECIFIED, ALL_ROUTERS, 255),
        Ok(RouterSolicitation { source_mac: None })
    );

    // Unknown options are skipped.
    let mut rs = vec![133, 0, 0, 0, 0, 0, 0, 0, 99, 2];
    rs.extend_from_slice(&[0; 14]);
    rs.extend_from_slice(&[1, 1]);
    rs.extend_from_slice(&GUEST_MAC);
    let sum = icmpv6_checksum(guest_ll(), ALL_ROUTERS, &rs);
    rs[2..4].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(
        parse_router_solicitation(&rs, guest_ll(), ALL_ROUTERS, 255),
        Ok(RouterSolicitation {
            source_mac: Some(GUEST_MAC)
        })
    );
}

#[test]
fn invalid_solicitations_are_rejected() {
    let ll = guest_ll();
    let rs = smoltcp_rs(ll, Some(GUEST_MAC));
    let parse = |b: &[u8]| parse_router_solicitation(b, ll, ALL_ROUTERS, 255);

    assert_eq!(
        parse_router_solicitation(&rs, ll, ALL_ROUTERS, 64),
        Err(RsError::HopLimit(64))
    );
    assert_eq!(
        parse_router_solicitation(&rs, ll, ALL_NODES, 255),
        Err(RsError::BadChecksum)
    );
    let mut flipped = rs.clone();
    flipped[12] ^= 1;
    assert_eq!(parse(&flipped), Err(RsError::BadChecksum));

    // From the unspecified address with a link-layer address.
    let unspec = smoltcp_rs(Ipv6Addr::UNSPECIFIED, Some(GUEST_MAC));
    assert_eq!(
        parse_router_solicitation(&unspec, Ipv6Addr::UNSPECIFIED, ALL_ROUTERS, 255),
        Err(RsError::LinkLayerFromUnspecified)
    );

    let mut other = rs.clone();
    other[0] = 135;
    assert_eq!(
        parse(&other),
        Err(RsError::NotRouterSolicitation {
            msg_type: 135,
            code: 0
        })
    );
    let mut coded = rs.clone();
    coded[1] = 1;
    assert!(!is_router_solicitation(&coded));

    let mut zero_len = rs.clone();
    zero_len[9] = 0;
    assert_eq!(parse(&zero_len), Err(RsError::BadOption { offset: 8 }));
    let mut too_long = rs.clone();
    too_long[9] = 2;
    assert_eq!(parse(&too_long), Err(RsError::BadOption { offset: 8 }));
    assert!(!is_router_solicitation(&too_long));

    // Every truncation: only the bare header and the whole are well-formed.
    for len in 0..rs.len() {
        let cut = &rs[..len];
        assert_eq!(is_router_solicitation(cut), len == 8, "length {len}");
        if len < 8 {
            assert_eq!(parse(cut), Err(RsError::Truncated { len }));
        }
    }

    // An advertisement is not a solicitation.
    assert!(!is_router_solicitation(&build(&config(), ALL_NODES)));
}

#[test]
fn random_bytes_never_panic() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut accepted = 0;
    for i in 0..20_000 {
        let len = (next() % 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Bias half of them towards the interesting type and code.
        if i % 2 == 0 && len >= 2 {
            bytes[0] = 133;
            bytes[1] = 0;
        }
        if is_router_solicitation(&bytes) {
            accepted += 1;
        }
        let _ =
            parse_router_solicitation(&bytes, guest_ll(), ALL_ROUTERS, (next() % 2) as u8 + 254);
        let _ = icmpv6_checksum(guest_ll(), ALL_ROUTERS, &bytes);
    }
    assert!(accepted > 0);

    // And random configurations never make the writer panic.
    for _ in 0..2_000 {
        let mut cfg = config();
        cfg.prefix_len = next() as u8;
        cfg.prefix = Ipv6Addr::from(u128::from(next()) << 64 | u128::from(next()));
        cfg.mtu = Some(next() as u32 % 3000);
        cfg.max_interval_secs = next() as u32;
        cfg.dns = (0..next() % 200)
            .map(|_| Ipv6Addr::from(u128::from(next())))
            .collect();
        cfg.search = (0..next() % 30)
            .map(|_| {
                let len = (next() % 300) as usize;
                (0..len)
                    .map(|_| if next() % 8 == 0 { '.' } else { 'a' })
                    .collect()
            })
            .collect();
        let mut out = vec![0u8; (next() % 3000) as usize];
        if let Ok(len) = router_advertisement(&cfg, src(), ALL_NODES, &mut out) {
            assert!(len <= out.len());
            assert_eq!(reference_checksum(src(), ALL_NODES, &out[..len]), 0);
            options(&out[..len]);
        }
        let _ = cfg.validate();
    }
}

#[test]
fn dns_option_reprs_emit_what_they_measure() {
    let mut servers: Vec<Ipv6Addr> = (0..200u16)
        .map(|i| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i))
        .collect();
    servers[0] = Ipv6Addr::UNSPECIFIED;
    // The first is unusable (::), so the first option takes 128 entries for 127 servers.
    assert_eq!(RdnssRepr::servers_that_fit(&servers), 128);
    let rdnss = RdnssRepr {
        lifetime: 1800,
        servers: &servers[..128],
    };
    let mut out = [0u8; 4096];
    let mut w = Writer::new(&mut out, 4096);
    rdnss.emit(&mut w);
    assert_eq!(w.pos(), rdnss.buffer_len());
    assert_eq!(rdnss.buffer_len(), 8 + 16 * 127);
    assert_eq!(out[1], 255, "length in 8-byte units");

    let names = [
        "a.example".to_string(),
        "bad..name".to_string(),
        "b.example".to_string(),
    ];
    let dnssl = DnsslRepr {
        lifetime: 1800,
        names: &names,
    };
    assert_eq!(DnsslRepr::names_that_fit(&names), 3);
    let mut out = [0u8; 64];
    let mut w = Writer::new(&mut out, 64);
    dnssl.emit(&mut w);
    assert_eq!(w.pos(), dnssl.buffer_len());
    // 8 + 11 + 11 = 30, padded to 32; the invalid name is left out.
    assert_eq!(w.pos(), 32);
    assert_eq!(out[1], 4);
    assert_eq!(&out[8..19], b"\x01a\x07example\x00");
}
