//! BOOTP/DHCP wire format: a validating request parser and a bounded reply
//! writer. Neither allocates.

use std::net::Ipv4Addr;

use smoltcp::wire::DhcpPacket;

use crate::error::DhcpError;

/// Fixed BOOTP header (RFC 951 / RFC 2131 section 2) plus the magic cookie.
pub(crate) const OPTIONS_START: usize = 240;
/// RFC 1542 section 3.1.1: some BOOTP relays and old clients drop anything
/// shorter than the original 300-byte BOOTP message.
pub(crate) const MIN_BOOTP_LEN: usize = 300;
/// RFC 2131 section 2: every client accepts a 576-byte IP datagram.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 576;
/// IPv4 header without options plus UDP header. Option 57 counts the whole
/// IP datagram (RFC 2132 9.10 measures it against the 576-byte minimum
/// datagram), so this comes off it to get the DHCP payload limit.
pub(crate) const IP_UDP_OVERHEAD: usize = 28;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const HLEN_ETHERNET: u8 = 6;
const BROADCAST_FLAG: u8 = 0x80;

/// Option codes (RFC 2132 unless noted).
pub(crate) mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const MTU: u8 = 26;
    pub const NTP_SERVERS: u8 = 42;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const TFTP_SERVER: u8 = 66;
    pub const BOOT_FILE: u8 = 67;
    /// RFC 4039.
    pub const RAPID_COMMIT: u8 = 80;
    pub const CLIENT_FQDN: u8 = 81;
    /// RFC 3397.
    pub const DOMAIN_SEARCH: u8 = 119;
    /// RFC 3442.
    pub const CLASSLESS_ROUTES: u8 = 121;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53 values, RFC 2132 9.6).
pub(crate) mod msg {
    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const DECLINE: u8 = 4;
    pub const ACK: u8 = 5;
    pub const NAK: u8 = 6;
    pub const RELEASE: u8 = 7;
    pub const INFORM: u8 = 8;
}

/// The parameter request list, concatenated across instances as RFC 3396
/// asks. A fixed array because the list is at most one byte per option
/// code, and this keeps parsing allocation-free.
#[derive(Clone)]
pub(crate) struct ParamList {
    codes: [u8; 255],
    len: usize,
}

impl ParamList {
    fn new() -> Self {
        Self {
            codes: [0; 255],
            len: 0,
        }
    }

    fn extend(&mut self, data: &[u8]) {
        for &code in data {
            if let Some(slot) = self.codes.get_mut(self.len) {
                *slot = code;
                self.len += 1;
            }
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        self.codes.get(..self.len).unwrap_or(&[])
    }
}

/// A validated client message. Borrows variable-length option data from
/// the datagram rather than copying it.
#[derive(Clone)]
pub(crate) struct Request<'a> {
    pub msg_type: u8,
    pub xid: [u8; 4],
    pub flags: [u8; 2],
    pub ciaddr: Ipv4Addr,
    pub giaddr: [u8; 4],
    pub chaddr: [u8; 16],
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub max_message_size: Option<u16>,
    pub rapid_commit: bool,
    pub client_id: Option<&'a [u8]>,
    pub hostname: Option<&'a [u8]>,
    pub params: ParamList,
}

fn fixed<const N: usize>(code: u8, data: &[u8]) -> Result<[u8; N], DhcpError> {
    data.try_into().map_err(|_| DhcpError::BadOptionLength {
        code,
        len: data.len(),
        expected: N,
    })
}

impl<'a> Request<'a> {
    /// Validates a UDP payload sent to port 67.
    ///
    /// Options are located by walking length bytes, and every walk step is
    /// bounds-checked, so no input can index out of range. A missing END
    /// option is tolerated (the walk stops at the end of the datagram), but
    /// a length that runs past the end is not: that means the datagram was
    /// cut or forged, and guessing which is not our job.
    ///
    /// Fixed-size options that we act on must have their exact size. For
    /// repeated instances the first wins, except the parameter request list,
    /// which is concatenated (RFC 3396). Option overload (52) is not
    /// followed: `sname`/`file` are never read.
    pub fn parse(payload: &'a [u8]) -> Result<Self, DhcpError> {
        // The fixed BOOTP header through smoltcp's view (which checks it is all there, magic
        // cookie included). Two fields are read from the bytes: `chaddr` whole (the view
        // returns only an Ethernet address, and the reply echoes all 16 bytes) and `flags` raw
        // (the view keeps only the broadcast bit; the reply echoes them as sent).
        let packet = DhcpPacket::new_checked(payload)
            .map_err(|_| DhcpError::Truncated { len: payload.len() })?;
        let (h, mut rest) = payload.split_at(OPTIONS_START);

        let op = u8::from(packet.opcode());
        if op != BOOTREQUEST {
            return Err(DhcpError::NotBootRequest(op));
        }
        let htype = u16::from(packet.hardware_type()) as u8;
        if htype != HTYPE_ETHERNET || packet.hardware_len() != HLEN_ETHERNET {
            return Err(DhcpError::NotEthernet {
                htype,
                hlen: packet.hardware_len(),
            });
        }
        let cookie = packet.magic_number();
        if cookie != u32::from_be_bytes(MAGIC_COOKIE) {
            return Err(DhcpError::BadMagicCookie(cookie));
        }

        let mut req = Request {
            msg_type: 0,
            xid: packet.transaction_id().to_be_bytes(),
            flags: [h[10], h[11]],
            ciaddr: packet.client_ip(),
            giaddr: packet.relay_agent_ip().octets(),
            chaddr: [0; 16],
            requested_ip: None,
            server_id: None,
            max_message_size: None,
            rapid_commit: false,
            client_id: None,
            hostname: None,
            params: ParamList::new(),
        };
        req.chaddr.copy_from_slice(&h[28..44]);

        let mut msg_type = None;
        let mut offset = OPTIONS_START;
        while let Some((&code, after_code)) = rest.split_first() {
            match code {
                opt::PAD => {
                    rest = after_code;
                    offset += 1;
                    continue;
                }
                opt::END => break,
                _ => {}
            }
            let overrun = DhcpError::OptionOverrun { code, offset };
            let (&len, after_len) = after_code.split_first().ok_or(overrun.clone())?;
            let (data, after_data) = after_len
                .split_at_checked(usize::from(len))
                .ok_or(overrun)?;

            match code {
                opt::MESSAGE_TYPE => {
                    let [t] = fixed::<1>(code, data)?;
                    msg_type.get_or_insert(t);
                }
                opt::REQUESTED_IP => {
                    let ip = Ipv4Addr::from(fixed::<4>(code, data)?);
                    req.requested_ip.get_or_insert(ip);
                }
                opt::SERVER_ID => {
                    let ip = Ipv4Addr::from(fixed::<4>(code, data)?);
                    req.server_id.get_or_insert(ip);
                }
                opt::MAX_MESSAGE_SIZE => {
                    let size = u16::from_be_bytes(fixed::<2>(code, data)?);
                    req.max_message_size.get_or_insert(size);
                }
                opt::RAPID_COMMIT => {
                    fixed::<0>(code, data)?;
                    req.rapid_commit = true;
                }
                opt::PARAMETER_LIST => req.params.extend(data),
                opt::CLIENT_ID => {
                    req.client_id.get_or_insert(data);
                }
                opt::HOSTNAME => {
                    req.hostname.get_or_insert(data);
                }
                _ => {}
            }
            rest = after_data;
            offset += 2 + usize::from(len);
        }

        req.msg_type = msg_type.ok_or(DhcpError::MissingMessageType)?;
        Ok(req)
    }

    pub fn broadcast_flag(&self) -> bool {
        self.flags[0] & BROADCAST_FLAG != 0
    }

    pub fn chaddr_mac(&self) -> [u8; 6] {
        let c = &self.chaddr;
        [c[0], c[1], c[2], c[3], c[4], c[5]]
    }

    /// Largest UDP payload the client accepts. Values below 576 are illegal
    /// (RFC 2132 9.10) and treated as 576 rather than trusted: obeying a
    /// tiny value would only starve the guest of its configuration.
    pub fn reply_limit(&self) -> usize {
        let datagram = self.max_message_size.map_or(DEFAULT_MAX_MESSAGE, |m| {
            usize::from(m).max(DEFAULT_MAX_MESSAGE)
        });
        datagram.saturating_sub(IP_UDP_OVERHEAD)
    }
}

/// Fixed header fields of a reply that differ between message kinds.
pub(crate) struct ReplyHeader<'r, 'a> {
    pub request: &'r Request<'a>,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
}

/// Writes a reply into the caller's buffer without ever exceeding
/// `limit`.
///
/// Options are written whole or not at all: one that does not fit (keeping
/// room for END) is skipped and counted, and later, smaller ones may still
/// fit. Callers order options by importance.
pub(crate) struct ReplyWriter<'b> {
    header: &'b mut [u8; OPTIONS_START],
    options: &'b mut [u8],
    /// Write position within `options`.
    pos: usize,
    /// Usable length of `options`.
    limit: usize,
    pub omitted: u64,
}

impl<'b> ReplyWriter<'b> {
    /// `limit` is the largest payload the client accepts; the effective
    /// limit is the smaller of it and `out.len()`.
    pub fn new(out: &'b mut [u8], limit: usize) -> Result<Self, DhcpError> {
        let got = out.len();
        let too_small = DhcpError::OutputTooSmall {
            needed: MIN_BOOTP_LEN,
            got,
        };
        // A limit below the BOOTP minimum could not be met together with
        // the padding rule; reply_limit() never produces one.
        let limit = limit.max(MIN_BOOTP_LEN).min(got);
        if limit < MIN_BOOTP_LEN {
            return Err(too_small);
        }
        let (header, options) = out
            .split_at_mut_checked(OPTIONS_START)
            .ok_or(too_small.clone())?;
        let header: &mut [u8; OPTIONS_START] = header.try_into().map_err(|_| too_small)?;
        Ok(Self {
            header,
            options,
            pos: 0,
            limit: limit - OPTIONS_START,
            omitted: 0,
        })
    }

    pub fn header(&mut self, fields: ReplyHeader<'_, '_>) {
        let h = &mut *self.header;
        let req = fields.request;
        // The caller's buffer may hold a previous packet; sname and file in
        // particular must go out zeroed.
        h.fill(0);
        h[0] = BOOTREPLY;
        h[1] = HTYPE_ETHERNET;
        h[2] = HLEN_ETHERNET;
        h[4..8].copy_from_slice(&req.xid);
        h[10..12].copy_from_slice(&req.flags);
        h[12..16].copy_from_slice(&fields.ciaddr.octets());
        h[16..20].copy_from_slice(&fields.yiaddr.octets());
        h[24..28].copy_from_slice(&req.giaddr);
        h[28..44].copy_from_slice(&req.chaddr);
        h[236..240].copy_from_slice(&MAGIC_COOKIE);
    }

    /// Appends an option, split into 255-byte instances if longer
    /// (RFC 3396). Returns whether it was written.
    pub fn option(&mut self, code: u8, data: &[u8]) -> bool {
        let instances = data.len().div_ceil(255).max(1);
        let needed = data.len() + 2 * instances;
        // One byte stays reserved for END.
        let end = self.pos + needed;
        let Some(dst) = self
            .options
            .get_mut(self.pos..end)
            .filter(|_| end < self.limit)
        else {
            self.omitted += 1;
            return false;
        };
        let mut slots = dst.iter_mut();
        let mut push = |byte: u8| {
            if let Some(slot) = slots.next() {
                *slot = byte;
            }
        };
        if data.is_empty() {
            push(code);
            push(0);
        }
        for chunk in data.chunks(255) {
            push(code);
            // chunks(255) bounds the length.
            push(chunk.len() as u8);
            for &byte in chunk {
                push(byte);
            }
        }
        self.pos = end;
        true
    }

    /// Terminates the options and pads to the BOOTP minimum; returns the
    /// payload length.
    pub fn finish(self) -> usize {
        if let Some(slot) = self.options.get_mut(self.pos) {
            *slot = opt::END;
        }
        let used = self.pos + 1;
        let padded = used.max(MIN_BOOTP_LEN - OPTIONS_START);
        if let Some(pad) = self.options.get_mut(used..padded) {
            pad.fill(0);
        }
        OPTIONS_START + padded
    }
}
