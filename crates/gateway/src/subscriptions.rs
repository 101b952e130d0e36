//! Subscriptions: queued messages delivered as HTTP POSTs through the normal proxy path.
//! Runners live in the control plane, not in a runtime, so an unchanged subscription keeps
//! consuming across reloads.

use std::sync::Arc;

use gateway_config::{Broker as BrokerDef, Subscription};
use gateway_events::{DeliverFn, Delivery, SubscriptionOptions, SubscriptionRunner};
use gateway_proxy::RequestBody;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Uri};

use crate::runtime::Runtime;
use crate::{upstream, Shared};

/// One running subscription and what it was started from.
pub struct Running {
    definition: Subscription,
    broker: BrokerDef,
    runner: SubscriptionRunner,
}

/// Make the running set match `runtime`: keep unchanged subscriptions, start new ones,
/// and stop removed ones after their in-flight delivery.
pub fn reconcile(running: &mut Vec<Running>, runtime: &Runtime, shared: &Arc<Shared>) {
    let mut kept = Vec::new();
    let mut old: Vec<Running> = std::mem::take(running);
    for definition in &runtime.config.subscriptions {
        let name = definition.broker.get_ref();
        let (Some(broker_def), Some(broker)) = (runtime.config.brokers.get(name), runtime.brokers.get(name)) else {
            continue;
        };
        if let Some(i) = old.iter().position(|r| &r.definition == definition && &r.broker == broker_def) {
            kept.push(old.swap_remove(i));
            continue;
        }
        let options = SubscriptionOptions { concurrency: definition.concurrency.max(1) as usize, ..Default::default() };
        match SubscriptionRunner::start(definition, broker.clone(), deliver_fn(shared.clone(), definition), options) {
            Ok(runner) => kept.push(Running { definition: definition.clone(), broker: broker_def.clone(), runner }),
            Err(e) => tracing::error!(broker = name, error = %e, "cannot start subscription"),
        }
    }
    for stale in old {
        tokio::spawn(stale.runner.shutdown());
    }
    *running = kept;
}

/// Each running subscription's label and counters, for `/metrics`.
pub fn metrics(running: &[Running]) -> Vec<(String, Arc<gateway_events::SubscriptionMetrics>)> {
    running.iter().map(|r| (r.runner.source().label(), r.runner.metrics().clone())).collect()
}

/// Stop every subscription, letting in-flight deliveries finish.
pub async fn shutdown(running: Vec<Running>) {
    for r in running {
        r.runner.shutdown().await;
    }
}

/// POST each message to `deliver_to` through the current runtime's service (its balancer,
/// breakers and timeouts); only a 2xx answer acknowledges it.
fn deliver_fn(shared: Arc<Shared>, definition: &Subscription) -> DeliverFn {
    let service_name = definition.deliver_to.service.get_ref().clone();
    let path = definition.deliver_to.path.clone();
    Arc::new(move |delivery: Delivery| {
        let shared = shared.clone();
        let service_name = service_name.clone();
        let path = path.clone();
        Box::pin(async move {
            let runtime = shared.runtime.load_full();
            let service =
                runtime.services.get(&service_name).ok_or_else(|| format!("no service `{service_name}`"))?.clone();
            let uri: Uri = path.parse().map_err(|e| format!("bad delivery path: {e}"))?;
            let mut headers = HeaderMap::new();
            for (name, value) in &delivery.headers {
                let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
                else {
                    continue;
                };
                if !matches!(name.as_str(), "host" | "content-length" | "connection" | "transfer-encoding") {
                    headers.insert(name, value);
                }
            }
            if let Some(ct) = delivery.content_type.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(CONTENT_TYPE, ct);
            }
            if let Some(id) = delivery.message_id.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(gateway_core::X_REQUEST_ID, id);
            }
            headers.insert("x-gateway-attempt", HeaderValue::from(delivery.attempt));
            if let Ok(host) = HeaderValue::from_str(&service.name) {
                headers.insert(http::header::HOST, host);
            }
            let call = upstream::Call {
                trace: None,
                method: Method::POST,
                uri,
                headers,
                body: RequestBody::Bytes { data: Some(delivery.body) },
                timeout: service.timeout,
                grpc_deadline: false,
                client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            };
            match upstream::call(&service, call).await {
                Ok(answered) if answered.response.status().is_success() => {
                    let _ = http_body_util::BodyExt::collect(answered.response.into_body()).await;
                    Ok(())
                }
                Ok(answered) => Err(format!("HTTP {}", answered.response.status().as_u16())),
                Err((e, _)) => Err(e.to_string()),
            }
        })
    })
}
