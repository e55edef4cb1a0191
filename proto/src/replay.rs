//! A sliding-window replay filter for 64-bit message counters (the same idea as WireGuard's and
//! IPsec's): a counter is accepted once, if it is newer than the window or inside it and unseen.

const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far, plus one (0: nothing accepted yet).
    next: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: 0,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// Would `counter` be accepted? Does not record it: call [`ReplayWindow::accept`] only after
    /// the message authenticated.
    pub fn check(&self, counter: u64) -> bool {
        if counter == u64::MAX {
            return false;
        }
        if counter >= self.next {
            return true;
        }
        if self.next - counter > WINDOW {
            return false;
        }
        let (w, b) = Self::slot(counter);
        self.bits[w] & (1 << b) == 0
    }

    /// Records `counter` as seen; returns false (and records nothing) if it is a replay.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            // Clear the slots the window slides over.
            let advance = counter + 1 - self.next;
            if advance >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for c in self.next..=counter {
                    let (w, b) = Self::slot(c);
                    self.bits[w] &= !(1 << b);
                }
            }
            self.next = counter + 1;
        }
        let (w, b) = Self::slot(counter);
        self.bits[w] |= 1 << b;
        true
    }

    fn slot(counter: u64) -> (usize, u64) {
        let i = counter % WINDOW;
        ((i / 64) as usize, i % 64)
    }
}

/// A replay filter for sparse, growing 64-bit counters such as nanosecond timestamps (probe
/// counters): it remembers the last few values it accepted, accepts a value it has not seen
/// that is newer than the oldest of them, and refuses everything else. Small reorderings
/// (pings to several addresses of one peer) pass; a replay never does.
#[derive(Debug, Clone, Default)]
pub struct StampWindow {
    recent: [u64; STAMPS],
}

const STAMPS: usize = 32;

impl StampWindow {
    /// Accepts `stamp` (non-zero) once; returns whether it was fresh.
    pub fn accept(&mut self, stamp: u64) -> bool {
        if stamp == 0 || self.recent.contains(&stamp) {
            return false;
        }
        // Replace the oldest remembered value (0 while the window is filling up).
        let (i, floor) = self
            .recent
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, v)| *v)
            .expect("non-empty");
        if stamp < floor {
            return false;
        }
        self.recent[i] = stamp;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_counter_once() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(!w.accept(5));
        assert!(w.accept(4));
    }

    #[test]
    fn rejects_counters_older_than_the_window() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(5000));
        assert!(!w.check(5000 - WINDOW - 1));
        assert!(w.accept(5000 - WINDOW + 1));
        assert!(w.accept(100_000));
        assert!(!w.accept(5001));
        assert!(!w.accept(u64::MAX));
    }

    #[test]
    fn slots_are_reused_after_sliding() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(1));
        assert!(w.accept(1 + WINDOW));
        assert!(!w.accept(1 + WINDOW));
        assert!(w.accept(2 + WINDOW / 2));
    }

    #[test]
    fn stamp_window_accepts_each_stamp_once_and_tolerates_small_reordering() {
        let mut w = StampWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(1_000));
        assert!(!w.accept(1_000));
        assert!(
            w.accept(999),
            "a little older, unseen: fine while the window fills"
        );
        for s in 2_000..2_100 {
            assert!(w.accept(s));
        }
        // The window now holds 2068..2099: older values are refused, seen ones too.
        assert!(!w.accept(1_000));
        assert!(!w.accept(2_050));
        assert!(!w.accept(2_099));
        assert!(w.accept(5_000));
        assert!(w.accept(4_000), "newer than the oldest remembered");
        assert!(!w.accept(4_000));
    }
}
