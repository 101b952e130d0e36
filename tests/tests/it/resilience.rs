//! Circuit breakers, retries and health through the gateway, against backends that fail
//! in controlled ways.

use std::time::Duration;

use bytes::Bytes;
use gateway_tests::{Backend, TestGateway};
use http::Request;
use http_body_util::Full;

fn closed_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    false
}

#[tokio::test]
async fn an_open_circuit_fails_fast_and_recovers_through_half_open() {
    let backend = Backend::start().await;
    let config = format!(
        r#"
[services.flaky]
endpoints = ["http://{}"]
circuit_breaker = {{ failure_ratio = 0.5, minimum_requests = 4, window = "10s", open_duration = "300ms", half_open_requests = 1 }}
[[routes]]
name = "r"
path_prefix = "/"
service = "flaky"
"#,
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    for _ in 0..4 {
        assert_eq!(gw.get("/status/500").await.status, 500);
    }
    let hits = backend.seen().len();
    let open = gw.get("/status/200").await;
    assert_eq!(open.status, 503);
    assert_eq!(open.error_code(), "service_unavailable");
    assert!(open.header("retry-after").is_some());
    assert_eq!(backend.seen().len(), hits, "nothing went upstream while open");
    let services = gw.admin_get("/admin/services").await.json();
    assert_eq!(services[0]["endpoints"][0]["circuit"], "open");
    let metrics = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    assert!(metrics.contains(&format!("gateway_circuit_state{{service=\"flaky\",endpoint=\"{}\"}} 2", backend.addr)));

    // After the open period one probe goes through; its success closes the circuit.
    assert!(eventually(async || gw.get("/ok").await.status == 200).await, "never recovered");
    assert_eq!(gw.get("/ok").await.status, 200);
    let services = gw.admin_get("/admin/services").await.json();
    assert_eq!(services[0]["endpoints"][0]["circuit"], "closed");
}

#[tokio::test]
async fn retries_land_on_a_healthy_endpoint_for_idempotent_calls_only() {
    let good = Backend::start().await;
    let config = format!(
        r#"
[services.mixed]
endpoints = ["http://{}", "http://{}"]
retry = {{ attempts = 3, retry_on = ["connect_failure"], budget = 0.5 }}
[[routes]]
name = "r"
path_prefix = "/"
service = "mixed"
"#,
        closed_port(),
        good.addr
    );
    let gw = TestGateway::start(&config).await;
    // POSTs first: round robin sends every other one to the dead endpoint (too few
    // failures yet for outlier ejection to take it out).
    let mut failed_posts = 0;
    for _ in 0..4 {
        let post = Request::post("/x").header("host", "a").body(Full::new(Bytes::from_static(b"{}"))).unwrap();
        if gw.request(post).await.status == 502 {
            failed_posts += 1;
        }
    }
    assert!(failed_posts > 0, "a POST is never retried by default");
    for _ in 0..10 {
        assert_eq!(gw.get("/x").await.status, 200, "a GET is retried on the other endpoint");
    }
}

#[tokio::test]
async fn the_retry_budget_stops_a_retry_storm() {
    let backend = Backend::start().await;
    let config = format!(
        r#"
[services.down]
endpoints = ["http://{}"]
retry = {{ attempts = 5, retry_on = ["503"], budget = 0.1 }}
[[routes]]
name = "r"
path_prefix = "/"
service = "down"
"#,
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    for _ in 0..300 {
        assert_eq!(gw.get("/status/503").await.status, 503);
    }
    let upstream = backend.seen().len();
    // Without a budget: 300 × 5 = 1500. With it: 300 + 10% + the small reserve.
    assert!(upstream < 300 + 30 + 110, "retries multiplied the load: {upstream}");
    assert!(upstream > 300, "some retries were sent: {upstream}");
}

#[tokio::test]
async fn forcing_a_circuit_open_by_hand_sends_nothing_there() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let config = format!(
        "[services.two]\nendpoints = [\"http://{}\", \"http://{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"two\"\n",
        a.addr, b.addr
    );
    let gw = TestGateway::start(&config).await;
    let force = |state: &'static str| {
        Request::post(format!("/admin/services/two/endpoints/{}/circuit", a.addr))
            .header("host", "admin")
            .body(Full::new(Bytes::from(format!("{{\"state\": \"{state}\"}}"))))
            .unwrap()
    };
    let forced = gateway_tests::send(gw.admin_addr, force("open")).await;
    assert_eq!(forced.status, 200);
    assert_eq!(forced.json()["circuit"], "open");
    for _ in 0..6 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert!(a.seen().is_empty(), "the forced-open endpoint got traffic");
    assert_eq!(b.seen().len(), 6);
    assert_eq!(gateway_tests::send(gw.admin_addr, force("auto")).await.status, 200);
    for _ in 0..4 {
        gw.get("/").await;
    }
    assert!(!a.seen().is_empty(), "handed back to the breaker, it serves again");
    let bad = gateway_tests::send(
        gw.admin_addr,
        Request::post("/admin/services/two/endpoints/9.9.9.9:1/circuit")
            .header("host", "admin")
            .body(Full::new(Bytes::from_static(b"{\"state\": \"open\"}")))
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, 404);
}

#[tokio::test]
async fn active_health_checks_take_a_dead_endpoint_out() {
    let good = Backend::start().await;
    let dead = closed_port();
    let config = format!(
        r#"
[services.checked]
endpoints = ["http://{dead}", "http://{}"]
health_check = {{ path = "/health", interval = "50ms", timeout = "100ms", healthy_threshold = 1, unhealthy_threshold = 1 }}
[[routes]]
name = "r"
path_prefix = "/"
service = "checked"
"#,
        good.addr
    );
    let gw = TestGateway::start(&config).await;
    assert!(
        eventually(async || {
            let services = gw.admin_get("/admin/services").await.json();
            services[0]["endpoints"].as_array().unwrap().iter().any(|e| e["healthy"] == false)
        })
        .await,
        "the dead endpoint was never marked unhealthy"
    );
    for _ in 0..10 {
        assert_eq!(gw.get("/x").await.status, 200, "only the healthy endpoint is picked");
    }
    let metrics = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    assert!(metrics.contains("gateway_endpoints{service=\"checked\",state=\"unhealthy\"} 1"), "{metrics}");
}

#[tokio::test]
async fn services_that_register_themselves_receive_traffic_until_they_leave() {
    let backend = Backend::start().await;
    let config = "[services.self-registered]\ndiscovery = \"registry\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"self-registered\"\n";
    let gw = TestGateway::start(config).await;
    assert_eq!(gw.get("/").await.status, 503, "nothing registered yet");
    let register = Request::put("/registry/services/self-registered/instances/one")
        .header("host", "admin")
        .body(Full::new(Bytes::from(format!(
            "{{\"address\": \"{}\", \"metadata\": {{\"zone\": \"a\"}}}}",
            backend.addr
        ))))
        .unwrap();
    assert_eq!(gateway_tests::send(gw.admin_addr, register).await.status, 201);
    assert!(eventually(async || gw.get("/").await.status == 200).await);
    let listed = gw.admin_get("/registry/services/self-registered").await.json();
    assert!(listed.to_string().contains(&backend.addr.to_string()), "{listed}");
    let deregister = Request::delete("/registry/services/self-registered/instances/one")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(gateway_tests::send(gw.admin_addr, deregister).await.status, 204);
    assert!(eventually(async || gw.get("/").await.status == 503).await);
}
