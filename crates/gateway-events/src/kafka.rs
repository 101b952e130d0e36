//! Kafka with rdkafka (librdkafka, built from the crate's bundled sources).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use gateway_config::schema::BrokerKind;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _, PurgeConfig};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::broker::{
    Acker, Broker, BrokerMetrics, BrokerState, Confirmation, ConsumeError, Delivery, Destination, Incoming, Messages,
    OutgoingMessage, PublishError, KAFKA_DEDUP_HEADER, MESSAGE_ID_HEADER,
};
use crate::brokers::BrokerOptions;
use crate::subscription::Source;

/// The consumer-group session timeout when the broker definition sets none.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the producer keeps retrying one record (librdkafka `message.timeout.ms`); the
/// route's timeout usually answers 503 first.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often librdkafka reports its connections' states ([`BrokerState`]).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Bound on the blocking metadata calls (commit, watermarks, topic creation).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest record the producer sends (librdkafka `message.max.bytes`, Kafka's default
/// `max.message.bytes` of a topic).
const MAX_MESSAGE_BYTES: usize = 1_048_588;

/// A Kafka cluster reached through its bootstrap servers, with one idempotent producer for
/// publishes and dead letters, and one consumer per subscription.
///
/// - Publish: a record on the destination's topic with its key; the message id in
///   [`MESSAGE_ID_HEADER`], `content-type`, the configured headers and the deduplication id in
///   [`KAFKA_DEDUP_HEADER`] as record headers. The producer is idempotent (`acks=all`,
///   `enable.idempotence`): its own retries never write a record twice, and the publish
///   resolves on the delivery report, once every in-sync replica has the record. Topics are not
///   created by publishing: a topic that does not exist is [`PublishError::Unroutable`] (after
///   librdkafka looked it up, or when the route's timeout comes first, 503 either way).
/// - Consume: the topic (and the dead-letter topic) is created when missing, with the cluster's
///   default partitions and replication; a consumer in the subscription's group, without
///   auto-commit. A record's offset is committed (synchronously) once it was delivered or
///   dead-lettered, and at most one record per partition is handed out at a time, so that the
///   order within a partition (one key) is kept whatever the concurrency, and a committed
///   offset never passes a record that was not delivered. When partitions are revoked
///   (rebalance), what was delivered is already committed; a delivery under way on a revoked
///   partition is redelivered by the partition's new owner. A group member that does not ask for
///   records for 5 minutes (`max.poll.interval.ms`, one record retried that long) leaves the
///   group, and its partitions go to the others.
/// - State: librdkafka reports its connections every second; connected while one broker
///   connection is up. librdkafka connects only when it has something to send, so while none
///   is up (the broker down, or an idle connection closed by the broker after its
///   `connections.max.idle.ms`) the gateway asks for the cluster's metadata every second, which
///   connects again as soon as the broker takes connections; then the producer is replaced with
///   a new one.
pub struct KafkaBroker {
    name: String,
    config: ClientConfig,
    session_timeout: Duration,
    producer: Arc<ArcSwap<Producer>>,
    admin: AdminClient<AdminContext>,
    link: Arc<Link>,
    consumers: Mutex<Vec<(Source, Weak<GroupConsumer>)>>,
    reconnect: tokio::task::JoinHandle<()>,
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.reconnect.abort();
    }
}

type Producer = FutureProducer<LinkContext>;

/// While no connection is up, ask for the cluster's metadata every second (see
/// [`KafkaBroker`]); after each reconnection, replace the producer with a new one.
///
/// An idempotent producer whose broker came back without the producer's state (a cluster
/// rebuilt, or tansu in memory) has been seen to never get a record acknowledged again; a new
/// producer asks the cluster for a new producer id. The old one's records were answered (503)
/// by the route's timeout already; they are purged.
async fn keep_connected(producer: Arc<ArcSwap<Producer>>, config: ClientConfig, link: Arc<Link>) {
    let mut reconnects = link.metrics.reconnects();
    loop {
        tokio::time::sleep(STATS_INTERVAL).await;
        if !link.state().is_connected() {
            let client = producer.load_full();
            let probe = move || client.client().fetch_metadata(None, STATS_INTERVAL).is_ok();
            if matches!(tokio::task::spawn_blocking(probe).await, Ok(true)) {
                link.set_up(true);
            }
        }
        if link.metrics.reconnects() == reconnects || !link.state().is_connected() {
            continue;
        }
        let (config, context) = (config.clone(), LinkContext(link.clone()));
        let fresh = tokio::task::spawn_blocking(move || -> Result<Producer, KafkaError> {
            let fresh: Producer = config.create_with_context(context)?;
            // Connected before it replaces the old one, so that its statistics say so.
            fresh.client().fetch_metadata(None, CALL_TIMEOUT)?;
            Ok(fresh)
        })
        .await;
        match fresh {
            Ok(Ok(fresh)) => {
                let old = producer.swap(Arc::new(fresh));
                reconnects = link.metrics.reconnects();
                tracing::info!(broker = %link.name, "a new producer after the reconnection");
                tokio::task::spawn_blocking(move || {
                    old.purge(PurgeConfig::default().queue().inflight());
                    drop(old);
                });
            }
            Ok(Err(e)) => tracing::warn!(broker = %link.name, error = %e, "cannot create a new producer yet"),
            Err(e) => tracing::warn!(broker = %link.name, error = %e, "cannot create a new producer yet"),
        }
    }
}

/// A subscription's consumer. Closing it leaves the group (a blocking call that waits for the
/// broker and runs the revocation callback), so the last owner to go closes it on a blocking
/// thread rather than on the async task that dropped it.
struct GroupConsumer(Option<StreamConsumer<GroupContext>>);

impl std::ops::Deref for GroupConsumer {
    type Target = StreamConsumer<GroupContext>;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("taken only by drop")
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(consumer))),
            Err(_) => drop(consumer),
        }
    }
}

impl KafkaBroker {
    /// Create the producer for `bootstrap` and wait until it reached the cluster or
    /// [`BrokerOptions::connect_timeout`] passed: the broker is returned either way, and
    /// librdkafka keeps reconnecting (with [`BrokerOptions::reconnect`] back-off) while it is down.
    pub async fn connect(
        name: &str,
        bootstrap: &[String],
        session_timeout: Option<Duration>,
        options: &BrokerOptions,
    ) -> Result<KafkaBroker, String> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap.join(","))
            .set("client.id", format!("gateway:{name}"))
            .set("reconnect.backoff.ms", millis(options.reconnect.initial))
            .set("reconnect.backoff.max.ms", millis(options.reconnect.max))
            .set("socket.connection.setup.timeout.ms", millis(options.connect_timeout.max(Duration::from_secs(1))))
            .set_log_level(RDKafkaLogLevel::Warning);
        let metrics = Arc::new(BrokerMetrics::default());
        let link = Arc::new(Link {
            name: name.to_owned(),
            state: AtomicU8::new(BrokerState::Connecting.to_u8()),
            ever_connected: AtomicBool::new(false),
            metrics,
        });
        let mut producer_config = config.clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", millis(MESSAGE_TIMEOUT))
            .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
            // Like exchanges and streams, topics are the operator's (or a subscription's) to
            // create: a publish never creates one, whatever `auto.create.topics.enable` says.
            .set("allow.auto.create.topics", "false")
            .set("statistics.interval.ms", millis(STATS_INTERVAL));
        let producer: Producer = producer_config
            .create_with_context(LinkContext(link.clone()))
            .map_err(|e| format!("kafka producer: {e}"))?;
        let producer = Arc::new(ArcSwap::from_pointee(producer));
        let admin: AdminClient<AdminContext> = config
            .create_with_context(AdminContext(name.to_owned()))
            .map_err(|e| format!("kafka admin client: {e}"))?;
        let reconnect = tokio::spawn(keep_connected(producer.clone(), producer_config, link.clone()));
        let broker = KafkaBroker {
            name: name.to_owned(),
            config,
            session_timeout: session_timeout.unwrap_or(SESSION_TIMEOUT),
            producer,
            admin,
            link,
            consumers: Mutex::new(Vec::new()),
            reconnect,
        };
        // The first statistics come after STATS_INTERVAL: ask for the cluster's metadata now.
        let client = broker.producer.load_full();
        let timeout = options.connect_timeout;
        let reached = tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, timeout).is_ok()).await;
        if matches!(reached, Ok(true)) {
            broker.link.set_up(true);
            tracing::info!(event = "broker", broker = %name, state = "connected", "connected");
        } else {
            tracing::warn!(broker = %name, ?timeout, "not connected in time; retrying in the background");
        }
        Ok(broker)
    }

    async fn publish_inner(&self, message: OutgoingMessage) -> Result<Confirmation, PublishError> {
        let Destination::Kafka { topic, key } = &message.destination else {
            return Err(PublishError::InvalidMessage(format!("{} is not a Kafka destination", message.destination)));
        };
        let size = message.body.len();
        if size > MAX_MESSAGE_BYTES {
            return Err(PublishError::TooLarge { size, max: MAX_MESSAGE_BYTES });
        }
        let mut headers = OwnedHeaders::new();
        for (name, value) in message.header_list(KAFKA_DEDUP_HEADER)? {
            headers = headers.insert(Header { key: name, value: Some(value) });
        }
        let state = self.state();
        if !state.is_connected() {
            return Err(PublishError::Unavailable(state));
        }
        let mut record = FutureRecord::to(topic).payload(message.body.as_ref()).headers(headers);
        if let Some(key) = key {
            record = record.key(key.as_str());
        }
        let delivery = self.producer.load().send_result(record).map_err(|(e, _)| publish_error(&e, size))?;
        match delivery.await {
            Ok(Ok(delivered)) => Ok(Confirmation {
                message_id: message.message_id,
                duplicate: false,
                sequence: u64::try_from(delivered.offset).ok(),
            }),
            Ok(Err((e, _))) => Err(publish_error(&e, size)),
            Err(_) => Err(PublishError::Connection("the producer went away".into())),
        }
    }

    /// Create `topics` when missing, with the cluster's defaults (partitions and replication -1:
    /// Kafka 2.4 and later).
    async fn ensure_topics(&self, topics: &[&str]) -> Result<(), ConsumeError> {
        let new: Vec<NewTopic<'_>> = topics.iter().map(|t| NewTopic::new(t, -1, TopicReplication::Fixed(-1))).collect();
        let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
        let results =
            self.admin.create_topics(&new, &options).await.map_err(|e| ConsumeError::new("create topics", e))?;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(broker = %self.name, %topic, "created the topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(ConsumeError(format!("create topic {topic:?}: {code}"))),
            }
        }
        Ok(())
    }

    async fn consume_inner(&self, source: &Source) -> Result<Messages, ConsumeError> {
        let Source::Kafka { topic, group, dead_letter } = source else {
            return Err(ConsumeError(format!("{} is not a Kafka source", source.label())));
        };
        match self.state() {
            BrokerState::Connected => {}
            state => return Err(ConsumeError(format!("not connected ({state})"))),
        }
        let mut topics = vec![topic.as_str()];
        topics.extend(dead_letter.as_deref());
        self.ensure_topics(&topics).await?;
        let mut config = self.config.clone();
        config
            .set("group.id", group)
            .set("client.id", format!("gateway:{}:{group}", self.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", millis(self.session_timeout))
            .set("heartbeat.interval.ms", millis(self.session_timeout / 3))
            // Fetch ahead no more than about a megabyte per partition: a slow receiver slows
            // consumption instead of filling memory.
            .set("queued.max.messages.kbytes", "1024");
        let label = source.label();
        let consumer: StreamConsumer<GroupContext> = config
            .create_with_context(GroupContext { label: label.clone() })
            .map_err(|e| ConsumeError::new("kafka consumer", e))?;
        consumer.subscribe(&[topic]).map_err(|e| ConsumeError::new("subscribe", e))?;
        let consumer = Arc::new(GroupConsumer(Some(consumer)));
        {
            let mut consumers = self.consumers.lock().unwrap_or_else(PoisonError::into_inner);
            consumers.retain(|(_, c)| c.strong_count() > 0);
            consumers.push((source.clone(), Arc::downgrade(&consumer)));
        }
        let state = Receiving { consumer, partitions: Arc::new(Partitions::default()), held: None, label };
        Ok(futures_util::stream::unfold(state, Receiving::next).boxed())
    }

    /// Records behind the group's committed offsets on each partition this gateway holds.
    async fn lag(&self, source: &Source) -> Result<Vec<(i32, u64)>, ConsumeError> {
        let consumer = {
            let consumers = self.consumers.lock().unwrap_or_else(PoisonError::into_inner);
            consumers.iter().rev().find(|(s, _)| s == source).and_then(|(_, c)| c.upgrade())
        };
        let consumer = consumer.ok_or_else(|| ConsumeError("not consuming".into()))?;
        let lag = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, u64)>, KafkaError> {
            let assigned = consumer.assignment()?;
            if assigned.count() == 0 {
                // Not known yet (joining the group), or none of the partitions is ours.
                return Err(KafkaError::Subscription("no partitions assigned".into()));
            }
            let committed = consumer.committed_offsets(assigned, CALL_TIMEOUT)?;
            let mut lag = Vec::new();
            for p in committed.elements() {
                let (low, high) = consumer.fetch_watermarks(p.topic(), p.partition(), CALL_TIMEOUT)?;
                let position = match p.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                // Some brokers report a high watermark below the committed offset: never negative.
                lag.push((p.partition(), u64::try_from(high - position).unwrap_or(0)));
            }
            lag.sort_unstable();
            Ok(lag)
        })
        .await
        .map_err(|e| ConsumeError::new("lag", e))?;
        lag.map_err(|e| ConsumeError::new("lag", e))
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

fn publish_error(e: &KafkaError, size: usize) -> PublishError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => PublishError::TooLarge { size, max: MAX_MESSAGE_BYTES },
        Some(
            RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownPartition,
        ) => PublishError::Unroutable(e.to_string()),
        Some(RDKafkaErrorCode::MessageTimedOut) => PublishError::Timeout,
        Some(RDKafkaErrorCode::InvalidTopic) => PublishError::InvalidMessage(e.to_string()),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure) => {
            PublishError::Connection(e.to_string())
        }
        _ => PublishError::Rejected(e.to_string()),
    }
}

impl Broker for KafkaBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Kafka
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<Confirmation, PublishError>> {
        async move {
            let guard = self.link.metrics.start();
            guard.finish(self.publish_inner(message).await)
        }
        .boxed()
    }

    fn state(&self) -> BrokerState {
        self.link.state()
    }

    fn metrics(&self) -> &BrokerMetrics {
        &self.link.metrics
    }

    /// `prefetch` is not used: at most one record per partition is out at a time, and the
    /// subscription's concurrency bounds how many partitions are delivered to at once.
    fn consume(&self, source: &Source, _prefetch: u16) -> BoxFuture<'_, Result<Messages, ConsumeError>> {
        let source = source.clone();
        async move { self.consume_inner(&source).await }.boxed()
    }

    fn backlog(&self, source: &Source) -> BoxFuture<'_, Result<u64, ConsumeError>> {
        let source = source.clone();
        async move { Ok(self.lag(&source).await?.iter().map(|(_, n)| n).sum()) }.boxed()
    }

    fn backlog_by_partition(&self, source: &Source) -> BoxFuture<'_, Result<Vec<(i32, u64)>, ConsumeError>> {
        let source = source.clone();
        async move { self.lag(&source).await }.boxed()
    }
}

/// The connection state and counters that librdkafka's callbacks update.
struct Link {
    name: String,
    state: AtomicU8,
    ever_connected: AtomicBool,
    metrics: Arc<BrokerMetrics>,
}

impl Link {
    fn state(&self) -> BrokerState {
        BrokerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_up(&self, up: bool) {
        let before = BrokerState::from_u8(self.state.load(Ordering::Relaxed));
        let now = match (up, self.ever_connected.load(Ordering::Relaxed)) {
            (true, _) => BrokerState::Connected,
            (false, true) => BrokerState::Reconnecting,
            (false, false) => BrokerState::Connecting,
        };
        if before == now {
            return;
        }
        self.state.store(now.to_u8(), Ordering::Relaxed);
        match now {
            BrokerState::Connected if self.ever_connected.swap(true, Ordering::Relaxed) => {
                self.metrics.connected_again();
                tracing::info!(event = "broker", broker = %self.name, state = "connected", "reconnected");
            }
            BrokerState::Reconnecting => {
                tracing::warn!(event = "broker", broker = %self.name, state = "reconnecting", "connection lost; reconnecting")
            }
            _ => {}
        }
    }
}

/// librdkafka's callbacks for the producer: connection state from the statistics, logs into
/// `tracing`.
struct LinkContext(Arc<Link>);

/// The admin client's callbacks: logs only (it is idle most of the time, and its connections
/// say nothing about the producer's).
struct AdminContext(String);

impl ClientContext for AdminContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(&self.0, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(broker = %self.0, %error, reason, "librdkafka admin client");
    }
}

impl ClientContext for LinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(&self.0.name, level, fac, message);
    }

    fn stats(&self, statistics: Statistics) {
        // Bootstrap entries (node id -1) are only used to learn the cluster.
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.0.set_up(up);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.0.set_up(false);
        }
        tracing::debug!(broker = %self.0.name, %error, reason, "librdkafka");
    }
}

fn log(name: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(broker = %name, facility = fac, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(broker = %name, facility = fac, "{message}"),
        _ => tracing::debug!(broker = %name, facility = fac, "{message}"),
    }
}

/// A subscription consumer's callbacks: commit what was delivered before partitions go.
struct GroupContext {
    label: String,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(&self.label, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(subscription = %self.label, %error, reason, "librdkafka");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                // Every ack commits synchronously, so this is a second chance for offsets whose
                // commit failed; "no offset stored" is the usual answer.
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(e) => tracing::warn!(subscription = %self.label, error = %e, "commit on revocation failed"),
                }
                tracing::info!(subscription = %self.label, partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Assign(partitions) => {
                tracing::info!(subscription = %self.label, partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(subscription = %self.label, error = %e, "rebalance failed"),
        }
    }
}

/// The partitions that have a record out (handed to the subscription, not settled yet).
#[derive(Default)]
struct Partitions {
    busy: Mutex<HashSet<(String, i32)>>,
    freed: tokio::sync::Notify,
}

impl Partitions {
    fn claim(&self, slot: &(String, i32)) -> bool {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner).insert(slot.clone())
    }

    fn release(&self, slot: &(String, i32)) {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner).remove(slot);
        self.freed.notify_waiters();
    }
}

/// The state of one subscription's record stream.
struct Receiving {
    consumer: Arc<GroupConsumer>,
    partitions: Arc<Partitions>,
    /// A record whose partition has one out: handed out once that one is settled.
    held: Option<OwnedMessage>,
    label: String,
}

impl Receiving {
    async fn next(mut self) -> Option<(Result<Incoming, ConsumeError>, Receiving)> {
        loop {
            let message = match self.held.take() {
                Some(message) => message,
                None => match self.consumer.recv().await {
                    Ok(message) => message.detach(),
                    // librdkafka recovers from these itself (a broker away, a topic not there yet).
                    Err(e) => {
                        tracing::debug!(subscription = %self.label, error = %e, "kafka consumer");
                        continue;
                    }
                },
            };
            let slot = (message.topic().to_owned(), message.partition());
            let partitions = self.partitions.clone();
            let freed = partitions.freed.notified();
            if partitions.claim(&slot) {
                let incoming = incoming(&message, self.consumer.clone(), self.partitions.clone(), slot);
                return Some((Ok(incoming), self));
            }
            freed.await;
            self.held = Some(message);
        }
    }
}

fn incoming(
    message: &OwnedMessage,
    consumer: Arc<GroupConsumer>,
    partitions: Arc<Partitions>,
    slot: (String, i32),
) -> Incoming {
    let mut delivery = Delivery {
        body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        key: message.key().and_then(|k| std::str::from_utf8(k).ok()).map(str::to_owned),
        message_id: None,
        content_type: None,
        headers: Vec::new(),
        attempt: 1,
        redelivered: false,
    };
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok()) else { continue };
            if header.key.eq_ignore_ascii_case(MESSAGE_ID_HEADER) {
                delivery.message_id = Some(value.to_owned());
            } else if header.key.eq_ignore_ascii_case("content-type") {
                delivery.content_type = Some(value.to_owned());
            } else {
                delivery.headers.push((header.key.to_owned(), value.to_owned()));
            }
        }
    }
    let acker = KafkaAcker { consumer, partitions, slot, offset: message.offset() };
    Incoming { delivery, acker: Box::new(acker) }
}

/// Settles one record: commits past it, or seeks back to it. Frees its partition when dropped.
struct KafkaAcker {
    consumer: Arc<GroupConsumer>,
    partitions: Arc<Partitions>,
    slot: (String, i32),
    offset: i64,
}

impl KafkaAcker {
    /// Commit the offset after this record (synchronously: the broker has it when this returns).
    async fn commit_past(&self) -> Result<(), ConsumeError> {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&self.slot.0, self.slot.1, Offset::Offset(self.offset + 1))
            .map_err(|e| ConsumeError::new("commit", e))?;
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|e| ConsumeError::new("commit", e))?
            .map_err(|e| ConsumeError::new("commit", e))
    }
}

impl Acker for KafkaAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.commit_past().boxed()
    }

    /// Seek the partition back to this record, so that this consumer receives it again (on a
    /// shutdown, the group's committed offset does the same for the next consumer).
    fn requeue(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        let (topic, partition) = &self.slot;
        let result = self.consumer.seek(topic, *partition, Offset::Offset(self.offset), Duration::ZERO);
        async move { result.map_err(|e| ConsumeError::new("seek", e)) }.boxed()
    }

    /// Kafka has no broker-side dead-lettering: the record is skipped (its offset committed).
    fn reject(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.commit_past().boxed()
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        async { Ok(()) }.boxed()
    }
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        self.partitions.release(&self.slot);
    }
}
