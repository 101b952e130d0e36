//! A real gRPC server (tonic, h2c) with the four call kinds of `proto/echo.proto`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

/// The generated messages, client and server of `proto/echo.proto`.
pub mod echo {
    tonic::include_proto!("echo");
}

use echo::echo_server::{Echo, EchoServer};
use echo::{EchoReply, EchoRequest};

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// What the echo service saw of each call.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Option<String>>>>);

/// A tonic echo server on `127.0.0.1:0`, serving HTTP/2 in clear (an `h2c://` endpoint).
///
/// `Unary` echoes the message, the `x-meta` metadata (as `x-meta-echo`), waits
/// `delay_ms`, and fails with `fail_code` (message "failed on purpose", metadata
/// `x-detail: custom`) when it is set. `ServerStream` sends `count` replies `delay_ms`
/// apart; `ClientStream` joins what it received; `Bidi` answers each message as it comes.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcBackend {
    pub async fn start() -> GrpcBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let service = EchoServer::new(EchoService { seen: seen.clone() });
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        GrpcBackend { addr, seen, task }
    }

    /// The `grpc-timeout` header of every call that reached the server, in order.
    pub fn timeouts(&self) -> Vec<Option<String>> {
        self.seen.0.lock().unwrap().clone()
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct EchoService {
    seen: Seen,
}

impl EchoService {
    fn record<T>(&self, req: &Request<T>) {
        let timeout = req.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).map(str::to_owned);
        self.seen.0.lock().unwrap().push(timeout);
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.record(&req);
        let meta = req.metadata().get("x-meta").cloned();
        let msg = req.into_inner();
        tokio::time::sleep(Duration::from_millis(msg.delay_ms.into())).await;
        if msg.fail_code != 0 {
            let mut status = Status::new(Code::from(msg.fail_code), "failed on purpose");
            status.metadata_mut().insert("x-detail", "custom".parse().unwrap());
            return Err(status);
        }
        let mut resp = Response::new(EchoReply { message: msg.message, index: 0 });
        if let Some(meta) = meta {
            resp.metadata_mut().insert("x-meta-echo", meta);
        }
        Ok(resp)
    }

    type ServerStreamStream = Replies;

    async fn server_stream(&self, req: Request<EchoRequest>) -> Result<Response<Replies>, Status> {
        self.record(&req);
        let msg = req.into_inner();
        let replies = futures_util::stream::unfold(0u32, move |i| {
            let msg = msg.clone();
            async move {
                if i >= msg.count {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(msg.delay_ms.into())).await;
                Some((Ok(EchoReply { message: format!("{}-{i}", msg.message), index: i }), i + 1))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn client_stream(&self, req: Request<Streaming<EchoRequest>>) -> Result<Response<EchoReply>, Status> {
        self.record(&req);
        let mut stream = req.into_inner();
        let mut parts = Vec::new();
        while let Some(msg) = stream.message().await? {
            parts.push(msg.message);
        }
        Ok(Response::new(EchoReply { index: parts.len() as u32, message: parts.join(",") }))
    }

    type BidiStream = Replies;

    async fn bidi(&self, req: Request<Streaming<EchoRequest>>) -> Result<Response<Replies>, Status> {
        self.record(&req);
        let replies = futures_util::stream::unfold(Some((req.into_inner(), 0u32)), |state| async move {
            let (mut stream, i) = state?;
            match stream.message().await {
                Ok(Some(msg)) => Some((Ok(EchoReply { message: msg.message, index: i }), Some((stream, i + 1)))),
                Ok(None) => None,
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}
