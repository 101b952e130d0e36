//! `gateway-proxy`: sending a routed request to an upstream endpoint and its answer back.
//!
//! - [`UpstreamClient`]: keep-alive pools per service (one per worker runtime, so a
//!   connection is driven by the thread that uses it): HTTP/1.1 and h2c in pools of our own
//!   (`pool`), TLS with ALPN through hyper-util's client.
//! - [`RequestBody`]: the client's body streamed upstream, never buffered, cut off with
//!   413 past `max_body_bytes` and 408 when it stalls past `body_read_timeout`.
//! - [`headers`]: hop-by-hop hygiene and the `x-forwarded-*` family.
//! - [`grpc`]: the `grpc-timeout` deadline, and gRPC-Web translated to gRPC and back.
//! - [`ClientAddr`]: the one notion of the client address (SPEC.md "Client address").
//!
//! ```no_run
//! # async fn f(req: http::Request<gateway_proxy::RequestBody>) {
//! use gateway_proxy::{UpstreamClient, UpstreamSettings};
//! let client = UpstreamClient::new(&UpstreamSettings::default(), 1);
//! let endpoint = gateway_registry::Endpoint::parse("http://127.0.0.1:9001").unwrap();
//! let answer = client.send(&endpoint, req, std::time::Duration::from_secs(5)).await;
//! # }
//! ```

mod body;
mod client;
mod client_addr;
pub mod grpc;
pub mod headers;
mod pool;
#[cfg(test)]
mod props;
mod tls;

pub use body::{BodyLimitError, RequestBody};
pub use client::{set_worker_index, worker_index, UpstreamClient, UpstreamSettings};
pub use client_addr::ClientAddr;
pub use tls::client_config as tls_client_config;
