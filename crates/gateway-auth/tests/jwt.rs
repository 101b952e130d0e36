//! JWT providers with a secret or a PEM public key: every algorithm family, every
//! registered-claim failure, forged and garbage tokens.
//!
//! cargo test -p gateway-auth --test jwt
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gateway_auth::{AuthError, Provider};
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

fn pem_auth(algorithms: &str, file: &str) -> String {
    format!(
        "[auth.main]\ntype = \"jwt\"\nalgorithms = {algorithms}\npublic_key_file = \"{file}\"\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\nforward_claims = {{ sub = \"x-user-id\", email = \"x-user-email\" }}\n"
    )
}

fn secret_auth() -> String {
    format!(
        "[auth.main]\ntype = \"jwt\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\nissuer = \"{ISS}\"\naudience = [\"other\", \"{AUD}\"]\nleeway = \"5s\"\n"
    )
}

async fn rsa_provider() -> Provider {
    provider("main", &pem_auth("[\"RS256\", \"PS256\"]", "test-rsa1-public.pem")).await
}

async fn check(provider: &Provider, token: &str) -> Result<gateway_core::Principal, AuthError> {
    provider.authenticate(&bearer(token), None).await
}

#[tokio::test]
async fn each_algorithm_family_verifies() {
    let cases: [(&str, &str, Algorithm, EncodingKeyFn); 6] = [
        ("[\"RS256\"]", "test-rsa1-public.pem", Algorithm::RS256, || signing_key("rsa1")),
        ("[\"PS256\"]", "test-rsa1-public.pem", Algorithm::PS256, || signing_key("rsa1")),
        ("[\"RS512\"]", "test-rsa1-public-pkcs1.pem", Algorithm::RS512, || signing_key("rsa1")),
        ("[\"RS256\"]", "test-rsa1-cert.pem", Algorithm::RS256, || signing_key("rsa1")),
        ("[\"ES256\"]", "test-ec256-public.pem", Algorithm::ES256, || signing_key("ec256")),
        ("[\"EdDSA\"]", "test-ed25519-public.pem", Algorithm::EdDSA, || signing_key("ed25519")),
    ];
    for (algorithms, file, alg, key) in cases {
        let p = provider("main", &pem_auth(algorithms, file)).await;
        let token = mint(alg, &key(), None, &claims(json!({"email": "alice@example.com"})));
        let principal = check(&p, &token).await.unwrap_or_else(|e| panic!("{alg:?} with {file}: {e:?}"));
        assert_eq!(&*principal.provider, "main");
        assert_eq!(principal.subject.as_deref(), Some("alice"));
        assert_eq!(principal.consumer, None);
        assert_eq!(principal.claims["email"], "alice@example.com");
        let headers = p.upstream_headers(&principal);
        assert!(headers.contains(&("x-user-id".parse().unwrap(), HeaderValue::from_static("alice"))));
        assert!(headers.contains(&("x-user-email".parse().unwrap(), HeaderValue::from_static("alice@example.com"))));
    }

    let hs = provider("main", &secret_auth()).await;
    let token = mint(Algorithm::HS256, &hmac_key(), Some("any"), &claims(json!({})));
    assert_eq!(check(&hs, &token).await.unwrap().subject.as_deref(), Some("alice"));
}

type EncodingKeyFn = fn() -> jsonwebtoken::EncodingKey;

#[tokio::test]
async fn registered_claims_are_enforced() {
    let p = rsa_provider().await;
    let key = signing_key("rsa1");
    let with = |extra: Value| mint(Algorithm::RS256, &key, None, &claims(extra));

    assert_eq!(check(&p, &with(json!({"exp": now() - 3600}))).await, Err(AuthError::Invalid("token expired")));
    // Within the default leeway (60 s): still accepted.
    assert!(check(&p, &with(json!({"exp": now() - 10}))).await.is_ok());
    assert_eq!(check(&p, &with(json!({"nbf": now() + 3600}))).await, Err(AuthError::Invalid("token not yet valid")));
    assert!(check(&p, &with(json!({"nbf": now() - 5}))).await.is_ok());
    let invalid = Err(AuthError::Invalid("invalid token"));
    assert_eq!(check(&p, &with(json!({"iss": "https://evil.test/"}))).await, invalid);
    assert_eq!(check(&p, &with(json!({"iss": null}))).await, invalid, "iss required when configured");
    assert_eq!(check(&p, &with(json!({"aud": "someone-else"}))).await, invalid);
    assert_eq!(check(&p, &with(json!({"aud": null}))).await, invalid, "aud required when configured");
    assert!(check(&p, &with(json!({"aud": ["x", AUD]}))).await.is_ok(), "aud as an array");
    assert_eq!(check(&p, &with(json!({"exp": null}))).await, invalid, "exp is always required");
    assert_eq!(check(&p, &with(json!({"exp": "tomorrow"}))).await, invalid);

    // A list of audiences in the configuration, and the configured leeway (5 s).
    let hs = provider("main", &secret_auth()).await;
    let hs_with = |extra: Value| mint(Algorithm::HS256, &hmac_key(), None, &claims(extra));
    assert!(check(&hs, &hs_with(json!({"aud": "other"}))).await.is_ok());
    assert_eq!(check(&hs, &hs_with(json!({"exp": now() - 30}))).await, Err(AuthError::Invalid("token expired")));
}

#[tokio::test]
async fn provider_without_issuer_or_audience_checks_neither() {
    let auth = "[auth.main]\ntype = \"jwt\"\nalgorithms = [\"EdDSA\"]\npublic_key_file = \"test-ed25519-public.pem\"\n";
    let p = provider("main", auth).await;
    let token = mint(Algorithm::EdDSA, &signing_key("ed25519"), None, &claims(json!({"iss": null, "aud": "anyone"})));
    assert!(check(&p, &token).await.is_ok());
    let no_exp = mint(Algorithm::EdDSA, &signing_key("ed25519"), None, &claims(json!({"exp": null})));
    assert!(check(&p, &no_exp).await.is_err());
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let p = rsa_provider().await;
    let invalid = Err(AuthError::Invalid("invalid token"));

    // Signed by another key.
    let other = mint(Algorithm::RS256, &signing_key("rsa2"), None, &claims(json!({})));
    assert_eq!(check(&p, &other).await, invalid);

    // A valid token whose payload was changed afterwards.
    let good = mint(Algorithm::RS256, &signing_key("rsa1"), None, &claims(json!({})));
    assert!(check(&p, &good).await.is_ok());
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_payload = b64(claims(json!({"sub": "admin"})).to_string().as_bytes());
    let tampered = format!("{}.{}.{}", parts[0], tampered_payload, parts[2]);
    assert_eq!(check(&p, &tampered).await, invalid);

    // A signature cut short or dropped.
    assert_eq!(check(&p, &format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20])).await, invalid);
    assert_eq!(check(&p, &format!("{}.{}.", parts[0], parts[1])).await, invalid);

    // `alg: none`, in any spelling, with or without a signature part.
    for alg in ["none", "None", "NONE", ""] {
        let header = json!({"alg": alg, "typ": "JWT"});
        assert_eq!(check(&p, &raw_token(&header, &claims(json!({})), "")).await, invalid, "alg {alg:?}");
        assert_eq!(check(&p, &raw_token(&header, &claims(json!({})), parts[2])).await, invalid);
    }

    // Algorithm confusion: HS256 "signed" with the RSA public key as the secret.
    let public_pem = read_key("test-rsa1-public.pem");
    let confused = mint(
        Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(&public_pem).unwrap(),
        None,
        &claims(json!({"sub": "admin"})),
    );
    assert_eq!(check(&p, &confused).await, invalid);

    // A pinned algorithm of another family than the key: RS256 pinned, ES256 token.
    let es = mint(Algorithm::ES256, &signing_key("ec256"), None, &claims(json!({})));
    assert_eq!(check(&p, &es).await, invalid);
    // An algorithm of the right family that is not pinned.
    let rs512 = mint(Algorithm::RS512, &signing_key("rsa1"), None, &claims(json!({})));
    assert_eq!(check(&p, &rs512).await, invalid);
}

#[tokio::test]
async fn credentials_in_other_forms() {
    let p = rsa_provider().await;
    let token = mint(Algorithm::RS256, &signing_key("rsa1"), None, &claims(json!({})));

    assert_eq!(p.authenticate(&HeaderMap::new(), None).await, Err(AuthError::Missing));
    let mut basic = HeaderMap::new();
    basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
    assert_eq!(p.authenticate(&basic, None).await, Err(AuthError::Missing));
    let mut lower = HeaderMap::new();
    lower.insert(AUTHORIZATION, HeaderValue::from_str(&format!("bearer {token}")).unwrap());
    assert!(p.authenticate(&lower, None).await.is_ok());
    let mut twice = bearer(&token);
    twice.append(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    assert_eq!(p.authenticate(&twice, None).await, Err(AuthError::Invalid("invalid token")));
    // A token in the query string is not looked at.
    assert_eq!(
        p.authenticate(&HeaderMap::new(), Some(&format!("access_token={token}"))).await,
        Err(AuthError::Missing)
    );
}

#[tokio::test]
async fn claims_with_control_characters_are_never_forwarded() {
    let p = rsa_provider().await;
    let key = signing_key("rsa1");
    let bad = mint(Algorithm::RS256, &key, None, &claims(json!({"sub": "alice\r\nx-admin: true"})));
    assert_eq!(check(&p, &bad).await, Err(AuthError::Invalid("invalid token")));
    let bad_email = mint(Algorithm::RS256, &key, None, &claims(json!({"email": "a\u{0}b"})));
    assert_eq!(check(&p, &bad_email).await, Err(AuthError::Invalid("invalid token")));
    // The same characters in a claim that is not forwarded are harmless.
    let fine = mint(Algorithm::RS256, &key, None, &claims(json!({"note": "line\nbreak"})));
    assert!(check(&p, &fine).await.is_ok());
    // Objects are not forwarded, and do not fail the request.
    let object = mint(Algorithm::RS256, &key, None, &claims(json!({"email": {"a": 1}})));
    let principal = check(&p, &object).await.unwrap();
    assert_eq!(p.upstream_headers(&principal).len(), 1, "only x-user-id");
}

#[tokio::test]
async fn a_verified_token_is_remembered_until_it_expires() {
    let p = rsa_provider().await;
    let token = mint(Algorithm::RS256, &signing_key("rsa1"), None, &claims(json!({"n": 1})));
    let first = check(&p, &token).await.unwrap();
    let second = check(&p, &token).await.unwrap();
    assert_eq!(first, second);
    // The cache is keyed by the whole token: a changed signature is checked anew.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(check(&p, &forged).await.is_err());
}

#[tokio::test]
async fn garbage_never_panics_and_never_passes() {
    let p = rsa_provider().await;
    let hs = provider("main", &secret_auth()).await;
    let good = mint(Algorithm::RS256, &signing_key("rsa1"), None, &claims(json!({})));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let alphabet: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/~ \"{}:,\\";

    let mut inputs: Vec<String> = Vec::new();
    for len in 0..good.len() {
        inputs.push(good[..len].to_owned());
    }
    for _ in 0..500 {
        let len = rng.below(300);
        inputs.push((0..len).map(|_| alphabet[rng.below(alphabet.len())] as char).collect());
    }
    // Structurally valid tokens with hostile headers and payloads.
    let headers = [
        json!({"alg": "RS256", "kid": 5}),
        json!({"alg": "RS256", "crit": ["b64"], "b64": false}),
        json!({"alg": "RS256", "jku": "http://127.0.0.1:1/evil", "jwk": {"kty": "oct", "k": "AA"}}),
        json!({"alg": "HS256"}),
        json!({"alg": ["RS256"]}),
        json!("RS256"),
        json!(null),
    ];
    let payloads = [
        json!({"exp": 1e300}),
        json!({"exp": -1}),
        json!({"exp": u64::MAX}),
        json!({"exp": 18446744073709551615.0_f64, "nbf": 1e300}),
        json!({"iss": {"a": 1}, "aud": 5}),
        json!([1, 2, 3]),
        json!("string"),
    ];
    for h in &headers {
        for pl in &payloads {
            inputs.push(raw_token(h, pl, "c2ln"));
            inputs.push(format!("{}.{}", b64(h.to_string().as_bytes()), b64(pl.to_string().as_bytes())));
        }
    }
    inputs.push("a.b.c.d".into());
    inputs.push("..".into());
    inputs.push("x".repeat(20_000));

    for input in &inputs {
        for provider in [&p, &hs] {
            let mut headers = HeaderMap::new();
            let Ok(value) = HeaderValue::from_str(&format!("Bearer {input}")) else { continue };
            headers.insert(AUTHORIZATION, value);
            match provider.authenticate(&headers, None).await {
                Err(e) => assert_eq!(e.status(), 401, "{input:?}"),
                Ok(_) => panic!("accepted garbage {input:?}"),
            }
        }
    }

    // Hostile claims in tokens whose signature is right: refused, no panic.
    for pl in &payloads {
        let Ok(token) = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), pl, &hmac_key()) else {
            continue;
        };
        assert!(check(&hs, &token).await.is_err(), "{pl}");
    }
}

#[tokio::test]
async fn build_errors_name_the_problem() {
    let err = provider_with("main", &pem_auth("[\"RS256\"]", "missing.pem"), &fast_policy()).await.unwrap_err();
    assert!(err.contains("missing.pem"), "{err}");
    let err =
        provider_with("main", &pem_auth("[\"RS256\"]", "test-rsa1-private.pem"), &fast_policy()).await.unwrap_err();
    assert!(err.contains("PRIVATE KEY"), "{err}");
    let err =
        provider_with("main", &pem_auth("[\"ES256\"]", "test-rsa1-public.pem"), &fast_policy()).await.unwrap_err();
    assert!(err.contains("RSA key") && err.contains("ES256"), "{err}");
    let err = provider_with("main", &pem_auth("[\"EdDSA\"]", "README.md"), &fast_policy()).await.unwrap_err();
    assert!(err.contains("no PEM block"), "{err}");
}
