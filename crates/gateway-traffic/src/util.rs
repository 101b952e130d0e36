//! Small shared helpers: a stable hash, a fast random source and cookie lookup.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::COOKIE;
use http::HeaderMap;

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

/// A fast, non-cryptographic random `u64` (xorshift64* per thread, seeded from the clock and
/// the thread). Good enough for traffic splits and mirror sampling; never for secrets.
///
/// ```
/// let a = gateway_traffic::random_u64();
/// let b = gateway_traffic::random_u64();
/// assert_ne!(a, b);
/// ```
pub fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let local = 0u8;
    let addr = &local as *const u8 as u64;
    mix64(nanos ^ addr.rotate_left(32) ^ u64::from(std::process::id())) | 1
}

/// The value of cookie `name` in any of the request's `cookie` headers (several cookies per
/// header, several headers); surrounding quotes are removed. The first match wins.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().flat_map(|v| v.as_bytes().split(|b| *b == b';')).find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| {
            let value = pair[eq + 1..].trim_ascii();
            value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn finds_cookies_across_headers() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; session=abc"));
        h.append(COOKIE, HeaderValue::from_static("sid=\"xyz\" ;b=2"));
        assert_eq!(cookie(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&h, "sessio"), None);
        assert_eq!(cookie(&h, "missing"), None);
    }

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
