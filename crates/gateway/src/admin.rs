//! What the admin API shows of the running gateway (`gateway_admin::AdminSource`).

use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use gateway_admin::{AdminError, AdminSource, ForcedCircuit};
use gateway_resilience::Forced;
use serde_json::{json, Map, Value};
use std::time::Instant;

use crate::runtime::Action;
use crate::{Control, Shared};

/// A view of the gateway for the admin listener. Holds the control plane weakly, so the
/// admin state and the control plane do not keep each other alive.
pub struct AdminView {
    pub shared: Arc<Shared>,
    pub control: Weak<Control>,
}

/// One number a tokio runtime reports about itself.
type RuntimeGauge = fn(&tokio::runtime::RuntimeMetrics) -> usize;

impl AdminView {
    /// Tokio's own counts per runtime (the stable ones): a task leak shows as alive tasks
    /// that keep growing while connections and requests do not.
    fn runtime_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let runtimes = self.shared.runtimes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let families: [(&str, &str, RuntimeGauge); 3] = [
            ("gateway_runtime_alive_tasks", "Tasks alive in each tokio runtime.", |m| m.num_alive_tasks()),
            ("gateway_runtime_workers", "Worker threads of each tokio runtime.", |m| m.num_workers()),
            ("gateway_runtime_global_queue_depth", "Tasks waiting in each runtime's global queue.", |m| {
                m.global_queue_depth()
            }),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (runtime, handle) in &runtimes {
                let _ = writeln!(out, "{name}{{runtime=\"{runtime}\"}} {}", value(&handle.metrics()));
            }
        }
    }
}

impl AdminSource for AdminView {
    fn routes(&self) -> Value {
        let runtime = self.shared.runtime.load();
        let routes: Vec<Value> = runtime
            .config
            .routes
            .iter()
            .zip(&runtime.policies)
            .map(|(route, policy)| {
                json!({
                    "name": route.name.get_ref(),
                    "host": route.host,
                    "path": route.path.as_ref().map(|p| p.get_ref()),
                    "path_prefix": route.path_prefix.as_ref().map(|p| p.get_ref()),
                    "methods": route.methods,
                    "action": match &policy.action {
                        Action::Proxy(service) => format!("service {}", service.name),
                        Action::Aggregate(a) => format!("aggregate {}", a.aggregate.services().collect::<Vec<_>>().join(", ")),
                        Action::Split { services, .. } => {
                            let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
                            names.sort_unstable();
                            format!("split {}", names.join(", "))
                        }
                        Action::Publish(p) => format!("publish ({:?})", p.kind).to_lowercase(),
                        Action::Unsupported(why) => format!("unavailable: {why}"),
                    },
                    "auth": route.auth.iter().map(|a| a.get_ref()).collect::<Vec<_>>(),
                    "rate_limit": route.rate_limit.iter().map(|r| r.get_ref()).collect::<Vec<_>>(),
                    "timeout_ms": policy.timeout.as_millis() as u64,
                })
            })
            .collect();
        Value::Array(routes)
    }

    fn services(&self) -> Value {
        let runtime = self.shared.runtime.load();
        let mut services: Vec<Value> = runtime
            .services
            .values()
            .map(|service| {
                let endpoints: Vec<Value> = service
                    .endpoints
                    .snapshot()
                    .iter()
                    .map(|endpoint| {
                        let breaker = service.breakers.existing(endpoint.address());
                        json!({
                            "address": endpoint.address(),
                            "scheme": endpoint.scheme().as_str(),
                            "healthy": endpoint.is_healthy(),
                            "ejected": endpoint.is_ejected(),
                            "circuit": breaker.as_ref().map_or("closed", |b| b.state(Instant::now()).as_str()),
                            "circuit_forced": breaker.as_ref().map(|b| b.forced().as_str()),
                            "in_flight": endpoint.in_flight(),
                            "weight": endpoint.weight(),
                            "metadata": endpoint.metadata().map(|m| Value::Object(Map::clone(&m))),
                        })
                    })
                    .collect();
                let counts = service.endpoints.counts();
                json!({
                    "name": service.name,
                    "endpoints": endpoints,
                    "healthy": counts.healthy,
                    "unhealthy": counts.unhealthy,
                    "ejected": counts.ejected,
                })
            })
            .collect();
        services.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Value::Array(services)
    }

    fn config(&self) -> Value {
        serde_json::to_value(&*self.shared.runtime.load().config).unwrap_or(Value::Null)
    }

    fn reload(&self) -> BoxFuture<'static, Result<u64, Vec<String>>> {
        let control = self.control.clone();
        Box::pin(async move {
            let Some(control) = control.upgrade() else { return Err(vec!["the gateway is shutting down".into()]) };
            control.reload_now().await.map_err(|errors| errors.iter().map(ToString::to_string).collect())
        })
    }

    fn set_circuit(&self, service: &str, address: &str, state: ForcedCircuit) -> Result<Value, AdminError> {
        let runtime = self.shared.runtime.load();
        let not_found = || AdminError::not_found(format!("service `{service}` has no endpoint `{address}`"));
        let svc = runtime.services.get(service).ok_or_else(not_found)?;
        let endpoint = svc.endpoints.endpoint(address).ok_or_else(not_found)?;
        let breaker = svc.breakers.get_or_manual(address);
        let forced = match state {
            ForcedCircuit::Open => Forced::Open,
            ForcedCircuit::Closed => Forced::Closed,
            ForcedCircuit::Auto => Forced::Auto,
        };
        let now = Instant::now();
        if let Some(transition) = breaker.force(forced, now) {
            tracing::warn!(event = "circuit", service, endpoint = address, %transition, forced = forced.as_str(), "circuit forced by the admin API");
        }
        Ok(json!({
            "service": service,
            "address": endpoint.address(),
            "circuit": breaker.state(now).as_str(),
            "circuit_forced": breaker.forced().as_str(),
            "healthy": endpoint.is_healthy(),
            "in_flight": endpoint.in_flight(),
        }))
    }

    fn purge_cache(&self, route: &str) -> BoxFuture<'static, Result<Value, AdminError>> {
        let runtime = self.shared.runtime.load_full();
        let route = route.to_owned();
        Box::pin(async move {
            let policy = runtime
                .policies
                .iter()
                .find(|p| p.name == route)
                .ok_or_else(|| AdminError::not_found(format!("no route `{route}`")))?;
            let cache =
                policy.cache.as_ref().ok_or_else(|| AdminError::not_found(format!("route `{route}` has no cache")))?;
            let (entries, bytes) = cache.usage().await;
            cache.purge();
            tracing::info!(route, entries, "cache purged by the admin API");
            Ok(json!({ "route": route, "purged_entries": entries, "purged_bytes": bytes }))
        })
    }

    /// Details only: a broker or registry store that is down degrades the routes that use
    /// it (503 there), not the gateway, which stays ready.
    fn readiness(&self) -> Value {
        let runtime = self.shared.runtime.load();
        let brokers: Map<String, Value> = runtime
            .brokers
            .iter()
            .map(|(name, broker)| {
                let kind = format!("{:?}", broker.kind()).to_lowercase();
                (name.to_owned(), json!({ "kind": kind, "status": broker.state().as_str() }))
            })
            .collect();
        json!({ "registry": self.shared.registry.status(), "brokers": brokers })
    }

    fn extra_metrics(&self) -> String {
        use std::fmt::Write as _;
        let runtime = self.shared.runtime.load();
        let now = Instant::now();
        let mut names: Vec<&String> = runtime.services.keys().collect();
        names.sort();
        let mut out = String::new();
        out.push_str("# HELP gateway_endpoints Endpoints by service and state.\n# TYPE gateway_endpoints gauge\n");
        for name in &names {
            let counts = runtime.services[*name].endpoints.counts();
            for (state, n) in
                [("healthy", counts.healthy), ("unhealthy", counts.unhealthy), ("ejected", counts.ejected)]
            {
                let _ = writeln!(out, "gateway_endpoints{{service=\"{name}\",state=\"{state}\"}} {n}");
            }
        }
        out.push_str("# HELP gateway_circuit_state Circuit state by endpoint: 0 closed, 1 half-open, 2 open.\n");
        out.push_str("# TYPE gateway_circuit_state gauge\n");
        for name in &names {
            let service = &runtime.services[*name];
            for endpoint in service.endpoints.snapshot().iter() {
                let state = service.breakers.existing(endpoint.address()).map_or(0, |b| b.state(now).as_gauge());
                let _ = writeln!(
                    out,
                    "gateway_circuit_state{{service=\"{name}\",endpoint=\"{}\"}} {state}",
                    endpoint.address()
                );
            }
        }
        out.push_str("# HELP gateway_broker_connected Broker connection state: 1 connected, 0 not.\n");
        out.push_str("# TYPE gateway_broker_connected gauge\n");
        for (name, broker) in runtime.brokers.iter() {
            let _ = writeln!(
                out,
                "gateway_broker_connected{{broker=\"{name}\"}} {}",
                u8::from(broker.state().is_connected())
            );
        }
        out.push_str("# HELP gateway_broker_publish_total Messages published, by broker and outcome.\n");
        out.push_str("# TYPE gateway_broker_publish_total counter\n");
        for (name, broker) in runtime.brokers.iter() {
            let m = broker.metrics();
            for (outcome, n) in [("published", m.published()), ("confirmed", m.confirmed()), ("failed", m.failed())] {
                let _ = writeln!(out, "gateway_broker_publish_total{{broker=\"{name}\",outcome=\"{outcome}\"}} {n}");
            }
        }
        let store = self.shared.registry.status();
        out.push_str("# HELP gateway_registry_store_up Registry store reachable: 1, or 0 while degraded.\n");
        out.push_str("# TYPE gateway_registry_store_up gauge\n");
        let _ = writeln!(out, "gateway_registry_store_up{{store=\"{}\"}} {}", store.store, u8::from(store.is_ok()));
        if let Some(control) = self.control.upgrade() {
            out.push_str("# HELP gateway_subscription_messages_total Queued messages, by subscription and outcome.\n");
            out.push_str("# TYPE gateway_subscription_messages_total counter\n");
            for (label, m) in control.subscription_metrics() {
                for (outcome, n) in [
                    ("received", m.received()),
                    ("delivered", m.delivered()),
                    ("retried", m.retried()),
                    ("dead_lettered", m.dead_lettered()),
                ] {
                    let _ = writeln!(
                        out,
                        "gateway_subscription_messages_total{{subscription=\"{label}\",outcome=\"{outcome}\"}} {n}"
                    );
                }
            }
            out.push_str("# HELP gateway_subscription_backlog Messages waiting in the broker, by subscription (as last reported).\n");
            out.push_str("# TYPE gateway_subscription_backlog gauge\n");
            for (label, m) in control.subscription_metrics() {
                if let Some(n) = m.backlog() {
                    let _ = writeln!(out, "gateway_subscription_backlog{{subscription=\"{label}\"}} {n}");
                }
            }
            out.push_str(
                "# HELP gateway_subscription_lag Kafka consumer lag, by subscription and partition held here.\n",
            );
            out.push_str("# TYPE gateway_subscription_lag gauge\n");
            for (label, m) in control.subscription_metrics() {
                for (partition, n) in m.backlog_by_partition() {
                    let _ = writeln!(
                        out,
                        "gateway_subscription_lag{{subscription=\"{label}\",partition=\"{partition}\"}} {n}"
                    );
                }
            }
        }
        out.push_str(
            "# HELP gateway_access_log_dropped_total Access log lines dropped because stdout could not keep up.\n",
        );
        out.push_str("# TYPE gateway_access_log_dropped_total counter\n");
        let _ = writeln!(out, "gateway_access_log_dropped_total {}", crate::access_log::dropped());
        out.push_str("# HELP gateway_upstream_retries_total Retries sent, by service.\n");
        out.push_str("# TYPE gateway_upstream_retries_total counter\n");
        for name in &names {
            let retries = runtime.services[*name].metrics_retries.load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(out, "gateway_upstream_retries_total{{service=\"{name}\"}} {retries}");
        }
        self.runtime_metrics(&mut out);
        out
    }
}
