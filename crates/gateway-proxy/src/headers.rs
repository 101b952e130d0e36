//! Header hygiene between client and upstream: hop-by-hop headers never cross, and the
//! `x-forwarded-*` family says who the client is.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

use std::io::Write as _;
use std::net::IpAddr;

use crate::client_addr::canonical;
use crate::ClientAddr;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
const PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Remove the hop-by-hop headers of RFC 9110 §7.6.1 and every header `Connection` names.
/// `te: trailers` survives when the client sent it: gRPC servers require it, and it is
/// the one TE value HTTP/2 allows.
///
/// Costs one pass over the names when there is nothing to remove (most requests), and one
/// lookup per header actually removed otherwise.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let wants_trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")));
    let mut connection = headers.get_all(CONNECTION).iter();
    match (connection.next(), connection.next()) {
        (None, _) => {}
        // One `Connection` field (`keep-alive`, `close`...): its names need no copy.
        (Some(_), None) => {
            if let Some(value) = headers.remove(CONNECTION) {
                for name in value.to_str().unwrap_or_default().split(',') {
                    // A name that is not a valid header name matches nothing.
                    headers.remove(name.trim());
                }
            }
        }
        (Some(_), Some(_)) => {
            let named: Vec<HeaderName> = headers
                .get_all(CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
                .collect();
            for name in named {
                headers.remove(name);
            }
            headers.remove(CONNECTION);
        }
    }
    if headers.keys().any(is_hop_by_hop) {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
    }
    if wants_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// The hop-by-hop headers removed whether or not `Connection` names them.
const HOP_BY_HOP: [HeaderName; 8] =
    [KEEP_ALIVE, PROXY_CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    // By text: a match on the length first, where comparing names would compare bytes.
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The `x-forwarded-for` entry for a TCP peer. Render it once per client connection: every
/// request on the connection sends the same one, and cloning it is a reference count.
pub fn forwarded_for(peer: IpAddr) -> HeaderValue {
    let mut text = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    // 64 bytes hold any IPv6 address; the fallback is unreachable.
    let _ = write!(cursor, "{}", canonical(peer));
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Set `x-forwarded-for`, `-proto` and `-host` for the upstream. From a trusted peer the
/// chain is extended and its proto/host are kept; from anyone else all three are replaced.
/// `peer` is [`forwarded_for`] of `client.peer`.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientAddr, peer: &HeaderValue, proto: &'static str) {
    let peer = peer.clone();
    debug_assert_eq!(peer, forwarded_for(client.peer));
    if client.peer_trusted {
        let chain: Vec<&[u8]> = headers.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes).collect();
        if chain.is_empty() {
            headers.insert(X_FORWARDED_FOR, peer);
        } else {
            let mut joined = chain.join(&b", "[..]);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer.as_bytes());
            let value = HeaderValue::from_bytes(&joined).unwrap_or(peer);
            headers.insert(X_FORWARDED_FOR, value);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(host) = headers.get(HOST).cloned() {
                headers.insert(X_FORWARDED_HOST, host);
            }
        }
    } else {
        // Client-made claims about the client never travel on: upstreams that read them
        // would believe what the gateway itself refused to believe.
        headers.remove(X_REAL_IP);
        headers.remove(FORWARDED);
        headers.insert(X_FORWARDED_FOR, peer);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        match headers.get(HOST).cloned() {
            Some(host) => headers.insert(X_FORWARDED_HOST, host),
            None => headers.remove(X_FORWARDED_HOST),
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "Close, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn strips_connection_lists_and_keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert("x-kept", "1".parse().unwrap());
        h.append(CONNECTION, "x-a".parse().unwrap());
        h.append(CONNECTION, "x-b, te".parse().unwrap());
        h.insert("x-a", "1".parse().unwrap());
        h.insert("x-b", "1".parse().unwrap());
        h.insert(TE, "trailers, gzip".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[TE], "trailers");
        let untouched = h.clone();
        h.remove(TE);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(untouched.len(), 2);
    }

    #[test]
    fn forwarded_for_renders_canonical_addresses() {
        assert_eq!(forwarded_for("127.0.0.1".parse().unwrap()), "127.0.0.1");
        assert_eq!(forwarded_for("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
        assert_eq!(forwarded_for("2001:db8::1".parse().unwrap()), "2001:db8::1");
    }

    #[test]
    fn untrusted_peer_replaces_forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "1.2.3.4".parse().unwrap());
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        h.insert(HOST, "api.test".parse().unwrap());
        let c = ClientAddr { ip: "9.9.9.9".parse().unwrap(), peer: "9.9.9.9".parse().unwrap(), peer_trusted: false };
        set_forwarded(&mut h, &c, &forwarded_for(c.peer), "http");
        assert_eq!(h[X_FORWARDED_FOR], "9.9.9.9");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "api.test");
    }

    #[test]
    fn trusted_peer_extends_the_chain() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "1.2.3.4".parse().unwrap());
        let c = ClientAddr { ip: "1.2.3.4".parse().unwrap(), peer: "127.0.0.1".parse().unwrap(), peer_trusted: true };
        set_forwarded(&mut h, &c, &forwarded_for(c.peer), "http");
        assert_eq!(h[X_FORWARDED_FOR], "1.2.3.4, 127.0.0.1");
    }
}
