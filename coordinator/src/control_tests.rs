//! Deterministic tests of the coordinator's control plane: real Noise handshakes from fake
//! nodes, an in-memory SQLite store and injected time.

use crate::control::{ControlServer, Settings, Transmit};
use crate::registry::Registry;
use crate::store::{KeyKind, SqliteStore};
use lanmesh_proto::channel::{Initiator, Session, MAX_DATAGRAM};
use lanmesh_proto::header;
use lanmesh_proto::join_key::JoinSecret;
use lanmesh_proto::messages::{
    self, Hello, RejectReason, Role, ToCoordinator, ToNode, Welcome, MAX_PLAINTEXT,
};
use lanmesh_proto::{JoinKey, PublicKey};
use std::net::{Ipv4Addr, SocketAddr};

const COORD_SECRET: [u8; 32] = [42; 32];

fn server(store: SqliteStore, open: bool) -> ControlServer<SqliteStore> {
    ControlServer::new(
        COORD_SECRET,
        store,
        Registry::new("100.64.0.0/10".parse().unwrap(), 60_000),
        Settings {
            open,
            heartbeat_secs: 15,
            stun_port: None,
        },
        1000,
    )
    .unwrap()
}

fn drain(s: &mut ControlServer<SqliteStore>) -> Vec<Transmit> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

struct FakeNode {
    role: Role,
    secret: [u8; 32],
    addr: SocketAddr,
    session: Option<Session>,
    clock: u64,
}

impl FakeNode {
    fn new(seed: u8) -> FakeNode {
        FakeNode {
            role: Role::Node,
            secret: [seed; 32],
            addr: SocketAddr::from(([203, 0, 113, seed], 41641)),
            session: None,
            clock: 1,
        }
    }

    fn public(&self) -> PublicKey {
        crate::control::x25519_public(&self.secret).into()
    }

    /// Runs a handshake; returns the welcome and the size of the hello.
    fn join(
        &mut self,
        s: &mut ControlServer<SqliteStore>,
        now: u64,
        join: Option<JoinSecret>,
    ) -> (Option<Welcome>, usize) {
        self.clock += 1;
        let hello = Hello {
            timestamp: self.clock,
            session: 7,
            name: "box".into(),
            join,
            local_endpoints: vec![SocketAddr::from(([10, 9, 0, self.secret[0]], 41641))],
            role: self.role,
        };
        let mut buf = [0u8; MAX_DATAGRAM];
        let (init, n) = Initiator::start(&self.secret, &s.public_key(), &hello, &mut buf).unwrap();
        s.handle_datagram(now, self.addr, &buf[..n]);
        let replies = drain(s);
        let Some(reply) = replies.into_iter().find(|t| t.dst == self.addr) else {
            return (None, n);
        };
        assert!(reply.payload.len() <= n, "welcome larger than hello");
        let (welcome, session) = init.finish(&reply.payload).unwrap();
        self.session = session;
        (Some(welcome), n)
    }

    fn send(&mut self, s: &mut ControlServer<SqliteStore>, now: u64, msg: &ToCoordinator) {
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = messages::encode(msg, &mut plain, MAX_PLAINTEXT).unwrap();
        let mut buf = [0u8; MAX_DATAGRAM];
        let m = self
            .session
            .as_mut()
            .unwrap()
            .seal(&plain[..n], &mut buf)
            .unwrap();
        s.handle_datagram(now, self.addr, &buf[..m]);
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

    fn inbox(&mut self, s: &mut ControlServer<SqliteStore>) -> Vec<ToNode> {
        let addr = self.addr;
        drain(s)
            .iter()
            .filter(|t| t.dst == addr)
            .map(|t| self.read(t))
            .collect()
    }
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
    let mut s = server(store, false);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    assert_eq!(
        mesh_ip(&a.join(&mut s, 10, Some(k)).0),
        Ipv4Addr::new(100, 64, 0, 1)
    );
    assert_eq!(
        mesh_ip(&b.join(&mut s, 10, Some(k)).0),
        Ipv4Addr::new(100, 64, 0, 2)
    );
    // Coming back with the same node key needs no join key and keeps the address.
    assert_eq!(
        mesh_ip(&a.join(&mut s, 20, None).0),
        Ipv4Addr::new(100, 64, 0, 1)
    );
}

#[test]
fn missing_wrong_and_used_keys_are_refused() {
    let store = SqliteStore::in_memory();
    let one_off = key(&store, false);
    let mut s = server(store, false);
    assert_eq!(
        rejection(&FakeNode::new(1).join(&mut s, 1, None).0),
        RejectReason::KeyRequired
    );
    let mut wrong = one_off;
    wrong.secret[3] ^= 0x40;
    assert_eq!(
        rejection(&FakeNode::new(1).join(&mut s, 1, Some(wrong)).0),
        RejectReason::KeyUnknown
    );
    mesh_ip(&FakeNode::new(2).join(&mut s, 1, Some(one_off)).0);
    assert_eq!(
        rejection(&FakeNode::new(3).join(&mut s, 1, Some(one_off)).0),
        RejectReason::KeyUsed
    );
}

#[test]
fn open_mode_admits_without_a_key() {
    let mut s = server(SqliteStore::in_memory(), true);
    mesh_ip(&FakeNode::new(1).join(&mut s, 1, None).0);
}

#[test]
fn addresses_survive_a_coordinator_restart() {
    let dir = std::env::temp_dir().join(format!("lm-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("db");
    let store = SqliteStore::open(&path).unwrap();
    let k = key(&store, true);
    let mut s = server(store, false);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    let ip_a = mesh_ip(&a.join(&mut s, 1, Some(k)).0);
    let ip_b = mesh_ip(&b.join(&mut s, 1, Some(k)).0);
    drop(s);
    let mut s = server(SqliteStore::open(&path).unwrap(), false);
    assert_eq!(mesh_ip(&b.join(&mut s, 2, None).0), ip_b);
    assert_eq!(mesh_ip(&a.join(&mut s, 2, None).0), ip_a);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_replayed_hello_gets_no_answer() {
    let mut s = server(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    let hello = Hello {
        timestamp: 5,
        session: 1,
        name: "a".into(),
        join: None,
        local_endpoints: vec![],
        role: Role::Node,
    };
    let mut buf = [0u8; MAX_DATAGRAM];
    let (_, n) = Initiator::start(&a.secret, &s.public_key(), &hello, &mut buf).unwrap();
    s.handle_datagram(1, a.addr, &buf[..n]);
    assert_eq!(drain(&mut s).len(), 1);
    s.handle_datagram(2, a.addr, &buf[..n]);
    assert!(drain(&mut s).is_empty());
    // The real node, with a newer timestamp, still gets in.
    a.clock = 10;
    mesh_ip(&a.join(&mut s, 3, None).0);
}

#[test]
fn peers_hear_of_a_join_and_pull_the_map() {
    let mut s = server(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    a.join(&mut s, 1_000, None);
    b.join(&mut s, 1_000, None);
    // The change is announced within the notify interval.
    let wake = s.poll_timeout().unwrap();
    assert!(wake <= 1_200, "wake at {wake}");
    s.handle_timeout(wake);
    let version = match a.inbox(&mut s).as_slice() {
        [ToNode::MapChanged { map_version }] => *map_version,
        other => panic!("{other:?}"),
    };
    a.send(
        &mut s,
        wake,
        &ToCoordinator::GetPeers {
            map_version: version,
            offset: 0,
        },
    );
    match a.inbox(&mut s).as_slice() {
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
}

#[test]
fn silent_nodes_go_offline_and_peers_are_told() {
    let mut s = server(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    a.join(&mut s, 0, None);
    b.join(&mut s, 0, None);
    s.handle_timeout(1_000);
    drain(&mut s);
    // a keeps heartbeating, b goes silent.
    for t in (10_000..=60_000).step_by(10_000) {
        let map_version = s.registry().map_version();
        a.send(
            &mut s,
            t,
            &ToCoordinator::Heartbeat {
                map_version,
                local_endpoints: vec![],
            },
        );
        assert!(matches!(a.inbox(&mut s)[..], [ToNode::HeartbeatAck { .. }]));
    }
    let mut now = 60_000;
    while s.registry().is_online(&b.public()) {
        now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
    }
    assert_eq!(now, 60_001);
    drain(&mut s);
    let wake = s.poll_timeout().unwrap();
    s.handle_timeout(wake);
    assert!(matches!(a.inbox(&mut s)[..], [ToNode::MapChanged { .. }]));
    a.send(
        &mut s,
        wake,
        &ToCoordinator::GetPeers {
            map_version: 0,
            offset: 0,
        },
    );
    match a.inbox(&mut s).as_slice() {
        [ToNode::PeerPage { peers, .. }] => assert!(!peers[0].online),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_endpoint_follows_authenticated_packets() {
    let mut s = server(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    a.join(&mut s, 0, None);
    a.addr = "198.51.100.9:999".parse().unwrap();
    a.send(
        &mut s,
        5,
        &ToCoordinator::Heartbeat {
            map_version: 0,
            local_endpoints: vec![],
        },
    );
    match a.inbox(&mut s).as_slice() {
        [ToNode::HeartbeatAck { endpoint, .. }] => assert_eq!(*endpoint, a.addr),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.registry().get(&a.public()).unwrap().endpoint,
        Some(a.addr)
    );
}

#[test]
fn hostile_input_earns_nothing_bigger_than_itself() {
    let mut s = server(SqliteStore::in_memory(), true);
    let src: SocketAddr = "198.51.100.1:1".parse().unwrap();
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 1500],
        b"LM".to_vec(),
        b"LM\x01\x05".to_vec(),
        b"LM\x01\x03garbage-hello".to_vec(),
        b"LM\x01\x01short-key-request".to_vec(),
        b"LM\x09\x01".to_vec(),
        vec![1, 0, 0, 0, 5, 5, 5],
    ];
    let mut t = b"LM\x01\x05".to_vec();
    t.extend_from_slice(&[0u8; 100]);
    inputs.push(t);
    inputs.push(header::key_request().to_vec());
    for input in &inputs {
        s.handle_datagram(1, src, input);
        for reply in drain(&mut s) {
            assert!(
                reply.payload.len() <= input.len(),
                "{} bytes earned {}",
                input.len(),
                reply.payload.len()
            );
        }
    }
    // Only the version mismatch and the full-size key request were answered at all.
    s.handle_datagram(1, src, b"LM\x01\x01short-key-request");
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_lost_announcement_is_repeated_until_the_node_asks() {
    let mut s = server(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    a.join(&mut s, 1_000, None);
    b.join(&mut s, 1_000, None);
    let wake = s.poll_timeout().unwrap();
    s.handle_timeout(wake);
    drain(&mut s); // Both announcements are lost.
    let again = s.poll_timeout().unwrap();
    assert_eq!(again, wake + 1_000);
    s.handle_timeout(again);
    let version = match a.inbox(&mut s).as_slice() {
        [ToNode::MapChanged { map_version }] => *map_version,
        other => panic!("{other:?}"),
    };
    a.send(
        &mut s,
        again,
        &ToCoordinator::GetPeers {
            map_version: version,
            offset: 0,
        },
    );
    drain(&mut s);
    // Only b, which has not asked, is told again.
    s.handle_timeout(again + 1_000);
    let told: Vec<SocketAddr> = drain(&mut s).iter().map(|t| t.dst).collect();
    assert_eq!(told, vec![b.addr]);
}

#[test]
fn a_punch_request_reaches_both_sides_with_the_others_candidates() {
    let mut s = server(SqliteStore::in_memory(), true);
    let mut a = FakeNode::new(1);
    let mut b = FakeNode::new(2);
    a.join(&mut s, 0, None);
    b.join(&mut s, 0, None);
    drain(&mut s);
    a.send(&mut s, 10, &ToCoordinator::Punch { peer: b.public() });
    let out = drain(&mut s);
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
    // A peer that is not connected: nothing happens.
    a.send(
        &mut s,
        20,
        &ToCoordinator::Punch {
            peer: PublicKey([9; 32]),
        },
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn stun_binding_requests_get_the_source_address() {
    let mut s = server(SqliteStore::in_memory(), true);
    let src: SocketAddr = "198.51.100.20:5555".parse().unwrap();
    let mut req = [0u8; lanmesh_proto::stun::REQUEST_LEN];
    let n = lanmesh_proto::stun::write_request(&[3; 12], &mut req);
    s.handle_datagram(1, src, &req[..n]);
    let out = drain(&mut s);
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
    s.handle_datagram(1, src, &bare);
    assert!(drain(&mut s).is_empty());
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
    let mut open = server(SqliteStore::in_memory(), true);
    let mut relay = FakeNode::new(9);
    relay.role = Role::Relay;
    assert_eq!(
        rejection(&relay.join(&mut open, 1, None).0),
        RejectReason::KeyRequired
    );
    let mut s = server(store, false);
    assert_eq!(
        rejection(&relay.join(&mut s, 1, Some(node_key)).0),
        RejectReason::KeyUnknown
    );
    let mut relay_as_node = FakeNode::new(8);
    assert_eq!(
        rejection(&relay_as_node.join(&mut s, 1, Some(relay_key)).0),
        RejectReason::KeyUnknown
    );
    match relay.join(&mut s, 1, Some(relay_key)).0 {
        Some(Welcome::Accepted { mesh: None, .. }) => {}
        other => panic!("{other:?}"),
    }
    let mut a = FakeNode::new(1);
    a.join(&mut s, 1, Some(node_key));
    drain(&mut s);
    // The node sees the relay; the relay sees the node, its member.
    a.send(
        &mut s,
        2,
        &ToCoordinator::GetPeers {
            map_version: 0,
            offset: 0,
        },
    );
    match a.inbox(&mut s).as_slice() {
        [ToNode::PeerPage { peers, .. }] => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].role, Role::Relay);
            assert_eq!(peers[0].candidates.public, Some(relay.addr));
        }
        other => panic!("{other:?}"),
    }
    relay.send(
        &mut s,
        2,
        &ToCoordinator::GetPeers {
            map_version: 0,
            offset: 0,
        },
    );
    match relay.inbox(&mut s).as_slice() {
        [ToNode::PeerPage { peers, .. }] => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].public_key, a.public());
        }
        other => panic!("{other:?}"),
    }
    // A relay's key cannot come back as a node.
    relay.role = Role::Node;
    assert_eq!(
        rejection(&relay.join(&mut s, 3, None).0),
        RejectReason::Other
    );
}
