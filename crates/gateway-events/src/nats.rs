//! NATS JetStream with async-nats.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use gateway_config::schema::BrokerKind;

use crate::broker::{
    Acker, Broker, BrokerMetrics, BrokerState, Confirmation, ConsumeError, Delivery, Destination, Incoming, Messages,
    OutgoingMessage, PublishError, MESSAGE_ID_HEADER,
};
use crate::brokers::BrokerOptions;
use crate::subscription::{valid_nats_name, valid_subject, Source};

/// How long the broker waits for an acknowledgement before redelivering; the subscription
/// pushes it back every [`progress_interval`](crate::SubscriptionOptions::progress_interval)
/// while a delivery takes long.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// How long one pull request waits for messages before the server ends it (and the next one
/// is sent).
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// A NATS connection with JetStream, kept up in the background by async-nats (reconnecting with
/// [`BrokerOptions::reconnect`] back-off, forever).
///
/// - Publish: JetStream publish, resolved on the stream's `PubAck`. The message id goes in
///   [`MESSAGE_ID_HEADER`], the content type in `content-type`, the deduplication id in
///   `Nats-Msg-Id` (a copy within the stream's duplicate window is acknowledged as
///   [`Confirmation::duplicate`] and not stored again). A subject that no stream covers is
///   [`PublishError::Unroutable`].
/// - Consume: the stream is created when missing (`subjects = [subject]`); a durable pull
///   consumer with explicit acks, [`ACK_WAIT`], unlimited redeliveries and
///   `max_ack_pending` = the prefetch, created when missing (an existing one keeps its
///   settings). The dead-letter subject must be covered by a stream; when none covers it, a
///   stream `DLQ_<subject with . as _>` is created for it.
pub struct NatsBroker {
    name: String,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    metrics: Arc<BrokerMetrics>,
    /// Counts lost connections: a publish waiting for its acknowledgement when the
    /// connection goes fails at once rather than at the acknowledgement timeout.
    disconnects: tokio::sync::watch::Receiver<u64>,
}

impl NatsBroker {
    /// Start connecting to `url` (`nats://host:port`, several separated by commas) in the
    /// background, and wait until connected or [`BrokerOptions::connect_timeout`] passed: the
    /// broker is returned either way, reconnecting in the background while down.
    pub async fn connect(name: &str, url: &str, options: &BrokerOptions) -> Result<NatsBroker, String> {
        let servers = url
            .split(',')
            .map(|s| s.trim().parse::<async_nats::ServerAddr>().map_err(|e| format!("{s:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let reconnect = options.reconnect;
        let metrics = Arc::new(BrokerMetrics::default());
        let (counted, broker) = (metrics.clone(), name.to_owned());
        let connections = Arc::new(AtomicU64::new(0));
        let (lost, disconnects) = tokio::sync::watch::channel(0u64);
        let lost = Arc::new(lost);
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let (counted, broker, connections) = (counted.clone(), broker.clone(), connections.clone());
                let lost = lost.clone();
                async move {
                    match event {
                        async_nats::Event::Connected if connections.fetch_add(1, Ordering::Relaxed) > 0 => {
                            counted.connected_again();
                            tracing::info!(event = "broker", %broker, state = "connected", "reconnected");
                        }
                        async_nats::Event::Disconnected => {
                            lost.send_modify(|n| *n += 1);
                            tracing::warn!(event = "broker", %broker, state = "reconnecting", "connection lost; reconnecting");
                        }
                        _ => {}
                    }
                }
            })
            .name(format!("gateway:{name}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(options.connect_timeout)
            .reconnect_delay_callback(move |attempts| {
                reconnect.delay(u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX))
            })
            .connect(servers)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        while client.connection_state() != State::Connected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if client.connection_state() == State::Connected {
            tracing::info!(event = "broker", broker = %name, state = "connected", "connected");
        } else {
            let timeout = options.connect_timeout;
            tracing::warn!(broker = %name, ?timeout, "not connected in time; retrying in the background");
        }
        let jetstream = jetstream::new(client.clone());
        Ok(NatsBroker { name: name.to_owned(), client, jetstream, metrics, disconnects })
    }

    async fn publish_inner(&self, message: OutgoingMessage) -> Result<Confirmation, PublishError> {
        let Destination::Nats { subject } = &message.destination else {
            return Err(PublishError::InvalidMessage(format!("{} is not a NATS destination", message.destination)));
        };
        if !valid_subject(subject, false) {
            return Err(PublishError::InvalidMessage(format!("{subject:?} is not a NATS subject without wildcards")));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in message.header_list(NATS_MESSAGE_ID.as_ref())? {
            let name: HeaderName =
                name.parse().map_err(|_| PublishError::InvalidMessage(format!("header name {name:?}")))?;
            let value: HeaderValue =
                value.parse().map_err(|_| PublishError::InvalidMessage(format!("header {name} value")))?;
            headers.append(name, value);
        }
        let state = self.state();
        if !state.is_connected() {
            return Err(PublishError::Unavailable(state));
        }
        let size = message.body.len();
        // Watched from before the send: a connection lost after it, before the stream's
        // acknowledgement, fails the publish now (it may or may not have been stored: the
        // caller retries, with the deduplication id if it cares).
        let mut disconnects = self.disconnects.clone();
        disconnects.mark_unchanged();
        let publish = PublishMessage::build().payload(message.body).headers(headers);
        let ack =
            self.jetstream.send_publish(subject.clone(), publish).await.map_err(|e| self.publish_error(e, size))?;
        let ack = std::future::IntoFuture::into_future(ack);
        tokio::pin!(ack);
        let ack = loop {
            tokio::select! {
                // An acknowledgement that is there wins over a loss seen at the same time.
                biased;
                ack = &mut ack => break ack.map_err(|e| self.publish_error(e, size))?,
                Ok(()) = disconnects.changed() => {
                    // Events arrive on their own task: a late one about a connection that is
                    // already back says nothing about this publish.
                    if self.client.connection_state() != State::Connected {
                        return Err(PublishError::Connection(
                            "the connection was lost before the acknowledgement".into(),
                        ));
                    }
                }
            }
        };
        Ok(Confirmation { message_id: message.message_id, duplicate: ack.duplicate, sequence: Some(ack.sequence) })
    }

    fn publish_error(&self, e: jetstream::context::PublishError, size: usize) -> PublishError {
        match e.kind() {
            PublishErrorKind::StreamNotFound => {
                PublishError::Unroutable("no JetStream stream covers the subject".into())
            }
            PublishErrorKind::TimedOut => PublishError::Timeout,
            PublishErrorKind::BrokenPipe => PublishError::Connection(e.to_string()),
            PublishErrorKind::MaxPayloadExceeded => {
                PublishError::TooLarge { size, max: self.client.server_info().max_payload }
            }
            _ if self.client.connection_state() != State::Connected => PublishError::Connection(e.to_string()),
            _ => PublishError::Rejected(e.to_string()),
        }
    }

    fn connected(&self) -> Result<(), ConsumeError> {
        match self.state() {
            BrokerState::Connected => Ok(()),
            state => Err(ConsumeError(format!("not connected ({state})"))),
        }
    }

    async fn consume_inner(&self, source: &Source, prefetch: u16) -> Result<Messages, ConsumeError> {
        let Source::Nats { stream, subject, durable, dead_letter } = source else {
            return Err(ConsumeError(format!("{} is not a NATS source", source.label())));
        };
        self.connected()?;
        let config = jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            ..jetstream::stream::Config::default()
        };
        let stream_handle = self
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| ConsumeError::new(&format!("stream {stream:?}"), e))?;
        if let Some(dead) = dead_letter {
            self.ensure_dead_letter_stream(dead).await?;
        }
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: subject.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: -1,
            max_ack_pending: i64::from(prefetch.max(1)),
            deliver_policy: DeliverPolicy::All,
            ..pull::Config::default()
        };
        let consumer = stream_handle
            .get_or_create_consumer(durable, config)
            .await
            .map_err(|e| ConsumeError::new(&format!("durable consumer {durable:?} on {stream:?}"), e))?;
        // Pull requests one after the other, each for up to `prefetch` messages (the server
        // holds a request while `max_ack_pending` is reached, and ends it after PULL_EXPIRES).
        // Not async-nats' `messages()` stream: it can miss that a request was already served
        // and then wait for a message that never comes.
        let batch = usize::from(prefetch.max(1));
        // An existing consumer keeps its own ack_wait: keep it alive by that.
        let ack_wait = Some(consumer.cached_info().config.ack_wait).filter(|w| !w.is_zero()).unwrap_or(ACK_WAIT);
        let messages =
            futures_util::stream::unfold(Pulls { consumer, current: None, served: false }, move |mut p| async move {
                loop {
                    let pull = match p.current.as_mut() {
                        Some(pull) => pull,
                        None => match p.consumer.batch().max_messages(batch).expires(PULL_EXPIRES).messages().await {
                            Ok(pull) => {
                                p.served = false;
                                p.current.insert(pull)
                            }
                            Err(e) => return Some((Err(ConsumeError::new("pull", e)), p.failed())),
                        },
                    };
                    match pull.next().await {
                        Some(Ok(message)) => {
                            p.served = true;
                            return Some((Ok(incoming(message, ack_wait)), p));
                        }
                        Some(Err(e)) => return Some((Err(ConsumeError::new("pull", e)), p.failed())),
                        None => {
                            p.current = None;
                            // A request that ended empty: still connected, and the consumer still
                            // there? (Requests to a deleted consumer, or lost with a connection, only
                            // time out: without this the stream would never end.)
                            if !p.served {
                                if let Err(e) = p.consumer.info().await {
                                    return Some((Err(ConsumeError::new("consumer", e)), p.failed()));
                                }
                            }
                        }
                    }
                }
            });
        Ok(messages.boxed())
    }

    async fn ensure_dead_letter_stream(&self, subject: &str) -> Result<(), ConsumeError> {
        if self.jetstream.stream_by_subject(subject).await.is_ok() {
            return Ok(());
        }
        let name: String = format!("DLQ_{subject}").chars().map(|c| if c == '.' { '_' } else { c }).collect();
        if !valid_nats_name(&name) {
            return Err(ConsumeError(format!("no stream covers the dead-letter subject {subject:?}")));
        }
        let config =
            jetstream::stream::Config { name: name.clone(), subjects: vec![subject.to_owned()], ..Default::default() };
        self.jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| ConsumeError::new(&format!("dead-letter stream {name:?} for {subject:?}"), e))?;
        tracing::info!(broker = %self.name, stream = %name, %subject, "created a stream for the dead letters");
        Ok(())
    }

    async fn backlog_inner(&self, source: &Source) -> Result<u64, ConsumeError> {
        let Source::Nats { stream, durable, .. } = source else {
            return Err(ConsumeError(format!("{} is not a NATS source", source.label())));
        };
        self.connected()?;
        let mut consumer: jetstream::consumer::Consumer<pull::Config> = self
            .jetstream
            .get_consumer_from_stream(durable.as_str(), stream.as_str())
            .await
            .map_err(|e| ConsumeError::new("consumer info", e))?;
        let info = consumer.info().await.map_err(|e| ConsumeError::new("consumer info", e))?;
        Ok(info.num_pending)
    }
}

impl Broker for NatsBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Nats
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<Confirmation, PublishError>> {
        async move {
            let guard = self.metrics.start();
            guard.finish(self.publish_inner(message).await)
        }
        .boxed()
    }

    fn state(&self) -> BrokerState {
        match self.client.connection_state() {
            State::Connected => BrokerState::Connected,
            State::Pending => BrokerState::Connecting,
            State::Disconnected => BrokerState::Reconnecting,
        }
    }

    fn metrics(&self) -> &BrokerMetrics {
        &self.metrics
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

impl Drop for NatsBroker {
    fn drop(&mut self) {
        // Close the connection now rather than when the last clone of the client goes.
        let client = self.client.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.drain().await;
            });
        }
    }
}

fn incoming(message: jetstream::Message, ack_wait: Duration) -> Incoming {
    let redelivered = message.info().map(|info| info.delivered > 1).unwrap_or(false);
    let mut delivery = Delivery {
        body: message.message.payload.clone(),
        key: None,
        message_id: None,
        content_type: None,
        headers: Vec::new(),
        attempt: 1,
        redelivered,
    };
    let mut dedup_id = None;
    if let Some(headers) = &message.message.headers {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            for value in values {
                let value = value.as_str().to_owned();
                if name.eq_ignore_ascii_case(MESSAGE_ID_HEADER) {
                    delivery.message_id = Some(value);
                } else if name.eq_ignore_ascii_case("content-type") {
                    delivery.content_type = Some(value);
                } else if name.eq_ignore_ascii_case(NATS_MESSAGE_ID.as_ref()) {
                    dedup_id = Some(value);
                } else if !name.starts_with("Nats-") {
                    delivery.headers.push((name.to_owned(), value));
                }
            }
        }
    }
    if delivery.message_id.is_none() {
        delivery.message_id = dedup_id;
    }
    Incoming { delivery, acker: Box::new(NatsAcker { message, ack_wait }) }
}

/// The state of the pull loop of one consumer.
struct Pulls {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    current: Option<pull::Batch>,
    /// The current request has delivered at least one message.
    served: bool,
}

impl Pulls {
    fn failed(mut self) -> Pulls {
        self.current = None;
        self
    }
}

struct NatsAcker {
    message: jetstream::Message,
    ack_wait: Duration,
}

impl Acker for NatsAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        async move { self.message.double_ack().await.map_err(|e| ConsumeError::new("ack", e)) }.boxed()
    }

    fn requeue(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        async move { self.message.ack_with(AckKind::Nak(None)).await.map_err(|e| ConsumeError::new("nak", e)) }.boxed()
    }

    fn reject(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        async move { self.message.ack_with(AckKind::Term).await.map_err(|e| ConsumeError::new("term", e)) }.boxed()
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        async move { self.message.ack_with(AckKind::Progress).await.map_err(|e| ConsumeError::new("progress", e)) }
            .boxed()
    }

    fn ack_deadline(&self) -> Option<Duration> {
        Some(self.ack_wait)
    }
}
