//! Kafka publish routes and consumer-group subscriptions against a real Kafka-protocol broker
//! (tansu, started by the fixture on a free port).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway_tests::{
    eventually, eventually_within, full, shared_kafka, BoxedBody, KafkaServer, Protocol, TestGateway, TestServer,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;

/// A name no other test (or earlier run against the same broker) uses.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn post(path: &str, body: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::post(path).header("host", "a").header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// A plain consumer (no group join: every partition assigned by hand, from the beginning) that
/// reads `n` records of `topic`, in each partition's order.
async fn read(bootstrap: &str, topic: &str, n: usize) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    while records.len() < n {
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records in {topic} within 20s", records.len()))
            .unwrap();
        records.push(record.detach());
    }
    records
}

fn header<'a>(record: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let headers = record.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
}

fn text(bytes: Option<&[u8]>) -> &str {
    std::str::from_utf8(bytes.unwrap_or_default()).unwrap()
}

#[tokio::test]
async fn kafka_publish_is_acknowledged_and_readable_with_key_and_headers() {
    let kafka = shared_kafka();
    let topic = unique("gw-orders");
    kafka.create_topic(&topic, 3).await;
    let config = format!(
        r#"
[brokers.stream]
kind = "kafka"
bootstrap = ["{bootstrap}"]

[[routes]]
name = "order-created"
path = "/events/orders/{{id}}"
methods = ["POST"]
publish = {{ broker = "stream", topic = "{topic}", key = "order-{{id}}", headers = {{ "x-source" = "gateway" }} }}

[[routes]]
name = "nowhere"
path = "/events/nowhere"
timeout = "2s"
publish = {{ broker = "stream", topic = "{topic}-missing" }}
"#,
        bootstrap = kafka.bootstrap()
    );
    let gw = TestGateway::start(&config).await;
    let readyz = gw.admin_get("/readyz").await.json();
    assert_eq!(readyz["details"]["brokers"]["stream"], serde_json::json!({ "kind": "kafka", "status": "connected" }));

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [("traceparent", traceparent), ("idempotency-key", "order-42-v1")];
    let resp = gw.request(post("/events/orders/42", r#"{"order": 42}"#, &headers)).await;
    assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
    let message_id = resp.json()["message_id"].as_str().unwrap().to_owned();
    assert_eq!(Some(message_id.as_str()), resp.header("x-request-id"));

    let records = read(&kafka.bootstrap(), &topic, 1).await;
    let record = &records[0];
    assert_eq!(text(record.key()), "order-42");
    assert_eq!(text(record.payload()), r#"{"order": 42}"#);
    assert_eq!(header(record, "x-message-id"), Some(message_id.as_str()));
    assert_eq!(header(record, "content-type"), Some("application/json"));
    assert_eq!(header(record, "x-source"), Some("gateway"));
    assert_eq!(header(record, "idempotency-key"), Some("order-42-v1"));
    let sent = header(record, "traceparent").expect("traceparent travels with the record");
    assert_eq!(&sent[..35], &traceparent[..35], "same trace id: {sent}");

    // One key, one partition: a second event for order 42 lands beside the first, in order.
    assert_eq!(gw.request(post("/events/orders/42", r#"{"order": 42, "n": 2}"#, &[])).await.status, 202);
    let records = read(&kafka.bootstrap(), &topic, 2).await;
    assert_eq!(records[0].partition(), records[1].partition());
    assert!(records[0].offset() < records[1].offset());

    // Publishing does not create topics: a missing one is never a 202.
    let resp = gw.request(post("/events/nowhere", "{}", &[])).await;
    assert_eq!(resp.status, 503, "{}", String::from_utf8_lossy(&resp.body));

    let metrics = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    assert!(metrics.contains("gateway_broker_connected{broker=\"stream\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_kafka_broker_that_is_down_gives_503_never_a_false_202_and_is_used_again_when_back() {
    let mut kafka = KafkaServer::start();
    kafka.create_topic("down", 1).await;
    let config = format!(
        "[brokers.stream]\nkind = \"kafka\"\nbootstrap = [\"{}\"]\n[[routes]]\nname = \"p\"\npath = \"/p\"\ntimeout = \"1s\"\npublish = {{ broker = \"stream\", topic = \"down\" }}\n",
        kafka.bootstrap()
    );
    let gw = TestGateway::start(&config).await;
    assert_eq!(gw.request(post("/p", "{}", &[])).await.status, 202);
    kafka.kill();
    let started = std::time::Instant::now();
    let resp = gw.request(post("/p", "{}", &[])).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.error_code(), "service_unavailable");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let broker_status = async || gw.admin_get("/readyz").await.json()["details"]["brokers"]["stream"].clone();
    assert!(eventually(async || broker_status().await["status"] == "reconnecting").await, "{}", broker_status().await);
    assert_eq!(gw.request(post("/p", "{}", &[])).await.status, 503);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);

    // The broker comes back (a new, empty cluster: tansu keeps its data in memory): connected
    // again, and publishing again (the idempotent producer is replaced after a reconnection).
    let kafka = KafkaServer::start_on(kafka.port).expect("tansu restarts on its port");
    kafka.create_topic("down", 1).await;
    assert!(eventually(async || broker_status().await["status"] == "connected").await, "{}", broker_status().await);
    let published = async || gw.request(post("/p", "{}", &[])).await.status == 202;
    assert!(eventually_within(Duration::from_secs(10), published).await, "no 202 after the broker came back");
}

/// A gateway config with a publish route `/events/{key}` to `topic` (keyed by the path's
/// `{key}`), and a subscription of `group` on `topic` that delivers to `hooks`, with `extra` keys.
fn subscription_config(kafka: &KafkaServer, hooks: SocketAddr, topic: &str, group: &str, extra: &str) -> String {
    format!(
        r#"
[brokers.stream]
kind = "kafka"
bootstrap = ["{bootstrap}"]
session_timeout = "3s"

[services.hooks]
endpoints = ["http://{hooks}"]

[[routes]]
name = "publish"
path = "/events/{{key}}"
methods = ["POST"]
publish = {{ broker = "stream", topic = "{topic}", key = "{{key}}" }}

[[subscriptions]]
broker = "stream"
topic = "{topic}"
group = "{group}"
deliver_to = {{ service = "hooks", path = "/hooks" }}
{extra}
"#,
        bootstrap = kafka.bootstrap()
    )
}

/// What reached the hooks service: (body, x-gateway-attempt).
type Hits = mpsc::UnboundedReceiver<(String, String)>;

/// A service that refuses (500) a body containing "poison" always, and one containing "flaky"
/// until its third attempt; it accepts everything else.
async fn hooks() -> (TestServer, Hits) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = TestServer::start(Protocol::Http1, move |req: Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let attempt = req.headers().get("x-gateway-attempt").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let body = req.into_body().collect().await?.to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            let refuse = body.contains("poison") || (body.contains("flaky") && attempt != "3");
            let _ = tx.send((body, attempt));
            let status = if refuse { 500 } else { 200 };
            Ok::<Response<BoxedBody>, hyper::Error>(Response::builder().status(status).body(full("")).unwrap())
        }
    })
    .await;
    (server, rx)
}

async fn next(hits: &mut Hits) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(30), hits.recv()).await.expect("a delivery within 30s").unwrap()
}

#[tokio::test]
async fn kafka_subscription_delivers_in_order_retries_and_dead_letters() {
    let kafka = shared_kafka();
    let (topic, dead, group) = (unique("gw-sub"), unique("gw-sub-dead"), unique("gw-group"));
    kafka.create_topic(&topic, 1).await;
    let (hooks, mut hits) = hooks().await;
    let extra = format!("max_attempts = 3\ndead_letter = \"{dead}\"");
    let config = subscription_config(&kafka, hooks.addr, &topic, &group, &extra);
    let gw = TestGateway::start(&config).await;
    for body in ["m1", "flaky", "m2", "poison", "m3"] {
        let resp = gw.request(post("/events/k", &format!(r#"{{"e": "{body}"}}"#), &[])).await;
        assert_eq!(resp.status, 202, "{body}");
    }
    let mut seen = Vec::new();
    while seen.last().map(|(b, _): &(String, String)| b.contains("m3")) != Some(true) {
        seen.push(next(&mut hits).await);
    }
    let seen: Vec<String> =
        seen.iter().map(|(body, attempt)| format!("{} #{attempt}", &body[7..body.len() - 2])).collect();
    assert_eq!(
        seen,
        ["m1 #1", "flaky #1", "flaky #2", "flaky #3", "m2 #1", "poison #1", "poison #2", "poison #3", "m3 #1"],
        "one at a time, in the partition's order, each retried before the next"
    );

    let dead_letters = read(&kafka.bootstrap(), &dead, 1).await;
    let letter = &dead_letters[0];
    assert_eq!(text(letter.payload()), r#"{"e": "poison"}"#);
    assert_eq!(text(letter.key()), "k", "a dead letter keeps its key");
    assert_eq!(header(letter, "x-gateway-attempts"), Some("3"));
    assert_eq!(header(letter, "x-gateway-last-error"), Some("HTTP 500"));
    assert_eq!(header(letter, "x-gateway-source"), Some(format!("{topic}/{group}").as_str()));
    assert!(header(letter, "x-message-id").is_some());

    // Every record settled: the group's committed offset is past the last one.
    let probe: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap()).set("group.id", &group).create().unwrap();
    let mut partition = TopicPartitionList::new();
    partition.add_partition(&topic, 0);
    let committed = async || {
        let c = probe.committed_offsets(partition.clone(), Duration::from_secs(5)).unwrap();
        c.elements()[0].offset()
    };
    assert!(eventually(async || committed().await == Offset::Offset(5)).await, "{:?}", committed().await);
    let metrics = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    for outcome in ["delivered\"} 4", "dead_lettered\"} 1", "retried\"} 4"] {
        assert!(metrics.contains(outcome), "{outcome} in\n{metrics}");
    }
    // The consumer lag of the partition (refreshed every 15 s: any value of the run so far).
    let lag = format!("gateway_subscription_lag{{subscription=\"{topic}/{group}\",partition=\"0\"}} ");
    let metrics = async || String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    assert!(eventually(async || metrics().await.contains(&lag)).await, "{lag} in\n{}", metrics().await);
    let text = metrics().await;
    let value: u64 = text.lines().find_map(|l| l.strip_prefix(&lag)).unwrap().parse().unwrap();
    assert!(value <= 5, "{value}");
}

/// With concurrency, records of different partitions go out together, but never two of one
/// partition: each key's records arrive in the order they were published.
#[tokio::test]
async fn kafka_concurrency_keeps_the_order_within_each_partition() {
    let kafka = shared_kafka();
    let (topic, group) = (unique("gw-conc"), unique("gw-conc-group"));
    kafka.create_topic(&topic, 4).await;
    let (tx, mut hits) = mpsc::unbounded_channel();
    let in_flight = Arc::new(Mutex::new(Vec::<String>::new()));
    let overlap = Arc::new(Mutex::new(None::<String>));
    let (flying, overlapped) = (in_flight.clone(), overlap.clone());
    let hooks = TestServer::start(Protocol::Http1, move |req: Request<hyper::body::Incoming>| {
        let (tx, flying, overlapped) = (tx.clone(), flying.clone(), overlapped.clone());
        async move {
            let body = String::from_utf8_lossy(&req.into_body().collect().await?.to_bytes()).into_owned();
            let key = body.split('-').next().unwrap_or_default().to_owned();
            {
                let mut now = flying.lock().unwrap();
                if now.contains(&key) {
                    *overlapped.lock().unwrap() = Some(key.clone());
                }
                now.push(key.clone());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            flying.lock().unwrap().retain(|k| k != &key);
            let _ = tx.send(body);
            Ok::<Response<BoxedBody>, hyper::Error>(Response::new(full("")))
        }
    })
    .await;
    let config = subscription_config(&kafka, hooks.addr, &topic, &group, "concurrency = 4");
    let gw = TestGateway::start(&config).await;
    let keys = ["a", "b", "c", "d", "e", "f"];
    for n in 0..5 {
        for key in keys {
            let resp = gw.request(post(&format!("/events/{key}"), &format!("{key}-{n}"), &[])).await;
            assert_eq!(resp.status, 202);
        }
    }
    let mut per_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for _ in 0..keys.len() * 5 {
        let body = tokio::time::timeout(Duration::from_secs(30), hits.recv()).await.expect("a delivery").unwrap();
        per_key.entry(body[..1].to_owned()).or_default().push(body);
    }
    for key in keys {
        let expected: Vec<String> = (0..5).map(|n| format!("{key}-{n}")).collect();
        assert_eq!(per_key[key], expected, "key {key} in order");
    }
    assert_eq!(*overlap.lock().unwrap(), None, "two records of one key were delivered at once");
}

/// At least once: a gateway stopped while a record is being retried does not commit it, and the
/// next member of the group (here, the gateway started again) delivers it.
#[tokio::test]
async fn a_record_in_retries_when_the_gateway_stops_is_delivered_by_the_next_one() {
    let kafka = shared_kafka();
    let (topic, group) = (unique("gw-restart"), unique("gw-restart-group"));
    kafka.create_topic(&topic, 1).await;
    let accept = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut hits) = mpsc::unbounded_channel();
    let accepting = accept.clone();
    let hooks = TestServer::start(Protocol::Http1, move |req: Request<hyper::body::Incoming>| {
        let (tx, accepting) = (tx.clone(), accepting.clone());
        async move {
            let body = String::from_utf8_lossy(&req.into_body().collect().await?.to_bytes()).into_owned();
            let accepted = accepting.load(std::sync::atomic::Ordering::SeqCst);
            let _ = tx.send((body, accepted));
            let status = if accepted { 200 } else { 503 };
            Ok::<Response<BoxedBody>, hyper::Error>(Response::builder().status(status).body(full("")).unwrap())
        }
    })
    .await;
    let config = subscription_config(&kafka, hooks.addr, &topic, &group, "max_attempts = 100");
    let first = TestGateway::start(&config).await;
    assert_eq!(first.request(post("/events/k", "order-1", &[])).await.status, 202);
    let got = tokio::time::timeout(Duration::from_secs(30), hits.recv()).await.expect("a delivery").unwrap();
    assert_eq!(got, ("order-1".to_owned(), false));
    first.shutdown().await;

    accept.store(true, std::sync::atomic::Ordering::SeqCst);
    let _second = TestGateway::start(&config).await;
    loop {
        let got = tokio::time::timeout(Duration::from_secs(30), hits.recv()).await.expect("redelivered").unwrap();
        assert_eq!(got.0, "order-1");
        if got.1 {
            break;
        }
    }
}
