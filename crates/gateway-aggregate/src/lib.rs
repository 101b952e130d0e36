//! `gateway-aggregate`: routes whose action is `aggregate = [...]`. One client request
//! fans out to several services; their JSON answers come back as one JSON document.
//!
//! This crate owns the templates, the order parts run in, the deadline and the merge. It
//! does no I/O itself: parts reach services through a [`PartFetcher`], which the gateway
//! implements with the same load balancing, circuit breakers, retries and timeouts as
//! proxied traffic.
//!
//! - **Compile** once per configuration: [`Aggregate::compile`] checks the templates
//!   against the route (its path parameters, whether it has `auth`, the other parts) and
//!   rejects dependency cycles.
//! - **Run** per request: [`Aggregate::run`] starts every part whose dependencies answered
//!   (independent parts all at once, so latency is the slowest part, not the sum) and
//!   stops waiting at [`AggregateContext::deadline`].
//! - **Names**: a part is called by its `name`, else its `into`, else `part{index}`
//!   (counting from 0). Names are unique, and none is `query` or `claim`.
//! - **Dependencies**: a part waits for the part `after` names and for every part its
//!   templates read (`{user.id}` reads field `id` of part `user`'s answer, as it came from
//!   the service, before `select` and `rename`; `{user.address.city}` and `{user.items.0}`
//!   reach deeper). A part whose dependency failed fails too.
//! - **Templates**: see [Templates](#templates) below.
//! - **Shape**: `select` keeps only the listed top-level fields, then `rename` renames
//!   top-level fields (KrakenD's allow, then mapping: `rename` uses the service's names).
//!   When the answer is an array, both apply to each object in it. Renames are
//!   simultaneous, and a renamed field replaces a field that already had its new name.
//! - **Merge**, in configuration order whatever order the answers came in: each part adds
//!   `{into: answer}`, or its answer itself when it has no `into` (which must then be an
//!   object). Objects merge field by field, recursively; where both sides are not objects
//!   (arrays, strings, numbers, `null`, or an object against a non-object), the later
//!   part's value replaces the earlier one. Arrays are not concatenated.
//! - **Failures**: an answer that is not 2xx, not JSON, over `max_body`, late, or a
//!   template value that is missing or unusable fails the part. An optional part that
//!   fails is left out and listed in [`AggregateAnswer::partial`] (the gateway sends it as
//!   `x-gateway-partial`, status 200). A required part that fails ends the aggregate at
//!   once with a [`GatewayError`](gateway_core::GatewayError) naming it: 504 when it ran
//!   out of time (its own timeout or the deadline), 400 when the client's query lacks a
//!   `{query.NAME}` its path needs (or a client value cannot be used, see below), 403
//!   when the caller lacks a `{claim.NAME}`, else 502. An optional part fails quietly
//!   for the same reasons, missing query parameters included.
//!
//! # Templates
//!
//! | placeholder      | value                                                          |
//! |------------------|----------------------------------------------------------------|
//! | `{name}`         | the route's path parameter (the catch-all as `{rest}` or `{*rest}`) |
//! | `{query.NAME}`   | the client's query parameter `NAME` (the first), form-decoded  |
//! | `{claim.NAME}`   | the caller's claim `NAME` (string, number or boolean)          |
//! | `{part.a.b}`     | field `a.b` of that part's answer (string, number or boolean)  |
//!
//! Values are encoded for where they land: in the path every byte but `A-Z a-z 0-9 - . _ ~`
//! is percent-encoded (a claim holding `/`, `?` or `#` stays one segment), and a path
//! segment that a value leaves empty, `.` or `..` fails the part; the route's catch-all
//! keeps its `/`; in the query the same encoding applies (`&`, `=` and `+` cannot add
//! parameters); in a part's `headers` values go as they are but control characters fail
//! the part. Such an unusable value is the client's fault (400) when it came from the
//! path, query or claims, the upstream's (502) when it came from a part's answer. Path
//! parameters are decoded first (the router leaves them encoded), so nothing is encoded twice.
//! The client's own query is not passed on; only what `{query.NAME}` takes.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use futures_util::future::BoxFuture;
//! use gateway_aggregate::{Aggregate, AggregateContext, PartFailure, PartFetcher, PartRequest, PartResponse};
//!
//! /// A stand-in for the gateway's upstream client.
//! struct Canned;
//! impl PartFetcher for Canned {
//!     fn fetch(&self, part: PartRequest) -> BoxFuture<'_, Result<PartResponse, PartFailure>> {
//!         Box::pin(async move {
//!             match (&*part.service, part.path_and_query.as_str()) {
//!                 ("users", "/users/42") => Ok(PartResponse { status: http::StatusCode::OK, body: Bytes::from(r#"{"id":42,"name":"Ada"}"#) }),
//!                 _ => Err(PartFailure::Unavailable("no endpoint".into())),
//!             }
//!         })
//!     }
//! }
//!
//! let text = r#"
//! [services.users]
//! endpoints = ["http://127.0.0.1:9001"]
//! [services.orders]
//! endpoints = ["http://127.0.0.1:9002"]
//!
//! [[routes]]
//! name = "profile"
//! path = "/api/profile/{id}"
//! aggregate = [
//!   { service = "users",  path = "/users/{id}",          into = "user" },
//!   { service = "orders", path = "/orders?user_id={id}", into = "orders", optional = true },
//! ]
//! "#;
//! let config = gateway_config::parse("gateway.toml", text, &|_: &str| None).expect("valid");
//! let aggregate = Aggregate::compile(&config.routes[0]).expect("compiles").expect("an aggregate route");
//!
//! let ctx = AggregateContext {
//!     params: &[("id", "42")],
//!     query: None,
//!     principal: None,
//!     headers: http::HeaderMap::new(),
//!     deadline: Duration::from_secs(5),
//!     part_timeout: Duration::from_secs(2),
//!     max_body: 1 << 20,
//! };
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
//! let answer = runtime.block_on(aggregate.run(ctx, &Canned)).expect("user answered");
//! assert_eq!(answer.body, r#"{"user":{"id":42,"name":"Ada"}}"#);
//! assert_eq!(answer.partial, ["orders"]); // optional, failed: `x-gateway-partial: orders`
//! ```

#![forbid(unsafe_code)]

mod compile;
mod error;
mod fetch;
mod merge;
mod run;
mod template;

pub use compile::{part_name, Aggregate};
pub use error::PartFailure;
pub use fetch::{PartFetcher, PartRequest, PartResponse};
pub use run::{AggregateAnswer, AggregateContext};

#[cfg(test)]
mod tests;
