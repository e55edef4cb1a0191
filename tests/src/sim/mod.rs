//! A simulated network for the real lanmesh cores: a coordinator, relays and nodes (their
//! sans-IO state machines, not the binaries), NAT routers modelled per RFC 4787 ([`nat`]),
//! links with latency, jitter and loss (and so reordering), and a virtual clock that jumps to
//! the next thing that happens. A minute of a mesh's life runs in milliseconds, and a run
//! replays exactly from its seed.
//!
//! Topology: machines and routers live in realms — the internet, or a router's LAN. A
//! datagram crosses its sender's link into the sender's realm, is delivered to the machine or
//! router with its destination address there, or leaves through the realm's router (which
//! translates it) into the router's own realm, and so on; translation happens when the
//! datagram reaches the router, so races between two routers are real races.
//!
//! Drivers run due timers a little late (up to 30 ms, drawn from the seed), so timers and
//! datagrams race as on a busy machine; a core that keeps asking to run again at once after its
//! timeout ran is a busy loop, and a violation.
//!
//! Each node has a "kernel": an ICMP echo request written to its TUN for its own mesh IP is
//! answered, as Linux would. Every packet a node writes to its TUN is checked: it must be for
//! that node, and come from the node that sent it (see [`Sim::violations`]).

mod echo;
pub mod hosts;
pub mod nat;
mod net;
mod packets;
mod run;

pub use nat::can_punch;

use echo::Echo;
use hosts::{Coordinator, Machine, Out, COORDINATOR_PORT, NODE_PORT, RELAY_PORT};
use lanmesh_node::lan::LanConfig;
use lanmesh_node::mesh::{Path, PeerView};
use lanmesh_node::node_state::{NodeConfig, NodeState};
use lanmesh_proto::client::{ClientConfig, Trust};
use lanmesh_proto::join_key::JoinSecret;
use lanmesh_proto::messages::Role;
use lanmesh_proto::PublicKey;
use lanmesh_relay::relay_state::{RelayConfig, RelayState};
use nat::{Nat, NatConfig};
use net::InFlight;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

thread_local! {
    /// The latest simulated instant on this thread.
    static CLOCK_FLOOR: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    /// The running simulation's start, for log lines.
    static SIM_START: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Log lines carry the simulated time since the simulation started (`12.345s`).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let now = CLOCK_FLOOR.with(|f| f.get());
        let start = SIM_START.with(|f| f.get());
        match (now, start) {
            (Some(now), Some(start)) => write!(w, "{:>9.3}s", (now - start).as_secs_f64()),
            _ => write!(w, "{:>10}", "-"),
        }
    }
}

/// The wall clock at a simulation's start (2026-12-01), so a run does not depend on the day.
const WALL_BASE_MS: u64 = 1_796_083_200_000;

/// One way across a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    pub latency: Duration,
    /// Up to this much more, uniformly (datagrams overtake each other).
    pub jitter: Duration,
    /// The share of datagrams lost, 0.0–1.0.
    pub loss: f64,
}

impl Link {
    pub const fn ms(latency: u64) -> Link {
        Link {
            latency: Duration::from_millis(latency),
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Realm {
    Internet,
    Lan(RouterId),
}

pub type HostId = usize;
pub type RouterId = usize;

pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub realm: Realm,
    pub link: Link,
    pub machine: Machine,
    pub up: bool,
}

pub struct Router {
    pub nat: Nat,
    pub realm: Realm,
    pub link: Link,
    /// The next free host number in its LAN (10.R.0.x).
    next_host: u8,
}

pub struct Sim {
    pub now: Instant,
    /// The world's seed (also what drivers' timer lateness is drawn from).
    seed: u64,
    base: Instant,
    rng: StdRng,
    pub hosts: Vec<Host>,
    pub routers: Vec<Router>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    flights: HashMap<u64, InFlight>,
    seq: u64,
    coordinator: Option<HostId>,
    coordinator_key: Option<PublicKey>,
    node_key: JoinSecret,
    relay_key: JoinSecret,
    echoes: HashMap<u32, Echo>,
    next_echo: u32,
    violations: Vec<String>,
    /// Per host: timeouts in a row after which it wanted to run again at once.
    busy_streak: Vec<u32>,
    /// Per host: how often its timeout ran.
    wakes: Vec<u64>,
    /// Datagrams delivered, lost on links, and dropped for want of a route or a mapping.
    pub delivered: u64,
    pub lost: u64,
    pub unroutable: u64,
}

impl Sim {
    /// An empty world; every random choice (keys, losses, jitter, NAT ports, the cores' own
    /// randomness) comes from `seed`.
    pub fn new(seed: u64) -> Sim {
        // RUST_LOG=debug shows what the cores log (once per test binary).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_timer(SimTime)
                .with_ansi(false)
                .with_test_writer()
                .try_init();
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let node_key = JoinSecret {
            id: rng.gen(),
            secret: rng.gen(),
        };
        let relay_key = JoinSecret {
            id: rng.gen(),
            secret: rng.gen(),
        };
        // boringtun's clock (per thread, see `lanmesh_node::wg_clock`) never goes back: a
        // simulation starts after everything an earlier one on this thread simulated.
        let now = CLOCK_FLOOR
            .with(|f| f.get())
            .map_or(Instant::now(), |f| f.max(Instant::now()));
        CLOCK_FLOOR.with(|f| f.set(Some(now)));
        SIM_START.with(|f| f.set(Some(now)));
        Sim {
            now,
            seed,
            base: now,
            rng,
            hosts: Vec::new(),
            routers: Vec::new(),
            queue: BinaryHeap::new(),
            flights: HashMap::new(),
            seq: 0,
            coordinator: None,
            coordinator_key: None,
            node_key,
            relay_key,
            echoes: HashMap::new(),
            next_echo: 1,
            violations: Vec::new(),
            busy_streak: Vec::new(),
            wakes: Vec::new(),
            delivered: 0,
            lost: 0,
            unroutable: 0,
        }
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// A NAT router whose WAN is in `realm` (at `wan`), behind `link`.
    pub fn add_router(
        &mut self,
        realm: Realm,
        wan: Ipv4Addr,
        link: Link,
        nat: NatConfig,
    ) -> RouterId {
        self.routers.push(Router {
            nat: Nat::new(nat, wan),
            realm,
            link,
            next_host: 2,
        });
        self.routers.len() - 1
    }

    /// A router on the internet at 198.51.100.(N+1).
    pub fn add_home_router(&mut self, nat: NatConfig, link: Link) -> RouterId {
        let n = self.routers.len() as u8 + 1;
        self.add_router(Realm::Internet, Ipv4Addr::new(198, 51, 100, n), link, nat)
    }

    /// A free address in `realm`.
    pub fn address_in(&mut self, realm: Realm) -> Ipv4Addr {
        match realm {
            Realm::Internet => {
                let n = self
                    .hosts
                    .iter()
                    .filter(|h| h.realm == Realm::Internet)
                    .count();
                Ipv4Addr::new(203, 0, 113, 10 + n as u8)
            }
            Realm::Lan(r) => {
                let router = &mut self.routers[r];
                router.next_host += 1;
                Ipv4Addr::new(10, r as u8, 0, router.next_host - 1)
            }
        }
    }

    fn add_host(&mut self, name: &str, realm: Realm, link: Link, machine: Machine) -> HostId {
        let ip = match machine {
            Machine::Coordinator(_) => Ipv4Addr::new(203, 0, 113, 1),
            _ => self.address_in(realm),
        };
        self.busy_streak.push(0);
        self.wakes.push(0);
        self.hosts.push(Host {
            name: name.into(),
            ip,
            realm,
            link,
            machine,
            up: true,
        });
        self.hosts.len() - 1
    }

    fn coordinator_addr(&self) -> SocketAddr {
        let c = self.coordinator.expect("add the coordinator first");
        SocketAddr::from((self.hosts[c].ip, COORDINATOR_PORT))
    }

    /// The coordinator, on the internet at 203.0.113.1.
    pub fn add_coordinator(&mut self, link: Link) -> HostId {
        let mut secret = [0u8; 32];
        self.rng.fill_bytes(&mut secret);
        let seed = self.rng.gen();
        let mut c = Coordinator::new(secret, self.now, WALL_BASE_MS, seed);
        c.add_key(&self.node_key, false);
        c.add_key(&self.relay_key, true);
        self.coordinator_key = Some(c.public_key());
        let id = self.add_host(
            "coordinator",
            Realm::Internet,
            link,
            Machine::Coordinator(Box::new(c)),
        );
        self.coordinator = Some(id);
        id
    }

    fn wall_ns(&self) -> u64 {
        (WALL_BASE_MS + self.elapsed().as_millis() as u64) * 1_000_000
    }

    /// Who a node or relay is and how it joins this world's coordinator.
    fn client_config(&self, private: [u8; 32], name: &str, role: Role) -> ClientConfig {
        ClientConfig {
            private,
            coordinator_addr: self.coordinator_addr(),
            trust: Trust::JoinKey(self.coordinator_key.expect("add the coordinator first")),
            join: Some(match role {
                Role::Node => self.node_key,
                Role::Relay => self.relay_key,
            }),
            name: name.into(),
            role,
            stamp_floor: 0,
        }
    }

    /// A relay on the internet.
    pub fn add_relay(&mut self, name: &str, link: Link) -> HostId {
        let mut private = [0u8; 32];
        self.rng.fill_bytes(&mut private);
        let config = RelayConfig {
            client: self.client_config(private, name, Role::Relay),
            bytes_per_sec: 1 << 30,
            seed: self.rng.gen(),
        };
        let relay = RelayState::new(config, self.now, self.wall_ns());
        self.add_host(name, Realm::Internet, link, Machine::Relay(Box::new(relay)))
    }

    /// A node in `realm` (the internet, or a router's LAN) that starts joining now.
    pub fn add_node(&mut self, name: &str, realm: Realm, link: Link) -> HostId {
        let mut private = [0u8; 32];
        self.rng.fill_bytes(&mut private);
        let config = NodeConfig {
            client: self.client_config(private, name, Role::Node),
            keepalive_secs: 25,
            lan: LanConfig::default(),
            stun_servers: Vec::new(),
            seed: self.rng.gen(),
        };
        let node = NodeState::new(config, self.now, self.wall_ns());
        self.add_host(name, realm, link, Machine::Node(Box::new(node)))
    }

    pub fn node(&self, h: HostId) -> &NodeState {
        match &self.hosts[h].machine {
            Machine::Node(n) => n,
            _ => panic!("{} is not a node", self.hosts[h].name),
        }
    }

    pub fn mesh_ip(&self, h: HostId) -> Option<Ipv4Addr> {
        self.node(h).mesh_ip()
    }

    /// What `a` knows of `b` now.
    pub fn peer(&self, a: HostId, b: HostId) -> Option<PeerView> {
        let key = self.node(b).public_key();
        self.node(a)
            .mesh()
            .peers(self.now)
            .into_iter()
            .find(|p| p.info.public_key == key)
    }

    /// How `a` reaches `b` now.
    pub fn path(&self, a: HostId, b: HostId) -> Path {
        self.peer(a, b).map_or(Path::Idle, |p| p.path)
    }

    /// Takes a machine off the network (its state is kept; nothing reaches it, it does
    /// nothing) or puts it back.
    pub fn set_up(&mut self, h: HostId, up: bool) {
        self.hosts[h].up = up;
    }

    /// Moves a machine to another realm (a laptop changing networks), with a new address.
    pub fn move_host(&mut self, h: HostId, realm: Realm) {
        let ip = self.address_in(realm);
        self.hosts[h].realm = realm;
        self.hosts[h].ip = ip;
    }

    /// Datagrams a machine on the internet or in a LAN sends from `from_port`.
    pub fn send_raw(&mut self, h: HostId, from_port: u16, dst: SocketAddr, payload: Vec<u8>) {
        self.send(
            h,
            Out {
                from_port,
                dst,
                payload,
            },
        );
    }

    /// What a raw machine received.
    pub fn raw_inbox(&self, h: HostId) -> &[(Instant, SocketAddr, Vec<u8>)] {
        match &self.hosts[h].machine {
            Machine::Raw(inbox) => inbox,
            _ => panic!("not a raw machine"),
        }
    }

    /// A machine that only sends what the test makes it send.
    pub fn add_raw(&mut self, name: &str, realm: Realm, link: Link) -> HostId {
        self.add_host(name, realm, link, Machine::Raw(Vec::new()))
    }

    /// How often host `h`'s timeout has run.
    pub fn wakes(&self, h: HostId) -> u64 {
        self.wakes[h]
    }

    /// What went wrong that must never: packets delivered to the wrong node, or from the
    /// wrong one.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    pub fn router(&mut self, r: RouterId) -> &mut Router {
        &mut self.routers[r]
    }

    pub fn relay_port(&self) -> u16 {
        RELAY_PORT
    }

    pub fn node_port(&self) -> u16 {
        NODE_PORT
    }
}
