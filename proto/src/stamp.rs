//! Timestamps that only grow: what Hellos, relay binds and probe counters carry so a receiver can
//! refuse replays. They follow the wall clock (nanoseconds since the Unix epoch, passed in) but
//! never go back, not even across a restart when the daemon persists a floor
//! ([`StampFloor`]): a node whose clock went back keeps being accepted.

use std::time::Duration;

/// A source of strictly growing stamps.
#[derive(Debug, Clone)]
pub struct Stamps {
    last: u64,
}

impl Stamps {
    /// Stamps start above `floor` (from [`StampFloor::start`]).
    pub fn new(floor: u64) -> Stamps {
        Stamps { last: floor }
    }

    /// The next stamp at wall-clock time `wall_ns`.
    pub fn next(&mut self, wall_ns: u64) -> u64 {
        self.last = wall_ns.max(self.last.saturating_add(1));
        self.last
    }
}

/// The wall clock as a function of the monotonic one: sampled once, then it runs with the
/// monotonic clock (never backwards), so sans-IO cores that only get `now: Instant` can still
/// make wall-clock-like stamps.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    epoch: std::time::Instant,
    epoch_ns: u64,
}

impl WallClock {
    pub fn new(epoch: std::time::Instant, epoch_ns: u64) -> WallClock {
        WallClock { epoch, epoch_ns }
    }

    /// Nanoseconds since the Unix epoch at `now`.
    pub fn ns(&self, now: std::time::Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.epoch_ns.saturating_add(since)
    }
}

/// How far ahead of the clock a persisted floor reaches: stamps issued until the next
/// renewal stay below it.
pub const LEASE: Duration = Duration::from_secs(3600);
/// A floor is renewed once the clock is this close to it.
const RENEW_BEFORE: Duration = Duration::from_secs(50 * 60);

/// The floor a daemon keeps on disk so its stamps grow across restarts, even when the clock went
/// back meanwhile. Pure: the daemon reads and writes the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StampFloor {
    /// The value on disk: no stamp issued so far is above it (while the clock runs forward).
    pub persisted: u64,
}

impl StampFloor {
    /// At start: stamps begin at the larger of the clock and the persisted floor, and the new
    /// floor to persist reaches [`LEASE`] beyond that. Returns (start, floor to write).
    pub fn start(persisted: u64, wall_ns: u64) -> (u64, StampFloor) {
        let start = persisted.max(wall_ns);
        let floor = StampFloor {
            persisted: start.saturating_add(LEASE.as_nanos() as u64),
        };
        (start, floor)
    }

    /// The floor to write now, if the clock came close to the persisted one.
    pub fn renew(&mut self, wall_ns: u64) -> Option<u64> {
        if wall_ns.saturating_add(RENEW_BEFORE.as_nanos() as u64) < self.persisted {
            return None;
        }
        self.persisted = wall_ns.saturating_add(LEASE.as_nanos() as u64);
        Some(self.persisted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn stamps_grow_even_when_the_clock_goes_back() {
        let mut s = Stamps::new(100);
        assert_eq!(s.next(50), 101);
        assert_eq!(s.next(500), 500);
        assert_eq!(s.next(400), 501);
        assert_eq!(s.next(400), 502);
    }

    #[test]
    fn a_restart_after_the_clock_went_back_starts_above_every_old_stamp() {
        let (start, mut floor) = StampFloor::start(0, 1000 * S);
        assert_eq!(start, 1000 * S);
        let mut stamps = Stamps::new(start);
        // Two hours of running, renewing as the daemon does on its ticks.
        let mut last = 0;
        for t in (1000..1000 + 7200).step_by(10) {
            last = stamps.next(t * S);
            floor.renew(t * S);
        }
        assert!(floor.persisted > last);
        // Restart with the clock an hour behind.
        let (start, _) = StampFloor::start(floor.persisted, (1000 + 3600) * S);
        assert!(Stamps::new(start).next((1000 + 3600) * S) > last);
        assert_eq!(
            StampFloor {
                persisted: 7200 * S
            }
            .renew(S),
            None
        );
    }
}
