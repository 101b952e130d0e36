//! `gateway-tests`: the shared fixtures of the black-box tests.
//!
//! - [`Backend`]: a real HTTP/1.1 server on `127.0.0.1:0` that answers with what reached it.
//! - [`TestGateway`]: the real gateway started on a config string (ports from `127.0.0.1:0`).
//! - [`send`] and [`raw`]: a real client, and raw bytes for requests no client would send.
//! - [`Backend::start_h2c`], [`Backend::start_tls`] and [`TestServer`]: the same echo over
//!   h2c or TLS, and a hyper server with a handler of the test's own.
//! - [`ChaosBackend`]: the echo backend, killable (listener and connections), restartable on
//!   its port, and slowable.
//! - [`GrpcBackend`]: a tonic gRPC server (h2c) with the four call kinds of `proto/echo.proto`.
//! - [`Browser`]: headless Chromium driven by chromedriver over WebDriver (the dashboard test).
//! - [`TestCa`], [`Leaf`] and [`tls_connect`]: certificates made at test time and TLS clients.
//! - [`KeepAlive`]: one HTTP/1.1 connection for several requests; [`frames`]: hand-built
//!   HTTP/2 frames over raw TCP.
//!
//! ```no_run
//! # async fn f() {
//! use gateway_tests::{Backend, TestGateway};
//! let backend = Backend::start().await;
//! let gw = TestGateway::start(&format!(r#"
//! [services.echo]
//! endpoints = ["http://{}"]
//! [[routes]]
//! name = "all"
//! path_prefix = "/"
//! service = "echo"
//! "#, backend.addr)).await;
//! let resp = gw.get("/hello").await;
//! assert_eq!(resp.status, 200);
//! # }
//! ```
#![allow(clippy::unwrap_used)]

mod backend;
mod browser;
mod client;
pub mod frames;
mod gateway;
mod grpc;
mod servers;
mod tls;

pub use backend::{full, Backend, BoxedBody, ChaosBackend, Protocol, Seen, TestServer};
pub use browser::Browser;
pub use client::{eventually, eventually_within, get_with, raw, send, Answer, KeepAlive};
pub use gateway::TestGateway;
pub use grpc::{echo, GrpcBackend};
pub use servers::{
    shared_etcd, shared_kafka, shared_nats, shared_rabbit, shared_redis, EtcdServer, KafkaServer, NatsServer,
    RabbitServer, RedisServer,
};
pub use tls::{tls_connect, Leaf, TestCa};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gateway-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
