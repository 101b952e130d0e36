//! Properties of what this crate reads from request headers (proptest, bounded; the
//! `headers` fuzz target in `fuzz/` checks the same on arbitrary bytes):
//!
//! - `grpc-timeout`: [`parse_timeout`] never panics; what [`encode_timeout`] writes
//!   parses back, to the deadline rounded down to what the encoding can carry;
//! - the client address: [`ClientAddr::resolve`] never panics on arbitrary
//!   `x-forwarded-for` lines; an untrusted peer is the client whatever it sends; behind
//!   trusted proxies, what the client wrote left of its own address (anything, in any
//!   bytes, on any number of lines) is never taken: the answer is the address the first
//!   trusted proxy appended.

use std::net::IpAddr;
use std::time::Duration;

use gateway_config::IpNet;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use crate::grpc::{encode_timeout, parse_timeout};
use crate::ClientAddr;

const TRUSTED: &[&str] = &["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"];

fn trusted() -> Vec<IpNet> {
    TRUSTED.iter().filter_map(|s| IpNet::parse(s).ok()).collect()
}

/// Addresses as proxies write them, in `trusted()`.
const TRUSTED_HOPS: &[&str] =
    &["10.1.2.3", "127.0.0.1", "10.0.0.9:443", "2001:db8::5", "[2001:db8::6]:80", "::ffff:10.9.9.9"];
/// Addresses as proxies write them, outside `trusted()`.
const CLIENTS: &[&str] =
    &["203.0.113.7", "198.51.100.1:1234", "2001:dead::1", "[2001:dead::2]:8080", "::ffff:192.0.2.1", "8.8.8.8"];
/// What a client may put in its own `x-forwarded-for`.
const SPOOFED: &[&str] = &[
    "1.1.1.1",
    "10.0.0.1",
    "127.0.0.1",
    "unknown",
    "",
    " ",
    ",",
    "[::1",
    "\u{e9}",
    "2001:db8::1",
    "2001:DB8:0::7",
    "10.0.0.9:443",
    "[2001:db8::6]:80",
    "::ffff:10.9.9.9",
    "[2001:dead::2]:8080",
];

fn value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap_or(HeaderValue::from_static("x"))
}

/// Bytes a header value can hold (no control characters but tab), any of them.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff], 0..24)
}

/// A line the client sent: pieces of addresses and arbitrary header bytes.
fn spoofed_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(SPOOFED), 0..4).prop_map(|parts| parts.join(", ").into_bytes()),
        header_bytes(),
    ]
}

/// The address in one entry as proxies write it (`1.2.3.4`, `[2001:db8::1]:80`, ...).
fn entry_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let bare = entry.strip_prefix('[').and_then(|e| e.split_once(']')).map(|(ip, _)| ip);
    let without_port = entry.rsplit_once(':').map(|(ip, _)| ip);
    [Some(entry), bare, without_port]
        .into_iter()
        .flatten()
        .find_map(|s| s.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

fn ip(s: &str) -> IpAddr {
    entry_ip(s).unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn grpc_timeouts_never_panic(bytes in header_bytes()) {
        let _ = parse_timeout(&value(&bytes));
    }

    #[test]
    fn grpc_timeouts_round_trip(digits in "[0-9]{1,9}", unit in prop::sample::select(&["H", "M", "S", "m", "u", "n", "s", ""][..])) {
        let text = format!("{digits}{unit}");
        let Some(deadline) = parse_timeout(&value(text.as_bytes())) else {
            prop_assert!(digits.len() > 8 || !"HMSmun".contains(unit) || unit.is_empty(), "{} refused", text);
            return Ok(());
        };
        let encoded = encode_timeout(deadline);
        let back = parse_timeout(&encoded);
        prop_assert!(back.is_some(), "{:?} for {} does not parse", encoded, text);
        let back = back.unwrap_or_default();
        // Milliseconds while they fit in 8 digits, whole seconds after (at most 8 digits).
        let grain = if deadline.as_millis() < 100_000_000 { Duration::from_millis(1) } else { Duration::from_secs(1) };
        prop_assert!(back <= deadline && (deadline - back < grain || back == Duration::from_secs(99_999_999)),
            "{} is {:?}, encoded {:?}, back {:?}", text, deadline, encoded, back);
        prop_assert_eq!(encode_timeout(back), encoded, "encoding is stable");
    }

    #[test]
    fn every_deadline_encodes(nanos in any::<u64>()) {
        let deadline = Duration::from_nanos(nanos);
        let back = parse_timeout(&encode_timeout(deadline));
        prop_assert!(back.is_some_and(|back| back <= deadline), "{:?} -> {:?}", deadline, back);
    }

    #[test]
    fn client_address_never_panics_and_comes_from_the_peer_or_the_header(
        peer in prop::sample::select(&["10.0.0.1", "203.0.113.9", "::ffff:127.0.0.1", "2001:db8::1"][..]),
        lines in prop::collection::vec(spoofed_line(), 0..4),
    ) {
        let peer: IpAddr = peer.parse().map_err(|_| TestCaseError::fail("peer"))?;
        let mut headers = HeaderMap::new();
        for line in &lines {
            headers.append("x-forwarded-for", value(line));
        }
        let client = ClientAddr::resolve(peer, &headers, &trusted());
        let written = lines.iter().flat_map(|l| String::from_utf8_lossy(l).split(',').filter_map(entry_ip).collect::<Vec<_>>());
        prop_assert!(client.ip == peer.to_canonical() || written.into_iter().any(|ip| ip == client.ip),
            "{} from peer {} and {:?}", client.ip, peer, lines);
    }

    /// The client sends lines of its own; each trusted proxy on the way appends the address
    /// it received from, to the last line or as a line of its own; the last proxy is the peer.
    #[test]
    fn behind_trusted_proxies_the_client_is_what_the_first_proxy_saw(
        spoofed in prop::collection::vec(spoofed_line(), 0..3),
        client in prop::sample::select(CLIENTS),
        hops in prop::collection::vec(prop::sample::select(TRUSTED_HOPS), 0..3),
        new_line in prop::collection::vec(any::<bool>(), 4),
        peer in prop::sample::select(&["10.0.0.1", "127.0.0.1", "2001:db8::1"][..]),
    ) {
        let mut lines = spoofed.clone();
        for (i, hop) in [client].iter().chain(&hops).enumerate() {
            match lines.last_mut() {
                Some(last) if !new_line[i] && !last.is_empty() => last.extend_from_slice(format!(", {hop}").as_bytes()),
                _ => lines.push(hop.as_bytes().to_vec()),
            }
        }
        let mut headers = HeaderMap::new();
        for line in &lines {
            headers.append("x-forwarded-for", value(line));
        }
        let peer: IpAddr = peer.parse().map_err(|_| TestCaseError::fail("peer"))?;
        let resolved = ClientAddr::resolve(peer, &headers, &trusted());
        prop_assert!(resolved.peer_trusted);
        prop_assert_eq!(resolved.ip, ip(client), "lines {:?}", lines.iter().map(|l| String::from_utf8_lossy(l)).collect::<Vec<_>>());

        // The same headers from an untrusted peer: the peer, whatever they say.
        let outsider: IpAddr = ip("203.0.113.9");
        prop_assert_eq!(ClientAddr::resolve(outsider, &headers, &trusted()).ip, outsider);
    }
}
