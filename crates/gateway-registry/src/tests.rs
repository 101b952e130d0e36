//! Balancers, pick rules and passive health over `ServiceEndpoints` (no sockets).

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, COOKIE};

use crate::*;

fn endpoints(addrs: &[&str]) -> Vec<Discovered> {
    addrs.iter().map(|a| Discovered::from(Endpoint::parse(&format!("http://{a}")).unwrap())).collect()
}

fn service_with(options: ServiceOptions, addrs: &[&str]) -> ServiceEndpoints {
    ServiceEndpoints::new("svc", options, Source::Static(endpoints(addrs))).unwrap()
}

fn service(balancer: Balancer, addrs: &[&str]) -> ServiceEndpoints {
    service_with(ServiceOptions { balancer, ..ServiceOptions::default() }, addrs)
}

fn yes(_: &EndpointState) -> bool {
    true
}

fn pick(s: &ServiceEndpoints) -> String {
    pick_with(s, &PickContext::default())
}

fn pick_with(s: &ServiceEndpoints, ctx: &PickContext<'_>) -> String {
    match s.pick(ctx, &yes) {
        Pick::Picked(p) => p.address().to_owned(),
        other => panic!("no pick: {other:?}"),
    }
}

fn tally(s: &ServiceEndpoints, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(pick(s)).or_default() += 1;
    }
    counts
}

fn state(s: &ServiceEndpoints, address: &str) -> Arc<EndpointState> {
    s.endpoint(address).unwrap()
}

#[test]
fn round_robin_takes_turns_and_skips_unavailable() {
    let s = service(Balancer::RoundRobin, &["a:1", "b:1", "c:1"]);
    let picks: Vec<String> = (0..6).map(|_| pick(&s)).collect();
    assert_eq!(picks, ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1"]);
    state(&s, "b:1").set_healthy(false);
    let counts = tally(&s, 100);
    assert_eq!(counts.get("b:1"), None);
    assert_eq!(counts["a:1"] + counts["c:1"], 100);
}

#[test]
fn weighted_round_robin_follows_weights() {
    let s = service(Balancer::RoundRobin, &[]);
    let mut set = endpoints(&["a:1", "b:1"]);
    set[0].weight = Some(3);
    s.publish(&set);
    let counts = tally(&s, 400);
    assert_eq!((counts["a:1"], counts["b:1"]), (300, 100));
    // Interleaved, not bunched: never two b's in a row.
    let picks: Vec<String> = (0..8).map(|_| pick(&s)).collect();
    assert!(picks.windows(2).all(|w| !(w[0] == "b:1" && w[1] == "b:1")), "{picks:?}");
    // Equal weights again: plain turns.
    s.publish(&endpoints(&["a:1", "b:1"]));
    assert_eq!(state(&s, "a:1").weight(), 1);
    let counts = tally(&s, 100);
    assert_eq!((counts["a:1"], counts["b:1"]), (50, 50));
}

#[test]
fn least_request_avoids_busy_endpoints() {
    let s = service(Balancer::LeastRequest, &["a:1", "b:1"]);
    let a = state(&s, "a:1");
    let held: Vec<Picked> = (0..3).map(|_| a.acquire(false)).collect();
    assert_eq!(state(&s, "a:1").in_flight(), 3);
    for _ in 0..50 {
        assert_eq!(pick(&s), "b:1");
    }
    drop(held);
    assert_eq!(state(&s, "a:1").in_flight(), 0);

    // Of three, the busiest never wins a pair.
    let s = service(Balancer::LeastRequest, &["a:1", "b:1", "c:1"]);
    let busy = state(&s, "a:1");
    let _guards: Vec<Picked> = (0..5).map(|_| busy.acquire(false)).collect();
    let counts = tally(&s, 300);
    assert_eq!(counts.get("a:1"), None);
    assert!(counts["b:1"] > 50 && counts["c:1"] > 50, "{counts:?}");
}

#[test]
fn random_spreads_evenly() {
    let s = service(Balancer::Random, &["a:1", "b:1", "c:1"]);
    let counts = tally(&s, 3000);
    for a in ["a:1", "b:1", "c:1"] {
        assert!((800..1200).contains(&counts[a]), "{counts:?}");
    }
}

#[test]
fn peak_ewma_prefers_the_fast_endpoint() {
    let s = service(Balancer::PeakEwma, &["slow:1", "fast:1"]);
    s.report(&state(&s, "slow:1"), Outcome::Response { latency: Duration::from_millis(200) });
    s.report(&state(&s, "fast:1"), Outcome::Response { latency: Duration::from_millis(2) });
    assert!(state(&s, "slow:1").latency_estimate() > Duration::from_millis(150));
    for _ in 0..50 {
        assert_eq!(pick(&s), "fast:1");
    }
    // Load counts too: enough calls in flight on the fast one make the slow one cheaper.
    let fast = state(&s, "fast:1");
    let _busy: Vec<Picked> = (0..200).map(|_| fast.acquire(false)).collect();
    assert_eq!(pick(&s), "slow:1");
}

fn header_ctx(headers: &HeaderMap) -> PickContext<'_> {
    PickContext { client_ip: None, headers: Some(headers) }
}

fn key_owner(s: &ServiceEndpoints, key: &str) -> String {
    let mut h = HeaderMap::new();
    h.insert("x-user-id", HeaderValue::from_str(key).unwrap());
    pick_with(s, &header_ctx(&h))
}

fn hashed(addrs: &[&str]) -> ServiceEndpoints {
    service(Balancer::ConsistentHash(HashOn::parse("header:x-user-id").unwrap()), addrs)
}

#[test]
fn consistent_hash_is_sticky_and_spreads() {
    let s = hashed(&["a:1", "b:1", "c:1", "d:1"]);
    let first = key_owner(&s, "user-42");
    for _ in 0..100 {
        assert_eq!(key_owner(&s, "user-42"), first);
    }
    // Another gateway with the same endpoints (in another order) agrees.
    let other = hashed(&["d:1", "c:1", "b:1", "a:1"]);
    for k in 0..200 {
        let key = format!("user-{k}");
        assert_eq!(key_owner(&s, &key), key_owner(&other, &key));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for k in 0..4000 {
        *counts.entry(key_owner(&s, &format!("user-{k}"))).or_default() += 1;
    }
    for a in ["a:1", "b:1", "c:1", "d:1"] {
        assert!((600..1400).contains(&counts[a]), "{counts:?}");
    }
}

#[test]
fn consistent_hash_moves_few_keys_when_one_endpoint_joins_or_leaves() {
    let s = hashed(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
    let keys: Vec<String> = (0..10_000).map(|k| format!("key-{k}")).collect();
    let before: Vec<String> = keys.iter().map(|k| key_owner(&s, k)).collect();
    s.publish(&endpoints(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80"]));
    let after: Vec<String> = keys.iter().map(|k| key_owner(&s, k)).collect();
    let moved: Vec<usize> = (0..keys.len()).filter(|&i| before[i] != after[i]).collect();
    // Ideal: 1/5 of the keys, all of them to the newcomer.
    assert!((1_000..3_000).contains(&moved.len()), "{} keys moved", moved.len());
    assert!(moved.iter().all(|&i| after[i] == "10.0.0.5:80"));
    // It leaves again: exactly its keys go back where they were.
    s.publish(&endpoints(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]));
    let back: Vec<String> = keys.iter().map(|k| key_owner(&s, k)).collect();
    assert_eq!(back, before);
}

#[test]
fn consistent_hash_walks_past_unavailable_endpoints_deterministically() {
    let s = hashed(&["a:1", "b:1", "c:1", "d:1"]);
    let keys: Vec<String> = (0..500).map(|k| format!("k{k}")).collect();
    let before: Vec<String> = keys.iter().map(|k| key_owner(&s, k)).collect();
    state(&s, "b:1").set_healthy(false);
    let during: Vec<String> = keys.iter().map(|k| key_owner(&s, k)).collect();
    for i in 0..keys.len() {
        if before[i] == "b:1" {
            assert_ne!(during[i], "b:1");
            assert_eq!(key_owner(&s, &keys[i]), during[i], "the fallback is stable");
        } else {
            assert_eq!(during[i], before[i], "keys of healthy endpoints stay");
        }
    }
    // Refused by the breaker: the same walk.
    let mut h = HeaderMap::new();
    let k = keys.iter().position(|_| true).unwrap();
    h.insert("x-user-id", HeaderValue::from_str(&keys[k]).unwrap());
    state(&s, "b:1").set_healthy(true);
    let owner = before[k].clone();
    let not_owner = |e: &EndpointState| e.address() != owner;
    let p = s.pick(&header_ctx(&h), &not_owner).picked().unwrap();
    assert_ne!(p.address(), owner);
    let again = s.pick(&header_ctx(&h), &not_owner).picked().unwrap();
    assert_eq!(p.address(), again.address());
}

#[test]
fn consistent_hash_on_cookie_and_ip() {
    let s = service(Balancer::ConsistentHash(HashOn::parse("cookie:sid").unwrap()), &["a:1", "b:1", "c:1"]);
    let mut owners = std::collections::HashSet::new();
    for k in 0..50 {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&format!("theme=dark; sid=s{k}")).unwrap());
        let first = pick_with(&s, &header_ctx(&h));
        assert_eq!(pick_with(&s, &header_ctx(&h)), first);
        owners.insert(first);
    }
    assert_eq!(owners.len(), 3);
    // No cookie: still an answer.
    pick(&s);

    let s = service(Balancer::ConsistentHash(HashOn::Ip), &["a:1", "b:1", "c:1"]);
    let h = HeaderMap::new();
    let ip: IpAddr = "203.0.113.9".parse().unwrap();
    let first = pick_with(&s, &PickContext::new(ip, &h));
    for _ in 0..20 {
        assert_eq!(pick_with(&s, &PickContext::new(ip, &h)), first);
    }
    let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
    assert_eq!(pick_with(&s, &PickContext::new(mapped, &h)), first);
}

#[test]
fn pick_answers_why_nothing_was_picked() {
    let s = service(Balancer::RoundRobin, &[]);
    assert!(matches!(s.pick(&PickContext::default(), &yes), Pick::NoEndpoints));

    let s = service(Balancer::RoundRobin, &["a:1", "b:1"]);
    let no = |_: &EndpointState| false;
    assert!(matches!(s.pick(&PickContext::default(), &no), Pick::AllRejected));
    for e in s.snapshot().iter() {
        e.set_healthy(false);
    }
    assert!(matches!(s.pick(&PickContext::default(), &yes), Pick::AllUnhealthy));
    assert_eq!(s.counts(), EndpointCounts { healthy: 0, unhealthy: 2, ejected: 0 });

    // Panic mode: use them anyway, and say so.
    let s = service_with(ServiceOptions { panic_mode: true, ..ServiceOptions::default() }, &["a:1", "b:1"]);
    for e in s.snapshot().iter() {
        e.set_healthy(false);
    }
    let p = s.pick(&PickContext::default(), &yes).picked().unwrap();
    assert!(p.in_panic_mode());
    assert!(matches!(s.pick(&PickContext::default(), &no), Pick::AllRejected));
    // One healthy again: normal picks, only that one.
    state(&s, "b:1").set_healthy(true);
    for _ in 0..5 {
        let p = s.pick(&PickContext::default(), &yes).picked().unwrap();
        assert!(!p.in_panic_mode());
        assert_eq!(p.address(), "b:1");
    }
}

#[test]
fn admit_is_asked_once_per_endpoint_and_only_about_the_pick() {
    for balancer in [
        Balancer::RoundRobin,
        Balancer::Random,
        Balancer::LeastRequest,
        Balancer::PeakEwma,
        Balancer::ConsistentHash(HashOn::Ip),
    ] {
        let s = service(balancer.clone(), &["a:1", "b:1", "c:1", "d:1"]);
        let asked = RefCell::new(Vec::new());
        let admit = |e: &EndpointState| {
            asked.borrow_mut().push(e.address().to_owned());
            e.address() == "c:1"
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let h = HeaderMap::new();
        for _ in 0..20 {
            asked.borrow_mut().clear();
            let p = s.pick(&PickContext::new(ip, &h), &admit).picked().unwrap();
            assert_eq!(p.address(), "c:1");
            let asked = asked.borrow();
            assert_eq!(asked.last().map(String::as_str), Some("c:1"), "{balancer:?}");
            let mut unique = asked.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), asked.len(), "{balancer:?} asked twice: {asked:?}");
        }
        asked.borrow_mut().clear();
        let one = |e: &EndpointState| {
            asked.borrow_mut().push(e.address().to_owned());
            true
        };
        drop(s.pick(&PickContext::new(ip, &h), &one));
        assert_eq!(asked.borrow().len(), 1, "{balancer:?}");
    }
}

#[test]
fn retries_prefer_endpoints_not_yet_tried() {
    let s = service(Balancer::RoundRobin, &["a:1", "b:1", "c:1"]);
    for _ in 0..10 {
        let p = s.pick_excluding(&PickContext::default(), &yes, &["a:1", "b:1"]).picked().unwrap();
        assert_eq!(p.address(), "c:1");
    }
    // All tried: one of them all the same.
    assert!(s.pick_excluding(&PickContext::default(), &yes, &["a:1", "b:1", "c:1"]).picked().is_some());
    // The untried one is unhealthy: a tried healthy one beats it.
    state(&s, "c:1").set_healthy(false);
    let p = s.pick_excluding(&PickContext::default(), &yes, &["a:1"]).picked().unwrap();
    assert_eq!(p.address(), "b:1");
    let hashed = hashed(&["a:1", "b:1", "c:1"]);
    let owner = key_owner(&hashed, "u1");
    let mut h = HeaderMap::new();
    h.insert("x-user-id", HeaderValue::from_static("u1"));
    let retry = hashed.pick_excluding(&header_ctx(&h), &yes, &[&owner]).picked().unwrap();
    assert_ne!(retry.address(), owner);
}

#[test]
fn endpoint_state_survives_a_new_set() {
    let s = service(Balancer::RoundRobin, &["a:1", "b:1"]);
    let a = state(&s, "a:1");
    let call = a.acquire(false);
    s.publish(&endpoints(&["c:1", "a:1"]));
    let snapshot = s.snapshot();
    assert_eq!(snapshot.iter().map(|e| e.address()).collect::<Vec<_>>(), ["c:1", "a:1"]);
    assert!(Arc::ptr_eq(&snapshot[1], &a));
    assert_eq!(snapshot[1].in_flight(), 1);
    drop(call);
    assert_eq!(a.in_flight(), 0);
    // Same address, other scheme: another endpoint.
    s.publish(&[Discovered::from(Endpoint::parse("h2c://a:1").unwrap())]);
    assert!(!Arc::ptr_eq(&s.snapshot()[0], &a));
    // Duplicates collapse.
    s.publish(&endpoints(&["a:1", "a:1", "b:1"]));
    assert_eq!(s.snapshot().len(), 2);
}

#[test]
fn a_rebuilt_service_inherits_endpoint_state() {
    let old = service(Balancer::RoundRobin, &["a:1", "b:1"]);
    state(&old, "a:1").set_healthy(false);
    let new = service(Balancer::LeastRequest, &["a:1", "c:1"]);
    new.inherit(&old);
    assert!(Arc::ptr_eq(&state(&new, "a:1"), &state(&old, "a:1")));
    assert!(!state(&new, "a:1").is_healthy());
    assert!(new.endpoint("b:1").is_none());
    assert_eq!(pick(&new), "c:1");
}

fn passive_service(addrs: &[&str]) -> ServiceEndpoints {
    service(Balancer::RoundRobin, addrs)
}

fn fail(s: &ServiceEndpoints, address: &str, times: usize) {
    let e = state(s, address);
    for _ in 0..times {
        s.report(&e, Outcome::ConnectFailure);
    }
}

#[tokio::test(start_paused = true)]
async fn connect_failures_eject_with_doubling_back_off() {
    let s = passive_service(&["a:1", "b:1", "c:1", "d:1"]);
    let a = state(&s, "a:1");
    fail(&s, "a:1", 4);
    assert!(!a.is_ejected());
    s.report(&a, Outcome::Response { latency: Duration::from_millis(1) });
    fail(&s, "a:1", 4);
    assert!(!a.is_ejected(), "a success breaks the streak");
    fail(&s, "a:1", 1);
    assert!(a.is_ejected());
    assert_eq!(s.counts(), EndpointCounts { healthy: 3, unhealthy: 0, ejected: 1 });
    assert!(!tally(&s, 60).contains_key("a:1"));

    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(a.is_ejected());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(!a.is_ejected(), "back after 30 s");
    assert_eq!(tally(&s, 40)["a:1"], 10);

    fail(&s, "a:1", 5);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(a.is_ejected(), "the second ejection lasts 60 s");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(!a.is_ejected());

    // Behaving for a whole base period resets the back-off.
    tokio::time::advance(Duration::from_secs(31)).await;
    s.report(&a, Outcome::Response { latency: Duration::from_millis(1) });
    fail(&s, "a:1", 5);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(!a.is_ejected());

    // Capped at max_ejection (5 min).
    for _ in 0..6 {
        fail(&s, "a:1", 5);
        let left = a.ejected_for().unwrap();
        assert!(left <= Duration::from_secs(300));
        tokio::time::advance(left + Duration::from_millis(1)).await;
    }
    fail(&s, "a:1", 5);
    assert_eq!(a.ejected_for(), Some(Duration::from_secs(300)));
}

#[tokio::test(start_paused = true)]
async fn ejection_never_takes_the_last_endpoints() {
    let lone = passive_service(&["a:1"]);
    fail(&lone, "a:1", 50);
    assert!(!state(&lone, "a:1").is_ejected());
    assert_eq!(pick(&lone), "a:1");

    // At most half of a service.
    let pair = passive_service(&["a:1", "b:1"]);
    fail(&pair, "a:1", 5);
    fail(&pair, "b:1", 5);
    assert!(state(&pair, "a:1").is_ejected());
    assert!(!state(&pair, "b:1").is_ejected());
    assert_eq!(pick(&pair), "b:1");

    // Never the last available one, whatever the percentage.
    let s = service_with(
        ServiceOptions {
            passive: PassiveHealth { max_ejection_percent: 100, ..PassiveHealth::default() },
            ..ServiceOptions::default()
        },
        &["a:1", "b:1", "c:1"],
    );
    state(&s, "c:1").set_healthy(false);
    fail(&s, "a:1", 5);
    fail(&s, "b:1", 5);
    assert!(state(&s, "a:1").is_ejected());
    assert!(!state(&s, "b:1").is_ejected());
    assert_eq!(pick(&s), "b:1");

    // Ejection off.
    let off = service_with(
        ServiceOptions {
            passive: PassiveHealth { consecutive_connect_failures: 0, ..PassiveHealth::default() },
            ..ServiceOptions::default()
        },
        &["a:1", "b:1", "c:1"],
    );
    fail(&off, "a:1", 50);
    assert!(!state(&off, "a:1").is_ejected());
}

#[test]
fn service_options_from_config() {
    let config = gateway_config::parse(
        "t.toml",
        r#"
        [services.users]
        endpoints = ["http://127.0.0.1:9001"]
        load_balancer = "consistent_hash"
        hash_on = "cookie:sid"

        [[routes]]
        name = "users"
        path_prefix = "/u"
        service = "users"
        "#,
        &|_| None,
    )
    .unwrap();
    let def = &config.services["users"];
    let options = ServiceOptions::from_config(def).unwrap();
    assert_eq!(options.balancer, Balancer::ConsistentHash(HashOn::Cookie("sid".into())));
    assert!(options.health_check.is_none() && !options.panic_mode);
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    // Static, no health check: no runtime needed.
    let s = ServiceEndpoints::from_config("users", def, &registry).unwrap();
    assert_eq!(s.snapshot()[0].address(), "127.0.0.1:9001");
    assert_eq!(s.name(), "users");
}

#[test]
fn shared_types_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ServiceEndpoints>();
    send_sync::<MemoryRegistry>();
    send_sync::<Picked>();
    send_sync::<EndpointState>();
}

fn srv(priority: u16, weight: u16, port: u16, addresses: &[&str]) -> SrvTarget {
    SrvTarget { priority, weight, port, addresses: addresses.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect() }
}

fn mapped(targets: &[SrvTarget]) -> Vec<(String, Option<u32>)> {
    srv_endpoints(targets, Scheme::Http).into_iter().map(|d| (d.endpoint.address().to_owned(), d.weight)).collect()
}

#[test]
fn srv_records_map_to_endpoints_with_their_ports_and_weights() {
    let targets = [
        srv(10, 60, 8081, &["10.0.0.1"]),
        srv(10, 20, 8082, &["10.0.0.2", "fd00::2"]),
        srv(20, 100, 9000, &["10.0.0.9"]), // a backup: lower priority wins
    ];
    assert_eq!(
        mapped(&targets),
        [
            ("10.0.0.1:8081".to_owned(), Some(60)),
            ("10.0.0.2:8082".to_owned(), Some(20)),
            ("[fd00::2]:8082".to_owned(), Some(20)),
        ]
    );
}

#[test]
fn srv_backups_serve_only_when_no_preferred_target_resolves() {
    let targets = [srv(0, 5, 8080, &[]), srv(1, 5, 8080, &["10.0.0.3"]), srv(2, 5, 8080, &["10.0.0.4"])];
    assert_eq!(mapped(&targets), [("10.0.0.3:8080".to_owned(), Some(5))]);
    assert_eq!(mapped(&[srv(0, 5, 8080, &[])]), []);
    assert_eq!(mapped(&[]), []);
}

#[test]
fn srv_weights_are_scaled_into_the_balancer_range() {
    // 0 ("rarely") becomes 1; weights over MAX_WEIGHT keep their proportions.
    let targets = [srv(0, 0, 80, &["10.0.0.1"]), srv(0, 65535, 80, &["10.0.0.2"]), srv(0, 32768, 80, &["10.0.0.3"])];
    assert_eq!(
        mapped(&targets),
        [
            ("10.0.0.1:80".to_owned(), Some(1)),
            ("10.0.0.2:80".to_owned(), Some(MAX_WEIGHT)),
            ("10.0.0.3:80".to_owned(), Some(500)),
        ]
    );
    // The same address in two records is one endpoint.
    let twice = [srv(0, 1, 80, &["10.0.0.1"]), srv(0, 1, 80, &["10.0.0.1"])];
    assert_eq!(mapped(&twice).len(), 1);
}

#[test]
fn srv_weights_feed_weighted_round_robin() {
    let service = ServiceEndpoints::new(
        "srv",
        ServiceOptions::default(),
        Source::Static(srv_endpoints(&[srv(0, 3, 80, &["10.0.0.1"]), srv(0, 1, 80, &["10.0.0.2"])], Scheme::Http)),
    )
    .unwrap();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let pick = service.pick(&PickContext::default(), &yes).picked().unwrap();
        *counts.entry(pick.address().to_owned()).or_default() += 1;
    }
    assert_eq!(counts["10.0.0.1:80"], 300);
    assert_eq!(counts["10.0.0.2:80"], 100);
}

#[test]
fn grpc_health_messages_encode_and_decode() {
    use crate::health::{grpc_health_request, grpc_serving_status};
    use bytes::Bytes;
    // HealthCheckRequest{} and HealthCheckRequest{service: "users.v1.Users"}, length-prefixed.
    assert_eq!(&grpc_health_request("")[..], &[0, 0, 0, 0, 0]);
    let named = grpc_health_request("users.v1.Users");
    assert_eq!(&named[..7], &[0, 0, 0, 0, 16, 0x0a, 14]);
    assert_eq!(&named[7..], b"users.v1.Users");
    // HealthCheckResponse{status: SERVING}, {status: NOT_SERVING}, {} (UNKNOWN).
    assert_eq!(grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1])), Ok(1));
    assert_eq!(grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 2])), Ok(2));
    assert_eq!(grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 0])), Ok(0));
    // Unknown fields are skipped; the last status wins.
    let extra = [0, 0, 0, 0, 9, 0x12, 3, b'a', b'b', b'c', 0x08, 2, 0x08, 1];
    assert_eq!(grpc_serving_status(Bytes::copy_from_slice(&extra)), Ok(1));
    // Empty, compressed, truncated.
    assert!(grpc_serving_status(Bytes::new()).is_err());
    assert!(grpc_serving_status(Bytes::from_static(&[1, 0, 0, 0, 2, 0x08, 1])).is_err());
    assert!(grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 3, 0x08, 1])).is_err());
    assert!(grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 1, 0x08])).is_err());
}
