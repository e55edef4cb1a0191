//! Rate limiting for logs about hostile or broken input, so a flood of junk cannot flood the log.

/// Allows at most `per_second` events per one-second window.
#[derive(Debug, Clone)]
pub struct LogLimit {
    per_second: u32,
    window_start_ms: u64,
    count: u32,
}

impl LogLimit {
    pub fn new(per_second: u32) -> LogLimit {
        LogLimit {
            per_second,
            window_start_ms: 0,
            count: 0,
        }
    }

    /// Whether an event at `now_ms` may be logged.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        if now_ms >= self.window_start_ms + 1000 || now_ms < self.window_start_ms {
            self.window_start_ms = now_ms;
            self.count = 0;
        }
        self.count += 1;
        self.count <= self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_per_second() {
        let mut l = LogLimit::new(3);
        let allowed = (0..10).filter(|_| l.allow(5_000)).count();
        assert_eq!(allowed, 3);
        assert!(!l.allow(5_999));
        assert!(l.allow(6_000));
    }
}
