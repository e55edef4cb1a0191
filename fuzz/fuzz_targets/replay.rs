//! `replay`: the replay filters. The input is a sequence of counters (absolute, or relative to
//! the highest one so far, or a repeat of an earlier one), fed to both:
//! - `ReplayWindow` (control channel, relay), compared with an exact model on every `check`
//!   and `accept`: a counter is accepted once, when it is newer than the highest so far or at
//!   most 1024 behind it and unseen, and never u64::MAX;
//! - `StampWindow` (probe counters), compared with an exact model (it remembers the last 32
//!   stamps and accepts an unseen non-zero one no older than the oldest of them), and never
//!   accepting a stamp twice, whatever the order.
#![no_main]
use lanmesh_proto::replay::{ReplayWindow, StampWindow};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;

const WINDOW: u64 = 1024;

fuzz_target!(|data: &[u8]| {
    let mut w = ReplayWindow::default();
    let mut stamps = StampWindow::default();
    let mut recent = [0u64; 32];
    let mut stamped = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut history: Vec<u64> = Vec::new();
    let mut next = 0u64; // highest accepted + 1
    for chunk in data.chunks(9) {
        if chunk.len() < 3 {
            break;
        }
        let mut v = [0u8; 8];
        v[..chunk.len() - 1].copy_from_slice(&chunk[1..]);
        let raw = u64::from_le_bytes(v);
        let small = raw & 0x7ff;
        let counter = match chunk[0] % 5 {
            0 => raw,
            1 => next.wrapping_add(small),
            2 => next.saturating_sub(small),
            3 => *history
                .get(raw as usize % history.len().max(1))
                .unwrap_or(&0),
            _ => u64::MAX - (raw & 3),
        };
        // The stamp window: exact model, and never twice.
        let floor = *recent.iter().min().unwrap();
        let fresh = counter != 0 && !recent.contains(&counter) && counter >= floor;
        assert_eq!(
            stamps.accept(counter),
            fresh,
            "StampWindow::accept({counter})"
        );
        if fresh {
            let i = recent.iter().position(|&v| v == floor).unwrap();
            recent[i] = counter;
            assert!(stamped.insert(counter), "stamp {counter} accepted twice");
        }

        let expected = counter != u64::MAX
            && !seen.contains(&counter)
            && counter.saturating_add(WINDOW) >= next;
        assert_eq!(
            w.check(counter),
            expected,
            "check({counter}) with next {next}"
        );
        // Half the time only check, as a receiver does before authentication fails.
        if chunk[0] & 0x80 != 0 {
            continue;
        }
        assert_eq!(
            w.accept(counter),
            expected,
            "accept({counter}) with next {next}"
        );
        if expected {
            assert!(seen.insert(counter));
            history.push(counter);
            next = next.max(counter + 1);
        }
        assert!(
            !w.check(counter),
            "a counter just accepted passes check again"
        );
    }
});
