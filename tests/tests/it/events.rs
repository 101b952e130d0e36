//! Publish routes and subscriptions through real brokers (RabbitMQ and NATS JetStream,
//! started by the fixtures on free ports).

use std::time::Duration;

use bytes::Bytes;
use gateway_tests::{eventually, shared_nats, shared_rabbit, Backend, NatsServer, TestGateway};
use http::Request;
use http_body_util::Full;

fn post(path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "a")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn wait_for(backend: &Backend, n: usize) -> bool {
    for _ in 0..200 {
        if backend.seen().len() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn amqp_publish_is_confirmed_and_delivered_to_the_subscriber() {
    let rabbit = shared_rabbit();
    let hooks = Backend::start().await;
    let config = format!(
        r#"
[brokers.events]
kind = "amqp"
url = "{url}"

[services.notifications]
endpoints = ["http://{hooks}"]

[[routes]]
name = "order-created"
path = "/events/orders/{{id}}"
methods = ["POST"]
publish = {{ broker = "events", exchange = "gw-orders", routing_key = "order.{{id}}" }}

[[subscriptions]]
broker = "events"
queue = "gw-notifications"
bind = {{ exchange = "gw-orders", routing_key = "order.*" }}
deliver_to = {{ service = "notifications", path = "/hooks/orders" }}
max_attempts = 3
"#,
        url = rabbit.url(),
        hooks = hooks.addr
    );
    let gw = TestGateway::start(&config).await;
    // The subscription declares the queue and binding in the background; until then the
    // message would be unroutable (and refused, never a false 202).
    let mut accepted = None;
    for _ in 0..100 {
        let resp = gw.request(post("/events/orders/42", r#"{"order": 42}"#)).await;
        if resp.status == 202 {
            accepted = Some(resp);
            break;
        }
        assert_eq!(resp.status, 503, "until the queue exists the broker does not take it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted = accepted.expect("the broker confirmed a message");
    let message_id = accepted.json()["message_id"].as_str().unwrap().to_owned();
    assert_eq!(Some(message_id.as_str()), accepted.header("x-request-id"));
    assert!(wait_for(&hooks, 1).await, "the subscriber never got the message");
    let delivered = hooks.last();
    assert_eq!(delivered.method, "POST");
    assert_eq!(delivered.target, "/hooks/orders");
    assert_eq!(delivered.header("x-request-id"), Some(message_id.as_str()));
    assert_eq!(delivered.header("content-type"), Some("application/json"));
    let metrics = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    assert!(metrics.contains("gateway_broker_connected{broker=\"events\"} 1"), "{metrics}");
    assert!(metrics.contains("outcome=\"delivered\"} 1"), "{metrics}");
}

#[tokio::test]
async fn nats_publish_and_subscribe_through_jetstream() {
    let nats = shared_nats();
    let hooks = Backend::start().await;
    let config = format!(
        r#"
[brokers.jet]
kind = "nats"
url = "{url}"

[services.hooks]
endpoints = ["http://{hooks}"]

[[routes]]
name = "publish"
path = "/events/{{id}}"
methods = ["POST"]
publish = {{ broker = "jet", subject = "gwtest.{{id}}" }}

[[subscriptions]]
broker = "jet"
stream = "GWTEST"
subject = "gwtest.>"
durable = "gw-hooks"
deliver_to = {{ service = "hooks", path = "/hooks" }}
"#,
        url = nats.url(),
        hooks = hooks.addr
    );
    let gw = TestGateway::start(&config).await;
    let mut status = 0;
    for _ in 0..100 {
        status = gw.request(post("/events/7", r#"{"n": 7}"#)).await.status.as_u16();
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 202);
    assert!(wait_for(&hooks, 1).await, "the subscriber never got the message");
    assert_eq!(hooks.last().target, "/hooks");
    // A subject-changing path parameter is refused, not published elsewhere.
    assert_eq!(gw.request(post("/events/a.b", "{}")).await.status, 400);
}

#[tokio::test]
async fn a_broker_that_is_down_gives_503_never_a_false_202() {
    let mut nats = NatsServer::start();
    let config = format!(
        "[brokers.jet]\nkind = \"nats\"\nurl = \"{}\"\n[[routes]]\nname = \"p\"\npath = \"/p\"\ntimeout = \"1s\"\npublish = {{ broker = \"jet\", subject = \"down.x\" }}\n",
        nats.url()
    );
    let gw = TestGateway::start(&config).await;
    let broker_status = async || gw.admin_get("/readyz").await.json()["details"]["brokers"]["jet"].clone();
    assert_eq!(broker_status().await, serde_json::json!({ "kind": "nats", "status": "connected" }));
    nats.kill();
    let started = std::time::Instant::now();
    let resp = gw.request(post("/p", "{}")).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.error_code(), "service_unavailable");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The broker's state shows in /readyz details; the gateway itself stays ready.
    assert!(eventually(async || broker_status().await["status"] == "reconnecting").await, "{}", broker_status().await);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
}

mod kafka;
