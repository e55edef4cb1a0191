//! `control_client`: the node's (or relay's) side of the control protocol,
//! `ControlClient::handle_datagram`, as node a with the lab's coordinator key; the target
//! plays the coordinator (it holds the coordinator's key) as well as an attacker.
//!
//! Input: config u8 (bits 0-1 trust: join key, pinned, first use, a join key of another
//! coordinator; bit 2 a relay) | session seed u32le | records (see `lanmesh_fuzz`). Record ops:
//! 0 raw datagram from `src` (5 is the coordinator's address); 1 the coordinator answers the
//! latest Hello with a Welcome built from data; 2 a key response (the right key or another);
//! 3 a sealed `ToNode` from data (or raw plaintext) on the coordinator's latest session;
//! 4 a sealed page answering the client's latest GetPeers or GetChanges; 5 resend an earlier
//! datagram; 6 resend one with a byte changed; 7 new local endpoints or a punch request;
//! 8 a genuine cookie reply to the latest Hello. The clock advances by each record's `dt`, and
//! `handle_timeout` runs when the client asks for it.
//!
//! Asserts:
//! - nothing from the network disturbs a connected client unless it is a genuine sealed
//!   message of its session: it stays connected and reports nothing (no warning, rejection,
//!   removal, loss). (Before 913a076 an unauthenticated version-mismatch packet or key
//!   response stopped a connected node: fuzz/regressions/control_client/.)
//! - everything the client sends goes to the coordinator and is a key request, a Hello (whose
//!   timestamps strictly grow, and whose session index is the one inside) or a sealed message
//!   that opens with the coordinator's session, decodes, and is padded as the protocol says
//!   (page requests to the full plaintext, punches and heartbeats to their sizes);
//! - after a genuine cookie reply, the Hello sent again carries a mac2 the coordinator accepts;
//! - a peer map is only reported after a genuine page (or a genuine removal: empty).
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use lanmesh_fuzz::{
    addr, known_bug_allowed, public, secret, seed, step_ms, Records, A, COORDINATOR, JOIN_NODE,
};
use lanmesh_proto::channel::{
    hello_form, transport_receiver, HelloForm, IncomingHello, Session, MAX_DATAGRAM,
};
use lanmesh_proto::client::{ClientConfig, ControlClient, Event, Transmit, Trust};
use lanmesh_proto::cookie::{mac1_of, CookieMaker};
use lanmesh_proto::header::{self, ControlHeader, ControlKind, HEADER_LEN, KEY_REQUEST_LEN};
use lanmesh_proto::messages::{
    self, Candidates, Change, MeshAddress, PeerInfo, RejectReason, Role, ToCoordinator, ToNode,
    Welcome, HEARTBEAT_LEN, MAX_PLAINTEXT, PUNCH_REQUEST_LEN,
};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The wall clock at the start (ns since the epoch; 2023-11-14).
const WALL0_NS: u64 = 1_700_000_000_000_000_000;

#[derive(Arbitrary, Debug)]
enum AddrSpec {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl AddrSpec {
    fn addr(&self) -> SocketAddr {
        match self {
            AddrSpec::V4(ip, port) => SocketAddr::from((*ip, *port)),
            AddrSpec::V6(ip, port) => SocketAddr::from((*ip, *port)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum WelcomeSpec {
    Accepted {
        name: String,
        mesh: Option<([u8; 4], u8)>,
        heartbeat_secs: u16,
        map_version: u64,
        endpoint: AddrSpec,
        stun_port: Option<u16>,
        capabilities: u64,
        policy: u64,
        domain: String,
    },
    Rejected {
        reason: u8,
        message: String,
    },
}

#[derive(Arbitrary, Debug)]
struct PeerSpec {
    name: String,
    key: u8,
    mesh_ip: [u8; 4],
    public: Option<AddrSpec>,
    local: Vec<AddrSpec>,
    online: bool,
    relay: bool,
}

impl PeerSpec {
    fn info(&self) -> PeerInfo {
        PeerInfo {
            name: self.name.clone(),
            public_key: public(self.key),
            mesh_ip: Ipv4Addr::from(self.mesh_ip),
            candidates: Candidates {
                public: self.public.as_ref().map(AddrSpec::addr),
                local: self.local.iter().map(AddrSpec::addr).collect(),
            },
            online: self.online,
            role: if self.relay { Role::Relay } else { Role::Node },
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ChangeSpec {
    Peer(PeerSpec),
    Removed(u8),
}

impl ChangeSpec {
    fn change(&self) -> Change {
        match self {
            ChangeSpec::Peer(p) => Change::Peer(p.info()),
            ChangeSpec::Removed(k) => Change::Removed(public(*k)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ToNodeSpec {
    HeartbeatAck {
        map_version: u64,
        endpoint: AddrSpec,
        challenge: u64,
    },
    MapChanged {
        map_version: u64,
    },
    PeerPage {
        map_version: u64,
        offset: u32,
        total: u32,
        peers: Vec<PeerSpec>,
    },
    Punch {
        key: u8,
        public: Option<AddrSpec>,
        local: Vec<AddrSpec>,
    },
    Removed,
    Changes {
        map_version: u64,
        since: u64,
        offset: u32,
        total: u32,
        reset: bool,
        changes: Vec<ChangeSpec>,
    },
}

fn to_node(spec: ToNodeSpec) -> ToNode {
    match spec {
        ToNodeSpec::HeartbeatAck {
            map_version,
            endpoint,
            challenge,
        } => ToNode::HeartbeatAck {
            map_version,
            endpoint: endpoint.addr(),
            challenge,
        },
        ToNodeSpec::MapChanged { map_version } => ToNode::MapChanged { map_version },
        ToNodeSpec::PeerPage {
            map_version,
            offset,
            total,
            peers,
        } => ToNode::PeerPage {
            map_version,
            offset,
            total,
            peers: peers.iter().map(PeerSpec::info).collect(),
        },
        ToNodeSpec::Punch {
            key,
            public: p,
            local,
        } => ToNode::Punch {
            peer: public(key),
            candidates: Candidates {
                public: p.as_ref().map(AddrSpec::addr),
                local: local.iter().map(AddrSpec::addr).collect(),
            },
        },
        ToNodeSpec::Removed => ToNode::Removed,
        ToNodeSpec::Changes {
            map_version,
            since,
            offset,
            total,
            reset,
            changes,
        } => ToNode::Changes {
            map_version,
            since,
            offset,
            total,
            reset,
            changes: changes.iter().map(ChangeSpec::change).collect(),
        },
    }
}

/// The client's latest page request: (map_version, offset, since for GetChanges).
type PageRequest = (u64, u32, Option<u64>);

/// The coordinator as the target plays it.
struct Coordinator {
    /// Whether the client's Hellos are for this coordinator (it trusts this key: from its
    /// config, or pinned on first use).
    ours: bool,
    cookies: CookieMaker,
    latest_hello: Option<Vec<u8>>,
    last_hello_timestamp: u64,
    /// Sessions by the index the coordinator gave them, and the latest index.
    sessions: HashMap<u32, Session>,
    latest: Option<u32>,
    next_index: u32,
    page_request: Option<PageRequest>,
    /// The last sealed message (by `seal`) is a page or a removal.
    sealed_page: bool,
    sealed_removed: bool,
    /// A cookie reply went out for this Hello: its resend must carry a good mac2.
    cookie_for: Option<Vec<u8>>,
}

impl Coordinator {
    fn seal(&mut self, msg: &[u8]) -> Option<Vec<u8>> {
        let decoded = messages::decode::<ToNode>(msg);
        self.sealed_page = matches!(
            decoded,
            Ok(ToNode::PeerPage { .. } | ToNode::Changes { .. })
        );
        self.sealed_removed = decoded == Ok(ToNode::Removed);
        let session = self.sessions.get_mut(&self.latest?)?;
        let mut out = [0u8; MAX_DATAGRAM];
        let n = session.seal(msg, &mut out).ok()?;
        Some(out[..n].to_vec())
    }

    fn seal_msg(&mut self, msg: &ToNode) -> Option<Vec<u8>> {
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = messages::encode(msg, &mut plain, 0).ok()?;
        self.seal(&plain[..n])
    }

    /// Checks what the client sent and learns its latest Hello and page request.
    fn receive(&mut self, sent: &[Transmit], coordinator: SocketAddr) {
        for t in sent {
            assert_eq!(t.dst, coordinator, "the client sent to someone else");
            assert!(t.payload.len() <= MAX_DATAGRAM);
            let kind = ControlHeader::parse(&t.payload).and_then(|h| h.kind);
            match kind {
                Some(ControlKind::KeyRequest) => {
                    assert_eq!(t.payload, header::key_request());
                    assert_eq!(t.payload.len(), KEY_REQUEST_LEN);
                }
                Some(ControlKind::Hello | ControlKind::HelloMac) => {
                    assert!(hello_form(&t.payload).is_some(), "a malformed Hello");
                    if self.ours {
                        let incoming = IncomingHello::read(&secret(seed::COORDINATOR), &t.payload)
                            .expect("the client's Hello opens");
                        // A Hello sent again with a cookie keeps its timestamp.
                        let resend = self.cookie_for.as_ref().is_some_and(|h| {
                            h[..h.len() - 16] == t.payload[..t.payload.len() - 16]
                        });
                        if resend {
                            assert!(
                                self.cookies.verify_mac2(addr(A), &t.payload),
                                "the Hello sent with the cookie has a bad mac2"
                            );
                        } else {
                            assert!(
                                incoming.hello.timestamp > self.last_hello_timestamp,
                                "Hello timestamps must grow"
                            );
                        }
                        self.last_hello_timestamp = incoming.hello.timestamp;
                    }
                    self.latest_hello = Some(t.payload.clone());
                }
                Some(ControlKind::Transport) => {
                    let idx = transport_receiver(&t.payload).expect("a transport datagram");
                    let session = self
                        .sessions
                        .get_mut(&idx)
                        .expect("sealed for a session the coordinator gave");
                    let mut plain = [0u8; MAX_DATAGRAM];
                    let p = session.open(&t.payload, &mut plain).expect("opens");
                    let len = p.len();
                    let msg = messages::decode::<ToCoordinator>(p).expect("decodes");
                    let pad = match msg {
                        ToCoordinator::GetPeers { .. } | ToCoordinator::GetChanges { .. } => {
                            MAX_PLAINTEXT
                        }
                        ToCoordinator::Punch { .. } => PUNCH_REQUEST_LEN,
                        ToCoordinator::Heartbeat { .. } => HEARTBEAT_LEN,
                        ToCoordinator::Goodbye => 0,
                    };
                    assert!(len >= pad, "{msg:?} padded to {len} bytes, not {pad}");
                    match msg {
                        ToCoordinator::GetPeers {
                            map_version,
                            offset,
                        } => self.page_request = Some((map_version, offset, None)),
                        ToCoordinator::GetChanges {
                            since,
                            map_version,
                            offset,
                        } => self.page_request = Some((map_version, offset, Some(since))),
                        _ => {}
                    }
                }
                other => panic!("the client sent a {other:?} packet"),
            }
        }
    }
}

fn u8_at(d: &[u8], i: usize) -> u8 {
    d.get(i).copied().unwrap_or(0)
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 5 {
        return;
    }
    let config = input[0];
    let coordinator_key = public(seed::COORDINATOR);
    let trust = match config & 3 {
        0 => Trust::JoinKey(coordinator_key),
        1 => Trust::Pinned(coordinator_key),
        2 => Trust::FirstUse,
        _ => Trust::JoinKey(public(seed::STRANGER)),
    };
    let role = if config & 4 != 0 {
        Role::Relay
    } else {
        Role::Node
    };
    let coordinator_addr = addr(COORDINATOR);
    let mut client = ControlClient::new(
        ClientConfig {
            private: secret(seed::NODE_A),
            coordinator_addr,
            trust,
            join: Some(JOIN_NODE),
            name: "a".into(),
            role,
            stamp_floor: 0,
        },
        u32::from_le_bytes(input[1..5].try_into().unwrap()),
    );
    let t0 = Instant::now();
    let mut now = t0;
    let wall = |now: Instant| WALL0_NS + (now - t0).as_nanos() as u64;
    client.start(now, wall(now));
    let mut coord = Coordinator {
        ours: config & 3 < 2,
        cookies: CookieMaker::new(&coordinator_key, [9; 32], 0),
        latest_hello: None,
        last_hello_timestamp: 0,
        sessions: HashMap::new(),
        latest: None,
        next_index: 1,
        page_request: None,
        sealed_page: false,
        sealed_removed: false,
        cookie_for: None,
    };
    let mut history: Vec<(SocketAddr, Vec<u8>)> = Vec::new();

    for r in Records::new(&input[5..]) {
        now += Duration::from_millis(step_ms(r.dt));
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now, wall(now));
        }
        for e in std::iter::from_fn(|| client.poll_event()) {
            if let Event::Pin(k) = e {
                coord.ours = k == coordinator_key;
            }
        }
        let sent: Vec<Transmit> = std::iter::from_fn(|| client.poll_transmit()).collect();
        coord.receive(&sent, coordinator_addr);

        let d = r.data;
        let mut src = addr(r.src);
        coord.sealed_page = false;
        coord.sealed_removed = false;
        let mut genuine = false;
        let datagram: Vec<u8> = match r.op % 9 {
            0 => d.to_vec(),
            1 => {
                let Some(hello) = coord.latest_hello.clone() else {
                    continue;
                };
                let Ok(incoming) = IncomingHello::read(&secret(seed::COORDINATOR), &hello) else {
                    continue;
                };
                let Ok(spec) = Unstructured::new(d).arbitrary::<WelcomeSpec>() else {
                    continue;
                };
                let welcome = match spec {
                    WelcomeSpec::Accepted {
                        name,
                        mesh,
                        heartbeat_secs,
                        map_version,
                        endpoint,
                        stun_port,
                        capabilities,
                        policy,
                        domain,
                    } => Welcome::Accepted {
                        name,
                        mesh: mesh.map(|(ip, prefix)| MeshAddress {
                            ip: Ipv4Addr::from(ip),
                            network: format!("{}/{}", Ipv4Addr::from(ip), prefix % 33)
                                .parse()
                                .unwrap(),
                        }),
                        heartbeat_secs,
                        map_version,
                        endpoint: endpoint.addr(),
                        stun_port,
                        capabilities,
                        policy,
                        domain,
                    },
                    WelcomeSpec::Rejected { reason, message } => Welcome::Rejected {
                        reason: match reason % 7 {
                            0 => RejectReason::KeyRequired,
                            1 => RejectReason::KeyUnknown,
                            2 => RejectReason::KeyUsed,
                            3 => RejectReason::KeyExpired,
                            4 => RejectReason::NetworkFull,
                            5 => RejectReason::TryLater,
                            _ => RejectReason::Other,
                        },
                        message,
                    },
                };
                let index = coord.next_index;
                coord.next_index += 1;
                let mut out = [0u8; MAX_DATAGRAM];
                let Ok((n, session)) = incoming.answer(index, &welcome, &mut out) else {
                    continue;
                };
                if let Some(s) = session {
                    coord.sessions.insert(index, s);
                    coord.latest = Some(index);
                }
                src = coordinator_addr;
                genuine = true;
                out[..n].to_vec()
            }
            2 => {
                let mut k = vec![0u8; HEADER_LEN + 32];
                header::write_header(ControlKind::KeyResponse, &mut k);
                let key = if u8_at(d, 0) & 1 == 1 {
                    public(seed::STRANGER)
                } else {
                    coordinator_key
                };
                k[HEADER_LEN..].copy_from_slice(key.as_bytes());
                k
            }
            3 => {
                let mut u = Unstructured::new(d);
                let sealed = if u.arbitrary::<bool>().unwrap_or(false) {
                    let rest = u.take_rest();
                    coord.seal(&rest[..rest.len().min(MAX_PLAINTEXT)])
                } else {
                    let Ok(spec) = u.arbitrary::<ToNodeSpec>() else {
                        continue;
                    };
                    coord.seal_msg(&to_node(spec))
                };
                let Some(sealed) = sealed else {
                    continue;
                };
                src = coordinator_addr;
                genuine = true;
                sealed
            }
            4 => {
                let Some((version, offset, since)) = coord.page_request else {
                    continue;
                };
                let mut u = Unstructured::new(d);
                let total = offset.saturating_add(u.int_in_range(0..=8).unwrap_or(0));
                let count = (total - offset).min(u.int_in_range(0..=8).unwrap_or(0));
                let msg = match since {
                    None => ToNode::PeerPage {
                        map_version: version,
                        offset,
                        total,
                        peers: (0..count)
                            .map_while(|_| u.arbitrary::<PeerSpec>().ok().map(|p| p.info()))
                            .collect(),
                    },
                    Some(since) => ToNode::Changes {
                        map_version: version,
                        since,
                        offset,
                        total,
                        reset: u.arbitrary().unwrap_or(false),
                        changes: (0..count)
                            .map_while(|_| u.arbitrary::<ChangeSpec>().ok().map(|c| c.change()))
                            .collect(),
                    },
                };
                let Some(sealed) = coord.seal_msg(&msg) else {
                    continue;
                };
                src = coordinator_addr;
                genuine = true;
                sealed
            }
            5 | 6 if history.is_empty() => continue,
            5 => {
                let (s, h) = history[u8_at(d, 0) as usize % history.len()].clone();
                src = s;
                h
            }
            6 => {
                let (s, mut h) = history[u8_at(d, 0) as usize % history.len()].clone();
                if h.is_empty() {
                    continue;
                }
                let at = u8_at(d, 1) as usize % h.len();
                h[at] ^= d.get(2).copied().filter(|&m| m != 0).unwrap_or(0x80);
                src = s;
                h
            }
            7 => {
                let mut u = Unstructured::new(d);
                if u.arbitrary::<bool>().unwrap_or(false) {
                    client.request_punch(public(u.arbitrary::<u8>().unwrap_or(0)));
                } else {
                    let local: Vec<AddrSpec> = u.arbitrary().unwrap_or_default();
                    client.set_local_endpoints(now, local.iter().map(AddrSpec::addr).collect());
                }
                continue;
            }
            _ => {
                let Some(hello) = coord.latest_hello.clone() else {
                    continue;
                };
                let (Some(mac1), Some(session)) = (
                    mac1_of(&hello),
                    hello
                        .get(4..8)
                        .map(|b| u32::from_le_bytes(b.try_into().unwrap())),
                ) else {
                    continue;
                };
                if hello_form(&hello) != Some(HelloForm::Macs) {
                    continue;
                }
                let mut nonce = [0u8; 24];
                for (i, b) in d.iter().take(24).enumerate() {
                    nonce[i] = *b;
                }
                coord.cookie_for = Some(hello);
                src = coordinator_addr;
                coord.cookies.reply(addr(A), session, &mac1, nonce).to_vec()
            }
        };

        let was_connected = client.is_connected();
        client.handle_datagram(now, wall(now), src, &datagram);
        let events: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
        if was_connected && !genuine && !known_bug_allowed("client-disturbed-while-connected") {
            assert!(
                client.is_connected() && events.is_empty(),
                "a {}-byte datagram from {src} that is not a genuine message of the session \
                 disturbed the connected client: connected {}, events {events:?}",
                datagram.len(),
                client.is_connected()
            );
        }
        for e in &events {
            match e {
                Event::PeerMap(peers) => assert!(
                    coord.sealed_page || (coord.sealed_removed && peers.is_empty()),
                    "a peer map without a genuine page"
                ),
                Event::Pin(k) => coord.ours = *k == coordinator_key,
                _ => {}
            }
        }
        let sent: Vec<Transmit> = std::iter::from_fn(|| client.poll_transmit()).collect();
        coord.receive(&sent, coordinator_addr);
        history.push((src, datagram));
    }
});
