//! Parsing, interpolation positions and every validation rule, through [`parse`].

#![allow(clippy::unwrap_used)]

use super::*;

const FILE: &str = "gw.toml";

fn env(name: &str) -> Option<String> {
    match name {
        "TOKEN" => Some("s3cret".into()),
        "LONG" => Some("a-value-much-longer-than-its-reference".into()),
        "EMPTY" => Some(String::new()),
        "BLANK" => Some("  ".into()),
        "SERVICE" => Some("users".into()),
        "NASTY" => Some("say \"hi\"\n".into()),
        _ => None,
    }
}

/// A valid file that the tests add to.
const BASE: &str = r#"
[services.users]
endpoints = ["http://127.0.0.1:9001"]

[[routes]]
name = "users"
path_prefix = "/users"
service = "users"
"#;

fn ok(text: &str) -> Config {
    match parse(FILE, text, &env) {
        Ok(config) => config,
        Err(errors) => panic!("unexpected errors:\n{}", ConfigErrors(errors)),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(FILE, text, &env) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors,
    }
}

/// Line and column of the last occurrence of `marker` in `text`.
fn pos(text: &str, marker: &str) -> (usize, usize) {
    let offset = text.rfind(marker).unwrap_or_else(|| panic!("`{marker}` not in the text"));
    env::line_col(text, offset)
}

/// Asserts an error at the start of `marker` whose message contains `needle`.
#[track_caller]
fn expect_error(text: &str, marker: &str, needle: &str) {
    let (line, col) = pos(text, marker);
    let errors = errors(text);
    assert!(
        errors.iter().any(|e| e.line == line && e.col == col && e.message.contains(needle)),
        "no error at {line}:{col} containing {needle:?}; got:\n{}",
        ConfigErrors(errors)
    );
}

/// Asserts exactly one error, as [`expect_error`].
#[track_caller]
fn expect_only(text: &str, marker: &str, needle: &str) {
    expect_error(text, marker, needle);
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors));
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

/// `BASE`'s route with `extra` lines; its name is `r`.
fn route(extra: &str) -> String {
    format!("{BASE}\n[[routes]]\nname = \"r\"\n{extra}\n")
}

// ---------------------------------------------------------------- the SPEC example

const SPEC: &str = include_str!("../tests/fixtures/spec.toml");
const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const SPEC_SERVICES: &str = r#"
[services.checkout]
endpoints = ["http://127.0.0.1:9101"]
[services.checkout-v2]
endpoints = ["http://127.0.0.1:9102"]
[services.checkout-shadow]
endpoints = ["http://127.0.0.1:9103"]
[services.orders]
endpoints = ["http://127.0.0.1:9104"]
[services.notifications]
endpoints = ["h2c://127.0.0.1:9105"]
"#;

fn spec_env(name: &str) -> Option<String> {
    (name == "GATEWAY_ADMIN_TOKEN").then(|| "admin-token".to_owned())
}

#[test]
fn spec_example_as_written_fails_only_on_its_placeholders() {
    // The example names services it does not define and has a placeholder digest.
    let errors = parse("gateway.toml", SPEC, &spec_env).unwrap_err();
    let mut messages: Vec<String> = errors.iter().map(|e| e.message.clone()).collect();
    messages.sort();
    let undefined =
        |what: &str, name: &str| format!("{what} refers to undefined service `{name}` (no [services.{name}])");
    let mut expected = vec![
        "auth provider `partners`: sha256 must be the 64 hex digits of the key's SHA-256 digest".to_owned(),
        undefined("route `checkout`", "checkout"),
        undefined("route `checkout`", "checkout-v2"),
        undefined("route `checkout`", "checkout-shadow"),
        undefined("route `profile`", "orders"),
        undefined("subscription 1", "notifications"),
    ];
    expected.sort();
    assert_eq!(messages, expected, "{}", ConfigErrors(errors));
}

#[test]
fn spec_example_with_its_services_parses() {
    let text = format!("{}{SPEC_SERVICES}", SPEC.replace("hex digest of the key", DIGEST));
    let config = parse("gateway.toml", &text, &spec_env).unwrap_or_else(|e| panic!("{}", ConfigErrors(e)));
    assert_eq!(summary(&config), "ok: 4 routes, 6 services");
    assert_eq!(config.admin.token.as_deref(), Some("admin-token"));
    assert_eq!(config.server.trusted_proxies, ["127.0.0.1/32"]);
    assert_eq!(config.server.max_body_bytes, ByteSize(10 * 1024 * 1024));
    let names: Vec<&str> = config.routes.iter().map(|r| r.name.get_ref().as_str()).collect();
    assert_eq!(names, ["users", "checkout", "profile", "order-created"]);
    // `${JWT_SECRET}` appears only in a comment, and `spec_env` does not know it.
    assert!(SPEC.contains("# or public_key_file = \"...\", or secret = \"${JWT_SECRET}\""));
    let users = &config.routes[0];
    assert_eq!(users.service.as_ref().map(|s| s.get_ref().as_str()), Some("users"));
    // Spans are offsets into the file as written, after a substitution that shortened it.
    let (line, col) = line_col(&text, users.service.as_ref().unwrap().span().start);
    assert_eq!(pos(&text, "\"users\"\nstrip_prefix"), (line, col));
    let subscription = &config.subscriptions[0].deliver_to.service;
    assert_eq!(&text[subscription.span()], "\"notifications\"");
}

// ---------------------------------------------------------------- errors and positions

#[test]
fn error_display_is_file_line_col_message() {
    let e = ConfigError { file: "gateway.toml".into(), line: 3, col: 7, message: "bad".into() };
    assert_eq!(e.to_string(), "gateway.toml:3:7: bad");
    let all = ConfigErrors(vec![e.clone(), ConfigError { line: 4, ..e }]);
    assert_eq!(all.to_string(), "gateway.toml:3:7: bad\ngateway.toml:4:7: bad");
}

#[test]
fn unknown_key_has_its_position() {
    let text = with("\n[server]\nlisten = \"127.0.0.1:8080\"\nlistne = \"x\"\n");
    expect_only(&text, "listne", "unknown field `listne`");
}

#[test]
fn wrong_type_and_bad_duration_have_positions() {
    expect_only(&with("[server]\nworkers = \"four\"\n"), "\"four\"", "invalid type: string \"four\"");
    expect_only(&with("[server]\nidle_timeout = \"5 parsecs\"\n"), "\"5 parsecs\"", "invalid duration unit");
    expect_only(&with("[server]\nidle_timeout = 5\n"), "5\n", "duration string");
}

#[test]
fn missing_required_field_points_at_its_table() {
    expect_only(&with("\n[[routes]]\npath = \"/x\"\n"), "[[routes]]\npath", "missing field `name`");
}

#[test]
fn several_deserialize_errors_are_all_reported() {
    let text = with(
        "[server]\nworkers = \"x\"\n[services.a]\nendpoints = [\"http://a:1\"]\nbogus = 1\n[[routes]]\nname = \"b\"\nwat = 2\n",
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 3, "{}", ConfigErrors(errors.clone()));
    assert_eq!((errors[0].line, errors[0].col), pos(&text, "\"x\""));
    assert_eq!((errors[1].line, errors[1].col), pos(&text, "bogus"));
    assert_eq!((errors[2].line, errors[2].col), pos(&text, "wat"));
}

#[test]
fn syntax_errors_have_positions() {
    let text = "[server]\nworkers = = 1\n";
    let errors = errors(text);
    assert_eq!(errors[0].line, 2, "{}", ConfigErrors(errors.clone()));
    assert!(errors.iter().all(|e| !e.message.contains('\n')));
}

#[test]
fn messages_are_single_lines() {
    for e in errors("a = \"unterminated\n[x\nworkers = = 1\n") {
        assert!(!e.message.contains('\n') && !e.message.is_empty(), "{e:?}");
    }
}

// ---------------------------------------------------------------- interpolation

#[test]
fn missing_variable_is_reported_at_its_dollar() {
    let text = with("[admin]\ntoken = \"Bearer-${NOT_SET}\"\n");
    expect_only(&text, "${NOT_SET}", "environment variable `NOT_SET` is not set");
}

#[test]
fn missing_variables_and_syntax_errors_come_together() {
    let text = "[admin]\ntoken = \"${NOT_SET}\"\n[server]\nworkers = = 1\n";
    let errors = errors(text);
    assert!(errors.len() >= 2, "{}", ConfigErrors(errors.clone()));
    assert_eq!((errors[0].line, errors[0].col), (2, 10));
    assert!(errors[1..].iter().all(|e| e.line == 4), "{}", ConfigErrors(errors.clone()));
}

#[test]
fn variables_in_comments_are_ignored() {
    ok(&with("# token = \"${NOT_SET}\"\n[admin] # ${NOT_SET}\ntoken = \"${TOKEN}\" # ${NOT_SET}\n"));
}

#[test]
fn otlp_protocol_takes_opentelemetry_names() {
    assert_eq!(ok(BASE).telemetry.otlp_protocol, OtlpProtocol::HttpProtobuf);
    let json = ok(&with("[telemetry]\notlp_protocol = \"http/json\"\n"));
    assert_eq!(json.telemetry.otlp_protocol, OtlpProtocol::HttpJson);
    expect_only(
        &with("[telemetry]\notlp_protocol = \"grpc\"\n"),
        "\"grpc\"",
        "expected `http/protobuf` or `http/json`",
    );
}

#[test]
fn values_are_substituted_and_escaped() {
    let config = ok(&with("[admin]\ntoken = \"${TOKEN}-${NASTY}\"\n"));
    assert_eq!(config.admin.token.as_deref(), Some("s3cret-say \"hi\"\n"));
    let config = ok(&with("[telemetry]\nservice_name = \"$${TOKEN}\"\n"));
    assert_eq!(config.telemetry.service_name, "${TOKEN}");
    let config = ok("[services.users]\nendpoints = [\"http://127.0.0.1:9001\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"${SERVICE}\"\n");
    assert_eq!(config.routes[0].service.as_ref().unwrap().get_ref(), "users");
}

#[test]
fn positions_after_a_substitution_on_the_same_line_are_exact() {
    // A deserialize error after a longer value on the same line.
    let text = format!("admin = {{ token = \"${{LONG}}\", bogus = 1 }}\n{BASE}");
    expect_only(&text, "bogus", "unknown field `bogus`");
    // A validation error after a substitution on the same line.
    let text = format!(
        "{BASE}\n[[routes]]\nname = \"r\"\nservice = \"users\"\nrequest_headers = {{ set = {{ \"x-a\" = \"${{LONG}}\", \"bad header\" = \"v\" }} }}\npath = \"/r\"\n"
    );
    expect_only(&text, "\"bad header\"", "not a valid header name");
}

#[test]
fn positions_after_a_substitution_on_a_later_line_are_exact() {
    let text = with("[admin]\ntoken = \"${LONG}\"\n[server]\nworkers = \"many\"\n");
    expect_only(&text, "\"many\"", "invalid type");
    let text =
        with("[admin]\ntoken = \"${LONG}${LONG}\"\n\n[[routes]]\nname = \"r\"\npath = \"nope\"\nservice = \"users\"\n");
    expect_only(&text, "\"nope\"", "must start with `/`");
}

#[test]
fn an_error_inside_a_substituted_value_points_at_its_reference() {
    let text = with("[[routes]]\nname = \"r\"\npath = \"/r\"\nservice = \"x${LONG}\"\n");
    // The span of the value starts at its quote, before the substitution.
    expect_only(&text, "\"x${LONG}\"", "undefined service `xa-value-much-longer-than-its-reference`");
}

// ---------------------------------------------------------------- load, hash, summary

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gateway-config-lib-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn load_reads_the_file_and_hashes_it() {
    let path = temp_file("gateway.toml", BASE);
    let (config, hash) = load_with_hash(&path).unwrap();
    assert_eq!(summary(&config), "ok: 1 routes, 1 services");
    assert_eq!(hash, content_hash(BASE));
    assert_eq!(load(&path).unwrap(), config);
    assert!(load_if_changed(&path, Some(hash)).unwrap().is_none());
    assert!(load_if_changed(&path, Some(hash ^ 1)).unwrap().is_some());
    std::fs::write(&path, "[server]\nworkers = \"x\"\n").unwrap();
    let errors = load(&path).unwrap_err();
    assert_eq!(errors[0].file, path.display().to_string());
    assert_eq!((errors[0].line, errors[0].col), (2, 11));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn an_unreadable_file_is_one_error_at_the_start() {
    let path = std::env::temp_dir().join("gateway-config-does-not-exist/gateway.toml");
    let errors = load(&path).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].col), (1, 1));
    assert!(errors[0].message.starts_with("cannot read the configuration file: "), "{}", errors[0].message);
}

#[test]
fn an_empty_file_is_a_valid_empty_config() {
    assert_eq!(summary(&ok("")), "ok: 0 routes, 0 services");
}

// ---------------------------------------------------------------- routes

#[test]
fn duplicate_route_names() {
    let text = with("\n[[routes]]\nname = \"users\"\npath = \"/other\"\nservice = \"users\"\n");
    let second = text.rfind("\"users\"\npath").unwrap();
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
    assert_eq!((errors[0].line, errors[0].col), env::line_col(&text, second));
    assert!(errors[0].message.starts_with("duplicate route name `users` (first used at 6:8)"), "{}", errors[0].message);
}

#[test]
fn undefined_references() {
    expect_only(
        &route("path = \"/r\"\nservice = \"nope\""),
        "\"nope\"",
        "route `r` refers to undefined service `nope`",
    );
    let split =
        route("path = \"/r\"\nsplit = [{ service = \"users\", weight = 1 }, { service = \"nope\", weight = 1 }]");
    expect_only(&split, "\"nope\"", "undefined service `nope`");
    let mirror = route("path = \"/r\"\nservice = \"users\"\nmirror = { service = \"nope\" }");
    expect_only(&mirror, "\"nope\"", "undefined service `nope`");
    let aggregate = route("path = \"/r\"\naggregate = [{ service = \"nope\", path = \"/x\" }]");
    expect_only(&aggregate, "\"nope\"", "undefined service `nope`");
    expect_only(
        &route("path = \"/r\"\nservice = \"users\"\nauth = [\"nope\"]"),
        "\"nope\"",
        "undefined auth provider `nope`",
    );
    expect_only(
        &route("path = \"/r\"\nservice = \"users\"\nrate_limit = [\"nope\"]"),
        "\"nope\"",
        "undefined rate limit `nope` (no [rate_limits.nope])",
    );
    expect_only(
        &route("path = \"/r\"\npublish = { broker = \"nope\", topic = \"t\" }"),
        "\"nope\"",
        "undefined broker `nope`",
    );
}

const BROKERS: &str = r#"
[brokers.rabbit]
kind = "amqp"
url = "amqp://127.0.0.1:5672/%2f"
[brokers.jet]
kind = "nats"
url = "nats://127.0.0.1:4222"
[brokers.stream]
kind = "kafka"
bootstrap = ["127.0.0.1:9092"]
"#;

#[test]
fn subscriptions_name_defined_brokers_and_services() {
    let good = format!("{BASE}{BROKERS}[[subscriptions]]\nbroker = \"rabbit\"\nqueue = \"q\"\ndeliver_to = {{ service = \"users\", path = \"/hooks\" }}\n");
    ok(&good);
    let text = format!("{BASE}{BROKERS}[[subscriptions]]\nbroker = \"nope\"\nqueue = \"q\"\ndeliver_to = {{ service = \"gone\", path = \"/hooks\" }}\n");
    expect_error(&text, "\"nope\"", "subscription 1 refers to undefined broker `nope`");
    expect_error(&text, "\"gone\"", "subscription 1 refers to undefined service `gone`");
    assert_eq!(errors(&text).len(), 2);
}

#[test]
fn subscriptions_take_the_fields_of_their_broker_kind() {
    let sub = |fields: &str| {
        format!(
            "{BASE}{BROKERS}[[subscriptions]]\n{fields}\ndeliver_to = {{ service = \"users\", path = \"/hooks\" }}\n"
        )
    };
    ok(&sub("broker = \"jet\"\nstream = \"ORDERS\"\nsubject = \"orders.>\"\ndurable = \"n\""));
    ok(&sub("broker = \"stream\"\ntopic = \"orders\"\ngroup = \"n\""));
    ok(&sub("broker = \"jet\"\nsubject = \"orders.>\""));
    expect_only(&sub("broker = \"stream\"\ngroup = \"g\""), "\"stream\"\ngroup", "needs `topic`");
    expect_only(&sub("broker = \"stream\"\ntopic = \"t\""), "\"stream\"\ntopic", "needs `group`");
    expect_only(&sub("broker = \"stream\"\ntopic = \"a b\"\ngroup = \"g\""), "\"a b\"", "not a Kafka topic name");
    expect_only(
        &sub("broker = \"stream\"\ntopic = \"t\"\ngroup = \"g\"\ndead_letter = \"t\""),
        "\"t\"\ndeliver_to",
        "is the subscription's own topic",
    );
    expect_only(&sub("broker = \"rabbit\""), "\"rabbit\"", "needs `queue`");
    expect_only(&sub("broker = \"rabbit\"\nqueue = \"q\"\ntopic = \"t\""), "topic", "`topic` is for kafka brokers");
}

#[test]
fn a_route_needs_exactly_one_action() {
    expect_only(&route("path = \"/r\""), "\"r\"", "route `r` has no action");
    let two = route("path = \"/r\"\nservice = \"users\"\nsplit = [{ service = \"users\", weight = 1 }]");
    expect_only(&two, "\"r\"", "route `r` sets `service` and `split`; set exactly one of");
}

#[test]
fn a_route_needs_exactly_one_of_path_and_path_prefix() {
    expect_only(&route("service = \"users\""), "\"r\"", "needs `path` or `path_prefix`");
    expect_only(
        &route("service = \"users\"\npath = \"/a\"\npath_prefix = \"/b\""),
        "\"/b\"",
        "sets both `path` and `path_prefix`",
    );
}

#[test]
fn paths_start_with_a_slash() {
    expect_only(&route("service = \"users\"\npath = \"a\""), "\"a\"", "path `a` must start with `/`");
    expect_only(&route("service = \"users\"\npath_prefix = \"api\""), "\"api\"", "path_prefix `api` must start");
    expect_only(
        &route("service = \"users\"\npath_prefix = \"/api\"\nrewrite = \"v2\""),
        "\"v2\"",
        "rewrite `v2` must start",
    );
}

#[test]
fn strip_prefix_and_rewrite_rules() {
    ok(&route("service = \"users\"\npath_prefix = \"/api\"\nstrip_prefix = true"));
    ok(&route("service = \"users\"\npath = \"/api/{id}\"\nrewrite = \"/v2/{id}\""));
    expect_only(
        &route("service = \"users\"\npath = \"/api\"\nstrip_prefix = true"),
        "true",
        "strip_prefix needs `path_prefix`",
    );
    expect_only(
        &route("service = \"users\"\npath_prefix = \"/api\"\nstrip_prefix = true\nrewrite = \"/v2\""),
        "rewrite",
        "set `strip_prefix` or `rewrite`, not both",
    );
}

#[test]
fn methods_are_uppercase_tokens() {
    ok(&route("service = \"users\"\npath = \"/r\"\nmethods = [\"GET\", \"PURGE\", \"M-SEARCH\"]"));
    expect_only(
        &route("service = \"users\"\npath = \"/r\"\nmethods = [\"GET\", \"get\"]"),
        "\"get\"",
        "must be uppercase: `GET`",
    );
    expect_only(
        &route("service = \"users\"\npath = \"/r\"\nmethods = [\"GE T\"]"),
        "\"GE T\"",
        "is not an HTTP method",
    );
    expect_only(&route("service = \"users\"\npath = \"/r\"\nmethods = [\"\"]"), "\"\"]", "is not an HTTP method");
}

#[test]
fn header_matches_use_valid_names_and_values() {
    ok(&route("service = \"users\"\npath = \"/r\"\nheaders = { \"x-api-version\" = \"2\", Accept = \"a/b\" }"));
    expect_only(
        &route("service = \"users\"\npath = \"/r\"\nheaders = { \"x api\" = \"2\" }"),
        "\"x api\"",
        "not a valid header name",
    );
    expect_only(
        &route("service = \"users\"\npath = \"/r\"\nheaders = { \"x-a\" = \"1\\r\\nx-b: 2\" }"),
        "\"1\\r",
        "has control characters",
    );
    expect_only(
        &route("service = \"users\"\npath = \"/r\"\nresponse_headers = { remove = [\"bad:\"] }"),
        "\"bad:\"",
        "not a valid header name",
    );
}

#[test]
fn split_weights_and_sticky_on() {
    ok(&route("path = \"/r\"\nsplit = [{ service = \"users\", weight = 0 }, { service = \"users\", weight = 1 }]\nsticky_on = \"cookie:sid\""));
    expect_only(
        &route("path = \"/r\"\nsplit = [{ service = \"users\", weight = 0 }]"),
        "[{",
        "at least one split weight must be greater than 0",
    );
    expect_only(&route("path = \"/r\"\nsplit = []"), "[]", "split needs at least one");
    expect_only(
        &route("path = \"/r\"\nsplit = [{ service = \"users\", weight = 1 }]\nsticky_on = \"ip\""),
        "\"ip\"",
        "must be \"header:NAME\" or \"cookie:NAME\"",
    );
    expect_only(
        &route("path = \"/r\"\nservice = \"users\"\nsticky_on = \"cookie:a\""),
        "sticky_on",
        "only used with `split`",
    );
}

#[test]
fn mirror_percent_is_0_to_100() {
    ok(&route("path = \"/r\"\nservice = \"users\"\nmirror = { service = \"users\", percent = 0 }"));
    ok(&route("path = \"/r\"\nservice = \"users\"\nmirror = { service = \"users\", percent = 100 }"));
    expect_only(
        &route("path = \"/r\"\nservice = \"users\"\nmirror = { service = \"users\", percent = 100.5 }"),
        "100.5",
        "mirror.percent must be between 0 and 100",
    );
    expect_only(
        &route("path = \"/r\"\nservice = \"users\"\nmirror = { service = \"users\", percent = -1 }"),
        "-1",
        "mirror.percent",
    );
}

#[test]
fn ip_lists_are_addresses_or_cidrs() {
    ok(&route("path = \"/r\"\nservice = \"users\"\nallow_ips = [\"10.0.0.0/8\", \"::1\", \"2001:db8::/32\"]\ndeny_ips = [\"10.1.0.0/16\"]"));
    expect_only(
        &route("path = \"/r\"\nservice = \"users\"\nallow_ips = [\"10.0.0.0/33\"]"),
        "\"10.0.0.0/33\"",
        "allow_ips:",
    );
    expect_only(&route("path = \"/r\"\nservice = \"users\"\ndeny_ips = [\"localhost\"]"), "\"localhost\"", "deny_ips:");
    expect_only(
        &with("[server]\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.1/x\"]\n"),
        "\"10.0.0.1/x\"",
        "trusted_proxies:",
    );
}

#[test]
fn publish_takes_the_fields_of_its_broker_kind() {
    let publish =
        |p: &str| format!("{}{BROKERS}", route(&format!("path = \"/e\"\nmethods = [\"POST\"]\npublish = {p}")));
    ok(&publish("{ broker = \"rabbit\", exchange = \"orders\", routing_key = \"order.created\" }"));
    ok(&publish("{ broker = \"rabbit\", routing_key = \"a-queue\" }"));
    ok(&publish("{ broker = \"jet\", subject = \"orders.{id}\" }"));
    expect_only(&publish("{ broker = \"rabbit\" }"), "\"rabbit\"", "needs `exchange` or `routing_key`");
    ok(&publish("{ broker = \"stream\", topic = \"orders\", key = \"{id}\" }"));
    expect_error(&publish("{ broker = \"jet\", topic = \"orders\" }"), "topic", "publish.topic is for kafka brokers");
    expect_error(&publish("{ broker = \"jet\", topic = \"orders\" }"), "\"jet\"", "needs `subject`");
}

#[test]
fn aggregate_parts() {
    ok(&route("path = \"/r/{id}\"\naggregate = [{ service = \"users\", path = \"/u/{id}\", name = \"u\" }, { service = \"users\", path = \"/o\", after = \"u\" }]"));
    expect_only(
        &route("path = \"/r\"\naggregate = [{ service = \"users\", path = \"u\" }]"),
        "\"u\"",
        "aggregate path `u` must start",
    );
    expect_only(
        &route("path = \"/r\"\naggregate = [{ service = \"users\", path = \"/u\", after = \"x\" }]"),
        "\"x\"",
        "`after` names no other part",
    );
    expect_only(&route("path = \"/r\"\naggregate = []"), "[]", "aggregate needs at least one part");
}

#[test]
fn other_route_checks() {
    expect_only(
        &route("path = \"/r\"\nservice = \"users\"\nrequire_claims = { scope = \"a\" }"),
        "require_claims",
        "needs `auth`",
    );
    expect_only(
        &route("path = \"/r\"\nservice = \"users\"\ntimeout = \"0s\""),
        "\"0s\"",
        "timeout must be greater than 0",
    );
    expect_only(
        &route("path = \"/r\"\nservice = \"users\"\nhost = \"http://x\""),
        "\"http://x\"",
        "must be a host name",
    );
    for host in ["*.example.com", "api.example.com:8443", "127.0.0.1", "[::1]:8080", "localhost"] {
        ok(&route(&format!("path = \"/r\"\nservice = \"users\"\nhost = \"{host}\"")));
    }
    expect_only(&route("path = \"/r\"\nservice = \"users\"\nhost = \"a.*.com\""), "\"a.*.com\"", "must be a host name");
    expect_only(
        &route("path = \"/r\"\nservice = \"users\"\ncache = { ttl = \"0s\" }"),
        "\"0s\"",
        "cache.ttl must be greater than 0",
    );
    let text = format!("{BASE}\n[[routes]]\nname = \"a b\"\npath = \"/r\"\nservice = \"users\"\n");
    expect_only(&text, "\"a b\"", "route name `a b` may use only printable ASCII");
}

// ---------------------------------------------------------------- services

fn service(body: &str) -> String {
    with(&format!("\n[services.s]\n{body}\n"))
}

#[test]
fn service_endpoints_parse() {
    ok(&service("endpoints = [\"http://10.0.0.1:80\", \"https://api.internal\", \"h2c://[::1]:50051/\"]"));
    expect_only(&service("endpoints = [\"10.0.0.1:80\"]"), "\"10.0.0.1:80\"", "must be scheme://host:port");
    expect_only(&service("endpoints = [\"ftp://a:1\"]"), "\"ftp", "unknown scheme `ftp`");
    expect_only(&service("endpoints = [\"http://a:1/api\"]"), "\"http://a:1/api\"", "must not have a path");
    expect_only(&service("endpoints = [\"http://a:http\"]"), "\"http://a:http\"", "is not a port number");
}

#[test]
fn discovery_rules() {
    expect_only(&service("discovery = \"static\""), "s]", "a static service needs at least one");
    expect_only(&service("endpoints = []"), "s]", "has no endpoints");
    ok(&service("discovery = \"registry\""));
    ok(&service("discovery = \"dns\"\ndns = \"users.internal:8080\""));
    expect_only(&service("discovery = \"dns\""), "\"dns\"", "discovery = \"dns\" needs dns = \"host:port\"");
    expect_only(&service("discovery = \"dns\"\ndns = \"users.internal\""), "\"users.internal\"", "a port is required");
    expect_only(&service("endpoints = [\"http://a:1\"]\ndns = \"a:1\""), "dns =", "only used with discovery = \"dns\"");
    // SRV records: srv://NAME, no port (the records carry it).
    ok(&service("discovery = \"dns\"\ndns = \"srv://_http._tcp.users.internal\""));
    ok(&service("discovery = \"dns\"\ndns = \"srv://_grpc._tcp.users.internal.\""));
    expect_only(&service("discovery = \"dns\"\ndns = \"srv://\""), "\"srv://\"", "srv://NAME needs a DNS name");
    expect_only(
        &service("discovery = \"dns\"\ndns = \"srv://_http._tcp.users.internal:80\""),
        "\"srv://_http",
        "srv://NAME needs a DNS name",
    );
}

#[test]
fn consistent_hash_needs_hash_on() {
    let lb = "endpoints = [\"http://a:1\"]\nload_balancer = \"consistent_hash\"";
    ok(&service(&format!("{lb}\nhash_on = \"header:x-user-id\"")));
    ok(&service(&format!("{lb}\nhash_on = \"cookie:session\"")));
    ok(&service(&format!("{lb}\nhash_on = \"ip\"")));
    expect_only(&service(lb), "\"consistent_hash\"", "consistent_hash needs hash_on");
    expect_only(&service(&format!("{lb}\nhash_on = \"header:\"")), "\"header:\"", "must be \"header:NAME\"");
    expect_only(&service(&format!("{lb}\nhash_on = \"user\"")), "\"user\"", "must be");
    expect_only(
        &service("endpoints = [\"http://a:1\"]\nhash_on = \"ip\""),
        "hash_on",
        "only used with load_balancer = \"consistent_hash\"",
    );
}

#[test]
fn circuit_breaker_retry_and_health_check_ranges() {
    let e = "endpoints = [\"http://a:1\"]";
    ok(&service(&format!("{e}\ncircuit_breaker = {{ failure_ratio = 1.0 }}\nretry = {{ budget = 0.0 }}")));
    ok(&service(&format!("{e}\nretry = {{ budget = 1 }}")));
    expect_only(
        &service(&format!("{e}\ncircuit_breaker = {{ failure_ratio = 0.0 }}")),
        "0.0",
        "failure_ratio must be in (0, 1]",
    );
    expect_only(
        &service(&format!("{e}\ncircuit_breaker = {{ failure_ratio = 1.5 }}")),
        "1.5",
        "failure_ratio must be in (0, 1]",
    );
    expect_only(&service(&format!("{e}\nretry = {{ budget = 1.2 }}")), "1.2", "retry.budget must be in [0, 1]");
    expect_only(&service(&format!("{e}\nretry = {{ budget = -0.1 }}")), "-0.1", "retry.budget");
    expect_only(
        &service(&format!("{e}\nretry = {{ retry_on = [\"503\", \"sometimes\"] }}")),
        "\"sometimes\"",
        "retry_on `sometimes`",
    );
    expect_only(
        &service(&format!("{e}\nhealth_check = {{ path = \"health\" }}")),
        "\"health\"",
        "health_check.path must start",
    );
    ok(&service(&format!("{e}\nhealth_check = {{ kind = \"grpc\", service = \"users.v1.Users\" }}")));
    expect_only(
        &service(&format!("{e}\nhealth_check = {{ service = \"users.v1.Users\" }}")),
        "service =",
        "health_check.service is only used with kind = \"grpc\"",
    );
    expect_only(
        &service(&format!("{e}\nconnect_timeout = \"0ms\"")),
        "\"0ms\"",
        "connect_timeout must be greater than 0",
    );
    expect_only(&service(&format!("{e}\nclient_cert = \"c.pem\"")), "client_cert", "client_cert needs client_key");
}

// ---------------------------------------------------------------- server, admin, registry

#[test]
fn workers_are_bounded() {
    ok(&with("[server]\nworkers = 1024\n"));
    expect_only(&with("[server]\nworkers = 1025\n"), "1025", "too many; at most 1024");
}

#[test]
fn an_empty_admin_token_is_an_error() {
    ok(&with("[admin]\ntoken = \"${TOKEN}\"\n"));
    expect_only(&with("[admin]\ntoken = \"${EMPTY}\"\n"), "\"${EMPTY}\"", "admin.token is empty");
    expect_only(&with("[admin]\ntoken = \"${BLANK}\"\n"), "\"${BLANK}\"", "admin.token is empty");
    expect_only(&with("[admin]\ntoken = \"\"\n"), "\"\"", "admin.token is empty");
}

#[test]
fn admin_and_server_listen_apart() {
    ok(&with("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"));
    expect_only(
        &with("[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n"),
        "\"127.0.0.1:8080\"",
        "also server.listen",
    );
}

#[test]
fn etcd_store_needs_etcd() {
    expect_only(&with("[registry]\nstore = \"etcd\"\n"), "\"etcd\"", "registry.store = \"etcd\" needs registry.etcd");
    ok(&with("[registry]\nstore = \"etcd\"\netcd = { endpoints = [\"http://127.0.0.1:2379\"] }\n"));
    expect_only(
        &with("[registry]\netcd = { endpoints = [\"http://127.0.0.1:2379\"] }\n"),
        "etcd =",
        "only used with registry.store = \"etcd\"",
    );
    ok(&with("[registry]\nstore = \"etcd\"\netcd = { endpoints = [\"127.0.0.1:2379\"] }\n"));
    expect_only(
        &with("[registry]\nstore = \"etcd\"\netcd = { endpoints = [\"h2c://127.0.0.1:2379\"] }\n"),
        "\"h2c:",
        "etcd endpoint",
    );
    expect_only(
        &with("[registry]\nstore = \"etcd\"\netcd = { endpoints = [] }\n"),
        "[]",
        "registry.etcd.endpoints is empty",
    );
    let etcd = "etcd = { endpoints = [\"http://127.0.0.1:2379\"], prefix = \"\" }";
    expect_only(&with(&format!("[registry]\nstore = \"etcd\"\n{etcd}\n")), "\"\" }", "registry.etcd.prefix is empty");
    let etcd = "etcd = { endpoints = [\"http://127.0.0.1:2379\"] }";
    expect_only(
        &with(&format!("[registry]\nstore = \"etcd\"\nttl = \"500ms\"\n{etcd}\n")),
        "\"500ms\"",
        "registry.ttl must be at least 1s with the etcd store",
    );
}

// ---------------------------------------------------------------- rate limits

fn limit(body: &str) -> String {
    with(&format!("\n[rate_limits.l]\n{body}\n"))
}

#[test]
fn rate_limit_keys() {
    for key in ["ip", "global", "consumer", "header:x-tenant", "claim:sub"] {
        ok(&limit(&format!("requests = 10\nper = \"1s\"\nkey = \"{key}\"")));
    }
    ok(&limit("requests = 10\nper = \"1s\""));
    for key in ["user", "header:", "claim:", "header:a b", "IP"] {
        expect_only(&limit(&format!("requests = 10\nper = \"1s\"\nkey = \"{key}\"")), &format!("\"{key}\""), "key `");
    }
}

#[test]
fn rate_limit_numbers_and_store() {
    expect_only(&limit("requests = 0\nper = \"1s\""), "0\n", "requests must be greater than 0");
    expect_only(&limit("requests = 1\nper = \"0s\""), "\"0s\"", "per must be greater than 0");
    expect_only(&limit("requests = 1\nper = \"1s\"\nstore = \"redis\""), "\"redis\"", "needs a [redis] table");
    ok(&format!(
        "{}[redis]\nurl = \"redis://127.0.0.1:6379\"\n",
        limit("requests = 1\nper = \"1s\"\nstore = \"redis\"")
    ));
}

// ---------------------------------------------------------------- auth

fn provider(body: &str) -> String {
    with(&format!("\n[auth.p]\n{body}\n"))
}

#[test]
fn jwt_algorithms() {
    ok(&provider("type = \"jwt\"\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\njwks_url = \"https://idp/jwks\""));
    ok(&provider("type = \"jwt\"\nalgorithms = [\"HS256\"]\nsecret = \"${TOKEN}\""));
    expect_only(
        &provider("type = \"jwt\"\nalgorithms = []\njwks_url = \"https://idp/jwks\""),
        "\"jwt\"",
        "needs algorithms",
    );
    expect_only(&provider("type = \"jwt\"\njwks_url = \"https://idp/jwks\""), "\"jwt\"", "needs algorithms");
    expect_only(
        &provider("type = \"jwt\"\nalgorithms = [\"RS256\", \"none\"]\njwks_url = \"https://idp/jwks\""),
        "\"none\"",
        "algorithm `none` is never accepted",
    );
    expect_only(
        &provider("type = \"jwt\"\nalgorithms = [\"RS1\"]\njwks_url = \"https://idp/jwks\""),
        "\"RS1\"",
        "unknown JWT algorithm `RS1`",
    );
    expect_error(
        &provider("type = \"jwt\"\nalgorithms = [\"HS256\", \"RS256\"]\nsecret = \"s\""),
        "[\"HS256\"",
        "mixes HS256 (shared secret) and RS256 (public key)",
    );
}

#[test]
fn jwt_key_sources() {
    expect_only(
        &provider("type = \"jwt\"\nalgorithms = [\"RS256\"]"),
        "\"jwt\"",
        "needs one of jwks_url, public_key_file or secret",
    );
    expect_only(
        &provider(
            "type = \"jwt\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp/jwks\"\npublic_key_file = \"k.pem\"",
        ),
        "public_key_file",
        "set only one of",
    );
    expect_only(
        &provider("type = \"jwt\"\nalgorithms = [\"HS256\"]\njwks_url = \"https://idp/jwks\""),
        "jwks_url",
        "HS256 needs `secret`",
    );
    expect_only(
        &provider("type = \"jwt\"\nalgorithms = [\"RS256\"]\nsecret = \"s\""),
        "secret",
        "`secret` is only for HS*",
    );
    expect_only(
        &provider("type = \"jwt\"\nalgorithms = [\"HS512\"]\nsecret = \"${EMPTY}\""),
        "\"${EMPTY}\"",
        "secret is empty",
    );
    expect_only(
        &provider("type = \"jwt\"\nalgorithms = [\"RS256\"]\npublic_key_file = \"k.pem\"\nheader = \"x\""),
        "header",
        "`header` is for type = \"api_key\"",
    );
}

#[test]
fn api_keys() {
    let key = format!("keys = [{{ consumer = \"acme\", sha256 = \"{DIGEST}\" }}]");
    ok(&provider(&format!("type = \"api_key\"\nheader = \"x-api-key\"\n{key}")));
    ok(&provider("type = \"api_key\"\nquery = \"api_key\"\nkeys_file = \"keys.toml\""));
    expect_only(
        &provider(&format!("type = \"api_key\"\n{key}")),
        "\"api_key\"",
        "needs header = \"x-api-key\" or query",
    );
    expect_only(
        &provider("type = \"api_key\"\nheader = \"x-api-key\""),
        "\"api_key\"",
        "needs keys = [...] or keys_file",
    );
    expect_only(
        &provider("type = \"api_key\"\nheader = \"x-api-key\"\nkeys = [{ consumer = \"acme\", sha256 = \"abc\" }]"),
        "\"abc\"",
        "sha256 must be the 64 hex digits",
    );
    let not_hex = DIGEST.replace('9', "g");
    expect_only(
        &provider(&format!(
            "type = \"api_key\"\nheader = \"x-api-key\"\nkeys = [{{ consumer = \"acme\", sha256 = \"{not_hex}\" }}]"
        )),
        "\"gf86",
        "sha256 must be",
    );
    expect_only(
        &provider(&format!("type = \"api_key\"\nheader = \"x-api-key\"\n{key}\nalgorithms = [\"RS256\"]")),
        "algorithms",
        "`algorithms` is for type = \"jwt\"",
    );
}

// ---------------------------------------------------------------- brokers

#[test]
fn broker_addresses() {
    ok(&format!("{BASE}{BROKERS}"));
    expect_only(&with("[brokers.b]\nkind = \"amqp\"\n"), "\"amqp\"", "needs url = \"amqp://host:port\"");
    expect_only(&with("[brokers.b]\nkind = \"kafka\"\n"), "\"kafka\"", "needs bootstrap");
    expect_only(&with("[brokers.b]\nkind = \"kafka\"\nbootstrap = [\"k\"]\n"), "\"k\"", "a port is required");
    ok(&with("[brokers.b]\nkind = \"kafka\"\nbootstrap = [\"k:9092\"]\nsession_timeout = \"6s\"\n"));
    expect_only(
        &with("[brokers.b]\nkind = \"nats\"\nurl = \"nats://k:4222\"\nsession_timeout = \"6s\"\n"),
        "session_timeout",
        "`session_timeout` is for kind = \"kafka\"",
    );
    expect_only(&with("[brokers.b]\nkind = \"nats\"\nurl = \"http://x\"\n"), "\"http://x\"", "must start with nats://");
    ok(&with("[brokers.b]\nkind = \"nats\"\nurl = \"127.0.0.1:4222\"\n"));
    expect_only(
        &with("[brokers.b]\nkind = \"amqp\"\nurl = \"127.0.0.1:5672\"\n"),
        "\"127.0.0.1:5672\"",
        "must start with amqp://",
    );
}

#[test]
fn every_deserialize_error_of_a_table_is_reported_without_echoes() {
    let text = "[server]\nworkers = \"x\"\nfoo = 1\n[[routes]]\nname = 1\npath = 2\n[[routes]]\npath = \"/\"\n\
                [services.a]\ntimeout = \"1\"\n[auth.x]\ntype = \"jwtt\"\n[[routes]]\nname = \"m\"\n\
                mirror = { percent = 5 }\nsplit = [{ service = \"a\", weight = \"x\" }]\n";
    let got: Vec<String> = errors(text).iter().map(|e| format!("{}:{}: {}", e.line, e.col, e.message)).collect();
    let expected = [
        "2:11: invalid type: string \"x\", expected usize",
        "3:1: unknown field `foo`",
        "5:8: invalid type: integer `1`, expected a string",
        "6:8: invalid type: integer `2`, expected a string",
        // The second route really has no name; the first one's was removed to go on.
        "7:1: missing field `name`",
        "10:11: duration `1` needs a unit",
        "12:8: unknown variant `jwtt`, expected `jwt` or `api_key`",
        "15:10: missing field `service`",
        "16:36: invalid type: string \"x\", expected u32",
    ];
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (got, expected) in got.iter().zip(expected) {
        assert!(got.starts_with(expected), "{got} does not start with {expected}");
    }
}

#[test]
fn tls_is_one_certificate_or_a_list() {
    let config = ok(&with("[server]\ntls = { cert = \"c.pem\", key = \"k.pem\" }\n"));
    assert!(matches!(config.server.tls, Some(TlsSetting::One(_))));
    let config = ok(&with("[server]\ntls = [{ cert = \"c.pem\", key = \"k.pem\", hosts = [\"a.example\"] }]\n"));
    assert!(matches!(config.server.tls, Some(TlsSetting::Many(ref list)) if list[0].hosts == ["a.example"]));
    expect_only(
        &with("[server]\ntls = [{ cert = \"c\", key = \"k\", bogus = 1 }]\n"),
        "bogus",
        "unknown field `bogus`",
    );
    expect_only(&with("[server]\ntls = 5\n"), "5\n", "or a list of such tables");
    expect_only(&with("[server.tls]\ncert = \"\"\nkey = \"k\"\n"), "\"\"", "server.tls: `cert` must name a PEM file");
}

#[test]
fn audience_is_a_string_or_a_list() {
    let jwt = "type = \"jwt\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp/jwks\"";
    ok(&provider(&format!("{jwt}\naudience = \"api\"")));
    ok(&provider(&format!("{jwt}\naudience = [\"api\", \"web\"]")));
    expect_only(&provider(&format!("{jwt}\naudience = [\"api\", 5]")), "5]", "expected a string");
}

#[test]
fn connection_caps_default_and_parse() {
    let config = ok(BASE);
    assert_eq!((config.server.max_connections, config.server.max_connections_per_client), (10_000, 256));
    let config = ok(&with("[server]\nmax_connections = 0\nmax_connections_per_client = 4\n"));
    assert_eq!((config.server.max_connections, config.server.max_connections_per_client), (0, 4));
    expect_only(&with("[server]\nmax_connections = -1\n"), "-1", "invalid value");
}

#[test]
fn http2_limits_are_range_checked() {
    let config = ok(BASE);
    assert_eq!(config.server.http2.max_pending_accept_reset_streams, 50);
    assert_eq!(config.server.http2.max_frame_bytes, 16_384);
    expect_only(
        &with("[server.http2]\nmax_frame_bytes = 100\n"),
        "100",
        "server.http2.max_frame_bytes = 100 is out of range (16384 to 16777215)",
    );
    for (key, value) in [
        ("initial_stream_window_bytes", "2147483648"),
        ("max_local_error_reset_streams", "0"),
        ("max_concurrent_streams", "0"),
    ] {
        expect_only(&with(&format!("[server.http2]\n{key} = {value}\n")), &format!("{value}\n"), "out of range");
    }
    expect_only(&with("[server]\nidle_timeout = \"0s\"\n"), "\"0s\"", "server.idle_timeout must be greater than 0");
}
