//! Two or three [`Mesh`]es wired together in memory: real boringtun handshakes and sealing,
//! with a recorder of what each queued for the socket and the TUN.

use crate::mesh::{Mesh, MeshConfig, Path, SCRATCH_LEN};
use lanmesh_proto::header::{classify, PacketClass};
use lanmesh_proto::messages::{Candidates, PeerInfo, Role};
use lanmesh_proto::probe::{Probe, ProbeKey};
use lanmesh_proto::PublicKey;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use x25519_dalek::StaticSecret;

#[derive(Default)]
struct Recorder {
    udp: Vec<(SocketAddr, Vec<u8>)>,
    tun: Vec<Vec<u8>>,
}

struct Host {
    mesh: Mesh,
    io: Recorder,
    addr: SocketAddr,
    info: PeerInfo,
}

impl Host {
    /// Moves what the mesh queued into the recorder.
    fn collect(&mut self) {
        while let Some(t) = self.mesh.poll_transmit() {
            self.io.udp.push((t.dst, t.payload));
        }
        while let Some(p) = self.mesh.poll_tun_write() {
            self.io.tun.push(p);
        }
    }
}

fn host(i: u8) -> Host {
    host_with_keepalive(i, 25)
}

fn host_with_keepalive(i: u8, keepalive: u16) -> Host {
    let secret = StaticSecret::from([i; 32]);
    let public = PublicKey::from(x25519_dalek::PublicKey::from(&secret));
    let addr = SocketAddr::from(([203, 0, 113, i], 41641));
    let config = MeshConfig {
        keepalive_secs: keepalive,
        stamp_floor: 0,
        wall_ns: 1_700_000_000_000_000_000,
        seed: i as u64,
        lan: crate::lan::LanConfig::default(),
    };
    Host {
        mesh: Mesh::new(secret, config, Instant::now()),
        io: Recorder::default(),
        addr,
        info: PeerInfo {
            name: format!("h{i}"),
            public_key: public,
            mesh_ip: Ipv4Addr::new(100, 64, 0, i),
            candidates: lanmesh_proto::messages::Candidates {
                public: Some(addr),
                local: vec![],
            },
            online: true,
            role: lanmesh_proto::messages::Role::Node,
        },
    }
}

fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
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

/// Delivers datagrams between hosts until nobody has anything left to send.
fn pump(hosts: &mut [&mut Host]) {
    let mut scratch = vec![0u8; SCRATCH_LEN];
    for _ in 0..20 {
        let mut in_flight = Vec::new();
        for h in hosts.iter_mut() {
            for (dst, d) in h.io.udp.drain(..) {
                in_flight.push((h.addr, dst, d));
            }
        }
        if in_flight.is_empty() {
            return;
        }
        for (src, dst, d) in in_flight {
            if let Some(h) = hosts.iter_mut().find(|h| h.addr == dst) {
                deliver(h, src, &d, &mut scratch);
            }
        }
    }
}

/// Hands a datagram to the part of the mesh the daemon would.
fn deliver(h: &mut Host, src: SocketAddr, d: &[u8], scratch: &mut [u8]) {
    let now = Instant::now();
    match classify(d) {
        PacketClass::WireGuard => h.mesh.handle_datagram(now, src, d, scratch),
        PacketClass::Control if lanmesh_proto::probe::sender(d).is_some() => {
            h.mesh.handle_probe(now, src, d, scratch)
        }
        _ => {}
    }
    h.collect();
}

fn know(h: &mut Host, peers: &[&PeerInfo]) {
    h.mesh
        .apply_peer_map(Instant::now(), peers.iter().map(|p| (*p).clone()).collect());
}

/// Both know each other, and a first packet from `a` builds the tunnels.
fn connect(a: &mut Host, b: &mut Host) {
    let mut scratch = vec![0u8; SCRATCH_LEN];
    know(a, &[&b.info]);
    know(b, &[&a.info]);
    let hello = ipv4_packet(a.info.mesh_ip, b.info.mesh_ip, b"first");
    send_from_tun(a, &hello);
    pump(&mut [a, b]);
    b.io.tun.clear();
    a.mesh.tick(Instant::now(), &mut scratch);
    a.collect();
    b.mesh.tick(Instant::now(), &mut scratch);
    b.collect();
    pump(&mut [a, b]);
}

fn send_from_tun(h: &mut Host, packet: &[u8]) {
    let mut scratch = vec![0u8; SCRATCH_LEN];
    h.mesh
        .handle_tun_packet(Instant::now(), packet, &mut scratch);
    h.collect();
}

#[test]
fn packets_cross_after_the_handshake() {
    let (mut a, mut b) = (host(1), host(2));
    connect(&mut a, &mut b);
    assert_eq!(a.mesh.peers(Instant::now())[0].path, Path::Direct);
    assert_eq!(b.mesh.peers(Instant::now())[0].path, Path::Direct);
    let packet = ipv4_packet(a.info.mesh_ip, b.info.mesh_ip, b"hello mesh");
    send_from_tun(&mut a, &packet);
    pump(&mut [&mut a, &mut b]);
    assert_eq!(b.io.tun, vec![packet]);
    let view = &b.mesh.peers(Instant::now())[0];
    assert!(view.rx_bytes > 0);
}

#[test]
fn a_spoofed_inner_source_never_reaches_the_tun() {
    let (mut a, mut b) = (host(1), host(2));
    connect(&mut a, &mut b);
    let spoofed = ipv4_packet(Ipv4Addr::new(100, 64, 0, 99), b.info.mesh_ip, b"evil");
    send_from_tun(&mut a, &spoofed);
    pump(&mut [&mut a, &mut b]);
    assert!(b.io.tun.is_empty());
}

#[test]
fn strangers_get_no_answer() {
    let (mut a, mut b, mut stranger) = (host(1), host(2), host(3));
    connect(&mut a, &mut b);
    // The stranger knows b, but b does not know the stranger.
    let mut scratch = vec![0u8; SCRATCH_LEN];
    know(&mut stranger, &[&b.info]);
    let knock = ipv4_packet(stranger.info.mesh_ip, b.info.mesh_ip, b"let me in");
    send_from_tun(&mut stranger, &knock);
    stranger.mesh.handle_timeout(Instant::now(), &mut scratch);
    stranger.collect();
    assert!(
        !stranger.io.udp.is_empty(),
        "the stranger sent a handshake and probes"
    );
    pump(&mut [&mut stranger, &mut b]);
    assert!(b.io.udp.is_empty());
    assert!(stranger.io.tun.is_empty());
    // Junk gets nothing either.
    b.mesh.handle_datagram(
        Instant::now(),
        stranger.addr,
        &[4, 0, 0, 0, 1, 2, 3],
        &mut scratch,
    );
    b.collect();
    b.mesh
        .handle_datagram(Instant::now(), stranger.addr, &[1, 0, 0, 0], &mut scratch);
    b.collect();
    assert!(b.io.udp.is_empty());
}

#[test]
fn packets_for_unknown_mesh_ips_go_nowhere() {
    let (mut a, mut b) = (host(1), host(2));
    connect(&mut a, &mut b);
    let packet = ipv4_packet(a.info.mesh_ip, Ipv4Addr::new(100, 64, 9, 9), b"x");
    send_from_tun(&mut a, &packet);
    send_from_tun(&mut a, &[0x60; 40]); // IPv6
    send_from_tun(&mut a, &[0x45; 3]); // truncated
    assert!(a.io.udp.is_empty());
}

#[test]
fn roaming_follows_authenticated_packets_only() {
    let (mut a, mut b) = (host(1), host(2));
    connect(&mut a, &mut b);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    // Junk from a new address does not move the peer.
    let elsewhere: SocketAddr = "198.51.100.7:5555".parse().unwrap();
    b.mesh.handle_datagram(
        Instant::now(),
        elsewhere,
        &[
            4, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            13, 14, 15, 16,
        ],
        &mut scratch,
    );
    b.collect();
    assert_eq!(b.mesh.peers(Instant::now())[0].endpoint, Some(a.addr));
    // A genuine packet from a new address while the old one is still live: delivered, but the
    // path stays (no flapping between two working paths).
    let packet = ipv4_packet(a.info.mesh_ip, b.info.mesh_ip, b"both live");
    send_from_tun(&mut a, &packet);
    let (_, sealed) = a.io.udp.pop().unwrap();
    b.mesh
        .handle_datagram(Instant::now(), elsewhere, &sealed, &mut scratch);
    b.collect();
    assert_eq!(b.io.tun, vec![packet]);
    assert_eq!(b.mesh.peers(Instant::now())[0].endpoint, Some(a.addr));
    // Once the old address has been quiet for a while, genuine packets from the new one move
    // the path there.
    let later = Instant::now() + std::time::Duration::from_secs(3);
    let packet = ipv4_packet(a.info.mesh_ip, b.info.mesh_ip, b"moved");
    send_from_tun(&mut a, &packet);
    let (_, sealed) = a.io.udp.pop().unwrap();
    b.mesh
        .handle_datagram(later, elsewhere, &sealed, &mut scratch);
    b.collect();
    assert_eq!(b.io.tun.last(), Some(&packet));
    assert_eq!(b.mesh.peers(later)[0].endpoint, Some(elsewhere));
}

#[test]
fn removed_peers_stop_receiving() {
    let (mut a, mut b) = (host(1), host(2));
    connect(&mut a, &mut b);
    b.mesh.apply_peer_map(Instant::now(), vec![]);
    assert!(b.mesh.peers(Instant::now()).is_empty());
    assert!(b.mesh.peers(Instant::now()).is_empty());
    let packet = ipv4_packet(a.info.mesh_ip, b.info.mesh_ip, b"bye");
    send_from_tun(&mut a, &packet);
    pump(&mut [&mut a, &mut b]);
    assert!(b.io.tun.is_empty());
}

#[test]
fn tunnels_keep_idle_paths_alive_at_the_configured_interval() {
    let (mut a, mut b) = (host_with_keepalive(1, 7), host(2));
    connect(&mut a, &mut b);
    assert_eq!(a.mesh.keepalives(), vec![Some(7)]);
    assert_eq!(b.mesh.keepalives(), vec![Some(25)]);
}

/// A ping as peer `from` would send it to `to`.
fn ping_from(from: &Host, to: &Host, counter: u64) -> Vec<u8> {
    let secret = x25519_dalek::StaticSecret::from([from.info.mesh_ip.octets()[3]; 32]);
    let key = ProbeKey::derive(&secret, &from.info.public_key, &to.info.public_key);
    key.seal(
        &from.info.public_key,
        &Probe::Ping {
            tx: [counter as u8; 12],
            counter,
        },
        [counter as u8; 12],
    )
    .to_vec()
}

#[test]
fn a_probe_answer_is_exactly_as_large_as_the_probe() {
    let (a, mut b) = (host(1), host(2));
    know(&mut b, &[&a.info]);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let ping = ping_from(&a, &b, 5);
    b.mesh
        .handle_probe(Instant::now(), a.addr, &ping, &mut scratch);
    b.collect();
    assert_eq!(b.io.udp.len(), 1);
    assert_eq!(b.io.udp[0].0, a.addr);
    assert_eq!(b.io.udp[0].1.len(), ping.len());
}

#[test]
fn a_replayed_ping_gets_no_pong_from_anywhere() {
    let (a, mut b) = (host(1), host(2));
    know(&mut b, &[&a.info]);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let ping = ping_from(&a, &b, 1_000);
    let now = Instant::now();
    b.mesh.handle_probe(now, a.addr, &ping, &mut scratch);
    b.collect();
    assert_eq!(b.io.udp.len(), 1);
    b.io.udp.clear();
    for port in 1..50 {
        let src = SocketAddr::from(([198, 51, 100, 9], port));
        b.mesh.handle_probe(now, src, &ping, &mut scratch);
        b.collect();
    }
    assert!(b.io.udp.is_empty(), "{} answers to replays", b.io.udp.len());
    // Nor did the replays become candidates that b punches.
    b.mesh
        .handle_timeout(now + Duration::from_secs(5), &mut scratch);
    b.collect();
    assert!(b
        .io
        .udp
        .iter()
        .all(|(dst, _)| dst.ip() != std::net::IpAddr::from([198, 51, 100, 9])));
}

#[test]
fn a_ping_without_a_counter_from_an_older_node_gets_a_pong_but_teaches_nothing() {
    let (a, mut b) = (host(1), host(2));
    know(&mut b, &[&a.info]);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let now = Instant::now();
    let elsewhere: SocketAddr = "198.51.100.9:4000".parse().unwrap();
    let old = ping_from(&a, &b, 0);
    b.mesh.handle_probe(now, elsewhere, &old, &mut scratch);
    b.collect();
    assert_eq!(b.io.udp.len(), 1, "a pong");
    b.io.udp.clear();
    b.mesh.handle_timeout(now, &mut scratch);
    b.collect();
    assert!(b.io.udp.iter().all(|(dst, _)| *dst != elsewhere));
}

#[test]
fn idle_peers_cost_nothing() {
    let mut a = host(1);
    let peers: Vec<PeerInfo> = (2..=250u8).map(|i| host(i).info).collect();
    a.mesh.apply_peer_map(Instant::now(), peers);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    a.mesh.tick(Instant::now(), &mut scratch);
    a.collect();
    a.mesh.handle_timeout(Instant::now(), &mut scratch);
    a.collect();
    assert!(a.io.udp.is_empty());
    assert_eq!(a.mesh.poll_punch_request(), None);
    assert_eq!(a.mesh.poll_timeout(), None);
    assert!(a.mesh.keepalives().is_empty(), "no tunnels");
    let views = a.mesh.peers(Instant::now());
    assert_eq!(views.len(), 249);
    assert!(views.iter().all(|v| v.path == Path::Idle));
}

#[test]
fn the_first_packet_builds_the_tunnel_and_asks_for_a_coordinated_punch() {
    let (mut a, b) = (host(1), host(2));
    know(&mut a, &[&b.info]);
    let now = Instant::now();
    let first = ipv4_packet(a.info.mesh_ip, b.info.mesh_ip, b"x");
    send_from_tun(&mut a, &first);
    assert_eq!(a.io.udp.len(), 1, "a handshake to b's public candidate");
    assert_eq!(a.io.udp[0].0, b.addr);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let wake = a.mesh.poll_timeout().expect("a punch is wanted");
    a.mesh.handle_timeout(wake.max(now), &mut scratch);
    a.collect();
    let punches: Vec<PublicKey> = std::iter::from_fn(|| a.mesh.poll_punch_request()).collect();
    assert_eq!(punches, vec![b.info.public_key]);
    assert_eq!(a.mesh.peers(now)[0].path, Path::Connecting);
}

#[test]
fn probes_to_addresses_nobody_verified_are_budgeted_per_address() {
    let (mut a, mut b) = (host(1), host(2));
    // b claims four LAN addresses, all of them on somebody else's machine.
    let victim = Ipv4Addr::new(10, 77, 0, 1);
    b.info.candidates = Candidates {
        public: Some(b.addr),
        local: (1..=4)
            .map(|p| SocketAddr::from((victim, 40_000 + p)))
            .collect(),
    };
    know(&mut a, &[&b.info]);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let t0 = Instant::now();
    // The coordinator tells a to punch b again and again for 10 s.
    let mut to_victim = 0;
    let mut to_public = 0;
    for i in 0..100u64 {
        let now = t0 + Duration::from_millis(i * 100);
        if i % 20 == 0 {
            a.mesh
                .punch(now, &b.info.public_key, &b.info.candidates, &mut scratch);
            a.collect();
        }
        a.mesh.handle_timeout(now, &mut scratch);
        a.collect();
        for (dst, _) in a.io.udp.drain(..) {
            if dst.ip() == std::net::IpAddr::V4(victim) {
                to_victim += 1;
            } else if dst == b.addr {
                to_public += 1;
            }
        }
    }
    // A burst of 6, then one a second.
    assert!(to_victim <= 6 + 10, "{to_victim} probes at the victim");
    assert!(
        to_public >= 40,
        "{to_public} probes to the verified address"
    );
}

#[test]
fn implausible_peer_map_entries_are_refused() {
    let mut a = host(1);
    a.mesh
        .set_identity(a.info.mesh_ip, "100.64.0.0/10".parse().unwrap());
    let good = host(2).info;
    let mut outside = host(3).info;
    outside.mesh_ip = Ipv4Addr::new(192, 168, 1, 1);
    let mut mine = host(4).info;
    mine.mesh_ip = a.info.mesh_ip;
    let mut twice = host(5).info;
    twice.mesh_ip = good.mesh_ip;
    let mut broadcast = host(6).info;
    broadcast.mesh_ip = Ipv4Addr::new(100, 127, 255, 255);
    let myself = a.info.clone();
    let mut relay_without_address = host(7).info;
    relay_without_address.role = Role::Relay;
    relay_without_address.candidates.public = None;
    a.mesh.apply_peer_map(
        Instant::now(),
        vec![
            good.clone(),
            outside,
            mine,
            twice,
            broadcast,
            myself,
            relay_without_address,
        ],
    );
    let names: Vec<String> = a
        .mesh
        .peers(Instant::now())
        .into_iter()
        .map(|v| v.info.name)
        .collect();
    assert_eq!(names, vec![good.name]);
}

#[test]
fn a_punch_that_comes_before_the_peer_map_is_done_once_the_map_shows_the_peer() {
    let (mut a, b) = (host(1), host(2));
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let now = Instant::now();
    a.mesh
        .punch(now, &b.info.public_key, &b.info.candidates, &mut scratch);
    a.collect();
    assert!(a.io.udp.is_empty(), "a does not know b yet");
    know(&mut a, &[&b.info]);
    let wake = a.mesh.poll_timeout().expect("a punch is due");
    a.mesh.handle_timeout(wake.max(now), &mut scratch);
    a.collect();
    assert!(
        a.io.udp.iter().any(|(dst, _)| *dst == b.addr),
        "no probe to b after the map showed it"
    );
}

#[test]
fn a_ping_stays_a_replay_after_its_peer_was_dropped_and_listed_again() {
    let (a, mut b) = (host(1), host(2));
    know(&mut b, &[&a.info]);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let now = Instant::now();
    let ping = ping_from(&a, &b, 7_000);
    b.mesh.handle_probe(now, a.addr, &ping, &mut scratch);
    b.collect();
    assert_eq!(b.io.udp.len(), 1);
    b.io.udp.clear();
    b.mesh.apply_peer_map(now, vec![]);
    know(&mut b, &[&a.info]);
    b.mesh.handle_probe(now, a.addr, &ping, &mut scratch);
    b.collect();
    assert!(b.io.udp.is_empty(), "the old ping was answered again");
}

#[test]
fn pings_without_a_counter_get_a_few_pongs_only() {
    let (a, mut b) = (host(1), host(2));
    know(&mut b, &[&a.info]);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let now = Instant::now();
    let old = ping_from(&a, &b, 0);
    for _ in 0..50 {
        b.mesh.handle_probe(now, a.addr, &old, &mut scratch);
        b.collect();
    }
    assert!(
        b.io.udp.len() <= 4,
        "{} pongs to one replayable ping",
        b.io.udp.len()
    );
}

mod lan;
mod offload;
