//! The `gateway` command as a user runs it.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_the_repository_config() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../gateway.toml");
    let out = gateway().args(["check", "--config", config]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.trim().starts_with("ok: "), "{stdout}");
    assert!(stdout.contains(" routes, ") && stdout.trim().ends_with(" services"), "{stdout}");
}

#[test]
fn check_reports_every_error_with_its_position_and_exits_1() {
    let path = temp_file(
        "bad",
        "[services.a]\nendpoints = [\"http://127.0.0.1:1\"]\n\n[[routes]]\nname = \"x\"\npath_prefix = \"/\"\nservice = \"nope\"\n\n[[routes]]\nname = \"x\"\npath_prefix = \"/y\"\nservice = \"a\"\n",
    );
    let out = gateway().args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let file = path.display().to_string();
    assert!(stdout.lines().any(|l| l.starts_with(&format!("{file}:7:11: "))), "undefined service at 7:11: {stdout}");
    assert!(stdout.lines().any(|l| l.starts_with(&format!("{file}:10:8: "))), "duplicate name at 10:8: {stdout}");
}

#[test]
fn check_uses_gateway_config_env_var() {
    let path = temp_file("env", "[services.a]\nendpoints = [\"http://127.0.0.1:1\"]\n");
    let out = gateway().arg("check").env("GATEWAY_CONFIG", &path).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "ok: 0 routes, 1 services");
}

#[cfg(unix)]
#[test]
fn sigterm_exits_zero_after_draining() {
    let path = temp_file(
        "run",
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[services.a]\nendpoints = [\"http://127.0.0.1:1\"]\n",
    );
    let (mut child, _kill) = run_json(&path, Stdio::null());
    await_start(&lines_of(child.stderr.take().unwrap()));
    let status = terminate(&mut child);
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn check_points_route_table_errors_at_the_route() {
    let path = temp_file(
        "template",
        "[services.a]\nendpoints = [\"http://127.0.0.1:1\"]\n\n[[routes]]\nname = \"bad\"\npath = \"/users/{id\"\nservice = \"a\"\n",
    );
    let out = gateway().args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with(&format!("{}:6:8: route `bad`", path.display())), "{stdout}");
}

/// `access_log = true`: one JSON line per request on stdout, with the fields SPEC.md lists
/// plus the route and the gateway's error code, written as requests end (not when a buffer
/// fills or the process exits).
#[cfg(unix)]
#[test]
fn access_log_writes_one_json_line_per_request() {
    use std::io::{Read, Write};
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let path = temp_file(
        "access",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[telemetry]\naccess_log = true\n\
             [services.gone]\nendpoints = [\"http://{closed}\"]\n[[routes]]\nname = \"down\"\npath_prefix = \"/down\"\nservice = \"gone\"\n"
        ),
    );
    let (mut child, kill) = run_json(&path, Stdio::piped());
    // The logs are read all along, as a terminal or a log collector would.
    let addr = await_start(&lines_of(child.stderr.take().unwrap()));
    let lines = lines_of(child.stdout.take().unwrap());
    let request = |target: &str| {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nhost: a\r\nx-request-id: req-{}\r\nconnection: close\r\n\r\n",
            target.len()
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let answer = request("/down/x");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let line = lines.recv_timeout(Duration::from_secs(5)).expect("an access log line for the 502");
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/down/x");
    assert_eq!(entry["status"], 502);
    assert_eq!(entry["route"], "down");
    assert_eq!(entry["request_id"], "req-7");
    assert!(entry["error"].is_string(), "the gateway's own error code: {entry}");
    assert!(entry["duration_ms"].is_number() && entry["ts"].is_string() && entry["bytes"].is_number(), "{entry}");

    assert!(request("/nowhere").starts_with("HTTP/1.1 404"));
    let line = lines.recv_timeout(Duration::from_secs(5)).expect("an access log line for the 404");
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["status"], 404);
    assert_eq!(entry["path"], "/nowhere");
    drop(kill);
    let _ = child.wait();
}

/// A log reader that goes away (a closed stderr pipe) costs the logs, never a request,
/// and the gateway still drains and exits 0 on SIGTERM.
#[cfg(unix)]
#[test]
fn a_closed_log_pipe_never_takes_requests_down() {
    use std::io::{Read, Write};
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let path = temp_file(
        "pipe",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [services.gone]\nendpoints = [\"http://{closed}\"]\n[[routes]]\nname = \"down\"\npath_prefix = \"/\"\nservice = \"gone\"\n"
        ),
    );
    let (mut child, _kill) = run_json(&path, Stdio::null());
    let started = {
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
        stderr.find(|l| l.contains("gateway started")).expect("no start line")
        // The reader is dropped here: every later log write fails with EPIPE.
    };
    let log: serde_json::Value = serde_json::from_str(&started).unwrap();
    let addr = log["fields"]["addr"].as_str().expect("addr in the start line").to_owned();
    for _ in 0..3 {
        // Each 502 is logged as a warning, into the closed pipe.
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer:?}");
    }
    let status = terminate(&mut child);
    assert!(status.success(), "exit status {status:?}");
}

/// Operational events are single JSON log lines with an `event` field and the same fields
/// each time: here a reload that worked (with its version) and one that failed.
#[cfg(unix)]
#[test]
fn reloads_are_logged_as_structured_events() {
    let config = "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                  [services.a]\nendpoints = [\"http://127.0.0.1:1\"]\n";
    let path = temp_file("events", config);
    let (mut child, _kill) = run_json(&path, Stdio::null());
    let lines = lines_of(child.stderr.take().unwrap());
    await_start(&lines);
    let next_event = |name: &str| loop {
        let line = lines.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("no `{name}` event"));
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if json["fields"]["event"] == name {
            return json;
        }
    };
    let hup = |pid: u32| Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();

    std::fs::write(&path, format!("{config}[services.b]\nendpoints = [\"http://127.0.0.1:2\"]\n")).unwrap();
    assert!(hup(child.id()).success());
    let ok = next_event("reload");
    assert_eq!(ok["fields"]["result"], "ok", "{ok}");
    assert_eq!(ok["fields"]["version"], 2, "{ok}");
    assert_eq!(ok["level"], "INFO");

    std::fs::write(&path, "[[routes]\n").unwrap();
    assert!(hup(child.id()).success());
    let failed = next_event("reload");
    assert_eq!(failed["fields"]["result"], "error", "{failed}");
    assert!(failed["fields"]["error"].as_str().is_some_and(|e| e.contains("gateway.toml:1:")), "{failed}");
    assert_eq!(failed["level"], "ERROR");
    assert!(terminate(&mut child).success(), "a failed reload never stops the gateway");
}

/// `gateway --log-format json run --config PATH`, stderr piped, stdout as given; killed when
/// the guard drops.
fn run_json(path: &std::path::Path, stdout: Stdio) -> (std::process::Child, KillOnDrop) {
    let child = gateway()
        .args(["--log-format", "json", "run", "--config"])
        .arg(path)
        .stderr(Stdio::piped())
        .stdout(stdout)
        .spawn()
        .unwrap();
    let kill = KillOnDrop(child.id());
    (child, kill)
}

/// The lines of `output`, read on a thread all along, so a missing line fails a test
/// (a receive with a timeout) instead of hanging it.
fn lines_of(output: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait for the readiness signal, the JSON "gateway started" line; the address it names.
fn await_start(logs: &std::sync::mpsc::Receiver<String>) -> String {
    loop {
        let line = logs.recv_timeout(Duration::from_secs(30)).expect("no start line");
        if line.contains("gateway started") {
            let log: serde_json::Value = serde_json::from_str(&line).unwrap();
            return log["fields"]["addr"].as_str().expect("addr in the start line").to_owned();
        }
    }
}

/// SIGTERM, then the exit status, which must come within 10 s.
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL on drop, so a failed assertion never leaves a gateway running.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).stderr(Stdio::null()).status();
    }
}
