//! `node_mesh`: the node's data plane, `lanmesh_node::mesh::Mesh` (`handle_datagram`,
//! `handle_probe`, `handle_relay_frame`, dispatched by first bytes as the daemon does), as
//! node a with peers b and c and the relay, all with the lab's keys and addresses (captured
//! WireGuard handshakes, probes and relay frames authenticate).
//!
//! Input: config u8 (bit 0 b online, bit 1 c online, bit 2 the relay listed) | records (see
//! `lanmesh_fuzz`). Record ops:
//! 0 raw datagram from `src`;
//! 1 peer b or c (data[0]) speaks through a real `Mesh` of its own: it sends an IPv4 packet
//!   from its TUN (from its own mesh IP, or a spoofed one), and datagrams are exchanged both
//!   ways (those to node a arrive from `src`);
//! 2 the relay answers node a's latest bind (a genuine Bound);
//! 3 the relay delivers a frame from a key chosen by data: raw payload, the peer's latest
//!   datagram, or a probe sealed by the peer;
//! 4 a probe from b, c or a stranger: a ping, or a pong to node a's latest ping;
//! 5 resend an earlier datagram; 6 resend one with a byte changed;
//! 7 node a acts: a packet from its TUN, `node ping`, a coordinated punch, a new peer map, or
//!   a network change.
//! The clock advances by each record's `dt`; `tick` and (when due) `handle_timeout` run.
//!
//! Asserts:
//! - no answer to the source of a datagram is larger than that datagram (packets node a had
//!   queued for a peer, which a handshake releases, are its own traffic, not answers). An
//!   answer to a relayed datagram goes back through the relay: its payload is compared (a
//!   Send frame carries the relay session's counter and MAC, 28 bytes more than a Deliver);
//! - a probe is answered only if it is a genuine ping from a current peer, and a ping with a
//!   counter at most once, also after the peer left the peer map and came back;
//! - nothing reaches the TUN but packets a peer sent from its own mesh IP.
#![no_main]
use lanmesh_fuzz::{addr, public, seed, static_secret, step_ms, Records, A, B, C, RELAY};
use lanmesh_node::demux::{route, Route};
use lanmesh_node::mesh::{Mesh, MeshConfig, SCRATCH_LEN};
use lanmesh_node::relays::RelayInfo;
use lanmesh_proto::header::ControlKind;
use lanmesh_proto::messages::{Candidates, PeerInfo, Role};
use lanmesh_proto::probe::{self, Probe, ProbeKey};
use lanmesh_proto::relay::{
    frame_kind, BindKey, Bound, BIND_LEN, DELIVER_HEADER, SEND_HEADER, SEND_OVERHEAD,
};
use lanmesh_proto::PublicKey;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Recorder {
    udp: Vec<(SocketAddr, Vec<u8>)>,
    tun: Vec<Vec<u8>>,
}

/// Moves what `mesh` queued into `io`.
fn drain_into(mesh: &mut Mesh, io: &mut Recorder) {
    while let Some(t) = mesh.poll_transmit() {
        io.udp.push((t.dst, t.payload));
    }
    while let Some(p) = mesh.poll_tun_write() {
        io.tun.push(p);
    }
    while mesh.poll_punch_request().is_some() {}
}

/// The wall clock at the start (ns since the epoch; 2023-11-14).
const WALL0_NS: u64 = 1_700_000_000_000_000_000;

fn mesh_ip(seed: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, seed)
}

/// A node's data plane as the daemon makes it, once registered.
fn new_mesh(seed: u8, now: Instant) -> Mesh {
    let config = MeshConfig {
        keepalive_secs: 25,
        stamp_floor: 0,
        wall_ns: WALL0_NS,
        seed: seed as u64,
        lan: lanmesh_node::lan::LanConfig::default(),
    };
    let mut mesh = Mesh::new(static_secret(seed), config, now);
    mesh.set_identity(mesh_ip(seed), "100.64.0.0/10".parse().unwrap());
    mesh
}

fn info(seed: u8, at: usize, online: bool) -> PeerInfo {
    PeerInfo {
        name: format!("n{seed}"),
        public_key: public(seed),
        mesh_ip: mesh_ip(seed),
        candidates: Candidates {
            public: Some(addr(at)),
            local: vec![],
        },
        online,
        role: Role::Node,
    }
}

fn relay_info() -> RelayInfo {
    RelayInfo {
        name: "r".into(),
        key: public(seed::RELAY),
        addr: addr(RELAY),
    }
}

/// Probe keys: (holder, other) → key. Holders: a, b, c, the stranger.
fn probe_key(holder: u8, other: u8) -> &'static ProbeKey {
    static K: OnceLock<Vec<(u8, u8, ProbeKey)>> = OnceLock::new();
    let all = [seed::NODE_A, seed::NODE_B, seed::NODE_C, seed::STRANGER];
    let keys = K.get_or_init(|| {
        let mut v = Vec::new();
        for &h in &all {
            for &o in &all {
                if h != o {
                    v.push((
                        h,
                        o,
                        ProbeKey::derive(&static_secret(h), &public(h), &public(o)),
                    ));
                }
            }
        }
        v
    });
    &keys
        .iter()
        .find(|(h, o, _)| *h == holder && *o == other)
        .unwrap()
        .2
}

fn relay_bind_key() -> &'static BindKey {
    static K: OnceLock<BindKey> = OnceLock::new();
    K.get_or_init(|| {
        BindKey::derive(
            &static_secret(seed::RELAY),
            &public(seed::RELAY),
            &public(seed::NODE_A),
        )
    })
}

fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(1300)];
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..].copy_from_slice(payload);
    p
}

/// Whether an outgoing datagram is node a's own traffic (a WireGuard data packet with a
/// payload, directly or inside a relay Send frame) rather than an answer.
fn own_traffic(d: &[u8]) -> bool {
    let wg_data = |w: &[u8]| w.len() > 32 && w[..4] == [4, 0, 0, 0];
    if frame_kind(d) == Some(ControlKind::RelaySend) && d.len() >= SEND_HEADER + 16 {
        return wg_data(&d[SEND_HEADER..d.len() - 16]);
    }
    wg_data(d)
}

/// A peer with a data plane of its own, talking to node a.
struct Companion {
    seed: u8,
    at: usize,
    mesh: Mesh,
    io: Recorder,
    /// Packets it sent from its TUN from its own mesh IP.
    sent_genuine: Vec<Vec<u8>>,
}

/// Hands a datagram to the part of the data plane the daemon would (`demux::route`).
fn dispatch(
    mesh: &mut Mesh,
    now: Instant,
    src: SocketAddr,
    d: &[u8],
    s: &mut [u8],
    io: &mut Recorder,
) {
    match route(d) {
        Route::WireGuard => mesh.handle_datagram(now, src, d, s),
        Route::Probe => mesh.handle_probe(now, src, d, s),
        Route::Relay => mesh.handle_relay_frame(now, src, d, s),
        Route::Control | Route::Stun | Route::Drop => {}
    }
    drain_into(mesh, io);
}

struct World {
    now: Instant,
    mesh: Mesh,
    io: Recorder,
    scratch: Vec<u8>,
    peers: Vec<PeerInfo>,
    companions: Vec<Companion>,
    /// Datagrams node a handled.
    history: Vec<(SocketAddr, Vec<u8>)>,
    /// Node a's datagrams not yet taken by a companion.
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    /// Node a's latest datagrams (for answering its binds and pings).
    sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Pings (sender, counter) node a answered.
    answered: HashSet<(PublicKey, u64)>,
}

impl World {
    fn companion(&mut self, seed: u8, at: usize) -> usize {
        if let Some(i) = self.companions.iter().position(|c| c.seed == seed) {
            return i;
        }
        let mut c = Companion {
            seed,
            at,
            mesh: new_mesh(seed, self.now),
            io: Recorder::default(),
            sent_genuine: Vec::new(),
        };
        c.mesh
            .apply_peer_map(self.now, vec![info(seed::NODE_A, A, true)]);
        self.companions.push(c);
        self.companions.len() - 1
    }

    /// Moves what node a sent into `outbox` and `sent`.
    fn collect(&mut self) {
        for (dst, d) in self.io.udp.drain(..) {
            self.sent.push((dst, d.clone()));
            self.outbox.push((dst, d));
        }
        for log in [&mut self.sent, &mut self.outbox] {
            if log.len() > 128 {
                log.drain(..log.len() - 64);
            }
        }
    }

    /// Node a's latest datagram to `dst` that `pick` accepts.
    fn latest_sent<T>(&self, pick: impl Fn(&SocketAddr, &[u8]) -> Option<T>) -> Option<T> {
        self.sent.iter().rev().find_map(|(dst, d)| pick(dst, d))
    }

    /// Whether `d` is a probe (ping or pong) sealed by a current peer for node a.
    fn genuine_probe(&self, d: &[u8]) -> Option<Probe> {
        let sender = probe::sender(d)?;
        let peer = self.peers.iter().find(|p| p.public_key == sender)?;
        probe_key(seed::NODE_A, peer.mesh_ip.octets()[3]).open(d)
    }

    /// Node a handles `d` from `src`; checks its answers.
    fn deliver(&mut self, src: SocketAddr, d: &[u8]) {
        self.collect();
        dispatch(
            &mut self.mesh,
            self.now,
            src,
            d,
            &mut self.scratch,
            &mut self.io,
        );
        let genuine = self.genuine_probe(d);
        for (dst, out) in &self.io.udp {
            if *dst != src || own_traffic(out) {
                continue;
            }
            // A genuine pong confirms a path; node a then starts a handshake over it.
            let initiation = out.len() == 148 && out[..4] == [1, 0, 0, 0];
            if initiation && matches!(genuine, Some(Probe::Pong { .. })) {
                continue;
            }
            // An answer to a relayed datagram goes back to the relay in a Send frame, whose
            // counter and MAC (for the relay session node a opened) make it 28 bytes larger
            // than a Deliver: what the relay passes on to the peer is the payload, so compare
            // payloads. The relay forwards only to members, as a Deliver no larger than this.
            let relayed_answer = frame_kind(d) == Some(ControlKind::RelayDeliver)
                && frame_kind(out) == Some(ControlKind::RelaySend);
            let (asked, answered) = if relayed_answer {
                (
                    d.len().saturating_sub(DELIVER_HEADER),
                    out.len().saturating_sub(SEND_OVERHEAD),
                )
            } else {
                (d.len(), out.len())
            };
            assert!(
                answered <= asked,
                "answered a {}-byte datagram from {src} with {} bytes: {:02x?}",
                d.len(),
                out.len(),
                &out[..out.len().min(8)]
            );
        }
        // A probe answer (a pong, directly) only for a genuine ping from a current peer.
        if let Some(sender) = probe::sender(d) {
            let answered = self
                .io
                .udp
                .iter()
                .any(|(dst, out)| *dst == src && probe::sender(out).is_some());
            if answered {
                let Some(Probe::Ping { counter, .. }) = genuine else {
                    panic!(
                        "answered a probe from {sender:?} that is not a genuine ping from a peer"
                    );
                };
                let again = !self.answered.insert((sender, counter));
                if counter != 0 && again {
                    panic!("answered the ping with counter {counter} twice");
                }
            }
        }
        self.history.push((src, d.to_vec()));
        self.check_tun();
        self.collect();
    }

    fn check_tun(&mut self) {
        for p in self.io.tun.drain(..) {
            let genuine = self.companions.iter().any(|c| c.sent_genuine.contains(&p));
            assert!(
                genuine,
                "wrote to the TUN what no peer sent from its own IP: {p:02x?}"
            );
        }
    }

    /// Node a's datagrams for companions go to them; theirs for node a come back from
    /// `from` (at most `rounds` exchanges).
    fn exchange(&mut self, ci: usize, from: SocketAddr, rounds: usize) {
        for _ in 0..rounds {
            self.collect();
            let to_node: Vec<Vec<u8>> = {
                let c = &mut self.companions[ci];
                let own = addr(A);
                let v =
                    c.io.udp
                        .iter()
                        .filter(|(dst, _)| *dst == own)
                        .map(|(_, d)| d.clone());
                let v = v.collect();
                c.io.udp.clear();
                v
            };
            let companion_addr = addr(self.companions[ci].at);
            let (to_companion, rest): (Vec<_>, Vec<_>) = self
                .outbox
                .drain(..)
                .partition(|(dst, _)| *dst == companion_addr);
            self.outbox = rest;
            let to_companion: Vec<Vec<u8>> = to_companion.into_iter().map(|(_, d)| d).collect();
            if to_node.is_empty() && to_companion.is_empty() {
                return;
            }
            for d in to_companion {
                let c = &mut self.companions[ci];
                dispatch(
                    &mut c.mesh,
                    self.now,
                    addr(A),
                    &d,
                    &mut self.scratch,
                    &mut c.io,
                );
            }
            for d in to_node {
                self.deliver(from, &d);
            }
        }
    }
}

fn u8_at(d: &[u8], i: usize) -> u8 {
    d.get(i).copied().unwrap_or(0)
}

fuzz_target!(|input: &[u8]| {
    let Some((&config, records)) = input.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut w = World {
        now,
        mesh: new_mesh(seed::NODE_A, now),
        io: Recorder::default(),
        scratch: vec![0u8; SCRATCH_LEN],
        peers: vec![
            info(seed::NODE_B, B, config & 1 != 0),
            info(seed::NODE_C, C, config & 2 != 0),
        ],
        companions: Vec::new(),
        history: Vec::new(),
        outbox: Vec::new(),
        sent: Vec::new(),
        answered: HashSet::new(),
    };
    if config & 4 != 0 {
        w.mesh.set_relays(now, vec![relay_info()]);
    }
    let peers = w.peers.clone();
    w.mesh.apply_peer_map(now, peers);

    let peer_seeds = [seed::NODE_B, seed::NODE_C];
    let peer_at = [B, C];
    for r in Records::new(records) {
        w.now += Duration::from_millis(step_ms(r.dt));
        w.collect();
        w.mesh.tick(w.now, &mut w.scratch);
        drain_into(&mut w.mesh, &mut w.io);
        if w.mesh.poll_timeout().is_some_and(|t| t <= w.now) {
            w.mesh.handle_timeout(w.now, &mut w.scratch);
            drain_into(&mut w.mesh, &mut w.io);
        }
        let src = addr(r.src);
        let d = r.data;
        let p = (u8_at(d, 0) & 1) as usize;
        match r.op % 8 {
            0 => w.deliver(src, d),
            1 => {
                let ci = w.companion(peer_seeds[p], peer_at[p]);
                let now = w.now;
                let c = &mut w.companions[ci];
                let own = mesh_ip(c.seed);
                let inner_src = if u8_at(d, 1) & 1 == 0 {
                    own
                } else {
                    Ipv4Addr::new(100, 64, 0, 99)
                };
                let packet =
                    ipv4_packet(inner_src, mesh_ip(seed::NODE_A), d.get(2..).unwrap_or(&[]));
                if inner_src == own {
                    c.sent_genuine.push(packet.clone());
                }
                c.mesh.tick(now, &mut w.scratch);
                drain_into(&mut c.mesh, &mut c.io);
                c.mesh.handle_tun_packet(now, &packet, &mut w.scratch);
                drain_into(&mut c.mesh, &mut c.io);
                w.exchange(ci, src, 1 + (u8_at(d, 1) >> 1) as usize % 4);
            }
            2 => {
                w.collect();
                let Some(bind) = w.latest_sent(|dst, b| {
                    (*dst == addr(RELAY) && b.len() == BIND_LEN).then(|| b.to_vec())
                }) else {
                    continue;
                };
                let Some(ts) = relay_bind_key().open_bind(&bind) else {
                    continue;
                };
                let session =
                    u32::from_le_bytes([u8_at(d, 1), u8_at(d, 2), u8_at(d, 3), u8_at(d, 4)]);
                let created = if u8_at(d, 5) & 1 == 0 {
                    ts
                } else {
                    ts.wrapping_sub(u8_at(d, 6) as u64)
                };
                let frame = relay_bind_key().bound(
                    &Bound {
                        timestamp: ts,
                        session,
                        created,
                    },
                    [7; 12],
                );
                w.deliver(src, &frame);
            }
            3 => {
                let from = match u8_at(d, 1) % 4 {
                    0 => seed::NODE_B,
                    1 => seed::NODE_C,
                    2 => seed::STRANGER,
                    _ => seed::NODE_A,
                };
                let payload: Vec<u8> = match u8_at(d, 2) % 3 {
                    0 => d.get(3..).unwrap_or(&[]).to_vec(),
                    1 => {
                        let Some(c) = w.companions.iter_mut().find(|c| c.seed == from) else {
                            continue;
                        };
                        let Some((_, last)) = c.io.udp.pop() else {
                            continue;
                        };
                        last
                    }
                    _ if from == seed::NODE_A => continue,
                    _ => {
                        let ping = Probe::Ping {
                            tx: [u8_at(d, 3); 12],
                            counter: u8_at(d, 4) as u64,
                        };
                        probe_key(from, seed::NODE_A)
                            .seal(&public(from), &ping, [1; 12])
                            .to_vec()
                    }
                };
                let mut frame = vec![0u8; DELIVER_HEADER + payload.len()];
                lanmesh_proto::header::write_header(ControlKind::RelayDeliver, &mut frame);
                frame[4..36].copy_from_slice(public(from).as_bytes());
                frame[DELIVER_HEADER..].copy_from_slice(&payload);
                w.deliver(src, &frame);
            }
            4 => {
                let from = [seed::NODE_B, seed::NODE_C, seed::STRANGER][u8_at(d, 1) as usize % 3];
                let key = probe_key(from, seed::NODE_A);
                let probe = if u8_at(d, 2) & 1 == 0 {
                    // Counters: 0 (an older node), or small, so repeats happen.
                    let counter = (u8_at(d, 5) as u64) << (u8_at(d, 6) % 64);
                    Probe::Ping {
                        tx: [u8_at(d, 3); 12],
                        counter,
                    }
                } else {
                    // A pong to node a's latest ping to this peer, if it sent one.
                    w.collect();
                    let tx = w
                        .latest_sent(|_, p| match key.open(p) {
                            Some(Probe::Ping { tx, .. }) => Some(tx),
                            _ => None,
                        })
                        .unwrap_or([0; 12]);
                    Probe::Pong {
                        tx,
                        observed: addr(A),
                    }
                };
                let datagram = key.seal(&public(from), &probe, [u8_at(d, 4); 12]);
                w.deliver(src, &datagram);
            }
            5 | 6 if w.history.is_empty() => {}
            5 => {
                let (_, h) = w.history[u8_at(d, 0) as usize % w.history.len()].clone();
                w.deliver(src, &h);
            }
            6 => {
                let (_, mut h) = w.history[u8_at(d, 0) as usize % w.history.len()].clone();
                if !h.is_empty() {
                    let at = u8_at(d, 1) as usize % h.len();
                    h[at] ^= d.get(2).copied().filter(|&m| m != 0).unwrap_or(0x80);
                    w.deliver(src, &h);
                }
            }
            _ => {
                let now = w.now;
                match u8_at(d, 1) % 5 {
                    0 => {
                        let dst = mesh_ip(peer_seeds[p]);
                        let packet =
                            ipv4_packet(mesh_ip(seed::NODE_A), dst, d.get(2..).unwrap_or(&[]));
                        w.mesh.handle_tun_packet(now, &packet, &mut w.scratch);
                        drain_into(&mut w.mesh, &mut w.io);
                    }
                    1 => {
                        let _ = w
                            .mesh
                            .ping(now, &format!("n{}", peer_seeds[p]), &mut w.scratch);
                        drain_into(&mut w.mesh, &mut w.io);
                        while w.mesh.poll_ping_reply().is_some() {}
                    }
                    2 => {
                        let candidates = Candidates {
                            public: Some(src),
                            local: vec![addr(u8_at(d, 2) as usize)],
                        };
                        let key = public(peer_seeds[p]);
                        w.mesh.punch(now, &key, &candidates, &mut w.scratch);
                        drain_into(&mut w.mesh, &mut w.io);
                    }
                    3 => {
                        let bits = u8_at(d, 2);
                        let mut peers = Vec::new();
                        for (i, (&s, &at)) in peer_seeds.iter().zip(&peer_at).enumerate() {
                            if bits & (1 << i) != 0 {
                                let at = if bits & (4 << i) != 0 { r.src } else { at };
                                peers.push(info(s, at, bits & (16 << i) != 0));
                            }
                        }
                        w.peers = peers.clone();
                        w.mesh.apply_peer_map(now, peers);
                    }
                    _ => w.mesh.network_changed(now),
                }
            }
        }
        w.check_tun();
    }
});
