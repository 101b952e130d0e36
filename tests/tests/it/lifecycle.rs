//! Reload, admin endpoints, metrics and graceful shutdown.

use gateway_tests::{eventually, Backend, TestGateway};

fn config(backend: &Backend, route_path: &str) -> String {
    format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"{route_path}\"\nservice = \"echo\"\n",
        backend.addr
    )
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&config(&backend, "/")).await;
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    gw.get("/x").await;
    let metrics = gw.admin_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains(r#"gateway_requests_total{route="r",method="GET",status="200"} 1"#), "{text}");
    assert!(text.contains(r#"gateway_request_duration_seconds_count{route="r"} 1"#), "{text}");
}

#[tokio::test]
async fn changed_file_is_reloaded_and_invalid_file_changes_nothing() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&config(&backend, "/old")).await;
    assert_eq!(gw.get("/old").await.status, 200);

    // A valid change, written as editors do: a new file renamed over the old one.
    let tmp = gw.config_path.with_extension("tmp");
    std::fs::write(&tmp, TestGateway::full_config(&config(&backend, "/new"), "")).unwrap();
    std::fs::rename(&tmp, &gw.config_path).unwrap();
    assert!(eventually(async || gw.get("/new").await.status == 200).await, "the new route never appeared");
    assert_eq!(gw.get("/old").await.status, 404);
    let status = gw.admin_get("/admin/config/status").await.json();
    assert_eq!(status["version"], 2);
    assert!(status["last_error"].is_null());

    // A broken file: the running configuration keeps serving and the error is reported.
    std::fs::write(&gw.config_path, "[[routes]\nname = ").unwrap();
    assert!(
        eventually(async || !gw.admin_get("/admin/config/status").await.json()["last_error"].is_null()).await,
        "the error was never reported"
    );
    let status = gw.admin_get("/admin/config/status").await.json();
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("gateway.toml:1:"), "{error}");
    assert_eq!(status["version"], 2);
    assert_eq!(gw.get("/new").await.status, 200);
    let metrics = gw.admin_get("/metrics").await;
    assert!(String::from_utf8_lossy(&metrics.body).contains(r#"gateway_config_reloads_total{result="error"} 1"#));
}

#[tokio::test]
async fn explicit_reload_reports_errors_and_keeps_serving() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&config(&backend, "/a")).await;
    std::fs::write(
        &gw.config_path,
        TestGateway::full_config(&config(&backend, "/a").replace("echo\"\n", "missing\"\n"), ""),
    )
    .unwrap();
    let errors = gw.handle().reload().await.unwrap_err();
    assert!(errors[0].message.contains("missing"), "{}", errors[0]);
    assert_eq!(gw.get("/a").await.status, 200);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&config(&backend, "/")).await;
    let addr = gw.addr;
    let admin = gw.admin_addr;
    let in_flight = tokio::spawn(async move {
        let req = http::Request::get("/slow/700").header("host", "a").body(Default::default()).unwrap();
        gateway_tests::send(addr, req).await
    });
    // Wait until the slow request reached the backend, then shut down.
    assert!(eventually(async || !backend.seen().is_empty()).await);
    let shutdown = tokio::spawn(gw.shutdown());
    // While draining, /readyz says 503 and new connections are refused.
    assert!(
        eventually(async || {
            let req = http::Request::get("/readyz").header("host", "a").body(Default::default()).unwrap();
            gateway_tests::send(admin, req).await.status == 503
        })
        .await
    );
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "the in-flight request finished");
    assert_eq!(&answer.body[..], b"slow");
    shutdown.await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn admin_api_lists_routes_services_and_redacted_config() {
    let backend = Backend::start().await;
    let config = format!(
        "{}\n[auth.keys]\ntype = \"api_key\"\nheader = \"x-api-key\"\nkeys = [{{ consumer = \"acme\", sha256 = \"{}\" }}]\n",
        config(&backend, "/"),
        "ab".repeat(32)
    );
    let gw = TestGateway::start(&config).await;
    let routes = gw.admin_get("/admin/routes").await.json();
    assert_eq!(routes[0]["name"], "r");
    assert_eq!(routes[0]["path_prefix"], "/");
    let services = gw.admin_get("/admin/services").await.json();
    assert_eq!(services[0]["name"], "echo");
    let endpoint = &services[0]["endpoints"][0];
    assert_eq!(endpoint["address"], backend.addr.to_string());
    assert_eq!(endpoint["healthy"], true);
    assert_eq!(endpoint["circuit"], "closed");
    assert!(endpoint["in_flight"].is_u64());
    let config = gw.admin_get("/admin/config").await.json();
    assert_eq!(config["version"], 1);
    assert!(config["loaded_at"].is_string());
    assert_eq!(config["config"]["auth"]["keys"]["keys"][0]["sha256"], "***");
    assert!(!config.to_string().contains(&"ab".repeat(32)), "a key digest leaked");
    let missing = gw.admin_get("/admin/nothing").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "not_found");
}

#[tokio::test]
async fn admin_reload_answers_the_version_or_400_with_errors() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&config(&backend, "/a")).await;
    let post = |body: &'static str| {
        http::Request::post("/admin/reload")
            .header("host", "admin")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    std::fs::write(&gw.config_path, TestGateway::full_config(&config(&backend, "/b"), "")).unwrap();
    let ok = gateway_tests::send(gw.admin_addr, post("")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["version"], 2);
    std::fs::write(&gw.config_path, "[[routes]]\nname = 1\n").unwrap();
    let bad = gateway_tests::send(gw.admin_addr, post("")).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("gateway.toml:2:"), "{:?}", bad.json());
    assert_eq!(gw.get("/b").await.status, 200, "the old configuration keeps serving");
}

#[tokio::test]
async fn admin_token_guards_admin_api_but_not_health() {
    let backend = Backend::start().await;
    let dir = gateway_tests::TempDir::new();
    let path = dir.0.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret-token\"\n{}",
            config(&backend, "/")
        ),
    )
    .unwrap();
    let handle = gateway::start(&path).await.unwrap();
    let get = |path: &str, token: Option<&str>| {
        let mut req = http::Request::get(path).header("host", "admin");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        gateway_tests::send(handle.admin_addr, req.body(Default::default()).unwrap())
    };
    assert_eq!(get("/healthz", None).await.status, 200);
    assert_eq!(get("/metrics", None).await.status, 200);
    let refused = get("/admin/routes", None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(get("/admin/routes", Some("wrong")).await.status, 401);
    assert_eq!(get("/admin/routes", Some("s3cret-token")).await.status, 200);
    let config = get("/admin/config", Some("s3cret-token")).await.json();
    assert_eq!(config["config"]["admin"]["token"], "***");
    handle.shutdown().await;
}

#[tokio::test]
async fn dashboard_is_served_as_one_html_page() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&config(&backend, "/")).await;
    let page = gw.admin_get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("/admin/routes") && html.contains("/admin/services"));
    assert!(!html.contains("http://") && !html.contains("https://"), "no external resources");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_steady_load_fail_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let backend = Backend::start().await;
    let gw = TestGateway::start(&config(&backend, "/")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, served, addr) = (stop.clone(), served.clone(), gw.addr);
        clients.push(tokio::spawn(async move {
            // One keep-alive connection per client, as real clients hold them.
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let req =
                    http::Request::get("/x").header("host", "a").body(http_body_util::Empty::<bytes::Bytes>::new());
                match sender.send_request(req.unwrap()).await {
                    Ok(resp) if resp.status() == 200 => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(resp) => failures.push(format!("status {}", resp.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    // Every client is sending before the reloads start.
    while served.load(Ordering::Relaxed) < 16 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // 50 reloads, each a real change (the timeout alternates), each applied.
    for i in 0..50u64 {
        let text = config(&backend, "/")
            .replace("[services.echo]", &format!("[services.echo]\ntimeout = \"{}s\"", 10 + i % 2));
        std::fs::write(&gw.config_path, TestGateway::full_config(&text, "")).unwrap();
        gw.handle().reload().await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(failures.is_empty(), "failed requests during reloads: {failures:?}");
    }
    assert!(served.load(Ordering::Relaxed) >= 16, "the clients were actually sending");
    let status = gw.admin_get("/admin/config/status").await.json();
    assert_eq!(status["version"], 51);
}

/// An API key file is part of the configuration: writing it reloads the gateway (no
/// signal, no admin call), and an explicit reload with nothing changed is no new version.
#[tokio::test]
async fn api_key_files_are_watched_and_reloaded() {
    use gateway_tests::{get_with, TempDir};
    let hex = |key: &str| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let backend = Backend::start().await;
    let dir = TempDir::new();
    let keys = dir.0.join("keys.txt");
    std::fs::write(&keys, format!("acme {}\n", hex("key-a"))).unwrap();
    let config = format!(
        "[auth.partners]\ntype = \"api_key\"\nheader = \"x-api-key\"\nkeys_file = \"keys.txt\"\n{}auth = [\"partners\"]\n",
        config(&backend, "/")
    );
    let gw = TestGateway::start_in(dir, &config, "").await;
    let with_key = |key: &'static str| gw.request(get_with("/x", &[("x-api-key", key)]));
    assert_eq!(with_key("key-a").await.status, 200);
    assert_eq!(with_key("key-b").await.status, 401);

    // Written in place, as an operator's script would.
    std::fs::write(gw.dir().join("keys.txt"), format!("acme {}\nglobex {}\n", hex("key-a"), hex("key-b"))).unwrap();
    assert!(eventually(async || with_key("key-b").await.status == 200).await, "the new key never worked");
    assert_eq!(with_key("key-a").await.status, 200);
    let version = gw.admin_get("/admin/config/status").await.json()["version"].clone();
    assert_eq!(version, 2);
    assert_eq!(gw.handle().reload().await.unwrap(), 2, "nothing changed: no new version");
}

/// A thousand reloads, each a real change that replaces services, health checks and
/// routes, leave no task behind (tokio's own count, as `/metrics` shows it).
#[tokio::test]
async fn a_thousand_reloads_leave_no_task_behind() {
    let backend = Backend::start().await;
    let text = |i: u64| {
        format!(
            "[services.echo{n}]\nendpoints = [\"http://{addr}\"]\nhealth_check = {{ path = \"/status/200\", interval = \"1s\" }}\n\
             [[routes]]\nname = \"r{n}\"\npath_prefix = \"/\"\nservice = \"echo{n}\"\n",
            n = i % 3,
            addr = backend.addr
        )
    };
    let gw = TestGateway::start(&text(0)).await;
    let main_tasks = async || {
        let metrics = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
        let line = metrics.lines().find(|l| l.starts_with("gateway_runtime_alive_tasks{runtime=\"main\"}")).unwrap();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    // Warm up: the first few reloads may start tasks that live for good (watchers, pools).
    for i in 1..=10u64 {
        std::fs::write(&gw.config_path, TestGateway::full_config(&text(i), "")).unwrap();
        gw.handle().reload().await.unwrap();
    }
    let before = main_tasks().await;
    for i in 11..=1010u64 {
        std::fs::write(&gw.config_path, TestGateway::full_config(&text(i), "")).unwrap();
        assert_eq!(gw.handle().reload().await.unwrap(), i + 1);
    }
    assert_eq!(gw.get("/x").await.status, 200);
    // Stopped tasks are reaped as they notice; allow them a moment, then compare.
    assert!(
        eventually(async || main_tasks().await <= before + 2).await,
        "tasks: {before} before, {} after 1,000 reloads",
        main_tasks().await
    );
}

/// The dashboard in a real browser (headless Chromium): it asks for the admin token, keeps
/// it for the tab, then shows the routes, the services' endpoints and a circuit forced open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_routes_and_an_open_circuit_in_a_browser() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let dir = gateway_tests::TempDir::new();
    let path = dir.0.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"dash-token\"\n\
             [services.pair]\nendpoints = [\"http://{}\", \"http://{}\"]\n\
             [[routes]]\nname = \"orders-api\"\npath_prefix = \"/orders\"\nservice = \"pair\"\n",
            a.addr, b.addr
        ),
    )
    .unwrap();
    let handle = gateway::start(&path).await.unwrap();
    let forced = http::Request::post(format!("/admin/services/pair/endpoints/{}/circuit", b.addr))
        .header("host", "admin")
        .header("authorization", "Bearer dash-token")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(br#"{"state": "open"}"#)))
        .unwrap();
    assert_eq!(gateway_tests::send(handle.admin_addr, forced).await.status, 200);

    let browser = gateway_tests::Browser::start().await;
    browser.goto(&format!("http://{}/", handle.admin_addr)).await;
    let asked = browser.wait_for_text("#config-status", |t| t.contains("token")).await;
    assert!(asked.is_ok(), "the page did not ask for the token: {asked:?}");
    browser.type_into("#token", "dash-token").await;
    browser.click("#login button").await;
    let status = browser.wait_for_text("#config-status", |t| t.starts_with("config v1")).await;
    assert!(status.is_ok(), "config status: {status:?}");
    let routes = browser.wait_for_text("#routes", |t| t.contains("orders-api")).await;
    assert!(routes.as_ref().is_ok_and(|t| t.contains("service pair")), "routes table: {routes:?}");
    let services = browser.wait_for_text("#services", |t| t.contains("open")).await.unwrap_or_else(|t| t);
    let open_row = services.lines().find(|l| l.contains(&b.addr.to_string())).unwrap_or_default();
    assert!(open_row.contains("open"), "the forced circuit is not shown open: {services}");
    let closed_row = services.lines().find(|l| l.contains(&a.addr.to_string())).unwrap_or_default();
    assert!(closed_row.contains("closed") && closed_row.contains("healthy"), "{services}");
    browser.quit().await;
    handle.shutdown().await;
}

/// A changed `server.listen` is bound on reload, before the old listener closes: new
/// connections go to the new address, a request in flight on the old one finishes.
#[tokio::test]
async fn a_changed_listen_address_applies_without_dropping_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let gw = TestGateway::start(&config(&backend, "/")).await;
    let old = gw.addr;
    // A slow request in flight on the old address.
    let mut in_flight = tokio::net::TcpStream::connect(old).await.unwrap();
    in_flight.write_all(b"GET /slow/800 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await.unwrap();
    while backend.seen().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        config(&backend, "/")
    );
    std::fs::write(&gw.config_path, text).unwrap();
    assert_eq!(gw.handle().reload().await.unwrap(), 2);
    let new = gw.handle().local_addr();
    assert_eq!(new.port(), port);
    assert_eq!(gateway_tests::send(new, gateway_tests::get_with("/x", &[])).await.status, 200);
    assert!(tokio::net::TcpStream::connect(old).await.is_err(), "the old address still accepts");

    let mut answer = String::new();
    in_flight.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "the request in flight was dropped: {answer:?}");

    // An address that cannot be bound fails the reload; the current one keeps serving.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = format!(
        "[server]\nlisten = \"{}\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        taken.local_addr().unwrap(),
        config(&backend, "/")
    );
    std::fs::write(&gw.config_path, text).unwrap();
    let errors = gw.handle().reload().await.unwrap_err();
    assert!(errors[0].message.contains("cannot listen"), "{}", errors[0]);
    assert_eq!(gateway_tests::send(new, gateway_tests::get_with("/x", &[])).await.status, 200);
}

/// TLS turned on by a reload: new connections on the same address are TLS from then on.
#[tokio::test]
async fn tls_can_be_turned_on_by_a_reload() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&config(&backend, "/")).await;
    assert_eq!(gw.get("/x").await.status, 200);
    let ca = gateway_tests::TestCa::new("reload CA");
    ca.leaf(&["gateway.test"]).write(gw.dir(), "gw.pem", "gw-key.pem");
    let text = TestGateway::full_config(&config(&backend, "/"), "tls = { cert = \"gw.pem\", key = \"gw-key.pem\" }")
        .replace("listen = \"127.0.0.1:0\"\nworkers", &format!("listen = \"{}\"\nworkers", gw.addr));
    std::fs::write(&gw.config_path, text).unwrap();
    assert_eq!(gw.handle().reload().await.unwrap(), 2);
    let tls = gateway_tests::tls_connect(gw.addr, "gateway.test", ca.client_config(&["http/1.1"])).await;
    assert!(tls.is_ok(), "no TLS after the reload: {:?}", tls.err());
}
