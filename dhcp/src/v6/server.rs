//! The single-guest DHCPv6 state machine.

use std::net::Ipv6Addr;

use crate::buf::Writer;
use crate::error::{Dhcpv6ConfigError, Dhcpv6Error};
use crate::v6::config::{compile, Compiled, Dhcpv6Config};
use crate::v6::wire::{
    begin_option, end_option, msg, opt, put_iaaddr, put_option, put_status, status, Ia, IaKind,
    Packet, Request, HEADER_LEN,
};

/// Largest reply written: the IPv6 minimum MTU less the IPv6 and UDP
/// headers, so a reply never needs fragmenting on any link. Also an `out`
/// size that always suffices.
pub const MAX_DHCPV6_REPLY: usize = 1280 - 40 - 8;

podwire_frame::counters! {
    /// Event counters. Every datagram bumps `received` and then exactly one
    /// of `malformed`, a per-type counter (`solicits` ..
    /// `information_requests`), `ignored_relay` or `ignored_unsupported_type`.
    /// Every datagram that gets no reply is accounted for by `malformed`,
    /// `ignored` or `output_too_small`.
    #[derive(Clone, PartialEq, Eq)]
    pub struct Dhcpv6Counters: u64 {
        /// Datagrams handed to the server.
        received: Count,
        /// SOLICITs received.
        solicits: Count,
        /// REQUESTs received.
        requests: Count,
        /// CONFIRMs received.
        confirms: Count,
        /// RENEWs received.
        renews: Count,
        /// REBINDs received.
        rebinds: Count,
        /// RELEASEs received.
        releases: Count,
        /// The guest found the address in use (duplicate address detection
        /// failed). On this link that points at a bug in whatever answers
        /// neighbour solicitations for the guest: worth an alert.
        declines: Count,
        /// INFORMATION-REQUESTs received.
        information_requests: Count,
        /// ADVERTISEs sent.
        advertises: Count,
        /// REPLYs sent.
        replies: Count,
        /// SOLICITs answered directly with a REPLY; also counted in
        /// `solicits` and `replies`.
        rapid_commits: Count,
        /// CONFIRMs answered NotOnLink; also counted in `confirms`.
        not_on_link: Count,
        /// Addresses a client asked to keep (REQUEST, RENEW, REBIND) that are
        /// not the guest address; each was returned with zero lifetimes. A
        /// stale lease from another boot or host, or a changed configuration.
        foreign_addresses: Count,
        /// Datagrams rejected with an error other than `OutputTooSmall`.
        malformed: Drop,
        /// Well-formed messages that got no reply; the sum of the
        /// `ignored_*` counters except `ignored_relay` and
        /// `ignored_unsupported_type`, which are counted on their own.
        ignored: Count,
        /// A Server Identifier that is not ours: the guest is talking to
        /// another server, which on this link means it is confused.
        ignored_other_server: Drop,
        /// REQUEST, RENEW, RELEASE or DECLINE without a Server Identifier.
        ignored_missing_server_id: Drop,
        /// A message other than INFORMATION-REQUEST without a Client
        /// Identifier.
        ignored_missing_client_id: Drop,
        /// INFORMATION-REQUEST carrying an IA option (RFC 8415 16.12).
        ignored_ia_in_information_request: Drop,
        /// CONFIRM listing no addresses (RFC 8415 18.3.3: no reply).
        ignored_confirm_without_addresses: Drop,
        /// RELAY-FORW and RELAY-REPL: there is no relay on this link. Not
        /// parsed, so not in `malformed` even if garbage.
        ignored_relay: Drop,
        /// Message types a client does not send to a server (ADVERTISE,
        /// REPLY, RECONFIGURE, and anything unknown). Not parsed.
        ignored_unsupported_type: Drop,
        /// Optional options (DNS, domain list, extra IAs, zero-lifetime
        /// addresses) left out of replies for lack of room.
        options_omitted: Count,
        /// Replies dropped because `out` could not hold their mandatory part.
        output_too_small: Drop,
    }
}

/// Who the guest address was last given to. Observability only: the
/// address goes to whoever asks (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcpv6Binding {
    /// The Client Identifier (DUID) as the client sent it.
    pub client_duid: Vec<u8>,
    /// IAID of the IA_NA that got the address.
    pub iaid: u32,
    pub addr: Ipv6Addr,
}

/// What to answer, decided before any byte is written.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// IAs for SOLICIT, REQUEST, RENEW, REBIND.
    Assign {
        /// REQUEST/RENEW/REBIND: list the client's other addresses with
        /// zero lifetimes.
        revoke_foreign: bool,
        rapid: bool,
    },
    /// A top-level status only (CONFIRM, RELEASE, DECLINE).
    Status(u16, &'static str),
    /// Configuration only (INFORMATION-REQUEST).
    Information,
}

/// A DHCPv6 server for exactly one guest and one address. See the crate
/// documentation.
#[derive(Debug, Clone)]
pub struct Dhcpv6Server {
    config: Dhcpv6Config,
    compiled: Compiled,
    binding: Option<Dhcpv6Binding>,
    counters: Dhcpv6Counters,
}

fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

/// Whether a client's address is appropriate for this link: the guest
/// address itself or any address in the prefix the router advertisement
/// announces (`prefix_len` bits), so a guest that kept an address from that
/// prefix across a reboot is on the right link and RENEW/REBIND will sort
/// out the address itself.
pub(crate) fn on_link(addr: Ipv6Addr, guest: Ipv6Addr, prefix_len: u8) -> bool {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix_len.min(128)))
        .unwrap_or(0);
    addr == guest || u128::from(addr) & mask == u128::from(guest) & mask
}

impl Dhcpv6Server {
    /// Accepts any configuration; parts that cannot be encoded are left
    /// out of replies (see [`Dhcpv6Config::validate`]).
    pub fn new(config: Dhcpv6Config) -> Self {
        let (compiled, _) = compile(&config);
        Self {
            config,
            compiled,
            binding: None,
            counters: Dhcpv6Counters::default(),
        }
    }

    /// Refuses a configuration that [`Dhcpv6Config::validate`] rejects.
    pub fn try_new(config: Dhcpv6Config) -> Result<Self, Dhcpv6ConfigError> {
        config.validate()?;
        Ok(Self::new(config))
    }

    /// Replaces the configuration. Counters are kept.
    ///
    /// If the guest address changes, the binding is dropped. The guest
    /// learns of the change at its next RENEW (T1): the reply carries the
    /// new address and the old one with zero lifetimes, so it renumbers
    /// without restarting. Other changes also reach it at T1, since
    /// RECONFIGURE needs authentication we do not have.
    pub fn set_config(&mut self, config: Dhcpv6Config) {
        if config.guest_addr != self.config.guest_addr {
            self.binding = None;
        }
        self.compiled = compile(&config).0;
        self.config = config;
    }

    /// [`Self::set_config`], refusing what [`Dhcpv6Config::validate`]
    /// rejects and leaving the old configuration in place then.
    pub fn try_set_config(&mut self, config: Dhcpv6Config) -> Result<(), Dhcpv6ConfigError> {
        config.validate()?;
        self.set_config(config);
        Ok(())
    }

    pub fn config(&self) -> &Dhcpv6Config {
        &self.config
    }

    pub fn counters(&self) -> &Dhcpv6Counters {
        &self.counters
    }

    /// The client the address was last committed to, if any.
    pub fn binding(&self) -> Option<&Dhcpv6Binding> {
        self.binding.as_ref()
    }

    /// Live migration: takes over the binding the source podwire had committed.
    pub fn restore_binding(&mut self, binding: Dhcpv6Binding) {
        self.binding = Some(binding);
    }

    /// Processes one datagram from the guest.
    ///
    /// `payload` is the UDP payload the guest sent to port 547 (from its
    /// link-local address, port 546). On `Ok(Some(len))` the first `len`
    /// bytes of `out` are the reply's UDP payload, to be sent from
    /// podwire's link-local address port 547 back to the request's
    /// source address and port. `Ok(None)` means the message is to be
    /// ignored (see the counters for why). Replies never exceed
    /// [`MAX_DHCPV6_REPLY`] bytes; an `out` of that size never fails.
    pub fn handle(&mut self, payload: &[u8], out: &mut [u8]) -> Result<Option<usize>, Dhcpv6Error> {
        bump(&mut self.counters.received);
        match payload.first().copied() {
            Some(msg::RELAY_FORW | msg::RELAY_REPL) => {
                bump(&mut self.counters.ignored_relay);
                return Ok(None);
            }
            Some(
                msg::SOLICIT
                | msg::REQUEST
                | msg::CONFIRM
                | msg::RENEW
                | msg::REBIND
                | msg::RELEASE
                | msg::DECLINE
                | msg::INFORMATION_REQUEST,
            )
            | None => {}
            Some(_) => {
                bump(&mut self.counters.ignored_unsupported_type);
                return Ok(None);
            }
        }
        let req = match Request::parse(payload) {
            Ok(req) => req,
            Err(err) => {
                bump(&mut self.counters.malformed);
                return Err(err);
            }
        };
        let c = &mut self.counters;
        bump(match req.msg_type {
            msg::SOLICIT => &mut c.solicits,
            msg::REQUEST => &mut c.requests,
            msg::CONFIRM => &mut c.confirms,
            msg::RENEW => &mut c.renews,
            msg::REBIND => &mut c.rebinds,
            msg::RELEASE => &mut c.releases,
            msg::DECLINE => &mut c.declines,
            _ => &mut c.information_requests,
        });

        // RFC 8415 section 16, with one leniency: a Server Identifier
        // that names us is accepted even where the RFC wants none
        // (SOLICIT, CONFIRM, REBIND), since on this link it can only mean
        // us. One naming another server is always ignored.
        let server_id_required = matches!(
            req.msg_type,
            msg::REQUEST | msg::RENEW | msg::RELEASE | msg::DECLINE
        );
        match req.server_id {
            Some(id) if id != self.compiled.server_duid.as_slice() => {
                return Ok(self.ignore(|c| &mut c.ignored_other_server));
            }
            None if server_id_required => {
                return Ok(self.ignore(|c| &mut c.ignored_missing_server_id));
            }
            _ => {}
        }
        let client_duid = match req.client_id {
            Some(id) => Some(id),
            None if req.msg_type == msg::INFORMATION_REQUEST => None,
            None => return Ok(self.ignore(|c| &mut c.ignored_missing_client_id)),
        };

        let (reply_type, answer) = match req.msg_type {
            msg::SOLICIT if req.rapid_commit => (
                msg::REPLY,
                Answer::Assign {
                    revoke_foreign: false,
                    rapid: true,
                },
            ),
            msg::SOLICIT => (
                msg::ADVERTISE,
                Answer::Assign {
                    revoke_foreign: false,
                    rapid: false,
                },
            ),
            msg::REQUEST | msg::RENEW | msg::REBIND => (
                msg::REPLY,
                Answer::Assign {
                    revoke_foreign: true,
                    rapid: false,
                },
            ),
            msg::CONFIRM => {
                let (guest, prefix_len) = (self.compiled.guest_addr, self.compiled.prefix_len);
                let mut addresses = req
                    .ias()
                    .filter(|ia| ia.kind != IaKind::Pd)
                    .flat_map(|ia| ia.addresses())
                    .peekable();
                if addresses.peek().is_none() {
                    return Ok(self.ignore(|c| &mut c.ignored_confirm_without_addresses));
                }
                if addresses.all(|a| on_link(a, guest, prefix_len)) {
                    (msg::REPLY, Answer::Status(status::SUCCESS, "on link"))
                } else {
                    bump(&mut self.counters.not_on_link);
                    (
                        msg::REPLY,
                        Answer::Status(status::NOT_ON_LINK, "address not on this link"),
                    )
                }
            }
            msg::RELEASE => (msg::REPLY, Answer::Status(status::SUCCESS, "released")),
            msg::DECLINE => (msg::REPLY, Answer::Status(status::SUCCESS, "declined")),
            _ => {
                if req.ia_count > 0 {
                    return Ok(self.ignore(|c| &mut c.ignored_ia_in_information_request));
                }
                (msg::REPLY, Answer::Information)
            }
        };

        let len = self.answer(&req, reply_type, answer, out)?;

        let assigned = matches!(answer, Answer::Assign { .. })
            && reply_type == msg::REPLY
            && req.ia_na_count > 0;
        match (req.msg_type, client_duid) {
            // The address is in use by someone else, whoever holds it.
            (msg::DECLINE, _) => self.binding = None,
            // A late RELEASE from a previous client must not unbind the
            // current one.
            (msg::RELEASE, Some(duid))
                if self.binding.as_ref().is_some_and(|b| b.client_duid == duid) =>
            {
                self.binding = None
            }
            (_, Some(duid)) if assigned => self.bind(duid, &req),
            _ => {}
        }
        Ok(Some(len))
    }

    fn ignore(&mut self, which: impl FnOnce(&mut Dhcpv6Counters) -> &mut u64) -> Option<usize> {
        bump(&mut self.counters.ignored);
        bump(which(&mut self.counters));
        None
    }

    fn bind(&mut self, duid: &[u8], req: &Request<'_>) {
        let iaid = req
            .ias()
            .find(|ia| ia.kind == IaKind::Na)
            .map_or(0, |ia| u32::from_be_bytes(ia.iaid));
        let addr = self.compiled.guest_addr;
        match &mut self.binding {
            Some(b) if b.client_duid == duid => {
                b.iaid = iaid;
                b.addr = addr;
            }
            slot => {
                *slot = Some(Dhcpv6Binding {
                    client_duid: duid.to_vec(),
                    iaid,
                    addr,
                })
            }
        }
    }

    /// Writes the reply. The mandatory part (header, identifiers, rapid
    /// commit or preference, the status or the address-bearing IA_NA)
    /// must fit or nothing is sent; then come, each whole or not at all:
    /// zero-lifetime entries for the client's other addresses, DNS
    /// servers, the domain list, and the client's other IAs with their
    /// status.
    fn answer(
        &mut self,
        req: &Request<'_>,
        reply_type: u8,
        answer: Answer,
        out: &mut [u8],
    ) -> Result<usize, Dhcpv6Error> {
        let got = out.len();
        let mut w = Writer::new(out, MAX_DHCPV6_REPLY);
        let c = &self.compiled;
        let mut omitted = 0u64;
        let mut optional = |w: &mut Writer<'_>, write: &mut dyn FnMut(&mut Writer<'_>)| {
            if !w.optional(|w| write(w)) {
                omitted += 1;
            }
        };

        let mut header = [0u8; HEADER_LEN];
        let mut view = Packet::new_unchecked(&mut header[..]);
        view.set_msg_type(reply_type);
        view.set_transaction_id(req.xid);
        w.put(&header);
        put_option(&mut w, opt::SERVER_ID, &c.server_duid);
        if let Some(id) = req.client_id {
            put_option(&mut w, opt::CLIENT_ID, id);
        }

        let mut config_options = true;
        let mut ia_start = None;
        match answer {
            Answer::Assign {
                revoke_foreign,
                rapid,
            } => {
                if rapid {
                    put_option(&mut w, opt::RAPID_COMMIT, &[]);
                }
                if reply_type == msg::ADVERTISE {
                    // 255 tells the client not to wait for other servers
                    // (RFC 8415 18.2.1), saving it a second at boot.
                    put_option(&mut w, opt::PREFERENCE, &[255]);
                }
                match req.ias().find(|ia| ia.kind == IaKind::Na) {
                    Some(ia) => {
                        let start = begin_option(&mut w, opt::IA_NA);
                        w.put(&ia.iaid);
                        w.u32(c.t1);
                        w.u32(c.t2);
                        put_iaaddr(&mut w, c.guest_addr, c.preferred, c.valid);
                        ia_start = Some((start, ia, revoke_foreign));
                    }
                    None => {
                        // RFC 8415 18.3.1: nothing to assign, so only the
                        // identifiers and a status.
                        put_status(&mut w, status::NO_ADDRS_AVAIL, "no IA_NA in request");
                        config_options = false;
                    }
                }
            }
            Answer::Status(code, text) => {
                put_status(&mut w, code, text);
                config_options = false;
            }
            Answer::Information => {}
        }

        if w.overflowed() {
            bump(&mut self.counters.output_too_small);
            return Err(Dhcpv6Error::OutputTooSmall {
                needed: w.pos(),
                got,
            });
        }

        let mut foreign = 0u64;
        if let Some((start, ia, revoke_foreign)) = ia_start.clone() {
            if revoke_foreign {
                for addr in ia.addresses().filter(|&a| a != c.guest_addr) {
                    foreign += 1;
                    optional(&mut w, &mut |w| put_iaaddr(w, addr, 0, 0));
                }
            }
            end_option(&mut w, start);
        }

        if config_options {
            if !c.dns.is_empty() {
                optional(&mut w, &mut |w| put_option(w, opt::DNS_SERVERS, &c.dns));
            }
            if !c.domains.is_empty() {
                optional(&mut w, &mut |w| put_option(w, opt::DOMAIN_LIST, &c.domains));
            }
        }

        if ia_start.is_some() {
            // The first IA_NA, the one that got the address, is already
            // written.
            let mut skipped_first = false;
            for ia in req.ias() {
                if !skipped_first && ia.kind == IaKind::Na {
                    skipped_first = true;
                    continue;
                }
                optional(&mut w, &mut |w| put_unavailable_ia(w, &ia));
            }
        }

        let len = w.pos();
        self.counters.options_omitted = self.counters.options_omitted.saturating_add(omitted);
        self.counters.foreign_addresses = self.counters.foreign_addresses.saturating_add(foreign);
        if reply_type == msg::ADVERTISE {
            bump(&mut self.counters.advertises);
        } else {
            bump(&mut self.counters.replies);
            if let Answer::Assign { rapid: true, .. } = answer {
                bump(&mut self.counters.rapid_commits);
            }
        }
        Ok(len)
    }
}

/// Echoes an IA the server does not fill: IA_NA beyond the first (one
/// address per client), IA_TA (no temporary addresses) and IA_PD (no
/// prefix delegation), each with the status RFC 8415 18.3 prescribes.
fn put_unavailable_ia(w: &mut Writer<'_>, ia: &Ia<'_>) {
    let (code, status, text) = match ia.kind {
        IaKind::Na => (opt::IA_NA, status::NO_ADDRS_AVAIL, "one address per client"),
        IaKind::Ta => (opt::IA_TA, status::NO_ADDRS_AVAIL, "no temporary addresses"),
        IaKind::Pd => (opt::IA_PD, status::NO_PREFIX_AVAIL, "no prefix delegation"),
    };
    let start = begin_option(w, code);
    w.put(&ia.iaid);
    if ia.kind != IaKind::Ta {
        w.u32(0);
        w.u32(0);
    }
    put_status(w, status, text);
    end_option(w, start);
}
