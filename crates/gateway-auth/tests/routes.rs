//! Routes: API keys, any-of provider lists, `require_claims` (403), the identity
//! headers sent upstream and the removal of client-sent copies.
//!
//! cargo test -p gateway-auth --test routes
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use gateway_auth::{AuthError, IdentityHeaders, Providers, RouteAuth};
use gateway_config::Config;
use http::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use jsonwebtoken::Algorithm;
use serde_json::json;

const ACME: &str = "b81ff514581f28cf9536d9227563cf3a93e9ced7728e175b4e1d044be8a3ef29"; // acme-secret-key
const BETA: &str = "cff61f21c13ee08dfcd793c2b4fd11b7bcaf59bc72bc3f0fc4883583e3344812"; // beta-secret-key

fn gateway_config() -> Config {
    config(&format!(
        r#"
[auth.main]
type = "jwt"
algorithms = ["RS256"]
public_key_file = "test-rsa1-public.pem"
issuer = "{ISS}"
audience = "{AUD}"
forward_claims = {{ sub = "x-user-id", tenant = "X_Tenant" }}

[auth.partners]
type = "api_key"
header = "x-api-key"
keys = [{{ consumer = "acme", sha256 = "{ACME}" }}, {{ consumer = "beta", sha256 = "{BETA}" }}]

[auth.links]
type = "api_key"
query = "api_key"
keys_file = "test-api-keys.txt"

[[routes]]
name = "users"
path_prefix = "/api/users"
service = "backend"
auth = ["main", "partners"]

[[routes]]
name = "admin"
path_prefix = "/api/admin"
service = "backend"
auth = ["main"]
require_claims = {{ scope = "admin:write", tenant = "t1" }}

[[routes]]
name = "public"
path_prefix = "/"
service = "backend"

[[routes]]
name = "links"
path_prefix = "/links"
service = "backend"
auth = ["links"]
"#
    ))
}

struct Gateway {
    config: Config,
    providers: Providers,
}

impl Gateway {
    async fn new() -> Gateway {
        let config = gateway_config();
        let providers = providers(&config, None).await;
        Gateway { config, providers }
    }

    fn route(&self, name: &str) -> Option<RouteAuth> {
        let route = self.config.routes.iter().find(|r| r.name.get_ref() == name).unwrap();
        RouteAuth::compile(route, &self.providers).unwrap()
    }
}

fn api_key(key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_str(key).unwrap());
    headers
}

fn jwt(extra: serde_json::Value) -> String {
    mint(Algorithm::RS256, &signing_key("rsa1"), None, &claims(extra))
}

#[tokio::test]
async fn api_keys_right_wrong_missing() {
    let gw = Gateway::new().await;
    let partners = gw.providers.get("partners").unwrap();

    let acme = partners.authenticate(&api_key("acme-secret-key"), None).await.unwrap();
    assert_eq!(acme.consumer.as_deref(), Some("acme"));
    assert_eq!(acme.subject.as_deref(), Some("acme"));
    assert_eq!(&*acme.provider, "partners");
    assert!(acme.claims.is_empty());
    assert_eq!(partners.upstream_headers(&acme), [(gateway_auth::X_CONSUMER, HeaderValue::from_static("acme"))]);
    let beta = partners.authenticate(&api_key("  beta-secret-key "), None).await.unwrap();
    assert_eq!(beta.consumer.as_deref(), Some("beta"));

    let invalid = Err(AuthError::Invalid("invalid api key"));
    assert_eq!(partners.authenticate(&api_key("acme-secret-kez"), None).await, invalid);
    assert_eq!(partners.authenticate(&api_key("ACME-SECRET-KEY"), None).await, invalid);
    assert_eq!(partners.authenticate(&api_key(ACME), None).await, invalid, "the digest is not the key");
    assert_eq!(partners.authenticate(&api_key(""), None).await, invalid);
    let mut two = api_key("acme-secret-key");
    two.append("x-api-key", HeaderValue::from_static("beta-secret-key"));
    assert_eq!(partners.authenticate(&two, None).await, invalid);
    assert_eq!(partners.authenticate(&HeaderMap::new(), None).await, Err(AuthError::Missing));
    // Header only: the key in the query is not looked at by this provider.
    assert_eq!(
        partners.authenticate(&HeaderMap::new(), Some("x-api-key=acme-secret-key")).await,
        Err(AuthError::Missing)
    );
}

#[tokio::test]
async fn api_keys_in_the_query_and_a_keys_file() {
    let gw = Gateway::new().await;
    let links = gw.providers.get("links").unwrap();
    let none = HeaderMap::new();
    let ok = |q: &'static str| async move { links.authenticate(&HeaderMap::new(), Some(q)).await.map(|p| p.consumer) };

    assert_eq!(ok("a=1&api_key=file-key-1&b=2").await, Ok(Some("filer".into())));
    assert_eq!(ok("api_key=key%2Bwith%2Fbase64%3D").await, Ok(Some("b64er".into())));
    assert_eq!(ok("api_key=key+with/base64=").await, Ok(Some("b64er".into())), "+ is a plus");
    assert_eq!(ok("api%5Fkey=file-key-1").await, Ok(Some("filer".into())));
    assert_eq!(ok("api_key=nope").await, Err(AuthError::Invalid("invalid api key")));
    assert_eq!(ok("api_key=%zz").await, Err(AuthError::Invalid("invalid api key")));
    assert_eq!(ok("api_key=file-key-1&api_key=file-key-1").await, Err(AuthError::Invalid("invalid api key")));
    assert_eq!(ok("api_key=").await, Err(AuthError::Invalid("invalid api key")));
    assert_eq!(ok("other=file-key-1").await, Err(AuthError::Missing));
    assert_eq!(links.authenticate(&none, None).await, Err(AuthError::Missing));

    let route = gw.route("links").unwrap();
    let principal = route.check(&none, Some("api_key=file-key-1")).await.unwrap();
    assert_eq!(route.upstream_headers(&principal), [(gateway_auth::X_CONSUMER, HeaderValue::from_static("filer"))]);
}

#[tokio::test]
async fn any_of_the_route_providers_may_accept() {
    let gw = Gateway::new().await;
    let users = gw.route("users").unwrap();
    assert_eq!(users.provider_names().collect::<Vec<_>>(), ["main", "partners"]);
    assert!(gw.route("public").is_none());

    // An invalid JWT, but a good API key: accepted by the second provider.
    let mut headers = api_key("acme-secret-key");
    headers.insert("authorization", HeaderValue::from_static("Bearer not.a.token"));
    let principal = users.check(&headers, None).await.unwrap();
    assert_eq!(&*principal.provider, "partners");

    // A good JWT alone.
    let principal = users.check(&bearer(&jwt(json!({"tenant": "t1"}))), None).await.unwrap();
    assert_eq!(&*principal.provider, "main");
    let upstream = users.upstream_headers(&principal);
    assert!(upstream.contains(&("x-user-id".parse().unwrap(), HeaderValue::from_static("alice"))));
    assert!(upstream.contains(&("x_tenant".parse().unwrap(), HeaderValue::from_static("t1"))));

    // Nothing at all: 401 with a bare challenge.
    let missing = users.check(&HeaderMap::new(), None).await.unwrap_err();
    assert_eq!(missing, AuthError::Missing);
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.www_authenticate(), "Bearer");

    // A wrong key and no token: 401 invalid.
    let wrong = users.check(&api_key("wrong"), None).await.unwrap_err();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.www_authenticate(), "Bearer error=\"invalid_token\", error_description=\"invalid api key\"");

    // An expired token and no key: the expiry is what the client learns.
    let expired = users.check(&bearer(&jwt(json!({"exp": now() - 3600}))), None).await.unwrap_err();
    assert_eq!(expired, AuthError::Invalid("token expired"));
}

#[tokio::test]
async fn missing_claims_are_403() {
    let gw = Gateway::new().await;
    let admin = gw.route("admin").unwrap();
    assert!(admin.requires_claims());

    let ok = jwt(json!({"scope": "users:read admin:write", "tenant": "t1"}));
    assert!(admin.check(&bearer(&ok), None).await.is_ok());

    let no_scope = jwt(json!({"scope": "users:read", "tenant": "t1"}));
    let err = admin.check(&bearer(&no_scope), None).await.unwrap_err();
    assert_eq!(err, AuthError::InsufficientClaims("scope".into()));
    assert_eq!(err.status(), 403);
    assert_eq!(err.www_authenticate(), "Bearer error=\"insufficient_scope\"");
    let gateway_error = err.into_gateway_error();
    assert_eq!(gateway_error.kind, gateway_core::ErrorKind::Forbidden);
    assert_eq!(
        gateway_error.headers,
        [(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"insufficient_scope\""))]
    );

    let wrong_tenant = jwt(json!({"scope": "admin:write", "tenant": "t2"}));
    assert_eq!(admin.check(&bearer(&wrong_tenant), None).await, Err(AuthError::InsufficientClaims("tenant".into())));
    // Invalid credentials stay 401, even on a route with claims.
    let forged = mint(Algorithm::RS256, &signing_key("rsa2"), None, &claims(json!({"scope": "admin:write"})));
    assert_eq!(admin.check(&bearer(&forged), None).await.unwrap_err().status(), 401);
}

#[tokio::test]
async fn identity_headers_from_clients_are_removed_everywhere() {
    let gw = Gateway::new().await;
    let identity = IdentityHeaders::from_config(&gw.config);
    let mut names: Vec<&str> = identity.names().collect();
    names.sort();
    assert_eq!(names, ["x-consumer", "x-tenant", "x-user-id"]);

    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("X-User-Id", "admin"),
        ("x_user_id", "admin"),
        ("X-CONSUMER", "acme"),
        ("x-tenant", "t1"),
        ("X_TENANT", "t1"),
        ("x-user-identity", "kept"),
        ("accept", "*/*"),
    ] {
        headers.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static(value));
    }
    identity.strip(&mut headers);
    let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    left.sort();
    assert_eq!(left, ["accept", "x-user-identity"]);

    // A configuration without providers still strips x-consumer.
    let bare = IdentityHeaders::from_config(&config(""));
    assert_eq!(bare.names().collect::<Vec<_>>(), ["x-consumer"]);
}

#[tokio::test]
async fn a_route_naming_an_unknown_provider_fails_closed() {
    let gw = Gateway::new().await;
    let route = gw.config.routes.iter().find(|r| r.name.get_ref() == "users").unwrap();
    let err = RouteAuth::compile(route, &Providers::empty()).unwrap_err();
    assert!(err.contains("unknown auth provider `main`"), "{err}");
}

#[tokio::test]
async fn keys_file_errors_fail_the_build() {
    let dir = std::env::temp_dir().join(format!("gateway-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad-keys.txt"), "acme not-a-digest\n").unwrap();
    let config = config("[auth.k]\ntype = \"api_key\"\nheader = \"x-api-key\"\nkeys_file = \"bad-keys.txt\"\n");
    let errors = Providers::build(&config, &dir, None).await.unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "k");
    assert!(errors[0].1.contains("bad-keys.txt:1: the digest must be"), "{}", errors[0].1);
}

#[tokio::test]
async fn types_and_futures_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let gw = Gateway::new().await;
    let route = gw.route("users").unwrap();
    send_sync(&gw.providers);
    send_sync(&route);
    send_sync(&IdentityHeaders::from_config(&gw.config));
    let headers = HeaderMap::new();
    let check = route.check(&headers, None);
    send(&check);
    assert!(check.await.is_err());
    let dir = keys_dir();
    let build = Providers::build(&gw.config, &dir, None);
    send(&build);
    drop(build);
}

#[tokio::test]
async fn a_reload_rereads_key_files_and_keeps_the_rest() {
    let gw = Gateway::new().await;
    let again = providers(&gw.config, Some(&gw.providers)).await;
    let same = |name: &str| std::sync::Arc::ptr_eq(gw.providers.get(name).unwrap(), again.get(name).unwrap());
    assert!(same("partners"), "inline keys, unchanged: kept");
    assert!(!same("main"), "public_key_file: read again");
    assert!(!same("links"), "keys_file: read again");
}
