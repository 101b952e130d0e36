//! The [`Broker`] trait and the messages that cross it, both ways.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use gateway_config::schema::BrokerKind;

use crate::subscription::Source;

/// Header that carries the message id (the request id) on NATS, where messages have no
/// message-id property. AMQP uses the `message_id` property instead.
pub const MESSAGE_ID_HEADER: &str = "x-message-id";

/// Header that carries the deduplication id ([`OutgoingMessage::dedup_id`], from the client's
/// `idempotency-key`) on AMQP. RabbitMQ itself does not deduplicate; the name is the one the
/// `rabbitmq-message-deduplication` plugin reads, so a deduplicating exchange or queue of that
/// plugin drops the copies, and any consumer can do the same by hand. JetStream uses its own
/// `Nats-Msg-Id` header and drops copies within the stream's duplicate window (2 minutes by
/// default).
pub const AMQP_DEDUP_HEADER: &str = "x-deduplication-header";

/// Record header that carries the deduplication id ([`OutgoingMessage::dedup_id`], from the
/// client's `idempotency-key`) on Kafka. Kafka's idempotent producer only drops the copies that
/// its own retries would write; a client that sends the same request twice makes two records,
/// and the consumer drops the second by this header.
pub const KAFKA_DEDUP_HEADER: &str = "idempotency-key";

/// Header of a dead-lettered message: how many delivery attempts failed.
pub const ATTEMPTS_HEADER: &str = "x-gateway-attempts";

/// Header of a dead-lettered message: the error of the last attempt (at most
/// [`MAX_ERROR_HEADER_LEN`] bytes).
pub const LAST_ERROR_HEADER: &str = "x-gateway-last-error";

/// Header of a dead-lettered message: where it was consumed from ([`Source::label`]).
pub const SOURCE_HEADER: &str = "x-gateway-source";

/// The longest [`LAST_ERROR_HEADER`] value; longer errors are cut at a character boundary.
pub const MAX_ERROR_HEADER_LEN: usize = 1024;

/// A message broker the gateway publishes to and consumes from: a connection (kept up in the
/// background) to one `[brokers.NAME]`.
///
/// Implemented by [`AmqpBroker`](crate::AmqpBroker) and [`NatsBroker`](crate::NatsBroker);
/// tests may implement it with a fake.
pub trait Broker: Send + Sync + 'static {
    /// Which protocol this broker speaks.
    fn kind(&self) -> BrokerKind;

    /// Publish a persistent message. Resolves only once the broker has confirmed that it
    /// stored the message (AMQP publisher confirm; JetStream `PubAck`), with an error as soon
    /// as the broker is known to be unreachable. It has no timeout of its own beyond the
    /// client library's: the caller bounds it (`tokio::time::timeout`), and dropping the
    /// future counts as a failed publish.
    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<Confirmation, PublishError>>;

    /// The connection's state now, for `/readyz`, `/admin` and metrics.
    fn state(&self) -> BrokerState;

    /// Publish counters.
    fn metrics(&self) -> &BrokerMetrics;

    /// Declare what `source` needs (queue, binding and dead-letter queue; stream and durable
    /// consumer) and start consuming with at most `prefetch` unacknowledged messages. The
    /// stream ends, or yields an error, when the connection or the consumer is lost; the
    /// [`SubscriptionRunner`](crate::SubscriptionRunner) then calls this again.
    fn consume(&self, source: &Source, prefetch: u16) -> BoxFuture<'_, Result<Messages, ConsumeError>>;

    /// Messages waiting in `source` that were not delivered yet (queue depth; JetStream
    /// consumer's pending count), for the lag metric.
    fn backlog(&self, source: &Source) -> BoxFuture<'_, Result<u64, ConsumeError>>;

    /// The backlog of each partition of `source` that this gateway consumes, for brokers with
    /// partitions (Kafka: the consumer group's lag); empty for the others, whose backlog is
    /// one number.
    fn backlog_by_partition(&self, _source: &Source) -> BoxFuture<'_, Result<Vec<(i32, u64)>, ConsumeError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// What [`Broker::consume`] yields.
pub type Messages = BoxStream<'static, Result<Incoming, ConsumeError>>;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An AMQP exchange and routing key; exchange `""` is the default exchange, where the
    /// routing key is a queue name.
    Amqp {
        /// Exchange name (at most 255 bytes).
        exchange: String,
        /// Routing key (at most 255 bytes).
        routing_key: String,
    },
    /// A NATS subject, which a JetStream stream must cover.
    Nats {
        /// Subject: dot-separated tokens, no wildcards.
        subject: String,
    },
    /// A Kafka topic (which must exist) and the record's key: records with one key go to one
    /// partition, and stay in order there.
    Kafka {
        /// The topic.
        topic: String,
        /// The record key; `None` lets the producer's partitioner spread the records.
        key: Option<String>,
    },
}

impl Destination {
    /// The broker kind this destination belongs to.
    pub fn kind(&self) -> BrokerKind {
        match self {
            Destination::Amqp { .. } => BrokerKind::Amqp,
            Destination::Nats { .. } => BrokerKind::Nats,
            Destination::Kafka { .. } => BrokerKind::Kafka,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Amqp { exchange, routing_key } => write!(f, "exchange {exchange:?} key {routing_key:?}"),
            Destination::Nats { subject } => write!(f, "subject {subject:?}"),
            Destination::Kafka { topic, key: Some(key) } => write!(f, "topic {topic:?} key {key:?}"),
            Destination::Kafka { topic, key: None } => write!(f, "topic {topic:?}"),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// Exchange and routing key, or subject.
    pub destination: Destination,
    /// The payload (the request body).
    pub body: Bytes,
    /// The message id: the request id. AMQP `message_id` property; NATS and Kafka
    /// [`MESSAGE_ID_HEADER`].
    pub message_id: String,
    /// AMQP `content_type` property; NATS and Kafka `content-type` header.
    pub content_type: Option<String>,
    /// Further headers (`traceparent`, the route's configured ones): AMQP headers table (as
    /// long strings); NATS headers. Names must be visible ASCII without `:`, values must not
    /// contain CR or LF, or the publish fails with [`PublishError::InvalidMessage`].
    pub headers: Vec<(String, String)>,
    /// Deduplication id (the client's `idempotency-key`): JetStream `Nats-Msg-Id`; AMQP
    /// [`AMQP_DEDUP_HEADER`]; Kafka [`KAFKA_DEDUP_HEADER`].
    pub dedup_id: Option<String>,
}

impl OutgoingMessage {
    /// The headers of a broker that carries everything in headers (NATS, Kafka): the message
    /// id in [`MESSAGE_ID_HEADER`], `content-type`, [`headers`](Self::headers), and the
    /// deduplication id in `dedup_header`; each checked with the rules of
    /// [`headers`](Self::headers).
    pub(crate) fn header_list<'a>(&'a self, dedup_header: &'a str) -> Result<Vec<(&'a str, &'a str)>, PublishError> {
        let mut list = Vec::with_capacity(self.headers.len() + 3);
        if !self.message_id.is_empty() {
            list.push((MESSAGE_ID_HEADER, self.message_id.as_str()));
        }
        if let Some(content_type) = &self.content_type {
            list.push(("content-type", content_type.as_str()));
        }
        list.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(id) = &self.dedup_id {
            list.push((dedup_header, id.as_str()));
        }
        for (name, value) in &list {
            check_header(name, value)?;
        }
        Ok(list)
    }
}

/// What the broker confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The message id that was published ([`OutgoingMessage::message_id`]).
    pub message_id: String,
    /// JetStream recognised the deduplication id and kept the earlier copy instead (the
    /// message is stored once: answering 202 again is right). Always false on AMQP.
    pub duplicate: bool,
    /// JetStream's stream sequence, or the Kafka offset, of the stored message; `None` on AMQP.
    pub sequence: Option<u64>,
}

/// Why a publish was not confirmed. Every variant means the message may not be stored: the
/// client must not be told 202.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// Not connected to the broker right now (connecting, reconnecting or closed).
    #[error("the broker is not connected ({0})")]
    Unavailable(BrokerState),
    /// The connection broke before the broker confirmed.
    #[error("the connection to the broker was lost before it confirmed: {0}")]
    Connection(String),
    /// Nothing takes the message: an AMQP exchange with no queue bound for the routing key
    /// (the message came back as a mandatory return), or no JetStream stream for the subject.
    #[error("nothing takes the message at {0}")]
    Unroutable(String),
    /// The broker refused it: AMQP nack or channel error (such as a missing exchange),
    /// JetStream error answer.
    #[error("the broker refused the message: {0}")]
    Rejected(String),
    /// The client library gave up waiting for the confirmation.
    #[error("the broker did not confirm in time")]
    Timeout,
    /// Larger than the broker accepts (NATS `max_payload`).
    #[error("the message is {size} bytes, the broker takes at most {max}")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The broker's limit.
        max: usize,
    },
    /// The message cannot be expressed for this broker: a destination of another kind, a name
    /// over 255 bytes, a header name or value that is not allowed, a subject with wildcards.
    /// Often the client's doing (a path parameter in a routing key or subject).
    #[error("the message cannot be sent: {0}")]
    InvalidMessage(String),
}

impl PublishError {
    /// Whether the message itself is at fault (answer 400 or 413 rather than 503).
    pub fn is_invalid_message(&self) -> bool {
        matches!(self, PublishError::InvalidMessage(_) | PublishError::TooLarge { .. })
    }
}

/// A consumer could not be set up, or broke.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConsumeError(pub String);

impl ConsumeError {
    pub(crate) fn new(context: &str, error: impl fmt::Display) -> ConsumeError {
        ConsumeError(format!("{context}: {error}"))
    }
}

/// The state of a broker connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerState {
    /// Not connected yet since the start: the first attempts are under way.
    Connecting,
    /// Connected: publishes and consumers work.
    Connected,
    /// The connection was lost; reconnecting with back-off in the background.
    Reconnecting,
    /// Stopped for good (the broker was removed from the configuration).
    Closed,
}

impl BrokerState {
    /// `connecting`, `connected`, `reconnecting` or `closed`: for JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Connecting => "connecting",
            BrokerState::Connected => "connected",
            BrokerState::Reconnecting => "reconnecting",
            BrokerState::Closed => "closed",
        }
    }

    /// Whether publishes can succeed now.
    pub fn is_connected(self) -> bool {
        self == BrokerState::Connected
    }

    pub(crate) fn from_u8(v: u8) -> BrokerState {
        match v {
            0 => BrokerState::Connecting,
            1 => BrokerState::Connected,
            2 => BrokerState::Reconnecting,
            _ => BrokerState::Closed,
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            BrokerState::Connecting => 0,
            BrokerState::Connected => 1,
            BrokerState::Reconnecting => 2,
            BrokerState::Closed => 3,
        }
    }
}

impl fmt::Display for BrokerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Publish counters of one broker (monotonic, since the broker was built; kept across reloads
/// with the broker). `published - confirmed - failed` are in flight.
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    published: AtomicU64,
    confirmed: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
}

impl BrokerMetrics {
    /// Publishes started (including dead letters published by subscriptions).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Publishes the broker confirmed.
    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// Publishes that ended without a confirmation (errors, and futures dropped by a timeout).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Connections (re)established after the first one.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub(crate) fn connected_again(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a publish as started; the guard counts it as failed unless [`PublishGuard::confirmed`].
    pub(crate) fn start(&self) -> PublishGuard<'_> {
        self.published.fetch_add(1, Ordering::Relaxed);
        PublishGuard { metrics: self, done: false }
    }
}

/// Counts the outcome of one publish exactly once, also when its future is dropped.
pub(crate) struct PublishGuard<'a> {
    metrics: &'a BrokerMetrics,
    done: bool,
}

impl PublishGuard<'_> {
    pub(crate) fn finish<T>(mut self, result: Result<T, PublishError>) -> Result<T, PublishError> {
        self.done = true;
        let counter = if result.is_ok() { &self.metrics.confirmed } else { &self.metrics.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }
}

impl Drop for PublishGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A message received from a broker, handed to the subscription's callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The payload.
    pub body: Bytes,
    /// AMQP `message_id` property; NATS and Kafka [`MESSAGE_ID_HEADER`] (else `Nats-Msg-Id`).
    pub message_id: Option<String>,
    /// The Kafka record key (text only); `None` on AMQP and NATS. A dead letter keeps it.
    pub key: Option<String>,
    /// AMQP `content_type` property; NATS `content-type` header.
    pub content_type: Option<String>,
    /// The other headers whose values are text: AMQP headers table entries that are strings,
    /// numbers or booleans (in name order); NATS headers except `Nats-*` (in no set order).
    pub headers: Vec<(String, String)>,
    /// Which delivery attempt this is in this process: 1, then 2, ... up to `max_attempts`.
    pub attempt: u32,
    /// The broker delivered this message before (to this or an earlier consumer that did not
    /// acknowledge it: a gateway that died mid-delivery, or a shutdown): the receiver may see
    /// it twice.
    pub redelivered: bool,
}

impl Delivery {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One received message and the handle that settles it with the broker.
pub struct Incoming {
    /// The message (its `attempt` is 1).
    pub delivery: Delivery,
    /// Settles the message; dropping it unsettled leaves the message to the broker, which
    /// redelivers it once the consumer is gone (AMQP: channel closed; JetStream: `ack_wait`).
    pub acker: Box<dyn Acker>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").field("delivery", &self.delivery).finish_non_exhaustive()
    }
}

/// Settles one received message with the broker.
pub trait Acker: Send + Sync {
    /// Processed: the broker forgets the message. Waits for the broker where the protocol can
    /// (JetStream double ack); AMQP acks are not confirmed by the protocol.
    fn ack(&self) -> BoxFuture<'_, Result<(), ConsumeError>>;

    /// Give the message back for redelivery now (AMQP `basic.nack` with requeue; JetStream
    /// `-NAK`), e.g. when shutting down in the middle of its retries.
    fn requeue(&self) -> BoxFuture<'_, Result<(), ConsumeError>>;

    /// Refuse it for good, leaving it to the broker's own dead-lettering: AMQP `basic.reject`
    /// without requeue (the queue's `x-dead-letter-exchange` policy, if the operator set one,
    /// else the broker drops it); JetStream `+TERM` (the server emits a
    /// `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED` advisory).
    fn reject(&self) -> BoxFuture<'_, Result<(), ConsumeError>>;

    /// Still working on it: push the redelivery deadline back (JetStream `+WPI`). Called while a
    /// delivery and its retries take long, only when [`ack_deadline`](Self::ack_deadline) is set.
    fn in_progress(&self) -> BoxFuture<'_, Result<(), ConsumeError>>;

    /// How long the broker waits for a settlement before it redelivers the message on its own
    /// (JetStream: the consumer's `ack_wait`); `None` when it never does while the consumer is
    /// connected (AMQP).
    fn ack_deadline(&self) -> Option<Duration> {
        None
    }
}

/// Validation shared by the implementations.
pub(crate) fn check_header(name: &str, value: &str) -> Result<(), PublishError> {
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if !name_ok {
        return Err(PublishError::InvalidMessage(format!("header name {name:?} is not allowed")));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(PublishError::InvalidMessage(format!("header {name} has a line break in its value")));
    }
    Ok(())
}

/// Cut `s` to at most `max` bytes at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn headers_are_checked() {
        assert!(check_header("traceparent", "00-abc-01").is_ok());
        assert!(check_header("bad name", "v").is_err());
        assert!(check_header("a:b", "v").is_err());
        assert!(check_header("", "v").is_err());
        assert!(check_header("ok", "line\r\nbreak").is_err());
    }

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn a_dropped_publish_counts_as_failed() {
        let m = BrokerMetrics::default();
        let ok = m.start();
        let _ = ok.finish(Ok::<(), PublishError>(()));
        drop(m.start());
        let err = m.start();
        let _ = err.finish(Err::<(), _>(PublishError::Timeout));
        assert_eq!((m.published(), m.confirmed(), m.failed()), (3, 1, 2));
    }
}
