//! The data plane: one boringtun [`Tunn`] per peer, owned here and nowhere else. Packets from
//! the TUN are sealed for the peer that owns their destination mesh IP; datagrams from the
//! socket are matched to a peer, opened, and written to the TUN only if their inner source is
//! that peer's mesh IP.
//!
//! No IO and no allocation per packet: callers pass a reusable scratch buffer and an [`Io`]
//! that moves bytes (non-blocking; a full queue drops the packet, as a NIC would).

mod probing;
mod relayed;

use probing::UserPing;
pub use probing::{PingReply, Via};

use crate::paths::{CandidateKind, PathFinder};
use crate::relays::{RelayClient, RelayInfo};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use lanmesh_proto::log_limit::LogLimit;
use lanmesh_proto::messages::PeerInfo;
use lanmesh_proto::probe::ProbeKey;
use lanmesh_proto::relay::SEND_HEADER;
use lanmesh_proto::PublicKey;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, trace};
use x25519_dalek::StaticSecret;

/// Where sealed and opened packets go.
pub trait Io {
    fn send_udp(&mut self, dst: SocketAddr, datagram: &[u8]);
    fn write_tun(&mut self, packet: &[u8]);
}

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

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    Relay,
    Connecting,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Relay => "relay",
            Path::Connecting => "connecting",
        }
    }
}

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
fn transmit(peer: &Peer, relays: &mut RelayClient, scratch: &mut [u8], n: usize, io: &mut impl Io) {
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

pub struct Mesh {
    private: StaticSecret,
    public: x25519_dalek::PublicKey,
    me: PublicKey,
    keepalive_secs: u16,
    rate_limiter: Arc<RateLimiter>,
    slots: Vec<Option<Peer>>,
    generations: Vec<u8>,
    by_key: HashMap<PublicKey, usize>,
    by_ip: HashMap<Ipv4Addr, usize>,
    relays: RelayClient,
    user_pings: Vec<UserPing>,
    ping_replies: Vec<PingReply>,
    drops: LogLimit,
    epoch: Instant,
}

impl Mesh {
    pub fn new(private: StaticSecret, keepalive_secs: u16, now: Instant) -> Mesh {
        let public = x25519_dalek::PublicKey::from(&private);
        Mesh {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            relays: RelayClient::new(private.clone()),
            private,
            public,
            me: PublicKey::from(public),
            keepalive_secs,
            slots: Vec::new(),
            generations: Vec::new(),
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
            user_pings: Vec::new(),
            ping_replies: Vec::new(),
            drops: LogLimit::new(5),
            epoch: now,
        }
    }

    /// The relays the coordinator lists.
    pub fn set_relays(&mut self, now: Instant, relays: Vec<RelayInfo>) {
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
        if self.drops.allow((now - self.epoch).as_millis() as u64) {
            debug!("dropped packet: {why}");
        }
    }

    /// Brings the peer set in line with the coordinator's map. Returns the peers that joined
    /// online: the coordinator should have both sides of each punch at once.
    pub fn apply_peer_map(
        &mut self,
        now: Instant,
        peers: Vec<PeerInfo>,
        scratch: &mut [u8],
        io: &mut impl Io,
    ) -> Vec<PublicKey> {
        let wanted: HashMap<PublicKey, PeerInfo> =
            peers.into_iter().map(|p| (p.public_key, p)).collect();
        let gone: Vec<PublicKey> = self
            .by_key
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            self.remove(&key);
        }
        let mut joined = Vec::new();
        for (key, info) in wanted {
            match self.by_key.get(&key) {
                Some(&slot) => self.update(now, slot, info),
                None => {
                    if info.online {
                        joined.push(key);
                    }
                    self.add(now, info, scratch, io);
                }
            }
        }
        joined
    }

    fn add(&mut self, now: Instant, info: PeerInfo, scratch: &mut [u8], io: &mut impl Io) {
        if info.public_key == PublicKey::from(self.public) {
            return;
        }
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(s) => s,
            None if self.slots.len() < 1 << 16 => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() - 1
            }
            None => return,
        };
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        let index = slot as u32 | (self.generations[slot] as u32) << 16;
        let tunn = Tunn::new(
            self.private.clone(),
            info.public_key.into(),
            None,
            Some(self.keepalive_secs),
            index,
            Some(self.rate_limiter.clone()),
        );
        info!(peer = %info.name, mesh_ip = %info.mesh_ip, "peer added");
        if let Some(old) = self.by_ip.insert(info.mesh_ip, slot) {
            debug!(slot = old, "mesh IP moved to a new peer");
        }
        self.by_key.insert(info.public_key, slot);
        let mut paths = PathFinder::new(rand::random());
        paths.set_candidates(&info.candidates);
        let online = info.online;
        if online {
            // Both sides learn of each other at about the same time and punch together.
            paths.start_punch(now);
        }
        let probe_key = ProbeKey::derive(&self.private, &self.me, &info.public_key);
        self.slots[slot] = Some(Peer {
            endpoint: paths.fallback(),
            info,
            tunn,
            index,
            paths,
            probe_key,
            relayed: false,
            no_direct_since: Some(now),
            reported: Path::Connecting,
        });
        if online {
            self.initiate(slot, false, scratch, io);
            self.handle_timeout(now, scratch, io, &mut |_| {});
        }
    }

    fn update(&mut self, now: Instant, slot: usize, info: PeerInfo) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        if info.candidates != peer.info.candidates {
            peer.paths.set_candidates(&info.candidates);
            if peer.paths.best().is_none() {
                peer.endpoint = peer.paths.fallback();
            }
            if info.online {
                peer.paths.start_punch(now);
            }
        } else if info.online && !peer.info.online && peer.paths.best().is_none() {
            peer.paths.start_punch(now);
        }
        if peer.info.mesh_ip != info.mesh_ip {
            self.by_ip.remove(&peer.info.mesh_ip);
            self.by_ip.insert(info.mesh_ip, slot);
        }
        peer.info = info;
    }

    fn remove(&mut self, key: &PublicKey) {
        let Some(slot) = self.by_key.remove(key) else {
            return;
        };
        if let Some(peer) = self.slots[slot].take() {
            info!(peer = %peer.info.name, "peer removed");
            if self.by_ip.get(&peer.info.mesh_ip) == Some(&slot) {
                self.by_ip.remove(&peer.info.mesh_ip);
            }
        }
    }

    /// Starts a handshake with the peer in `slot` (over its current path).
    fn initiate(&mut self, slot: usize, force: bool, scratch: &mut [u8], io: &mut impl Io) {
        let Some(peer) = self.slots[slot].as_mut() else {
            return;
        };
        let out = &mut scratch[SEND_HEADER..];
        if let Some(n) = written(peer.tunn.format_handshake_initiation(out, force)) {
            transmit(peer, &mut self.relays, scratch, n, io);
        }
    }

    /// A packet read from the TUN.
    pub fn handle_tun_packet(
        &mut self,
        now: Instant,
        packet: &[u8],
        scratch: &mut [u8],
        io: &mut impl Io,
    ) {
        let Some(dst) = ipv4_destination(packet) else {
            return; // IPv6 and junk: no IPv6 mesh addresses yet.
        };
        let Some(&slot) = self.by_ip.get(&dst) else {
            return self.dropped(now, format_args!("no peer has mesh IP {dst}"));
        };
        let peer = self.slots[slot].as_mut().expect("indexed slot is filled");
        peer.paths.on_data_tx(now);
        trace!(peer = %peer.info.name, len = packet.len(), relayed = peer.relayed, "packet from the TUN");
        match peer.tunn.encapsulate(packet, &mut scratch[SEND_HEADER..]) {
            TunnResult::WriteToNetwork(b) => {
                let n = b.len();
                transmit(peer, &mut self.relays, scratch, n, io);
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
        io: &mut impl Io,
    ) {
        let packet = match self
            .rate_limiter
            .verify_packet(Some(src.ip()), datagram, scratch)
        {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                // Under handshake load: a 64-byte cookie, smaller than the 148-byte initiation.
                io.send_udp(src, cookie);
                return;
            }
            Err(_) => return self.dropped(now, format_args!("unverified datagram from {src}")),
        };
        let slot = match &packet {
            Packet::HandshakeInit(p) => parse_handshake_anon(&self.private, &self.public, p)
                .ok()
                .and_then(|h| self.by_key.get(&PublicKey(h.peer_static_public)).copied()),
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
                io.send_udp(src, b);
                // Packets queued while the handshake ran go out now.
                while let TunnResult::WriteToNetwork(b) = peer.tunn.decapsulate(None, &[], scratch)
                {
                    io.send_udp(src, b);
                }
                genuine
            }
            TunnResult::WriteToTunnelV4(inner, inner_src) => {
                if inner_src == peer.info.mesh_ip {
                    io.write_tun(inner);
                } else if self.drops.allow((now - self.epoch).as_millis() as u64) {
                    debug!(peer = %peer.info.name, %inner_src, "dropped inner packet with a spoofed source");
                }
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
    pub fn tick(&mut self, now: Instant, scratch: &mut [u8], io: &mut impl Io) {
        self.rate_limiter.reset_count();
        for peer in self.slots.iter_mut().flatten() {
            if let Some(n) = written(peer.tunn.update_timers(&mut scratch[SEND_HEADER..])) {
                transmit(peer, &mut self.relays, scratch, n, io);
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
                    Path::Connecting => {
                        info!(peer = %peer.info.name, "peer down (no working path)")
                    }
                }
            }
        }
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

/// The destination of an IPv4 packet, if it is one.
pub fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}
