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
    let mut child = gateway()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Readiness signal: the "gateway started" log line.
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let started = lines.by_ref().map_while(Result::ok).find(|l| l.contains("gateway started"));
    assert!(started.is_some(), "no start line");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
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
