//! Properties of credential checking on generated input (proptest, bounded; the `jwt`
//! fuzz target in `fuzz/` checks the same on arbitrary bytes): whatever a client puts in
//! `authorization` or the API-key header (arbitrary bytes; near-JWTs made of three
//! base64url parts with random JSON, `alg: none`, algorithms that are not pinned, huge
//! headers, correct signatures on expired or claim-less tokens), a route whose providers
//! are a JWT secret and an API key answers an error that maps to 401, and never panics.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;

use crate::fuzzing::{check, SECRET};

/// Checks `headers` on the route: an error, and one that is a 401.
fn refused(headers: &HeaderMap) -> Result<(), TestCaseError> {
    match check(headers) {
        Ok(principal) => Err(TestCaseError::fail(format!("accepted as {principal:?}: {headers:?}"))),
        Err(e) => {
            prop_assert_eq!(e.status(), 401, "{:?} for {:?}", e, headers);
            let _ = e.into_gateway_error();
            Ok(())
        }
    }
}

fn header_value(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(bytes).ok()
}

const ALGS: &[&str] = &["none", "None", "NONE", "HS256", "HS384", "RS256", "ES256", "EdDSA", "", "hs256", "HS256 "];
const JSON: &[&str] = &[
    "{}",
    "[]",
    "null",
    "1e999",
    "\"x\"",
    "{\"exp\": 99999999999}",
    "{\"exp\": 99999999999, \"iss\": \"gw\"}",
    "{\"exp\": -1, \"iss\": \"gw\"}",
    "{\"exp\": 1e400}",
    "{\"exp\": \"soon\", \"nbf\": []}",
    "{\"exp\": 99999999999, \"iss\": \"gw\", \"nbf\": 99999999999}",
    "{\"sub\": \"\\ud800\", \"exp\": 18446744073709551616}",
    "{",
    "",
];

/// A JSON header: `alg` from the list (or absent), maybe a `kid`, maybe huge.
fn jose_header() -> impl Strategy<Value = String> {
    (prop::option::of(prop::sample::select(ALGS)), prop::option::of("[a-z\"\\\\]{0,8}"), 0..3usize).prop_map(
        |(alg, kid, size)| {
            let mut fields = vec!["\"typ\":\"JWT\"".to_owned()];
            fields.extend(alg.map(|a| format!("\"alg\":\"{a}\"")));
            fields.extend(kid.map(|k| format!("\"kid\":\"{}\"", k.replace(['"', '\\'], ""))));
            if size > 0 {
                fields.push(format!("\"x\":\"{}\"", "a".repeat(10usize.pow(size as u32 + 1))));
            }
            format!("{{{}}}", fields.join(","))
        },
    )
}

/// Three base64url parts (sometimes padded, sometimes not base64 at all).
fn near_jwt() -> impl Strategy<Value = String> {
    (
        prop_oneof![jose_header(), prop::sample::select(JSON).prop_map(str::to_owned)],
        prop::sample::select(JSON),
        prop::collection::vec(any::<u8>(), 0..40),
        prop::sample::select(&["", "=", "!", "."][..]),
    )
        .prop_map(|(header, claims, signature, junk)| {
            let encode = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
            format!("{}.{}.{}{junk}", encode(header.as_bytes()), encode(claims.as_bytes()), encode(&signature))
        })
}

/// Tokens with a correct signature that must still be refused: an algorithm that is not
/// pinned, or claims that fail (expired, no `exp`, another issuer, not yet valid).
fn signed() -> impl Strategy<Value = String> {
    let claims = prop::sample::select(
        &[
            "{\"exp\": 1, \"iss\": \"gw\"}",
            "{\"iss\": \"gw\"}",
            "{\"exp\": 99999999999, \"iss\": \"other\"}",
            "{\"exp\": 99999999999}",
            "{\"exp\": 99999999999, \"iss\": \"gw\", \"nbf\": 99999999999}",
            "{\"exp\": 99999999999, \"iss\": \"gw\"}",
        ][..],
    );
    (prop::sample::select(&[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512][..]), claims).prop_filter_map(
        "a valid token",
        |(alg, claims)| {
            let valid = alg == Algorithm::HS256 && claims == "{\"exp\": 99999999999, \"iss\": \"gw\"}";
            let claims: serde_json::Value = serde_json::from_str(claims).ok()?;
            let key = EncodingKey::from_secret(SECRET.as_bytes()).ok()?;
            let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).ok()?;
            (!valid).then_some(token)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_authorization_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..128), bearer in any::<bool>()) {
        let bytes = if bearer { [b"Bearer ".as_slice(), &bytes].concat() } else { bytes };
        let Some(value) = header_value(&bytes) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        refused(&headers)?;
    }

    #[test]
    fn near_jwts_are_refused(token in prop_oneof![near_jwt(), signed()], scheme in prop::sample::select(&["Bearer ", "bearer  ", "Bearer\t", "Basic "][..])) {
        let mut headers = HeaderMap::new();
        let value = header_value(format!("{scheme}{token}").as_bytes()).ok_or_else(|| TestCaseError::fail("value"))?;
        headers.insert(AUTHORIZATION, value);
        refused(&headers)?;
    }

    #[test]
    fn arbitrary_api_keys_are_refused(keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..3)) {
        let mut headers = HeaderMap::new();
        for key in keys.iter().filter(|k| k.trim_ascii() != b"foo") {
            headers.append("x-api-key", header_value(key).unwrap_or(HeaderValue::from_static("bar")));
        }
        refused(&headers)?;
    }
}

/// The properties above would hold for a route that refuses everything: this one does not.
#[test]
fn the_route_accepts_real_credentials() {
    let claims = serde_json::json!({ "exp": 99_999_999_999u64, "iss": "gw" });
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("token");
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, header_value(format!("Bearer {token}").as_bytes()).expect("value"));
    assert!(check(&headers).is_ok());
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static("foo"));
    assert!(check(&headers).is_ok());
}
