//! The control socket's wire format: one JSON request per line, one JSON answer per line.
//! These types ARE the documented `--json` format (docs/operations.md); fields may be added,
//! never renamed or removed, and `schema` is bumped if a meaning ever changes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

pub const SCHEMA: u32 = 1;

/// A request. Unknown commands and fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {},
    Flows {
        #[serde(default)]
        limit: Option<usize>,
    },
    ForwardList {},
    ForwardAdd {
        proto: String,
        spec: String,
    },
    ForwardDel {
        proto: String,
        spec: String,
    },
    Capture {
        on: bool,
    },
}

/// An answer: exactly one of `error` or the payload field of the command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<Flow>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwards: Option<Vec<ForwardEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureState>,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Response::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub schema: u32,
    pub version: String,
    pub pod: Pod,
    pub guest: Guest,
    pub frontend: Frontend,
    pub forwards: Vec<ForwardEntry>,
    pub flows: FlowCounts,
    /// Every non-zero drop counter, by its status-line name.
    pub drops: BTreeMap<String, u64>,
    pub capture: CaptureState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    pub interface: String,
    pub mtu: u32,
    pub addresses: Vec<PodAddress>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Guest {
    /// Learned from its frames, or given with --mac (`mac_pinned`); null before it spoke.
    pub mac: Option<String>,
    pub mac_pinned: bool,
    pub mtu: u16,
    pub ipv4: Option<Guest4>,
    pub ipv6: Option<Guest6>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Guest4 {
    /// `subnet` (--guest-cidr CIDR) or `pod` (--guest-cidr pod: the pod's own address).
    pub mode: String,
    /// The address traffic from the pod goes to (the offered one, or what the guest uses).
    pub address: Ipv4Addr,
    pub offered: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub lease: Option<Lease4>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease4 {
    pub address: Ipv4Addr,
    pub mac: String,
    /// Seconds since the guest first got this address, and since its latest renewal.
    pub age_secs: u64,
    pub renewed_secs_ago: u64,
    pub lease_secs: u32,
    pub expires_in_secs: u64,
    /// As the guest sent it (option 12), untrusted.
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Guest6 {
    pub mode: String,
    pub address: Ipv6Addr,
    pub offered: Ipv6Addr,
    pub prefix_len: u8,
    pub gateway: Ipv6Addr,
    pub dhcpv6_bound: bool,
    /// Addresses the guest was seen using (NDP, its packets), most recent first.
    pub seen: Vec<Ipv6Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frontend {
    pub connected: bool,
    pub connected_since_unix_ms: Option<u64>,
    pub connected_secs: Option<u64>,
    /// Frontends served since start (1 + reconnects).
    pub sessions: u64,
    pub features: Vec<String>,
    pub features_hex: String,
    pub rx_ring_size: u32,
    pub tx_ring_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardEntry {
    /// `tcp` or `udp`.
    pub proto: String,
    /// The spec as given (`-t`/`-u` syntax).
    pub spec: String,
    /// The pod address the listener is bound to.
    pub bind: SocketAddr,
    pub guest_port: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlowCounts {
    pub tcp_outbound: usize,
    pub tcp_inbound: usize,
    pub udp_outbound: usize,
    pub udp_forwarded: usize,
    pub icmp: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flow {
    pub proto: String,
    /// `outbound` (opened by the guest) or `inbound` (a forwarded pod port).
    pub direction: String,
    pub guest: SocketAddr,
    pub remote: Option<SocketAddr>,
    pub pod: Option<SocketAddr>,
    pub state: String,
    pub bytes_from_guest: Option<u64>,
    pub bytes_to_guest: Option<u64>,
    pub age_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    /// TCP only: the connection's internal state (`podwire_nat::TcpDetail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpDetail>,
}

/// A TCP connection's internal state; see `podwire_nat::TcpDetail` for each field.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpDetail {
    pub events: Vec<String>,
    pub flags: Vec<String>,
    pub snd_una: u32,
    pub in_flight: u32,
    pub guest_window: u32,
    pub rcv_nxt: u32,
    pub offered_window: u32,
    pub socket_unread: u32,
    pub socket_unsent: u32,
    pub rto_in_ms: Option<u64>,
    pub retries: u8,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaptureState {
    pub on: bool,
    pub file: Option<String>,
    pub frames: u64,
    pub bytes: u64,
}
