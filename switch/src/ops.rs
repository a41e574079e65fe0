//! Operator interfaces around the dataplane: the control socket, packet capture, metrics and
//! JSON logs, set up from their command-line options.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use podwire_nat::ports::Proto;
use podwire_vhost::{DeviceCounters, SessionInfo};

use crate::capture::{Capture, Capturing};
use crate::config::{Cli, Config};
use crate::control::{self, schema::ForwardEntry, Shared};
use crate::switch::Switch;

/// The options of this module, taken from the command line before it is consumed.
#[derive(Debug, Clone)]
pub struct Options {
    pub control: Option<String>,
    pub pcap: Option<PathBuf>,
    pub pcap_max_bytes: u64,
    pub metrics: Option<String>,
}

impl Options {
    pub fn from_cli(cli: &Cli) -> Options {
        Options {
            control: cli.control.clone(),
            pcap: cli.pcap.clone(),
            pcap_max_bytes: cli.pcap_max_size << 20,
            metrics: cli.metrics.clone(),
        }
    }

    /// The capture, already on when `--pcap` was given.
    pub fn capture(&self) -> std::io::Result<Arc<Capture>> {
        let capture = Arc::new(Capture::new(self.pcap.clone(), self.pcap_max_bytes));
        if self.pcap.is_some() {
            capture.set(true)?;
        }
        Ok(capture)
    }
}

/// The forwards the command line opened, as the control socket lists them.
fn initial_forwards(config: &Config) -> Vec<ForwardEntry> {
    let guests: Vec<IpAddr> = [
        config.addressing.map(|a| IpAddr::V4(a.guest)),
        config.addressing6.map(|a| IpAddr::V6(a.guest)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut out = Vec::new();
    for (proto, forwards) in [
        (Proto::Tcp, &config.tcp_forwards),
        (Proto::Udp, &config.udp_forwards),
    ] {
        for f in forwards {
            for guest in &guests {
                let bind = match f.forward.bind {
                    Some(ip) if ip.is_ipv6() != guest.is_ipv6() => continue,
                    Some(ip) => SocketAddr::new(ip, f.forward.host_port),
                    None => podwire_nat::sock::any(*guest, f.forward.host_port),
                };
                out.push(ForwardEntry {
                    proto: proto.to_string().to_lowercase(),
                    spec: f.forward.to_string(),
                    bind,
                    guest_port: f.forward.guest_port,
                });
            }
        }
    }
    out
}

/// The control socket and the metrics endpoint, bound at start-up (binding may need the file
/// system and, for a low port, root). Their threads are started by [`Services::spawn`] only
/// after the sandbox: Landlock restricts the thread that enters it and the threads started
/// from it afterwards, never a thread already running (seccomp alone has TSYNC).
pub struct Services {
    shared: Arc<Shared>,
    control: Option<std::os::unix::net::UnixListener>,
    metrics: Option<crate::metrics::Listener>,
    /// Socket files to remove at exit.
    pub leftovers: Vec<PathBuf>,
}

/// Binds the control socket and the metrics endpoint (see [`Services`]).
pub fn bind(
    options: &Options,
    config: &Config,
    handler: &Arc<Mutex<Capturing<Switch>>>,
    device: &Arc<DeviceCounters>,
    session: Arc<SessionInfo>,
    capture: Arc<Capture>,
    mailbox: Arc<crate::mailbox::Mailbox>,
) -> Result<Services, String> {
    let shared = Arc::new(Shared::new(
        handler.clone(),
        device.clone(),
        session,
        capture,
        mailbox,
        config.clone(),
        initial_forwards(config),
    ));
    let mut leftovers = Vec::new();
    let control_path = match options.control.as_deref() {
        Some("none") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(control::default_path(&config.socket)),
    };
    let mut control = None;
    if let Some(path) = control_path {
        control = Some(
            control::bind_private(&path)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?,
        );
        tracing::info!(event = "control_listening", path = %path.display(), "control socket {}", path.display());
        leftovers.push(path);
    }
    let mut metrics = None;
    if let Some(addr) = &options.metrics {
        let (listener, file) =
            crate::metrics::bind(addr).map_err(|e| format!("--metrics {addr}: {e}"))?;
        metrics = Some(listener);
        leftovers.extend(file);
        tracing::info!(event = "metrics_listening", address = %addr, "metrics on {addr}");
    }
    Ok(Services {
        shared,
        control,
        metrics,
        leftovers,
    })
}

impl Services {
    /// Starts the threads that serve the bound sockets (after the sandbox: see [`Services`]).
    pub fn spawn(self) -> Result<(), String> {
        if let Some(listener) = self.control {
            control::serve_from_thread(listener, self.shared.clone())
                .map_err(|e| format!("cannot serve the control socket: {e}"))?;
        }
        if let Some(listener) = self.metrics {
            crate::metrics::serve_from_thread(listener, self.shared)
                .map_err(|e| format!("cannot serve metrics: {e}"))?;
        }
        Ok(())
    }
}

/// JSON logs: one object per line with `timestamp`, `level`, `fields` (`message` and the
/// structured fields) and no span lists, so the field names stay stable.
pub fn init_json_logs(
    filter: tracing_subscriber::EnvFilter,
    log_file: Option<crate::daemon::CappedLog>,
) {
    let builder = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_target(false)
        .with_current_span(false)
        .with_span_list(false);
    match log_file {
        Some(log) => builder.with_writer(log).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}
