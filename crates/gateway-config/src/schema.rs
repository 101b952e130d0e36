//! The serde schema of `gateway.toml`: one struct per table, every key of SPEC.md.
//!
//! Every table denies unknown keys so a typo is an error with its position, never a
//! silently ignored setting. Values that refer to other sections (a route's service,
//! auth providers, rate limits) are `Spanned` so validation can point at them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use crate::units::{ByteSize, Duration};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub registry: Registry,
    /// Only needed by rate limits with `store = "redis"`.
    pub redis: Option<Redis>,
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Upstream services by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Identity providers by name.
    #[serde(default)]
    pub auth: BTreeMap<String, AuthProvider>,
    /// Rate-limit policies by name.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimit>,
    /// Message brokers by name.
    #[serde(default)]
    pub brokers: BTreeMap<String, Broker>,
    /// Routes in file order; the router picks by precedence, not by order.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Queue to HTTP deliveries.
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
}

/// The public listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: SocketAddr,
    /// Single-threaded runtimes serving the listener; 0 = one per available core.
    pub workers: usize,
    pub tls: Option<TlsSetting>,
    /// How long a request head may take to arrive, from its first byte (and, on a new
    /// HTTP/1.1 connection, from the accept): past it the connection closes.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit with no request in flight before it is
    /// closed (HTTP/2: with a GOAWAY).
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub http2: Http2,
    pub max_header_bytes: ByteSize,
    pub max_body_bytes: ByteSize,
    /// Peers whose `x-forwarded-for` is believed (CIDR or plain addresses).
    pub trusted_proxies: Vec<String>,
    pub shutdown_grace: Duration,
    /// Open client connections, all workers together; one more is closed at accept.
    /// 0 = no cap.
    pub max_connections: u32,
    /// Open client connections from one peer address; one more is closed at accept.
    /// Peers in `trusted_proxies` (load balancers) are exempt. 0 = no cap.
    pub max_connections_per_client: u32,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            http2: Http2::default(),
            max_header_bytes: ByteSize(16 * 1024),
            max_body_bytes: ByteSize(10 * 1024 * 1024),
            trusted_proxies: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_client: 256,
        }
    }
}

/// One certificate, or several chosen by SNI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TlsSetting {
    One(TlsCert),
    Many(Vec<TlsCert>),
}

/// By hand rather than `untagged`, so a mistake inside a certificate table is
/// reported as itself (an unknown key, a wrong type) instead of "did not match".
impl<'de> Deserialize<'de> for TlsSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TlsSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ cert = \"...\", key = \"...\" } or a list of such tables")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TlsSetting, A::Error> {
                TlsCert::deserialize(de::value::MapAccessDeserializer::new(map)).map(TlsSetting::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TlsSetting, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(TlsSetting::Many)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCert {
    pub cert: String,
    pub key: String,
    /// SNI names this certificate answers for; empty = the default certificate.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2 {
    /// Streams a client may have open at once; more are refused (`REFUSED_STREAM`).
    pub max_concurrent_streams: u32,
    /// Decoded size of one header list (HPACK bombs, CONTINUATION floods): past it the
    /// stream is refused with 431.
    pub max_header_list_bytes: u32,
    /// Streams the client reset before the gateway accepted them, at once; past it the
    /// connection gets GOAWAY `ENHANCE_YOUR_CALM` (rapid reset, CVE-2023-44487).
    pub max_pending_accept_reset_streams: u32,
    /// Streams the gateway had to reset for the client's protocol errors, per connection;
    /// past it the connection gets GOAWAY `ENHANCE_YOUR_CALM`.
    pub max_local_error_reset_streams: u32,
    /// Flow-control window of one stream: request body bytes buffered per stream.
    pub initial_stream_window_bytes: u32,
    /// Flow-control window of the connection: request body bytes buffered per connection.
    pub initial_connection_window_bytes: u32,
    /// Largest frame payload the gateway accepts.
    pub max_frame_bytes: u32,
}

impl Default for Http2 {
    fn default() -> Self {
        Http2 {
            max_concurrent_streams: 200,
            max_header_list_bytes: 16384,
            max_pending_accept_reset_streams: 50,
            max_local_error_reset_streams: 256,
            initial_stream_window_bytes: 1024 * 1024,
            initial_connection_window_bytes: 2 * 1024 * 1024,
            max_frame_bytes: 16384,
        }
    }
}

/// The admin listener: health, metrics, admin and registry APIs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Loopback by default: the admin API never binds a public address unless told to.
    pub listen: SocketAddr,
    /// When set, `/admin/*` and `/registry/*` need `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin { listen: SocketAddr::from(([127, 0, 0, 1], 9901)), token: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryStore {
    #[default]
    Memory,
    Etcd,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registry {
    pub store: RegistryStore,
    /// An instance that stops heartbeating is dropped after this.
    pub ttl: Duration,
    pub etcd: Option<Etcd>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { store: RegistryStore::Memory, ttl: Duration::from_secs(30), etcd: None }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    pub endpoints: Vec<String>,
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
}

fn default_etcd_prefix() -> String {
    "/gateway/".to_owned()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// One JSON line per request on stdout.
    pub access_log: bool,
    /// OTLP/HTTP collector for traces.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Share of new traces recorded (an incoming `traceparent`'s sampled flag decides for
    /// traces that started elsewhere).
    pub sample_ratio: f64,
    /// The encoding of the OTLP export requests.
    pub otlp_protocol: OtlpProtocol,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            access_log: false,
            otlp_endpoint: None,
            service_name: "gateway".to_owned(),
            sample_ratio: 1.0,
            otlp_protocol: OtlpProtocol::default(),
        }
    }
}

/// `telemetry.otlp_protocol`, named as OpenTelemetry's `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// Binary protobuf (`application/x-protobuf`), the OTLP default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// The OTLP JSON mapping (`application/json`).
    #[serde(rename = "http/json")]
    HttpJson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    #[default]
    Static,
    Registry,
    Dns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    LeastRequest,
    PeakEwma,
    Random,
    ConsistentHash,
}

/// An upstream service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// `scheme://host:port` with scheme `http`, `https` or `h2c`.
    #[serde(default)]
    pub endpoints: Vec<Spanned<String>>,
    #[serde(default)]
    pub discovery: Discovery,
    /// `host:port` to resolve (A/AAAA) when `discovery = "dns"`, or `srv://NAME` for
    /// the SRV records of `NAME` (each target with its own port, priority and weight).
    pub dns: Option<String>,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// `header:NAME`, `cookie:NAME` or `ip`, for `consistent_hash`.
    pub hash_on: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// The whole upstream exchange; a route may lower it.
    #[serde(default = "default_service_timeout")]
    pub timeout: Duration,
    pub health_check: Option<HealthCheck>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub retry: Option<Retry>,
    /// PEM bundle to verify `https` upstreams instead of the webpki roots.
    pub ca_file: Option<String>,
    /// Client certificate for mTLS to the upstream.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_service_timeout() -> Duration {
    Duration::from_secs(15)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Grpc,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http`: GET `path`, 2xx passes. `grpc`: `grpc.health.v1.Health/Check`, `SERVING` passes.
    #[serde(default)]
    pub kind: HealthCheckKind,
    /// The service name a `grpc` check asks about; unset: the server as a whole (`""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout")]
    pub timeout: Duration,
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
    #[serde(default = "default_three")]
    pub unhealthy_threshold: u32,
}

fn default_health_path() -> String {
    "/health".to_owned()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_two() -> u32 {
    2
}
fn default_three() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreaker {
    pub failure_ratio: f64,
    pub minimum_requests: u32,
    pub consecutive_failures: Option<u32>,
    pub window: Duration,
    pub open_duration: Duration,
    pub half_open_requests: u32,
    /// Upstream statuses counted as failures.
    pub failure_statuses: Vec<u16>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            failure_ratio: 0.5,
            minimum_requests: 10,
            consecutive_failures: None,
            window: Duration::from_secs(10),
            open_duration: Duration::from_secs(30),
            half_open_requests: 3,
            failure_statuses: vec![500, 502, 503, 504],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    pub attempts: u32,
    /// `connect_failure`, `timeout`, `reset` or a status code such as `"503"`.
    pub retry_on: Vec<String>,
    /// Retries may add at most this fraction of the requests.
    pub budget: f64,
    pub per_try_timeout: Option<Duration>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 2,
            retry_on: vec!["connect_failure".into(), "502".into(), "503".into(), "504".into()],
            budget: 0.2,
            per_try_timeout: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    Jwt,
    ApiKey,
}

/// A named identity provider: JWT or API keys (fields by `type`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthProvider {
    #[serde(rename = "type")]
    pub kind: AuthType,
    // jwt
    #[serde(default)]
    pub algorithms: Vec<String>,
    pub jwks_url: Option<String>,
    pub public_key_file: Option<String>,
    pub secret: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<StringOrList>,
    pub leeway: Option<Duration>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    // api_key
    pub header: Option<String>,
    pub query: Option<String>,
    #[serde(default)]
    pub keys: Vec<ApiKey>,
    pub keys_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringOrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringOrList, E> {
                Ok(StringOrList::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<StringOrList, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(StringOrList::Many)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub consumer: String,
    /// Hex SHA-256 digest of the key.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitStore {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u64,
    pub per: Duration,
    pub burst: Option<u64>,
    /// `ip`, `header:NAME`, `claim:NAME`, `consumer` or `global`.
    #[serde(default = "default_rate_key")]
    pub key: Spanned<String>,
    #[serde(default)]
    pub store: RateLimitStore,
    #[serde(default)]
    pub on_redis_error: OnRedisError,
}

fn default_rate_key() -> Spanned<String> {
    Spanned::new(0..0, "ip".to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    Amqp,
    Nats,
    Kafka,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    pub kind: BrokerKind,
    pub url: Option<String>,
    /// Kafka bootstrap servers.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Kafka only: the consumer-group session timeout of subscriptions (`session.timeout.ms`;
    /// heartbeats every third of it). A consumer that stops heartbeating for this long loses its
    /// partitions; joining a group takes up to about half of it. Default 10s.
    pub session_timeout: Option<Duration>,
}

/// A weighted side of a split.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub service: Spanned<String>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub service: Spanned<String>,
    #[serde(default = "default_hundred")]
    pub percent: f64,
}

fn default_true() -> bool {
    true
}

fn default_hundred() -> f64 {
    100.0
}

/// `add`, `set` and `remove` header edits.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderTransform {
    pub add: BTreeMap<String, String>,
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub ttl: Duration,
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    #[serde(default)]
    pub vary: Vec<String>,
    #[serde(default)]
    pub private: bool,
}

fn default_cache_entries() -> usize {
    10_000
}

/// CORS for one route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`), or `"*"` for any (not with credentials).
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for; empty = the route's methods (or any).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for; empty = whatever it asks.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age: Option<Duration>,
}

/// One part of an aggregate route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatePart {
    pub service: Spanned<String>,
    pub path: String,
    pub method: Option<String>,
    pub into: Option<String>,
    #[serde(default)]
    pub optional: bool,
    /// Name of the part whose answer this one needs (`{NAME.field}` in `path`).
    pub after: Option<String>,
    #[serde(default)]
    pub select: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub name: Option<String>,
    /// This part's own timeout (within the route's deadline).
    pub timeout: Option<Duration>,
}

/// Publish the request body to a broker.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    pub broker: Spanned<String>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub subject: Option<String>,
    pub topic: Option<String>,
    pub key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A routing rule and what to do with the requests it matches.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Spanned<String>,
    /// Exact host or `*.suffix`.
    pub host: Option<String>,
    /// Exact path or template (`{name}`, `{*rest}`).
    pub path: Option<Spanned<String>>,
    /// Whole-segment prefix.
    pub path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// Exact header matches.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub service: Option<Spanned<String>>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
    #[serde(default)]
    pub auth: Vec<Spanned<String>>,
    #[serde(default)]
    pub require_claims: BTreeMap<String, String>,
    /// Whether the client's `Authorization` header goes upstream once accepted.
    #[serde(default = "default_true")]
    pub forward_authorization: bool,
    #[serde(default)]
    pub rate_limit: Vec<Spanned<String>>,
    pub timeout: Option<Duration>,
    pub max_body_bytes: Option<ByteSize>,
    /// Requests of this route served at once; past it, 503 at once instead of queueing.
    pub max_in_flight: Option<u32>,
    pub split: Option<Vec<SplitTarget>>,
    pub sticky_on: Option<String>,
    pub mirror: Option<Mirror>,
    #[serde(default)]
    pub allow_ips: Vec<String>,
    #[serde(default)]
    pub deny_ips: Vec<String>,
    pub request_headers: Option<HeaderTransform>,
    pub response_headers: Option<HeaderTransform>,
    pub cache: Option<Cache>,
    #[serde(default)]
    pub compress: bool,
    /// Accept gRPC-Web (binary and text) from browsers and speak gRPC to the upstream.
    #[serde(default)]
    pub grpc_web: bool,
    /// Cross-origin access from browsers; preflights are answered before authentication.
    pub cors: Option<Cors>,
    pub aggregate: Option<Vec<AggregatePart>>,
    pub publish: Option<Publish>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub exchange: String,
    pub routing_key: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverTo {
    pub service: Spanned<String>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub broker: Spanned<String>,
    pub queue: Option<String>,
    pub bind: Option<Binding>,
    pub stream: Option<String>,
    pub subject: Option<String>,
    pub durable: Option<String>,
    pub topic: Option<String>,
    pub group: Option<String>,
    pub deliver_to: DeliverTo,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Messages delivered at once; 1 keeps their order.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    pub dead_letter: Option<String>,
}

fn default_concurrency() -> u32 {
    1
}

fn default_attempts() -> u32 {
    5
}
