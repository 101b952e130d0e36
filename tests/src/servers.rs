//! External servers the tests start themselves on free loopback ports.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// A `redis-server` child process, killed when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            // The port is free when we look; if another process takes it before Redis binds,
            // Redis exits and we try another.
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            if let Some(server) = RedisServer::start_on(port) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Start on `port`; `None` when the server exits at once (the port was taken).
    pub fn start_on(port: u16) -> Option<RedisServer> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed, and the Redis rate-limit tests need a real one: \
                 install it with `apt-get install -y redis-server` (.ci/run does) ({e})"
            ),
            Err(e) => panic!("could not run redis-server: {e}"),
        };
        let mut server = RedisServer { child, port };
        // Ready when it answers PING; bounded at 10s.
        for _ in 0..400 {
            if server.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            if ping(port) {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {port} did not answer PING within 10s");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl RedisServer {
    /// Stop the server now (as an outage would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// One server for the tests of this binary that run at the same time; killed when the last
/// of them drops it (a static would never be dropped, and the process would outlive us).
pub fn shared_redis() -> Arc<RedisServer> {
    static SHARED: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = slot.upgrade() {
        return server;
    }
    let server = Arc::new(RedisServer::start());
    *slot = Arc::downgrade(&server);
    server
}
