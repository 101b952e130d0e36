//! Every `[brokers.NAME]` of a configuration, connected, and kept across reloads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_config::schema::{Broker as BrokerDef, BrokerKind};

use crate::amqp::AmqpBroker;
use crate::backoff::Backoff;
use crate::broker::Broker;
use crate::kafka::KafkaBroker;
use crate::nats::NatsBroker;

/// How brokers connect.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// How long [`Brokers::build`] waits for a new broker's first connection (each connection
    /// attempt is bounded by it too). A broker that is not up by then is kept, reconnecting in
    /// the background: the gateway starts, and its publish routes answer 503 meanwhile.
    pub connect_timeout: Duration,
    /// Back-off between connection attempts.
    pub reconnect: Backoff,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions { connect_timeout: Duration::from_secs(5), reconnect: Backoff::RECONNECT }
    }
}

/// A broker definition that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    /// `bootstrap` is required for Kafka.
    #[error("broker {name:?}: `bootstrap` is required")]
    MissingBootstrap {
        /// The broker's name.
        name: String,
    },
    /// `url` is required for AMQP and NATS.
    #[error("broker {name:?}: `url` is required")]
    MissingUrl {
        /// The broker's name.
        name: String,
    },
    /// The URL does not parse.
    #[error("broker {name:?}: invalid url: {reason}")]
    InvalidUrl {
        /// The broker's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

struct Entry {
    def: BrokerDef,
    broker: Arc<dyn Broker>,
}

/// The configured brokers by name. Cheap to share behind an `Arc`; a broker lives (and stays
/// connected) as long as a `Brokers` or a subscription holds it.
#[derive(Default)]
pub struct Brokers {
    entries: BTreeMap<String, Entry>,
}

impl Brokers {
    /// Connect every broker of `defs` (concurrently, each waiting at most
    /// [`BrokerOptions::connect_timeout`]), reusing from `previous` each broker whose definition
    /// did not change: its connection, channels, consumers and counters carry on. A broker that
    /// is left out is closed once nothing holds it any more.
    pub async fn build(
        defs: &BTreeMap<String, BrokerDef>,
        previous: Option<&Brokers>,
        options: &BrokerOptions,
    ) -> Result<Brokers, BuildError> {
        for (name, def) in defs {
            check(name, def)?;
        }
        let mut entries = BTreeMap::new();
        let mut new = Vec::new();
        for (name, def) in defs {
            match previous.and_then(|p| p.entries.get(name)).filter(|e| &e.def == def) {
                Some(kept) => {
                    entries.insert(name.clone(), Entry { def: def.clone(), broker: kept.broker.clone() });
                }
                None => new.push(async move { (name, def, connect(name, def, options).await) }),
            }
        }
        for (name, def, broker) in futures_util::future::join_all(new).await {
            entries.insert(name.clone(), Entry { def: def.clone(), broker: broker? });
        }
        Ok(Brokers { entries })
    }

    /// The broker named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Broker>> {
        self.entries.get(name).map(|e| &e.broker)
    }

    /// Every broker with its name, in name order (for `/readyz`, `/admin` and metrics).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Broker>)> {
        self.entries.iter().map(|(name, e)| (name.as_str(), &e.broker))
    }

    /// Whether there are no brokers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Check a definition without connecting: the URL (bootstrap servers) is there and parses.
pub fn check(name: &str, def: &BrokerDef) -> Result<(), BuildError> {
    let url = match def.kind {
        BrokerKind::Kafka if def.bootstrap.is_empty() => {
            return Err(BuildError::MissingBootstrap { name: name.to_owned() })
        }
        // librdkafka checks `host:port` itself, and keeps retrying names that do not resolve.
        BrokerKind::Kafka => return Ok(()),
        BrokerKind::Amqp | BrokerKind::Nats => {
            def.url.as_deref().ok_or_else(|| BuildError::MissingUrl { name: name.to_owned() })?
        }
    };
    let invalid = |reason: String| BuildError::InvalidUrl { name: name.to_owned(), reason };
    match def.kind {
        BrokerKind::Amqp => {
            url.parse::<lapin::uri::AMQPUri>().map_err(invalid)?;
        }
        _ => {
            for server in url.split(',') {
                server.trim().parse::<async_nats::ServerAddr>().map_err(|e| invalid(e.to_string()))?;
            }
        }
    }
    Ok(())
}

/// Connect one broker (see [`Brokers::build`]).
pub async fn connect(name: &str, def: &BrokerDef, options: &BrokerOptions) -> Result<Arc<dyn Broker>, BuildError> {
    check(name, def)?;
    let url = def.url.as_deref().unwrap_or_default();
    Ok(match def.kind {
        BrokerKind::Amqp => Arc::new(AmqpBroker::connect(name, url, options).await),
        BrokerKind::Nats => Arc::new(
            NatsBroker::connect(name, url, options)
                .await
                .map_err(|reason| BuildError::InvalidUrl { name: name.to_owned(), reason })?,
        ),
        BrokerKind::Kafka => Arc::new(
            KafkaBroker::connect(name, &def.bootstrap, def.session_timeout.map(|t| t.get()), options)
                .await
                .map_err(|reason| BuildError::InvalidUrl { name: name.to_owned(), reason })?,
        ),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn def(kind: BrokerKind, url: Option<&str>) -> BrokerDef {
        BrokerDef { kind, url: url.map(str::to_owned), bootstrap: Vec::new(), session_timeout: None }
    }

    #[test]
    fn checks_definitions() {
        assert!(check("a", &def(BrokerKind::Amqp, Some("amqp://127.0.0.1:5672/%2f"))).is_ok());
        assert!(check("n", &def(BrokerKind::Nats, Some("nats://127.0.0.1:4222"))).is_ok());
        assert!(matches!(check("a", &def(BrokerKind::Amqp, None)), Err(BuildError::MissingUrl { .. })));
        assert!(matches!(check("a", &def(BrokerKind::Amqp, Some("http://x"))), Err(BuildError::InvalidUrl { .. })));
        let kafka = check("k", &def(BrokerKind::Kafka, None)).unwrap_err();
        assert!(matches!(kafka, BuildError::MissingBootstrap { .. }), "{kafka}");
        let kafka = BrokerDef { bootstrap: vec!["127.0.0.1:9092".into()], ..def(BrokerKind::Kafka, None) };
        assert!(check("k", &kafka).is_ok());
    }
}
