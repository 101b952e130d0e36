//! `gateway-router`: which route a request belongs to, and what path goes upstream.
//!
//! This crate owns three things and nothing else:
//! - [`normalize_path`]: the one canonical form of a request path (dot segments removed,
//!   unreserved escapes decoded, `%2F` / `%5C` / `%00` / `\` refused). The same
//!   normalised path is matched and forwarded.
//! - [`RouteTable::compile`]: `[[routes]]` of a [`gateway_config::Config`] compiled into
//!   a table sorted by precedence, with every mistake reported per route
//!   ([`CompileError::route`] indexes `config.routes`).
//! - [`RouteTable::find`] and [`RouteTable::upstream_path`]: the route for a request
//!   (or 404 / 405 with `allow`), and the path to send upstream (`strip_prefix`,
//!   `rewrite`).
//!
//! ```
//! use gateway_router::{normalize_path, RouteTable};
//! use http::{HeaderMap, Method};
//!
//! let config: gateway_config::Config = toml::from_str(r#"
//!     [[routes]]
//!     name = "user"
//!     path = "/api/users/{id}"
//!     rewrite = "/v2/users/{id}"
//!
//!     [[routes]]
//!     name = "api"
//!     host = "*.example.com"
//!     path_prefix = "/api"
//!     strip_prefix = true
//! "#)?;
//! let table = RouteTable::compile(&config).map_err(|e| format!("{e:?}"))?;
//!
//! let path = normalize_path("/api/./users/%34%32")?; // `/api/users/42`
//! let m = table.find(Some("www.example.com:8080"), &Method::GET, &path, &HeaderMap::new())?;
//! assert_eq!(table.route_name(m.route), "user");
//! assert_eq!(m.params.get("id"), Some("42"));
//! assert_eq!(table.upstream_path(&m, &path), "/v2/users/42");
//!
//! let m = table.find(Some("www.example.com"), &Method::GET, "/api/orders", &HeaderMap::new())?;
//! assert_eq!(table.upstream_path(&m, "/api/orders"), "/orders");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Matching
//!
//! - **Host**: `host = "api.example.com"` matches that name in any letter case, with
//!   any port; `"*.example.com"` matches names one or more labels below
//!   `example.com` but not `example.com` itself; no `host` (or `"*"`) matches any host
//!   and requests without one.
//! - **Path** (on the normalised path, byte for byte, case-sensitive): `path` without
//!   braces is exact (`/a` does not match `/a/`). `path = "/users/{id}"`: `{id}` is one
//!   whole non-empty segment. A final `{*rest}` matches the remainder, zero or more
//!   segments: `/files/{*rest}` matches `/files` and `/files/` (rest `""`) and
//!   `/files/a/b` (rest `a/b`). `path_prefix` matches whole segments (`/api` matches
//!   `/api`, `/api/`, `/api/x`, not `/apiX`; a trailing `/` in the prefix is ignored;
//!   `/` matches everything). A route with neither `path` nor `path_prefix` matches
//!   every path. Repeated `/` are not collapsed: `/a/b` does not match `//a/b`.
//! - **Methods**: empty = any; names are upper-cased (`get` = `GET`). `HEAD` is not
//!   implied by `GET`.
//! - **Headers**: every listed header must be present with exactly that value (any of
//!   its values if it is repeated); names are case-insensitive.
//!
//! # Precedence
//!
//! Routes are sorted once, at compile time; the first route that matches host, path,
//! headers and method wins:
//! 1. exact `path`, then templates, then prefixes;
//! 2. templates: more literal segments first; then without a catch-all before with
//!    one; then more segments; then the one whose first differing segment is literal
//!    (`/a/{x}` before `/{x}/a`); prefixes: longer first;
//! 3. then host: exact, then wildcard (longer suffix first), then none;
//! 4. then more header conditions first; then a route with a method list before one
//!    without;
//! 5. then file order.
//!
//! When routes match host, path and headers but none allows the method, the answer is
//! [`RouteMiss::MethodNotAllowed`] whose `allow` lists their methods. A route that can
//! never match (an earlier route has the same host, path shape, headers and a superset
//! of its methods) is a [`CompileError`].
//!
//! The lookup is a linear scan of the sorted routes that stops at the first hit and
//! does not allocate (only the captured [`Params`] are); a few hundred routes is the
//! design point.

#![forbid(unsafe_code)]

mod host;
mod normalize;
mod params;
#[cfg(test)]
mod props;
mod table;
mod template;

pub use normalize::{normalize_path, PathError};
pub use params::Params;
pub use table::{CompileError, RouteMatch, RouteMiss, RouteTable};
