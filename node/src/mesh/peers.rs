//! The peer map: who may be talked to (checked before it is believed), and building a peer's
//! tunnel when there is traffic for it.

use super::{Mesh, Path, Peer};
use crate::lan::PeerGroups;
use crate::paths::PathFinder;
use boringtun::noise::Tunn;
use ipnet::Ipv4Net;
use lanmesh_proto::messages::{Candidates, PeerInfo, Role};
use lanmesh_proto::probe::ProbeKey;
use lanmesh_proto::replay::StampWindow;
use lanmesh_proto::PublicKey;
use rand::RngCore;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Tunnels kept at most (each costs a few KiB).
const MAX_TUNNELS: usize = 1 << 16;
/// Ping counter windows kept at most (of peers known now, and then of peers gone).
const MAX_PING_WINDOWS: usize = 1 << 16;
/// Punches for peers the map does not show yet, remembered at most, and for how long.
const MAX_EARLY_PUNCHES: usize = 256;
const EARLY_PUNCH_FOR: Duration = Duration::from_secs(10);

impl Mesh {
    /// This node's mesh address and network (from its registration): peer map entries are
    /// checked against them.
    pub fn set_identity(&mut self, mesh_ip: Ipv4Addr, network: Ipv4Net) {
        self.identity = Some((mesh_ip, network));
        self.lan.set_network(network);
    }

    fn network(&self) -> Ipv4Net {
        self.identity
            .map(|(_, n)| n)
            .unwrap_or_else(|| lanmesh_proto::DEFAULT_NETWORK.parse().expect("valid"))
    }

    /// Why a peer map entry cannot be believed, if it cannot.
    fn refuse(
        &self,
        p: &PeerInfo,
        keys: &HashSet<PublicKey>,
        ips: &HashSet<Ipv4Addr>,
    ) -> Option<&'static str> {
        if p.public_key == self.me {
            return Some("it is this node's own key");
        }
        if keys.contains(&p.public_key) {
            return Some("its key is listed twice");
        }
        match p.role {
            Role::Relay => p
                .candidates
                .public
                .is_none()
                .then_some("a relay without an address"),
            Role::Node => {
                let (own, network) = match self.identity {
                    Some((ip, net)) => (Some(ip), net),
                    None => (None, self.network()),
                };
                if !network.contains(&p.mesh_ip)
                    || p.mesh_ip == network.network()
                    || p.mesh_ip == network.broadcast()
                {
                    Some("its mesh IP is outside the mesh network")
                } else if Some(p.mesh_ip) == own {
                    Some("its mesh IP is this node's own")
                } else if ips.contains(&p.mesh_ip) {
                    Some("its mesh IP is listed twice")
                } else {
                    None
                }
            }
        }
    }

    /// Brings the peer set in line with the coordinator's map (relays are taken out by the
    /// caller). Entries that make no sense are refused and logged. No tunnel is built here.
    pub fn apply_peer_map(&mut self, now: Instant, peers: Vec<PeerInfo>) {
        crate::wg_clock::set(now);
        let mut keys = HashSet::new();
        let mut ips = HashSet::new();
        let mut wanted: HashMap<PublicKey, PeerInfo> = HashMap::new();
        let mut refused = 0;
        for p in peers {
            if let Some(why) = self.refuse(&p, &keys, &ips) {
                refused += 1;
                if self.drops.allow(self.ms(now)) {
                    warn!(peer = %p.name, mesh_ip = %p.mesh_ip, "refused a peer map entry: {why}");
                }
                continue;
            }
            keys.insert(p.public_key);
            ips.insert(p.mesh_ip);
            wanted.insert(p.public_key, p);
        }
        if refused > 0 {
            debug!(refused, "peer map entries refused");
        }
        let gone: Vec<PublicKey> = self
            .known
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            self.remove(&key);
        }
        for (key, info) in wanted {
            if !self.known.contains_key(&key) {
                info!(peer = %info.name, mesh_ip = %info.mesh_ip, "peer added");
            }
            let early = self
                .early_punches
                .remove(&key)
                .filter(|(_, at)| now.saturating_duration_since(*at) < EARLY_PUNCH_FOR);
            if let Some(old) = self.known.get(&key) {
                if old.mesh_ip != info.mesh_ip {
                    self.known_by_ip.remove(&old.mesh_ip);
                }
            }
            self.known_by_ip.insert(info.mesh_ip, key);
            if let Some(&slot) = self.by_key.get(&key) {
                self.update(now, slot, info.clone());
            }
            self.known.insert(key, info);
            if let Some((candidates, _)) = early {
                if let Some(slot) = self.ensure(now, &key) {
                    let peer = self.slots[slot].as_mut().expect("just made");
                    peer.paths.set_candidates(&candidates);
                    peer.paths.start_punch(now);
                }
            }
        }
        self.early_punches
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < EARLY_PUNCH_FOR);
    }

    /// The counters of the pings `key` sent us (kept when its tunnel or map entry goes, so a
    /// replay of an old ping stays a replay; those of forgotten peers are bounded).
    pub(super) fn ping_window(&mut self, key: &PublicKey) -> &mut StampWindow {
        if !self.ping_windows.contains_key(key) && self.ping_windows.len() >= MAX_PING_WINDOWS {
            let known = &self.known;
            let forgotten = self
                .ping_windows
                .keys()
                .find(|k| !known.contains_key(k))
                .copied();
            if let Some(k) = forgotten {
                self.ping_windows.remove(&k);
            }
        }
        self.ping_windows.entry(*key).or_default()
    }

    /// Remembers a coordinated punch for a peer the map does not show yet.
    pub(super) fn early_punch(&mut self, now: Instant, key: PublicKey, candidates: &Candidates) {
        if self.early_punches.len() >= MAX_EARLY_PUNCHES && !self.early_punches.contains_key(&key) {
            return;
        }
        self.early_punches.insert(key, (candidates.clone(), now));
    }

    /// The peer's tunnel, built now if the peer is known and has none yet.
    pub(super) fn ensure(&mut self, now: Instant, key: &PublicKey) -> Option<usize> {
        if let Some(&slot) = self.by_key.get(key) {
            return Some(slot);
        }
        let info = self.known.get(key)?.clone();
        if self.by_key.len() >= MAX_TUNNELS {
            return None;
        }
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() - 1
            }
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
        debug!(peer = %info.name, "tunnel built");
        if let Some(old) = self.by_ip.insert(info.mesh_ip, slot) {
            debug!(slot = old, "mesh IP moved to a new peer");
        }
        self.by_key.insert(info.public_key, slot);
        let mut seed = [0u8; 8];
        self.rng.fill_bytes(&mut seed);
        let mut paths = PathFinder::new(seed, self.network());
        paths.set_candidates(&info.candidates);
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
            groups: PeerGroups::default(),
            last_initiation: None,
            quick_retries: 0,
        });
        Some(slot)
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
        if let Some(info) = self.known.remove(key) {
            if self.known_by_ip.get(&info.mesh_ip) == Some(key) {
                self.known_by_ip.remove(&info.mesh_ip);
            }
            info!(peer = %info.name, "peer removed");
        }
        let Some(slot) = self.by_key.remove(key) else {
            return;
        };
        if let Some(peer) = self.slots[slot].take() {
            if self.by_ip.get(&peer.info.mesh_ip) == Some(&slot) {
                self.by_ip.remove(&peer.info.mesh_ip);
            }
        }
    }
}
