//! Path probes: the pings and pongs nodes send each other to find (hole-punch) a direct path.
//!
//! A probe is sealed with a key both nodes derive from their static X25519 keys, so only a
//! peer can make one, and a receiver can drop probes from unknown senders after a table lookup
//! (the sender's public key travels in the clear) before any cryptography. Pings and pongs have
//! the same size, so answering a ping never amplifies.
//!
//! Datagram (96 bytes): header | sender public key (32) | nonce (12) | sealed body (32 + 16)
//! Body: kind (1: ping, 2: pong) | transaction (12) | then, in a pong, the observed address
//! (family, 16 ip, 2 port) and, in a ping, the sender's counter (u64, little-endian): a
//! receiver answers a ping only once (see [`crate::replay::StampWindow`]). Pings of nodes
//! older than counters carry 0 there.

use crate::header::{write_header, ControlHeader, ControlKind, HEADER_LEN, PROTOCOL_VERSION};
use crate::key::PublicKey;
use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const BODY_LEN: usize = 1 + 12 + 19;
const TAG_LEN: usize = 16;
const KEY_AT: usize = HEADER_LEN;
const NONCE_AT: usize = KEY_AT + 32;
const BODY_AT: usize = NONCE_AT + 12;
/// Length of every probe datagram.
pub const PROBE_LEN: usize = BODY_AT + BODY_LEN + TAG_LEN;

pub type Transaction = [u8; 12];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Ping {
        tx: Transaction,
        /// Grows from ping to ping of one sender (0: a sender older than counters).
        counter: u64,
    },
    /// The answer to ping `tx`, telling the pinger where its ping came from.
    Pong {
        tx: Transaction,
        observed: SocketAddr,
    },
}

/// The sender of a probe datagram, if it is one (a cheap check before any cryptography).
pub fn sender(datagram: &[u8]) -> Option<PublicKey> {
    let h = ControlHeader::parse(datagram)?;
    if h.version != PROTOCOL_VERSION || h.kind != Some(ControlKind::Probe) {
        return None;
    }
    if datagram.len() != PROBE_LEN {
        return None;
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&datagram[KEY_AT..NONCE_AT]);
    Some(PublicKey(k))
}

/// The symmetric key two nodes share for probes.
#[derive(Clone)]
pub struct ProbeKey {
    cipher: ChaCha20Poly1305,
}

impl ProbeKey {
    /// Derives the key from our secret and the peer's public key (both sides get the same).
    pub fn derive(
        my_secret: &x25519_dalek::StaticSecret,
        me: &PublicKey,
        peer: &PublicKey,
    ) -> ProbeKey {
        let key = pair_key(b"lanmesh probe key v1", my_secret, me, peer);
        ProbeKey {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// Seals `probe` from `me` with `nonce` (never reuse one; random is fine).
    pub fn seal(&self, me: &PublicKey, probe: &Probe, nonce: [u8; 12]) -> [u8; PROBE_LEN] {
        let mut out = [0u8; PROBE_LEN];
        write_header(ControlKind::Probe, &mut out);
        out[KEY_AT..NONCE_AT].copy_from_slice(me.as_bytes());
        out[NONCE_AT..BODY_AT].copy_from_slice(&nonce);
        let body = &mut out[BODY_AT..BODY_AT + BODY_LEN];
        match probe {
            Probe::Ping { tx, counter } => {
                body[0] = 1;
                body[1..13].copy_from_slice(tx);
                body[13..21].copy_from_slice(&counter.to_le_bytes());
            }
            Probe::Pong { tx, observed } => {
                body[0] = 2;
                body[1..13].copy_from_slice(tx);
                write_addr(*observed, &mut body[13..32]);
            }
        }
        let (head, rest) = out.split_at_mut(BODY_AT);
        let (body, tag) = rest.split_at_mut(BODY_LEN);
        let t = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), head, body)
            .expect("fixed-size body always seals");
        tag.copy_from_slice(&t);
        out
    }

    /// Opens a probe datagram (whose [`sender`] mapped to this key).
    pub fn open(&self, datagram: &[u8]) -> Option<Probe> {
        if datagram.len() != PROBE_LEN {
            return None;
        }
        let mut body = [0u8; BODY_LEN];
        body.copy_from_slice(&datagram[BODY_AT..BODY_AT + BODY_LEN]);
        let nonce = Nonce::from_slice(&datagram[NONCE_AT..BODY_AT]);
        let tag = Tag::from_slice(&datagram[BODY_AT + BODY_LEN..]);
        self.cipher
            .decrypt_in_place_detached(nonce, &datagram[..BODY_AT], &mut body, tag)
            .ok()?;
        let mut tx = [0u8; 12];
        tx.copy_from_slice(&body[1..13]);
        match body[0] {
            1 => Some(Probe::Ping {
                tx,
                counter: u64::from_le_bytes(body[13..21].try_into().ok()?),
            }),
            2 => Some(Probe::Pong {
                tx,
                observed: read_addr(&body[13..32])?,
            }),
            _ => None,
        }
    }
}

/// A 32-byte key two parties derive from their static X25519 keys (each side passes its own
/// secret and both public keys; both get the same key), bound to `label`.
pub fn pair_key(
    label: &[u8],
    my_secret: &x25519_dalek::StaticSecret,
    me: &PublicKey,
    peer: &PublicKey,
) -> [u8; 32] {
    let shared = my_secret.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
    let (lo, hi) = if me < peer { (me, peer) } else { (peer, me) };
    let mut h = Blake2s256::new();
    h.update(label);
    h.update(shared.as_bytes());
    h.update(lo.as_bytes());
    h.update(hi.as_bytes());
    h.finalize().into()
}

fn write_addr(addr: SocketAddr, out: &mut [u8]) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&ip.octets());
        }
    }
    out[17..19].copy_from_slice(&addr.port().to_be_bytes());
}

fn read_addr(b: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([b[17], b[18]]);
    let ip = match b[0] {
        4 => IpAddr::V4(Ipv4Addr::new(b[1], b[2], b[3], b[4])),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[1..17]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x25519_dalek::StaticSecret;

    fn pair(seed: u8) -> (StaticSecret, PublicKey) {
        let s = StaticSecret::from([seed; 32]);
        let p = x25519_dalek::PublicKey::from(&s).into();
        (s, p)
    }

    #[test]
    fn ping_and_pong_round_trip_between_two_nodes() {
        let (sa, pa) = pair(1);
        let (sb, pb) = pair(2);
        let ka = ProbeKey::derive(&sa, &pa, &pb);
        let kb = ProbeKey::derive(&sb, &pb, &pa);
        let ping = Probe::Ping {
            tx: [7; 12],
            counter: 5,
        };
        let d = ka.seal(&pa, &ping, [1; 12]);
        assert_eq!(d.len(), PROBE_LEN);
        assert_eq!(sender(&d), Some(pa));
        assert_eq!(kb.open(&d), Some(ping));
        let pong = Probe::Pong {
            tx: [7; 12],
            observed: "198.51.100.4:40000".parse().unwrap(),
        };
        let d2 = kb.seal(&pb, &pong, [2; 12]);
        assert_eq!(d2.len(), d.len(), "pongs are exactly as large as pings");
        assert_eq!(ka.open(&d2), Some(pong));
    }

    #[test]
    fn forgeries_and_strangers_fail() {
        let (sa, pa) = pair(1);
        let (sb, pb) = pair(2);
        let (sc, pc) = pair(3);
        let kb = ProbeKey::derive(&sb, &pb, &pa);
        let kc = ProbeKey::derive(&sc, &pc, &pb);
        // c claims to be a.
        let forged = kc.seal(
            &pa,
            &Probe::Ping {
                tx: [0; 12],
                counter: 1,
            },
            [0; 12],
        );
        assert_eq!(kb.open(&forged), None);
        let ka = ProbeKey::derive(&sa, &pa, &pb);
        let good = ka.seal(
            &pa,
            &Probe::Ping {
                tx: [0; 12],
                counter: 1,
            },
            [0; 12],
        );
        for i in 0..PROBE_LEN {
            let mut bad = good;
            bad[i] ^= 0x10;
            assert_eq!(kb.open(&bad), None, "byte {i}");
        }
        assert_eq!(sender(&good[..PROBE_LEN - 1]), None);
        assert_eq!(kb.open(&good[..10]), None);
    }
}
