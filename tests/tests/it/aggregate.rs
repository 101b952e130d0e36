//! Aggregate routes over real backends: one call, several services, one JSON answer.

use std::time::{Duration, Instant};

use gateway_tests::{Backend, TestGateway};

async fn setup(orders_endpoint: String, extra_parts: &str) -> (Backend, TestGateway) {
    let users = Backend::start().await;
    let config = format!(
        r#"
[services.users]
endpoints = ["http://{users}"]
[services.orders]
endpoints = ["{orders_endpoint}"]

[[routes]]
name = "profile"
path = "/api/profile/{{id}}"
methods = ["GET"]
aggregate = [
  {{ service = "users", path = "/users/{{id}}", into = "user", select = ["method", "target"] }},
  {{ service = "orders", path = "/orders?user_id={{id}}&sort={{query.sort}}", into = "orders", optional = true }},
  {extra_parts}
]
"#,
        users = users.addr
    );
    let gw = TestGateway::start(&config.replace(",\n  \n]", "\n]")).await;
    (users, gw)
}

#[tokio::test]
async fn parts_are_merged_under_their_keys_with_templates_filled() {
    let orders = Backend::start().await;
    let (users, gw) = setup(format!("http://{}", orders.addr), "").await;
    let resp = gw.get("/api/profile/42?sort=desc").await;
    assert_eq!(resp.status, 200, "{:?}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("x-gateway-partial"), None);
    let json = resp.json();
    assert_eq!(json["user"]["target"], "/users/42");
    assert_eq!(json["user"].as_object().unwrap().len(), 2, "select kept two fields: {json}");
    assert_eq!(json["orders"]["target"], "/orders?user_id=42&sort=desc");
    let request_id = resp.header("x-request-id").unwrap();
    assert_eq!(users.last().header("x-request-id"), Some(request_id), "parts carry the request id");
}

#[tokio::test]
async fn an_optional_part_that_fails_is_named_in_the_partial_header() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (_users, gw) = setup(format!("http://{closed}"), "").await;
    let resp = gw.get("/api/profile/7?sort=asc").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-gateway-partial"), Some("orders"));
    let json = resp.json();
    assert!(json.get("orders").is_none());
    assert_eq!(json["user"]["target"], "/users/7");
}

#[tokio::test]
async fn a_required_part_that_fails_is_502_and_a_slow_one_504() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let slow = Backend::start().await;
    let config = format!(
        r#"
[services.gone]
endpoints = ["http://{closed}"]
[services.slow]
endpoints = ["http://{slow}"]
[[routes]]
name = "down"
path = "/down"
aggregate = [{{ service = "gone", path = "/x", into = "x" }}]
[[routes]]
name = "late"
path = "/late"
timeout = "300ms"
aggregate = [{{ service = "slow", path = "/slow/3000", into = "x" }}]
"#,
        slow = slow.addr
    );
    let gw = TestGateway::start(&config).await;
    let down = gw.get("/down").await;
    assert_eq!(down.status, 502);
    assert!(down.json()["error"]["message"].as_str().unwrap().contains('x'));
    let started = Instant::now();
    let late = gw.get("/late").await;
    assert_eq!(late.status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn independent_parts_run_concurrently() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let config = format!(
        r#"
[services.a]
endpoints = ["http://{}"]
[services.b]
endpoints = ["http://{}"]
[[routes]]
name = "both"
path = "/both"
aggregate = [{{ service = "a", path = "/slow/600", into = "a" }}, {{ service = "b", path = "/slow/600", into = "b" }}]
"#,
        a.addr, b.addr
    );
    let gw = TestGateway::start(&config).await;
    let started = Instant::now();
    let resp = gw.get("/both").await;
    let elapsed = started.elapsed();
    // The slow backend answers plain text, not JSON: both parts fail as parts, but only
    // after 600 ms each, and together.
    assert_eq!(resp.status, 502);
    assert!(elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(1100), "{elapsed:?}");
}

#[tokio::test]
async fn a_missing_query_parameter_for_a_required_part_is_400() {
    let users = Backend::start().await;
    let config = format!(
        "[services.users]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"q\"\npath = \"/q\"\naggregate = [{{ service = \"users\", path = \"/search?q={{query.term}}\", into = \"r\" }}]\n",
        users.addr
    );
    let gw = TestGateway::start(&config).await;
    assert_eq!(gw.get("/q").await.status, 400);
    assert_eq!(gw.get("/q?term=a%20b").await.status, 200);
    assert_eq!(users.last().target, "/search?q=a%20b");
}

/// An aggregate is a route like any other: the caller is authenticated first (no part runs
/// for a stranger), its claims fill the parts' templates, a later part reads an earlier
/// part's answer, parts without `into` are deep-merged at the top, and the rate limit
/// (keyed by the caller's subject) counts one aggregate call as one request.
#[tokio::test]
async fn an_aggregate_behind_auth_and_rate_limits_uses_the_callers_claims() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    const SECRET: &str = "aggregate-secret-of-reasonable-length";
    let users = Backend::start().await;
    let orders = Backend::start().await;
    let config = format!(
        r#"
[services.users]
endpoints = ["http://{users}"]
[services.orders]
endpoints = ["http://{orders}"]
[auth.main]
type = "jwt"
algorithms = ["HS256"]
secret = "{SECRET}"
[rate_limits.per_user]
requests = 2
per = "1m"
key = "claim:sub"
[[routes]]
name = "me"
path = "/me"
auth = ["main"]
rate_limit = ["per_user"]
aggregate = [
  {{ service = "users", path = "/users/{{claim.sub}}", into = "user", select = ["method", "target"] }},
  {{ service = "orders", path = "/orders/{{user.method}}?owner={{claim.sub}}", after = "user", select = ["target"], rename = {{ target = "orders_target" }} }},
]
"#,
        users = users.addr,
        orders = orders.addr,
    );
    let gw = TestGateway::start(&config).await;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
    let token = |sub: &str| {
        let claims = serde_json::json!({ "sub": sub, "exp": exp });
        encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
    };
    let call = |token: Option<String>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        gw.request(gateway_tests::get_with("/me", &headers))
    };
    let stranger = call(None).await;
    assert_eq!(stranger.status, 401);
    assert_eq!(users.seen().len() + orders.seen().len(), 0, "no part runs before authentication");

    let ann = call(Some(token("ann"))).await;
    assert_eq!(ann.status, 200, "{}", String::from_utf8_lossy(&ann.body));
    let json = ann.json();
    assert_eq!(json["user"]["target"], "/users/ann");
    assert_eq!(json["orders_target"], "/orders/GET?owner=ann", "sequential part merged at the top: {json}");
    assert_eq!(ann.header("ratelimit-remaining"), Some("1"));

    assert_eq!(call(Some(token("ann"))).await.status, 200);
    let limited = call(Some(token("ann"))).await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(users.seen().len(), 2, "the refused call reached no part");
    assert_eq!(call(Some(token("bob"))).await.status, 200, "another subject has its own budget");
}
