//! The registry API (`/registry/...`) as an axum router for the admin listener.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put, MethodRouter};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::json;

use crate::registry::{Registered, RegistryError};
use crate::state::Metadata;
use crate::store::Registry;

/// The largest registration body accepted; larger ones get 400.
pub const MAX_REGISTRATION_BYTES: usize = 64 * 1024;

/// The registry API, with absolute paths, for the admin listener to merge (it adds
/// the admin-token check and the JSON 404 fallback):
///
/// | method and path | answers |
/// |---|---|
/// | `PUT /registry/services/{service}/instances/{id}` | body `{"address": "host:port", "metadata": {...}}`: 201 with the instance, or 200 when it renews |
/// | `PUT /registry/services/{service}/instances/{id}/heartbeat` | 200 with the instance; 404 when unknown or expired |
/// | `DELETE /registry/services/{service}/instances/{id}` | 204, also when it was already gone (idempotent) |
/// | `GET /registry/services/{service}/instances/{id}` | 200 with the instance, or 404 |
/// | `GET /registry/services` | `{"services": [{"name", "instances", "healthy"}]}` |
/// | `GET /registry/services/{service}` | `{"service", "instances": [{"id", "address", "scheme", "metadata", "healthy", "registered_at", "last_heartbeat", "expires_in_ms"}]}` (empty for an unknown service) |
///
/// Service names and ids are `[A-Za-z0-9._-]{1,128}`; the address is `host:port`
/// (an IP, `[v6]` or DNS name; port 1-65535); `metadata` is an object whose optional
/// `scheme` (`http` default, `https`, `h2c`) and `weight` (1-1000) the gateway uses.
/// Anything else malformed, and a body over 64 KiB, gets 400 with the gateway's JSON
/// error `{"error": {"status": 400, "code": "bad_request", "message": "..."}}`.
/// With the `etcd` store, a write that etcd does not confirm gets 503
/// `service_unavailable` (reads keep answering from the local copy).
pub fn registry_api(registry: impl Into<Registry>) -> Router {
    let registry = Arc::new(registry.into());
    Router::new()
        .route("/registry/services", get(list_services).fallback(not_allowed("GET")))
        .route("/registry/services/{service}", get(list_instances).fallback(not_allowed("GET")))
        .route(
            "/registry/services/{service}/instances/{id}",
            put(register).delete(deregister).get(get_instance).fallback(not_allowed("GET, PUT, DELETE")),
        )
        .route("/registry/services/{service}/instances/{id}/heartbeat", put(heartbeat).fallback(not_allowed("PUT")))
        .with_state(registry)
}

type Store = State<Arc<Registry>>;

/// A registry API failure, answered as the gateway's JSON error.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into(), allow: None }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound { .. } => {
                ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: e.to_string(), allow: None }
            }
            RegistryError::Unavailable(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "service_unavailable",
                message: e.to_string(),
                allow: None,
            },
            RegistryError::InvalidName(_) | RegistryError::InvalidAddress(_) | RegistryError::InvalidMetadata(_) => {
                ApiError::bad_request(e.to_string())
            }
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::bad_request(format!("malformed path: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "status": self.status.as_u16(), "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(allow) = self.allow {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

fn not_allowed(allow: &'static str) -> MethodRouter<Arc<Registry>> {
    MethodRouter::new().fallback(move || async move {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: format!("this registry path accepts {allow}"),
            allow: Some(allow),
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    address: String,
    #[serde(default)]
    metadata: Option<Metadata>,
}

/// The body, refused past [`MAX_REGISTRATION_BYTES`] (by `content-length` before reading).
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::bad_request(format!("the body is larger than {MAX_REGISTRATION_BYTES} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REGISTRATION_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_REGISTRATION_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("could not read the body: {e}"))),
    }
}

async fn register(
    State(registry): Store,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((service, id)) = path?;
    let bytes = read_body(&headers, body).await?;
    let registration: Registration = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("expected {{\"address\": \"host:port\", \"metadata\": {{...}}}}: {e}"))
    })?;
    let metadata = registration.metadata.unwrap_or_default();
    Ok(match registry.register(&service, &id, &registration.address, metadata).await? {
        Registered::Created(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Registered::Renewed(view) => (StatusCode::OK, Json(view)).into_response(),
    })
}

async fn heartbeat(
    State(registry): Store,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((service, id)) = path?;
    Ok(Json(registry.heartbeat(&service, &id).await?).into_response())
}

async fn deregister(
    State(registry): Store,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path((service, id)) = path?;
    registry.deregister(&service, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_instance(
    State(registry): Store,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((service, id)) = path?;
    let not_found = RegistryError::NotFound { service: service.clone(), id: id.clone() };
    for (what, name) in [("service", &service), ("instance id", &id)] {
        if !crate::registry::valid_name(name) {
            return Err(ApiError::bad_request(format!(
                "{what} `{name}` must be 1-128 characters of A-Z a-z 0-9 . _ -"
            )));
        }
    }
    let view = registry.instance(&service, &id).ok_or(not_found)?;
    Ok(Json(view).into_response())
}

async fn list_services(State(registry): Store) -> Response {
    Json(json!({ "services": registry.services() })).into_response()
}

async fn list_instances(
    State(registry): Store,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(service) = path?;
    if !crate::registry::valid_name(&service) {
        return Err(ApiError::bad_request(format!(
            "service `{service}` must be 1-128 characters of A-Z a-z 0-9 . _ -"
        )));
    }
    let instances = registry.instances(&service);
    Ok(Json(json!({ "service": service, "instances": instances })).into_response())
}
