//! The coordinator's view of the mesh: which nodes exist, their mesh IPs and names, where they
//! were last seen and whether they are online. Pure: no IO, time comes in as Unix milliseconds.
//!
//! Every change that peers must hear about bumps `map_version` and is remembered by version,
//! so a node that holds the map at version `v` pulls only what changed since (tombstones keep
//! removals; past [`MAX_TOMBSTONES`] of them, old versions get the whole map instead). What
//! peers see of a node (online, public endpoint, interface endpoints) changes at most at a
//! per-node rate: a node that flaps its endpoints costs the mesh one small delta per
//! [`CHANGE_RATE`] token, never a map pull per flap.

use ipnet::Ipv4Net;
use lanmesh_proto::messages::{
    encoded_len, plausible_local, Candidates, Change, PeerInfo, Role, MAX_ENDPOINTS, MAX_NAME_LEN,
    PAGE_BUDGET,
};
use lanmesh_proto::rate::{Rate, TokenBucket};
use lanmesh_proto::PublicKey;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

/// What peers see of a node may change this often: a burst for a node that comes online,
/// moves and reports its addresses, then one change every 10 s.
pub const CHANGE_RATE: Rate = Rate::every(4, 10_000);
/// Removals remembered for map deltas.
pub const MAX_TOMBSTONES: usize = 4096;

/// One registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub public_key: PublicKey,
    pub name: String,
    /// A node's mesh address; relays have none.
    pub mesh_ip: Option<Ipv4Addr>,
    pub role: Role,
    /// Its public endpoint: an address that proved it receives for the node.
    pub endpoint: Option<SocketAddr>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// The newest Hello timestamp accepted from it: older or equal ones are replays.
    pub hello_ts: u64,
}

/// What peers see of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Shown {
    online: bool,
    endpoint: Option<SocketAddr>,
    local: Vec<SocketAddr>,
}

#[derive(Debug, Clone)]
struct Entry {
    record: NodeRecord,
    online: bool,
    /// The node's plausible interface endpoints, as it last reported them (not stored: a node
    /// reports them again whenever it connects).
    local: Vec<SocketAddr>,
    shown: Shown,
    /// The map version of the last change peers saw.
    version: u64,
    changes: TokenBucket,
    /// What peers see lags behind (waiting for a change token).
    pending: bool,
}

impl Entry {
    fn actual(&self) -> Shown {
        Shown {
            online: self.online,
            endpoint: self.record.endpoint,
            local: self.local.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("the mesh network {0} has no free address left")]
    NetworkFull(Ipv4Net),
}

pub struct Registry {
    network: Ipv4Net,
    offline_after_ms: u64,
    nodes: HashMap<PublicKey, Entry>,
    by_ip: BTreeMap<Ipv4Addr, PublicKey>,
    relays: BTreeSet<PublicKey>,
    names: HashSet<String>,
    /// Addresses and names promised to admissions in progress.
    reserved_ips: HashSet<Ipv4Addr>,
    reserved_names: HashSet<String>,
    map_version: u64,
    /// (version of its last change, key) for every node: what changed since a version.
    by_version: BTreeSet<(u64, PublicKey)>,
    tombstones: BTreeMap<u64, PublicKey>,
    /// Deltas are complete for versions at or above this.
    delta_floor: u64,
}

impl Registry {
    pub fn new(network: Ipv4Net, offline_after_ms: u64) -> Registry {
        Registry {
            network,
            offline_after_ms,
            nodes: HashMap::new(),
            by_ip: BTreeMap::new(),
            relays: BTreeSet::new(),
            names: HashSet::new(),
            reserved_ips: HashSet::new(),
            reserved_names: HashSet::new(),
            map_version: 1,
            by_version: BTreeSet::new(),
            tombstones: BTreeMap::new(),
            delta_floor: 1,
        }
    }

    pub fn network(&self) -> Ipv4Net {
        self.network
    }

    pub fn map_version(&self) -> u64 {
        self.map_version
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Registered mesh nodes (relays not counted).
    pub fn node_count(&self) -> usize {
        self.by_ip.len()
    }

    pub fn get(&self, key: &PublicKey) -> Option<&NodeRecord> {
        self.nodes.get(key).map(|e| &e.record)
    }

    pub fn is_online(&self, key: &PublicKey) -> bool {
        self.nodes.get(key).is_some_and(|e| e.online)
    }

    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.nodes.keys()
    }

    /// Records a change of `key` that peers see.
    fn bump(&mut self, key: &PublicKey) {
        self.map_version += 1;
        if let Some(e) = self.nodes.get_mut(key) {
            self.by_version.remove(&(e.version, *key));
            e.version = self.map_version;
            self.by_version.insert((e.version, *key));
        }
    }

    /// Makes the record for a new node: the lowest free mesh IP (skipping addresses ending in
    /// .0 and .255, which some systems refuse as host addresses; relays get none) and a unique
    /// name derived from the one asked for. Does not insert it (see [`Registry::reserve`]).
    pub fn allocate(
        &self,
        public_key: PublicKey,
        role: Role,
        requested_name: &str,
        endpoint: Option<SocketAddr>,
        now_ms: u64,
    ) -> Result<NodeRecord, AllocError> {
        let mesh_ip = match role {
            Role::Node => Some(
                self.free_ip()
                    .ok_or(AllocError::NetworkFull(self.network))?,
            ),
            Role::Relay => None,
        };
        Ok(NodeRecord {
            public_key,
            name: self.unique_name(requested_name),
            mesh_ip,
            role,
            endpoint,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            hello_ts: 0,
        })
    }

    /// Holds a new record's address and name while it is being stored.
    pub fn reserve(&mut self, record: &NodeRecord) {
        if let Some(ip) = record.mesh_ip {
            self.reserved_ips.insert(ip);
        }
        self.reserved_names.insert(record.name.clone());
    }

    /// Gives back what [`Registry::reserve`] held.
    pub fn release(&mut self, record: &NodeRecord) {
        if let Some(ip) = record.mesh_ip {
            self.reserved_ips.remove(&ip);
        }
        self.reserved_names.remove(&record.name);
    }

    fn ip_taken(&self, ip: &Ipv4Addr) -> bool {
        self.by_ip.contains_key(ip) || self.reserved_ips.contains(ip)
    }

    fn free_ip(&self) -> Option<Ipv4Addr> {
        let usable = |ip: &Ipv4Addr| {
            let last = ip.octets()[3];
            last != 0 && last != 255
        };
        // Walk the used addresses in order and take the first gap.
        let mut candidate = u32::from(self.network.network()).checked_add(1)?;
        let end = u32::from(self.network.broadcast());
        let mut used: Vec<u32> = self
            .by_ip
            .keys()
            .chain(self.reserved_ips.iter())
            .map(|ip| u32::from(*ip))
            .filter(|ip| *ip >= candidate)
            .collect();
        used.sort_unstable();
        for used in used {
            while candidate < used && !usable(&Ipv4Addr::from(candidate)) {
                candidate += 1;
            }
            if candidate < used {
                break;
            }
            candidate = candidate.max(used + 1);
        }
        while candidate < end {
            let ip = Ipv4Addr::from(candidate);
            if usable(&ip) && !self.ip_taken(&ip) {
                return Some(ip);
            }
            candidate += 1;
        }
        None
    }

    /// Gives the node `key` the name `name` (an admin's rename); peers see it at once.
    /// Returns false if there is no such node or another one has the name.
    pub fn rename(&mut self, key: &PublicKey, name: &str) -> bool {
        let Some(old) = self.nodes.get(key).map(|e| e.record.name.clone()) else {
            return false;
        };
        if old == name {
            return true;
        }
        if self.name_taken(name) {
            return false;
        }
        self.names.remove(&old);
        self.names.insert(name.to_string());
        if let Some(e) = self.nodes.get_mut(key) {
            e.record.name = name.to_string();
        }
        self.bump(key);
        true
    }

    fn name_taken(&self, name: &str) -> bool {
        self.names.contains(name) || self.reserved_names.contains(name)
    }

    fn unique_name(&self, requested: &str) -> String {
        let base = sanitize_name(requested);
        if !self.name_taken(&base) {
            return base;
        }
        (2..)
            .map(|i| {
                let suffix = format!("-{i}");
                let mut stem = base.clone();
                stem.truncate(MAX_NAME_LEN - suffix.len());
                format!("{}{suffix}", stem.trim_end_matches('-'))
            })
            .find(|n| !self.name_taken(n))
            .expect("some suffix is free")
    }

    /// Adds (or replaces) a node; it stays offline until it is seen.
    pub fn insert(&mut self, record: NodeRecord) {
        self.remove(&record.public_key);
        let key = record.public_key;
        match record.mesh_ip {
            Some(ip) => {
                self.by_ip.insert(ip, key);
            }
            None => {
                self.relays.insert(key);
            }
        }
        self.names.insert(record.name.clone());
        let shown = Shown {
            online: false,
            endpoint: record.endpoint,
            local: Vec::new(),
        };
        self.nodes.insert(
            key,
            Entry {
                changes: TokenBucket::full(CHANGE_RATE, record.last_seen_ms),
                record,
                online: false,
                local: Vec::new(),
                shown,
                version: 0,
                pending: false,
            },
        );
        self.bump(&key);
    }

    pub fn remove(&mut self, key: &PublicKey) -> Option<NodeRecord> {
        let entry = self.nodes.remove(key)?;
        if let Some(ip) = entry.record.mesh_ip {
            self.by_ip.remove(&ip);
        }
        self.relays.remove(key);
        self.names.remove(&entry.record.name);
        self.by_version.remove(&(entry.version, *key));
        self.map_version += 1;
        self.tombstones.insert(self.map_version, *key);
        while self.tombstones.len() > MAX_TOMBSTONES {
            if let Some((v, _)) = self.tombstones.pop_first() {
                self.delta_floor = self.delta_floor.max(v);
            }
        }
        Some(entry.record)
    }

    /// Shows peers what changed about `key`, if its change budget allows now (else later, see
    /// [`Registry::publish_due`]).
    fn publish(&mut self, key: &PublicKey, now_ms: u64) {
        let Some(e) = self.nodes.get_mut(key) else {
            return;
        };
        let actual = e.actual();
        if actual == e.shown {
            e.pending = false;
            return;
        }
        if !e.changes.take(CHANGE_RATE, now_ms) {
            e.pending = true;
            return;
        }
        e.shown = actual;
        e.pending = false;
        self.bump(key);
    }

    /// Publishes changes that waited for their node's change budget.
    pub fn publish_due(&mut self, now_ms: u64) {
        let due: Vec<PublicKey> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.pending && e.changes.next_token_ms(CHANGE_RATE) <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.publish(&key, now_ms);
        }
    }

    /// When a change that waits for its node's budget can be shown.
    pub fn next_publish_ms(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter(|e| e.pending)
            .map(|e| e.changes.next_token_ms(CHANGE_RATE))
            .min()
    }

    /// Records that `key` was heard from (an authenticated packet) at `now_ms`.
    pub fn touch(&mut self, key: &PublicKey, now_ms: u64) {
        let Some(entry) = self.nodes.get_mut(key) else {
            return;
        };
        entry.record.last_seen_ms = entry.record.last_seen_ms.max(now_ms);
        if !entry.online {
            entry.online = true;
            self.publish(key, now_ms);
        }
    }

    /// A node connected (confirmed a new session): it is online, at `endpoint` if that is
    /// validated, with these interface endpoints. One change for peers, not three.
    pub fn connected(
        &mut self,
        key: &PublicKey,
        endpoint: Option<SocketAddr>,
        local: &[SocketAddr],
        now_ms: u64,
    ) {
        let Some(entry) = self.nodes.get_mut(key) else {
            return;
        };
        entry.record.last_seen_ms = entry.record.last_seen_ms.max(now_ms);
        entry.online = true;
        if endpoint.is_some() {
            entry.record.endpoint = endpoint;
        }
        let local = self.plausible(key, local);
        if let Some(entry) = self.nodes.get_mut(key) {
            entry.local = local;
        }
        self.publish(key, now_ms);
    }

    /// The plausible ones of the interface endpoints `key` reported (see [`plausible_local`]),
    /// sorted, all with one port.
    fn plausible(&self, key: &PublicKey, reported: &[SocketAddr]) -> Vec<SocketAddr> {
        let public = self
            .nodes
            .get(key)
            .and_then(|e| e.record.endpoint)
            .map(|e| e.ip());
        let mut local: Vec<SocketAddr> = reported
            .iter()
            .filter(|a| plausible_local(a, self.network, public))
            .copied()
            .collect();
        // A node has one socket: all its endpoints share the port of the first.
        if let Some(port) = local.first().map(SocketAddr::port) {
            local.retain(|a| a.port() == port);
        }
        local.sort();
        local.dedup();
        local.truncate(MAX_ENDPOINTS);
        local
    }

    /// Records the node's public endpoint: an address that proved it receives for the node.
    /// Returns true when it changed.
    pub fn set_endpoint(&mut self, key: &PublicKey, endpoint: SocketAddr, now_ms: u64) -> bool {
        let Some(entry) = self.nodes.get_mut(key) else {
            return false;
        };
        if entry.record.endpoint == Some(endpoint) {
            return false;
        }
        entry.record.endpoint = Some(endpoint);
        self.publish(key, now_ms);
        true
    }

    /// Records the interface endpoints a node reported (implausible ones are dropped, see
    /// [`plausible_local`]); returns true if they changed.
    pub fn set_local_endpoints(
        &mut self,
        key: &PublicKey,
        reported: &[SocketAddr],
        now_ms: u64,
    ) -> bool {
        let local = self.plausible(key, reported);
        let Some(entry) = self.nodes.get_mut(key) else {
            return false;
        };
        if entry.local == local {
            return false;
        }
        entry.local = local;
        self.publish(key, now_ms);
        true
    }

    /// Where a node may be reached right now (for a punch).
    pub fn candidates(&self, key: &PublicKey) -> Option<Candidates> {
        let e = self.nodes.get(key)?;
        Some(Candidates {
            public: e.record.endpoint,
            local: e.local.clone(),
        })
    }

    /// Marks a node offline at once (it said goodbye).
    pub fn set_offline(&mut self, key: &PublicKey, now_ms: u64) {
        if let Some(entry) = self.nodes.get_mut(key) {
            if entry.online {
                entry.online = false;
                self.publish(key, now_ms);
            }
        }
    }

    /// Marks nodes silent for longer than the offline timeout as offline; returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<PublicKey> {
        let cutoff = now_ms.saturating_sub(self.offline_after_ms);
        let gone: Vec<PublicKey> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.online && e.record.last_seen_ms < cutoff)
            .map(|(k, _)| *k)
            .collect();
        for key in &gone {
            self.set_offline(key, now_ms);
        }
        gone
    }

    /// When the next online node would expire, if any is online.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter(|e| e.online)
            .map(|e| e.record.last_seen_ms + self.offline_after_ms + 1)
            .min()
    }

    pub fn hello_ts(&self, key: &PublicKey) -> u64 {
        self.nodes.get(key).map_or(0, |e| e.record.hello_ts)
    }

    pub fn set_hello_ts(&mut self, key: &PublicKey, ts: u64) {
        if let Some(e) = self.nodes.get_mut(key) {
            e.record.hello_ts = e.record.hello_ts.max(ts);
        }
    }

    /// The peers `viewer` sees, in map order: every other node (by mesh IP), then the relays;
    /// a relay sees the nodes (its members) only.
    fn visible<'a>(&'a self, viewer: &'a PublicKey) -> impl Iterator<Item = &'a PublicKey> + 'a {
        let viewer_is_relay = self.relays.contains(viewer);
        let relays = self.relays.iter().filter(move |_| !viewer_is_relay);
        self.by_ip
            .values()
            .chain(relays)
            .filter(move |k| *k != viewer)
    }

    fn sees(&self, viewer: &PublicKey, key: &PublicKey) -> bool {
        key != viewer && !(self.relays.contains(viewer) && self.relays.contains(key))
    }

    /// One page of the peer map as `viewer` sees it, starting at `offset`, of at most `budget`
    /// encoded bytes (at least one entry if `budget` allows the largest one); also returns the
    /// total number of peers.
    pub fn page(&self, viewer: &PublicKey, offset: u32, budget: usize) -> (u32, Vec<PeerInfo>) {
        let budget = budget.min(PAGE_BUDGET);
        let total = self.visible(viewer).count() as u32;
        let mut used = 0;
        let mut page = Vec::new();
        for key in self.visible(viewer).skip(offset as usize) {
            let info = self.peer_info(key);
            let size = encoded_len(&info);
            if used + size > budget {
                break;
            }
            used += size;
            page.push(info);
        }
        (total, page)
    }

    /// What changed in the map since version `since`, as `viewer` sees it: page `offset` of
    /// at most `budget` encoded bytes, the total number of changes, and whether this is a reset
    /// (the whole map, because deltas since `since` are no longer known).
    pub fn changes(
        &self,
        viewer: &PublicKey,
        since: u64,
        offset: u32,
        budget: usize,
    ) -> (u32, bool, Vec<Change>) {
        let budget = budget.min(PAGE_BUDGET);
        if since < self.delta_floor || since == 0 || since > self.map_version {
            let (total, peers) = self.page(viewer, offset, budget);
            return (total, true, peers.into_iter().map(Change::Peer).collect());
        }
        let changed = self
            .by_version
            .range((since + 1, PublicKey([0; 32]))..)
            .filter(|(_, k)| self.sees(viewer, k))
            .map(|(v, k)| (*v, Some(*k), None));
        let removed = self
            .tombstones
            .range(since + 1..)
            .filter(|(_, k)| *k != viewer)
            .map(|(v, k)| (*v, None, Some(*k)));
        let mut all: Vec<(u64, Option<PublicKey>, Option<PublicKey>)> =
            changed.chain(removed).collect();
        all.sort_by_key(|(v, _, _)| *v);
        let total = all.len() as u32;
        let mut used = 0;
        let mut page = Vec::new();
        for (_, peer, gone) in all.into_iter().skip(offset as usize) {
            let change = match (peer, gone) {
                (Some(k), _) => Change::Peer(self.peer_info(&k)),
                (None, Some(k)) => Change::Removed(k),
                (None, None) => continue,
            };
            let size = encoded_len(&change);
            if used + size > budget {
                break;
            }
            used += size;
            page.push(change);
        }
        (total, false, page)
    }

    fn peer_info(&self, key: &PublicKey) -> PeerInfo {
        let e = &self.nodes[key];
        PeerInfo {
            name: e.record.name.clone(),
            public_key: *key,
            mesh_ip: e.record.mesh_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            candidates: Candidates {
                public: e.shown.endpoint,
                local: e.shown.local.clone(),
            },
            online: e.shown.online,
            role: e.record.role,
        }
    }
}

/// Turns a hostname into a node name: a lowercase DNS label of letters, digits and dashes.
pub fn sanitize_name(requested: &str) -> String {
    let mut name: String = requested
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(MAX_NAME_LEN);
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "node".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u16) -> PublicKey {
        let mut k = [0u8; 32];
        k[..2].copy_from_slice(&i.to_le_bytes());
        PublicKey(k)
    }

    fn ep(port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 1], port))
    }

    fn registry() -> Registry {
        Registry::new("100.64.0.0/10".parse().unwrap(), 60_000)
    }

    fn add(r: &mut Registry, i: u16, name: &str) -> NodeRecord {
        let rec = r
            .allocate(key(i), Role::Node, name, Some(ep(i)), 1000)
            .unwrap();
        r.insert(rec.clone());
        rec
    }

    /// The whole map as `viewer` sees it, pulled page by page.
    fn all_pages(r: &Registry, viewer: &PublicKey) -> Vec<PeerInfo> {
        let mut out = Vec::new();
        loop {
            let (total, page) = r.page(viewer, out.len() as u32, PAGE_BUDGET);
            assert!(!page.is_empty() || out.len() as u32 == total);
            out.extend(page);
            if out.len() as u32 == total {
                return out;
            }
        }
    }

    #[test]
    fn a_rename_shows_at_once_and_frees_the_old_name() {
        let mut r = registry();
        add(&mut r, 1, "a");
        add(&mut r, 2, "b");
        let v = r.map_version();
        assert!(!r.rename(&key(1), "b"), "taken");
        assert!(r.rename(&key(1), "alice"));
        assert!(r.map_version() > v, "peers see it");
        assert!(all_pages(&r, &key(2)).iter().any(|p| p.name == "alice"));
        assert_eq!(add(&mut r, 3, "a").name, "a", "the old name is free again");
        assert!(!r.rename(&key(9), "zed"), "no such node");
    }

    #[test]
    fn allocates_lowest_free_ips_and_reuses_gaps() {
        let mut r = registry();
        assert_eq!(
            add(&mut r, 1, "a").mesh_ip,
            Some(Ipv4Addr::new(100, 64, 0, 1))
        );
        assert_eq!(
            add(&mut r, 2, "b").mesh_ip,
            Some(Ipv4Addr::new(100, 64, 0, 2))
        );
        assert_eq!(
            add(&mut r, 3, "c").mesh_ip,
            Some(Ipv4Addr::new(100, 64, 0, 3))
        );
        r.remove(&key(2));
        assert_eq!(
            add(&mut r, 4, "d").mesh_ip,
            Some(Ipv4Addr::new(100, 64, 0, 2))
        );
        assert_eq!(
            add(&mut r, 5, "e").mesh_ip,
            Some(Ipv4Addr::new(100, 64, 0, 4))
        );
    }

    #[test]
    fn reservations_hold_addresses_and_names_until_released() {
        let mut r = registry();
        let a = r.allocate(key(1), Role::Node, "x", None, 0).unwrap();
        r.reserve(&a);
        let b = r.allocate(key(2), Role::Node, "x", None, 0).unwrap();
        assert_ne!(a.mesh_ip, b.mesh_ip);
        assert_ne!(a.name, b.name);
        r.release(&a);
        let c = r.allocate(key(3), Role::Node, "x", None, 0).unwrap();
        assert_eq!((c.mesh_ip, c.name), (a.mesh_ip, a.name));
    }

    #[test]
    fn skips_dot_zero_and_dot_255_and_reports_full() {
        let mut r = Registry::new("10.1.0.252/30".parse().unwrap(), 60_000);
        // .253 and .254 are usable; .252 is the network, .255 the broadcast.
        assert_eq!(
            add(&mut r, 1, "a").mesh_ip,
            Some(Ipv4Addr::new(10, 1, 0, 253))
        );
        assert_eq!(
            add(&mut r, 2, "b").mesh_ip,
            Some(Ipv4Addr::new(10, 1, 0, 254))
        );
        assert_eq!(
            r.allocate(key(3), Role::Node, "c", None, 0),
            Err(AllocError::NetworkFull("10.1.0.252/30".parse().unwrap()))
        );
        let mut r = Registry::new("10.2.0.0/23".parse().unwrap(), 60_000);
        for i in 1..=254 {
            add(&mut r, i, "n");
        }
        // 10.2.0.255 and 10.2.1.0 are skipped.
        assert_eq!(
            add(&mut r, 300, "n").mesh_ip,
            Some(Ipv4Addr::new(10, 2, 1, 1))
        );
    }

    #[test]
    fn names_are_unique_and_sanitized() {
        let mut r = registry();
        assert_eq!(add(&mut r, 1, "My Laptop").name, "my-laptop");
        assert_eq!(add(&mut r, 2, "my-laptop").name, "my-laptop-2");
        assert_eq!(add(&mut r, 3, "MY_LAPTOP").name, "my-laptop-3");
        assert_eq!(add(&mut r, 4, "---").name, "node");
        let long = "x".repeat(80);
        let first = add(&mut r, 5, &long).name;
        assert_eq!(first.len(), MAX_NAME_LEN);
        let second = add(&mut r, 6, &long).name;
        assert_eq!(second.len(), MAX_NAME_LEN);
        assert!(second.ends_with("-2"));
    }

    #[test]
    fn presence_comes_and_goes_with_injected_time() {
        let mut r = registry();
        add(&mut r, 1, "a");
        let v = r.map_version();
        assert!(!r.is_online(&key(1)));
        r.touch(&key(1), 5_000);
        assert!(r.is_online(&key(1)));
        assert!(r.map_version() > v);
        let v = r.map_version();
        // Still online: nothing peers need to hear.
        r.touch(&key(1), 30_000);
        assert_eq!(r.map_version(), v);
        assert_eq!(r.next_expiry_ms(), Some(90_001));
        assert!(r.expire(90_000).is_empty());
        assert_eq!(r.expire(90_001), vec![key(1)]);
        assert!(!r.is_online(&key(1)));
        assert!(r.map_version() > v);
        assert_eq!(r.next_expiry_ms(), None);
    }

    #[test]
    fn relays_have_no_mesh_ip_and_see_only_nodes() {
        let mut r = registry();
        add(&mut r, 1, "a");
        add(&mut r, 2, "b");
        let relay = r
            .allocate(key(9), Role::Relay, "relay", Some(ep(9)), 0)
            .unwrap();
        assert_eq!(relay.mesh_ip, None);
        r.insert(relay);
        // Nodes see the other node and the relay, last.
        let page = all_pages(&r, &key(1));
        assert_eq!(page.len(), 2);
        assert_eq!(page[1].role, Role::Relay);
        assert_eq!(page[1].candidates.public, Some(ep(9)));
        // The relay sees both nodes and no relay.
        let page = all_pages(&r, &key(9));
        assert_eq!(page.len(), 2);
        assert!(page.iter().all(|p| p.role == Role::Node));
        // Addresses are not used up by relays.
        assert_eq!(
            add(&mut r, 3, "c").mesh_ip,
            Some(Ipv4Addr::new(100, 64, 0, 3))
        );
    }

    #[test]
    fn local_endpoints_reach_the_map_when_plausible() {
        let mut r = registry();
        add(&mut r, 1, "a");
        add(&mut r, 2, "b");
        let lan = SocketAddr::from(([10, 1, 0, 2], 41641));
        let reported = vec![
            lan,
            SocketAddr::from(([192, 0, 2, 9], 41641)), // someone else's public address
            SocketAddr::from(([127, 0, 0, 1], 41641)), // loopback
            SocketAddr::from(([100, 64, 0, 9], 41641)), // inside the mesh network
            SocketAddr::from(([224, 0, 0, 1], 41641)), // multicast
            SocketAddr::from(([192, 168, 1, 2], 9)),   // another port than the first
            SocketAddr::from(([203, 0, 113, 1], 41641)), // its own public address: fine
        ];
        let v = r.map_version();
        assert!(r.set_local_endpoints(&key(1), &reported, 1000));
        assert!(!r.set_local_endpoints(&key(1), &reported, 1000));
        assert_eq!(r.map_version(), v + 1);
        let page = all_pages(&r, &key(2));
        assert_eq!(
            page[0].candidates.local,
            vec![lan, SocketAddr::from(([203, 0, 113, 1], 41641))]
        );
        assert_eq!(page[0].candidates.public, Some(ep(1)));
        // At most MAX_ENDPOINTS are kept.
        let many: Vec<SocketAddr> = (0..20)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 5)))
            .collect();
        r.set_local_endpoints(&key(1), &many, 100_000);
        assert_eq!(r.candidates(&key(1)).unwrap().local.len(), MAX_ENDPOINTS);
    }

    #[test]
    fn endpoint_flapping_is_shown_at_the_change_rate() {
        let mut r = registry();
        add(&mut r, 1, "a");
        add(&mut r, 2, "b");
        let t0 = 1000;
        r.touch(&key(1), t0);
        let v = r.map_version();
        // A node flaps its endpoint 100 times in 10 s.
        for i in 0..100u16 {
            let now = t0 + i as u64 * 100;
            r.set_endpoint(&key(1), ep(1000 + i), now);
            r.publish_due(now);
        }
        // Coming online took one change of the burst; three more, then one per 10 s.
        let shown = r.map_version() - v;
        assert!(shown <= 4, "{shown} changes shown");
        assert!(r.next_publish_ms().is_some());
        // The last endpoint is shown once the budget allows.
        let later = r.next_publish_ms().unwrap();
        r.publish_due(later);
        assert_eq!(all_pages(&r, &key(2))[0].candidates.public, Some(ep(1099)));
        assert_eq!(r.next_publish_ms(), None);
        // Punches always get the current candidates.
        assert_eq!(r.candidates(&key(1)).unwrap().public, Some(ep(1099)));
    }

    #[test]
    fn changes_since_a_version_are_deltas_with_removals() {
        let mut r = registry();
        for i in 1..=5 {
            add(&mut r, i, &format!("n{i}"));
        }
        let viewer = key(1);
        let v = r.map_version();
        let (total, reset, changes) = r.changes(&viewer, v, 0, PAGE_BUDGET);
        assert_eq!((total, reset, changes), (0, false, vec![]));
        r.touch(&key(2), 2000);
        r.remove(&key(3));
        r.touch(&viewer, 2000); // its own change is not shown to it
        let (total, reset, changes) = r.changes(&viewer, v, 0, PAGE_BUDGET);
        assert!(!reset);
        assert_eq!(total, 2);
        assert!(matches!(&changes[0], Change::Peer(p) if p.public_key == key(2) && p.online));
        assert_eq!(changes[1], Change::Removed(key(3)));
        // A version it cannot know about, or 0, gets the whole map.
        let (total, reset, _) = r.changes(&viewer, 0, 0, PAGE_BUDGET);
        assert!(reset);
        assert_eq!(total, 3);
        // Small budgets page through the changes.
        let (total, _, page) = r.changes(&viewer, v, 0, 10);
        assert_eq!((total, page.len()), (2, 0));
        let (_, _, page) = r.changes(&viewer, v, 1, PAGE_BUDGET);
        assert_eq!(page, vec![Change::Removed(key(3))]);
    }

    #[test]
    fn old_versions_get_a_reset_once_tombstones_run_out() {
        let mut r = registry();
        add(&mut r, 1, "viewer");
        let v = r.map_version();
        for i in 0..(MAX_TOMBSTONES as u16 + 10) {
            add(&mut r, 100 + i, "x");
            r.remove(&key(100 + i));
        }
        let (_, reset, _) = r.changes(&key(1), v, 0, PAGE_BUDGET);
        assert!(reset);
        let recent = r.map_version() - 2;
        let (total, reset, _) = r.changes(&key(1), recent, 0, PAGE_BUDGET);
        assert!(!reset);
        assert_eq!(total, 1);
    }

    #[test]
    fn a_thousand_node_map_comes_in_pages_that_fit_a_datagram() {
        let mut r = registry();
        for i in 0..1000 {
            add(&mut r, i, &format!("node-with-a-rather-long-name-{i}"));
        }
        let viewer = key(0);
        let mut offset = 0;
        let mut seen = Vec::new();
        loop {
            let (total, page) = r.page(&viewer, offset, PAGE_BUDGET);
            assert_eq!(total, 999);
            assert!(!page.is_empty());
            let size: usize = page.iter().map(encoded_len).sum();
            assert!(size <= PAGE_BUDGET, "page of {size} bytes");
            offset += page.len() as u32;
            seen.extend(page);
            if offset == total {
                break;
            }
        }
        assert_eq!(seen.len(), 999);
        assert!(seen.iter().all(|p| p.public_key != viewer));
        assert!(seen.windows(2).all(|w| w[0].mesh_ip < w[1].mesh_ip));
        // Past the end: an empty page, not a panic.
        assert!(r.page(&viewer, 5000, PAGE_BUDGET).1.is_empty());
        // A small budget: a small page (or none).
        assert!(r.page(&viewer, 0, 20).1.is_empty());
    }
}
