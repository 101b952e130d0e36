//! Properties of route matching on generated route tables (prefixes, exact paths,
//! templates, hosts, methods) and generated request paths (proptest, bounded; the
//! `route_match` fuzz target in `fuzz/` checks the same):
//!
//! - [`RouteTable::find`] and [`RouteTable::upstream_path`] never panic, whatever the path;
//! - matching the normalised path equals matching it normalised again;
//! - a prefix route only matches its prefix on a whole segment, an exact route only its
//!   path;
//! - the path sent upstream is itself a normal path.

use http::{HeaderMap, Method};
use proptest::prelude::*;

use crate::{normalize_path, RouteTable};

/// What a generated route matches on.
#[derive(Debug, Clone)]
enum Kind {
    Prefix(String),
    Exact(String),
    Template(String),
    Everything,
}

/// Pieces of route paths, all in normal form; `{...}` make templates.
const ROUTE_SEGMENTS: &[&str] = &["api", "users", "v1", "a", "A", "x;y", "%2B", "~u", "é", "", "{id}", "{name}"];
/// Pieces of request paths: the route's pieces and the tricks normalisation undoes.
const REQUEST_PIECES: &[&str] = &[
    "/", "api", "users", "v1", "a", "A", "x;y", "%2b", "%2B", "~u", "%7eu", "é", "%C3%A9", ".", "..", "%2e", "%2E%2e",
    "%252e", "%2F", "\\", ";", "//", "apiX", "1", "%41",
];
const HOSTS: &[&str] = &["api.example.com", "*.example.com", "*.com", "*", "EXAMPLE.com", "[::1]"];
const REQUEST_HOSTS: &[&str] =
    &["api.example.com", "API.example.com:8080", "www.api.example.com", "example.com", "[::1]:80", "", ":", "é"];

fn route_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ROUTE_SEGMENTS), 0..4).prop_map(|segments| {
        let mut seen = std::collections::HashSet::new();
        // A template names each capture once.
        let segments: Vec<&str> = segments.into_iter().filter(|s| !s.starts_with('{') || seen.insert(*s)).collect();
        format!("/{}", segments.join("/"))
    })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        route_path().prop_map(|p| Kind::Prefix(p.replace(['{', '}'], ""))),
        route_path().prop_map(|p| Kind::Exact(p.replace(['{', '}'], ""))),
        (route_path(), any::<bool>()).prop_map(|(p, rest)| {
            Kind::Template(if rest { format!("{}/{{*rest}}", p.trim_end_matches('/')) } else { p })
        }),
        Just(Kind::Everything),
    ]
}

#[derive(Debug, Clone)]
struct GenRoute {
    kind: Kind,
    host: Option<&'static str>,
    methods: Vec<&'static str>,
    strip_prefix: bool,
}

fn routes() -> impl Strategy<Value = Vec<GenRoute>> {
    let route = (
        kind(),
        prop::option::of(prop::sample::select(HOSTS)),
        prop::collection::vec(prop::sample::select(&["GET", "post", "DELETE"][..]), 0..2),
        any::<bool>(),
    )
        .prop_map(|(kind, host, methods, strip_prefix)| GenRoute { kind, host, methods, strip_prefix });
    prop::collection::vec(route, 1..8)
}

/// The table of `routes`, or `None` when the configuration is refused (routes that
/// shadow each other, or a path that is not normal).
fn table(routes: &[GenRoute]) -> Option<RouteTable> {
    let mut text = String::new();
    for (i, route) in routes.iter().enumerate() {
        text.push_str(&format!("[[routes]]\nname = \"r{i}\"\n"));
        match &route.kind {
            Kind::Prefix(p) => text.push_str(&format!("path_prefix = {p:?}\n")),
            Kind::Exact(p) | Kind::Template(p) => text.push_str(&format!("path = {p:?}\n")),
            Kind::Everything => {}
        }
        if let Some(host) = route.host {
            text.push_str(&format!("host = {host:?}\n"));
        }
        text.push_str(&format!("methods = {:?}\n", route.methods));
        let strip = route.strip_prefix && !matches!(route.kind, Kind::Template(_));
        text.push_str(&format!("strip_prefix = {strip}\n"));
        if let (Kind::Template(p), true) = (&route.kind, route.strip_prefix) {
            // A rewrite that uses every capture, in another order.
            let mut names: Vec<&str> = p.split('/').filter(|s| s.starts_with('{')).collect();
            names.reverse();
            let rewrite = format!("/up/{}", names.join("/").replace('*', ""));
            text.push_str(&format!("rewrite = {rewrite:?}\n"));
        }
    }
    let config: gateway_config::Config = toml::from_str(&text).ok()?;
    RouteTable::compile(&config).ok()
}

fn request_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(REQUEST_PIECES), 0..8).prop_map(|pieces| pieces.join("/"))
}

/// A request path near a route's: its path (captures filled in) followed by `tail`, or
/// `tail` alone when it does not start with `/`.
fn near_route(route: &GenRoute, tail: &str) -> String {
    let path = match &route.kind {
        Kind::Prefix(p) | Kind::Exact(p) => p.clone(),
        Kind::Template(t) => {
            t.split('/').map(|s| if s.starts_with('{') { "42" } else { s }).collect::<Vec<_>>().join("/")
        }
        Kind::Everything => String::new(),
    };
    if tail.starts_with('/') {
        format!("{path}{tail}")
    } else {
        format!("/{tail}")
    }
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(&[Method::GET, Method::POST, Method::DELETE, Method::PUT][..])
}

/// The index of the route `find` chose, or the miss.
fn find(table: &RouteTable, host: &str, method: &Method, path: &str) -> Result<usize, crate::RouteMiss> {
    let host = (!host.is_empty()).then_some(host);
    table.find(host, method, path, &HeaderMap::new()).map(|m| m.route)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn matching_is_sound(
        routes in routes(),
        near in any::<prop::sample::Index>(),
        raw in request_path(),
        host in prop::sample::select(REQUEST_HOSTS),
        method in method(),
    ) {
        let Some(table) = table(&routes) else { return Ok(()) };
        let raw = near_route(&routes[near.index(routes.len())], &raw);
        // Whatever reaches it, normal or not, `find` answers.
        let _ = find(&table, host, &method, &raw);
        let Ok(path) = normalize_path(&raw) else { return Ok(()) };
        let again = normalize_path(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let chosen = find(&table, host, &method, &path);
        prop_assert_eq!(&chosen, &find(&table, host, &method, &again), "{:?} normalised again", path);
        let Ok(index) = chosen else { return Ok(()) };
        match &routes[index].kind {
            Kind::Prefix(prefix) => {
                let prefix = prefix.trim_end_matches('/');
                let rest = path.strip_prefix(prefix);
                prop_assert!(
                    rest.is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
                    "prefix {:?} matched {:?}", prefix, path
                );
            }
            Kind::Exact(exact) => prop_assert_eq!(exact, &*path),
            Kind::Template(_) | Kind::Everything => {}
        }
        let m = table.find((!host.is_empty()).then_some(host), &method, &path, &HeaderMap::new())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let upstream = table.upstream_path(&m, &path);
        prop_assert!(upstream.starts_with('/'), "upstream path {:?} for {:?}", upstream, path);
        let normal = normalize_path(&upstream);
        prop_assert_eq!(normal.as_deref(), Ok(&*upstream), "upstream of {:?}", path);
    }

    #[test]
    fn arbitrary_paths_and_hosts_never_panic(
        routes in routes(),
        path in any::<String>(),
        host in any::<String>(),
        method in method(),
    ) {
        let Some(table) = table(&routes) else { return Ok(()) };
        if let Ok(m) = table.find(Some(&host), &method, &path, &HeaderMap::new()) {
            let _ = table.upstream_path(&m, &path);
        }
    }
}
