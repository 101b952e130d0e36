//! Buckets held in this process: GCRA TATs in a sharded, capped map.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::gcra::{self, Outcome, Rate};
use crate::key::LimitKey;

/// Default cap on the keys one local limit holds.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Shards of the map, each with its own lock, so cores rarely wait on each other.
const SHARDS: usize = 16;

/// How often a shard drops its full buckets as it is used.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// How often a shard at its cap may sweep to make room (bounds the work a flood can cause).
const FULL_SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// The buckets of one limit.
///
/// A bucket whose TAT has passed is full, exactly like a bucket never seen, so dropping it
/// changes no answer: each shard drops those when it is used and its last sweep is
/// [`SWEEP_INTERVAL`] old, and sooner (at most every 100ms) when it is at its cap. No
/// background task is needed, so nothing outlives the limiter.
///
/// At most `max_keys` keys are held (`max_keys / 16` per shard). A new key that finds its
/// shard full of active buckets even after a sweep draws from one overflow bucket shared by
/// all such keys: a flood of distinct keys is limited as one client, never let through, and
/// never evicts an active bucket (which would hand its owner a fresh budget).
#[derive(Debug)]
pub(crate) struct LocalStore {
    rate: Rate,
    origin: Instant,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    overflow: Mutex<u64>,
    overflowed: AtomicU64,
}

#[derive(Debug, Default)]
struct Shard {
    tats: HashMap<LimitKey, u64>,
    last_sweep: u64,
}

impl Shard {
    fn sweep(&mut self, now: u64) {
        self.tats.retain(|_, tat| *tat > now);
        self.last_sweep = now;
        let cap = self.tats.capacity();
        if cap > 64 && self.tats.len() < cap / 4 {
            self.tats.shrink_to(self.tats.len() * 2);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections do not panic; a poisoned lock still holds consistent numbers.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalStore {
    pub(crate) fn new(rate: Rate, max_keys: usize) -> LocalStore {
        LocalStore {
            rate,
            origin: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_cap: (max_keys / SHARDS).max(1),
            overflow: Mutex::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        // Nanoseconds since the store began, offset by one so 0 can mean "never seen".
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX).saturating_add(1)
    }

    fn shard(&self, key: &LimitKey) -> &Mutex<Shard> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[i]
    }

    pub(crate) fn check(&self, key: &LimitKey, now: Instant) -> Outcome {
        let now = self.nanos(now);
        let mut shard = lock(self.shard(key));
        if now.saturating_sub(shard.last_sweep) >= SWEEP_INTERVAL.as_nanos() as u64 {
            shard.sweep(now);
        }
        if let Some(tat) = shard.tats.get_mut(key) {
            let (outcome, new_tat) = gcra::check(self.rate, *tat, now);
            *tat = new_tat;
            return outcome;
        }
        if shard.tats.len() >= self.shard_cap
            && now.saturating_sub(shard.last_sweep) >= FULL_SWEEP_INTERVAL.as_nanos() as u64
        {
            shard.sweep(now);
        }
        if shard.tats.len() >= self.shard_cap {
            drop(shard);
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            let mut tat = lock(&self.overflow);
            let (outcome, new_tat) = gcra::check(self.rate, *tat, now);
            *tat = new_tat;
            return outcome;
        }
        let (outcome, new_tat) = gcra::check(self.rate, 0, now);
        if outcome.allowed {
            shard.tats.insert(key.clone(), new_tat);
        }
        outcome
    }

    /// Gives back one admitted request of `key` (another limit refused the request).
    ///
    /// A key that went to the overflow bucket is refunded there only if it is still absent
    /// from its shard; at worst the refund lands on the wrong one of the two, which only
    /// errs by one request.
    pub(crate) fn refund(&self, key: &LimitKey, now: Instant) {
        let now = self.nanos(now);
        let mut shard = lock(self.shard(key));
        match shard.tats.get(key) {
            Some(&tat) => match gcra::refund(self.rate, tat, now) {
                Some(tat) => {
                    shard.tats.insert(key.clone(), tat);
                }
                None => {
                    shard.tats.remove(key);
                }
            },
            None => {
                drop(shard);
                let mut tat = lock(&self.overflow);
                *tat = gcra::refund(self.rate, *tat, now).unwrap_or(0);
            }
        }
    }

    /// Drops every full bucket now.
    pub(crate) fn sweep(&self, now: Instant) {
        let now = self.nanos(now);
        for shard in self.shards.iter() {
            lock(shard).sweep(now);
        }
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }

    /// Map slots allocated (at least `len`): what the memory bound is about.
    pub(crate) fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.capacity()).sum()
    }

    /// The most keys held at once.
    pub(crate) fn max_keys(&self) -> usize {
        self.shard_cap * SHARDS
    }

    /// Checks of new keys that found their shard full and used the overflow bucket.
    pub(crate) fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-slot cost stated in `Limiter::local_capacity`'s docs.
    #[test]
    fn slot_size() {
        assert_eq!(std::mem::size_of::<(LimitKey, u64)>(), 32);
    }
}
