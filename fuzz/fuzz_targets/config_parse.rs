//! `cargo +nightly fuzz run config_parse`: the configuration file's text, and the
//! durations, sizes, endpoints and networks written in it, on arbitrary strings. Parsing
//! never panics; every error points at a line and column inside the text; what a value
//! displays parses back to the same value.
#![no_main]

use gateway_config::{ByteSize, Duration, Endpoint, IpNet};
use libfuzzer_sys::fuzz_target;

fn env(name: &str) -> Option<String> {
    match name {
        "SET" => Some("users".into()),
        "EMPTY" => Some(String::new()),
        "NASTY" => Some("a\"b'c\\d\ne\u{0}]]\n[server]".into()),
        _ => None,
    }
}

fuzz_target!(|text: &str| {
    if let Err(errors) = gateway_config::parse("gw.toml", text, &env) {
        assert!(!errors.is_empty());
        for e in &errors {
            let line = text.split('\n').nth(e.line.wrapping_sub(1));
            assert!(line.is_some_and(|l| e.col >= 1 && e.col <= l.chars().count() + 1), "{e} outside the text");
        }
    }
    if let Ok(d) = text.parse::<Duration>() {
        assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
    }
    let _ = text.parse::<ByteSize>();
    if let Ok(endpoint) = Endpoint::parse(text) {
        assert_eq!(Endpoint::parse(&endpoint.to_string()), Ok(endpoint));
    }
    if let Ok(net) = IpNet::parse(text) {
        assert_eq!(IpNet::parse(&net.to_string()), Ok(net));
    }
});
