//! NATS JetStream against a real nats-server (started once for this binary by `gateway-tests`).
//! Run with: cargo test -p gateway-events --test nats

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use gateway_config::schema::{DeliverTo, Subscription};
use gateway_events::{
    Broker, BrokerState, DeliverFn, Delivery, Destination, NatsBroker, OutgoingMessage, PublishError,
    SubscriptionOptions, SubscriptionRunner,
};
use gateway_tests::{shared_nats, NatsServer};
use serde_spanned::Spanned;

use common::{fast, logs, options};

/// A token no other test of this run uses (stream names and subjects).
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

async fn broker(url: &str) -> Arc<dyn Broker> {
    logs();
    let broker = NatsBroker::connect("jet", url, &options()).await.unwrap();
    assert_eq!(broker.state(), BrokerState::Connected);
    Arc::new(broker)
}

/// A plain JetStream client, as a service on the other side would use.
async fn plain(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

async fn create_stream(js: &jetstream::Context, name: &str, subjects: &[&str]) -> jetstream::stream::Stream {
    let config = jetstream::stream::Config {
        name: name.to_owned(),
        subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    js.create_stream(config).await.unwrap()
}

fn message(subject: &str, body: &str, id: &str) -> OutgoingMessage {
    OutgoingMessage {
        destination: Destination::Nats { subject: subject.into() },
        body: Bytes::copy_from_slice(body.as_bytes()),
        message_id: id.into(),
        content_type: Some("application/json".into()),
        headers: vec![("traceparent".into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into())],
        dedup_id: None,
    }
}

fn subscription(stream: &str, subject: &str, durable: &str, max_attempts: u32, dead: Option<&str>) -> Subscription {
    Subscription {
        broker: Spanned::new(0..0, "jet".to_owned()),
        queue: None,
        bind: None,
        stream: Some(stream.to_owned()),
        subject: Some(subject.to_owned()),
        durable: Some(durable.to_owned()),
        topic: None,
        group: None,
        deliver_to: DeliverTo { service: Spanned::new(0..0, "svc".to_owned()), path: "/hook".to_owned() },
        max_attempts,
        concurrency: 1,
        dead_letter: dead.map(str::to_owned),
    }
}

fn deliver<F, Fut>(f: F) -> DeliverFn
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move |d| Box::pin(f(d)))
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(
    def: &Subscription,
    broker: &Arc<dyn Broker>,
    f: DeliverFn,
    options: SubscriptionOptions,
) -> SubscriptionRunner {
    let runner = SubscriptionRunner::start(def, broker.clone(), f, options).unwrap();
    let metrics = runner.metrics().clone();
    eventually("the consumer", || metrics.is_consuming()).await;
    runner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_acknowledged_by_the_stream_and_deduplicated() {
    let nats = shared_nats();
    let (name, token) = (unique("ORDERS"), unique("orders"));
    let js = plain(&nats.url()).await;
    let mut stream = create_stream(&js, &name, &[&format!("{token}.>")]).await;
    let broker = broker(&nats.url()).await;

    let mut m = message(&format!("{token}.created"), r#"{"id":42}"#, "req-1");
    m.headers.push(("x-tenant".into(), "acme".into()));
    m.dedup_id = Some("idem-1".into());
    let first = broker.publish(m.clone()).await.unwrap();
    assert_eq!(first.message_id, "req-1");
    assert!(!first.duplicate);
    let again = broker.publish(OutgoingMessage { message_id: "req-2".into(), ..m }).await.unwrap();
    assert!(again.duplicate, "the same Nats-Msg-Id within the window is stored once");
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    let stored = stream.get_raw_message(first.sequence.unwrap()).await.unwrap();
    assert_eq!(stored.payload, r#"{"id":42}"#);
    let headers = stored.headers;
    assert_eq!(headers.get("x-message-id").map(|v| v.as_str()), Some("req-1"));
    assert_eq!(headers.get("content-type").map(|v| v.as_str()), Some("application/json"));
    assert_eq!(headers.get("x-tenant").map(|v| v.as_str()), Some("acme"));
    assert_eq!(headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some("idem-1"));
    assert!(headers.get("traceparent").is_some());
    let metrics = broker.metrics();
    assert_eq!((metrics.published(), metrics.confirmed(), metrics.failed()), (2, 2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_without_a_stream_is_not_confirmed() {
    let nats = shared_nats();
    let broker = broker(&nats.url()).await;
    let err = broker.publish(message(&unique("nostream"), "{}", "r")).await.unwrap_err();
    assert!(matches!(err, PublishError::Unroutable(_)), "{err:?}");
    let err = broker.publish(message("bad.*", "{}", "r")).await.unwrap_err();
    assert!(err.is_invalid_message(), "{err:?}");
    let mut m = message("a.b", "{}", "r");
    m.headers.push(("bad name".into(), "v".into()));
    assert!(broker.publish(m).await.unwrap_err().is_invalid_message());
}

/// A server that speaks just enough NATS to be connected to, then drops the connection as
/// soon as a message is published: the publish is in flight, with no acknowledgement coming.
async fn server_that_drops_publishers() -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let info = format!(
                    "INFO {{\"server_id\":\"fake\",\"server_name\":\"fake\",\"version\":\"2.10.0\",\"go\":\"go\",\
                     \"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576,\"proto\":1}}\r\n"
                );
                write.write_all(info.as_bytes()).await.unwrap();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("PING") {
                        let _ = write.write_all(b"PONG\r\n").await;
                    } else if line.starts_with("PUB ") || line.starts_with("HPUB ") {
                        return; // both halves dropped: the connection closes
                    }
                }
            });
        }
    });
    format!("nats://127.0.0.1:{port}")
}

#[tokio::test]
async fn a_connection_lost_before_the_acknowledgement_fails_the_publish_at_once() {
    let broker = broker(&server_that_drops_publishers().await).await;
    let started = Instant::now();
    let result = broker.publish(message("orders.created", "{}", "r1")).await;
    let took = started.elapsed();
    // Not the JetStream acknowledgement timeout (5 s): the loss is the answer.
    assert!(matches!(result, Err(PublishError::Connection(_))), "{result:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_publishes_quickly_and_everything_resumes() {
    logs();
    let mut nats = tokio::task::spawn_blocking(NatsServer::start).await.unwrap();
    let (port, url) = (nats.port, nats.url());
    let (stream, subject, durable) = (unique("OUT"), unique("out"), unique("reader"));
    let broker = broker(&url).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let f = deliver(move |d: Delivery| {
        let _ = tx.send(d.body);
        async { Ok(()) }
    });
    // The runner creates the stream (and again after the restart: the new server is empty).
    let runner = start(&subscription(&stream, &subject, &durable, 5, None), &broker, f, fast()).await;
    broker.publish(message(&subject, "before", "r1")).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap(), "before");

    let mut nats = tokio::task::spawn_blocking(move || {
        nats.kill();
        nats
    })
    .await
    .unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), broker.publish(message(&subject, "{}", "r2"))).await;
    let err = result.expect("an answer well within the caller's timeout").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(matches!(err, PublishError::Unavailable(_) | PublishError::Connection(_)), "{err:?}");
    eventually("the reconnecting state", || broker.state() == BrokerState::Reconnecting).await;

    // Back on its port (a new, empty store): reconnected in the background; the runner finds
    // its consumer gone and makes stream and consumer again.
    nats = tokio::task::spawn_blocking(move || {
        drop(nats);
        NatsServer::start_on(port).expect("nats-server restarts on its port")
    })
    .await
    .unwrap();
    eventually("the reconnection", || broker.state() == BrokerState::Connected).await;
    assert!(broker.metrics().reconnects() >= 1);
    let start = Instant::now();
    loop {
        match broker.publish(message(&subject, "after", "r3")).await {
            Ok(_) => break,
            Err(PublishError::Unroutable(_)) if start.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap(), "after");
    runner.shutdown().await;
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_retries_then_dead_letters_to_a_subject() {
    let nats = shared_nats();
    let broker = broker(&nats.url()).await;
    let (stream, token, durable) = (unique("EVENTS"), unique("events"), unique("hooks"));
    let dead = format!("{token}dead.letters");
    let def = subscription(&stream, &format!("{token}.>"), &durable, 3, Some(&dead));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let f = deliver(move |d: Delivery| {
        let body = String::from_utf8_lossy(&d.body).into_owned();
        record.lock().unwrap().push((body.clone(), d.attempt));
        async move {
            match body.as_str() {
                // Flaky: accepted on the second attempt.
                "flaky" if d.attempt >= 2 => Ok(()),
                "poison" | "flaky" => Err(format!("HTTP 500 on attempt {}", d.attempt)),
                _ => Ok(()),
            }
        }
    });
    let runner = start(&def, &broker, f, fast()).await;
    let mut poison = message(&format!("{token}.created"), "poison", "req-p");
    poison.headers.push(("x-tenant".into(), "acme".into()));
    broker.publish(message(&format!("{token}.created"), "flaky", "req-f")).await.unwrap();
    broker.publish(poison).await.unwrap();
    broker.publish(message(&format!("{token}.created"), "fine", "req-ok")).await.unwrap();

    let metrics = runner.metrics().clone();
    eventually("two deliveries and a dead letter", || metrics.delivered() == 2 && metrics.dead_lettered() == 1).await;
    let order: Vec<(String, u32)> = seen.lock().unwrap().clone();
    let expected = [("flaky", 1), ("flaky", 2), ("poison", 1), ("poison", 2), ("poison", 3), ("fine", 1)];
    assert_eq!(order, expected.map(|(b, a)| (b.to_owned(), a)), "concurrency 1: in order, retries in place");
    assert_eq!(metrics.retried(), 3);

    // The dead letter is in a stream (created for its subject), with the history.
    let js = plain(&nats.url()).await;
    let dlq_name = js.stream_by_subject(dead.clone()).await.unwrap();
    let dlq = js.get_stream(&dlq_name).await.unwrap();
    let letter = dlq.get_last_raw_message_by_subject(&dead).await.unwrap();
    assert_eq!(letter.payload, "poison");
    let h = &letter.headers;
    assert_eq!(h.get("x-gateway-attempts").map(|v| v.as_str()), Some("3"));
    assert_eq!(h.get("x-gateway-last-error").map(|v| v.as_str()), Some("HTTP 500 on attempt 3"));
    assert_eq!(h.get("x-gateway-source").map(|v| v.as_str()), Some(format!("{stream}/{durable}").as_str()));
    assert_eq!(h.get("x-message-id").map(|v| v.as_str()), Some("req-p"));
    assert_eq!(h.get("x-tenant").map(|v| v.as_str()), Some("acme"));

    // Everything was acknowledged: nothing pending on the durable consumer.
    assert_eq!(broker.backlog(runner.source()).await.unwrap(), 0);
    let mut consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> =
        js.get_consumer_from_stream(durable.as_str(), stream.as_str()).await.unwrap();
    runner.shutdown().await;
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_created_when_missing_and_order_holds() {
    let nats = shared_nats();
    let broker = broker(&nats.url()).await;
    let (stream, token, durable) = (unique("SEQ"), unique("seq"), unique("reader"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let f = deliver(move |d: Delivery| {
        let record = record.clone();
        async move {
            let n: u32 = std::str::from_utf8(&d.body).unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_millis(u64::from(n % 3) * 5)).await;
            record.lock().unwrap().push(n);
            Ok(())
        }
    });
    let runner = start(&subscription(&stream, &format!("{token}.*"), &durable, 5, None), &broker, f, fast()).await;
    for n in 1..=20 {
        broker.publish(message(&format!("{token}.n"), &n.to_string(), &format!("r{n}"))).await.unwrap();
    }
    let metrics = runner.metrics().clone();
    eventually("20 deliveries", || metrics.delivered() == 20).await;
    assert_eq!(*seen.lock().unwrap(), (1..=20).collect::<Vec<u32>>());
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_delivery_gets_the_message_again() {
    let nats = shared_nats();
    let (stream, token, durable) = (unique("CRASH"), unique("crash"), unique("worker"));
    // The durable consumer exists already, with a short ack_wait (the gateway's is 30 s: too
    // long for a test); the gateway uses it as it is.
    let js = plain(&nats.url()).await;
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(durable.clone()),
        filter_subject: format!("{token}.>"),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(1),
        ..Default::default()
    };
    create_stream(&js, &stream, &[&format!("{token}.>")]).await.create_consumer(config).await.unwrap();
    let def = subscription(&stream, &format!("{token}.>"), &durable, 5, None);
    {
        let broker = broker(&nats.url()).await;
        let (called_tx, mut called) = tokio::sync::mpsc::unbounded_channel();
        let f = deliver(move |d| {
            let _ = called_tx.send(d);
            std::future::pending()
        });
        let runner = start(&def, &broker, f, fast()).await;
        broker.publish(message(&format!("{token}.x"), "precious", "req-1")).await.unwrap();
        let first: Delivery = tokio::time::timeout(Duration::from_secs(10), called.recv()).await.unwrap().unwrap();
        assert!(!first.redelivered);
        drop(runner); // killed: nothing was acknowledged
    }
    let broker = broker(&nats.url()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let f = deliver(move |d| {
        let _ = tx.send(d);
        async { Ok(()) }
    });
    let runner = start(&def, &broker, f, fast()).await;
    let again: Delivery = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!((again.body.as_ref(), again.message_id.as_deref()), (&b"precious"[..], Some("req-1")));
    assert!(again.redelivered);
    let metrics = runner.metrics().clone();
    eventually("the delivery", || metrics.delivered() == 1).await;
    runner.shutdown().await;
    let mut consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> =
        js.get_consumer_from_stream(durable.as_str(), stream.as_str()).await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_what_is_taken_from_the_stream() {
    let nats = shared_nats();
    let broker = broker(&nats.url()).await;
    let (stream, token, durable) = (unique("WIDE"), unique("wide"), unique("pool"));
    let in_flight = Arc::new(AtomicU32::new(0));
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let counted = in_flight.clone();
    let f = deliver(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        let mut release = release.clone();
        async move {
            let _ = release.wait_for(|r| *r).await;
            Ok(())
        }
    });
    let options = SubscriptionOptions { concurrency: 3, backlog_interval: Some(Duration::from_millis(50)), ..fast() };
    let runner = start(&subscription(&stream, &format!("{token}.>"), &durable, 5, None), &broker, f, options).await;
    for n in 0..10 {
        broker.publish(message(&format!("{token}.n"), "{}", &format!("r{n}"))).await.unwrap();
    }
    let metrics = runner.metrics().clone();
    eventually("3 deliveries under way", || in_flight.load(Ordering::SeqCst) == 3).await;
    eventually("7 waiting in the stream", || metrics.backlog() == Some(7)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(in_flight.load(Ordering::SeqCst), 3, "a slow receiver slows consumption");
    release_tx.send(true).unwrap();
    eventually("all delivered", || metrics.delivered() == 10).await;
    runner.shutdown().await;
}
