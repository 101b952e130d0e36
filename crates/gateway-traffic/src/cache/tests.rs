use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_config::schema::Cache;
use gateway_config::Duration as ConfigDuration;
use http::HeaderValue;
use http_body_util::BodyExt;

use super::*;

fn config(ttl_secs: u64, vary: &[&str], private: bool) -> Cache {
    Cache {
        ttl: ConfigDuration::from_secs(ttl_secs),
        max_entries: 1000,
        vary: vary.iter().map(|s| (*s).to_owned()).collect(),
        private,
    }
}

fn store(ttl_secs: u64) -> CacheStore {
    CacheStore::new(&config(ttl_secs, &[], false)).expect("valid")
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(*n, HeaderValue::from_static(v));
    }
    h
}

fn ok(body: &'static str, pairs: &[(&'static str, &'static str)]) -> CachedResponse {
    CachedResponse::new(StatusCode::OK, headers(pairs), Bytes::from_static(body.as_bytes()))
}

struct Req {
    path: &'static str,
    headers: HeaderMap,
    method: Method,
    credentialed: bool,
    principal: Option<&'static str>,
}

impl Req {
    fn get(path: &'static str) -> Req {
        Req { path, headers: HeaderMap::new(), method: Method::GET, credentialed: false, principal: None }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }

    fn as_cache_request(&self) -> CacheRequest<'_> {
        CacheRequest {
            method: &self.method,
            host: "API.example.com",
            path: self.path,
            query: Some("a=1"),
            headers: &self.headers,
            credentialed: self.credentialed,
            principal: self.principal,
        }
    }
}

/// What the client would see: x-cache and body. `respond` is the upstream.
async fn serve(store: &CacheStore, req: &Req, respond: impl FnOnce() -> CachedResponse) -> (&'static str, Bytes) {
    match store.lookup(&req.as_cache_request()).await {
        Lookup::Hit(hit) => ("HIT", hit.body.clone()),
        Lookup::Bypass(_) => ("BYPASS", respond().body),
        Lookup::Miss(ticket) => {
            let outcome = ticket.fetch(async { Ok::<_, Infallible>(Fetched::<()>::Complete(respond())) }).await;
            match outcome {
                Ok(FetchOutcome { status, served: Served::Complete(r) }) => (status.as_str(), r.body.clone()),
                Ok(FetchOutcome { served: Served::Passthrough(()), .. }) => unreachable!("only complete answers here"),
                Err(never) => match never {},
            }
        }
    }
}

#[tokio::test]
async fn miss_then_hit() {
    let s = store(30);
    let req = Req::get("/users");
    assert_eq!(serve(&s, &req, || ok("v1", &[])).await, ("MISS", Bytes::from("v1")));
    assert_eq!(serve(&s, &req, || ok("v2", &[])).await, ("HIT", Bytes::from("v1")));
    // Another path, and another host case: the host is case-insensitive, the path is not.
    assert_eq!(serve(&s, &Req::get("/Users"), || ok("v3", &[])).await.0, "MISS");
    let Lookup::Hit(hit) = s.lookup(&req.as_cache_request()).await else { panic!("expected a hit") };
    let response = hit.to_response(false);
    assert_eq!(response.headers()[CONTENT_LENGTH], "2");
    assert_eq!(response.headers()[AGE], "0");
    assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "v1");
}

#[tokio::test]
async fn head_is_answered_from_get() {
    let s = store(30);
    let mut head = Req::get("/doc");
    head.method = Method::HEAD;
    assert_eq!(s.lookup(&head.as_cache_request()).await.bypass(), Some(BypassReason::HeadMiss));
    serve(&s, &Req::get("/doc"), || ok("body", &[])).await;
    let Lookup::Hit(hit) = s.lookup(&head.as_cache_request()).await else { panic!("expected a hit") };
    let response = hit.to_response(true);
    assert_eq!(response.headers()[CONTENT_LENGTH], "4");
    assert!(response.into_body().collect().await.expect("body").to_bytes().is_empty());
    let mut post = Req::get("/doc");
    post.method = Method::POST;
    assert_eq!(s.lookup(&post.as_cache_request()).await.bypass(), Some(BypassReason::Method));
}

#[tokio::test(start_paused = true)]
async fn ttl_expires() {
    let s = store(30);
    let req = Req::get("/t");
    serve(&s, &req, || ok("v1", &[])).await;
    tokio::time::advance(Duration::from_secs(20)).await;
    let Lookup::Hit(hit) = s.lookup(&req.as_cache_request()).await else { panic!("still fresh") };
    assert_eq!(hit.to_response(false).headers()[AGE], "20");
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(serve(&s, &req, || ok("v2", &[])).await, ("MISS", Bytes::from("v2")));
    assert_eq!(serve(&s, &req, || ok("v3", &[])).await, ("HIT", Bytes::from("v2")));

    // A shorter max-age and an upstream Age shorten the life; a longer one does not lengthen it.
    let short = Req::get("/short");
    serve(&s, &short, || ok("s", &[("cache-control", "max-age=10"), ("age", "4")])).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let Lookup::Hit(hit) = s.lookup(&short.as_cache_request()).await else { panic!("still fresh") };
    assert_eq!(hit.to_response(false).headers()[AGE], "9");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(serve(&s, &short, || ok("s2", &[])).await.0, "MISS");
    let long = Req::get("/long");
    serve(&s, &long, || ok("l", &[("cache-control", "max-age=3600")])).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(serve(&s, &long, || ok("l2", &[])).await.0, "MISS", "capped by the route's ttl");
}

#[tokio::test]
async fn no_store_and_no_cache() {
    let s = store(30);
    // Request no-store: not looked up, not kept.
    let req = Req::get("/n").header("cache-control", "no-store");
    assert_eq!(s.lookup(&req.as_cache_request()).await.bypass(), Some(BypassReason::NoStore));
    // Response no-store, no-cache, private, Set-Cookie, Vary: *, a 404: not kept.
    for (path, pairs) in [
        ("/a", &[("cache-control", "no-store")][..]),
        ("/b", &[("cache-control", "no-cache")][..]),
        ("/c", &[("cache-control", "private, max-age=60")][..]),
        ("/d", &[("set-cookie", "session=1")][..]),
        ("/e", &[("vary", "*")][..]),
    ] {
        let req = Req::get(path);
        assert_eq!(serve(&s, &req, || ok("1", pairs)).await.0, "MISS");
        assert_eq!(serve(&s, &req, || ok("2", &[])).await, ("MISS", Bytes::from("2")), "{path} was stored");
    }
    let not_found = Req::get("/404");
    let missing = || CachedResponse::new(StatusCode::NOT_FOUND, HeaderMap::new(), Bytes::new());
    serve(&s, &not_found, missing).await;
    assert_eq!(serve(&s, &not_found, || ok("now", &[])).await.0, "MISS");
    // Request no-cache: not answered from the store, but the new answer replaces the old.
    let plain = Req::get("/r");
    serve(&s, &plain, || ok("old", &[])).await;
    let refresh = Req::get("/r").header("cache-control", "no-cache");
    assert_eq!(serve(&s, &refresh, || ok("new", &[])).await, ("MISS", Bytes::from("new")));
    assert_eq!(serve(&s, &plain, || ok("x", &[])).await, ("HIT", Bytes::from("new")));
}

#[tokio::test]
async fn credentialed_requests_are_not_shared() {
    let s = store(30);
    let anonymous = Req::get("/me");
    serve(&s, &anonymous, || ok("public", &[])).await;
    for req in [
        Req::get("/me").header("authorization", "Bearer alice"),
        Req::get("/me").header("cookie", "session=alice"),
        Req { credentialed: true, principal: Some("partners:acme"), ..Req::get("/me") },
    ] {
        assert_eq!(s.lookup(&req.as_cache_request()).await.bypass(), Some(BypassReason::Credentialed));
    }
}

#[tokio::test]
async fn private_routes_key_by_principal() {
    let s = CacheStore::new(&config(30, &[], true)).expect("valid");
    let alice = Req { principal: Some("main:alice"), ..Req::get("/me").header("authorization", "Bearer a") };
    let bob = Req { principal: Some("main:bob"), ..Req::get("/me").header("authorization", "Bearer b") };
    let private = [("cache-control", "private, max-age=60")];
    assert_eq!(serve(&s, &alice, || ok("alice", &private)).await.0, "MISS");
    assert_eq!(serve(&s, &bob, || ok("bob", &private)).await, ("MISS", Bytes::from("bob")));
    assert_eq!(serve(&s, &alice, || ok("x", &[])).await, ("HIT", Bytes::from("alice")));
    assert_eq!(serve(&s, &bob, || ok("x", &[])).await, ("HIT", Bytes::from("bob")));
    // Anonymous requests share among themselves, never with a principal's entries.
    let anonymous = Req::get("/me");
    assert_eq!(serve(&s, &anonymous, || ok("anon", &[])).await, ("MISS", Bytes::from("anon")));
    assert_eq!(serve(&s, &anonymous, || ok("x", &private)).await, ("HIT", Bytes::from("anon")));
    // Credentials without a principal to key on: bypass.
    let unknown = Req::get("/me").header("cookie", "a=b");
    assert_eq!(s.lookup(&unknown.as_cache_request()).await.bypass(), Some(BypassReason::Credentialed));
}

#[tokio::test]
async fn vary_from_the_backend_and_the_route() {
    let s = store(30);
    let vary = [("vary", "Accept-Language")];
    let en = Req::get("/v").header("accept-language", "en");
    let fr = Req::get("/v").header("accept-language", "fr");
    let none = Req::get("/v");
    assert_eq!(serve(&s, &en, || ok("hello", &vary)).await.0, "MISS");
    assert_eq!(serve(&s, &fr, || ok("bonjour", &vary)).await, ("MISS", Bytes::from("bonjour")));
    assert_eq!(serve(&s, &none, || ok("default", &vary)).await, ("MISS", Bytes::from("default")));
    assert_eq!(serve(&s, &en, || ok("x", &vary)).await, ("HIT", Bytes::from("hello")));
    assert_eq!(serve(&s, &fr, || ok("x", &vary)).await, ("HIT", Bytes::from("bonjour")));
    assert_eq!(serve(&s, &none, || ok("x", &vary)).await, ("HIT", Bytes::from("default")));
    assert_eq!(s.usage().await.0, 1, "three variants under one key");

    let s = CacheStore::new(&config(30, &["accept-language"], false)).expect("valid");
    assert_eq!(serve(&s, &en, || ok("hello", &[])).await.0, "MISS");
    assert_eq!(serve(&s, &fr, || ok("bonjour", &[])).await, ("MISS", Bytes::from("bonjour")));
    assert_eq!(serve(&s, &en, || ok("x", &[])).await, ("HIT", Bytes::from("hello")));
    assert_eq!(s.usage().await.0, 2, "route vary: two keys");
}

#[tokio::test]
async fn coalesces_concurrent_misses() {
    let s = store(30);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (s, calls) = (s.clone(), calls.clone());
        tasks.spawn(async move {
            let req = Req::get("/slow");
            let Lookup::Miss(ticket) = s.lookup(&req.as_cache_request()).await else { panic!("all miss at first") };
            let outcome = ticket
                .fetch(async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Infallible>(Fetched::<()>::Complete(ok("once", &[])))
                })
                .await;
            match outcome {
                Ok(FetchOutcome { status, served: Served::Complete(r) }) => (status, r.body.clone()),
                _ => panic!("complete answers only"),
            }
        });
    }
    let mut statuses = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.expect("task");
        assert_eq!(body, "once");
        statuses.push(status);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream request");
    assert_eq!(statuses.iter().filter(|s| **s == CacheStatus::Miss).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == CacheStatus::Hit).count(), 49);
}

#[tokio::test]
async fn uncacheable_answers_are_not_shared() {
    let s = store(30);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (s, calls) = (s.clone(), calls.clone());
        tasks.spawn(async move {
            let req = Req::get("/cookie");
            let Lookup::Miss(ticket) = s.lookup(&req.as_cache_request()).await else { panic!("miss") };
            let outcome = ticket
                .fetch(async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // Each client's own session: must never reach another client.
                    let body = Bytes::from(format!("session-{i}"));
                    let h = headers(&[("set-cookie", "session=x")]);
                    Ok::<_, Infallible>(Fetched::<()>::Complete(CachedResponse::new(StatusCode::OK, h, body)))
                })
                .await;
            match outcome {
                Ok(FetchOutcome { status: CacheStatus::Miss, served: Served::Complete(r) }) => {
                    assert_eq!(r.body, format!("session-{i}"));
                }
                other => panic!("unexpected {other:?}"),
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("task");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10, "everyone fetched their own");
}

#[tokio::test]
async fn passthrough_and_errors_are_not_shared() {
    let s = store(30);
    let req = Req::get("/p");
    let Lookup::Miss(ticket) = s.lookup(&req.as_cache_request()).await else { panic!("miss") };
    let outcome = ticket.fetch(async { Ok::<_, Infallible>(Fetched::Passthrough("stream")) }).await;
    assert!(matches!(outcome, Ok(FetchOutcome { status: CacheStatus::Miss, served: Served::Passthrough("stream") })));
    let Lookup::Miss(ticket) = s.lookup(&req.as_cache_request()).await else { panic!("still a miss") };
    let failed = ticket.fetch(async { Err::<Fetched<()>, _>("upstream down") }).await;
    assert_eq!(failed.err(), Some("upstream down"));
    assert!(matches!(s.lookup(&req.as_cache_request()).await, Lookup::Miss(_)), "nothing stored, no slot left");
}

#[tokio::test]
async fn a_cancelled_leader_hands_over() {
    let s = store(30);
    let calls = Arc::new(AtomicUsize::new(0));
    let req = Req::get("/cancel");
    let (leader_ticket, follower_ticket) =
        match (s.lookup(&req.as_cache_request()).await, s.lookup(&req.as_cache_request()).await) {
            (Lookup::Miss(a), Lookup::Miss(b)) => (a, b),
            _ => panic!("two misses"),
        };
    let c = calls.clone();
    let leader = tokio::spawn(leader_ticket.fetch(async move {
        c.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(Fetched::<()>::Complete(ok("never", &[])))
    }));
    tokio::task::yield_now().await;
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let c = calls.clone();
    let follower = tokio::spawn(follower_ticket.fetch(async move {
        c.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Infallible>(Fetched::<()>::Complete(ok("follower", &[])))
    }));
    tokio::task::yield_now().await;
    leader.abort();
    let outcome = follower.await.expect("task").expect("ok");
    assert_eq!(outcome.status, CacheStatus::Miss);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(serve(&s, &req, || ok("x", &[])).await, ("HIT", Bytes::from("follower")));
}

#[tokio::test]
async fn bounded_by_bytes_and_entries() {
    // 100 KB for at most 1000 entries: ten 10 KB bodies fill it.
    let limits = CacheLimits { max_entries: 1000, max_bytes: 100_000, ..CacheLimits::default() };
    let s = CacheStore::with_limits(&config(30, &[], false), limits).expect("valid");
    let body: &'static str = Box::leak("x".repeat(10_000).into_boxed_str());
    for i in 0..100 {
        let req = Req::get(Box::leak(format!("/big/{i}").into_boxed_str()));
        serve(&s, &req, || ok(body, &[])).await;
    }
    let (entries, bytes) = s.usage().await;
    assert!(bytes <= 100_000, "{bytes} bytes kept");
    assert!((1..=10).contains(&entries), "{entries} entries");

    // Small bodies: the entry count binds.
    let limits = CacheLimits { max_entries: 10, max_bytes: 10_000_000, ..CacheLimits::default() };
    let s = CacheStore::with_limits(&config(30, &[], false), limits).expect("valid");
    for i in 0..100 {
        let req = Req::get(Box::leak(format!("/small/{i}").into_boxed_str()));
        serve(&s, &req, || ok("tiny", &[])).await;
    }
    let (entries, _) = s.usage().await;
    assert!((1..=10).contains(&entries), "{entries} entries");
}

#[tokio::test]
async fn large_bodies_are_not_stored() {
    let limits = CacheLimits { max_entry_bytes: 8, ..CacheLimits::default() };
    let s = CacheStore::with_limits(&config(30, &[], false), limits).expect("valid");
    let req = Req::get("/large");
    assert_eq!(serve(&s, &req, || ok("123456789", &[])).await, ("MISS", Bytes::from("123456789")));
    assert_eq!(serve(&s, &req, || ok("12345678", &[])).await.0, "MISS");
    assert_eq!(serve(&s, &req, || ok("x", &[])).await, ("HIT", Bytes::from("12345678")));

    let Lookup::Miss(ticket) = s.lookup(&Req::get("/other").as_cache_request()).await else { panic!("miss") };
    assert_eq!(ticket.max_body_bytes(), 8);
    assert!(ticket.should_buffer(StatusCode::OK, &headers(&[("content-length", "8")])));
    assert!(ticket.should_buffer(StatusCode::OK, &headers(&[])), "unknown length: try");
    assert!(!ticket.should_buffer(StatusCode::OK, &headers(&[("content-length", "9")])));
    assert!(!ticket.should_buffer(StatusCode::OK, &headers(&[("cache-control", "no-store")])));
    assert!(!ticket.should_buffer(StatusCode::CREATED, &headers(&[])));
}

#[tokio::test]
async fn purge_empties_the_store() {
    let s = store(30);
    let req = Req::get("/p");
    serve(&s, &req, || ok("v1", &[])).await;
    let kept = s.clone();
    kept.purge();
    assert_eq!(serve(&s, &req, || ok("v2", &[])).await, ("MISS", Bytes::from("v2")));
    assert_eq!(s.config(), &config(30, &[], false));
}

#[test]
fn x_cache_header() {
    let mut h = HeaderMap::new();
    CacheStatus::Hit.set_header(&mut h);
    assert_eq!(h[X_CACHE], "HIT");
    CacheStatus::Miss.set_header(&mut h);
    assert_eq!(h[X_CACHE], "MISS");
}

#[test]
fn bad_definitions() {
    assert!(CacheStore::new(&config(30, &["bad header"], false)).is_err());
    assert!(CacheStore::new(&config(0, &[], false)).is_err());
}

impl Lookup {
    fn bypass(&self) -> Option<BypassReason> {
        match self {
            Lookup::Bypass(reason) => Some(*reason),
            _ => None,
        }
    }
}

#[tokio::test]
async fn futures_are_send() {
    fn send<T: Send>(t: T) -> T {
        t
    }
    let s = store(30);
    let req = Req::get("/send");
    let lookup = send(s.lookup(&req.as_cache_request())).await;
    let Lookup::Miss(ticket) = lookup else { panic!("miss") };
    let outcome = send(ticket.fetch(async { Ok::<_, Infallible>(Fetched::<()>::Complete(ok("x", &[]))) })).await;
    assert!(outcome.is_ok());
}
