//! `podwire`: serves one guest NIC over vhost-user and connects it to the pod's network.
//!
//! # Theory of operation
//!
//! One process per VM NIC, inside the pod, unprivileged. The main thread parses and resolves
//! the configuration, then serves vhost-user frontends one at a time on the socket for as long
//! as it lives. The dataplane runs on vhost-user-backend's worker thread: ring kicks and the
//! NAT's sockets wake the same loop, so frames and socket data are handled by one thread with
//! no queues in between. Without `--vhost-user` the socket speaks QEMU's stream protocol
//! instead (passt's default; `podwire-stream`), whose session loop runs on the main thread.
//!
//! Unless `--foreground`, podwire forks before any thread exists and the parent exits 0 only
//! once the socket listens and the pid file is written (`daemon.rs`), as libvirt expects of
//! passt. See `docs/architecture.md`.

mod capture;
mod config;
mod control;
#[cfg(test)]
mod control_tests;
mod daemon;
mod fdlimit;
#[cfg(test)]
mod harden_tests;
#[cfg(test)]
mod ipv6_tests;
mod mailbox;
mod metrics;
#[cfg(test)]
mod migrate_tests;
mod ops;
mod podnet;
mod sandbox;
#[cfg(test)]
mod scale_tests;
mod signals;
mod state;
mod switch;
#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
mod tests;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use podwire_stream::StreamServer;
use podwire_vhost::{DeviceCounters, FrontendAccess, NetConfig, Server};

use crate::config::{Cli, Config, ProcessOptions};
use crate::daemon::ReadyPipe;
use crate::switch::Switch;

/// Parses the command line; on error prints one line (usage errors) and exits non-zero.
fn parse_cli() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                let _ = e.print();
                Err(ExitCode::SUCCESS)
            }
            _ => {
                // clap's message may continue on indented lines; the usage block after a blank
                // line is left to --help. Fold the rest into one line.
                let text = e.to_string();
                let message = text.split("\n\n").next().unwrap_or("bad arguments");
                let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
                eprintln!(
                    "podwire: {} (see --help)",
                    one_line.trim_start_matches("error: ")
                );
                Err(ExitCode::from(2))
            }
        },
    }
}

/// "198.18.0.2/24 via 198.18.0.1, fd00::2/64 via fe80::1": the families the pod has.
fn describe_uplink(u: &podnet::Uplink) -> String {
    fn one<A: std::fmt::Display>(a: &podnet::UplinkAddr<A>) -> String {
        let gw = a.gateway.as_ref().map_or("none".into(), |g| g.to_string());
        format!("{}/{} via {gw}", a.addr, a.prefix_len)
    }
    let parts: Vec<String> = [u.v4.as_ref().map(one), u.v6.as_ref().map(one)]
        .into_iter()
        .flatten()
        .collect();
    parts.join(", ")
}

/// The addresses the guest is offered, per family.
fn describe_guest(c: &Config) -> String {
    let v4 = c.addressing.map_or("no IPv4".into(), |a| {
        format!("{}/{} via {}", a.guest, a.prefix_len, a.gateway)
    });
    let v6 = c.addressing6.map_or("no IPv6".into(), |a| {
        format!("{}/{} via {}", a.guest, a.prefix_len, a.gateway)
    });
    format!("{v4}, {v6}")
}

/// The socket's protocol: vhost-user (`--vhost-user`) or passt's default, QEMU's stream.
enum Frontend {
    VhostUser(Server<capture::Capturing<Switch>>),
    Stream(StreamServer<capture::Capturing<Switch>>),
}

impl Frontend {
    /// What the control socket reports about the connected frontend (vhost-user only; the
    /// stream frontend has no rings or features to report).
    fn session(&self) -> Arc<podwire_vhost::SessionInfo> {
        match self {
            Frontend::VhostUser(s) => s.session(),
            Frontend::Stream(_) => Arc::default(),
        }
    }

    /// Serves frontends one after another, or only the first with `--one-off`.
    fn serve(&self, one_off: bool) -> Result<(), String> {
        let result = match (self, one_off) {
            (Frontend::VhostUser(s), true) => s.serve_one().map_err(|e| e.to_string()),
            (Frontend::VhostUser(s), false) => s.run().map_err(|e| e.to_string()),
            (Frontend::Stream(s), true) => s.serve_one().map(drop).map_err(|e| e.to_string()),
            (Frontend::Stream(s), false) => s.run().map_err(|e| e.to_string()),
        };
        if one_off && result.is_ok() {
            tracing::info!("--one-off: the frontend left; exiting");
        }
        result
    }
}

fn run(cli: Cli, process: &ProcessOptions, ready: Option<ReadyPipe>) -> Result<(), String> {
    let ops_options = ops::Options::from_cli(&cli);
    let mut config = Config::resolve(cli).map_err(|e| e.to_string())?;
    let listeners = config.tcp_forwards.len() + config.udp_forwards.len();
    let (max_flows, fd_warning) =
        fdlimit::ensure(config.max_flows, listeners).map_err(|e| e.to_string())?;
    config.max_flows = max_flows;
    tracing::info!(
        event = "start",
        version = env!("CARGO_PKG_VERSION"),
        socket = %config.socket.display(),
        interface = %config.uplink.name,
        uplink = %describe_uplink(&config.uplink),
        mtu = config.mtu,
        guest = %describe_guest(&config),
        tcp_forwards = config.tcp_forwards.len(),
        udp_forwards = config.udp_forwards.len(),
        "uplink {} {}, MTU {}; guest {}; DNS {:?}",
        config.uplink.name,
        describe_uplink(&config.uplink),
        config.mtu,
        describe_guest(&config),
        config.resolver.nameservers,
    );
    let mut switch =
        Switch::new(&config).map_err(|e| format!("cannot set up the dataplane: {e}"))?;
    // Bound now, before the sandbox: helpers connect to it at any time, and it is only
    // looked at when a migration needs it.
    if let Some(path) = &config.repair_path {
        let channel = podwire_repair::RepairChannel::bind(path)
            .map_err(|e| format!("cannot listen on --repair-path {}: {e}", path.display()))?;
        switch.set_repair_channel(channel);
    }
    let device_config = NetConfig {
        mac: config
            .guest_mac
            .unwrap_or([0x52, 0x54, 0x00, 0x70, 0x77, 0x02]),
        mtu: config.mtu,
    };
    let capture = ops_options.capture().map_err(|e| format!("--pcap: {e}"))?;
    let mailbox = Arc::new(mailbox::Mailbox::default());
    let switch = Arc::new(Mutex::new(capture::Capturing::new(
        switch,
        capture.clone(),
        mailbox.clone(),
    )));
    let device = Arc::new(DeviceCounters::default());
    let server = if process.vhost_user {
        Frontend::VhostUser(
            Server::bind(
                &config.socket,
                switch.clone(),
                device.clone(),
                device_config,
            )
            .and_then(|s| {
                s.with_access(FrontendAccess {
                    group: config.socket_group,
                    uid: config.frontend_uid,
                })
            })
            .map_err(|e| e.to_string())?,
        )
    } else {
        Frontend::Stream(
            StreamServer::bind(&config.socket, switch.clone(), Arc::default())
                .map_err(|e| e.to_string())?,
        )
    };
    let mut leftovers = vec![config.socket.clone()];
    leftovers.extend(config.repair_path.clone());
    if let Some(pid_file) = &config.pid_file {
        if let Err(e) = daemon::write_pid_file(pid_file, std::process::id()) {
            let _ = std::fs::remove_file(&config.socket);
            return Err(format!("cannot write {}: {e}", pid_file.display()));
        }
    }
    let services = ops::bind(
        &ops_options,
        &config,
        &switch,
        &device,
        server.session(),
        capture,
        mailbox,
    )?;
    leftovers.extend(services.leftovers.iter().cloned());
    leftovers.extend(config.pid_file.clone());
    if let Some(line) = fd_warning {
        tracing::warn!("{line}");
    }
    if let Some(ready) = ready {
        ready
            .notify()
            .map_err(|e| format!("cannot detach from the caller: {e}"))?;
    }
    // After everything start-up opens (the ops sockets and files included, the caller
    // detached from), before the first guest byte and before any other thread (see
    // sandbox.rs): Landlock restricts only the calling thread and those it starts afterwards.
    sandbox::ensure_single_threaded().map_err(|e| e.to_string())?;
    sandbox::enter(&sandbox::SandboxOptions {
        runas: config.runas.clone(),
        disabled: !config.sandbox,
        own_files: leftovers.clone(),
        written_files: process
            .log_file
            .iter()
            .chain(ops_options.pcap.iter())
            .cloned()
            .collect(),
    })
    .map_err(|e| e.to_string())?;
    services.spawn()?;
    signals::spawn_handler(switch, device, leftovers.clone())
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    tracing::info!("listening on {}", config.socket.display());
    let served = server.serve(process.one_off);
    for path in &leftovers {
        let _ = std::fs::remove_file(path);
    }
    served
}

/// Logs to `--log-file` (capped) if given, else to stderr.
fn init_logging(process: &ProcessOptions) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PODWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(process.level));
    if process.json_logs {
        let log = match &process.log_file {
            Some(path) => Some(
                daemon::CappedLog::open(path, process.log_size)
                    .map_err(|e| format!("cannot open --log-file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        ops::init_json_logs(filter, log);
        return Ok(());
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match &process.log_file {
        Some(path) => {
            let log = daemon::CappedLog::open(path, process.log_size)
                .map_err(|e| format!("cannot open --log-file {}: {e}", path.display()))?;
            builder.with_writer(log).with_ansi(false).init();
        }
        None => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    // Before any thread exists, so that every thread inherits the mask and only the signal
    // thread ever sees these signals.
    if let Err(e) = signals::block() {
        eprintln!("podwire: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|a| control::client::COMMANDS.contains(&a))
    {
        return control::client::run(args);
    }
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let process = cli.process_options();
    // Still single-threaded here: the only safe moment to fork.
    let ready = if process.foreground {
        None
    } else {
        match daemon::daemonize() {
            Ok(ready) => Some(ready),
            Err(e) => {
                eprintln!("podwire: cannot go to the background: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let result = init_logging(&process).and_then(|()| run(cli, &process, ready));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr (libvirt shows it); the log file, if any, gets it too.
            if process.log_file.is_some() {
                tracing::error!("{e}");
            }
            eprintln!("podwire: {e}");
            ExitCode::FAILURE
        }
    }
}
