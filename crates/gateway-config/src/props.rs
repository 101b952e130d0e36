//! Properties of everything that reads text from the configuration file, on generated
//! input (proptest, a bounded number of cases so they run in the ordinary test suite;
//! the `config_parse` fuzz target in `fuzz/` checks the same on arbitrary bytes):
//!
//! - [`parse`] never panics, on arbitrary strings and on documents made of the pieces
//!   that matter (section headers, keys, values of every TOML type, `${VAR}` with set,
//!   unset and nasty variables, duplicates, unicode, very long numbers); every error it
//!   returns points at a line and column inside the text;
//! - durations, sizes, endpoints and networks never panic, and what they display parses
//!   back to the same value.

use proptest::prelude::*;

use crate::{parse, ByteSize, ConfigError, Duration, Endpoint, IpNet};

/// Whether `line:col` (1-based, columns in characters) is a place in `text`: on one of
/// its lines, at most one past the line's last character.
fn inside(text: &str, e: &ConfigError) -> bool {
    let Some(line) = text.split('\n').nth(e.line.wrapping_sub(1)) else { return false };
    e.col >= 1 && e.col <= line.chars().count() + 1
}

fn env(name: &str) -> Option<String> {
    match name {
        "SET" => Some("users".into()),
        "EMPTY" => Some(String::new()),
        "NASTY" => Some("a\"b'c\\d\ne\u{0}${SET}]]\n[server]".into()),
        "UNICODE" => Some("é\u{202e}😀".into()),
        _ => None,
    }
}

const HEADERS: &[&str] = &[
    "[server]",
    "[server.http2]",
    "[server.tls]",
    "[admin]",
    "[[routes]]",
    "[[routes.split]]",
    "[routes.mirror]",
    "[services.users]",
    "[services.\"${SET}\"]",
    "[services.x.health_check]",
    "[auth.jwt]",
    "[rate_limits.r]",
    "[[subscriptions]]",
    "[",
    "[[",
    "[]",
    "[a.]",
    "[é]",
];

const KEYS: &[&str] = &[
    "name",
    "path",
    "path_prefix",
    "service",
    "endpoints",
    "listen",
    "workers",
    "timeout",
    "max_body_bytes",
    "header_read_timeout",
    "host",
    "methods",
    "auth",
    "trusted_proxies",
    "allow_ips",
    "type",
    "secret",
    "algorithms",
    "rate_limit",
    "key",
    "rate",
    "burst",
    "strip_prefix",
    "rewrite",
    "weight",
    "token",
    "\"quoted ${SET}\"",
    "'lit'",
    "a.b",
    "é",
    "",
];

const VALUES: &[&str] = &[
    "\"users\"",
    "\"/api\"",
    "\"/users/{id}\"",
    "'literal'",
    "\"${SET}\"",
    "\"${UNSET}\"",
    "\"${EMPTY}\"",
    "'${NASTY}'",
    "\"${NASTY}\"",
    "\"x${UNICODE}y\"",
    "\"$${SET}\"",
    "\"${\"",
    "\"${1}\"",
    "\"\"\"a\n${SET}\n\"\"\"",
    "'''\n${NASTY}'''",
    "\"\\u0000\\\"\"",
    "\"\\ud800\"",
    "\"é😀\"",
    "0",
    "1",
    "-1",
    "+7",
    "0x7f",
    "99999999999999999999999999999999999999",
    "1.5",
    "1e400",
    "-0.0",
    "inf",
    "nan",
    "true",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "\"5s\"",
    "\"250ms\"",
    "\"1.5us\"",
    "\"99999999999999h\"",
    "\"10MiB\"",
    "\"99999999999999GiB\"",
    "[\"http://127.0.0.1:9001\"]",
    "[\"h2c://[::1]:80\", \"https://${SET}\"]",
    "[\"10.0.0.0/8\", \"::ffff:0:0/96\"]",
    "[\"GET\", 1]",
    "[]",
    "{}",
    "{ a = 1, a = 2 }",
    "{ service = \"users\", weight = 1 }",
    "[[1], {}]",
    "\"unterminated",
    "",
];

/// One line of a document: a header, `key = value`, or something broken.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(HEADERS).prop_map(str::to_owned),
        (prop::sample::select(KEYS), prop::sample::select(VALUES)).prop_map(|(k, v)| format!("{k} = {v}")),
        (prop::sample::select(KEYS), prop::sample::select(VALUES)).prop_map(|(k, v)| format!("{k} = {v} # ${{UNSET}}")),
        "[ -~é\t\"'#\\[\\]$\\{\\}=]{0,12}",
    ]
}

/// A document: sometimes a valid one to start from, so validation is reached too.
fn document() -> impl Strategy<Value = String> {
    const BASE: &str = "[services.users]\nendpoints = [\"http://127.0.0.1:9001\"]\n\n[[routes]]\nname = \"users\"\npath_prefix = \"/users\"\nservice = \"${SET}\"\n";
    (any::<bool>(), prop::collection::vec(line(), 0..16), prop_oneof![Just("\n"), Just("\r\n")]).prop_map(
        |(base, lines, newline)| {
            let mut text = if base { BASE.replace('\n', newline) } else { String::new() };
            for line in lines {
                text.push_str(&line);
                text.push_str(newline);
            }
            text
        },
    )
}

/// Parses `text` and checks the positions of its errors.
fn check(text: &str) -> Result<(), TestCaseError> {
    if let Err(errors) = parse("gw.toml", text, &env) {
        prop_assert!(!errors.is_empty(), "an error list is never empty");
        for e in &errors {
            prop_assert!(inside(text, e), "{} is outside the text {:?}", e, text);
        }
    }
    Ok(())
}

const DURATION_UNITS: &[&str] = &["us", "µs", "ms", "s", "m", "h", "d", "", " s", "ns", "S", "x"];
const SIZE_UNITS: &[&str] = &["", "b", "B", "KB", "kib", "k", "MB", "MiB", "m", "GB", "GiB", "g", "TB", " MiB", "x"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_arbitrary_strings(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn parse_never_panics_on_generated_documents(text in document()) {
        check(&text)?;
    }

    #[test]
    fn durations_round_trip(number in "[0-9]{0,12}(\\.[0-9]{0,12})?", unit in prop::sample::select(DURATION_UNITS)) {
        let text = format!("{number}{unit}");
        if let Ok(d) = text.parse::<Duration>() {
            prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d), "{} shown as {}", text, d);
        }
    }

    #[test]
    fn every_duration_round_trips(nanos in 0..=1_000_000_000_000_000_000u64) {
        let d = Duration(std::time::Duration::from_nanos(nanos));
        prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d), "shown as {}", d);
    }

    #[test]
    fn sizes_parse_as_written(n in any::<u64>(), unit in prop::sample::select(SIZE_UNITS)) {
        let scale = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => Some(1),
            "kb" => Some(1000),
            "kib" | "k" => Some(1024),
            "mb" => Some(1_000_000),
            "mib" | "m" => Some(1 << 20),
            "gb" => Some(1_000_000_000),
            "gib" | "g" => Some(1 << 30),
            _ => None,
        };
        let parsed = format!("{n}{unit}").parse::<ByteSize>().ok();
        prop_assert_eq!(parsed, scale.and_then(|s| n.checked_mul(s)).map(ByteSize));
    }

    #[test]
    fn units_never_panic(text in any::<String>()) {
        let _ = text.parse::<Duration>();
        let _ = text.parse::<ByteSize>();
    }

    #[test]
    fn endpoints_round_trip(
        scheme in "(http|HTTPS|h2c|ftp|)",
        host in "([a-z0-9_.-]{0,12}|\\[[0-9a-f:.]{0,20}\\]|[0-9.]{0,16}|[^/]{0,8})",
        port in "(:[0-9+]{0,6})?/?",
    ) {
        let text = format!("{scheme}://{host}{port}");
        if let Ok(endpoint) = Endpoint::parse(&text) {
            prop_assert_eq!(Endpoint::parse(&endpoint.to_string()), Ok(endpoint.clone()), "{} shown as {}", text, endpoint);
        }
    }

    #[test]
    fn endpoints_never_panic(text in any::<String>()) {
        let _ = Endpoint::parse(&text);
    }

    #[test]
    fn networks_round_trip(addr in any::<std::net::IpAddr>(), mapped in any::<bool>(), prefix in "(/[0-9]{0,4})?") {
        let addr = match addr {
            std::net::IpAddr::V4(v4) if mapped => std::net::IpAddr::V6(v4.to_ipv6_mapped()),
            addr => addr,
        };
        let text = format!("{addr}{prefix}");
        if let Ok(net) = IpNet::parse(&text) {
            prop_assert_eq!(IpNet::parse(&net.to_string()), Ok(net), "{} shown as {}", text, net);
            // An IPv4-mapped address is the IPv4 address it maps, which an IPv6 network
            // (`::/0`) does not contain: only a network of its own family must.
            if net.addr().is_ipv4() == addr.to_canonical().is_ipv4() {
                prop_assert!(net.contains(addr), "{} does not contain {}", net, addr);
            }
        }
    }

    #[test]
    fn networks_never_panic(text in any::<String>()) {
        let _ = IpNet::parse(&text);
    }
}
