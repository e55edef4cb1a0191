//! The relay's forwarding core, sans-IO: datagrams and the time go in, datagrams to send come
//! out. It forwards only between members the coordinator listed, only for bound sessions, and
//! only frames whose MAC and counter check out.
//!
//! Memory is bounded by the member list: one session per member (a new bind replaces the old
//! one), no state at all for anyone else.

use lanmesh_proto::header::{classify, ControlKind, PacketClass};
use lanmesh_proto::log_limit::LogLimit;
use lanmesh_proto::outbox::{Outbox, Transmit};
use lanmesh_proto::relay::{
    bind_sender, frame_kind, send_to_deliver, BindKey, Bound, FrameKey, SendFrame,
};
use lanmesh_proto::replay::ReplayWindow;
use lanmesh_proto::{stun, PublicKey};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;
use tracing::{debug, info};
use x25519_dalek::StaticSecret;

/// Sessions not refreshed by a bind or a frame for this long are dropped.
const SESSION_IDLE_MS: u64 = 60_000;

struct Member {
    bind_key: BindKey,
    last_bind: u64,
    session: Option<u32>,
}

struct Session {
    member: PublicKey,
    /// The timestamp of the bind that created the session (its frame key comes from it).
    created: u64,
    frames: FrameKey,
    addr: SocketAddr,
    replay: ReplayWindow,
    bucket: TokenBucket,
    last_seen_ms: u64,
}

/// Counters for `relay status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    pub dropped: u64,
}

/// A per-member byte budget (refilled continuously, capped at one second's worth).
struct TokenBucket {
    tokens: u64,
    at_ms: u64,
}

impl TokenBucket {
    fn take(&mut self, now_ms: u64, bytes: u64, per_sec: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.tokens = (self.tokens + elapsed.saturating_mul(per_sec) / 1000).min(per_sec);
        self.at_ms = now_ms;
        if self.tokens < bytes {
            return false;
        }
        self.tokens -= bytes;
        true
    }
}

pub struct Forwarder {
    secret: StaticSecret,
    public: PublicKey,
    members: HashMap<PublicKey, Member>,
    sessions: HashMap<u32, Session>,
    next_session: u32,
    bytes_per_sec: u64,
    stats: Stats,
    drops: LogLimit,
    /// Nonces of Bound answers (seeded: a run replays).
    rng: StdRng,
    out: Outbox,
    epoch: Option<Instant>,
}

impl Forwarder {
    /// `seed` seeds the nonces; its low 32 bits are the first session index handed out.
    pub fn new(secret: StaticSecret, bytes_per_sec: u64, seed: u64) -> Forwarder {
        let public = PublicKey::from(x25519_dalek::PublicKey::from(&secret));
        Forwarder {
            secret,
            public,
            members: HashMap::new(),
            sessions: HashMap::new(),
            next_session: seed as u32,
            bytes_per_sec,
            stats: Stats::default(),
            drops: LogLimit::new(5),
            rng: StdRng::seed_from_u64(seed),
            out: Outbox::default(),
            epoch: None,
        }
    }

    fn nonce(&mut self) -> [u8; 12] {
        let mut n = [0u8; 12];
        self.rng.fill_bytes(&mut n);
        n
    }

    /// Milliseconds since the first time the forwarder was given (its rate limits and idle
    /// times count in them).
    fn ms(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_millis() as u64
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.poll_transmit()
    }

    /// Gives a polled datagram's buffer back.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        self.out.recycle(buffer)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Members with a live session.
    pub fn bound(&self) -> usize {
        self.sessions.len()
    }

    /// Replaces the member list (from the coordinator). Removed members lose their session at
    /// once.
    pub fn set_members(&mut self, keys: impl IntoIterator<Item = PublicKey>) {
        let wanted: std::collections::HashSet<PublicKey> = keys.into_iter().collect();
        let gone: Vec<PublicKey> = self
            .members
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(m) = self.members.remove(&key) {
                if let Some(s) = m.session {
                    self.sessions.remove(&s);
                }
                info!(member = %key.short(), "member removed: no more forwarding for it");
            }
        }
        for key in wanted {
            if !self.members.contains_key(&key) {
                let bind_key = BindKey::derive(&self.secret, &self.public, &key);
                self.members.insert(
                    key,
                    Member {
                        bind_key,
                        last_bind: 0,
                        session: None,
                    },
                );
            }
        }
    }

    fn dropped(&mut self, now_ms: u64, src: SocketAddr, why: &str) {
        self.stats.dropped += 1;
        if self.drops.allow(now_ms) {
            debug!(%src, "dropped: {why}");
        }
    }

    /// Handles the datagram in `buf[..len]` (the buffer is reused to build what is
    /// forwarded); what to send is queued (see [`Forwarder::poll_transmit`]).
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, buf: &mut [u8], len: usize) {
        let now_ms = self.ms(now);
        let frame = &buf[..len];
        if classify(frame) == PacketClass::Stun {
            return self.answer_stun(src, frame);
        }
        match frame_kind(frame) {
            Some(ControlKind::RelayBind) => self.handle_bind(now_ms, src, buf, len),
            Some(ControlKind::RelaySend) => self.handle_send(now_ms, src, buf, len),
            _ => self.dropped(now_ms, src, "not a relay frame"),
        }
    }

    fn answer_stun(&mut self, src: SocketAddr, frame: &[u8]) {
        let mut answer = [0u8; 64];
        if let Some(n) = stun::answer(src, frame, &mut answer) {
            self.out.send_udp(src, &answer[..n]);
        }
    }

    fn handle_bind(&mut self, now_ms: u64, src: SocketAddr, buf: &[u8], len: usize) {
        let frame = &buf[..len];
        // Non-members cost one table lookup.
        let Some(key) = bind_sender(frame) else {
            return self.dropped(now_ms, src, "malformed bind");
        };
        let Some(member) = self.members.get_mut(&key) else {
            return self.dropped(now_ms, src, "bind from a non-member");
        };
        let Some(timestamp) = member.bind_key.open_bind(frame) else {
            return self.dropped(now_ms, src, "forged bind");
        };
        if timestamp <= member.last_bind {
            return self.dropped(now_ms, src, "replayed bind");
        }
        member.last_bind = timestamp;
        // A refreshing bind keeps the session (frames in flight stay valid); it only moves
        // the session to where the bind came from.
        if let Some(session) = member.session.and_then(|i| self.sessions.get_mut(&i)) {
            session.addr = src;
            session.last_seen_ms = now_ms;
            let answer = Bound {
                timestamp,
                session: member.session.expect("checked"),
                created: session.created,
            };
            let nonce = self.nonce();
            let member = self.members.get(&key).expect("looked up above");
            let frame = member.bind_key.bound(&answer, nonce);
            return self.out.send_udp(src, &frame);
        }
        let frames = member.bind_key.session_key(timestamp);
        let index = loop {
            self.next_session = self.next_session.wrapping_add(1);
            if self.next_session != 0 && !self.sessions.contains_key(&self.next_session) {
                break self.next_session;
            }
        };
        let member = self.members.get_mut(&key).expect("looked up above");
        member.session = Some(index);
        let answer = Bound {
            timestamp,
            session: index,
            created: timestamp,
        };
        let nonce = self.nonce();
        let member = self.members.get(&key).expect("looked up above");
        let frame = member.bind_key.bound(&answer, nonce);
        debug!(member = %key.short(), %src, "member bound");
        self.sessions.insert(
            index,
            Session {
                member: key,
                created: timestamp,
                frames,
                addr: src,
                replay: ReplayWindow::default(),
                bucket: TokenBucket {
                    tokens: self.bytes_per_sec,
                    at_ms: now_ms,
                },
                last_seen_ms: now_ms,
            },
        );
        self.out.send_udp(src, &frame);
    }

    fn handle_send(&mut self, now_ms: u64, src: SocketAddr, buf: &mut [u8], len: usize) {
        let Some(send) = SendFrame::parse(&buf[..len]) else {
            return self.dropped(now_ms, src, "malformed send");
        };
        let Some(session) = self.sessions.get_mut(&send.session) else {
            return self.dropped(now_ms, src, "send on an unknown session");
        };
        if !session.replay.check(send.counter) || !session.frames.verify_send(&buf[..len]) {
            return self.dropped(now_ms, src, "send failed authentication or was replayed");
        }
        session.replay.accept(send.counter);
        session.addr = src; // Authenticated: follow the member if it moved.
        session.last_seen_ms = now_ms;
        if !session.bucket.take(now_ms, len as u64, self.bytes_per_sec) {
            return self.dropped(now_ms, src, "member over its rate limit");
        }
        let from = session.member;
        let Some(dest) = self
            .members
            .get(&send.to)
            .and_then(|m| m.session)
            .and_then(|s| self.sessions.get(&s))
        else {
            return self.dropped(now_ms, src, "destination not bound here");
        };
        let dest_addr = dest.addr;
        let Some(range) = send_to_deliver(buf, len, &from) else {
            return;
        };
        self.stats.packets_forwarded += 1;
        self.stats.bytes_forwarded += range.len() as u64;
        self.out.send_udp(dest_addr, &buf[range]);
    }

    /// Drops sessions that went quiet.
    pub fn expire(&mut self, now: Instant) {
        let now_ms = self.ms(now);
        let idle: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_seen_ms) > SESSION_IDLE_MS)
            .map(|(i, _)| *i)
            .collect();
        for index in idle {
            if let Some(s) = self.sessions.remove(&index) {
                if let Some(m) = self.members.get_mut(&s.member) {
                    m.session = None;
                }
            }
        }
    }
}
