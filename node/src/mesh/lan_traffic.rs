//! Broadcast and multicast through the mesh (see [`crate::lan`]): fanning a packet from the
//! TUN out to the peers that get it, taking peers' packets in, and reporting our groups.

use super::{transmit, written, Mesh, Peer};
use crate::lan::igmp::{self, REPORTS_GROUP};
use crate::lan::{Lan, LanConfig, LanCounters, LanDst};
use lanmesh_proto::log_limit::LogLimit;
use lanmesh_proto::outbox::Outbox;
use lanmesh_proto::relay::SEND_HEADER;
use std::net::Ipv4Addr;
use std::time::Instant;
use tracing::debug;

impl Mesh {
    /// A broadcast or multicast packet from the TUN: a copy to each online peer that gets it,
    /// each sealed for that peer and sent on its path (direct or relayed). Tunnels to idle peers
    /// are built on the way.
    pub(super) fn fan_out(&mut self, now: Instant, dst: LanDst, packet: &[u8], scratch: &mut [u8]) {
        if igmp::is_igmp(packet) {
            // The kernel's own report of a join or leave on the mesh interface: peers hear
            // our groups from our reports, not from the kernel's.
            self.lan.kernel_reported();
            return;
        }
        let own = self.identity.map(|(ip, _)| ip);
        if own.is_none() || super::ipv4_source(packet) != own {
            // Only what this node itself sends enters the mesh (nothing routed through it).
            return self.dropped(
                now,
                format_args!("broadcast/multicast not from our mesh IP"),
            );
        }
        if !self.lan.admit_tx(now, packet.len()) {
            return self.dropped(
                now,
                format_args!("broadcast/multicast over the limit or switched off"),
            );
        }
        let mut targets = std::mem::take(&mut self.fanout);
        targets.clear();
        for info in self.known.values() {
            let tunnel = self
                .by_key
                .get(&info.public_key)
                .and_then(|&s| self.slots[s].as_ref());
            let gets = match tunnel {
                Some(peer) => (info.online || peer.session_alive()) && peer.groups.wants(now, dst),
                None => info.online,
            };
            if gets {
                targets.push(info.public_key);
            }
        }
        for key in &targets {
            if let Some(slot) = self.tunnel_for_traffic(now, key) {
                self.seal_and_send(now, slot, packet, scratch);
            }
        }
        self.fanout = targets;
    }

    /// Reports our groups to the peers with a session that are due to hear them.
    pub(super) fn announce_groups(&mut self, now: Instant, scratch: &mut [u8]) {
        let Some((own, _)) = self.identity else {
            return;
        };
        let mut report = [0u8; igmp::MAX_REPORT_LEN];
        let mut len = None;
        for peer in self.slots.iter_mut().flatten() {
            if !peer.session_alive() || !self.lan.announce_due(now, &mut peer.groups) {
                continue;
            }
            let n = *len.get_or_insert_with(|| {
                igmp::write_report(own, self.lan.announced_groups(), &mut report)
            });
            if let Some(m) = written(
                peer.tunn
                    .encapsulate(&report[..n], &mut scratch[SEND_HEADER..]),
            ) {
                transmit(peer, &mut self.relays, scratch, m, &mut self.out);
            }
        }
    }

    /// The kernel's groups on the mesh interface (from `/proc/net/igmp`).
    pub fn set_lan_groups(&mut self, groups: Vec<Ipv4Addr>) {
        self.lan.set_groups(groups);
    }

    /// Whether the kernel's groups should be read again now (the driver reads them then).
    pub fn lan_groups_stale(&mut self) -> bool {
        self.lan.take_groups_stale()
    }

    /// The coordinator's network-wide switches (`messages::policy`, from the Welcome).
    pub fn set_network_policy(&mut self, policy: u64) {
        self.lan
            .set_allowed(policy & lanmesh_proto::messages::policy::NO_LAN_BROADCAST == 0);
    }

    /// Whether broadcast and multicast are carried now.
    pub fn lan_active(&self) -> bool {
        self.lan.active()
    }

    pub fn lan_allowed(&self) -> bool {
        self.lan.allowed()
    }

    pub fn lan_config(&self) -> LanConfig {
        self.lan.config()
    }

    pub fn lan_counters(&self) -> LanCounters {
        self.lan.counters()
    }

    /// The groups each peer with a tunnel reported.
    #[cfg(test)]
    pub fn lan_peer_groups(&self, now: Instant) -> Vec<(String, Option<Vec<Ipv4Addr>>)> {
        crate::wg_clock::set(now);
        self.slots
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.info.name.clone(),
                    p.groups.reported(now).map(<[_]>::to_vec),
                )
            })
            .collect()
    }
}

/// An IPv4 packet `peer`'s tunnel opened (arrived directly or through a relay): to the TUN if
/// its source is the peer's mesh IP (else dropped and logged), broadcast and multicast by the
/// rules of [`receive`].
pub(super) fn inner_to_tun(
    lan: &mut Lan,
    drops: &mut LogLimit,
    epoch: Instant,
    peer: &mut Peer,
    now: Instant,
    (inner, inner_src): (&[u8], Ipv4Addr),
    io: &mut Outbox,
) {
    if inner_src != peer.info.mesh_ip {
        if drops.allow(now.saturating_duration_since(epoch).as_millis() as u64) {
            debug!(peer = %peer.info.name, %inner_src, "dropped inner packet with a spoofed source");
        }
        return;
    }
    match super::ipv4_destination(inner).and_then(|d| lan.classify(d)) {
        None => io.write_tun(inner),
        Some(dst) => receive(lan, peer, now, dst, inner, io),
    }
}

/// A broadcast or multicast packet a peer sent (authenticated, from its mesh IP): its group
/// report is taken in; anything else goes to the TUN within the peer's budget. Nothing from a
/// peer is ever sent on to other peers.
fn receive(
    lan: &mut Lan,
    peer: &mut Peer,
    now: Instant,
    dst: LanDst,
    packet: &[u8],
    io: &mut Outbox,
) {
    if dst == LanDst::Multicast(REPORTS_GROUP) && igmp::is_igmp(packet) {
        if let Some(groups) = lan.read_report(packet) {
            peer.groups.on_report(now, groups);
        }
        return;
    }
    if lan.admit_rx(now, &peer.info.public_key, packet.len()) {
        io.write_tun(packet);
    }
}
