//! `grpc-echo ADDR`: a gRPC server over h2c whose `echo.Echo/Unary` answers the request's
//! message unchanged. The backend of load-tests/h2.sh; runs until SIGTERM or Ctrl-C.

use tonic::{Request, Response, Status};

mod pb {
    tonic::include_proto!("echo");
}

use pb::echo_server::{Echo, EchoServer};
use pb::Msg;

struct Service;

#[tonic::async_trait]
impl Echo for Service {
    async fn unary(&self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .ok_or("usage: grpc-echo ADDR (e.g. 127.0.0.1:50051)")?
        .parse()?;
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    eprintln!("grpc-echo: serving echo.Echo on {addr}");
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(Service))
        .serve_with_shutdown(addr, stop)
        .await?;
    Ok(())
}
