//! The node's side of relaying, as a sans-IO state machine: it keeps a bound session with
//! every relay the coordinator lists (a bind every 2 s to each, which also holds NAT mappings
//! open), measures their round trips, picks the nearest live one as home, and seals frames for
//! it. Binding to all relays means a peer can reach us through whichever relay is its own home,
//! and checking them all as often as the home means a failover never lands on a relay that
//! died unnoticed. (A mesh has a handful of relays: a few dozen bytes a second each.)

use lanmesh_proto::outbox::{Outbox, Transmit};
use lanmesh_proto::relay::{BindKey, FrameKey, BIND_LEN};
use lanmesh_proto::stamp::{Stamps, WallClock};
use lanmesh_proto::PublicKey;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use x25519_dalek::StaticSecret;

const BIND_INTERVAL: Duration = Duration::from_secs(2);
/// A bind unanswered this long is a miss.
const BIND_TIMEOUT: Duration = Duration::from_secs(1);
/// The same, before the first answer: a new node's first bind may reach the relay just before
/// the coordinator's member list does, so it is retried quickly.
const FIRST_BIND_TIMEOUT: Duration = Duration::from_millis(250);
/// Misses in a row after which a relay counts as dead (its binds keep going, at 1 s).
const MAX_MISSES: u32 = 2;
/// Binds whose answer is still accepted after they timed out (a relay farther away than a
/// timeout is slow, not dead), and for how long.
const LATE_ANSWERS: usize = 4;
const LATE_ANSWER_WINDOW: Duration = Duration::from_secs(5);
/// Another relay must be this much nearer (ratio, percent) to take over as home.
const SWITCH_PERCENT: u128 = 70;

/// A relay as the coordinator lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayInfo {
    pub name: String,
    pub key: PublicKey,
    pub addr: SocketAddr,
}

struct Session {
    index: u32,
    created: u64,
    frames: FrameKey,
    counter: u64,
}

struct Relay {
    info: RelayInfo,
    bind_key: BindKey,
    pending: Option<(u64, Instant)>,
    /// Binds that timed out, newest last: their answers still count.
    late: std::collections::VecDeque<(u64, Instant)>,
    misses: u32,
    session: Option<Session>,
    rtt: Option<Duration>,
    next_bind: Instant,
}

impl Relay {
    fn alive(&self) -> bool {
        self.session.is_some() && self.misses < MAX_MISSES
    }

    fn bind_timeout(&self) -> Duration {
        if self.session.is_some() {
            BIND_TIMEOUT
        } else {
            FIRST_BIND_TIMEOUT
        }
    }
}

pub struct RelayClient {
    secret: StaticSecret,
    me: PublicKey,
    relays: Vec<Relay>,
    home: Option<usize>,
    /// Bind timestamps: they only grow, across restarts too (the relay refuses replays).
    stamps: Stamps,
    clock: WallClock,
    rng: StdRng,
    out: Outbox,
}

/// What happened to the home relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeChange {
    Now(String),
    Lost(String),
}

impl RelayClient {
    /// `stamp_floor`: bind timestamps start above it; `clock` gives them the wall clock;
    /// `seed` seeds the nonces.
    pub fn new(secret: StaticSecret, stamp_floor: u64, clock: WallClock, seed: u64) -> RelayClient {
        let me = PublicKey::from(x25519_dalek::PublicKey::from(&secret));
        RelayClient {
            secret,
            me,
            relays: Vec::new(),
            home: None,
            stamps: Stamps::new(stamp_floor),
            clock,
            rng: StdRng::seed_from_u64(seed),
            out: Outbox::default(),
        }
    }

    /// Replaces the relay list (relays that stay keep their sessions).
    pub fn set_relays(&mut self, now: Instant, list: Vec<RelayInfo>) {
        let home_key = self.home.map(|i| self.relays[i].info.key);
        let mut old: Vec<Relay> = std::mem::take(&mut self.relays);
        for info in list {
            match old.iter().position(|r| r.info.key == info.key) {
                Some(i) if old[i].info.addr == info.addr => self.relays.push(old.swap_remove(i)),
                _ => self.relays.push(Relay {
                    bind_key: BindKey::derive(&self.secret, &self.me, &info.key),
                    info,
                    pending: None,
                    late: std::collections::VecDeque::new(),
                    misses: 0,
                    session: None,
                    rtt: None,
                    next_bind: now,
                }),
            }
        }
        self.home = home_key.and_then(|k| self.relays.iter().position(|r| r.info.key == k));
    }

    pub fn infos(&self) -> impl Iterator<Item = &RelayInfo> {
        self.relays.iter().map(|r| &r.info)
    }

    pub fn is_relay(&self, addr: SocketAddr) -> bool {
        self.relays.iter().any(|r| r.info.addr == addr)
    }

    /// The home relay's name and address, if one is alive.
    pub fn home(&self) -> Option<&RelayInfo> {
        self.home.map(|i| &self.relays[i].info)
    }

    /// Every relay with its round trip (None: not answering).
    pub fn latencies(&self) -> Vec<(&RelayInfo, Option<Duration>)> {
        self.relays
            .iter()
            .map(|r| (&r.info, r.alive().then_some(r.rtt).flatten()))
            .collect()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.relays
            .iter()
            .map(|r| match r.pending {
                Some((_, sent)) => (sent + r.bind_timeout()).min(r.next_bind),
                None => r.next_bind,
            })
            .min()
    }

    /// Sends due binds and notices dead relays. Returns a change of home, if any.
    /// Queues due binds (see [`RelayClient::poll_transmit`]) and notices dead relays.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<HomeChange> {
        for i in 0..self.relays.len() {
            if let Some((_, sent)) = self.relays[i].pending {
                let r = &mut self.relays[i];
                if now >= sent + r.bind_timeout() {
                    if r.late.len() == LATE_ANSWERS {
                        r.late.pop_front();
                    }
                    r.late.extend(r.pending.take());
                    r.misses += 1;
                    // Ask again at once: one lost bind is no verdict, and a relay not (yet)
                    // answering is checked every second (every 250 ms before its first
                    // answer) so it is used as soon as it can be.
                    r.next_bind = r.next_bind.min(now);
                }
            }
            let interval = BIND_INTERVAL;
            if now >= self.relays[i].next_bind && self.relays[i].pending.is_none() {
                let ts = self.stamps.next(self.clock.ns(now));
                let mut nonce = [0u8; 12];
                self.rng.fill_bytes(&mut nonce);
                let r = &mut self.relays[i];
                let frame: [u8; BIND_LEN] = r.bind_key.bind(&self.me, ts, nonce);
                r.pending = Some((ts, now));
                r.next_bind = now
                    + if r.misses >= MAX_MISSES || r.session.is_none() {
                        r.bind_timeout()
                    } else {
                        interval
                    };
                self.out.send_udp(r.info.addr, &frame);
            }
        }
        self.choose_home()
    }

    /// The next bind to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.poll_transmit()
    }

    /// A Bound answer from `src`. Returns a change of home, if any.
    pub fn handle_bound(
        &mut self,
        now: Instant,
        src: SocketAddr,
        frame: &[u8],
    ) -> Option<HomeChange> {
        let i = self.relays.iter().position(|r| r.info.addr == src)?;
        let r = &mut self.relays[i];
        let bound = r.bind_key.open_bound(frame)?;
        r.late
            .retain(|(_, sent)| now.saturating_duration_since(*sent) < LATE_ANSWER_WINDOW);
        // The answer to the pending bind, or a late one to a bind that timed out: found by
        // the simulator — with a timeout shorter than the round trip (250 ms before the
        // first answer), a relay farther away than that was never used.
        let sent = match r.pending {
            Some((ts, sent)) if ts == bound.timestamp => sent,
            _ => {
                let i = r.late.iter().position(|(ts, _)| *ts == bound.timestamp)?;
                r.late.remove(i)?.1
            }
        };
        r.late.clear();
        r.pending = None;
        r.misses = 0;
        r.rtt = Some(now.saturating_duration_since(sent));
        // Answered: back to the regular schedule (the home relay's is shortened below).
        r.next_bind = sent + BIND_INTERVAL;
        let same = r
            .session
            .as_ref()
            .is_some_and(|s| s.index == bound.session && s.created == bound.created);
        if !same {
            r.session = Some(Session {
                index: bound.session,
                created: bound.created,
                frames: r.bind_key.session_key(bound.created),
                counter: 0,
            });
        }
        self.choose_home()
    }

    fn choose_home(&mut self) -> Option<HomeChange> {
        let best = (0..self.relays.len())
            .filter(|&i| self.relays[i].alive())
            .min_by_key(|&i| self.relays[i].rtt.unwrap_or(Duration::MAX));
        let keep = match (self.home, best) {
            (Some(h), Some(b)) if self.relays[h].alive() => {
                let (hr, br) = (self.relays[h].rtt, self.relays[b].rtt);
                match (hr, br) {
                    (Some(hr), Some(br)) => br.as_micros() * 100 >= hr.as_micros() * SWITCH_PERCENT,
                    _ => true,
                }
            }
            _ => false,
        };
        if keep {
            return None;
        }
        let old = self.home;
        self.home = best;

        match (old, best) {
            (o, Some(b)) if o != Some(b) => Some(HomeChange::Now(self.relays[b].info.name.clone())),
            (Some(o), None) => Some(HomeChange::Lost(self.relays[o].info.name.clone())),
            _ => None,
        }
    }

    /// Completes a Send frame to `to` through the home relay in `buf` (payload already at
    /// `buf[SEND_HEADER..SEND_HEADER + payload_len]`). Returns where to send it and its length.
    pub fn seal(
        &mut self,
        to: &PublicKey,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Option<(SocketAddr, usize)> {
        let r = &mut self.relays[self.home?];
        let s = r.session.as_mut()?;
        s.counter += 1;
        let n = s
            .frames
            .seal_send(s.index, s.counter, to, buf, payload_len)?;
        Some((r.info.addr, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanmesh_proto::relay::{bind_sender, Bound, SendFrame, SEND_HEADER};

    const RELAY_SEEDS: [u8; 2] = [50, 51];

    fn relay_info(i: usize) -> (RelayInfo, StaticSecret) {
        let secret = StaticSecret::from([RELAY_SEEDS[i]; 32]);
        let info = RelayInfo {
            name: format!("r{i}"),
            key: x25519_dalek::PublicKey::from(&secret).into(),
            addr: SocketAddr::from(([203, 0, 113, 30 + i as u8], 3479)),
        };
        (info, secret)
    }

    /// Answers a bind the way relay `i` would.
    fn answer(i: usize, bind: &[u8], session: u32) -> Vec<u8> {
        let (info, secret) = relay_info(i);
        let node = bind_sender(bind).unwrap();
        let key = BindKey::derive(&secret, &info.key, &node);
        let ts = key.open_bind(bind).unwrap();
        key.bound(
            &Bound {
                timestamp: ts,
                session,
                created: ts,
            },
            [0; 12],
        )
        .to_vec()
    }

    fn client() -> RelayClient {
        let clock = WallClock::new(Instant::now(), 1_700_000_000_000_000_000);
        RelayClient::new(StaticSecret::from([1; 32]), 0, clock, 3)
    }

    fn binds(c: &mut RelayClient, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        c.handle_timeout(now);
        drain(c)
    }

    fn drain(c: &mut RelayClient) -> Vec<(SocketAddr, Vec<u8>)> {
        std::iter::from_fn(|| c.poll_transmit())
            .map(|t| (t.dst, t.payload))
            .collect()
    }

    #[test]
    fn the_nearest_answering_relay_becomes_home() {
        let t0 = Instant::now();
        let mut c = client();
        c.set_relays(t0, vec![relay_info(0).0, relay_info(1).0]);
        let sent = binds(&mut c, t0);
        assert_eq!(sent.len(), 2);
        // r1 answers after 5 ms, r0 after 20 ms.
        let change = c.handle_bound(
            t0 + Duration::from_millis(5),
            sent[1].0,
            &answer(1, &sent[1].1, 7),
        );
        assert_eq!(change, Some(HomeChange::Now("r1".into())));
        c.handle_bound(
            t0 + Duration::from_millis(20),
            sent[0].0,
            &answer(0, &sent[0].1, 3),
        );
        assert_eq!(c.home().unwrap().name, "r1");
        // Frames go to the home relay, with its session.
        let mut buf = vec![0u8; 256];
        let (dst, n) = c.seal(&PublicKey([9; 32]), &mut buf, 10).unwrap();
        assert_eq!(dst, relay_info(1).0.addr);
        let f = SendFrame::parse(&buf[..n]).unwrap();
        assert_eq!((f.session, f.counter, f.to), (7, 1, PublicKey([9; 32])));
        assert_eq!(n, SEND_HEADER + 10 + 16);
    }

    #[test]
    fn a_dead_home_is_replaced_within_a_few_seconds() {
        let t0 = Instant::now();
        let mut c = client();
        c.set_relays(t0, vec![relay_info(0).0, relay_info(1).0]);
        let sent = binds(&mut c, t0);
        c.handle_bound(
            t0 + Duration::from_millis(5),
            sent[0].0,
            &answer(0, &sent[0].1, 1),
        );
        c.handle_bound(
            t0 + Duration::from_millis(9),
            sent[1].0,
            &answer(1, &sent[1].1, 2),
        );
        assert_eq!(c.home().unwrap().name, "r0");
        // r0 dies; r1 keeps answering.
        let mut now = t0;
        let mut lost_at = None;
        while now < t0 + Duration::from_secs(20) {
            now = c.poll_timeout().unwrap();
            let change = c.handle_timeout(now);
            let out = drain(&mut c);
            if change.is_some() {
                lost_at.get_or_insert(now);
            }
            for (a, d) in out {
                if a == relay_info(1).0.addr {
                    c.handle_bound(now, a, &answer(1, &d, 2));
                }
            }
            if now >= t0 + Duration::from_millis(100)
                && lost_at.is_none()
                && c.home().unwrap().name == "r1"
            {
                lost_at = Some(now);
            }
            if lost_at.is_some() {
                break;
            }
        }
        assert_eq!(c.home().unwrap().name, "r1");
        // Binds to the home go out every 2 s; two missed answers (1 s each) kill it.
        assert!(
            lost_at.unwrap() - t0 <= Duration::from_secs(5),
            "{:?}",
            lost_at.unwrap() - t0
        );
    }

    #[test]
    fn a_new_home_is_checked_every_two_seconds_and_a_first_bind_retried_fast() {
        let t0 = Instant::now();
        let mut c = client();
        c.set_relays(t0, vec![relay_info(0).0, relay_info(1).0]);
        // r1's first bind is lost (it did not know us yet): it is asked again 250 ms later.
        let sent = binds(&mut c, t0);
        c.handle_bound(
            t0 + Duration::from_millis(5),
            sent[0].0,
            &answer(0, &sent[0].1, 1),
        );
        let t1 = t0 + Duration::from_millis(250);
        let again = binds(&mut c, t1);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, relay_info(1).0.addr);
        c.handle_bound(
            t1 + Duration::from_millis(9),
            again[0].0,
            &answer(1, &again[0].1, 2),
        );
        assert_eq!(c.home().unwrap().name, "r0");
        // r0 dies; r1 takes over, and it is bound every 2 s.
        let mut now = t1;
        while c.home().unwrap().name == "r0" {
            now = c.poll_timeout().unwrap();
            let out = binds(&mut c, now);
            for (a, d) in out {
                if a == relay_info(1).0.addr {
                    c.handle_bound(now, a, &answer(1, &d, 2));
                }
            }
            assert!(now - t0 < Duration::from_secs(10));
        }
        let mut r1_binds = Vec::new();
        let until = now + Duration::from_secs(6);
        while now < until {
            now = c.poll_timeout().unwrap();
            let out = binds(&mut c, now);
            for (a, d) in out {
                if a == relay_info(1).0.addr {
                    r1_binds.push(now);
                    c.handle_bound(now, a, &answer(1, &d, 2));
                }
            }
        }
        assert!(
            r1_binds.len() >= 3,
            "{} binds to the new home in 6 s",
            r1_binds.len()
        );
    }

    #[test]
    fn a_relay_farther_than_the_bind_timeout_is_used() {
        let t0 = Instant::now();
        let mut c = client();
        let (info, _) = relay_info(0);
        c.set_relays(t0, vec![info.clone()]);
        let first = binds(&mut c, t0);
        // The first bind times out and is sent again before its answer comes back...
        let t1 = t0 + FIRST_BIND_TIMEOUT;
        assert_eq!(binds(&mut c, t1).len(), 1);
        // ...which still counts, 400 ms after the bind.
        let t2 = t0 + Duration::from_millis(400);
        let change = c.handle_bound(t2, info.addr, &answer(0, &first[0].1, 1));
        assert!(matches!(change, Some(HomeChange::Now(_))), "{change:?}");
        assert_eq!(c.latencies()[0].1, Some(Duration::from_millis(400)));
    }

    #[test]
    fn answers_must_match_the_pending_bind() {
        let t0 = Instant::now();
        let mut c = client();
        c.set_relays(t0, vec![relay_info(0).0]);
        let sent = binds(&mut c, t0);
        // From the wrong address, or forged with another relay's key: ignored.
        assert_eq!(
            c.handle_bound(t0, relay_info(1).0.addr, &answer(0, &sent[0].1, 1)),
            None
        );
        let (info0, _) = relay_info(0);
        let (_, other_secret) = relay_info(1);
        let node = bind_sender(&sent[0].1).unwrap();
        let forged = BindKey::derive(&other_secret, &info0.key, &node).bound(
            &Bound {
                timestamp: 1,
                session: 1,
                created: 1,
            },
            [0; 12],
        );
        assert_eq!(c.handle_bound(t0, info0.addr, &forged), None);
        assert!(c.home().is_none());
        assert!(c.seal(&PublicKey([9; 32]), &mut [0u8; 256], 10).is_none());
    }
}
