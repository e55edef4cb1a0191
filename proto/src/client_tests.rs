//! Deterministic tests of the node's control client against a scripted coordinator built from
//! the real protocol pieces, with injected time.

use crate::channel::{IncomingHello, Session, MAX_DATAGRAM, TRANSPORT_OVERHEAD};
use crate::client::{ClientConfig, ControlClient, Event, Transmit, Trust};
use crate::cookie::CookieMaker;
use crate::header::{self, ControlKind, HEADER_LEN};
use crate::join_key::JoinSecret;
use crate::messages::{
    self, caps, Change, MeshAddress, PeerInfo, RejectReason, Role, ToCoordinator, ToNode, Welcome,
    HEARTBEAT_LEN, MAX_PLAINTEXT,
};
use crate::{JoinKey, PublicKey};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const NODE_SECRET: [u8; 32] = [1; 32];
const COORD_SECRET: [u8; 32] = [2; 32];

fn coord_addr() -> SocketAddr {
    "203.0.113.10:3478".parse().unwrap()
}

fn coord_public() -> PublicKey {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(COORD_SECRET)).into()
}

fn config(trust: Trust, join: Option<JoinSecret>) -> ClientConfig {
    ClientConfig {
        private: NODE_SECRET,
        coordinator_addr: coord_addr(),
        trust,
        join,
        name: "n".into(),
        role: Role::Node,
        stamp_floor: 0,
    }
}

/// The wall clock the tests pretend it is (ns since the epoch).
const WALL: u64 = 1_700_000_000_000_000_000;

fn client(trust: Trust, now: Instant) -> ControlClient {
    let mut c = ControlClient::new(config(trust, None), 100);
    c.start(now, WALL);
    c
}

fn is_hello(t: &Transmit) -> bool {
    matches!(kind(t), ControlKind::Hello | ControlKind::HelloMac)
}

fn sent(c: &mut ControlClient) -> Vec<Transmit> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}

fn events(c: &mut ControlClient) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn kind(t: &Transmit) -> ControlKind {
    header::ControlHeader::parse(&t.payload)
        .unwrap()
        .kind
        .unwrap()
}

fn accepted(map_version: u64) -> Welcome {
    Welcome::Accepted {
        name: "n".into(),
        mesh: Some(MeshAddress {
            ip: "100.64.0.1".parse().unwrap(),
            network: "100.64.0.0/10".parse().unwrap(),
        }),
        heartbeat_secs: 5,
        map_version,
        endpoint: "198.51.100.1:41641".parse().unwrap(),
        stun_port: Some(3480),
        capabilities: caps::ALL,
        policy: 0,
        domain: String::new(),
    }
}

/// Answers the client's latest Hello; returns the coordinator's session.
fn welcome(c: &mut ControlClient, now: Instant, w: &Welcome) -> Option<Session> {
    let hello = sent(c)
        .into_iter()
        .rev()
        .find(is_hello)
        .expect("a hello was sent");
    let incoming = IncomingHello::read(&COORD_SECRET, &hello.payload).unwrap();
    let mut out = [0u8; MAX_DATAGRAM];
    let (n, session) = incoming.answer(9, w, &mut out).unwrap();
    c.handle_datagram(now, WALL, coord_addr(), &out[..n]);
    session
}

/// Registers a client and drains what it sent and said; returns the coordinator's session.
fn connected(now: Instant, w: &Welcome) -> (ControlClient, Session) {
    let mut c = client(Trust::Pinned(coord_public()), now);
    let s = welcome(&mut c, now, w).unwrap();
    events(&mut c);
    (c, s)
}

fn to_node(c: &mut ControlClient, s: &mut Session, now: Instant, msg: &ToNode) {
    let mut plain = [0u8; MAX_PLAINTEXT];
    let n = messages::encode(msg, &mut plain, 0).unwrap();
    let mut out = [0u8; MAX_DATAGRAM];
    let m = s.seal(&plain[..n], &mut out).unwrap();
    c.handle_datagram(now, WALL, coord_addr(), &out[..m]);
}

fn from_node(s: &mut Session, t: &Transmit) -> ToCoordinator {
    let mut plain = [0u8; MAX_DATAGRAM];
    let p = s.open(&t.payload, &mut plain).unwrap();
    messages::decode(p).unwrap()
}

/// The coordinator's answer to a heartbeat (it saw us at 198.51.100.1:1).
fn heartbeat_ack(challenge: u64) -> ToNode {
    ToNode::HeartbeatAck {
        map_version: 0,
        endpoint: "198.51.100.1:1".parse().unwrap(),
        challenge,
    }
}

fn peer(i: u8) -> PeerInfo {
    PeerInfo {
        name: format!("p{i}"),
        public_key: PublicKey([i; 32]),
        mesh_ip: std::net::Ipv4Addr::new(100, 64, 0, i),
        candidates: Default::default(),
        online: true,
        role: Role::Node,
    }
}

fn key_answer(key: &PublicKey) -> Vec<u8> {
    let mut answer = vec![0u8; HEADER_LEN + 32];
    header::write_header(ControlKind::KeyResponse, &mut answer);
    answer[HEADER_LEN..].copy_from_slice(key.as_bytes());
    answer
}

#[test]
fn first_use_pins_the_key_then_registers() {
    let t0 = Instant::now();
    let mut c = client(Trust::FirstUse, t0);
    let out = sent(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(kind(&out[0]), ControlKind::KeyRequest);
    let answer = key_answer(&coord_public());
    // A key answer from anyone but the coordinator is ignored.
    c.handle_datagram(t0, WALL, "203.0.113.99:3478".parse().unwrap(), &answer);
    assert!(events(&mut c).is_empty());
    c.handle_datagram(t0, WALL, coord_addr(), &answer);
    assert_eq!(events(&mut c), vec![Event::Pin(coord_public())]);
    assert!(welcome(&mut c, t0, &accepted(1)).is_some());
    assert!(matches!(events(&mut c)[..], [Event::Registered { .. }]));
    assert!(c.is_connected());
}

#[test]
fn another_key_than_the_join_keys_warns_and_keeps_trying() {
    let t0 = Instant::now();
    let mut c = client(Trust::JoinKey(PublicKey([7; 32])), t0);
    assert_eq!(kind(&sent(&mut c)[0]), ControlKind::HelloMac);
    // No answer: after the retry the node also asks for the key, to diagnose.
    c.handle_timeout(t0 + Duration::from_secs(1), WALL);
    let kinds: Vec<_> = sent(&mut c).iter().map(kind).collect();
    assert!(kinds.contains(&ControlKind::KeyRequest), "{kinds:?}");
    let answer = key_answer(&coord_public());
    c.handle_datagram(t0, WALL, coord_addr(), &answer);
    c.handle_datagram(t0, WALL, coord_addr(), &answer);
    let ev = events(&mut c);
    let warnings: Vec<_> = ev
        .iter()
        .filter(|e| matches!(e, Event::Warning(m) if m.contains("join key")))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per attempt: {ev:?}");
    assert!(c.problem().is_some_and(|p| p.contains("join key")));
    // Still trying.
    let next = c.poll_timeout().expect("keeps trying");
    c.handle_timeout(next, WALL);
    assert!(sent(&mut c).iter().any(is_hello));
}

#[test]
fn handshake_retries_back_off_to_ten_seconds_and_try_the_older_form() {
    let t0 = Instant::now();
    let mut c = client(Trust::Pinned(coord_public()), t0);
    let mut forms = vec![kind(&sent(&mut c)[0])];
    let mut now = t0;
    let mut gaps = Vec::new();
    for _ in 0..6 {
        let next = c.poll_timeout().unwrap();
        gaps.push((next - now).as_secs());
        now = next;
        c.handle_timeout(now, WALL);
        forms.extend(sent(&mut c).iter().filter(|t| is_hello(t)).map(kind));
    }
    assert_eq!(gaps, vec![1, 2, 4, 8, 10, 10]);
    use ControlKind::{Hello as L, HelloMac as M};
    assert_eq!(forms, vec![M, M, L, M, M, L, M]);
    assert!(events(&mut c)
        .iter()
        .all(|e| matches!(e, Event::Unreachable { .. })));
}

#[test]
fn a_rejection_is_reported_and_retried_later() {
    let t0 = Instant::now();
    let mut c = client(Trust::Pinned(coord_public()), t0);
    let reject = Welcome::Rejected {
        reason: RejectReason::KeyUsed,
        message: "this one-off join key was already used".into(),
    };
    welcome(&mut c, t0, &reject);
    let retry = match &events(&mut c)[..] {
        [Event::Rejected {
            reason: RejectReason::KeyUsed,
            message,
            ever_registered: false,
            retry_in,
        }] => {
            assert!(message.contains("already used"), "{message}");
            *retry_in
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(c.poll_timeout(), Some(t0 + retry));
    c.handle_timeout(t0 + retry, WALL);
    // It tries again (welcome() answers its new Hello); a second rejection waits longer.
    welcome(&mut c, t0 + retry, &reject);
    match &events(&mut c)[..] {
        [Event::Rejected { retry_in, .. }] => assert_eq!(*retry_in, retry * 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_version_mismatch_only_warns_while_handshaking() {
    let t0 = Instant::now();
    let mut c = client(Trust::Pinned(coord_public()), t0);
    c.handle_datagram(t0, WALL, coord_addr(), b"LM\x07\x06");
    assert!(matches!(&events(&mut c)[..], [Event::Warning(m)] if m.contains("version 7")));
    assert!(c.poll_timeout().is_some());
    assert!(welcome(&mut c, t0, &accepted(0)).is_some());
    assert!(c.is_connected());
}

/// What the attacker sends with the coordinator's address as source: none of it may
/// change anything once the node is registered.
#[test]
fn forged_datagrams_from_the_coordinators_address_change_nothing_when_connected() {
    let t0 = Instant::now();
    let (mut c, _s) = connected(t0, &accepted(0));
    sent(&mut c);
    let mut forged: Vec<Vec<u8>> = vec![
        b"LM\x07\x06".to_vec(),
        b"LM\x00\x06".to_vec(),
        b"LM\x02\xff".to_vec(),
        key_answer(&PublicKey([9; 32])),
        key_answer(&coord_public()),
    ];
    let mut welcome_like = vec![0u8; 200];
    header::write_header(ControlKind::Welcome, &mut welcome_like);
    forged.push(welcome_like);
    let mut transport = vec![0u8; 100];
    header::write_header(ControlKind::Transport, &mut transport);
    forged.push(transport);
    let mut cookie = vec![0u8; crate::cookie::COOKIE_REPLY_LEN];
    header::write_header(ControlKind::CookieReply, &mut cookie);
    forged.push(cookie);
    for d in &forged {
        c.handle_datagram(t0, WALL, coord_addr(), d);
    }
    assert!(c.is_connected());
    assert_eq!(events(&mut c), vec![]);
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.problem(), None);
}

#[test]
fn the_peer_map_is_pulled_page_by_page_then_by_changes() {
    let t0 = Instant::now();
    let (mut c, mut s) = connected(t0, &accepted(4));
    let out = sent(&mut c);
    // The confirming heartbeat, then the first pull (of the whole map).
    assert!(matches!(
        from_node(&mut s, &out[0]),
        ToCoordinator::Heartbeat { map_version: 0, .. }
    ));
    assert_eq!(
        from_node(&mut s, &out[1]),
        ToCoordinator::GetPeers {
            map_version: 4,
            offset: 0
        }
    );
    // Page requests are padded to the largest page.
    assert!(out[1].payload.len() >= MAX_PLAINTEXT);
    let page = |offset, peers| ToNode::PeerPage {
        map_version: 4,
        offset,
        total: 3,
        peers,
    };
    to_node(&mut c, &mut s, t0, &page(0, vec![peer(1), peer(2)]));
    let out = sent(&mut c);
    assert_eq!(
        from_node(&mut s, &out[0]),
        ToCoordinator::GetPeers {
            map_version: 4,
            offset: 2
        }
    );
    // A lost answer is asked for again.
    c.handle_timeout(t0 + Duration::from_secs(1), WALL);
    let out = sent(&mut c);
    assert_eq!(
        from_node(&mut s, &out[0]),
        ToCoordinator::GetPeers {
            map_version: 4,
            offset: 2
        }
    );
    to_node(&mut c, &mut s, t0, &page(2, vec![peer(3)]));
    assert_eq!(
        events(&mut c),
        vec![Event::PeerMap(vec![peer(1), peer(2), peer(3)])]
    );
    // A change announcement starts a pull of the changes only.
    to_node(&mut c, &mut s, t0, &ToNode::MapChanged { map_version: 6 });
    let out = sent(&mut c);
    assert_eq!(
        from_node(&mut s, &out[0]),
        ToCoordinator::GetChanges {
            since: 4,
            map_version: 6,
            offset: 0
        }
    );
    assert!(out[0].payload.len() >= MAX_PLAINTEXT);
    let mut moved = peer(2);
    moved.online = false;
    to_node(
        &mut c,
        &mut s,
        t0,
        &ToNode::Changes {
            map_version: 6,
            since: 4,
            offset: 0,
            total: 3,
            reset: false,
            changes: vec![
                Change::Removed(peer(1).public_key),
                Change::Peer(moved.clone()),
                Change::Peer(peer(4)),
            ],
        },
    );
    assert_eq!(
        events(&mut c),
        vec![Event::PeerMap(vec![moved, peer(3), peer(4)])]
    );
    // A reset replaces everything.
    to_node(&mut c, &mut s, t0, &ToNode::MapChanged { map_version: 9 });
    sent(&mut c);
    to_node(
        &mut c,
        &mut s,
        t0,
        &ToNode::Changes {
            map_version: 9,
            since: 6,
            offset: 0,
            total: 1,
            reset: true,
            changes: vec![Change::Peer(peer(5))],
        },
    );
    assert_eq!(events(&mut c), vec![Event::PeerMap(vec![peer(5)])]);
}

#[test]
fn a_coordinator_without_deltas_gets_whole_map_pulls() {
    let t0 = Instant::now();
    let mut old = accepted(4);
    if let Welcome::Accepted { capabilities, .. } = &mut old {
        *capabilities = 0;
    }
    let (mut c, mut s) = connected(t0, &old);
    sent(&mut c);
    to_node(
        &mut c,
        &mut s,
        t0,
        &ToNode::PeerPage {
            map_version: 4,
            offset: 0,
            total: 1,
            peers: vec![peer(1)],
        },
    );
    events(&mut c);
    to_node(&mut c, &mut s, t0, &ToNode::MapChanged { map_version: 5 });
    let out = sent(&mut c);
    assert_eq!(
        from_node(&mut s, &out[0]),
        ToCoordinator::GetPeers {
            map_version: 5,
            offset: 0
        }
    );
}

#[test]
fn missed_heartbeats_mean_the_coordinator_is_lost() {
    let t0 = Instant::now();
    let (mut c, mut s) = connected(t0, &accepted(0));
    let mut beats = Vec::new();
    for t in sent(&mut c) {
        assert!(matches!(
            from_node(&mut s, &t),
            ToCoordinator::Heartbeat { .. }
        ));
        // Heartbeats are padded so the ack is never larger.
        assert_eq!(t.payload.len(), HEARTBEAT_LEN + TRANSPORT_OVERHEAD);
        beats.push(0);
    }
    let mut now = t0;
    let mut hello_again = false;
    while !events(&mut c).contains(&Event::Lost) {
        now = c.poll_timeout().unwrap();
        assert!(now - t0 < Duration::from_secs(30), "never declared lost");
        c.handle_timeout(now, WALL);
        for t in sent(&mut c) {
            match kind(&t) {
                ControlKind::Transport => {
                    assert!(matches!(
                        from_node(&mut s, &t),
                        ToCoordinator::Heartbeat { .. }
                    ));
                    beats.push((now - t0).as_secs());
                }
                ControlKind::Hello | ControlKind::HelloMac => hello_again = true,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    // The confirming beat at once, two quick retries, then lost 2 s after the third.
    assert_eq!(beats, vec![0, 2, 4]);
    assert_eq!((now - t0).as_secs(), 6);
    assert!(!c.is_connected());
    // It is already trying to register again.
    assert!(hello_again);
}

#[test]
fn acked_heartbeats_keep_the_session() {
    let t0 = Instant::now();
    let (mut c, mut s) = connected(t0, &accepted(0));
    sent(&mut c);
    let ack = heartbeat_ack(0);
    to_node(&mut c, &mut s, t0, &ack);
    let mut now = t0;
    for _ in 0..20 {
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now, WALL);
        if !sent(&mut c).is_empty() {
            to_node(&mut c, &mut s, now, &ack);
        }
    }
    assert!(c.is_connected());
    assert!(!events(&mut c).contains(&Event::Lost));
    assert!(now - t0 >= Duration::from_secs(60));
}

#[test]
fn a_challenge_is_echoed_once_at_once() {
    let t0 = Instant::now();
    let (mut c, mut s) = connected(t0, &accepted(0));
    sent(&mut c);
    let ack = heartbeat_ack;
    to_node(&mut c, &mut s, t0, &ack(0xfeed));
    let out = sent(&mut c);
    assert_eq!(out.len(), 1);
    assert!(matches!(
        from_node(&mut s, &out[0]),
        ToCoordinator::Heartbeat { echo: 0xfeed, .. }
    ));
    // The same challenge again (the answer to the echo) earns nothing more.
    to_node(&mut c, &mut s, t0, &ack(0xfeed));
    assert!(sent(&mut c).is_empty());
    // The next regular heartbeat carries no echo.
    let next = c.poll_timeout().unwrap();
    c.handle_timeout(next, WALL);
    let out = sent(&mut c);
    assert!(matches!(
        from_node(&mut s, &out[0]),
        ToCoordinator::Heartbeat { echo: 0, .. }
    ));
}

#[test]
fn a_cookie_reply_resends_the_hello_with_mac2_once() {
    let t0 = Instant::now();
    let mut c = client(Trust::Pinned(coord_public()), t0);
    let hello = sent(&mut c).pop().unwrap();
    assert_eq!(kind(&hello), ControlKind::HelloMac);
    let src: SocketAddr = "198.51.100.1:41641".parse().unwrap();
    let maker = CookieMaker::new(&coord_public(), [4; 32], 0);
    let mac1 = crate::cookie::mac1_of(&hello.payload).unwrap();
    let session = crate::channel::hello_session(&hello.payload).unwrap();
    // A reply bound to another Hello is ignored.
    c.handle_datagram(
        t0,
        WALL,
        coord_addr(),
        &maker.reply(src, session, &[0; 16], [1; 24]),
    );
    assert!(sent(&mut c).is_empty());
    let reply = maker.reply(src, session, &mac1, [2; 24]);
    c.handle_datagram(t0, WALL, coord_addr(), &reply);
    let again = sent(&mut c);
    assert_eq!(again.len(), 1);
    assert!(maker.verify_mac2(src, &again[0].payload));
    assert_eq!(
        again[0].payload[..again[0].payload.len() - 16],
        hello.payload[..hello.payload.len() - 16]
    );
    c.handle_datagram(t0, WALL, coord_addr(), &reply);
    assert!(sent(&mut c).is_empty(), "one resend per attempt");
    // The next attempt carries mac2 from the start.
    c.handle_timeout(t0 + Duration::from_secs(1), WALL);
    let next = sent(&mut c).into_iter().find(is_hello).unwrap();
    assert!(maker.verify_mac2(src, &next.payload));
}

#[test]
fn removal_empties_the_map_and_registration_is_tried_again_later() {
    let t0 = Instant::now();
    let (mut c, mut s) = connected(t0, &accepted(0));
    sent(&mut c);
    to_node(&mut c, &mut s, t0, &ToNode::Removed);
    let ev = events(&mut c);
    let retry = match &ev[..] {
        [Event::PeerMap(m), Event::Removed { retry_in }] if m.is_empty() => *retry_in,
        other => panic!("{other:?}"),
    };
    assert!(!c.is_connected());
    assert!(c.problem().is_some_and(|p| p.contains("removed")));
    c.handle_timeout(t0 + retry, WALL);
    assert!(sent(&mut c).iter().any(is_hello));
}

#[test]
fn an_unusable_mesh_address_is_not_accepted() {
    let t0 = Instant::now();
    let mut c = client(Trust::Pinned(coord_public()), t0);
    let mut bad = accepted(0);
    if let Welcome::Accepted { mesh, .. } = &mut bad {
        *mesh = Some(MeshAddress {
            ip: "10.0.0.1".parse().unwrap(),
            network: "0.0.0.0/0".parse().unwrap(),
        });
    }
    welcome(&mut c, t0, &bad);
    assert!(matches!(
        &events(&mut c)[..],
        [Event::Rejected { reason: RejectReason::Other, message, .. }] if message.contains("too large")
    ));
    assert!(!c.is_connected());
}

#[test]
fn hello_timestamps_grow_even_when_the_clock_goes_back() {
    let t0 = Instant::now();
    let mut cfg = config(Trust::Pinned(coord_public()), None);
    cfg.stamp_floor = WALL + 1_000;
    let mut c = ControlClient::new(cfg, 1);
    c.start(t0, WALL);
    let h1 = sent(&mut c).pop().unwrap();
    c.handle_timeout(t0 + Duration::from_secs(1), WALL - 5_000);
    let h2 = sent(&mut c).into_iter().find(is_hello).unwrap();
    let ts = |t: &Transmit| {
        IncomingHello::read(&COORD_SECRET, &t.payload)
            .unwrap()
            .hello
            .timestamp
    };
    assert!(ts(&h1) > WALL + 1_000);
    assert!(ts(&h2) > ts(&h1));
}

#[test]
fn the_join_key_is_only_sent_until_registered() {
    let t0 = Instant::now();
    let key = JoinKey::generate(coord_public());
    let mut c = ControlClient::new(config(Trust::JoinKey(coord_public()), Some(key.secret)), 1);
    c.start(t0, WALL);
    let hello = sent(&mut c).pop().unwrap();
    let incoming = IncomingHello::read(&COORD_SECRET, &hello.payload).unwrap();
    assert_eq!(incoming.hello.join, Some(key.secret));
    let mut out = [0u8; MAX_DATAGRAM];
    let (n, _) = incoming.answer(9, &accepted(0), &mut out).unwrap();
    c.handle_datagram(t0, WALL, coord_addr(), &out[..n]);
    assert!(c.is_connected());
    // Lose the coordinator; the next Hello carries no key.
    while c.is_connected() {
        let now = c.poll_timeout().unwrap();
        c.handle_timeout(now, WALL);
    }
    let hello = sent(&mut c).into_iter().rev().find(is_hello).unwrap();
    let incoming = IncomingHello::read(&COORD_SECRET, &hello.payload).unwrap();
    assert_eq!(incoming.hello.join, None);
}

#[test]
fn a_punch_request_brings_the_next_heartbeat_forward() {
    let t0 = Instant::now();
    let (mut c, mut s) = connected(t0, &accepted(0));
    sent(&mut c);
    let ack = heartbeat_ack(0);
    to_node(&mut c, &mut s, t0, &ack);
    let heartbeats = |c: &mut ControlClient, s: &mut Session, at: Instant| {
        c.handle_timeout(at, WALL);
        let out = sent(c);
        out.iter()
            .filter(|t| matches!(from_node(s, t), ToCoordinator::Heartbeat { .. }))
            .count()
    };
    let t2 = t0 + Duration::from_secs(2);
    assert_eq!(heartbeats(&mut c, &mut s, t2), 0, "not due yet");
    c.request_punch(PublicKey([7; 32]));
    let out = sent(&mut c);
    assert!(matches!(
        from_node(&mut s, &out[0]),
        ToCoordinator::Punch { .. }
    ));
    assert_eq!(heartbeats(&mut c, &mut s, t2), 1, "brought forward");
    to_node(&mut c, &mut s, t2, &ack);
    // Another punch right away: not before 2 s after that heartbeat.
    c.request_punch(PublicKey([7; 32]));
    sent(&mut c);
    assert_eq!(heartbeats(&mut c, &mut s, t2 + Duration::from_secs(1)), 0);
    assert_eq!(heartbeats(&mut c, &mut s, t2 + Duration::from_secs(2)), 1);
}
