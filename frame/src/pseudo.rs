//! The pseudo-header every TCP, UDP and ICMPv6 checksum starts from (RFC 768, RFC 793,
//! RFC 8200 8.1), on the one [`Checksum`] implementation.

use std::net::IpAddr;

use crate::sg::Checksum;

impl Checksum {
    /// A checksum seeded with the pseudo-header of `len` bytes of protocol `proto` from `src`
    /// to `dst`. Mixed families are summed as IPv6 with the IPv4 address mapped (a caller bug,
    /// kept harmless).
    pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Checksum {
        let mut c = Checksum::new();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                c.add(&s.octets());
                c.add(&d.octets());
            }
            (s, d) => {
                c.add(&v6_octets(s));
                c.add(&v6_octets(d));
            }
        }
        c.add_u16(u16::from(proto));
        c.add_u16((len >> 16) as u16);
        c.add_u16(len as u16);
        c
    }

    /// The checksum of `message` (checksum field as received) over its pseudo-header: 0 when
    /// valid. With the field zeroed, the value to store in it.
    pub fn of_l4(src: IpAddr, dst: IpAddr, proto: u8, message: &[u8]) -> u16 {
        let mut c = Self::pseudo_header(src, dst, proto, message.len());
        c.add(message);
        c.finish()
    }
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn an_icmpv6_message_with_its_checksum_sums_to_zero() {
        let src = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
        let dst = IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2));
        let mut rs = [133u8, 0, 0, 0, 0, 0, 0, 0];
        let sum = Checksum::of_l4(src, dst, 58, &rs);
        rs[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(Checksum::of_l4(src, dst, 58, &rs), 0);
    }

    #[test]
    fn a_udp_datagram_matches_a_hand_computed_sum() {
        // 10.0.0.1:1 -> 10.0.0.2:2, no payload: pseudo-header + header words.
        let (s, d) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let udp = [0, 1, 0, 2, 0, 8, 0, 0];
        let words: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 8 + 1 + 2 + 8;
        let expect = !(words as u16);
        assert_eq!(Checksum::of_l4(s.into(), d.into(), 17, &udp), expect);
    }
}
