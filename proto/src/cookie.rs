//! Denial-of-service protection for the coordinator's handshake, after WireGuard's (section
//! 5.4.4 of its paper).
//!
//! Every Hello carries two MACs at its end:
//! - **mac1**, keyed with the coordinator's public key. Anyone who knows that key can make it,
//!   but junk cannot, and it is checked before any Diffie-Hellman: a flood of junk Hellos costs
//!   the coordinator one BLAKE2s each.
//! - **mac2**, keyed with a *cookie*: a MAC of the sender's source address under a secret the
//!   coordinator rotates every two minutes. Under load the coordinator only processes Hellos
//!   with a valid mac2; the others get a cookie reply — the cookie for their source address,
//!   encrypted with the Hello's mac1 as associated data, so only someone who sent that Hello
//!   and receives at that address can use it. A cookie reply (64 bytes) is much smaller than a
//!   Hello, so it amplifies nothing.
//!
//! Hello with MACs: `header | session u32 | Noise IK message 1 | mac1 16 | mac2 16`
//! Cookie reply:    `header | node session u32 | nonce 24 | sealed cookie 16+16`

use crate::header::{write_header, ControlHeader, ControlKind, HEADER_LEN, PROTOCOL_VERSION};
use crate::key::PublicKey;
use blake2::digest::consts::U16;
use blake2::digest::Mac;
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use std::net::{IpAddr, SocketAddr};
use subtle::ConstantTimeEq;

pub const MAC_LEN: usize = 16;
/// The two MACs at the end of a Hello.
pub const MACS_LEN: usize = 2 * MAC_LEN;
pub const COOKIE_LEN: usize = 16;
const NONCE_LEN: usize = 24;
pub const COOKIE_REPLY_LEN: usize = HEADER_LEN + 4 + NONCE_LEN + COOKIE_LEN + 16;
/// How often the coordinator changes its cookie secret (a cookie stays valid until the change
/// after next).
pub const COOKIE_ROTATE_MS: u64 = 120_000;
/// How long a node uses a cookie it was given (less than the rotation, to be safe).
pub const COOKIE_USE_MS: u64 = 110_000;

pub type Mac16 = [u8; MAC_LEN];
pub type Cookie = [u8; COOKIE_LEN];

fn keyed_hash(label: &[u8], key: &PublicKey) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(label);
    h.update(key.as_bytes());
    h.finalize().into()
}

fn mac(key: &[u8], data: &[u8]) -> Mac16 {
    let mut m = <Blake2sMac<U16> as Mac>::new_from_slice(key).expect("keys of 16..32 bytes");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The key for mac1 of Hellos to one coordinator.
#[derive(Clone)]
pub struct Mac1Key([u8; 32]);

impl Mac1Key {
    pub fn for_coordinator(coordinator: &PublicKey) -> Mac1Key {
        Mac1Key(keyed_hash(b"lanmesh mac1 v1", coordinator))
    }

    /// Writes mac1 over everything before it and zeroes mac2. `datagram` ends with the
    /// [`MACS_LEN`] bytes reserved for the MACs.
    pub fn write(&self, datagram: &mut [u8]) -> Option<Mac16> {
        let n = datagram.len().checked_sub(MACS_LEN)?;
        let m = mac(&self.0, &datagram[..n]);
        datagram[n..n + MAC_LEN].copy_from_slice(&m);
        datagram[n + MAC_LEN..].fill(0);
        Some(m)
    }

    /// Whether the datagram's mac1 is right (constant time).
    pub fn verify(&self, datagram: &[u8]) -> bool {
        let Some(n) = datagram.len().checked_sub(MACS_LEN) else {
            return false;
        };
        let m = mac(&self.0, &datagram[..n]);
        m.ct_eq(&datagram[n..n + MAC_LEN]).into()
    }
}

/// The mac1 of a datagram with MACs (what a cookie reply is bound to).
pub fn mac1_of(datagram: &[u8]) -> Option<Mac16> {
    let n = datagram.len().checked_sub(MACS_LEN)?;
    datagram[n..n + MAC_LEN].try_into().ok()
}

/// Writes mac2 with `cookie` over everything before it (mac1 included).
pub fn write_mac2(cookie: &Cookie, datagram: &mut [u8]) {
    let Some(n) = datagram.len().checked_sub(MAC_LEN) else {
        return;
    };
    let m = mac(cookie, &datagram[..n]);
    datagram[n..].copy_from_slice(&m);
}

fn mac2_ok(cookie: &Cookie, datagram: &[u8]) -> bool {
    let Some(n) = datagram.len().checked_sub(MAC_LEN) else {
        return false;
    };
    let m = mac(cookie, &datagram[..n]);
    m.ct_eq(&datagram[n..]).into()
}

fn address_bytes(src: SocketAddr, out: &mut [u8; 18]) -> &[u8] {
    let n = match src.ip() {
        IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            out[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    out[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
    &out[..n + 2]
}

/// The coordinator's side: makes cookies for source addresses, checks mac2 and seals cookie
/// replies. The secret comes from the caller (randomness is an input).
pub struct CookieMaker {
    current: [u8; 32],
    previous: [u8; 32],
    rotated_at_ms: u64,
    seal: XChaCha20Poly1305,
}

impl CookieMaker {
    pub fn new(coordinator: &PublicKey, secret: [u8; 32], now_ms: u64) -> CookieMaker {
        CookieMaker {
            current: secret,
            previous: secret,
            rotated_at_ms: now_ms,
            seal: XChaCha20Poly1305::new(&keyed_hash(b"lanmesh cookie v1", coordinator).into()),
        }
    }

    /// Whether [`CookieMaker::rotate`] is due.
    pub fn rotation_due(&self, now_ms: u64) -> bool {
        now_ms >= self.rotated_at_ms + COOKIE_ROTATE_MS || now_ms < self.rotated_at_ms
    }

    /// Starts using a new secret (cookies of the previous one stay valid until the next).
    pub fn rotate(&mut self, fresh: [u8; 32], now_ms: u64) {
        self.previous = self.current;
        self.current = fresh;
        self.rotated_at_ms = now_ms;
    }

    fn cookie(secret: &[u8; 32], src: SocketAddr) -> Cookie {
        let mut buf = [0u8; 18];
        mac(secret, address_bytes(src, &mut buf))
    }

    /// Whether the datagram's mac2 was made with the cookie of `src` (current or previous).
    /// A zero mac2 (a sender without a cookie) costs nothing to refuse.
    pub fn verify_mac2(&self, src: SocketAddr, datagram: &[u8]) -> bool {
        let Some(n) = datagram.len().checked_sub(MAC_LEN) else {
            return false;
        };
        if datagram[n..].iter().all(|b| *b == 0) {
            return false;
        }
        mac2_ok(&Self::cookie(&self.current, src), datagram)
            || mac2_ok(&Self::cookie(&self.previous, src), datagram)
    }

    /// The cookie reply to a Hello (with MACs) from `src`; `session` is the node's session
    /// index from the Hello.
    pub fn reply(
        &self,
        src: SocketAddr,
        session: u32,
        mac1: &Mac16,
        nonce: [u8; NONCE_LEN],
    ) -> [u8; COOKIE_REPLY_LEN] {
        let mut out = [0u8; COOKIE_REPLY_LEN];
        write_header(ControlKind::CookieReply, &mut out);
        out[4..8].copy_from_slice(&session.to_le_bytes());
        out[8..32].copy_from_slice(&nonce);
        let mut body = Self::cookie(&self.current, src);
        let tag = self
            .seal
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), mac1, &mut body)
            .expect("a 16-byte cookie always seals");
        out[32..48].copy_from_slice(&body);
        out[48..64].copy_from_slice(&tag);
        out
    }
}

/// The node's side: opens cookie replies from one coordinator.
pub struct CookieOpener {
    seal: XChaCha20Poly1305,
}

impl CookieOpener {
    pub fn for_coordinator(coordinator: &PublicKey) -> CookieOpener {
        CookieOpener {
            seal: XChaCha20Poly1305::new(&keyed_hash(b"lanmesh cookie v1", coordinator).into()),
        }
    }

    /// The cookie in a reply to our Hello with session `session` and mac1 `mac1`.
    pub fn open(&self, reply: &[u8], session: u32, mac1: &Mac16) -> Option<Cookie> {
        let h = ControlHeader::parse(reply)?;
        if reply.len() != COOKIE_REPLY_LEN
            || h.version != PROTOCOL_VERSION
            || h.kind != Some(ControlKind::CookieReply)
            || reply[4..8] != session.to_le_bytes()
        {
            return None;
        }
        let mut body: Cookie = reply[32..48].try_into().ok()?;
        self.seal
            .decrypt_in_place_detached(
                XNonce::from_slice(&reply[8..32]),
                mac1,
                &mut body,
                Tag::from_slice(&reply[48..64]),
            )
            .ok()?;
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Vec<u8> {
        let mut d = vec![7u8; 200];
        d[..4].copy_from_slice(b"LM\x01\x0c");
        d
    }

    #[test]
    fn mac1_needs_the_coordinator_key() {
        let k = Mac1Key::for_coordinator(&PublicKey([1; 32]));
        let mut d = hello();
        let m = k.write(&mut d).unwrap();
        assert_eq!(mac1_of(&d), Some(m));
        assert!(k.verify(&d));
        assert!(!Mac1Key::for_coordinator(&PublicKey([2; 32])).verify(&d));
        for i in 0..d.len() - MAC_LEN {
            let mut bad = d.clone();
            bad[i] ^= 1;
            assert!(!k.verify(&bad), "byte {i}");
        }
        // mac2 is not covered by mac1.
        let mut with_mac2 = d.clone();
        write_mac2(&[9; 16], &mut with_mac2);
        assert!(k.verify(&with_mac2));
        assert!(!k.verify(&[0u8; 10]));
    }

    #[test]
    fn cookie_round_trip_binds_address_and_hello() {
        let coord = PublicKey([3; 32]);
        let mut maker = CookieMaker::new(&coord, [5; 32], 0);
        let opener = CookieOpener::for_coordinator(&coord);
        let key = Mac1Key::for_coordinator(&coord);
        let src: SocketAddr = "198.51.100.7:41641".parse().unwrap();
        let mut d = hello();
        let mac1 = key.write(&mut d).unwrap();
        assert!(!maker.verify_mac2(src, &d), "no cookie yet");
        let reply = maker.reply(src, 42, &mac1, [1; 24]);
        assert!(reply.len() < d.len());
        assert_eq!(opener.open(&reply, 41, &mac1), None, "other session");
        assert_eq!(opener.open(&reply, 42, &[0; 16]), None, "other hello");
        let cookie = opener.open(&reply, 42, &mac1).unwrap();
        write_mac2(&cookie, &mut d);
        assert!(maker.verify_mac2(src, &d));
        assert!(key.verify(&d));
        // Another source address has another cookie.
        assert!(!maker.verify_mac2("198.51.100.7:41642".parse().unwrap(), &d));
        // One rotation keeps it valid, two do not.
        assert!(!maker.rotation_due(COOKIE_ROTATE_MS - 1));
        assert!(maker.rotation_due(COOKIE_ROTATE_MS));
        maker.rotate([6; 32], COOKIE_ROTATE_MS);
        assert!(maker.verify_mac2(src, &d));
        maker.rotate([7; 32], 2 * COOKIE_ROTATE_MS);
        assert!(!maker.verify_mac2(src, &d));
    }

    #[test]
    fn junk_never_panics() {
        let coord = PublicKey([3; 32]);
        let maker = CookieMaker::new(&coord, [5; 32], 0);
        let opener = CookieOpener::for_coordinator(&coord);
        let key = Mac1Key::for_coordinator(&coord);
        let src: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        for len in 0..80 {
            let d = vec![0x4cu8; len];
            let _ = key.verify(&d);
            let _ = maker.verify_mac2(src, &d);
            let _ = opener.open(&d, 0, &[0; 16]);
            let _ = mac1_of(&d);
        }
    }
}
