//! A node's (or relay's) side of the control protocol as a sans-IO state machine: datagrams from the
//! coordinator and the time go in; datagrams to send, events and the next wake-up come out.
//!
//! Lifecycle: (ask the coordinator for its key, when none is known) → Hello/Welcome handshake
//! (retried with backoff) → connected: heartbeats, peer map pulls. Missed heartbeats send it
//! back to the handshake; existing tunnels are not its business and keep running meanwhile.

use crate::channel::{transport_receiver, Initiator, Session, MAX_DATAGRAM};
use crate::header::{self, ControlHeader, ControlKind, HEADER_LEN};
use crate::join_key::JoinSecret;
use crate::messages::{
    self, Candidates, Hello, MeshAddress, PeerInfo, Role, ToCoordinator, ToNode, Welcome,
    MAX_ENDPOINTS, MAX_PLAINTEXT, PUNCH_REQUEST_LEN,
};
use crate::{PublicKey, PROTOCOL_VERSION};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// First handshake retry; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(10);
/// How long to wait for a heartbeat's answer before sending another.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Unanswered heartbeats in a row after which the coordinator counts as lost.
const MAX_UNACKED: u32 = 3;
/// Re-ask for a peer map page after this long without an answer.
const PAGE_TIMEOUT: Duration = Duration::from_secs(1);
/// Refuse peer maps claiming more peers than this (bounds memory).
const MAX_PEERS: u32 = 1 << 16;

/// Who the coordinator is, as far as this node knows before contacting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// From a join key: fixed.
    JoinKey(PublicKey),
    /// Pinned on first use earlier.
    Pinned(PublicKey),
    /// Nothing known: learn it on first use and pin it.
    FirstUse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The coordinator's key was learned on first use; persist it.
    Pin(PublicKey),
    Registered {
        name: String,
        /// The node's mesh address (none for a relay).
        mesh: Option<MeshAddress>,
        endpoint: SocketAddr,
        /// The coordinator's second STUN address, if it has one.
        coordinator_stun: Option<SocketAddr>,
    },
    /// A complete, consistent peer map.
    PeerMap(Vec<PeerInfo>),
    /// Probe this peer at these candidates now (the coordinator told it the same about us).
    Punch {
        peer: PublicKey,
        candidates: Candidates,
    },
    /// The coordinator now sees this node at another public endpoint (NAT mapping changed).
    PublicEndpointChanged { old: SocketAddr, new: SocketAddr },
    /// No answer from the coordinator; trying again after `retry_in`.
    Unreachable { retry_in: Duration },
    /// The connected coordinator stopped answering.
    Lost,
    /// Something only the user can fix; the node should stop.
    Fatal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

enum State {
    AskingKey {
        next_try: Instant,
        retry: Duration,
    },
    Handshaking {
        initiator: Box<Initiator>,
        coordinator: PublicKey,
        next_try: Instant,
        retry: Duration,
    },
    Connected(Box<Connected>),
    Stopped,
}

struct Connected {
    session: Session,
    next_heartbeat: Instant,
    /// When the oldest unanswered heartbeat was sent.
    awaiting_ack_since: Option<Instant>,
    unacked: u32,
    heartbeat: Duration,
    known_version: u64,
    wanted_version: u64,
    pull: Option<Pull>,
}

struct Pull {
    version: u64,
    peers: Vec<PeerInfo>,
    asked_at: Instant,
}

/// Who the client is and whom it talks to.
pub struct ClientConfig {
    /// The node's (or relay's) X25519 private key.
    pub private: [u8; 32],
    pub coordinator_addr: SocketAddr,
    pub trust: Trust,
    /// The join key's secret, needed until the first registration.
    pub join: Option<JoinSecret>,
    pub name: String,
    pub role: Role,
}

pub struct ControlClient {
    role: Role,
    private: [u8; 32],
    coordinator_addr: SocketAddr,
    trust: Trust,
    join: Option<JoinSecret>,
    name: String,
    state: State,
    session_counter: u32,
    last_timestamp: u64,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    local_endpoints: Vec<SocketAddr>,
    public_endpoint: Option<SocketAddr>,
}

impl ControlClient {
    /// A client that does nothing until [`ControlClient::start`].
    pub fn new(config: ClientConfig, session_seed: u32) -> ControlClient {
        ControlClient {
            private: config.private,
            coordinator_addr: config.coordinator_addr,
            trust: config.trust,
            join: config.join,
            name: config.name,
            role: config.role,
            state: State::Stopped,
            session_counter: session_seed,
            last_timestamp: 0,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            local_endpoints: Vec::new(),
            public_endpoint: None,
        }
    }

    /// Makes first contact (set the local endpoints before, so the first Hello carries them).
    pub fn start(&mut self, now: Instant) {
        self.restart(now);
    }

    pub fn coordinator_addr(&self) -> SocketAddr {
        self.coordinator_addr
    }

    /// This node's interface endpoints, reported with the next Hello, or at once by a
    /// heartbeat when they changed while connected.
    pub fn set_local_endpoints(&mut self, now: Instant, mut endpoints: Vec<SocketAddr>) {
        endpoints.truncate(MAX_ENDPOINTS);
        if endpoints == self.local_endpoints {
            return;
        }
        self.local_endpoints = endpoints;
        if let State::Connected(c) = &mut self.state {
            c.next_heartbeat = now;
        }
    }

    /// Where the coordinator last saw this node.
    pub fn public_endpoint(&self) -> Option<SocketAddr> {
        self.public_endpoint
    }

    /// Asks the coordinator to have this node and `peer` probe each other now.
    pub fn request_punch(&mut self, peer: PublicKey) {
        self.send(&ToCoordinator::Punch { peer });
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected(_))
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::AskingKey { next_try, .. } | State::Handshaking { next_try, .. } => {
                Some(*next_try)
            }
            State::Connected(c) => {
                let ack = c.awaiting_ack_since.map(|t| t + ACK_TIMEOUT);
                let page = c.pull.as_ref().map(|p| p.asked_at + PAGE_TIMEOUT);
                [Some(c.next_heartbeat), ack, page]
                    .into_iter()
                    .flatten()
                    .min()
            }
            State::Stopped => None,
        }
    }

    /// Says goodbye (best effort) and stops.
    pub fn shutdown(&mut self) {
        if matches!(self.state, State::Connected(_)) {
            self.send(&ToCoordinator::Goodbye);
        }
        self.state = State::Stopped;
    }

    fn restart(&mut self, now: Instant) {
        match self.trust {
            Trust::FirstUse => {
                self.state = State::AskingKey {
                    next_try: now,
                    retry: FIRST_RETRY,
                };
            }
            Trust::JoinKey(k) | Trust::Pinned(k) => self.start_handshake(now, k, FIRST_RETRY),
        }
        self.handle_timeout(now);
    }

    fn start_handshake(&mut self, now: Instant, coordinator: PublicKey, retry: Duration) {
        self.session_counter = self.session_counter.wrapping_add(1);
        // Hello timestamps must grow, even if the wall clock does not.
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.last_timestamp = wall.max(self.last_timestamp + 1);
        let hello = Hello {
            timestamp: self.last_timestamp,
            session: self.session_counter,
            name: self.name.clone(),
            join: self.join,
            local_endpoints: self.local_endpoints.clone(),
            role: self.role,
        };
        let mut buf = [0u8; MAX_DATAGRAM];
        match Initiator::start(&self.private, &coordinator, &hello, &mut buf) {
            Ok((initiator, n)) => {
                self.outbox.push_back(Transmit {
                    dst: self.coordinator_addr,
                    payload: buf[..n].to_vec(),
                });
                self.state = State::Handshaking {
                    initiator: Box::new(initiator),
                    coordinator,
                    next_try: now + retry,
                    retry,
                };
            }
            Err(e) => self.fatal(format!("cannot build the handshake: {e}")),
        }
    }

    fn fatal(&mut self, message: String) {
        self.state = State::Stopped;
        self.events.push_back(Event::Fatal(message));
    }

    fn ask_key(&mut self) {
        self.outbox.push_back(Transmit {
            dst: self.coordinator_addr,
            payload: header::key_request().to_vec(),
        });
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::AskingKey { next_try, retry } if now >= *next_try => {
                let wait = *retry;
                *next_try = now + wait;
                *retry = (wait * 2).min(MAX_RETRY);
                self.ask_key();
                if wait > FIRST_RETRY {
                    self.events.push_back(Event::Unreachable { retry_in: wait });
                }
            }
            State::Handshaking {
                coordinator,
                next_try,
                retry,
                ..
            } if now >= *next_try => {
                let (coordinator, wait) = (*coordinator, *retry);
                self.events.push_back(Event::Unreachable { retry_in: wait });
                // Also ask for the key: if the coordinator answers with another key, the
                // user gets told instead of waiting forever.
                self.ask_key();
                self.start_handshake(now, coordinator, (wait * 2).min(MAX_RETRY));
            }
            State::Connected(c) => {
                if c.awaiting_ack_since.is_some_and(|t| now >= t + ACK_TIMEOUT) {
                    if c.unacked >= MAX_UNACKED {
                        self.events.push_back(Event::Lost);
                        self.restart(now);
                        return;
                    }
                    c.next_heartbeat = now;
                }
                if now >= c.next_heartbeat {
                    c.next_heartbeat = now + c.heartbeat;
                    c.awaiting_ack_since = Some(now);
                    c.unacked += 1;
                    let map_version = c.known_version;
                    let local_endpoints = self.local_endpoints.clone();
                    self.send(&ToCoordinator::Heartbeat {
                        map_version,
                        local_endpoints,
                    });
                }
                self.pull_if_needed(now);
            }
            _ => {}
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        if src != self.coordinator_addr {
            return;
        }
        let Some(h) = ControlHeader::parse(data) else {
            return;
        };
        if h.version != PROTOCOL_VERSION {
            if h.kind == Some(ControlKind::VersionMismatch) || h.kind.is_none() {
                self.fatal(format!(
                    "the coordinator speaks control protocol version {}, this node version \
                     {PROTOCOL_VERSION}: upgrade the older of the two",
                    h.version
                ));
            }
            return;
        }
        match h.kind {
            Some(ControlKind::KeyResponse) => self.handle_key(now, data),
            Some(ControlKind::Welcome) => self.handle_welcome(now, data),
            Some(ControlKind::Transport) => self.handle_transport(now, data),
            _ => {}
        }
    }

    fn handle_key(&mut self, now: Instant, data: &[u8]) {
        if data.len() != HEADER_LEN + 32 {
            return;
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(&data[HEADER_LEN..]);
        let offered = PublicKey(k);
        match (self.trust, &self.state) {
            (Trust::FirstUse, State::AskingKey { .. }) => {
                self.trust = Trust::Pinned(offered);
                self.events.push_back(Event::Pin(offered));
                self.start_handshake(now, offered, FIRST_RETRY);
            }
            (Trust::JoinKey(expected), _) if expected != offered => self.fatal(format!(
                "the coordinator at {} has key {offered}, but this join key was made by \
                 the coordinator with key {expected}: use a join key from this coordinator",
                self.coordinator_addr
            )),
            (Trust::Pinned(expected), _) if expected != offered => self.fatal(format!(
                "the coordinator at {} now has key {offered}, not the key {expected} this node \
                 pinned: someone may be intercepting. If the coordinator was reinstalled on \
                 purpose, rejoin with a new --auth-key from it",
                self.coordinator_addr
            )),
            _ => {}
        }
    }

    fn handle_welcome(&mut self, now: Instant, data: &[u8]) {
        let State::Handshaking { initiator, .. } = &self.state else {
            return;
        };
        if !initiator.answers(data) {
            return; // Not the answer to our current Hello.
        }
        let State::Handshaking {
            initiator,
            coordinator,
            retry,
            ..
        } = std::mem::replace(&mut self.state, State::Stopped)
        else {
            unreachable!("checked above")
        };
        match initiator.finish(data) {
            Ok((welcome, session)) => self.welcomed(now, welcome, session),
            // Forged or damaged: the handshake state is spent, so start a fresh one.
            Err(_) => self.start_handshake(now, coordinator, retry),
        }
    }

    fn welcomed(&mut self, now: Instant, welcome: Welcome, session: Option<Session>) {
        match (welcome, session) {
            (
                Welcome::Accepted {
                    name,
                    mesh,
                    heartbeat_secs,
                    map_version,
                    endpoint,
                    stun_port,
                },
                Some(session),
            ) => {
                self.join = None; // Registered: the node key is enough from now on.
                self.note_public_endpoint(endpoint);
                let coordinator_stun =
                    stun_port.map(|p| SocketAddr::new(self.coordinator_addr.ip(), p));
                self.events.push_back(Event::Registered {
                    name,
                    mesh,
                    endpoint,
                    coordinator_stun,
                });
                let heartbeat = Duration::from_secs(heartbeat_secs.max(1) as u64);
                self.state = State::Connected(Box::new(Connected {
                    session,
                    next_heartbeat: now + heartbeat,
                    awaiting_ack_since: None,
                    unacked: 0,
                    heartbeat,
                    known_version: 0,
                    wanted_version: map_version,
                    pull: None,
                }));
                self.pull_if_needed(now);
            }
            (Welcome::Rejected { message, .. }, _) => {
                self.fatal(format!("the coordinator refused this node: {message}"))
            }
            (Welcome::Accepted { .. }, None) => {}
        }
    }

    fn handle_transport(&mut self, now: Instant, data: &[u8]) {
        let State::Connected(c) = &mut self.state else {
            return;
        };
        if transport_receiver(data) != Some(self.session_counter) {
            return;
        }
        let mut plain = [0u8; MAX_DATAGRAM];
        let Ok(p) = c.session.open(data, &mut plain) else {
            return;
        };
        let Ok(msg) = messages::decode::<ToNode>(p) else {
            return;
        };
        match msg {
            ToNode::HeartbeatAck {
                map_version,
                endpoint,
            } => {
                c.unacked = 0;
                c.awaiting_ack_since = None;
                c.wanted_version = c.wanted_version.max(map_version);
                self.note_public_endpoint(endpoint);
            }
            ToNode::Punch { peer, candidates } => {
                self.events.push_back(Event::Punch { peer, candidates });
            }
            ToNode::MapChanged { map_version } => {
                c.wanted_version = c.wanted_version.max(map_version);
            }
            ToNode::PeerPage {
                map_version,
                offset,
                total,
                peers,
            } => self.handle_page(now, map_version, offset, total, peers),
            ToNode::Removed => {
                return self.fatal(
                    "an admin removed this node from the mesh: join again with a new \
                     --auth-key"
                        .into(),
                )
            }
        }
        self.pull_if_needed(now);
    }

    fn note_public_endpoint(&mut self, endpoint: SocketAddr) {
        if let Some(old) = self.public_endpoint.replace(endpoint) {
            if old != endpoint {
                self.events
                    .push_back(Event::PublicEndpointChanged { old, new: endpoint });
            }
        }
    }

    fn handle_page(
        &mut self,
        now: Instant,
        version: u64,
        offset: u32,
        total: u32,
        peers: Vec<PeerInfo>,
    ) {
        let State::Connected(c) = &mut self.state else {
            return;
        };
        let Some(pull) = &mut c.pull else {
            return;
        };
        if total > MAX_PEERS {
            c.pull = None;
            return;
        }
        if version != pull.version {
            // The map moved on while we pulled it: start over at the new version.
            c.wanted_version = c.wanted_version.max(version);
            c.pull = None;
            return;
        }
        if offset as usize != pull.peers.len() {
            return; // A stale or duplicate page.
        }
        let got = peers.len();
        pull.peers.extend(peers);
        if pull.peers.len() > total as usize {
            c.pull = None;
            return;
        }
        if pull.peers.len() == total as usize {
            let pull = c.pull.take().expect("pull in progress");
            c.known_version = pull.version;
            self.events.push_back(Event::PeerMap(pull.peers));
            return;
        }
        if got == 0 {
            c.pull = None; // No progress: start over rather than loop.
            return;
        }
        pull.asked_at = now;
        let msg = ToCoordinator::GetPeers {
            map_version: version,
            offset: pull.peers.len() as u32,
        };
        self.send(&msg);
    }

    fn pull_if_needed(&mut self, now: Instant) {
        let State::Connected(c) = &mut self.state else {
            return;
        };
        let msg = match &mut c.pull {
            None if c.wanted_version > c.known_version => {
                c.pull = Some(Pull {
                    version: c.wanted_version,
                    peers: Vec::new(),
                    asked_at: now,
                });
                ToCoordinator::GetPeers {
                    map_version: c.wanted_version,
                    offset: 0,
                }
            }
            Some(p) if now >= p.asked_at + PAGE_TIMEOUT => {
                p.asked_at = now;
                ToCoordinator::GetPeers {
                    map_version: p.version,
                    offset: p.peers.len() as u32,
                }
            }
            _ => return,
        };
        self.send(&msg);
    }

    fn send(&mut self, msg: &ToCoordinator) {
        let State::Connected(c) = &mut self.state else {
            return;
        };
        let mut plain = [0u8; MAX_PLAINTEXT];
        // Pad requests to the size of what they earn, so no answer is larger.
        let pad = match msg {
            ToCoordinator::GetPeers { .. } => MAX_PLAINTEXT,
            ToCoordinator::Punch { .. } => PUNCH_REQUEST_LEN,
            _ => 0,
        };
        let mut out = [0u8; MAX_DATAGRAM];
        let Ok(n) = messages::encode(msg, &mut plain, pad) else {
            return;
        };
        if let Ok(len) = c.session.seal(&plain[..n], &mut out) {
            self.outbox.push_back(Transmit {
                dst: self.coordinator_addr,
                payload: out[..len].to_vec(),
            });
        }
    }
}
