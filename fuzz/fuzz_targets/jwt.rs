//! `cargo +nightly fuzz run jwt`: credentials on a route whose providers are a JWT
//! secret and an API key (`gateway_auth::fuzzing`, the route of the crate's property
//! tests), from arbitrary bytes as `authorization: Bearer …`, as the whole
//! `authorization` value, and as the API key. Each is refused with a 401, never a panic
//! (the input cannot carry a valid signature).
#![no_main]

use gateway_auth::fuzzing::check;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use libfuzzer_sys::fuzz_target;

fn refused(name: HeaderName, value: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(value) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    assert_eq!(check(&headers).map_err(|e| e.status()).err(), Some(401), "{headers:?}");
}

fuzz_target!(|data: &[u8]| {
    refused(AUTHORIZATION, &[b"Bearer ".as_slice(), data].concat());
    refused(AUTHORIZATION, data);
    if data.trim_ascii() != b"foo" {
        refused(HeaderName::from_static("x-api-key"), data);
    }
});
