//! The coordinator's view of the mesh: which nodes exist, their mesh IPs and names, where they
//! were last seen and whether they are online. Pure: no IO, time comes in as Unix milliseconds.
//!
//! Every change that peers must hear about bumps `map_version`; nodes pull the map in pages.

use ipnet::Ipv4Net;
use lanmesh_proto::messages::{
    encoded_len, Candidates, PeerInfo, Role, MAX_ENDPOINTS, MAX_NAME_LEN, PAGE_BUDGET,
};
use lanmesh_proto::PublicKey;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

/// One registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub public_key: PublicKey,
    pub name: String,
    /// A node's mesh address; relays have none.
    pub mesh_ip: Option<Ipv4Addr>,
    pub role: Role,
    pub endpoint: Option<SocketAddr>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    record: NodeRecord,
    online: bool,
    /// The node's interface endpoints, as it last reported them (not stored: a node reports
    /// them again whenever it connects).
    local: Vec<SocketAddr>,
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
    map_version: u64,
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
            map_version: 1,
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

    pub fn get(&self, key: &PublicKey) -> Option<&NodeRecord> {
        self.nodes.get(key).map(|e| &e.record)
    }

    pub fn is_online(&self, key: &PublicKey) -> bool {
        self.nodes.get(key).is_some_and(|e| e.online)
    }

    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.nodes.keys()
    }

    fn bump(&mut self) {
        self.map_version += 1;
    }

    /// Makes the record for a new node: the lowest free mesh IP (skipping addresses ending in
    /// .0 and .255, which some systems refuse as host addresses; relays get none) and a unique
    /// name derived from the one asked for. Does not insert it.
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
        })
    }

    fn free_ip(&self) -> Option<Ipv4Addr> {
        let usable = |ip: &Ipv4Addr| {
            let last = ip.octets()[3];
            last != 0 && last != 255
        };
        // Walk the used addresses in order and take the first gap.
        let mut candidate = u32::from(self.network.network()).checked_add(1)?;
        let end = u32::from(self.network.broadcast());
        for used in self
            .by_ip
            .range(Ipv4Addr::from(candidate)..)
            .map(|(ip, _)| u32::from(*ip))
        {
            while candidate < used && !usable(&Ipv4Addr::from(candidate)) {
                candidate += 1;
            }
            if candidate < used {
                break;
            }
            candidate = used + 1;
        }
        while candidate < end {
            let ip = Ipv4Addr::from(candidate);
            if usable(&ip) && !self.by_ip.contains_key(&ip) {
                return Some(ip);
            }
            candidate += 1;
        }
        None
    }

    fn unique_name(&self, requested: &str) -> String {
        let base = sanitize_name(requested);
        if !self.names.contains(&base) {
            return base;
        }
        (2..)
            .map(|i| {
                let suffix = format!("-{i}");
                let mut stem = base.clone();
                stem.truncate(MAX_NAME_LEN - suffix.len());
                format!("{}{suffix}", stem.trim_end_matches('-'))
            })
            .find(|n| !self.names.contains(n))
            .expect("some suffix is free")
    }

    /// Adds (or replaces) a node; it stays offline until it is [`Registry::seen`].
    pub fn insert(&mut self, record: NodeRecord) {
        self.remove(&record.public_key);
        match record.mesh_ip {
            Some(ip) => {
                self.by_ip.insert(ip, record.public_key);
            }
            None => {
                self.relays.insert(record.public_key);
            }
        }
        self.names.insert(record.name.clone());
        self.nodes.insert(
            record.public_key,
            Entry {
                record,
                online: false,
                local: Vec::new(),
            },
        );
        self.bump();
    }

    pub fn remove(&mut self, key: &PublicKey) -> Option<NodeRecord> {
        let entry = self.nodes.remove(key)?;
        if let Some(ip) = entry.record.mesh_ip {
            self.by_ip.remove(&ip);
        }
        self.relays.remove(key);
        self.names.remove(&entry.record.name);
        self.bump();
        Some(entry.record)
    }

    /// Records that `key` was heard from `endpoint` at `now_ms`. Returns true when that
    /// changed what peers see (the node came online or moved).
    pub fn seen(&mut self, key: &PublicKey, endpoint: SocketAddr, now_ms: u64) -> bool {
        let Some(entry) = self.nodes.get_mut(key) else {
            return false;
        };
        entry.record.last_seen_ms = entry.record.last_seen_ms.max(now_ms);
        let changed = !entry.online || entry.record.endpoint != Some(endpoint);
        entry.online = true;
        entry.record.endpoint = Some(endpoint);
        if changed {
            self.bump();
        }
        changed
    }

    /// Records the interface endpoints a node reported; returns true if they changed.
    pub fn set_local_endpoints(&mut self, key: &PublicKey, local: &[SocketAddr]) -> bool {
        let Some(entry) = self.nodes.get_mut(key) else {
            return false;
        };
        let local = &local[..local.len().min(MAX_ENDPOINTS)];
        if entry.local == local {
            return false;
        }
        entry.local = local.to_vec();
        self.bump();
        true
    }

    /// Where a node may be reached.
    pub fn candidates(&self, key: &PublicKey) -> Option<Candidates> {
        let e = self.nodes.get(key)?;
        Some(Candidates {
            public: e.record.endpoint,
            local: e.local.clone(),
        })
    }

    /// Marks a node offline at once (it said goodbye).
    pub fn set_offline(&mut self, key: &PublicKey) {
        if let Some(entry) = self.nodes.get_mut(key) {
            if entry.online {
                entry.online = false;
                self.bump();
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
            self.set_offline(key);
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

    /// One page of the peer map as `viewer` sees it, starting at `offset`, filled up to the
    /// page budget; also returns the total number of peers. A node sees every other node (by
    /// mesh IP), then the relays; a relay sees the nodes (its members) only.
    pub fn page(&self, viewer: &PublicKey, offset: u32) -> (u32, Vec<PeerInfo>) {
        let viewer_is_relay = self.relays.contains(viewer);
        let relays = self.relays.iter().filter(move |_| !viewer_is_relay);
        let peers = self.by_ip.values().chain(relays).filter(|k| *k != viewer);
        let total = peers.clone().count() as u32;
        let mut used = 0;
        let mut page = Vec::new();
        for key in peers.skip(offset as usize) {
            let info = self.peer_info(key);
            let size = encoded_len(&info);
            if used + size > PAGE_BUDGET && !page.is_empty() {
                break;
            }
            used += size;
            page.push(info);
        }
        (total, page)
    }

    fn peer_info(&self, key: &PublicKey) -> PeerInfo {
        let e = &self.nodes[key];
        PeerInfo {
            name: e.record.name.clone(),
            public_key: *key,
            mesh_ip: e.record.mesh_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            candidates: self.candidates(key).unwrap_or_default(),
            online: e.online,
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
        assert!(r.seen(&key(1), ep(1), 5_000));
        assert!(r.is_online(&key(1)));
        assert!(r.map_version() > v);
        let v = r.map_version();
        // Same endpoint, still online: nothing peers need to hear.
        assert!(!r.seen(&key(1), ep(1), 30_000));
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
        let (total, page) = r.page(&key(1), 0);
        assert_eq!(total, 2);
        assert_eq!(page[1].role, Role::Relay);
        assert_eq!(page[1].candidates.public, Some(ep(9)));
        // The relay sees both nodes and no relay.
        let (total, page) = r.page(&key(9), 0);
        assert_eq!(total, 2);
        assert!(page.iter().all(|p| p.role == Role::Node));
        // Addresses are not used up by relays.
        assert_eq!(
            add(&mut r, 3, "c").mesh_ip,
            Some(Ipv4Addr::new(100, 64, 0, 3))
        );
    }

    #[test]
    fn local_endpoints_reach_the_map() {
        let mut r = registry();
        add(&mut r, 1, "a");
        add(&mut r, 2, "b");
        let local = vec![SocketAddr::from(([10, 1, 0, 2], 41641))];
        let v = r.map_version();
        assert!(r.set_local_endpoints(&key(1), &local));
        assert!(!r.set_local_endpoints(&key(1), &local));
        assert_eq!(r.map_version(), v + 1);
        let (_, page) = r.page(&key(2), 0);
        assert_eq!(page[0].candidates.local, local);
        assert_eq!(page[0].candidates.public, Some(ep(1)));
        // At most MAX_ENDPOINTS are kept.
        r.set_local_endpoints(&key(1), &vec![ep(5); 20]);
        assert_eq!(r.candidates(&key(1)).unwrap().local.len(), MAX_ENDPOINTS);
    }

    #[test]
    fn endpoint_change_bumps_the_map() {
        let mut r = registry();
        add(&mut r, 1, "a");
        r.seen(&key(1), ep(1), 1);
        let v = r.map_version();
        assert!(r.seen(&key(1), ep(9), 2));
        assert!(r.map_version() > v);
        assert_eq!(r.get(&key(1)).unwrap().endpoint, Some(ep(9)));
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
            let (total, page) = r.page(&viewer, offset);
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
        assert!(r.page(&viewer, 5000).1.is_empty());
    }
}
