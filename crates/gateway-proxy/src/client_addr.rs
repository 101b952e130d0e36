use std::net::IpAddr;

use gateway_config::IpNet;
use http::HeaderMap;

/// The one notion of the client address, per SPEC.md "Client address".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// Who the gateway believes the client is.
    pub ip: IpAddr,
    /// The TCP peer.
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy (its `x-forwarded-*` headers are kept).
    pub peer_trusted: bool,
}

impl ClientAddr {
    /// The peer itself, unless it is a trusted proxy: then the rightmost address of
    /// `x-forwarded-for` that is not itself trusted. `x-real-ip` and `forwarded` are never read.
    pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Self {
        let peer = canonical(peer);
        let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
        if !is_trusted(peer) {
            return ClientAddr { ip: peer, peer, peer_trusted: false };
        }
        let mut client = peer;
        // Walk the chain right to left across every x-forwarded-for line. A line is read
        // as bytes: one that is not text still holds the addresses trusted proxies
        // appended to it, right of whatever the client wrote there.
        let lines: Vec<&[u8]> = headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()).collect();
        'outer: for line in lines.iter().rev() {
            for entry in line.rsplit(|&b| b == b',') {
                let entry = std::str::from_utf8(entry.trim_ascii()).ok();
                match entry.and_then(parse_forwarded_ip) {
                    Some(ip) if is_trusted(ip) => client = ip,
                    Some(ip) => {
                        client = ip;
                        break 'outer;
                    }
                    // Garbage from beyond the trusted hops: stop at the last trusted one.
                    None => break 'outer,
                }
            }
        }
        ClientAddr { ip: client, peer, peer_trusted: true }
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they carry.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok()).map(canonical);
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()).map(canonical)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| IpNet::parse(s).unwrap()).collect()
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let c = ClientAddr::resolve("203.0.113.9".parse().unwrap(), &xff("1.1.1.1"), &nets(&["127.0.0.1/32"]));
        assert_eq!(c.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert!(!c.peer_trusted);
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_entry() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let c = ClientAddr::resolve("127.0.0.1".parse().unwrap(), &xff("6.6.6.6, 198.51.100.7, 10.1.2.3"), &trusted);
        assert_eq!(c.ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        let none = ClientAddr::resolve("127.0.0.1".parse().unwrap(), &HeaderMap::new(), &trusted);
        assert_eq!(none.ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        let garbage = ClientAddr::resolve("127.0.0.1".parse().unwrap(), &xff("nonsense"), &trusted);
        assert_eq!(garbage.ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    /// A line that is not text (a byte above 0x7f from the client) was skipped whole, so an
    /// address the client wrote on an earlier line was taken instead of the one the trusted
    /// proxy appended to the last line (found by the property in `props.rs`).
    #[test]
    fn a_line_that_is_not_text_still_holds_the_appended_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\x80, 203.0.113.7, 10.0.0.2").unwrap());
        let c = ClientAddr::resolve("10.0.0.1".parse().unwrap(), &h, &trusted);
        assert_eq!(c.ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        // Garbage right of the trusted hops ends the walk at the last trusted one.
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        let c = ClientAddr::resolve("10.0.0.1".parse().unwrap(), &h, &trusted);
        assert_eq!(c.ip, "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
