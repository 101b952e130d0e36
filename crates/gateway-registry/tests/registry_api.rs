//! The registry API over a real socket, and services that follow the registry.
//!
//! `cargo test -p gateway-registry --test registry_api`

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_registry::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{call, eventually, eventually_async, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn start(ttl: Duration) -> (Arc<MemoryRegistry>, SocketAddr) {
    let registry = MemoryRegistry::new(ttl);
    let addr = serve(registry_api(registry.clone())).await;
    (registry, addr)
}

const INSTANCE: &str = "/registry/services/users/instances/users-1";

#[tokio::test]
async fn register_renew_heartbeat_deregister() {
    let (_registry, addr) = start(Duration::from_secs(30)).await;
    let body = r#"{"address": "127.0.0.1:9001", "metadata": {"zone": "a"}}"#;
    let (status, _, created) = call(addr, Method::PUT, INSTANCE, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], "users-1");
    assert_eq!(created["address"], "127.0.0.1:9001");
    assert_eq!(created["scheme"], "http");
    assert_eq!(created["metadata"], json!({"zone": "a"}));
    assert_eq!(created["healthy"], true);
    assert!(created["registered_at"].as_str().unwrap().ends_with('Z'));

    let (status, _, renewed) = call(addr, Method::PUT, INSTANCE, Some(r#"{"address": "127.0.0.1:9002"}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(renewed["address"], "127.0.0.1:9002");
    assert_eq!(renewed["registered_at"], created["registered_at"]);

    let (status, _, beat) = call(addr, Method::PUT, &format!("{INSTANCE}/heartbeat"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(beat["id"], "users-1");

    let (status, _, list) = call(addr, Method::GET, "/registry/services", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!({"services": [{"name": "users", "instances": 1, "healthy": 1}]}));

    let (status, _, one) = call(addr, Method::GET, "/registry/services/users", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["service"], "users");
    let instance = &one["instances"][0];
    for key in ["id", "address", "scheme", "metadata", "healthy", "registered_at", "last_heartbeat", "expires_in_ms"] {
        assert!(!instance[key].is_null(), "{key} missing in {instance}");
    }
    let (status, _, _) = call(addr, Method::GET, INSTANCE, None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, _) = call(addr, Method::DELETE, INSTANCE, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, gone) = call(addr, Method::PUT, &format!("{INSTANCE}/heartbeat"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(gone["error"]["status"], 404);
    assert_eq!(gone["error"]["code"], "not_found");
    let (status, _, _) = call(addr, Method::DELETE, INSTANCE, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "deregistering twice is fine");
    let (status, _, _) = call(addr, Method::GET, INSTANCE, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, empty) = call(addr, Method::GET, "/registry/services/nobody", None).await;
    assert_eq!((status, empty), (StatusCode::OK, json!({"service": "nobody", "instances": []})));
    let (_, _, list) = call(addr, Method::GET, "/registry/services", None).await;
    assert_eq!(list, json!({"services": []}));
}

#[tokio::test]
async fn malformed_input_is_400_with_the_json_error() {
    let (registry, addr) = start(Duration::from_secs(30)).await;
    let long = "s".repeat(129);
    let cases: Vec<(String, &str)> = vec![
        ("/registry/services/users/instances/bad%20id".into(), r#"{"address": "127.0.0.1:1"}"#),
        ("/registry/services/users/instances/bad!id".into(), r#"{"address": "127.0.0.1:1"}"#),
        ("/registry/services/us%2Fers/instances/i".into(), r#"{"address": "127.0.0.1:1"}"#),
        (format!("/registry/services/{long}/instances/i"), r#"{"address": "127.0.0.1:1"}"#),
        (INSTANCE.into(), r#"{"address": "127.0.0.1"}"#),
        (INSTANCE.into(), r#"{"address": "127.0.0.1:0"}"#),
        (INSTANCE.into(), r#"{"address": "127.0.0.1:65536"}"#),
        (INSTANCE.into(), r#"{"address": "http://127.0.0.1:80"}"#),
        (INSTANCE.into(), r#"{"address": "bad host:80"}"#),
        (INSTANCE.into(), r#"{"address": "::1:80"}"#),
        (INSTANCE.into(), r#"{"address": 9001}"#),
        (INSTANCE.into(), r#"{"metadata": {}}"#),
        (INSTANCE.into(), r#"{"address": "127.0.0.1:1", "ttl": 5}"#),
        (INSTANCE.into(), r#"{"address": "127.0.0.1:1", "metadata": [1]}"#),
        (INSTANCE.into(), r#"{"address": "127.0.0.1:1", "metadata": {"scheme": "ftp"}}"#),
        (INSTANCE.into(), r#"{"address": "127.0.0.1:1", "metadata": {"weight": 0}}"#),
        (INSTANCE.into(), r#"{"address": "127.0.0.1:1", "metadata": {"weight": "heavy"}}"#),
        (INSTANCE.into(), "not json"),
        (INSTANCE.into(), ""),
    ];
    for (path, body) in &cases {
        let (status, headers, error) = call(addr, Method::PUT, path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {error}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(error["error"]["status"], 400);
        assert_eq!(error["error"]["code"], "bad_request");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
    let (status, _, _) = call(addr, Method::PUT, "/registry/services/bad!name/instances/i/heartbeat", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(addr, Method::GET, "/registry/services/bad!name", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(registry.services().is_empty(), "nothing was registered");

    // Valid edge cases.
    for (id, address) in [("a", "[::1]:65535"), ("A.b_c-9", "users-1.internal:1")] {
        let path = format!("/registry/services/users/instances/{id}");
        let (status, _, view) = call(addr, Method::PUT, &path, Some(&json!({"address": address}).to_string())).await;
        assert_eq!(status, StatusCode::CREATED, "{view}");
    }

    let (status, headers, error) = call(addr, Method::POST, "/registry/services", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");
    assert_eq!(error["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn oversized_bodies_are_400() {
    let (registry, addr) = start(Duration::from_secs(30)).await;
    let padding = "x".repeat(MAX_REGISTRATION_BYTES);
    let body = json!({"address": "127.0.0.1:9001", "metadata": {"padding": padding}}).to_string();
    let (status, _, error) = call(addr, Method::PUT, INSTANCE, Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["code"], "bad_request");
    assert!(error["error"]["message"].as_str().unwrap().contains("larger than"));

    // Chunked, without a content-length: refused while reading.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head =
        format!("PUT {INSTANCE} HTTP/1.1\r\nhost: registry\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "y".repeat(8192));
    for _ in 0..10 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break; // the server already answered and closed
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad_request"), "{answer}");
    assert!(registry.instances("users").is_empty());

    // Just under the limit is fine.
    let padding = "x".repeat(MAX_REGISTRATION_BYTES - 100);
    let body = json!({"address": "127.0.0.1:9001", "metadata": {"padding": padding}}).to_string();
    let (status, _, _) = call(addr, Method::PUT, INSTANCE, Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn instances_expire_without_heartbeats() {
    let ttl = Duration::from_millis(300);
    let (_registry, addr) = start(ttl).await;
    let registered = Instant::now();
    let (status, _, _) = call(addr, Method::PUT, INSTANCE, Some(r#"{"address": "127.0.0.1:9001"}"#)).await;
    assert_eq!(status, StatusCode::CREATED);
    // Heartbeats keep it alive past the TTL.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, _) = call(addr, Method::PUT, &format!("{INSTANCE}/heartbeat"), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(registered.elapsed() > ttl * 2);
    let last_beat = Instant::now();
    eventually_async("the instance expires", || async {
        call(addr, Method::GET, INSTANCE, None).await.0 == StatusCode::NOT_FOUND
    })
    .await;
    let gone_after = last_beat.elapsed();
    assert!(gone_after >= ttl, "expired after {gone_after:?}");
    let (status, _, _) = call(addr, Method::PUT, &format!("{INSTANCE}/heartbeat"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Registering again is a new instance.
    let (status, _, _) = call(addr, Method::PUT, INSTANCE, Some(r#"{"address": "127.0.0.1:9001"}"#)).await;
    assert_eq!(status, StatusCode::CREATED);
}

fn follow(registry: &Arc<MemoryRegistry>, name: &str) -> ServiceEndpoints {
    ServiceEndpoints::new(
        name,
        ServiceOptions::default(),
        Source::Registry { registry: registry.clone(), service: name.into() },
    )
    .unwrap()
}

fn addresses(service: &ServiceEndpoints) -> Vec<String> {
    service.snapshot().iter().map(|e| e.address().to_owned()).collect()
}

#[tokio::test]
async fn registry_services_follow_registrations() {
    let (registry, addr) = start(Duration::from_secs(30)).await;
    let orders = follow(&registry, "orders");
    assert!(matches!(orders.pick(&PickContext::default(), &|_| true), Pick::NoEndpoints));
    let (_, _, list) = call(addr, Method::GET, "/registry/services", None).await;
    assert_eq!(list, json!({"services": [{"name": "orders", "instances": 0, "healthy": 0}]}));

    let a = r#"{"address": "127.0.0.1:9001", "metadata": {"scheme": "h2c", "weight": "3", "zone": "a"}}"#;
    call(addr, Method::PUT, "/registry/services/orders/instances/a", Some(a)).await;
    call(addr, Method::PUT, "/registry/services/orders/instances/b", Some(r#"{"address": "127.0.0.1:9002"}"#)).await;
    eventually("both instances are served", || orders.snapshot().len() == 2).await;
    let first = orders.endpoint("127.0.0.1:9001").unwrap();
    assert_eq!(first.scheme(), Scheme::H2c);
    assert_eq!(first.weight(), 3);
    assert_eq!(first.metadata().unwrap()["zone"], "a");
    let picks: Vec<String> = (0..4)
        .map(|_| orders.pick(&PickContext::default(), &|_| true).picked().unwrap().address().to_owned())
        .collect();
    assert_eq!(picks.iter().filter(|a| *a == "127.0.0.1:9001").count(), 3, "weight 3:1 {picks:?}");

    // Health as the gateway sees it shows in the registry.
    for _ in 0..5 {
        orders.report(&first, Outcome::ConnectFailure);
    }
    assert!(first.is_ejected());
    let (_, _, one) = call(addr, Method::GET, "/registry/services/orders", None).await;
    let healthy: Vec<(Value, Value)> =
        one["instances"].as_array().unwrap().iter().map(|i| (i["id"].clone(), i["healthy"].clone())).collect();
    assert_eq!(healthy, [(json!("a"), json!(false)), (json!("b"), json!(true))]);

    // A renewal that changes nothing keeps the endpoint state; deregistering removes it.
    call(addr, Method::PUT, "/registry/services/orders/instances/a", Some(a)).await;
    let (status, _, _) = call(addr, Method::DELETE, "/registry/services/orders/instances/b", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually("b is gone", || addresses(&orders) == ["127.0.0.1:9001"]).await;
    assert!(Arc::ptr_eq(&orders.endpoint("127.0.0.1:9001").unwrap(), &first));

    // A second service of the same name (a reload) starts from the store at once.
    let again = follow(&registry, "orders");
    assert_eq!(addresses(&again), ["127.0.0.1:9001"]);
}

#[tokio::test]
async fn expiry_updates_following_services_within_a_second() {
    let (registry, addr) = start(Duration::from_millis(300)).await;
    let orders = follow(&registry, "orders");
    call(addr, Method::PUT, "/registry/services/orders/instances/a", Some(r#"{"address": "127.0.0.1:9001"}"#)).await;
    let registered = Instant::now();
    eventually("the instance is served", || orders.snapshot().len() == 1).await;
    eventually("the expired instance is dropped", || orders.snapshot().is_empty()).await;
    let after = registered.elapsed();
    assert!(after >= Duration::from_millis(300) && after < Duration::from_millis(1300), "{after:?}");
    assert!(matches!(orders.pick(&PickContext::default(), &|_| true), Pick::NoEndpoints));
}
