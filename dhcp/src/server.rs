//! The single-guest DHCPv4 state machine.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::config::{compile, Compiled, Dhcpv4Config};
use crate::error::{ConfigError, DhcpError};
use crate::wire::{msg, opt, ReplyHeader, ReplyWriter, Request};

/// Where the caller should send a reply. Either way it goes from
/// `server_ip`:67 to port 68, and the Ethernet destination is the guest's
/// MAC (the only station there is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyDest {
    /// IP destination 255.255.255.255.
    Broadcast,
    /// IP destination is the client's `ciaddr`, which it can already
    /// receive on.
    Unicast(Ipv4Addr),
}

/// The kinds of message this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Offer,
    Ack,
    Nak,
}

impl MessageKind {
    fn code(self) -> u8 {
        match self {
            MessageKind::Offer => msg::OFFER,
            MessageKind::Ack => msg::ACK,
            MessageKind::Nak => msg::NAK,
        }
    }
}

/// A reply written into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Bytes of UDP payload written at the start of `out`.
    pub len: usize,
    pub dest: ReplyDest,
    pub kind: MessageKind,
}

podwire_frame::counters! {
    /// Event counters. Every datagram bumps `received` and then exactly one of
    /// `malformed` or a per-type counter (`discovers` .. `informs`), or
    /// `ignored_unsupported_type`. Every datagram that gets no reply is
    /// accounted for by `malformed`, `ignored`, `declines`, `releases` or
    /// `output_too_small`.
    #[derive(Clone, PartialEq, Eq)]
    pub struct Dhcpv4Counters: u64 {
        /// Datagrams handed to the server.
        received: Count,
        /// DISCOVERs received.
        discovers: Count,
        /// REQUESTs received.
        requests: Count,
        /// DECLINEs received.
        declines: Count,
        /// RELEASEs received.
        releases: Count,
        /// INFORMs received.
        informs: Count,
        /// OFFERs sent.
        offers: Count,
        /// ACKs sent.
        acks: Count,
        /// NAKs sent.
        naks: Count,
        /// DISCOVERs answered directly with an ACK (RFC 4039); also counted in
        /// `discovers` and `acks`.
        rapid_commits: Count,
        /// Datagrams rejected with an error other than `OutputTooSmall`.
        malformed: Drop,
        /// Well-formed messages that got no reply and changed nothing; the sum
        /// of the `ignored_*` counters.
        ignored: Count,
        /// REQUEST/DECLINE/RELEASE naming another server: the guest chose
        /// someone else, which on this link means it is confused or probing.
        ignored_other_server: Drop,
        /// Message types a client does not send to a server (OFFER, ACK, NAK,
        /// or anything beyond INFORM).
        ignored_unsupported_type: Drop,
        /// RELEASEs for an address or MAC that holds no lease here.
        ignored_stale_release: Drop,
        /// `chaddr` differs from the Ethernet source. Served anyway; a hint
        /// that something inside the guest bridges or spoofs.
        chaddr_mismatch: Count,
        /// Options left out of replies because the client's size limit or the
        /// caller's buffer had no room.
        options_omitted: Count,
        /// Replies dropped because `out` was shorter than 300 bytes.
        output_too_small: Drop,
    }
}

/// The guest's binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Ethernet source of the message that bound it.
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    /// When this MAC first got the address; kept across renewals.
    pub bound_at: Instant,
    /// The latest ACK; the lease runs from here.
    pub renewed_at: Instant,
    pub lease_secs: u32,
    /// Option 61 as the client sent it.
    pub client_id: Option<Vec<u8>>,
    /// Option 12 as the client sent it, lossily decoded, trailing NULs
    /// stripped. Untrusted: escape before logging.
    pub hostname: Option<String>,
}

impl LeaseInfo {
    /// `None` for an infinite lease.
    pub fn expires_at(&self) -> Option<Instant> {
        if self.lease_secs == u32::MAX {
            return None;
        }
        self.renewed_at
            .checked_add(Duration::from_secs(u64::from(self.lease_secs)))
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at().is_some_and(|at| now >= at)
    }
}

/// The last DECLINE received. A DECLINE means the guest saw its address
/// answered by someone else via ARP; on a point-to-point link that points
/// at a bug in whatever answers ARP for the guest, so it deserves a log
/// line or an alert. We keep offering the same address regardless: there
/// is no other one to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeclineInfo {
    pub mac: [u8; 6],
    /// Option 50 of the DECLINE, if present.
    pub ip: Option<Ipv4Addr>,
    pub at: Instant,
}

/// What to answer, decided before any byte is written.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Offer,
    /// `rapid`: RFC 4039 two-message exchange.
    Ack {
        rapid: bool,
    },
    /// RFC 2131 4.3.5: configuration only, no address or lease.
    InformAck,
    Nak(&'static str),
}

/// A DHCPv4 server for exactly one guest. See the crate documentation.
#[derive(Debug, Clone)]
pub struct Dhcpv4Server {
    config: Dhcpv4Config,
    compiled: Compiled,
    lease: Option<LeaseInfo>,
    last_decline: Option<DeclineInfo>,
    counters: Dhcpv4Counters,
}

fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

impl Dhcpv4Server {
    /// Accepts any configuration; parts that cannot be encoded are left out
    /// of replies (see [`Dhcpv4Config::validate`]).
    pub fn new(config: Dhcpv4Config) -> Self {
        let (compiled, _) = compile(&config);
        Self {
            config,
            compiled,
            lease: None,
            last_decline: None,
            counters: Dhcpv4Counters::default(),
        }
    }

    /// Refuses a configuration that [`Dhcpv4Config::validate`] rejects.
    pub fn try_new(config: Dhcpv4Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::new(config))
    }

    /// Replaces the configuration. Counters are kept.
    ///
    /// If the guest address changes, the lease is dropped: the guest's next
    /// renewal then names the old address and is NAKed, which sends it back
    /// to DISCOVER. Other changes reach the guest only at its next renewal
    /// (T1, half the lease), since DHCPFORCERENEW needs authentication we do
    /// not have; keep leases short if that latency matters.
    pub fn set_config(&mut self, config: Dhcpv4Config) {
        if config.guest_ip != self.config.guest_ip {
            self.lease = None;
        }
        self.compiled = compile(&config).0;
        self.config = config;
    }

    /// [`Self::set_config`], refusing what [`Dhcpv4Config::validate`]
    /// rejects and leaving the old configuration in place then.
    pub fn try_set_config(&mut self, config: Dhcpv4Config) -> Result<(), ConfigError> {
        config.validate()?;
        self.set_config(config);
        Ok(())
    }

    pub fn config(&self) -> &Dhcpv4Config {
        &self.config
    }

    pub fn counters(&self) -> &Dhcpv4Counters {
        &self.counters
    }

    /// The current binding, if it has not expired by now.
    pub fn lease(&self) -> Option<LeaseInfo> {
        self.lease_at(Instant::now())
    }

    /// The current binding, if it has not expired by `now`.
    pub fn lease_at(&self, now: Instant) -> Option<LeaseInfo> {
        self.lease.as_ref().filter(|l| !l.is_expired(now)).cloned()
    }

    /// Live migration: takes over the binding the source podwire had made, so that the guest's
    /// renewals are answered as before.
    pub fn restore_lease(&mut self, lease: LeaseInfo) {
        self.lease = Some(lease);
    }

    pub fn last_decline(&self) -> Option<DeclineInfo> {
        self.last_decline
    }

    /// Processes one datagram from the guest, using the current time for
    /// lease bookkeeping. See [`Self::handle_at`].
    pub fn handle(
        &mut self,
        client_mac: [u8; 6],
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Option<Reply>, DhcpError> {
        self.handle_at(Instant::now(), client_mac, payload, out)
    }

    /// Processes one datagram from the guest.
    ///
    /// `payload` is the UDP payload of a datagram to port 67 and
    /// `client_mac` its Ethernet source. On `Ok(Some(reply))` the first
    /// `reply.len` bytes of `out` are the reply's UDP payload. `out` must be
    /// at least 300 bytes; 576 lets every reply be complete (more is used
    /// only if the client advertises a larger maximum message size).
    pub fn handle_at(
        &mut self,
        now: Instant,
        client_mac: [u8; 6],
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Option<Reply>, DhcpError> {
        bump(&mut self.counters.received);
        let req = match Request::parse(payload) {
            Ok(req) => req,
            Err(err) => {
                bump(&mut self.counters.malformed);
                return Err(err);
            }
        };
        if req.chaddr_mac() != client_mac {
            bump(&mut self.counters.chaddr_mismatch);
        }

        match req.msg_type {
            msg::DISCOVER => {
                bump(&mut self.counters.discovers);
                if req.rapid_commit {
                    let reply = self.answer(&req, Answer::Ack { rapid: true }, out)?;
                    bump(&mut self.counters.rapid_commits);
                    self.bind(now, client_mac, &req);
                    Ok(Some(reply))
                } else {
                    self.answer(&req, Answer::Offer, out).map(Some)
                }
            }
            msg::REQUEST => {
                bump(&mut self.counters.requests);
                self.on_request(now, client_mac, &req, out)
            }
            msg::DECLINE => {
                bump(&mut self.counters.declines);
                self.on_decline(now, client_mac, &req);
                Ok(None)
            }
            msg::RELEASE => {
                bump(&mut self.counters.releases);
                self.on_release(client_mac, &req);
                Ok(None)
            }
            msg::INFORM => {
                bump(&mut self.counters.informs);
                self.answer(&req, Answer::InformAck, out).map(Some)
            }
            _ => {
                bump(&mut self.counters.ignored);
                bump(&mut self.counters.ignored_unsupported_type);
                Ok(None)
            }
        }
    }

    fn ignore_other_server(&mut self) {
        bump(&mut self.counters.ignored);
        bump(&mut self.counters.ignored_other_server);
    }

    /// RFC 2131 4.3.2, distinguishing the client states by which of
    /// server id, requested address and ciaddr are present.
    fn on_request(
        &mut self,
        now: Instant,
        client_mac: [u8; 6],
        req: &Request<'_>,
        out: &mut [u8],
    ) -> Result<Option<Reply>, DhcpError> {
        let ours = self.compiled.guest_ip;
        let verdict = match (req.server_id, req.requested_ip) {
            // SELECTING another server's offer.
            (Some(server), _) if server != self.compiled.server_ip => {
                self.ignore_other_server();
                return Ok(None);
            }
            // SELECTING our offer. Option 50 is mandatory here, but a
            // client that put the address in ciaddr instead still means it.
            (Some(_), requested) => match requested.or(nonzero(req.ciaddr)) {
                Some(ip) if ip == ours => Answer::Ack { rapid: false },
                Some(_) => Answer::Nak("requested address is not on offer"),
                None => Answer::Nak("request names no address"),
            },
            // INIT-REBOOT: verifying a remembered address. We are the only
            // server on the link, hence authoritative, hence NAK rather than
            // silence for a wrong one.
            (None, Some(ip)) if ip == ours => Answer::Ack { rapid: false },
            (None, Some(_)) => Answer::Nak("requested address is not valid on this link"),
            // RENEWING / REBINDING.
            (None, None) => match nonzero(req.ciaddr) {
                Some(ip) if ip == ours => Answer::Ack { rapid: false },
                Some(_) => Answer::Nak("lease is for another address"),
                // Not a legal REQUEST; a NAK at least restarts the client.
                None => Answer::Nak("request names no address"),
            },
        };
        let reply = self.answer(req, verdict, out)?;
        if reply.kind == MessageKind::Ack {
            self.bind(now, client_mac, req);
        }
        Ok(Some(reply))
    }

    fn on_decline(&mut self, now: Instant, client_mac: [u8; 6], req: &Request<'_>) {
        if req.server_id.is_some_and(|s| s != self.compiled.server_ip) {
            self.ignore_other_server();
            return;
        }
        self.last_decline = Some(DeclineInfo {
            mac: client_mac,
            ip: req.requested_ip,
            at: now,
        });
        // The client will not use the address, so it is not bound.
        if self.lease.as_ref().is_some_and(|l| l.mac == client_mac) {
            self.lease = None;
        }
    }

    fn on_release(&mut self, client_mac: [u8; 6], req: &Request<'_>) {
        if req.server_id.is_some_and(|s| s != self.compiled.server_ip) {
            self.ignore_other_server();
            return;
        }
        // A late RELEASE from a previous MAC or an old address must not
        // unbind the current lease.
        let matches = self
            .lease
            .as_ref()
            .is_some_and(|l| l.mac == client_mac && l.ip == req.ciaddr);
        if matches {
            self.lease = None;
        } else {
            bump(&mut self.counters.ignored);
            bump(&mut self.counters.ignored_stale_release);
        }
    }

    fn bind(&mut self, now: Instant, client_mac: [u8; 6], req: &Request<'_>) {
        let previous = self.lease.take().filter(|l| l.mac == client_mac);
        let hostname = req.hostname.map(|raw| {
            let trimmed = match raw.iter().rposition(|&b| b != 0) {
                Some(last) => raw.get(..=last).unwrap_or(raw),
                None => &[],
            };
            String::from_utf8_lossy(trimmed).into_owned()
        });
        let (bound_at, old_client_id, old_hostname) = match previous {
            Some(p) => (p.bound_at, p.client_id, p.hostname),
            None => (now, None, None),
        };
        self.lease = Some(LeaseInfo {
            mac: client_mac,
            ip: self.compiled.guest_ip,
            bound_at,
            renewed_at: now,
            lease_secs: self.compiled.lease_secs,
            client_id: req.client_id.map(<[u8]>::to_vec).or(old_client_id),
            hostname: hostname.or(old_hostname),
        });
    }

    /// Writes the reply. Option order is also priority order, since
    /// options that do not fit are skipped: protocol options, then the
    /// address and routes, then the client identifier echo, then what the
    /// client asked for in its order, then everything else configured.
    fn answer(
        &mut self,
        req: &Request<'_>,
        answer: Answer,
        out: &mut [u8],
    ) -> Result<Reply, DhcpError> {
        let mut w = match ReplyWriter::new(out, req.reply_limit()) {
            Ok(w) => w,
            Err(err) => {
                bump(&mut self.counters.output_too_small);
                return Err(err);
            }
        };
        let c = &self.compiled;
        let (kind, yiaddr, ciaddr) = match answer {
            Answer::Offer => (MessageKind::Offer, c.guest_ip, Ipv4Addr::UNSPECIFIED),
            Answer::Ack { .. } => (MessageKind::Ack, c.guest_ip, req.ciaddr),
            Answer::InformAck => (MessageKind::Ack, Ipv4Addr::UNSPECIFIED, req.ciaddr),
            Answer::Nak(_) => (
                MessageKind::Nak,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
            ),
        };
        w.header(ReplyHeader {
            request: req,
            ciaddr,
            yiaddr,
        });
        w.option(opt::MESSAGE_TYPE, &[kind.code()]);
        w.option(opt::SERVER_ID, &c.server_ip.octets());

        if let Answer::Nak(text) = answer {
            w.option(opt::MESSAGE, text.as_bytes());
            // RFC 6842: echo the client identifier in every reply.
            if let Some(id) = req.client_id {
                w.option(opt::CLIENT_ID, id);
            }
        } else {
            let mut sent = [false; 256];
            for code in [opt::MESSAGE_TYPE, opt::SERVER_ID, opt::CLIENT_ID] {
                sent[usize::from(code)] = true;
            }
            if matches!(answer, Answer::Offer | Answer::Ack { .. }) {
                let lease = c.lease_secs;
                // u64 so 7/8 of a large lease cannot overflow; the results
                // are at most `lease`, so they fit back in u32.
                let t1 = u64::from(lease) / 2;
                let t2 = u64::from(lease) * 7 / 8;
                w.option(opt::LEASE_TIME, &lease.to_be_bytes());
                w.option(opt::RENEWAL_TIME, &(t1 as u32).to_be_bytes());
                w.option(opt::REBINDING_TIME, &(t2 as u32).to_be_bytes());
                for code in [opt::LEASE_TIME, opt::RENEWAL_TIME, opt::REBINDING_TIME] {
                    sent[usize::from(code)] = true;
                }
            }
            if let Answer::Ack { rapid: true } = answer {
                w.option(opt::RAPID_COMMIT, &[]);
                sent[usize::from(opt::RAPID_COMMIT)] = true;
            }
            for o in c.options.iter().filter(|o| o.required) {
                w.option(o.code, &o.data);
                sent[usize::from(o.code)] = true;
            }
            if let Some(id) = req.client_id {
                w.option(opt::CLIENT_ID, id);
            }
            for &code in req.params.as_slice() {
                let slot = &mut sent[usize::from(code)];
                if *slot {
                    continue;
                }
                *slot = true;
                if let Some(o) = c.option(code) {
                    w.option(o.code, &o.data);
                }
            }
            for o in c.options.iter().filter(|o| !sent[usize::from(o.code)]) {
                w.option(o.code, &o.data);
            }
        }

        let omitted = w.omitted;
        let len = w.finish();
        self.counters.options_omitted = self.counters.options_omitted.saturating_add(omitted);
        match kind {
            MessageKind::Offer => bump(&mut self.counters.offers),
            MessageKind::Ack => bump(&mut self.counters.acks),
            MessageKind::Nak => bump(&mut self.counters.naks),
        }

        // RFC 2131 4.1: NAKs are broadcast because the client may no
        // longer be able to receive on ciaddr. Without a usable ciaddr we
        // broadcast too: the client cannot take unicast to an address it
        // does not have yet, and unlike a real LAN the broadcast reaches
        // only the guest.
        let dest = match (kind, nonzero(req.ciaddr)) {
            (MessageKind::Nak, _) => ReplyDest::Broadcast,
            _ if req.broadcast_flag() => ReplyDest::Broadcast,
            (_, Some(ciaddr)) => ReplyDest::Unicast(ciaddr),
            (_, None) => ReplyDest::Broadcast,
        };
        Ok(Reply { len, dest, kind })
    }
}

fn nonzero(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    (!ip.is_unspecified()).then_some(ip)
}
