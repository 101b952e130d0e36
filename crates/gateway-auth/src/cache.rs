//! Verified tokens remembered by their SHA-256 until they expire, so a client that
//! sends the same token again costs a hash and a map lookup instead of a signature
//! check. Bounded; sharded so that the runtimes of all cores rarely wait on each other.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use gateway_core::Principal;

const SHARDS: usize = 16;

/// Tokens longer than this are verified every time: it bounds the memory one entry
/// can take.
pub(crate) const MAX_CACHED_TOKEN_BYTES: usize = 4096;

struct Entry {
    principal: Principal,
    /// Unix seconds; the entry is used while `now < expires_at`.
    expires_at: u64,
}

pub(crate) struct TokenCache {
    shards: Vec<Mutex<HashMap<[u8; 32], Entry>>>,
    per_shard: usize,
}

impl TokenCache {
    /// Room for about `capacity` tokens; 0 disables the cache.
    pub(crate) fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        TokenCache { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), per_shard }
    }

    fn shard(&self, digest: &[u8; 32]) -> MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        let shard = &self.shards[usize::from(digest[0]) % SHARDS];
        // A panic elsewhere cannot leave a half-written entry here: the map stays usable.
        shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn get(&self, digest: &[u8; 32], now: u64) -> Option<Principal> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(digest);
        match shard.get(digest) {
            Some(entry) if now < entry.expires_at => Some(entry.principal.clone()),
            Some(_) => {
                shard.remove(digest);
                None
            }
            None => None,
        }
    }

    pub(crate) fn insert(&self, digest: [u8; 32], principal: Principal, expires_at: u64, now: u64) {
        if self.per_shard == 0 || expires_at <= now {
            return;
        }
        let mut shard = self.shard(&digest);
        if shard.len() >= self.per_shard {
            shard.retain(|_, e| now < e.expires_at);
        }
        if shard.len() >= self.per_shard {
            // Still full of live tokens: forget an eighth of them (hash order, so
            // effectively at random) rather than grow.
            let evict: Vec<[u8; 32]> = shard.keys().take(self.per_shard.div_ceil(8)).copied().collect();
            for key in evict {
                shard.remove(&key);
            }
        }
        shard.insert(digest, Entry { principal, expires_at });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|m| m.len()).unwrap_or(0)).sum()
    }
}

/// Seconds since the Unix epoch, as JWT times are written.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn principal(sub: &str) -> Principal {
        Principal { provider: Arc::from("p"), subject: Some(sub.into()), consumer: None, claims: Default::default() }
    }

    #[test]
    fn entries_expire_and_stay_bounded() {
        let cache = TokenCache::new(160);
        let d = [7u8; 32];
        cache.insert(d, principal("a"), 100, 50);
        assert_eq!(cache.get(&d, 99).and_then(|p| p.subject), Some("a".into()));
        assert!(cache.get(&d, 100).is_none());
        assert_eq!(cache.len(), 0, "expired entry removed on lookup");
        cache.insert(d, principal("a"), 100, 100);
        assert_eq!(cache.len(), 0, "already expired: not stored");

        for i in 0..2000u32 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            d[0] = (i % 16) as u8;
            cache.insert(d, principal("x"), 1000, 10);
        }
        assert!(cache.len() <= 160, "{}", cache.len());

        let off = TokenCache::new(0);
        off.insert(d, principal("a"), 100, 50);
        assert!(off.get(&d, 60).is_none());
    }
}
