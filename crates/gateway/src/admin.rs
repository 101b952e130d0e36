//! What the admin API shows of the running gateway (`gateway_admin::AdminSource`).

use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use gateway_admin::{AdminError, AdminSource, ForcedCircuit};
use serde_json::{json, Value};

use crate::runtime::Action;
use crate::{Control, Shared};

/// A view of the gateway for the admin listener. Holds the control plane weakly, so the
/// admin state and the control plane do not keep each other alive.
pub struct AdminView {
    pub shared: Arc<Shared>,
    pub control: Weak<Control>,
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
                        json!({
                            "address": endpoint.address(),
                            "scheme": endpoint.scheme().as_str(),
                            "healthy": true,
                            "circuit": "closed",
                            "in_flight": 0,
                        })
                    })
                    .collect();
                json!({ "name": service.name, "endpoints": endpoints })
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

    fn set_circuit(&self, service: &str, address: &str, _state: ForcedCircuit) -> Result<Value, AdminError> {
        let runtime = self.shared.runtime.load();
        let known = runtime
            .services
            .get(service)
            .is_some_and(|s| s.endpoints.snapshot().iter().any(|e| e.address() == address));
        if !known {
            return Err(AdminError::not_found(format!("service `{service}` has no endpoint `{address}`")));
        }
        Err(AdminError {
            status: axum::http::StatusCode::NOT_IMPLEMENTED,
            code: "not_implemented",
            message: "circuit breakers are not available in this build yet".into(),
        })
    }
}
