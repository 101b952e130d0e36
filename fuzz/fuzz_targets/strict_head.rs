//! `cargo +nightly fuzz run strict_head`: the HTTP/1.1 head scanner of strict parsing on
//! arbitrary bytes. It must never panic, and where the stream is split must never change
//! its verdicts (bytes arrive from the socket split anywhere).
#![no_main]

use gateway::fuzzing::{HeadScanner, Verdicts};
use libfuzzer_sys::fuzz_target;

/// Verdicts for `data` fed in two pieces split at `at`, as (refused?) per head.
fn verdicts(data: &[u8], at: usize) -> Vec<bool> {
    let verdicts = Verdicts::default();
    let mut scanner = HeadScanner::default();
    let (a, b) = data.split_at(at);
    scanner.scan(a, &verdicts);
    scanner.scan(b, &verdicts);
    // `pop` gives clean verdicts once the queue is empty, so a fixed count compares both.
    (0..=data.len().min(64)).map(|_| verdicts.pop().problem.is_some()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let at = usize::from(split) % (data.len() + 1);
    assert_eq!(verdicts(data, at), verdicts(data, data.len()));
});
