//! `cargo test -p gateway-aggregate --test http`
//!
//! The aggregate against real backends on `127.0.0.1:0`, through a small [`PartFetcher`]
//! built on hyper-util's client: the trait carries real I/O (timeouts, body limits,
//! refused connections) and independent parts overlap on the wire.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use gateway_aggregate::{Aggregate, AggregateContext, PartFailure, PartFetcher, PartRequest, PartResponse};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// A backend: `/users/{id}` echoes the id and the request id it got; `/orders?user_id=X`
/// answers after 600 ms; `/big` answers 64 KiB of JSON.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(answer)));
        }
    });
    addr
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = if let Some(id) = path.strip_prefix("/users/") {
        json!({"id": id, "name": "Ada", "request_id": request_id}).to_string()
    } else if path == "/orders" {
        tokio::time::sleep(Duration::from_millis(600)).await;
        json!([{"query": query}]).to_string()
    } else if path == "/big" {
        json!({"pad": "x".repeat(64 * 1024)}).to_string()
    } else {
        return Ok(Response::builder().status(404).body(Full::new(Bytes::from_static(b"{}"))).unwrap());
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Services by name, reached with hyper-util's pooled client.
struct HttpFetcher {
    services: HashMap<&'static str, SocketAddr>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl PartFetcher for HttpFetcher {
    fn fetch(&self, part: PartRequest) -> BoxFuture<'_, Result<PartResponse, PartFailure>> {
        Box::pin(async move {
            let addr = self
                .services
                .get(&*part.service)
                .ok_or_else(|| PartFailure::Unavailable(format!("no service `{}`", part.service)))?;
            let mut request = Request::builder()
                .method(part.method)
                .uri(format!("http://{addr}{}", part.path_and_query))
                .body(Empty::new())
                .map_err(|e| PartFailure::Upstream(e.to_string()))?;
            *request.headers_mut() = part.headers;
            let exchange = async {
                let response = self.client.request(request).await.map_err(|e| PartFailure::Upstream(e.to_string()))?;
                let status = response.status();
                let limit = usize::try_from(part.max_body).unwrap_or(usize::MAX);
                let body = Limited::new(response.into_body(), limit).collect().await.map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        PartFailure::TooLarge
                    } else {
                        PartFailure::Upstream(e.to_string())
                    }
                })?;
                Ok(PartResponse { status, body: body.to_bytes() })
            };
            tokio::time::timeout(part.timeout, exchange).await.map_err(|_| PartFailure::Timeout)?
        })
    }
}

fn aggregate(parts: &str) -> Aggregate {
    let text = format!(
        r#"
[services.users]
endpoints = ["http://127.0.0.1:9001"]
[services.orders]
endpoints = ["http://127.0.0.1:9002"]
[services.down]
endpoints = ["http://127.0.0.1:9003"]

[[routes]]
name = "profile"
path = "/api/profile/{{id}}"
aggregate = [
{parts}
]
"#
    );
    let config = gateway_config::parse("gateway.toml", &text, &|_: &str| None).unwrap();
    Aggregate::compile(&config.routes[0]).unwrap().unwrap()
}

async fn fetcher() -> HttpFetcher {
    // A port that refuses connections: bound, then closed.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let services = HashMap::from([("users", backend().await), ("orders", backend().await), ("down", closed)]);
    HttpFetcher { services, client: Client::builder(TokioExecutor::new()).build_http() }
}

fn ctx(headers: HeaderMap) -> AggregateContext<'static> {
    AggregateContext {
        params: &[("id", "42")],
        query: None,
        principal: None,
        headers,
        deadline: Duration::from_secs(5),
        part_timeout: Duration::from_secs(2),
        max_body: 16 * 1024,
    }
}

#[tokio::test]
async fn parts_over_real_sockets_merge_overlap_and_fail_alone() {
    let fetcher = fetcher().await;
    let agg = aggregate(
        r#"{ service = "users",  path = "/users/{id}",          into = "user" },
           { service = "orders", path = "/orders?user_id={id}", into = "orders" },
           { service = "users",  path = "/missing/{id}",        into = "missing", optional = true },
           { service = "orders", path = "/big",                 into = "big", optional = true },
           { service = "down",   path = "/anything",            into = "down", optional = true },"#,
    );
    // `orders` takes 600 ms; the optional parts fail in their own ways: a 404, a body over
    // `max_body`, a refused connection.
    let mut headers = HeaderMap::new();
    headers.insert("x-request-id", HeaderValue::from_static("req-7"));
    let start = Instant::now();
    let answer = agg.run(ctx(headers), &fetcher).await.unwrap();
    let elapsed = start.elapsed();
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        body,
        json!({
            "user": {"id": "42", "name": "Ada", "request_id": "req-7"},
            "orders": [{"query": "user_id=42"}],
        })
    );
    assert_eq!(answer.partial, ["missing", "big", "down"]);
    assert!(elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(1000), "{elapsed:?}");
}

#[tokio::test]
async fn two_slow_parts_over_sockets_take_the_time_of_one() {
    let fetcher = fetcher().await;
    let agg = aggregate(
        r#"{ service = "orders", path = "/orders?user_id={id}", into = "a" },
           { service = "orders", path = "/orders?user_id={id}&again=1", into = "b" },"#,
    );
    let start = Instant::now();
    let answer = agg.run(ctx(HeaderMap::new()), &fetcher).await.unwrap();
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(1000), "{elapsed:?}");
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["b"], json!([{"query": "user_id=42&again=1"}]));
}

#[tokio::test]
async fn a_required_part_down_or_slow_over_sockets_is_502_or_504() {
    let fetcher = fetcher().await;
    let agg = aggregate(r#"{ service = "down", path = "/x", into = "down" },"#);
    let err = agg.run(ctx(HeaderMap::new()), &fetcher).await.unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    assert!(err.message.contains("part `down`"), "{err}");

    let agg = aggregate(r#"{ service = "orders", path = "/orders", into = "slow" },"#);
    let start = Instant::now();
    let ctx = AggregateContext { part_timeout: Duration::from_millis(200), ..ctx(HeaderMap::new()) };
    let err = agg.run(ctx, &fetcher).await.unwrap_err();
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(start.elapsed() < Duration::from_millis(500));
}
