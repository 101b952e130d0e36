//! Small helpers: a per-thread random generator, a stable hash, jittered back-off.

use std::time::Duration;

pub(crate) use gateway_core::random_u64;

/// A random index below `n` (`n > 0`).
pub(crate) fn random_below(n: usize) -> usize {
    ((u128::from(random_u64()) * n as u128) >> 64) as usize
}

/// A random number in `[0, 1)`.
pub(crate) fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `d` scaled by a random factor in `[1 - spread, 1 + spread)`.
pub(crate) fn jitter(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 - spread + 2.0 * spread * random_unit())
}

/// The murmur3 64-bit finalizer: spreads every input bit over the output.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A hash that is the same in every process and every build (FNV-1a, then mixed), so
/// gateways that share nothing still send a key to the same endpoint.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_below_stays_in_range_and_hash_is_stable() {
        for n in 1..50 {
            assert!(random_below(n) < n);
        }
        assert_eq!(hash64(b"user-42"), hash64(b"user-42"));
        assert_ne!(hash64(b"user-42"), hash64(b"user-43"));
        let j = jitter(Duration::from_secs(10), 0.1);
        assert!(j >= Duration::from_secs(9) && j < Duration::from_secs(11));
    }
}
