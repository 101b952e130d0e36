//! Route choice, path normalisation, 404 and 405, rewrites.

use bytes::Bytes;
use gateway_tests::{Backend, TestGateway};
use http::Request;
use http_body_util::Full;

async fn setup() -> (Backend, Backend, TestGateway) {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let config = format!(
        r#"
[services.a]
endpoints = ["http://{a}"]
[services.b]
endpoints = ["http://{b}"]

[[routes]]
name = "prefix-short"
path_prefix = "/api"
service = "a"

[[routes]]
name = "prefix-long"
path_prefix = "/api/users"
service = "b"
strip_prefix = true

[[routes]]
name = "template"
path = "/api/users/{{id}}/orders"
methods = ["GET"]
service = "a"
rewrite = "/orders/of/{{id}}"

[[routes]]
name = "exact"
path = "/api/users/me/orders"
methods = ["GET", "POST"]
service = "b"

[[routes]]
name = "v2"
path_prefix = "/versioned"
headers = {{ "x-api-version" = "2" }}
service = "b"

[[routes]]
name = "v1"
path_prefix = "/versioned"
service = "a"

[[routes]]
name = "hosted"
host = "*.example.com"
path_prefix = "/h"
service = "b"
"#,
        a = a.addr,
        b = b.addr
    );
    let gw = TestGateway::start(&config).await;
    (a, b, gw)
}

#[tokio::test]
async fn exact_beats_template_beats_prefix_and_longer_prefix_wins() {
    let (a, b, gw) = setup().await;
    assert_eq!(gw.get("/api/users/me/orders").await.status, 200);
    assert_eq!(b.last().target, "/api/users/me/orders", "exact route");
    assert_eq!(gw.get("/api/users/7/orders").await.status, 200);
    assert_eq!(a.last().target, "/orders/of/7", "template route, rewritten");
    assert_eq!(gw.get("/api/users/7").await.status, 200);
    assert_eq!(b.last().target, "/7", "longer prefix, stripped");
    assert_eq!(gw.get("/api/other").await.status, 200);
    assert_eq!(a.last().target, "/api/other", "shorter prefix");
}

#[tokio::test]
async fn prefix_matches_whole_segments_only() {
    let (a, _b, gw) = setup().await;
    assert_eq!(gw.get("/apix").await.status, 404);
    assert_eq!(gw.get("/api/usersX").await.status, 200);
    assert_eq!(a.last().target, "/api/usersX", "/api/usersX is not under /api/users");
}

#[tokio::test]
async fn unknown_path_is_404_json() {
    let (_a, _b, gw) = setup().await;
    let resp = gw.get("/nothing/here").await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let json = resp.json();
    assert_eq!(json["error"]["code"], "route_not_found");
    assert_eq!(json["error"]["status"], 404);
    assert_eq!(json["error"]["request_id"].as_str(), resp.header("x-request-id"));
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let (_a, _b, gw) = setup().await;
    let req = Request::delete("/api/users/me/orders").header("host", "x").body(Full::new(Bytes::new())).unwrap();
    let resp = gw.request(req).await;
    // The prefix route /api/users takes any method, so DELETE goes there.
    assert_eq!(resp.status, 200);
    let (_a2, _b2, gw2) = {
        let a = Backend::start().await;
        let config = format!(
            "[services.a]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"only-get\"\npath = \"/thing\"\nmethods = [\"GET\", \"PUT\"]\nservice = \"a\"\n",
            a.addr
        );
        let gw = TestGateway::start(&config).await;
        (a, (), gw)
    };
    let req = Request::delete("/thing").header("host", "x").body(Full::new(Bytes::new())).unwrap();
    let resp = gw2.request(req).await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.error_code(), "method_not_allowed");
    assert_eq!(resp.header("allow"), Some("GET, PUT"));
}

#[tokio::test]
async fn header_and_host_conditions_pick_routes() {
    let (a, b, gw) = setup().await;
    let req = Request::get("/versioned/x").header("host", "x").header("x-api-version", "2");
    gw.request(req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(b.seen().len(), 1, "header match goes to v2");
    gw.get("/versioned/x").await;
    assert_eq!(a.seen().len(), 1, "no header goes to v1");

    let req = Request::get("/h").header("host", "api.example.com:8080");
    assert_eq!(gw.request(req.body(Full::new(Bytes::new())).unwrap()).await.status, 200);
    let req = Request::get("/h").header("host", "example.com");
    assert_eq!(gw.request(req.body(Full::new(Bytes::new())).unwrap()).await.status, 404);
}

#[tokio::test]
async fn dot_segments_are_removed_before_matching_and_forwarded_normalised() {
    let (a, b, gw) = setup().await;
    assert_eq!(gw.get("/api/users/../other").await.status, 200);
    assert_eq!(a.last().target, "/api/other");
    assert_eq!(gw.get("/api/x/%2e%2e/users/5").await.status, 200);
    assert_eq!(b.last().target, "/5", "%2e%2e is a dot segment too");
    assert_eq!(gw.get("/api/%75sers/6").await.status, 200);
    assert_eq!(b.last().target, "/6", "encoded unreserved characters are decoded");
}

#[tokio::test]
async fn encoded_slash_backslash_and_nul_are_400() {
    let (a, b, gw) = setup().await;
    for path in ["/api/users%2F5", "/api/users%5c5", "/api/%00", "/api/users%2f..%2f..%2fadmin"] {
        let resp = gw.get(path).await;
        assert_eq!(resp.status, 400, "{path}");
        assert_eq!(resp.error_code(), "bad_request");
    }
    assert!(a.seen().is_empty() && b.seen().is_empty());
}

#[tokio::test]
async fn repeated_slashes_are_not_collapsed() {
    let (_a, _b, gw) = setup().await;
    assert_eq!(gw.get("//api/users/me/orders").await.status, 404);
}
