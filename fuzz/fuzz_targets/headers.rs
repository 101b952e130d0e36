//! `cargo +nightly fuzz run headers`: request headers the proxy reads, on arbitrary
//! bytes. `grpc-timeout` never panics and what it encodes parses back (rounded down).
//! The client address: the input is what a client sent as `x-forwarded-for` (one line per
//! `\n`); a trusted proxy appends the client's address (to the last line or as a line of
//! its own, by the first byte) and another trusted hop follows. Whatever the client
//! wrote, the client address is the one the proxy appended; from an untrusted peer, it
//! is the peer.
#![no_main]

use std::net::IpAddr;

use gateway_config::IpNet;
use gateway_proxy::grpc::{encode_timeout, parse_timeout};
use gateway_proxy::ClientAddr;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        if let Some(deadline) = parse_timeout(&value) {
            let back = parse_timeout(&encode_timeout(deadline)).expect("what is encoded parses");
            assert!(back <= deadline);
        }
    }

    let Some((&how, sent)) = data.split_first() else { return };
    let mut lines: Vec<Vec<u8>> = sent.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    for (i, hop) in ["203.0.113.7", "10.1.2.3"].iter().enumerate() {
        match lines.last_mut() {
            Some(last) if how & (1 << i) == 0 && !last.is_empty() => {
                last.extend_from_slice(format!(", {hop}").as_bytes())
            }
            _ => lines.push(hop.as_bytes().to_vec()),
        }
    }
    let mut headers = HeaderMap::new();
    for line in &lines {
        let Ok(value) = HeaderValue::from_bytes(line) else { return };
        headers.append("x-forwarded-for", value);
    }
    let trusted: Vec<IpNet> = ["10.0.0.0/8", "2001:db8::/32"].iter().filter_map(|n| IpNet::parse(n).ok()).collect();
    let resolved = ClientAddr::resolve(IpAddr::from([10, 0, 0, 1]), &headers, &trusted);
    assert_eq!(resolved.ip, IpAddr::from([203, 0, 113, 7]), "{lines:?}");
    let outsider = IpAddr::from([198, 51, 100, 9]);
    assert_eq!(ClientAddr::resolve(outsider, &headers, &trusted).ip, outsider);
});
