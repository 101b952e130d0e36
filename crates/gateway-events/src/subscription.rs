//! `[[subscriptions]]`: consume from a broker, hand each message to a callback, retry with
//! back-off, dead-letter after `max_attempts`, acknowledge only when done.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use gateway_config::schema::{BrokerKind, Subscription};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::backoff::Backoff;
use crate::broker::{
    check_header, truncate, Acker, Broker, ConsumeError, Delivery, Destination, Incoming, OutgoingMessage,
    ATTEMPTS_HEADER, LAST_ERROR_HEADER, MAX_ERROR_HEADER_LEN, SOURCE_HEADER,
};

/// The callback a subscription delivers to: `Ok` means the receiver took the message (the
/// gateway's is a POST through the proxy that returns `Ok` on a 2xx answer); `Err` carries what
/// went wrong, for the logs and the dead letter's [`LAST_ERROR_HEADER`].
pub type DeliverFn = Arc<dyn Fn(Delivery) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The most deliveries one subscription runs at once (AMQP prefetch counts are 16-bit).
pub const MAX_CONCURRENCY: usize = 1000;

/// Where a subscription consumes from: the broker side of one `[[subscriptions]]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// An AMQP queue.
    Amqp {
        /// The queue, declared durable.
        queue: String,
        /// `(exchange, routing_key)`: the exchange is declared as a durable topic exchange and
        /// the queue bound to it with this key.
        bind: Option<(String, String)>,
        /// The dead-letter queue, declared durable; dead letters go through the default
        /// exchange with the queue's name as routing key.
        dead_letter: Option<String>,
    },
    /// A JetStream durable pull consumer.
    Nats {
        /// The stream; created (file storage, server defaults, `subjects = [subject]`) when
        /// missing.
        stream: String,
        /// The consumer's filter subject (wildcards allowed).
        subject: String,
        /// The durable consumer's name; created when missing (explicit ack, `ack_wait` 30 s,
        /// `max_ack_pending` = the concurrency, unlimited redeliveries).
        durable: String,
        /// The dead-letter subject, published with JetStream: a stream must cover it (if none
        /// does, a stream `DLQ_<subject with . as _>` is created for it).
        dead_letter: Option<String>,
    },
    /// A Kafka consumer group on one topic.
    Kafka {
        /// The topic; created with the broker's default partitions and replication when missing.
        topic: String,
        /// The consumer group (`group.id`): its committed offsets are where consuming resumes,
        /// and the topic's partitions are shared among its members (several gateways).
        group: String,
        /// The dead-letter topic, created like `topic` when missing; dead letters keep their key.
        dead_letter: Option<String>,
    },
}

impl Source {
    /// The broker side of `def`, checked for a broker of `kind`.
    pub fn from_config(def: &Subscription, kind: BrokerKind) -> Result<Source, SubscriptionError> {
        let invalid = |m: String| Err(SubscriptionError::Invalid(m));
        let foreign = |fields: &[(&str, bool)], kind: &str| {
            fields.iter().find(|(_, set)| *set).map(|(name, _)| {
                SubscriptionError::Invalid(format!("`{name}` does not apply to a subscription on {kind} broker"))
            })
        };
        match kind {
            BrokerKind::Kafka => {
                let fields = [
                    ("queue", def.queue.is_some()),
                    ("bind", def.bind.is_some()),
                    ("stream", def.stream.is_some()),
                    ("subject", def.subject.is_some()),
                    ("durable", def.durable.is_some()),
                ];
                if let Some(e) = foreign(&fields, "a Kafka") {
                    return Err(e);
                }
                let (Some(topic), Some(group)) = (&def.topic, &def.group) else {
                    return invalid("a Kafka subscription needs `topic` and `group`".into());
                };
                if topic.is_empty() || group.is_empty() {
                    return invalid("`topic` and `group` must not be empty".into());
                }
                if def.dead_letter.as_ref() == Some(topic) {
                    return invalid("`dead_letter` is the subscription's own topic".into());
                }
                Ok(Source::Kafka { topic: topic.clone(), group: group.clone(), dead_letter: def.dead_letter.clone() })
            }
            BrokerKind::Amqp => {
                let fields = [
                    ("stream", def.stream.is_some()),
                    ("subject", def.subject.is_some()),
                    ("durable", def.durable.is_some()),
                    ("topic", def.topic.is_some()),
                    ("group", def.group.is_some()),
                ];
                if let Some(e) = foreign(&fields, "an AMQP") {
                    return Err(e);
                }
                let Some(queue) = def.queue.clone() else {
                    return invalid("an AMQP subscription needs `queue`".into());
                };
                let mut names = vec![("queue", queue.as_str())];
                if let Some(b) = &def.bind {
                    names
                        .extend([("bind.exchange", b.exchange.as_str()), ("bind.routing_key", b.routing_key.as_str())]);
                }
                if let Some(d) = &def.dead_letter {
                    names.push(("dead_letter", d.as_str()));
                }
                for (field, name) in names {
                    if name.len() > 255 {
                        return invalid(format!("`{field}` is longer than AMQP's 255 bytes"));
                    }
                }
                if queue.is_empty() {
                    return invalid("`queue` is empty".into());
                }
                if def.dead_letter.as_deref() == Some(queue.as_str()) {
                    return invalid("`dead_letter` is the subscription's own queue".into());
                }
                Ok(Source::Amqp {
                    queue,
                    bind: def.bind.as_ref().map(|b| (b.exchange.clone(), b.routing_key.clone())),
                    dead_letter: def.dead_letter.clone(),
                })
            }
            BrokerKind::Nats => {
                let fields = [
                    ("queue", def.queue.is_some()),
                    ("bind", def.bind.is_some()),
                    ("topic", def.topic.is_some()),
                    ("group", def.group.is_some()),
                ];
                if let Some(e) = foreign(&fields, "a NATS") {
                    return Err(e);
                }
                let (Some(stream), Some(subject), Some(durable)) = (&def.stream, &def.subject, &def.durable) else {
                    return invalid("a NATS subscription needs `stream`, `subject` and `durable`".into());
                };
                for (field, name) in [("stream", stream), ("durable", durable)] {
                    if !valid_nats_name(name) {
                        return invalid(format!("`{field}` {name:?} is not a valid JetStream name"));
                    }
                }
                if !valid_subject(subject, true) {
                    return invalid(format!("`subject` {subject:?} is not a valid NATS subject"));
                }
                if let Some(dead) = &def.dead_letter {
                    if !valid_subject(dead, false) {
                        return invalid(format!("`dead_letter` {dead:?} is not a NATS subject without wildcards"));
                    }
                    if subject_matches(subject, dead) {
                        return invalid(format!(
                            "`dead_letter` {dead:?} matches `subject` {subject:?}: dead letters would come back"
                        ));
                    }
                }
                Ok(Source::Nats {
                    stream: stream.clone(),
                    subject: subject.clone(),
                    durable: durable.clone(),
                    dead_letter: def.dead_letter.clone(),
                })
            }
        }
    }

    /// A short name for logs and metric labels: the queue, `stream/durable` or `topic/group`.
    pub fn label(&self) -> String {
        match self {
            Source::Amqp { queue, .. } => queue.clone(),
            Source::Nats { stream, durable, .. } => format!("{stream}/{durable}"),
            Source::Kafka { topic, group, .. } => format!("{topic}/{group}"),
        }
    }

    /// Where dead letters go, if anywhere.
    pub fn dead_letter(&self) -> Option<Destination> {
        match self {
            Source::Amqp { dead_letter, .. } => dead_letter
                .as_ref()
                .map(|queue| Destination::Amqp { exchange: String::new(), routing_key: queue.clone() }),
            Source::Nats { dead_letter, .. } => {
                dead_letter.as_ref().map(|subject| Destination::Nats { subject: subject.clone() })
            }
            // The key is the original record's: set by `dead_letter_message`.
            Source::Kafka { dead_letter, .. } => {
                dead_letter.as_ref().map(|topic| Destination::Kafka { topic: topic.clone(), key: None })
            }
        }
    }

    /// The broker kind this source belongs to.
    pub fn kind(&self) -> BrokerKind {
        match self {
            Source::Amqp { .. } => BrokerKind::Amqp,
            Source::Nats { .. } => BrokerKind::Nats,
            Source::Kafka { .. } => BrokerKind::Kafka,
        }
    }
}

/// JetStream stream and consumer names: no whitespace, `.`, `*`, `>`, path separators.
pub(crate) fn valid_nats_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

/// A NATS subject: non-empty dot-separated tokens without whitespace; `*` and a final `>` only
/// as whole tokens, and only when `wildcards` are allowed.
pub(crate) fn valid_subject(subject: &str, wildcards: bool) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    !subject.is_empty()
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && t.chars().all(|c| !c.is_whitespace() && !c.is_control())
                && match *t {
                    "*" => wildcards,
                    ">" => wildcards && i == tokens.len() - 1,
                    t => !t.contains(['*', '>']),
                }
        })
}

/// Whether the concrete `subject` matches `pattern` (`*` one token, final `>` the rest).
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A subscription that cannot start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscriptionError {
    /// The definition does not fit its broker (missing or foreign fields, bad names).
    #[error("{0}")]
    Invalid(String),
    /// The subscription names a broker of another kind than the one it was given.
    #[error("the subscription is for a {wanted:?} broker, the broker is {actual:?}")]
    WrongBroker {
        /// What the definition needs.
        wanted: BrokerKind,
        /// What the broker is.
        actual: BrokerKind,
    },
}

/// How a subscription runs; [`Default`] is what `[[subscriptions]]` gets without options.
#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    /// Deliveries at once, and the broker prefetch (AMQP `basic.qos`; JetStream
    /// `max_ack_pending`), so a slow receiver slows consumption instead of filling memory.
    /// 1 (the default) delivers in order. Clamped to `1..=`[`MAX_CONCURRENCY`].
    pub concurrency: usize,
    /// Back-off between the attempts of one message.
    pub retry: Backoff,
    /// Back-off between attempts to (re)create the consumer, and to publish a dead letter.
    pub resubscribe: Backoff,
    /// How often to tell the broker that a message is still being worked on, where the broker
    /// redelivers unsettled messages after a deadline (JetStream `+WPI`); at least three times
    /// per deadline ([`Acker::ack_deadline`]) whatever this says.
    pub progress_interval: Duration,
    /// Bound on one dead-letter publish (waiting for the broker's confirmation).
    pub publish_timeout: Duration,
    /// How often to ask the broker for the backlog ([`SubscriptionMetrics::backlog`]); `None`
    /// never asks.
    pub backlog_interval: Option<Duration>,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        SubscriptionOptions {
            concurrency: 1,
            retry: Backoff::RETRY,
            resubscribe: Backoff::RECONNECT,
            progress_interval: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(10),
            backlog_interval: Some(Duration::from_secs(15)),
        }
    }
}

/// Counters of one subscription (monotonic since it started; a runner kept across a reload
/// keeps them).
#[derive(Debug)]
pub struct SubscriptionMetrics {
    received: AtomicU64,
    delivered: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    rejected: AtomicU64,
    backlog: AtomicI64,
    partitions: Mutex<Vec<(i32, u64)>>,
    consuming: AtomicBool,
}

impl Default for SubscriptionMetrics {
    fn default() -> Self {
        SubscriptionMetrics {
            received: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            backlog: AtomicI64::new(-1),
            partitions: Mutex::new(Vec::new()),
            consuming: AtomicBool::new(false),
        }
    }
}

impl SubscriptionMetrics {
    /// Messages received from the broker (a redelivery counts again).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Messages the callback took (`Ok`), then acknowledged.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Attempts after a failed one.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Messages published to the dead letter after `max_attempts` failures (then acknowledged).
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Messages refused after `max_attempts` failures on a subscription without `dead_letter`
    /// (see [`Acker::reject`]).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Messages waiting in the broker, as last reported ([`Broker::backlog`]); `None` before the
    /// first report or while the broker cannot tell.
    pub fn backlog(&self) -> Option<u64> {
        u64::try_from(self.backlog.load(Ordering::Relaxed)).ok()
    }

    /// The backlog of each partition this gateway consumes, as last reported
    /// ([`Broker::backlog_by_partition`]: Kafka's consumer lag); empty for brokers without
    /// partitions.
    pub fn backlog_by_partition(&self) -> Vec<(i32, u64)> {
        self.partitions.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether a consumer is attached now (false while the broker is unreachable).
    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the tasks of one runner share.
struct Ctx {
    source: Source,
    broker: Arc<dyn Broker>,
    deliver: DeliverFn,
    max_attempts: u32,
    options: SubscriptionOptions,
    metrics: Arc<SubscriptionMetrics>,
}

/// One running `[[subscriptions]]` entry: consumes from its broker (re-creating the consumer
/// with back-off whenever it is lost), hands each message to the callback, retries a failed
/// one with [`SubscriptionOptions::retry`] back-off up to `max_attempts` times, then publishes
/// it to `dead_letter` with [`ATTEMPTS_HEADER`], [`LAST_ERROR_HEADER`] and [`SOURCE_HEADER`]
/// (waiting for the broker's confirmation) or, without `dead_letter`, [rejects](Acker::reject)
/// it. A message is acknowledged only after the callback's `Ok` or the dead letter's
/// confirmation: delivery is at least once, and a process that dies mid-delivery leaves the
/// message to be redelivered.
///
/// Dropping the runner stops it at once (deliveries under way are abandoned, and redelivered
/// by the broker); [`shutdown`](Self::shutdown) stops it cleanly.
pub struct SubscriptionRunner {
    source: Source,
    metrics: Arc<SubscriptionMetrics>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SubscriptionRunner {
    /// Check `def` against `broker` and start consuming in the background (spawned on the
    /// current tokio runtime, which must outlive the runner).
    pub fn start(
        def: &Subscription,
        broker: Arc<dyn Broker>,
        deliver: DeliverFn,
        options: SubscriptionOptions,
    ) -> Result<SubscriptionRunner, SubscriptionError> {
        let source = Source::from_config(def, broker.kind())?;
        Ok(SubscriptionRunner::with_source(source, def.max_attempts, broker, deliver, options))
    }

    /// Start consuming `source` (already checked) from `broker`.
    pub fn with_source(
        source: Source,
        max_attempts: u32,
        broker: Arc<dyn Broker>,
        deliver: DeliverFn,
        mut options: SubscriptionOptions,
    ) -> SubscriptionRunner {
        options.concurrency = options.concurrency.clamp(1, MAX_CONCURRENCY);
        let metrics = Arc::new(SubscriptionMetrics::default());
        let (stop, stopped) = watch::channel(false);
        let backlog_interval = options.backlog_interval;
        let ctx = Arc::new(Ctx {
            source: source.clone(),
            broker,
            deliver,
            max_attempts: max_attempts.max(1),
            options,
            metrics: metrics.clone(),
        });
        let mut tasks = vec![tokio::spawn(run(ctx.clone(), stopped))];
        if let Some(every) = backlog_interval {
            tasks.push(tokio::spawn(watch_backlog(ctx, every)));
        }
        SubscriptionRunner { source, metrics, stop, tasks }
    }

    /// Where this runner consumes from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// This subscription's counters.
    pub fn metrics(&self) -> &Arc<SubscriptionMetrics> {
        &self.metrics
    }

    /// Stop cleanly: take no new message, let the deliveries under way finish their current
    /// attempt (acknowledged on `Ok`; given back to the broker for redelivery on `Err` instead
    /// of retrying), cancel the consumer, then return. Bound it with a timeout if the callback
    /// may hang; dropping the future abandons what is left (the broker redelivers it).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let mut tasks = std::mem::take(&mut self.tasks);
        if let Some(main) = tasks.first_mut() {
            let _ = main.await;
        }
        for task in tasks {
            task.abort();
        }
    }
}

impl Drop for SubscriptionRunner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Resolves once the runner is told to stop (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn is_stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

async fn run(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let label = ctx.source.label();
    let prefetch = u16::try_from(ctx.options.concurrency).unwrap_or(u16::MAX);
    let permits = Arc::new(Semaphore::new(ctx.options.concurrency));
    let mut deliveries = JoinSet::new();
    let mut failures = 0u32;
    'subscribe: while !is_stopped(&stop) {
        let consumed = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            consumed = ctx.broker.consume(&ctx.source, prefetch) => consumed,
        };
        let mut messages = match consumed {
            Ok(messages) => messages,
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(subscription = %label, error = %e, "cannot consume; retrying with back-off");
                } else {
                    tracing::debug!(subscription = %label, error = %e, "cannot consume yet");
                }
                if !sleep_or_stop(ctx.options.resubscribe.delay(failures), &mut stop).await {
                    break;
                }
                failures = failures.saturating_add(1);
                continue;
            }
        };
        tracing::info!(subscription = %label, "consuming");
        ctx.metrics.consuming.store(true, Ordering::Relaxed);
        failures = 0;
        loop {
            // A permit first, then a message: never more messages taken than deliveries allowed.
            let permit = tokio::select! {
                biased;
                _ = stopped(&mut stop) => break 'subscribe,
                permit = permits.clone().acquire_owned() => permit,
            };
            let Ok(permit) = permit else { break 'subscribe };
            let next = tokio::select! {
                biased;
                _ = stopped(&mut stop) => break 'subscribe,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(incoming)) => {
                    SubscriptionMetrics::add(&ctx.metrics.received);
                    deliveries.spawn(handle(ctx.clone(), incoming, permit, stop.clone()));
                }
                Some(Err(e)) => {
                    tracing::warn!(subscription = %label, error = %e, "consumer lost; consuming again");
                    break;
                }
                None => {
                    tracing::warn!(subscription = %label, "consumer ended; consuming again");
                    break;
                }
            }
            while deliveries.try_join_next().is_some() {}
        }
        ctx.metrics.consuming.store(false, Ordering::Relaxed);
        drop(messages);
        if !sleep_or_stop(ctx.options.resubscribe.delay(failures), &mut stop).await {
            break;
        }
        failures = failures.saturating_add(1);
    }
    ctx.metrics.consuming.store(false, Ordering::Relaxed);
    // The consumer is dropped (cancelled) by now; the deliveries under way finish and settle.
    while deliveries.join_next().await.is_some() {}
    tracing::info!(subscription = %label, "stopped");
}

/// Sleep `delay`; false if told to stop first.
async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        biased;
        _ = stopped(stop) => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Run `work` while telling the broker, if it has an ack deadline, that the message is still
/// being worked on: every `every`, and at least three times per deadline.
async fn keep_alive<T>(acker: &dyn Acker, every: Duration, work: impl Future<Output = T>) -> T {
    let Some(deadline) = acker.ack_deadline() else { return work.await };
    let every = every.min(deadline / 3).max(Duration::from_millis(10));
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticks.tick() => {
                if let Err(e) = acker.in_progress().await {
                    tracing::debug!(error = %e, "could not extend the ack deadline");
                }
            }
        }
    }
}

/// Settle with the broker; a failure (connection lost) means the broker redelivers the message.
async fn settle(label: &str, what: &str, result: Result<(), ConsumeError>) {
    if let Err(e) = result {
        tracing::warn!(subscription = %label, error = %e, "{what} failed; the broker will redeliver the message");
    }
}

async fn handle(ctx: Arc<Ctx>, incoming: Incoming, _permit: OwnedSemaphorePermit, mut stop: watch::Receiver<bool>) {
    let Incoming { delivery, acker } = incoming;
    let acker = &*acker;
    let label = ctx.source.label();
    let every = ctx.options.progress_interval;
    let mut attempt = 0;
    let last_error = loop {
        attempt += 1;
        let mut this = delivery.clone();
        this.attempt = attempt;
        // A panicking callback is a failed attempt, not a message left unsettled (which would
        // hold a prefetch slot until the consumer goes).
        let panicked = || Err("the delivery callback panicked".to_owned());
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| (ctx.deliver)(this))) {
            Ok(work) => {
                keep_alive(acker, every, AssertUnwindSafe(work).catch_unwind()).await.unwrap_or_else(|_| panicked())
            }
            Err(_) => panicked(),
        };
        match result {
            Ok(()) => {
                SubscriptionMetrics::add(&ctx.metrics.delivered);
                settle(&label, "ack", acker.ack().await).await;
                return;
            }
            Err(error) if attempt >= ctx.max_attempts => break error,
            Err(error) => {
                tracing::debug!(subscription = %label, attempt, %error, "delivery failed");
                if is_stopped(&stop) {
                    settle(&label, "requeue", acker.requeue().await).await;
                    return;
                }
                let delay = ctx.options.retry.delay(attempt - 1);
                let slept = keep_alive(acker, every, sleep_or_stop(delay, &mut stop)).await;
                if !slept {
                    settle(&label, "requeue", acker.requeue().await).await;
                    return;
                }
                SubscriptionMetrics::add(&ctx.metrics.retried);
            }
        }
    };

    let Some(destination) = ctx.source.dead_letter() else {
        tracing::warn!(
            subscription = %label, attempts = attempt, error = %last_error,
            "delivery failed max_attempts times and there is no dead_letter: rejecting the message"
        );
        SubscriptionMetrics::add(&ctx.metrics.rejected);
        settle(&label, "reject", acker.reject().await).await;
        return;
    };
    let message = dead_letter_message(&delivery, destination, attempt, &last_error, &label);
    let mut failures = 0;
    loop {
        let publish = tokio::time::timeout(ctx.options.publish_timeout, ctx.broker.publish(message.clone()));
        let error = match keep_alive(acker, every, publish).await {
            Ok(Ok(_)) => {
                tracing::warn!(
                    subscription = %label, attempts = attempt, error = %last_error, dead_letter = %message.destination,
                    "delivery failed max_attempts times: dead-lettered"
                );
                SubscriptionMetrics::add(&ctx.metrics.dead_lettered);
                settle(&label, "ack", acker.ack().await).await;
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no confirmation in time".to_owned(),
        };
        tracing::warn!(subscription = %label, %error, "could not publish the dead letter; retrying");
        let slept = keep_alive(acker, every, sleep_or_stop(ctx.options.resubscribe.delay(failures), &mut stop)).await;
        if !slept {
            settle(&label, "requeue", acker.requeue().await).await;
            return;
        }
        failures += 1;
    }
}

/// The dead letter: the original body, id, content type and headers (those a broker accepts),
/// plus the failure history.
fn dead_letter_message(
    delivery: &Delivery,
    destination: Destination,
    attempts: u32,
    last_error: &str,
    label: &str,
) -> OutgoingMessage {
    let ours = [ATTEMPTS_HEADER, LAST_ERROR_HEADER, SOURCE_HEADER];
    let mut headers: Vec<(String, String)> = delivery
        .headers
        .iter()
        .filter(|(k, v)| !ours.iter().any(|o| k.eq_ignore_ascii_case(o)) && check_header(k, v).is_ok())
        .cloned()
        .collect();
    let error: String = truncate(last_error, MAX_ERROR_HEADER_LEN)
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    headers.push((ATTEMPTS_HEADER.to_owned(), attempts.to_string()));
    headers.push((LAST_ERROR_HEADER.to_owned(), error));
    headers.push((SOURCE_HEADER.to_owned(), label.to_owned()));
    let destination = match destination {
        Destination::Kafka { topic, key: None } => Destination::Kafka { topic, key: delivery.key.clone() },
        other => other,
    };
    OutgoingMessage {
        destination,
        body: delivery.body.clone(),
        message_id: delivery.message_id.clone().unwrap_or_default(),
        content_type: delivery.content_type.clone(),
        headers,
        dedup_id: None,
    }
}

/// Ask the broker for the backlog every `every`; every second until it first answers (the
/// consumer is being set up meanwhile), so that the metric is there soon after a start.
async fn watch_backlog(ctx: Arc<Ctx>, every: Duration) {
    loop {
        let partitions = ctx.broker.backlog_by_partition(&ctx.source).await.unwrap_or_default();
        let total = if partitions.is_empty() {
            ctx.broker.backlog(&ctx.source).await
        } else {
            Ok(partitions.iter().map(|(_, n)| n).sum())
        };
        let backlog = match total {
            Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
            Err(e) => {
                tracing::debug!(subscription = %ctx.source.label(), error = %e, "backlog unknown");
                -1
            }
        };
        ctx.metrics.backlog.store(backlog, Ordering::Relaxed);
        *ctx.metrics.partitions.lock().unwrap_or_else(PoisonError::into_inner) = partitions;
        let wait = if backlog < 0 { every.min(Duration::from_secs(1)) } else { every };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use gateway_config::schema::{Binding, DeliverTo};
    use serde_spanned::Spanned;

    fn def() -> Subscription {
        Subscription {
            broker: Spanned::new(0..0, "b".to_owned()),
            queue: None,
            bind: None,
            stream: None,
            subject: None,
            durable: None,
            topic: None,
            group: None,
            deliver_to: DeliverTo { service: Spanned::new(0..0, "s".to_owned()), path: "/".to_owned() },
            max_attempts: 5,
            concurrency: 1,
            dead_letter: None,
        }
    }

    #[test]
    fn amqp_sources() {
        let mut d = def();
        assert!(Source::from_config(&d, BrokerKind::Amqp).is_err());
        d.queue = Some("q".into());
        d.bind = Some(Binding { exchange: "orders".into(), routing_key: "order.*".into() });
        d.dead_letter = Some("q.dead".into());
        let s = Source::from_config(&d, BrokerKind::Amqp).unwrap();
        assert_eq!(s.label(), "q");
        assert_eq!(s.dead_letter(), Some(Destination::Amqp { exchange: String::new(), routing_key: "q.dead".into() }));
        d.stream = Some("S".into());
        assert!(Source::from_config(&d, BrokerKind::Amqp).unwrap_err().to_string().contains("`stream`"));
        assert!(Source::from_config(&d, BrokerKind::Kafka).unwrap_err().to_string().contains("`queue`"));
    }

    #[test]
    fn kafka_sources() {
        let mut d = def();
        d.topic = Some("orders".into());
        assert!(Source::from_config(&d, BrokerKind::Kafka).unwrap_err().to_string().contains("`group`"));
        d.group = Some("notifications".into());
        d.dead_letter = Some("orders.dead".into());
        let s = Source::from_config(&d, BrokerKind::Kafka).unwrap();
        assert_eq!(s.label(), "orders/notifications");
        assert_eq!(s.dead_letter(), Some(Destination::Kafka { topic: "orders.dead".into(), key: None }));
        d.dead_letter = Some("orders".into());
        assert!(Source::from_config(&d, BrokerKind::Kafka).unwrap_err().to_string().contains("own topic"));
    }

    #[test]
    fn nats_sources() {
        let mut d = def();
        d.stream = Some("ORDERS".into());
        d.subject = Some("orders.>".into());
        d.durable = Some("notifications".into());
        d.dead_letter = Some("dead.orders".into());
        let s = Source::from_config(&d, BrokerKind::Nats).unwrap();
        assert_eq!(s.label(), "ORDERS/notifications");
        d.dead_letter = Some("orders.dead".into());
        assert!(Source::from_config(&d, BrokerKind::Nats).unwrap_err().to_string().contains("would come back"));
        d.dead_letter = Some("dead.*".into());
        assert!(Source::from_config(&d, BrokerKind::Nats).is_err());
        d.dead_letter = None;
        d.durable = Some("a.b".into());
        assert!(Source::from_config(&d, BrokerKind::Nats).is_err());
    }

    #[test]
    fn subjects() {
        assert!(subject_matches("orders.>", "orders.a.b"));
        assert!(!subject_matches("orders.>", "orders"));
        assert!(subject_matches("orders.*", "orders.a"));
        assert!(!subject_matches("orders.*", "orders.a.b"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.c"));
        assert!(valid_subject("a.*.>", true));
        assert!(!valid_subject("a.>.b", true));
        assert!(!valid_subject("a..b", false));
        assert!(!valid_subject("a.*", false));
        assert!(!valid_subject("a b", false));
    }

    #[test]
    fn dead_letters_carry_the_history() {
        let delivery = Delivery {
            body: "x".into(),
            key: None,
            message_id: Some("id-1".into()),
            content_type: Some("application/json".into()),
            headers: vec![
                ("traceparent".into(), "00-1-2-01".into()),
                ("x-gateway-attempts".into(), "9".into()),
                ("bad name".into(), "v".into()),
            ],
            attempt: 3,
            redelivered: false,
        };
        let dest = Destination::Nats { subject: "dead".into() };
        let m = dead_letter_message(&delivery, dest, 3, "HTTP 500\r\nboom", "S/d");
        assert_eq!(m.message_id, "id-1");
        assert_eq!(
            m.headers,
            [
                ("traceparent".to_owned(), "00-1-2-01".to_owned()),
                ("x-gateway-attempts".to_owned(), "3".to_owned()),
                ("x-gateway-last-error".to_owned(), "HTTP 500  boom".to_owned()),
                ("x-gateway-source".to_owned(), "S/d".to_owned()),
            ]
        );
    }

    /// A broker that hands out what the test sends, and records what happens to it.
    mod fake {
        use super::*;
        use crate::broker::{BrokerMetrics, BrokerState, Confirmation, Messages, PublishError};
        use std::sync::Mutex;
        use tokio::sync::mpsc;

        pub type Log = Arc<Mutex<Vec<String>>>;

        pub struct FakeBroker {
            pub messages: Mutex<Option<mpsc::UnboundedReceiver<Incoming>>>,
            pub log: Log,
            pub metrics: BrokerMetrics,
        }

        impl Broker for FakeBroker {
            fn kind(&self) -> BrokerKind {
                BrokerKind::Nats
            }
            fn publish(&self, m: OutgoingMessage) -> BoxFuture<'_, Result<Confirmation, PublishError>> {
                let attempts = m.headers.iter().find(|(k, _)| k == ATTEMPTS_HEADER).map(|(_, v)| v.clone());
                self.log.lock().unwrap().push(format!("dead letter {} attempts={attempts:?}", m.destination));
                Box::pin(async move { Ok(Confirmation { message_id: m.message_id, duplicate: false, sequence: None }) })
            }
            fn state(&self) -> BrokerState {
                BrokerState::Connected
            }
            fn metrics(&self) -> &BrokerMetrics {
                &self.metrics
            }
            fn consume(&self, _: &Source, _: u16) -> BoxFuture<'_, Result<Messages, ConsumeError>> {
                let rx = self.messages.lock().unwrap().take();
                Box::pin(async move {
                    let rx = rx.ok_or_else(|| ConsumeError("consumed once".into()))?;
                    Ok(futures_util::stream::unfold(rx, |mut rx| async move { Some((Ok(rx.recv().await?), rx)) })
                        .boxed())
                })
            }
            fn backlog(&self, _: &Source) -> BoxFuture<'_, Result<u64, ConsumeError>> {
                Box::pin(async { Ok(0) })
            }
        }

        pub struct FakeAcker(pub Log, pub Option<Duration>);

        impl Acker for FakeAcker {
            fn ack(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
                self.0.lock().unwrap().push("ack".into());
                Box::pin(async { Ok(()) })
            }
            fn requeue(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
                self.0.lock().unwrap().push("requeue".into());
                Box::pin(async { Ok(()) })
            }
            fn reject(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
                self.0.lock().unwrap().push("reject".into());
                Box::pin(async { Ok(()) })
            }
            fn in_progress(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
                self.0.lock().unwrap().push("progress".into());
                Box::pin(async { Ok(()) })
            }
            fn ack_deadline(&self) -> Option<Duration> {
                self.1
            }
        }

        pub fn message(log: &Log, body: &'static str, deadline: Option<Duration>) -> Incoming {
            let delivery = Delivery {
                body: body.into(),
                key: None,
                message_id: Some("id".into()),
                content_type: None,
                headers: Vec::new(),
                attempt: 1,
                redelivered: false,
            };
            Incoming { delivery, acker: Box::new(FakeAcker(log.clone(), deadline)) }
        }

        pub fn broker() -> (Arc<FakeBroker>, mpsc::UnboundedSender<Incoming>, Log) {
            let (tx, rx) = mpsc::unbounded_channel();
            let log = Log::default();
            let broker =
                FakeBroker { messages: Mutex::new(Some(rx)), log: log.clone(), metrics: BrokerMetrics::default() };
            (Arc::new(broker), tx, log)
        }
    }

    fn nats_source(dead_letter: Option<&str>) -> Source {
        Source::Nats {
            stream: "S".into(),
            subject: "s.>".into(),
            durable: "d".into(),
            dead_letter: dead_letter.map(str::to_owned),
        }
    }

    /// A callback that fails every time, logging when (in ms since `start`) it was called.
    fn failing(log: &fake::Log, start: tokio::time::Instant) -> DeliverFn {
        let log = log.clone();
        Arc::new(move |d: Delivery| {
            let ms = start.elapsed().as_millis();
            log.lock().unwrap().push(format!("attempt {} at {ms}ms", d.attempt));
            Box::pin(async { Err("500".to_owned()) })
        })
    }

    async fn settled(log: &fake::Log, last: &str) {
        while !log.lock().unwrap().iter().any(|l| l == last) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_then_dead_letter_then_ack() {
        let (broker, tx, log) = fake::broker();
        let start = tokio::time::Instant::now();
        let options = SubscriptionOptions {
            retry: Backoff::new(Duration::from_millis(100), Duration::from_millis(250)),
            backlog_interval: None,
            ..SubscriptionOptions::default()
        };
        let runner =
            SubscriptionRunner::with_source(nats_source(Some("dead")), 4, broker, failing(&log, start), options);
        tx.send(fake::message(&log, "m", None)).unwrap();
        settled(&log, "ack").await;
        assert_eq!(
            *log.lock().unwrap(),
            [
                "attempt 1 at 0ms",
                "attempt 2 at 100ms",
                "attempt 3 at 300ms",
                "attempt 4 at 550ms",
                "dead letter subject \"dead\" attempts=Some(\"4\")",
                "ack"
            ]
        );
        let m = runner.metrics();
        assert_eq!((m.received(), m.retried(), m.dead_lettered(), m.delivered()), (1, 3, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn without_dead_letter_rejects_and_long_work_is_kept_alive() {
        let (broker, tx, log) = fake::broker();
        let start = tokio::time::Instant::now();
        let options = SubscriptionOptions {
            retry: Backoff::new(Duration::from_secs(4), Duration::from_secs(4)),
            backlog_interval: None,
            ..SubscriptionOptions::default()
        };
        let runner = SubscriptionRunner::with_source(nats_source(None), 2, broker, failing(&log, start), options);
        // A 9 s ack deadline: progress every 3 s while waiting 4 s between the attempts.
        tx.send(fake::message(&log, "m", Some(Duration::from_secs(9)))).unwrap();
        settled(&log, "reject").await;
        assert_eq!(*log.lock().unwrap(), ["attempt 1 at 0ms", "progress", "attempt 2 at 4000ms", "reject"]);
        assert_eq!(runner.metrics().rejected(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_in_the_middle_of_retries_gives_the_message_back() {
        let (broker, tx, log) = fake::broker();
        let start = tokio::time::Instant::now();
        let options = SubscriptionOptions {
            retry: Backoff::new(Duration::from_secs(5), Duration::from_secs(5)),
            backlog_interval: None,
            ..SubscriptionOptions::default()
        };
        let runner =
            SubscriptionRunner::with_source(nats_source(Some("dead")), 5, broker, failing(&log, start), options);
        tx.send(fake::message(&log, "m", None)).unwrap();
        settled(&log, "attempt 1 at 0ms").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        runner.shutdown().await;
        assert_eq!(*log.lock().unwrap(), ["attempt 1 at 0ms", "requeue"]);
        assert!(start.elapsed() < Duration::from_secs(2), "no waiting out the back-off: {:?}", start.elapsed());
    }
}
