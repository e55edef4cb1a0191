//! The cheap gate in front of the coordinator's handshake: it decides, before any
//! Diffie-Hellman, which Hellos are worth opening. Modelled on WireGuard's:
//!
//! - mac1 (keyed with the coordinator's public key) must be right: junk costs one BLAKE2s;
//! - under load — many Hellos a second, or the opening queue filling up — a Hello must also
//!   carry mac2, made with a cookie for its source address; the others get a (smaller) cookie
//!   reply, at most a few per source address and second, so the source must receive to go on;
//! - each source address gets its own budget of Hellos opened, and all of them together a
//!   global one; a Hello whose ephemeral key was seen recently is a replay and dropped;
//! - Hellos in the older form without MACs are opened only when not under load, from a small
//!   budget of their own.
//!
//! Pure: time comes in as milliseconds, randomness from the caller.

use lanmesh_proto::channel::{hello_ephemeral, hello_form, hello_session, HelloForm};
use lanmesh_proto::cookie::{mac1_of, CookieMaker, Mac1Key, COOKIE_REPLY_LEN};
use lanmesh_proto::rate::{KeyedLimiter, Rate, TokenBucket, WindowCounter};
use lanmesh_proto::PublicKey;
use rand::RngCore;
use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

/// Hellos a second (that passed mac1) above which the coordinator is under load.
pub const LOAD_HELLOS_PER_SEC: u32 = 64;
/// Hellos being opened (queued for a worker) at most; past half of it, under load.
pub const MAX_IN_FLIGHT: usize = 128;
/// Hellos opened per source address.
const PER_SOURCE: Rate = Rate::new(10, 5);
/// Cookie replies per source address.
const COOKIES_PER_SOURCE: Rate = Rate::new(20, 10);
/// Cookie replies in all: replies to forged on-link sources wait for address resolution
/// that never comes (seconds), holding socket buffer space meanwhile; this keeps them from
/// crowding out real traffic.
const COOKIES: Rate = Rate::new(2000, 2000);
/// Hellos opened in all (each costs four Diffie-Hellmans).
const OPENED: Rate = Rate::new(200, 1000);
/// Older-form Hellos (no MACs) opened in all, when not under load.
const LEGACY: Rate = Rate::new(20, 20);
/// Source addresses with a budget remembered at most.
const MAX_SOURCES: usize = 8192;
/// Ephemeral keys remembered to catch replays.
const RECENT_EPHEMERALS: usize = 32_768;

/// What to do with a Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Open it (the Diffie-Hellmans).
    Open(HelloForm),
    /// Send this cookie reply to its source.
    Cookie(Box<[u8; COOKIE_REPLY_LEN]>),
    /// Drop it; why, for the debug log.
    Drop(&'static str),
}

/// A bounded set of recently seen ephemeral keys (their first 16 bytes).
struct RecentSet {
    set: HashSet<[u8; 16]>,
    order: VecDeque<[u8; 16]>,
}

impl RecentSet {
    fn contains(&self, k: &[u8; 16]) -> bool {
        self.set.contains(k)
    }

    fn insert(&mut self, k: [u8; 16]) {
        if self.set.insert(k) {
            self.order.push_back(k);
            if self.order.len() > RECENT_EPHEMERALS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

pub struct HelloGate {
    mac1: Mac1Key,
    cookies: CookieMaker,
    hellos: WindowCounter,
    per_source: KeyedLimiter<IpAddr>,
    cookie_replies: KeyedLimiter<IpAddr>,
    opened: TokenBucket,
    legacy: TokenBucket,
    cookies_sent: TokenBucket,
    recent: RecentSet,
    /// Hellos handed out to be opened and not yet back.
    pub in_flight: usize,
}

impl HelloGate {
    pub fn new(coordinator: &PublicKey, now_ms: u64, rng: &mut impl RngCore) -> HelloGate {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        HelloGate {
            mac1: Mac1Key::for_coordinator(coordinator),
            cookies: CookieMaker::new(coordinator, secret, now_ms),
            hellos: WindowCounter::default(),
            per_source: KeyedLimiter::new(PER_SOURCE, MAX_SOURCES),
            cookie_replies: KeyedLimiter::new(COOKIES_PER_SOURCE, MAX_SOURCES),
            opened: TokenBucket::full(OPENED, now_ms),
            legacy: TokenBucket::full(LEGACY, now_ms),
            cookies_sent: TokenBucket::full(COOKIES, now_ms),
            recent: RecentSet {
                set: HashSet::new(),
                order: VecDeque::new(),
            },
            in_flight: 0,
        }
    }

    /// Whether the coordinator is under load now.
    pub fn under_load(&mut self, now_ms: u64) -> bool {
        self.hellos.rate(now_ms) > LOAD_HELLOS_PER_SEC || self.in_flight > MAX_IN_FLIGHT / 2
    }

    /// Decides about a datagram that claims to be a Hello from `src`.
    pub fn check(
        &mut self,
        now_ms: u64,
        src: SocketAddr,
        datagram: &[u8],
        rng: &mut impl RngCore,
    ) -> Verdict {
        let Some(form) = hello_form(datagram) else {
            return Verdict::Drop("not a hello of this version");
        };
        if form == HelloForm::Macs && !self.mac1.verify(datagram) {
            return Verdict::Drop("hello with a bad mac1");
        }
        self.hellos.add(now_ms);
        let load = self.under_load(now_ms);
        // A Hello whose ephemeral key was opened before is a replay: nothing for it, not even
        // a cookie.
        let Some(ephemeral) = hello_ephemeral(datagram) else {
            return Verdict::Drop("not a hello");
        };
        let tag: [u8; 16] = ephemeral[..16].try_into().expect("16 bytes");
        if self.recent.contains(&tag) {
            return Verdict::Drop("replayed hello (ephemeral key seen before)");
        }
        match form {
            HelloForm::Legacy if load => return Verdict::Drop("older-form hello under load"),
            HelloForm::Legacy if !self.legacy.take(LEGACY, now_ms) => {
                return Verdict::Drop("older-form hello over its budget")
            }
            HelloForm::Macs if load && !self.cookies.verify_mac2(src, datagram) => {
                return self.cookie_reply(now_ms, src, datagram, rng);
            }
            _ => {}
        }
        if self.in_flight >= MAX_IN_FLIGHT {
            return Verdict::Drop("hello queue full");
        }
        if !self.per_source.take(&src.ip(), now_ms) {
            return Verdict::Drop("hello over its source address's budget");
        }
        if !self.opened.take(OPENED, now_ms) {
            return Verdict::Drop("hello over the global budget");
        }
        self.recent.insert(tag);
        Verdict::Open(form)
    }

    fn cookie_reply(
        &mut self,
        now_ms: u64,
        src: SocketAddr,
        datagram: &[u8],
        rng: &mut impl RngCore,
    ) -> Verdict {
        if !self.cookie_replies.take(&src.ip(), now_ms) {
            return Verdict::Drop("cookie replies to this address over their budget");
        }
        if !self.cookies_sent.take(COOKIES, now_ms) {
            return Verdict::Drop("cookie replies over the global budget");
        }
        if self.cookies.rotation_due(now_ms) {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            self.cookies.rotate(secret, now_ms);
        }
        let (Some(mac1), Some(session)) = (mac1_of(datagram), hello_session(datagram)) else {
            return Verdict::Drop("not a hello");
        };
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        Verdict::Cookie(Box::new(self.cookies.reply(src, session, &mac1, nonce)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanmesh_proto::channel::Initiator;
    use lanmesh_proto::cookie::CookieOpener;
    use lanmesh_proto::messages::{caps, Hello, Role};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn coord() -> ([u8; 32], PublicKey) {
        let s = [42u8; 32];
        (
            s,
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(s)).into(),
        )
    }

    fn hello(seed: u8, form: HelloForm) -> Initiator {
        let (_, pk) = coord();
        let h = Hello {
            timestamp: 1,
            session: seed as u32,
            name: "n".into(),
            join: None,
            local_endpoints: vec![],
            role: Role::Node,
            capabilities: caps::ALL,
        };
        Initiator::start(&[seed; 32], &pk, &h, form).unwrap()
    }

    fn src(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, i], 41641))
    }

    #[test]
    fn junk_and_bad_macs_cost_nothing_more() {
        let (_, pk) = coord();
        let mut rng = StdRng::seed_from_u64(1);
        let mut g = HelloGate::new(&pk, 0, &mut rng);
        let mut junk = hello(1, HelloForm::Macs).datagram().to_vec();
        junk[100] ^= 1;
        assert_eq!(
            g.check(0, src(1), &junk, &mut rng),
            Verdict::Drop("hello with a bad mac1")
        );
        assert_eq!(
            g.check(0, src(1), b"LM\x01\x0c", &mut rng),
            Verdict::Drop("not a hello of this version")
        );
        // Neither counted towards load.
        assert!(!g.under_load(0));
    }

    #[test]
    fn replays_and_per_source_floods_are_dropped() {
        let (_, pk) = coord();
        let mut rng = StdRng::seed_from_u64(1);
        let mut g = HelloGate::new(&pk, 0, &mut rng);
        let h = hello(1, HelloForm::Macs);
        assert_eq!(
            g.check(0, src(1), h.datagram(), &mut rng),
            Verdict::Open(HelloForm::Macs)
        );
        assert!(matches!(
            g.check(1, src(2), h.datagram(), &mut rng),
            Verdict::Drop(why) if why.contains("replayed")
        ));
        // One source gets its burst, then its rate.
        let opened = (10..40)
            .filter(|&i| {
                g.check(2, src(3), hello(i, HelloForm::Macs).datagram(), &mut rng)
                    == Verdict::Open(HelloForm::Macs)
            })
            .count();
        assert_eq!(opened, 10);
    }

    #[test]
    fn under_load_only_hellos_with_a_cookie_for_their_address_are_opened() {
        let (_, pk) = coord();
        let mut rng = StdRng::seed_from_u64(1);
        let mut g = HelloGate::new(&pk, 0, &mut rng);
        // A flood of replays of one valid Hello puts it under load.
        let recorded = hello(1, HelloForm::Macs);
        for _ in 0..=LOAD_HELLOS_PER_SEC {
            g.check(0, src(9), recorded.datagram(), &mut rng);
        }
        assert!(g.under_load(0));
        // An honest node: its first Hello gets a cookie reply, smaller than the Hello.
        let mut honest = hello(2, HelloForm::Macs);
        let reply = match g.check(10, src(1), honest.datagram(), &mut rng) {
            Verdict::Cookie(r) => r,
            v => panic!("{v:?}"),
        };
        assert!(reply.len() < honest.datagram().len());
        let cookie = CookieOpener::for_coordinator(&pk)
            .open(&reply[..], 2, &honest.mac1().unwrap())
            .unwrap();
        honest.apply_cookie(&cookie);
        assert_eq!(
            g.check(20, src(1), honest.datagram(), &mut rng),
            Verdict::Open(HelloForm::Macs)
        );
        // The same cookie from another address is worth nothing.
        let mut other = hello(3, HelloForm::Macs);
        other.apply_cookie(&cookie);
        assert!(matches!(
            g.check(30, src(2), other.datagram(), &mut rng),
            Verdict::Cookie(_)
        ));
        // Older-form Hellos are not opened under load.
        assert!(matches!(
            g.check(40, src(1), hello(4, HelloForm::Legacy).datagram(), &mut rng),
            Verdict::Drop(_)
        ));
        // Cookie replies to one address are limited.
        let cookies = (50..100)
            .filter(|&i| {
                matches!(
                    g.check(50, src(9), hello(i, HelloForm::Macs).datagram(), &mut rng),
                    Verdict::Cookie(_)
                )
            })
            .count();
        assert!(cookies <= 20, "{cookies}");
    }

    #[test]
    fn older_form_hellos_are_opened_from_their_own_budget() {
        let (_, pk) = coord();
        let mut rng = StdRng::seed_from_u64(1);
        let mut g = HelloGate::new(&pk, 0, &mut rng);
        assert_eq!(
            g.check(0, src(1), hello(1, HelloForm::Legacy).datagram(), &mut rng),
            Verdict::Open(HelloForm::Legacy)
        );
    }
}
