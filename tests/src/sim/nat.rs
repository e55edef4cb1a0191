//! A NAT router's translation, as RFC 4787 describes the behaviours: how mappings are chosen
//! (endpoint-independent, address-dependent, address-and-port-dependent), whether the internal
//! port is kept, which inbound packets are let through (the same three filterings), mapping
//! timeouts, and Linux conntrack's habit of letting an unsolicited inbound packet claim the
//! external port a later outbound mapping wanted (a router that accepts input on its WAN).

use rand::rngs::StdRng;
use rand::Rng;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// What a mapping or a filter depends on besides the internal endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependence {
    /// Endpoint-independent: one mapping for every destination, anyone may answer.
    Independent,
    /// Address-dependent: per destination IP.
    Address,
    /// Address-and-port-dependent: per destination IP and port.
    AddressPort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    pub mapping: Dependence,
    pub filtering: Dependence,
    /// A new mapping keeps the internal port when it is free.
    pub port_preservation: bool,
    /// Packets from inside to the router's own WAN address come back in.
    pub hairpin: bool,
    /// A mapping nobody used for this long is forgotten.
    pub timeout: Duration,
    /// A Linux box that accepts input on its WAN: an unsolicited inbound packet creates a
    /// conntrack entry that takes its (remote, port) tuple, so an outbound mapping to that
    /// remote from that port gets a random port instead.
    pub linux_conntrack: bool,
}

impl NatConfig {
    pub const fn new(mapping: Dependence, filtering: Dependence) -> NatConfig {
        NatConfig {
            mapping,
            filtering,
            port_preservation: true,
            hairpin: false,
            timeout: Duration::from_secs(120),
            linux_conntrack: false,
        }
    }

    /// Full cone: endpoint-independent mapping and filtering.
    pub const FULL_CONE: NatConfig =
        NatConfig::new(Dependence::Independent, Dependence::Independent);
    /// Address-restricted cone.
    pub const RESTRICTED: NatConfig = NatConfig::new(Dependence::Independent, Dependence::Address);
    /// Port-restricted cone (most home routers).
    pub const PORT_RESTRICTED: NatConfig =
        NatConfig::new(Dependence::Independent, Dependence::AddressPort);
    /// Symmetric: a new random port per destination, strict filtering (carrier-grade NATs).
    pub const SYMMETRIC: NatConfig = NatConfig {
        port_preservation: false,
        ..NatConfig::new(Dependence::AddressPort, Dependence::AddressPort)
    };
    /// A bare Linux masquerade box (Docker host, DIY router): per-destination conntrack that
    /// keeps the port when it can, and accepts input on its WAN.
    pub const LINUX: NatConfig = NatConfig {
        linux_conntrack: true,
        timeout: Duration::from_secs(30),
        ..NatConfig::new(Dependence::AddressPort, Dependence::AddressPort)
    };

    /// Whether the mapping a node's coordinator sees is the one every peer sees (as long as
    /// nothing collides).
    pub fn stable_mapping(&self) -> bool {
        self.mapping == Dependence::Independent || self.port_preservation
    }
}

fn key_of(d: Dependence, remote: SocketAddrV4) -> (Ipv4Addr, u16) {
    match d {
        Dependence::Independent => (Ipv4Addr::UNSPECIFIED, 0),
        Dependence::Address => (*remote.ip(), 0),
        Dependence::AddressPort => (*remote.ip(), remote.port()),
    }
}

struct Mapping {
    internal: SocketAddrV4,
    external_port: u16,
    /// Remotes this mapping sent to (filtering keys), with when.
    allowed: HashMap<(Ipv4Addr, u16), Instant>,
    last_used: Instant,
}

pub struct Nat {
    pub config: NatConfig,
    pub wan: Ipv4Addr,
    /// By (internal endpoint, mapping key).
    mappings: HashMap<(SocketAddrV4, (Ipv4Addr, u16)), Mapping>,
    /// Conntrack entries of unsolicited inbound packets: (remote, our port) → last seen.
    stolen: HashMap<(SocketAddrV4, u16), Instant>,
    /// Counters for tests' assertions.
    pub dropped_inbound: u64,
    pub stolen_ports: u64,
}

impl Nat {
    pub fn new(config: NatConfig, wan: Ipv4Addr) -> Nat {
        Nat {
            config,
            wan,
            mappings: HashMap::new(),
            stolen: HashMap::new(),
            dropped_inbound: 0,
            stolen_ports: 0,
        }
    }

    fn expire(&mut self, now: Instant) {
        let timeout = self.config.timeout;
        self.mappings
            .retain(|_, m| now.saturating_duration_since(m.last_used) < timeout);
        self.stolen
            .retain(|_, t| now.saturating_duration_since(*t) < Duration::from_secs(30));
    }

    /// Forgets every mapping (a router reboot, `conntrack -F`).
    pub fn flush(&mut self) {
        self.mappings.clear();
        self.stolen.clear();
    }

    fn port_taken(&self, port: u16, internal: SocketAddrV4, remote: SocketAddrV4) -> bool {
        self.mappings
            .values()
            .any(|m| m.external_port == port && m.internal != internal)
            || self.stolen.contains_key(&(remote, port))
    }

    /// An outbound packet from `internal` to `remote`: its new source on the WAN.
    pub fn outbound(
        &mut self,
        now: Instant,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
        rng: &mut StdRng,
    ) -> SocketAddrV4 {
        self.expire(now);
        let key = (internal, key_of(self.config.mapping, remote));
        if !self.mappings.contains_key(&key) {
            let want = internal.port();
            let port = if self.config.port_preservation && !self.port_taken(want, internal, remote)
            {
                want
            } else {
                if self.config.port_preservation && self.stolen.contains_key(&(remote, want)) {
                    self.stolen_ports += 1;
                }
                loop {
                    let p = rng.gen_range(1024..=65535);
                    if !self.port_taken(p, internal, remote) {
                        break p;
                    }
                }
            };
            self.mappings.insert(
                key,
                Mapping {
                    internal,
                    external_port: port,
                    allowed: HashMap::new(),
                    last_used: now,
                },
            );
        }
        let filter = key_of(self.config.filtering, remote);
        let m = self.mappings.get_mut(&key).expect("just made");
        m.last_used = now;
        m.allowed.insert(filter, now);
        SocketAddrV4::new(self.wan, m.external_port)
    }

    /// An inbound packet from `remote` to our WAN `port`: the internal endpoint it goes to, if
    /// a mapping lets it through.
    pub fn inbound(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
        port: u16,
    ) -> Option<SocketAddrV4> {
        self.expire(now);
        let filter = key_of(self.config.filtering, remote);
        let timeout = self.config.timeout;
        let found = self.mappings.values_mut().find(|m| {
            m.external_port == port
                && m.allowed
                    .get(&filter)
                    .is_some_and(|t| now.saturating_duration_since(*t) < timeout)
        });
        match found {
            Some(m) => {
                m.last_used = now;
                Some(m.internal)
            }
            None => {
                self.dropped_inbound += 1;
                if self.config.linux_conntrack {
                    self.stolen.insert((remote, port), now);
                }
                None
            }
        }
    }

    /// The external endpoint `internal` has towards `remote` now, if any.
    pub fn mapped(&self, internal: SocketAddrV4, remote: SocketAddrV4) -> Option<SocketAddr> {
        let key = (internal, key_of(self.config.mapping, remote));
        self.mappings
            .get(&key)
            .map(|m| SocketAddr::V4(SocketAddrV4::new(self.wan, m.external_port)))
    }
}

/// Whether two nodes behind these NATs (`None`: no NAT) can reach each other directly, as far
/// as the NAT behaviours alone decide it; `None` when it depends on timing (Linux conntrack
/// boxes: an early probe can steal the port, see issue 12).
pub fn can_punch(a: Option<NatConfig>, b: Option<NatConfig>) -> Option<bool> {
    use Dependence::AddressPort;
    let (Some(a), Some(b)) = (a, b) else {
        return Some(true);
    };
    if a.linux_conntrack || b.linux_conntrack {
        return None;
    }
    Some(match (a.stable_mapping(), b.stable_mapping()) {
        (true, true) => true,
        // A symmetric NAT's probes come from a port the peer never heard of: only a peer
        // whose NAT lets any port of a host it wrote to through can answer them.
        (false, true) => b.filtering != AddressPort,
        (true, false) => a.filtering != AddressPort,
        (false, false) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn each_kind_maps_and_filters_as_rfc_4787_says() {
        let t = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let inside = ep("10.0.0.2:41641");
        let (a, a2, b) = (
            ep("203.0.113.1:7000"),
            ep("203.0.113.1:7001"),
            ep("203.0.113.2:9"),
        );
        let wan = "198.51.100.1".parse().unwrap();

        let mut cone = Nat::new(NatConfig::FULL_CONE, wan);
        let out = cone.outbound(t, inside, a, &mut rng);
        assert_eq!(out, ep("198.51.100.1:41641"));
        assert_eq!(cone.outbound(t, inside, b, &mut rng), out);
        assert_eq!(
            cone.inbound(t, b, 41641),
            Some(inside),
            "full cone admits anyone"
        );

        let mut pr = Nat::new(NatConfig::PORT_RESTRICTED, wan);
        pr.outbound(t, inside, a, &mut rng);
        assert_eq!(
            pr.inbound(t, a2, 41641),
            None,
            "another port of the same host"
        );
        assert_eq!(pr.inbound(t, a, 41641), Some(inside));

        let mut r = Nat::new(NatConfig::RESTRICTED, wan);
        r.outbound(t, inside, a, &mut rng);
        assert_eq!(r.inbound(t, a2, 41641), Some(inside), "same host, any port");
        assert_eq!(r.inbound(t, b, 41641), None);

        let mut sym = Nat::new(NatConfig::SYMMETRIC, wan);
        let to_a = sym.outbound(t, inside, a, &mut rng);
        let to_b = sym.outbound(t, inside, b, &mut rng);
        assert_ne!(to_a, to_b, "a port per destination");
        assert_eq!(sym.inbound(t, b, to_a.port()), None);

        // Mappings time out.
        let later = t + NatConfig::FULL_CONE.timeout;
        assert_eq!(cone.inbound(later, b, 41641), None);
    }

    #[test]
    fn linux_conntrack_lets_an_early_inbound_packet_steal_the_port() {
        let t = Instant::now();
        let mut rng = StdRng::seed_from_u64(2);
        let inside = ep("10.0.0.2:41641");
        let peer = ep("198.51.100.9:41641");
        let coordinator = ep("203.0.113.1:7000");
        let mut nat = Nat::new(NatConfig::LINUX, "198.51.100.1".parse().unwrap());
        assert_eq!(nat.outbound(t, inside, coordinator, &mut rng).port(), 41641);
        // The peer's probe arrives before ours left: dropped, but its tuple is taken.
        assert_eq!(nat.inbound(t, peer, 41641), None);
        let to_peer = nat.outbound(t, inside, peer, &mut rng);
        assert_ne!(to_peer.port(), 41641, "masquerade picked another port");
        assert_eq!(nat.stolen_ports, 1);
    }
}
