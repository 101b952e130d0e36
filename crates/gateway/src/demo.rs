//! `gateway demo`: small services on loopback for the repository's `gateway.toml`.
//!
//! Each demo service answers JSON that shows what reached it (method, path, the
//! forwarded headers), plus a few resources: `users` knows `/users/{id}`, `orders`
//! knows `/orders?user_id=`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The demo service that is not in `gateway.toml`'s endpoints: it registers itself
/// through the registry API, as a service in a real fleet would.
pub const SELF_REGISTERING: &str = "inventory";
const SELF_REGISTERING_ADDR: &str = "127.0.0.1:9004";

/// Start the self-registering demo service, register it with the gateway's registry API
/// on `admin`, and keep heartbeating (every 10 s; the registry's default TTL is 30 s).
pub async fn start_self_registering(admin: SocketAddr, token: Option<String>) -> Result<(), String> {
    let addr: SocketAddr = SELF_REGISTERING_ADDR.parse().map_err(|e| format!("{e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot start demo service `{SELF_REGISTERING}` on {addr}: {e}"))?;
    tokio::spawn(run_backend(listener, SELF_REGISTERING.to_owned(), addr));
    let path = format!("/registry/services/{SELF_REGISTERING}/instances/{SELF_REGISTERING}-1");
    let body = format!(r#"{{"address": "{addr}", "metadata": {{"version": "1.4.2", "zone": "demo"}}}}"#);
    admin_request(admin, "PUT", &path, &body, token.as_deref()).await?;
    tokio::spawn(async move {
        let heartbeat = format!("{path}/heartbeat");
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            if admin_request(admin, "PUT", &heartbeat, "", token.as_deref()).await.is_err() {
                // Unknown after a restart of the registry: register again.
                let _ = admin_request(admin, "PUT", &path, &body, token.as_deref()).await;
            }
        }
    });
    Ok(())
}

async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string())
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(body.to_owned()))).map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{method} {path}: {}", response.status()))
    }
}

/// Start a demo backend on every static endpoint of the services in `config_path`.
pub async fn start_backends(config_path: &Path) -> Result<(), String> {
    let config =
        gateway_config::load(config_path).map_err(|errors| gateway_config::ConfigErrors(errors).to_string())?;
    for (name, service) in &config.services {
        for endpoint in &service.endpoints {
            let Ok(endpoint) = gateway_registry::Endpoint::parse(endpoint.get_ref()) else { continue };
            let Ok(addr) = endpoint.address().parse::<SocketAddr>() else { continue };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot start demo service `{name}` on {addr}: {e}"))?;
            tokio::spawn(run_backend(listener, name.clone(), addr));
        }
    }
    Ok(())
}

/// The curl lines that work against the demo.
pub fn print_examples(addr: SocketAddr, admin: SocketAddr) {
    println!(
        "\ngateway demo is serving on http://{addr} (admin on http://{admin})\n\n\
         try:\n  \
         curl -s http://{addr}/api/users/42\n  \
         curl -s http://{addr}/api/users\n  \
         curl -s 'http://{addr}/api/orders?user_id=42'\n  \
         curl -s http://{addr}/api/profile/42              # one answer from two services\n  \
         curl -s http://{addr}/api/inventory/items         # a service that registered itself\n  \
         curl -s http://{admin}/registry/services/inventory\n  \
         curl -s -X POST -d '{{\"item\":\"book\"}}' http://{addr}/api/orders\n  \
         curl -s -i http://{addr}/api/unknown            # 404 route_not_found\n  \
         curl -s -i -X DELETE http://{addr}/api/users/42 # 405 with allow\n  \
         curl -s http://{admin}/metrics | grep gateway_requests_total\n\n\
         press Ctrl-C to stop\n"
    );
}

async fn run_backend(listener: tokio::net::TcpListener, service: String, addr: SocketAddr) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let service = service.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, service.clone(), addr));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    service: String,
    addr: SocketAddr,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-") || *name == "host")
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let body = req.into_body().collect().await?.to_bytes();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (status, resource) = match (service.as_str(), segments.as_slice()) {
        ("users", [.., "users"]) | ("users", [""]) => {
            (StatusCode::OK, serde_json::json!([{"id": 42, "name": "Ada"}, {"id": 7, "name": "Grace"}]))
        }
        ("users", [.., "users", id]) => (StatusCode::OK, serde_json::json!({"id": id, "name": format!("user {id}")})),
        ("orders", _) if method == "POST" => {
            (StatusCode::CREATED, serde_json::json!({"order": String::from_utf8_lossy(&body)}))
        }
        ("orders", _) => {
            let user = query.split('&').find_map(|kv| kv.strip_prefix("user_id=")).unwrap_or("any");
            (StatusCode::OK, serde_json::json!([{"id": 1, "user_id": user, "item": "book"}]))
        }
        _ => (StatusCode::OK, serde_json::Value::Null),
    };
    let json = serde_json::json!({
        "service": service,
        "instance": addr.to_string(),
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "data": resource,
    });
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap_or_default())
}
