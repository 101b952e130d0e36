//! Small shared helpers: a stable hash, a fast random source and cookie lookup.

/// A stable 64-bit hash (FNV-1a, then a splitmix64 finaliser so that close inputs land far
/// apart). Stable across processes, versions and machines, unlike `std`'s `DefaultHasher`, so
/// every gateway instance puts one sticky client on the same side.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Maps `x`, uniform over `u64`, onto `[0, n)` by multiply-and-shift: the position is the
/// fraction `x / 2^64` scaled by `n`, so the same `x` keeps its relative place when `n` changes.
pub(crate) fn scale(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

pub use gateway_core::{cookie, random_u64};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_stays_in_range() {
        assert_eq!(scale(0, 100), 0);
        assert_eq!(scale(u64::MAX, 100), 99);
        assert_eq!(scale(u64::MAX / 2, 100), 49);
        assert_eq!(scale(12345, 0), 0);
    }

    #[test]
    fn hash_is_stable() {
        // Pinned: a change of algorithm would move every sticky client, on every instance.
        assert_eq!(hash64(b"user-1"), 0xc499_b5f8_a721_df58);
        assert_eq!(hash64(b""), 0xf52a_15e9_a9b5_e89b);
    }
}
