//! Publish routes: the request body becomes a persistent message, and the client hears
//! 202 only once the broker confirmed it.

use bytes::Bytes;
use gateway_core::{full, Body, ErrorKind, GatewayError, RequestId};
use gateway_events::{Destination, OutgoingMessage, PublishError};
use gateway_router::Params;
use gateway_telemetry::trace::TRACEPARENT;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::runtime::{PublishAction, RoutePolicy, Runtime};

pub async fn publish(
    action: &PublishAction,
    req: Request<Incoming>,
    params: &Params,
    policy: &RoutePolicy,
    runtime: &Runtime,
    request_id: &RequestId,
) -> Result<Response<Body>, GatewayError> {
    let key = action.key_template.as_deref().map(|t| fill(t, params, action.kind)).transpose()?;
    let destination = match action.kind {
        gateway_config::BrokerKind::Nats => Destination::Nats { subject: key.unwrap_or_default() },
        gateway_config::BrokerKind::Amqp => {
            Destination::Amqp { exchange: action.target.clone(), routing_key: key.unwrap_or_default() }
        }
        gateway_config::BrokerKind::Kafka => Destination::Kafka { topic: action.target.clone(), key },
    };
    let (parts, body) = req.into_parts();
    let content_type = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let dedup_id = parts.headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut headers = action.headers.clone();
    if let Some(traceparent) = parts.headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) {
        headers.push(("traceparent".to_owned(), traceparent.to_owned()));
    }
    let body = read_body(body, policy.max_body_bytes, runtime.body_read_timeout).await?;
    let message = OutgoingMessage {
        destination,
        body,
        message_id: request_id.as_str().to_owned(),
        content_type,
        headers,
        dedup_id,
    };
    match tokio::time::timeout(policy.timeout, action.broker.publish(message)).await {
        Ok(Ok(confirmation)) => {
            let body = serde_json::json!({ "message_id": confirmation.message_id }).to_string();
            let mut response = Response::new(full(body));
            *response.status_mut() = StatusCode::ACCEPTED;
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        }
        Ok(Err(PublishError::TooLarge { size, max })) => Err(GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("message of {size} bytes is over the broker's {max}"),
        )),
        Ok(Err(e)) if e.is_invalid_message() => Err(GatewayError::new(ErrorKind::BadRequest, e.to_string())),
        Ok(Err(e)) => Err(GatewayError::new(ErrorKind::ServiceUnavailable, format!("broker did not confirm: {e}"))),
        Err(_) => Err(GatewayError::new(ErrorKind::ServiceUnavailable, "broker did not confirm in time")),
    }
}

/// The whole request body, at most `limit` bytes, each wait for data at most `idle`.
pub(crate) async fn read_body(body: Incoming, limit: u64, idle: std::time::Duration) -> Result<Bytes, GatewayError> {
    let collect = Limited::new(body, limit as usize).collect();
    match tokio::time::timeout(idle, collect).await {
        Err(_) => Err(GatewayError::new(ErrorKind::RequestTimeout, "request body did not arrive in time").closing()),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is over the {limit} bytes allowed"),
        )
        .closing()),
        Ok(Err(_)) => Err(GatewayError::new(ErrorKind::BadRequest, "client aborted the request body").closing()),
    }
}

/// Fill `{param}` placeholders from the path. A value that would change the shape of a
/// NATS subject (`.`, wildcards, spaces) is refused rather than published elsewhere.
fn fill(template: &str, params: &Params, kind: gateway_config::BrokerKind) -> Result<String, GatewayError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| bad("unclosed placeholder"))?;
        let name = rest[open + 1..close].trim_start_matches('*');
        let value = params.get(name).ok_or_else(|| bad("unknown placeholder"))?;
        let unsafe_for_nats = |c: char| matches!(c, '.' | '*' | '>') || c.is_whitespace();
        if value.is_empty() || (kind == gateway_config::BrokerKind::Nats && value.contains(unsafe_for_nats)) {
            return Err(bad("path parameter cannot be used in a subject"));
        }
        out.push_str(value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn bad(message: &'static str) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, message)
}
