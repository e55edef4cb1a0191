//! Deterministic tests of the coordinator's control plane: real Noise handshakes from fake
//! nodes, an in-memory SQLite store, the core's work run inline, and injected time.

use crate::control::{ControlServer, Settings, StoreDone, StoreOp, Transmit, Work};
use crate::inline_work::run_work_inline;
use crate::registry::Registry;
use crate::store::{KeyKind, SqliteStore};
use crate::store_worker::StoreWorker;
use lanmesh_proto::channel::{HelloForm, Initiator, Session, MAX_DATAGRAM};
use lanmesh_proto::cookie::CookieOpener;
use lanmesh_proto::header::{self, ControlKind};
use lanmesh_proto::join_key::JoinSecret;
use lanmesh_proto::messages::{
    self, caps, Hello, RejectReason, Role, ToCoordinator, ToNode, Welcome, HEARTBEAT_LEN,
    MAX_PLAINTEXT, PUNCH_REQUEST_LEN,
};
use lanmesh_proto::{JoinKey, PublicKey};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

const COORD_SECRET: [u8; 32] = [42; 32];

fn coord_public() -> PublicKey {
    crate::control::x25519_public(&COORD_SECRET).into()
}

/// A control server with its storage, running the work it asks for inline.
struct Harness {
    s: ControlServer,
    /// The instant of wall-clock millisecond 0 (tests count time in ms from there).
    base: Instant,
    store: StoreWorker,
    /// While set, storage work waits (a busy database).
    hold_store: bool,
}

impl Harness {
    fn new(store: SqliteStore, open: bool) -> Harness {
        Self::with_settings(
            store,
            Settings {
                open,
                heartbeat_secs: 15,
                stun_port: None,
                open_max_nodes: 64,
                ..Settings::default()
            },
        )
    }

    fn with_settings(mut store: SqliteStore, settings: Settings) -> Harness {
        let nodes = store.load_nodes().unwrap();
        let base = Instant::now();
        let s = ControlServer::new(
            coord_public(),
            nodes,
            Registry::new("100.64.0.0/10".parse().unwrap(), 60_000),
            settings,
            base,
            0,
            7,
        );
        Harness {
            s,
            base,
            store: StoreWorker::new(store),
            hold_store: false,
        }
    }

    fn store(&mut self) -> &mut SqliteStore {
        self.store.store_mut()
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + std::time::Duration::from_millis(ms)
    }

    /// When the server wants to run next, in ms.
    fn wake(&self) -> u64 {
        let at = self.s.poll_timeout().expect("a timeout");
        at.duration_since(self.base).as_millis() as u64
    }

    fn datagram(&mut self, now: u64, src: SocketAddr, data: &[u8]) {
        self.s.handle_datagram(self.at(now), src, data);
        self.run(now);
    }

    /// Runs all the work the server asked for (storage only unless held).
    fn run(&mut self, now: u64) {
        let at = self.at(now);
        run_work_inline(
            &mut self.s,
            &mut self.store,
            &COORD_SECRET,
            at,
            now,
            self.hold_store,
        );
    }

    fn timeout(&mut self, now: u64) {
        self.s.handle_timeout(self.at(now));
        self.run(now);
    }

    fn drain(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.s.poll_transmit()).collect()
    }
}

struct FakeNode {
    role: Role,
    secret: [u8; 32],
    addr: SocketAddr,
    session: Option<Session>,
    clock: u64,
    caps: u64,
    /// The last Hello datagram sent.
    last_hello: Vec<u8>,
}

impl FakeNode {
    fn new(seed: u8) -> FakeNode {
        FakeNode {
            role: Role::Node,
            secret: [seed; 32],
            addr: SocketAddr::from(([203, 0, 113, seed], 41641)),
            session: None,
            clock: 1,
            caps: caps::ALL,
            last_hello: Vec::new(),
        }
    }

    fn public(&self) -> PublicKey {
        crate::control::x25519_public(&self.secret).into()
    }

    fn hello(&mut self, join: Option<JoinSecret>, form: HelloForm) -> Initiator {
        self.clock += 1;
        let hello = Hello {
            timestamp: self.clock,
            session: 7,
            name: "box".into(),
            join,
            local_endpoints: self.local(),
            role: self.role,
            capabilities: self.caps,
        };
        let i = Initiator::start(&self.secret, &coord_public(), &hello, form).unwrap();
        self.last_hello = i.datagram().to_vec();
        i
    }

    /// Runs a handshake (following a cookie reply, as nodes do) and confirms an accepted
    /// session with a heartbeat; returns the welcome and the size of the hello.
    fn join(
        &mut self,
        h: &mut Harness,
        now: u64,
        join: Option<JoinSecret>,
    ) -> (Option<Welcome>, usize) {
        let mut init = self.hello(join, HelloForm::Macs);
        h.datagram(now, self.addr, init.datagram());
        let mut reply = h.drain().into_iter().find(|t| t.dst == self.addr);
        if let Some(t) = reply
            .as_ref()
            .filter(|t| kind(t) == ControlKind::CookieReply)
        {
            let cookie = CookieOpener::for_coordinator(&coord_public())
                .open(&t.payload, 7, &init.mac1().unwrap())
                .expect("a cookie reply for this hello");
            init.apply_cookie(&cookie);
            self.last_hello = init.datagram().to_vec();
            h.datagram(now, self.addr, init.datagram());
            reply = h.drain().into_iter().find(|t| t.dst == self.addr);
        }
        let n = init.datagram().len();
        let Some(reply) = reply else {
            return (None, n);
        };
        assert!(reply.payload.len() <= n, "welcome larger than hello");
        let (welcome, session) = init.finish(&reply.payload).unwrap();
        self.session = session;
        if self.session.is_some() {
            self.heartbeat(h, now, 0);
            h.drain();
        }
        (Some(welcome), n)
    }

    fn seal(&mut self, msg: &ToCoordinator, pad: usize) -> Vec<u8> {
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = messages::encode(msg, &mut plain, pad).unwrap();
        let mut buf = [0u8; MAX_DATAGRAM];
        let m = self
            .session
            .as_mut()
            .unwrap()
            .seal(&plain[..n], &mut buf)
            .unwrap();
        buf[..m].to_vec()
    }

    /// Sends `msg` padded as the real client pads it.
    fn send(&mut self, h: &mut Harness, now: u64, msg: &ToCoordinator) {
        let pad = match msg {
            ToCoordinator::GetPeers { .. } | ToCoordinator::GetChanges { .. } => MAX_PLAINTEXT,
            ToCoordinator::Punch { .. } => PUNCH_REQUEST_LEN,
            ToCoordinator::Heartbeat { .. } => HEARTBEAT_LEN,
            ToCoordinator::Goodbye => 0,
        };
        let d = self.seal(msg, pad);
        h.datagram(now, self.addr, &d);
    }

    fn local(&self) -> Vec<SocketAddr> {
        vec![SocketAddr::from(([10, 9, 0, self.secret[0]], 41641))]
    }

    fn heartbeat(&mut self, h: &mut Harness, now: u64, echo: u64) {
        let map_version = h.s.registry().map_version();
        let local_endpoints = self.local();
        self.send(
            h,
            now,
            &ToCoordinator::Heartbeat {
                map_version,
                local_endpoints,
                echo,
            },
        );
    }

    fn read(&mut self, t: &Transmit) -> ToNode {
        let mut plain = [0u8; MAX_DATAGRAM];
        let p = self
            .session
            .as_mut()
            .unwrap()
            .open(&t.payload, &mut plain)
            .unwrap();
        messages::decode(p).unwrap()
    }

    fn inbox(&mut self, h: &mut Harness) -> Vec<ToNode> {
        let addr = self.addr;
        h.drain()
            .iter()
            .filter(|t| t.dst == addr)
            .map(|t| self.read(t))
            .collect()
    }
}

fn kind(t: &Transmit) -> ControlKind {
    header::ControlHeader::parse(&t.payload)
        .unwrap()
        .kind
        .unwrap()
}

fn key(store: &SqliteStore, reusable: bool) -> JoinSecret {
    key_of_kind(
        store,
        KeyKind {
            reusable,
            relay: false,
        },
    )
}

fn key_of_kind(store: &SqliteStore, kind: KeyKind) -> JoinSecret {
    let k = JoinKey::generate(PublicKey([0; 32])).secret;
    store.add_key(&k, kind, None, 0).unwrap();
    k
}

fn mesh_ip(w: &Option<Welcome>) -> Ipv4Addr {
    match w {
        Some(Welcome::Accepted { mesh: Some(m), .. }) => m.ip,
        other => panic!("not accepted: {other:?}"),
    }
}

fn rejection(w: &Option<Welcome>) -> RejectReason {
    match w {
        Some(Welcome::Rejected { reason, .. }) => *reason,
        other => panic!("not rejected: {other:?}"),
    }
}

#[test]
fn nodes_register_with_keys_and_get_distinct_ips() {
    let store = SqliteStore::in_memory();
    let k = key(&store, true);
    let mut h = Harness::new(store, false);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    assert_eq!(
        mesh_ip(&a.join(&mut h, 10, Some(k)).0),
        Ipv4Addr::new(100, 64, 0, 1)
    );
    assert_eq!(
        mesh_ip(&b.join(&mut h, 10, Some(k)).0),
        Ipv4Addr::new(100, 64, 0, 2)
    );
    // Coming back with the same node key needs no join key and keeps the address.
    assert_eq!(
        mesh_ip(&a.join(&mut h, 20, None).0),
        Ipv4Addr::new(100, 64, 0, 1)
    );
    assert_eq!(h.s.sessions(), 2);
}

#[test]
fn missing_wrong_and_used_keys_are_refused() {
    let store = SqliteStore::in_memory();
    let one_off = key(&store, false);
    let mut h = Harness::new(store, false);
    assert_eq!(
        rejection(&FakeNode::new(1).join(&mut h, 1, None).0),
        RejectReason::KeyRequired
    );
    let mut wrong = one_off;
    wrong.secret[3] ^= 0x40;
    assert_eq!(
        rejection(&FakeNode::new(1).join(&mut h, 1, Some(wrong)).0),
        RejectReason::KeyUnknown
    );
    mesh_ip(&FakeNode::new(2).join(&mut h, 1, Some(one_off)).0);
    assert_eq!(
        rejection(&FakeNode::new(3).join(&mut h, 1, Some(one_off)).0),
        RejectReason::KeyUsed
    );
}

#[test]
fn open_mode_admits_without_a_key() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    mesh_ip(&FakeNode::new(1).join(&mut h, 1, None).0);
}

#[test]
fn addresses_survive_a_coordinator_restart() {
    let dir = std::env::temp_dir().join(format!("lm-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("db");
    let store = SqliteStore::open(&path).unwrap();
    let k = key(&store, true);
    let mut h = Harness::new(store, false);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    let ip_a = mesh_ip(&a.join(&mut h, 1, Some(k)).0);
    let ip_b = mesh_ip(&b.join(&mut h, 1, Some(k)).0);
    drop(h);
    let mut h = Harness::new(SqliteStore::open(&path).unwrap(), false);
    assert_eq!(mesh_ip(&b.join(&mut h, 2, None).0), ip_b);
    assert_eq!(mesh_ip(&a.join(&mut h, 2, None).0), ip_a);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_replayed_hello_gets_no_answer_even_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("lm-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("db");
    let mut h = Harness::new(SqliteStore::open(&path).unwrap(), true);
    let mut a = FakeNode::new(1);
    mesh_ip(&a.join(&mut h, 1, None).0);
    let recorded = a.last_hello.clone();
    let attacker: SocketAddr = "198.51.100.66:4444".parse().unwrap();
    h.datagram(2, attacker, &recorded);
    assert!(h.drain().is_empty(), "a replay is answered");
    // After a restart the in-memory state is gone; the stored high-water mark is not.
    drop(h);
    let mut h = Harness::new(SqliteStore::open(&path).unwrap(), true);
    h.datagram(3, attacker, &recorded);
    assert!(h.drain().is_empty(), "a replay after a restart is answered");
    // The real node, with a newer timestamp, still gets in.
    mesh_ip(&a.join(&mut h, 4, None).0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Even if a replay got through (the high-water mark lost), it would change nothing: the new
/// session only replaces the live one once confirmed, which a replayer cannot do.
#[test]
fn an_unconfirmed_session_changes_nothing() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    mesh_ip(&a.join(&mut h, 1, None).0);
    let endpoint = h.s.registry().get(&a.public()).unwrap().endpoint;
    // A Hello nobody confirms, from elsewhere (as a replay from another address would be).
    let stranger: SocketAddr = "198.51.100.66:4444".parse().unwrap();
    let mut other = FakeNode::new(1);
    other.clock = 100;
    let init = other.hello(None, HelloForm::Macs);
    h.datagram(2, stranger, init.datagram());
    assert_eq!(h.drain().len(), 1, "the welcome");
    // The live session still works and nothing moved.
    a.heartbeat(&mut h, 3, 0);
    assert!(matches!(a.inbox(&mut h)[..], [ToNode::HeartbeatAck { .. }]));
    assert_eq!(h.s.registry().get(&a.public()).unwrap().endpoint, endpoint);
    assert_eq!(h.s.sessions(), 1);
    // The pending session expires.
    let wake = h.wake();
    assert!(wake <= 2 + 10_000);
    h.timeout(10_003);
    h.drain();
    a.heartbeat(&mut h, 10_004, 0);
    assert!(matches!(a.inbox(&mut h)[..], [ToNode::HeartbeatAck { .. }]));
}

#[test]
fn peers_hear_of_a_join_and_pull_the_map() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    a.join(&mut h, 1_000, None);
    b.join(&mut h, 1_000, None);
    // The change is announced within the notify interval.
    let wake = h.wake();
    assert!(wake <= 1_200, "wake at {wake}");
    h.timeout(wake);
    let version = match a.inbox(&mut h).as_slice() {
        [ToNode::MapChanged { map_version }] => *map_version,
        other => panic!("{other:?}"),
    };
    a.send(
        &mut h,
        wake,
        &ToCoordinator::GetPeers {
            map_version: version,
            offset: 0,
        },
    );
    match a.inbox(&mut h).as_slice() {
        [ToNode::PeerPage {
            total: 1, peers, ..
        }] => {
            assert_eq!(peers[0].public_key, b.public());
            assert_eq!(peers[0].candidates.public, Some(b.addr));
            assert_eq!(
                peers[0].candidates.local,
                vec!["10.9.0.2:41641".parse().unwrap()]
            );
            assert!(peers[0].online);
        }
        other => panic!("{other:?}"),
    }
    // Then only what changes: b goes away.
    let v = h.s.registry().map_version();
    b.send(&mut h, wake + 1, &ToCoordinator::Goodbye);
    h.drain();
    let now_version = h.s.registry().map_version();
    a.send(
        &mut h,
        wake + 2,
        &ToCoordinator::GetChanges {
            since: v,
            map_version: now_version,
            offset: 0,
        },
    );
    match a.inbox(&mut h).as_slice() {
        [ToNode::Changes {
            total: 1,
            reset: false,
            changes,
            ..
        }] => assert!(matches!(
            &changes[0],
            messages::Change::Peer(p) if p.public_key == b.public() && !p.online
        )),
        other => panic!("{other:?}"),
    }
}

#[test]
fn silent_nodes_go_offline_and_peers_are_told() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    a.join(&mut h, 0, None);
    b.join(&mut h, 0, None);
    h.timeout(1_000);
    h.drain();
    // a keeps heartbeating, b goes silent.
    for t in (10_000..=60_000).step_by(10_000) {
        a.heartbeat(&mut h, t, 0);
        assert!(matches!(a.inbox(&mut h)[..], [ToNode::HeartbeatAck { .. }]));
    }
    let mut now = 60_000;
    while h.s.registry().is_online(&b.public()) {
        now = h.wake();
        h.timeout(now);
    }
    assert_eq!(now, 60_001);
    h.drain();
    let wake = h.wake();
    h.timeout(wake);
    assert!(matches!(a.inbox(&mut h)[..], [ToNode::MapChanged { .. }]));
    a.send(
        &mut h,
        wake,
        &ToCoordinator::GetPeers {
            map_version: 0,
            offset: 0,
        },
    );
    match a.inbox(&mut h).as_slice() {
        [ToNode::PeerPage { peers, .. }] => assert!(!peers[0].online),
        other => panic!("{other:?}"),
    }
}

/// A node that moves is answered at its new address at once, but only with answers no larger
/// than its requests, and pushes and its public endpoint move only once the new address has
/// echoed a challenge from there.
#[test]
fn a_new_address_is_validated_before_it_gets_pushes_or_becomes_the_endpoint() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    a.join(&mut h, 0, None);
    b.join(&mut h, 0, None);
    let old = a.addr;
    a.addr = "198.51.100.9:999".parse().unwrap();
    a.heartbeat(&mut h, 5, 0);
    let challenge = match a.inbox(&mut h).as_slice() {
        [ToNode::HeartbeatAck {
            endpoint,
            challenge,
            ..
        }] => {
            assert_eq!(*endpoint, a.addr);
            assert_ne!(*challenge, 0);
            *challenge
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(h.s.registry().get(&a.public()).unwrap().endpoint, Some(old));
    // A push goes to the validated (old) address meanwhile.
    h.timeout(1_000);
    let dsts: Vec<SocketAddr> = h.drain().iter().map(|t| t.dst).collect();
    assert!(!dsts.contains(&a.addr), "{dsts:?}");
    a.heartbeat(&mut h, 6, challenge);
    match a.inbox(&mut h).as_slice() {
        [ToNode::HeartbeatAck { challenge: 0, .. }] => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.s.registry().get(&a.public()).unwrap().endpoint,
        Some(a.addr)
    );
    // An echo from another address proves nothing.
    let c2 = {
        a.addr = "198.51.100.10:1000".parse().unwrap();
        a.heartbeat(&mut h, 7, 0);
        match a.inbox(&mut h).as_slice() {
            [ToNode::HeartbeatAck { challenge, .. }] => *challenge,
            other => panic!("{other:?}"),
        }
    };
    a.addr = "198.51.100.11:1000".parse().unwrap();
    a.heartbeat(&mut h, 8, c2);
    h.drain();
    assert_eq!(
        h.s.registry().get(&a.public()).unwrap().endpoint,
        Some("198.51.100.9:999".parse().unwrap())
    );
}

/// A member that forges its source address (to aim answers at a victim) gets nothing larger
/// than what it sent, and an unpadded page request nothing at all.
#[test]
fn forged_source_requests_earn_no_more_than_they_cost() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut nodes: Vec<FakeNode> = (1..=20).map(FakeNode::new).collect();
    for n in &mut nodes {
        n.join(&mut h, 0, None);
    }
    h.timeout(1000);
    h.drain();
    let victim: SocketAddr = "192.0.2.77:53".parse().unwrap();
    let a = &mut nodes[0];
    let requests = [
        (
            ToCoordinator::GetPeers {
                map_version: 0,
                offset: 0,
            },
            0,
        ),
        (
            ToCoordinator::GetPeers {
                map_version: 0,
                offset: 0,
            },
            MAX_PLAINTEXT,
        ),
        (
            ToCoordinator::GetChanges {
                since: 1,
                map_version: 0,
                offset: 0,
            },
            0,
        ),
        (
            ToCoordinator::Heartbeat {
                map_version: 0,
                local_endpoints: vec![],
                echo: 0,
            },
            0,
        ),
        (
            ToCoordinator::Punch {
                peer: PublicKey([2; 32]),
            },
            0,
        ),
    ];
    let mut sent = 0;
    let mut received = 0;
    for (msg, pad) in &requests {
        let d = a.seal(msg, *pad);
        sent += d.len();
        h.datagram(2000, victim, &d);
        for t in h.drain() {
            if t.dst == victim {
                assert!(
                    t.payload.len() <= d.len(),
                    "{msg:?}: {} bytes earned {}",
                    d.len(),
                    t.payload.len()
                );
                received += t.payload.len();
            }
        }
    }
    assert!(received <= sent);
}

#[test]
fn hostile_input_earns_nothing_bigger_than_itself() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let src: SocketAddr = "198.51.100.1:1".parse().unwrap();
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 1500],
        b"LM".to_vec(),
        b"LM\x01\x05".to_vec(),
        b"LM\x01\x03garbage-hello".to_vec(),
        b"LM\x01\x0cgarbage-hello".to_vec(),
        b"LM\x01\x01short-key-request".to_vec(),
        b"LM\x09\x01".to_vec(),
        vec![1, 0, 0, 0, 5, 5, 5],
    ];
    let mut t = b"LM\x01\x05".to_vec();
    t.extend_from_slice(&[0u8; 100]);
    inputs.push(t);
    let mut junk_hello = vec![0x5a; lanmesh_proto::channel::HELLO_MAC_LEN];
    junk_hello[..4].copy_from_slice(b"LM\x01\x0c");
    inputs.push(junk_hello);
    inputs.push(header::key_request().to_vec());
    for input in &inputs {
        h.datagram(1, src, input);
        for reply in h.drain() {
            assert!(
                reply.payload.len() <= input.len(),
                "{} bytes earned {}",
                input.len(),
                reply.payload.len()
            );
        }
    }
    // Only the version mismatch and the full-size key request were answered at all.
    h.datagram(1, src, b"LM\x01\x01short-key-request");
    assert!(h.drain().is_empty());
}

#[test]
fn under_load_a_node_joins_with_a_cookie_and_floods_get_no_dh() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut honest = FakeNode::new(1);
    honest.join(&mut h, 0, None);
    let recorded = honest.last_hello.clone();
    // A flood of replays of a valid Hello from one address: opened at most once.
    let attacker: SocketAddr = "198.51.100.66:4444".parse().unwrap();
    let mut replies = 0;
    for i in 0..5_000u64 {
        h.s.handle_datagram(h.at(i / 10), attacker, &recorded);
        if let Some(w) = h.s.poll_work() {
            panic!(
                "a replay was opened: {}",
                matches!(w, Work::OpenHello { .. })
            );
        }
        replies += h.drain().len();
    }
    // A burst of 20, then 10 a second (the flood lasts half a second).
    assert!(replies <= 26, "{replies} cookie replies to one address");
    // A new node joins through the cookie exchange.
    let mut b = FakeNode::new(2);
    mesh_ip(&b.join(&mut h, 600, None).0);
}

#[test]
fn a_busy_database_delays_a_join_but_refuses_nobody() {
    let store = SqliteStore::in_memory();
    let k = key(&store, false);
    let mut h = Harness::new(store, false);
    h.hold_store = true;
    let mut a = FakeNode::new(1);
    assert_eq!(a.join(&mut h, 1, Some(k)).0, None, "answered before stored");
    // The node tries again meanwhile (a newer Hello).
    assert_eq!(a.join(&mut h, 1_000, Some(k)).0, None);
    h.hold_store = false;
    h.run(2_000);
    // The newest Hello is answered once storage is done.
    let reply = h
        .drain()
        .into_iter()
        .find(|t| t.dst == a.addr)
        .expect("a welcome");
    assert_eq!(kind(&reply), ControlKind::Welcome);
    let key_used = h.store().list_keys().unwrap()[0].uses;
    assert_eq!(key_used, 1, "the one-off key admitted exactly one node");
}

#[test]
fn a_lost_announcement_is_repeated_until_the_node_asks() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    a.join(&mut h, 1_000, None);
    b.join(&mut h, 1_000, None);
    let wake = h.wake();
    h.timeout(wake);
    h.drain(); // Both announcements are lost.
    let again = h.wake();
    assert_eq!(again, wake + 1_000);
    h.timeout(again);
    let version = match a.inbox(&mut h).as_slice() {
        [ToNode::MapChanged { map_version }] => *map_version,
        other => panic!("{other:?}"),
    };
    a.send(
        &mut h,
        again,
        &ToCoordinator::GetPeers {
            map_version: version,
            offset: 0,
        },
    );
    h.drain();
    // Only b, which has not asked, is told again.
    h.timeout(again + 1_000);
    let told: Vec<SocketAddr> = h.drain().iter().map(|t| t.dst).collect();
    assert_eq!(told, vec![b.addr]);
}

#[test]
fn a_punch_request_reaches_both_sides_with_the_others_candidates() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    a.join(&mut h, 0, None);
    b.join(&mut h, 0, None);
    h.drain();
    a.send(&mut h, 10, &ToCoordinator::Punch { peer: b.public() });
    let out = h.drain();
    assert_eq!(out.len(), 2);
    for t in &out {
        let (me, other) = if t.dst == a.addr {
            (&mut a, b.addr)
        } else {
            (&mut b, a.addr)
        };
        match me.read(t) {
            ToNode::Punch { candidates, .. } => assert_eq!(candidates.public, Some(other)),
            other => panic!("{other:?}"),
        }
    }
    // The same pair again at once: rate-limited (heartbeats and page requests did not use
    // the budget up).
    for i in 0..10 {
        a.heartbeat(&mut h, 11 + i, 0);
    }
    h.drain();
    a.send(&mut h, 30, &ToCoordinator::Punch { peer: b.public() });
    assert_eq!(h.drain().len(), 2, "the second of the burst");
    a.send(&mut h, 40, &ToCoordinator::Punch { peer: b.public() });
    assert!(h.drain().is_empty(), "over the pair's budget");
    a.send(&mut h, 2_100, &ToCoordinator::Punch { peer: b.public() });
    assert_eq!(h.drain().len(), 2, "budget refilled");
    // A peer that is not connected: nothing happens.
    a.send(
        &mut h,
        5_000,
        &ToCoordinator::Punch {
            peer: PublicKey([9; 32]),
        },
    );
    assert!(h.drain().is_empty());
}

#[test]
fn endpoint_flapping_costs_the_mesh_little() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut nodes: Vec<FakeNode> = (1..=5).map(FakeNode::new).collect();
    for n in &mut nodes {
        n.join(&mut h, 0, None);
    }
    h.timeout(10_000);
    h.drain();
    let v0 = h.s.registry().map_version();
    // The flapper reports new interface addresses every 100 ms for 10 s.
    let flapper = &mut nodes[0];
    let mut to_others = 0;
    for i in 0..100u64 {
        let now = 10_000 + i * 100;
        let local = vec![SocketAddr::from(([10, 0, (i % 200) as u8, 1], 41641))];
        let msg = ToCoordinator::Heartbeat {
            map_version: 0,
            local_endpoints: local,
            echo: 0,
        };
        let d = flapper.seal(&msg, HEARTBEAT_LEN);
        h.datagram(now, flapper.addr, &d);
        h.timeout(now);
        let addr = flapper.addr;
        to_others += h.drain().iter().filter(|t| t.dst != addr).count();
    }
    let shown = h.s.registry().map_version() - v0;
    assert!(
        shown <= 4,
        "{shown} map changes from one flapping node in 10 s"
    );
    // The others hear of each shown change (and are reminded once a second while they do not
    // pull): O(changes), not O(flaps).
    assert!(
        to_others <= 4 * (4 + 11),
        "{to_others} datagrams to the others"
    );
}

#[test]
fn open_mode_registrations_are_capped_and_rate_limited() {
    let mut h = Harness::with_settings(
        SqliteStore::in_memory(),
        Settings {
            open: true,
            heartbeat_secs: 15,
            stun_port: None,
            open_max_nodes: 5,
            ..Settings::default()
        },
    );
    let from = |i: u8| SocketAddr::from(([198, 51, 100, 1], 10_000 + i as u16));
    let mut admitted = 0;
    let mut refused = 0;
    for i in 1..=20u8 {
        let mut n = FakeNode::new(i);
        n.addr = from(i);
        match n.join(&mut h, i as u64 * 10, None).0 {
            Some(Welcome::Accepted { .. }) => admitted += 1,
            Some(Welcome::Rejected {
                reason: RejectReason::TryLater,
                ..
            }) => refused += 1,
            None => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 5);
    assert!(refused > 0);
    assert_eq!(h.s.registry().node_count(), 5);
    // A node with a key is not capped.
    let k = key(h.store(), false);
    let mut keyed = FakeNode::new(99);
    mesh_ip(&keyed.join(&mut h, 100_000, Some(k)).0);
}

#[test]
fn older_nodes_still_join_and_heartbeat() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut old = FakeNode::new(1);
    old.caps = 0;
    // The older Hello form, without MACs.
    let init = old.hello(None, HelloForm::Legacy);
    h.datagram(1, old.addr, init.datagram());
    let reply = h.drain().pop().expect("an answer");
    let (welcome, session) = init.finish(&reply.payload).unwrap();
    mesh_ip(&Some(welcome));
    old.session = session;
    // Unpadded heartbeats (as old nodes send them) are acked at a proven address.
    let d = old.seal(
        &ToCoordinator::Heartbeat {
            map_version: 0,
            local_endpoints: vec!["10.9.0.1:41641".parse().unwrap()],
            echo: 0,
        },
        0,
    );
    h.datagram(2, old.addr, &d);
    assert!(matches!(
        old.inbox(&mut h)[..],
        [ToNode::HeartbeatAck { challenge: 0, .. }]
    ));
}

#[test]
fn stun_binding_requests_get_the_source_address() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let src: SocketAddr = "198.51.100.20:5555".parse().unwrap();
    let mut req = [0u8; lanmesh_proto::stun::REQUEST_LEN];
    let n = lanmesh_proto::stun::write_request(&[3; 12], &mut req);
    h.datagram(1, src, &req[..n]);
    let out = h.drain();
    assert_eq!(out.len(), 1);
    assert!(out[0].payload.len() <= n);
    assert_eq!(
        lanmesh_proto::stun::parse(&out[0].payload),
        Some(lanmesh_proto::stun::Message::BindingSuccess {
            transaction: [3; 12],
            mapped: src
        })
    );
    // A bare 20-byte request would need a larger answer: none.
    let mut bare = req[..20].to_vec();
    bare[2..4].copy_from_slice(&[0, 0]);
    assert!(lanmesh_proto::stun::parse(&bare).is_some());
    h.datagram(1, src, &bare);
    assert!(h.drain().is_empty());
}

#[test]
fn relays_join_with_relay_keys_only_and_see_the_members() {
    let store = SqliteStore::in_memory();
    let node_key = key(&store, true);
    let relay_key = key_of_kind(
        &store,
        KeyKind {
            reusable: true,
            relay: true,
        },
    );
    // Open mode is for nodes; relays always need a relay key.
    let mut open = Harness::new(SqliteStore::in_memory(), true);
    let mut relay = FakeNode::new(9);
    relay.role = Role::Relay;
    assert_eq!(
        rejection(&relay.join(&mut open, 1, None).0),
        RejectReason::KeyRequired
    );
    let mut h = Harness::new(store, false);
    assert_eq!(
        rejection(&relay.join(&mut h, 1, Some(node_key)).0),
        RejectReason::KeyUnknown
    );
    let mut relay_as_node = FakeNode::new(8);
    assert_eq!(
        rejection(&relay_as_node.join(&mut h, 1, Some(relay_key)).0),
        RejectReason::KeyUnknown
    );
    match relay.join(&mut h, 1, Some(relay_key)).0 {
        Some(Welcome::Accepted { mesh: None, .. }) => {}
        other => panic!("{other:?}"),
    }
    let mut a = FakeNode::new(1);
    a.join(&mut h, 1, Some(node_key));
    h.drain();
    // The node sees the relay; the relay sees the node, its member.
    a.send(
        &mut h,
        2,
        &ToCoordinator::GetPeers {
            map_version: 0,
            offset: 0,
        },
    );
    match a.inbox(&mut h).as_slice() {
        [ToNode::PeerPage { peers, .. }] => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].role, Role::Relay);
            assert_eq!(peers[0].candidates.public, Some(relay.addr));
        }
        other => panic!("{other:?}"),
    }
    relay.send(
        &mut h,
        2,
        &ToCoordinator::GetPeers {
            map_version: 0,
            offset: 0,
        },
    );
    match relay.inbox(&mut h).as_slice() {
        [ToNode::PeerPage { peers, .. }] => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].public_key, a.public());
        }
        other => panic!("{other:?}"),
    }
    // A relay's key cannot come back as a node.
    relay.role = Role::Node;
    assert_eq!(
        rejection(&relay.join(&mut h, 3, None).0),
        RejectReason::Other
    );
}

#[test]
fn an_admin_removal_reaches_the_node() {
    let mut h = Harness::new(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    a.join(&mut h, 1, None);
    let nodes = h.store().load_nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    h.s.handle_store_done(h.at(5), StoreDone::Reloaded(vec![]));
    assert!(matches!(a.inbox(&mut h)[..], [ToNode::Removed]));
    assert_eq!(h.s.registry().len(), 0);
    let _ = StoreOp::SaveHelloTime {
        key: a.public(),
        timestamp: 0,
    };
}
