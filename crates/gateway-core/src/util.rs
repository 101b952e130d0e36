//! Small helpers every data-path crate uses: one fast random source and cookie lookup.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use http::header::COOKIE;
use http::HeaderMap;

thread_local! {
    /// splitmix64 state, seeded from the process's random hasher keys and the thread.
    static RNG: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
}

/// A fast, non-cryptographic random `u64` (splitmix64 per thread): load balancing, traffic
/// splits, sampling, jitter and ids that need uniqueness, never secrecy.
///
/// ```
/// assert_ne!(gateway_core::random_u64(), gateway_core::random_u64());
/// ```
pub fn random_u64() -> u64 {
    RNG.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// The value of cookie `name` in any of the request's `cookie` headers (several cookies per
/// header, several headers); surrounding quotes are removed. The first match wins.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
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
        h.append(COOKIE, HeaderValue::from_static("a=1; session=\"abc\""));
        h.append(COOKIE, HeaderValue::from_static("other=2;sid= xyz ;b=2"));
        assert_eq!(cookie(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&h, "sessio"), None);
        assert_eq!(cookie(&h, "missing"), None);
    }
}
