//! The daemon's local control socket (`node.sock` in the state dir, owner-only): one JSON
//! request line in, one JSON answer line out. `node status` and `node down` use it.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

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
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub mesh_ip: String,
    pub public_key: String,
    pub online: bool,
    /// "direct", "relay" or "connecting".
    pub path: String,
    pub endpoint: Option<String>,
    pub last_handshake_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Sends one request to the daemon behind `socket`.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "no node daemon is running with state dir {} (start one with `sudo node up`)",
            socket
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("not allowed to talk to the node daemon: run with sudo")
        }
        _ => anyhow::anyhow!("cannot reach the node daemon at {}: {e}", socket.display()),
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map_err(|_| anyhow::anyhow!("the node daemon gave an answer this version cannot read"))
}
