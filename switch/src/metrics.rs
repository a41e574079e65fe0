//! Prometheus metrics (`--metrics HOST:PORT` or `--metrics unix:PATH`), in the OpenMetrics text
//! format, through the `prometheus-client` crate.
//!
//! # Theory of operation
//!
//! Metrics are not a second set of counters: a [`Collector`] walks every counter set the
//! dataplane declares (`counter_sets()`, each counter declared once with its name, help and
//! kind) and the device's, at scrape time. Drop counters become one family,
//! `podwire_dropped_packets_total{reason=...}`; byte counters take the `bytes` unit; the rest
//! are `podwire_<name>_total`. Gauges (flows open by protocol and direction, frontend connected)
//! and ratios (UDP system calls per datagram) are computed at the same time. A scrape reads the
//! switch the way the control socket does (`mailbox.rs`: never blocking the dataplane), and the
//! device's counters are atomics.
//!
//! One thread serves the endpoint, one client at a time, with read and write timeouts and a
//! bounded request: a minimal HTTP/1.0 responder is all Prometheus needs.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use podwire_frame::{CounterKind, CounterSet};

use crate::control::Shared;

const IO_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_HTTP_REQUEST: usize = 8192;

/// Reads every counter at scrape time.
struct Podwire(Arc<Shared>);

impl std::fmt::Debug for Podwire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Podwire")
    }
}

/// `tx_bytes` -> `tx`, `tcp_bytes_from_guest` -> `tcp_from_guest`: the unit goes at the end.
fn without_bytes(name: &str) -> String {
    name.replace("_bytes", "").replace("bytes_", "")
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    ConstCounter::new(value).encode(m)
}

impl Collector for Podwire {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.0;
        let mut samples: Vec<(String, &'static str, CounterKind, u64)> = Vec::new();
        shared
            .device
            .visit(&mut |d, v| samples.push((format!("device_{}", d.name), d.help(), d.kind, v)));
        // A dataplane stuck in one pass still gets its device counters scraped.
        let view = shared.with_switch(|sw| sw.view()).ok();
        let mut flows = None;
        if let Some(view) = view {
            for (name, d, v) in view.counters {
                samples.push((name, d.help(), d.kind, v));
            }
            flows = Some(view.flows);
        }
        let mut drops = Vec::new();
        for (name, help, kind, value) in &samples {
            match kind {
                CounterKind::Drop => drops.push((name.as_str(), *value)),
                CounterKind::Bytes => counter(
                    &mut encoder,
                    &without_bytes(name),
                    help,
                    Some(&Unit::Bytes),
                    *value,
                )?,
                CounterKind::Count => counter(&mut encoder, name, help, None, *value)?,
            }
        }
        let mut family = encoder.encode_descriptor(
            "dropped_packets",
            "Packets or frames dropped, by reason (the counter's name in podwire status)",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in drops {
            let labels = [("reason", reason)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        if let Some(f) = flows {
            let mut family = encoder.encode_descriptor(
                "flows_open",
                "Flows open now, by protocol and direction",
                None,
                MetricType::Gauge,
            )?;
            for (proto, dir, n) in [
                ("tcp", "outbound", f.tcp_outbound),
                ("tcp", "inbound", f.tcp_inbound),
                ("udp", "outbound", f.udp_outbound),
                ("udp", "inbound", f.udp_forwarded),
                ("icmp", "outbound", f.icmp),
            ] {
                let labels = [("proto", proto), ("direction", dir)];
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let session = shared.session.snapshot();
        let m = encoder.encode_descriptor(
            "frontend_connected",
            "1 while a vhost-user frontend is connected",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(session.connected_since_ms.is_some())).encode(m)?;
        let ratio = |calls: &str, packets: &str| {
            let get = |n: &str| samples.iter().find(|s| s.0 == n).map_or(0, |s| s.3);
            let p = get(packets);
            (p != 0).then(|| get(calls) as f64 / p as f64)
        };
        for (name, help, calls, packets) in [
            (
                "udp_send_syscalls_per_datagram",
                "UDP send system calls per guest datagram since start",
                "nat_udp_send_calls",
                "nat_udp_out",
            ),
            (
                "udp_recv_syscalls_per_datagram",
                "UDP receive system calls per datagram to the guest since start",
                "nat_udp_recv_calls",
                "nat_udp_in",
            ),
            (
                "tcp_send_syscalls_per_segment",
                "TCP send system calls per guest TCP segment since start",
                "tcp_send_calls",
                "tcp_segments_from_guest",
            ),
            (
                "tcp_recv_syscalls_per_frame",
                "TCP receive system calls (peeks and discards) per data frame to the guest since start",
                "tcp_recv_calls",
                "tcp_data_frames_to_guest",
            ),
        ] {
            if let Some(r) = ratio(calls, packets) {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(r).encode(m)?;
            }
        }
        Ok(())
    }
}

/// The OpenMetrics text of one scrape.
pub fn render(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::with_prefix("podwire");
    registry.register_collector(Box::new(Podwire(shared.clone())));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

fn respond<S: Read + Write>(mut stream: S, shared: &Arc<Shared>) -> io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_HTTP_REQUEST {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let (status, body, kind) =
        if request.starts_with(b"GET /metrics ") || request.starts_with(b"GET / ") {
            (
                "200 OK",
                render(shared),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            ("404 Not Found", "GET /metrics\n".to_string(), "text/plain")
        };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// The bound metrics endpoint.
pub enum Listener {
    Tcp(TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Binds `addr` (`HOST:PORT` or `unix:PATH`); returns the listener and a socket file to remove
/// at exit, if any.
pub fn bind(addr: &str) -> io::Result<(Listener, Option<PathBuf>)> {
    if let Some(path) = addr.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        let listener = crate::control::bind_private(&path)?;
        return Ok((Listener::Unix(listener), Some(path)));
    }
    Ok((Listener::Tcp(TcpListener::bind(addr)?), None))
}

/// Serves a bound endpoint from a thread of its own (started after the sandbox, see
/// `ops::Services`).
pub fn serve_from_thread(listener: Listener, shared: Arc<Shared>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("podwire-metrics".into())
        .spawn(move || match listener {
            Listener::Unix(l) => {
                for s in l.incoming().flatten() {
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    let _ = respond(s, &shared);
                }
            }
            Listener::Tcp(l) => {
                for s in l.incoming().flatten() {
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    let _ = respond(s, &shared);
                }
            }
        })
        .map(drop)
}
