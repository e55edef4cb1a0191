//! The virtual clock: it jumps to the next thing that happens (a datagram arriving, a core's
//! timeout) and runs everything due then.

use super::{HostId, Sim, CLOCK_FLOOR};

/// How late a driver may run a due timeout (see `Sim::timer_due`).
const TIMER_LATENESS: Duration = Duration::from_millis(30);
use lanmesh_node::mesh::Path;
use std::cmp::Reverse;
use std::time::{Duration, Instant};

impl Sim {
    /// When host `h`'s driver runs its core's timeout: a little after the core asked (up to
    /// [`TIMER_LATENESS`], drawn from the seed), as a busy driver does — inputs that arrive
    /// meanwhile are handled first, so timers and datagrams race as they do for real.
    fn timer_due(&self, h: HostId) -> Option<Instant> {
        let host = &self.hosts[h];
        if !host.up {
            return None;
        }
        let at = host.machine.poll_timeout()?;
        let mut x = (h as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (at.saturating_duration_since(self.base).as_nanos() as u64)
            ^ self.seed;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let late = Duration::from_nanos(x % (TIMER_LATENESS.as_nanos() as u64 + 1));
        Some(at + late)
    }

    /// When something happens next.
    pub(super) fn next_event(&self) -> Option<Instant> {
        let flight = self.queue.peek().map(|Reverse((at, _))| *at);
        (0..self.hosts.len())
            .filter_map(|h| self.timer_due(h))
            .chain(flight)
            .min()
    }

    /// Runs the world until `deadline` (simulated).
    pub fn run_until(&mut self, deadline: Instant) {
        self.run_until_true(deadline, |_| false);
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs until `done` holds (checked after every step) or `deadline`; whether it held.
    pub fn run_until_true(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> bool {
        self.drain();
        let mut same_instant = 0u32;
        loop {
            if done(self) {
                return true;
            }
            let Some(next) = self.next_event().filter(|t| *t <= deadline) else {
                self.now = self.now.max(deadline);
                CLOCK_FLOOR.with(|f| f.set(Some(self.now)));
                return done(self);
            };
            if next <= self.now {
                same_instant += 1;
                assert!(
                    same_instant < 100_000,
                    "livelock at {:?}: something asks to run again at once, forever ({:?})",
                    self.elapsed(),
                    self.violations
                );
            } else {
                same_instant = 0;
                self.now = next;
                CLOCK_FLOOR.with(|f| f.set(Some(next)));
            }
            while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
                if at > self.now {
                    break;
                }
                self.queue.pop();
                let f = self.flights.remove(&seq).expect("scheduled");
                self.route(f);
            }
            for h in 0..self.hosts.len() {
                if self.timer_due(h).is_some_and(|t| t <= self.now) {
                    let now = self.now;
                    let host = &mut self.hosts[h];
                    host.machine.handle_timeout(now);
                    self.wakes[h] += 1;
                    // A core that keeps wanting to run again at once after its timeout ran
                    // keeps its driver spinning: a busy loop on a real machine. (Once is fine:
                    // handling a timeout may make something due at once.)
                    let streak = &mut self.busy_streak[h];
                    if host.machine.poll_timeout().is_some_and(|t| t <= now) {
                        *streak += 1;
                        if *streak == 3
                            && !self.violations.iter().any(|v| v.starts_with(&host.name))
                        {
                            let what = format!(
                                "{} asks to run again at once, again and again (a busy loop), at {:?}",
                                host.name,
                                now - self.base
                            );
                            self.violations.push(what);
                        }
                    } else {
                        *streak = 0;
                    }
                }
            }
            self.drain();
        }
    }

    /// Runs until every node in `nodes` has a mesh IP and knows every other one from the
    /// peer map; the simulated time it took.
    pub fn join_all(&mut self, nodes: &[HostId], limit: Duration) -> Duration {
        let start = self.now;
        let ok = self.run_until_true(start + limit, |s| {
            nodes.iter().all(|&a| {
                s.mesh_ip(a).is_some() && nodes.iter().all(|&b| a == b || s.peer(a, b).is_some())
            })
        });
        assert!(
            ok,
            "not every node registered and saw the others within {limit:?}"
        );
        self.now - start
    }

    /// Runs until `a` reaches `b` by `path` (and `b` reaches `a` the same way); the time it
    /// took, or `None`.
    pub fn until_path(
        &mut self,
        a: HostId,
        b: HostId,
        path: Path,
        limit: Duration,
    ) -> Option<Duration> {
        let start = self.now;
        self.run_until_true(start + limit, |s| {
            s.path(a, b) == path && s.path(b, a) == path
        })
        .then(|| self.now - start)
    }
}
