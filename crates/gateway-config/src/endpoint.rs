//! Upstream endpoint addresses: `scheme://host:port`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// How the gateway talks to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// HTTP/1.1 in clear.
    Http,
    /// TLS; HTTP/2 or HTTP/1.1 by ALPN.
    Https,
    /// HTTP/2 in clear (prior knowledge), as gRPC services usually want.
    H2c,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::H2c => "h2c",
        }
    }

    /// 443 for `https`, else 80.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http | Scheme::H2c => 80,
        }
    }
}

/// A parsed `services.*.endpoints` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// A host name or an IP address, without brackets.
    pub host: String,
    /// Given, or the scheme's default.
    pub port: u16,
}

impl Endpoint {
    /// Parses `scheme://host[:port][/]` with scheme `http`, `https` or `h2c`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("endpoint `{s}` must be scheme://host:port, such as http://127.0.0.1:9001"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "h2c" => Scheme::H2c,
            other => return Err(format!("endpoint `{s}`: unknown scheme `{other}` (use http, https or h2c)")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(format!("endpoint `{s}` must not have a path, query or fragment; use the route's `rewrite`"));
        }
        if authority.contains('@') {
            return Err(format!("endpoint `{s}` must not contain credentials"));
        }
        let (host, port) =
            parse_host_port(authority, Some(scheme.default_port())).map_err(|e| format!("endpoint `{s}`: {e}"))?;
        Ok(Endpoint { scheme, host, port })
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6). Without `default_port` the port is required.
pub(crate) fn parse_host_port(s: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed `[` around an IPv6 address")?;
        host.parse::<Ipv6Addr>().map_err(|_| format!("`{host}` is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected `:port` after `]`")?),
        };
        (host, port)
    } else {
        match s.split_once(':') {
            Some((_, p)) if p.contains(':') => return Err("an IPv6 address needs brackets: [::1]:8080".into()),
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if !host.contains(':') && !valid_host(host) {
        return Err(format!("`{host}` is not a valid host name or IP address"));
    }
    let port = match (port, default_port) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("`{p}` is not a port number (1-65535)")),
        },
        (None, Some(d)) => d,
        (None, None) => return Err("a port is required (host:port)".into()),
    };
    Ok((host.to_owned(), port))
}

/// A DNS name (letters, digits, `-`, `_`, dots) or an IPv4 address.
pub(crate) fn valid_host(host: &str) -> bool {
    if host.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:9001").unwrap();
        assert_eq!((e.scheme, e.host.as_str(), e.port), (Scheme::Http, "127.0.0.1", 9001));
        assert_eq!(Endpoint::parse("https://api.internal").unwrap().port, 443);
        assert_eq!(Endpoint::parse("h2c://grpc.internal/").unwrap().port, 80);
        let v6 = Endpoint::parse("http://[::1]:8080").unwrap();
        assert_eq!((v6.host.as_str(), v6.authority()), ("::1", "[::1]:8080".to_owned()));
        assert_eq!(v6.to_string(), "http://[::1]:8080");
    }

    #[test]
    fn refuses_bad_endpoints() {
        for bad in [
            "127.0.0.1:9001",
            "ftp://host:21",
            "http://host:0",
            "http://host:99999",
            "http://host:port",
            "http://host:80/api",
            "http://user:pw@host:80",
            "http://::1:80",
            "http://[::1",
            "http://",
            "http://bad host:80",
            "http://host:80?x=1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_port_needs_a_port_without_default() {
        assert_eq!(parse_host_port("users.internal:8080", None).unwrap(), ("users.internal".to_owned(), 8080));
        assert!(parse_host_port("users.internal", None).is_err());
    }
}
