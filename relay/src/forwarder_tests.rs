//! Deterministic tests of the forwarding core with real keys and frames.

use crate::forwarder::Forwarder;
use lanmesh_proto::relay::{parse_deliver, BindKey, FrameKey, BIND_LEN, SEND_HEADER};
use lanmesh_proto::PublicKey;
use std::net::SocketAddr;
use x25519_dalek::StaticSecret;

const RELAY: [u8; 32] = [50; 32];

fn public(secret: &StaticSecret) -> PublicKey {
    x25519_dalek::PublicKey::from(secret).into()
}

struct Member {
    key: PublicKey,
    bind_key: BindKey,
    addr: SocketAddr,
    session: u32,
    frames: Option<FrameKey>,
    counter: u64,
    clock: u64,
}

impl Member {
    fn new(seed: u8) -> Member {
        let secret = StaticSecret::from([seed; 32]);
        let key = public(&secret);
        let relay = public(&StaticSecret::from(RELAY));
        Member {
            key,
            bind_key: BindKey::derive(&secret, &key, &relay),
            addr: SocketAddr::from(([198, 51, 100, seed], 41641)),
            session: 0,
            frames: None,
            counter: 0,
            clock: 100,
        }
    }

    fn bind(&mut self, f: &mut Forwarder, now: u64) -> Vec<(SocketAddr, Vec<u8>)> {
        self.clock += 1;
        let mut frame = self
            .bind_key
            .bind(&self.key, self.clock, [self.clock as u8; 12])
            .to_vec();
        let out = feed(f, now, self.addr, &mut frame);
        if let Some((_, answer)) = out.first() {
            let b = self.bind_key.open_bound(answer).expect("a bound answer");
            assert_eq!(b.timestamp, self.clock);
            self.session = b.session;
            self.frames = Some(self.bind_key.session_key(b.created));
        }
        out
    }

    fn send(&mut self, to: &PublicKey, payload: &[u8]) -> Vec<u8> {
        self.counter += 1;
        let mut buf = vec![0u8; SEND_HEADER + payload.len() + 16];
        buf[SEND_HEADER..SEND_HEADER + payload.len()].copy_from_slice(payload);
        let n = self
            .frames
            .as_ref()
            .unwrap()
            .seal_send(self.session, self.counter, to, &mut buf, payload.len())
            .unwrap();
        buf.truncate(n);
        buf
    }
}

/// The instant of test millisecond `ms`.
fn at(ms: u64) -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now) + std::time::Duration::from_millis(ms)
}

fn feed(
    f: &mut Forwarder,
    now: u64,
    src: SocketAddr,
    frame: &mut [u8],
) -> Vec<(SocketAddr, Vec<u8>)> {
    let len = frame.len();
    f.handle_datagram(at(now), src, frame, len);
    std::iter::from_fn(|| f.poll_transmit())
        .map(|t| (t.dst, t.payload))
        .collect()
}

fn forwarder(members: &[&Member]) -> Forwarder {
    let mut f = Forwarder::new(StaticSecret::from(RELAY), 1_000_000, 7);
    f.set_members(members.iter().map(|m| m.key));
    f
}

#[test]
fn members_bind_and_frames_reach_the_other_member() {
    let (mut a, mut b) = (Member::new(1), Member::new(2));
    let mut f = forwarder(&[&a, &b]);
    let answer = a.bind(&mut f, 0);
    assert_eq!(answer.len(), 1);
    assert!(answer[0].1.len() < BIND_LEN);
    b.bind(&mut f, 0);
    assert_eq!(f.bound(), 2);
    let mut frame = a.send(&b.key, b"ciphertext");
    let out = feed(&mut f, 1, a.addr, &mut frame);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, b.addr);
    assert!(out[0].1.len() < frame.len());
    assert_eq!(parse_deliver(&out[0].1), Some((a.key, &b"ciphertext"[..])));
    assert_eq!(f.stats().packets_forwarded, 1);
}

#[test]
fn strangers_forgers_and_replays_get_nothing() {
    let (mut a, mut b, mut stranger) = (Member::new(1), Member::new(2), Member::new(3));
    let mut f = forwarder(&[&a, &b]);
    // A non-member's bind: no answer.
    assert!(stranger.bind(&mut f, 0).is_empty());
    a.bind(&mut f, 0);
    b.bind(&mut f, 0);
    // A replayed bind: no answer.
    let mut old = a.bind_key.bind(&a.key, a.clock, [0; 12]).to_vec();
    assert!(feed(&mut f, 1, a.addr, &mut old).is_empty());
    // A frame, then the same frame again (from anywhere): forwarded once.
    let frame = a.send(&b.key, b"once");
    assert_eq!(feed(&mut f, 1, a.addr, &mut frame.clone()).len(), 1);
    assert!(feed(&mut f, 1, a.addr, &mut frame.clone()).is_empty());
    // A tampered frame from a spoofed source: nothing.
    let mut forged = a.send(&b.key, b"evil");
    let last = forged.len() - 20;
    forged[last] ^= 1;
    assert!(feed(&mut f, 1, stranger.addr, &mut forged).is_empty());
    // The stranger using a member's session index with its own key: nothing.
    stranger.session = a.session;
    stranger.frames = Some(stranger.bind_key.session_key(1));
    let mut frame = stranger.send(&b.key, b"evil");
    assert!(feed(&mut f, 1, stranger.addr, &mut frame).is_empty());
    // Junk of every size: nothing, no panic.
    for len in 0..200 {
        let mut junk = vec![0xa5u8; len];
        if len >= 4 {
            junk[..4].copy_from_slice(b"LM\x01\x0a");
        }
        assert!(feed(&mut f, 1, stranger.addr, &mut junk).is_empty());
    }
    assert_eq!(f.stats().packets_forwarded, 1);
    assert!(f.stats().dropped > 200);
}

#[test]
fn a_removed_member_loses_access_at_once() {
    let (mut a, mut b) = (Member::new(1), Member::new(2));
    let mut f = forwarder(&[&a, &b]);
    a.bind(&mut f, 0);
    b.bind(&mut f, 0);
    f.set_members([b.key]);
    let mut frame = a.send(&b.key, b"after removal");
    assert!(feed(&mut f, 1, a.addr, &mut frame).is_empty());
    assert!(a.bind(&mut f, 2).is_empty());
    // And nothing is forwarded to it either.
    let mut frame = b.send(&a.key, b"to the removed");
    assert!(feed(&mut f, 3, b.addr, &mut frame).is_empty());
}

#[test]
fn a_refreshing_bind_keeps_the_session_and_follows_the_member() {
    let (mut a, mut b) = (Member::new(1), Member::new(2));
    let mut f = forwarder(&[&a, &b]);
    a.bind(&mut f, 0);
    b.bind(&mut f, 0);
    let first = a.session;
    let in_flight = a.send(&b.key, b"sent before the refresh");
    a.addr = "198.51.100.99:5000".parse().unwrap();
    a.bind(&mut f, 10);
    assert_eq!(a.session, first);
    assert_eq!(feed(&mut f, 11, a.addr, &mut in_flight.clone()).len(), 1);
    // Frames to a now go to its new address.
    let mut frame = b.send(&a.key, b"hi");
    assert_eq!(feed(&mut f, 12, b.addr, &mut frame)[0].0, a.addr);
}

#[test]
fn a_member_over_its_rate_limit_is_cut_off_until_the_budget_refills() {
    let (mut a, mut b) = (Member::new(1), Member::new(2));
    let mut f = Forwarder::new(StaticSecret::from(RELAY), 10_000, 7);
    f.set_members([a.key, b.key]);
    a.bind(&mut f, 0);
    b.bind(&mut f, 0);
    let payload = [0u8; 1000];
    let forwarded = (0..20)
        .filter(|_| !feed(&mut f, 0, a.addr, &mut a.send(&b.key, &payload)).is_empty())
        .count();
    assert!(
        forwarded < 11,
        "{forwarded} forwarded within one second's budget"
    );
    assert!(!feed(&mut f, 1000, a.addr, &mut a.send(&b.key, &payload)).is_empty());
}

#[test]
fn idle_sessions_expire_and_stun_is_answered_in_size() {
    let (mut a, b) = (Member::new(1), Member::new(2));
    let mut f = forwarder(&[&a, &b]);
    a.bind(&mut f, 0);
    f.expire(at(61_000));
    assert_eq!(f.bound(), 0);
    let mut req = [0u8; lanmesh_proto::stun::REQUEST_LEN];
    let n = lanmesh_proto::stun::write_request(&[1; 12], &mut req);
    let out = feed(&mut f, 0, a.addr, &mut req[..n]);
    assert_eq!(out.len(), 1);
    assert!(out[0].1.len() <= n);
}

#[test]
fn a_run_replays_from_its_seed() {
    let run = |seed: u64| {
        let mut a = Member::new(1);
        let mut f = Forwarder::new(StaticSecret::from(RELAY), 1_000_000, seed);
        f.set_members([a.key]);
        let first = a.bind(&mut f, 0);
        let refresh = a.bind(&mut f, 10);
        (first, refresh, a.session)
    };
    assert_eq!(run(7), run(7), "same seed, same answers");
    let (x, _, session) = run(7);
    let (y, _, _) = run(8);
    assert_ne!(x, y, "another seed, other nonces");
    assert_eq!(
        session, 8,
        "the first session index comes from the seed's low bits"
    );
}
