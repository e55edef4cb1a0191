//! The coordinator's control plane as a sans-IO state machine: datagrams and the time go in,
//! datagrams to send and the next wake-up time come out. Storage is reached through [`Store`]
//! (SQLite in production, a map in tests).

use crate::registry::{NodeRecord, Registry};
use lanmesh_proto::channel::{transport_receiver, IncomingHello, Session, MAX_DATAGRAM};
use lanmesh_proto::header::{
    self, classify, ControlHeader, ControlKind, PacketClass, HEADER_LEN, KEY_REQUEST_LEN,
};
use lanmesh_proto::join_key::JoinSecret;
use lanmesh_proto::log_limit::LogLimit;
use lanmesh_proto::messages::{
    self, MeshAddress, RejectReason, Role, ToCoordinator, ToNode, Welcome, MAX_PLAINTEXT,
};
use lanmesh_proto::{stun, PublicKey, PROTOCOL_VERSION};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use tracing::{debug, info, warn};

/// Why a new node could not be stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

/// Where the control plane keeps nodes and join keys.
pub trait Store {
    /// Stores a new node; when `join` is given, validates and consumes that key in the same
    /// transaction (a one-off key admits exactly one node, however many race for it).
    fn add_node(
        &mut self,
        record: &NodeRecord,
        join: Option<&JoinSecret>,
        now_ms: u64,
    ) -> Result<(), AdmitError>;
    /// Remembers where and when a node was last heard from.
    fn save_seen(
        &mut self,
        key: &PublicKey,
        endpoint: SocketAddr,
        last_seen_ms: u64,
    ) -> Result<(), StoreError>;
    fn load_nodes(&mut self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Whether another process (an admin command) changed the store since the last call.
    fn changed_elsewhere(&mut self) -> bool;
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

pub struct Settings {
    /// Admit new nodes without a join key.
    pub open: bool,
    pub heartbeat_secs: u16,
    /// A second port answering STUN, told to nodes.
    pub stun_port: Option<u16>,
}

/// How long a node's last-seen time may go unsaved.
const SEEN_SAVE_INTERVAL_MS: u64 = 10_000;
/// Peer map changes are announced at most this often (changes in between are batched).
const NOTIFY_INTERVAL_MS: u64 = 200;

struct NodeSession {
    key: PublicKey,
    session: Session,
    addr: SocketAddr,
    /// The newest map version the node has shown it knows of (heartbeats, page requests).
    known_version: u64,
    /// Limits how many punches a node can have the coordinator set up.
    punches: LogLimit,
}

/// Punch requests one node may make per second.
const PUNCHES_PER_SECOND: u32 = 50;

/// A node that has not shown it knows of the newest map is told again this often (the first
/// announcement may have been lost).
const RENOTIFY_INTERVAL_MS: u64 = 1000;

pub struct ControlServer<S: Store> {
    private: [u8; 32],
    public: PublicKey,
    store: S,
    registry: Registry,
    settings: Settings,
    sessions: HashMap<u32, NodeSession>,
    session_of: HashMap<PublicKey, u32>,
    next_session: u32,
    /// Latest Hello timestamp accepted per node: older or equal ones are replays.
    hello_time: HashMap<PublicKey, u64>,
    saved_seen_ms: HashMap<PublicKey, u64>,
    notified_version: u64,
    last_notify_ms: u64,
    renotify_at_ms: Option<u64>,
    outbox: VecDeque<Transmit>,
    drops: LogLimit,
}

impl<S: Store> ControlServer<S> {
    pub fn new(
        private: [u8; 32],
        mut store: S,
        mut registry: Registry,
        settings: Settings,
        first_session: u32,
    ) -> Result<Self, StoreError> {
        for record in store.load_nodes()? {
            registry.insert(record);
        }
        let public = PublicKey::from(x25519_public(&private));
        Ok(ControlServer {
            private,
            public,
            store,
            notified_version: registry.map_version(),
            registry,
            settings,
            sessions: HashMap::new(),
            session_of: HashMap::new(),
            next_session: first_session,
            hello_time: HashMap::new(),
            saved_seen_ms: HashMap::new(),
            last_notify_ms: 0,
            renotify_at_ms: None,
            outbox: VecDeque::new(),
            drops: LogLimit::new(5),
        })
    }

    #[cfg(test)]
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// When [`ControlServer::handle_timeout`] wants to run next (Unix ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        let notify = (self.registry.map_version() != self.notified_version)
            .then_some(self.last_notify_ms + NOTIFY_INTERVAL_MS);
        [notify, self.renotify_at_ms, self.registry.next_expiry_ms()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        for key in self.registry.expire(now_ms) {
            if let Some(n) = self.registry.get(&key) {
                info!(node = %n.name, "node went offline (silent too long)");
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

    /// Picks up changes admin commands made to the store (e.g. a removed node).
    pub fn handle_store_change(&mut self, now_ms: u64) {
        if !self.store.changed_elsewhere() {
            return;
        }
        let stored = match self.store.load_nodes() {
            Ok(nodes) => nodes,
            Err(e) => {
                warn!("could not reload nodes after an admin change: {e}");
                return;
            }
        };
        let present: std::collections::HashSet<PublicKey> =
            stored.iter().map(|r| r.public_key).collect();
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
                self.send(idx, &ToNode::Removed);
                self.sessions.remove(&idx);
            }
            self.hello_time.remove(&key);
            self.saved_seen_ms.remove(&key);
        }
        for record in stored {
            if self.registry.get(&record.public_key).is_none() {
                self.registry.insert(record);
            }
        }
        self.handle_timeout(now_ms);
    }

    pub fn handle_datagram(&mut self, now_ms: u64, src: SocketAddr, data: &[u8]) {
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
                });
            }
            return;
        }
        match h.kind {
            Some(ControlKind::KeyRequest) if data.len() >= KEY_REQUEST_LEN => {
                let mut payload = vec![0u8; HEADER_LEN + 32];
                header::write_header(ControlKind::KeyResponse, &mut payload);
                payload[HEADER_LEN..].copy_from_slice(self.public.as_bytes());
                self.outbox.push_back(Transmit { dst: src, payload });
            }
            Some(ControlKind::Hello) => self.handle_hello(now_ms, src, data),
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
            }),
            None => self.dropped(now_ms, src, "not an answerable STUN binding request"),
        }
    }

    fn dropped(&mut self, now_ms: u64, src: SocketAddr, why: &str) {
        if self.drops.allow(now_ms) {
            debug!(%src, "dropped datagram: {why}");
        }
    }

    fn handle_hello(&mut self, now_ms: u64, src: SocketAddr, data: &[u8]) {
        let incoming = match IncomingHello::read(&self.private, data) {
            Ok(h) => h,
            Err(e) => return self.dropped(now_ms, src, &format!("hello: {e}")),
        };
        let key = incoming.remote;
        let hello = incoming.hello.clone();
        if self
            .hello_time
            .get(&key)
            .is_some_and(|t| hello.timestamp <= *t)
        {
            return self.dropped(now_ms, src, "replayed hello");
        }
        let welcome = match self.registry.get(&key) {
            Some(rec) if rec.role != hello.role => Err((
                RejectReason::Other,
                format!(
                    "this key is registered as a {:?}, not a {:?}: use a separate state dir",
                    rec.role, hello.role
                )
                .to_lowercase(),
            )),
            Some(_) => Ok(()),
            None => self.admit(key, &hello, src, now_ms),
        };
        let welcome = match welcome {
            Ok(()) => {
                let rec = self.registry.get(&key).expect("admitted");
                Welcome::Accepted {
                    name: rec.name.clone(),
                    mesh: rec.mesh_ip.map(|ip| MeshAddress {
                        ip,
                        network: self.registry.network(),
                    }),
                    heartbeat_secs: self.settings.heartbeat_secs,
                    map_version: self.registry.map_version(),
                    endpoint: src,
                    stun_port: self.settings.stun_port,
                }
            }
            Err((reason, message)) => {
                info!(%src, key = %key.short(), "refused node {:?}: {message}", hello.name);
                Welcome::Rejected { reason, message }
            }
        };
        let idx = self.fresh_session_index();
        let mut out = [0u8; MAX_DATAGRAM];
        match incoming.answer(idx, &welcome, &mut out) {
            Ok((len, session)) => {
                self.outbox.push_back(Transmit {
                    dst: src,
                    payload: out[..len].to_vec(),
                });
                if let Some(session) = session {
                    self.hello_time.insert(key, hello.timestamp);
                    if let Some(old) = self.session_of.insert(key, idx) {
                        self.sessions.remove(&old);
                    }
                    self.sessions.insert(
                        idx,
                        NodeSession {
                            key,
                            session,
                            addr: src,
                            known_version: 0,
                            punches: LogLimit::new(PUNCHES_PER_SECOND),
                        },
                    );
                    let name = &self.registry.get(&key).expect("admitted").name;
                    info!(node = %name, %src, "node connected");
                    self.mark_seen(key, src, now_ms);
                    self.registry
                        .set_local_endpoints(&key, &hello.local_endpoints);
                }
            }
            Err(e) => self.dropped(now_ms, src, &format!("welcome: {e}")),
        }
    }

    /// Registers a node that is new to the coordinator.
    fn admit(
        &mut self,
        key: PublicKey,
        hello: &messages::Hello,
        src: SocketAddr,
        now_ms: u64,
    ) -> Result<(), (RejectReason, String)> {
        // Open mode admits nodes without a key, never relays.
        let join = if self.settings.open && hello.role == Role::Node {
            None
        } else {
            match &hello.join {
                Some(j) => Some(j),
                None => {
                    let create = match hello.role {
                        Role::Node => "coordinator keys create",
                        Role::Relay => "coordinator keys create --relay",
                    };
                    return Err((
                        RejectReason::KeyRequired,
                        format!(
                            "this coordinator needs a join key: create one on it with \
                             `{create}` and pass it with --auth-key"
                        ),
                    ));
                }
            }
        };
        let record = self
            .registry
            .allocate(key, hello.role, &hello.name, Some(src), now_ms)
            .map_err(|e| (RejectReason::NetworkFull, e.to_string()))?;
        self.store
            .add_node(&record, join, now_ms)
            .map_err(|e| match e {
                AdmitError::KeyUnknown => (
                    RejectReason::KeyUnknown,
                    "the join key was not accepted (wrong or revoked): get a new one from \
                 `coordinator keys create`"
                        .into(),
                ),
                AdmitError::KeyUsed => (
                    RejectReason::KeyUsed,
                    "this one-off join key was already used: create a new one with \
                 `coordinator keys create`"
                        .into(),
                ),
                AdmitError::KeyExpired => (
                    RejectReason::KeyExpired,
                    "this join key has expired: create a new one with `coordinator keys create`"
                        .into(),
                ),
                AdmitError::WrongKind => (
                    RejectReason::KeyUnknown,
                    match hello.role {
                        Role::Node => {
                            "this is a relay key: nodes join with a key from \
                                       `coordinator keys create`"
                        }
                        Role::Relay => {
                            "this is a node key: relays join with a key from \
                                        `coordinator keys create --relay`"
                        }
                    }
                    .into(),
                ),
                AdmitError::Storage(e) => {
                    warn!("could not store a new node: {e}");
                    (
                        RejectReason::Other,
                        "the coordinator could not store the node; try again later".into(),
                    )
                }
            })?;
        match record.mesh_ip {
            Some(ip) => info!(node = %record.name, mesh_ip = %ip, "new node joined"),
            None => info!(relay = %record.name, "new relay joined"),
        }
        self.registry.insert(record);
        Ok(())
    }

    fn fresh_session_index(&mut self) -> u32 {
        loop {
            self.next_session = self.next_session.wrapping_add(1);
            if self.next_session != 0 && !self.sessions.contains_key(&self.next_session) {
                return self.next_session;
            }
        }
    }

    fn handle_transport(&mut self, now_ms: u64, src: SocketAddr, data: &[u8]) {
        let Some(idx) = transport_receiver(data) else {
            return self.dropped(now_ms, src, "short transport packet");
        };
        let Some(node) = self.sessions.get_mut(&idx) else {
            return self.dropped(now_ms, src, "unknown session");
        };
        let mut plain = [0u8; MAX_DATAGRAM];
        let msg = match node.session.open(data, &mut plain) {
            Ok(p) => messages::decode::<ToCoordinator>(p),
            Err(e) => return self.dropped(now_ms, src, &format!("transport: {e}")),
        };
        // Authenticated: the node is here, at `src` (this is how roaming is followed).
        node.addr = src;
        if let Ok(
            ToCoordinator::Heartbeat { map_version, .. }
            | ToCoordinator::GetPeers { map_version, .. },
        ) = &msg
        {
            node.known_version = node.known_version.max(*map_version);
        }
        let punch_allowed = node.punches.allow(now_ms);
        let key = node.key;
        self.mark_seen(key, src, now_ms);
        match msg {
            Ok(ToCoordinator::Heartbeat {
                local_endpoints, ..
            }) => {
                self.registry.set_local_endpoints(&key, &local_endpoints);
                self.send(
                    idx,
                    &ToNode::HeartbeatAck {
                        map_version: self.registry.map_version(),
                        endpoint: src,
                    },
                )
            }
            Ok(ToCoordinator::Punch { peer }) if punch_allowed => self.punch(key, peer),
            Ok(ToCoordinator::Punch { .. }) => self.dropped(now_ms, src, "punch rate limit"),
            Ok(ToCoordinator::GetPeers { offset, .. }) => {
                let (total, peers) = self.registry.page(&key, offset);
                let page = ToNode::PeerPage {
                    map_version: self.registry.map_version(),
                    offset,
                    total,
                    peers,
                };
                self.send(idx, &page);
            }
            Ok(ToCoordinator::Goodbye) => {
                if let Some(n) = self.registry.get(&key) {
                    info!(node = %n.name, "node went offline (said goodbye)");
                }
                self.registry.set_offline(&key);
                self.sessions.remove(&idx);
                self.session_of.remove(&key);
            }
            Err(e) => self.dropped(now_ms, src, &format!("message: {e}")),
        }
    }

    /// Tells `a` and `b` to probe each other now, each with the other's candidates.
    fn punch(&mut self, a: PublicKey, b: PublicKey) {
        let (Some(&sa), Some(&sb)) = (self.session_of.get(&a), self.session_of.get(&b)) else {
            return; // The peer is not connected: nothing to coordinate.
        };
        let (Some(ca), Some(cb)) = (self.registry.candidates(&a), self.registry.candidates(&b))
        else {
            return;
        };
        debug!(a = %a.short(), b = %b.short(), "coordinating a hole punch");
        self.send(
            sb,
            &ToNode::Punch {
                peer: a,
                candidates: ca,
            },
        );
        self.send(
            sa,
            &ToNode::Punch {
                peer: b,
                candidates: cb,
            },
        );
    }

    fn mark_seen(&mut self, key: PublicKey, src: SocketAddr, now_ms: u64) {
        let moved = self.registry.get(&key).and_then(|r| r.endpoint) != Some(src);
        self.registry.seen(&key, src, now_ms);
        let due = self
            .saved_seen_ms
            .get(&key)
            .is_none_or(|t| now_ms >= t + SEEN_SAVE_INTERVAL_MS);
        if moved || due {
            match self.store.save_seen(&key, src, now_ms) {
                Ok(()) => {
                    self.saved_seen_ms.insert(key, now_ms);
                }
                Err(e) => warn!("could not save when a node was seen: {e}"),
            }
        }
    }

    fn notify_map_changed(&mut self, now_ms: u64) {
        let version = self.registry.map_version();
        let targets: Vec<u32> = self.sessions.keys().copied().collect();
        for idx in targets {
            self.send(
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
            self.send(
                *idx,
                &ToNode::MapChanged {
                    map_version: version,
                },
            );
        }
        self.renotify_at_ms = (!lagging.is_empty()).then_some(now_ms + RENOTIFY_INTERVAL_MS);
    }

    fn send(&mut self, idx: u32, msg: &ToNode) {
        let Some(node) = self.sessions.get_mut(&idx) else {
            return;
        };
        let mut plain = [0u8; MAX_PLAINTEXT];
        let mut out = [0u8; MAX_DATAGRAM];
        let sealed = messages::encode(msg, &mut plain, 0)
            .map_err(|e| e.to_string())
            .and_then(|n| {
                node.session
                    .seal(&plain[..n], &mut out)
                    .map_err(|e| e.to_string())
            });
        match sealed {
            Ok(len) => self.outbox.push_back(Transmit {
                dst: node.addr,
                payload: out[..len].to_vec(),
            }),
            Err(e) => warn!("could not seal a message for a node: {e}"),
        }
    }
}

pub fn x25519_public(private: &[u8; 32]) -> x25519_dalek::PublicKey {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private))
}
