//! Header hygiene between client and upstream: hop-by-hop headers never cross, and the
//! `x-forwarded-*` family says who the client is.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

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
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let wants_trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")));
    if headers.contains_key(CONNECTION) {
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
    for name in
        [KEEP_ALIVE, PROXY_CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE]
    {
        headers.remove(name);
    }
    if wants_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Set `x-forwarded-for`, `-proto` and `-host` for the upstream. From a trusted peer the
/// chain is extended and its proto/host are kept; from anyone else all three are replaced.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientAddr, proto: &'static str) {
    let peer = HeaderValue::from_str(&client.peer.to_string()).expect("an IP address is a valid header value");
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
        h.insert(CONNECTION, "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn untrusted_peer_replaces_forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "1.2.3.4".parse().unwrap());
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        h.insert(HOST, "api.test".parse().unwrap());
        let c = ClientAddr { ip: "9.9.9.9".parse().unwrap(), peer: "9.9.9.9".parse().unwrap(), peer_trusted: false };
        set_forwarded(&mut h, &c, "http");
        assert_eq!(h[X_FORWARDED_FOR], "9.9.9.9");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "api.test");
    }

    #[test]
    fn trusted_peer_extends_the_chain() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "1.2.3.4".parse().unwrap());
        let c = ClientAddr { ip: "1.2.3.4".parse().unwrap(), peer: "127.0.0.1".parse().unwrap(), peer_trusted: true };
        set_forwarded(&mut h, &c, "http");
        assert_eq!(h[X_FORWARDED_FOR], "1.2.3.4, 127.0.0.1");
    }
}
