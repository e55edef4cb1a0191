//! Deterministic tests of the node's control client against a scripted coordinator built from
//! the real protocol pieces, with injected time.

use crate::channel::{IncomingHello, Session, MAX_DATAGRAM};
use crate::client::{ClientConfig, ControlClient, Event, Transmit, Trust};
use crate::header::{self, ControlKind, HEADER_LEN};
use crate::join_key::JoinSecret;
use crate::messages::{
    self, MeshAddress, PeerInfo, RejectReason, Role, ToCoordinator, ToNode, Welcome, MAX_PLAINTEXT,
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
    }
}

fn client(trust: Trust, now: Instant) -> ControlClient {
    let mut c = ControlClient::new(config(trust, None), 100);
    c.start(now);
    c
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
    }
}

/// Answers the client's latest Hello; returns the coordinator's session.
fn welcome(c: &mut ControlClient, now: Instant, w: &Welcome) -> Option<Session> {
    let hello = sent(c)
        .into_iter()
        .rev()
        .find(|t| kind(t) == ControlKind::Hello)
        .expect("a hello was sent");
    let incoming = IncomingHello::read(&COORD_SECRET, &hello.payload).unwrap();
    let mut out = [0u8; MAX_DATAGRAM];
    let (n, session) = incoming.answer(9, w, &mut out).unwrap();
    c.handle_datagram(now, coord_addr(), &out[..n]);
    session
}

fn to_node(c: &mut ControlClient, s: &mut Session, now: Instant, msg: &ToNode) {
    let mut plain = [0u8; MAX_PLAINTEXT];
    let n = messages::encode(msg, &mut plain, 0).unwrap();
    let mut out = [0u8; MAX_DATAGRAM];
    let m = s.seal(&plain[..n], &mut out).unwrap();
    c.handle_datagram(now, coord_addr(), &out[..m]);
}

fn from_node(s: &mut Session, t: &Transmit) -> ToCoordinator {
    let mut plain = [0u8; MAX_DATAGRAM];
    let p = s.open(&t.payload, &mut plain).unwrap();
    messages::decode(p).unwrap()
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

#[test]
fn first_use_pins_the_key_then_registers() {
    let t0 = Instant::now();
    let mut c = client(Trust::FirstUse, t0);
    let out = sent(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(kind(&out[0]), ControlKind::KeyRequest);
    let mut answer = vec![0u8; HEADER_LEN + 32];
    header::write_header(ControlKind::KeyResponse, &mut answer);
    answer[HEADER_LEN..].copy_from_slice(coord_public().as_bytes());
    // A key answer from anyone but the coordinator is ignored.
    c.handle_datagram(t0, "203.0.113.99:3478".parse().unwrap(), &answer);
    assert!(events(&mut c).is_empty());
    c.handle_datagram(t0, coord_addr(), &answer);
    assert_eq!(events(&mut c), vec![Event::Pin(coord_public())]);
    assert!(welcome(&mut c, t0, &accepted(1)).is_some());
    assert!(matches!(events(&mut c)[..], [Event::Registered { .. }]));
    assert!(c.is_connected());
}

#[test]
fn a_different_key_than_the_join_keys_is_fatal() {
    let t0 = Instant::now();
    let mut c = client(Trust::JoinKey(PublicKey([7; 32])), t0);
    assert_eq!(kind(&sent(&mut c)[0]), ControlKind::Hello);
    // No answer: after the retry the node also asks for the key, to diagnose.
    c.handle_timeout(t0 + Duration::from_secs(1));
    let kinds: Vec<_> = sent(&mut c).iter().map(kind).collect();
    assert!(kinds.contains(&ControlKind::KeyRequest), "{kinds:?}");
    let mut answer = vec![0u8; HEADER_LEN + 32];
    header::write_header(ControlKind::KeyResponse, &mut answer);
    answer[HEADER_LEN..].copy_from_slice(coord_public().as_bytes());
    c.handle_datagram(t0, coord_addr(), &answer);
    let ev = events(&mut c);
    assert!(
        matches!(ev.last(), Some(Event::Fatal(m)) if m.contains("join key")),
        "{ev:?}"
    );
}

#[test]
fn handshake_retries_back_off_to_ten_seconds() {
    let t0 = Instant::now();
    let mut c = client(Trust::Pinned(coord_public()), t0);
    let mut now = t0;
    let mut gaps = Vec::new();
    for _ in 0..6 {
        let next = c.poll_timeout().unwrap();
        gaps.push((next - now).as_secs());
        now = next;
        c.handle_timeout(now);
    }
    assert_eq!(gaps, vec![1, 2, 4, 8, 10, 10]);
    assert!(events(&mut c)
        .iter()
        .all(|e| matches!(e, Event::Unreachable { .. })));
}

#[test]
fn a_rejection_is_fatal_with_the_coordinators_words() {
    let t0 = Instant::now();
    let mut c = client(Trust::Pinned(coord_public()), t0);
    let reject = Welcome::Rejected {
        reason: RejectReason::KeyUsed,
        message: "this one-off join key was already used".into(),
    };
    welcome(&mut c, t0, &reject);
    match &events(&mut c)[..] {
        [Event::Fatal(m)] => assert!(m.contains("already used"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn a_version_mismatch_is_fatal() {
    let t0 = Instant::now();
    let mut c = client(Trust::Pinned(coord_public()), t0);
    c.handle_datagram(t0, coord_addr(), b"LM\x07\x06");
    assert!(matches!(&events(&mut c)[..], [Event::Fatal(m)] if m.contains("version 7")));
}

#[test]
fn the_peer_map_is_pulled_page_by_page() {
    let t0 = Instant::now();
    let mut c = client(Trust::Pinned(coord_public()), t0);
    let mut s = welcome(&mut c, t0, &accepted(4)).unwrap();
    events(&mut c);
    let out = sent(&mut c);
    assert_eq!(
        from_node(&mut s, &out[0]),
        ToCoordinator::GetPeers {
            map_version: 4,
            offset: 0
        }
    );
    // Page requests are padded to the largest page.
    assert!(out[0].payload.len() >= MAX_PLAINTEXT);
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
    c.handle_timeout(t0 + Duration::from_secs(1));
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
    // A change announcement starts a new pull.
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
    let mut c = client(Trust::Pinned(coord_public()), t0);
    let mut s = welcome(&mut c, t0, &accepted(0)).unwrap();
    events(&mut c);
    sent(&mut c);
    let mut now = t0;
    let mut beats = Vec::new();
    let mut hello_again = false;
    while !events(&mut c).contains(&Event::Lost) {
        now = c.poll_timeout().unwrap();
        assert!(now - t0 < Duration::from_secs(30), "never declared lost");
        c.handle_timeout(now);
        for t in sent(&mut c) {
            match kind(&t) {
                ControlKind::Transport => {
                    assert!(matches!(
                        from_node(&mut s, &t),
                        ToCoordinator::Heartbeat { .. }
                    ));
                    beats.push((now - t0).as_secs());
                }
                ControlKind::Hello => hello_again = true,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    // First beat after the 5 s interval, two quick retries, then lost 2 s after the third.
    assert_eq!(beats, vec![5, 7, 9]);
    assert_eq!((now - t0).as_secs(), 11);
    assert!(!c.is_connected());
    // It is already trying to register again.
    assert!(hello_again);
}

#[test]
fn acked_heartbeats_keep_the_session() {
    let t0 = Instant::now();
    let mut c = client(Trust::Pinned(coord_public()), t0);
    let mut s = welcome(&mut c, t0, &accepted(0)).unwrap();
    events(&mut c);
    sent(&mut c);
    let mut now = t0;
    for _ in 0..20 {
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
        if !sent(&mut c).is_empty() {
            let ack = ToNode::HeartbeatAck {
                map_version: 0,
                endpoint: "198.51.100.1:1".parse().unwrap(),
            };
            to_node(&mut c, &mut s, now, &ack);
        }
    }
    assert!(c.is_connected());
    assert!(!events(&mut c).contains(&Event::Lost));
    assert!(now - t0 >= Duration::from_secs(60));
}

#[test]
fn the_join_key_is_only_sent_until_registered() {
    let t0 = Instant::now();
    let key = JoinKey::generate(coord_public());
    let mut c = ControlClient::new(config(Trust::JoinKey(coord_public()), Some(key.secret)), 1);
    c.start(t0);
    let hello = sent(&mut c).pop().unwrap();
    let incoming = IncomingHello::read(&COORD_SECRET, &hello.payload).unwrap();
    assert_eq!(incoming.hello.join, Some(key.secret));
    let mut out = [0u8; MAX_DATAGRAM];
    let (n, _) = incoming.answer(9, &accepted(0), &mut out).unwrap();
    c.handle_datagram(t0, coord_addr(), &out[..n]);
    assert!(c.is_connected());
    // Lose the coordinator; the next Hello carries no key.
    while c.is_connected() {
        let now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
    }
    let hello = sent(&mut c)
        .into_iter()
        .rev()
        .find(|t| kind(t) == ControlKind::Hello)
        .unwrap();
    let incoming = IncomingHello::read(&COORD_SECRET, &hello.payload).unwrap();
    assert_eq!(incoming.hello.join, None);
}
