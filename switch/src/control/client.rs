//! The client side: `podwire status|flows|forward|capture`, talking to a running podwire's
//! control socket, printing text for people or the JSON answer (`--json`) for programs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::schema::{Flow, ForwardEntry, Request, Response, Status};

/// The subcommand names: `podwire NAME ...` is a client, anything else runs the backend.
pub const COMMANDS: [&str; 4] = ["status", "flows", "forward", "capture"];

#[derive(Debug, Parser)]
#[command(
    name = "podwire",
    about = "Ask a running podwire through its control socket"
)]
pub struct CtlCli {
    /// The vhost-user socket podwire serves (its control socket is PATH.ctl)
    #[arg(short = 's', long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// The control socket itself (if moved with --control)
    #[arg(long, value_name = "PATH", global = true)]
    pub control: Option<PathBuf>,
    /// Print the answer as JSON (see docs/operations.md for the format)
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Addresses, leases, frontend, forwards, flow counts and drops
    Status,
    /// Open flows, like `ss`
    Flows {
        /// Most flows to list
        #[arg(long, default_value_t = super::DEFAULT_FLOW_LIMIT)]
        limit: usize,
    },
    /// Forwarded pod ports: list, or change at run time
    Forward {
        #[command(subcommand)]
        action: ForwardAction,
    },
    /// Packet capture (to the --pcap file) on or off
    Capture {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ForwardAction {
    List,
    /// Forward pod ports to the guest: `-t SPEC` or `-u SPEC`, as on podwire's command line
    Add(ForwardSpec),
    /// Stop forwarding these pod ports (established connections stay)
    Del(ForwardSpec),
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ForwardSpec {
    #[arg(short = 't', long = "tcp-ports", value_name = "SPEC")]
    pub tcp: Option<String>,
    #[arg(short = 'u', long = "udp-ports", value_name = "SPEC")]
    pub udp: Option<String>,
}

impl ForwardSpec {
    fn split(self) -> (String, String) {
        match (self.tcp, self.udp) {
            (Some(s), _) => ("tcp".into(), s),
            (_, Some(s)) => ("udp".into(), s),
            _ => ("tcp".into(), String::new()),
        }
    }
}

/// Sends one request and reads one answer.
pub fn ask(path: &std::path::Path, request: &Request) -> Result<Response, String> {
    let mut stream = UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    let timeout = Some(Duration::from_secs(5));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&answer).map_err(|e| format!("bad answer: {e}"))
}

pub fn run(args: Vec<std::ffi::OsString>) -> ExitCode {
    let cli = match CtlCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let path = match (&cli.control, &cli.socket) {
        (Some(c), _) => c.clone(),
        (None, Some(s)) => super::default_path(s),
        (None, None) => {
            eprintln!("podwire: give --socket PATH (the vhost-user socket) or --control PATH");
            return ExitCode::from(2);
        }
    };
    let request = match cli.command {
        CtlCommand::Status => Request::Status {},
        CtlCommand::Flows { limit } => Request::Flows { limit: Some(limit) },
        CtlCommand::Forward { action } => match action {
            ForwardAction::List => Request::ForwardList {},
            ForwardAction::Add(s) => {
                let (proto, spec) = s.split();
                Request::ForwardAdd { proto, spec }
            }
            ForwardAction::Del(s) => {
                let (proto, spec) = s.split();
                Request::ForwardDel { proto, spec }
            }
        },
        CtlCommand::Capture { state } => Request::Capture { on: state == "on" },
    };
    let response = match ask(&path, &request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("podwire: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).unwrap_or_default()
        );
    } else if let Some(e) = &response.error {
        eprintln!("podwire: {e}");
    } else {
        print_text(&response);
    }
    if response.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), |v| v.to_string())
}

fn print_text(r: &Response) {
    if let Some(s) = &r.status {
        print_status(s);
    }
    if let Some(f) = &r.flows {
        print_flows(f);
    }
    if let Some(f) = &r.forwards {
        print_forwards(f);
    }
    if let (Some(c), None) = (&r.capture, &r.status) {
        println!(
            "capture {} file={} frames={} bytes={}",
            if c.on { "on" } else { "off" },
            opt(&c.file),
            c.frames,
            c.bytes
        );
    }
}

fn print_status(s: &Status) {
    println!("pod interface  {} (MTU {})", s.pod.interface, s.pod.mtu);
    for a in &s.pod.addresses {
        println!(
            "  address      {}/{} via {}",
            a.address,
            a.prefix_len,
            opt(&a.gateway)
        );
    }
    let pinned = if s.guest.mac_pinned { " (--mac)" } else { "" };
    println!(
        "guest MAC      {}{pinned}, MTU {}",
        opt(&s.guest.mac),
        s.guest.mtu
    );
    match &s.guest.ipv4 {
        Some(g) => {
            println!(
                "guest IPv4     {}/{} via {} (mode {}, offered {})",
                g.address, g.prefix_len, g.gateway, g.mode, g.offered
            );
            match &g.lease {
                Some(l) => println!(
                    "  DHCP lease   {} to {}, bound {}s ago, renewed {}s ago, expires in {}s{}",
                    l.address,
                    l.mac,
                    l.age_secs,
                    l.renewed_secs_ago,
                    l.expires_in_secs,
                    l.hostname
                        .as_ref()
                        .map_or(String::new(), |h| format!(", hostname {h:?}"))
                ),
                None => println!("  DHCP lease   none"),
            }
        }
        None => println!("guest IPv4     off"),
    }
    match &s.guest.ipv6 {
        Some(g) => {
            println!(
                "guest IPv6     {}/{} via {} (mode {}, offered {}, DHCPv6 {})",
                g.address,
                g.prefix_len,
                g.gateway,
                g.mode,
                g.offered,
                if g.dhcpv6_bound { "bound" } else { "not bound" }
            );
            let seen: Vec<String> = g.seen.iter().map(|a| a.to_string()).collect();
            println!(
                "  seen         {}",
                if seen.is_empty() {
                    "-".into()
                } else {
                    seen.join(", ")
                }
            );
        }
        None => println!("guest IPv6     off"),
    }
    let f = &s.frontend;
    if f.connected {
        println!(
            "frontend       connected for {}s (session {}), rings rx {} tx {}",
            opt(&f.connected_secs),
            f.sessions,
            f.rx_ring_size,
            f.tx_ring_size
        );
        println!("  features     {}", f.features.join(" "));
    } else {
        println!(
            "frontend       not connected ({} sessions so far)",
            f.sessions
        );
    }
    if s.forwards.is_empty() {
        println!("forwards       none");
    } else {
        println!("forwards");
        print_forwards(&s.forwards);
    }
    let c = &s.flows;
    println!(
        "flows          tcp out {} in {}, udp out {} forwarded {}, icmp {}",
        c.tcp_outbound, c.tcp_inbound, c.udp_outbound, c.udp_forwarded, c.icmp
    );
    if s.drops.is_empty() {
        println!("drops          none");
    } else {
        println!("drops");
        for (name, v) in &s.drops {
            println!("  {name:<32} {v}");
        }
    }
    let cap = &s.capture;
    println!(
        "capture        {} (file {}, {} frames)",
        if cap.on { "on" } else { "off" },
        opt(&cap.file),
        cap.frames
    );
}

fn print_forwards(f: &[ForwardEntry]) {
    for e in f {
        println!(
            "  {:<4} {:<24} -> guest port {:<5} ({})",
            e.proto, e.bind, e.guest_port, e.spec
        );
    }
}

fn print_flows(flows: &[Flow]) {
    println!(
        "{:<5} {:<4} {:<42} {:<42} {:<24} {:<12} {:>12} {:>12} {:>9} {:>9}",
        "Proto", "Dir", "Guest", "Remote", "Pod", "State", "BytesOut", "BytesIn", "Age", "Idle"
    );
    for f in flows {
        let secs =
            |ms: &Option<u64>| ms.map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        println!(
            "{:<5} {:<4} {:<42} {:<42} {:<24} {:<12} {:>12} {:>12} {:>9} {:>9}",
            f.proto,
            if f.direction == "inbound" {
                "in"
            } else {
                "out"
            },
            f.guest.to_string(),
            opt(&f.remote),
            opt(&f.pod),
            f.state,
            opt(&f.bytes_from_guest),
            opt(&f.bytes_to_guest),
            secs(&f.age_ms),
            secs(&f.idle_ms)
        );
    }
}
