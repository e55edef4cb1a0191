//! The coordinator's control plane as a sans-IO state machine: datagrams and the time go in;
//! datagrams to send, [`Work`] to do off the control loop and the next wake-up time come out.
//!
//! Work is what may take long or block: opening and answering Hellos (the Diffie-Hellmans, run
//! on worker threads so they scale to every core) and storage (a separate thread, so a busy
//! database never stalls the loop: it retries, and nobody is refused for it). Results come
//! back through [`ControlServer::handle_opened`], [`ControlServer::handle_answered`] and
//! [`ControlServer::handle_store_done`]; tests run the work inline.
//!
//! Hostile input is held to budgets: a cheap gate in front of the handshake ([`HelloGate`]), a
//! new session that replaces the old one only once the node confirms it (a replayed Hello
//! changes nothing), answers that are never larger than the request that earned them, pushes
//! only to addresses that proved they receive for the node, and rate limits per node on punches
//! and on what peers see change.

use crate::gate::{HelloGate, Verdict};
use crate::registry::{NodeRecord, Registry};
use lanmesh_proto::channel::{
    transport_receiver, ChannelError, HelloForm, IncomingHello, Session, MAX_DATAGRAM,
};
use lanmesh_proto::header::{
    self, classify, ControlHeader, ControlKind, PacketClass, HEADER_LEN, KEY_REQUEST_LEN,
};
use lanmesh_proto::join_key::JoinSecret;
use lanmesh_proto::log_limit::LogLimit;
use lanmesh_proto::messages::{
    self, caps, policy, MeshAddress, RejectReason, Role, ToCoordinator, ToNode, Welcome,
    MAX_PLAINTEXT,
};
use lanmesh_proto::rate::{KeyedLimiter, Rate, TokenBucket};
use lanmesh_proto::{stun, PublicKey, PROTOCOL_VERSION};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Why a new node could not be stored.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AdmitError {
    #[error("unknown join key")]
    KeyUnknown,
    #[error("one-off join key already used")]
    KeyUsed,
    #[error("join key expired")]
    KeyExpired,
    #[error("a node key used by a relay or a relay key used by a node")]
    WrongKind,
    #[error("storage failed: {0}")]
    Storage(String),
}

#[derive(Debug, thiserror::Error)]
#[error("storage failed: {0}")]
pub struct StoreError(pub String);

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    /// An answer to unauthenticated input (a cookie, a key, a version mismatch, STUN): sent
    /// only when the socket has room to spare, never queued. Everything else waits for room.
    pub best_effort: bool,
}

/// Something to do off the control loop.
pub enum Work {
    /// Authenticate and decode this Hello (`IncomingHello::read` with the coordinator's
    /// private key: two Diffie-Hellmans); hand the result to [`ControlServer::handle_opened`].
    OpenHello {
        src: SocketAddr,
        form: HelloForm,
        datagram: Vec<u8>,
    },
    /// Write the Welcome (two more Diffie-Hellmans); hand the result to
    /// [`ControlServer::handle_answered`].
    AnswerHello {
        ticket: u64,
        incoming: Box<IncomingHello>,
        index: u32,
        welcome: Welcome,
    },
    Store(StoreOp),
}

/// A storage operation. Busy databases are retried by whoever runs it, never reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Store a new node; when `join` is given, validate and consume that key in the same
    /// transaction. Answer with [`StoreDone::Admitted`].
    Admit {
        ticket: u64,
        record: NodeRecord,
        join: Option<JoinSecret>,
    },
    /// Remember where and when a node was last heard from (may be coalesced; `urgent`: the
    /// node connected or moved, write it now).
    SaveSeen {
        key: PublicKey,
        endpoint: Option<SocketAddr>,
        last_seen_ms: u64,
        urgent: bool,
    },
    /// Remember the newest Hello timestamp accepted from a node (replays of older Hellos are
    /// refused after a restart too).
    SaveHelloTime { key: PublicKey, timestamp: u64 },
}

/// What storage reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreDone {
    Admitted {
        ticket: u64,
        result: Result<(), AdmitError>,
    },
    /// Another process (an admin command) changed the database: these are the nodes now.
    Reloaded(Vec<NodeRecord>),
}

/// What answering a Hello produced: the Welcome datagram and, if accepted, the session.
pub type Answered = Result<(Vec<u8>, Option<Session>), ChannelError>;

pub struct Settings {
    /// Admit new nodes without a join key.
    pub open: bool,
    pub heartbeat_secs: u16,
    /// A second port answering STUN, told to nodes.
    pub stun_port: Option<u16>,
    /// In open mode, nodes are admitted without a key only while fewer are registered.
    pub open_max_nodes: usize,
    /// Nodes carry broadcast and multicast between them (`--no-lan-broadcast` turns it off).
    pub lan_broadcast: bool,
    /// The DNS domain of peer names.
    pub domain: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            open: false,
            heartbeat_secs: 15,
            stun_port: None,
            open_max_nodes: DEFAULT_OPEN_MAX_NODES,
            lan_broadcast: true,
            domain: lanmesh_proto::messages::DEFAULT_DOMAIN.into(),
        }
    }
}

/// The default for [`Settings::open_max_nodes`].
pub const DEFAULT_OPEN_MAX_NODES: usize = 64;
/// How long a node's last-seen time may go unsaved.
const SEEN_SAVE_INTERVAL_MS: u64 = 10_000;
/// Peer map changes are announced at most this often (changes in between are batched).
const NOTIFY_INTERVAL_MS: u64 = 200;
/// A node that has not shown it knows of the newest map is told again this often (the first
/// announcement may have been lost).
const RENOTIFY_INTERVAL_MS: u64 = 1000;
/// A new session not confirmed by the node within this long is dropped.
const PENDING_MS: u64 = 10_000;
/// New sessions waiting for confirmation, at most.
const MAX_PENDING: usize = 4096;
/// Admissions waiting for storage, at most.
const MAX_ADMISSIONS: usize = 256;
/// Punch requests one node may make.
const PUNCHES: Rate = Rate::new(20, 10);
/// Punches between one pair of nodes.
const PAIR_PUNCHES: Rate = Rate::every(2, 2000);
/// Open mode: registrations without a key per source address, and in all.
const OPEN_JOINS_PER_SOURCE: Rate = Rate::every(8, 5_000);
const OPEN_JOINS: Rate = Rate::every(32, 500);
/// Bytes of a page answer besides its entries (variant, versions, offsets, counts).
const PAGE_OVERHEAD: usize = 48;

struct NodeSession {
    key: PublicKey,
    session: Session,
    /// What the node understands.
    caps: u64,
    /// Where answers go: the source of the last authenticated packet.
    addr: SocketAddr,
    /// The last address that proved it receives for the node: where pushes go.
    validated: Option<SocketAddr>,
    /// A challenge sent to an unvalidated address.
    challenge: Option<(u64, SocketAddr)>,
    /// The newest map version the node has shown it knows of (heartbeats, page requests).
    known_version: u64,
}

/// A session whose Welcome went out, waiting for the node's first packet on it.
struct PendingSession {
    key: PublicKey,
    session: Session,
    caps: u64,
    hello_src: SocketAddr,
    local_endpoints: Vec<SocketAddr>,
    created_ms: u64,
}

/// A new node waiting for storage.
struct Admission {
    ticket: u64,
    src: SocketAddr,
    incoming: Box<IncomingHello>,
    record: NodeRecord,
}

/// A Hello being answered by a worker.
struct Answering {
    key: PublicKey,
    src: SocketAddr,
    index: u32,
    caps: u64,
    local_endpoints: Vec<SocketAddr>,
}

pub struct ControlServer {
    /// The wall clock (ms since the Unix epoch) at `epoch`: the core's time is the monotonic
    /// `Instant` it is given, and wall-clock milliseconds follow from it (what is stored and
    /// shown: last seen, key expiry; and the rate limiters' ticks).
    epoch: Instant,
    epoch_ms: u64,
    public: PublicKey,
    registry: Registry,
    settings: Settings,
    gate: HelloGate,
    rng: StdRng,
    sessions: HashMap<u32, NodeSession>,
    session_of: HashMap<PublicKey, u32>,
    pending: HashMap<u32, PendingSession>,
    pending_of: HashMap<PublicKey, u32>,
    /// Session indices promised to Welcomes being written.
    reserved_indices: HashSet<u32>,
    next_session: u32,
    admissions: HashMap<PublicKey, Admission>,
    answers: HashMap<u64, Answering>,
    next_ticket: u64,
    punches: KeyedLimiter<PublicKey>,
    pair_punches: KeyedLimiter<(PublicKey, PublicKey)>,
    open_joins_per_source: KeyedLimiter<IpAddr>,
    open_joins: TokenBucket,
    saved_seen_ms: HashMap<PublicKey, u64>,
    notified_version: u64,
    last_notify_ms: u64,
    renotify_at_ms: Option<u64>,
    outbox: VecDeque<Transmit>,
    work: VecDeque<Work>,
    drops: LogLimit,
    infos: LogLimit,
}

impl ControlServer {
    /// A control server with the nodes loaded from storage; `seed` seeds its randomness
    /// (session indices, cookie secrets, challenges), so a test run replays.
    pub fn new(
        public: PublicKey,
        nodes: Vec<NodeRecord>,
        mut registry: Registry,
        settings: Settings,
        now: Instant,
        wall_ms: u64,
        seed: u64,
    ) -> Self {
        let now_ms = wall_ms;
        for record in nodes {
            registry.insert(record);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let gate = HelloGate::new(&public, now_ms, &mut rng);
        ControlServer {
            epoch: now,
            epoch_ms: wall_ms,
            public,
            notified_version: registry.map_version(),
            registry,
            settings,
            gate,
            next_session: rng.next_u32(),
            rng,
            sessions: HashMap::new(),
            session_of: HashMap::new(),
            pending: HashMap::new(),
            pending_of: HashMap::new(),
            reserved_indices: HashSet::new(),
            admissions: HashMap::new(),
            answers: HashMap::new(),
            next_ticket: 1,
            punches: KeyedLimiter::new(PUNCHES, 1 << 16),
            pair_punches: KeyedLimiter::new(PAIR_PUNCHES, 1 << 16),
            open_joins_per_source: KeyedLimiter::new(OPEN_JOINS_PER_SOURCE, 4096),
            open_joins: TokenBucket::full(OPEN_JOINS, now_ms),
            saved_seen_ms: HashMap::new(),
            last_notify_ms: 0,
            renotify_at_ms: None,
            outbox: VecDeque::new(),
            work: VecDeque::new(),
            drops: LogLimit::new(5),
            infos: LogLimit::new(20),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Wall-clock milliseconds at `now`.
    fn ms(&self, now: Instant) -> u64 {
        self.epoch_ms + now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The instant at wall-clock milliseconds `ms`.
    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms.saturating_sub(self.epoch_ms))
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Live sessions (confirmed).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    pub fn poll_work(&mut self) -> Option<Work> {
        self.work.pop_front()
    }

    /// When [`ControlServer::handle_timeout`] wants to run next (Unix ms).
    /// When [`ControlServer::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.poll_timeout_ms().map(|ms| self.instant(ms))
    }

    fn poll_timeout_ms(&self) -> Option<u64> {
        let notify = (self.registry.map_version() != self.notified_version)
            .then_some(self.last_notify_ms + NOTIFY_INTERVAL_MS);
        let pending = self
            .pending
            .values()
            .map(|p| p.created_ms + PENDING_MS)
            .min();
        [
            notify,
            self.renotify_at_ms,
            self.registry.next_expiry_ms(),
            self.registry.next_publish_ms(),
            pending,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let now_ms = self.ms(now);
        for key in self.registry.expire(now_ms) {
            if let Some(n) = self.registry.get(&key) {
                if self.infos.allow(now_ms) {
                    info!(node = %n.name, "node went offline (silent too long)");
                }
            }
        }
        self.registry.publish_due(now_ms);
        let expired: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ms >= p.created_ms + PENDING_MS)
            .map(|(i, _)| *i)
            .collect();
        for idx in expired {
            if let Some(p) = self.pending.remove(&idx) {
                if self.pending_of.get(&p.key) == Some(&idx) {
                    self.pending_of.remove(&p.key);
                }
            }
        }
        if self.registry.map_version() != self.notified_version
            && now_ms >= self.last_notify_ms + NOTIFY_INTERVAL_MS
        {
            self.notify_map_changed(now_ms);
        } else if self.renotify_at_ms.is_some_and(|t| now_ms >= t) {
            self.renotify_lagging(now_ms);
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        let now_ms = self.ms(now);
        match classify(data) {
            PacketClass::Control => {}
            PacketClass::Stun => return self.handle_stun(now_ms, src, data),
            _ => return self.dropped(now_ms, src, "not a control packet"),
        }
        let Some(h) = ControlHeader::parse(data) else {
            return;
        };
        if h.version != PROTOCOL_VERSION {
            if h.kind != Some(ControlKind::VersionMismatch) || h.version > PROTOCOL_VERSION {
                if self.drops.allow(now_ms) {
                    warn!(%src, their_version = h.version, our_version = PROTOCOL_VERSION,
                        "a node speaks another protocol version; upgrade the older side");
                }
                // Four bytes, never more than the packet that earned them.
                self.outbox.push_back(Transmit {
                    dst: src,
                    payload: header::version_mismatch().to_vec(),
                    best_effort: true,
                });
            }
            return;
        }
        match h.kind {
            Some(ControlKind::KeyRequest) if data.len() >= KEY_REQUEST_LEN => {
                let mut payload = vec![0u8; HEADER_LEN + 32];
                header::write_header(ControlKind::KeyResponse, &mut payload);
                payload[HEADER_LEN..].copy_from_slice(self.public.as_bytes());
                self.outbox.push_back(Transmit {
                    dst: src,
                    payload,
                    best_effort: true,
                });
            }
            Some(ControlKind::Hello | ControlKind::HelloMac) => {
                match self.gate.check(now_ms, src, data, &mut self.rng) {
                    Verdict::Open(form) => {
                        self.gate.in_flight += 1;
                        self.work.push_back(Work::OpenHello {
                            src,
                            form,
                            datagram: data.to_vec(),
                        });
                    }
                    Verdict::Cookie(reply) => self.outbox.push_back(Transmit {
                        dst: src,
                        payload: reply.to_vec(),
                        best_effort: true,
                    }),
                    Verdict::Drop(why) => self.dropped(now_ms, src, why),
                }
            }
            Some(ControlKind::Transport) => self.handle_transport(now_ms, src, data),
            _ => self.dropped(now_ms, src, "unexpected control kind"),
        }
    }

    /// Answers STUN Binding requests (with the address they came from), when the answer is no
    /// larger than the request.
    fn handle_stun(&mut self, now_ms: u64, src: SocketAddr, data: &[u8]) {
        let mut out = [0u8; 64];
        match stun::answer(src, data, &mut out) {
            Some(n) => self.outbox.push_back(Transmit {
                dst: src,
                payload: out[..n].to_vec(),
                best_effort: true,
            }),
            None => self.dropped(now_ms, src, "not an answerable STUN binding request"),
        }
    }

    fn dropped(&mut self, now_ms: u64, src: SocketAddr, why: &str) {
        if self.drops.allow(now_ms) {
            debug!(%src, "dropped datagram: {why}");
        }
    }

    /// A Hello opened by a worker.
    pub fn handle_opened(
        &mut self,
        now: Instant,
        src: SocketAddr,
        result: Result<IncomingHello, ChannelError>,
    ) {
        let now_ms = self.ms(now);
        self.gate.in_flight = self.gate.in_flight.saturating_sub(1);
        let incoming = match result {
            Ok(h) => h,
            Err(e) => return self.dropped(now_ms, src, &format!("hello: {e}")),
        };
        let key = incoming.remote;
        let hello = &incoming.hello;
        if hello.timestamp <= self.registry.hello_ts(&key) {
            return self.dropped(now_ms, src, "replayed hello (old timestamp)");
        }
        if let Some(a) = self.admissions.get_mut(&key) {
            // Storage is slow: answer the newest Hello once it is done.
            if hello.timestamp > a.incoming.hello.timestamp {
                *a.incoming = incoming;
                a.src = src;
            }
            return;
        }
        match self.registry.get(&key) {
            Some(rec) if rec.role != hello.role => {
                let message = format!(
                    "this key is registered as a {:?}, not a {:?}: use a separate state dir",
                    rec.role, hello.role
                )
                .to_lowercase();
                self.reject(
                    now_ms,
                    src,
                    Box::new(incoming),
                    RejectReason::Other,
                    message,
                );
            }
            Some(_) => self.accept(now_ms, src, Box::new(incoming)),
            None => self.admit(now_ms, src, Box::new(incoming)),
        }
    }

    /// Starts registering a node that is new to the coordinator.
    fn admit(&mut self, now_ms: u64, src: SocketAddr, incoming: Box<IncomingHello>) {
        let hello = &incoming.hello;
        // Open mode admits nodes without a key (a key, if given, is used once the open
        // admissions are used up), never relays.
        let open_full =
            self.registry.node_count() + self.admissions.len() >= self.settings.open_max_nodes;
        let open =
            self.settings.open && hello.role == Role::Node && (hello.join.is_none() || !open_full);
        let join = if open {
            None
        } else {
            match hello.join {
                Some(j) => Some(j),
                None => {
                    let create = match hello.role {
                        Role::Node => "coordinator keys create",
                        Role::Relay => "coordinator keys create --relay",
                    };
                    let message = format!(
                        "this coordinator needs a join key: create one on it with `{create}` \
                         and pass it with --auth-key"
                    );
                    return self.reject(now_ms, src, incoming, RejectReason::KeyRequired, message);
                }
            }
        };
        if open {
            if open_full {
                let message = format!(
                    "this open coordinator admits at most {} nodes without a key: ask its admin \
                     for a join key (or to raise --open-max-nodes)",
                    self.settings.open_max_nodes
                );
                return self.reject(now_ms, src, incoming, RejectReason::TryLater, message);
            }
            if !self.open_joins_per_source.take(&src.ip(), now_ms)
                || !self.open_joins.take(OPEN_JOINS, now_ms)
            {
                return self.dropped(now_ms, src, "open-mode registration rate limit");
            }
        }
        if self.admissions.len() >= MAX_ADMISSIONS {
            return self.dropped(now_ms, src, "too many registrations waiting for storage");
        }
        let record =
            match self
                .registry
                .allocate(incoming.remote, hello.role, &hello.name, None, now_ms)
            {
                Ok(r) => r,
                Err(e) => {
                    return self.reject(
                        now_ms,
                        src,
                        incoming,
                        RejectReason::NetworkFull,
                        e.to_string(),
                    )
                }
            };
        self.registry.reserve(&record);
        let ticket = self.ticket();
        self.work.push_back(Work::Store(StoreOp::Admit {
            ticket,
            record: record.clone(),
            join,
        }));
        self.admissions.insert(
            incoming.remote,
            Admission {
                ticket,
                src,
                incoming,
                record,
            },
        );
    }

    /// Storage finished something.
    pub fn handle_store_done(&mut self, now: Instant, done: StoreDone) {
        let now_ms = self.ms(now);
        match done {
            StoreDone::Admitted { ticket, result } => self.admitted(now_ms, ticket, result),
            StoreDone::Reloaded(nodes) => self.reloaded(now_ms, nodes),
        }
    }

    fn admitted(&mut self, now_ms: u64, ticket: u64, result: Result<(), AdmitError>) {
        let Some(key) = self
            .admissions
            .iter()
            .find(|(_, a)| a.ticket == ticket)
            .map(|(k, _)| *k)
        else {
            return;
        };
        let a = self.admissions.remove(&key).expect("found above");
        self.registry.release(&a.record);
        let role = a.incoming.hello.role;
        let refused = |reason, message: &str| Some((reason, message.to_string()));
        let refusal = match result {
            Ok(()) => None,
            Err(AdmitError::KeyUnknown) => refused(
                RejectReason::KeyUnknown,
                "the join key was not accepted (wrong or revoked): get a new one from \
                 `coordinator keys create`",
            ),
            Err(AdmitError::KeyUsed) => refused(
                RejectReason::KeyUsed,
                "this one-off join key was already used: create a new one with \
                 `coordinator keys create`",
            ),
            Err(AdmitError::KeyExpired) => refused(
                RejectReason::KeyExpired,
                "this join key has expired: create a new one with `coordinator keys create`",
            ),
            Err(AdmitError::WrongKind) => refused(
                RejectReason::KeyUnknown,
                match role {
                    Role::Node => {
                        "this is a relay key: nodes join with a key from `coordinator keys create`"
                    }
                    Role::Relay => {
                        "this is a node key: relays join with a key from \
                         `coordinator keys create --relay`"
                    }
                },
            ),
            Err(AdmitError::Storage(e)) => {
                warn!("could not store a new node: {e}");
                refused(
                    RejectReason::Other,
                    "the coordinator could not store the node; try again later",
                )
            }
        };
        if let Some((reason, message)) = refusal {
            return self.reject(now_ms, a.src, a.incoming, reason, message);
        }
        let mut record = a.record;
        record.last_seen_ms = now_ms;
        match record.mesh_ip {
            Some(ip) => info!(node = %record.name, mesh_ip = %ip, "new node joined"),
            None => info!(relay = %record.name, "new relay joined"),
        }
        self.registry.insert(record);
        self.accept(now_ms, a.src, a.incoming);
    }

    fn reloaded(&mut self, now_ms: u64, stored: Vec<NodeRecord>) {
        let present: HashSet<PublicKey> = stored.iter().map(|r| r.public_key).collect();
        let gone: Vec<PublicKey> = self
            .registry
            .keys()
            .filter(|k| !present.contains(*k))
            .copied()
            .collect();
        for key in gone {
            if let Some(record) = self.registry.remove(&key) {
                info!(node = %record.name, "node removed by admin");
            }
            if let Some(idx) = self.session_of.remove(&key) {
                self.push(idx, &ToNode::Removed);
                self.sessions.remove(&idx);
            }
            if let Some(idx) = self.pending_of.remove(&key) {
                self.pending.remove(&idx);
            }
            self.saved_seen_ms.remove(&key);
        }
        for record in stored {
            let key = record.public_key;
            match self.registry.get(&key).map(|r| r.name.clone()) {
                None if !self.admissions.contains_key(&key) => self.registry.insert(record),
                Some(old) if old != record.name && self.registry.rename(&key, &record.name) => {
                    info!(%old, new = %record.name, "node renamed by admin");
                    self.tell_renamed(&key, &record.name);
                }
                _ => {}
            }
        }
        self.handle_timeout(self.instant(now_ms));
    }

    /// Tells a renamed node its new name, if it is connected and understands.
    fn tell_renamed(&mut self, key: &PublicKey, name: &str) {
        let Some(&idx) = self.session_of.get(key) else {
            return;
        };
        if self
            .sessions
            .get(&idx)
            .is_some_and(|n| n.caps & caps::RENAME != 0)
        {
            self.push(
                idx,
                &ToNode::Renamed {
                    name: name.to_string(),
                },
            );
        }
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Welcomes a registered node: the Welcome is written by a worker.
    fn accept(&mut self, now_ms: u64, src: SocketAddr, incoming: Box<IncomingHello>) {
        let key = incoming.remote;
        let hello = &incoming.hello;
        self.registry.set_hello_ts(&key, hello.timestamp);
        self.work.push_back(Work::Store(StoreOp::SaveHelloTime {
            key,
            timestamp: hello.timestamp,
        }));
        let rec = self
            .registry
            .get(&key)
            .expect("accepted nodes are registered");
        let welcome = Welcome::Accepted {
            name: rec.name.clone(),
            mesh: rec.mesh_ip.map(|ip| MeshAddress {
                ip,
                network: self.registry.network(),
            }),
            heartbeat_secs: self.settings.heartbeat_secs,
            map_version: self.registry.map_version(),
            endpoint: src,
            stun_port: self.settings.stun_port,
            capabilities: caps::ALL,
            policy: if self.settings.lan_broadcast {
                0
            } else {
                policy::NO_LAN_BROADCAST
            },
            domain: self.settings.domain.clone(),
        };
        debug!(%src, key = %key.short(), at = now_ms, "welcoming node");
        self.answer(src, incoming, welcome);
    }

    fn reject(
        &mut self,
        now_ms: u64,
        src: SocketAddr,
        incoming: Box<IncomingHello>,
        reason: RejectReason,
        message: String,
    ) {
        if self.infos.allow(now_ms) {
            info!(%src, key = %incoming.remote.short(), "refused node {:?}: {message}",
                incoming.hello.name);
        }
        self.answer(src, incoming, Welcome::Rejected { reason, message });
    }

    fn answer(&mut self, src: SocketAddr, incoming: Box<IncomingHello>, welcome: Welcome) {
        let index = self.fresh_session_index();
        self.reserved_indices.insert(index);
        let ticket = self.ticket();
        self.answers.insert(
            ticket,
            Answering {
                key: incoming.remote,
                src,
                index,
                caps: incoming.hello.capabilities,
                local_endpoints: incoming.hello.local_endpoints.clone(),
            },
        );
        self.work.push_back(Work::AnswerHello {
            ticket,
            incoming,
            index,
            welcome,
        });
    }

    /// A Welcome written by a worker: it goes out, and an accepted session waits for the node
    /// to confirm it.
    pub fn handle_answered(&mut self, now: Instant, ticket: u64, result: Answered) {
        let now_ms = self.ms(now);
        let Some(a) = self.answers.remove(&ticket) else {
            return;
        };
        self.reserved_indices.remove(&a.index);
        let (datagram, session) = match result {
            Ok(r) => r,
            Err(e) => return self.dropped(now_ms, a.src, &format!("welcome: {e}")),
        };
        self.outbox.push_back(Transmit {
            dst: a.src,
            payload: datagram,
            best_effort: false,
        });
        let Some(session) = session else {
            return;
        };
        if self.pending.len() >= MAX_PENDING {
            return self.dropped(now_ms, a.src, "too many unconfirmed sessions");
        }
        if let Some(old) = self.pending_of.insert(a.key, a.index) {
            self.pending.remove(&old);
        }
        self.pending.insert(
            a.index,
            PendingSession {
                key: a.key,
                session,
                caps: a.caps,
                hello_src: a.src,
                local_endpoints: a.local_endpoints,
                created_ms: now_ms,
            },
        );
    }

    fn fresh_session_index(&mut self) -> u32 {
        loop {
            self.next_session = self.next_session.wrapping_add(1);
            let i = self.next_session;
            if i != 0
                && !self.sessions.contains_key(&i)
                && !self.pending.contains_key(&i)
                && !self.reserved_indices.contains(&i)
            {
                return i;
            }
        }
    }

    /// The node confirmed a new session (its first packet on it opened): it replaces the old
    /// one, and what the Hello said takes effect.
    fn promote(&mut self, now_ms: u64, idx: u32, src: SocketAddr, p: PendingSession) {
        self.pending_of.remove(&p.key);
        if let Some(old) = self.session_of.insert(p.key, idx) {
            self.sessions.remove(&old);
        }
        let validated = (src == p.hello_src).then_some(src);
        self.sessions.insert(
            idx,
            NodeSession {
                key: p.key,
                session: p.session,
                caps: p.caps,
                addr: src,
                validated,
                challenge: None,
                known_version: 0,
            },
        );
        let key = p.key;
        self.registry
            .connected(&key, validated, &p.local_endpoints, now_ms);
        if self.infos.allow(now_ms) {
            let name = self.registry.get(&key).map(|r| r.name.clone());
            info!(node = %name.unwrap_or_default(), %src, "node connected");
        }
        self.save_seen(key, now_ms, true);
    }

    fn handle_transport(&mut self, now_ms: u64, src: SocketAddr, data: &[u8]) {
        let Some(idx) = transport_receiver(data) else {
            return self.dropped(now_ms, src, "short transport packet");
        };
        let mut plain = [0u8; MAX_DATAGRAM];
        let opened = if let Some(node) = self.sessions.get_mut(&idx) {
            node.session.open(data, &mut plain).map(|p| p.len())
        } else if let Some(p) = self.pending.get_mut(&idx) {
            match p.session.open(data, &mut plain).map(|p| p.len()) {
                Ok(n) => {
                    let p = self.pending.remove(&idx).expect("looked up above");
                    self.promote(now_ms, idx, src, p);
                    Ok(n)
                }
                Err(e) => Err(e),
            }
        } else {
            return self.dropped(now_ms, src, "unknown session");
        };
        let request_len = match opened {
            Ok(n) => n,
            Err(e) => return self.dropped(now_ms, src, &format!("transport: {e}")),
        };
        let msg = match messages::decode::<ToCoordinator>(&plain[..request_len]) {
            Ok(m) => m,
            Err(e) => return self.dropped(now_ms, src, &format!("message: {e}")),
        };
        let node = self.sessions.get_mut(&idx).expect("promoted or live");
        // Authenticated: answers go where it came from (roaming); pushes only once that
        // address proved it receives.
        node.addr = src;
        if let ToCoordinator::Heartbeat { map_version, .. }
        | ToCoordinator::GetPeers { map_version, .. }
        | ToCoordinator::GetChanges { map_version, .. } = &msg
        {
            node.known_version = node.known_version.max(*map_version);
        }
        let key = node.key;
        self.registry.touch(&key, now_ms);
        self.save_seen(key, now_ms, false);
        match msg {
            ToCoordinator::Heartbeat {
                local_endpoints,
                echo,
                ..
            } => self.heartbeat(now_ms, idx, src, &local_endpoints, echo, request_len),
            ToCoordinator::Punch { peer } => {
                let pair = if key < peer { (key, peer) } else { (peer, key) };
                if !self.punches.take(&key, now_ms) || !self.pair_punches.take(&pair, now_ms) {
                    return self.dropped(now_ms, src, "punch rate limit");
                }
                self.punch(now_ms, idx, key, peer, request_len);
            }
            ToCoordinator::GetPeers { offset, .. } => {
                let budget = request_len.saturating_sub(PAGE_OVERHEAD);
                let (total, peers) = self.registry.page(&key, offset, budget);
                let page = ToNode::PeerPage {
                    map_version: self.registry.map_version(),
                    offset,
                    total,
                    peers,
                };
                self.reply(now_ms, idx, &page, request_len);
            }
            ToCoordinator::GetChanges { since, offset, .. } => {
                let budget = request_len.saturating_sub(PAGE_OVERHEAD);
                let (total, reset, changes) = self.registry.changes(&key, since, offset, budget);
                let page = ToNode::Changes {
                    map_version: self.registry.map_version(),
                    since,
                    offset,
                    total,
                    reset,
                    changes,
                };
                self.reply(now_ms, idx, &page, request_len);
            }
            ToCoordinator::Goodbye => {
                if let Some(n) = self.registry.get(&key) {
                    if self.infos.allow(now_ms) {
                        info!(node = %n.name, "node went offline (said goodbye)");
                    }
                }
                self.registry.set_offline(&key, now_ms);
                self.sessions.remove(&idx);
                self.session_of.remove(&key);
            }
        }
    }

    fn heartbeat(
        &mut self,
        now_ms: u64,
        idx: u32,
        src: SocketAddr,
        local_endpoints: &[std::net::SocketAddr],
        echo: u64,
        request_len: usize,
    ) {
        let node = self.sessions.get_mut(&idx).expect("live session");
        let key = node.key;
        if echo != 0 && node.challenge == Some((echo, src)) {
            // The address answered from where the challenge went: it receives for the node.
            node.challenge = None;
            node.validated = Some(src);
            self.registry.set_endpoint(&key, src, now_ms);
            self.save_seen(key, now_ms, true);
        }
        let node = self.sessions.get_mut(&idx).expect("live session");
        let challenge = if node.validated != Some(src) && node.caps & caps::ADDRESS_CHALLENGE != 0 {
            match node.challenge {
                Some((c, a)) if a == src => c,
                _ => {
                    let c = self.rng.next_u64().max(1);
                    node.challenge = Some((c, src));
                    c
                }
            }
        } else {
            0
        };
        self.registry
            .set_local_endpoints(&key, local_endpoints, now_ms);
        let ack = ToNode::HeartbeatAck {
            map_version: self.registry.map_version(),
            endpoint: src,
            challenge,
        };
        self.reply(now_ms, idx, &ack, request_len);
    }

    /// Tells the requester and `peer` to probe each other now, each with the other's
    /// candidates.
    fn punch(
        &mut self,
        now_ms: u64,
        requester_idx: u32,
        a: PublicKey,
        b: PublicKey,
        request_len: usize,
    ) {
        let Some(&sb) = self.session_of.get(&b) else {
            return; // The peer is not connected: nothing to coordinate.
        };
        let (Some(ca), Some(cb)) = (self.registry.candidates(&a), self.registry.candidates(&b))
        else {
            return;
        };
        debug!(a = %a.short(), b = %b.short(), "coordinating a hole punch");
        self.push(
            sb,
            &ToNode::Punch {
                peer: a,
                candidates: ca,
            },
        );
        let to_requester = ToNode::Punch {
            peer: b,
            candidates: cb,
        };
        self.reply(now_ms, requester_idx, &to_requester, request_len);
    }

    fn save_seen(&mut self, key: PublicKey, now_ms: u64, force: bool) {
        let due = self
            .saved_seen_ms
            .get(&key)
            .is_none_or(|t| now_ms >= t + SEEN_SAVE_INTERVAL_MS);
        if !(due || force) {
            return;
        }
        self.saved_seen_ms.insert(key, now_ms);
        let endpoint = self.registry.get(&key).and_then(|r| r.endpoint);
        self.work.push_back(Work::Store(StoreOp::SaveSeen {
            key,
            endpoint,
            last_seen_ms: now_ms,
            urgent: force,
        }));
    }

    fn notify_map_changed(&mut self, now_ms: u64) {
        let version = self.registry.map_version();
        let targets: Vec<u32> = self.sessions.keys().copied().collect();
        for idx in targets {
            self.push(
                idx,
                &ToNode::MapChanged {
                    map_version: version,
                },
            );
        }
        self.notified_version = version;
        self.last_notify_ms = now_ms;
        self.renotify_at_ms = Some(now_ms + RENOTIFY_INTERVAL_MS);
    }

    fn renotify_lagging(&mut self, now_ms: u64) {
        let version = self.registry.map_version();
        let lagging: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, n)| n.known_version < version && self.registry.is_online(&n.key))
            .map(|(idx, _)| *idx)
            .collect();
        for idx in &lagging {
            self.push(
                *idx,
                &ToNode::MapChanged {
                    map_version: version,
                },
            );
        }
        self.renotify_at_ms = (!lagging.is_empty()).then_some(now_ms + RENOTIFY_INTERVAL_MS);
    }

    /// Answers a request of `request_len` plaintext bytes: never with more bytes than that,
    /// unless the node is older than padding and at an address it proved (its unpadded
    /// heartbeats earn an ack of about their size).
    fn reply(&mut self, now_ms: u64, idx: u32, msg: &ToNode, request_len: usize) {
        let Some(node) = self.sessions.get(&idx) else {
            return;
        };
        let limit = (node.caps != 0 || node.validated != Some(node.addr)).then_some(request_len);
        let dst = node.addr;
        self.seal_to(now_ms, idx, dst, msg, limit);
    }

    /// Sends something the node did not ask for: only to an address that proved it receives.
    fn push(&mut self, idx: u32, msg: &ToNode) {
        let Some(dst) = self.sessions.get(&idx).and_then(|n| n.validated) else {
            return;
        };
        self.seal_to(0, idx, dst, msg, None);
    }

    fn seal_to(
        &mut self,
        now_ms: u64,
        idx: u32,
        dst: SocketAddr,
        msg: &ToNode,
        limit: Option<usize>,
    ) {
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = match messages::encode(msg, &mut plain, 0) {
            Ok(n) => n,
            Err(e) => return warn!("could not encode a message for a node: {e}"),
        };
        if limit.is_some_and(|l| n > l) {
            return self.dropped(now_ms, dst, "the answer would be larger than its request");
        }
        let Some(node) = self.sessions.get_mut(&idx) else {
            return;
        };
        let mut out = [0u8; MAX_DATAGRAM];
        match node.session.seal(&plain[..n], &mut out) {
            Ok(len) => self.outbox.push_back(Transmit {
                dst,
                payload: out[..len].to_vec(),
                best_effort: false,
            }),
            Err(e) => warn!("could not seal a message for a node: {e}"),
        }
    }
}

pub fn x25519_public(private: &[u8; 32]) -> x25519_dalek::PublicKey {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private))
}

/// Does one piece of Hello work (what a worker thread does): opening needs the coordinator's
/// private key.
pub fn open_hello(private: &[u8; 32], datagram: &[u8]) -> Result<IncomingHello, ChannelError> {
    IncomingHello::read(private, datagram)
}

/// Writes a Welcome (what a worker thread does).
pub fn answer_hello(incoming: IncomingHello, index: u32, welcome: &Welcome) -> Answered {
    let mut out = [0u8; MAX_DATAGRAM];
    let (n, session) = incoming.answer(index, welcome, &mut out)?;
    Ok((out[..n].to_vec(), session))
}
