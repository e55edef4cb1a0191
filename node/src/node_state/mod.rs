//! The whole node as one sans-IO state machine: the control client, the data plane (peers,
//! paths, relays, probes), the STUN client, `node ping` and `node netcheck`. Datagrams, TUN
//! packets, timeouts and local API requests go in, each with the time; datagrams, TUN writes,
//! OS commands and API replies come out of queues; [`NodeState::poll_timeout`] says when to
//! call [`NodeState::handle_timeout`] next. Nothing here reads a clock, draws a random number
//! or touches the OS: the daemon (`daemon.rs`) and the simulator drive the same code.

mod answers;

pub use lanmesh_proto::outbox::{Outbox, Transmit};

use crate::api::{Request, Response};
use crate::demux::{route, Route};
use crate::lan::LanConfig;
use crate::mesh::{Mesh, MeshConfig, Via, SCRATCH_LEN};
use crate::names::NameTable;
use crate::netconf::MeshPlacement;
use crate::relays::RelayInfo;
use crate::stun_client::StunClient;
use lanmesh_proto::client::{ClientConfig, ControlClient, Event, Trust};
use lanmesh_proto::messages::{MeshAddress, Role};
use lanmesh_proto::stamp::WallClock;
use lanmesh_proto::PublicKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// WireGuard's timers, LAN announcements and path reports run this often while data flows
/// or a handshake is under way...
const TICK: Duration = Duration::from_millis(250);
/// ...and this often when the node is idle (every peer's timers, however many peers, in one
/// wakeup: an idle node wakes about once a second). Interfaces and multicast groups are
/// re-read on these ticks too.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Interface addresses are re-read this often (they change when networks do).
const INTERFACES_INTERVAL: Duration = Duration::from_secs(10);
/// The kernel's multicast groups on the mesh interface are re-read this often (and at once
/// when it reports a change into the TUN).
const GROUPS_INTERVAL: Duration = Duration::from_secs(1);
/// How long `node ping` waits for an answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `node netcheck` gives STUN servers to answer.
const NETCHECK_WAIT: Duration = Duration::from_millis(1500);

/// What a node starts from.
pub struct NodeConfig {
    /// Its key, its coordinator and how to join (the role is always `Node`).
    pub client: ClientConfig,
    pub keepalive_secs: u16,
    pub lan: LanConfig,
    /// STUN servers besides the coordinator and the relays (resolved by the driver).
    pub stun_servers: Vec<SocketAddr>,
    /// Seeds every random choice of the node (session index, nonces, transaction ids).
    pub seed: u64,
}

/// Something only the operating system can do; the driver does it (the simulator records it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Keep the coordinator's key (learned on first use, or from the join key).
    PinCoordinator(PublicKey),
    /// First registration: create the mesh interface with this address and routes.
    CreateInterface(MeshPlacement),
    /// The address or the LAN switch changed: move the interface's address and routes.
    MoveInterface {
        old: MeshPlacement,
        new: MeshPlacement,
    },
    /// Serve peer names for this mesh IP and domain (after the interface has the address).
    AttachNames { mesh_ip: Ipv4Addr, domain: String },
    /// The names of the mesh changed.
    SetNames(NameTable),
    /// Read this machine's interface addresses and hand them to
    /// [`NodeState::handle_interfaces`].
    ReadInterfaces,
    /// Read the multicast groups joined on the mesh interface and hand them to
    /// [`NodeState::handle_groups`].
    ReadGroups,
    /// Persist the stamp floor for this wall-clock time (nanoseconds since the Unix epoch).
    SaveStamps(u64),
    /// Stop the node: only the user can fix this.
    Stop(String),
}

/// An API request's handle, chosen by the driver; its reply comes back with it.
pub type RequestId = u64;

/// What the node has been told about itself, and how its interface is set up.
struct Identity {
    name: String,
    placement: MeshPlacement,
    domain: String,
}

struct PendingPing {
    id: RequestId,
    tx: lanmesh_proto::probe::Transaction,
    name: String,
    via: Via,
    deadline: Instant,
}

pub struct NodeState {
    control: ControlClient,
    mesh: Mesh,
    stun: StunClient,
    out: Outbox,
    commands: VecDeque<Command>,
    replies: VecDeque<(RequestId, Response)>,
    scratch: Vec<u8>,
    clock: WallClock,
    public: PublicKey,
    trust: Trust,
    lan_wanted: bool,
    stun_servers: Vec<SocketAddr>,
    reported_varies: Option<bool>,
    identity: Option<Identity>,
    pings: Vec<PendingPing>,
    netchecks: Vec<(RequestId, Instant)>,
    next_tick: Instant,
    next_interfaces: Instant,
    next_groups: Instant,
}

impl NodeState {
    /// A node that starts registering at `now`; `wall_ns` is the wall clock then.
    pub fn new(config: NodeConfig, now: Instant, wall_ns: u64) -> NodeState {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let secret = x25519_dalek::StaticSecret::from(config.client.private);
        let public = PublicKey::from(x25519_dalek::PublicKey::from(&secret));
        let (trust, stamp_floor) = (config.client.trust, config.client.stamp_floor);
        let client = ClientConfig {
            role: Role::Node,
            ..config.client
        };
        let mut control = ControlClient::new(client, rng.gen());
        control.start(now, wall_ns);
        let lan_wanted = config.lan.enabled;
        let mesh = Mesh::new(
            secret,
            MeshConfig {
                keepalive_secs: config.keepalive_secs,
                stamp_floor,
                wall_ns,
                seed: rng.gen(),
                lan: config.lan,
            },
            now,
        );
        let mut node = NodeState {
            control,
            mesh,
            stun: StunClient::new(config.stun_servers.clone(), now, rng.gen()),
            out: Outbox::default(),
            commands: VecDeque::new(),
            replies: VecDeque::new(),
            scratch: vec![0; SCRATCH_LEN],
            clock: WallClock::new(now, wall_ns),
            public,
            trust,
            lan_wanted,
            stun_servers: config.stun_servers,
            reported_varies: None,
            identity: None,
            pings: Vec::new(),
            netchecks: Vec::new(),
            next_tick: now,
            next_interfaces: now,
            next_groups: now,
        };
        node.commands.push_back(Command::ReadInterfaces);
        node.next_interfaces = now + INTERFACES_INTERVAL;
        node.after_input(now);
        node
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The wall clock at `now`, as the node's stamps see it (never going back).
    pub fn wall_ns(&self, now: Instant) -> u64 {
        self.clock.ns(now)
    }

    /// This node's mesh IP, once registered.
    pub fn mesh_ip(&self) -> Option<Ipv4Addr> {
        self.identity.as_ref().map(|i| i.placement.mesh_ip)
    }

    /// The data plane, for views (`node status`, the simulator's checks).
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    pub fn control(&self) -> &ControlClient {
        &self.control
    }

    /// A datagram from the node's UDP socket: the one place it is told apart.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, datagram: &[u8]) {
        let scratch = &mut self.scratch;
        self.next_tick = self.next_tick.min(now + TICK);
        match route(datagram) {
            // The data path: nothing the control plane needs to look at comes of it.
            Route::WireGuard => return self.mesh.handle_datagram(now, src, datagram, scratch),
            Route::Probe => self.mesh.handle_probe(now, src, datagram, scratch),
            Route::Relay => self.mesh.handle_relay_frame(now, src, datagram, scratch),
            Route::Control => {
                let wall = self.clock.ns(now);
                self.control.handle_datagram(now, wall, src, datagram)
            }
            Route::Stun => self.stun.handle_datagram(src, datagram),
            Route::Drop => {}
        }
        self.after_input(now);
    }

    /// A packet read from the mesh interface (the data path: nothing for the control plane
    /// comes of it; punches it asks for go out at the next timeout, which it makes due).
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) {
        self.next_tick = self.next_tick.min(now + TICK);
        self.mesh.handle_tun_packet(now, packet, &mut self.scratch);
    }

    /// When [`NodeState::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        [
            self.control.poll_timeout(),
            self.mesh.poll_timeout(),
            self.stun.poll_timeout(),
            // Interfaces and groups are read on ticks (at most an idle tick late).
            Some(self.next_tick),
        ]
        .into_iter()
        .flatten()
        .chain(self.pings.iter().map(|p| p.deadline))
        .chain(self.netchecks.iter().map(|n| n.1))
        .min()
        .expect("the tick is always there")
    }

    /// Runs whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let wall = self.clock.ns(now);
        if self.control.poll_timeout().is_some_and(|t| now >= t) {
            self.control.handle_timeout(now, wall);
        }
        self.stun.handle_timeout(now);
        if now >= self.next_tick {
            self.mesh.tick(now, &mut self.scratch);
            let busy = self.mesh.is_busy(now);
            self.next_tick = now + if busy { TICK } else { IDLE_TICK };
        }
        self.mesh.handle_timeout(now, &mut self.scratch);
        if now >= self.next_interfaces {
            self.next_interfaces = now + INTERFACES_INTERVAL;
            self.commands.push_back(Command::ReadInterfaces);
            self.commands.push_back(Command::SaveStamps(wall));
        }
        if self.identity.is_some() && (self.mesh.lan_groups_stale() || now >= self.next_groups) {
            self.next_groups = now + GROUPS_INTERVAL;
            self.commands.push_back(Command::ReadGroups);
        }
        self.after_input(now);
    }

    /// A local API request (`node status`, `node ping`, `node netcheck`); the reply comes out
    /// of [`NodeState::poll_reply`], at once or when the answer is in. `Down` is the
    /// driver's.
    pub fn handle_request(&mut self, now: Instant, id: RequestId, request: Request) {
        match request {
            Request::Status => {
                let status = answers::status(self, now);
                self.replies
                    .push_back((id, Response::Status(Box::new(status))));
            }
            Request::Ping { peer } => match self.mesh.ping(now, &peer, &mut self.scratch) {
                Ok((tx, name, via)) => self.pings.push(PendingPing {
                    id,
                    tx,
                    name,
                    via,
                    deadline: now + PING_TIMEOUT,
                }),
                Err(e) => self.replies.push_back((id, Response::Error(e.to_string()))),
            },
            Request::Netcheck => {
                self.stun.refresh(now);
                self.netchecks.push((id, now + NETCHECK_WAIT));
            }
            Request::Down => self.replies.push_back((id, Response::GoingDown)),
        }
        self.after_input(now);
    }

    /// This machine's interface addresses with the node's port (after
    /// [`Command::ReadInterfaces`]).
    pub fn handle_interfaces(&mut self, now: Instant, endpoints: Vec<SocketAddr>) {
        self.control.set_local_endpoints(now, endpoints);
        self.after_input(now);
    }

    /// The multicast groups joined on the mesh interface (after [`Command::ReadGroups`]).
    pub fn handle_groups(&mut self, groups: Vec<Ipv4Addr>) {
        self.mesh.set_lan_groups(groups);
    }

    /// Says goodbye to the coordinator (the datagrams are queued).
    pub fn shutdown(&mut self) {
        self.control.shutdown();
        self.drain_control();
    }

    /// The next datagram to send: the control plane's first (they are few), then the data
    /// plane's.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out
            .poll_transmit()
            .or_else(|| self.mesh.poll_transmit())
    }

    pub fn poll_tun_write(&mut self) -> Option<Vec<u8>> {
        self.mesh.poll_tun_write()
    }

    /// Gives the buffer of a polled transmit or TUN write back.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        self.mesh.recycle(buffer)
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    pub fn poll_reply(&mut self) -> Option<(RequestId, Response)> {
        self.replies.pop_front()
    }

    /// Moves what the control and STUN clients want sent into the node's queue (punches the
    /// data plane asks for go to the coordinator first).
    fn drain_control(&mut self) {
        while let Some(peer) = self.mesh.poll_punch_request() {
            self.control.request_punch(peer);
        }
        while let Some(t) = self.control.poll_transmit() {
            self.out.send_udp(t.dst, &t.payload);
        }
        while let Some(t) = self.stun.poll_transmit() {
            self.out.send_udp(t.dst, &t.payload);
            self.stun.recycle(t.payload);
        }
    }

    /// What every input ends with: the control client's events and datagrams, and answers
    /// that are due.
    fn after_input(&mut self, now: Instant) {
        while let Some(event) = self.control.poll_event() {
            self.handle_event(now, event);
        }
        self.drain_control();
        let varies = self.stun.mapping_varies(self.control.public_endpoint());
        if varies != self.reported_varies && varies.is_some() {
            self.reported_varies = varies;
            if varies == Some(true) {
                warn!("our NAT maps each destination to a different public port (symmetric NAT): direct paths to peers behind port-restricted or symmetric NATs will not work");
            } else {
                info!("our NAT keeps one public endpoint for all destinations (punchable)");
            }
        }
        answers::pings_due(self, now);
        answers::netchecks_due(self, now);
    }

    fn set_stun_servers(&mut self) {
        let mut servers = self.stun_servers.clone();
        servers.extend(self.mesh.relay_addrs());
        self.stun.set_servers(servers);
    }

    fn names_changed(&mut self, now: Instant) {
        let Some(me) = &self.identity else {
            return;
        };
        let peers = self.mesh.peers(now);
        let entries = std::iter::once((me.name.as_str(), me.placement.mesh_ip))
            .chain(peers.iter().map(|p| (p.info.name.as_str(), p.info.mesh_ip)));
        let table = NameTable::new(&me.domain, entries);
        self.commands.push_back(Command::SetNames(table));
    }

    fn handle_event(&mut self, now: Instant, event: Event) {
        let coordinator = self.control.coordinator_addr();
        let has_interface = self.identity.is_some();
        match event {
            Event::Pin(key) => {
                info!(coordinator_key = %key, "pinned the coordinator's key on first use");
                self.commands.push_back(Command::PinCoordinator(key));
            }
            Event::Registered {
                name,
                mesh: address,
                endpoint,
                coordinator_stun,
                policy,
                domain,
            } => {
                if let Some(addr) = coordinator_stun {
                    if !self.stun_servers.contains(&addr) {
                        self.stun_servers.push(addr);
                        self.set_stun_servers();
                        self.stun.refresh(now);
                    }
                }
                let Some(MeshAddress { ip: mesh_ip, network }) = address else {
                    // The control client checks this; a relay key is the only way here.
                    let why = "the coordinator registered this node as a relay: use a node key, or another --state-dir";
                    self.commands.push_back(Command::Stop(why.into()));
                    return;
                };
                self.mesh.set_identity(mesh_ip, network);
                self.mesh.set_network_policy(policy);
                if self.lan_wanted && !self.mesh.lan_allowed() {
                    info!("the coordinator switched broadcast and multicast off for this network");
                }
                let placement = MeshPlacement {
                    mesh_ip,
                    network,
                    lan: self.mesh.lan_active(),
                };
                match &self.identity {
                    None => {
                        info!(%name, %mesh_ip, %network, public_endpoint = %endpoint, lan_broadcast = placement.lan, %domain, "registered");
                        if let Trust::JoinKey(k) = self.trust {
                            self.commands.push_back(Command::PinCoordinator(k));
                        }
                        self.commands.push_back(Command::CreateInterface(placement));
                    }
                    Some(old) => {
                        info!(%name, %mesh_ip, "reconnected to the coordinator");
                        let was = old.placement;
                        if was.mesh_ip != mesh_ip || was.network != network {
                            warn!(old = %was.mesh_ip, new = %mesh_ip, "the coordinator gave this node a new mesh IP");
                        }
                        if was != placement {
                            self.commands.push_back(Command::MoveInterface {
                                old: was,
                                new: placement,
                            });
                        }
                    }
                }
                self.commands.push_back(Command::AttachNames {
                    mesh_ip,
                    domain: domain.clone(),
                });
                self.identity = Some(Identity {
                    name,
                    placement,
                    domain,
                });
                self.names_changed(now);
            }
            Event::PeerMap(map) => {
                let (relays, peers): (Vec<_>, Vec<_>) =
                    map.into_iter().partition(|p| p.role == Role::Relay);
                let relays = relays
                    .into_iter()
                    .filter(|r| r.online)
                    .filter_map(|r| {
                        Some(RelayInfo {
                            addr: r.candidates.public?,
                            name: r.name,
                            key: r.public_key,
                        })
                    })
                    .collect();
                self.mesh.set_relays(now, relays);
                // Relays answer STUN: with the coordinator they are the two destinations that
                // tell whether our NAT mapping varies by destination.
                self.set_stun_servers();
                self.mesh.apply_peer_map(now, peers);
                self.names_changed(now);
            }
            Event::Punch { peer, candidates } => {
                self.mesh.punch(now, &peer, &candidates, &mut self.scratch)
            }
            Event::PublicEndpointChanged { old, new } => {
                info!(%old, %new, "our public endpoint changed (NAT mapping or network changed); probing peers again");
                self.mesh.network_changed(now);
            }
            Event::Unreachable { retry_in } => warn!(
                "coordinator {coordinator} is not answering; retrying in {}s{}",
                retry_in.as_secs(),
                if has_interface { " (existing tunnels keep working)" } else { "" }
            ),
            Event::Lost => warn!(
                "lost contact with coordinator {coordinator}; reconnecting (existing tunnels keep working)"
            ),
            Event::Warning(message) => warn!("{message}"),
            Event::Renamed { name } => {
                if let Some(me) = self.identity.as_mut() {
                    info!(old = %me.name, new = %name, "an admin renamed this node");
                    me.name = name;
                }
                self.names_changed(now);
            }
            // The coordinator refused the join key the user gave, and this node was never
            // admitted: only the user can fix that. Anything else is tried again later
            // (tunnels keep working meanwhile).
            Event::Rejected {
                reason,
                message,
                ever_registered: false,
                ..
            } if reason.is_about_the_key() => {
                let why = format!("the coordinator refused this node: {message}");
                self.commands.push_back(Command::Stop(why));
            }
            Event::Rejected {
                message, retry_in, ..
            } => warn!(
                "the coordinator refused this node: {message} (trying again in {}s)",
                retry_in.as_secs()
            ),
            Event::Removed { retry_in } => warn!(
                "an admin removed this node from the mesh: join again with a new --auth-key \
                 (its peers are gone; trying to register again in {}s)",
                retry_in.as_secs()
            ),
        }
    }
}
