//! AMQP against a real RabbitMQ node (started once for this binary by `gateway-tests`).
//! Run with: cargo test -p gateway-events --test amqp

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_config::schema::{Binding, BrokerKind, DeliverTo, Subscription};
use gateway_events::{
    AmqpBroker, Broker, BrokerOptions, BrokerState, DeliverFn, Delivery, Destination, OutgoingMessage, PublishError,
    SubscriptionOptions, SubscriptionRunner,
};
use gateway_tests::{shared_rabbit, RabbitServer};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_spanned::Spanned;

use common::{fast, logs, options};
use tokio::sync::mpsc;

/// A name no other test of this run uses.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

async fn broker(url: &str) -> Arc<dyn Broker> {
    logs();
    let broker = AmqpBroker::connect("events", url, &options()).await;
    assert_eq!(broker.state(), BrokerState::Connected);
    Arc::new(broker)
}

/// A plain lapin client, as a service on the other side would use.
async fn plain(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

fn s(v: &str) -> ShortString {
    ShortString::from(v)
}

async fn declare_bound_queue(channel: &Channel, exchange: &str, queue: &str, key: &str) {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(s(exchange), ExchangeKind::Topic, durable, FieldTable::default()).await.unwrap();
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(s(queue), durable, FieldTable::default()).await.unwrap();
    channel
        .queue_bind(s(queue), s(exchange), s(key), QueueBindOptions::default(), FieldTable::default())
        .await
        .unwrap();
}

async fn queue_len(channel: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    channel.queue_declare(s(queue), passive, FieldTable::default()).await.unwrap().message_count()
}

fn message(exchange: &str, key: &str, body: &str, id: &str) -> OutgoingMessage {
    OutgoingMessage {
        destination: Destination::Amqp { exchange: exchange.into(), routing_key: key.into() },
        body: Bytes::copy_from_slice(body.as_bytes()),
        message_id: id.into(),
        content_type: Some("application/json".into()),
        headers: vec![("traceparent".into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into())],
        dedup_id: None,
    }
}

fn header(table: &FieldTable, name: &str) -> Option<String> {
    match table.inner().get(name)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

fn subscription(queue: &str, bind: Option<(&str, &str)>, max_attempts: u32, dead_letter: Option<&str>) -> Subscription {
    Subscription {
        broker: Spanned::new(0..0, "events".to_owned()),
        queue: Some(queue.to_owned()),
        bind: bind
            .map(|(exchange, routing_key)| Binding { exchange: exchange.into(), routing_key: routing_key.into() }),
        stream: None,
        subject: None,
        durable: None,
        topic: None,
        group: None,
        deliver_to: DeliverTo { service: Spanned::new(0..0, "svc".to_owned()), path: "/hook".to_owned() },
        max_attempts,
        concurrency: 1,
        dead_letter: dead_letter.map(str::to_owned),
    }
}

fn deliver<F, Fut>(f: F) -> DeliverFn
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move |d| Box::pin(f(d)))
}

/// A callback that sends every delivery to the returned receiver and answers `Ok`.
fn recording() -> (DeliverFn, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let f = deliver(move |d| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(d);
            Ok(())
        }
    });
    (f, rx)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a delivery within 10s").unwrap()
}

/// Start a runner and wait until it consumes (the queue and its binding exist from then on).
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
async fn publish_is_confirmed_and_readable_by_a_plain_client() {
    let rabbit = shared_rabbit();
    let (exchange, queue) = (unique("orders"), unique("audit"));
    let (_conn, channel) = plain(&rabbit.url()).await;
    declare_bound_queue(&channel, &exchange, &queue, "order.*").await;
    let broker = broker(&rabbit.url()).await;

    let mut m = message(&exchange, "order.created", r#"{"id":42}"#, "req-1");
    m.headers.push(("x-tenant".into(), "acme".into()));
    m.dedup_id = Some("idem-7".into());
    let confirmed = broker.publish(m).await.unwrap();
    assert_eq!(confirmed.message_id, "req-1");
    assert!(!confirmed.duplicate);

    let got = channel.basic_get(s(&queue), BasicGetOptions { no_ack: true }).await.unwrap().expect("the message");
    assert_eq!(got.data, br#"{"id":42}"#);
    let p = &got.properties;
    assert_eq!(p.message_id().as_ref().map(|v| v.as_str()), Some("req-1"));
    assert_eq!(p.content_type().as_ref().map(|v| v.as_str()), Some("application/json"));
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    let headers = p.headers().as_ref().unwrap();
    assert_eq!(
        header(headers, "traceparent").as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(header(headers, "x-tenant").as_deref(), Some("acme"));
    assert_eq!(header(headers, gateway_events::AMQP_DEDUP_HEADER).as_deref(), Some("idem-7"));
    let metrics = broker.metrics();
    assert_eq!((metrics.published(), metrics.confirmed(), metrics.failed()), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_and_refused_messages_are_not_confirmed() {
    let rabbit = shared_rabbit();
    let (exchange, queue) = (unique("orders"), unique("q"));
    let (_conn, channel) = plain(&rabbit.url()).await;
    declare_bound_queue(&channel, &exchange, &queue, "order.*").await;
    let broker = broker(&rabbit.url()).await;

    // No queue is bound for this key: the broker returns it, and we say so.
    let err = broker.publish(message(&exchange, "invoice.created", "{}", "r1")).await.unwrap_err();
    assert!(matches!(err, PublishError::Unroutable(_)), "{err:?}");

    // A missing exchange is a channel error: refused, and the next publish gets a new channel.
    let err = broker.publish(message(&unique("missing"), "order.created", "{}", "r2")).await.unwrap_err();
    assert!(matches!(err, PublishError::Rejected(_)), "{err:?}");
    broker.publish(message(&exchange, "order.created", "{}", "r3")).await.unwrap();
    assert_eq!(queue_len(&channel, &queue).await, 1);

    // Names over AMQP's 255 bytes are the message's fault, not a panic.
    let err = broker.publish(message(&"x".repeat(300), "k", "{}", "r4")).await.unwrap_err();
    assert!(err.is_invalid_message(), "{err:?}");
    let err = broker.publish(OutgoingMessage {
        destination: Destination::Nats { subject: "a".into() },
        ..message(&exchange, "k", "", "r5")
    });
    assert!(err.await.unwrap_err().is_invalid_message());
    assert_eq!((broker.metrics().published(), broker.metrics().confirmed(), broker.metrics().failed()), (5, 1, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_fails_publishes_quickly_and_everything_resumes() {
    // A node of its own: this test kills it.
    let mut rabbit = tokio::task::spawn_blocking(RabbitServer::start).await.unwrap();
    let (port, url) = (rabbit.port, rabbit.url());
    let broker = broker(&url).await;
    let queue = unique("q");
    let (f, mut rx) = recording();
    let runner = start(&subscription(&queue, None, 5, None), &broker, f, fast()).await;
    broker.publish(message("", &queue, "before", "r1")).await.unwrap();
    assert_eq!(recv(&mut rx).await.body, "before");

    tokio::task::spawn_blocking(move || {
        rabbit.kill();
        rabbit
    })
    .await
    .unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), broker.publish(message("", &queue, "{}", "r2"))).await;
    let err = result.expect("an answer well within the caller's timeout").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(matches!(err, PublishError::Unavailable(_) | PublishError::Connection(_)), "{err:?}");
    eventually("the reconnecting state", || broker.state() == BrokerState::Reconnecting).await;
    let err = broker.publish(message("", &queue, "{}", "r3")).await.unwrap_err();
    assert!(matches!(err, PublishError::Unavailable(BrokerState::Reconnecting)), "{err:?}");
    let metrics = runner.metrics().clone();
    eventually("the consumer to notice", || !metrics.is_consuming()).await;

    // The broker comes back on its port (empty: a new node): the connection is made again in
    // the background, and the subscription declares its queue again and consumes.
    let _rabbit =
        tokio::task::spawn_blocking(move || RabbitServer::start_on(port).expect("rabbit restarts on its port"))
            .await
            .unwrap();
    eventually("the reconnection", || broker.state() == BrokerState::Connected).await;
    assert!(broker.metrics().reconnects() >= 1);
    eventually("the consumer again", || metrics.is_consuming()).await;
    broker.publish(message("", &queue, "after", "r4")).await.unwrap();
    assert_eq!(recv(&mut rx).await.body, "after");
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_means_unavailable_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let options = BrokerOptions { connect_timeout: Duration::from_millis(300), ..options() };
    let started = Instant::now();
    let broker = AmqpBroker::connect("events", &format!("amqp://127.0.0.1:{port}/%2f"), &options).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(broker.state(), BrokerState::Connecting | BrokerState::Reconnecting));
    let err = broker.publish(message("", "q", "{}", "r")).await.unwrap_err();
    assert!(matches!(err, PublishError::Unavailable(BrokerState::Connecting)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_declares_its_queue_and_delivers() {
    let rabbit = shared_rabbit();
    let broker = broker(&rabbit.url()).await;
    let (exchange, queue) = (unique("orders"), unique("notifications"));
    let def = subscription(&queue, Some((&exchange, "order.*")), 5, None);
    let (f, mut rx) = recording();
    let runner =
        start(&def, &broker, f, SubscriptionOptions { backlog_interval: Some(Duration::from_millis(50)), ..fast() })
            .await;

    let mut m = message(&exchange, "order.created", r#"{"id":1}"#, "req-9");
    m.headers.push(("x-tenant".into(), "acme".into()));
    broker.publish(m).await.unwrap();
    let d = recv(&mut rx).await;
    assert_eq!(d.body, r#"{"id":1}"#);
    assert_eq!(d.message_id.as_deref(), Some("req-9"));
    assert_eq!(d.content_type.as_deref(), Some("application/json"));
    assert_eq!(d.header("x-tenant"), Some("acme"));
    assert!(d.header("traceparent").is_some());
    assert_eq!((d.attempt, d.redelivered), (1, false));

    let metrics = runner.metrics().clone();
    eventually("delivered = 1", || metrics.delivered() == 1).await;
    eventually("an empty backlog", || metrics.backlog() == Some(0)).await;
    runner.shutdown().await;
    let (_conn, channel) = plain(&rabbit.url()).await;
    assert_eq!(queue_len(&channel, &queue).await, 0, "acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_a_flaky_receiver_accepts() {
    let rabbit = shared_rabbit();
    let broker = broker(&rabbit.url()).await;
    let queue = unique("flaky");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let f = deliver(move |d: Delivery| {
        seen.lock().unwrap().push(d.attempt);
        async move {
            match d.attempt {
                1 => panic!("a bug in the callback is a failed attempt"),
                2 => Err("HTTP 503".to_owned()),
                _ => Ok(()),
            }
        }
    });
    let runner = start(&subscription(&queue, None, 5, Some(&format!("{queue}.dead"))), &broker, f, fast()).await;
    broker.publish(message("", &queue, "{}", "r1")).await.unwrap();
    let metrics = runner.metrics().clone();
    eventually("the delivery", || metrics.delivered() == 1).await;
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    assert_eq!((metrics.retried(), metrics.dead_lettered()), (2, 0));
    runner.shutdown().await;
    let (_conn, channel) = plain(&rabbit.url()).await;
    assert_eq!(queue_len(&channel, &queue).await, 0);
    assert_eq!(queue_len(&channel, &format!("{queue}.dead")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_after_max_attempts_with_the_history() {
    let rabbit = shared_rabbit();
    let broker = broker(&rabbit.url()).await;
    let (queue, dead) = (unique("orders"), unique("orders.dead"));
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let f = deliver(move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
        async { Err("upstream answered 500".to_owned()) }
    });
    let runner = start(&subscription(&queue, None, 3, Some(&dead)), &broker, f, fast()).await;
    let mut m = message("", &queue, r#"{"id":5}"#, "req-5");
    m.headers.push(("x-tenant".into(), "acme".into()));
    broker.publish(m).await.unwrap();
    let metrics = runner.metrics().clone();
    eventually("the dead letter", || metrics.dead_lettered() == 1).await;
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    assert_eq!((metrics.retried(), metrics.delivered()), (2, 0));

    let (_conn, channel) = plain(&rabbit.url()).await;
    let got = channel.basic_get(s(&dead), BasicGetOptions { no_ack: true }).await.unwrap().expect("a dead letter");
    assert_eq!(got.data, br#"{"id":5}"#);
    let p = &got.properties;
    assert_eq!(p.message_id().as_ref().map(|v| v.as_str()), Some("req-5"));
    assert_eq!(*p.delivery_mode(), Some(2));
    let headers = p.headers().as_ref().unwrap();
    assert_eq!(header(headers, "x-gateway-attempts").as_deref(), Some("3"));
    assert_eq!(header(headers, "x-gateway-last-error").as_deref(), Some("upstream answered 500"));
    assert_eq!(header(headers, "x-gateway-source").as_deref(), Some(queue.as_str()));
    assert_eq!(header(headers, "x-tenant").as_deref(), Some("acme"));
    runner.shutdown().await;
    assert_eq!(queue_len(&channel, &queue).await, 0, "the original is acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_the_message_is_rejected_after_max_attempts() {
    let rabbit = shared_rabbit();
    let broker = broker(&rabbit.url()).await;
    let queue = unique("nodlq");
    let f = deliver(|_| async { Err("no".to_owned()) });
    let runner = start(&subscription(&queue, None, 2, None), &broker, f, fast()).await;
    broker.publish(message("", &queue, "{}", "r")).await.unwrap();
    let metrics = runner.metrics().clone();
    eventually("the rejection", || metrics.rejected() == 1).await;
    runner.shutdown().await;
    let (_conn, channel) = plain(&rabbit.url()).await;
    assert_eq!(queue_len(&channel, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_delivery_gets_the_message_again() {
    let rabbit = shared_rabbit();
    let queue = unique("crash");
    let def = subscription(&queue, None, 5, None);
    {
        // The first gateway: its own connection, a receiver that never answers.
        let broker = broker(&rabbit.url()).await;
        let (called_tx, mut called) = mpsc::unbounded_channel();
        let f = deliver(move |d| {
            let _ = called_tx.send(d);
            std::future::pending()
        });
        let runner = start(&def, &broker, f, fast()).await;
        broker.publish(message("", &queue, "precious", "req-1")).await.unwrap();
        let first = recv(&mut called).await;
        assert_eq!((first.body.as_ref(), first.redelivered), (&b"precious"[..], false));
        drop(runner); // killed: nothing was acknowledged
    }
    let broker = broker(&rabbit.url()).await;
    let (f, mut rx) = recording();
    let runner = start(&def, &broker, f, fast()).await;
    let again = recv(&mut rx).await;
    assert_eq!(again.body, "precious");
    assert_eq!(again.message_id.as_deref(), Some("req-1"));
    assert!(again.redelivered);
    runner.shutdown().await;
    let (_conn, channel) = plain(&rabbit.url()).await;
    assert_eq!(queue_len(&channel, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_keeps_the_order() {
    let rabbit = shared_rabbit();
    let broker = broker(&rabbit.url()).await;
    let queue = unique("ordered");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let f = deliver(move |d: Delivery| {
        let record = record.clone();
        async move {
            let n: u32 = std::str::from_utf8(&d.body).unwrap().parse().unwrap();
            // Uneven work, and a failure on the way: order must hold regardless.
            tokio::time::sleep(Duration::from_millis(u64::from(n % 3) * 5)).await;
            if n == 7 && d.attempt == 1 {
                return Err("once".to_owned());
            }
            record.lock().unwrap().push(n);
            Ok(())
        }
    });
    let runner = start(&subscription(&queue, None, 5, None), &broker, f, fast()).await;
    for n in 1..=20 {
        broker.publish(message("", &queue, &n.to_string(), &format!("r{n}"))).await.unwrap();
    }
    let metrics = runner.metrics().clone();
    eventually("20 deliveries", || metrics.delivered() == 20).await;
    assert_eq!(*seen.lock().unwrap(), (1..=20).collect::<Vec<u32>>());
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_what_is_taken_from_the_queue() {
    let rabbit = shared_rabbit();
    let broker = broker(&rabbit.url()).await;
    let queue = unique("bounded");
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
    let runner = start(&subscription(&queue, None, 5, None), &broker, f, options).await;
    for n in 0..10 {
        broker.publish(message("", &queue, "{}", &format!("r{n}"))).await.unwrap();
    }
    let metrics = runner.metrics().clone();
    eventually("3 deliveries under way", || in_flight.load(Ordering::SeqCst) == 3).await;
    eventually("7 waiting in the broker", || metrics.backlog() == Some(7)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(in_flight.load(Ordering::SeqCst), 3, "a slow receiver slows consumption");
    release_tx.send(true).unwrap();
    eventually("all delivered", || metrics.delivered() == 10).await;
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_delivery_under_way() {
    let rabbit = shared_rabbit();
    let broker = broker(&rabbit.url()).await;
    let queue = unique("graceful");
    let (called_tx, mut called) = mpsc::unbounded_channel();
    let f = deliver(move |d| {
        let _ = called_tx.send(d);
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        }
    });
    let runner = start(&subscription(&queue, None, 5, None), &broker, f, fast()).await;
    broker.publish(message("", &queue, "{}", "r1")).await.unwrap();
    recv(&mut called).await;
    let metrics = runner.metrics().clone();
    tokio::time::timeout(Duration::from_secs(5), runner.shutdown()).await.expect("shutdown within 5s");
    assert_eq!(metrics.delivered(), 1, "the delivery under way finished");
    let (_conn, channel) = plain(&rabbit.url()).await;
    assert_eq!(queue_len(&channel, &queue).await, 0, "and was acknowledged");
    let _ = channel.queue_delete(s(&queue), QueueDeleteOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_are_kept_across_a_reload_when_unchanged() {
    use gateway_config::schema::Broker as Def;
    use gateway_events::Brokers;
    use std::collections::BTreeMap;
    let rabbit = shared_rabbit();
    let def =
        |url: String| Def { kind: BrokerKind::Amqp, url: Some(url), bootstrap: Vec::new(), session_timeout: None };
    let mut defs = BTreeMap::from([("events".to_owned(), def(rabbit.url()))]);
    let first = Brokers::build(&defs, None, &options()).await.unwrap();
    let events = first.get("events").unwrap().clone();
    assert_eq!(events.state(), BrokerState::Connected);
    let same = Brokers::build(&defs, Some(&first), &options()).await.unwrap();
    assert!(Arc::ptr_eq(same.get("events").unwrap(), &events), "unchanged: the same connection");
    defs.insert("events".to_owned(), def(format!("amqp://guest:guest@localhost:{}/%2f", rabbit.port)));
    let changed = Brokers::build(&defs, Some(&same), &options()).await.unwrap();
    assert!(!Arc::ptr_eq(changed.get("events").unwrap(), &events), "changed: a new connection");
    defs.insert(
        "stream".to_owned(),
        Def { kind: BrokerKind::Kafka, url: None, bootstrap: Vec::new(), session_timeout: None },
    );
    let err = Brokers::build(&defs, Some(&changed), &options()).await.err().unwrap();
    assert!(err.to_string().contains("`bootstrap` is required"), "{err}");
}
