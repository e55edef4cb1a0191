//! How datagrams travel: across links (latency, jitter, loss), through realms, and through
//! NAT routers, which translate them when they reach them.

use super::hosts::Out;
use super::{HostId, Link, Realm, RouterId, Sim};
use rand::Rng;
use std::cmp::Reverse;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub(super) enum Hop {
    /// To be routed inside this realm.
    InRealm(Realm),
    /// Arriving at a router's WAN address (to be translated in).
    AtRouter(RouterId),
    AtHost(HostId),
}

pub(super) struct InFlight {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Vec<u8>,
    hop: Hop,
}

impl Sim {
    pub(super) fn schedule(&mut self, at: Instant, flight: InFlight) {
        self.seq += 1;
        self.flights.insert(self.seq, flight);
        self.queue.push(Reverse((at, self.seq)));
    }

    /// When a datagram that crosses `link` now arrives, or `None` when the link loses it.
    pub(super) fn cross(&mut self, link: Link) -> Option<Instant> {
        if link.loss > 0.0 && self.rng.gen_bool(link.loss.min(1.0)) {
            self.lost += 1;
            tracing::trace!(target: "sim", "lost on a link");
            return None;
        }
        let jitter = if link.jitter.is_zero() {
            Duration::ZERO
        } else {
            link.jitter.mul_f64(self.rng.gen::<f64>())
        };
        Some(self.now + link.latency + jitter)
    }

    pub(super) fn send(&mut self, h: HostId, out: Out) {
        let host = &self.hosts[h];
        let SocketAddr::V4(dst) = out.dst else {
            return;
        };
        let src = SocketAddrV4::new(host.ip, out.from_port);
        let (link, realm) = (host.link, host.realm);
        if let Some(at) = self.cross(link) {
            let flight = InFlight {
                src,
                dst,
                payload: out.payload,
                hop: Hop::InRealm(realm),
            };
            self.schedule(at, flight);
        }
    }

    /// Moves a datagram one hop on.
    pub(super) fn route(&mut self, mut f: InFlight) {
        match f.hop {
            Hop::AtHost(h) => {
                let host = &mut self.hosts[h];
                if !host.up || host.ip != *f.dst.ip() {
                    self.unroutable += 1;
                    return;
                }
                self.delivered += 1;
                tracing::trace!(target: "sim", at = ?(self.now - self.base), "{} → {} ({}): {} bytes", f.src, f.dst, host.name, f.payload.len());
                let mut out = Vec::new();
                let src = SocketAddr::V4(f.src);
                host.machine
                    .handle_datagram(self.now, src, f.dst.port(), &f.payload, &mut out);
                for o in out {
                    self.send(h, o);
                }
            }
            Hop::AtRouter(r) => {
                let router = &mut self.routers[r];
                match router.nat.inbound(self.now, f.src, f.dst.port()) {
                    Some(internal) => {
                        f.dst = internal;
                        f.hop = Hop::InRealm(Realm::Lan(r));
                        self.route(f);
                    }
                    None => {
                        tracing::trace!(target: "sim", "{} → {}: no mapping lets it in", f.src, f.dst);
                        self.unroutable += 1
                    }
                }
            }
            Hop::InRealm(realm) => {
                let dst_ip = *f.dst.ip();
                if let Some(h) = self
                    .hosts
                    .iter()
                    .position(|h| h.realm == realm && h.ip == dst_ip)
                {
                    if let Some(at) = self.cross(self.hosts[h].link) {
                        f.hop = Hop::AtHost(h);
                        self.schedule(at, f);
                    }
                    return;
                }
                if let Some(r) = self
                    .routers
                    .iter()
                    .position(|r| r.realm == realm && r.nat.wan == dst_ip)
                {
                    if let Some(at) = self.cross(self.routers[r].link) {
                        f.hop = Hop::AtRouter(r);
                        self.schedule(at, f);
                    }
                    return;
                }
                let Realm::Lan(r) = realm else {
                    self.unroutable += 1;
                    return;
                };
                let now = self.now;
                let router = &mut self.routers[r];
                f.src = router.nat.outbound(now, f.src, f.dst, &mut self.rng);
                if dst_ip == router.nat.wan {
                    // Inside to the router's own WAN address: hairpinning, if it does that.
                    if router.nat.config.hairpin {
                        f.hop = Hop::AtRouter(r);
                        self.route(f);
                    } else {
                        self.unroutable += 1;
                    }
                    return;
                }
                let (link, up) = (router.link, router.realm);
                if let Some(at) = self.cross(link) {
                    f.hop = Hop::InRealm(up);
                    self.schedule(at, f);
                }
            }
        }
    }

    /// Collects and sends what every machine wants sent, and runs each node's kernel.
    pub(super) fn drain(&mut self) {
        let mut out = Vec::new();
        let mut tun = Vec::new();
        for h in 0..self.hosts.len() {
            if !self.hosts[h].up {
                continue;
            }
            loop {
                let ip = self.hosts[h].ip;
                self.hosts[h]
                    .machine
                    .drain(self.now, ip, &mut out, &mut tun);
                if out.is_empty() && tun.is_empty() {
                    break;
                }
                for o in out.drain(..) {
                    self.send(h, o);
                }
                for packet in tun.drain(..) {
                    self.kernel(h, &packet);
                }
            }
        }
    }
}
