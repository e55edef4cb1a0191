//! Path probes and `node ping`: answering pings, learning paths from pongs, punching, and the
//! timer that decides between the direct path and the relay.

use super::{kind_name, Mesh, RELAY_AFTER};
use crate::paths::PathAction;
use crate::relays::HomeChange;
use lanmesh_proto::messages::Candidates;
use lanmesh_proto::probe::{self, Probe, ProbeKey, Transaction};
use lanmesh_proto::rate::Rate;
use lanmesh_proto::relay::SEND_HEADER;
use lanmesh_proto::PublicKey;
use rand::RngCore;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How a `node ping` travelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Direct(SocketAddr),
    Relay(String),
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::Direct(addr) => write!(f, "direct {addr}"),
            Via::Relay(name) => write!(f, "via relay {name}"),
        }
    }
}

/// The answer to a `node ping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingReply {
    pub tx: Transaction,
    pub via: Via,
    pub rtt: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PingError {
    #[error("no peer is called {0:?} or has that mesh IP: see `node status`")]
    UnknownPeer(String),
    #[error("no path to {0} yet (no direct path and no relay answering); try again in a moment")]
    NoPath(String),
}

pub(super) struct UserPing {
    tx: Transaction,
    slot: usize,
    sent_at: Instant,
    via: Via,
}

/// Pongs to pings without a counter (older nodes), per peer.
pub(super) const LEGACY_PONGS: Rate = Rate::new(4, 1);

/// Probes from peers without a tunnel opened per second (each costs a Diffie-Hellman).
pub(super) const FIRST_CONTACTS: Rate = Rate::new(32, 20);

/// `node ping`s remembered while waiting for their pongs.
const MAX_USER_PINGS: usize = 64;

impl Mesh {
    /// A path probe (ping or pong) from the socket. Probes from unknown senders are dropped
    /// after a table lookup, before any cryptography; a ping is answered once (its counter
    /// must be fresh), with a pong of exactly its size.
    pub fn handle_probe(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        scratch: &mut [u8],
    ) {
        crate::wg_clock::set(now);
        self.probe_from(now, src, None, datagram, scratch);
    }

    /// A probe that came directly from `src`, or through the relay at `relay`.
    pub(super) fn probe_from(
        &mut self,
        now: Instant,
        src: SocketAddr,
        relay: Option<SocketAddr>,
        datagram: &[u8],
        scratch: &mut [u8],
    ) {
        let Some(sender) = probe::sender(datagram) else {
            return self.dropped(now, format_args!("malformed probe from {src}"));
        };
        if !self.known.contains_key(&sender) {
            return self.dropped(now, format_args!("probe from unknown key at {src}"));
        }
        let me = self.me;
        let mut nonce = [0u8; 12];
        self.rng.fill_bytes(&mut nonce);
        // A tunnel for the peer is built only for a genuine probe.
        let probe_key = match self.by_key.get(&sender) {
            Some(&slot) => self.slots[slot].as_ref().expect("filled").probe_key.clone(),
            None => {
                // Opening a probe from a peer without a tunnel costs a Diffie-Hellman: a
                // small budget, so forged ones cannot burn the CPU.
                let ms = self.ms(now);
                if !self.first_contacts.take(FIRST_CONTACTS, ms) {
                    return self.dropped(now, format_args!("first-contact probe budget"));
                }
                ProbeKey::derive(&self.private, &me, &sender)
            }
        };
        let Some(message) = probe_key.open(datagram) else {
            return self.dropped(now, format_args!("forged probe from {src}"));
        };
        let Some(slot) = self.ensure(now, &sender) else {
            return;
        };
        if let Probe::Ping { counter, .. } = message {
            // Counters make every ping count once: a replay (from anywhere) earns nothing. The
            // window outlives the tunnel (a peer dropped and listed again keeps it). A ping
            // without one comes from an older node and may be a replay: it is answered only
            // directly (same size), within a small budget per peer, and teaches no address.
            let fresh = match counter {
                0 => {
                    let ms = self.ms(now);
                    relay.is_none() && self.legacy_pongs.take(&sender, ms)
                }
                c => self.ping_window(&sender).accept(c),
            };
            if !fresh {
                return self.dropped(
                    now,
                    format_args!("replayed or unanswerable ping from {src}"),
                );
            }
        }
        let peer = self.slots[slot].as_mut().expect("indexed slot is filled");
        match message {
            Probe::Ping { tx, counter } => {
                let legacy = counter == 0;
                let pong = peer
                    .probe_key
                    .seal(&me, &Probe::Pong { tx, observed: src }, nonce);
                match relay {
                    None => {
                        self.out.send_udp(src, &pong);
                        if !legacy {
                            peer.paths.on_ping(now, src);
                        }
                    }
                    Some(_) => {
                        // Answer the way it came: through the relay.
                        scratch[SEND_HEADER..SEND_HEADER + pong.len()].copy_from_slice(&pong);
                        if let Some((dst, len)) =
                            self.relays.seal(&peer.info.public_key, scratch, pong.len())
                        {
                            self.out.send_udp(dst, &scratch[..len]);
                        }
                    }
                }
            }
            Probe::Pong { tx, observed } => {
                if let Some(i) = self
                    .user_pings
                    .iter()
                    .position(|p| p.tx == tx && p.slot == slot)
                {
                    let ping = self.user_pings.swap_remove(i);
                    self.ping_replies.push_back(PingReply {
                        tx,
                        via: ping.via,
                        rtt: now.saturating_duration_since(ping.sent_at),
                    });
                    return;
                }
                if relay.is_some() {
                    return; // Path probes only ever go direct.
                }
                let Some(won) = peer.paths.on_pong(now, src, tx) else {
                    return;
                };
                let kind = kind_name(won.path.kind);
                info!(
                    peer = %peer.info.name,
                    "direct path: {observed} (us, as the peer sees us) <-> {src} ({kind}), won after {} ms, rtt {:.1} ms",
                    won.after.as_millis(),
                    won.path.rtt.as_secs_f64() * 1000.0
                );
                peer.endpoint = Some(src);
                if !peer.session_alive() {
                    // A handshake may be stuck on a dead address: start one on this path now
                    // rather than after WireGuard's 5 s retry.
                    self.initiate(now, slot, scratch);
                }
            }
        }
    }

    /// Sends a `node ping` to `target` (a name or mesh IP) over its current path. Also counts
    /// as traffic waiting, so a peer without a direct path gets a punch.
    pub fn ping(
        &mut self,
        now: Instant,
        target: &str,
        scratch: &mut [u8],
    ) -> Result<(Transaction, String, Via), PingError> {
        crate::wg_clock::set(now);
        let key = self
            .known
            .values()
            .find(|p| p.name == target || p.mesh_ip.to_string() == target)
            .map(|p| p.public_key)
            .ok_or_else(|| PingError::UnknownPeer(target.to_string()))?;
        let slot = self
            .ensure(now, &key)
            .ok_or_else(|| PingError::NoPath(target.to_string()))?;
        let me = self.me;
        let mut tx: Transaction = [0; 12];
        self.rng.fill_bytes(&mut tx);
        let mut nonce = [0u8; 12];
        self.rng.fill_bytes(&mut nonce);
        let counter = self.stamps.next(self.clock.ns(now));
        let peer = self.slots[slot].as_mut().expect("found above");
        peer.paths.want_coordinated_punch(now);
        let ping = peer
            .probe_key
            .seal(&me, &Probe::Ping { tx, counter }, nonce);
        let name = peer.info.name.clone();
        let via = if peer.relayed {
            scratch[SEND_HEADER..SEND_HEADER + ping.len()].copy_from_slice(&ping);
            let (dst, len) = self
                .relays
                .seal(&peer.info.public_key, scratch, ping.len())
                .ok_or_else(|| PingError::NoPath(name.clone()))?;
            self.out.send_udp(dst, &scratch[..len]);
            let relay = self
                .relays
                .home()
                .map(|r| r.name.clone())
                .unwrap_or_default();
            Via::Relay(relay)
        } else {
            let ep = peer
                .paths
                .best()
                .map(|b| b.addr)
                .ok_or_else(|| PingError::NoPath(name.clone()))?;
            self.out.send_udp(ep, &ping);
            Via::Direct(ep)
        };
        if self.user_pings.len() >= MAX_USER_PINGS {
            self.user_pings.remove(0);
        }
        self.user_pings.push(UserPing {
            tx,
            slot,
            sent_at: now,
            via: via.clone(),
        });
        Ok((tx, name, via))
    }

    /// The next answer to a `node ping` that arrived.
    pub fn poll_ping_reply(&mut self) -> Option<PingReply> {
        self.ping_replies.pop_front()
    }

    /// The coordinator says: probe `key` at these candidates now.
    pub fn punch(
        &mut self,
        now: Instant,
        key: &PublicKey,
        candidates: &Candidates,
        scratch: &mut [u8],
    ) {
        crate::wg_clock::set(now);
        if !self.known.contains_key(key) {
            // The peer asked before our map shows it (the map comes within a moment): punch
            // as soon as it does.
            self.early_punch(now, *key, candidates);
            return;
        }
        let Some(slot) = self.ensure(now, key) else {
            return;
        };
        let peer = self.slots[slot].as_mut().expect("indexed slot is filled");
        peer.paths.set_candidates(candidates);
        peer.paths.start_punch(now);
        self.handle_timeout(now, scratch);
    }

    /// Our public endpoint changed: every path may be gone, so probe them all again.
    pub fn network_changed(&mut self, now: Instant) {
        crate::wg_clock::set(now);
        for peer in self.slots.iter_mut().flatten() {
            peer.paths.network_changed(now);
        }
    }

    /// When [`Mesh::handle_timeout`] has probes to send next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|p| p.paths.poll_timeout())
            .chain(self.relays.poll_timeout())
            .min()
    }

    /// Sends due probes and checks paths; peers that need a coordinated punch are queued (see
    /// [`Mesh::poll_punch_request`]).
    pub fn handle_timeout(&mut self, now: Instant, scratch: &mut [u8]) {
        crate::wg_clock::set(now);
        let change = self.relays.handle_timeout(now);
        while let Some(t) = self.relays.poll_transmit() {
            self.out.send_udp(t.dst, &t.payload);
        }
        match change {
            Some(HomeChange::Now(name)) => info!(relay = %name, "home relay"),
            Some(HomeChange::Lost(name)) => {
                warn!(relay = %name, "home relay lost; no relay answers")
            }
            None => {}
        }
        let me = self.me;
        let has_relay = self.relays.home().is_some();
        let mut actions = Vec::new();
        for slot in 0..self.slots.len() {
            let Some(peer) = self.slots[slot].as_mut() else {
                continue;
            };
            let key = peer.info.public_key;
            actions.clear();
            peer.paths.handle_timeout(now);
            actions.extend(std::iter::from_fn(|| peer.paths.poll_action()));
            for action in &actions {
                match *action {
                    PathAction::Ping { addr, tx, verified } => {
                        let counter = self.stamps.next(self.clock.ns(now));
                        let mut nonce = [0u8; 12];
                        self.rng.fill_bytes(&mut nonce);
                        let peer = self.slots[slot].as_ref().expect("filled");
                        let ping = peer
                            .probe_key
                            .seal(&me, &Probe::Ping { tx, counter }, nonce);
                        self.send_probe(now, addr, verified, &ping);
                    }
                    PathAction::RequestPunch => self.punch_requests.push_back(key),
                }
            }
            let Some(peer) = self.slots[slot].as_mut() else {
                continue;
            };
            // Relay when no direct path works; go back to direct as soon as one does.
            if peer.paths.best().is_some() {
                peer.no_direct_since = None;
                if peer.relayed {
                    info!(peer = %peer.info.name, "direct path found: leaving the relay");
                    peer.relayed = false;
                }
            } else {
                let since = *peer.no_direct_since.get_or_insert(now);
                let want = has_relay
                    && peer.info.online
                    && now.saturating_duration_since(since) >= RELAY_AFTER;
                if want && !peer.relayed {
                    peer.relayed = true;
                    if !peer.session_alive() {
                        self.initiate(now, slot, scratch);
                    }
                } else if !has_relay && peer.relayed {
                    peer.relayed = false;
                }
            }
        }
    }
}
