//! boringtun's clock, driven by ours. boringtun reads `Instant::now()` inside `Tunn` (timers,
//! handshake timestamps, its rate limiter); built with its `mock-instant` feature it reads
//! `mock_instant`'s per-thread clock instead, which every entry point of the data plane sets
//! from the `now` it was given. So the daemon runs boringtun on real time and the simulator on
//! virtual time, through the same code.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The instant boringtun's clock counts from (the first one it was set to, in this process).
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Sets boringtun's clock (on this thread) to `now`. It never goes back: boringtun subtracts
/// instants without checking their order.
pub fn set(now: Instant) {
    let epoch = *EPOCH.get_or_init(|| now);
    let at = now.saturating_duration_since(epoch);
    if at > mock_instant::MockClock::time() {
        mock_instant::MockClock::set_time(at);
    }
}

/// boringtun's clock on this thread, as a duration since its epoch.
pub fn now() -> Duration {
    mock_instant::MockClock::time()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_given_time_and_never_goes_back() {
        let t0 = Instant::now();
        set(t0);
        let base = now();
        set(t0 + Duration::from_secs(5));
        assert_eq!(now() - base, Duration::from_secs(5));
        set(t0 + Duration::from_secs(1));
        assert_eq!(now() - base, Duration::from_secs(5));
    }
}
