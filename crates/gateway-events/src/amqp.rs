//! AMQP 0-9-1 (RabbitMQ) with lapin.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use gateway_config::schema::BrokerKind;
use lapin::message::Delivery as LapinDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation as LapinConfirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{watch, Mutex};

use crate::broker::{
    check_header, Acker, Broker, BrokerMetrics, BrokerState, Confirmation, ConsumeError, Delivery, Destination,
    Incoming, Messages, OutgoingMessage, PublishError, AMQP_DEDUP_HEADER,
};
use crate::brokers::BrokerOptions;
use crate::subscription::Source;

/// How often the supervisor looks at the connection's status.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// A RabbitMQ connection kept up in the background.
///
/// - Connection: one TCP connection; when it drops, the state becomes
///   [`BrokerState::Reconnecting`] and a background task reconnects with
///   [`BrokerOptions::reconnect`] back-off until it is back (or the broker is dropped).
/// - Publish: one channel in confirm mode, reopened when it closes. Messages are persistent
///   (`delivery_mode` 2), carry `message_id`, `content_type`, `timestamp` and the headers table,
///   and are published `mandatory`: a message that no queue takes comes back as a
///   `basic.return` followed by the confirm, and is reported as
///   [`PublishError::Unroutable`] (the returned copy is dropped), never as confirmed.
///   A missing exchange is a channel error from the broker: [`PublishError::Rejected`], and the
///   channel is reopened for the next publish.
/// - Consume: a channel per consumer with `basic.qos` = the prefetch; the queue is declared
///   durable (a queue that exists with other arguments is the broker's
///   `PRECONDITION_FAILED`: the subscription logs it and retries), the binding's exchange is
///   declared as a durable topic exchange, the dead-letter queue durable.
pub struct AmqpBroker {
    inner: Arc<Inner>,
    /// Dropping the broker stops the supervisor (which closes the connection).
    _stop: watch::Sender<bool>,
}

struct Inner {
    name: String,
    state: AtomicU8,
    connection: watch::Sender<Option<Arc<Connection>>>,
    publisher: Mutex<Option<Channel>>,
    metrics: BrokerMetrics,
}

impl AmqpBroker {
    /// Start connecting to `url` (`amqp://user:pass@host:port/vhost`) in the background, and wait
    /// until connected or [`BrokerOptions::connect_timeout`] passed, whichever comes first: the
    /// broker is returned either way, reconnecting in the background while down.
    pub async fn connect(name: &str, url: &str, options: &BrokerOptions) -> AmqpBroker {
        let (connection, mut connected) = watch::channel(None);
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            state: AtomicU8::new(BrokerState::Connecting.to_u8()),
            connection,
            publisher: Mutex::new(None),
            metrics: BrokerMetrics::default(),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(supervise(inner.clone(), url.to_owned(), options.clone(), stopped));
        let first = connected.wait_for(|c| c.is_some());
        if tokio::time::timeout(options.connect_timeout, first).await.is_err() {
            let timeout = options.connect_timeout;
            tracing::warn!(broker = %name, ?timeout, "not connected in time; retrying in the background");
        }
        AmqpBroker { inner, _stop: stop }
    }

    fn connection(&self) -> Option<Arc<Connection>> {
        self.inner.connection.borrow().clone().filter(|c| c.status().connected())
    }

    /// The publish channel, opened (in confirm mode) when there is none or it closed.
    async fn publish_channel(&self) -> Result<Channel, PublishError> {
        let mut slot = self.inner.publisher.lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        *slot = None;
        let connection = self.connection().ok_or_else(|| PublishError::Unavailable(self.state()))?;
        let channel = connection.create_channel().await.map_err(publish_error)?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(publish_error)?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    async fn publish_inner(&self, message: OutgoingMessage) -> Result<Confirmation, PublishError> {
        let Destination::Amqp { exchange, routing_key } = &message.destination else {
            return Err(PublishError::InvalidMessage(format!("{} is not an AMQP destination", message.destination)));
        };
        let exchange = short("exchange", exchange)?;
        let routing_key = short("routing key", routing_key)?;
        let properties = properties(&message)?;
        if !self.state().is_connected() {
            return Err(PublishError::Unavailable(self.state()));
        }
        let channel = self.publish_channel().await?;
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = channel
            .basic_publish(exchange, routing_key, options, &message.body, properties)
            .await
            .map_err(publish_error)?;
        match confirm.await.map_err(publish_error)? {
            LapinConfirmation::Ack(None) => {
                Ok(Confirmation { message_id: message.message_id, duplicate: false, sequence: None })
            }
            LapinConfirmation::Ack(Some(returned)) => Err(PublishError::Unroutable(format!(
                "{} ({} {})",
                message.destination, returned.reply_code, returned.reply_text
            ))),
            LapinConfirmation::Nack(_) => Err(PublishError::Rejected("the broker nacked the message".into())),
            LapinConfirmation::NotRequested => Err(PublishError::Rejected("the channel is not in confirm mode".into())),
        }
    }

    async fn consume_inner(&self, source: &Source, prefetch: u16) -> Result<Messages, ConsumeError> {
        let Source::Amqp { queue, bind, dead_letter } = source else {
            return Err(ConsumeError(format!("{} is not an AMQP source", source.label())));
        };
        let connection = self.connection().ok_or_else(|| ConsumeError(format!("not connected ({})", self.state())))?;
        let channel = connection.create_channel().await.map_err(|e| ConsumeError::new("open a channel", e))?;
        let short = |s: &str| ShortString::try_new(s).map_err(|e| ConsumeError::new(s, e));
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(|e| ConsumeError::new("basic.qos", e))?;
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel
            .queue_declare(short(queue)?, durable, FieldTable::default())
            .await
            .map_err(|e| ConsumeError::new(&format!("declare queue {queue:?}"), e))?;
        if let Some((exchange, routing_key)) = bind {
            let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
            channel
                .exchange_declare(short(exchange)?, ExchangeKind::Topic, options, FieldTable::default())
                .await
                .map_err(|e| ConsumeError::new(&format!("declare topic exchange {exchange:?}"), e))?;
            channel
                .queue_bind(
                    short(queue)?,
                    short(exchange)?,
                    short(routing_key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| ConsumeError::new(&format!("bind {queue:?} to {exchange:?}"), e))?;
        }
        if let Some(dead) = dead_letter {
            channel
                .queue_declare(short(dead)?, durable, FieldTable::default())
                .await
                .map_err(|e| ConsumeError::new(&format!("declare dead-letter queue {dead:?}"), e))?;
        }
        let consumer = channel
            .basic_consume(short(queue)?, ShortString::default(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|e| ConsumeError::new(&format!("consume {queue:?}"), e))?;
        let messages = consumer.map(move |delivery| match delivery {
            Ok(delivery) => Ok(incoming(delivery, channel.clone())),
            Err(e) => Err(ConsumeError::new("consumer", e)),
        });
        Ok(messages.boxed())
    }

    async fn backlog_inner(&self, source: &Source) -> Result<u64, ConsumeError> {
        let Source::Amqp { queue, .. } = source else {
            return Err(ConsumeError(format!("{} is not an AMQP source", source.label())));
        };
        let connection = self.connection().ok_or_else(|| ConsumeError(format!("not connected ({})", self.state())))?;
        // A channel of its own: a passive declare of a missing queue closes the channel.
        let channel = connection.create_channel().await.map_err(|e| ConsumeError::new("open a channel", e))?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let name = ShortString::try_new(queue.as_str()).map_err(|e| ConsumeError::new(queue, e))?;
        let declared = channel.queue_declare(name, passive, FieldTable::default()).await;
        let _ = channel.close(200, "OK".into()).await;
        let queue = declared.map_err(|e| ConsumeError::new(&format!("queue {queue:?}"), e))?;
        Ok(u64::from(queue.message_count()))
    }
}

impl Broker for AmqpBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Amqp
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<Confirmation, PublishError>> {
        async move {
            let guard = self.inner.metrics.start();
            guard.finish(self.publish_inner(message).await)
        }
        .boxed()
    }

    fn state(&self) -> BrokerState {
        BrokerState::from_u8(self.inner.state.load(Ordering::Relaxed))
    }

    fn metrics(&self) -> &BrokerMetrics {
        &self.inner.metrics
    }

    fn consume(&self, source: &Source, prefetch: u16) -> BoxFuture<'_, Result<Messages, ConsumeError>> {
        let source = source.clone();
        async move { self.consume_inner(&source, prefetch).await }.boxed()
    }

    fn backlog(&self, source: &Source) -> BoxFuture<'_, Result<u64, ConsumeError>> {
        let source = source.clone();
        async move { self.backlog_inner(&source).await }.boxed()
    }
}

/// Keep a connection up until the broker is dropped.
async fn supervise(inner: Arc<Inner>, url: String, options: BrokerOptions, mut stop: watch::Receiver<bool>) {
    let name = inner.name.clone();
    let set_state = |s: BrokerState| inner.state.store(s.to_u8(), Ordering::Relaxed);
    let mut failures = 0u32;
    let mut ever_connected = false;
    loop {
        let properties = ConnectionProperties::default().with_connection_name(format!("gateway:{name}").into());
        let attempt = tokio::time::timeout(options.connect_timeout, Connection::connect(&url, properties));
        let attempt = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            attempt = attempt => attempt,
        };
        match attempt {
            Ok(Ok(connection)) => {
                let connection = Arc::new(connection);
                if ever_connected {
                    inner.metrics.connected_again();
                    tracing::info!(event = "broker", broker = %name, state = "connected", "reconnected");
                } else {
                    tracing::info!(event = "broker", broker = %name, state = "connected", "connected");
                }
                ever_connected = true;
                failures = 0;
                set_state(BrokerState::Connected);
                inner.connection.send_replace(Some(connection.clone()));
                let stopping = loop {
                    tokio::select! {
                        biased;
                        _ = stop.wait_for(|s| *s) => break true,
                        _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                    }
                    if !connection.status().connected() {
                        break false;
                    }
                };
                inner.connection.send_replace(None);
                *inner.publisher.lock().await = None;
                if stopping {
                    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close(200, "OK".into())).await;
                    break;
                }
                set_state(BrokerState::Reconnecting);
                tracing::warn!(event = "broker", broker = %name, state = "reconnecting", "connection lost; reconnecting");
            }
            Ok(Err(e)) => {
                if failures == 0 {
                    tracing::warn!(broker = %name, error = %e, "cannot connect; retrying with back-off");
                }
            }
            Err(_) => {
                if failures == 0 {
                    tracing::warn!(broker = %name, "connect timed out; retrying with back-off");
                }
            }
        }
        let delay = options.reconnect.delay(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    set_state(BrokerState::Closed);
}

fn short(what: &str, s: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(s).map_err(|_| PublishError::InvalidMessage(format!("the {what} is longer than 255 bytes")))
}

fn properties(message: &OutgoingMessage) -> Result<BasicProperties, PublishError> {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        check_header(name, value)?;
        headers.insert(short("header name", name)?, AMQPValue::LongString(LongString::from(value.as_str())));
    }
    if let Some(id) = &message.dedup_id {
        check_header(AMQP_DEDUP_HEADER, id)?;
        headers.insert(AMQP_DEDUP_HEADER.into(), AMQPValue::LongString(LongString::from(id.as_str())));
    }
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut properties =
        BasicProperties::default().with_delivery_mode(2).with_timestamp(timestamp).with_headers(headers);
    if !message.message_id.is_empty() {
        properties = properties.with_message_id(short("message id", &message.message_id)?);
    }
    if let Some(content_type) = &message.content_type {
        properties = properties.with_content_type(short("content type", content_type)?);
    }
    Ok(properties)
}

fn publish_error(e: lapin::Error) -> PublishError {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(_) => PublishError::Rejected(e.to_string()),
        _ => PublishError::Connection(e.to_string()),
    }
}

fn incoming(delivery: LapinDelivery, channel: Channel) -> Incoming {
    let properties = &delivery.properties;
    let headers = properties
        .headers()
        .as_ref()
        .map(|table| table.inner().iter().filter_map(|(k, v)| Some((k.to_string(), text(v)?))).collect())
        .unwrap_or_default();
    let message = Delivery {
        message_id: properties.message_id().as_ref().map(|s| s.to_string()),
        key: None,
        content_type: properties.content_type().as_ref().map(|s| s.to_string()),
        headers,
        attempt: 1,
        redelivered: delivery.redelivered,
        body: Bytes::from(delivery.data),
    };
    Incoming { delivery: message, acker: Box::new(AmqpAcker { acker: delivery.acker, _channel: channel }) }
}

/// The text of a header value; `None` for tables, arrays, byte arrays and void.
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

struct AmqpAcker {
    acker: lapin::Acker,
    /// Keeps the consumer's channel open until the message is settled, also after the consumer
    /// was cancelled (a clean shutdown); when the last holder goes, the channel closes and the
    /// broker requeues what was not acknowledged.
    _channel: Channel,
}

impl Acker for AmqpAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        let options = BasicAckOptions::default();
        async move { self.acker.ack(options).await.map(drop).map_err(|e| ConsumeError::new("ack", e)) }.boxed()
    }

    fn requeue(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        let options = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
        async move { self.acker.nack(options).await.map(drop).map_err(|e| ConsumeError::new("nack", e)) }.boxed()
    }

    fn reject(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        let options = BasicRejectOptions { requeue: false };
        async move { self.acker.reject(options).await.map(drop).map_err(|e| ConsumeError::new("reject", e)) }.boxed()
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        async { Ok(()) }.boxed()
    }
}
