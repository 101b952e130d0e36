//! Fast random trace and span ids: a splitmix64 generator per thread.
//!
//! Ids must be unique, not secret, so no cryptographic generator is needed. Each thread
//! seeds its own state once from the standard library's per-process random hash keys
//! (`RandomState`, taken from the OS), the clock, the thread id and a global counter; after
//! that an id costs a thread-local read, an add and a few multiplies: no lock, no syscall.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    /// 0 means "not seeded yet".
    static STATE: Cell<u64> = const { Cell::new(0) };
}

static SEEDS: AtomicU64 = AtomicU64::new(0);

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    SEEDS.fetch_add(1, Ordering::Relaxed).hash(&mut hasher);
    std::thread::current().id().hash(&mut hasher);
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).hash(&mut hasher);
    match hasher.finish() {
        0 => GAMMA,
        seed => seed,
    }
}

/// The next 64 random bits of this thread's generator (splitmix64).
fn next_u64() -> u64 {
    STATE.with(|state| {
        let mut s = state.get();
        if s == 0 {
            s = seed();
        }
        s = s.wrapping_add(GAMMA);
        // Landing on 0 only makes the next call reseed.
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A new random trace id, never all zero.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let (hi, lo) = (next_u64(), next_u64());
        if hi | lo != 0 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&hi.to_be_bytes());
            id[8..].copy_from_slice(&lo.to_be_bytes());
            return id;
        }
    }
}

/// A new random span id, never all zero.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let v = next_u64();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_differ_within_and_across_threads() {
        let threads: Vec<_> =
            (0..4).map(|_| std::thread::spawn(|| (0..50_000).map(|_| new_span_id()).collect::<Vec<_>>())).collect();
        let mut seen = HashSet::new();
        for t in threads {
            for id in t.join().expect("thread") {
                assert_ne!(id, [0; 8]);
                assert!(seen.insert(id), "duplicate span id");
            }
        }
        let traces: HashSet<[u8; 16]> = (0..50_000).map(|_| new_trace_id()).collect();
        assert_eq!(traces.len(), 50_000);
    }
}
