//! Broadcast and multicast between in-memory meshes: fan-out, group reports, loops, limits.

use super::*;
use crate::lan::{igmp, DEFAULT_PPS};

const MINECRAFT: Ipv4Addr = Ipv4Addr::new(224, 0, 2, 60);
const SSDP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);

fn lan_host(i: u8) -> Host {
    let mut h = host(i);
    h.mesh
        .set_identity(h.info.mesh_ip, "100.64.0.0/10".parse().unwrap());
    h
}

/// Three hosts that all know each other (no tunnels yet).
fn trio() -> (Host, Host, Host) {
    let (mut a, mut b, mut c) = (lan_host(1), lan_host(2), lan_host(3));
    let (ai, bi, ci) = (a.info.clone(), b.info.clone(), c.info.clone());
    know(&mut a, &[&bi, &ci]);
    know(&mut b, &[&ai, &ci]);
    know(&mut c, &[&ai, &bi]);
    (a, b, c)
}

fn udp_to(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    ipv4_packet(src, dst, payload)
}

/// Ticks every host (reports go out) and delivers everything.
fn settle(hosts: &mut [&mut Host]) {
    let mut scratch = vec![0u8; SCRATCH_LEN];
    for _ in 0..3 {
        for h in hosts.iter_mut() {
            h.mesh.tick(Instant::now(), &mut scratch);
            h.collect();
        }
        pump(hosts);
    }
}

fn copies(h: &Host, packet: &[u8]) -> usize {
    h.io.tun.iter().filter(|p| p.as_slice() == packet).count()
}

#[test]
fn a_broadcast_reaches_every_peer_once_also_over_idle_tunnels() {
    let (mut a, mut b, mut c) = trio();
    for dst in [Ipv4Addr::BROADCAST, Ipv4Addr::new(100, 127, 255, 255)] {
        let query = udp_to(a.info.mesh_ip, dst, b"who has a game?");
        send_from_tun(&mut a, &query);
        pump(&mut [&mut a, &mut b, &mut c]);
        assert_eq!(copies(&b, &query), 1, "b gets {dst} once");
        assert_eq!(copies(&c, &query), 1, "c gets {dst} once");
        assert!(a.io.tun.is_empty(), "nothing comes back to the sender");
    }
    assert_eq!(a.mesh.lan_counters().broadcast_tx, 2);
    assert_eq!(b.mesh.lan_counters().broadcast_rx, 2);
}

#[test]
fn what_arrives_from_a_peer_is_never_sent_on() {
    let (mut a, mut b, mut c) = trio();
    let query = udp_to(a.info.mesh_ip, Ipv4Addr::BROADCAST, b"query");
    send_from_tun(&mut a, &query);
    pump(&mut [&mut a, &mut b, &mut c]);
    // b's kernel would deliver it locally; if a program or the kernel wrote it back into b's
    // TUN, its source is a's address, not b's: it does not leave b.
    let sent = b.mesh.lan_counters().broadcast_tx;
    send_from_tun(&mut b, &query);
    pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(b.mesh.lan_counters().broadcast_tx, sent);
    assert_eq!(copies(&c, &query), 1);
    assert_eq!(copies(&a, &query), 0);
}

#[test]
fn multicast_goes_to_the_peers_that_joined_once_they_reported() {
    let (mut a, mut b, mut c) = trio();
    // Before any report, every peer gets every group (its kernel drops the rest).
    let early = udp_to(a.info.mesh_ip, SSDP, b"M-SEARCH");
    send_from_tun(&mut a, &early);
    pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!((copies(&b, &early), copies(&c, &early)), (1, 1));
    // b joins the Minecraft group, c none; each reports over its tunnel.
    b.mesh.set_lan_groups(vec![MINECRAFT]);
    c.mesh.set_lan_groups(vec![]);
    settle(&mut [&mut a, &mut b, &mut c]);
    let groups = a.mesh.lan_peer_groups(Instant::now());
    assert!(
        groups.contains(&("h2".into(), Some(vec![MINECRAFT]))),
        "{groups:?}"
    );
    assert!(groups.contains(&("h3".into(), Some(vec![]))), "{groups:?}");
    // Reports are taken in, not written to anyone's TUN.
    assert!(a.io.tun.iter().all(|p| !igmp::is_igmp(p)));
    let announce = udp_to(
        a.info.mesh_ip,
        MINECRAFT,
        b"[MOTD]party[/MOTD][AD]25565[/AD]",
    );
    send_from_tun(&mut a, &announce);
    let ssdp = udp_to(a.info.mesh_ip, SSDP, b"M-SEARCH again");
    send_from_tun(&mut a, &ssdp);
    pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(copies(&b, &announce), 1);
    assert_eq!(copies(&c, &announce), 0, "c did not join");
    assert_eq!(
        copies(&b, &ssdp) + copies(&c, &ssdp),
        0,
        "nobody joined SSDP"
    );
    // c joins later: its next report says so and it gets the announcements.
    c.mesh.set_lan_groups(vec![MINECRAFT, SSDP]);
    settle(&mut [&mut a, &mut b, &mut c]);
    send_from_tun(&mut a, &announce);
    pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(copies(&c, &announce), 1);
}

#[test]
fn the_kernels_own_igmp_reports_stay_home() {
    let (mut a, mut b, mut c) = trio();
    let mut report = [0u8; igmp::MAX_REPORT_LEN];
    let n = igmp::write_report(a.info.mesh_ip, &[MINECRAFT], &mut report);
    let _ = a.mesh.lan_groups_stale(); // the first read at the start
    send_from_tun(&mut a, &report[..n]);
    assert!(
        a.mesh.lan_groups_stale(),
        "the driver re-reads the kernel's groups"
    );
    pump(&mut [&mut a, &mut b, &mut c]);
    assert!(b.io.tun.is_empty() && c.io.tun.is_empty());
    assert_eq!(a.mesh.lan_counters().broadcast_tx, 0);
}

#[test]
fn a_broadcast_flood_is_cut_to_the_limit() {
    let (mut a, mut b, mut c) = trio();
    let query = udp_to(a.info.mesh_ip, Ipv4Addr::BROADCAST, b"flood");
    for _ in 0..1000 {
        send_from_tun(&mut a, &query);
        pump(&mut [&mut a, &mut b, &mut c]);
    }
    let limit = DEFAULT_PPS as usize;
    // The test runs in well under a second; a few tokens may refill meanwhile.
    assert!(
        (limit..limit + 20).contains(&copies(&b, &query)),
        "{}",
        copies(&b, &query)
    );
    let counters = a.mesh.lan_counters();
    assert_eq!(counters.broadcast_tx + counters.broadcast_dropped, 1000);
    // Unicast is not limited by it.
    let unicast = udp_to(a.info.mesh_ip, b.info.mesh_ip, b"still here");
    send_from_tun(&mut a, &unicast);
    pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(copies(&b, &unicast), 1);
}

#[test]
fn switched_off_by_the_coordinator_nothing_goes_or_comes() {
    let (mut a, mut b, mut c) = trio();
    b.mesh
        .set_network_policy(lanmesh_proto::messages::policy::NO_LAN_BROADCAST);
    let query = udp_to(a.info.mesh_ip, Ipv4Addr::BROADCAST, b"anyone?");
    send_from_tun(&mut a, &query);
    pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(copies(&b, &query), 0, "b takes none in");
    assert_eq!(copies(&c, &query), 1);
    let back = udp_to(b.info.mesh_ip, Ipv4Addr::BROADCAST, b"me");
    send_from_tun(&mut b, &back);
    pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(copies(&a, &back) + copies(&c, &back), 0, "b sends none out");
    assert!(!b.mesh.lan_active());
}

#[test]
fn broadcasts_not_from_our_own_address_do_not_leave() {
    let (mut a, mut b, mut c) = trio();
    let forwarded = udp_to(
        Ipv4Addr::new(192, 168, 1, 20),
        Ipv4Addr::BROADCAST,
        b"from the LAN",
    );
    send_from_tun(&mut a, &forwarded);
    pump(&mut [&mut a, &mut b, &mut c]);
    assert!(b.io.tun.is_empty() && c.io.tun.is_empty());
}
