//! The node's answers to its local API: `node status`, `node ping`, `node netcheck`.

use super::NodeState;
use crate::api::{
    LanBroadcastStatus, Netcheck, PeerStatus, PingResult, RelayStatus, Response, SeenBy, Status,
};
use crate::mesh::{Mesh, Via};
use std::time::Instant;

/// Pings answered, and those whose wait is over.
pub(super) fn pings_due(node: &mut NodeState, now: Instant) {
    if node.pings.is_empty() {
        // Answers that came after their ping gave up.
        while node.mesh.poll_ping_reply().is_some() {}
        return;
    }
    let replies: Vec<_> = std::iter::from_fn(|| node.mesh.poll_ping_reply()).collect();
    let mut i = 0;
    while i < node.pings.len() {
        let reply = replies.iter().find(|r| r.tx == node.pings[i].tx);
        if reply.is_none() && now < node.pings[i].deadline {
            i += 1;
            continue;
        }
        let p = node.pings.swap_remove(i);
        let via = reply.map(|r| r.via.clone()).unwrap_or(p.via);
        let mesh_ip = node
            .mesh
            .peers(now)
            .into_iter()
            .find(|v| v.info.name == p.name)
            .map(|v| v.info.mesh_ip.to_string())
            .unwrap_or_default();
        let result = PingResult {
            peer: p.name,
            mesh_ip,
            direct: matches!(via, Via::Direct(_)),
            via: via.to_string(),
            rtt_ms: reply.map(|r| r.rtt.as_secs_f64() * 1000.0),
        };
        node.replies.push_back((p.id, Response::Pong(result)));
    }
}

/// Netchecks whose STUN wait is over.
pub(super) fn netchecks_due(node: &mut NodeState, now: Instant) {
    let mut i = 0;
    while i < node.netchecks.len() {
        if now < node.netchecks[i].1 {
            i += 1;
            continue;
        }
        let (id, _) = node.netchecks.swap_remove(i);
        let response = Response::Netcheck(netcheck(node));
        node.replies.push_back((id, response));
    }
}

fn netcheck(node: &NodeState) -> Netcheck {
    let mut seen_by: Vec<SeenBy> = node
        .control
        .public_endpoint()
        .map(|e| SeenBy {
            server: "coordinator".into(),
            endpoint: e.to_string(),
        })
        .into_iter()
        .collect();
    seen_by.extend(node.stun.mapped().map(|(server, e)| SeenBy {
        server: server.to_string(),
        endpoint: e.to_string(),
    }));
    let mut public_endpoints: Vec<String> = seen_by.iter().map(|s| s.endpoint.clone()).collect();
    public_endpoints.sort();
    public_endpoints.dedup();
    let varies = node.stun.mapping_varies(node.control.public_endpoint());
    Netcheck {
        udp: !seen_by.is_empty(),
        public_endpoints,
        seen_by,
        mapping_varies_by_destination: varies.unwrap_or(false),
        mapping_known: varies.is_some(),
        relays: relay_statuses(&node.mesh),
    }
}

fn relay_statuses(mesh: &Mesh) -> Vec<RelayStatus> {
    mesh.relay_latencies()
        .into_iter()
        .map(|(name, rtt)| RelayStatus {
            name,
            latency_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
        })
        .collect()
}

/// `node status`, without what only the driver knows (how names are served: `names` and each
/// peer's `dns_name` are left empty).
pub(super) fn status(node: &NodeState, now: Instant) -> Status {
    let identity = node.identity.as_ref();
    let mesh = &node.mesh;
    let control = &node.control;
    Status {
        name: identity.map(|i| i.name.clone()).unwrap_or_default(),
        mesh_ip: identity
            .map(|i| i.placement.mesh_ip.to_string())
            .unwrap_or_default(),
        domain: identity.map(|i| i.domain.clone()),
        names: String::new(),
        data_path: Default::default(), // The driver's to tell.
        lan_broadcast: LanBroadcastStatus {
            enabled: mesh.lan_config().enabled,
            allowed_by_network: mesh.lan_allowed(),
            active: mesh.lan_active(),
            limit_pps: mesh.lan_config().pps,
            limit_kbit: mesh.lan_config().kbit,
        },
        counters: mesh.lan_counters(),
        public_key: node.public.to_string(),
        coordinator: control.coordinator_addr().to_string(),
        coordinator_connected: control.is_connected(),
        problem: control.problem().map(str::to_string),
        public_endpoint: control.public_endpoint().map(|e| e.to_string()),
        mapping_varies_by_destination: node.stun.mapping_varies(control.public_endpoint()),
        relays: relay_statuses(mesh),
        peers: mesh
            .peers(now)
            .into_iter()
            .map(|p| PeerStatus {
                dns_name: None,
                name: p.info.name,
                mesh_ip: p.info.mesh_ip.to_string(),
                public_key: p.info.public_key.to_string(),
                online: p.info.online,
                path: p.path.as_str().to_string(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                relay: p.relay,
                last_handshake_secs: p.last_handshake.map(|d| d.as_secs()),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            })
            .collect(),
    }
}
