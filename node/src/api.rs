//! What the node daemon's local control socket (`node.sock`) speaks: `node status` and
//! `node down` use it.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Status,
    Down,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    GoingDown,
}

/// What `node status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub mesh_ip: String,
    pub public_key: String,
    pub coordinator: String,
    pub coordinator_connected: bool,
    /// This node's public endpoint as the coordinator sees it.
    pub public_endpoint: Option<String>,
    /// Whether our NAT maps different destinations to different public ports (symmetric NAT);
    /// null until it is known (needs at least one --stun server besides the coordinator).
    pub mapping_varies_by_destination: Option<bool>,
    /// The relays the coordinator lists, with their round trip (null: not answering).
    pub relays: Vec<RelayStatus>,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayStatus {
    pub name: String,
    pub latency_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
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
