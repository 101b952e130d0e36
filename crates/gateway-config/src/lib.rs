//! `gateway-config`: the schema of `gateway.toml`, `${ENV}` interpolation, validation
//! whose every error names `FILE:LINE:COL`, and the watcher that notices when the file
//! changes.
//!
//! [`parse`] and [`load`] either return a [`Config`] that passed every check, or every
//! error found (not just the first), sorted by position. Nothing here binds a socket or
//! reads any file other than the configuration itself.
//!
//! Interpolation: inside any quoted string (values and quoted keys, basic or literal,
//! one line or several), `${NAME}` (`NAME` = `[A-Za-z_][A-Za-z0-9_]*`) is replaced by
//! the variable's value before the TOML is parsed; a missing variable is an error at
//! its `${`. `$${` stands for a literal `${`. Comments are never expanded. In a
//! `"basic"` string the value is escaped, so it can hold quotes, backslashes and
//! newlines; a `'literal'` string cannot hold a `'` or a control character. Only
//! strings are expanded: `workers = ${N}` is not TOML.
//!
//! ```
//! let text = r#"
//! [services.users]
//! endpoints = ["http://127.0.0.1:9001"]
//!
//! [[routes]]
//! name = "users"
//! path_prefix = "/api/users"
//! service = "${USERS_SERVICE}"
//! "#;
//! let env = |name: &str| (name == "USERS_SERVICE").then(|| "users".to_owned());
//! let config = gateway_config::parse("gateway.toml", text, &env).expect("valid");
//! assert_eq!(gateway_config::summary(&config), "ok: 1 routes, 1 services");
//!
//! let errors = gateway_config::parse("gateway.toml", "[server]\nworkers = -1\n", &env).unwrap_err();
//! assert!(errors[0].to_string().starts_with("gateway.toml:2:11: "));
//! ```

mod endpoint;
mod env;
mod error;
mod ipnet;
pub mod schema;
mod spans;
pub mod units;
mod validate;
mod watch;

use std::hash::{Hash, Hasher};
use std::path::Path;

use serde::Deserialize;
use toml::de::DeTable;

pub use endpoint::{Endpoint, Scheme};
pub use error::{ConfigError, ConfigErrors};
pub use ipnet::IpNet;
pub use schema::*;
pub use units::{ByteSize, Duration};
pub use validate::JWT_ALGORITHMS;
pub use watch::{watch, ConfigWatcher, DEBOUNCE};

/// Parses, interpolates and validates the text of a configuration file.
///
/// `file_name` is only used in error messages. `env` looks up `${NAME}` references
/// (pass `&|n| std::env::var(n).ok()` for the process environment). The spans of
/// `Spanned` values in the result are byte offsets into `text` as given (before
/// interpolation); [`line_col`] turns one into a position.
pub fn parse(file_name: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<ConfigError>> {
    let expanded = match env::expand(file_name, text, env) {
        Ok(expanded) => expanded,
        Err(mut errors) => {
            // Interpolation only touches the inside of strings, so the syntax of the
            // original text is the syntax of the expanded one: report both at once.
            let (_, syntax) = DeTable::parse_recoverable(text);
            let map = env::SourceMap::identity(file_name, text);
            errors.extend(syntax.iter().map(|e| toml_error(&map, e, text.len())));
            return Err(sorted(errors));
        }
    };
    let map = &expanded.map;
    let (doc, syntax) = DeTable::parse_recoverable(&expanded.text);
    if !syntax.is_empty() {
        return Err(sorted(syntax.iter().map(|e| toml_error(map, e, expanded.text.len())).collect()));
    }
    let mut config = deserialize(map, doc.get_ref(), expanded.text.len())?;
    let errors = validate::validate(&config, &spans::Spans::new(doc.get_ref(), map));
    if !errors.is_empty() {
        return Err(sorted(errors));
    }
    remap_spans(&mut config, map);
    Ok(config)
}

/// 1-based line and column (in characters) of a byte offset into `text`, such as
/// the start of a `Spanned` value of a parsed [`Config`] in the file's text.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    env::line_col(text, offset)
}

/// Moves every span of `config` from the expanded text to the file as written, so
/// that spans handed out are byte offsets into the file the user edits.
fn remap_spans(config: &mut Config, map: &env::SourceMap) {
    let fix = |s: &mut serde_spanned::Spanned<String>| {
        let span = s.span();
        let start = map.original_offset(span.start);
        let end = map.original_offset(span.end).max(start);
        let value = std::mem::take(s.get_mut());
        *s = serde_spanned::Spanned::new(start..end, value);
    };
    for service in config.services.values_mut() {
        service.endpoints.iter_mut().for_each(fix);
    }
    for limit in config.rate_limits.values_mut() {
        fix(&mut limit.key);
    }
    for route in &mut config.routes {
        fix(&mut route.name);
        route.path.iter_mut().chain(route.path_prefix.iter_mut()).chain(route.service.iter_mut()).for_each(fix);
        route.auth.iter_mut().chain(route.rate_limit.iter_mut()).for_each(fix);
        route.split.iter_mut().flatten().for_each(|t| fix(&mut t.service));
        route.mirror.iter_mut().for_each(|m| fix(&mut m.service));
        route.aggregate.iter_mut().flatten().for_each(|p| fix(&mut p.service));
        route.publish.iter_mut().for_each(|p| fix(&mut p.broker));
    }
    for subscription in &mut config.subscriptions {
        fix(&mut subscription.broker);
        fix(&mut subscription.deliver_to.service);
    }
}

/// Reads and parses `path` with the process environment. An unreadable file is one
/// error at 1:1.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    load_with_hash(path).map(|(config, _)| config)
}

/// Like [`load`], and also returns the [`content_hash`] of the file as read.
pub fn load_with_hash(path: &Path) -> Result<(Config, u64), Vec<ConfigError>> {
    let (name, text) = read(path)?;
    let hash = content_hash(&text);
    parse(&name, &text, &|var| std::env::var(var).ok()).map(|config| (config, hash))
}

/// Loads `path` unless its content hash equals `previous`: then `Ok(None)`, so a
/// reload triggered by a write that changed nothing (or by `touch`) is skipped.
pub fn load_if_changed(path: &Path, previous: Option<u64>) -> Result<Option<(Config, u64)>, Vec<ConfigError>> {
    let (name, text) = read(path)?;
    let hash = content_hash(&text);
    if previous == Some(hash) {
        return Ok(None);
    }
    parse(&name, &text, &|var| std::env::var(var).ok()).map(|config| Some((config, hash)))
}

/// A hash of the file's text, stable within one process (not across builds).
pub fn content_hash(text: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// The one line `gateway check` prints for a valid file: `ok: 3 routes, 2 services`.
pub fn summary(config: &Config) -> String {
    format!("ok: {} routes, {} services", config.routes.len(), config.services.len())
}

fn read(path: &Path) -> Result<(String, String), Vec<ConfigError>> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((name, text)),
        Err(e) => Err(vec![ConfigError::at_start(&name, format!("cannot read the configuration file: {e}"))]),
    }
}

fn sorted(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    errors.sort_by_key(|e| (e.line, e.col));
    errors.dedup();
    errors
}

fn toml_error(map: &env::SourceMap, e: &toml::de::Error, len: usize) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start.min(len));
    map.error_at(offset, e.message())
}

/// Deserializes the document. On failure, removes the innermost part that holds the
/// error (the unknown key, the value of the wrong type, the table that misses a
/// field) and tries again, so a file with several mistakes reports each of them.
/// A "missing field" error about a key removed that way is not the user's and is not
/// reported; the table it is about is removed instead.
fn deserialize(map: &env::SourceMap, doc: &DeTable<'_>, len: usize) -> Result<Config, Vec<ConfigError>> {
    const MAX_ERRORS: usize = 100;
    let mut doc = doc.clone();
    let mut errors = Vec::new();
    let mut removed: Vec<(String, usize)> = Vec::new();
    for _ in 0..MAX_ERRORS * 2 {
        let whole = toml::de::Deserializer::from(serde_spanned::Spanned::new(0..len, doc.clone()));
        let e = match Config::deserialize(whole) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(e) => e,
        };
        let Some(span) = e.span() else {
            errors.push(toml_error(map, &e, len));
            break;
        };
        let ours = e
            .message()
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .is_some_and(|field| removed.iter().any(|(key, table)| key == field && *table == span.start));
        if !ours {
            errors.push(toml_error(map, &e, len));
            if errors.len() >= MAX_ERRORS {
                break;
            }
        }
        match spans::remove_deepest(&mut doc, 0..len, span.start) {
            spans::Removed::Key { key, table } => removed.push((key, table)),
            spans::Removed::Element => {}
            spans::Removed::Nothing => break,
        }
    }
    Err(sorted(errors))
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
