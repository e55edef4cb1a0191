//! `forwarder`: the relay's sans-IO core, `Forwarder::handle_datagram`, with the lab's relay
//! key and nodes a, b, c as members (captured binds authenticate).
//!
//! Input: flags u8 (bits 0-2 drop a, b, c from the members; bit 3: a tiny rate limit) |
//! first session index u32le | records (see `lanmesh_fuzz`). Record ops:
//! 0 raw datagram from `src`; 1 a bind from node data[0] (a, b, c, d, stranger) with a
//! timestamp from data; 2 a send from a node's current session (or a made-up one) to another
//! node, payload from data; 3 resend an earlier datagram; 4 resend one with a byte changed;
//! 5 change the member list. `expire` runs after every step.
//!
//! The target keeps its own model of what is authentic (it holds every key) and asserts:
//! - nothing is answered or forwarded unless authenticated: a Bound only for a genuine, fresh
//!   bind from a member, which it answers with the session the model expects; a Deliver only
//!   for a genuine Send with a fresh counter on a live session, to the address where the
//!   destination's session last authenticated, carrying the same payload from the right key;
//!   STUN answers only to Binding requests;
//! - no answer (to the source) is larger than its request, and no Deliver larger than its Send;
//! - liveness: a genuine fresh bind from a member is answered, and (without the tiny rate
//!   limit) a genuine fresh send to a bound member is forwarded.
#![no_main]
use lanmesh_fuzz::{addr, at, public, seed, static_secret, step_ms, Records, T0_MS};
use lanmesh_proto::header::ControlKind;
use lanmesh_proto::relay::{
    bind_sender, frame_kind, parse_deliver, BindKey, FrameKey, SendFrame, BOUND_LEN, MAX_PAYLOAD,
    SEND_HEADER, SEND_OVERHEAD,
};
use lanmesh_proto::{stun, PublicKey};
use lanmesh_relay::forwarder::Forwarder;
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::OnceLock;

const NODES: [u8; 5] = [
    seed::NODE_A,
    seed::NODE_B,
    seed::NODE_C,
    seed::NODE_D,
    seed::STRANGER,
];
const SESSION_IDLE_MS: u64 = 60_000;
const WINDOW: u64 = 1024;

/// Each node's public key and its side of the bind key with the relay.
fn keys() -> &'static Vec<(PublicKey, BindKey)> {
    static K: OnceLock<Vec<(PublicKey, BindKey)>> = OnceLock::new();
    K.get_or_init(|| {
        let relay = public(seed::RELAY);
        NODES
            .iter()
            .map(|&s| {
                (
                    public(s),
                    BindKey::derive(&static_secret(s), &public(s), &relay),
                )
            })
            .collect()
    })
}

fn node_of(key: &PublicKey) -> Option<usize> {
    keys().iter().position(|(k, _)| k == key)
}

struct ModelSession {
    node: usize,
    created: u64,
    frames: FrameKey,
    addr: SocketAddr,
    accepted: HashSet<u64>,
    highest: Option<u64>,
    last_seen_ms: u64,
}

impl ModelSession {
    fn fresh(&self, counter: u64) -> bool {
        !self.accepted.contains(&counter)
            && self
                .highest
                .is_none_or(|h| counter.saturating_add(WINDOW) > h)
            && counter != u64::MAX
    }
}

#[derive(Default)]
struct Model {
    members: [bool; 5],
    last_bind: [u64; 5],
    /// The node's live session index.
    session_of: [Option<u32>; 5],
    sessions: HashMap<u32, ModelSession>,
    /// Highest counter the target used per session (for op 2).
    sent: HashMap<u32, u64>,
}

impl Model {
    fn set_members(&mut self, members: [bool; 5]) {
        for (n, &wanted) in members.iter().enumerate() {
            if self.members[n] && !wanted {
                if let Some(idx) = self.session_of[n].take() {
                    self.sessions.remove(&idx);
                }
            }
            if !self.members[n] && wanted {
                self.last_bind[n] = 0;
                self.session_of[n] = None;
            }
        }
        self.members = members;
    }

    fn expire(&mut self, now_ms: u64) {
        let idle: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_seen_ms) > SESSION_IDLE_MS)
            .map(|(i, _)| *i)
            .collect();
        for idx in idle {
            let s = self.sessions.remove(&idx).unwrap();
            self.session_of[s.node] = None;
        }
    }
}

fn member_list(members: &[bool; 5]) -> Vec<PublicKey> {
    (0..5)
        .filter(|&n| members[n])
        .map(|n| keys()[n].0)
        .collect()
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().enumerate() {
        *x = d.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// Checks what the forwarder sent for `datagram` from `src` against the model, and updates it.
fn check(
    model: &mut Model,
    now_ms: u64,
    src: SocketAddr,
    datagram: &[u8],
    out: &[(SocketAddr, Vec<u8>)],
    tiny_rate: bool,
) {
    for (dst, d) in out {
        assert!(
            d.len() <= datagram.len(),
            "sent {} bytes to {dst} for a {}-byte datagram",
            d.len(),
            datagram.len()
        );
    }
    if stun::parse(datagram).is_some() {
        let answerable = matches!(
            stun::parse(datagram),
            Some(stun::Message::BindingRequest(_))
        );
        for (dst, d) in out {
            assert!(
                answerable && *dst == src,
                "STUN: unexpected answer to {dst}"
            );
            assert!(matches!(
                stun::parse(d),
                Some(stun::Message::BindingSuccess { .. })
            ));
        }
        return;
    }
    match frame_kind(datagram) {
        Some(ControlKind::RelayBind) => check_bind(model, now_ms, src, datagram, out),
        Some(ControlKind::RelaySend) => check_send(model, now_ms, src, datagram, out, tiny_rate),
        _ => assert!(
            out.is_empty(),
            "answered a datagram that is neither STUN nor a bind or send"
        ),
    }
}

fn check_bind(
    model: &mut Model,
    now_ms: u64,
    src: SocketAddr,
    datagram: &[u8],
    out: &[(SocketAddr, Vec<u8>)],
) {
    let genuine = bind_sender(datagram)
        .and_then(|k| node_of(&k))
        .filter(|&n| model.members[n])
        .and_then(|n| Some((n, keys()[n].1.open_bind(datagram)?)))
        .filter(|&(n, ts)| ts > model.last_bind[n]);
    let Some((n, ts)) = genuine else {
        assert!(
            out.is_empty(),
            "answered a bind that is forged, stale or from a non-member"
        );
        return;
    };
    assert_eq!(
        out.len(),
        1,
        "a genuine fresh bind from a member got {} answers",
        out.len()
    );
    let (dst, answer) = &out[0];
    assert_eq!(*dst, src);
    assert_eq!(answer.len(), BOUND_LEN);
    let bound = keys()[n]
        .1
        .open_bound(answer)
        .expect("the answer opens with the member's key");
    assert_eq!(bound.timestamp, ts);
    model.last_bind[n] = ts;
    match model.session_of[n] {
        Some(idx) => {
            let s = model.sessions.get_mut(&idx).unwrap();
            assert_eq!(
                (bound.session, bound.created),
                (idx, s.created),
                "refresh moved session"
            );
            s.addr = src;
            s.last_seen_ms = now_ms;
        }
        None => {
            assert_eq!(bound.created, ts);
            assert_ne!(bound.session, 0);
            assert!(
                !model.sessions.contains_key(&bound.session),
                "session index {} handed out twice",
                bound.session
            );
            model.session_of[n] = Some(bound.session);
            model.sessions.insert(
                bound.session,
                ModelSession {
                    node: n,
                    created: ts,
                    frames: keys()[n].1.session_key(ts),
                    addr: src,
                    accepted: HashSet::new(),
                    highest: None,
                    last_seen_ms: now_ms,
                },
            );
        }
    }
}

fn check_send(
    model: &mut Model,
    now_ms: u64,
    src: SocketAddr,
    datagram: &[u8],
    out: &[(SocketAddr, Vec<u8>)],
    tiny_rate: bool,
) {
    let send = SendFrame::parse(datagram);
    let genuine = send.and_then(|f| {
        let s = model.sessions.get(&f.session)?;
        (s.frames.verify_send(datagram) && s.fresh(f.counter)).then_some(f)
    });
    let Some(f) = genuine else {
        assert!(
            out.is_empty(),
            "forwarded or answered a forged, replayed or stale send"
        );
        return;
    };
    let s = model.sessions.get_mut(&f.session).unwrap();
    s.accepted.insert(f.counter);
    s.highest = Some(s.highest.map_or(f.counter, |h| h.max(f.counter)));
    s.addr = src;
    s.last_seen_ms = now_ms;
    let from = keys()[s.node].0;
    let dest = node_of(&f.to)
        .and_then(|n| model.session_of[n])
        .map(|idx| model.sessions[&idx].addr);
    match (dest, out) {
        (None, []) => {}
        (None, _) => panic!("forwarded to a destination that is not bound"),
        (Some(_), []) => assert!(
            tiny_rate,
            "a genuine fresh send to a bound member was dropped"
        ),
        (Some(dest), [(dst, d)]) => {
            assert_eq!(*dst, dest, "forwarded to where the destination is not");
            assert!(d.len() < datagram.len());
            let (k, payload) = parse_deliver(d).expect("a deliver frame");
            assert_eq!(k, from, "deliver claims another sender");
            assert_eq!(payload, &datagram[SEND_HEADER..datagram.len() - 16]);
        }
        (Some(_), _) => panic!("one send forwarded {} times", out.len()),
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 5 {
        return;
    }
    let flags = input[0];
    let first_session = u32::from_le_bytes(input[1..5].try_into().unwrap());
    let tiny_rate = flags & 8 != 0;
    let rate = if tiny_rate { 3000 } else { 250_000_000 };
    let mut fwd = Forwarder::new(static_secret(seed::RELAY), rate, first_session as u64);
    let mut model = Model::default();
    let members = [flags & 1 == 0, flags & 2 == 0, flags & 4 == 0, false, false];
    fwd.set_members(member_list(&members));
    model.set_members(members);

    let mut now = T0_MS;
    let mut history: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 2048];
    for r in Records::new(&input[5..]) {
        now += step_ms(r.dt);
        fwd.expire(at(now));
        model.expire(now);
        let src = addr(r.src);
        let d = r.data;
        let datagram: Vec<u8> = match r.op % 6 {
            0 => d.to_vec(),
            1 => {
                let n = *d.first().unwrap_or(&0) as usize % 5;
                let ts = if d.get(1).is_some_and(|b| b & 1 == 1) {
                    u64_at(d, 2)
                } else {
                    model.last_bind[n].wrapping_add(1 + (u64_at(d, 2) & 0xffff))
                };
                let mut nonce = [0u8; 12];
                for (i, x) in nonce.iter_mut().enumerate() {
                    *x = d.get(10 + i).copied().unwrap_or(0);
                }
                keys()[n].1.bind(&keys()[n].0, ts, nonce).to_vec()
            }
            2 => {
                let n = *d.first().unwrap_or(&0) as usize % 5;
                let to = keys()[*d.get(1).unwrap_or(&1) as usize % 5].0;
                let flag = *d.get(2).unwrap_or(&0);
                let (idx, created) = match model.session_of[n] {
                    Some(idx) if flag & 1 == 0 => (idx, model.sessions[&idx].created),
                    _ => (u64_at(d, 3) as u32, u64_at(d, 7)),
                };
                let counter = if flag & 2 == 0 {
                    let c = model.sent.get(&idx).map_or(0, |c| c + 1);
                    model.sent.insert(idx, c);
                    c
                } else {
                    u64_at(d, 11)
                };
                let payload = &d[d.len().min(19)..];
                let payload = &payload[..payload.len().min(MAX_PAYLOAD)];
                let mut frame = vec![0u8; SEND_OVERHEAD + payload.len()];
                frame[SEND_HEADER..SEND_HEADER + payload.len()].copy_from_slice(payload);
                keys()[n]
                    .1
                    .session_key(created)
                    .seal_send(idx, counter, &to, &mut frame, payload.len())
                    .unwrap();
                frame
            }
            3 | 4 if history.is_empty() => continue,
            3 => history[*d.first().unwrap_or(&0) as usize % history.len()].clone(),
            4 => {
                let mut h = history[*d.first().unwrap_or(&0) as usize % history.len()].clone();
                if h.is_empty() {
                    continue;
                }
                let at = *d.get(1).unwrap_or(&0) as usize % h.len();
                h[at] ^= d.get(2).copied().filter(|&m| m != 0).unwrap_or(0x80);
                h
            }
            _ => {
                let bits = *d.first().unwrap_or(&0);
                let members = [0, 1, 2, 3, 4].map(|i| bits & (1 << i) != 0);
                fwd.set_members(member_list(&members));
                model.set_members(members);
                continue;
            }
        };
        if datagram.len() > buf.len() {
            continue; // A real socket read never hands over more than the buffer.
        }
        buf[..datagram.len()].copy_from_slice(&datagram);
        fwd.handle_datagram(at(now), src, &mut buf, datagram.len());
        let out: Vec<(SocketAddr, Vec<u8>)> = std::iter::from_fn(|| fwd.poll_transmit())
            .map(|t| (t.dst, t.payload))
            .collect();
        check(&mut model, now, src, &datagram, &out, tiny_rate);
        history.push(datagram);
    }
});
