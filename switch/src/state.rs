//! The switch's state as it travels from the source podwire to the destination during a live
//! migration: a versioned, self-checking byte format and its [`StateRepr`].
//!
//! # Theory of operation
//!
//! The bytes cross QEMU's migration stream (see podwire-vhost's `transfer` module), which
//! comes from another host: the destination trusts nothing in them. In the style of smoltcp's
//! wire layer, [`StateRepr::parse`] turns the whole stream into a [`StateRepr`] — checking the
//! magic, the version, every record's length and every count against a bound — before the
//! switch looks at any of it, and [`StateRepr::emit`] writes it back. A stream is refused whole
//! on any doubt; nothing is half-applied.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic "PWDS" | version u16 | record* | END record
//! record = kind u8 | length u16 | value[length]
//! ```
//!
//! Kinds: MAC (6), IPV4 (guest address 4), LEASE4, IPV6 (address in use 16, handed out 16),
//! IPV6_SEEN (one address the guest used, 16), BINDING6, FORWARD (5), TCP (45), TCP_REPAIR
//! (32), CHUNK (1..=65535), END (0 bytes).
//! The END record makes truncation detectable; bytes after it are refused. An unknown kind is
//! refused too: a new kind of record means a new version. Hand-written rather than serde +
//! a binary codec so that every length is bounded where it is read and the format is stated
//! here, in one place (docs/dependencies.md).
//!
//! Version 2 carries the guest's TCP connections whole when the source could dump their
//! sockets in repair mode (see podwire-repair): a TCP record may be followed by one
//! TCP_REPAIR record — the NAT's side of the connection (`snd_una`, the guest's window, MSS
//! and window scale, where it came from) and the length of the socket's dump — and then by
//! CHUNK records carrying that dump ([`podwire_repair::TcpDump::encode`], queues included)
//! in pieces of at most 65535 bytes, as one record's length is 16 bits. The chunks must add
//! up to the announced length exactly before any other record; the dump is then decoded with
//! its own strict checks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use podwire_repair::TcpDump;

/// "podwire device state".
pub const MAGIC: [u8; 4] = *b"PWDS";
/// The only version this podwire reads and writes (2: TCP sockets in repair records).
pub const VERSION: u16 = 2;

/// Bounds on what a stream may carry.
pub const MAX_FORWARDS: usize = 4096;
pub const MAX_TCP: usize = 1 << 16;
pub const MAX_V6_SEEN: usize = 64;
const MAX_OPAQUE: usize = 255;
/// Largest socket dump one TCP_REPAIR record announces: both queues at their cap, plus the
/// fixed fields.
pub const MAX_DUMP: usize = 2 * podwire_repair::socket::MAX_QUEUE + 256;
/// Largest value of one record (its length field is 16 bits).
const MAX_RECORD: usize = u16::MAX as usize;
/// Length of a TCP_REPAIR record's value.
const TCP_REPAIR_LEN: usize = 32;

mod kind {
    pub const END: u8 = 0;
    pub const MAC: u8 = 1;
    pub const IPV4: u8 = 2;
    pub const LEASE4: u8 = 3;
    pub const IPV6: u8 = 4;
    pub const IPV6_SEEN: u8 = 5;
    pub const BINDING6: u8 = 6;
    pub const FORWARD: u8 = 7;
    pub const TCP: u8 = 8;
    pub const TCP_REPAIR: u8 = 9;
    pub const CHUNK: u8 = 10;
}

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateFormatError {
    #[error("not a podwire device state (bad magic)")]
    BadMagic,
    #[error("device state version {0} is not supported (this podwire reads version {VERSION})")]
    UnknownVersion(u16),
    #[error("device state is truncated")]
    Truncated,
    #[error("device state has {0} trailing bytes after its end")]
    TrailingBytes(usize),
    #[error("device state record of unknown kind {0}")]
    UnknownRecord(u8),
    #[error("device state record {kind} has a bad length ({len})")]
    BadLength { kind: u8, len: usize },
    #[error("device state record {0} is malformed")]
    Malformed(u8),
    #[error("device state has {0} twice")]
    Duplicate(&'static str),
    #[error("device state has more than the allowed number of {0}")]
    TooMany(&'static str),
    #[error("device state has a lease or binding without its address family")]
    Orphan,
    #[error("device state has a TCP socket record that follows no TCP connection")]
    OrphanSocket,
    #[error("device state announces a {0}-byte socket dump, more than allowed")]
    DumpTooLarge(usize),
    #[error("device state has socket data chunks that do not match the announced length")]
    BadChunks,
    #[error("device state has a bad TCP socket dump: {0}")]
    BadSocket(#[from] podwire_repair::DecodeError),
}

/// The IPv4 side of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State4 {
    /// The address the guest uses.
    pub guest_ip: Ipv4Addr,
    pub lease: Option<Lease4>,
}

/// A DHCPv4 lease, its times as ages (a monotonic clock does not cross hosts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease4 {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub bound_secs_ago: u32,
    pub renewed_secs_ago: u32,
    pub lease_secs: u32,
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
}

/// The IPv6 side of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State6 {
    pub guest_ip: Ipv6Addr,
    pub handed_out: Ipv6Addr,
    /// Addresses the guest was seen using, oldest first.
    pub seen: Vec<Ipv6Addr>,
    pub binding: Option<Binding6>,
}

/// A DHCPv6 binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding6 {
    pub duid: Vec<u8>,
    pub iaid: u32,
    pub addr: Ipv6Addr,
}

/// One forwarded pod port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForwardRepr {
    pub udp: bool,
    pub host_port: u16,
    pub guest_port: u16,
}

/// One guest TCP connection, as the guest knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRepr {
    pub guest: SocketAddr,
    pub remote: SocketAddr,
    /// The next sequence number the guest expects from the remote end.
    pub seq_to_guest: u32,
    /// The next sequence number podwire expects from the guest.
    pub ack_from_guest: u32,
    /// The connection's socket, dumped in repair mode, when the source could hand it over.
    pub repair: Option<Box<TcpRepairRepr>>,
}

/// The rest of a connection that travels with its socket: the NAT's side and the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRepairRepr {
    /// The oldest sequence number towards the guest it has not acknowledged: the first byte
    /// of the socket's receive queue.
    pub snd_una: u32,
    /// The guest's receive window, in bytes.
    pub snd_wnd: u32,
    pub guest_mss: u16,
    pub guest_wscale: Option<u8>,
    /// For a connection that came in on a forwarded port: the peer's address.
    pub inbound_from: Option<IpAddr>,
    pub socket: TcpDump,
}

/// Everything the switch hands over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateRepr {
    pub guest_mac: Option<[u8; 6]>,
    pub v4: Option<State4>,
    pub v6: Option<State6>,
    pub forwards: Vec<ForwardRepr>,
    pub tcp: Vec<TcpRepr>,
}

/// Reads fixed-size fields out of one record's value.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn v4(&mut self) -> Option<Ipv4Addr> {
        self.take::<4>().map(Ipv4Addr::from)
    }
    fn v6(&mut self) -> Option<Ipv6Addr> {
        self.take::<16>().map(Ipv6Addr::from)
    }
    /// A length-prefixed (u8) byte string; 0xFF length... is just 255 bytes.
    fn opaque(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn put_opaque(out: &mut Vec<u8>, v: &[u8]) {
    let v = &v[..v.len().min(MAX_OPAQUE)];
    out.push(v.len() as u8);
    out.extend_from_slice(v);
}

/// An address in a fixed 16 bytes (IPv4 as IPv4-mapped) with a family byte before it.
fn put_sockaddr(out: &mut Vec<u8>, a: SocketAddr) {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn sockaddr(f: &mut Fields<'_>, v4: bool) -> Option<SocketAddr> {
    let ip = f.v6()?;
    let port = f.u16()?;
    let ip = if v4 {
        IpAddr::V4(ip.to_ipv4_mapped()?)
    } else {
        IpAddr::V6(ip)
    };
    Some(SocketAddr::new(ip, port))
}

impl StateRepr {
    /// The stream for this state.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.tcp.len() * 48 + self.forwards.len() * 8);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        let record = |out: &mut Vec<u8>, kind: u8, value: &[u8]| {
            out.push(kind);
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
            out.extend_from_slice(value);
        };
        if let Some(mac) = self.guest_mac {
            record(&mut out, kind::MAC, &mac);
        }
        if let Some(v4) = &self.v4 {
            record(&mut out, kind::IPV4, &v4.guest_ip.octets());
            if let Some(l) = &v4.lease {
                let mut v = Vec::new();
                v.extend_from_slice(&l.mac);
                v.extend_from_slice(&l.ip.octets());
                for n in [l.bound_secs_ago, l.renewed_secs_ago, l.lease_secs] {
                    v.extend_from_slice(&n.to_be_bytes());
                }
                v.push(u8::from(l.client_id.is_some()));
                put_opaque(&mut v, l.client_id.as_deref().unwrap_or(&[]));
                v.push(u8::from(l.hostname.is_some()));
                put_opaque(&mut v, l.hostname.as_deref().unwrap_or("").as_bytes());
                record(&mut out, kind::LEASE4, &v);
            }
        }
        if let Some(v6) = &self.v6 {
            let mut v = v6.guest_ip.octets().to_vec();
            v.extend_from_slice(&v6.handed_out.octets());
            record(&mut out, kind::IPV6, &v);
            for a in v6.seen.iter().take(MAX_V6_SEEN) {
                record(&mut out, kind::IPV6_SEEN, &a.octets());
            }
            if let Some(b) = &v6.binding {
                let mut v = b.iaid.to_be_bytes().to_vec();
                v.extend_from_slice(&b.addr.octets());
                v.extend_from_slice(&b.duid[..b.duid.len().min(MAX_OPAQUE)]);
                record(&mut out, kind::BINDING6, &v);
            }
        }
        for f in self.forwards.iter().take(MAX_FORWARDS) {
            let mut v = vec![u8::from(f.udp)];
            v.extend_from_slice(&f.host_port.to_be_bytes());
            v.extend_from_slice(&f.guest_port.to_be_bytes());
            record(&mut out, kind::FORWARD, &v);
        }
        for t in self.tcp.iter().take(MAX_TCP) {
            let mut v = vec![if t.guest.is_ipv4() { 4 } else { 6 }];
            put_sockaddr(&mut v, t.guest);
            put_sockaddr(&mut v, t.remote);
            v.extend_from_slice(&t.seq_to_guest.to_be_bytes());
            v.extend_from_slice(&t.ack_from_guest.to_be_bytes());
            record(&mut out, kind::TCP, &v);
            if let Some(r) = &t.repair {
                let mut dump = Vec::new();
                r.socket.encode(&mut dump);
                record(&mut out, kind::TCP_REPAIR, &tcp_repair_value(r, dump.len()));
                for chunk in dump.chunks(MAX_RECORD) {
                    record(&mut out, kind::CHUNK, chunk);
                }
            }
        }
        record(&mut out, kind::END, &[]);
        out
    }

    /// Checks and decodes a whole stream.
    pub fn parse(bytes: &[u8]) -> Result<StateRepr, StateFormatError> {
        use StateFormatError as E;
        let rest = match bytes.strip_prefix(&MAGIC) {
            Some(rest) => rest,
            None if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) => {
                return Err(E::Truncated)
            }
            None => return Err(E::BadMagic),
        };
        let mut f = Fields(rest);
        let version = f.u16().ok_or(E::Truncated)?;
        if version != VERSION {
            return Err(E::UnknownVersion(version));
        }
        let mut state = StateRepr::default();
        let mut lease4 = None;
        let mut ip6 = None;
        let mut seen6 = Vec::new();
        let mut binding6 = None;
        // A TCP_REPAIR record whose dump is still arriving in CHUNK records.
        let mut socket: Option<PendingSocket> = None;
        // Whether the record just read was a TCP one (a TCP_REPAIR record must follow one).
        let mut last_was_tcp = false;
        loop {
            let kind = f.u8().ok_or(E::Truncated)?;
            let len = usize::from(f.u16().ok_or(E::Truncated)?);
            let (value, rest) = f.0.split_at_checked(len).ok_or(E::Truncated)?;
            f.0 = rest;
            let bad_len = E::BadLength { kind, len };
            let mut v = Fields(value);
            if kind == kind::CHUNK {
                let pending = socket.as_mut().ok_or(E::BadChunks)?;
                if len == 0 || pending.dump.len() + len > pending.want {
                    return Err(E::BadChunks);
                }
                pending.dump.extend_from_slice(value);
                if pending.dump.len() == pending.want {
                    let done = socket.take().ok_or(E::BadChunks)?;
                    let conn = state.tcp.last_mut().ok_or(E::OrphanSocket)?;
                    conn.repair = Some(Box::new(done.finish()?));
                }
                continue;
            }
            if socket.is_some() {
                // Another record before the dump was whole.
                return Err(E::BadChunks);
            }
            match kind {
                kind::END => {
                    if len != 0 {
                        return Err(bad_len);
                    }
                    break;
                }
                kind::MAC => {
                    let mac = v.take::<6>().filter(|_| len == 6).ok_or(bad_len)?;
                    if state.guest_mac.replace(mac).is_some() {
                        return Err(E::Duplicate("the guest MAC"));
                    }
                }
                kind::IPV4 => {
                    let ip = v.v4().filter(|_| len == 4).ok_or(bad_len)?;
                    let old = state.v4.replace(State4 {
                        guest_ip: ip,
                        lease: None,
                    });
                    if old.is_some() {
                        return Err(E::Duplicate("the IPv4 address"));
                    }
                }
                kind::LEASE4 => {
                    let lease = parse_lease4(&mut v).ok_or(E::Malformed(kind))?;
                    if lease4.replace(lease).is_some() {
                        return Err(E::Duplicate("the DHCPv4 lease"));
                    }
                }
                kind::IPV6 => {
                    let (a, b) = (v.v6(), v.v6());
                    let pair = a.zip(b).filter(|_| len == 32).ok_or(bad_len)?;
                    if ip6.replace(pair).is_some() {
                        return Err(E::Duplicate("the IPv6 address"));
                    }
                }
                kind::IPV6_SEEN => {
                    let a = v.v6().filter(|_| len == 16).ok_or(bad_len)?;
                    if seen6.len() == MAX_V6_SEEN {
                        return Err(E::TooMany("IPv6 addresses"));
                    }
                    seen6.push(a);
                }
                kind::BINDING6 => {
                    let (iaid, addr) = v.u32().zip(v.v6()).ok_or(bad_len)?;
                    let duid = v.rest();
                    if duid.is_empty() || duid.len() > MAX_OPAQUE {
                        return Err(E::Malformed(kind));
                    }
                    let b = Binding6 {
                        duid: duid.to_vec(),
                        iaid,
                        addr,
                    };
                    if binding6.replace(b).is_some() {
                        return Err(E::Duplicate("the DHCPv6 binding"));
                    }
                }
                kind::FORWARD => {
                    let (udp, host, guest) = (v.u8(), v.u16(), v.u16());
                    let (udp, (host_port, guest_port)) = udp
                        .zip(host.zip(guest))
                        .filter(|_| len == 5)
                        .ok_or(bad_len)?;
                    if udp > 1 {
                        return Err(E::Malformed(kind));
                    }
                    if state.forwards.len() == MAX_FORWARDS {
                        return Err(E::TooMany("forwarded ports"));
                    }
                    state.forwards.push(ForwardRepr {
                        udp: udp == 1,
                        host_port,
                        guest_port,
                    });
                }
                kind::TCP => {
                    if len != 45 {
                        return Err(bad_len);
                    }
                    let t = parse_tcp(&mut v).ok_or(E::Malformed(kind))?;
                    if state.tcp.len() == MAX_TCP {
                        return Err(E::TooMany("TCP connections"));
                    }
                    state.tcp.push(t);
                    last_was_tcp = true;
                    continue;
                }
                kind::TCP_REPAIR => {
                    if len != TCP_REPAIR_LEN {
                        return Err(bad_len);
                    }
                    if !last_was_tcp {
                        return Err(E::OrphanSocket);
                    }
                    let pending = parse_tcp_repair(&mut v).ok_or(E::Malformed(kind))?;
                    if pending.want > MAX_DUMP {
                        return Err(E::DumpTooLarge(pending.want));
                    }
                    if pending.want == 0 {
                        return Err(E::BadChunks);
                    }
                    socket = Some(pending);
                }
                other => return Err(E::UnknownRecord(other)),
            }
            last_was_tcp = false;
        }
        if !f.done() {
            return Err(E::TrailingBytes(f.0.len()));
        }
        if lease4.is_some() {
            state.v4.as_mut().ok_or(E::Orphan)?.lease = lease4;
        }
        match ip6 {
            Some((guest_ip, handed_out)) => {
                state.v6 = Some(State6 {
                    guest_ip,
                    handed_out,
                    seen: seen6,
                    binding: binding6,
                })
            }
            None if !seen6.is_empty() || binding6.is_some() => return Err(E::Orphan),
            None => {}
        }
        Ok(state)
    }
}

fn parse_lease4(v: &mut Fields<'_>) -> Option<Lease4> {
    let mac = v.take::<6>()?;
    let ip = v.v4()?;
    let (bound_secs_ago, renewed_secs_ago, lease_secs) = (v.u32()?, v.u32()?, v.u32()?);
    let has_id = v.u8()?;
    let id = v.opaque()?;
    let has_name = v.u8()?;
    let name = v.opaque()?;
    if has_id > 1 || has_name > 1 || !v.done() {
        return None;
    }
    Some(Lease4 {
        mac,
        ip,
        bound_secs_ago,
        renewed_secs_ago,
        lease_secs,
        client_id: (has_id == 1).then(|| id.to_vec()),
        hostname: (has_name == 1).then(|| String::from_utf8_lossy(name).into_owned()),
    })
}

fn parse_tcp(v: &mut Fields<'_>) -> Option<TcpRepr> {
    let family = v.u8()?;
    if family != 4 && family != 6 {
        return None;
    }
    let guest = sockaddr(v, family == 4)?;
    let remote = sockaddr(v, family == 4)?;
    Some(TcpRepr {
        guest,
        remote,
        seq_to_guest: v.u32()?,
        ack_from_guest: v.u32()?,
        repair: None,
    })
}

/// A TCP_REPAIR record's value: the NAT's fields, then the dump's length.
fn tcp_repair_value(r: &TcpRepairRepr, dump_len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(TCP_REPAIR_LEN);
    v.extend_from_slice(&r.snd_una.to_be_bytes());
    v.extend_from_slice(&r.snd_wnd.to_be_bytes());
    v.extend_from_slice(&r.guest_mss.to_be_bytes());
    v.push(r.guest_wscale.unwrap_or(0xff));
    let (family, ip) = match r.inbound_from {
        None => (0, Ipv6Addr::UNSPECIFIED),
        Some(IpAddr::V4(a)) => (4, a.to_ipv6_mapped()),
        Some(IpAddr::V6(a)) => (6, a),
    };
    v.push(family);
    v.extend_from_slice(&ip.octets());
    v.extend_from_slice(&(dump_len as u32).to_be_bytes());
    v
}

/// A TCP_REPAIR record read, waiting for its CHUNK records.
struct PendingSocket {
    snd_una: u32,
    snd_wnd: u32,
    guest_mss: u16,
    guest_wscale: Option<u8>,
    inbound_from: Option<IpAddr>,
    want: usize,
    dump: Vec<u8>,
}

impl PendingSocket {
    fn finish(self) -> Result<TcpRepairRepr, StateFormatError> {
        Ok(TcpRepairRepr {
            snd_una: self.snd_una,
            snd_wnd: self.snd_wnd,
            guest_mss: self.guest_mss,
            guest_wscale: self.guest_wscale,
            inbound_from: self.inbound_from,
            socket: TcpDump::decode(&self.dump)?,
        })
    }
}

fn parse_tcp_repair(v: &mut Fields<'_>) -> Option<PendingSocket> {
    let snd_una = v.u32()?;
    let snd_wnd = v.u32()?;
    let guest_mss = v.u16()?;
    let guest_wscale = match v.u8()? {
        0xff => None,
        s if s <= 14 => Some(s),
        _ => return None,
    };
    let family = v.u8()?;
    let ip = v.v6()?;
    let inbound_from = match family {
        0 if ip.is_unspecified() => None,
        4 => Some(IpAddr::V4(ip.to_ipv4_mapped()?)),
        6 => Some(IpAddr::V6(ip)),
        _ => return None,
    };
    let want = v.u32()? as usize;
    if !v.done() {
        return None;
    }
    Some(PendingSocket {
        snd_una,
        snd_wnd,
        guest_mss,
        guest_wscale,
        inbound_from,
        want,
        // Grown as the chunks come: the announced length is not trusted with an allocation.
        dump: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> StateRepr {
        StateRepr {
            guest_mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            v4: Some(State4 {
                guest_ip: Ipv4Addr::new(198, 18, 0, 2),
                lease: Some(Lease4 {
                    mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                    ip: Ipv4Addr::new(198, 18, 0, 2),
                    bound_secs_ago: 70,
                    renewed_secs_ago: 10,
                    lease_secs: 3600,
                    client_id: Some(vec![1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                    hostname: Some("vm".into()),
                }),
            }),
            v6: Some(State6 {
                guest_ip: "fd00::2".parse().unwrap(),
                handed_out: "fd00::2".parse().unwrap(),
                seen: vec!["fe80::5054:ff:fe12:3456".parse().unwrap()],
                binding: Some(Binding6 {
                    duid: vec![0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56],
                    iaid: 7,
                    addr: "fd00::2".parse().unwrap(),
                }),
            }),
            forwards: vec![
                ForwardRepr {
                    udp: false,
                    host_port: 8080,
                    guest_port: 80,
                },
                ForwardRepr {
                    udp: true,
                    host_port: 5353,
                    guest_port: 53,
                },
            ],
            tcp: vec![
                TcpRepr {
                    guest: "198.18.0.2:40000".parse().unwrap(),
                    remote: "198.18.1.1:80".parse().unwrap(),
                    seq_to_guest: 0xdead_beef,
                    ack_from_guest: 12345,
                    repair: Some(Box::new(repair_sample(70_000))),
                },
                TcpRepr {
                    guest: "[fd00::2]:40001".parse().unwrap(),
                    remote: "[fd00:1::1]:443".parse().unwrap(),
                    seq_to_guest: 1,
                    ack_from_guest: u32::MAX,
                    repair: None,
                },
            ],
        }
    }

    /// A connection's socket with `queued` bytes in its receive queue (more than one record
    /// holds, for a dump that spans several chunks).
    fn repair_sample(queued: usize) -> TcpRepairRepr {
        TcpRepairRepr {
            snd_una: 0xdead_0000,
            snd_wnd: 64 << 10,
            guest_mss: 1460,
            guest_wscale: Some(7),
            inbound_from: Some("198.18.1.1".parse().unwrap()),
            socket: TcpDump {
                local: "198.18.0.2:40000".parse().unwrap(),
                remote: "198.18.1.1:80".parse().unwrap(),
                seq_snd: 1,
                seq_rcv: 2,
                window: Default::default(),
                mss: 1460,
                options: 7,
                snd_wscale: 7,
                rcv_wscale: 7,
                timestamp: 99,
                send_queue: b"to the peer".to_vec(),
                notsent: 3,
                recv_queue: (0..queued).map(|i| i as u8).collect(),
            },
        }
    }

    #[test]
    fn round_trip_full_and_empty() {
        for s in [full(), StateRepr::default()] {
            assert_eq!(StateRepr::parse(&s.emit()).unwrap(), s);
        }
        let mut no_lease = full();
        no_lease
            .v4
            .as_mut()
            .unwrap()
            .lease
            .as_mut()
            .unwrap()
            .client_id = None;
        no_lease
            .v4
            .as_mut()
            .unwrap()
            .lease
            .as_mut()
            .unwrap()
            .hostname = None;
        no_lease.v6.as_mut().unwrap().binding = None;
        assert_eq!(StateRepr::parse(&no_lease.emit()).unwrap(), no_lease);
    }

    #[test]
    fn garbage_is_refused() {
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(StateRepr::parse(&garbage), Err(StateFormatError::BadMagic));
        assert_eq!(
            StateRepr::parse(b"GARBAGE!"),
            Err(StateFormatError::BadMagic)
        );
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = full().emit();
        for n in 0..bytes.len() {
            assert_eq!(
                StateRepr::parse(&bytes[..n]),
                Err(StateFormatError::Truncated),
                "cut at {n} of {}",
                bytes.len()
            );
        }
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut bytes = full().emit();
        for old_or_new in [1u16, 3] {
            bytes[4..6].copy_from_slice(&old_or_new.to_be_bytes());
            assert_eq!(
                StateRepr::parse(&bytes),
                Err(StateFormatError::UnknownVersion(old_or_new))
            );
        }
        let msg = StateFormatError::UnknownVersion(1).to_string();
        assert!(
            msg.contains("version 1") && msg.contains("version 2"),
            "{msg}"
        );
    }

    #[test]
    fn trailing_bytes_unknown_records_and_bad_lengths_are_refused() {
        let mut bytes = StateRepr::default().emit();
        bytes.push(0);
        assert_eq!(
            StateRepr::parse(&bytes),
            Err(StateFormatError::TrailingBytes(1))
        );
        let with = |kind: u8, value: &[u8]| {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&VERSION.to_be_bytes());
            b.push(kind);
            b.extend_from_slice(&(value.len() as u16).to_be_bytes());
            b.extend_from_slice(value);
            b.extend_from_slice(&[0, 0, 0]);
            b
        };
        assert_eq!(
            StateRepr::parse(&with(99, &[1, 2])),
            Err(StateFormatError::UnknownRecord(99))
        );
        assert_eq!(
            StateRepr::parse(&with(kind::MAC, &[1, 2, 3])),
            Err(StateFormatError::BadLength {
                kind: kind::MAC,
                len: 3
            })
        );
        let mut tcp = [0u8; 45];
        tcp[0] = 5;
        assert_eq!(
            StateRepr::parse(&with(kind::TCP, &tcp)),
            Err(StateFormatError::Malformed(kind::TCP))
        );
        // A lease without the IPv4 address it belongs to.
        let lease = &full().emit();
        let s = StateRepr::parse(lease).unwrap();
        let mut only_lease = StateRepr {
            v4: s.v4.clone(),
            ..Default::default()
        }
        .emit();
        // Drop the IPV4 record (kind, len 4, 4 bytes) that precedes the lease.
        only_lease.drain(6..6 + 7);
        assert_eq!(StateRepr::parse(&only_lease), Err(StateFormatError::Orphan));
    }

    #[test]
    fn duplicates_and_too_many_records_are_refused() {
        let mut bytes = full().emit();
        // A second MAC record, right after the version.
        bytes.splice(6..6, [kind::MAC, 0, 6, 1, 2, 3, 4, 5, 6]);
        assert_eq!(
            StateRepr::parse(&bytes),
            Err(StateFormatError::Duplicate("the guest MAC"))
        );
        let mut many = MAGIC.to_vec();
        many.extend_from_slice(&VERSION.to_be_bytes());
        for _ in 0..=MAX_V6_SEEN {
            many.extend_from_slice(&[kind::IPV6_SEEN, 0, 16]);
            many.extend_from_slice(&[0xfd; 16]);
        }
        many.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            StateRepr::parse(&many),
            Err(StateFormatError::TooMany("IPv6 addresses"))
        );
    }

    /// The socket dump of a connection travels in CHUNK records after its TCP_REPAIR record;
    /// any other arrangement, or a dump that does not decode, refuses the whole stream.
    #[test]
    fn socket_dumps_travel_in_chunks_and_bad_arrangements_are_refused() {
        let state = full();
        let bytes = state.emit();
        let parsed = StateRepr::parse(&bytes).unwrap();
        assert_eq!(parsed, state);
        let dump = &parsed.tcp[0].repair.as_ref().unwrap().socket;
        assert_eq!(dump.recv_queue.len(), 70_000, "spans two chunks");

        // Records of a stream, as (offset, kind, len).
        let records = |b: &[u8]| {
            let mut at = 6;
            let mut out = Vec::new();
            while at < b.len() {
                let len = usize::from(u16::from_be_bytes([b[at + 1], b[at + 2]]));
                out.push((at, b[at], len));
                at += 3 + len;
            }
            out
        };
        let recs = records(&bytes);
        let chunks: Vec<_> = recs.iter().filter(|r| r.1 == kind::CHUNK).collect();
        assert_eq!(chunks.len(), 2);
        let repair = *recs.iter().find(|r| r.1 == kind::TCP_REPAIR).unwrap();

        // A chunk missing: the next record comes before the dump is whole.
        let (at, _, len) = *chunks[1];
        let mut missing = bytes.clone();
        missing.drain(at..at + 3 + len);
        assert_eq!(StateRepr::parse(&missing), Err(StateFormatError::BadChunks));
        // A chunk too many (a copy of the last one).
        let mut extra = bytes.clone();
        let copy = bytes[at..at + 3 + len].to_vec();
        extra.splice(at + 3 + len..at + 3 + len, copy);
        assert_eq!(StateRepr::parse(&extra), Err(StateFormatError::BadChunks));
        // A chunk with no TCP_REPAIR record before it.
        let mut stray = StateRepr::default().emit();
        stray.splice(6..6, [kind::CHUNK, 0, 1, 0]);
        assert_eq!(StateRepr::parse(&stray), Err(StateFormatError::BadChunks));
        // A TCP_REPAIR record that follows no TCP record.
        let mut orphan = StateRepr::default().emit();
        let value = bytes[repair.0..repair.0 + 3 + repair.2].to_vec();
        orphan.splice(6..6, value);
        assert_eq!(
            StateRepr::parse(&orphan),
            Err(StateFormatError::OrphanSocket)
        );
        // An announced dump beyond the cap is refused before anything is read into it.
        let mut huge = bytes.clone();
        let len_at = repair.0 + 3 + TCP_REPAIR_LEN - 4;
        huge[len_at..len_at + 4].copy_from_slice(&(MAX_DUMP as u32 + 1).to_be_bytes());
        assert_eq!(
            StateRepr::parse(&huge),
            Err(StateFormatError::DumpTooLarge(MAX_DUMP + 1))
        );
        // A dump whose own fields are wrong (an unknown address family in it).
        let mut bad = bytes.clone();
        bad[chunks[0].0 + 3] = 5;
        assert!(
            matches!(StateRepr::parse(&bad), Err(StateFormatError::BadSocket(_))),
            "{:?}",
            StateRepr::parse(&bad)
        );
        // A window scale no TCP has.
        let mut scale = bytes.clone();
        scale[repair.0 + 3 + 10] = 15;
        assert_eq!(
            StateRepr::parse(&scale),
            Err(StateFormatError::Malformed(kind::TCP_REPAIR))
        );
    }
}
