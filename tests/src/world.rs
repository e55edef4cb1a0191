//! The lab fixture most end-to-end tests start from: a coordinator with a reusable node key,
//! optionally a second STUN server, and relays, all on the lab's switch; and nodes started
//! against it.

use crate::mesh::{nat_flags, Coordinator, Node, Relay, MESH_TIMEOUT};
use crate::{Host, Lab, Nat};

/// Where the world's machines sit on the switch.
pub const COORD_IP: &str = "203.0.113.10";
pub const STUN_IP: &str = "203.0.113.11";

/// A coordinator with a reusable join key, an optional extra STUN server and relays.
pub struct World {
    pub coord: Coordinator,
    /// The reusable node join key.
    pub key: String,
    /// `IP:PORT` of the extra STUN server, if there is one.
    pub stun: Option<String>,
    pub relays: Vec<Relay>,
}

/// What [`World::build`] makes.
#[derive(Default)]
pub struct WorldSpec<'a> {
    /// A second STUN server (another coordinator with no nodes), so nodes can tell whether
    /// their NAT's mapping varies by destination.
    pub stun: bool,
    /// Relays as `(name, ip)`.
    pub relays: &'a [(&'a str, &'a str)],
}

impl World {
    /// Builds the world and waits until every relay is registered with the coordinator.
    pub fn build(lab: &Lab, spec: WorldSpec) -> World {
        let host = lab.add_host("coord", COORD_IP);
        let coord = Coordinator::start(lab, &host, &[]);
        let key = coord.create_key(lab, &["--reusable"]);
        let stun = spec.stun.then(|| {
            // Any coordinator answers STUN; this one has no nodes.
            let stun_host = lab.add_host("stun", STUN_IP);
            Coordinator::start(lab, &stun_host, &[]).addr
        });
        let relays: Vec<Relay> = if spec.relays.is_empty() {
            Vec::new()
        } else {
            let relay_key = coord.create_key(lab, &["--relay", "--reusable"]);
            spec.relays
                .iter()
                .map(|(name, ip)| {
                    let h = lab.add_host(&format!("relay{name}"), ip);
                    Relay::start(lab, &h, name, &coord.addr, &relay_key, &[])
                })
                .collect()
        };
        for r in &relays {
            let s = r.wait_status(lab, MESH_TIMEOUT, "connected to the coordinator", |s| {
                s.coordinator_connected
            });
            assert_eq!(s.name, r.name, "relay status shows another name");
            assert_eq!(s.packets_forwarded, 0, "a new relay forwarded something");
        }
        World {
            coord,
            key,
            stun,
            relays,
        }
    }

    pub fn relay(&self, name: &str) -> &Relay {
        self.relays
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no relay called {name:?}"))
    }

    /// Starts `node up` for `name` on `host` with the world's key, interface `lm0`, UDP
    /// `port`, the world's STUN server and `keepalive`; does not wait.
    pub fn start_node(
        &self,
        lab: &Lab,
        host: &Host,
        name: &str,
        port: &str,
        keepalive: Option<u32>,
    ) -> Node {
        let mut node = Node::new(lab, host, name, &self.coord.addr);
        let mut args: Vec<String> = ["--interface", "lm0", "--port", port]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let stun: Vec<&str> = self.stun.iter().map(String::as_str).collect();
        args.extend(nat_flags(&stun, keepalive));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        node.up(lab, Some(&self.key), &args);
        node
    }
}

/// Hosts a and b: on the switch (203.0.113.21 and .22: a direct path), or each behind a
/// symmetric NAT with those WAN addresses (no punch works: the pair needs a relay).
pub fn host_pair(lab: &Lab, behind_symmetric_nats: bool) -> (Host, Host) {
    const WAN: [(&str, &str, &str); 2] = [("a", "ra", "203.0.113.21"), ("b", "rb", "203.0.113.22")];
    let host = |(name, router, ip): (&str, &str, &str)| {
        if behind_symmetric_nats {
            let r = lab.add_router(router, ip, Nat::Symmetric);
            lab.add_host_behind(&r, name, 2)
        } else {
            lab.add_host(name, ip)
        }
    };
    (host(WAN[0]), host(WAN[1]))
}
