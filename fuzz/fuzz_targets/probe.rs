//! `probe`: path probes between nodes. Keys are the lab's fixed node keys, so captured probes
//! open. Asserts `sender` matches the documented layout, that whatever opens re-seals to the
//! very same bytes (pings carry a counter, pongs an address: nothing else in the body is
//! accepted), and that a probe built from the input round-trips while any flipped bit makes
//! it fail.
#![no_main]
use lanmesh_fuzz::{public, seed, static_secret};
use lanmesh_proto::header::{ControlHeader, ControlKind, PROTOCOL_VERSION};
use lanmesh_proto::probe::{sender, Probe, ProbeKey, PROBE_LEN};
use lanmesh_proto::PublicKey;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

const NODES: [u8; 4] = [seed::NODE_A, seed::NODE_B, seed::NODE_C, seed::STRANGER];

/// (receiver, sender) → the receiver's key for probes from that sender.
fn keys() -> &'static Vec<(PublicKey, PublicKey, ProbeKey)> {
    static KEYS: OnceLock<Vec<(PublicKey, PublicKey, ProbeKey)>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut v = Vec::new();
        for &r in &NODES {
            for &s in &NODES {
                if r != s {
                    let k = ProbeKey::derive(&static_secret(r), &public(r), &public(s));
                    v.push((public(r), public(s), k));
                }
            }
        }
        v
    })
}

fn key(receiver: PublicKey, from: PublicKey) -> &'static ProbeKey {
    &keys()
        .iter()
        .find(|(r, s, _)| *r == receiver && *s == from)
        .unwrap()
        .2
}

fuzz_target!(|data: &[u8]| {
    let claimed = sender(data);
    let is_probe = ControlHeader::parse(data)
        .is_some_and(|h| h.version == PROTOCOL_VERSION && h.kind == Some(ControlKind::Probe));
    assert_eq!(claimed.is_some(), is_probe && data.len() == PROBE_LEN);
    if let Some(from) = claimed {
        assert_eq!(from.as_bytes()[..], data[4..36]);
        for (receiver, s, k) in keys() {
            if *s != from {
                continue;
            }
            if let Some(probe) = k.open(data) {
                let nonce: [u8; 12] = data[36..48].try_into().unwrap();
                // The receiver's key and the sender's are the same key.
                let resealed = key(from, *receiver).seal(&from, &probe, nonce);
                assert_eq!(
                    resealed[..],
                    data[..],
                    "an opened probe must re-seal identically"
                );
            }
        }
    }

    // A probe made from the input: round trip, and no single flipped bit gets through.
    if data.len() < 40 {
        return;
    }
    let tx: [u8; 12] = data[1..13].try_into().unwrap();
    let nonce: [u8; 12] = data[13..25].try_into().unwrap();
    let probe = if data[0] & 1 == 0 {
        let counter = u64::from_le_bytes(data[25..33].try_into().unwrap());
        Probe::Ping { tx, counter }
    } else {
        let ip: IpAddr = if data[0] & 2 == 0 {
            IpAddr::from(<[u8; 4]>::try_from(&data[25..29]).unwrap())
        } else {
            IpAddr::from(<[u8; 16]>::try_from(&data[22..38]).unwrap())
        };
        Probe::Pong {
            tx,
            observed: SocketAddr::new(ip, u16::from_le_bytes([data[38], data[39]])),
        }
    };
    let (a, b) = (public(seed::NODE_A), public(seed::NODE_B));
    let sealed = key(a, b).seal(&a, &probe, nonce);
    assert_eq!(sealed.len(), PROBE_LEN);
    assert_eq!(sender(&sealed), Some(a));
    assert_eq!(key(b, a).open(&sealed), Some(probe));
    let mut bad = sealed;
    let at = data[0] as usize % PROBE_LEN;
    bad[at] ^= 1 << (data[1] % 8);
    assert_eq!(
        key(b, a).open(&bad),
        None,
        "a flipped bit at byte {at} went unnoticed"
    );
});
