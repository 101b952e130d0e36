//! What the AMQP and NATS test binaries share: logs, and broker and subscription options
//! fast enough for tests.

use std::time::Duration;

use gateway_events::{Backoff, BrokerOptions, SubscriptionOptions};

/// Logs of the code under test, shown for failing tests (`RUST_LOG` filters, default `info`).
pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Reconnects within half a second.
pub fn options() -> BrokerOptions {
    BrokerOptions {
        connect_timeout: Duration::from_secs(5),
        reconnect: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
    }
}

/// Retries and resubscribes within tens of milliseconds.
pub fn fast() -> SubscriptionOptions {
    SubscriptionOptions {
        retry: Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
        resubscribe: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
        backlog_interval: None,
        ..SubscriptionOptions::default()
    }
}
