//! The control socket: `podwire status`, `flows`, `forward` and `capture` talk to a running
//! podwire through a second UNIX socket.
//!
//! # Theory of operation
//!
//! One thread accepts on the socket (mode 0600, whatever the umask); each client gets a thread
//! of its own, and at most [`MAX_CLIENTS`] exist at once (more are answered with an error and
//! closed). A client sends one JSON [`Request`] per line and gets one JSON [`Response`] per line.
//! A request line longer than [`MAX_REQUEST`] bytes, or not complete within [`REQUEST_TIMEOUT`]
//! of the previous answer, ends the connection: garbage, huge lines and slow clients cost a
//! bounded buffer and a thread for a bounded time.
//!
//! The dataplane is never blocked by a client: what a request needs from the switch is done by a
//! bounded job that the dataplane runs at the end of its next pass, or this thread runs under a
//! *try*-lock when the dataplane is idle (see `mailbox.rs`), never while talking to a client; the device's session data and counters are atomics read without
//! any lock. The only state a client can change is the set of forwarded ports and whether
//! capture is on.

pub mod client;
pub mod schema;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use podwire_frame::CounterKind;
use podwire_nat::ports::{PortSpec, Proto};
use podwire_vhost::{feature_names, DeviceCounters, SessionInfo};

use crate::capture::{Capture, Capturing};
use crate::config::Config;
use crate::mailbox::Mailbox;
use crate::switch::Switch;
use schema::*;

/// Most clients served at once.
pub const MAX_CLIENTS: usize = 8;
/// Longest request line.
pub const MAX_REQUEST: usize = 4096;
/// A request must arrive completely within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most time a request waits for the dataplane to pick up its job.
pub const SWITCH_BUDGET: Duration = Duration::from_secs(1);
/// Default and largest number of flows one `flows` request lists.
pub const DEFAULT_FLOW_LIMIT: usize = 1000;
pub const MAX_FLOW_LIMIT: usize = 10000;

pub type Handler = Capturing<Switch>;
pub type SwitchGuard<'a> = MutexGuard<'a, Handler>;

/// The control socket's default path: the vhost-user socket's with `.ctl` appended.
pub fn default_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

/// What every request may look at.
pub struct Shared {
    pub handler: Arc<Mutex<Handler>>,
    pub device: Arc<DeviceCounters>,
    pub session: Arc<SessionInfo>,
    pub capture: Arc<Capture>,
    pub config: Config,
    /// Forwards in force (command line and run time), in the order they were added.
    pub forwards: Mutex<Vec<ForwardEntry>>,
    pub mailbox: Arc<Mailbox>,
    clients: AtomicUsize,
}

impl Shared {
    pub fn new(
        handler: Arc<Mutex<Handler>>,
        device: Arc<DeviceCounters>,
        session: Arc<SessionInfo>,
        capture: Arc<Capture>,
        mailbox: Arc<Mailbox>,
        config: Config,
        forwards: Vec<ForwardEntry>,
    ) -> Shared {
        Shared {
            handler,
            device,
            session,
            capture,
            config,
            forwards: Mutex::new(forwards),
            mailbox,
            clients: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on the switch without blocking the dataplane (see `mailbox.rs`); an error if
    /// the dataplane has not finished a pass within [`SWITCH_BUDGET`].
    pub fn with_switch<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Switch) -> R + Send + 'static,
    ) -> Result<R, String> {
        let try_lock = || match self.handler.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        self.mailbox
            .run(&try_lock, SWITCH_BUDGET, f)
            .ok_or_else(|| "the dataplane did not answer in time; try again".to_string())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds `path` with mode 0600 (replacing a stale socket) and serves it from a thread (tests).
#[cfg(test)]
pub fn spawn(path: &Path, shared: Arc<Shared>) -> io::Result<()> {
    serve_from_thread(bind_private(path)?, shared)
}

/// Serves a bound control socket from a thread of its own. podwire binds at start-up and calls
/// this after the sandbox, so that the thread and the client threads it starts are in it.
pub fn serve_from_thread(listener: UnixListener, shared: Arc<Shared>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("podwire-control".into())
        .spawn(move || serve(listener, shared))
        .map(drop)
}

/// A UNIX listener only its owner can connect to: created under umask 077, then chmod 0600.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // SAFETY: umask only changes the process's file-creation mask.
    let old = unsafe { libc::umask(0o077) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn serve(listener: UnixListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            continue;
        };
        if shared.clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
            let _ = answer(&mut stream, &Response::error("too many clients"));
            continue;
        }
        let shared2 = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("podwire-ctl-client".into())
            .spawn(move || {
                serve_client(stream, &shared2);
                shared2.clients.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn answer(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Reads one line of at most [`MAX_REQUEST`] bytes, all of it within [`REQUEST_TIMEOUT`].
fn read_request(reader: &mut BufReader<UnixStream>) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
        }
        reader.get_ref().set_read_timeout(Some(left))?;
        let room = (MAX_REQUEST + 1 - line.len()) as u64;
        let n = reader.by_ref().take(room).read_until(b'\n', &mut line)?;
        if line.last() == Some(&b'\n') {
            line.pop();
            return Ok(Some(line));
        }
        if line.len() > MAX_REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request too long",
            ));
        }
        if n == 0 {
            return Ok(None);
        }
    }
}

fn serve_client(stream: UnixStream, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let _ = writer.set_write_timeout(Some(REQUEST_TIMEOUT));
    let mut reader = BufReader::with_capacity(MAX_REQUEST, stream);
    loop {
        let line = match read_request(&mut reader) {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) => {
                let _ = answer(&mut writer, &Response::error(e.to_string()));
                return;
            }
        };
        let response = match serde_json::from_slice::<Request>(&line) {
            Ok(request) => handle(shared, request),
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        if answer(&mut writer, &response).is_err() {
            return;
        }
    }
}

/// Serves one request.
pub fn handle(shared: &Shared, request: Request) -> Response {
    let result = match request {
        Request::Status {} => status(shared).map(|s| Response {
            status: Some(s),
            ..ok()
        }),
        Request::Flows { limit } => flows(shared, limit).map(|f| Response {
            flows: Some(f),
            ..ok()
        }),
        Request::ForwardList {} => Ok(Response {
            forwards: Some(lock(&shared.forwards).clone()),
            ..ok()
        }),
        Request::ForwardAdd { proto, spec } => forward_add(shared, &proto, &spec),
        Request::ForwardDel { proto, spec } => forward_del(shared, &proto, &spec),
        Request::Capture { on } => capture(shared, on),
    };
    result.unwrap_or_else(Response::error)
}

fn ok() -> Response {
    Response {
        ok: true,
        ..Response::default()
    }
}

fn capture_state(c: &Capture) -> CaptureState {
    CaptureState {
        on: c.is_on(),
        file: c.path().map(|p| p.display().to_string()),
        frames: c.frames.load(Ordering::Relaxed),
        bytes: c.bytes.load(Ordering::Relaxed),
    }
}

fn capture(shared: &Shared, on: bool) -> Result<Response, String> {
    shared.capture.set(on).map_err(|e| e.to_string())?;
    tracing::info!(
        event = "capture",
        on,
        "packet capture {}",
        if on { "on" } else { "off" }
    );
    Ok(Response {
        capture: Some(capture_state(&shared.capture)),
        ..ok()
    })
}

/// `52:54:00:12:34:56`, as tcpdump and `ip link` write it.
fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn status(shared: &Shared) -> Result<Status, String> {
    let view = shared.with_switch(|sw| sw.view())?;
    let c = &shared.config;
    let u = &c.uplink;
    let mut addresses = Vec::new();
    if let Some(a) = &u.v4 {
        addresses.push(PodAddress {
            address: a.addr.into(),
            prefix_len: a.prefix_len,
            gateway: a.gateway.map(Into::into),
        });
    }
    if let Some(a) = &u.v6 {
        addresses.push(PodAddress {
            address: a.addr.into(),
            prefix_len: a.prefix_len,
            gateway: a.gateway.map(Into::into),
        });
    }
    let ipv4 = c.addressing.zip(view.v4.as_ref()).map(|(a, v)| Guest4 {
        mode: if u.v4.as_ref().is_some_and(|p| p.addr == a.guest) {
            "pod"
        } else {
            "subnet"
        }
        .into(),
        address: v.address,
        offered: a.guest,
        prefix_len: a.prefix_len,
        gateway: v.gateway,
        lease: v.lease.as_ref().map(|l| {
            let now = view.taken_at;
            let renewed = now.saturating_duration_since(l.renewed_at).as_secs();
            Lease4 {
                address: l.ip,
                mac: mac_string(l.mac),
                age_secs: now.saturating_duration_since(l.bound_at).as_secs(),
                renewed_secs_ago: renewed,
                lease_secs: l.lease_secs,
                expires_in_secs: u64::from(l.lease_secs).saturating_sub(renewed),
                hostname: l.hostname.clone(),
            }
        }),
    });
    let ipv6 = c.addressing6.zip(view.v6.as_ref()).map(|(a, v)| Guest6 {
        mode: if u.v6.as_ref().is_some_and(|p| p.addr == a.guest) {
            "pod"
        } else {
            "subnet"
        }
        .into(),
        address: v.address,
        offered: v.offered,
        prefix_len: a.prefix_len,
        gateway: a.gateway,
        dhcpv6_bound: v.dhcpv6_bound,
        seen: v.seen.clone(),
    });
    let session = shared.session.snapshot();
    let now = unix_ms();
    let mut drops = std::collections::BTreeMap::new();
    for (name, desc, value) in &view.counters {
        if desc.kind == CounterKind::Drop && *value != 0 {
            drops.insert(name.clone(), *value);
        }
    }
    podwire_frame::CounterSet::visit(&*shared.device, &mut |d, v| {
        if d.kind == CounterKind::Drop && v != 0 {
            drops.insert(format!("device_{}", d.name), v);
        }
    });
    let f = view.flows;
    Ok(Status {
        schema: SCHEMA,
        version: env!("CARGO_PKG_VERSION").into(),
        pod: Pod {
            interface: u.name.clone(),
            mtu: u.mtu,
            addresses,
        },
        guest: Guest {
            mac: view.guest_mac.map(mac_string),
            mac_pinned: view.mac_pinned,
            mtu: c.mtu,
            ipv4,
            ipv6,
        },
        frontend: Frontend {
            connected: session.connected_since_ms.is_some(),
            connected_since_unix_ms: session.connected_since_ms,
            connected_secs: session
                .connected_since_ms
                .map(|s| now.saturating_sub(s) / 1000),
            sessions: shared.device.sessions.get(),
            features: feature_names(session.acked_features)
                .split_whitespace()
                .map(String::from)
                .collect(),
            features_hex: format!("{:#x}", session.acked_features),
            rx_ring_size: session.rx_ring_size,
            tx_ring_size: session.tx_ring_size,
        },
        forwards: lock(&shared.forwards).clone(),
        flows: FlowCounts {
            tcp_outbound: f.tcp_outbound,
            tcp_inbound: f.tcp_inbound,
            udp_outbound: f.udp_outbound,
            udp_forwarded: f.udp_forwarded,
            icmp: f.icmp,
        },
        drops,
        capture: capture_state(&shared.capture),
    })
}

fn flows(shared: &Shared, limit: Option<usize>) -> Result<Vec<Flow>, String> {
    let limit = limit.unwrap_or(DEFAULT_FLOW_LIMIT).min(MAX_FLOW_LIMIT);
    let flows = shared.with_switch(move |sw| sw.flows(limit))?;
    Ok(flows
        .into_iter()
        .map(|f| Flow {
            proto: f.proto.name().into(),
            direction: if f.inbound { "inbound" } else { "outbound" }.into(),
            guest: f.guest,
            remote: f.remote,
            pod: f.pod,
            state: f.state.into(),
            bytes_from_guest: f.bytes_from_guest,
            bytes_to_guest: f.bytes_to_guest,
            age_ms: f.age.map(|d| d.as_millis() as u64),
            idle_ms: f.idle.map(|d| d.as_millis() as u64),
            tcp: f.tcp.map(|t| TcpDetail {
                events: t.events.iter().map(|e| e.to_string()).collect(),
                flags: t.flags.iter().map(|f| f.to_string()).collect(),
                snd_una: t.snd_una,
                in_flight: t.in_flight,
                guest_window: t.guest_window,
                rcv_nxt: t.rcv_nxt,
                offered_window: t.offered_window,
                socket_unread: t.socket_unread,
                socket_unsent: t.socket_unsent,
                rto_in_ms: t.rto_in_ms,
                retries: t.retries,
            }),
        })
        .collect())
}

fn parse_proto(proto: &str) -> Result<Proto, String> {
    match proto {
        "tcp" | "t" | "-t" => Ok(Proto::Tcp),
        "udp" | "u" | "-u" => Ok(Proto::Udp),
        other => Err(format!("unknown protocol {other:?}: tcp or udp")),
    }
}

fn forward_add(shared: &Shared, proto: &str, spec: &str) -> Result<Response, String> {
    let proto_v = parse_proto(proto)?;
    let parsed: PortSpec = spec.parse().map_err(|e| format!("{e}"))?;
    let resolved =
        crate::config::resolve_forwards(proto_v, &[parsed]).map_err(|e| e.to_string())?;
    let spec_owned = spec.to_string();
    let added = shared.with_switch(move |switch| {
        let mut added: Vec<ForwardEntry> = Vec::new();
        for r in &resolved {
            match switch.open_forward(proto_v, &r.forward) {
                Ok(binds) => added.extend(binds.into_iter().map(|bind| ForwardEntry {
                    proto: proto_v.to_string().to_lowercase(),
                    spec: spec_owned.clone(),
                    bind,
                    guest_port: r.forward.guest_port,
                })),
                // A port that came from `all` and is taken meanwhile is skipped, as at start-up.
                Err(_) if !r.explicit => {}
                Err(e) => {
                    for a in &added {
                        switch.close_forward(proto_v, a.bind);
                    }
                    return Err(e);
                }
            }
        }
        Ok(added)
    })?;
    let added = match added {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(
                event = "forward_failed",
                proto = %proto_v,
                spec,
                error = %e,
                "cannot forward {proto_v} {spec}: {e}"
            );
            return Err(format!("nothing changed: {e}"));
        }
    };
    for a in &added {
        tracing::info!(
            event = "forward_added",
            proto = %a.proto,
            spec = %a.spec,
            bind = %a.bind,
            guest_port = a.guest_port,
            "forwarding {} {} to guest port {}",
            a.proto,
            a.bind,
            a.guest_port
        );
    }
    lock(&shared.forwards).extend(added.iter().cloned());
    Ok(Response {
        forwards: Some(added),
        ..ok()
    })
}

fn forward_del(shared: &Shared, proto: &str, spec: &str) -> Result<Response, String> {
    let proto_v = parse_proto(proto)?;
    let proto_name = proto_v.to_string().to_lowercase();
    let parsed: PortSpec = spec.parse().map_err(|e| format!("{e}"))?;
    let table = podwire_nat::ports::ForwardTable::new(&[parsed]).map_err(|e| e.to_string())?;
    let ports: Vec<u16> = table
        .resolve(&mut |_| false)
        .into_iter()
        .map(|f| f.host_port)
        .collect();
    let mut forwards = lock(&shared.forwards);
    let (gone, kept): (Vec<_>, Vec<_>) = forwards
        .drain(..)
        .partition(|f| f.proto == proto_name && ports.contains(&f.bind.port()));
    *forwards = kept;
    if gone.is_empty() {
        return Err(format!("no {proto_name} forward matches {spec}"));
    }
    let binds: Vec<_> = gone.iter().map(|f| f.bind).collect();
    if let Err(e) = shared.with_switch(move |sw| {
        for b in binds {
            sw.close_forward(proto_v, b);
        }
    }) {
        forwards.extend(gone);
        return Err(e);
    }
    for f in &gone {
        tracing::info!(
            event = "forward_removed",
            proto = %f.proto,
            bind = %f.bind,
            guest_port = f.guest_port,
            "no longer forwarding {} {}",
            f.proto,
            f.bind
        );
    }
    Ok(Response {
        forwards: Some(gone),
        ..ok()
    })
}
