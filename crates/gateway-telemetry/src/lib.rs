//! `gateway-telemetry`: the metrics registry and its Prometheus text rendering.
//!
//! Counting costs no lock and no allocation on the request path: each route gets a
//! [`RouteMetrics`] handle when a configuration is built, holding plain atomics indexed
//! by method and status. Handles are kept by route name, so counters survive reloads.
//!
//! [`trace`] holds distributed tracing: W3C `traceparent`, spans, and OTLP/HTTP export;
//! [`access_log`] the JSON line of each request.
//!
//! ```
//! use gateway_telemetry::Metrics;
//! let metrics = Metrics::new();
//! let users = metrics.route("users");
//! users.record(&http::Method::GET, 200, std::time::Duration::from_millis(3));
//! assert!(metrics.render().contains(r#"gateway_requests_total{route="users",method="GET",status="200"} 1"#));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;

pub mod access_log;
pub mod json;
pub mod trace;

/// The route label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Histogram bounds in seconds, suited to proxy latencies: 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

const METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER"];

/// Status codes counted on their own; any other code is counted as its class (`2xx`...).
const STATUSES: [u16; 31] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 414, 415, 422, 429,
    431, 499, 500, 501, 502, 503, 504, 101,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const STATUS_SLOTS: usize = STATUSES.len() + CLASSES.len();

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

fn status_index(status: u16) -> usize {
    match STATUSES.iter().position(|&s| s == status) {
        Some(i) => i,
        None => STATUSES.len() + usize::from((status / 100).clamp(1, 5) - 1),
    }
}

fn status_label(slot: usize) -> String {
    if slot < STATUSES.len() {
        STATUSES[slot].to_string()
    } else {
        CLASSES[slot - STATUSES.len()].to_owned()
    }
}

/// A latency histogram of plain atomics.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The counters of one route.
pub struct RouteMetrics {
    name: String,
    requests: [[AtomicU64; STATUS_SLOTS]; METHODS.len()],
    duration: Histogram,
    in_flight: AtomicU64,
    rate_limited: AtomicU64,
}

impl RouteMetrics {
    fn new(name: &str) -> Self {
        RouteMetrics {
            name: name.to_owned(),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            duration: Histogram::default(),
            in_flight: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }

    /// Count a request refused by a rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one finished request.
    pub fn record(&self, method: &Method, status: u16, elapsed: Duration) {
        self.requests[method_index(method)][status_index(status)].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(elapsed);
    }

    /// A request entered the route; returns how many are in flight now, this one included.
    pub fn start(&self) -> u64 {
        self.in_flight.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn finish(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counters of one upstream service.
pub struct ServiceMetrics {
    name: String,
    outcomes: [AtomicU64; OUTCOMES.len()],
    duration: Histogram,
}

/// How an upstream exchange ended (`gateway_upstream_requests_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    ClientError,
    ServerError,
    ConnectFailure,
    Timeout,
    Reset,
}

const OUTCOMES: [&str; 6] = ["success", "4xx", "5xx", "connect_failure", "timeout", "reset"];

impl ServiceMetrics {
    pub fn record(&self, outcome: Outcome, elapsed: Duration) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(elapsed);
    }
}

/// Which cap refused a connection (`gateway_connections_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedConnection {
    /// `server.max_connections`.
    GlobalLimit,
    /// `server.max_connections_per_client`.
    PerClientLimit,
}

/// Every metric of the process. Cheap to clone (an `Arc`).
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    services: Mutex<BTreeMap<String, Arc<ServiceMetrics>>>,
    reloads_ok: AtomicU64,
    reloads_error: AtomicU64,
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_handshake_failures: AtomicU64,
    refused_global: AtomicU64,
    refused_per_client: AtomicU64,
    trace: trace::TraceCounters,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle of a route, created on first use; called when a config is built.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut routes = self.inner.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.entry(name.to_owned()).or_insert_with(|| Arc::new(RouteMetrics::new(name))).clone()
    }

    pub fn service(&self, name: &str) -> Arc<ServiceMetrics> {
        let mut services = self.inner.services.lock().unwrap_or_else(|e| e.into_inner());
        services
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(ServiceMetrics {
                    name: name.to_owned(),
                    outcomes: Default::default(),
                    duration: Histogram::default(),
                })
            })
            .clone()
    }

    pub fn reload(&self, ok: bool) {
        let counter = if ok { &self.inner.reloads_ok } else { &self.inner.reloads_error };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.inner.connections_open.fetch_add(1, Ordering::Relaxed);
        self.inner.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// The span exporter's counters, shared by every tracer the process builds.
    pub fn trace_counters(&self) -> trace::TraceCounters {
        self.inner.trace.clone()
    }

    pub fn tls_handshake(&self, ok: bool) {
        let counter = if ok { &self.inner.tls_handshakes } else { &self.inner.tls_handshake_failures };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a connection closed at accept because a cap was reached.
    pub fn connection_refused(&self, reason: RefusedConnection) {
        let counter = match reason {
            RefusedConnection::GlobalLimit => &self.inner.refused_global,
            RefusedConnection::PerClientLimit => &self.inner.refused_per_client,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.inner.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# HELP gateway_build_info Build information.\n# TYPE gateway_build_info gauge");
        let _ = writeln!(out, "gateway_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));

        let routes: Vec<Arc<RouteMetrics>> =
            self.inner.routes.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        out.push_str("# HELP gateway_requests_total Requests answered, by route, method and status.\n");
        out.push_str("# TYPE gateway_requests_total counter\n");
        for route in &routes {
            for (m, row) in route.requests.iter().enumerate() {
                for (s, counter) in row.iter().enumerate() {
                    let n = counter.load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "gateway_requests_total{{route=\"{}\",method=\"{}\",status=\"{}\"}} {n}",
                            route.name,
                            METHODS[m],
                            status_label(s)
                        );
                    }
                }
            }
        }
        out.push_str("# HELP gateway_request_duration_seconds Time from request head to response head.\n");
        out.push_str("# TYPE gateway_request_duration_seconds histogram\n");
        for route in &routes {
            route.duration.render(&mut out, "gateway_request_duration_seconds", &format!("route=\"{}\"", route.name));
        }
        out.push_str("# HELP gateway_requests_in_flight Requests being served, by route.\n");
        out.push_str("# TYPE gateway_requests_in_flight gauge\n");
        for route in &routes {
            let _ = writeln!(
                out,
                "gateway_requests_in_flight{{route=\"{}\"}} {}",
                route.name,
                route.in_flight.load(Ordering::Relaxed)
            );
        }

        out.push_str("# HELP gateway_rate_limited_total Requests refused by a rate limit, by route.\n");
        out.push_str("# TYPE gateway_rate_limited_total counter\n");
        for route in &routes {
            let _ = writeln!(
                out,
                "gateway_rate_limited_total{{route=\"{}\"}} {}",
                route.name,
                route.rate_limited.load(Ordering::Relaxed)
            );
        }

        let services: Vec<Arc<ServiceMetrics>> =
            self.inner.services.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        out.push_str("# HELP gateway_upstream_requests_total Upstream exchanges, by service and outcome.\n");
        out.push_str("# TYPE gateway_upstream_requests_total counter\n");
        for service in &services {
            for (i, counter) in service.outcomes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "gateway_upstream_requests_total{{service=\"{}\",outcome=\"{}\"}} {}",
                    service.name,
                    OUTCOMES[i],
                    counter.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP gateway_upstream_duration_seconds Time to the upstream's response head.\n");
        out.push_str("# TYPE gateway_upstream_duration_seconds histogram\n");
        for service in &services {
            service.duration.render(
                &mut out,
                "gateway_upstream_duration_seconds",
                &format!("service=\"{}\"", service.name),
            );
        }

        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let inner = &*self.inner;
        family(
            &mut out,
            "gateway_config_reloads_total",
            "counter",
            "Configuration reloads, by result.",
            &[("result=\"ok\"", load(&inner.reloads_ok)), ("result=\"error\"", load(&inner.reloads_error))],
        );
        family(
            &mut out,
            "gateway_connections_open",
            "gauge",
            "Client connections open now.",
            &[("", load(&inner.connections_open))],
        );
        family(
            &mut out,
            "gateway_connections_total",
            "counter",
            "Client connections accepted.",
            &[("", load(&inner.connections_total))],
        );
        family(
            &mut out,
            "gateway_connections_refused_total",
            "counter",
            "Client connections closed at accept, by the cap they hit.",
            &[
                ("reason=\"global_limit\"", load(&inner.refused_global)),
                ("reason=\"per_client_limit\"", load(&inner.refused_per_client)),
            ],
        );
        family(
            &mut out,
            "gateway_tls_handshakes_total",
            "counter",
            "TLS handshakes, by result.",
            &[
                ("result=\"ok\"", load(&inner.tls_handshakes)),
                ("result=\"error\"", load(&inner.tls_handshake_failures)),
            ],
        );
        self.inner.trace.render_prometheus(&mut out);
        out
    }
}

/// One metric family of fixed label sets: its HELP and TYPE lines, then one sample each.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_and_status_and_keeps_handles_by_name() {
        let metrics = Metrics::new();
        let a = metrics.route("a");
        a.record(&Method::POST, 201, Duration::from_millis(2));
        a.record(&Method::POST, 201, Duration::from_millis(2));
        a.record(&Method::GET, 418, Duration::from_millis(2000));
        // A reload asks for the same name again and must get the same counters.
        assert!(Arc::ptr_eq(&a, &metrics.route("a")));
        let text = metrics.render();
        assert!(text.contains(r#"gateway_requests_total{route="a",method="POST",status="201"} 2"#), "{text}");
        assert!(text.contains(r#"gateway_requests_total{route="a",method="GET",status="4xx"} 1"#), "{text}");
        assert!(text.contains(r#"gateway_request_duration_seconds_bucket{route="a",le="0.0025"} 2"#), "{text}");
        assert!(text.contains(r#"gateway_request_duration_seconds_count{route="a"} 3"#), "{text}");
    }

    #[test]
    fn refused_connections_are_counted_by_reason() {
        let metrics = Metrics::new();
        metrics.connection_refused(RefusedConnection::PerClientLimit);
        metrics.connection_refused(RefusedConnection::PerClientLimit);
        let text = metrics.render();
        assert!(text.contains(r#"gateway_connections_refused_total{reason="per_client_limit"} 2"#), "{text}");
        assert!(text.contains(r#"gateway_connections_refused_total{reason="global_limit"} 0"#), "{text}");
    }
}
