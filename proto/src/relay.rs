//! Relay frames: how nodes reach each other through a relay when no direct path works.
//!
//! A node first binds to the relay, proving it holds a member's key: the bind is sealed with a
//! key both derive from their static keys (the relay looks the sender's key up among the
//! members the coordinator listed before any cryptography, so non-members cost one table
//! lookup). The relay answers with a session index and the timestamp of the bind that created
//! the session (a refreshing bind keeps it); both sides derive the session's frame key from
//! that bind. Every frame a node sends carries that index, a counter and a MAC over the
//! whole frame, so a relay forwards nothing for a spoofed source, a replay or a non-member.
//! The relay only ever sees WireGuard ciphertext.
//!
//! Frames (all little-endian; header = `LM`, version, kind):
//! - Bind    (72 B): header | node key 32 | nonce 12 | sealed(timestamp u64) 8+16
//! - Bound   (52 B): header | nonce 12 | sealed(timestamp u64, session u32, created u64) 20+16
//! - Send:           header | session u32 | counter u64 | to key 32 | payload | MAC 16
//! - Deliver:        header | from key 32 | payload
//!
//! A Bound answer is smaller than its Bind, and a Deliver smaller than its Send.

use crate::header::{write_header, ControlHeader, ControlKind, HEADER_LEN, PROTOCOL_VERSION};
use crate::key::PublicKey;
use crate::probe::pair_key;
use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};

pub const BIND_LEN: usize = HEADER_LEN + 32 + 12 + 8 + 16;
pub const BOUND_LEN: usize = HEADER_LEN + 12 + 20 + 16;
/// Bytes in front of a Send frame's payload.
pub const SEND_HEADER: usize = HEADER_LEN + 4 + 8 + 32;
const MAC_LEN: usize = 16;
/// Bytes a Send frame adds to its payload.
pub const SEND_OVERHEAD: usize = SEND_HEADER + MAC_LEN;
/// Bytes in front of a Deliver frame's payload.
pub const DELIVER_HEADER: usize = HEADER_LEN + 32;
/// The largest payload a relay forwards (a WireGuard datagram for a 1500-byte packet).
pub const MAX_PAYLOAD: usize = 1500 + 32;

fn kind_of(frame: &[u8]) -> Option<ControlKind> {
    let h = ControlHeader::parse(frame)?;
    (h.version == PROTOCOL_VERSION).then_some(h.kind?)
}

/// What kind of relay frame this is, if it is one.
pub fn frame_kind(frame: &[u8]) -> Option<ControlKind> {
    match kind_of(frame)? {
        k @ (ControlKind::RelayBind
        | ControlKind::RelayBound
        | ControlKind::RelaySend
        | ControlKind::RelayDeliver) => Some(k),
        _ => None,
    }
}

/// The key a node and a relay share for binds.
#[derive(Clone)]
pub struct BindKey {
    raw: [u8; 32],
    cipher: ChaCha20Poly1305,
}

impl BindKey {
    pub fn derive(
        my_secret: &x25519_dalek::StaticSecret,
        me: &PublicKey,
        other: &PublicKey,
    ) -> BindKey {
        let raw = pair_key(b"lanmesh relay bind v1", my_secret, me, other);
        BindKey {
            raw,
            cipher: ChaCha20Poly1305::new(Key::from_slice(&raw)),
        }
    }

    /// The key for the frames of the session a bind with `timestamp` opened.
    pub fn session_key(&self, timestamp: u64) -> FrameKey {
        let raw = self.session_secret(timestamp);
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &raw)
            .expect("a 32-byte key");
        FrameKey {
            cipher: ring::aead::LessSafeKey::new(key),
        }
    }

    fn session_secret(&self, timestamp: u64) -> [u8; 32] {
        let mut h = Blake2s256::new();
        h.update(b"lanmesh relay frames v1");
        h.update(self.raw);
        h.update(timestamp.to_le_bytes());
        h.finalize().into()
    }

    fn seal(&self, nonce: &[u8; 12], ad: &[u8], body: &mut [u8]) -> [u8; 16] {
        self.cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), ad, body)
            .expect("small bodies always seal")
            .into()
    }

    fn open(&self, nonce: &[u8], ad: &[u8], body: &mut [u8], tag: &[u8]) -> Option<()> {
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), ad, body, Tag::from_slice(tag))
            .ok()
    }

    /// A Bind frame from `me` with `timestamp` (which must grow from bind to bind).
    pub fn bind(&self, me: &PublicKey, timestamp: u64, nonce: [u8; 12]) -> [u8; BIND_LEN] {
        let mut out = [0u8; BIND_LEN];
        write_header(ControlKind::RelayBind, &mut out);
        out[4..36].copy_from_slice(me.as_bytes());
        out[36..48].copy_from_slice(&nonce);
        out[48..56].copy_from_slice(&timestamp.to_le_bytes());
        let (ad, rest) = out.split_at_mut(36);
        let tag = self.seal(&nonce, ad, &mut rest[12..20]);
        out[56..72].copy_from_slice(&tag);
        out
    }

    /// The timestamp of a Bind frame sealed with this key.
    pub fn open_bind(&self, frame: &[u8]) -> Option<u64> {
        if frame.len() != BIND_LEN || kind_of(frame)? != ControlKind::RelayBind {
            return None;
        }
        let mut body = [0u8; 8];
        body.copy_from_slice(&frame[48..56]);
        self.open(&frame[36..48], &frame[..36], &mut body, &frame[56..72])?;
        Some(u64::from_le_bytes(body))
    }

    /// The relay's answer to a bind.
    pub fn bound(&self, answer: &Bound, nonce: [u8; 12]) -> [u8; BOUND_LEN] {
        let mut out = [0u8; BOUND_LEN];
        write_header(ControlKind::RelayBound, &mut out);
        out[4..16].copy_from_slice(&nonce);
        out[16..24].copy_from_slice(&answer.timestamp.to_le_bytes());
        out[24..28].copy_from_slice(&answer.session.to_le_bytes());
        out[28..36].copy_from_slice(&answer.created.to_le_bytes());
        let (ad, body) = out.split_at_mut(HEADER_LEN);
        let tag = self.seal(&nonce, ad, &mut body[12..32]);
        out[36..52].copy_from_slice(&tag);
        out
    }

    /// A Bound frame sealed with this key.
    pub fn open_bound(&self, frame: &[u8]) -> Option<Bound> {
        if frame.len() != BOUND_LEN || kind_of(frame)? != ControlKind::RelayBound {
            return None;
        }
        let mut body = [0u8; 20];
        body.copy_from_slice(&frame[16..36]);
        self.open(
            &frame[4..16],
            &frame[..HEADER_LEN],
            &mut body,
            &frame[36..52],
        )?;
        Some(Bound {
            timestamp: u64::from_le_bytes(body[..8].try_into().expect("8 bytes")),
            session: u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")),
            created: u64::from_le_bytes(body[12..].try_into().expect("8 bytes")),
        })
    }
}

/// A relay's answer to a bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The timestamp of the bind being answered.
    pub timestamp: u64,
    /// The session index to put on Send frames.
    pub session: u32,
    /// The timestamp of the bind that created the session: its frame key comes from that.
    pub created: u64,
}

/// The sender key of a Bind frame (a cheap look, before any cryptography).
pub fn bind_sender(frame: &[u8]) -> Option<PublicKey> {
    if frame.len() != BIND_LEN || kind_of(frame)? != ControlKind::RelayBind {
        return None;
    }
    Some(PublicKey(frame[4..36].try_into().expect("32 bytes")))
}

/// The key that authenticates one bound session's Send frames: ChaCha20-Poly1305 over the
/// frame as associated data (ring's implementation: this runs for every relayed packet).
#[derive(Clone)]
pub struct FrameKey {
    cipher: ring::aead::LessSafeKey,
}

fn counter_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

impl FrameKey {
    /// Completes a Send frame in `buf`, whose payload is already at
    /// `buf[SEND_HEADER..SEND_HEADER + payload_len]`. Returns the frame length.
    pub fn seal_send(
        &self,
        session: u32,
        counter: u64,
        to: &PublicKey,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Option<usize> {
        let end = SEND_HEADER + payload_len;
        if payload_len > MAX_PAYLOAD || buf.len() < end + MAC_LEN {
            return None;
        }
        write_header(ControlKind::RelaySend, buf);
        buf[4..8].copy_from_slice(&session.to_le_bytes());
        buf[8..16].copy_from_slice(&counter.to_le_bytes());
        buf[16..48].copy_from_slice(to.as_bytes());
        let nonce = ring::aead::Nonce::assume_unique_for_key(counter_nonce(counter));
        let tag = self
            .cipher
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(&buf[..end]), &mut [])
            .ok()?;
        buf[end..end + MAC_LEN].copy_from_slice(tag.as_ref());
        Some(end + MAC_LEN)
    }

    /// Whether a Send frame's MAC is right (its counter still needs a replay check).
    pub fn verify_send(&self, frame: &[u8]) -> bool {
        let Some(send) = SendFrame::parse(frame) else {
            return false;
        };
        let end = frame.len() - MAC_LEN;
        let nonce = ring::aead::Nonce::assume_unique_for_key(counter_nonce(send.counter));
        // An empty ciphertext and its tag: opening it checks the tag (in constant time).
        let mut tag: [u8; MAC_LEN] = frame[end..].try_into().expect("MAC_LEN bytes");
        self.cipher
            .open_in_place(nonce, ring::aead::Aad::from(&frame[..end]), &mut tag)
            .is_ok()
    }
}

/// The fields of a Send frame (not yet authenticated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendFrame {
    pub session: u32,
    pub counter: u64,
    pub to: PublicKey,
    pub payload_len: usize,
}

impl SendFrame {
    pub fn parse(frame: &[u8]) -> Option<SendFrame> {
        if frame.len() < SEND_OVERHEAD
            || frame.len() > SEND_OVERHEAD + MAX_PAYLOAD
            || kind_of(frame)? != ControlKind::RelaySend
        {
            return None;
        }
        Some(SendFrame {
            session: u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes")),
            counter: u64::from_le_bytes(frame[8..16].try_into().expect("8 bytes")),
            to: PublicKey(frame[16..48].try_into().expect("32 bytes")),
            payload_len: frame.len() - SEND_OVERHEAD,
        })
    }
}

/// Turns the verified Send frame in `buf[..len]` into a Deliver frame from `from`, in place.
/// Returns the Deliver frame's range in `buf`.
pub fn send_to_deliver(
    buf: &mut [u8],
    len: usize,
    from: &PublicKey,
) -> Option<std::ops::Range<usize>> {
    if len < SEND_OVERHEAD || len > buf.len() {
        return None;
    }
    let start = SEND_HEADER - DELIVER_HEADER;
    write_header(ControlKind::RelayDeliver, &mut buf[start..]);
    buf[start + HEADER_LEN..SEND_HEADER].copy_from_slice(from.as_bytes());
    Some(start..len - MAC_LEN)
}

/// The sender and payload of a Deliver frame.
pub fn parse_deliver(frame: &[u8]) -> Option<(PublicKey, &[u8])> {
    if frame.len() < DELIVER_HEADER
        || frame.len() > DELIVER_HEADER + MAX_PAYLOAD
        || kind_of(frame)? != ControlKind::RelayDeliver
    {
        return None;
    }
    let from = PublicKey(frame[4..36].try_into().expect("32 bytes"));
    Some((from, &frame[DELIVER_HEADER..]))
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

    /// Send frames sealed before (RustCrypto's ChaCha20-Poly1305) and after (ring's) the
    /// switch are the same bytes: older nodes and relays keep working with newer ones.
    #[test]
    fn frame_macs_match_the_rustcrypto_construction() {
        let (node_s, node_p) = pair(1);
        let (_, relay_p) = pair(2);
        let bind_key = BindKey::derive(&node_s, &node_p, &relay_p);
        let key = bind_key.session_key(99);
        let old = ChaCha20Poly1305::new(Key::from_slice(&bind_key.session_secret(99)));
        let mut buf = vec![0u8; SEND_HEADER + 100 + MAC_LEN];
        buf[SEND_HEADER..SEND_HEADER + 100].fill(7);
        let len = key.seal_send(4, 1234, &node_p, &mut buf, 100).unwrap();
        let end = len - MAC_LEN;
        let old_tag = old
            .encrypt_in_place_detached(
                Nonce::from_slice(&counter_nonce(1234)),
                &buf[..end],
                &mut [],
            )
            .unwrap();
        assert_eq!(&buf[end..len], old_tag.as_slice());
        assert!(key.verify_send(&buf[..len]));
        buf[SEND_HEADER] ^= 1;
        assert!(!key.verify_send(&buf[..len]), "a changed byte fails");
    }

    #[test]
    fn bind_bound_and_a_frame_through_the_relay() {
        let (node_s, node_p) = pair(1);
        let (relay_s, relay_p) = pair(2);
        let (_, peer_p) = pair(3);
        let node_key = BindKey::derive(&node_s, &node_p, &relay_p);
        let relay_key = BindKey::derive(&relay_s, &relay_p, &node_p);

        let bind = node_key.bind(&node_p, 77, [1; 12]);
        assert_eq!(frame_kind(&bind), Some(ControlKind::RelayBind));
        assert_eq!(bind_sender(&bind), Some(node_p));
        assert_eq!(relay_key.open_bind(&bind), Some(77));
        let answer = Bound {
            timestamp: 77,
            session: 5,
            created: 77,
        };
        let bound = relay_key.bound(&answer, [2; 12]);
        assert!(bound.len() < bind.len());
        assert_eq!(node_key.open_bound(&bound), Some(answer));

        let node_frames = node_key.session_key(77);
        let relay_frames = relay_key.session_key(77);
        let mut buf = vec![0u8; 2048];
        let payload = b"wireguard ciphertext";
        buf[SEND_HEADER..SEND_HEADER + payload.len()].copy_from_slice(payload);
        let n = node_frames
            .seal_send(5, 9, &peer_p, &mut buf, payload.len())
            .unwrap();
        let send = SendFrame::parse(&buf[..n]).unwrap();
        assert_eq!((send.session, send.counter, send.to), (5, 9, peer_p));
        assert!(relay_frames.verify_send(&buf[..n]));
        // Another session's key (an older bind) does not verify it.
        assert!(!relay_key.session_key(76).verify_send(&buf[..n]));
        let range = send_to_deliver(&mut buf, n, &node_p).unwrap();
        assert!(range.len() < n);
        assert_eq!(parse_deliver(&buf[range]), Some((node_p, &payload[..])));
    }

    #[test]
    fn tampered_frames_fail() {
        let (node_s, node_p) = pair(1);
        let (relay_s, relay_p) = pair(2);
        let node_key = BindKey::derive(&node_s, &node_p, &relay_p);
        let relay_key = BindKey::derive(&relay_s, &relay_p, &node_p);
        let bind = node_key.bind(&node_p, 1, [0; 12]);
        for i in 0..bind.len() {
            let mut bad = bind;
            bad[i] ^= 4;
            assert_eq!(relay_key.open_bind(&bad), None, "byte {i}");
        }
        let frames = node_key.session_key(1);
        let mut buf = vec![0u8; 256];
        let n = frames.seal_send(1, 1, &node_p, &mut buf, 40).unwrap();
        for i in 0..n {
            let mut bad = buf.clone();
            bad[i] ^= 4;
            assert!(!relay_key.session_key(1).verify_send(&bad[..n]), "byte {i}");
        }
        // A stranger's bind with the right sender key in it but the wrong secret.
        let (stranger_s, _) = pair(9);
        let forged = BindKey::derive(&stranger_s, &node_p, &relay_p).bind(&node_p, 2, [0; 12]);
        assert_eq!(relay_key.open_bind(&forged), None);
    }

    #[test]
    fn size_limits_and_garbage() {
        assert_eq!(SendFrame::parse(&[0u8; 10]), None);
        let mut big = vec![0u8; SEND_OVERHEAD + MAX_PAYLOAD + 1];
        write_header(ControlKind::RelaySend, &mut big);
        assert_eq!(SendFrame::parse(&big), None);
        big.truncate(SEND_OVERHEAD + MAX_PAYLOAD);
        assert!(SendFrame::parse(&big).is_some());
        assert_eq!(parse_deliver(b"LM\x01\x0b"), None);
        assert_eq!(bind_sender(&[0u8; BIND_LEN]), None);
        let (s, p) = pair(1);
        let k = BindKey::derive(&s, &p, &p).session_key(0);
        let mut small = vec![0u8; 20];
        assert_eq!(k.seal_send(0, 0, &p, &mut small, 10), None);
        for len in 0..80 {
            let mut junk = vec![0x5au8; len];
            if len >= 4 {
                junk[..4].copy_from_slice(b"LM\x01\x0a");
            }
            let _ = SendFrame::parse(&junk);
            let _ = k.verify_send(&junk);
            let _ = parse_deliver(&junk);
            let _ = send_to_deliver(&mut junk, len, &p);
        }
    }
}
