//! Protocols end to end, with real clients and servers: TLS termination (ALPN, SNI,
//! certificate reload), HTTP/2 in clear, upstream https (CA file, mTLS) and h2c with
//! trailers, WebSocket tunnels, streaming both ways, GraphQL over HTTP and WebSocket.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway_tests::{full, raw, tls_connect, Backend, Protocol, TempDir, TestCa, TestGateway, TestServer};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The longest any single step of these tests may take.
const STEP: Duration = Duration::from_secs(5);

/// Await `fut`, failing the test with `what` if it takes longer than [`STEP`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A config with one service `svc` at `endpoint` (plus `service_keys`) and one route for every path.
fn one_route(endpoint: &str, service_keys: &str) -> String {
    format!(
        "[services.svc]\nendpoints = [\"{endpoint}\"]\n{service_keys}\n\
         [[routes]]\nname = \"all\"\npath_prefix = \"/\"\nservice = \"svc\"\n"
    )
}

/// An HTTP/2 client on `io` (prior knowledge, or after ALPN chose h2), its connection driven in the background.
async fn h2_client<I, B>(io: I) -> hyper::client::conn::http2::SendRequest<B>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) =
        within("h2 handshake", hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/1.1 client on `io`, its connection driven in the background.
async fn h1_client<I, B>(io: I) -> hyper::client::conn::http1::SendRequest<B>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = within("h1 handshake", hyper::client::conn::http1::handshake(TokioIo::new(io))).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// A GET for `uri` with `host`, and no body.
fn get(uri: &str, host: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).header("host", host).body(Empty::new()).unwrap()
}

/// A TestGateway on one route to `backend`, terminating TLS with a leaf of `ca` for `gateway.test`.
async fn tls_gateway(ca: &TestCa, backend: &Backend) -> TestGateway {
    let dir = TempDir::new();
    ca.leaf(&["gateway.test"]).write(&dir.0, "gw.pem", "gw-key.pem");
    let server = r#"tls = { cert = "gw.pem", key = "gw-key.pem" }"#;
    TestGateway::start_in(dir, &one_route(&format!("http://{}", backend.addr), ""), server).await
}

// ---------------------------------------------------------------------------------------
// TLS termination
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_termination_negotiates_h2_and_http1_by_alpn() {
    let ca = TestCa::new("gateway test CA");
    let backend = Backend::start().await;
    let gw = tls_gateway(&ca, &backend).await;

    let tls = tls_connect(gw.addr, "gateway.test", ca.client_config(&["h2", "http/1.1"])).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN offered h2 first: h2");
    let mut h2 = h2_client(tls).await;
    let resp = within(
        "h2 over TLS",
        h2.send_request(Request::get("https://gateway.test/over-h2").body(Empty::new()).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let seen = backend.last();
    assert_eq!(seen.target, "/over-h2");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("host"), Some("gateway.test"), "the :authority becomes the upstream Host");

    let tls = tls_connect(gw.addr, "gateway.test", ca.client_config(&["http/1.1"])).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = h1_client(tls).await;
    let resp = within("h1 over TLS", h1.send_request(get("/over-h1", "gateway.test"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
    let seen = backend.last();
    assert_eq!(seen.target, "/over-h1");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn tls_certificate_is_chosen_by_sni() {
    let ca = TestCa::new("sni CA");
    let (a, b) = (ca.leaf(&["a.test"]), ca.leaf(&["b.test"]));
    let dir = TempDir::new();
    a.write(&dir.0, "a.pem", "a-key.pem");
    b.write(&dir.0, "b.pem", "b-key.pem");
    let backend = Backend::start().await;
    let server = r#"tls = [{ cert = "a.pem", key = "a-key.pem", hosts = ["a.test"] }, { cert = "b.pem", key = "b-key.pem", hosts = ["b.test"] }]"#;
    let gw = TestGateway::start_in(dir, &one_route(&format!("http://{}", backend.addr), ""), server).await;

    // b.test first: the first certificate (a.test's) is the default, so a gateway that
    // ignored SNI would fail this verification.
    for (name, leaf) in [("b.test", &b), ("a.test", &a)] {
        let tls = tls_connect(gw.addr, name, ca.client_config(&["http/1.1"]))
            .await
            .unwrap_or_else(|e| panic!("handshake verifying {name}: {e}"));
        assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], *leaf.der(), "{name}'s certificate");
        let mut h1 = h1_client(tls).await;
        let resp = within("request over SNI", h1.send_request(get("/", name))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn tls_certificate_files_are_reloaded_without_dropping_connections() {
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let backend = Backend::start().await;
    let gw = tls_gateway(&old_ca, &backend).await;

    let tls = tls_connect(gw.addr, "gateway.test", old_ca.client_config(&["http/1.1"])).await.unwrap();
    let mut before = h1_client(tls).await;
    let resp = within("request before the swap", before.send_request(get("/before", "gateway.test"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();

    let new_leaf = new_ca.leaf(&["gateway.test"]);
    new_leaf.write(gw.dir(), "gw.pem", "gw-key.pem");
    // The only signal is the handshake itself: poll, bounded, until the new CA verifies it.
    let mut reloaded = None;
    for _ in 0..100 {
        if let Ok(tls) = tls_connect(gw.addr, "gateway.test", new_ca.client_config(&["http/1.1"])).await {
            reloaded = Some(tls);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tls = reloaded.expect("the new certificate was never served");
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], *new_leaf.der());
    let mut after = h1_client(tls).await;
    let resp = within("request on a new connection", after.send_request(get("/after", "gateway.test"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // The old CA no longer verifies new connections...
    assert!(tls_connect(gw.addr, "gateway.test", old_ca.client_config(&["http/1.1"])).await.is_err());
    // ...but the connection opened before the swap still serves.
    let resp =
        within("old connection after the swap", before.send_request(get("/still", "gateway.test"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(backend.last().target, "/still");
}

#[tokio::test]
async fn bad_certificate_file_refuses_to_start() {
    let ca = TestCa::new("bad file CA");
    let (good, other) = (ca.leaf(&["gateway.test"]), ca.leaf(&["gateway.test"]));
    let dir = TempDir::new();
    std::fs::write(dir.0.join("garbage.pem"), "this is not a certificate\n").unwrap();
    good.write(&dir.0, "good.pem", "good-key.pem");
    std::fs::write(dir.0.join("other-key.pem"), &other.key_pem).unwrap();
    // Unparsable, absent, and a certificate with another certificate's key.
    let cases = [("garbage.pem", "good-key.pem"), ("missing.pem", "good-key.pem"), ("good.pem", "other-key.pem")];
    for (i, (cert, key)) in cases.into_iter().enumerate() {
        let path = dir.0.join(format!("gateway-{i}.toml"));
        let server = format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}");
        std::fs::write(&path, TestGateway::full_config("", &server)).unwrap();
        match gateway::start(&path).await {
            Ok(handle) => {
                handle.abort();
                panic!("the gateway started with cert {cert} and key {key}");
            }
            Err(e) => assert!(e.to_string().contains(cert), "the error names {cert}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/2 in clear (h2c) from clients
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn h2c_prior_knowledge_serves_concurrent_streams() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&one_route(&format!("http://{}", backend.addr), "")).await;
    let h2 = h2_client(TcpStream::connect(gw.addr).await.unwrap()).await;
    let requests = (0..8).map(|i| {
        let mut h2 = h2.clone();
        async move {
            let req = Request::get(format!("http://gateway.test/stream/{i}")).body(Empty::<Bytes>::new()).unwrap();
            let resp = h2.send_request(req).await.unwrap();
            assert_eq!(resp.version(), Version::HTTP_2);
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    });
    let answers = within("8 concurrent h2c streams", futures_util::future::join_all(requests)).await;
    for (i, (status, body)) in answers.into_iter().enumerate() {
        assert_eq!(status, StatusCode::OK);
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["target"], format!("/stream/{i}"));
    }
    let mut targets: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    targets.sort();
    assert_eq!(targets, (0..8).map(|i| format!("/stream/{i}")).collect::<Vec<_>>());
    assert_eq!(backend.last().header("x-forwarded-proto"), Some("http"));
}

// ---------------------------------------------------------------------------------------
// Upstream https (CA file, webpki roots, mTLS)
// ---------------------------------------------------------------------------------------

/// Two services on one https backend: `/trusted` with `ca_file`, `/untrusted` without (webpki roots).
fn https_services(backend: &Backend, trusted_keys: &str, untrusted_keys: &str) -> String {
    let port = backend.addr.port();
    format!(
        r#"
[services.trusted]
endpoints = ["https://localhost:{port}"]
{trusted_keys}
[services.untrusted]
endpoints = ["https://localhost:{port}"]
{untrusted_keys}
[[routes]]
name = "trusted"
path_prefix = "/trusted"
service = "trusted"
[[routes]]
name = "untrusted"
path_prefix = "/untrusted"
service = "untrusted"
"#
    )
}

#[tokio::test]
async fn upstream_https_is_verified_with_ca_file() {
    let ca = TestCa::new("upstream CA");
    let backend = Backend::start_tls(ca.leaf(&["localhost"]).server_config(&["h2", "http/1.1"], None)).await;
    let dir = TempDir::new();
    std::fs::write(dir.0.join("ca.pem"), ca.cert_pem()).unwrap();
    let gw = TestGateway::start_in(dir, &https_services(&backend, "ca_file = \"ca.pem\"", ""), "").await;

    let resp = gw.get("/trusted/x").await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let seen = backend.last();
    assert_eq!(seen.target, "/trusted/x");
    assert_eq!(seen.version, "HTTP/2.0", "ALPN offered h2 upstream");
    // Without ca_file the webpki roots do not know the test CA: unknown issuer.
    let resp = gw.get("/untrusted/x").await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.error_code(), "bad_gateway");
    assert_eq!(backend.seen().len(), 1, "nothing reached the backend over the untrusted connection");
}

#[tokio::test]
async fn upstream_mtls_presents_the_client_certificate() {
    let ca = TestCa::new("mtls CA");
    let backend = Backend::start_tls(ca.leaf(&["localhost"]).server_config(&["h2", "http/1.1"], Some(&ca))).await;
    let dir = TempDir::new();
    std::fs::write(dir.0.join("ca.pem"), ca.cert_pem()).unwrap();
    ca.leaf(&["gateway-client"]).write(&dir.0, "client.pem", "client-key.pem");
    let with_cert = "ca_file = \"ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client-key.pem\"";
    let gw = TestGateway::start_in(dir, &https_services(&backend, with_cert, "ca_file = \"ca.pem\""), "").await;

    let resp = gw.get("/trusted/mtls").await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(backend.last().target, "/trusted/mtls");
    // Same CA, no client certificate: the backend refuses the handshake.
    assert_eq!(gw.get("/untrusted/mtls").await.status, 502);
    assert_eq!(backend.seen().len(), 1);
}

// ---------------------------------------------------------------------------------------
// h2c upstream with trailers (the gRPC shape)
// ---------------------------------------------------------------------------------------

/// A gateway with an h2c backend, and an h2c client connected to the gateway.
async fn h2c_setup<B>() -> (Backend, TestGateway, hyper::client::conn::http2::SendRequest<B>)
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let backend = Backend::start_h2c().await;
    let gw = TestGateway::start(&one_route(&format!("h2c://{}", backend.addr), "")).await;
    let client = h2_client(TcpStream::connect(gw.addr).await.unwrap()).await;
    (backend, gw, client)
}

/// A gRPC-shaped POST to `/trailers` with `body`.
fn grpc_post<B>(body: B) -> Request<B> {
    Request::post("http://gateway.test/trailers")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn h2c_upstream_response_trailers_reach_the_client() {
    let (backend, _gw, mut client) = h2c_setup().await;
    let resp = within("h2c exchange", client.send_request(grpc_post(Full::new(Bytes::from_static(b"request")))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = within("response body", resp.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(&collected.to_bytes()[..], b"payload");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "ok");
    assert_eq!(trailers.get("x-custom-meta").unwrap(), "meta-value");
    assert_eq!(backend.last().version, "HTTP/2.0", "the backend was spoken to in HTTP/2");
}

#[tokio::test]
async fn h2c_upstream_request_trailers_reach_the_backend() {
    let (_backend, _gw, mut client) = h2c_setup().await;
    let mut request_trailers = HeaderMap::new();
    request_trailers.insert("x-request-meta", "req-value".parse().unwrap());
    let body = Full::new(Bytes::from_static(b"request")).with_trailers(std::future::ready(Some(Ok(request_trailers))));
    let resp = within("h2c exchange", client.send_request(grpc_post(body))).await.unwrap();
    let collected = within("response body", resp.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers.get("echo-x-request-meta").map(|v| v.as_bytes()), Some(&b"req-value"[..]));
}

#[tokio::test]
async fn te_trailers_reaches_the_h2c_upstream() {
    let (backend, _gw, mut client) = h2c_setup().await;
    let resp = within("h2c exchange", client.send_request(grpc_post(Full::new(Bytes::from_static(b"request")))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(backend.last().header("te"), Some("trailers"), "gRPC servers require te: trailers");
}

// ---------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------

/// A tokio-tungstenite echo server: echoes text and binary, answers the text `close-me`
/// with a close (1000, "bye"), and reports every close frame a client sends on the channel.
async fn ws_echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<Option<CloseFrame>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closes, closes_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let closes = closes.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = ws.next().await {
                    match message {
                        Message::Text(text) if text.as_str() == "close-me" => {
                            let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await;
                        }
                        Message::Text(_) | Message::Binary(_) => {
                            let _ = ws.send(message).await;
                        }
                        Message::Close(frame) => {
                            let _ = closes.send(frame);
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, closes_rx)
}

/// Open a WebSocket through the gateway at `gw` for `ws://gateway.test{path}`.
async fn ws_connect(
    gw: SocketAddr,
    request: impl IntoClientRequest + Unpin,
) -> (tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::handshake::client::Response) {
    let tcp = TcpStream::connect(gw).await.unwrap();
    within("WebSocket handshake", tokio_tungstenite::client_async(request, tcp)).await.unwrap()
}

#[tokio::test]
async fn websocket_echo_and_closes_both_ways() {
    let (addr, mut closes) = ws_echo_server().await;
    let gw = TestGateway::start(&one_route(&format!("http://{addr}"), "")).await;

    let (mut ws, resp) = ws_connect(gw.addr, "ws://gateway.test/ws").await;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello through the gateway")).await.unwrap();
    assert_eq!(within("text echo", ws.next()).await.unwrap().unwrap(), Message::text("hello through the gateway"));
    let binary = Bytes::from_static(&[0, 1, 2, 0xfe, 0xff]);
    ws.send(Message::Binary(binary.clone())).await.unwrap();
    assert_eq!(within("binary echo", ws.next()).await.unwrap().unwrap(), Message::Binary(binary));

    // The client closes: the server sees the close frame as sent.
    ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "client done".into() })).await.unwrap();
    let seen = within("server sees the client's close", closes.recv()).await.unwrap().expect("a close frame");
    assert_eq!(seen.code, CloseCode::Away);
    assert_eq!(seen.reason.as_str(), "client done");
    // The server's reply completes the closing handshake.
    match within("close reply", ws.next()).await {
        Some(Ok(Message::Close(_))) | None => {}
        other => panic!("expected the close reply, got {other:?}"),
    }

    // The server closes: the client sees the close frame as sent.
    let (mut ws, _) = ws_connect(gw.addr, "ws://gateway.test/ws").await;
    ws.send(Message::text("close-me")).await.unwrap();
    match within("client sees the server's close", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Normal);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the server's close frame, got {other:?}"),
    }
}

/// An HTTP/2 connection to `gw` with a WebSocket opened on it by extended CONNECT
/// (checked: 200, no HTTP/1.1 handshake headers).
async fn h2_websocket(
    gw: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
) {
    let mut h2 = h2_client::<_, Empty<Bytes>>(TcpStream::connect(gw).await.unwrap()).await;
    let req = Request::connect(format!("http://{gw}/chat"))
        .version(Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Empty::new())
        .unwrap();
    let resp = within("extended CONNECT", h2.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.headers());
    assert!(resp.headers().get("sec-websocket-accept").is_none(), "no HTTP/1.1 handshake headers in HTTP/2");
    let io = within("upgrade", hyper::upgrade::on(resp)).await.unwrap();
    let role = tokio_tungstenite::tungstenite::protocol::Role::Client;
    (h2, tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(io), role, None).await)
}

/// RFC 8441: a WebSocket over HTTP/2 (extended CONNECT with `:protocol = websocket`) is
/// accepted from clients and carried to an HTTP/1.1 upstream as a classic Upgrade.
#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let (addr, mut closes) = ws_echo_server().await;
    let gw = TestGateway::start(&one_route(&format!("http://{addr}"), "")).await;
    let (mut h2, mut ws) = h2_websocket(gw.addr).await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(within("echo over h2", ws.next()).await.unwrap().unwrap(), Message::text("over h2"));
    ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "h2 done".into() })).await.unwrap();
    let seen = within("server sees the close", closes.recv()).await.unwrap().expect("a close frame");
    assert_eq!(seen.reason.as_str(), "h2 done");

    // Other streams of the same connection keep working meanwhile.
    let plain = Request::get(format!("http://{}/plain", gw.addr)).body(Empty::new()).unwrap();
    let answer = within("plain request on the same connection", h2.send_request(plain)).await.unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_GATEWAY, "the echo server speaks only WebSocket");

    // A CONNECT without `:protocol` is still refused.
    let tunnel = Request::connect(format!("http://{}/", gw.addr)).body(Empty::new()).unwrap();
    let refused = within("plain CONNECT", h2.send_request(tunnel)).await;
    assert!(refused.map_or(true, |r| r.status() == StatusCode::BAD_REQUEST), "plain CONNECT must not tunnel");
}

/// A WebSocket route is a route like any other: its handshake is authenticated and
/// counted by the rate limit before any tunnel opens.
#[tokio::test]
async fn websocket_handshakes_pass_auth_and_rate_limits() {
    let (addr, _closes) = ws_echo_server().await;
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(b"ws-key").iter().map(|b| format!("{b:02x}")).collect()
    };
    let config = format!(
        "[auth.keys]\ntype = \"api_key\"\nheader = \"x-api-key\"\nkeys = [{{ consumer = \"chat\", sha256 = \"{digest}\" }}]\n\
         [rate_limits.two]\nrequests = 2\nper = \"1m\"\nkey = \"consumer\"\n{}auth = [\"keys\"]\nrate_limit = [\"two\"]\n",
        one_route(&format!("http://{addr}"), "")
    );
    let gw = TestGateway::start(&config).await;
    let request = |key: Option<&str>| {
        let mut req = "ws://gateway.test/chat".into_client_request().unwrap();
        if let Some(key) = key {
            req.headers_mut().insert("x-api-key", key.parse().unwrap());
        }
        req
    };
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let refused = within("handshake without a key", tokio_tungstenite::client_async(request(None), tcp)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), StatusCode::UNAUTHORIZED),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    for _ in 0..2 {
        let (mut ws, _) = ws_connect(gw.addr, request(Some("ws-key"))).await;
        ws.send(Message::text("authorised")).await.unwrap();
        assert_eq!(within("echo", ws.next()).await.unwrap().unwrap(), Message::text("authorised"));
    }
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    match within("third handshake", tokio_tungstenite::client_async(request(Some("ws-key")), tcp)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS)
        }
        other => panic!("expected 429, got {:?}", other.map(|(_, r)| r.status())),
    }
}

/// A WebSocket over HTTP/2 is a request in flight for as long as it runs: its connection
/// does not get the idle GOAWAY under it, and other streams keep working.
#[tokio::test]
async fn an_http2_websocket_keeps_its_connection_from_idling() {
    let (addr, _closes) = ws_echo_server().await;
    let gw =
        TestGateway::start_with_server(&one_route(&format!("http://{addr}"), ""), "idle_timeout = \"400ms\"").await;
    let (mut h2, mut ws) = h2_websocket(gw.addr).await;
    // Three idle timeouts long, with traffic on the tunnel only.
    for i in 0..8 {
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(within("echo", ws.next()).await.unwrap().unwrap(), Message::text(format!("{i}")));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let plain = Request::get(format!("http://{}/plain", gw.addr)).body(Empty::new()).unwrap();
    let answer = within("another stream on the same connection", h2.send_request(plain)).await;
    assert!(answer.is_ok(), "the connection was not shut down as idle: {answer:?}");
}

#[tokio::test]
async fn websocket_over_tls_termination() {
    let (addr, _closes) = ws_echo_server().await;
    let ca = TestCa::new("wss CA");
    let dir = TempDir::new();
    ca.leaf(&["gateway.test"]).write(&dir.0, "gw.pem", "gw-key.pem");
    let server = r#"tls = { cert = "gw.pem", key = "gw-key.pem" }"#;
    let gw = TestGateway::start_in(dir, &one_route(&format!("http://{addr}"), ""), server).await;
    let tls = tls_connect(gw.addr, "gateway.test", ca.client_config(&["http/1.1"])).await.unwrap();
    let (mut ws, _) =
        within("wss handshake", tokio_tungstenite::client_async("wss://gateway.test/ws", tls)).await.unwrap();
    ws.send(Message::text("secure hello")).await.unwrap();
    assert_eq!(within("wss echo", ws.next()).await.unwrap().unwrap(), Message::text("secure hello"));
}

#[tokio::test]
async fn websocket_upgrade_refused_by_plain_backend_closes_the_connection() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&one_route(&format!("http://{}", backend.addr), "")).await;
    let request = "GET /ws HTTP/1.1\r\nhost: gateway.test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
                   sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    // `raw` reads until the gateway closes: returning early is itself the proof of the close.
    let answer = raw(gw.addr, request.as_bytes(), STEP).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{answer}");
    assert_eq!(backend.last().header("upgrade"), Some("websocket"), "the upgrade request reached the backend");
}

// ---------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn server_sent_events_are_not_buffered() {
    let (release, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let server = TestServer::start(Protocol::Http1, move |_req| {
        let release_rx = release_rx.lock().unwrap().take();
        async move {
            let (mut events, body) = Channel::<Bytes, hyper::Error>::new(4);
            tokio::spawn(async move {
                let _ = events.send_data(Bytes::from_static(b"data: one\n\n")).await;
                if let Some(release_rx) = release_rx {
                    let _ = release_rx.await;
                }
                let _ = events.send_data(Bytes::from_static(b"data: two\n\n")).await;
            });
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(body.boxed())
                .unwrap())
        }
    })
    .await;
    let gw = TestGateway::start(&one_route(&format!("http://{}", server.addr), "")).await;

    let mut client = h1_client(TcpStream::connect(gw.addr).await.unwrap()).await;
    let req = Request::get("/events").header("host", "gateway.test").header("accept", "text/event-stream");
    let resp = within("response head", client.send_request(req.body(Empty::<Bytes>::new()).unwrap())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut received = Vec::new();
    // The last event is held back until the first one reached the client.
    within("the first event, before the last is sent", async {
        while !received.ends_with(b"data: one\n\n") {
            let frame = body.frame().await.expect("more body").unwrap();
            received.extend_from_slice(frame.data_ref().map_or(&b""[..], |d| &d[..]));
        }
    })
    .await;
    release.send(()).unwrap();
    let rest = within("the rest of the stream", body.collect()).await.unwrap().to_bytes();
    received.extend_from_slice(&rest);
    assert_eq!(&received[..], b"data: one\n\ndata: two\n\n");
}

#[tokio::test]
async fn request_body_streams_upstream_as_it_arrives() {
    let (chunks, mut chunks_rx) = mpsc::unbounded_channel::<Bytes>();
    let server = TestServer::start(Protocol::Http1, move |req: Request<hyper::body::Incoming>| {
        let chunks = chunks.clone();
        async move {
            let mut body = req.into_body();
            let mut all = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame?.data_ref() {
                    all.extend_from_slice(data);
                    let _ = chunks.send(data.clone());
                }
            }
            Ok(Response::new(full(all)))
        }
    })
    .await;
    let gw = TestGateway::start(&one_route(&format!("http://{}", server.addr), "")).await;

    let (mut upload, body) = Channel::<Bytes, Infallible>::new(4);
    let mut client = h1_client(TcpStream::connect(gw.addr).await.unwrap()).await;
    let req = Request::post("/upload").header("host", "gateway.test").body(body).unwrap();
    let exchange = tokio::spawn(async move {
        let resp = client.send_request(req).await.unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    });
    upload.send_data(Bytes::from_static(b"first chunk;")).await.unwrap();
    let mut arrived = Vec::new();
    within("the first chunk reaches the backend before the rest is sent", async {
        while arrived != b"first chunk;" {
            arrived.extend_from_slice(&chunks_rx.recv().await.unwrap());
        }
    })
    .await;
    upload.send_data(Bytes::from_static(b"second chunk")).await.unwrap();
    drop(upload);
    let (status, echoed) = within("the whole exchange", exchange).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&echoed[..], b"first chunk;second chunk");
}

// ---------------------------------------------------------------------------------------
// GraphQL
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn graphql_post_passes_through_intact() {
    // A backend that answers the body back with its content type.
    let server = TestServer::start(Protocol::Http1, |req: Request<hyper::body::Incoming>| async move {
        let content_type = req.headers().get("content-type").cloned();
        let body = req.into_body().collect().await?.to_bytes();
        let mut resp = Response::new(full(body));
        if let Some(ct) = content_type {
            resp.headers_mut().insert("content-type", ct);
        }
        Ok(resp)
    })
    .await;
    let gw = TestGateway::start(&one_route(&format!("http://{}", server.addr), "")).await;
    let query = r#"{"query":"query User($id: ID!) { user(id: $id) { name friends(first: 2) { name } } }","variables":{"id":"42","note":"ünïcödé \"quoted\""},"operationName":"User"}"#;
    let req = Request::post("/graphql")
        .header("host", "gateway.test")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(query.as_bytes())))
        .unwrap();
    let resp = gw.request(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(&resp.body[..], query.as_bytes(), "the GraphQL document arrived and came back byte for byte");
}

#[tokio::test]
async fn graphql_ws_subscription_negotiates_the_subprotocol() {
    const PROTOCOL: &str = "graphql-transport-ws";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // What the server received: the offered subprotocols, then every text message.
    let (received, mut received_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else { return };
        let offered = received.clone();
        // The error type is tungstenite's, not ours.
        #[allow(clippy::result_large_err)]
        let callback =
            move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                  mut resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                let protocols = req.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
                let _ = offered.send(protocols.unwrap_or_default().to_owned());
                resp.headers_mut().insert("sec-websocket-protocol", PROTOCOL.parse().unwrap());
                Ok(resp)
            };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
        while let Some(Ok(Message::Text(text))) = ws.next().await {
            let _ = received.send(text.to_string());
            let message: serde_json::Value = serde_json::from_str(&text).unwrap();
            match message["type"].as_str() {
                Some("connection_init") => {
                    ws.send(Message::text(r#"{"type":"connection_ack"}"#)).await.unwrap();
                }
                Some("subscribe") => {
                    let id = message["id"].as_str().unwrap().to_owned();
                    for n in 1..=2 {
                        let next = format!(r#"{{"id":"{id}","type":"next","payload":{{"data":{{"tick":{n}}}}}}}"#);
                        ws.send(Message::text(next)).await.unwrap();
                    }
                    ws.send(Message::text(format!(r#"{{"id":"{id}","type":"complete"}}"#))).await.unwrap();
                }
                _ => {}
            }
        }
    });
    let gw = TestGateway::start(&one_route(&format!("http://{addr}"), "")).await;

    let mut request = "ws://gateway.test/graphql".into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", PROTOCOL.parse().unwrap());
    let (mut ws, resp) = ws_connect(gw.addr, request).await;
    assert_eq!(resp.headers()["sec-websocket-protocol"], PROTOCOL, "the backend's choice reached the client");
    assert_eq!(within("offered subprotocols", received_rx.recv()).await.unwrap(), PROTOCOL);

    let init = r#"{"type":"connection_init","payload":{}}"#;
    ws.send(Message::text(init)).await.unwrap();
    assert_eq!(within("ack", ws.next()).await.unwrap().unwrap(), Message::text(r#"{"type":"connection_ack"}"#));
    let subscribe = r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { tick }"}}"#;
    ws.send(Message::text(subscribe)).await.unwrap();
    for n in 1..=2 {
        let next = format!(r#"{{"id":"1","type":"next","payload":{{"data":{{"tick":{n}}}}}}}"#);
        assert_eq!(within("next", ws.next()).await.unwrap().unwrap(), Message::text(next));
    }
    assert_eq!(within("complete", ws.next()).await.unwrap().unwrap(), Message::text(r#"{"id":"1","type":"complete"}"#));
    assert_eq!(within("init at the server", received_rx.recv()).await.unwrap(), init);
    assert_eq!(within("subscribe at the server", received_rx.recv()).await.unwrap(), subscribe);
    ws.close(None).await.unwrap();
}
