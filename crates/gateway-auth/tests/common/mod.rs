//! Shared fixtures of the integration tests: the committed test keys, token minting, a
//! configuration from TOML text, and a test identity provider that serves a JWKS over
//! a real socket on 127.0.0.1:0, counts its fetches, rotates keys and goes down.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use gateway_auth::{JwksPolicy, Provider, Providers};
use gateway_config::Config;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ISS: &str = "https://idp.test/";
pub const AUD: &str = "api";
pub const SECRET: &str = "a-test-secret-of-reasonable-length-0123456789";

/// `crates/gateway-auth/tests/keys`: relative key paths in configurations resolve here.
pub fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("keys")
}

pub fn read_key(file: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(file)).unwrap()
}

/// The signing key of a committed test key pair (`rsa1`, `rsa2`, `ec256`, `ed25519`).
pub fn signing_key(name: &str) -> EncodingKey {
    let pem = read_key(&format!("test-{name}-private.pem"));
    match name {
        "rsa1" | "rsa2" => EncodingKey::from_rsa_pem(&pem).unwrap(),
        "ec256" => EncodingKey::from_ec_pem(&pem).unwrap(),
        "ed25519" => EncodingKey::from_ed_pem(&pem).unwrap(),
        other => panic!("no test key {other}"),
    }
}

pub fn hmac_key() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes()).unwrap()
}

/// The public JWK of a committed key pair, with `kid` and (optionally) `alg`.
pub fn jwk(name: &str, kid: &str, alg: Option<&str>) -> Value {
    let pem = read_key(&format!("test-{name}-public.pem"));
    let (key, family_alg) = match name {
        "rsa1" | "rsa2" => (DecodingKey::from_rsa_pem(&pem).unwrap(), Algorithm::RS256),
        "ec256" => (DecodingKey::from_ec_pem(&pem).unwrap(), Algorithm::ES256),
        "ed25519" => (DecodingKey::from_ed_pem(&pem).unwrap(), Algorithm::EdDSA),
        other => panic!("no test key {other}"),
    };
    let mut value = serde_json::to_value(Jwk::from_decoding_key(&key, Some(family_alg)).unwrap()).unwrap();
    let object = value.as_object_mut().unwrap();
    object.remove("alg");
    object.insert("kid".into(), kid.into());
    object.insert("use".into(), "sig".into());
    if let Some(alg) = alg {
        object.insert("alg".into(), alg.into());
    }
    value
}

pub fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims that a provider with `issuer = ISS`, `audience = AUD` accepts, with `extra`
/// merged in (a `null` removes a claim).
pub fn claims(extra: Value) -> Value {
    let mut c = json!({ "sub": "alice", "iss": ISS, "aud": AUD, "iat": now(), "exp": now() + 600 });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

pub fn mint(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with this header and payload JSON and a made-up signature.
pub fn raw_token(header: &Value, payload: &Value, signature: &str) -> String {
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(payload.to_string().as_bytes()), signature)
}

pub fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    headers
}

/// A validated configuration: one service, these providers and routes (TOML text).
pub fn config(auth_and_routes: &str) -> Config {
    let text = format!("[services.backend]\nendpoints = [\"http://127.0.0.1:9\"]\n\n{auth_and_routes}");
    match gateway_config::parse("gateway.toml", &text, &|_| None) {
        Ok(config) => config,
        Err(errors) => panic!("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")),
    }
}

/// The one provider `NAME` of a configuration of only `[auth.NAME]` text.
pub async fn provider(name: &str, auth: &str) -> Provider {
    provider_with(name, auth, &fast_policy()).await.unwrap()
}

pub async fn provider_with(name: &str, auth: &str, policy: &JwksPolicy) -> Result<Provider, String> {
    let config = config(auth);
    Provider::build_with(name, &config.auth[name], &keys_dir(), policy).await
}

pub async fn providers(config: &Config, previous: Option<&Providers>) -> Providers {
    Providers::build_with(config, &keys_dir(), previous, &fast_policy()).await.unwrap()
}

/// The default policy with short intervals, so that tests wait milliseconds.
pub fn fast_policy() -> JwksPolicy {
    JwksPolicy {
        fetch_timeout: Duration::from_secs(2),
        min_refresh_interval: Duration::from_millis(200),
        ..JwksPolicy::default()
    }
}

struct IdpState {
    jwks: Mutex<Value>,
    cache_control: Mutex<Option<String>>,
    fetches: AtomicUsize,
}

/// A test identity provider: `GET /jwks.json` over HTTP on 127.0.0.1:0.
pub struct TestIdp {
    pub url: String,
    state: Arc<IdpState>,
    server: JoinHandle<()>,
}

impl TestIdp {
    pub async fn start(jwks: Value) -> TestIdp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let state = Arc::new(IdpState {
            jwks: Mutex::new(jwks),
            cache_control: Mutex::new(None),
            fetches: AtomicUsize::new(0),
        });
        let served = state.clone();
        let server = tokio::spawn(async move {
            // Connections live in this set: aborting the server ends them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = served.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestIdp { url, state, server }
    }

    /// Publishes another key set (a rotation).
    pub fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().unwrap() = jwks;
    }

    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = value.map(str::to_owned);
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection: fetches now fail to connect.
    pub fn stop(&self) {
        self.server.abort();
    }

    /// `[auth.NAME]` text for a JWKS provider of this identity provider.
    pub fn auth(&self, name: &str, algorithms: &str) -> String {
        format!(
            "[auth.{name}]\ntype = \"jwt\"\nalgorithms = {algorithms}\njwks_url = \"{}\"\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\n",
            self.url
        )
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn answer(state: &IdpState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/jwks.json" {
        return Response::builder().status(404).body(Full::new(Bytes::new())).unwrap();
    }
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let body = state.jwks.lock().unwrap().to_string();
    let mut response = Response::builder().header("content-type", "application/json");
    if let Some(cc) = state.cache_control.lock().unwrap().as_deref() {
        response = response.header("cache-control", cc);
    }
    response.body(Full::new(Bytes::from(body))).unwrap()
}

/// Deterministic pseudo-random numbers for the garbage-token loops.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
