//! Checks that serde cannot express: references between sections, exclusive
//! settings, formats of addresses, names and keys. Every problem is collected, each
//! at the value it is about.

use std::collections::HashMap;
use std::ops::Range;

use serde_spanned::Spanned;

use crate::endpoint::{parse_host_port, Endpoint};
use crate::error::ConfigError;
use crate::ipnet::IpNet;
use crate::schema::*;
use crate::spans::{Seg, Seg::I, Seg::K, Spans};
use crate::units::Duration;

/// JWS algorithms a JWT provider may pin (RFC 7518, RFC 8037). Never `none`.
pub const JWT_ALGORITHMS: &[&str] =
    &["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// Most runtimes one process may start.
const MAX_WORKERS: usize = 1024;

pub(crate) fn validate(config: &Config, spans: &Spans<'_, '_>) -> Vec<ConfigError> {
    let mut v = Validator { spans, errors: Vec::new(), config };
    v.server(&config.server);
    v.admin();
    v.registry(&config.registry);
    v.redis();
    v.telemetry(&config.telemetry);
    for (name, service) in &config.services {
        v.service(name, service);
    }
    for (name, provider) in &config.auth {
        v.auth(name, provider);
    }
    for (name, limit) in &config.rate_limits {
        v.rate_limit(name, limit);
    }
    for (name, broker) in &config.brokers {
        v.broker(name, broker);
    }
    let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        let name = route.name.get_ref().as_str();
        if let Some(first) = seen.get(name) {
            let (line, col) = v.line_col(first.start);
            v.at(route.name.span(), format!("duplicate route name `{name}` (first used at {line}:{col})"));
        } else {
            seen.insert(name, route.name.span());
        }
        v.route(i, route);
    }
    for (i, subscription) in config.subscriptions.iter().enumerate() {
        v.subscription(i, subscription);
    }
    v.errors
}

struct Validator<'v, 'a, 'i> {
    spans: &'v Spans<'a, 'i>,
    errors: Vec<ConfigError>,
    config: &'v Config,
}

impl Validator<'_, '_, '_> {
    fn at(&mut self, span: Range<usize>, message: impl AsRef<str>) {
        self.errors.push(self.spans.map.error_at(span.start, message.as_ref()));
    }

    /// At the value at `path` (or the deepest part of the path that exists).
    fn at_value(&mut self, path: &[Seg<'_>], message: impl AsRef<str>) {
        let span = self.spans.value(path);
        self.at(span, message);
    }

    /// At the key of the entry at `path`.
    fn at_key(&mut self, path: &[Seg<'_>], message: impl AsRef<str>) {
        let span = self.spans.key(path);
        self.at(span, message);
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let e = self.spans.map.error_at(offset, "");
        (e.line, e.col)
    }

    fn positive(&mut self, path: &[Seg<'_>], what: &str, d: Duration) {
        if d.get().is_zero() {
            self.at_value(path, format!("{what} must be greater than 0"));
        }
    }

    fn name(&mut self, path: &[Seg<'_>], span: Option<Range<usize>>, kind: &str, name: &str) {
        if let Some(why) = bad_name(name) {
            let message = format!("{kind} name `{}` {why}", name.escape_debug());
            match span {
                Some(span) => self.at(span, message),
                None => self.at_key(path, message),
            }
        }
    }

    fn ip_list(&mut self, base: &[Seg<'_>], key: &str, list: &[String]) {
        for (i, entry) in list.iter().enumerate() {
            if let Err(e) = IpNet::parse(entry) {
                self.at_value(&[base, &[K(key), I(i)]].concat(), format!("{key}: {e}"));
            }
        }
    }

    fn reference(&mut self, what: &str, target: &Spanned<String>, kind: &str, exists: bool) {
        if !exists {
            let name = target.get_ref();
            let table = match kind {
                "service" => "services",
                "auth provider" => "auth",
                "rate limit" => "rate_limits",
                _ => "brokers",
            };
            self.at(target.span(), format!("{what} refers to undefined {kind} `{name}` (no [{table}.{name}])"));
        }
    }

    fn server(&mut self, s: &Server) {
        let base = [K("server")];
        if s.workers > MAX_WORKERS {
            self.at_value(
                &[K("server"), K("workers")],
                format!("server.workers = {} is too many; at most {MAX_WORKERS} (0 = one per core)", s.workers),
            );
        }
        self.ip_list(&base, "trusted_proxies", &s.trusted_proxies);
        self.positive(&[K("server"), K("header_read_timeout")], "server.header_read_timeout", s.header_read_timeout);
        self.positive(&[K("server"), K("body_read_timeout")], "server.body_read_timeout", s.body_read_timeout);
        self.positive(&[K("server"), K("idle_timeout")], "server.idle_timeout", s.idle_timeout);
        if s.max_header_bytes.get() == 0 {
            self.at_value(&[K("server"), K("max_header_bytes")], "server.max_header_bytes must be greater than 0");
        }
        self.http2(&s.http2);
        let certs: Vec<&TlsCert> = match &s.tls {
            None => Vec::new(),
            Some(TlsSetting::One(c)) => vec![c],
            Some(TlsSetting::Many(list)) => list.iter().collect(),
        };
        if matches!(&s.tls, Some(TlsSetting::Many(list)) if list.is_empty()) {
            self.at_value(&[K("server"), K("tls")], "server.tls needs at least one certificate");
        }
        for (i, cert) in certs.iter().enumerate() {
            let path: Vec<Seg<'_>> = match &s.tls {
                Some(TlsSetting::Many(_)) => vec![K("server"), K("tls"), I(i)],
                _ => vec![K("server"), K("tls")],
            };
            if cert.cert.trim().is_empty() {
                self.at_value(&[&path[..], &[K("cert")]].concat(), "server.tls: `cert` must name a PEM file");
            }
            if cert.key.trim().is_empty() {
                self.at_value(&[&path[..], &[K("key")]].concat(), "server.tls: `key` must name a PEM file");
            }
        }
    }

    fn http2(&mut self, h: &Http2) {
        const MAX_WINDOW: u32 = (1 << 31) - 1;
        let checks: [(&str, u32, u32, u32); 7] = [
            ("max_concurrent_streams", h.max_concurrent_streams, 1, u32::MAX),
            ("max_header_list_bytes", h.max_header_list_bytes, 1, u32::MAX),
            ("max_pending_accept_reset_streams", h.max_pending_accept_reset_streams, 1, u32::MAX),
            ("max_local_error_reset_streams", h.max_local_error_reset_streams, 1, u32::MAX),
            // RFC 9113 §6.5.2 and §6.9.1.
            ("initial_stream_window_bytes", h.initial_stream_window_bytes, 65_535, MAX_WINDOW),
            ("initial_connection_window_bytes", h.initial_connection_window_bytes, 65_535, MAX_WINDOW),
            ("max_frame_bytes", h.max_frame_bytes, 16_384, 16_777_215),
        ];
        for (key, value, min, max) in checks {
            if value < min || value > max {
                self.at_value(
                    &[K("server"), K("http2"), K(key)],
                    format!("server.http2.{key} = {value} is out of range ({min} to {max})"),
                );
            }
        }
    }

    fn admin(&mut self) {
        let admin = &self.config.admin;
        if admin.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            self.at_value(
                &[K("admin"), K("token")],
                "admin.token is empty (after ${} expansion); remove it to leave the admin API open, or set a token",
            );
        }
        if admin.listen == self.config.server.listen && admin.listen.port() != 0 {
            self.at_value(&[K("admin"), K("listen")], format!("admin.listen {} is also server.listen", admin.listen));
        }
    }

    fn registry(&mut self, r: &Registry) {
        self.positive(&[K("registry"), K("ttl")], "registry.ttl", r.ttl);
        match (r.store, &r.etcd) {
            (RegistryStore::Etcd, None) => self.at_value(
                &[K("registry"), K("store")],
                "registry.store = \"etcd\" needs registry.etcd = { endpoints = [\"http://127.0.0.1:2379\"] }",
            ),
            (RegistryStore::Memory, Some(_)) => {
                self.at_key(&[K("registry"), K("etcd")], "registry.etcd is only used with registry.store = \"etcd\"")
            }
            (RegistryStore::Etcd, Some(etcd)) => {
                if etcd.endpoints.is_empty() {
                    self.at_value(&[K("registry"), K("etcd"), K("endpoints")], "registry.etcd.endpoints is empty");
                }
                if etcd.prefix.is_empty() {
                    self.at_value(&[K("registry"), K("etcd"), K("prefix")], "registry.etcd.prefix is empty");
                }
                if r.ttl.get() < std::time::Duration::from_secs(1) {
                    self.at_value(
                        &[K("registry"), K("ttl")],
                        "registry.ttl must be at least 1s with the etcd store (leases count whole seconds)",
                    );
                }
                for (i, e) in etcd.endpoints.iter().enumerate() {
                    let ok = if e.contains("://") {
                        Endpoint::parse(e).is_ok_and(|e| e.scheme != crate::Scheme::H2c)
                    } else {
                        parse_host_port(e, None).is_ok()
                    };
                    if !ok {
                        self.at_value(
                            &[K("registry"), K("etcd"), K("endpoints"), I(i)],
                            format!("etcd endpoint `{e}` must be host:port, http://host:port or https://host:port"),
                        );
                    }
                }
            }
            (RegistryStore::Memory, None) => {}
        }
    }

    fn redis(&mut self) {
        if let Some(redis) = &self.config.redis {
            let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
            if !schemes.iter().any(|s| redis.url.starts_with(s)) {
                self.at_value(
                    &[K("redis"), K("url")],
                    format!("redis.url `{}` must start with redis:// or rediss://", redis.url),
                );
            }
        }
    }

    fn telemetry(&mut self, t: &Telemetry) {
        if let Some(url) = &t.otlp_endpoint {
            if !is_http_url(url) {
                self.at_value(
                    &[K("telemetry"), K("otlp_endpoint")],
                    format!("telemetry.otlp_endpoint `{url}` must be an http:// or https:// URL"),
                );
            }
        }
        if t.service_name.trim().is_empty() {
            self.at_value(&[K("telemetry"), K("service_name")], "telemetry.service_name is empty");
        }
    }

    fn service(&mut self, name: &str, s: &Service) {
        let base = [K("services"), K(name)];
        let at = |key: &'static str| [K("services"), K(name), K(key)];
        let what = format!("service `{name}`");
        self.name(&base, None, "service", name);
        for endpoint in &s.endpoints {
            if let Err(e) = Endpoint::parse(endpoint.get_ref()) {
                self.at(endpoint.span(), format!("{what}: {e}"));
            }
        }
        if s.discovery == Discovery::Static && s.endpoints.is_empty() {
            self.at_key(
                &base,
                format!("{what} has no endpoints; a static service needs at least one (or use discovery = \"registry\" or \"dns\")"),
            );
        }
        match (&s.dns, s.discovery) {
            (None, Discovery::Dns) => {
                self.at_value(&at("discovery"), format!("{what}: discovery = \"dns\" needs dns = \"host:port\""))
            }
            (Some(_), Discovery::Static | Discovery::Registry) => {
                self.at_key(&at("dns"), format!("{what}: `dns` is only used with discovery = \"dns\""))
            }
            (Some(dns), Discovery::Dns) => match dns.strip_prefix("srv://") {
                Some(name) => {
                    if !valid_dns_name(name) {
                        self.at_value(
                            &at("dns"),
                            format!("{what}: dns = \"{dns}\": srv://NAME needs a DNS name such as srv://_http._tcp.users.internal"),
                        );
                    }
                }
                None => {
                    if let Err(e) = parse_host_port(dns, None) {
                        self.at_value(&at("dns"), format!("{what}: dns = \"{dns}\": {e}"));
                    }
                }
            },
            (None, _) => {}
        }
        match (&s.hash_on, s.load_balancer) {
            (None, LoadBalancer::ConsistentHash) => self.at_value(
                &at("load_balancer"),
                format!("{what}: consistent_hash needs hash_on = \"header:NAME\", \"cookie:NAME\" or \"ip\""),
            ),
            (Some(h), LoadBalancer::ConsistentHash) => {
                if let Err(e) = hash_key(h, true) {
                    self.at_value(&at("hash_on"), format!("{what}: {e}"));
                }
            }
            (Some(_), _) => self.at_key(
                &at("hash_on"),
                format!("{what}: `hash_on` is only used with load_balancer = \"consistent_hash\""),
            ),
            (None, _) => {}
        }
        self.positive(&at("connect_timeout"), &format!("{what}: connect_timeout"), s.connect_timeout);
        self.positive(&at("timeout"), &format!("{what}: timeout"), s.timeout);
        if let Some(h) = &s.health_check {
            let hc = |key: &'static str| [K("services"), K(name), K("health_check"), K(key)];
            if !h.path.starts_with('/') {
                self.at_value(&hc("path"), format!("{what}: health_check.path must start with `/`"));
            }
            if h.service.is_some() && h.kind != HealthCheckKind::Grpc {
                self.at_key(&hc("service"), format!("{what}: health_check.service is only used with kind = \"grpc\""));
            }
            self.positive(&hc("interval"), &format!("{what}: health_check.interval"), h.interval);
            self.positive(&hc("timeout"), &format!("{what}: health_check.timeout"), h.timeout);
            if h.healthy_threshold == 0 {
                self.at_value(
                    &hc("healthy_threshold"),
                    format!("{what}: health_check.healthy_threshold must be at least 1"),
                );
            }
            if h.unhealthy_threshold == 0 {
                self.at_value(
                    &hc("unhealthy_threshold"),
                    format!("{what}: health_check.unhealthy_threshold must be at least 1"),
                );
            }
        }
        if let Some(c) = &s.circuit_breaker {
            let cb = |key: &'static str| [K("services"), K(name), K("circuit_breaker"), K(key)];
            if !(c.failure_ratio > 0.0 && c.failure_ratio <= 1.0) {
                self.at_value(
                    &cb("failure_ratio"),
                    format!("{what}: circuit_breaker.failure_ratio must be in (0, 1], not {}", c.failure_ratio),
                );
            }
            self.positive(&cb("window"), &format!("{what}: circuit_breaker.window"), c.window);
            self.positive(&cb("open_duration"), &format!("{what}: circuit_breaker.open_duration"), c.open_duration);
            if c.half_open_requests == 0 {
                self.at_value(
                    &cb("half_open_requests"),
                    format!("{what}: circuit_breaker.half_open_requests must be at least 1"),
                );
            }
            if c.consecutive_failures == Some(0) {
                self.at_value(
                    &cb("consecutive_failures"),
                    format!("{what}: circuit_breaker.consecutive_failures must be at least 1"),
                );
            }
            for (i, status) in c.failure_statuses.iter().enumerate() {
                if !(100..=599).contains(status) {
                    self.at_value(
                        &[K("services"), K(name), K("circuit_breaker"), K("failure_statuses"), I(i)],
                        format!("{what}: {status} is not an HTTP status code"),
                    );
                }
            }
        }
        if let Some(r) = &s.retry {
            let rt = |key: &'static str| [K("services"), K(name), K("retry"), K(key)];
            if !(0.0..=1.0).contains(&r.budget) {
                self.at_value(&rt("budget"), format!("{what}: retry.budget must be in [0, 1], not {}", r.budget));
            }
            for (i, on) in r.retry_on.iter().enumerate() {
                let ok = matches!(on.as_str(), "connect_failure" | "timeout" | "reset")
                    || (on.len() == 3 && on.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c)));
                if !ok {
                    self.at_value(
                        &[K("services"), K(name), K("retry"), K("retry_on"), I(i)],
                        format!("{what}: retry_on `{on}` is not connect_failure, timeout, reset or a status code such as \"503\""),
                    );
                }
            }
            if let Some(t) = r.per_try_timeout {
                self.positive(&rt("per_try_timeout"), &format!("{what}: retry.per_try_timeout"), t);
            }
        }
        match (&s.client_cert, &s.client_key) {
            (Some(_), None) => self.at_key(&at("client_cert"), format!("{what}: client_cert needs client_key")),
            (None, Some(_)) => self.at_key(&at("client_key"), format!("{what}: client_key needs client_cert")),
            _ => {}
        }
    }

    fn auth(&mut self, name: &str, p: &AuthProvider) {
        let base = [K("auth"), K(name)];
        let at = |key: &'static str| [K("auth"), K(name), K(key)];
        let what = format!("auth provider `{name}`");
        self.name(&base, None, "auth provider", name);
        match p.kind {
            AuthType::Jwt => {
                let foreign = [
                    ("header", p.header.is_some()),
                    ("query", p.query.is_some()),
                    ("keys", !p.keys.is_empty()),
                    ("keys_file", p.keys_file.is_some()),
                ];
                for (key, present) in foreign {
                    if present {
                        self.at_key(&at(key), format!("{what}: `{key}` is for type = \"api_key\" providers, not jwt"));
                    }
                }
                if p.algorithms.is_empty() {
                    self.at_value(
                        &at("type"),
                        format!("{what}: a jwt provider needs algorithms = [...] (pinned, such as [\"RS256\"])"),
                    );
                }
                let (mut hmac, mut public) = (None, None);
                for (i, alg) in p.algorithms.iter().enumerate() {
                    let path = [K("auth"), K(name), K("algorithms"), I(i)];
                    if alg.eq_ignore_ascii_case("none") {
                        self.at_value(&path, format!("{what}: algorithm `none` is never accepted"));
                    } else if !JWT_ALGORITHMS.contains(&alg.as_str()) {
                        self.at_value(
                            &path,
                            format!("{what}: unknown JWT algorithm `{alg}` (one of {})", JWT_ALGORITHMS.join(", ")),
                        );
                    } else if alg.starts_with("HS") {
                        hmac.get_or_insert(alg.as_str());
                    } else {
                        public.get_or_insert(alg.as_str());
                    }
                }
                if let (Some(h), Some(p)) = (hmac, public) {
                    self.at_value(
                        &at("algorithms"),
                        format!("{what}: mixes {h} (shared secret) and {p} (public key); use one provider for each"),
                    );
                }
                let sources: Vec<&str> = [
                    ("jwks_url", p.jwks_url.is_some()),
                    ("public_key_file", p.public_key_file.is_some()),
                    ("secret", p.secret.is_some()),
                ]
                .into_iter()
                .filter_map(|(k, present)| present.then_some(k))
                .collect();
                match sources.as_slice() {
                    [] => self.at_value(
                        &at("type"),
                        format!("{what}: a jwt provider needs one of jwks_url, public_key_file or secret"),
                    ),
                    [source] => match (*source, hmac, public) {
                        ("secret", _, Some(alg)) => self.at_key(
                            &at("secret"),
                            format!(
                                "{what}: `secret` is only for HS* algorithms; {alg} needs jwks_url or public_key_file"
                            ),
                        ),
                        (other, Some(alg), None) if other != "secret" => {
                            self.at_key(&at(other), format!("{what}: {alg} needs `secret`, not `{other}`"))
                        }
                        _ => {}
                    },
                    [_, rest @ ..] => {
                        for extra in rest {
                            self.at_key(
                                &at(extra),
                                format!(
                                    "{what}: set only one of jwks_url, public_key_file or secret (found {})",
                                    sources.join(", ")
                                ),
                            );
                        }
                    }
                }
                if p.secret.as_deref().is_some_and(|s| s.is_empty()) {
                    self.at_value(&at("secret"), format!("{what}: secret is empty"));
                }
                if let Some(url) = &p.jwks_url {
                    if !is_http_url(url) {
                        self.at_value(
                            &at("jwks_url"),
                            format!("{what}: jwks_url `{url}` must be an https:// (or http://) URL"),
                        );
                    }
                }
                if p.public_key_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
                    self.at_value(&at("public_key_file"), format!("{what}: public_key_file is empty"));
                }
                for (claim, header) in &p.forward_claims {
                    if !is_header_name(header) {
                        self.at_value(
                            &[K("auth"), K(name), K("forward_claims"), K(claim)],
                            format!("{what}: forward_claims: `{header}` is not a valid header name"),
                        );
                    }
                }
            }
            AuthType::ApiKey => {
                let foreign = [
                    ("algorithms", !p.algorithms.is_empty()),
                    ("jwks_url", p.jwks_url.is_some()),
                    ("public_key_file", p.public_key_file.is_some()),
                    ("secret", p.secret.is_some()),
                    ("issuer", p.issuer.is_some()),
                    ("audience", p.audience.is_some()),
                    ("leeway", p.leeway.is_some()),
                    ("forward_claims", !p.forward_claims.is_empty()),
                ];
                for (key, present) in foreign {
                    if present {
                        self.at_key(&at(key), format!("{what}: `{key}` is for type = \"jwt\" providers, not api_key"));
                    }
                }
                if p.header.is_none() && p.query.is_none() {
                    self.at_value(
                        &at("type"),
                        format!("{what}: an api_key provider needs header = \"x-api-key\" or query = \"NAME\""),
                    );
                }
                if let Some(h) = &p.header {
                    if !is_header_name(h) {
                        self.at_value(&at("header"), format!("{what}: `{h}` is not a valid header name"));
                    }
                }
                if p.query.as_deref().is_some_and(|q| q.is_empty()) {
                    self.at_value(&at("query"), format!("{what}: query is empty"));
                }
                if p.keys.is_empty() && p.keys_file.is_none() {
                    self.at_value(&at("type"), format!("{what}: an api_key provider needs keys = [...] or keys_file"));
                }
                for (i, key) in p.keys.iter().enumerate() {
                    let k = |field: &'static str| [K("auth"), K(name), K("keys"), I(i), K(field)];
                    if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                        self.at_value(
                            &k("sha256"),
                            format!("{what}: sha256 must be the 64 hex digits of the key's SHA-256 digest"),
                        );
                    }
                    if key.consumer.trim().is_empty() {
                        self.at_value(&k("consumer"), format!("{what}: consumer is empty"));
                    }
                }
            }
        }
    }

    fn rate_limit(&mut self, name: &str, r: &RateLimit) {
        let at = |key: &'static str| [K("rate_limits"), K(name), K(key)];
        let what = format!("rate limit `{name}`");
        self.name(&[K("rate_limits"), K(name)], None, "rate limit", name);
        if r.requests == 0 {
            self.at_value(&at("requests"), format!("{what}: requests must be greater than 0"));
        }
        self.positive(&at("per"), &format!("{what}: per"), r.per);
        if let Err(e) = rate_key(r.key.get_ref()) {
            self.at(r.key.span(), format!("{what}: {e}"));
        }
        if r.store == RateLimitStore::Redis && self.config.redis.is_none() {
            self.at_value(&at("store"), format!("{what}: store = \"redis\" needs a [redis] table with its url"));
        }
    }

    fn broker(&mut self, name: &str, b: &Broker) {
        let at = |key: &'static str| [K("brokers"), K(name), K(key)];
        let what = format!("broker `{name}`");
        self.name(&[K("brokers"), K(name)], None, "broker", name);
        match b.kind {
            BrokerKind::Amqp | BrokerKind::Nats => {
                let schemes: &[&str] = if b.kind == BrokerKind::Amqp {
                    &["amqp://", "amqps://"]
                } else {
                    &["nats://", "tls://", "ws://", "wss://"]
                };
                // NATS clients also take a bare `host:port`; AMQP URLs need their scheme.
                let url_ok = |url: &str| {
                    schemes.iter().any(|s| url.starts_with(s))
                        || (b.kind == BrokerKind::Nats && !url.contains("://") && parse_host_port(url, None).is_ok())
                };
                match &b.url {
                    None => self.at_value(&at("kind"), format!("{what} needs url = \"{}host:port\"", schemes[0])),
                    Some(url) if !url_ok(url) => self
                        .at_value(&at("url"), format!("{what}: url `{url}` must start with {}", schemes.join(" or "))),
                    Some(_) => {}
                }
                if !b.bootstrap.is_empty() {
                    self.at_key(&at("bootstrap"), format!("{what}: `bootstrap` is for kind = \"kafka\" brokers"));
                }
                if b.session_timeout.is_some() {
                    self.at_key(
                        &at("session_timeout"),
                        format!("{what}: `session_timeout` is for kind = \"kafka\" brokers"),
                    );
                }
            }
            BrokerKind::Kafka => {
                if b.bootstrap.is_empty() {
                    self.at_value(&at("kind"), format!("{what} needs bootstrap = [\"host:port\"]"));
                }
                for (i, server) in b.bootstrap.iter().enumerate() {
                    if let Err(e) = parse_host_port(server, None) {
                        self.at_value(
                            &[K("brokers"), K(name), K("bootstrap"), I(i)],
                            format!("{what}: `{server}`: {e}"),
                        );
                    }
                }
                if b.url.is_some() {
                    self.at_key(&at("url"), format!("{what}: a kafka broker takes bootstrap = [...], not url"));
                }
                if let Some(t) = b.session_timeout {
                    // Kafka brokers accept 6s..300s by default (group.min/max.session.timeout.ms).
                    if t.get() < std::time::Duration::from_secs(1) || t.get() > std::time::Duration::from_secs(3600) {
                        self.at_value(&at("session_timeout"), format!("{what}: session_timeout must be 1s..1h"));
                    }
                }
            }
        }
    }

    fn route(&mut self, i: usize, r: &Route) {
        let base = [K("routes"), I(i)];
        let at = |key: &'static str| [K("routes"), I(i), K(key)];
        let name = r.name.get_ref();
        let what = format!("route `{name}`");
        let name_span = r.name.span();
        self.name(&base, Some(name_span.clone()), "route", name);

        // Matching.
        match (&r.path, &r.path_prefix) {
            (None, None) => self.at(
                name_span.clone(),
                format!("{what} needs `path` or `path_prefix` (path_prefix = \"/\" matches every path)"),
            ),
            (Some(_), Some(prefix)) => {
                self.at(prefix.span(), format!("{what} sets both `path` and `path_prefix`; set exactly one"))
            }
            _ => {}
        }
        for (key, value) in [("path", &r.path), ("path_prefix", &r.path_prefix)] {
            if let Some(p) = value {
                if !p.get_ref().starts_with('/') {
                    self.at(p.span(), format!("{what}: {key} `{}` must start with `/`", p.get_ref()));
                }
            }
        }
        if let Some(rewrite) = &r.rewrite {
            if !rewrite.starts_with('/') {
                self.at_value(&at("rewrite"), format!("{what}: rewrite `{rewrite}` must start with `/`"));
            }
            if r.strip_prefix {
                self.at_key(&at("rewrite"), format!("{what}: set `strip_prefix` or `rewrite`, not both"));
            }
        }
        if r.strip_prefix && r.path_prefix.is_none() {
            self.at_value(&at("strip_prefix"), format!("{what}: strip_prefix needs `path_prefix`"));
        }
        if let Some(host) = &r.host {
            if !valid_route_host(host) {
                self.at_value(
                    &at("host"),
                    format!("{what}: host `{host}` must be a host name such as api.example.com or *.example.com"),
                );
            }
        }
        for (n, method) in r.methods.iter().enumerate() {
            if let Err(e) = method_token(method) {
                self.at_value(&[K("routes"), I(i), K("methods"), I(n)], format!("{what}: {e}"));
            }
        }
        for (header, value) in &r.headers {
            let path = [K("routes"), I(i), K("headers"), K(header)];
            if !is_header_name(header) {
                self.at_key(&path, format!("{what}: `{header}` is not a valid header name"));
            }
            if !is_header_value(value) {
                self.at_value(&path, format!("{what}: the value of `{header}` has control characters"));
            }
        }

        // Action.
        let actions: Vec<&str> = [
            ("service", r.service.is_some()),
            ("split", r.split.is_some()),
            ("aggregate", r.aggregate.is_some()),
            ("publish", r.publish.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, present)| present.then_some(k))
        .collect();
        match actions.len() {
            0 => self.at(
                name_span.clone(),
                format!("{what} has no action: set one of `service`, `split`, `aggregate` or `publish`"),
            ),
            1 => {}
            _ => self.at(
                name_span.clone(),
                format!(
                    "{what} sets {}; set exactly one of `service`, `split`, `aggregate` or `publish`",
                    actions.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(" and ")
                ),
            ),
        }
        let services = &self.config.services;
        if let Some(service) = &r.service {
            self.reference(&what, service, "service", services.contains_key(service.get_ref()));
        }
        if let Some(split) = &r.split {
            if split.is_empty() {
                self.at_value(&at("split"), format!("{what}: split needs at least one {{ service, weight }}"));
            } else if split.iter().all(|t| t.weight == 0) {
                self.at_value(&at("split"), format!("{what}: at least one split weight must be greater than 0"));
            }
            for target in split {
                self.reference(&what, &target.service, "service", services.contains_key(target.service.get_ref()));
            }
        }
        match (&r.sticky_on, &r.split) {
            (Some(_), None) => self.at_key(&at("sticky_on"), format!("{what}: sticky_on is only used with `split`")),
            (Some(s), Some(_)) => {
                if let Err(e) = hash_key(s, false) {
                    self.at_value(&at("sticky_on"), format!("{what}: sticky_on: {e}"));
                }
            }
            (None, _) => {}
        }
        if let Some(mirror) = &r.mirror {
            self.reference(&what, &mirror.service, "service", services.contains_key(mirror.service.get_ref()));
            if !(0.0..=100.0).contains(&mirror.percent) {
                self.at_value(
                    &[K("routes"), I(i), K("mirror"), K("percent")],
                    format!("{what}: mirror.percent must be between 0 and 100, not {}", mirror.percent),
                );
            }
        }
        if let Some(parts) = &r.aggregate {
            self.aggregate(i, &what, parts);
        }
        if let Some(publish) = &r.publish {
            self.publish(i, &what, publish);
        }

        // Policy.
        for provider in &r.auth {
            self.reference(&what, provider, "auth provider", self.config.auth.contains_key(provider.get_ref()));
        }
        if !r.require_claims.is_empty() && r.auth.is_empty() {
            self.at_key(&at("require_claims"), format!("{what}: require_claims needs `auth`"));
        }
        for limit in &r.rate_limit {
            self.reference(&what, limit, "rate limit", self.config.rate_limits.contains_key(limit.get_ref()));
        }
        self.ip_list(&base, "allow_ips", &r.allow_ips);
        self.ip_list(&base, "deny_ips", &r.deny_ips);
        if let Some(t) = r.timeout {
            self.positive(&at("timeout"), &format!("{what}: timeout"), t);
        }
        for (key, transform) in [("request_headers", &r.request_headers), ("response_headers", &r.response_headers)] {
            if let Some(t) = transform {
                for (op, map) in [("add", &t.add), ("set", &t.set)] {
                    for (header, value) in map {
                        let path = [K("routes"), I(i), K(key), K(op), K(header)];
                        if !is_header_name(header) {
                            self.at_key(&path, format!("{what}: {key}: `{header}` is not a valid header name"));
                        }
                        if !is_header_value(value) {
                            self.at_value(
                                &path,
                                format!("{what}: {key}: the value of `{header}` has control characters"),
                            );
                        }
                    }
                }
                for (n, header) in t.remove.iter().enumerate() {
                    if !is_header_name(header) {
                        self.at_value(
                            &[K("routes"), I(i), K(key), K("remove"), I(n)],
                            format!("{what}: {key}: `{header}` is not a valid header name"),
                        );
                    }
                }
            }
        }
        if let Some(cache) = &r.cache {
            let c = |key: &'static str| [K("routes"), I(i), K("cache"), K(key)];
            self.positive(&c("ttl"), &format!("{what}: cache.ttl"), cache.ttl);
            if cache.max_entries == 0 {
                self.at_value(&c("max_entries"), format!("{what}: cache.max_entries must be greater than 0"));
            }
            for (n, header) in cache.vary.iter().enumerate() {
                if !is_header_name(header) {
                    self.at_value(
                        &[K("routes"), I(i), K("cache"), K("vary"), I(n)],
                        format!("{what}: cache.vary: `{header}` is not a valid header name"),
                    );
                }
            }
        }
    }

    fn aggregate<'a>(&mut self, i: usize, what: &str, parts: &'a [AggregatePart]) {
        if parts.is_empty() {
            self.at_value(&[K("routes"), I(i), K("aggregate")], format!("{what}: aggregate needs at least one part"));
        }
        // A part is named by `name`, else by `into` (gateway-aggregate's `part_name`).
        let part_name = |p: &'a AggregatePart| p.name.as_deref().or(p.into.as_deref());
        let names: Vec<&str> = parts.iter().filter_map(part_name).collect();
        for (n, part) in parts.iter().enumerate() {
            let at = |key: &'static str| [K("routes"), I(i), K("aggregate"), I(n), K(key)];
            let exists = self.config.services.contains_key(part.service.get_ref());
            self.reference(what, &part.service, "service", exists);
            if !part.path.starts_with('/') {
                self.at_value(&at("path"), format!("{what}: aggregate path `{}` must start with `/`", part.path));
            }
            if let Some(method) = &part.method {
                if let Err(e) = method_token(method) {
                    self.at_value(&at("method"), format!("{what}: {e}"));
                }
            }
            if let Some(after) = &part.after {
                if !names.contains(&after.as_str()) || part_name(part) == Some(after.as_str()) {
                    self.at_value(&at("after"), format!("{what}: `after` names no other part (`{after}`)"));
                }
            }
            for header in part.headers.keys() {
                if !is_header_name(header) {
                    self.at_key(
                        &[K("routes"), I(i), K("aggregate"), I(n), K("headers"), K(header)],
                        format!("{what}: `{header}` is not a valid header name"),
                    );
                }
            }
        }
    }

    fn publish(&mut self, i: usize, what: &str, p: &Publish) {
        let Some(broker) = self.config.brokers.get(p.broker.get_ref()) else {
            self.reference(what, &p.broker, "broker", false);
            return;
        };
        let at = |key: &'static str| [K("routes"), I(i), K("publish"), K(key)];
        let fields = [
            ("exchange", p.exchange.is_some(), BrokerKind::Amqp),
            ("routing_key", p.routing_key.is_some(), BrokerKind::Amqp),
            ("subject", p.subject.is_some(), BrokerKind::Nats),
            ("topic", p.topic.is_some(), BrokerKind::Kafka),
            ("key", p.key.is_some(), BrokerKind::Kafka),
        ];
        let kind = kind_name(broker.kind);
        for (key, present, for_kind) in fields {
            if present && for_kind != broker.kind {
                self.at_key(
                    &at(key),
                    format!(
                        "{what}: publish.{key} is for {} brokers; `{}` is {kind}",
                        kind_name(for_kind),
                        p.broker.get_ref()
                    ),
                );
            }
        }
        // AMQP: an exchange, or the default exchange with a routing key (a queue name).
        let required = match broker.kind {
            BrokerKind::Amqp => ("`exchange` or `routing_key`", p.exchange.is_some() || p.routing_key.is_some()),
            BrokerKind::Nats => ("`subject`", p.subject.is_some()),
            BrokerKind::Kafka => ("`topic`", p.topic.is_some()),
        };
        if broker.kind == BrokerKind::Kafka {
            if let Some(Err(e)) = p.topic.as_deref().map(kafka_topic) {
                self.at_value(&at("topic"), format!("{what}: publish.topic {e}"));
            }
        }
        if !required.1 {
            self.at_value(
                &at("broker"),
                format!("{what}: publishing to {kind} broker `{}` needs {}", p.broker.get_ref(), required.0),
            );
        }
    }

    fn subscription(&mut self, i: usize, s: &Subscription) {
        let at = |key: &'static str| [K("subscriptions"), I(i), K(key)];
        let what = format!("subscription {}", i + 1);
        let services = &self.config.services;
        self.reference(&what, &s.deliver_to.service, "service", services.contains_key(s.deliver_to.service.get_ref()));
        if !s.deliver_to.path.starts_with('/') {
            self.at_value(
                &[K("subscriptions"), I(i), K("deliver_to"), K("path")],
                format!("{what}: deliver_to.path must start with `/`"),
            );
        }
        if s.max_attempts == 0 {
            self.at_value(&at("max_attempts"), format!("{what}: max_attempts must be at least 1"));
        }
        let Some(broker) = self.config.brokers.get(s.broker.get_ref()) else {
            self.reference(&what, &s.broker, "broker", false);
            return;
        };
        let kind = kind_name(broker.kind);
        let fields = [
            ("queue", s.queue.is_some(), BrokerKind::Amqp),
            ("bind", s.bind.is_some(), BrokerKind::Amqp),
            ("stream", s.stream.is_some(), BrokerKind::Nats),
            ("subject", s.subject.is_some(), BrokerKind::Nats),
            ("durable", s.durable.is_some(), BrokerKind::Nats),
            ("topic", s.topic.is_some(), BrokerKind::Kafka),
            ("group", s.group.is_some(), BrokerKind::Kafka),
        ];
        for (key, present, for_kind) in fields {
            if present && for_kind != broker.kind {
                self.at_key(
                    &at(key),
                    format!(
                        "{what}: `{key}` is for {} brokers; `{}` is {kind}",
                        kind_name(for_kind),
                        s.broker.get_ref()
                    ),
                );
            }
        }
        let required: &[(&str, bool)] = match broker.kind {
            BrokerKind::Amqp => &[("queue", s.queue.is_some())],
            BrokerKind::Nats => &[("subject", s.subject.is_some())],
            BrokerKind::Kafka => &[("topic", s.topic.is_some()), ("group", s.group.is_some())],
        };
        if broker.kind == BrokerKind::Kafka {
            for (key, name) in [("topic", &s.topic), ("dead_letter", &s.dead_letter)] {
                if let Some(Err(e)) = name.as_deref().map(kafka_topic) {
                    self.at_value(&at(key), format!("{what}: `{key}` {e}"));
                }
            }
            if s.group.as_deref().is_some_and(str::is_empty) {
                self.at_value(&at("group"), format!("{what}: `group` is empty"));
            }
            if s.dead_letter.is_some() && s.dead_letter == s.topic {
                self.at_value(&at("dead_letter"), format!("{what}: `dead_letter` is the subscription's own topic"));
            }
        }
        for (key, present) in required {
            if !present {
                self.at(
                    s.broker.span(),
                    format!("{what}: a subscription to {kind} broker `{}` needs `{key}`", s.broker.get_ref()),
                );
            }
        }
    }
}

/// A Kafka topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
fn kafka_topic(name: &str) -> Result<(), String> {
    let chars_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > 249 || !chars_ok || name == "." || name == ".." {
        return Err(format!("`{name}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"));
    }
    Ok(())
}

fn kind_name(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::Amqp => "amqp",
        BrokerKind::Nats => "nats",
        BrokerKind::Kafka => "kafka",
    }
}

/// Names appear in URLs, metric labels and `ratelimit-policy`: printable ASCII only.
fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if !name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'"' | b'\\')) {
        Some("may use only printable ASCII without spaces, `/`, `\"` or `\\`")
    } else {
        None
    }
}

fn is_http_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|s| url.len() > s.len() && url.starts_with(s))
}

/// An RFC 9110 token, as header names and methods are.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(crate) fn is_header_name(s: &str) -> bool {
    is_token(s)
}

/// No control characters other than tab (no CR/LF injection).
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn method_token(method: &str) -> Result<(), String> {
    if !is_token(method) {
        Err(format!("`{method}` is not an HTTP method"))
    } else if method.bytes().any(|b| b.is_ascii_lowercase()) {
        Err(format!("method `{method}` must be uppercase: `{}`", method.to_ascii_uppercase()))
    } else {
        Ok(())
    }
}

/// `*.example.com`, a host name or an address (`[::1]` in brackets), with an optional `:port`.
fn valid_route_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    parse_host_port(name, Some(1)).is_ok()
}

/// `header:NAME`, `cookie:NAME`, or (for hashing) `ip`.
fn hash_key(key: &str, allow_ip: bool) -> Result<(), String> {
    let expected =
        if allow_ip { "\"header:NAME\", \"cookie:NAME\" or \"ip\"" } else { "\"header:NAME\" or \"cookie:NAME\"" };
    match key.split_once(':') {
        None if allow_ip && key == "ip" => Ok(()),
        Some(("header", name)) if is_header_name(name) => Ok(()),
        Some(("cookie", name)) if is_token(name) => Ok(()),
        _ => Err(format!("`{key}` must be {expected}")),
    }
}

fn rate_key(key: &str) -> Result<(), String> {
    match key.split_once(':') {
        None if matches!(key, "ip" | "global" | "consumer") => Ok(()),
        Some(("header", name)) if is_header_name(name) => Ok(()),
        Some(("claim", name)) if !name.is_empty() && !name.contains(char::is_whitespace) => Ok(()),
        _ => Err(format!("key `{key}` must be \"ip\", \"global\", \"consumer\", \"header:NAME\" or \"claim:NAME\"")),
    }
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_` (SRV names start
/// with `_service._proto`), 1-63 bytes each, 253 in all; a trailing dot is allowed.
fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
