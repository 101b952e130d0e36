//! JWT providers with a JWKS from a test identity provider on a real socket: key
//! selection by `kid` and `alg`, rotation, an unknown-`kid` flood, the identity
//! provider going down, reloads.
//!
//! cargo test -p gateway-auth --test jwks
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use gateway_auth::{AuthError, JwksPolicy, Provider};
use jsonwebtoken::Algorithm;
use serde_json::json;

const INVALID: Result<(), AuthError> = Err(AuthError::Invalid("invalid token"));

async fn check(provider: &Provider, token: &str) -> Result<(), AuthError> {
    provider.authenticate(&bearer(token), None).await.map(|_| ())
}

fn token(key: &str, alg: Algorithm, kid: &str) -> String {
    mint(alg, &signing_key(key), Some(kid), &claims(json!({})))
}

#[tokio::test]
async fn keys_are_chosen_by_kid_and_declared_alg() {
    let idp = TestIdp::start(jwks(&[
        jwk("rsa1", "r1", Some("RS256")),
        jwk("rsa2", "r2", None),
        jwk("ec256", "e1", None),
        jwk("ed25519", "d1", Some("EdDSA")),
    ]))
    .await;
    let p = provider("main", &idp.auth("main", r#"["RS256", "PS256", "ES256", "EdDSA"]"#)).await;
    assert_eq!(idp.fetches(), 1);

    assert_eq!(check(&p, &token("rsa1", Algorithm::RS256, "r1")).await, Ok(()));
    assert_eq!(check(&p, &token("rsa2", Algorithm::PS256, "r2")).await, Ok(()), "no alg on the JWK: any RSA alg");
    assert_eq!(check(&p, &token("ec256", Algorithm::ES256, "e1")).await, Ok(()));
    assert_eq!(check(&p, &token("ed25519", Algorithm::EdDSA, "d1")).await, Ok(()));

    // r1 declares RS256: a PS256 token cannot use it, even signed by the right key.
    assert_eq!(check(&p, &token("rsa1", Algorithm::PS256, "r1")).await, INVALID);
    // A kid naming one key, signed by another.
    assert_eq!(check(&p, &token("rsa2", Algorithm::RS256, "r1")).await, INVALID);
    assert_eq!(check(&p, &token("rsa1", Algorithm::RS256, "r2")).await, INVALID);
    // No kid, several keys of the algorithm: tried in turn, the right one verifies.
    let no_kid = mint(Algorithm::RS256, &signing_key("rsa2"), None, &claims(json!({})));
    assert_eq!(check(&p, &no_kid).await, Ok(()));
    // HS256 with the public key's PEM as the secret: not pinned, refused.
    let confused = mint(
        Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(&read_key("test-rsa1-public.pem")).unwrap(),
        Some("r1"),
        &claims(json!({})),
    );
    assert_eq!(check(&p, &confused).await, INVALID);
}

#[tokio::test]
async fn unusable_jwks_entries_are_ignored() {
    let mut enc = jwk("rsa2", "r2", None);
    enc["use"] = "enc".into();
    let oct = json!({"kty": "oct", "kid": "h", "k": b64(SECRET.as_bytes()), "alg": "HS256"});
    let idp = TestIdp::start(jwks(&[jwk("rsa1", "r1", None), enc, oct, json!({"kty": "unknown"})])).await;
    let p = provider("main", &idp.auth("main", r#"["RS256"]"#)).await;
    assert_eq!(check(&p, &token("rsa1", Algorithm::RS256, "r1")).await, Ok(()));
    assert_eq!(check(&p, &token("rsa2", Algorithm::RS256, "r2")).await, INVALID, "use = enc");
}

#[tokio::test]
async fn rotation_is_picked_up_on_an_unknown_kid() {
    let idp = TestIdp::start(jwks(&[jwk("rsa1", "old", None)])).await;
    let p = provider("main", &idp.auth("main", r#"["RS256"]"#)).await;
    let new_token = token("rsa2", Algorithm::RS256, "new");
    assert_eq!(check(&p, &token("rsa1", Algorithm::RS256, "old")).await, Ok(()));

    idp.set_jwks(jwks(&[jwk("rsa1", "old", None), jwk("rsa2", "new", None)]));
    // Let the on-demand rate limit (200 ms in these tests) pass since the first fetch.
    tokio::time::sleep(fast_policy().min_refresh_interval).await;
    assert_eq!(check(&p, &new_token).await, Ok(()));
    assert_eq!(idp.fetches(), 2);
    // Both keys are known now: no more fetches.
    assert_eq!(check(&p, &token("rsa1", Algorithm::RS256, "old")).await, Ok(()));
    assert_eq!(check(&p, &token("rsa2", Algorithm::RS256, "new")).await, Ok(()));
    assert_eq!(idp.fetches(), 2);

    // The old key retired: its new tokens fail once the set is refreshed. (A token
    // verified before stays accepted until it expires: the verified-token cache.)
    idp.set_jwks(jwks(&[jwk("rsa2", "new", None), jwk("rsa2", "newer", None)]));
    tokio::time::sleep(fast_policy().min_refresh_interval).await;
    assert_eq!(check(&p, &token("rsa2", Algorithm::RS256, "newer")).await, Ok(()));
    let unseen = mint(Algorithm::RS256, &signing_key("rsa1"), Some("old"), &claims(json!({"n": 2})));
    assert_eq!(check(&p, &unseen).await, INVALID);
}

#[tokio::test]
async fn an_unknown_kid_flood_fetches_at_most_once() {
    let idp = TestIdp::start(jwks(&[jwk("rsa1", "r1", None)])).await;
    // An interval the whole flood surely fits in, even on a loaded machine.
    let policy = JwksPolicy { min_refresh_interval: Duration::from_secs(1), ..fast_policy() };
    let p = Arc::new(provider_with("main", &idp.auth("main", r#"["RS256"]"#), &policy).await.unwrap());
    tokio::time::sleep(policy.min_refresh_interval).await;

    let mut rng = XorShift(42);
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let kid = format!("random-{}", rng.next());
        let t = token("rsa1", Algorithm::RS256, &kid);
        let p = p.clone();
        flood.spawn(async move { check(&p, &t).await });
    }
    let mut refused = 0;
    while let Some(result) = flood.join_next().await {
        // rsa1 is the only key, and it has a kid: an unknown kid never falls back to it.
        assert_eq!(result.unwrap(), INVALID);
        refused += 1;
    }
    assert_eq!(refused, 100);
    assert_eq!(idp.fetches(), 2, "the first fetch and one refresh");

    // And with the default interval (5 s), straight after the build: no refresh at all.
    let strict = provider_with("main", &idp.auth("main", r#"["RS256"]"#), &JwksPolicy::default()).await.unwrap();
    let before = idp.fetches();
    for i in 0..100 {
        assert_eq!(check(&strict, &token("rsa1", Algorithm::RS256, &format!("k{i}"))).await, INVALID);
    }
    assert_eq!(idp.fetches(), before);
}

#[tokio::test]
async fn a_foreign_issuer_does_not_cause_a_fetch() {
    let idp = TestIdp::start(jwks(&[jwk("rsa1", "r1", None)])).await;
    let p = provider("main", &idp.auth("main", r#"["RS256"]"#)).await;
    tokio::time::sleep(fast_policy().min_refresh_interval).await;
    let foreign = mint(Algorithm::RS256, &signing_key("rsa2"), Some("x"), &claims(json!({"iss": "https://other/"})));
    assert_eq!(check(&p, &foreign).await, INVALID);
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn the_last_good_keys_serve_while_the_idp_is_down() {
    let idp = TestIdp::start(jwks(&[jwk("ec256", "e1", None)])).await;
    // max-age=0: the background refresh runs every min_ttl (shortened here).
    idp.set_cache_control(Some("max-age=0"));
    let policy =
        JwksPolicy { min_ttl: Duration::from_millis(50), retry_interval: Duration::from_millis(50), ..fast_policy() };
    let p = provider_with("main", &idp.auth("main", r#"["ES256"]"#), &policy).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(idp.fetches() >= 2, "background refresh on the cache lifetime ({} fetches)", idp.fetches());

    idp.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Fresh tokens (not in the verified-token cache) still verify with the kept keys.
    for i in 0..3 {
        let t = mint(Algorithm::ES256, &signing_key("ec256"), Some("e1"), &claims(json!({"n": i})));
        assert_eq!(check(&p, &t).await, Ok(()));
    }
    // An unknown kid tries a refresh, which fails: refused, keys kept.
    assert_eq!(check(&p, &token("ec256", Algorithm::ES256, "e2")).await, INVALID);
    assert_eq!(check(&p, &token("ec256", Algorithm::ES256, "e1")).await, Ok(()));
}

#[tokio::test]
async fn building_needs_a_reachable_idp_with_usable_keys() {
    let idp = TestIdp::start(jwks(&[jwk("ec256", "e1", None)])).await;
    let auth = idp.auth("main", r#"["ES256"]"#);
    idp.stop();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = provider_with("main", &auth, &fast_policy()).await.unwrap_err();
    assert!(err.starts_with("jwks_url http://127.0.0.1:"), "{err}");

    let idp = TestIdp::start(jwks(&[jwk("ec256", "e1", None)])).await;
    let err = provider_with("main", &idp.auth("main", r#"["RS256"]"#), &fast_policy()).await.unwrap_err();
    assert!(err.contains("no key in the JWKS"), "{err}");

    let idp = TestIdp::start(json!({"not": "a jwks"})).await;
    let err = provider_with("main", &idp.auth("main", r#"["RS256"]"#), &fast_policy()).await.unwrap_err();
    assert!(err.contains("no \"keys\" array"), "{err}");

    // A body over the limit.
    let big: Vec<_> = (0..2000).map(|i| jwk("rsa1", &format!("k{i}"), None)).collect();
    let idp = TestIdp::start(jwks(&big)).await;
    let small = JwksPolicy { max_bytes: 64 * 1024, ..fast_policy() };
    let err = provider_with("main", &idp.auth("main", r#"["RS256"]"#), &small).await.unwrap_err();
    assert!(err.contains("larger than"), "{err}");
}

#[tokio::test]
async fn a_silent_idp_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let auth = format!("[auth.main]\ntype = \"jwt\"\nalgorithms = [\"RS256\"]\njwks_url = \"{url}\"\n");
    let policy = JwksPolicy { fetch_timeout: Duration::from_millis(200), ..fast_policy() };
    let started = std::time::Instant::now();
    let err = provider_with("main", &auth, &policy).await.unwrap_err();
    assert!(err.contains("no answer within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_reload_keeps_unchanged_providers_and_stops_removed_ones() {
    let idp = TestIdp::start(jwks(&[jwk("rsa1", "r1", None)])).await;
    idp.set_cache_control(Some("max-age=0"));
    let other = TestIdp::start(jwks(&[jwk("rsa2", "r2", None)])).await;
    other.set_cache_control(Some("max-age=0"));
    let before = config(&format!("{}\n{}", idp.auth("main", r#"["RS256"]"#), other.auth("other", r#"["RS256"]"#)));
    let policy = JwksPolicy { min_ttl: Duration::from_millis(50), ..fast_policy() };
    let first = gateway_auth::Providers::build_with(&before, &keys_dir(), None, &policy).await.unwrap();
    assert_eq!((idp.fetches(), other.fetches()), (1, 1));

    // `main` unchanged, `other` removed, `keys` added.
    let after = config(&format!(
        "{}\n[auth.keys]\ntype = \"api_key\"\nheader = \"x-api-key\"\nkeys = [{{ consumer = \"acme\", sha256 = \"{}\" }}]\n",
        idp.auth("main", r#"["RS256"]"#),
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    ));
    let second = gateway_auth::Providers::build_with(&after, &keys_dir(), Some(&first), &policy).await.unwrap();
    assert!(Arc::ptr_eq(first.get("main").unwrap(), second.get("main").unwrap()), "kept, not rebuilt nor refetched");
    assert!(second.get("other").is_none());
    assert_eq!(second.len(), 2);

    // Dropping the old set drops `other`: its background refresh stops.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped_at = other.fetches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(other.fetches(), stopped_at, "removed provider still refreshing");
    // `main` lives on in `second` and keeps refreshing.
    let main_at = idp.fetches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(idp.fetches() > main_at);

    // A reload where one provider fails fails as a whole, with the provider's name.
    idp.stop();
    let broken = config(&other.auth("other", r#"["ES256"]"#));
    let errors = gateway_auth::Providers::build_with(&broken, &keys_dir(), Some(&second), &policy).await.unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "other");
}

#[tokio::test]
async fn https_urls_go_through_tls() {
    // The test identity provider speaks plain HTTP: a TLS handshake with it fails.
    let idp = TestIdp::start(jwks(&[jwk("rsa1", "r1", None)])).await;
    let auth = idp.auth("main", r#"["RS256"]"#).replace("http://", "https://");
    let err = provider_with("main", &auth, &fast_policy()).await.unwrap_err();
    assert!(err.starts_with("jwks_url https://127.0.0.1:"), "{err}");
    assert_eq!(idp.fetches(), 0);
}

/// As in the gateway: providers built on the main runtime, requests served by
/// single-threaded worker runtimes on other threads, whose on-demand refreshes run
/// there, while the background refresh stays on the main runtime.
#[test]
fn providers_built_on_one_runtime_serve_on_others() {
    let main = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (idp, provider) = main.block_on(async {
        let idp = TestIdp::start(jwks(&[jwk("rsa1", "r1", None)])).await;
        let provider = provider("main", &idp.auth("main", r#"["RS256"]"#)).await;
        (idp, Arc::new(provider))
    });
    idp.set_jwks(jwks(&[jwk("rsa1", "r1", None), jwk("rsa2", "r2", None)]));
    std::thread::sleep(fast_policy().min_refresh_interval);

    let workers: Vec<_> = (0..2)
        .map(|i| {
            let provider = provider.clone();
            std::thread::spawn(move || {
                let worker = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                worker.block_on(async {
                    let t = mint(Algorithm::RS256, &signing_key("rsa2"), Some("r2"), &claims(json!({"worker": i})));
                    check(&provider, &t).await
                })
            })
        })
        .collect();
    for worker in workers {
        assert_eq!(worker.join().unwrap(), Ok(()));
    }
    assert_eq!(idp.fetches(), 2, "one on-demand refresh, from whichever worker came first");
    drop(provider);
    main.block_on(async { drop(idp) });
}
