//! DHCPv6 wire format (RFC 8415 sections 8 and 21), in smoltcp's shape: a
//! view over a message's bytes ([`Packet`]: message type, transaction id,
//! the options as a bounds-checked iterator), the validated representation
//! of a client message ([`Request::parse`]), and option helpers for the
//! reply writer. None of them allocates.

use std::net::Ipv6Addr;

use crate::buf::Writer;
use crate::error::Dhcpv6Error;
use crate::v6::config::{MAX_DUID, MIN_DUID};

/// msg-type and transaction-id.
pub(crate) const HEADER_LEN: usize = 4;
/// option-code and option-len.
const OPTION_HEADER_LEN: usize = 4;
/// IAID, T1, T2 of IA_NA and IA_PD.
const IA_NA_FIXED: usize = 12;
/// IAID of IA_TA.
const IA_TA_FIXED: usize = 4;
/// Address, preferred and valid lifetime.
const IAADDR_FIXED: usize = 24;
/// Preferred and valid lifetime, prefix length, prefix.
const IAPREFIX_FIXED: usize = 25;

/// Message types (RFC 8415 7.3).
pub(crate) mod msg {
    pub const SOLICIT: u8 = 1;
    pub const ADVERTISE: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const CONFIRM: u8 = 4;
    pub const RENEW: u8 = 5;
    pub const REBIND: u8 = 6;
    pub const REPLY: u8 = 7;
    pub const RELEASE: u8 = 8;
    pub const DECLINE: u8 = 9;
    pub const INFORMATION_REQUEST: u8 = 11;
    pub const RELAY_FORW: u8 = 12;
    pub const RELAY_REPL: u8 = 13;
}

/// Option codes (RFC 8415 21, RFC 3646).
pub(crate) mod opt {
    pub const CLIENT_ID: u16 = 1;
    pub const SERVER_ID: u16 = 2;
    pub const IA_NA: u16 = 3;
    pub const IA_TA: u16 = 4;
    pub const IAADDR: u16 = 5;
    pub const ORO: u16 = 6;
    pub const PREFERENCE: u16 = 7;
    pub const STATUS_CODE: u16 = 13;
    pub const RAPID_COMMIT: u16 = 14;
    pub const DNS_SERVERS: u16 = 23;
    pub const DOMAIN_LIST: u16 = 24;
    pub const IA_PD: u16 = 25;
    pub const IAPREFIX: u16 = 26;
}

/// Status codes (RFC 8415 21.13).
pub(crate) mod status {
    pub const SUCCESS: u16 = 0;
    pub const NO_ADDRS_AVAIL: u16 = 2;
    pub const NOT_ON_LINK: u16 = 4;
    pub const NO_PREFIX_AVAIL: u16 = 6;
}

/// One option as found in a container.
#[derive(Clone, Copy)]
pub(crate) struct RawOption<'a> {
    pub code: u16,
    pub data: &'a [u8],
    /// Offset of `data` from the start of the UDP payload.
    pub data_offset: usize,
}

/// Walks the options of one container (the message, or an option's
/// encapsulated options). Every step is bounds-checked; the first framing
/// error is yielded and ends the walk.
#[derive(Clone)]
pub(crate) struct Options<'a> {
    rest: &'a [u8],
    /// Offset of `rest` from the start of the UDP payload.
    offset: usize,
}

impl<'a> Options<'a> {
    pub fn new(data: &'a [u8], offset: usize) -> Self {
        Self { rest: data, offset }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<RawOption<'a>, Dhcpv6Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let offset = self.offset;
        let parsed = match *self.rest {
            [c0, c1, l0, l1, ref after @ ..] => {
                let code = u16::from_be_bytes([c0, c1]);
                let len = usize::from(u16::from_be_bytes([l0, l1]));
                match after.split_at_checked(len) {
                    Some((data, rest)) => Ok((code, data, rest)),
                    None => Err(Dhcpv6Error::OptionOverrun { code, offset }),
                }
            }
            _ => Err(Dhcpv6Error::TruncatedOptionHeader { offset }),
        };
        match parsed {
            Ok((code, data, rest)) => {
                self.rest = rest;
                self.offset = offset + OPTION_HEADER_LEN + data.len();
                Some(Ok(RawOption {
                    code,
                    data,
                    data_offset: offset + OPTION_HEADER_LEN,
                }))
            }
            Err(err) => {
                self.rest = &[];
                Some(Err(err))
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum IaKind {
    /// Non-temporary addresses (option 3).
    Na,
    /// Temporary addresses (option 4).
    Ta,
    /// Delegated prefixes (option 25).
    Pd,
}

/// An identity association from the client's message.
#[derive(Clone)]
pub(crate) struct Ia<'a> {
    pub kind: IaKind,
    pub iaid: [u8; 4],
    /// Encapsulated options, validated by [`Request::parse`].
    options: Options<'a>,
}

impl<'a> Ia<'a> {
    fn from_option(option: RawOption<'a>) -> Option<Self> {
        let (kind, fixed) = match option.code {
            opt::IA_NA => (IaKind::Na, IA_NA_FIXED),
            opt::IA_TA => (IaKind::Ta, IA_TA_FIXED),
            opt::IA_PD => (IaKind::Pd, IA_NA_FIXED),
            _ => return None,
        };
        let (head, options) = option.data.split_at_checked(fixed)?;
        let iaid = match *head {
            [a, b, c, d, ..] => [a, b, c, d],
            _ => return None,
        };
        Some(Self {
            kind,
            iaid,
            options: Options::new(options, option.data_offset + fixed),
        })
    }

    /// The IAADDR addresses the client listed in this IA.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv6Addr> + 'a {
        self.options
            .clone()
            .filter_map(Result::ok)
            .filter(|o| o.code == opt::IAADDR)
            .filter_map(|o| {
                let bytes: [u8; 16] = o.data.get(..16)?.try_into().ok()?;
                Some(Ipv6Addr::from(bytes))
            })
    }
}

/// A view over a DHCPv6 client or server message (not a relay message,
/// whose header differs): the fixed header and the options after it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of `buffer` without a length check (for a buffer known to
    /// hold the fixed header).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// A view of `buffer`, which must hold at least the fixed header.
    pub fn new_checked(buffer: T) -> Result<Self, Dhcpv6Error> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Dhcpv6Error::Truncated { len });
        }
        Ok(Packet { buffer })
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    pub fn transaction_id(&self) -> [u8; 3] {
        let b = self.buffer.as_ref();
        [b[1], b[2], b[3]]
    }
}

impl<'a> Packet<&'a [u8]> {
    /// The message's options, each checked against what is left of it.
    pub fn options(&self) -> Options<'a> {
        Options::new(&self.buffer[HEADER_LEN..], HEADER_LEN)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[0] = value;
    }

    pub fn set_transaction_id(&mut self, value: [u8; 3]) {
        self.buffer.as_mut()[1..HEADER_LEN].copy_from_slice(&value);
    }
}

/// A validated client message (the representation of a [`Packet`] from a
/// client). Borrows from the datagram.
pub(crate) struct Request<'a> {
    pub msg_type: u8,
    pub xid: [u8; 3],
    pub client_id: Option<&'a [u8]>,
    pub server_id: Option<&'a [u8]>,
    pub rapid_commit: bool,
    /// Number of IA_NA, IA_TA and IA_PD options.
    pub ia_count: usize,
    pub ia_na_count: usize,
    /// Whether the Option Request Option asked for DNS servers (23) or
    /// the domain list (24). They are sent when configured regardless;
    /// recorded for tests and future use.
    pub oro_dns: bool,
    pub oro_domains: bool,
    options: Options<'a>,
}

fn bad(option: &RawOption<'_>, reason: &'static str) -> Dhcpv6Error {
    Dhcpv6Error::BadOption {
        code: option.code,
        len: option.data.len(),
        reason,
    }
}

fn duid<'a>(option: &RawOption<'a>) -> Result<&'a [u8], Dhcpv6Error> {
    if (MIN_DUID..=MAX_DUID).contains(&option.data.len()) {
        Ok(option.data)
    } else {
        Err(bad(option, "a DUID is 2 to 130 bytes"))
    }
}

/// Checks the framing of every option in a container, and the fixed part
/// of the ones nested inside an IA that we read (IAADDR) or that have a
/// fixed part (IAPREFIX), one level further.
fn check_ia_options(options: Options<'_>) -> Result<(), Dhcpv6Error> {
    for option in options {
        let option = option?;
        let fixed = match option.code {
            opt::IAADDR => IAADDR_FIXED,
            opt::IAPREFIX => IAPREFIX_FIXED,
            _ => continue,
        };
        let Some(nested) = option.data.get(fixed..) else {
            return Err(bad(&option, "shorter than its fixed fields"));
        };
        for nested in Options::new(nested, option.data_offset + fixed) {
            nested?;
        }
    }
    Ok(())
}

impl<'a> Request<'a> {
    /// Validates a UDP payload sent to port 547 by a client (not a relay:
    /// relay messages have another header and must be filtered by
    /// message type first).
    ///
    /// Every option's length is checked against its container, down to
    /// the options inside IA addresses and prefixes, so nothing read
    /// later can run out of bounds. Options we act on must have a length
    /// their format allows; the client and server identifiers must not
    /// repeat, since which one counts would be a guess. Unknown options
    /// are skipped.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Dhcpv6Error> {
        let packet = Packet::new_checked(payload)?;
        let mut req = Request {
            msg_type: packet.msg_type(),
            xid: packet.transaction_id(),
            client_id: None,
            server_id: None,
            rapid_commit: false,
            ia_count: 0,
            ia_na_count: 0,
            oro_dns: false,
            oro_domains: false,
            options: packet.options(),
        };
        for option in req.options.clone() {
            let option = option?;
            match option.code {
                opt::CLIENT_ID | opt::SERVER_ID => {
                    let id = duid(&option)?;
                    let slot = if option.code == opt::CLIENT_ID {
                        &mut req.client_id
                    } else {
                        &mut req.server_id
                    };
                    if slot.replace(id).is_some() {
                        return Err(Dhcpv6Error::DuplicateOption { code: option.code });
                    }
                }
                opt::IA_NA | opt::IA_TA | opt::IA_PD => {
                    let ia = Ia::from_option(option)
                        .ok_or_else(|| bad(&option, "shorter than its fixed fields"))?;
                    check_ia_options(ia.options.clone())?;
                    req.ia_count += 1;
                    if ia.kind == IaKind::Na {
                        req.ia_na_count += 1;
                    }
                }
                opt::ORO => {
                    if option.data.len() % 2 != 0 {
                        return Err(bad(&option, "odd length for a list of option codes"));
                    }
                    for pair in option.data.chunks_exact(2) {
                        match *pair {
                            [0, 23] => req.oro_dns = true,
                            [0, 24] => req.oro_domains = true,
                            _ => {}
                        }
                    }
                }
                opt::RAPID_COMMIT => {
                    if !option.data.is_empty() {
                        return Err(bad(&option, "rapid commit carries no data"));
                    }
                    req.rapid_commit = true;
                }
                _ => {}
            }
        }
        Ok(req)
    }

    /// The identity associations in message order.
    pub fn ias(&self) -> impl Iterator<Item = Ia<'a>> + 'a {
        self.options
            .clone()
            .filter_map(Result::ok)
            .filter_map(Ia::from_option)
    }
}

/// Writes an option with the given data whole. Lengths over 65535 cannot
/// be represented, but no writer used here has that much room, so such
/// an option overflows and is dropped rather than sent with a wrong
/// length.
pub(crate) fn put_option(w: &mut Writer<'_>, code: u16, data: &[u8]) {
    w.u16(code);
    w.u16(u16::try_from(data.len()).unwrap_or(u16::MAX));
    w.put(data);
}

/// Starts an option whose length is known only after its content;
/// returns the position to pass to [`end_option`].
pub(crate) fn begin_option(w: &mut Writer<'_>, code: u16) -> usize {
    let start = w.pos();
    w.u16(code);
    w.u16(0);
    start
}

pub(crate) fn end_option(w: &mut Writer<'_>, start: usize) {
    let len = w.pos().saturating_sub(start + OPTION_HEADER_LEN);
    w.patch_u16(start + 2, u16::try_from(len).unwrap_or(u16::MAX));
}

/// Status code option (13) with a human-readable message.
pub(crate) fn put_status(w: &mut Writer<'_>, code: u16, message: &str) {
    let start = begin_option(w, opt::STATUS_CODE);
    w.u16(code);
    w.put(message.as_bytes());
    end_option(w, start);
}

/// IA Address option (5).
pub(crate) fn put_iaaddr(w: &mut Writer<'_>, addr: Ipv6Addr, preferred: u32, valid: u32) {
    w.u16(opt::IAADDR);
    w.u16(IAADDR_FIXED as u16);
    w.put(&addr.octets());
    w.u32(preferred);
    w.u32(valid);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_view_reads_and_writes_the_header_and_walks_options() {
        assert_eq!(
            Packet::new_checked(&[1u8, 2, 3][..]).unwrap_err(),
            Dhcpv6Error::Truncated { len: 3 }
        );
        let msg = [
            msg::SOLICIT,
            0xab,
            0xcd,
            0xef,
            0,
            14,
            0,
            0,
            0,
            6,
            0,
            2,
            0,
            23,
        ];
        let p = Packet::new_checked(&msg[..]).unwrap();
        assert_eq!(p.msg_type(), msg::SOLICIT);
        assert_eq!(p.transaction_id(), [0xab, 0xcd, 0xef]);
        let codes: Vec<u16> = p.options().map(|o| o.unwrap().code).collect();
        assert_eq!(codes, [opt::RAPID_COMMIT, opt::ORO]);
        let mut header = [0u8; HEADER_LEN];
        let mut w = Packet::new_unchecked(&mut header[..]);
        w.set_msg_type(msg::REPLY);
        w.set_transaction_id([1, 2, 3]);
        assert_eq!(header, [msg::REPLY, 1, 2, 3]);
    }
}
