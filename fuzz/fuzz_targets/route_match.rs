//! `cargo +nightly fuzz run route_match`: route matching on arbitrary request paths and
//! hosts, against tables made of a subset (chosen by the first byte) of routes of every
//! kind. `find` never panics; matching the normalised path equals matching it normalised
//! again; a prefix route matches its prefix only on a whole segment, an exact route only
//! its path; the path sent upstream is normal.
#![no_main]

use gateway_router::{normalize_path, RouteTable};
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;

/// `(path_prefix or path, host, extra keys)`; a `path` with braces is a template.
const ROUTES: &[(&str, &str, &str)] = &[
    ("path_prefix = \"/api\"", "", "strip_prefix = true"),
    ("path_prefix = \"/api/v1/\"", "api.example.com", "rewrite = \"/v2\""),
    ("path = \"/api/users\"", "", "methods = [\"GET\"]"),
    ("path = \"/users/{id}/x;y\"", "*.example.com", "rewrite = \"/u/{id}\""),
    ("path = \"/files/{*rest}\"", "", "rewrite = \"/static/{rest}\""),
    ("path_prefix = \"/%2B~u\"", "", ""),
    ("path = \"/\"", "", "strip_prefix = true"),
    ("", "", "methods = [\"POST\"]"),
];

fn table(mask: u8) -> Option<RouteTable> {
    let mut text = String::new();
    for (i, (path, host, extra)) in ROUTES.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0) {
        let host = if host.is_empty() { String::new() } else { format!("host = \"{host}\"\n") };
        text.push_str(&format!("[[routes]]\nname = \"r{i}\"\n{path}\n{host}{extra}\n"));
    }
    RouteTable::compile(&toml::from_str(&text).ok()?).ok()
}

fuzz_target!(|data: (u8, &str, &str)| {
    let (mask, host, raw) = data;
    let Some(table) = table(mask) else { return };
    let headers = HeaderMap::new();
    let host = (!host.is_empty()).then_some(host);
    if let Ok(m) = table.find(host, &Method::GET, raw, &headers) {
        let _ = table.upstream_path(&m, raw);
    }
    let Ok(path) = normalize_path(raw) else { return };
    let again = normalize_path(&path).expect("a normal path is a valid path");
    let chosen = table.find(host, &Method::GET, &path, &headers);
    assert_eq!(chosen, table.find(host, &Method::GET, &again, &headers));
    let Ok(m) = chosen else { return };
    let (rule, _, _) = ROUTES[table.route_name(m.route)[1..].parse::<usize>().expect("r{i}")];
    if let Some(prefix) = rule.strip_prefix("path_prefix = \"").and_then(|p| p.strip_suffix('"')) {
        let rest = path.strip_prefix(prefix.trim_end_matches('/'));
        assert!(rest.is_some_and(|r| r.is_empty() || r.starts_with('/')), "{prefix} matched {path}");
    } else if let Some(exact) = rule.strip_prefix("path = \"").and_then(|p| p.strip_suffix('"')) {
        assert!(exact.contains('{') || exact == path, "{exact} matched {path}");
    }
    let upstream = table.upstream_path(&m, &path);
    assert_eq!(normalize_path(&upstream).as_deref(), Ok(&*upstream));
});
