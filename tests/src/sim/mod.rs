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
//! Each node has a "kernel": an ICMP echo request written to its TUN for its own mesh IP is
//! answered, as Linux would. Every packet a node writes to its TUN is checked: it must be for
//! that node, and come from the node that sent it (see [`Sim::violations`]).

pub mod hosts;
pub mod nat;
mod packets;

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
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
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

#[derive(Debug, Clone, Copy)]
enum Hop {
    /// To be routed inside this realm.
    InRealm(Realm),
    /// Arriving at a router's WAN address (to be translated in).
    AtRouter(RouterId),
    AtHost(HostId),
}

struct InFlight {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Vec<u8>,
    hop: Hop,
}

/// A ping the simulator sent through the mesh, and its answer.
struct Echo {
    from: HostId,
    to_ip: Ipv4Addr,
    sent: Instant,
    answered: Option<Instant>,
}

pub struct Sim {
    pub now: Instant,
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

    /// What went wrong that must never: packets delivered to the wrong node, or from the
    /// wrong one.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    fn schedule(&mut self, at: Instant, flight: InFlight) {
        self.seq += 1;
        self.flights.insert(self.seq, flight);
        self.queue.push(Reverse((at, self.seq)));
    }

    /// When a datagram that crosses `link` now arrives, or `None` when the link loses it.
    fn cross(&mut self, link: Link) -> Option<Instant> {
        if link.loss > 0.0 && self.rng.gen_bool(link.loss.min(1.0)) {
            self.lost += 1;
            tracing::trace!(target: "sim", "lost on a link");
            return None;
        }
        let jitter = if link.jitter.is_zero() {
            Duration::ZERO
        } else {
            link.jitter.mul_f64(self.rng.gen::<f64>())
        };
        Some(self.now + link.latency + jitter)
    }

    fn send(&mut self, h: HostId, out: Out) {
        let host = &self.hosts[h];
        let SocketAddr::V4(dst) = out.dst else {
            return;
        };
        let src = SocketAddrV4::new(host.ip, out.from_port);
        let (link, realm) = (host.link, host.realm);
        if let Some(at) = self.cross(link) {
            let flight = InFlight {
                src,
                dst,
                payload: out.payload,
                hop: Hop::InRealm(realm),
            };
            self.schedule(at, flight);
        }
    }

    /// Moves a datagram one hop on.
    fn route(&mut self, mut f: InFlight) {
        match f.hop {
            Hop::AtHost(h) => {
                let host = &mut self.hosts[h];
                if !host.up || host.ip != *f.dst.ip() {
                    self.unroutable += 1;
                    return;
                }
                self.delivered += 1;
                tracing::trace!(target: "sim", at = ?(self.now - self.base), "{} → {} ({}): {} bytes", f.src, f.dst, host.name, f.payload.len());
                let mut out = Vec::new();
                let src = SocketAddr::V4(f.src);
                host.machine
                    .handle_datagram(self.now, src, f.dst.port(), &f.payload, &mut out);
                for o in out {
                    self.send(h, o);
                }
            }
            Hop::AtRouter(r) => {
                let router = &mut self.routers[r];
                match router.nat.inbound(self.now, f.src, f.dst.port()) {
                    Some(internal) => {
                        f.dst = internal;
                        f.hop = Hop::InRealm(Realm::Lan(r));
                        self.route(f);
                    }
                    None => {
                        tracing::trace!(target: "sim", "{} → {}: no mapping lets it in", f.src, f.dst);
                        self.unroutable += 1
                    }
                }
            }
            Hop::InRealm(realm) => {
                let dst_ip = *f.dst.ip();
                if let Some(h) = self
                    .hosts
                    .iter()
                    .position(|h| h.realm == realm && h.ip == dst_ip)
                {
                    if let Some(at) = self.cross(self.hosts[h].link) {
                        f.hop = Hop::AtHost(h);
                        self.schedule(at, f);
                    }
                    return;
                }
                if let Some(r) = self
                    .routers
                    .iter()
                    .position(|r| r.realm == realm && r.nat.wan == dst_ip)
                {
                    if let Some(at) = self.cross(self.routers[r].link) {
                        f.hop = Hop::AtRouter(r);
                        self.schedule(at, f);
                    }
                    return;
                }
                let Realm::Lan(r) = realm else {
                    self.unroutable += 1;
                    return;
                };
                let now = self.now;
                let router = &mut self.routers[r];
                f.src = router.nat.outbound(now, f.src, f.dst, &mut self.rng);
                if dst_ip == router.nat.wan {
                    // Inside to the router's own WAN address: hairpinning, if it does that.
                    if router.nat.config.hairpin {
                        f.hop = Hop::AtRouter(r);
                        self.route(f);
                    } else {
                        self.unroutable += 1;
                    }
                    return;
                }
                let (link, up) = (router.link, router.realm);
                if let Some(at) = self.cross(link) {
                    f.hop = Hop::InRealm(up);
                    self.schedule(at, f);
                }
            }
        }
    }

    /// Collects and sends what every machine wants sent, and runs each node's kernel.
    fn drain(&mut self) {
        let mut out = Vec::new();
        let mut tun = Vec::new();
        for h in 0..self.hosts.len() {
            if !self.hosts[h].up {
                continue;
            }
            loop {
                let ip = self.hosts[h].ip;
                self.hosts[h]
                    .machine
                    .drain(self.now, ip, &mut out, &mut tun);
                if out.is_empty() && tun.is_empty() {
                    break;
                }
                for o in out.drain(..) {
                    self.send(h, o);
                }
                for packet in tun.drain(..) {
                    self.kernel(h, &packet);
                }
            }
        }
    }

    /// What a node's operating system does with a packet the node wrote to its TUN.
    fn kernel(&mut self, h: HostId, packet: &[u8]) {
        let Some(me) = self.mesh_ip(h) else {
            return self.violations.push(format!(
                "{}: TUN packet before it had an address",
                self.hosts[h].name
            ));
        };
        let Some(echo) = packets::parse_echo(packet) else {
            return; // Only the simulator's pings travel the simulated meshes.
        };
        let name = &self.hosts[h].name;
        if echo.dst != me {
            return self.violations.push(format!(
                "{name} (mesh IP {me}) was handed a packet for {}",
                echo.dst
            ));
        }
        let Some(sent) = self.echoes.get_mut(&echo.id) else {
            return self.violations.push(format!("{name}: a ping nobody sent"));
        };
        if echo.request {
            let from_ip = match &self.hosts[sent.from].machine {
                Machine::Node(n) => n.mesh_ip(),
                _ => None,
            };
            if Some(echo.src) != from_ip || sent.to_ip != me {
                return self.violations.push(format!(
                    "{name}: ping {} came from {} but was sent by {}",
                    echo.id, echo.src, self.hosts[sent.from].name
                ));
            }
            let reply = packets::echo(me, echo.src, echo.id, false);
            let now = self.now;
            if let Machine::Node(n) = &mut self.hosts[h].machine {
                n.handle_tun_packet(now, &reply);
            }
        } else {
            if sent.from != h || echo.src != sent.to_ip {
                return self.violations.push(format!(
                    "{name}: answer to ping {} came back to the wrong node",
                    echo.id
                ));
            }
            sent.answered.get_or_insert(self.now);
        }
    }

    /// Sends a ping from node `a` to node `b`'s mesh IP through the mesh; its id.
    pub fn ping(&mut self, a: HostId, b: HostId) -> u32 {
        let (Some(src), Some(dst)) = (self.mesh_ip(a), self.mesh_ip(b)) else {
            panic!("both nodes need a mesh IP before a ping");
        };
        let id = self.next_echo;
        self.next_echo += 1;
        self.echoes.insert(
            id,
            Echo {
                from: a,
                to_ip: dst,
                sent: self.now,
                answered: None,
            },
        );
        let packet = packets::echo(src, dst, id, true);
        let now = self.now;
        if let Machine::Node(n) = &mut self.hosts[a].machine {
            n.handle_tun_packet(now, &packet);
        }
        self.drain();
        id
    }

    /// The round trip of ping `id`, once answered.
    pub fn answered(&self, id: u32) -> Option<Duration> {
        let e = &self.echoes[&id];
        e.answered.map(|t| t - e.sent)
    }

    /// Pings `b` from `a` every second until one is answered; the simulated time from the
    /// first ping to the first answer, or `None` if nothing came back within `limit`.
    pub fn ping_until_answered(
        &mut self,
        a: HostId,
        b: HostId,
        limit: Duration,
    ) -> Option<Duration> {
        let start = self.now;
        let mut ids = Vec::new();
        while self.now - start < limit {
            ids.push(self.ping(a, b));
            let next = (self.now + Duration::from_secs(1)).min(start + limit);
            let answered =
                self.run_until_true(next, |s| ids.iter().any(|i| s.answered(*i).is_some()));
            if answered {
                return Some(self.now - start);
            }
        }
        None
    }

    /// When something happens next.
    fn next_event(&self) -> Option<Instant> {
        let flight = self.queue.peek().map(|Reverse((at, _))| *at);
        self.hosts
            .iter()
            .filter(|h| h.up)
            .filter_map(|h| h.machine.poll_timeout())
            .chain(flight)
            .min()
    }

    /// Runs the world until `deadline` (simulated).
    pub fn run_until(&mut self, deadline: Instant) {
        self.run_until_true(deadline, |_| false);
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs until `done` holds (checked after every step) or `deadline`; whether it held.
    pub fn run_until_true(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> bool {
        self.drain();
        let mut same_instant = 0u32;
        loop {
            if done(self) {
                return true;
            }
            let Some(next) = self.next_event().filter(|t| *t <= deadline) else {
                self.now = self.now.max(deadline);
                CLOCK_FLOOR.with(|f| f.set(Some(self.now)));
                return done(self);
            };
            if next <= self.now {
                same_instant += 1;
                assert!(
                    same_instant < 100_000,
                    "livelock at {:?}: something asks to run again at once, forever",
                    self.elapsed()
                );
            } else {
                same_instant = 0;
                self.now = next;
                CLOCK_FLOOR.with(|f| f.set(Some(next)));
            }
            while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
                if at > self.now {
                    break;
                }
                self.queue.pop();
                let f = self.flights.remove(&seq).expect("scheduled");
                self.route(f);
            }
            for h in 0..self.hosts.len() {
                let host = &mut self.hosts[h];
                if host.up && host.machine.poll_timeout().is_some_and(|t| t <= self.now) {
                    host.machine.handle_timeout(self.now);
                }
            }
            self.drain();
        }
    }

    /// Runs until every node in `nodes` has a mesh IP and knows every other one from the
    /// peer map; the simulated time it took.
    pub fn join_all(&mut self, nodes: &[HostId], limit: Duration) -> Duration {
        let start = self.now;
        let ok = self.run_until_true(start + limit, |s| {
            nodes.iter().all(|&a| {
                s.mesh_ip(a).is_some() && nodes.iter().all(|&b| a == b || s.peer(a, b).is_some())
            })
        });
        assert!(
            ok,
            "not every node registered and saw the others within {limit:?}"
        );
        self.now - start
    }

    /// Runs until `a` reaches `b` by `path` (and `b` reaches `a` the same way); the time it
    /// took, or `None`.
    pub fn until_path(
        &mut self,
        a: HostId,
        b: HostId,
        path: Path,
        limit: Duration,
    ) -> Option<Duration> {
        let start = self.now;
        self.run_until_true(start + limit, |s| {
            s.path(a, b) == path && s.path(b, a) == path
        })
        .then(|| self.now - start)
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

/// Whether two nodes behind these NATs (`None`: no NAT) can reach each other directly, as far
/// as the NAT behaviours alone decide it; `None` when it depends on timing (Linux conntrack
/// boxes: an early probe can steal the port, see issue 12).
pub fn can_punch(a: Option<NatConfig>, b: Option<NatConfig>) -> Option<bool> {
    use nat::Dependence::AddressPort;
    let (Some(a), Some(b)) = (a, b) else {
        return Some(true);
    };
    if a.linux_conntrack || b.linux_conntrack {
        return None;
    }
    Some(match (a.stable_mapping(), b.stable_mapping()) {
        (true, true) => true,
        // A symmetric NAT's probes come from a port the peer never heard of: only a peer
        // whose NAT lets any port of a host it wrote to through can answer them.
        (false, true) => b.filtering != AddressPort,
        (true, false) => a.filtering != AddressPort,
        (false, false) => false,
    })
}
