//! Aggregates run against an in-memory fetcher on paused time: the clock only moves when
//! every task waits, so elapsed times are exact and tests take no real time.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use gateway_config::Route;
use gateway_core::{ErrorKind, GatewayError, Principal};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{Aggregate, AggregateAnswer, AggregateContext, PartFailure, PartFetcher, PartRequest, PartResponse};

/// What the fake answers for one `service` + path and query.
#[derive(Clone)]
enum Reply {
    /// Status and body after a delay.
    Answer(Duration, StatusCode, &'static str),
    /// A failure after a delay.
    Fail(Duration, PartFailure),
}

fn ok(body: &'static str) -> Reply {
    Reply::Answer(Duration::ZERO, StatusCode::OK, body)
}

fn slow(ms: u64, body: &'static str) -> Reply {
    Reply::Answer(Duration::from_millis(ms), StatusCode::OK, body)
}

#[derive(Default)]
struct Fake {
    replies: HashMap<(String, String), Reply>,
    /// Every request that reached the fake, in arrival order.
    seen: Mutex<Vec<PartRequest>>,
}

impl Fake {
    fn new(replies: &[(&str, &str, Reply)]) -> Fake {
        Fake {
            replies: replies.iter().map(|(s, p, r)| ((s.to_string(), p.to_string()), r.clone())).collect(),
            seen: Mutex::default(),
        }
    }

    fn targets(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|r| format!("{} {}", r.service, r.path_and_query)).collect()
    }
}

impl PartFetcher for Fake {
    fn fetch(&self, part: PartRequest) -> BoxFuture<'_, Result<PartResponse, PartFailure>> {
        let key = (part.service.to_string(), part.path_and_query.to_string());
        self.seen.lock().unwrap().push(part);
        let reply = self.replies.get(&key).cloned();
        Box::pin(async move {
            match reply {
                Some(Reply::Answer(delay, status, body)) => {
                    tokio::time::sleep(delay).await;
                    Ok(PartResponse { status, body: Bytes::from_static(body.as_bytes()) })
                }
                Some(Reply::Fail(delay, failure)) => {
                    tokio::time::sleep(delay).await;
                    Err(failure)
                }
                None => Ok(PartResponse { status: StatusCode::NOT_FOUND, body: Bytes::from_static(b"{}") }),
            }
        })
    }
}

/// A route from `gateway.toml` text: `route` is the rest of the `[[routes]]` table, `parts`
/// the inside of `aggregate = [...]`.
fn route(route: &str, parts: &str) -> Route {
    let text = format!(
        r#"
[services.users]
endpoints = ["http://127.0.0.1:9001"]
[services.orders]
endpoints = ["http://127.0.0.1:9002"]
[services.prices]
endpoints = ["http://127.0.0.1:9003"]
[auth.main]
type = "jwt"
algorithms = ["HS256"]
secret = "a-secret-of-at-least-thirty-two-bytes!"

[[routes]]
name = "agg"
{route}
aggregate = [
{parts}
]
"#
    );
    match gateway_config::parse("gateway.toml", &text, &|_: &str| None) {
        Ok(mut config) => config.routes.remove(0),
        Err(errors) => panic!("{}", gateway_config::ConfigErrors(errors)),
    }
}

fn compile(route: &Route) -> Aggregate {
    Aggregate::compile(route).unwrap().unwrap()
}

fn compile_error(route: &Route) -> String {
    Aggregate::compile(route).unwrap_err()
}

fn ctx() -> AggregateContext<'static> {
    AggregateContext {
        params: &[],
        query: None,
        principal: None,
        headers: HeaderMap::new(),
        deadline: Duration::from_secs(10),
        part_timeout: Duration::from_secs(5),
        max_body: 1024,
    }
}

fn json_of(answer: &AggregateAnswer) -> Value {
    serde_json::from_slice(&answer.body).unwrap()
}

async fn run_ok(aggregate: &Aggregate, ctx: AggregateContext<'_>, fake: &Fake) -> (Value, Vec<String>) {
    let answer = aggregate.run(ctx, fake).await.unwrap();
    (json_of(&answer), answer.partial)
}

async fn run_err(aggregate: &Aggregate, ctx: AggregateContext<'_>, fake: &Fake) -> GatewayError {
    aggregate.run(ctx, fake).await.unwrap_err()
}

fn principal(claims: Value) -> Principal {
    let Value::Object(claims) = claims else { panic!("claims must be an object") };
    Principal { provider: "main".into(), subject: None, consumer: None, claims }
}

#[tokio::test(start_paused = true)]
async fn keyed_parts_go_under_their_keys() {
    let agg = compile(&route(
        r#"path = "/api/profile/{id}""#,
        r#"{ service = "users", path = "/users/{id}", into = "user" },
           { service = "orders", path = "/orders?user_id={id}", into = "orders" },"#,
    ));
    let fake = Fake::new(&[
        ("users", "/users/42", ok(r#"{"id": 42, "name": "Ada"}"#)),
        ("orders", "/orders?user_id=42", ok(r#"[{"id": 1}, {"id": 2}]"#)),
    ]);
    let (body, partial) = run_ok(&agg, AggregateContext { params: &[("id", "42")], ..ctx() }, &fake).await;
    assert_eq!(body, json!({"user": {"id": 42, "name": "Ada"}, "orders": [{"id": 1}, {"id": 2}]}));
    assert!(partial.is_empty());
}

#[tokio::test(start_paused = true)]
async fn parts_without_into_deep_merge_in_config_order_not_arrival_order() {
    let agg = compile(&route(
        r#"path = "/x""#,
        r#"{ service = "users", path = "/a" },
           { service = "orders", path = "/b" },
           { service = "prices", path = "/c", into = "a" },"#,
    ));
    // The first part answers last; config order decides all the same.
    let fake = Fake::new(&[
        ("users", "/a", slow(300, r#"{"a": {"x": 1, "list": [1, 2], "o": {"k": 1}}, "s": "first", "only1": true}"#)),
        ("orders", "/b", slow(100, r#"{"a": {"list": [3], "z": 2, "o": 7}, "s": "second"}"#)),
        ("prices", "/c", slow(0, r#"{"p": 9}"#)),
    ]);
    let (body, _) = run_ok(&agg, ctx(), &fake).await;
    assert_eq!(
        body,
        json!({
            "a": {"x": 1, "list": [3], "z": 2, "o": 7, "p": 9},
            "s": "second",
            "only1": true,
        })
    );
}

#[tokio::test(start_paused = true)]
async fn select_keeps_fields_then_rename_renames_them() {
    let agg = compile(&route(
        r#"path = "/x""#,
        r#"{ service = "users", path = "/u", into = "user", select = ["id", "name", "role"], rename = { name = "full_name", role = "id" } },
           { service = "orders", path = "/o", into = "orders", select = ["id"] },
           { service = "prices", path = "/p", select = ["price"], rename = { price = "cost" } },"#,
    ));
    let fake = Fake::new(&[
        ("users", "/u", ok(r#"{"id": 1, "name": "Ada", "role": "admin", "password_hash": "x"}"#)),
        ("orders", "/o", ok(r#"[{"id": 1, "secret": "s"}, {"id": 2, "secret": "t"}, 5]"#)),
        ("prices", "/p", ok(r#"{"price": 3, "internal": 1}"#)),
    ]);
    let (body, _) = run_ok(&agg, ctx(), &fake).await;
    // `role -> id` replaces the selected `id`: a renamed field wins.
    assert_eq!(
        body,
        json!({
            "user": {"full_name": "Ada", "id": "admin"},
            "orders": [{"id": 1}, {"id": 2}, 5],
            "cost": 3,
        })
    );
}

#[tokio::test(start_paused = true)]
async fn templates_fill_from_path_query_and_claims_encoded_for_their_position() {
    let agg = compile(&route(
        r#"path = "/api/{tenant}/files/{*rest}"
           auth = ["main"]"#,
        r#"{ service = "users", path = "/t/{tenant}/u/{claim.sub}?q={query.q}&n={query.n}&r={rest}", into = "a", optional = true },
           { service = "orders", path = "/files/{*rest}", into = "b", optional = true, headers = { "x-tenant" = "{tenant}:{claim.sub}" } },
           { service = "prices", path = "/n/{claim.num}/{claim.admin}/{query.empty}x", into = "c", optional = true },"#,
    ));
    let fake = Fake::new(&[]);
    let sub_claim = principal(json!({"sub": "a/b?c#d %e", "num": 7, "admin": true}));
    let ctx = AggregateContext {
        // As the router captures them: still percent-encoded.
        params: &[("tenant", "acme%20co"), ("rest", "dir/my%20file.txt")],
        query: Some("q=x%2Fy%26z&n=1+2&n=ignored&empty="),
        principal: Some(&sub_claim),
        headers: HeaderMap::new(),
        max_body: 1024,
        ..ctx()
    };
    // The fake answers 404 to all (they are optional): look at what was sent.
    let (_, partial) = run_ok(&agg, ctx, &fake).await;
    assert_eq!(partial, ["a", "b", "c"]);
    let mut targets = fake.targets();
    targets.sort();
    assert_eq!(
        targets,
        [
            "orders /files/dir/my%20file.txt",
            "prices /n/7/true/x",
            "users /t/acme%20co/u/a%2Fb%3Fc%23d%20%25e?q=x%2Fy%26z&n=1%202&r=dir%2Fmy%20file.txt",
        ]
    );
    let seen = fake.seen.lock().unwrap();
    let orders = seen.iter().find(|r| &*r.service == "orders").unwrap();
    assert_eq!(orders.headers["x-tenant"], "acme co:a/b?c#d %e");
}

#[tokio::test(start_paused = true)]
async fn a_value_that_would_climb_a_segment_fails_the_part() {
    let agg = compile(&route(
        r#"path = "/x"
           auth = ["main"]"#,
        r#"{ service = "users", path = "/users/{claim.sub}/orders", into = "a" },"#,
    ));
    let fake = Fake::new(&[("users", "/orders", ok("{}"))]);
    for sub in ["..", ".", ""] {
        let p = principal(json!({ "sub": sub }));
        let err = run_err(&agg, AggregateContext { principal: Some(&p), ..ctx() }, &fake).await;
        assert_eq!(err.kind, ErrorKind::BadRequest, "{sub:?}: {err}");
        assert!(err.message.contains("cannot be a path segment"), "{err}");
    }
    assert!(fake.targets().is_empty());
    // From a part's answer it is the upstream's doing: 502.
    let agg = compile(&route(
        r#"path = "/x""#,
        r#"{ service = "users", path = "/me", name = "me" },
           { service = "orders", path = "/users/{me.id}/orders", into = "orders" },"#,
    ));
    let fake = Fake::new(&[("users", "/me", ok(r#"{"id": ".."}"#))]);
    let err = run_err(&agg, ctx(), &fake).await;
    assert_eq!(err.kind, ErrorKind::BadGateway, "{err}");
    assert!(err.message.contains("field `id` of part `me` makes the path segment `..`"), "{err}");
    // A claim with a control character cannot go in a header: 400.
    let agg = compile(&route(
        r#"path = "/x"
           auth = ["main"]"#,
        r#"{ service = "users", path = "/u", into = "u", headers = { "x-tenant" = "{claim.tenant}" } },"#,
    ));
    let p = principal(json!({"tenant": "a\r\nx-admin: 1"}));
    let err = run_err(&agg, AggregateContext { principal: Some(&p), ..ctx() }, &fake).await;
    assert_eq!(err.kind, ErrorKind::BadRequest, "{err}");
    assert!(err.message.contains("claim `tenant` cannot go in a header"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn missing_query_is_400_missing_claim_403_and_optional_ones_are_partial() {
    let agg = compile(&route(
        r#"path = "/x"
           auth = ["main"]"#,
        r#"{ service = "users", path = "/u?page={query.page}", into = "a" },"#,
    ));
    let fake = Fake::new(&[("users", "/u?page=2", ok("{}"))]);
    let err = run_err(&agg, AggregateContext { query: Some("other=1"), ..ctx() }, &fake).await;
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(err.message.contains("part `a`") && err.message.contains("query parameter `page`"), "{err}");
    run_ok(&agg, AggregateContext { query: Some("page=2"), ..ctx() }, &fake).await;

    let agg = compile(&route(
        r#"path = "/x"
           auth = ["main"]"#,
        r#"{ service = "users", path = "/u/{claim.tenant}", into = "a" },
           { service = "orders", path = "/o?p={query.page}", into = "b", optional = true },"#,
    ));
    let p = principal(json!({"sub": "x"}));
    let err = run_err(&agg, AggregateContext { principal: Some(&p), ..ctx() }, &fake).await;
    assert_eq!(err.kind, ErrorKind::Forbidden);
    assert!(err.message.contains("claim `tenant`"), "{err}");

    let p = principal(json!({"tenant": "t1"}));
    let fake = Fake::new(&[("users", "/u/t1", ok(r#"{"k": 1}"#))]);
    let (body, partial) = run_ok(&agg, AggregateContext { principal: Some(&p), ..ctx() }, &fake).await;
    assert_eq!(body, json!({"a": {"k": 1}}));
    assert_eq!(partial, ["b"]);
}

#[tokio::test(start_paused = true)]
async fn a_dependent_part_waits_and_reads_fields_of_the_answer() {
    let agg = compile(&route(
        r#"path = "/me""#,
        r#"{ service = "users", path = "/me", name = "user", into = "profile" },
           { service = "orders", path = "/orders?user={user.id}&city={user.address.city}", into = "orders", after = "user" },
           { service = "prices", path = "/tags/{user.tags.1}", into = "tag" },
           { service = "prices", path = "/plain", into = "plain" },"#,
    ));
    let fake = Fake::new(&[
        ("users", "/me", slow(100, r#"{"id": 7, "address": {"city": "Zürich & Co"}, "tags": ["a", "b c"]}"#)),
        ("orders", "/orders?user=7&city=Z%C3%BCrich%20%26%20Co", slow(100, r#"[1]"#)),
        ("prices", "/tags/b%20c", slow(100, r#""tag""#)),
        ("prices", "/plain", slow(150, r#"true"#)),
    ]);
    let start = Instant::now();
    let (body, partial) = run_ok(&agg, ctx(), &fake).await;
    assert_eq!(
        body,
        json!({"profile": {"id": 7, "address": {"city": "Zürich & Co"}, "tags": ["a", "b c"]}, "orders": [1], "tag": "tag", "plain": true})
    );
    assert!(partial.is_empty());
    // user (100) then orders and tag (100) at once; plain ran beside them all.
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    let targets = fake.targets();
    assert_eq!(targets[..2], ["users /me", "prices /plain"]);
}

#[tokio::test(start_paused = true)]
async fn after_accepts_a_name_taken_from_into() {
    let mut r = route(
        r#"path = "/me""#,
        r#"{ service = "users", path = "/me", into = "user" },
           { service = "orders", path = "/orders", into = "orders" },"#,
    );
    // `gateway-config` only accepts explicit names in `after` today; set it here directly.
    r.aggregate.as_mut().unwrap()[1].after = Some("user".to_owned());
    let agg = compile(&r);
    let fake = Fake::new(&[("users", "/me", slow(100, "{}")), ("orders", "/orders", slow(100, "[]"))]);
    let start = Instant::now();
    run_ok(&agg, ctx(), &fake).await;
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn independent_parts_run_at_once() {
    let agg = compile(&route(
        r#"path = "/x""#,
        r#"{ service = "users", path = "/slow", into = "a" },
           { service = "orders", path = "/slow", into = "b" },"#,
    ));
    let fake = Fake::new(&[("users", "/slow", slow(600, "1")), ("orders", "/slow", slow(600, "2"))]);
    let start = Instant::now();
    let (body, _) = run_ok(&agg, ctx(), &fake).await;
    assert_eq!(body, json!({"a": 1, "b": 2}));
    assert_eq!(start.elapsed(), Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn a_failed_optional_part_is_left_out_and_named() {
    let agg = compile(&route(
        r#"path = "/x""#,
        r#"{ service = "users", path = "/u", into = "user" },
           { service = "orders", path = "/o", into = "orders", optional = true },
           { service = "prices", path = "/p", name = "prices", optional = true },"#,
    ));
    let fake = Fake::new(&[
        ("users", "/u", ok(r#"{"id": 1}"#)),
        ("orders", "/o", Reply::Fail(Duration::ZERO, PartFailure::Unavailable("circuit open".into()))),
        ("prices", "/p", Reply::Answer(Duration::ZERO, StatusCode::INTERNAL_SERVER_ERROR, "{}")),
    ]);
    let answer = agg.run(ctx(), &fake).await.unwrap();
    assert_eq!(json_of(&answer), json!({"user": {"id": 1}}));
    assert_eq!(answer.partial, ["orders", "prices"]);
    assert_eq!(answer.partial_header(), Some(HeaderValue::from_static("orders,prices")));
}

#[tokio::test(start_paused = true)]
async fn a_failed_required_part_is_502_naming_it() {
    let agg = compile(&route(
        r#"path = "/x""#,
        r#"{ service = "users", path = "/u", into = "user" },
           { service = "orders", path = "/o", into = "orders" },"#,
    ));
    for reply in [
        Reply::Fail(Duration::ZERO, PartFailure::Unavailable("no healthy endpoint".into())),
        Reply::Fail(Duration::ZERO, PartFailure::Upstream("connection reset".into())),
        Reply::Answer(Duration::ZERO, StatusCode::SERVICE_UNAVAILABLE, "{}"),
    ] {
        let fake = Fake::new(&[("users", "/u", slow(1000, "{}")), ("orders", "/o", reply)]);
        let start = Instant::now();
        let err = run_err(&agg, ctx(), &fake).await;
        assert_eq!(err.kind, ErrorKind::BadGateway);
        assert!(err.message.starts_with("aggregate part `orders` failed: "), "{err}");
        // Nothing waited for the slow `users` once `orders` failed.
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}

#[tokio::test(start_paused = true)]
async fn a_required_part_that_times_out_is_504() {
    let agg = compile(&route(
        r#"path = "/x""#,
        r#"{ service = "users", path = "/u", into = "user" },
           { service = "orders", path = "/o", into = "orders" },"#,
    ));
    // Past the part timeout (the fake itself never gives up), or the fetcher's own timeout.
    let fake = Fake::new(&[("users", "/u", ok("{}")), ("orders", "/o", slow(60_000, "{}"))]);
    let start = Instant::now();
    let err = run_err(&agg, AggregateContext { part_timeout: Duration::from_secs(2), ..ctx() }, &fake).await;
    assert_eq!(err.kind, ErrorKind::GatewayTimeout);
    assert!(err.message.contains("part `orders`") && err.message.contains("timed out"), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(fake.seen.lock().unwrap()[1].timeout, Duration::from_secs(2));

    let fake =
        Fake::new(&[("users", "/u", ok("{}")), ("orders", "/o", Reply::Fail(Duration::ZERO, PartFailure::Timeout))]);
    assert_eq!(run_err(&agg, ctx(), &fake).await.kind, ErrorKind::GatewayTimeout);
}

#[tokio::test(start_paused = true)]
async fn a_part_whose_dependency_failed_fails_too() {
    let parts = |orders_optional: bool| {
        format!(
            r#"{{ service = "users", path = "/u", name = "user", optional = true }},
               {{ service = "orders", path = "/o/{{user.id}}", into = "orders", optional = {orders_optional} }},
               {{ service = "prices", path = "/p", into = "prices", after = "user", optional = true }},
               {{ service = "prices", path = "/q", into = "q" }},"#
        )
    };
    let fake = Fake::new(&[
        ("users", "/u", Reply::Fail(Duration::ZERO, PartFailure::Upstream("reset".into()))),
        ("prices", "/q", ok("1")),
    ]);
    let agg = compile(&route(r#"path = "/x""#, &parts(true)));
    let (body, partial) = run_ok(&agg, ctx(), &fake).await;
    assert_eq!(body, json!({"q": 1}));
    assert_eq!(partial, ["user", "orders", "prices"]);
    assert_eq!(fake.targets(), ["users /u", "prices /q"]);

    let agg = compile(&route(r#"path = "/x""#, &parts(false)));
    let err = run_err(&agg, ctx(), &fake).await;
    assert_eq!(err.kind, ErrorKind::BadGateway);
    assert!(err.message.contains("part `orders` failed: part `user` it depends on failed"), "{err}");

    // A field that is not there (or not a scalar) fails the dependent part.
    let fake = Fake::new(&[("users", "/u", ok(r#"{"id": {"nested": 1}}"#)), ("prices", "/q", ok("1"))]);
    let err = run_err(&agg, ctx(), &fake).await;
    assert!(err.message.contains("part `user` answered no usable field `id`"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn answers_that_are_not_json_or_too_large_or_not_objects_fail_the_part() {
    let agg = compile(&route(
        r#"path = "/x""#,
        r#"{ service = "users", path = "/u", into = "user", optional = true },
           { service = "orders", path = "/html", into = "html", optional = true },
           { service = "orders", path = "/empty", into = "empty", optional = true },
           { service = "orders", path = "/big", into = "big", optional = true },
           { service = "orders", path = "/refused-big", into = "refused", optional = true },
           { service = "prices", path = "/list", name = "top", optional = true },"#,
    ));
    let fake = Fake::new(&[
        ("users", "/u", ok(r#"{"ok": true}"#)),
        ("orders", "/html", ok("<html>oops</html>")),
        ("orders", "/empty", Reply::Answer(Duration::ZERO, StatusCode::NO_CONTENT, "")),
        // The fake ignores max_body; the aggregate checks it again.
        ("orders", "/big", ok(r#"{"pad": "0123456789012345678901234567890123456789"}"#)),
        ("orders", "/refused-big", Reply::Fail(Duration::ZERO, PartFailure::TooLarge)),
        // Without `into`, an array cannot be merged at the top.
        ("prices", "/list", ok("[1, 2]")),
    ]);
    let (body, partial) = run_ok(&agg, AggregateContext { max_body: 32, ..ctx() }, &fake).await;
    assert_eq!(body, json!({"user": {"ok": true}}));
    assert_eq!(partial, ["html", "empty", "big", "refused", "top"]);

    let agg = compile(&route(r#"path = "/x""#, r#"{ service = "orders", path = "/html", into = "html" },"#));
    let err = run_err(&agg, ctx(), &fake).await;
    assert_eq!(err.kind, ErrorKind::BadGateway);
    assert!(err.message.contains("part `html` failed: answer is not JSON"), "{err}");
    let agg = compile(&route(r#"path = "/x""#, r#"{ service = "orders", path = "/big", into = "big" },"#));
    let err = run_err(&agg, AggregateContext { max_body: 32, ..ctx() }, &fake).await;
    assert!(err.message.contains("over the size limit"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn nothing_waits_after_the_deadline() {
    let agg = compile(&route(
        r#"path = "/x""#,
        r#"{ service = "users", path = "/u", name = "user", into = "user" },
           { service = "orders", path = "/slow", into = "orders", optional = true },
           { service = "prices", path = "/p/{user.id}", into = "prices", optional = true },"#,
    ));
    let fake = Fake::new(&[
        ("users", "/u", slow(900, r#"{"id": 1}"#)),
        ("orders", "/slow", slow(60_000, "[]")),
        ("prices", "/p/1", slow(500, "1")),
    ]);
    let ctx = || AggregateContext { deadline: Duration::from_secs(1), part_timeout: Duration::from_secs(30), ..ctx() };
    let start = Instant::now();
    let (body, partial) = run_ok(&agg, ctx(), &fake).await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(body, json!({"user": {"id": 1}}));
    assert_eq!(partial, ["orders", "prices"]);
    // A part started late gets only what is left of the deadline.
    let seen = fake.seen.lock().unwrap().iter().map(|r| r.timeout).collect::<Vec<_>>();
    assert_eq!(seen, [Duration::from_secs(1), Duration::from_secs(1), Duration::from_millis(100)]);

    // A required part still running at the deadline: 504.
    let fake = Fake::new(&[("users", "/u", slow(5000, "{}"))]);
    let start = Instant::now();
    let err = run_err(&agg, ctx(), &fake).await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(err.kind, ErrorKind::GatewayTimeout);
    assert!(err.message.contains("part `user`"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn parts_get_the_callers_headers_and_their_own() {
    let agg = compile(&route(
        r#"path = "/x/{id}""#,
        r#"{ service = "users", path = "/u", into = "a", method = "POST", headers = { "x-part" = "users-{id}", "x-request-id" = "overridden" } },
           { service = "orders", path = "/o", into = "b" },"#,
    ));
    let fake = Fake::new(&[("users", "/u", ok("1")), ("orders", "/o", ok("2"))]);
    let mut headers = HeaderMap::new();
    headers.insert("x-request-id", HeaderValue::from_static("req-1"));
    headers.insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    run_ok(&agg, AggregateContext { params: &[("id", "9")], headers, ..ctx() }, &fake).await;
    let seen = fake.seen.lock().unwrap();
    let users = seen.iter().find(|r| &*r.service == "users").unwrap();
    let orders = seen.iter().find(|r| &*r.service == "orders").unwrap();
    assert_eq!(users.method, http::Method::POST);
    assert_eq!(&*users.part, "a");
    assert_eq!(users.headers["x-part"], "users-9");
    assert_eq!(users.headers["x-request-id"], "overridden");
    assert_eq!(orders.method, http::Method::GET);
    assert_eq!(orders.headers["x-request-id"], "req-1");
    assert!(orders.headers.contains_key("traceparent"));
    assert!(!orders.headers.contains_key("x-part"));
}

#[test]
fn compile_rejects_what_cannot_work() {
    let cases = [
        (r#"path = "/x/{id}""#, r#"{ service = "users", path = "/u/{uid}" },"#, "no such parameter (it has: id)"),
        (r#"path_prefix = "/x""#, r#"{ service = "users", path = "/u/{id}" },"#, "defines no parameters"),
        (r#"path = "/x/{id}""#, r#"{ service = "users", path = "/u/{*id}" },"#, "no such catch-all"),
        (r#"path = "/x""#, r#"{ service = "users", path = "/u/{claim.sub}" },"#, "has no `auth`"),
        (r#"path = "/x""#, r#"{ service = "users", path = "/u/{nobody.id}" },"#, "no part is named `nobody`"),
        (r#"path = "/x""#, r#"{ service = "users", path = "/u/{id" },"#, "unbalanced `{`"),
        (r#"path = "/x""#, r#"{ service = "users", path = "/u/id}" },"#, "unbalanced `}`"),
        (r#"path = "/x""#, r#"{ service = "users", path = "/u/../admin" },"#, "`.` or `..` segments"),
        (r#"path = "/x""#, r#"{ service = "users", path = "/u x" },"#, "not a valid request target"),
        (r#"path = "/x""#, r#"{ service = "users", path = "/u", headers = { "x-a" = "{query.a" } },"#, "header `x-a`"),
        (
            r#"path = "/x""#,
            r#"{ service = "users", path = "/u", into = "a" }, { service = "users", path = "/v", into = "a" },"#,
            "two aggregate parts are named `a`",
        ),
        (r#"path = "/x""#, r#"{ service = "users", path = "/u", into = "query" },"#, "reserved"),
        (r#"path = "/x""#, r#"{ service = "users", path = "/u", into = "a,b" },"#, "cannot contain"),
        (
            r#"path = "/x""#,
            r#"{ service = "users", path = "/u", into = "a", rename = { x = "y", z = "y" } },"#,
            "two fields the name `y`",
        ),
        (
            r#"path = "/x""#,
            r#"{ service = "users", path = "/u", into = "a", select = ["x"], rename = { z = "y" } },"#,
            "which `select` drops",
        ),
        (
            r#"path = "/x""#,
            r#"{ service = "users", path = "/u/{b.id}", name = "a" }, { service = "users", path = "/v/{c.id}", name = "b" }, { service = "users", path = "/w", name = "c", after = "a" },"#,
            "cycle: a -> b -> c -> a",
        ),
        (r#"path = "/x""#, r#"{ service = "users", path = "/u/{a.id}", name = "a" },"#, "cannot depend on itself"),
    ];
    for (route_keys, parts, expected) in cases {
        let error = compile_error(&route(route_keys, parts));
        assert!(error.starts_with("route `agg`: "), "{error}");
        assert!(error.contains(expected), "{parts}: expected `{expected}` in: {error}");
    }
    let no_aggregate: Route = {
        let mut r = route(r#"path = "/x""#, r#"{ service = "users", path = "/u" },"#);
        r.aggregate = None;
        r
    };
    assert!(Aggregate::compile(&no_aggregate).unwrap().is_none());
    let agg = compile(&route(
        r#"path = "/x""#,
        r#"{ service = "users", path = "/u" }, { service = "orders", path = "/o", into = "o" },"#,
    ));
    assert_eq!(agg.part_names().collect::<Vec<_>>(), ["part0", "o"]);
    assert_eq!(agg.services().collect::<Vec<_>>(), ["users", "orders"]);
}
