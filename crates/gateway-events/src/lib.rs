//! Message brokers for the gateway: every `[brokers.NAME]` as a connected [`Broker`], publishing
//! that resolves only once the broker has stored the message, and `[[subscriptions]]` that
//! deliver queued messages to a callback with retries and dead letters.
//!
//! This crate owns the broker side; the gateway owns HTTP. It speaks AMQP 0-9-1 to RabbitMQ
//! ([`AmqpBroker`], lapin), NATS JetStream ([`NatsBroker`], async-nats) and Kafka
//! ([`KafkaBroker`], rdkafka: the reference client librdkafka, built from the crate's bundled
//! sources with a C compiler and make, so nothing needs installing; it has the idempotent
//! producer and consumer groups with rebalance callbacks, which the pure-Rust clients lack).
//!
//! - [`Brokers::build`] connects every broker at start (each waits at most
//!   [`BrokerOptions::connect_timeout`], then keeps trying in the background), reconnects with
//!   back-off when a connection drops, and on reload keeps each broker whose definition did not
//!   change. [`Broker::state`] and [`Broker::metrics`] feed `/readyz`, `/admin` and `/metrics`.
//! - [`Broker::publish`] sends a persistent [`OutgoingMessage`] and resolves with a
//!   [`Confirmation`] only after the broker confirmed it (AMQP publisher confirm, with
//!   `mandatory` so that an unroutable message is an error; JetStream `PubAck`; the Kafka
//!   delivery report of an idempotent producer with `acks=all`). A broker that is
//!   down fails at once; the caller bounds the wait for the confirmation with a timeout.
//! - [`SubscriptionRunner`] consumes with a prefetch of [`SubscriptionOptions::concurrency`]
//!   (1 keeps the order), calls the [`DeliverFn`] for each message, acknowledges after `Ok`,
//!   retries an `Err` with exponential back-off up to `max_attempts`, then publishes the
//!   message with its failure history to `dead_letter` and acknowledges the original. Delivery
//!   is at least once: a gateway that dies mid-delivery leaves the message unacknowledged, and
//!   the broker delivers it again.
//!
//! ```no_run
//! # // Run with: cargo test -p gateway-events --doc (compiled only: it needs a RabbitMQ)
//! # async fn f(config: gateway_config::Config) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use gateway_events::{
//!     Brokers, BrokerOptions, DeliverFn, Destination, OutgoingMessage, SubscriptionOptions, SubscriptionRunner,
//! };
//!
//! let brokers = Brokers::build(&config.brokers, None, &BrokerOptions::default()).await?;
//! let events = brokers.get("events").expect("configured");
//!
//! // A publish route: 202 once confirmed, 503 otherwise.
//! let message = OutgoingMessage {
//!     destination: Destination::Amqp { exchange: "orders".into(), routing_key: "order.created".into() },
//!     body: bytes::Bytes::from_static(b"{\"id\": 42}"),
//!     message_id: "request-id".into(),
//!     content_type: Some("application/json".into()),
//!     headers: vec![("traceparent".into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into())],
//!     dedup_id: None,
//! };
//! let confirmed = tokio::time::timeout(std::time::Duration::from_secs(5), events.publish(message)).await??;
//! assert_eq!(confirmed.message_id, "request-id");
//!
//! // A subscription: the callback answers Ok once the receiver took the message.
//! let deliver: DeliverFn = Arc::new(|delivery| Box::pin(async move {
//!     println!("{} bytes, attempt {}", delivery.body.len(), delivery.attempt);
//!     Ok(())
//! }));
//! let options = SubscriptionOptions::default();
//! let runner = SubscriptionRunner::start(&config.subscriptions[0], events.clone(), deliver, options)?;
//! // ... on reload, keep it if the definition is unchanged; else:
//! runner.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod amqp;
mod backoff;
mod broker;
mod brokers;
mod kafka;
mod nats;
mod subscription;

pub use amqp::AmqpBroker;
pub use backoff::Backoff;
pub use broker::{
    Acker, Broker, BrokerMetrics, BrokerState, Confirmation, ConsumeError, Delivery, Destination, Incoming, Messages,
    OutgoingMessage, PublishError, AMQP_DEDUP_HEADER, ATTEMPTS_HEADER, KAFKA_DEDUP_HEADER, LAST_ERROR_HEADER,
    MAX_ERROR_HEADER_LEN, MESSAGE_ID_HEADER, SOURCE_HEADER,
};
pub use brokers::{check, connect, BrokerOptions, Brokers, BuildError};
pub use kafka::{KafkaBroker, SESSION_TIMEOUT};
pub use nats::{NatsBroker, ACK_WAIT};
pub use subscription::{
    DeliverFn, Source, SubscriptionError, SubscriptionMetrics, SubscriptionOptions, SubscriptionRunner, MAX_CONCURRENCY,
};
