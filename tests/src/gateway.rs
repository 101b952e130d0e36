//! The real gateway, started in-process on a config string.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::{send, Answer, TempDir};

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub config_path: PathBuf,
    handle: Option<gateway::GatewayHandle>,
    dir: TempDir,
}

/// Listener settings every test config starts with: free ports, one worker.
const PREAMBLE: &str = "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n";
const ADMIN: &str = "\n[admin]\nlisten = \"127.0.0.1:0\"\n";

impl TestGateway {
    /// Start on `config` (without `[server]`/`[admin]`; they are added with free ports).
    pub async fn start(config: &str) -> TestGateway {
        Self::start_with_server(config, "").await
    }

    /// Like [`start`](Self::start), with extra `[server]` keys (one per line).
    pub async fn start_with_server(config: &str, server_keys: &str) -> TestGateway {
        Self::start_in(TempDir::new(), config, server_keys).await
    }

    /// Like [`start_with_server`](Self::start_with_server), in `dir`, which may already hold
    /// files the config names by relative path (certificates); the gateway owns it from now on.
    pub async fn start_in(dir: TempDir, config: &str, server_keys: &str) -> TestGateway {
        let config_path = dir.0.join("gateway.toml");
        std::fs::write(&config_path, Self::full_config(config, server_keys)).unwrap();
        let handle = gateway::start(&config_path).await.unwrap_or_else(|e| panic!("gateway did not start: {e}"));
        TestGateway { addr: handle.addr, admin_addr: handle.admin_addr, config_path, handle: Some(handle), dir }
    }

    /// The text written for `config`, as `start` writes it.
    pub fn full_config(config: &str, server_keys: &str) -> String {
        format!("{PREAMBLE}{server_keys}\n{ADMIN}\n{config}")
    }

    /// The directory holding the config file (and whatever `start_in` found there).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    pub fn handle(&self) -> &gateway::GatewayHandle {
        self.handle.as_ref().unwrap()
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(Request::get(path).header("host", "gateway.test").body(Full::new(Bytes::new())).unwrap()).await
    }

    /// Send `req` (origin-form URI) to the gateway.
    pub async fn request(&self, req: Request<Full<Bytes>>) -> Answer {
        send(self.addr, req).await
    }

    pub async fn admin_get(&self, path: &str) -> Answer {
        send(self.admin_addr, Request::get(path).header("host", "admin").body(Full::new(Bytes::new())).unwrap()).await
    }

    /// Stop gracefully (as SIGTERM does) and wait for the drain.
    pub async fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}
