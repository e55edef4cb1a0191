use super::*;

fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

fn lan(now: Instant) -> Lan {
    let mut lan = Lan::new(LanConfig::default(), now);
    lan.set_network("100.64.0.0/10".parse().unwrap());
    lan
}

#[test]
fn classifies_broadcast_and_multicast() {
    let now = Instant::now();
    let lan = lan(now);
    assert_eq!(lan.classify(Ipv4Addr::BROADCAST), Some(LanDst::Broadcast));
    assert_eq!(
        lan.classify(Ipv4Addr::new(100, 127, 255, 255)),
        Some(LanDst::Broadcast)
    );
    let minecraft = Ipv4Addr::new(224, 0, 2, 60);
    assert_eq!(lan.classify(minecraft), Some(LanDst::Multicast(minecraft)));
    let mdns = Ipv4Addr::new(224, 0, 0, 251);
    assert_eq!(lan.classify(mdns), Some(LanDst::Multicast(mdns)));
    assert_eq!(lan.classify(Ipv4Addr::new(100, 64, 0, 9)), None);
    // Another network's broadcast address is not ours.
    assert_eq!(lan.classify(Ipv4Addr::new(192, 168, 1, 255)), None);
}

#[test]
fn sending_is_limited_in_packets_and_bytes_and_refills() {
    let t0 = Instant::now();
    let mut lan = lan(t0);
    let sent = (0..1000).filter(|_| lan.admit_tx(t0, 100)).count();
    assert_eq!(
        sent, DEFAULT_PPS as usize,
        "a burst of one second's packets"
    );
    assert_eq!(lan.counters().broadcast_tx, 200);
    assert_eq!(lan.counters().broadcast_dropped, 800);
    // 5 ms later: one more packet's worth (200/s).
    assert!(lan.admit_tx(t0 + Duration::from_millis(5), 100));
    assert!(!lan.admit_tx(t0 + Duration::from_millis(5), 100));
    // Bytes: 1 Mbit/s is 125,000 bytes a second; large packets run out of bytes first.
    let mut lan2 = super::Lan::new(LanConfig::default(), t0);
    // (A token is 125 bytes; a packet costs whole tokens.)
    let per_second = 1000 / 1400usize.div_ceil(125);
    let big = (0..200).filter(|_| lan2.admit_tx(t0, 1400)).count();
    assert_eq!(big, per_second, "one second's bytes");
    let later = t0 + Duration::from_secs(1);
    let again = (0..200).filter(|_| lan2.admit_tx(later, 1400)).count();
    assert_eq!(again, per_second, "refilled after a second");
}

#[test]
fn receiving_is_limited_per_peer() {
    let t0 = Instant::now();
    let mut lan = lan(t0);
    let a = (0..1000).filter(|_| lan.admit_rx(t0, &key(1), 60)).count();
    assert_eq!(a, 200);
    // Another peer has its own budget: one flooding peer does not silence the others.
    assert!(lan.admit_rx(t0, &key(2), 60));
    assert_eq!(lan.counters().broadcast_rx, 201);
    assert_eq!(lan.counters().broadcast_dropped, 800);
}

#[test]
fn switched_off_by_the_node_or_the_network_nothing_passes() {
    let t0 = Instant::now();
    let mut off = Lan::new(
        LanConfig {
            enabled: false,
            ..LanConfig::default()
        },
        t0,
    );
    assert!(!off.active());
    assert!(!off.admit_tx(t0, 60));
    assert!(!off.admit_rx(t0, &key(1), 60));
    assert_eq!(off.counters().broadcast_dropped, 2);

    let mut lan = lan(t0);
    lan.set_groups(vec![Ipv4Addr::new(224, 0, 2, 60)]);
    assert_eq!(lan.announced_groups().len(), 1);
    lan.set_allowed(false);
    assert!(!lan.admit_tx(t0, 60));
    assert!(
        lan.announced_groups().is_empty(),
        "switched off, the node reports no groups, so peers send it none"
    );
}

#[test]
fn peers_get_the_groups_they_reported_and_everything_while_unknown() {
    let t0 = Instant::now();
    let minecraft = LanDst::Multicast(Ipv4Addr::new(224, 0, 2, 60));
    let ssdp = LanDst::Multicast(Ipv4Addr::new(239, 255, 255, 250));
    let mut peer = PeerGroups::default();
    assert!(
        peer.wants(t0, minecraft) && peer.wants(t0, ssdp),
        "unknown: flood"
    );
    peer.on_report(t0, &[Ipv4Addr::new(224, 0, 2, 60)]);
    assert!(peer.wants(t0, minecraft));
    assert!(!peer.wants(t0, ssdp));
    assert!(
        peer.wants(t0, LanDst::Broadcast),
        "broadcast goes to everyone"
    );
    // A later report replaces the earlier one (it states the whole set).
    peer.on_report(t0, &[]);
    assert!(!peer.wants(t0, minecraft));
    // A report not renewed in time is forgotten: the peer gets everything again.
    let late = t0 + MEMBERSHIP_FOR;
    assert!(peer.wants(late, minecraft) && peer.wants(late, ssdp));
}

#[test]
fn announcements_go_out_on_change_periodically_and_in_answer() {
    let t0 = Instant::now();
    let mut lan = lan(t0);
    let mut peer = PeerGroups::default();
    assert!(
        lan.announce_due(t0, &mut peer),
        "a new peer hears our groups at once"
    );
    assert!(!lan.announce_due(t0, &mut peer));
    let t1 = t0 + Duration::from_secs(5);
    lan.set_groups(vec![Ipv4Addr::new(224, 0, 2, 60)]);
    assert!(
        lan.announce_due(t1, &mut peer),
        "and again when they change"
    );
    assert!(!lan.announce_due(t1 + Duration::from_secs(30), &mut peer));
    // The same set again is no change.
    lan.set_groups(vec![Ipv4Addr::new(224, 0, 2, 60)]);
    assert!(!lan.announce_due(t1 + Duration::from_secs(31), &mut peer));
    assert!(
        lan.announce_due(t1 + ANNOUNCE_EVERY, &mut peer),
        "periodically"
    );
    // A peer that reports (it restarted, say) gets ours soon, not at once every time.
    let t2 = t1 + ANNOUNCE_EVERY;
    peer.on_report(t2, &[]);
    assert!(!lan.announce_due(t2 + Duration::from_millis(500), &mut peer));
    assert!(lan.announce_due(t2 + ANSWER_AFTER, &mut peer));
    assert!(!lan.announce_due(t2 + ANSWER_AFTER * 2, &mut peer));
}

#[test]
fn kernel_groups_are_read_when_stale() {
    let t0 = Instant::now();
    let mut lan = lan(t0);
    assert!(lan.take_groups_stale(), "read once at the start");
    assert!(!lan.take_groups_stale());
    lan.kernel_reported();
    assert!(lan.take_groups_stale());
}
