//! The one seam to the network: how a part's request reaches its service.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};

use crate::PartFailure;

/// How parts reach services. The gateway implements it with its load balancer, circuit
/// breakers, retries and timeouts, so a part is treated like any proxied request.
///
/// The fetcher reads the answer's body up to [`PartRequest::max_body`] bytes; over that it
/// returns [`PartFailure::TooLarge`] without reading the rest. It should give up after
/// [`PartRequest::timeout`] with [`PartFailure::Timeout`] (the aggregate also stops waiting
/// then, but only the fetcher can release a connection cleanly).
pub trait PartFetcher: Send + Sync {
    fn fetch(&self, part: PartRequest) -> BoxFuture<'_, Result<PartResponse, PartFailure>>;
}

/// One part's request, filled from the client's request.
#[derive(Debug, Clone)]
pub struct PartRequest {
    /// The part's name (`name`, else `into`, else `part{index}`), for logs and metrics.
    pub part: Arc<str>,
    /// The `[services.NAME]` to send it to.
    pub service: Arc<str>,
    /// The part's `method` (default `GET`). Parts never carry a body.
    pub method: Method,
    /// The filled `path` template, every substituted value encoded for its position.
    pub path_and_query: PathAndQuery,
    /// What the caller gave the aggregate for every part (request id, `traceparent`,
    /// forwarded identity headers), then the part's own `headers` (which replace same-named ones).
    pub headers: HeaderMap,
    /// The whole exchange, retries included: the route's part timeout, cut to what is left
    /// of the aggregate's deadline.
    pub timeout: Duration,
    /// Largest answer body to read.
    pub max_body: u64,
}

/// A part's answer, body read whole.
#[derive(Debug, Clone)]
pub struct PartResponse {
    pub status: StatusCode,
    pub body: Bytes,
}
