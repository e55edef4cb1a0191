//! The data plane: one boringtun [`Tunn`] per peer, owned here and nowhere else. Packets from
//! the TUN are sealed for the peer that owns their destination mesh IP; datagrams from the
//! socket are matched to a peer, opened, and written to the TUN only if their inner source is
//! that peer's mesh IP.
//!
//! No IO and no allocation per packet: callers pass a reusable scratch buffer; datagrams to
//! send and packets for the TUN wait in a queue of pooled buffers ([`Mesh::poll_transmit`],
//! [`Mesh::poll_tun_write`]; a full queue drops the packet, as a NIC would), and peers that
//! need a coordinated punch in another ([`Mesh::poll_punch_request`]).
//!
//! Tunnels are built lazily: the peer map only says who may be talked to; a peer gets its
//! `Tunn`, path finder and probe key when there is traffic for it (a packet from the TUN, a
//! `node ping`) or from it (a handshake, a probe, a coordinated punch). A mesh of thousands of
//! nodes — or a flood of fake ones on an open coordinator — costs an idle node nothing.

mod lan_traffic;
mod peers;
mod probing;
mod relayed;

use probing::UserPing;
pub use probing::{PingReply, Via};

use crate::lan::{Lan, LanConfig, PeerGroups};
use crate::paths::{CandidateKind, PathFinder};
use crate::relays::{RelayClient, RelayInfo};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use ipnet::Ipv4Net;
use lanmesh_proto::log_limit::LogLimit;
use lanmesh_proto::messages::PeerInfo;
use lanmesh_proto::outbox::{Outbox, Transmit};
use lanmesh_proto::probe::ProbeKey;
use lanmesh_proto::rate::{KeyedLimiter, Rate, TokenBucket};
use lanmesh_proto::relay::SEND_HEADER;
use lanmesh_proto::replay::StampWindow;
use lanmesh_proto::stamp::{Stamps, WallClock};
use lanmesh_proto::PublicKey;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, trace};
use x25519_dalek::StaticSecret;

/// Keepalive interval that holds NAT and conntrack mappings open (Linux forgets idle UDP
/// flows after 30 s).
pub const KEEPALIVE_SECS: u16 = 25;
/// Handshakes per second before boringtun answers with cookies instead.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// A session older than this without a new handshake is dead (WireGuard's REJECT_AFTER_TIME
/// is 180 s; boringtun re-handshakes well before that on live paths).
const SESSION_ALIVE: Duration = Duration::from_secs(180);
/// A path counts as working while authenticated packets keep arriving at least this often
/// (keepalives every 25 s keep an idle path inside it).
const PATH_ALIVE: Duration = Duration::from_secs(35);
/// Scratch buffers must hold a full datagram plus WireGuard's overhead.
pub const SCRATCH_LEN: usize = 65_536;
/// Probes to addresses not known to be a peer's (LAN candidates, peer-reflexive ones), per
/// target IP address across all peers: a mesh must never flood a third party, whatever
/// addresses a peer reports or forges.
const UNVERIFIED_PROBES: Rate = Rate::every(6, 1000);
/// Target addresses with a probe budget remembered at most.
const MAX_PROBE_TARGETS: usize = 4096;

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    Relay,
    Connecting,
    /// No traffic either way yet: no tunnel (it is built on the first packet).
    Idle,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Relay => "relay",
            Path::Connecting => "connecting",
            Path::Idle => "idle",
        }
    }
}

/// A handshake initiation unanswered this long is sent again while data waits, a few times,
/// before boringtun's own 5 s retry takes over: found by the simulator — under 5 % loss a
/// third of first handshakes lose a packet, and the first ping then took 5 s and more.
const HANDSHAKE_RETRY: Duration = Duration::from_secs(1);
const QUICK_RETRIES: u32 = 4;
/// Data sent this recently waits for a handshake.
const DATA_WAITING: Duration = Duration::from_secs(10);
/// A peer counts as busy (short ticks) this long after data or a handshake.
const BUSY_AFTER_DATA: Duration = Duration::from_secs(5);

/// Without a direct path for this long, traffic goes through the home relay (and punching
/// goes on in the background; a direct path takes over as soon as one answers).
const RELAY_AFTER: Duration = Duration::from_millis(500);

struct Peer {
    info: PeerInfo,
    tunn: Tunn,
    /// `slot | generation << 16`: boringtun puts it (shifted by 8) on every packet for us.
    index: u32,
    /// Where WireGuard packets for this peer go.
    endpoint: Option<SocketAddr>,
    paths: PathFinder,
    probe_key: ProbeKey,
    /// Whether traffic goes through the home relay.
    relayed: bool,
    /// Since when the peer has had no direct path.
    no_direct_since: Option<Instant>,
    /// Which path was last reported (for "peer up/down" logs).
    reported: Path,
    /// The multicast groups the peer reported, and what we told it of ours.
    groups: PeerGroups,
    /// When the last handshake initiation went out, and how many were sent early (see
    /// [`HANDSHAKE_RETRY`]).
    last_initiation: Option<Instant>,
    quick_retries: u32,
}

impl Peer {
    fn session_alive(&self) -> bool {
        self.tunn
            .time_since_last_handshake()
            .is_some_and(|t| t < SESSION_ALIVE)
    }

    fn path(&self, now: Instant) -> Path {
        let fresh = self
            .paths
            .last_rx()
            .is_some_and(|t| now.saturating_duration_since(t) < PATH_ALIVE);
        if !self.session_alive() {
            Path::Connecting
        } else if self.relayed {
            Path::Relay
        } else if fresh && self.endpoint.is_some() {
            Path::Direct
        } else {
            Path::Connecting
        }
    }
}

/// Sends the WireGuard datagram at `scratch[SEND_HEADER..SEND_HEADER + n]` to `peer`: through
/// the home relay when the peer is relayed, else to its endpoint.
fn transmit(peer: &Peer, relays: &mut RelayClient, scratch: &mut [u8], n: usize, io: &mut Outbox) {
    if peer.relayed {
        if let Some((relay, len)) = relays.seal(&peer.info.public_key, scratch, n) {
            io.send_udp(relay, &scratch[..len]);
        }
    } else if let Some(ep) = peer.endpoint {
        io.send_udp(ep, &scratch[SEND_HEADER..SEND_HEADER + n]);
    }
}

/// The length of a datagram boringtun wrote for the network, if it wrote one.
fn written(r: TunnResult) -> Option<usize> {
    match r {
        TunnResult::WriteToNetwork(b) => Some(b.len()),
        _ => None,
    }
}

/// A snapshot of one peer for `node status`.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub info: PeerInfo,
    pub path: Path,
    pub endpoint: Option<SocketAddr>,
    /// The relay carrying the traffic, when relayed.
    pub relay: Option<String>,
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// What a [`Mesh`] starts from besides its key.
pub struct MeshConfig {
    pub keepalive_secs: u16,
    /// Probe counters and relay bind timestamps start above this (see
    /// `lanmesh_proto::stamp`).
    pub stamp_floor: u64,
    /// The wall clock at `now` (nanoseconds since the Unix epoch).
    pub wall_ns: u64,
    /// Seeds the nonces and transaction ids.
    pub seed: u64,
    /// Broadcast and multicast between nodes.
    pub lan: LanConfig,
}

pub struct Mesh {
    private: StaticSecret,
    public: x25519_dalek::PublicKey,
    me: PublicKey,
    keepalive_secs: u16,
    rate_limiter: Arc<RateLimiter>,
    /// This node's mesh address and network, once registered.
    identity: Option<(Ipv4Addr, Ipv4Net)>,
    /// Everyone the peer map lists (and that passed its checks).
    known: HashMap<PublicKey, PeerInfo>,
    known_by_ip: HashMap<Ipv4Addr, PublicKey>,
    /// Coordinated punches for peers the map did not show yet.
    early_punches: HashMap<PublicKey, (lanmesh_proto::messages::Candidates, Instant)>,
    /// Peers with a tunnel.
    slots: Vec<Option<Peer>>,
    generations: Vec<u8>,
    by_key: HashMap<PublicKey, usize>,
    by_ip: HashMap<Ipv4Addr, usize>,
    relays: RelayClient,
    user_pings: Vec<UserPing>,
    ping_replies: std::collections::VecDeque<PingReply>,
    probe_budget: KeyedLimiter<IpAddr>,
    /// The counters of the pings each peer sent us: each is answered once.
    ping_windows: HashMap<PublicKey, StampWindow>,
    legacy_pongs: KeyedLimiter<PublicKey>,
    first_contacts: TokenBucket,
    stamps: Stamps,
    clock: WallClock,
    rng: StdRng,
    drops: LogLimit,
    epoch: Instant,
    /// Broadcast and multicast: limits, counters, our groups.
    lan: Lan,
    /// Reused: the peers a LAN packet goes to.
    fanout: Vec<PublicKey>,
    /// What the mesh wants sent and written to the TUN.
    out: Outbox,
    /// Peers that need a coordinated punch (the coordinator arranges it).
    punch_requests: std::collections::VecDeque<PublicKey>,
}

impl Mesh {
    pub fn new(private: StaticSecret, config: MeshConfig, now: Instant) -> Mesh {
        crate::wg_clock::set(now);
        let public = x25519_dalek::PublicKey::from(&private);
        let clock = WallClock::new(now, config.wall_ns);
        let mut rng = StdRng::seed_from_u64(config.seed);
        Mesh {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            relays: RelayClient::new(
                private.clone(),
                config.stamp_floor,
                clock,
                rand::RngCore::next_u64(&mut rng),
            ),
            private,
            public,
            me: PublicKey::from(public),
            keepalive_secs: config.keepalive_secs,
            identity: None,
            known: HashMap::new(),
            known_by_ip: HashMap::new(),
            early_punches: HashMap::new(),
            slots: Vec::new(),
            generations: Vec::new(),
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
            user_pings: Vec::new(),
            ping_replies: std::collections::VecDeque::new(),
            probe_budget: KeyedLimiter::new(UNVERIFIED_PROBES, MAX_PROBE_TARGETS),
            ping_windows: HashMap::new(),
            legacy_pongs: KeyedLimiter::new(probing::LEGACY_PONGS, MAX_PROBE_TARGETS),
            first_contacts: TokenBucket::full(probing::FIRST_CONTACTS, 0),
            stamps: Stamps::new(config.stamp_floor),
            clock,
            rng,
            drops: LogLimit::new(5),
            epoch: now,
            lan: Lan::new(config.lan, now),
            fanout: Vec::new(),
            out: Outbox::default(),
            punch_requests: std::collections::VecDeque::new(),
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.poll_transmit()
    }

    /// The next packet for the TUN.
    pub fn poll_tun_write(&mut self) -> Option<Vec<u8>> {
        self.out.poll_tun_write()
    }

    /// Gives the buffer of a polled datagram or packet back.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        self.out.recycle(buffer)
    }

    /// The next peer to ask the coordinator for a coordinated punch with.
    pub fn poll_punch_request(&mut self) -> Option<PublicKey> {
        self.punch_requests.pop_front()
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The relays the coordinator lists.
    pub fn set_relays(&mut self, now: Instant, relays: Vec<RelayInfo>) {
        crate::wg_clock::set(now);
        self.relays.set_relays(now, relays);
    }

    /// Where the relays listen (they answer STUN too).
    pub fn relay_addrs(&self) -> Vec<SocketAddr> {
        self.relays.infos().map(|r| r.addr).collect()
    }

    pub fn relay_latencies(&self) -> Vec<(String, Option<Duration>)> {
        self.relays
            .latencies()
            .into_iter()
            .map(|(r, rtt)| (r.name.clone(), rtt))
            .collect()
    }

    fn dropped(&mut self, now: Instant, why: std::fmt::Arguments) {
        if self.drops.allow(self.ms(now)) {
            debug!("dropped packet: {why}");
        }
    }

    /// Sends a path probe to `addr`, within the per-address budget when the address is not
    /// known to be the peer's. Returns whether it went out.
    fn send_probe(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        verified: bool,
        datagram: &[u8],
    ) -> bool {
        if !verified {
            let ms = self.ms(now);
            if !self.probe_budget.take(&addr.ip(), ms) {
                self.dropped(
                    now,
                    format_args!("probe to {addr}: over the budget for unverified addresses"),
                );
                return false;
            }
        }
        self.out.send_udp(addr, datagram);
        true
    }

    /// Starts a handshake with the peer in `slot` now (over its current path), replacing one
    /// in progress.
    fn initiate(&mut self, now: Instant, slot: usize, scratch: &mut [u8]) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        let out = &mut scratch[SEND_HEADER..];
        if let Some(n) = written(peer.tunn.format_handshake_initiation(out, true)) {
            peer.last_initiation = Some(now);
            transmit(peer, &mut self.relays, scratch, n, &mut self.out);
        }
    }

    /// Sends the handshake again when data waits for it and the last initiation went
    /// unanswered for [`HANDSHAKE_RETRY`] (a few times; then boringtun retries every 5 s).
    fn retry_handshake(&mut self, now: Instant, slot: usize, scratch: &mut [u8]) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        if peer.session_alive() {
            peer.quick_retries = 0;
            return;
        }
        let waiting = peer
            .paths
            .last_data_tx()
            .is_some_and(|t| now.saturating_duration_since(t) < DATA_WAITING);
        let has_path = peer.relayed || peer.endpoint.is_some();
        let due = peer
            .last_initiation
            .is_some_and(|t| now.saturating_duration_since(t) >= HANDSHAKE_RETRY);
        if waiting && has_path && due && peer.quick_retries < QUICK_RETRIES {
            peer.quick_retries += 1;
            self.initiate(now, slot, scratch);
        }
    }

    /// A packet read from the TUN.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8], scratch: &mut [u8]) {
        crate::wg_clock::set(now);
        let Some(dst) = ipv4_destination(packet) else {
            return; // IPv6 and junk: no IPv6 mesh addresses yet.
        };
        if let Some(lan_dst) = self.lan.classify(dst) {
            return self.fan_out(now, lan_dst, packet, scratch);
        }
        let slot = match self.by_ip.get(&dst) {
            Some(&slot) => slot,
            None => match self.known_by_ip.get(&dst).copied() {
                Some(key) => match self.tunnel_for_traffic(now, &key) {
                    Some(slot) => slot,
                    None => return,
                },
                None => return self.dropped(now, format_args!("no peer has mesh IP {dst}")),
            },
        };
        self.seal_and_send(now, slot, packet, scratch);
    }

    /// The peer's tunnel, for a packet to it. The first packet for an idle peer builds its
    /// tunnel and has both sides punch at once.
    fn tunnel_for_traffic(&mut self, now: Instant, key: &PublicKey) -> Option<usize> {
        if let Some(&slot) = self.by_key.get(key) {
            return Some(slot);
        }
        let slot = self.ensure(now, key)?;
        let peer = self.slots[slot].as_mut().expect("just made");
        peer.paths.want_coordinated_punch(now);
        Some(slot)
    }

    /// Seals `packet` for the peer in `slot` and sends it on the peer's path.
    fn seal_and_send(&mut self, now: Instant, slot: usize, packet: &[u8], scratch: &mut [u8]) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        peer.paths.on_data_tx(now);
        trace!(peer = %peer.info.name, len = packet.len(), relayed = peer.relayed, "packet from the TUN");
        match peer.tunn.encapsulate(packet, &mut scratch[SEND_HEADER..]) {
            TunnResult::WriteToNetwork(b) => {
                let n = b.len();
                if b[0] == 1 {
                    // No session yet: boringtun queued the packet and started a handshake.
                    peer.last_initiation = Some(now);
                }
                transmit(peer, &mut self.relays, scratch, n, &mut self.out);
            }
            TunnResult::Err(e) => self.dropped(now, format_args!("encapsulate: {e:?}")),
            _ => {}
        }
    }

    /// A WireGuard datagram from the socket.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        scratch: &mut [u8],
    ) {
        crate::wg_clock::set(now);
        let packet = match self
            .rate_limiter
            .verify_packet(Some(src.ip()), datagram, scratch)
        {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                // Under handshake load: a 64-byte cookie, smaller than the 148-byte initiation.
                self.out.send_udp(src, cookie);
                return;
            }
            Err(_) => return self.dropped(now, format_args!("unverified datagram from {src}")),
        };
        let slot = match &packet {
            Packet::HandshakeInit(p) => {
                match parse_handshake_anon(&self.private, &self.public, p) {
                    // A known peer that had no tunnel yet gets one now.
                    Ok(h) => self.ensure(now, &PublicKey(h.peer_static_public)),
                    Err(_) => None,
                }
            }
            Packet::HandshakeResponse(p) => self.slot_of_index(p.receiver_idx),
            Packet::PacketCookieReply(p) => self.slot_of_index(p.receiver_idx),
            Packet::PacketData(p) => self.slot_of_index(p.receiver_idx),
        };
        let is_data = matches!(packet, Packet::PacketData(_));
        let Some(slot) = slot else {
            return self.dropped(now, format_args!("datagram from {src} matches no peer"));
        };
        let peer = self.slots[slot].as_mut().expect("indexed slot is filled");
        trace!(peer = %peer.info.name, %src, len = datagram.len(), "WireGuard datagram");
        let authenticated = match peer.tunn.decapsulate(Some(src.ip()), datagram, scratch) {
            TunnResult::WriteToNetwork(b) => {
                // A handshake response (type 2) or keepalive (4) means the datagram was
                // genuine; a cookie (3) means it was only rate limited.
                let genuine = b.first() != Some(&3);
                self.out.send_udp(src, b);
                genuine
            }
            TunnResult::WriteToTunnelV4(inner, inner_src) => {
                let (lan, drops) = (&mut self.lan, &mut self.drops);
                lan_traffic::inner_to_tun(
                    lan,
                    drops,
                    self.epoch,
                    peer,
                    now,
                    (inner, inner_src),
                    &mut self.out,
                );
                true
            }
            TunnResult::WriteToTunnelV6(..) => true,
            TunnResult::Done => is_data,
            TunnResult::Err(WireGuardError::DuplicateCounter) => false,
            TunnResult::Err(e) => {
                if self.drops.allow((now - self.epoch).as_millis() as u64) {
                    debug!(%src, "decapsulate failed: {e:?}");
                }
                false
            }
        };
        if authenticated && peer.session_alive() {
            // Packets queued while the handshake ran go out now — but only once a session is
            // current: asked earlier (say, right after answering the peer's crossing
            // initiation), boringtun starts yet another handshake, which voids the one the
            // peer is answering (found by the simulator: the first packet took 3 round trips
            // more).
            while let TunnResult::WriteToNetwork(b) = peer.tunn.decapsulate(None, &[], scratch) {
                self.out.send_udp(src, b);
            }
        }
        if authenticated {
            // Roaming: follow the peer to wherever its authenticated packets come from.
            if let Some(won) = peer.paths.on_authenticated_rx(now, src) {
                if peer.endpoint != Some(won.path.addr) {
                    info!(
                        peer = %peer.info.name,
                        "direct path: WireGuard from {src} ({}), after {} ms",
                        kind_name(won.path.kind),
                        won.after.as_millis()
                    );
                    peer.endpoint = Some(won.path.addr);
                }
            }
        }
    }

    fn slot_of_index(&self, receiver_idx: u32) -> Option<usize> {
        let index = receiver_idx >> 8;
        let slot = (index & 0xffff) as usize;
        match self.slots.get(slot) {
            Some(Some(peer)) if peer.index == index => Some(slot),
            _ => None,
        }
    }

    /// Drives WireGuard's timers (call every ~250 ms) and reports peers coming up or down.
    pub fn tick(&mut self, now: Instant, scratch: &mut [u8]) {
        crate::wg_clock::set(now);
        self.rate_limiter.reset_count();
        self.announce_groups(now, scratch);
        for slot in 0..self.slots.len() {
            self.retry_handshake(now, slot, scratch);
        }
        for peer in self.slots.iter_mut().flatten() {
            if let Some(n) = written(peer.tunn.update_timers(&mut scratch[SEND_HEADER..])) {
                if scratch[SEND_HEADER] == 1 {
                    peer.last_initiation = Some(now);
                }
                transmit(peer, &mut self.relays, scratch, n, &mut self.out);
            }
            let path = peer.path(now);
            if path != peer.reported {
                peer.reported = path;
                match path {
                    Path::Direct => {
                        let ep = peer.endpoint.map(|e| e.to_string()).unwrap_or_default();
                        info!(peer = %peer.info.name, mesh_ip = %peer.info.mesh_ip, endpoint = %ep, "peer up (direct)");
                    }
                    Path::Relay => {
                        let relay = self
                            .relays
                            .home()
                            .map(|r| r.name.clone())
                            .unwrap_or_default();
                        info!(peer = %peer.info.name, mesh_ip = %peer.info.mesh_ip, %relay, "peer up (via relay)");
                    }
                    Path::Idle => {}
                    Path::Connecting => {
                        info!(peer = %peer.info.name, "peer down (no working path)")
                    }
                }
            }
        }
    }

    /// Whether any peer had data lately or waits for a handshake: WireGuard's timers then
    /// need the short tick (quick handshake retries, path reports).
    pub fn is_busy(&self, now: Instant) -> bool {
        let recent = |t: Option<Instant>| {
            t.is_some_and(|t| now.saturating_duration_since(t) < BUSY_AFTER_DATA)
        };
        self.slots.iter().flatten().any(|p| {
            recent(p.paths.last_data_tx())
                || recent(p.paths.last_rx())
                || (!p.session_alive() && recent(p.last_initiation))
        })
    }

    /// The keepalive interval each peer's tunnel runs with.
    #[cfg(test)]
    pub fn keepalives(&self) -> Vec<Option<u16>> {
        self.slots
            .iter()
            .flatten()
            .map(|p| p.tunn.persistent_keepalive())
            .collect()
    }

    pub fn peers(&self, now: Instant) -> Vec<PeerView> {
        crate::wg_clock::set(now);
        let idle = self
            .known
            .values()
            .filter(|info| !self.by_key.contains_key(&info.public_key))
            .map(|info| PeerView {
                info: info.clone(),
                path: Path::Idle,
                endpoint: None,
                relay: None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            });
        let mut views: Vec<PeerView> = self
            .slots
            .iter()
            .flatten()
            .map(|p| {
                let (last, tx, rx, _, _) = p.tunn.stats();
                let path = p.path(now);
                let relay = self.relays.home().filter(|_| path == Path::Relay);
                PeerView {
                    info: p.info.clone(),
                    path,
                    endpoint: match relay {
                        Some(r) => Some(r.addr),
                        None => p.endpoint,
                    },
                    relay: relay.map(|r| r.name.clone()),
                    last_handshake: last,
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                }
            })
            .chain(idle)
            .collect();
        views.sort_by_key(|v| v.info.mesh_ip);
        views
    }
}

fn kind_name(kind: CandidateKind) -> &'static str {
    match kind {
        CandidateKind::Local => "lan",
        CandidateKind::Public => "public",
        CandidateKind::PeerReflexive => "peer-reflexive",
    }
}

/// The source of an IPv4 packet, if it is one.
pub fn ipv4_source(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[12], packet[13], packet[14], packet[15],
    ))
}

/// The destination of an IPv4 packet, if it is one.
pub fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}
