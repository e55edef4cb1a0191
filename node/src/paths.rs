//! Finding and keeping a direct path to one peer, as a sans-IO state machine.
//!
//! Candidates come from the coordinator (the peer's public endpoint and its interface
//! addresses) and from the peer itself (the source of its probes: a peer-reflexive candidate,
//! which is how a symmetric NAT gets through to a cone NAT). A punch sends sealed pings to every
//! candidate on a short schedule; each pong confirms the path it answers. The best path is a LAN
//! one if any answered, else the lowest round trip. Authenticated traffic keeps a path alive
//! and moves it when the peer roams; traffic that goes unanswered brings on a new punch.
//!
//! Candidates are addresses someone else chose, so the finder is careful with them: interface
//! (LAN) candidates must be plausible and are pinged only in the first rounds of a punch (a LAN
//! answers in milliseconds), peer-reflexive ones come only from fresh pings, and every ping says
//! whether its address is verified, so the mesh can hold pings to unverified addresses to a
//! per-address budget.

use ipnet::Ipv4Net;
use lanmesh_proto::messages::{plausible_local, plausible_public, Candidates};
use lanmesh_proto::probe::Transaction;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// When pings go out in a punch, from its start. Dense at first (both sides start at about the
/// same time, and the first pings mostly open our own NAT), sparser later.
const ROUNDS_MS: [u64; 10] = [0, 100, 200, 400, 600, 900, 1300, 1800, 2400, 3000];
/// LAN candidates are pinged in this many first rounds of a punch only.
const LOCAL_ROUNDS: usize = 3;
/// LAN candidates kept per peer.
const MAX_LOCAL: usize = 4;
/// Peer-reflexive candidates kept per peer.
const MAX_PEER_REFLEXIVE: usize = 4;
/// Pings remembered while waiting for their pongs.
const OUTSTANDING: usize = 64;
/// Sent data going unanswered this long makes the path suspect.
const UNANSWERED: Duration = Duration::from_secs(3);
/// At most one coordinated punch per peer this often.
const PUNCH_REQUEST_INTERVAL: Duration = Duration::from_secs(3);
/// The path moves to a new source of authenticated traffic once the old one has been quiet
/// this long.
const ROAM_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateKind {
    /// An interface address of the peer: reachable only from the same LAN.
    Local,
    /// The peer's public endpoint as the coordinator sees it.
    Public,
    /// Where the peer's own probes or packets came from.
    PeerReflexive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    addr: SocketAddr,
    kind: CandidateKind,
}

/// A path that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    pub addr: SocketAddr,
    pub kind: CandidateKind,
    pub rtt: Duration,
}

impl Confirmed {
    fn is_lan(&self) -> bool {
        self.kind == CandidateKind::Local
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathAction {
    /// Send a ping with this transaction to this address. `verified`: the address is known to
    /// be the peer's (its public endpoint as the coordinator validated it, or a path that
    /// answered); unverified ones may be anybody's and get a small budget.
    Ping {
        addr: SocketAddr,
        tx: Transaction,
        verified: bool,
    },
    /// Ask the coordinator to have both sides punch now.
    RequestPunch,
}

/// What a pong did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Won {
    pub path: Confirmed,
    /// Time since the punch started.
    pub after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Punch {
    started: Instant,
    round: usize,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    tx: Transaction,
    addr: SocketAddr,
    sent_at: Instant,
}

pub struct PathFinder {
    candidates: Vec<Candidate>,
    best: Option<Confirmed>,
    punch: Option<Punch>,
    outstanding: [Option<Outstanding>; OUTSTANDING],
    next_slot: usize,
    tx_seed: [u8; 8],
    tx_counter: u32,
    last_rx: Option<Instant>,
    last_rx_from_best: Option<Instant>,
    last_data_tx: Option<Instant>,
    last_punch_request: Option<Instant>,
    /// What [`PathFinder::poll_action`] hands out.
    actions: std::collections::VecDeque<PathAction>,
    /// Traffic is waiting and the peer should punch with us: ask the coordinator.
    punch_wanted: bool,
    /// The mesh network (no candidate lies inside it).
    mesh: Ipv4Net,
}

impl PathFinder {
    pub fn new(tx_seed: [u8; 8], mesh: Ipv4Net) -> PathFinder {
        PathFinder {
            candidates: Vec::new(),
            best: None,
            punch: None,
            outstanding: [None; OUTSTANDING],
            next_slot: 0,
            tx_seed,
            tx_counter: 0,
            last_rx: None,
            last_rx_from_best: None,
            last_data_tx: None,
            last_punch_request: None,
            actions: std::collections::VecDeque::new(),
            punch_wanted: false,
            mesh,
        }
    }

    pub fn best(&self) -> Option<Confirmed> {
        self.best
    }

    pub fn last_rx(&self) -> Option<Instant> {
        self.last_rx
    }

    #[cfg(test)]
    pub fn is_punching(&self) -> bool {
        self.punch.is_some()
    }

    /// The peer's candidates as the coordinator lists them (peer-reflexive ones are kept).
    /// Implausible ones are left out (see [`plausible_local`]): an older coordinator does not
    /// check them.
    pub fn set_candidates(&mut self, c: &Candidates) {
        self.candidates
            .retain(|c| c.kind == CandidateKind::PeerReflexive);
        let mesh = self.mesh;
        let public = c.public.filter(|a| plausible_public(a, mesh));
        let local = c
            .local
            .iter()
            .filter(|a| plausible_local(a, mesh, public.map(|p| p.ip())))
            .take(MAX_LOCAL);
        let listed = local
            .map(|a| (*a, CandidateKind::Local))
            .chain(public.map(|a| (a, CandidateKind::Public)));
        for (addr, kind) in listed {
            self.candidates.retain(|c| c.addr != addr);
            self.candidates.push(Candidate { addr, kind });
        }
    }

    /// The address to try WireGuard on before any path is confirmed.
    pub fn fallback(&self) -> Option<SocketAddr> {
        self.candidates
            .iter()
            .find(|c| c.kind == CandidateKind::Public)
            .or(self.candidates.first())
            .map(|c| c.addr)
    }

    fn kind_of(&self, addr: SocketAddr) -> Option<CandidateKind> {
        self.candidates
            .iter()
            .find(|c| c.addr == addr)
            .map(|c| c.kind)
    }

    /// Starts (or restarts) probing every candidate.
    pub fn start_punch(&mut self, now: Instant) {
        self.punch = Some(Punch {
            started: now,
            round: 0,
        });
    }

    /// Asks for a coordinated punch at the next [`PathFinder::handle_timeout`] (traffic is
    /// waiting for a peer that was idle: both sides should punch at once).
    pub fn want_coordinated_punch(&mut self, now: Instant) {
        self.last_data_tx = Some(now);
        if self.best.is_none() {
            self.punch_wanted = true;
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let punch = self
            .punch
            .map(|p| p.started + Duration::from_millis(ROUNDS_MS[p.round]));
        let wanted = self
            .punch_wanted
            .then(|| {
                self.last_punch_request
                    .map(|t| t + PUNCH_REQUEST_INTERVAL)
                    .or(self.last_data_tx)
            })
            .flatten();
        [punch, wanted].into_iter().flatten().min()
    }

    /// Whether pings to `c` go to an address known to be the peer's.
    fn verified(&self, c: &Candidate) -> bool {
        c.kind == CandidateKind::Public || self.best.is_some_and(|b| b.addr == c.addr)
    }

    /// What the path finder wants done next (pings, a coordinated punch), after
    /// [`PathFinder::handle_timeout`].
    pub fn poll_action(&mut self) -> Option<PathAction> {
        self.actions.pop_front()
    }

    /// Queues due pings and checks the path's health.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(mut p) = self.punch {
            let mut due = false;
            while p.round < ROUNDS_MS.len()
                && now >= p.started + Duration::from_millis(ROUNDS_MS[p.round])
            {
                p.round += 1;
                due = true;
            }
            if due {
                for i in 0..self.candidates.len() {
                    let c = self.candidates[i];
                    if c.kind == CandidateKind::Local && p.round > LOCAL_ROUNDS {
                        continue;
                    }
                    let verified = self.verified(&c);
                    let tx = self.remember(c.addr, now);
                    self.actions.push_back(PathAction::Ping {
                        addr: c.addr,
                        tx,
                        verified,
                    });
                }
            }
            if p.round < ROUNDS_MS.len() {
                self.punch = Some(p);
            } else {
                self.punch = None;
                // A whole punch went by without a word from the path in use: it is gone.
                if self.best.is_some() && self.last_rx_from_best.is_none_or(|t| t < p.started) {
                    self.best = None;
                }
            }
        }
        if self.punch_wanted && !self.waits_for_a_path(now) {
            // Traffic stopped, or a path answered first (the peer's punch, or a datagram the
            // driver handled before this timeout): the wish is void. Left set, it kept
            // `poll_timeout` in the past — a busy loop (found by the simulator once its
            // drivers ran timers a little late, as real ones do).
            self.punch_wanted = false;
        }
        if self.needs_punch(now) {
            self.punch_wanted = false;
            self.last_punch_request = Some(now);
            self.actions.push_back(PathAction::RequestPunch);
            self.start_punch(now);
            self.handle_timeout(now);
        }
    }

    /// Whether traffic is waiting on a path that does not exist or stopped answering.
    fn waits_for_a_path(&self, now: Instant) -> bool {
        let sending = self
            .last_data_tx
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        let unanswered = match (self.best, self.last_rx) {
            (None, _) => true,
            (Some(_), None) => true,
            (Some(_), Some(rx)) => now.saturating_duration_since(rx) >= UNANSWERED,
        };
        sending && unanswered
    }

    /// Whether to ask the coordinator for a punch now.
    fn needs_punch(&self, now: Instant) -> bool {
        let may_ask = self
            .last_punch_request
            .is_none_or(|t| now.saturating_duration_since(t) >= PUNCH_REQUEST_INTERVAL);
        self.waits_for_a_path(now) && may_ask && (self.punch.is_none() || self.punch_wanted)
    }

    fn remember(&mut self, addr: SocketAddr, now: Instant) -> Transaction {
        self.tx_counter = self.tx_counter.wrapping_add(1);
        let mut tx = [0u8; 12];
        tx[..8].copy_from_slice(&self.tx_seed);
        tx[8..].copy_from_slice(&self.tx_counter.to_le_bytes());
        self.outstanding[self.next_slot] = Some(Outstanding {
            tx,
            addr,
            sent_at: now,
        });
        self.next_slot = (self.next_slot + 1) % OUTSTANDING;
        tx
    }

    /// When data for this peer was last sent (a packet from the TUN).
    pub fn last_data_tx(&self) -> Option<Instant> {
        self.last_data_tx
    }

    /// Data for this peer was sent (a packet from the TUN).
    pub fn on_data_tx(&mut self, now: Instant) {
        self.last_data_tx = Some(now);
    }

    /// The peer pinged us from `src` (a fresh ping: replays never get here). A new source
    /// becomes a peer-reflexive candidate and, with no path yet, is probed at once.
    pub fn on_ping(&mut self, now: Instant, src: SocketAddr) {
        if self.kind_of(src).is_none() {
            if !plausible_public(&src, self.mesh) {
                return;
            }
            let reflexive = self
                .candidates
                .iter()
                .filter(|c| c.kind == CandidateKind::PeerReflexive)
                .count();
            if reflexive >= MAX_PEER_REFLEXIVE {
                if let Some(i) = self
                    .candidates
                    .iter()
                    .position(|c| c.kind == CandidateKind::PeerReflexive)
                {
                    self.candidates.remove(i);
                }
            }
            self.candidates.push(Candidate {
                addr: src,
                kind: CandidateKind::PeerReflexive,
            });
            if self.best.is_none() || self.punch.is_some() {
                self.start_punch(now);
            }
        } else if self.best.is_none() && self.punch.is_none() {
            // The peer is punching and we are not: join in.
            self.start_punch(now);
        }
    }

    /// A pong came from `src` for transaction `tx`. Returns the path if it became the best
    /// (WireGuard should use it from now on).
    pub fn on_pong(&mut self, now: Instant, src: SocketAddr, tx: Transaction) -> Option<Won> {
        let slot = self
            .outstanding
            .iter()
            .position(|o| o.is_some_and(|o| o.tx == tx && o.addr == src))?;
        let o = self.outstanding[slot].take()?;
        let rtt = now.saturating_duration_since(o.sent_at);
        let kind = self.kind_of(src).unwrap_or(CandidateKind::PeerReflexive);
        let path = Confirmed {
            addr: src,
            kind,
            rtt,
        };
        self.last_rx = Some(now);
        let better = match self.best {
            None => true,
            Some(b) if b.addr == src => {
                self.best = Some(path);
                self.last_rx_from_best = Some(now);
                return None;
            }
            Some(b) => {
                (path.is_lan() && !b.is_lan())
                    || (path.is_lan() == b.is_lan() && rtt * 10 < b.rtt * 7)
                    // The old path stopped answering.
                    || self
                        .last_rx_from_best
                        .is_none_or(|t| now.saturating_duration_since(t) >= UNANSWERED)
            }
        };
        if !better {
            return None;
        }
        let after = self
            .punch
            .map(|p| now.saturating_duration_since(p.started))
            .unwrap_or(rtt);
        self.best = Some(path);
        self.last_rx_from_best = Some(now);
        // A LAN path cannot be beaten: stop probing. Otherwise a LAN candidate may still answer.
        let lan_pending = self
            .candidates
            .iter()
            .any(|c| c.kind == CandidateKind::Local);
        if path.is_lan() || !lan_pending {
            self.punch = None;
        }
        Some(Won { path, after })
    }

    /// An authenticated WireGuard packet came from `src`. The path follows a peer that moved,
    /// once its old address has gone quiet; returns the new path when it does.
    pub fn on_authenticated_rx(&mut self, now: Instant, src: SocketAddr) -> Option<Won> {
        self.last_rx = Some(now);
        let rtt = match self.best {
            Some(b) if b.addr == src => {
                self.last_rx_from_best = Some(now);
                return None;
            }
            Some(b) => {
                let quiet = self
                    .last_rx_from_best
                    .is_none_or(|t| now.saturating_duration_since(t) >= ROAM_AFTER);
                if !quiet {
                    return None;
                }
                b.rtt
            }
            None => Duration::ZERO,
        };
        let kind = self.kind_of(src).unwrap_or(CandidateKind::PeerReflexive);
        let path = Confirmed {
            addr: src,
            kind,
            rtt,
        };
        let after = self
            .punch
            .map_or(Duration::ZERO, |p| now.saturating_duration_since(p.started));
        self.best = Some(path);
        self.last_rx_from_best = Some(now);
        self.punch = None;
        Some(Won { path, after })
    }

    /// Our own network changed (our public endpoint moved): confirmed paths may be gone.
    pub fn network_changed(&mut self, now: Instant) {
        self.start_punch(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn finder() -> PathFinder {
        let mut f = PathFinder::new([7; 8], "100.64.0.0/10".parse().unwrap());
        f.set_candidates(&Candidates {
            public: Some(addr("198.51.100.2:41641")),
            local: vec![addr("10.1.0.2:41641")],
        });
        f
    }

    fn run(f: &mut PathFinder, now: Instant) -> Vec<PathAction> {
        f.handle_timeout(now);
        std::iter::from_fn(|| f.poll_action()).collect()
    }

    fn pings(actions: &[PathAction]) -> Vec<(SocketAddr, Transaction)> {
        actions
            .iter()
            .filter_map(|a| match a {
                PathAction::Ping { addr, tx, .. } => Some((*addr, *tx)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_wished_punch_that_a_path_made_void_is_dropped_not_kept_due() {
        let t0 = Instant::now();
        let mut f = finder();
        // Traffic for an idle peer wants a coordinated punch...
        f.want_coordinated_punch(t0);
        // ...but the peer's own punch found the path before our timeout ran.
        let public = addr("198.51.100.2:41641");
        assert!(f.on_authenticated_rx(t0, public).is_some());
        let now = t0 + Duration::from_millis(20);
        let actions = run(&mut f, now);
        assert!(!actions.contains(&PathAction::RequestPunch));
        assert!(
            f.poll_timeout().is_none_or(|t| t > now),
            "a timeout in the past: the driver would spin"
        );
    }

    #[test]
    fn a_punch_pings_every_candidate_on_schedule_then_stops() {
        let t0 = Instant::now();
        let mut f = finder();
        f.start_punch(t0);
        let mut times = Vec::new();
        while let Some(at) = f.poll_timeout() {
            let actions = run(&mut f, at);
            let sent = pings(&actions);
            // The LAN candidate in the first rounds only, the public one in all.
            let expected = if times.len() < LOCAL_ROUNDS { 2 } else { 1 };
            assert_eq!(sent.len(), expected, "round {}", times.len());
            // Only the public endpoint (validated by the coordinator) counts as verified.
            for a in &actions {
                if let PathAction::Ping { addr, verified, .. } = a {
                    assert_eq!(*verified, *addr == addr_of("198.51.100.2:41641"));
                }
            }
            times.push((at - t0).as_millis() as u64);
        }
        assert_eq!(times, ROUNDS_MS);
        assert!(!f.is_punching());
        assert_eq!(f.best(), None);
    }

    fn addr_of(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn implausible_candidates_are_left_out() {
        let mut f = PathFinder::new([1; 8], "100.64.0.0/10".parse().unwrap());
        f.set_candidates(&Candidates {
            public: Some(addr_of("198.51.100.2:41641")),
            local: vec![
                addr_of("10.0.0.2:41641"),
                addr_of("127.0.0.1:41641"),
                addr_of("100.64.0.7:41641"),
                addr_of("192.0.2.1:41641"),
                addr_of("224.0.0.5:41641"),
                addr_of("10.0.0.3:0"),
            ],
        });
        let mut listed: Vec<SocketAddr> = f.candidates.iter().map(|c| c.addr).collect();
        listed.sort();
        assert_eq!(
            listed,
            vec![addr_of("10.0.0.2:41641"), addr_of("198.51.100.2:41641")]
        );
        // A public candidate inside the mesh network is no candidate either.
        f.set_candidates(&Candidates {
            public: Some(addr_of("100.64.0.9:41641")),
            local: vec![],
        });
        assert!(f.candidates.is_empty());
    }

    #[test]
    fn the_lan_path_wins_over_a_faster_public_one() {
        let t0 = Instant::now();
        let mut f = finder();
        f.start_punch(t0);
        let sent = pings(&run(&mut f, t0));
        let (public, lan) = (sent[1], sent[0]);
        assert_eq!(lan.0, addr("10.1.0.2:41641"));
        // The public path answers first: it is used, but probing goes on for the LAN.
        let t1 = t0 + Duration::from_millis(5);
        let won = f.on_pong(t1, public.0, public.1).unwrap();
        assert_eq!(won.path.kind, CandidateKind::Public);
        assert_eq!(won.after, Duration::from_millis(5));
        assert!(f.is_punching());
        // The LAN answers later (slower, even): it still wins, and probing ends.
        let t2 = t0 + Duration::from_millis(40);
        let won = f.on_pong(t2, lan.0, lan.1).unwrap();
        assert_eq!(won.path.addr, lan.0);
        assert_eq!(won.path.kind, CandidateKind::Local);
        assert!(!f.is_punching());
        // A late public pong does not take over from the LAN.
        let sent = pings(&{
            f.start_punch(t2);
            run(&mut f, t2)
        });
        assert_eq!(f.on_pong(t2, sent[1].0, sent[1].1), None);
        assert_eq!(f.best().unwrap().addr, lan.0);
    }

    #[test]
    fn pongs_must_match_a_ping_and_its_address() {
        let t0 = Instant::now();
        let mut f = finder();
        f.start_punch(t0);
        let sent = pings(&run(&mut f, t0));
        assert_eq!(f.on_pong(t0, sent[1].0, [0; 12]), None);
        assert_eq!(f.on_pong(t0, addr("203.0.113.66:1"), sent[1].1), None);
        assert!(f.on_pong(t0, sent[1].0, sent[1].1).is_some());
        // The same pong again is spent.
        assert_eq!(f.on_pong(t0, sent[1].0, sent[1].1), None);
    }

    #[test]
    fn a_ping_from_a_new_address_becomes_a_candidate() {
        let t0 = Instant::now();
        let mut f = finder();
        let nat = addr("198.51.100.2:60001"); // a symmetric NAT's port for us
        f.on_ping(t0, nat);
        let sent = pings(&run(&mut f, t0));
        assert!(sent.iter().any(|(a, _)| *a == nat), "{sent:?}");
        let (_, tx) = sent.iter().find(|(a, _)| *a == nat).unwrap();
        let won = f.on_pong(t0, nat, *tx).unwrap();
        assert_eq!(won.path.kind, CandidateKind::PeerReflexive);
        // Only a few such candidates are kept.
        for port in 1..20 {
            f.on_ping(t0, SocketAddr::from(([198, 51, 100, 9], port)));
        }
        let reflexive = f
            .candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::PeerReflexive)
            .count();
        assert_eq!(reflexive, MAX_PEER_REFLEXIVE);
    }

    #[test]
    fn unanswered_traffic_asks_for_a_punch_at_most_every_three_seconds() {
        let t0 = Instant::now();
        let mut f = finder();
        // No path and data waiting: ask at once.
        f.on_data_tx(t0);
        let actions = run(&mut f, t0);
        assert!(actions.contains(&PathAction::RequestPunch));
        assert!(f.is_punching());
        // Let that punch run out without answers, keep sending.
        let mut requests = 0;
        let mut now = t0;
        for _ in 0..100 {
            now += Duration::from_millis(100);
            f.on_data_tx(now);
            requests += run(&mut f, now)
                .iter()
                .filter(|a| **a == PathAction::RequestPunch)
                .count();
        }
        // 10 s of traffic: requests at ~3.0 s, 6.0 s and 9.0 s (after each punch ended).
        assert_eq!(requests, 3);
        // Idle peers never ask.
        let mut idle = finder();
        assert!(run(&mut idle, t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_working_path_that_goes_silent_is_punched_again() {
        let t0 = Instant::now();
        let mut f = finder();
        f.start_punch(t0);
        let sent = pings(&run(&mut f, t0));
        f.on_pong(t0, sent[0].0, sent[0].1).unwrap();
        assert!(!f.is_punching());
        // Traffic flows both ways: no punch.
        let t1 = t0 + Duration::from_secs(10);
        f.on_authenticated_rx(t1, sent[0].0);
        f.on_data_tx(t1);
        assert!(run(&mut f, t1).is_empty());
        // We keep sending, nothing comes back for 3 s: punch.
        let t2 = t1 + Duration::from_secs(3);
        f.on_data_tx(t2);
        assert!(run(&mut f, t2).contains(&PathAction::RequestPunch));
    }

    #[test]
    fn roaming_follows_a_peer_only_once_its_old_address_is_quiet() {
        let t0 = Instant::now();
        let mut f = finder();
        let old = addr("198.51.100.2:41641");
        let new = addr("198.51.100.2:50000");
        let mut moved =
            |at: Duration, src| f.on_authenticated_rx(t0 + at, src).map(|w| w.path.addr);
        assert_eq!(moved(Duration::ZERO, old), Some(old));
        assert_eq!(moved(Duration::from_secs(1), new), None);
        assert_eq!(moved(Duration::from_millis(1500), old), None);
        assert_eq!(moved(Duration::from_millis(3600), new), Some(new));
        assert_eq!(f.best().unwrap().addr, new);
    }

    #[test]
    fn our_endpoint_changing_reprobes_a_confirmed_path() {
        let t0 = Instant::now();
        let mut f = finder();
        f.start_punch(t0);
        let sent = pings(&run(&mut f, t0));
        f.on_pong(t0, sent[0].0, sent[0].1).unwrap();
        assert!(!f.is_punching());
        let t1 = t0 + Duration::from_secs(60);
        f.network_changed(t1);
        assert_eq!(f.poll_timeout(), Some(t1));
        assert_eq!(pings(&run(&mut f, t1)).len(), 2);
    }

    #[test]
    fn a_path_silent_through_a_whole_punch_is_given_up() {
        let t0 = Instant::now();
        let mut f = finder();
        f.start_punch(t0);
        let sent = pings(&run(&mut f, t0));
        f.on_pong(t0, sent[1].0, sent[1].1).unwrap();
        // Later the path dies: traffic goes unanswered, a punch runs, nothing answers.
        let t1 = t0 + Duration::from_secs(30);
        f.on_data_tx(t1);
        assert!(run(&mut f, t1).contains(&PathAction::RequestPunch));
        while let Some(at) = f.poll_timeout() {
            run(&mut f, at);
        }
        assert_eq!(f.best(), None);
        // Whereas a path that answers the punch stays.
        let mut g = finder();
        g.start_punch(t0);
        let sent = pings(&run(&mut g, t0));
        g.on_pong(t0, sent[1].0, sent[1].1).unwrap();
        g.network_changed(t1);
        let again = pings(&run(&mut g, t1));
        let to_best = again.iter().find(|(a, _)| *a == sent[1].0).unwrap();
        g.on_pong(t1, to_best.0, to_best.1);
        while let Some(at) = g.poll_timeout() {
            run(&mut g, at);
        }
        assert_eq!(g.best().map(|b| b.addr), Some(sent[1].0));
    }

    #[test]
    fn new_candidates_replace_old_ones_but_keep_peer_reflexive() {
        let t0 = Instant::now();
        let mut f = finder();
        f.on_ping(t0, addr("198.51.100.2:60001"));
        f.set_candidates(&Candidates {
            public: Some(addr("198.51.100.3:41641")),
            local: vec![],
        });
        let mut listed: Vec<SocketAddr> = f.candidates.iter().map(|c| c.addr).collect();
        listed.sort();
        assert_eq!(
            listed,
            vec![addr("198.51.100.2:60001"), addr("198.51.100.3:41641")]
        );
        assert_eq!(f.fallback(), Some(addr("198.51.100.3:41641")));
    }
}
