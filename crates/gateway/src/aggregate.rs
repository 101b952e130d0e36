//! How aggregate parts reach their services: the same endpoints, pools and timeouts as
//! proxied traffic.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use gateway_aggregate::{PartFailure, PartFetcher, PartRequest, PartResponse};
use gateway_core::ErrorKind;
use gateway_proxy::RequestBody;
use http::header::{HeaderValue, HOST};
use http_body_util::{BodyExt, Limited};

use crate::runtime::ServiceRuntime;
use crate::upstream;
use gateway_telemetry::trace::{ActiveSpan, Tracer};

pub struct Fetcher<'a> {
    pub services: &'a HashMap<String, Arc<ServiceRuntime>>,
    /// For client-address load balancing (consistent hashing on `ip`).
    pub client_ip: std::net::IpAddr,
    /// Parts are client spans of the request's server span.
    pub trace: Option<(&'a Tracer, &'a ActiveSpan)>,
}

impl PartFetcher for Fetcher<'_> {
    fn fetch(&self, part: PartRequest) -> BoxFuture<'_, Result<PartResponse, PartFailure>> {
        Box::pin(async move {
            let service = self
                .services
                .get(&*part.service)
                .ok_or_else(|| PartFailure::Unavailable(format!("no service `{}`", part.service)))?;
            let mut headers = part.headers;
            if let Ok(host) = HeaderValue::from_str(&service.name) {
                headers.entry(HOST).or_insert(host);
            }
            let deadline = tokio::time::Instant::now() + part.timeout;
            let call = upstream::Call {
                trace: self.trace,
                method: part.method,
                uri: http::Uri::from(part.path_and_query),
                headers,
                body: RequestBody::Empty,
                timeout: part.timeout,
                grpc_deadline: false,
                client_ip: self.client_ip,
            };
            let response = upstream::call(service, call).await.map(|a| a.response).map_err(|(e, _)| match e.kind {
                ErrorKind::GatewayTimeout => PartFailure::Timeout,
                ErrorKind::ServiceUnavailable => PartFailure::Unavailable(e.message.into_owned()),
                _ => PartFailure::Upstream(e.message.into_owned()),
            })?;
            let (parts, body) = response.into_parts();
            let collect = Limited::new(body, part.max_body as usize).collect();
            let body: Bytes = match tokio::time::timeout_at(deadline, collect).await {
                Err(_) => return Err(PartFailure::Timeout),
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(PartFailure::TooLarge),
                Ok(Err(e)) => return Err(PartFailure::Upstream(e.to_string())),
            };
            Ok(PartResponse { status: parts.status, body })
        })
    }
}
