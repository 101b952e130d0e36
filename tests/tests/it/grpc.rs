//! gRPC through the gateway with a real tonic server and real tonic clients: the four
//! call kinds, metadata and trailers, status codes, `grpc-timeout` as the deadline, the
//! gateway's own failures in the gRPC form, and gRPC-Web translated to gRPC.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gateway_tests::echo::echo_client::EchoClient;
use gateway_tests::echo::{EchoReply, EchoRequest};
use gateway_tests::{GrpcBackend, TestGateway};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// The longest any single step of these tests may take.
const STEP: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A gateway with the echo service behind `/echo.Echo/` (plus `extra` config), and a
/// tonic client talking to the gateway (HTTP/2 in clear).
async fn setup(extra: &str) -> (GrpcBackend, TestGateway, EchoClient<Channel>) {
    let backend = GrpcBackend::start().await;
    let config = format!(
        "[services.echo]\nendpoints = [\"h2c://{}\"]\n[[routes]]\nname = \"echo\"\npath_prefix = \"/echo.Echo/\"\nservice = \"echo\"\n{extra}",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let client = client(&gw).await;
    (backend, gw, client)
}

async fn client(gw: &TestGateway) -> EchoClient<Channel> {
    let channel =
        within("connect", Channel::from_shared(format!("http://{}", gw.addr)).unwrap().connect()).await.unwrap();
    EchoClient::new(channel)
}

fn msg(message: &str) -> EchoRequest {
    EchoRequest { message: message.into(), ..Default::default() }
}

#[tokio::test]
async fn unary_carries_metadata_both_ways() {
    let (_backend, _gw, mut client) = setup("").await;
    let mut req = Request::new(msg("hello"));
    req.metadata_mut().insert("x-meta", "from-client".parse().unwrap());
    let resp = within("unary", client.unary(req)).await.unwrap();
    assert_eq!(resp.metadata().get("x-meta-echo").unwrap(), "from-client");
    assert_eq!(resp.into_inner().message, "hello");
}

#[tokio::test]
async fn server_streaming_delivers_each_message_as_it_is_sent() {
    let (_backend, _gw, mut client) = setup("").await;
    let started = Instant::now();
    let req = EchoRequest { message: "tick".into(), count: 4, delay_ms: 250, fail_code: 0 };
    let mut stream = within("server stream", client.server_stream(req)).await.unwrap().into_inner();
    let first = within("first message", stream.message()).await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(first.message, "tick-0");
    assert!(first_at < Duration::from_millis(700), "the first message waited for the others: {first_at:?}");
    let mut rest = Vec::new();
    while let Some(reply) = within("next message", stream.message()).await.unwrap() {
        rest.push(reply.index);
    }
    assert_eq!(rest, vec![1, 2, 3]);
    assert!(started.elapsed() >= Duration::from_millis(1000));
}

#[tokio::test]
async fn client_streaming_reaches_the_server_whole() {
    let (_backend, _gw, mut client) = setup("").await;
    let messages = futures_util::stream::iter(["a", "b", "c", "d"].map(msg));
    let reply = within("client stream", client.client_stream(messages)).await.unwrap().into_inner();
    assert_eq!(reply, EchoReply { message: "a,b,c,d".into(), index: 4 });
}

#[tokio::test]
async fn bidirectional_streaming_is_interactive() {
    let (_backend, _gw, mut client) = setup("").await;
    let (tx, rx) = mpsc::unbounded_channel();
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tx.send(msg("ping-0")).unwrap();
    let mut inbound = within("bidi", client.bidi(outbound)).await.unwrap().into_inner();
    // Each answer arrives before the next message is sent: nothing is buffered either way.
    for i in 0..3u32 {
        let reply = within("bidi reply", inbound.next()).await.unwrap().unwrap();
        assert_eq!(reply, EchoReply { message: format!("ping-{i}"), index: i });
        tx.send(msg(&format!("ping-{}", i + 1))).unwrap();
    }
    drop(tx);
    let last = within("last reply", inbound.next()).await.unwrap().unwrap();
    assert_eq!(last.index, 3);
    assert!(within("end of stream", inbound.next()).await.is_none());
}

#[tokio::test]
async fn upstream_status_message_and_trailer_metadata_reach_the_client() {
    let (_backend, _gw, mut client) = setup("").await;
    let req = EchoRequest { message: "x".into(), fail_code: Code::FailedPrecondition as i32, ..Default::default() };
    let status = within("failing unary", client.unary(req)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "failed on purpose");
    assert_eq!(status.metadata().get("x-detail").unwrap(), "custom");
}

#[tokio::test]
async fn grpc_timeout_is_the_deadline_and_goes_upstream() {
    // An h2c backend that ignores grpc-timeout (a tonic server would enforce it itself and
    // hide the gateway's deadline). The route allows 30 s; the caller allows 300 ms.
    let backend = gateway_tests::Backend::start_h2c().await;
    let config = format!(
        "[services.slow]\nendpoints = [\"h2c://{}\"]\n[[routes]]\nname = \"slow\"\npath_prefix = \"/\"\nservice = \"slow\"\ntimeout = \"30s\"\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let started = Instant::now();
    let (status, headers) = raw_unary(&gw, "/slow/3000", Some("300m")).await;
    let elapsed = started.elapsed();
    assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED from the gateway: {headers:?}");
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(1500), "{elapsed:?}");
    // The upstream learns the deadline too: what is left of it, in milliseconds.
    let sent = backend.last().header("grpc-timeout").expect("grpc-timeout reached the upstream").to_owned();
    let millis: u64 = sent.strip_suffix('m').expect("milliseconds").parse().unwrap();
    assert!(millis <= 300 && millis > 200, "{sent}");

    // A malformed grpc-timeout is no deadline: the route's own applies, and it goes upstream as sent.
    let (status, headers) = raw_unary(&gw, "/slow/100", Some("soon")).await;
    assert_eq!(status, None, "the backend's plain answer, not a gateway error: {headers:?}");
    assert_eq!(backend.last().header("grpc-timeout"), Some("soon"));
}

/// One unary call with a hand-built HTTP/2 request (so that no client-side deadline hides
/// the gateway's); returns the final `grpc-status` and the response headers.
async fn raw_unary(gw: &TestGateway, path: &str, grpc_timeout: Option<&str>) -> (Option<String>, http::HeaderMap) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // One empty message.
    let frame = vec![0u8; 5];
    let mut builder = http::Request::post(format!("http://{}{path}", gw.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = grpc_timeout {
        builder = builder.header("grpc-timeout", t);
    }
    let resp = within(
        "raw unary",
        sender.send_request(builder.body(http_body_util::Full::new(bytes::Bytes::from(frame))).unwrap()),
    )
    .await
    .unwrap();
    let (parts, body) = resp.into_parts();
    let collected = within("raw unary body", body.collect()).await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .or_else(|| parts.headers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned());
    (status, parts.headers)
}

#[tokio::test]
async fn gateway_failures_reach_grpc_clients_as_grpc_status_codes() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        r#"
[auth.main]
type = "api_key"
header = "x-api-key"
keys = [{{ consumer = "acme", sha256 = "0000000000000000000000000000000000000000000000000000000000000000" }}]
[rate_limits.one]
requests = 1
per = "1m"
key = "global"
[services.gone]
endpoints = ["h2c://{closed}"]
[[routes]]
name = "locked"
path_prefix = "/locked.Svc/"
service = "gone"
auth = ["main"]
[[routes]]
name = "limited"
path_prefix = "/echo.Echo/"
service = "echo"
rate_limit = ["one"]
[[routes]]
name = "down"
path_prefix = "/down.Svc/"
service = "gone"
"#
    );
    let backend = GrpcBackend::start().await;
    let gw = TestGateway::start(&format!("[services.echo]\nendpoints = [\"h2c://{}\"]\n{config}", backend.addr)).await;
    // The echo route is rate limited: the first call passes, the second is refused.
    let mut client = client(&gw).await;
    within("first", client.unary(msg("one"))).await.unwrap();
    let limited = within("second", client.unary(msg("two"))).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");

    let channel = client_channel(&gw).await;
    let call = |path: &'static str| {
        let channel = channel.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
            let path = http::uri::PathAndQuery::from_static(path);
            within(path.as_str(), grpc.unary(Request::new(msg("x")), path.clone(), codec)).await.unwrap_err()
        }
    };
    assert_eq!(call("/nowhere.Svc/Call").await.code(), Code::NotFound);
    assert_eq!(call("/locked.Svc/Call").await.code(), Code::Unauthenticated);
    assert_eq!(call("/down.Svc/Call").await.code(), Code::Unavailable);
}

async fn client_channel(gw: &TestGateway) -> Channel {
    within("connect", Channel::from_shared(format!("http://{}", gw.addr)).unwrap().connect()).await.unwrap()
}

/// A gateway whose echo route accepts gRPC-Web, with the upstream spoken to in gRPC (h2c).
async fn grpc_web_setup() -> (GrpcBackend, TestGateway) {
    let backend = GrpcBackend::start().await;
    let config = format!(
        "[services.echo]\nendpoints = [\"h2c://{}\"]\n[[routes]]\nname = \"echo\"\npath_prefix = \"/echo.Echo/\"\nservice = \"echo\"\ngrpc_web = true\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    (backend, gw)
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic_web::GrpcWebCall<tonic::body::Body>,
>;

/// tonic-web's client: gRPC-Web over HTTP/1.1, as a browser library speaks it.
fn grpc_web_client() -> tonic_web::GrpcWebClientService<HttpClient> {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    tower::ServiceBuilder::new().layer(tonic_web::GrpcWebClientLayer::new()).service(http)
}

#[tokio::test]
async fn grpc_web_clients_reach_a_grpc_upstream() {
    let (_backend, gw) = grpc_web_setup().await;
    let mut client = EchoClient::with_origin(grpc_web_client(), format!("http://{}", gw.addr).parse().unwrap());

    let mut req = Request::new(msg("from the browser"));
    req.metadata_mut().insert("x-meta", "web".parse().unwrap());
    let resp = within("grpc-web unary", client.unary(req)).await.unwrap();
    assert_eq!(resp.metadata().get("x-meta-echo").unwrap(), "web");
    assert_eq!(resp.into_inner().message, "from the browser");

    let req = EchoRequest { message: "s".into(), count: 3, ..Default::default() };
    let mut stream = within("grpc-web server stream", client.server_stream(req)).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(reply) = within("next", stream.message()).await.unwrap() {
        got.push(reply.message);
    }
    assert_eq!(got, ["s-0", "s-1", "s-2"]);

    // The upstream's status and trailer metadata travel in the body's trailer frame.
    let failing = EchoRequest { fail_code: Code::PermissionDenied as i32, ..msg("x") };
    let status = within("grpc-web failure", client.unary(failing)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "failed on purpose");
    assert_eq!(status.metadata().get("x-detail").unwrap(), "custom");

    // The gateway's own failures are gRPC-Web answers too.
    let mut grpc = tonic::client::Grpc::with_origin(grpc_web_client(), format!("http://{}", gw.addr).parse().unwrap());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
    let path = http::uri::PathAndQuery::from_static("/other.Svc/Call");
    let missing = within("unrouted", grpc.unary(Request::new(msg("x")), path, codec)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}

#[tokio::test]
async fn grpc_web_text_is_decoded_and_answered_in_base64() {
    use base64::Engine as _;
    use prost::Message;
    let (_backend, gw) = grpc_web_setup().await;
    let payload = msg("text mode").encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let body = base64::engine::general_purpose::STANDARD.encode(&frame);
    let req = http::Request::post("/echo.Echo/Unary")
        .header("host", "a")
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = gw.request(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/grpc-web-text"));
    // The answer: base64 chunks, each padded on its own; decode them group by group.
    let text = std::str::from_utf8(&resp.body).unwrap();
    let mut bytes = Vec::new();
    let mut start = 0;
    for end in (4..=text.len()).step_by(4) {
        if text[..end].ends_with('=') || end == text.len() {
            bytes.extend(base64::engine::general_purpose::STANDARD.decode(&text[start..end]).unwrap());
            start = end;
        }
    }
    // A data frame with the reply, then the trailer frame (flag 0x80).
    assert_eq!(bytes[0], 0);
    let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    let reply = EchoReply::decode(&bytes[5..5 + len]).unwrap();
    assert_eq!(reply.message, "text mode");
    let trailer = &bytes[5 + len..];
    assert_eq!(trailer[0], 0x80);
    let block = std::str::from_utf8(&trailer[5..]).unwrap();
    assert!(block.contains("grpc-status:0\r\n"), "{block:?}");

    // Text that is not base64 is a 400-class failure, not a garbled upstream call.
    let bad = http::Request::post("/echo.Echo/Unary")
        .header("host", "a")
        .header("content-type", "application/grpc-web-text")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"%%%%")))
        .unwrap();
    let resp = gw.request(bad).await;
    assert_eq!(resp.header("grpc-status"), Some("3"), "INVALID_ARGUMENT: {:?}", resp.headers);
}
