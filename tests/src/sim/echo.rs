//! The simulator's pings through meshes, and each node's "kernel": it answers echo requests
//! for its own mesh IP and checks that every packet a node hands it is for that node and from
//! the node that sent it.

use super::hosts::Machine;
use super::packets;
use super::{HostId, Sim};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// A ping the simulator sent through the mesh, and its answer.
pub(super) struct Echo {
    from: HostId,
    to_ip: Ipv4Addr,
    sent: Instant,
    answered: Option<Instant>,
}

impl Sim {
    /// What a node's operating system does with a packet the node wrote to its TUN.
    pub(super) fn kernel(&mut self, h: HostId, packet: &[u8]) {
        let Some(me) = self.mesh_ip(h) else {
            return self.violations.push(format!(
                "{}: TUN packet before it had an address",
                self.hosts[h].name
            ));
        };
        let Some(echo) = packets::parse_echo(packet) else {
            return; // Only the simulator's pings travel the simulated meshes.
        };
        let name = &self.hosts[h].name;
        if echo.dst != me {
            return self.violations.push(format!(
                "{name} (mesh IP {me}) was handed a packet for {}",
                echo.dst
            ));
        }
        let Some(sent) = self.echoes.get_mut(&echo.id) else {
            return self.violations.push(format!("{name}: a ping nobody sent"));
        };
        if echo.request {
            let from_ip = match &self.hosts[sent.from].machine {
                Machine::Node(n) => n.mesh_ip(),
                _ => None,
            };
            if Some(echo.src) != from_ip || sent.to_ip != me {
                return self.violations.push(format!(
                    "{name}: ping {} came from {} but was sent by {}",
                    echo.id, echo.src, self.hosts[sent.from].name
                ));
            }
            let reply = packets::echo(me, echo.src, echo.id, false);
            let now = self.now;
            if let Machine::Node(n) = &mut self.hosts[h].machine {
                n.handle_tun_packet(now, &reply);
            }
        } else {
            if sent.from != h || echo.src != sent.to_ip {
                return self.violations.push(format!(
                    "{name}: answer to ping {} came back to the wrong node",
                    echo.id
                ));
            }
            sent.answered.get_or_insert(self.now);
        }
    }

    /// Sends a ping from node `a` to node `b`'s mesh IP through the mesh; its id.
    pub fn ping(&mut self, a: HostId, b: HostId) -> u32 {
        let (Some(src), Some(dst)) = (self.mesh_ip(a), self.mesh_ip(b)) else {
            panic!("both nodes need a mesh IP before a ping");
        };
        let id = self.next_echo;
        self.next_echo += 1;
        self.echoes.insert(
            id,
            Echo {
                from: a,
                to_ip: dst,
                sent: self.now,
                answered: None,
            },
        );
        let packet = packets::echo(src, dst, id, true);
        let now = self.now;
        if let Machine::Node(n) = &mut self.hosts[a].machine {
            n.handle_tun_packet(now, &packet);
        }
        self.drain();
        id
    }

    /// The round trip of ping `id`, once answered.
    pub fn answered(&self, id: u32) -> Option<Duration> {
        let e = &self.echoes[&id];
        e.answered.map(|t| t - e.sent)
    }

    /// Pings `b` from `a` every second until one is answered; the simulated time from the
    /// first ping to the first answer, or `None` if nothing came back within `limit`.
    pub fn ping_until_answered(
        &mut self,
        a: HostId,
        b: HostId,
        limit: Duration,
    ) -> Option<Duration> {
        let start = self.now;
        let mut ids = Vec::new();
        while self.now - start < limit {
            ids.push(self.ping(a, b));
            let next = (self.now + Duration::from_secs(1)).min(start + limit);
            let answered =
                self.run_until_true(next, |s| ids.iter().any(|i| s.answered(*i).is_some()));
            if answered {
                return Some(self.now - start);
            }
        }
        None
    }
}
