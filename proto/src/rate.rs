//! Token buckets, alone and per key (per source address, per node, per target address), with
//! bounded memory: what every daemon uses to keep hostile input from costing more than a set
//! budget. Pure: time comes in as milliseconds.

use std::collections::HashMap;
use std::hash::Hash;

/// A bucket of up to `burst` tokens, refilled with one token every `ms_per_token` ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub ms_per_token: u32,
}

impl Rate {
    /// `per_sec` tokens a second (at least one).
    pub const fn new(burst: u32, per_sec: u32) -> Rate {
        Rate {
            burst,
            ms_per_token: match 1000u32.checked_div(per_sec) {
                Some(ms) => ms,
                None => 1000,
            },
        }
    }

    /// One token every `ms` milliseconds.
    pub const fn every(burst: u32, ms: u32) -> Rate {
        Rate {
            burst,
            ms_per_token: if ms == 0 { 1 } else { ms },
        }
    }
}

/// One token bucket. Its content is kept as credit in milliseconds of refill time, so any
/// rate refills exactly.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    credit_ms: u64,
    at_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now_ms: u64) -> TokenBucket {
        TokenBucket {
            credit_ms: Self::cap(rate),
            at_ms: now_ms,
        }
    }

    fn cap(rate: Rate) -> u64 {
        rate.burst as u64 * rate.ms_per_token as u64
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.credit_ms = self.credit_ms.saturating_add(elapsed).min(Self::cap(rate));
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes `n` tokens if there are that many.
    pub fn take_n(&mut self, rate: Rate, now_ms: u64, n: u64) -> bool {
        self.refill(rate, now_ms);
        let need = n.saturating_mul(rate.ms_per_token as u64);
        if self.credit_ms < need {
            return false;
        }
        self.credit_ms -= need;
        true
    }

    pub fn take(&mut self, rate: Rate, now_ms: u64) -> bool {
        self.take_n(rate, now_ms, 1)
    }

    /// Whether the bucket would be full at `now_ms` (nothing to remember about it any more).
    pub fn is_full(&self, rate: Rate, now_ms: u64) -> bool {
        let mut b = *self;
        b.refill(rate, now_ms);
        b.credit_ms >= Self::cap(rate)
    }

    /// When the next token will be there (now if there is one).
    pub fn next_token_ms(&self, rate: Rate) -> u64 {
        let need = rate.ms_per_token as u64;
        self.at_ms + need.saturating_sub(self.credit_ms)
    }
}

/// A token bucket per key, for at most `capacity` keys. Keys whose bucket refilled are
/// forgotten when room is needed; when every remembered key is still draining, a new key is
/// refused (so a flood from many addresses cannot grow the table or push out the keys that
/// are being limited).
#[derive(Debug, Clone)]
pub struct KeyedLimiter<K> {
    rate: Rate,
    capacity: usize,
    buckets: HashMap<K, TokenBucket>,
    last_sweep_ms: u64,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(rate: Rate, capacity: usize) -> KeyedLimiter<K> {
        KeyedLimiter {
            rate,
            capacity,
            buckets: HashMap::new(),
            last_sweep_ms: 0,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes `n` tokens from `key`'s bucket.
    pub fn take_n(&mut self, key: &K, now_ms: u64, n: u64) -> bool {
        let rate = self.rate;
        if let Some(b) = self.buckets.get_mut(key) {
            return b.take_n(rate, now_ms, n);
        }
        if self.buckets.len() >= self.capacity {
            self.sweep(now_ms);
            if self.buckets.len() >= self.capacity {
                return false;
            }
        }
        let mut b = TokenBucket::full(rate, now_ms);
        let ok = b.take_n(rate, now_ms, n);
        self.buckets.insert(key.clone(), b);
        ok
    }

    pub fn take(&mut self, key: &K, now_ms: u64) -> bool {
        self.take_n(key, now_ms, 1)
    }

    /// Forgets keys whose bucket is full again (at most once per 100 ms: a sweep is O(keys)).
    fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.last_sweep_ms + 100 && now_ms >= self.last_sweep_ms {
            return;
        }
        self.last_sweep_ms = now_ms;
        let rate = self.rate;
        self.buckets.retain(|_, b| !b.is_full(rate, now_ms));
    }

    /// Forgets one key (its budget starts full again).
    pub fn forget(&mut self, key: &K) {
        self.buckets.remove(key);
    }
}

/// Counts events per one-second window: how busy something is right now.
#[derive(Debug, Clone, Default)]
pub struct WindowCounter {
    window_start_ms: u64,
    count: u32,
    previous: u32,
}

impl WindowCounter {
    /// Counts one event at `now_ms`.
    pub fn add(&mut self, now_ms: u64) {
        self.roll(now_ms);
        self.count = self.count.saturating_add(1);
    }

    /// Events in the current window or, if more, the last full one.
    pub fn rate(&mut self, now_ms: u64) -> u32 {
        self.roll(now_ms);
        self.count.max(self.previous)
    }

    fn roll(&mut self, now_ms: u64) {
        if now_ms >= self.window_start_ms + 2000 || now_ms < self.window_start_ms {
            self.previous = 0;
            self.count = 0;
            self.window_start_ms = now_ms;
        } else if now_ms >= self.window_start_ms + 1000 {
            self.previous = self.count;
            self.count = 0;
            self.window_start_ms += 1000;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_its_rate() {
        let rate = Rate::new(3, 2);
        let mut b = TokenBucket::full(rate, 0);
        assert_eq!((0..10).filter(|_| b.take(rate, 0)).count(), 3);
        assert!(!b.take(rate, 499));
        assert!(b.take(rate, 500));
        assert!(!b.take(rate, 500));
        // Never more than the burst, however long it rested.
        assert_eq!((0..10).filter(|_| b.take(rate, 100_000)).count(), 3);
        // A clock going back does not refill it.
        assert!(!b.take(rate, 50));
        let slow = Rate::every(1, 10_000);
        let mut b = TokenBucket::full(slow, 0);
        assert!(b.take(slow, 0));
        assert!(!b.take(slow, 9_999));
        assert!(b.take(slow, 10_000));
    }

    #[test]
    fn keyed_limits_are_per_key_and_bounded() {
        let mut l = KeyedLimiter::new(Rate::new(2, 1), 3);
        assert!(l.take(&1, 0) && l.take(&1, 0));
        assert!(!l.take(&1, 0));
        assert!(l.take(&2, 0));
        assert!(l.take(&3, 0));
        // Full of draining keys: a new key is refused rather than evicting one.
        assert!(!l.take(&4, 10));
        assert_eq!(l.len(), 3);
        // Once buckets refilled, their keys make room.
        assert!(l.take(&4, 3_000));
        assert!(l.len() <= 3);
        assert!(!l.take_n(&5, 3_000, 3), "more than the burst at once");
    }

    #[test]
    fn window_counter_reports_the_busier_of_the_last_two_seconds() {
        let mut w = WindowCounter::default();
        for t in 0..50 {
            w.add(t);
        }
        assert_eq!(w.rate(999), 50);
        assert_eq!(w.rate(1500), 50);
        w.add(1600);
        assert_eq!(w.rate(1700), 50);
        assert_eq!(w.rate(2100), 1);
        assert_eq!(w.rate(10_000), 0);
    }
}
