//! LAN-party traffic: IPv4 broadcast and multicast between the nodes of a mesh, as on one
//! switch. Pure state (time comes in): which packets are broadcast or multicast, who gets a
//! copy, the rate limits, the counters, and the group membership peers announced.
//!
//! - Broadcast (to 255.255.255.255 or the mesh network's broadcast address) goes to every
//!   online peer.
//! - Multicast (224.0.0.0/4) goes to the peers whose programs joined the group on their mesh
//!   interface, learnt from the IGMPv3 reports nodes send each other inside their tunnels
//!   (see [`igmp`]); a peer that has not reported (an older node, or one whose report is
//!   overdue) gets every group, and its kernel drops what nobody joined.
//! - Only packets the node itself sent (source: its mesh IP) leave, and what arrives from a
//!   peer is only ever written to the TUN, never passed on to other peers: no loops, no storms.
//! - Outgoing packets are limited per node, incoming ones per sending peer (packets and bytes
//!   a second); what is over the limit is dropped and counted.

pub mod igmp;

use ipnet::Ipv4Net;
use lanmesh_proto::rate::{KeyedLimiter, Rate, TokenBucket};
use lanmesh_proto::PublicKey;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Default limits of broadcast and multicast, per node (sent) and per peer (received).
pub const DEFAULT_PPS: u32 = 200;
pub const DEFAULT_KBIT: u32 = 1000;
/// Each node reports its groups to a peer this often (and at once when they change).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(60);
/// A peer's report is believed this long; then the peer counts as unknown (gets every group).
pub const MEMBERSHIP_FOR: Duration = Duration::from_secs(200);
/// A report from a peer is answered with ours at most this often (a peer that restarted
/// learns our groups at once).
const ANSWER_AFTER: Duration = Duration::from_secs(2);
/// Peers with a receive budget remembered at most.
const MAX_SENDERS: usize = 4096;

/// How this node takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanConfig {
    /// The node's switch (`--lan-broadcast`).
    pub enabled: bool,
    /// Broadcast and multicast packets a second, sent by this node and received from each peer.
    pub pps: u32,
    /// Kilobits a second, likewise.
    pub kbit: u32,
}

impl Default for LanConfig {
    fn default() -> Self {
        LanConfig {
            enabled: true,
            pps: DEFAULT_PPS,
            kbit: DEFAULT_KBIT,
        }
    }
}

/// What `node status --json` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanCounters {
    /// Broadcast and multicast packets sent into the mesh (each once, however many peers got
    /// a copy).
    pub broadcast_tx: u64,
    /// Received from peers and delivered.
    pub broadcast_rx: u64,
    /// Dropped: over a limit, or switched off.
    pub broadcast_dropped: u64,
}

/// Where a LAN packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanDst {
    Broadcast,
    Multicast(Ipv4Addr),
}

/// What a node knows about one peer's groups.
#[derive(Debug, Default)]
pub struct PeerGroups {
    /// The groups of the peer's last report, and when it came.
    reported: Option<(Vec<Ipv4Addr>, Instant)>,
    /// When we last reported ours to the peer, and which version of them.
    announced: Option<(Instant, u64)>,
    /// The peer reported: answer with ours soon.
    answer: bool,
}

impl PeerGroups {
    /// Whether the peer gets packets for `dst`.
    pub fn wants(&self, now: Instant, dst: LanDst) -> bool {
        match dst {
            LanDst::Broadcast => true,
            // Without a current report: every group (its kernel drops what nobody joined).
            LanDst::Multicast(g) => self.reported(now).is_none_or(|groups| groups.contains(&g)),
        }
    }

    /// The peer's report (the groups from `igmp::read_report`).
    pub fn on_report(&mut self, now: Instant, groups: &[Ipv4Addr]) {
        match &mut self.reported {
            Some((known, at)) => {
                known.clear();
                known.extend_from_slice(groups);
                *at = now;
            }
            None => self.reported = Some((groups.to_vec(), now)),
        }
        self.answer = true;
    }

    /// The groups the peer reported, if its report is current.
    pub fn reported(&self, now: Instant) -> Option<&[Ipv4Addr]> {
        match &self.reported {
            Some((g, at)) if now.saturating_duration_since(*at) < MEMBERSHIP_FOR => Some(g),
            _ => None,
        }
    }
}

pub struct Lan {
    config: LanConfig,
    /// The coordinator's network-wide switch.
    allowed: bool,
    /// The mesh network's broadcast address.
    mesh_broadcast: Option<Ipv4Addr>,
    /// Groups programs on this node joined on the mesh interface (sorted), and a version
    /// that changes with them.
    groups: Vec<Ipv4Addr>,
    groups_version: u64,
    /// The kernel sent an IGMP packet into the TUN: its groups changed.
    groups_stale: bool,
    tx_packets: TokenBucket,
    tx_bytes: TokenBucket,
    rx_packets: KeyedLimiter<PublicKey>,
    rx_bytes: KeyedLimiter<PublicKey>,
    counters: LanCounters,
    epoch: Instant,
    /// Reused for the groups of a peer's report.
    report: Vec<Ipv4Addr>,
}

/// Packets a second, with a burst of one second's worth (at most 1000 a second: the buckets
/// count whole milliseconds).
fn packet_rate(config: &LanConfig) -> Rate {
    let pps = config.pps.clamp(1, 1000);
    Rate::every(pps, 1000 / pps)
}

/// The byte buckets hand out 1000 tokens a second (a burst of one second's worth), each
/// worth a thousandth of a second's bytes.
const BYTE_RATE: Rate = Rate::every(1000, 1);

fn byte_tokens(config: &LanConfig, len: usize) -> u64 {
    let bytes_per_token = (config.kbit as u64 / 8).max(1);
    (len as u64).div_ceil(bytes_per_token).max(1)
}

impl Lan {
    pub fn new(config: LanConfig, now: Instant) -> Lan {
        Lan {
            tx_packets: TokenBucket::full(packet_rate(&config), 0),
            tx_bytes: TokenBucket::full(BYTE_RATE, 0),
            rx_packets: KeyedLimiter::new(packet_rate(&config), MAX_SENDERS),
            rx_bytes: KeyedLimiter::new(BYTE_RATE, MAX_SENDERS),
            config,
            allowed: true,
            mesh_broadcast: None,
            groups: Vec::new(),
            groups_version: 0,
            groups_stale: true,
            counters: LanCounters::default(),
            epoch: now,
            report: Vec::with_capacity(igmp::MAX_GROUPS),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether broadcast and multicast are carried (the node's switch and the network's).
    pub fn active(&self) -> bool {
        self.config.enabled && self.allowed
    }

    pub fn config(&self) -> LanConfig {
        self.config
    }

    /// The coordinator's switch for the whole network.
    pub fn set_allowed(&mut self, allowed: bool) {
        if allowed != self.allowed {
            self.allowed = allowed;
            self.groups_version += 1;
        }
    }

    pub fn allowed(&self) -> bool {
        self.allowed
    }

    pub fn set_network(&mut self, network: Ipv4Net) {
        self.mesh_broadcast = Some(network.broadcast());
    }

    /// Whether a packet to `dst` is broadcast or multicast.
    pub fn classify(&self, dst: Ipv4Addr) -> Option<LanDst> {
        if dst.is_broadcast() || Some(dst) == self.mesh_broadcast {
            Some(LanDst::Broadcast)
        } else if dst.is_multicast() {
            Some(LanDst::Multicast(dst))
        } else {
            None
        }
    }

    /// The groups joined on the mesh interface now (from the kernel).
    pub fn set_groups(&mut self, mut groups: Vec<Ipv4Addr>) {
        groups.sort();
        groups.dedup();
        groups.truncate(igmp::MAX_GROUPS);
        self.groups_stale = false;
        if groups != self.groups {
            self.groups = groups;
            self.groups_version += 1;
        }
    }

    /// The groups we report to peers (none while switched off: then nobody sends us any).
    pub fn announced_groups(&self) -> &[Ipv4Addr] {
        if self.active() {
            &self.groups
        } else {
            &[]
        }
    }

    /// The kernel's IGMP packet came out of the TUN: re-read its groups.
    pub fn kernel_reported(&mut self) {
        self.groups_stale = true;
    }

    /// Whether the driver should re-read the kernel's groups now (and clears it).
    pub fn take_groups_stale(&mut self) -> bool {
        std::mem::take(&mut self.groups_stale)
    }

    /// The groups a peer's IGMPv3 report (a packet from inside its tunnel) states, if it is a
    /// well-formed one.
    pub fn read_report(&mut self, packet: &[u8]) -> Option<&[Ipv4Addr]> {
        igmp::read_report(packet, &mut self.report)?;
        Some(&self.report)
    }

    /// Whether to report our groups to a peer now; if so, notes it as done.
    pub fn announce_due(&self, now: Instant, peer: &mut PeerGroups) -> bool {
        let due = match peer.announced {
            None => true,
            Some((at, version)) => {
                let since = now.saturating_duration_since(at);
                version != self.groups_version
                    || since >= ANNOUNCE_EVERY
                    || (peer.answer && since >= ANSWER_AFTER)
            }
        };
        if due {
            peer.announced = Some((now, self.groups_version));
            peer.answer = false;
        }
        due
    }

    /// A LAN packet of `len` bytes from the TUN: whether it may go out (counted either way).
    pub fn admit_tx(&mut self, now: Instant, len: usize) -> bool {
        let ms = self.ms(now);
        let ok = self.active()
            && self.tx_packets.take(packet_rate(&self.config), ms)
            && self
                .tx_bytes
                .take_n(BYTE_RATE, ms, byte_tokens(&self.config, len));
        if ok {
            self.counters.broadcast_tx += 1;
        } else {
            self.counters.broadcast_dropped += 1;
        }
        ok
    }

    /// A LAN packet of `len` bytes from `peer`: whether it goes to the TUN (counted either way).
    pub fn admit_rx(&mut self, now: Instant, peer: &PublicKey, len: usize) -> bool {
        let ms = self.ms(now);
        let ok = self.active()
            && self.rx_packets.take(peer, ms)
            && self
                .rx_bytes
                .take_n(peer, ms, byte_tokens(&self.config, len));
        if ok {
            self.counters.broadcast_rx += 1;
        } else {
            self.counters.broadcast_dropped += 1;
        }
        ok
    }

    pub fn counters(&self) -> LanCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests;
