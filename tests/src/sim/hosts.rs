//! The machines of a simulated network: the real cores of a coordinator (control server with
//! an in-memory SQLite store, its work run inline), relays and nodes, each behind the same
//! small interface the simulator drives.

use lanmesh_coordinator::control::{ControlServer, Settings};
use lanmesh_coordinator::inline_work::run_work_inline;
use lanmesh_coordinator::registry::Registry;
use lanmesh_coordinator::store::{KeyKind, SqliteStore};
use lanmesh_coordinator::store_worker::StoreWorker;
use lanmesh_node::node_state::{Command, NodeState};
use lanmesh_proto::join_key::JoinSecret;
use lanmesh_proto::{stun, PublicKey};
use lanmesh_relay::relay_state::RelayState;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

/// The coordinator's control port and second STUN port.
pub const COORDINATOR_PORT: u16 = 7000;
pub const COORDINATOR_STUN_PORT: u16 = 7001;
/// Every node's and relay's UDP port.
pub const NODE_PORT: u16 = 41641;
pub const RELAY_PORT: u16 = 3478;

/// A datagram a machine sends: from which of its ports, to where.
pub struct Out {
    pub from_port: u16,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// The coordinator: the real control server, with storage and handshakes run inline.
pub struct Coordinator {
    pub server: ControlServer,
    store: StoreWorker,
    secret: [u8; 32],
    /// Wall-clock milliseconds at the simulation's start.
    wall_base_ms: u64,
    base: Instant,
}

impl Coordinator {
    pub fn new(secret: [u8; 32], base: Instant, wall_base_ms: u64, seed: u64) -> Coordinator {
        let public: PublicKey = lanmesh_coordinator::control::x25519_public(&secret).into();
        let settings = Settings {
            heartbeat_secs: 10,
            stun_port: Some(COORDINATOR_STUN_PORT),
            ..Settings::default()
        };
        let registry = Registry::new(lanmesh_proto::DEFAULT_NETWORK.parse().unwrap(), 60_000);
        let server = ControlServer::new(
            public,
            Vec::new(),
            registry,
            settings,
            base,
            wall_base_ms,
            seed,
        );
        Coordinator {
            server,
            store: StoreWorker::new(SqliteStore::in_memory()),
            secret,
            wall_base_ms,
            base,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.server.public_key()
    }

    /// Stores a reusable join key for nodes (or relays).
    pub fn add_key(&mut self, secret: &JoinSecret, relay: bool) {
        let kind = KeyKind {
            reusable: true,
            relay,
        };
        self.store
            .store_mut()
            .add_key(secret, kind, None, self.wall_base_ms)
            .expect("in-memory store");
    }

    fn ms(&self, now: Instant) -> u64 {
        self.wall_base_ms + now.saturating_duration_since(self.base).as_millis() as u64
    }

    fn run_work(&mut self, now: Instant) {
        let ms = self.ms(now);
        run_work_inline(
            &mut self.server,
            &mut self.store,
            &self.secret,
            now,
            ms,
            false,
        );
    }
}

/// What runs on a simulated machine.
pub enum Machine {
    Coordinator(Box<Coordinator>),
    Relay(Box<RelayState>),
    Node(Box<NodeState>),
    /// Sends what the test tells it to and keeps what it receives (an attacker, a prober).
    Raw(Vec<(Instant, SocketAddr, Vec<u8>)>),
}

impl Machine {
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst_port: u16,
        data: &[u8],
        out: &mut Vec<Out>,
    ) {
        match self {
            Machine::Coordinator(_) if dst_port == COORDINATOR_STUN_PORT => {
                let mut buf = [0u8; 64];
                if let Some(n) = stun::answer(src, data, &mut buf) {
                    out.push(Out {
                        from_port: COORDINATOR_STUN_PORT,
                        dst: src,
                        payload: buf[..n].to_vec(),
                    });
                }
            }
            Machine::Coordinator(c) => {
                c.server.handle_datagram(now, src, data);
                c.run_work(now);
            }
            Machine::Relay(r) => {
                let mut buf = data.to_vec();
                buf.resize(data.len().max(2048), 0);
                r.handle_datagram(now, src, &mut buf, data.len());
            }
            Machine::Node(n) => n.handle_datagram(now, src, data),
            Machine::Raw(inbox) => inbox.push((now, src, data.to_vec())),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Machine::Coordinator(c) => c.server.poll_timeout(),
            Machine::Relay(r) => Some(r.poll_timeout()),
            Machine::Node(n) => Some(n.poll_timeout()),
            Machine::Raw(_) => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self {
            Machine::Coordinator(c) => {
                c.server.handle_timeout(now);
                c.run_work(now);
            }
            Machine::Relay(r) => r.handle_timeout(now),
            Machine::Node(n) => n.handle_timeout(now),
            Machine::Raw(_) => {}
        }
    }

    /// Datagrams the machine wants sent; a node's TUN writes go to `tun`, its OS commands are
    /// answered from `local_ip` (the address of its one interface).
    pub fn drain(
        &mut self,
        now: Instant,
        local_ip: Ipv4Addr,
        out: &mut Vec<Out>,
        tun: &mut Vec<Vec<u8>>,
    ) {
        match self {
            Machine::Coordinator(c) => {
                while let Some(t) = c.server.poll_transmit() {
                    out.push(Out {
                        from_port: COORDINATOR_PORT,
                        dst: t.dst,
                        payload: t.payload,
                    });
                }
            }
            Machine::Relay(r) => {
                while let Some(t) = r.poll_transmit() {
                    out.push(Out {
                        from_port: RELAY_PORT,
                        dst: t.dst,
                        payload: t.payload,
                    });
                }
                while r.poll_command().is_some() {}
            }
            Machine::Node(n) => loop {
                while let Some(t) = n.poll_transmit() {
                    out.push(Out {
                        from_port: NODE_PORT,
                        dst: t.dst,
                        payload: t.payload,
                    });
                }
                while let Some(p) = n.poll_tun_write() {
                    tun.push(p);
                }
                let mut answered = false;
                while let Some(command) = n.poll_command() {
                    match command {
                        Command::ReadInterfaces => {
                            answered = true;
                            let me = SocketAddr::from((local_ip, NODE_PORT));
                            n.handle_interfaces(now, vec![me]);
                        }
                        Command::ReadGroups => n.handle_groups(Vec::new()),
                        Command::Stop(why) => panic!("a simulated node stopped: {why}"),
                        _ => {}
                    }
                }
                if !answered {
                    break;
                }
            },
            Machine::Raw(_) => {}
        }
    }
}
