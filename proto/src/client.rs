//! A node's (or relay's) side of the control protocol as a sans-IO state machine: datagrams from
//! the coordinator, the time (monotonic and wall clock) go in; datagrams to send, events and
//! the next wake-up come out.
//!
//! Lifecycle: (ask the coordinator for its key, when none is known) → Hello/Welcome handshake
//! (retried with backoff) → connected: heartbeats, peer map pulls. Missed heartbeats send it
//! back to the handshake; existing tunnels are not its business and keep running meanwhile.
//!
//! **Nothing from the network stops it.** Unauthenticated hints — a key answer or a "version
//! mismatch" — are believed only while no session exists and only from the coordinator's
//! address, and even then they only produce a [`Event::Warning`] while it keeps trying. An
//! authenticated rejection or removal makes it wait and try again later; it is the daemon's
//! choice to stop on a rejection of the join key the user gave (a local mistake).

use crate::channel::{transport_receiver, HelloForm, Initiator, Session, MAX_DATAGRAM};
use crate::cookie::{Cookie, CookieOpener, COOKIE_USE_MS};
use crate::header::{self, ControlHeader, ControlKind, HEADER_LEN};
use crate::join_key::JoinSecret;
use crate::messages::{
    self, caps, Candidates, Change, Hello, MeshAddress, PeerInfo, RejectReason, Role,
    ToCoordinator, ToNode, Welcome, HEARTBEAT_LEN, MAX_ENDPOINTS, MAX_NAME_LEN, MAX_PLAINTEXT,
    PUNCH_REQUEST_LEN,
};
use crate::stamp::Stamps;
use crate::{PublicKey, PROTOCOL_VERSION};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// First handshake retry; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(10);
/// After an authenticated rejection (other than of the join key) or a removal: the first wait
/// before registering again; doubles up to [`MAX_REJECTED_RETRY`].
const REJECTED_RETRY: Duration = Duration::from_secs(15);
const MAX_REJECTED_RETRY: Duration = Duration::from_secs(300);
/// A punch request brings the next heartbeat forward to this long after the last one.
const PUNCH_HEARTBEAT_GAP: Duration = Duration::from_secs(2);
/// How long to wait for a heartbeat's answer before sending another.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Unanswered heartbeats in a row after which the coordinator counts as lost.
const MAX_UNACKED: u32 = 3;
/// Re-ask for a peer map page after this long without an answer.
const PAGE_TIMEOUT: Duration = Duration::from_secs(1);
/// Refuse peer maps claiming more peers than this (bounds memory).
const MAX_PEERS: u32 = 1 << 16;
/// Every third handshake attempt uses the older Hello form without MACs, so a coordinator
/// older than them can still be joined.
const LEGACY_EVERY: u32 = 3;

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
        /// Network-wide switches ([`messages::policy`]).
        policy: u64,
        /// The DNS domain of peer names (valid; the default if the coordinator named none).
        domain: String,
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
    /// The coordinator turned this node away (an authenticated answer). The client tries again
    /// after `retry_in`; `ever_registered` tells whether this client was ever admitted (if not,
    /// and the reason is about the join key, only the user can fix it).
    Rejected {
        reason: RejectReason,
        message: String,
        ever_registered: bool,
        retry_in: Duration,
    },
    /// An admin renamed this node.
    Renamed { name: String },
    /// An admin removed this node (an authenticated message). The peer map is now empty; the
    /// client tries to register again after `retry_in`.
    Removed { retry_in: Duration },
    /// Something the user should hear about while the client keeps trying: an unauthenticated
    /// hint (another protocol version, another key) or a coordinator's answer that makes no
    /// sense. At most one per handshake attempt.
    Warning(String),
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
        /// Whether the Hello already went out again with a cookie.
        cookie_sent: bool,
    },
    /// Rejected or removed: registering again at `until`.
    Waiting {
        until: Instant,
        retry: Duration,
    },
    Connected(Box<Connected>),
    Stopped,
}

struct Connected {
    session: Session,
    /// What the coordinator understands.
    caps: u64,
    next_heartbeat: Instant,
    /// When the oldest unanswered heartbeat was sent.
    awaiting_ack_since: Option<Instant>,
    unacked: u32,
    heartbeat: Duration,
    /// The map version held whole in `map`.
    known_version: u64,
    wanted_version: u64,
    map: BTreeMap<PublicKey, PeerInfo>,
    pull: Option<Pull>,
    /// A challenge to echo in the next heartbeat (0: none).
    echo: u64,
    last_challenge: u64,
}

struct Pull {
    version: u64,
    /// `Some(since)` for a pull of the changes since that version, `None` for the whole map.
    since: Option<u64>,
    reset: bool,
    changes: Vec<Change>,
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
    /// Hello timestamps start above this (see [`crate::stamp::StampFloor`]).
    pub stamp_floor: u64,
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
    stamps: Stamps,
    attempt: u32,
    /// A cookie from the coordinator (for mac2) and when it arrived.
    cookie: Option<(Cookie, Instant)>,
    ever_registered: bool,
    /// How long to wait after the next rejection or removal.
    rejected_retry: Duration,
    /// A warning was given during the current handshake attempt.
    warned: bool,
    /// Why the client is not connected, for status displays.
    problem: Option<String>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    local_endpoints: Vec<SocketAddr>,
    public_endpoint: Option<SocketAddr>,
}

impl ControlClient {
    /// A client that does nothing until [`ControlClient::start`].
    pub fn new(config: ClientConfig, session_seed: u32) -> ControlClient {
        let mut name = config.name;
        while name.len() > MAX_NAME_LEN {
            name.pop();
        }
        ControlClient {
            private: config.private,
            coordinator_addr: config.coordinator_addr,
            trust: config.trust,
            join: config.join,
            name,
            role: config.role,
            state: State::Stopped,
            session_counter: session_seed,
            stamps: Stamps::new(config.stamp_floor),
            attempt: 0,
            cookie: None,
            ever_registered: false,
            rejected_retry: REJECTED_RETRY,
            warned: false,
            problem: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            local_endpoints: Vec::new(),
            public_endpoint: None,
        }
    }

    /// Makes first contact (set the local endpoints before, so the first Hello carries them).
    pub fn start(&mut self, now: Instant, wall_ns: u64) {
        self.restart(now, wall_ns);
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

    /// Asks the coordinator to have this node and `peer` probe each other now. A path that
    /// stopped answering may mean our NAT mapping changed: a heartbeat goes out soon too (at
    /// most every [`PUNCH_HEARTBEAT_GAP`]), so the coordinator sees — and, after its challenge,
    /// tells peers — where we are now, instead of at the next regular heartbeat (found by the
    /// simulator: after a router reboot, peers waited up to a heartbeat interval).
    pub fn request_punch(&mut self, peer: PublicKey) {
        self.send(&ToCoordinator::Punch { peer });
        if let State::Connected(c) = &mut self.state {
            let last = c.next_heartbeat.checked_sub(c.heartbeat);
            if let Some(last) = last {
                c.next_heartbeat = c.next_heartbeat.min(last + PUNCH_HEARTBEAT_GAP);
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected(_))
    }

    /// Why the client is not registered right now, if something other than silence is the
    /// reason (a rejection, a removal, a warning).
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
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
            State::Waiting { until, .. } => Some(*until),
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

    fn restart(&mut self, now: Instant, wall_ns: u64) {
        self.attempt = 0;
        match self.trust {
            Trust::FirstUse => {
                self.state = State::AskingKey {
                    next_try: now,
                    retry: FIRST_RETRY,
                };
            }
            Trust::JoinKey(k) | Trust::Pinned(k) => {
                self.start_handshake(now, wall_ns, k, FIRST_RETRY)
            }
        }
        self.handle_timeout(now, wall_ns);
    }

    fn start_handshake(
        &mut self,
        now: Instant,
        wall_ns: u64,
        coordinator: PublicKey,
        retry: Duration,
    ) {
        self.session_counter = self.session_counter.wrapping_add(1);
        self.warned = false;
        let form = if self.attempt % LEGACY_EVERY == LEGACY_EVERY - 1 {
            HelloForm::Legacy
        } else {
            HelloForm::Macs
        };
        self.attempt = self.attempt.wrapping_add(1);
        let hello = Hello {
            timestamp: self.stamps.next(wall_ns),
            session: self.session_counter,
            name: self.name.clone(),
            join: self.join,
            local_endpoints: self.local_endpoints.clone(),
            role: self.role,
            capabilities: caps::ALL,
        };
        let mut initiator = match Initiator::start(&self.private, &coordinator, &hello, form) {
            Ok(i) => i,
            Err(e) => {
                // Cannot happen with a valid key and a bounded name; keep trying rather than stop.
                self.warn(format!("cannot build the handshake: {e}"));
                self.state = State::Waiting {
                    until: now + retry,
                    retry,
                };
                return;
            }
        };
        let cookie = self.cookie.filter(|(_, at)| {
            now.saturating_duration_since(*at).as_millis() < COOKIE_USE_MS as u128
        });
        if let Some((c, _)) = cookie {
            initiator.apply_cookie(&c);
        }
        self.outbox.push_back(Transmit {
            dst: self.coordinator_addr,
            payload: initiator.datagram().to_vec(),
        });
        self.state = State::Handshaking {
            initiator: Box::new(initiator),
            coordinator,
            next_try: now + retry,
            retry,
            cookie_sent: false,
        };
    }

    fn warn(&mut self, message: String) {
        if !self.warned {
            self.warned = true;
            self.problem = Some(message.clone());
            self.events.push_back(Event::Warning(message));
        }
    }

    fn ask_key(&mut self) {
        self.outbox.push_back(Transmit {
            dst: self.coordinator_addr,
            payload: header::key_request().to_vec(),
        });
    }

    pub fn handle_timeout(&mut self, now: Instant, wall_ns: u64) {
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
                // user gets told.
                self.ask_key();
                self.start_handshake(now, wall_ns, coordinator, (wait * 2).min(MAX_RETRY));
            }
            State::Waiting { until, retry } if now >= *until => {
                let retry = *retry;
                match self.trust {
                    Trust::JoinKey(k) | Trust::Pinned(k) => {
                        self.attempt = 0;
                        self.start_handshake(now, wall_ns, k, FIRST_RETRY);
                    }
                    Trust::FirstUse => {
                        self.state = State::AskingKey {
                            next_try: now,
                            retry: FIRST_RETRY,
                        };
                        return self.handle_timeout(now, wall_ns);
                    }
                }
                // A rejection during this attempt waits longer than the last one.
                self.rejected_retry = (retry * 2).min(MAX_REJECTED_RETRY);
            }
            State::Connected(c) => {
                if c.awaiting_ack_since.is_some_and(|t| now >= t + ACK_TIMEOUT) {
                    if c.unacked >= MAX_UNACKED {
                        self.events.push_back(Event::Lost);
                        self.restart(now, wall_ns);
                        return;
                    }
                    c.next_heartbeat = now;
                }
                if now >= c.next_heartbeat {
                    self.heartbeat(now);
                }
                self.pull_if_needed(now);
            }
            _ => {}
        }
    }

    fn heartbeat(&mut self, now: Instant) {
        let State::Connected(c) = &mut self.state else {
            return;
        };
        c.next_heartbeat = now + c.heartbeat;
        c.awaiting_ack_since = Some(now);
        c.unacked += 1;
        let msg = ToCoordinator::Heartbeat {
            map_version: c.known_version,
            local_endpoints: self.local_endpoints.clone(),
            echo: std::mem::take(&mut c.echo),
        };
        self.send(&msg);
    }

    pub fn handle_datagram(&mut self, now: Instant, wall_ns: u64, src: SocketAddr, data: &[u8]) {
        if src != self.coordinator_addr {
            return;
        }
        let Some(h) = ControlHeader::parse(data) else {
            return;
        };
        let handshaking = matches!(
            self.state,
            State::AskingKey { .. } | State::Handshaking { .. }
        );
        if h.version != PROTOCOL_VERSION {
            // Unauthenticated: a hint worth telling the user while no session exists, nothing
            // more (the client keeps trying on its schedule).
            if handshaking && (h.kind == Some(ControlKind::VersionMismatch) || h.kind.is_none()) {
                self.warn(format!(
                    "the coordinator at {src} answers in control protocol version {}, this \
                     node speaks version {PROTOCOL_VERSION}: upgrade the older of the two \
                     (still trying)",
                    h.version
                ));
            }
            return;
        }
        match h.kind {
            Some(ControlKind::KeyResponse) if handshaking => self.handle_key(now, wall_ns, data),
            Some(ControlKind::CookieReply) => self.handle_cookie(now, data),
            Some(ControlKind::Welcome) => self.handle_welcome(now, wall_ns, data),
            Some(ControlKind::Transport) => self.handle_transport(now, data),
            _ => {}
        }
    }

    fn handle_key(&mut self, now: Instant, wall_ns: u64, data: &[u8]) {
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
                self.start_handshake(now, wall_ns, offered, FIRST_RETRY);
            }
            (Trust::JoinKey(expected), _) if expected != offered => self.warn(format!(
                "the coordinator at {} answers with key {offered}, but this join key was made \
                 by the coordinator with key {expected}: use a join key from this coordinator \
                 (still trying, in case that answer was forged)",
                self.coordinator_addr
            )),
            (Trust::Pinned(expected), _) if expected != offered => self.warn(format!(
                "the coordinator at {} answers with key {offered}, not the key {expected} this \
                 node pinned: someone may be intercepting. If the coordinator was reinstalled \
                 on purpose, rejoin with a new --auth-key from it (still trying)",
                self.coordinator_addr
            )),
            _ => {}
        }
    }

    /// A cookie reply: the coordinator is under load and wants mac2 on our Hello.
    fn handle_cookie(&mut self, now: Instant, data: &[u8]) {
        let State::Handshaking {
            initiator,
            coordinator,
            cookie_sent,
            ..
        } = &mut self.state
        else {
            return;
        };
        let Some(mac1) = initiator.mac1() else {
            return;
        };
        let Some(cookie) =
            CookieOpener::for_coordinator(coordinator).open(data, initiator.session(), &mac1)
        else {
            return;
        };
        self.cookie = Some((cookie, now));
        if !*cookie_sent {
            *cookie_sent = true;
            initiator.apply_cookie(&cookie);
            self.outbox.push_back(Transmit {
                dst: self.coordinator_addr,
                payload: initiator.datagram().to_vec(),
            });
        }
    }

    fn handle_welcome(&mut self, now: Instant, wall_ns: u64, data: &[u8]) {
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
            Err(_) => self.start_handshake(now, wall_ns, coordinator, retry),
        }
    }

    /// Checks what a Welcome says about this node's address; the reason it is unusable.
    fn unusable_address(&self, mesh: &Option<MeshAddress>) -> Option<&'static str> {
        match (self.role, mesh) {
            (Role::Relay, _) => None,
            (Role::Node, None) => Some("no mesh address"),
            (Role::Node, Some(m)) => {
                if !(8..=30).contains(&m.network.prefix_len()) {
                    Some("a mesh network that is too large or too small")
                } else if !m.network.contains(&m.ip)
                    || m.ip == m.network.network()
                    || m.ip == m.network.broadcast()
                {
                    Some("a mesh address outside its network")
                } else {
                    None
                }
            }
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
                    capabilities,
                    policy,
                    domain,
                },
                Some(session),
            ) => {
                if let Some(why) = self.unusable_address(&mesh) {
                    let message = format!("the coordinator registered this node with {why}");
                    return self.rejected(now, RejectReason::Other, message);
                }
                self.join = None; // Registered: the node key is enough from now on.
                self.ever_registered = true;
                self.rejected_retry = REJECTED_RETRY;
                self.problem = None;
                self.note_public_endpoint(endpoint);
                let coordinator_stun =
                    stun_port.map(|p| SocketAddr::new(self.coordinator_addr.ip(), p));
                // A domain that is no DNS domain (or none, from an older coordinator) means
                // the default.
                let domain = if messages::valid_domain(&domain) {
                    domain
                } else {
                    messages::DEFAULT_DOMAIN.into()
                };
                self.events.push_back(Event::Registered {
                    name,
                    mesh,
                    endpoint,
                    coordinator_stun,
                    policy,
                    domain,
                });
                let heartbeat = Duration::from_secs(heartbeat_secs.clamp(1, 600) as u64);
                self.state = State::Connected(Box::new(Connected {
                    session,
                    caps: capabilities,
                    next_heartbeat: now,
                    awaiting_ack_since: None,
                    unacked: 0,
                    heartbeat,
                    known_version: 0,
                    wanted_version: map_version,
                    map: BTreeMap::new(),
                    pull: None,
                    echo: 0,
                    last_challenge: 0,
                }));
                // The first heartbeat goes out at once: it confirms the session to the
                // coordinator (which only switches to a new session once it is confirmed).
                self.heartbeat(now);
                self.pull_if_needed(now);
            }
            (Welcome::Rejected { reason, message }, _) => self.rejected(now, reason, message),
            (Welcome::Accepted { .. }, None) => {}
        }
    }

    fn rejected(&mut self, now: Instant, reason: RejectReason, message: String) {
        let retry_in = self.rejected_retry;
        self.problem = Some(format!("the coordinator refused this node: {message}"));
        self.events.push_back(Event::Rejected {
            reason,
            message,
            ever_registered: self.ever_registered,
            retry_in,
        });
        self.state = State::Waiting {
            until: now + retry_in,
            retry: retry_in,
        };
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
                challenge,
            } => {
                c.unacked = 0;
                c.awaiting_ack_since = None;
                c.wanted_version = c.wanted_version.max(map_version);
                if challenge != 0 && challenge != c.last_challenge {
                    // The coordinator wants proof that we receive at this address: echo it
                    // from here at once.
                    c.last_challenge = challenge;
                    c.echo = challenge;
                    c.next_heartbeat = now;
                }
                self.note_public_endpoint(endpoint);
                if let State::Connected(c) = &self.state {
                    if c.echo != 0 {
                        self.heartbeat(now);
                    }
                }
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
            } => {
                let changes = peers.into_iter().map(Change::Peer).collect();
                self.handle_page(now, map_version, None, offset, total, true, changes)
            }
            ToNode::Changes {
                map_version,
                since,
                offset,
                total,
                reset,
                changes,
            } => self.handle_page(now, map_version, Some(since), offset, total, reset, changes),
            ToNode::Renamed { name } => self.events.push_back(Event::Renamed { name }),
            ToNode::Removed => {
                let retry_in = self.rejected_retry;
                self.problem = Some(
                    "an admin removed this node from the mesh: join again with a new \
                     --auth-key"
                        .into(),
                );
                self.events.push_back(Event::PeerMap(Vec::new()));
                self.events.push_back(Event::Removed { retry_in });
                self.state = State::Waiting {
                    until: now + retry_in,
                    retry: retry_in,
                };
                return;
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

    /// One page of a pull: of the whole map (`since: None`) or of the changes since a version.
    #[allow(clippy::too_many_arguments)]
    fn handle_page(
        &mut self,
        now: Instant,
        version: u64,
        since: Option<u64>,
        offset: u32,
        total: u32,
        reset: bool,
        changes: Vec<Change>,
    ) {
        let State::Connected(c) = &mut self.state else {
            return;
        };
        let Some(pull) = &mut c.pull else {
            return;
        };
        if pull.since != since {
            return; // An answer to another kind of pull.
        }
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
        if offset as usize != pull.changes.len() {
            return; // A stale or duplicate page.
        }
        if offset == 0 {
            pull.reset = reset;
        } else if pull.reset != reset {
            c.pull = None;
            return;
        }
        let got = changes.len();
        pull.changes.extend(changes);
        if pull.changes.len() > total as usize {
            c.pull = None;
            return;
        }
        if pull.changes.len() == total as usize {
            let pull = c.pull.take().expect("pull in progress");
            if pull.reset {
                c.map.clear();
            }
            for change in pull.changes {
                match change {
                    Change::Peer(p) => {
                        c.map.insert(p.public_key, p);
                    }
                    Change::Removed(k) => {
                        c.map.remove(&k);
                    }
                }
            }
            c.known_version = pull.version;
            self.events
                .push_back(Event::PeerMap(c.map.values().cloned().collect()));
            return;
        }
        if got == 0 {
            c.pull = None; // No progress: start over rather than loop.
            return;
        }
        pull.asked_at = now;
        let msg = Self::page_request(pull, c.known_version);
        self.send(&msg);
    }

    fn page_request(pull: &Pull, known: u64) -> ToCoordinator {
        let offset = pull.changes.len() as u32;
        match pull.since {
            Some(_) => ToCoordinator::GetChanges {
                since: known,
                map_version: pull.version,
                offset,
            },
            None => ToCoordinator::GetPeers {
                map_version: pull.version,
                offset,
            },
        }
    }

    fn pull_if_needed(&mut self, now: Instant) {
        let State::Connected(c) = &mut self.state else {
            return;
        };
        let deltas = c.caps & caps::MAP_DELTAS != 0 && c.known_version != 0;
        let msg = match &mut c.pull {
            None if c.wanted_version > c.known_version => {
                let pull = Pull {
                    version: c.wanted_version,
                    since: deltas.then_some(c.known_version),
                    reset: false,
                    changes: Vec::new(),
                    asked_at: now,
                };
                let msg = Self::page_request(&pull, c.known_version);
                c.pull = Some(pull);
                msg
            }
            Some(p) if now >= p.asked_at + PAGE_TIMEOUT => {
                p.asked_at = now;
                Self::page_request(p, c.known_version)
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
        // Requests are padded to the size of what they earn: the coordinator never answers
        // with more bytes than a request had.
        let pad = match msg {
            ToCoordinator::GetPeers { .. } | ToCoordinator::GetChanges { .. } => MAX_PLAINTEXT,
            ToCoordinator::Punch { .. } => PUNCH_REQUEST_LEN,
            ToCoordinator::Heartbeat { .. } => HEARTBEAT_LEN,
            ToCoordinator::Goodbye => 0,
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
