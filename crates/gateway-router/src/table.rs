//! The compiled route table: precedence, matching and the upstream path.

use std::borrow::Cow;
use std::cmp::Ordering;

use gateway_config::{Config, Route};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;

use crate::host::{request_host, HostMatch};
use crate::normalize::normalize_path;
use crate::params::Params;
use crate::template::{fill, is_template, parse_rewrite, RewritePart, Template};

/// Why a route of the configuration could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routes[{route}]: {message}")]
pub struct CompileError {
    /// Index into `config.routes`, so the caller can point at the route's span.
    pub route: usize,
    /// What is wrong, without the position (the caller adds `FILE:LINE:COL`).
    pub message: String,
}

/// The route chosen for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// Index into `config.routes` of the configuration the table was compiled from.
    pub route: usize,
    /// What the route's path template captured; empty for exact and prefix routes.
    pub params: Params,
}

/// Why no route was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteMiss {
    /// No route matches host, path and headers: 404.
    #[error("no route matches")]
    NotFound,
    /// Some route matches host, path and headers, none allows the method: 405.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The `allow` header: the methods of every route that matched all but the
        /// method, deduplicated, comma+space separated (`GET, POST`).
        allow: HeaderValue,
    },
}

/// Routes compiled from a [`Config`], sorted by precedence.
///
/// Matching is a linear scan in precedence order that stops at the first route that
/// matches everything: a few hundred routes is the design point, and no step of the
/// scan allocates. See the crate documentation for the precedence rules.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// In precedence order; ties keep file order (the sort is stable).
    routes: Box<[CompiledRoute]>,
    /// `config.routes` index -> position in `routes`.
    position: Box<[usize]>,
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    /// Index into `config.routes`.
    index: usize,
    name: Box<str>,
    host: HostMatch,
    path: PathMatch,
    /// Empty: any method.
    methods: Box<[Method]>,
    /// Every pair must be present; sorted so that equal sets compare equal.
    headers: Box<[(HeaderName, HeaderValue)]>,
    upstream: Upstream,
}

#[derive(Debug, Clone)]
enum PathMatch {
    /// `path` without braces: the whole normalised path, byte for byte.
    Exact(Box<str>),
    /// `path` with `{name}` / `{*rest}`.
    Template(Template),
    /// `path_prefix` without its trailing `/` (`/` is stored as the empty string); also a route that
    /// sets neither `path` nor `path_prefix`, which matches every path.
    Prefix(Box<str>),
}

#[derive(Debug, Clone)]
enum Upstream {
    /// Forward the normalised path.
    Unchanged,
    /// Exact route with `rewrite`, or with `strip_prefix` (then `/`).
    Replace(Box<str>),
    /// Prefix route: the matched prefix is replaced by this (empty for `strip_prefix`),
    /// stored without a trailing `/`.
    ReplacePrefix(Box<str>),
    /// Template route with `rewrite`.
    Rewrite(Box<[RewritePart]>),
}

impl RouteTable {
    /// Compiles every route of `config`, or returns every problem found.
    ///
    /// # Errors
    /// One [`CompileError`] per problem, sorted by route: malformed templates, names a
    /// rewrite uses that the path does not define, paths not in normalised form,
    /// invalid hosts, methods or headers, conflicting keys, routes that can never match.
    pub fn compile(config: &Config) -> Result<RouteTable, Vec<CompileError>> {
        let mut errors = Vec::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (index, route) in config.routes.iter().enumerate() {
            match CompiledRoute::compile(index, route) {
                Ok(compiled) => routes.push(compiled),
                Err(messages) => {
                    errors.extend(messages.into_iter().map(|message| CompileError { route: index, message }))
                }
            }
        }
        routes.sort_by(precedence);

        for (pos, later) in routes.iter().enumerate() {
            if let Some(earlier) = routes[..pos].iter().find(|earlier| earlier.shadows(later)) {
                errors.push(CompileError {
                    route: later.index,
                    message: format!(
                        "route \"{}\" can never match: route \"{}\" (routes[{}]) has the same host, path and headers and allows all of its methods",
                        later.name, earlier.name, earlier.index
                    ),
                });
            }
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.route);
            return Err(errors);
        }

        let mut position = vec![0; routes.len()];
        for (pos, route) in routes.iter().enumerate() {
            position[route.index] = pos;
        }
        Ok(RouteTable { routes: routes.into(), position: position.into() })
    }

    /// Chooses the route for a request.
    ///
    /// `host` is the `Host` header or URI authority, with or without a port; `path` is
    /// the output of [`normalize_path`](crate::normalize_path).
    ///
    /// # Errors
    /// [`RouteMiss::NotFound`] (404) or [`RouteMiss::MethodNotAllowed`] (405).
    pub fn find(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<RouteMatch, RouteMiss> {
        let host = host.map(request_host);
        let mut method_mismatch = false;
        for route in &self.routes {
            if !route.matches_request(host, path, headers) {
                continue;
            }
            if !route.allows(method) {
                method_mismatch = true;
                continue;
            }
            let params = match &route.path {
                PathMatch::Template(template) => template.captures(path).unwrap_or_default(),
                PathMatch::Exact(_) | PathMatch::Prefix(_) => Params::default(),
            };
            return Ok(RouteMatch { route: route.index, params });
        }
        if method_mismatch {
            Err(RouteMiss::MethodNotAllowed { allow: self.allow(host, path, headers) })
        } else {
            Err(RouteMiss::NotFound)
        }
    }

    /// The `allow` header for a 405: a second scan, only on that path.
    fn allow(&self, host: Option<&str>, path: &str, headers: &HeaderMap) -> HeaderValue {
        let mut methods: Vec<&Method> = Vec::new();
        for route in self.routes.iter().filter(|r| r.matches_request(host, path, headers)) {
            for method in &route.methods {
                if !methods.contains(&method) {
                    methods.push(method);
                }
            }
        }
        methods.sort_by_key(|m| (method_order(m), m.as_str()));
        let list = methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ");
        HeaderValue::from_str(&list).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The path to send upstream for a request that matched `m`.
    ///
    /// - `strip_prefix`: the matched prefix removed, always starting with `/` (`/api` →
    ///   `/`, `/api/x` → `/x`); on an exact route, `/`;
    /// - `rewrite` on a template route: the template filled from `m.params`;
    /// - `rewrite` on a prefix route: the matched prefix replaced by it
    ///   (`/api` → `/v2`: `/api/x` → `/v2/x`); on an exact route: the rewrite itself;
    /// - otherwise `path` unchanged, borrowed.
    ///
    /// `path` is the normalised path the match was made with; the query is the caller's.
    pub fn upstream_path<'a>(&'a self, m: &RouteMatch, path: &'a str) -> Cow<'a, str> {
        let Some(route) = self.route(m.route) else {
            return Cow::Borrowed(path);
        };
        match &route.upstream {
            Upstream::Unchanged => Cow::Borrowed(path),
            Upstream::Replace(new) => Cow::Borrowed(new),
            Upstream::ReplacePrefix(new) => {
                let PathMatch::Prefix(prefix) = &route.path else {
                    return Cow::Borrowed(path);
                };
                match path.strip_prefix(&**prefix) {
                    Some("") if new.is_empty() => Cow::Borrowed("/"),
                    Some(rest) if new.is_empty() && rest.starts_with('/') => Cow::Borrowed(rest),
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                        let mut out = String::with_capacity(new.len() + rest.len());
                        out.push_str(new);
                        out.push_str(rest);
                        Cow::Owned(out)
                    }
                    _ => Cow::Borrowed(path),
                }
            }
            Upstream::Rewrite(parts) => Cow::Owned(fill(parts, &m.params)),
        }
    }

    /// The `name` of route `idx` (an index into `config.routes`).
    ///
    /// # Panics
    /// If `idx >= self.len()`: indices come from [`RouteMatch::route`] of this table.
    pub fn route_name(&self, idx: usize) -> &str {
        &self.routes[self.position[idx]].name
    }

    /// The number of routes (equal to `config.routes.len()`).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    fn route(&self, idx: usize) -> Option<&CompiledRoute> {
        self.position.get(idx).and_then(|&pos| self.routes.get(pos))
    }
}

/// `Less` when `a` is tried first: path kind and specificity; then host (exact, longer
/// wildcard, none); then more header conditions; then a method list before none.
fn precedence(a: &CompiledRoute, b: &CompiledRoute) -> Ordering {
    a.path
        .cmp_rank(&b.path)
        .then_with(|| b.host.rank().cmp(&a.host.rank()))
        .then_with(|| b.headers.len().cmp(&a.headers.len()))
        .then_with(|| a.methods.is_empty().cmp(&b.methods.is_empty()))
}

fn method_order(m: &Method) -> u8 {
    const ORDER: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    ORDER.iter().position(|x| x == m).and_then(|p| u8::try_from(p).ok()).unwrap_or(u8::MAX)
}

impl PathMatch {
    #[inline]
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == &**exact,
            PathMatch::Template(template) => template.matches(path),
            PathMatch::Prefix(prefix) => {
                path.starts_with(&**prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
            }
        }
    }

    fn cmp_rank(&self, other: &PathMatch) -> Ordering {
        use PathMatch::*;
        match (self, other) {
            (Exact(_), Exact(_)) => Ordering::Equal,
            (Exact(_), _) => Ordering::Less,
            (_, Exact(_)) => Ordering::Greater,
            (Template(a), Template(b)) => a.cmp_specificity(b),
            (Template(_), Prefix(_)) => Ordering::Less,
            (Prefix(_), Template(_)) => Ordering::Greater,
            (Prefix(a), Prefix(b)) => b.len().cmp(&a.len()),
        }
    }

    fn same_matcher(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Exact(a), PathMatch::Exact(b)) | (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Template(a), PathMatch::Template(b)) => a.same_shape(b),
            _ => false,
        }
    }
}

impl CompiledRoute {
    fn compile(index: usize, route: &Route) -> Result<CompiledRoute, Vec<String>> {
        let mut errors = Vec::new();

        let host = match route.host.as_deref().map(HostMatch::parse).transpose() {
            Ok(host) => host.unwrap_or(HostMatch::Any),
            Err(e) => {
                errors.push(e);
                HostMatch::Any
            }
        };

        let path = match compile_path(route) {
            Ok(path) => Some(path),
            Err(e) => {
                errors.push(e);
                None
            }
        };

        let mut methods: Vec<Method> = Vec::with_capacity(route.methods.len());
        for raw in &route.methods {
            // Methods are case-sensitive on the wire; `get` in a config means GET.
            match Method::from_bytes(raw.to_ascii_uppercase().as_bytes()) {
                Ok(m) if !methods.contains(&m) => methods.push(m),
                Ok(_) => {}
                Err(_) => errors.push(format!("invalid method \"{raw}\"")),
            }
        }

        let mut headers = Vec::with_capacity(route.headers.len());
        for (name, value) in &route.headers {
            let parsed_name = HeaderName::from_bytes(name.as_bytes());
            let parsed_value = HeaderValue::from_str(value);
            match (parsed_name, parsed_value) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => errors.push(format!("invalid header name \"{name}\"")),
                (_, Err(_)) => errors.push(format!("invalid value for header \"{name}\"")),
            }
        }
        headers.sort_by(|a, b| (a.0.as_str(), a.1.as_bytes()).cmp(&(b.0.as_str(), b.1.as_bytes())));

        let upstream = match &path {
            Some(path) => match compile_upstream(route, path) {
                Ok(upstream) => upstream,
                Err(e) => {
                    errors.push(e);
                    Upstream::Unchanged
                }
            },
            None => Upstream::Unchanged,
        };

        match path {
            Some(path) if errors.is_empty() => Ok(CompiledRoute {
                index,
                name: route.name.get_ref().as_str().into(),
                host,
                path,
                methods: methods.into(),
                headers: headers.into(),
                upstream,
            }),
            _ => Err(errors),
        }
    }

    #[inline]
    fn matches_request(&self, host: Option<&str>, path: &str, headers: &HeaderMap) -> bool {
        self.host.matches(host)
            && self.path.matches(path)
            && self.headers.iter().all(|(name, want)| headers.get_all(name).iter().any(|v| v == want))
    }

    #[inline]
    fn allows(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    /// Whether `self`, tried first, leaves nothing for `later`.
    fn shadows(&self, later: &CompiledRoute) -> bool {
        self.host == later.host
            && self.path.same_matcher(&later.path)
            && self.headers == later.headers
            && (self.methods.is_empty()
                || (!later.methods.is_empty() && later.methods.iter().all(|m| self.methods.contains(m))))
    }
}

/// Requests are matched after normalisation, so a path that is not in normal form (or
/// not a valid request path at all) could never match: say so, with the fix.
fn check_normal(key: &str, value: &str) -> Result<(), String> {
    match normalize_path(value) {
        Ok(Cow::Borrowed(_)) => Ok(()),
        Ok(Cow::Owned(normal)) => Err(format!(
            "{key} \"{value}\" is not in normalised form (requests are matched normalised); write \"{normal}\""
        )),
        Err(e) => Err(format!("{key} \"{value}\" is not a valid request path: {e}")),
    }
}

fn compile_path(route: &Route) -> Result<PathMatch, String> {
    match (&route.path, &route.path_prefix) {
        (Some(_), Some(_)) => Err("set either `path` or `path_prefix`, not both".to_owned()),
        (Some(path), None) => {
            let path = path.get_ref().as_str();
            check_normal("path", path)?;
            if is_template(path) {
                Template::parse(path).map(PathMatch::Template).map_err(|e| format!("path \"{path}\": {e}"))
            } else {
                Ok(PathMatch::Exact(path.into()))
            }
        }
        (None, Some(prefix)) => {
            let prefix = prefix.get_ref().as_str();
            check_normal("path_prefix", prefix)?;
            if is_template(prefix) {
                return Err(format!(
                    "path_prefix \"{prefix}\" cannot be a template; use path = \"{}/{{*rest}}\"",
                    prefix.trim_end_matches('/')
                ));
            }
            Ok(PathMatch::Prefix(prefix.strip_suffix('/').unwrap_or(prefix).into()))
        }
        (None, None) => Ok(PathMatch::Prefix("".into())),
    }
}

fn compile_upstream(route: &Route, path: &PathMatch) -> Result<Upstream, String> {
    match (route.strip_prefix, route.rewrite.as_deref()) {
        (false, None) => Ok(Upstream::Unchanged),
        (true, Some(_)) => Err("set either `strip_prefix` or `rewrite`, not both".to_owned()),
        (true, None) => match path {
            PathMatch::Prefix(_) => Ok(Upstream::ReplacePrefix("".into())),
            PathMatch::Exact(_) => Ok(Upstream::Replace("/".into())),
            PathMatch::Template(_) => Err(
                "strip_prefix needs `path_prefix` or an exact `path`; with a template use rewrite (e.g. \"/{rest}\" with a {*rest} catch-all)"
                    .to_owned(),
            ),
        },
        (false, Some(rewrite)) => {
            check_normal("rewrite", rewrite)?;
            match path {
                PathMatch::Template(template) => parse_rewrite(rewrite, Some(template)).map(Upstream::Rewrite),
                PathMatch::Exact(_) => parse_rewrite(rewrite, None).map(|_| Upstream::Replace(rewrite.into())),
                PathMatch::Prefix(_) => parse_rewrite(rewrite, None)
                    .map(|_| Upstream::ReplacePrefix(rewrite.strip_suffix('/').unwrap_or(rewrite).into())),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> Config {
        toml::from_str::<Config>(toml_text).unwrap()
    }

    fn table(toml_text: &str) -> RouteTable {
        RouteTable::compile(&config(toml_text)).unwrap()
    }

    fn errors(toml_text: &str) -> Vec<CompileError> {
        RouteTable::compile(&config(toml_text)).unwrap_err()
    }

    /// The name of the route chosen for `GET host path`.
    fn pick(t: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
        t.find(host, &Method::GET, path, &HeaderMap::new()).ok().map(|m| t.route_name(m.route).to_owned())
    }

    fn get(t: &RouteTable, path: &str) -> Option<String> {
        pick(t, None, path)
    }

    #[test]
    fn exact_beats_template_beats_prefix() {
        let t = table(
            r#"
            [[routes]]
            name = "prefix"
            path_prefix = "/api/users"
            [[routes]]
            name = "template"
            path = "/api/users/{id}"
            [[routes]]
            name = "exact"
            path = "/api/users/me"
            "#,
        );
        assert_eq!(get(&t, "/api/users/me").as_deref(), Some("exact"));
        assert_eq!(get(&t, "/api/users/42").as_deref(), Some("template"));
        assert_eq!(get(&t, "/api/users/42/x").as_deref(), Some("prefix"));
        assert_eq!(get(&t, "/api/users").as_deref(), Some("prefix"));
        assert_eq!(get(&t, "/api/users/").as_deref(), Some("prefix"));
        assert_eq!(get(&t, "/api/usersX"), None);
        assert_eq!(get(&t, "//api/users/1"), None);
        assert_eq!(t.len(), 3);
        assert_eq!(t.route_name(2), "exact");
    }

    #[test]
    fn longer_prefix_wins_on_whole_segments() {
        let t = table(
            r#"
            [[routes]]
            name = "root"
            path_prefix = "/"
            [[routes]]
            name = "api"
            path_prefix = "/api/"
            [[routes]]
            name = "users"
            path_prefix = "/api/users"
            "#,
        );
        assert_eq!(get(&t, "/api/users/1").as_deref(), Some("users"));
        assert_eq!(get(&t, "/api/usersX").as_deref(), Some("api"));
        assert_eq!(get(&t, "/api").as_deref(), Some("api"));
        assert_eq!(get(&t, "/apiX").as_deref(), Some("root"));
        assert_eq!(get(&t, "/").as_deref(), Some("root"));
        assert_eq!(get(&t, "//api/users").as_deref(), Some("root"));
    }

    #[test]
    fn template_tie_breaks() {
        let t = table(
            r#"
            [[routes]]
            name = "catch_all"
            path = "/files/{*rest}"
            [[routes]]
            name = "param_first"
            path = "/{kind}/readme"
            [[routes]]
            name = "one_param"
            path = "/files/{name}"
            [[routes]]
            name = "two_literals"
            path = "/files/{name}/meta"
            "#,
        );
        assert_eq!(get(&t, "/files/a").as_deref(), Some("one_param"));
        assert_eq!(get(&t, "/files/a/meta").as_deref(), Some("two_literals"));
        assert_eq!(get(&t, "/files/readme").as_deref(), Some("one_param"));
        assert_eq!(get(&t, "/docs/readme").as_deref(), Some("param_first"));
        assert_eq!(get(&t, "/files/a/b").as_deref(), Some("catch_all"));
        assert_eq!(get(&t, "/files").as_deref(), Some("catch_all"));
        let m = t.find(None, &Method::GET, "/files/a/b/c", &HeaderMap::new()).unwrap();
        assert_eq!(m.params.get("rest"), Some("a/b/c"));
    }

    #[test]
    fn hosts() {
        let t = table(
            r#"
            [[routes]]
            name = "any"
            path_prefix = "/"
            [[routes]]
            name = "wild"
            host = "*.example.com"
            path_prefix = "/"
            [[routes]]
            name = "deep_wild"
            host = "*.eu.example.com"
            path_prefix = "/"
            [[routes]]
            name = "exact"
            host = "API.example.com"
            path_prefix = "/"
            [[routes]]
            name = "longer_path_no_host"
            path_prefix = "/special"
            "#,
        );
        assert_eq!(pick(&t, Some("api.example.com"), "/x").as_deref(), Some("exact"));
        assert_eq!(pick(&t, Some("Api.Example.com:8443"), "/x").as_deref(), Some("exact"));
        assert_eq!(pick(&t, Some("www.example.com"), "/x").as_deref(), Some("wild"));
        assert_eq!(pick(&t, Some("a.b.example.com:80"), "/x").as_deref(), Some("wild"));
        assert_eq!(pick(&t, Some("x.eu.example.com"), "/x").as_deref(), Some("deep_wild"));
        assert_eq!(pick(&t, Some("example.com"), "/x").as_deref(), Some("any"));
        assert_eq!(pick(&t, None, "/x").as_deref(), Some("any"));
        // Path rank comes before host rank.
        assert_eq!(pick(&t, Some("api.example.com"), "/special/1").as_deref(), Some("longer_path_no_host"));
    }

    #[test]
    fn host_route_beats_hostless_then_file_order() {
        let t = table(
            r#"
            [[routes]]
            name = "first"
            path = "/x"
            methods = ["GET"]
            [[routes]]
            name = "second"
            path = "/x"
            methods = ["POST", "GET"]
            [[routes]]
            name = "hosted"
            host = "a.test"
            path = "/x"
            "#,
        );
        assert_eq!(pick(&t, Some("a.test"), "/x").as_deref(), Some("hosted"));
        assert_eq!(pick(&t, Some("b.test"), "/x").as_deref(), Some("first"));
        let m = t.find(Some("b.test"), &Method::POST, "/x", &HeaderMap::new()).unwrap();
        assert_eq!(t.route_name(m.route), "second");
    }

    #[test]
    fn methods_and_405() {
        let t = table(
            r#"
            [[routes]]
            name = "read"
            path_prefix = "/api"
            methods = ["get", "HEAD"]
            [[routes]]
            name = "write"
            path = "/api/items"
            methods = ["POST", "GET", "put"]
            [[routes]]
            name = "other_host"
            host = "other.test"
            path = "/api/items"
            methods = ["DELETE"]
            "#,
        );
        let find = |m: Method, p: &str| t.find(Some("h.test"), &m, p, &HeaderMap::new());
        assert_eq!(t.route_name(find(Method::GET, "/api/items").unwrap().route), "write");
        assert_eq!(t.route_name(find(Method::HEAD, "/api/items").unwrap().route), "read");
        assert_eq!(t.route_name(find(Method::GET, "/api/other").unwrap().route), "read");
        assert_eq!(
            find(Method::DELETE, "/api/items"),
            Err(RouteMiss::MethodNotAllowed { allow: HeaderValue::from_static("GET, HEAD, POST, PUT") })
        );
        assert_eq!(
            find(Method::POST, "/api/x"),
            Err(RouteMiss::MethodNotAllowed { allow: HeaderValue::from_static("GET, HEAD") })
        );
        assert_eq!(find(Method::GET, "/nope"), Err(RouteMiss::NotFound));
    }

    #[test]
    fn headers_match_exactly() {
        let t = table(
            r#"
            [[routes]]
            name = "v1"
            path_prefix = "/api"
            [[routes]]
            name = "v2"
            path_prefix = "/api"
            headers = { "X-Api-Version" = "2" }
            "#,
        );
        let mut h = HeaderMap::new();
        let name = |t: &RouteTable, h: &HeaderMap| {
            t.route_name(t.find(None, &Method::GET, "/api/x", h).unwrap().route).to_owned()
        };
        assert_eq!(name(&t, &h), "v1");
        h.insert("x-api-version", HeaderValue::from_static("2"));
        assert_eq!(name(&t, &h), "v2");
        h.insert("x-api-version", HeaderValue::from_static("20"));
        assert_eq!(name(&t, &h), "v1");
        h.insert("x-api-version", HeaderValue::from_static("1"));
        h.append("x-api-version", HeaderValue::from_static("2"));
        assert_eq!(name(&t, &h), "v2");
    }

    #[test]
    fn header_mismatch_is_404_not_405() {
        let t = table(
            r#"
            [[routes]]
            name = "v2"
            path = "/api"
            methods = ["GET"]
            headers = { "x-v" = "2" }
            "#,
        );
        assert_eq!(t.find(None, &Method::POST, "/api", &HeaderMap::new()), Err(RouteMiss::NotFound));
    }

    fn upstream(t: &RouteTable, path: &str) -> String {
        let m = t.find(None, &Method::GET, path, &HeaderMap::new()).unwrap();
        t.upstream_path(&m, path).into_owned()
    }

    #[test]
    fn strip_prefix_and_rewrite() {
        let t = table(
            r#"
            [[routes]]
            name = "strip"
            path_prefix = "/api/"
            strip_prefix = true
            [[routes]]
            name = "strip_root"
            path_prefix = "/"
            strip_prefix = true
            [[routes]]
            name = "user"
            path = "/users/{id}"
            rewrite = "/v2/users/{id}"
            [[routes]]
            name = "moved"
            path_prefix = "/old"
            rewrite = "/new/"
            [[routes]]
            name = "health"
            path = "/healthz"
            rewrite = "/internal/health"
            [[routes]]
            name = "exact_strip"
            path = "/ping"
            strip_prefix = true
            [[routes]]
            name = "plain"
            path_prefix = "/plain"
            "#,
        );
        assert_eq!(upstream(&t, "/api"), "/");
        assert_eq!(upstream(&t, "/api/"), "/");
        assert_eq!(upstream(&t, "/api/x/y"), "/x/y");
        assert_eq!(upstream(&t, "/zzz"), "/zzz");
        assert_eq!(upstream(&t, "/users/42"), "/v2/users/42");
        assert_eq!(upstream(&t, "/old"), "/new");
        assert_eq!(upstream(&t, "/old/a"), "/new/a");
        assert_eq!(upstream(&t, "/healthz"), "/internal/health");
        assert_eq!(upstream(&t, "/ping"), "/");
        assert_eq!(upstream(&t, "/plain/a;b"), "/plain/a;b");
    }

    #[test]
    fn rewrite_with_catch_all() {
        let t = table(
            r#"
            [[routes]]
            name = "files"
            path = "/files/{owner}/{*rest}"
            rewrite = "/store/{owner}/{*rest}"
            "#,
        );
        assert_eq!(upstream(&t, "/files/ann/a/b.txt"), "/store/ann/a/b.txt");
        assert_eq!(upstream(&t, "/files/ann"), "/store/ann/");
    }

    #[test]
    fn upstream_path_borrows_when_it_can() {
        let t = table(
            r#"
            [[routes]]
            name = "strip"
            path_prefix = "/api"
            strip_prefix = true
            [[routes]]
            name = "plain"
            path_prefix = "/plain"
            "#,
        );
        for path in ["/api/x", "/api", "/plain/x"] {
            let m = t.find(None, &Method::GET, path, &HeaderMap::new()).unwrap();
            assert!(matches!(t.upstream_path(&m, path), Cow::Borrowed(_)), "{path}");
        }
    }

    #[test]
    fn no_path_matches_everything() {
        let t = table(
            r#"
            [[routes]]
            name = "host_only"
            host = "a.test"
            "#,
        );
        assert_eq!(pick(&t, Some("a.test"), "/anything/at/all").as_deref(), Some("host_only"));
        assert_eq!(pick(&t, Some("b.test"), "/"), None);
    }

    fn messages(toml_text: &str) -> Vec<(usize, String)> {
        errors(toml_text).into_iter().map(|e| (e.route, e.message)).collect()
    }

    #[test]
    fn compile_errors_point_at_the_route() {
        let errs = messages(
            r#"
            [[routes]]
            name = "ok"
            path = "/ok/{id}"
            [[routes]]
            name = "unbalanced"
            path = "/a/{id"
            [[routes]]
            name = "catch_all_not_last"
            path = "/a/{*rest}/b"
            [[routes]]
            name = "duplicate_names"
            path = "/a/{id}/{id}"
            [[routes]]
            name = "mid_segment"
            path = "/a{b}"
            [[routes]]
            name = "unknown_rewrite_name"
            path = "/u/{id}"
            rewrite = "/v2/{uid}"
            [[routes]]
            name = "both_paths"
            path = "/x"
            path_prefix = "/x"
            [[routes]]
            name = "not_normal"
            path_prefix = "/a/../b"
            [[routes]]
            name = "bad_method"
            path = "/m"
            methods = ["GE T"]
            [[routes]]
            name = "bad_header"
            path = "/h"
            headers = { "bad header" = "x" }
            [[routes]]
            name = "bad_host"
            host = "a.test:8080"
            path = "/host"
            [[routes]]
            name = "strip_and_rewrite"
            path_prefix = "/s"
            strip_prefix = true
            rewrite = "/t"
            [[routes]]
            name = "strip_template"
            path = "/t/{id}"
            strip_prefix = true
            [[routes]]
            name = "prefix_template"
            path_prefix = "/p/{id}"
            [[routes]]
            name = "rewrite_query"
            path = "/q/{id}"
            rewrite = "/q?id={id}"
            [[routes]]
            name = "relative"
            path = "rel"
            "#,
        );
        let routes: Vec<usize> = errs.iter().map(|(r, _)| *r).collect();
        assert_eq!(routes, (1..=15).collect::<Vec<_>>(), "{errs:#?}");
        assert!(errs[0].1.contains("unbalanced"), "{}", errs[0].1);
        assert!(errs[1].1.contains("last segment"), "{}", errs[1].1);
        assert!(errs[2].1.contains("twice"), "{}", errs[2].1);
        assert!(errs[3].1.contains("whole segment"), "{}", errs[3].1);
        assert!(errs[4].1.contains("uid"), "{}", errs[4].1);
        assert!(errs[6].1.contains("write \"/b\""), "{}", errs[6].1);
    }

    #[test]
    fn several_errors_for_one_route() {
        let errs = messages(
            r#"
            [[routes]]
            name = "many"
            host = "*"
            path = "/a/{x"
            methods = ["G(T"]
            "#,
        );
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs.iter().all(|(r, _)| *r == 0));
    }

    #[test]
    fn shadowed_routes_are_errors() {
        let errs = messages(
            r#"
            [[routes]]
            name = "a"
            path = "/u/{id}"
            [[routes]]
            name = "b"
            path = "/u/{user}"
            methods = ["GET"]
            [[routes]]
            name = "c"
            path_prefix = "/p"
            methods = ["GET", "POST"]
            [[routes]]
            name = "d"
            path_prefix = "/p/"
            methods = ["post"]
            [[routes]]
            name = "e"
            path_prefix = "/p"
            methods = ["PUT"]
            "#,
        );
        // `b` is tried before `a` (it lists methods), so `a` still gets POST: no error.
        // `d` is fully covered by `c`; `e` is not.
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].0, 3);
        assert!(errs[0].1.contains("\"c\""), "{}", errs[0].1);
    }

    #[test]
    fn empty_table() {
        let t = RouteTable::compile(&Config::default()).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.find(None, &Method::GET, "/", &HeaderMap::new()), Err(RouteMiss::NotFound));
    }
}
