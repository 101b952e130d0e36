//! Authentication at the edge, end to end: JWT and API keys per route, claims, and
//! identity headers no client can inject.

use bytes::Bytes;
use gateway_tests::{get_with, Backend, TestGateway};
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{encode, EncodingKey, Header};
use sha2::{Digest, Sha256};

const SECRET: &str = "a-test-secret-of-reasonable-length";

fn token(claims: serde_json::Value) -> String {
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn hex_sha256(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

async fn setup() -> (Backend, TestGateway) {
    let backend = Backend::start().await;
    let config = format!(
        r#"
[services.echo]
endpoints = ["http://{addr}"]

[auth.main]
type = "jwt"
algorithms = ["HS256"]
secret = "{SECRET}"
issuer = "https://idp.test/"
audience = "api"
forward_claims = {{ sub = "x-user-id" }}

[auth.partners]
type = "api_key"
header = "x-api-key"
keys = [{{ consumer = "acme", sha256 = "{digest}" }}]

[[routes]]
name = "jwt-only"
path_prefix = "/jwt"
service = "echo"
auth = ["main"]

[[routes]]
name = "scoped"
path_prefix = "/scoped"
service = "echo"
auth = ["main"]
require_claims = {{ scope = "users:read" }}

[[routes]]
name = "either"
path_prefix = "/either"
service = "echo"
auth = ["main", "partners"]

[[routes]]
name = "public"
path_prefix = "/public"
service = "echo"
"#,
        addr = backend.addr,
        digest = hex_sha256("key-123"),
    );
    let gw = TestGateway::start(&config).await;
    (backend, gw)
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut base = serde_json::json!({
        "sub": "user-7", "iss": "https://idp.test/", "aud": "api", "exp": now() + 300,
    });
    base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    base
}

#[tokio::test]
async fn valid_jwt_passes_and_its_claims_go_upstream() {
    let (backend, gw) = setup().await;
    let bearer = format!("Bearer {}", token(claims(serde_json::json!({}))));
    let resp = gw.request(get_with("/jwt/x", &[("authorization", &bearer), ("x-user-id", "admin")])).await;
    assert_eq!(resp.status, 200);
    let seen = backend.last();
    assert_eq!(seen.header("x-user-id"), Some("user-7"), "the claim replaced the client's copy");
    assert_eq!(seen.headers["x-user-id"].len(), 1);
    assert_eq!(seen.header("authorization"), Some(bearer.as_str()), "forwarded by default");
}

#[tokio::test]
async fn missing_or_bad_credentials_are_401_and_never_reach_the_backend() {
    let (backend, gw) = setup().await;
    let missing = gw.request(get_with("/jwt/x", &[])).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error_code(), "unauthorized");
    assert!(missing.header("www-authenticate").unwrap().starts_with("Bearer"));

    let expired = token(claims(serde_json::json!({"exp": now() - 3600})));
    let wrong_issuer = token(claims(serde_json::json!({"iss": "https://evil.test/"})));
    let mut tampered = token(claims(serde_json::json!({})));
    tampered.insert(tampered.find('.').unwrap() + 3, 'x');
    for bad in [expired, wrong_issuer, tampered, "not.a.token".to_owned(), "e30.e30.".to_owned()] {
        let resp = gw.request(get_with("/jwt/x", &[("authorization", &format!("Bearer {bad}"))])).await;
        assert_eq!(resp.status, 401, "{bad}");
        assert!(resp.header("www-authenticate").unwrap().contains("invalid_token"));
    }
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn missing_scope_is_403() {
    let (backend, gw) = setup().await;
    let no_scope = format!("Bearer {}", token(claims(serde_json::json!({"scope": "orders:read"}))));
    let resp = gw.request(get_with("/scoped", &[("authorization", &no_scope)])).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "forbidden");
    let scoped = format!("Bearer {}", token(claims(serde_json::json!({"scope": "orders:read users:read"}))));
    assert_eq!(gw.request(get_with("/scoped", &[("authorization", &scoped)])).await.status, 200);
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn any_of_providers_accepts_an_api_key_and_names_the_consumer() {
    let (backend, gw) = setup().await;
    let resp = gw.request(get_with("/either", &[("x-api-key", "key-123"), ("X-Consumer", "mallory")])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(backend.last().header("x-consumer"), Some("acme"));
    assert_eq!(gw.request(get_with("/either", &[("x-api-key", "wrong")])).await.status, 401);
    let bearer = format!("Bearer {}", token(claims(serde_json::json!({}))));
    assert_eq!(gw.request(get_with("/either", &[("authorization", &bearer)])).await.status, 200);
}

#[tokio::test]
async fn spoofed_identity_headers_are_removed_on_public_routes_too() {
    let (backend, gw) = setup().await;
    let resp = gw
        .request(get_with("/public", &[("X-User-Id", "admin"), ("x_user_id", "admin"), ("X-CONSUMER", "acme")]))
        .await;
    assert_eq!(resp.status, 200);
    let seen = backend.last();
    assert_eq!(seen.header("x-user-id"), None);
    assert_eq!(seen.header("x_user_id"), None);
    assert_eq!(seen.header("x-consumer"), None);
}

#[tokio::test]
async fn grpc_callers_get_unauthenticated() {
    let (_backend, gw) = setup().await;
    let resp = gw.request(get_with("/jwt/pkg.Svc/Call", &[("content-type", "application/grpc")])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("16"));
}

#[tokio::test]
async fn cors_preflight_is_answered_before_auth_and_errors_carry_cors_headers() {
    let backend = Backend::start().await;
    let config = format!(
        r#"
[services.echo]
endpoints = ["http://{}"]
[auth.main]
type = "jwt"
algorithms = ["HS256"]
secret = "{SECRET}"
[[routes]]
name = "api"
path_prefix = "/api"
methods = ["GET", "POST"]
service = "echo"
auth = ["main"]
cors = {{ allow_origins = ["https://app.test"], allow_headers = ["authorization", "content-type"], max_age = "10m" }}
"#,
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let preflight = |origin: &str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/api/items")
            .header("host", "a")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let ok = gw.request(preflight("https://app.test")).await;
    assert_eq!(ok.status, 204);
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.test"));
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(ok.header("access-control-allow-headers"), Some("authorization, content-type"));
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    let foreign = gw.request(preflight("https://evil.test")).await;
    assert_eq!(foreign.header("access-control-allow-origin"), None);
    assert_ne!(foreign.status, 204);
    let refused = gw.request(get_with("/api/items", &[("origin", "https://app.test")])).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("access-control-allow-origin"), Some("https://app.test"));
    assert!(backend.seen().is_empty(), "preflights never reach the backend");
}
