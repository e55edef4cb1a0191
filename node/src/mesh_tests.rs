//! Two or three [`Mesh`]es wired together in memory: real boringtun handshakes and sealing,
//! with an [`Io`] that records what would go to the socket and the TUN.

use crate::mesh::{Io, Mesh, Path, SCRATCH_LEN};
use lanmesh_proto::messages::PeerInfo;
use lanmesh_proto::PublicKey;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;
use x25519_dalek::StaticSecret;

#[derive(Default)]
struct Recorder {
    udp: Vec<(SocketAddr, Vec<u8>)>,
    tun: Vec<Vec<u8>>,
}

impl Io for Recorder {
    fn send_udp(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.udp.push((dst, datagram.to_vec()));
    }
    fn write_tun(&mut self, packet: &[u8]) {
        self.tun.push(packet.to_vec());
    }
}

struct Host {
    mesh: Mesh,
    io: Recorder,
    addr: SocketAddr,
    info: PeerInfo,
}

fn host(i: u8) -> Host {
    host_with_keepalive(i, 25)
}

fn host_with_keepalive(i: u8, keepalive: u16) -> Host {
    let secret = StaticSecret::from([i; 32]);
    let public = PublicKey::from(x25519_dalek::PublicKey::from(&secret));
    let addr = SocketAddr::from(([203, 0, 113, i], 41641));
    Host {
        mesh: Mesh::new(secret, keepalive, Instant::now()),
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
                h.mesh
                    .handle_datagram(Instant::now(), src, &d, &mut scratch, &mut h.io);
            }
        }
    }
}

fn connect(a: &mut Host, b: &mut Host) {
    let mut scratch = vec![0u8; SCRATCH_LEN];
    a.mesh.apply_peer_map(
        Instant::now(),
        vec![b.info.clone()],
        &mut scratch,
        &mut a.io,
    );
    b.mesh.apply_peer_map(
        Instant::now(),
        vec![a.info.clone()],
        &mut scratch,
        &mut b.io,
    );
    pump(&mut [a, b]);
    a.mesh.tick(Instant::now(), &mut scratch, &mut a.io);
    b.mesh.tick(Instant::now(), &mut scratch, &mut b.io);
    pump(&mut [a, b]);
}

fn send_from_tun(h: &mut Host, packet: &[u8]) {
    let mut scratch = vec![0u8; SCRATCH_LEN];
    h.mesh
        .handle_tun_packet(Instant::now(), packet, &mut scratch, &mut h.io);
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
    stranger.mesh.apply_peer_map(
        Instant::now(),
        vec![b.info.clone()],
        &mut scratch,
        &mut stranger.io,
    );
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
        &mut b.io,
    );
    b.mesh.handle_datagram(
        Instant::now(),
        stranger.addr,
        &[1, 0, 0, 0],
        &mut scratch,
        &mut b.io,
    );
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
        &mut b.io,
    );
    assert_eq!(b.mesh.peers(Instant::now())[0].endpoint, Some(a.addr));
    // A genuine packet from a new address while the old one is still live: delivered, but the
    // path stays (no flapping between two working paths).
    let packet = ipv4_packet(a.info.mesh_ip, b.info.mesh_ip, b"both live");
    send_from_tun(&mut a, &packet);
    let (_, sealed) = a.io.udp.pop().unwrap();
    b.mesh
        .handle_datagram(Instant::now(), elsewhere, &sealed, &mut scratch, &mut b.io);
    assert_eq!(b.io.tun, vec![packet]);
    assert_eq!(b.mesh.peers(Instant::now())[0].endpoint, Some(a.addr));
    // Once the old address has been quiet for a while, genuine packets from the new one move
    // the path there.
    let later = Instant::now() + std::time::Duration::from_secs(3);
    let packet = ipv4_packet(a.info.mesh_ip, b.info.mesh_ip, b"moved");
    send_from_tun(&mut a, &packet);
    let (_, sealed) = a.io.udp.pop().unwrap();
    b.mesh
        .handle_datagram(later, elsewhere, &sealed, &mut scratch, &mut b.io);
    assert_eq!(b.io.tun.last(), Some(&packet));
    assert_eq!(b.mesh.peers(later)[0].endpoint, Some(elsewhere));
}

#[test]
fn removed_peers_stop_receiving() {
    let (mut a, mut b) = (host(1), host(2));
    connect(&mut a, &mut b);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    b.mesh
        .apply_peer_map(Instant::now(), vec![], &mut scratch, &mut b.io);
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

#[test]
fn a_probe_answer_is_exactly_as_large_as_the_probe() {
    let (mut a, mut b) = (host(1), host(2));
    let mut scratch = vec![0u8; SCRATCH_LEN];
    a.mesh.apply_peer_map(
        Instant::now(),
        vec![b.info.clone()],
        &mut scratch,
        &mut a.io,
    );
    b.mesh.apply_peer_map(
        Instant::now(),
        vec![a.info.clone()],
        &mut scratch,
        &mut b.io,
    );
    b.io.udp.clear();
    let ping =
        a.io.udp
            .iter()
            .find(|(_, d)| lanmesh_proto::probe::sender(d).is_some())
            .expect("a probes b")
            .1
            .clone();
    b.mesh
        .handle_probe(Instant::now(), a.addr, &ping, &mut scratch, &mut b.io);
    assert_eq!(b.io.udp.len(), 1);
    assert_eq!(b.io.udp[0].0, a.addr);
    assert_eq!(b.io.udp[0].1.len(), ping.len());
}
