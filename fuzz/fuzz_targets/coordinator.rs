//! `coordinator`: the coordinator's sans-IO control plane, `ControlServer::handle_datagram`,
//! with the lab's coordinator key and join keys (captured Hellos authenticate and are
//! admitted), an in-memory SQLite store behind the real `StoreWorker`, and the work it hands
//! out (opening and answering Hellos, storage) run inline, as the tests do.
//!
//! Input: flags u8 (bit 0 open mode, bit 1 a second STUN port, bit 2 a tiny network of six
//! addresses, bit 3 no reusable node key) | records (see `lanmesh_fuzz`). Record ops:
//! 0 raw datagram from `src`; 1 a genuine Hello (either form) from identity data[0] (nodes
//! a-d, the relay, a stranger) with fields from data, sent again with the cookie if a cookie
//! reply comes back; 2 a sealed message on that identity's session (an encoded
//! `ToCoordinator` from data, padded as the client does, not at all, or to a size; or raw
//! plaintext); 3 resend an earlier datagram; 4 resend one with a byte changed; 5 a key request
//! of a length from data. The clock advances by each record's `dt`, and `handle_timeout` runs
//! when the server asks for it.
//!
//! Asserts:
//! - every reply to the source of a datagram is no larger than that datagram (key response,
//!   version mismatch, STUN, cookie reply, Welcome, and sealed answers), except what the
//!   protocol allows: a sealed answer to a node older than padding (capabilities 0) at an
//!   address that proved it receives for the node;
//! - pushes (sealed messages nobody asked for: map changes, a peer's punch) only go to an
//!   address that proved it receives for that node (its first packet on the session came from
//!   where its Hello did, or it echoed a challenge from there);
//! - the Welcome to a genuine Hello always completes the handshake, and an accepted node gets
//!   a name of at most 63 bytes and (a node, not a relay) a mesh IP inside the network;
//! - every sealed message the server sends an identity opens and decodes as a `ToNode`;
//! - nothing it sends is larger than the largest control datagram.
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use lanmesh_coordinator::control::{ControlServer, Settings, Transmit};
use lanmesh_coordinator::inline_work::run_work_inline;
use lanmesh_coordinator::registry::Registry;
use lanmesh_coordinator::store::{KeyKind, SqliteStore};
use lanmesh_coordinator::store_worker::StoreWorker;
use lanmesh_fuzz::{
    addr, at, known_bug_allowed, public, secret, seed, step_ms, Records, JOIN_NODE, JOIN_ONE_OFF,
    JOIN_RELAY, T0_MS,
};
use lanmesh_proto::channel::{transport_receiver, HelloForm, Initiator, Session, MAX_DATAGRAM};
use lanmesh_proto::cookie::CookieOpener;
use lanmesh_proto::header::{self, ControlHeader, ControlKind, KEY_REQUEST_LEN};
use lanmesh_proto::join_key::JoinSecret;
use lanmesh_proto::messages::{
    self, Hello, Role, ToCoordinator, ToNode, Welcome, HEARTBEAT_LEN, MAX_NAME_LEN, MAX_PLAINTEXT,
    PUNCH_REQUEST_LEN,
};
use lanmesh_proto::PublicKey;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};

const IDENTITIES: [u8; 6] = [
    seed::NODE_A,
    seed::NODE_B,
    seed::NODE_C,
    seed::NODE_D,
    seed::RELAY,
    seed::STRANGER,
];
const EXPIRED: JoinSecret = JoinSecret {
    id: [0x77; 8],
    secret: [0x88; 16],
};

#[derive(Arbitrary, Debug)]
enum AddrSpec {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
    /// One of the lab's addresses.
    Lab(u8),
}

impl AddrSpec {
    fn addr(&self) -> SocketAddr {
        match self {
            AddrSpec::V4(ip, port) => SocketAddr::from((*ip, *port)),
            AddrSpec::V6(ip, port) => SocketAddr::from((*ip, *port)),
            AddrSpec::Lab(i) => addr(*i as usize),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum JoinSpec {
    None,
    Node,
    Relay,
    OneOff,
    Expired,
    Other([u8; 8], [u8; 16]),
}

#[derive(Arbitrary, Debug)]
struct HelloSpec {
    /// Absolute timestamp (else: the identity's last one plus `step`).
    absolute: bool,
    step: u64,
    relay: bool,
    legacy_form: bool,
    /// Capabilities: all (`None`) or these.
    capabilities: Option<u64>,
    join: JoinSpec,
    name: String,
    local: Vec<AddrSpec>,
}

#[derive(Arbitrary, Debug)]
enum EchoSpec {
    None,
    /// The last challenge the identity got.
    Last,
    Value(u64),
}

#[derive(Arbitrary, Debug)]
enum MessageSpec {
    Heartbeat {
        map_version: u64,
        local: Vec<AddrSpec>,
        echo: EchoSpec,
    },
    GetPeers {
        map_version: u64,
        offset: u32,
    },
    GetChanges {
        since: u64,
        map_version: u64,
        offset: u32,
    },
    /// Punch with an identity (by index) or any key.
    Punch {
        identity: Option<u8>,
        other: [u8; 32],
    },
    Goodbye,
}

/// How a sealed message is padded: as the real client does, not at all, or to a given size.
#[derive(Arbitrary, Debug)]
enum Padding {
    AsTheClient,
    None,
    To(u16),
}

struct Identity {
    seed: u8,
    /// The session index the identity puts in its Hellos.
    index: u32,
    timestamp: u64,
    /// Its sessions, newest last: the server keeps using the confirmed one until the node
    /// confirms a new one, so any of them may carry messages.
    /// With the capabilities of the Hello that made each.
    sessions: Vec<(Session, u64)>,
    /// Where its last accepted Hello came from, and whether a sealed packet followed from
    /// there (which validates that address).
    hello_src: Option<SocketAddr>,
    /// Addresses that proved they receive for it (a superset of what the server believes).
    validated: HashSet<SocketAddr>,
    /// The last challenge it got, and where.
    challenge: Option<(u64, SocketAddr)>,
}

struct Harness {
    server: ControlServer,
    store: StoreWorker,
}

impl Harness {
    fn new(flags: u8) -> Harness {
        let mut store = SqliteStore::in_memory();
        let node = KeyKind {
            reusable: true,
            relay: false,
        };
        if flags & 8 == 0 {
            store.add_key(&JOIN_NODE, node, None, T0_MS).unwrap();
        }
        let one_off = KeyKind {
            reusable: false,
            relay: false,
        };
        store.add_key(&JOIN_ONE_OFF, one_off, None, T0_MS).unwrap();
        store
            .add_key(&EXPIRED, node, Some(T0_MS - 1), T0_MS)
            .unwrap();
        let relay = KeyKind {
            reusable: true,
            relay: true,
        };
        store.add_key(&JOIN_RELAY, relay, None, T0_MS).unwrap();
        let network = if flags & 4 != 0 {
            "100.64.0.0/29"
        } else {
            "100.64.0.0/10"
        };
        let nodes = store.load_nodes().unwrap();
        let server = ControlServer::new(
            public(seed::COORDINATOR),
            nodes,
            Registry::new(network.parse().unwrap(), 60_000),
            Settings {
                open: flags & 1 != 0,
                heartbeat_secs: 15,
                stun_port: (flags & 2 != 0).then_some(3480),
                open_max_nodes: 3,
                lan_broadcast: flags & 4 == 0,
                ..Settings::default()
            },
            at(T0_MS),
            T0_MS,
            7,
        );
        Harness {
            server,
            store: StoreWorker::new(store),
        }
    }

    /// Runs the work the server asks for, inline, until there is none.
    fn run(&mut self, now: u64) {
        let coordinator = secret(seed::COORDINATOR);
        run_work_inline(
            &mut self.server,
            &mut self.store,
            &coordinator,
            at(now),
            now,
            false,
        );
    }

    fn datagram(&mut self, now: u64, src: SocketAddr, data: &[u8]) -> Vec<Transmit> {
        self.server.handle_datagram(at(now), src, data);
        self.run(now);
        std::iter::from_fn(|| self.server.poll_transmit()).collect()
    }
}

fn hello_initiator(id: &mut Identity, spec: &HelloSpec) -> Option<(Initiator, u64)> {
    id.timestamp = if spec.absolute {
        spec.step
    } else {
        id.timestamp.wrapping_add(1 + (spec.step & 0xffff_ffff))
    };
    let capabilities = spec.capabilities.unwrap_or(messages::caps::ALL);
    let hello = Hello {
        timestamp: id.timestamp,
        session: id.index,
        name: spec.name.clone(),
        join: match spec.join {
            JoinSpec::None => None,
            JoinSpec::Node => Some(JOIN_NODE),
            JoinSpec::Relay => Some(JOIN_RELAY),
            JoinSpec::OneOff => Some(JOIN_ONE_OFF),
            JoinSpec::Expired => Some(EXPIRED),
            JoinSpec::Other(id, secret) => Some(JoinSecret { id, secret }),
        },
        local_endpoints: spec.local.iter().map(AddrSpec::addr).collect(),
        role: if spec.relay { Role::Relay } else { Role::Node },
        capabilities,
    };
    let form = if spec.legacy_form {
        HelloForm::Legacy
    } else {
        HelloForm::Macs
    };
    let init = Initiator::start(&secret(id.seed), &public(seed::COORDINATOR), &hello, form).ok()?;
    Some((init, capabilities))
}

/// A sealed datagram on identity `i`'s newest session, and whether it asks to punch with the
/// identity itself.
fn sealed_datagram(ids: &mut [Identity], i: usize, data: &[u8]) -> Option<(Vec<u8>, bool)> {
    let keys: Vec<PublicKey> = ids.iter().map(|id| public(id.seed)).collect();
    let challenge = ids[i].challenge.map_or(0, |(c, _)| c);
    let (session, _) = ids[i].sessions.last_mut()?;
    let mut u = Unstructured::new(data);
    let raw = u.arbitrary::<bool>().ok()?;
    let mut plain = [0u8; MAX_PLAINTEXT];
    let n = if raw {
        let rest = u.take_rest();
        let n = rest.len().min(MAX_PLAINTEXT);
        plain[..n].copy_from_slice(&rest[..n]);
        n
    } else {
        let padding: Padding = u.arbitrary().ok()?;
        let msg = match u.arbitrary::<MessageSpec>().ok()? {
            MessageSpec::Heartbeat {
                map_version,
                local,
                echo,
            } => ToCoordinator::Heartbeat {
                map_version,
                local_endpoints: local.iter().map(AddrSpec::addr).collect(),
                echo: match echo {
                    EchoSpec::None => 0,
                    EchoSpec::Last => challenge,
                    EchoSpec::Value(v) => v,
                },
            },
            MessageSpec::GetPeers {
                map_version,
                offset,
            } => ToCoordinator::GetPeers {
                map_version,
                offset,
            },
            MessageSpec::GetChanges {
                since,
                map_version,
                offset,
            } => ToCoordinator::GetChanges {
                since,
                map_version,
                offset,
            },
            MessageSpec::Punch { identity, other } => ToCoordinator::Punch {
                peer: identity.map_or(PublicKey(other), |k| keys[k as usize % keys.len()]),
            },
            MessageSpec::Goodbye => ToCoordinator::Goodbye,
        };
        let pad = match padding {
            Padding::AsTheClient => match msg {
                ToCoordinator::GetPeers { .. } | ToCoordinator::GetChanges { .. } => MAX_PLAINTEXT,
                ToCoordinator::Punch { .. } => PUNCH_REQUEST_LEN,
                ToCoordinator::Heartbeat { .. } => HEARTBEAT_LEN,
                ToCoordinator::Goodbye => 0,
            },
            Padding::None => 0,
            Padding::To(n) => n as usize,
        };
        messages::encode(&msg, &mut plain, pad).ok()?
    };
    let self_punch = matches!(
        messages::decode::<ToCoordinator>(&plain[..n]),
        Ok(ToCoordinator::Punch { peer }) if peer == keys[i]
    );
    let mut out = [0u8; MAX_DATAGRAM];
    let m = session.seal(&plain[..n], &mut out).ok()?;
    Some((out[..m].to_vec(), self_punch))
}

/// The identity a sealed datagram is for, by its receiver index.
fn identity_of(ids: &[Identity], payload: &[u8]) -> Option<usize> {
    let idx = transport_receiver(payload)?;
    ids.iter()
        .position(|id| id.index == idx && !id.sessions.is_empty())
}

/// Opens what the server sealed for identities (it must decode), learning challenges.
/// Returns, per transmit, the capabilities of the session that sealed it (if any did).
fn read_sealed(ids: &mut [Identity], sent: &[Transmit]) -> Vec<Option<u64>> {
    let mut caps = Vec::new();
    for t in sent {
        assert!(
            t.payload.len() <= MAX_DATAGRAM,
            "a {}-byte datagram",
            t.payload.len()
        );
        let Some(i) = identity_of(ids, &t.payload) else {
            caps.push(None);
            continue;
        };
        let mut plain = [0u8; MAX_DATAGRAM];
        // A failed open changes nothing, so trying each session is fine.
        let (p, c) = ids[i]
            .sessions
            .iter_mut()
            .rev()
            .find_map(|(s, c)| Some((s.open(&t.payload, &mut plain).ok()?.to_vec(), *c)))
            .expect("a message sealed for one of an identity's sessions opens");
        caps.push(Some(c));
        match messages::decode::<ToNode>(&p) {
            Ok(ToNode::HeartbeatAck { challenge, .. }) if challenge != 0 => {
                ids[i].challenge = Some((challenge, t.dst));
            }
            Ok(_) => {}
            Err(e) => panic!("the coordinator sent an undecodable message: {e}"),
        }
    }
    caps
}

/// Pushes (sealed messages to identity `i` that are not replies) only go to validated addresses.
fn check_pushes(ids: &[Identity], sent: &[Transmit], replier: Option<usize>) {
    for t in sent {
        let Some(i) = identity_of(ids, &t.payload) else {
            continue;
        };
        if Some(i) == replier {
            continue;
        }
        assert!(
            ids[i].validated.contains(&t.dst),
            "pushed {} bytes to {}, which never proved it receives for that node",
            t.payload.len(),
            t.dst
        );
    }
}

fn in_network(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX << (32 - prefix);
    u32::from(ip) & mask == u32::from(net) & mask
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, records)) = input.split_first() else {
        return;
    };
    let prefix = if flags & 4 != 0 { 29 } else { 10 };
    let mut h = Harness::new(flags);
    let mut ids: Vec<Identity> = IDENTITIES
        .iter()
        .enumerate()
        .map(|(i, &seed)| Identity {
            seed,
            index: 0x1000 + i as u32,
            timestamp: 0,
            sessions: Vec::new(),
            hello_src: None,
            validated: HashSet::new(),
            challenge: None,
        })
        .collect();
    let mut history: Vec<Vec<u8>> = Vec::new();
    let mut now = T0_MS;
    for r in Records::new(records) {
        now += step_ms(r.dt);
        if h.server.poll_timeout().is_some_and(|t| t <= at(now)) {
            h.server.handle_timeout(at(now));
            h.run(now);
        }
        let sent: Vec<Transmit> = std::iter::from_fn(|| h.server.poll_transmit()).collect();
        check_pushes(&ids, &sent, None);
        let _ = read_sealed(&mut ids, &sent);

        let src = addr(r.src);
        let d = r.data;
        let pick = *d.first().unwrap_or(&0) as usize;
        // The identity that sent a sealed datagram (its answers are replies).
        let mut sealer = None;
        // It asked to punch with itself: besides the (limited) answer, the server pushes the
        // other half of the punch to it, at its validated address, unlimited like every push.
        let mut self_punch = false;
        let (datagram, sent) = match r.op % 6 {
            1 => {
                let i = pick % ids.len();
                let Ok(spec) = Unstructured::new(d.get(1..).unwrap_or(&[])).arbitrary() else {
                    continue;
                };
                let Some((mut init, caps)) = hello_initiator(&mut ids[i], &spec) else {
                    continue;
                };
                let mut datagram = init.datagram().to_vec();
                let mut sent = h.datagram(now, src, &datagram);
                // Under load: a cookie reply; the Hello goes again with mac2, as nodes do.
                let cookie = sent.iter().find_map(|t| {
                    let kind = ControlHeader::parse(&t.payload).and_then(|h| h.kind);
                    (t.dst == src && kind == Some(ControlKind::CookieReply)).then_some(&t.payload)
                });
                if let (Some(reply), Some(mac1)) = (cookie, init.mac1()) {
                    assert!(reply.len() <= datagram.len());
                    let c = CookieOpener::for_coordinator(&public(seed::COORDINATOR))
                        .open(reply, ids[i].index, &mac1)
                        .expect("the cookie reply to a genuine hello opens");
                    init.apply_cookie(&c);
                    check_pushes(&ids, &sent, None);
                    let _ = read_sealed(&mut ids, &sent);
                    history.push(datagram);
                    datagram = init.datagram().to_vec();
                    sent = h.datagram(now, src, &datagram);
                }
                let welcomes: Vec<&Transmit> = sent
                    .iter()
                    .filter(|t| t.dst == src && init.answers(&t.payload))
                    .collect();
                assert!(welcomes.len() <= 1, "two welcomes for one hello");
                if let Some(w) = welcomes.first() {
                    let (welcome, session) = init
                        .finish(&w.payload)
                        .expect("the welcome to a genuine hello opens");
                    match &welcome {
                        Welcome::Accepted { name, mesh, .. } => {
                            assert!(name.len() <= MAX_NAME_LEN, "name {name:?}");
                            if let Some(m) = mesh {
                                let net = Ipv4Addr::new(100, 64, 0, 0);
                                assert!(in_network(m.ip, net, prefix), "mesh IP {} outside", m.ip);
                                assert!(!matches!(m.ip.octets()[3], 0 | 255));
                            }
                            assert_eq!(mesh.is_none(), spec.relay, "mesh IP for a node only");
                            assert!(session.is_some());
                            let id = &mut ids[i];
                            // Every earlier session is kept: the server may still use the
                            // confirmed one after any number of unconfirmed Welcomes.
                            id.sessions.extend(session.map(|s| (s, caps)));
                            id.hello_src = Some(src);
                            id.challenge = None;
                        }
                        Welcome::Rejected { .. } => assert!(session.is_none()),
                    }
                }
                (datagram, sent)
            }
            op => {
                let datagram = match op {
                    0 => d.to_vec(),
                    2 => {
                        let i = pick % ids.len();
                        let Some((datagram, punches_itself)) =
                            sealed_datagram(&mut ids, i, d.get(1..).unwrap_or(&[]))
                        else {
                            continue;
                        };
                        sealer = Some(i);
                        self_punch = punches_itself;
                        let id = &mut ids[i];
                        // A sealed packet from where the Hello came from validates it; an
                        // echoed challenge from where it went, too (a superset is fine).
                        if id.hello_src == Some(src) {
                            id.validated.insert(src);
                        }
                        if id.challenge.is_some_and(|(_, at)| at == src) {
                            id.validated.insert(src);
                        }
                        datagram
                    }
                    3 | 4 if history.is_empty() => continue,
                    3 => history[pick % history.len()].clone(),
                    4 => {
                        let mut h = history[pick % history.len()].clone();
                        if h.is_empty() {
                            continue;
                        }
                        let at = *d.get(1).unwrap_or(&0) as usize % h.len();
                        h[at] ^= d.get(2).copied().filter(|&m| m != 0).unwrap_or(0x80);
                        h
                    }
                    _ => {
                        let mut k = header::key_request().to_vec();
                        k.resize(4 + pick * 2 % (2 * KEY_REQUEST_LEN), 0);
                        k
                    }
                };
                let sent = h.datagram(now, src, &datagram);
                (datagram, sent)
            }
        };

        check_pushes(&ids, &sent, sealer);
        let sealed_caps = read_sealed(&mut ids, &sent);
        // Replies: to the source, and (sealed) to the identity that sent the datagram.
        for (t, caps) in sent.iter().zip(&sealed_caps) {
            if t.dst != src {
                continue;
            }
            let to = identity_of(&ids, &t.payload);
            if to.is_some() && to != sealer {
                continue; // A push that happens to go to this address: checked below.
            }
            if t.payload.len() <= datagram.len() {
                continue;
            }
            // Sealed with a session of a node older than padding, at an address it proved; or
            // the push half of a punch the node asked for with itself (at that address too).
            let at_home = sealer.is_some_and(|i| ids[i].validated.contains(&src));
            let allowed = at_home && (*caps == Some(0) || self_punch);
            if allowed || known_bug_allowed("coordinator-session-amplification") {
                continue;
            }
            let kind = ControlHeader::parse(&t.payload).and_then(|h| h.kind);
            panic!(
                "reply to {src} of {} bytes ({kind:?}) for a {}-byte datagram{}",
                t.payload.len(),
                datagram.len(),
                if sealer.is_some() {
                    " (sealed on a session)"
                } else {
                    ""
                }
            );
        }
        history.push(datagram);
    }
});
