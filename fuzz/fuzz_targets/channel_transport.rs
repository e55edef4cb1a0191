//! `channel_transport`: sealed control datagrams on an established session.
//!
//! A real session pair (node, coordinator) is built in the target from the fixed keys. The
//! input is records (see `lanmesh_fuzz`); `src & 1` picks the side that acts:
//! - op 0: the data as a datagram: `transport_receiver` must agree with the layout, and
//!   `Session::open` must refuse it (nothing opens without the key);
//! - op 1: seal the data as plaintext (refused only above MAX_PLAINTEXT);
//! - op 2: deliver one of the sealed datagrams to the other side (data[0] picks which): it
//!   opens to the same plaintext exactly once, unless it fell out of the 1024-counter window;
//! - op 3: the same with one byte changed (data picks where and how): it must not open,
//!   except a change in the receiver index, which `transport_receiver` reads outside the AEAD;
//! - op 4: the same, cut short: it must not open.
//!
//! Building a pair costs a handshake, so one pair serves every run. To keep runs independent
//! of each other, a run that sealed anything ends by sealing one more datagram each way and
//! opening it on the other side: the next run then starts with each receiver's replay window
//! exactly at the sender's next counter, which behaves like a fresh window shifted by that
//! counter (the model below works with counters relative to the run's first one).
#![no_main]
use lanmesh_fuzz::{public, secret, seed, Records};
use lanmesh_proto::channel::{
    transport_receiver, ChannelError, HelloForm, IncomingHello, Initiator, Session, MAX_DATAGRAM,
    TRANSPORT_OVERHEAD,
};
use lanmesh_proto::header::{ControlHeader, ControlKind, PROTOCOL_VERSION};
use lanmesh_proto::messages::{caps, Hello, MeshAddress, Role, Welcome, MAX_PLAINTEXT};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::collections::HashSet;

const NODE_INDEX: u32 = 42;
const COORDINATOR_INDEX: u32 = 7;

fn establish() -> [Session; 2] {
    let hello = Hello {
        timestamp: 1,
        session: NODE_INDEX,
        name: "a".into(),
        join: None,
        local_endpoints: vec![],
        role: Role::Node,
        capabilities: caps::ALL,
    };
    let welcome = Welcome::Accepted {
        name: "a".into(),
        mesh: Some(MeshAddress {
            ip: "100.64.0.1".parse().unwrap(),
            network: "100.64.0.0/10".parse().unwrap(),
        }),
        heartbeat_secs: 15,
        map_version: 1,
        endpoint: "203.0.113.11:41641".parse().unwrap(),
        stun_port: None,
        capabilities: caps::ALL,
        policy: 0,
        domain: String::new(),
    };
    let init = Initiator::start(
        &secret(seed::NODE_A),
        &public(seed::COORDINATOR),
        &hello,
        HelloForm::Macs,
    )
    .unwrap();
    let incoming = IncomingHello::read(&secret(seed::COORDINATOR), init.datagram()).unwrap();
    let mut out = [0u8; MAX_DATAGRAM];
    let (m, coordinator) = incoming
        .answer(COORDINATOR_INDEX, &welcome, &mut out)
        .unwrap();
    let (_, node) = init.finish(&out[..m]).unwrap();
    [node.unwrap(), coordinator.unwrap()]
}

thread_local! {
    static PAIR: RefCell<Option<[Session; 2]>> = const { RefCell::new(None) };
}

struct Sealed {
    /// The side that sealed it (0 node, 1 coordinator).
    from: usize,
    /// Relative to the first counter the side sealed this run.
    counter: u64,
    datagram: Vec<u8>,
    plaintext: Vec<u8>,
}

fn counter_of(datagram: &[u8]) -> u64 {
    u64::from_le_bytes(datagram[8..16].try_into().unwrap())
}

/// Seals one datagram each way and opens it on the other side (see the module docs).
fn resync(pair: &mut [Session; 2]) {
    for side in 0..2 {
        let mut out = [0u8; MAX_DATAGRAM];
        let mut plain = [0u8; MAX_DATAGRAM];
        let n = pair[side].seal(b"sync", &mut out).unwrap();
        assert_eq!(pair[1 - side].open(&out[..n], &mut plain).unwrap(), b"sync");
    }
}

fn run(pair: &mut [Session; 2], data: &[u8]) -> bool {
    let mut dirty = false;
    let mut sealed: Vec<Sealed> = Vec::new();
    // The first counter each side seals this run.
    let mut first_counter: [Option<u64>; 2] = [None, None];
    let mut opened: [HashSet<u64>; 2] = Default::default();
    let mut highest: [Option<u64>; 2] = [None, None];
    let mut plain = [0u8; MAX_DATAGRAM];
    for r in Records::new(data) {
        let side = r.src & 1;
        match r.op % 5 {
            0 => {
                let is_transport = ControlHeader::parse(r.data).is_some_and(|h| {
                    h.version == PROTOCOL_VERSION && h.kind == Some(ControlKind::Transport)
                }) && r.data.len() >= TRANSPORT_OVERHEAD;
                assert_eq!(transport_receiver(r.data).is_some(), is_transport);
                if let Some(idx) = transport_receiver(r.data) {
                    assert_eq!(idx.to_le_bytes(), r.data[4..8]);
                }
                assert!(
                    pair[side].open(r.data, &mut plain).is_err(),
                    "raw bytes opened"
                );
            }
            1 => {
                dirty = true;
                let mut out = [0u8; MAX_DATAGRAM];
                match pair[side].seal(r.data, &mut out) {
                    Ok(n) => {
                        assert!(r.data.len() <= MAX_PLAINTEXT);
                        assert_eq!(n, r.data.len() + TRANSPORT_OVERHEAD);
                        let to = if side == 0 {
                            COORDINATOR_INDEX
                        } else {
                            NODE_INDEX
                        };
                        assert_eq!(transport_receiver(&out[..n]), Some(to));
                        let counter = counter_of(&out[..n]);
                        let first = *first_counter[side].get_or_insert(counter);
                        sealed.push(Sealed {
                            from: side,
                            counter: counter - first,
                            datagram: out[..n].to_vec(),
                            plaintext: r.data.to_vec(),
                        });
                    }
                    Err(_) => assert!(r.data.len() > MAX_PLAINTEXT),
                }
            }
            op => {
                let Some((&pick, rest)) = r.data.split_first() else {
                    continue;
                };
                let Some(s) = sealed.get(pick as usize % sealed.len().max(1)) else {
                    continue;
                };
                let to = 1 - s.from;
                let mut d = s.datagram.clone();
                let mut genuine = true;
                if op == 3 {
                    let at = rest.first().map_or(0, |&b| b as usize) % d.len();
                    let mask = rest.get(1).copied().filter(|&m| m != 0).unwrap_or(1);
                    d[at] ^= mask;
                    genuine = (4..8).contains(&at);
                } else if op == 4 {
                    d.truncate(rest.first().map_or(0, |&b| b as usize) % d.len());
                    genuine = false;
                }
                let result = pair[to].open(&d, &mut plain).map(|p| p.to_vec());
                let fresh = !opened[to].contains(&s.counter)
                    && highest[to].is_none_or(|h| s.counter + 1024 > h);
                match result {
                    Ok(p) => {
                        assert!(genuine, "a changed datagram opened");
                        assert!(fresh, "counter {} opened twice", s.counter);
                        assert_eq!(p, s.plaintext);
                        opened[to].insert(s.counter);
                        highest[to] = Some(highest[to].map_or(s.counter, |h| h.max(s.counter)));
                        dirty = true;
                    }
                    Err(e) => {
                        if genuine && fresh {
                            panic!("a fresh genuine datagram failed: {e}");
                        }
                        if genuine {
                            assert_eq!(e, ChannelError::Replayed);
                        }
                    }
                }
            }
        }
    }
    dirty
}

fuzz_target!(|data: &[u8]| {
    PAIR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let pair = cell.get_or_insert_with(establish);
        if run(pair, data) {
            resync(pair);
        }
    });
});
