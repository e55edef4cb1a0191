//! What the node daemon's local control socket (`node.sock`) speaks: `node status` and
//! `node down` use it.

use crate::lan::LanCounters;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Status,
    Down,
    /// One path-level ping to a peer (by name or mesh IP).
    Ping {
        peer: String,
    },
    Netcheck,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    GoingDown,
    Pong(PingResult),
    Netcheck(Netcheck),
    /// The request could not be done; the text says why and what to do.
    Error(String),
}

/// One `node ping` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingResult {
    pub peer: String,
    pub mesh_ip: String,
    /// "direct IP:PORT" or "via relay NAME".
    pub via: String,
    pub direct: bool,
    /// None: no answer within 2 s.
    pub rtt_ms: Option<f64>,
}

/// What `node netcheck --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Netcheck {
    /// Whether UDP works at all (the coordinator or a STUN server answered).
    pub udp: bool,
    /// Every public endpoint this node was seen at.
    pub public_endpoints: Vec<String>,
    /// Who saw which endpoint.
    pub seen_by: Vec<SeenBy>,
    /// Whether different destinations saw different public endpoints (symmetric NAT).
    pub mapping_varies_by_destination: bool,
    /// False when fewer than two destinations answered (the answer above is then a guess).
    pub mapping_known: bool,
    pub relays: Vec<RelayStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeenBy {
    /// "coordinator", or the STUN server's address.
    pub server: String,
    pub endpoint: String,
}

/// What `node status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub mesh_ip: String,
    pub public_key: String,
    pub coordinator: String,
    pub coordinator_connected: bool,
    /// Why the node is not registered, when the coordinator refused or removed it, or a
    /// warning about it (another protocol version, another key); null otherwise.
    #[serde(default)]
    pub problem: Option<String>,
    /// This node's public endpoint as the coordinator sees it.
    pub public_endpoint: Option<String>,
    /// Whether our NAT maps different destinations to different public ports (symmetric NAT);
    /// null until it is known (needs at least one --stun server besides the coordinator).
    pub mapping_varies_by_destination: Option<bool>,
    /// The relays the coordinator lists, with their round trip (null: not answering).
    pub relays: Vec<RelayStatus>,
    pub peers: Vec<PeerStatus>,
    /// The DNS domain of peer names (null before registering).
    #[serde(default)]
    pub domain: Option<String>,
    /// What serves peer names on this machine: "/etc/hosts", "systemd-resolved" or "off".
    #[serde(default)]
    pub names: String,
    /// Broadcast and multicast between nodes.
    #[serde(default)]
    pub lan_broadcast: LanBroadcastStatus,
    /// `broadcast_tx`, `broadcast_rx`, `broadcast_dropped`.
    #[serde(flatten, default)]
    pub counters: LanCounters,
    /// How packets move between the interface, the core and the socket.
    #[serde(default)]
    pub data_path: DataPathStatus,
}

/// The driver's batching: whether offload is on and how many packets each system call
/// moved (packets ÷ calls is the batch size).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPathStatus {
    /// The mesh interface takes and gives 64 KiB TCP/UDP trains (`--offload`).
    pub tun_offload: bool,
    /// Sends to one destination leave as one UDP GSO train (false: not asked for, or the
    /// network card could not, and the socket fell back to single datagrams).
    pub udp_gso: bool,
    pub tun_reads: u64,
    pub tun_packets_in: u64,
    pub tun_writes: u64,
    pub tun_packets_out: u64,
    pub udp_sends: u64,
    pub udp_datagrams_out: u64,
    pub udp_receives: u64,
    pub udp_datagrams_in: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LanBroadcastStatus {
    /// This node's switch (`--lan-broadcast`).
    pub enabled: bool,
    /// The coordinator's switch for the whole network.
    pub allowed_by_network: bool,
    /// Both: broadcast and multicast are carried.
    pub active: bool,
    /// Limits: packets and kilobits a second (sent by this node, received from each peer).
    pub limit_pps: u32,
    pub limit_kbit: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayStatus {
    pub name: String,
    pub latency_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    /// The name the peer resolves as on this machine (`alice.mesh`); null when names are off
    /// or its name is no DNS label.
    #[serde(default)]
    pub dns_name: Option<String>,
    pub mesh_ip: String,
    pub public_key: String,
    pub online: bool,
    /// "direct", "relay" or "connecting".
    pub path: String,
    /// The peer's address on a direct path, the relay's on a relayed one.
    pub endpoint: Option<String>,
    /// The relay carrying the traffic, when `path` is "relay".
    pub relay: Option<String>,
    pub last_handshake_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Sends one request to the node daemon behind `socket`.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    lanmesh_common::local_api::call(socket, "node", request)
}
