//! `Runtime`: everything compiled from one `Config`, swapped whole on reload.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::cors::CorsPolicy;
use crate::upstream::Breakers;
use gateway_aggregate::Aggregate;
use gateway_auth::{IdentityHeaders, Providers, RouteAuth};
use gateway_config::{Config, IpNet, OtlpProtocol, Route};
use gateway_events::{BrokerOptions, Brokers};
use gateway_proxy::{UpstreamClient, UpstreamSettings};
use gateway_ratelimit::{RateLimits, RouteLimits};
use gateway_registry::{MemoryRegistry, ProbeTls, ServiceEndpoints, ServiceOptions, Source};
use gateway_resilience::{RetryBudget, RetryPolicy};
use gateway_router::RouteTable;
use gateway_telemetry::trace::{Protocol, Tracer};
use gateway_telemetry::{Metrics, RouteMetrics, ServiceMetrics, UNMATCHED_ROUTE};
use gateway_traffic::cache::CacheStore;
use gateway_traffic::headers::CompiledTransform;
use gateway_traffic::mirror::Mirror;
use gateway_traffic::split::Split;

/// One upstream service: its endpoints, pools and counters. Reused across reloads while
/// its definition is unchanged, so pools and the balancer's position survive.
pub struct ServiceRuntime {
    pub name: String,
    pub trace_name: Arc<str>,
    definition: gateway_config::Service,
    /// Discovery, health and the load balancer.
    pub endpoints: ServiceEndpoints,
    pub client: UpstreamClient,
    pub timeout: Duration,
    pub metrics: Arc<ServiceMetrics>,
    /// One circuit breaker per endpoint (when `circuit_breaker` is set).
    pub breakers: Breakers,
    pub retry: Option<RetryPolicy>,
    pub budget: Option<RetryBudget>,
    pub metrics_retries: AtomicU64,
}

/// What a matched route does.
pub enum Action {
    Proxy(Arc<ServiceRuntime>),
    /// Several services, one JSON answer.
    Aggregate(AggregateAction),
    /// The body becomes a message on a broker; 202 once the broker confirmed it.
    Publish(PublishAction),
    /// One of several services by weight (canary), optionally sticky per client.
    Split {
        split: Split,
        services: HashMap<String, Arc<ServiceRuntime>>,
    },
    /// Configured, but this build cannot do it yet: answered 503 rather than guessed at.
    Unsupported(&'static str),
}

/// A publish route's broker and where its messages go.
pub struct PublishAction {
    pub broker: Arc<dyn gateway_events::Broker>,
    pub kind: gateway_config::BrokerKind,
    /// AMQP exchange (`""`: the default exchange), or Kafka topic.
    pub target: String,
    /// AMQP routing key, NATS subject or Kafka record key (`None`: no key), with `{param}`
    /// placeholders.
    pub key_template: Option<String>,
    /// Configured message headers.
    pub headers: Vec<(String, String)>,
}

/// An aggregate route: its compiled parts and the services they call.
pub struct AggregateAction {
    pub aggregate: Aggregate,
    pub services: HashMap<String, Arc<ServiceRuntime>>,
}

/// The compiled policy of one route, indexed like `config.routes`.
pub struct RoutePolicy {
    pub name: String,
    /// The name as spans carry it, shared so the hot path never allocates it.
    pub trace_name: Arc<str>,
    pub action: Action,
    pub timeout: Duration,
    pub max_body_bytes: u64,
    pub allow_ips: Vec<IpNet>,
    pub deny_ips: Vec<IpNet>,
    /// The route's rate limits, all of which must admit.
    pub limits: Option<RouteLimits>,
    pub max_in_flight: Option<u64>,
    /// Who may call this route (any one provider), and which claims they need.
    pub auth: Option<RouteAuth>,
    pub forward_authorization: bool,
    pub cors: Option<CorsPolicy>,
    pub request_headers: Option<CompiledTransform>,
    pub response_headers: Option<CompiledTransform>,
    /// Kept across reloads while the route's `cache` is unchanged.
    pub cache: Option<CacheStore>,
    pub compress: bool,
    /// gRPC-Web callers are answered in gRPC-Web, the upstream spoken to in gRPC.
    pub grpc_web: bool,
    /// A share of the traffic copied to a shadow service.
    pub mirror: Option<(Mirror, Arc<ServiceRuntime>)>,
    pub metrics: Arc<RouteMetrics>,
}

/// What a runtime is built with besides its configuration.
#[derive(Clone, Copy)]
pub struct BuildEnv<'a> {
    /// Relative paths in the configuration are relative to this directory.
    pub base_dir: &'a Path,
    /// The registry store, which outlives every runtime.
    pub registry: &'a Arc<MemoryRegistry>,
    pub metrics: &'a Metrics,
    /// Worker runtimes, one connection pool set each.
    pub workers: usize,
}

pub struct Runtime {
    pub version: u64,
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub policies: Vec<RoutePolicy>,
    pub services: HashMap<String, Arc<ServiceRuntime>>,
    pub rate_limits: RateLimits,
    pub providers: Providers,
    /// Headers only the gateway may set (`forward_claims`, `x-consumer`): removed from
    /// every incoming request.
    pub identity_headers: IdentityHeaders,
    pub brokers: Brokers,
    /// Spans per request and per upstream attempt, exported over OTLP/HTTP when configured.
    pub tracer: Arc<Tracer>,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_bytes: u64,
    pub max_header_bytes: u64,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub unmatched: Arc<RouteMetrics>,
}

impl Runtime {
    /// Assemble a runtime from a validated `config` and its compiled route table,
    /// reusing the unchanged pieces of `previous` (services with their pools, rate limits
    /// with their buckets). Fails without side effects.
    pub async fn build(
        config: Config,
        routes: RouteTable,
        version: u64,
        previous: Option<&Runtime>,
        env: &BuildEnv<'_>,
    ) -> Result<Runtime, Vec<String>> {
        let BuildEnv { base_dir, registry, metrics, workers } = *env;
        let rate_limits = RateLimits::build(&config, previous.map(|p| &p.rate_limits)).map_err(|e| vec![e])?;
        // JWKS providers fetch their keys here: a reload with an unreachable identity
        // provider fails as a whole.
        let providers = Providers::build(&config, base_dir, previous.map(|p| &p.providers))
            .await
            .map_err(|errors| errors.into_iter().map(|(name, e)| format!("[auth.{name}]: {e}")).collect::<Vec<_>>())?;
        let identity_headers = IdentityHeaders::from_config(&config);
        // Brokers connect here (bounded); unchanged ones are kept with their connections.
        let brokers = Brokers::build(&config.brokers, previous.map(|p| &p.brokers), &BrokerOptions::default())
            .await
            .map_err(|e| vec![format!("[brokers]: {e}")])?;
        let telemetry = &config.telemetry;
        let protocol = match telemetry.otlp_protocol {
            OtlpProtocol::HttpProtobuf => Protocol::Protobuf,
            OtlpProtocol::HttpJson => Protocol::Json,
        };
        let tracer = match previous.map(|p| &p.tracer).filter(|t| {
            t.is_configured_as(
                telemetry.otlp_endpoint.as_deref(),
                &telemetry.service_name,
                telemetry.sample_ratio,
                protocol,
            )
        }) {
            Some(same) => same.clone(),
            None => Arc::new(match &telemetry.otlp_endpoint {
                None => Tracer::disabled(),
                Some(endpoint) => Tracer::builder(endpoint, &telemetry.service_name)
                    .sample_ratio(telemetry.sample_ratio)
                    .protocol(protocol)
                    .counters(metrics.trace_counters())
                    .build()
                    .map_err(|e| vec![format!("[telemetry]: {e}")])?,
            }),
        };
        let mut services = HashMap::new();
        for (name, definition) in &config.services {
            let old = previous.and_then(|p| p.services.get(name));
            let service = match old.filter(|s| &s.definition == definition) {
                // Unchanged: pools, health, breakers and balancer state carry over whole.
                Some(same) => same.clone(),
                None => {
                    let fresh = build_service(name, definition, base_dir, registry, metrics, workers)?;
                    if let Some(old) = old {
                        // Changed: endpoints that stay keep their health and in-flight counts.
                        fresh.endpoints.inherit(&old.endpoints);
                    }
                    Arc::new(fresh)
                }
            };
            services.insert(name.clone(), service);
        }

        let policies = config
            .routes
            .iter()
            .map(|route| {
                let pieces = Pieces {
                    config: &config,
                    services: &services,
                    rate_limits: &rate_limits,
                    providers: &providers,
                    brokers: &brokers,
                    previous,
                    metrics,
                };
                build_policy(route, &pieces)
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| vec![e])?;
        let trusted_proxies = parse_nets(&config.server.trusted_proxies);
        Ok(Runtime {
            version,
            routes,
            policies,
            services,
            trusted_proxies,
            max_body_bytes: config.server.max_body_bytes.get(),
            max_header_bytes: config.server.max_header_bytes.get(),
            body_read_timeout: config.server.body_read_timeout.get(),
            idle_timeout: config.server.idle_timeout.get(),
            unmatched: metrics.route(UNMATCHED_ROUTE),
            rate_limits,
            providers,
            identity_headers,
            brokers,
            tracer,
            config: Arc::new(config),
        })
    }
}

fn build_service(
    name: &str,
    definition: &gateway_config::Service,
    base_dir: &Path,
    registry: &Arc<MemoryRegistry>,
    metrics: &Metrics,
    workers: usize,
) -> Result<ServiceRuntime, Vec<String>> {
    // TLS settings only for services that can reach an https endpoint (registered
    // instances may say https in their metadata, so discovered services get them too).
    let needs_tls = definition.ca_file.is_some()
        || definition.client_cert.is_some()
        || definition.discovery != gateway_config::Discovery::Static
        || definition.endpoints.iter().any(|e| e.get_ref().starts_with("https"));
    let tls = if needs_tls {
        let config = gateway_proxy::tls_client_config(
            definition.ca_file.as_deref(),
            definition.client_cert.as_deref(),
            definition.client_key.as_deref(),
            base_dir,
        )
        .map_err(|e| vec![format!("[services.{name}]: {e}")])?;
        Some(config)
    } else {
        None
    };
    // Health checks of https endpoints trust what requests trust.
    let build_error = |e: gateway_registry::BuildError| vec![format!("[services.{name}]: {e}")];
    let mut options = ServiceOptions::from_config(definition).map_err(build_error)?;
    if let Some(check) = &mut options.health_check {
        check.tls = tls.clone().map(ProbeTls);
    }
    let source = Source::from_config(name, definition, registry).map_err(build_error)?;
    let endpoints = ServiceEndpoints::new(name, options, source).map_err(build_error)?;
    let settings =
        UpstreamSettings { connect_timeout: definition.connect_timeout.get(), tls, ..UpstreamSettings::default() };
    Ok(ServiceRuntime {
        name: name.to_owned(),
        trace_name: Arc::from(name),
        definition: definition.clone(),
        endpoints,
        client: UpstreamClient::new(&settings, workers),
        timeout: definition.timeout.get(),
        metrics: metrics.service(name),
        breakers: Breakers::new(definition.circuit_breaker.clone()),
        retry: definition.retry.as_ref().map(RetryPolicy::new),
        budget: definition.retry.as_ref().map(RetryBudget::from_config),
        metrics_retries: AtomicU64::new(0),
    })
}

/// The named pieces a route's policy refers to, already built for this runtime.
#[derive(Clone, Copy)]
struct Pieces<'a> {
    config: &'a Config,
    services: &'a HashMap<String, Arc<ServiceRuntime>>,
    rate_limits: &'a RateLimits,
    providers: &'a Providers,
    brokers: &'a Brokers,
    previous: Option<&'a Runtime>,
    metrics: &'a Metrics,
}

fn build_policy(route: &Route, pieces: &Pieces<'_>) -> Result<RoutePolicy, String> {
    let Pieces { config, services, rate_limits, providers, brokers, previous, metrics } = *pieces;
    let action = if let Some(service) = route.service.as_ref().and_then(|s| services.get(s.get_ref())) {
        Action::Proxy(service.clone())
    } else if let Some(publish) = &route.publish {
        let broker = brokers
            .get(publish.broker.get_ref())
            .cloned()
            .ok_or_else(|| named(route, format!("no broker `{}`", publish.broker.get_ref())))?;
        let kind = config.brokers[publish.broker.get_ref()].kind;
        let (exchange, key_template) = match kind {
            gateway_config::BrokerKind::Amqp => {
                (publish.exchange.clone(), Some(publish.routing_key.clone().unwrap_or_default()))
            }
            gateway_config::BrokerKind::Nats => (None, Some(publish.subject.clone().unwrap_or_default())),
            gateway_config::BrokerKind::Kafka => (publish.topic.clone(), publish.key.clone()),
        };
        Action::Publish(PublishAction {
            broker,
            kind,
            target: exchange.unwrap_or_default(),
            key_template,
            headers: publish.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    } else if let Some(targets) = &route.split {
        let split = Split::compile(targets, route.sticky_on.as_deref()).map_err(|e| named(route, e))?;
        let services = split.services().filter_map(|n| Some((n.to_owned(), services.get(n)?.clone()))).collect();
        Action::Split { split, services }
    } else if let Some(aggregate) =
        Aggregate::compile(route).map_err(|e| format!("route `{}`: {e}", route.name.get_ref()))?
    {
        let services =
            aggregate.services().filter_map(|name| Some((name.to_owned(), services.get(name)?.clone()))).collect();
        Action::Aggregate(AggregateAction { aggregate, services })
    } else if route.publish.is_some() {
        Action::Unsupported("publish routes are not available in this build yet")
    } else {
        Action::Unsupported("route has no action")
    };
    let service_timeout = match &action {
        Action::Proxy(s) => s.timeout,
        Action::Split { services, .. } => services.values().map(|s| s.timeout).max().unwrap_or(Duration::from_secs(15)),
        Action::Aggregate(_) | Action::Publish(_) | Action::Unsupported(_) => Duration::from_secs(15),
    };
    let timeout = route.timeout.map(|t| t.get().min(service_timeout)).unwrap_or(service_timeout);
    let limits = if route.rate_limit.is_empty() {
        None
    } else {
        let names: Vec<&str> = route.rate_limit.iter().map(|n| n.get_ref().as_str()).collect();
        Some(rate_limits.route(&names)?)
    };
    Ok(RoutePolicy {
        name: route.name.get_ref().clone(),
        trace_name: Arc::from(route.name.get_ref().as_str()),
        action,
        timeout,
        max_body_bytes: route.max_body_bytes.unwrap_or(config.server.max_body_bytes).get(),
        allow_ips: parse_nets(&route.allow_ips),
        deny_ips: parse_nets(&route.deny_ips),
        limits,
        max_in_flight: route.max_in_flight.map(u64::from),
        auth: RouteAuth::compile(route, providers).map_err(|e| format!("route `{}`: {e}", route.name.get_ref()))?,
        forward_authorization: route.forward_authorization,
        request_headers: route
            .request_headers
            .as_ref()
            .map(CompiledTransform::compile)
            .transpose()
            .map_err(|e| named(route, e))?,
        response_headers: route
            .response_headers
            .as_ref()
            .map(CompiledTransform::compile)
            .transpose()
            .map_err(|e| named(route, e))?,
        cache: match &route.cache {
            None => None,
            Some(cache) => Some(match previous_cache(previous, route, cache) {
                Some(kept) => kept,
                None => CacheStore::new(cache).map_err(|e| named(route, e))?,
            }),
        },
        compress: route.compress,
        grpc_web: route.grpc_web,
        mirror: match &route.mirror {
            None => None,
            Some(m) => {
                let service = services
                    .get(m.service.get_ref())
                    .cloned()
                    .ok_or_else(|| named(route, "mirror service missing".into()))?;
                Some((Mirror::compile(m).map_err(|e| named(route, e))?, service))
            }
        },
        cors: route
            .cors
            .as_ref()
            .map(|c| CorsPolicy::compile(c, &route.methods))
            .transpose()
            .map_err(|e| format!("route `{}`: {e}", route.name.get_ref()))?,
        metrics: metrics.route(route.name.get_ref()),
    })
}

fn named(route: &Route, message: String) -> String {
    format!("route `{}`: {message}", route.name.get_ref())
}

/// The cache store of the same route in the previous runtime, when its definition held.
fn previous_cache(previous: Option<&Runtime>, route: &Route, cache: &gateway_config::Cache) -> Option<CacheStore> {
    let previous = previous?;
    let index = previous.config.routes.iter().position(|r| r.name.get_ref() == route.name.get_ref())?;
    previous.policies[index].cache.as_ref().filter(|store| store.config() == cache).cloned()
}

fn parse_nets(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|s| IpNet::parse(s).ok()).collect()
}
