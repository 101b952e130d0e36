//! One upstream address: `scheme://host:port`.

use std::fmt;
use std::net::SocketAddr;

use http::uri::{Authority, Scheme as UriScheme};

pub use gateway_config::Scheme;

/// Why an endpoint string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct EndpointError(pub(crate) String);

/// One upstream address. Two endpoints are the same when scheme and `host:port` are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    scheme: Scheme,
    authority: Authority,
}

impl Endpoint {
    /// Parse `http://host:port`, `https://host[:port]` or `h2c://host:port` (the
    /// config crate's grammar, so what `gateway check` accepts is what runs).
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        let parsed = gateway_config::Endpoint::parse(s).map_err(EndpointError)?;
        let authority: Authority = parsed.authority().parse().map_err(|e| EndpointError(format!("{s}: {e}")))?;
        Ok(Endpoint { scheme: parsed.scheme, authority })
    }

    /// `host:port` (an IP address, `[v6]`, or a DNS name; the port is required and
    /// 1-65535) with the given scheme, as a registration gives it.
    pub fn from_address(scheme: Scheme, address: &str) -> Result<Self, EndpointError> {
        let url = format!("{}://{address}", scheme.as_str());
        let parsed = gateway_config::Endpoint::parse(&url)
            .map_err(|e| EndpointError(e.replace(&format!("endpoint `{url}`"), &format!("address `{address}`"))))?;
        if parsed.authority() != address {
            return Err(EndpointError(format!("address `{address}` must be host:port, such as 127.0.0.1:9001")));
        }
        Self::parse(&url)
    }

    /// A resolved socket address (DNS discovery). An IPv6 zone id is dropped.
    pub fn from_socket_addr(scheme: Scheme, addr: SocketAddr) -> Result<Self, EndpointError> {
        let plain = SocketAddr::new(addr.ip(), addr.port());
        let authority: Authority = plain.to_string().parse().map_err(|e| EndpointError(format!("{plain}: {e}")))?;
        Ok(Endpoint { scheme, authority })
    }

    /// The scheme of the URI sent upstream (`h2c` is `http` on the wire).
    pub fn uri_scheme(&self) -> UriScheme {
        match self.scheme {
            Scheme::Https => UriScheme::HTTPS,
            Scheme::Http | Scheme::H2c => UriScheme::HTTP,
        }
    }

    /// How the gateway talks to this endpoint: `http`, `https` or `h2c`.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// `host:port`, as the admin API shows it.
    pub fn address(&self) -> &str {
        self.authority.as_str()
    }

    /// `host:port` as an [`Authority`] for the upstream URI.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_schemes_and_default_ports() {
        let e = Endpoint::parse("https://api.example.com").unwrap();
        assert_eq!(e.scheme(), Scheme::Https);
        assert_eq!(e.address(), "api.example.com:443");
        assert_eq!(Endpoint::parse("h2c://10.0.0.1:50051/").unwrap().address(), "10.0.0.1:50051");
        assert_eq!(Endpoint::parse("http://[::1]:8080").unwrap().address(), "[::1]:8080");
        assert_eq!(Endpoint::parse("http://[::1]").unwrap().address(), "[::1]:80");
        assert!(Endpoint::parse("ftp://x:1").is_err());
        assert!(Endpoint::parse("http://x:1/path").is_err());
        assert!(Endpoint::parse("127.0.0.1:80").is_err());
        assert!(Endpoint::parse("http://user@x:1").is_err());
    }

    #[test]
    fn addresses_need_host_and_port() {
        let e = Endpoint::from_address(Scheme::H2c, "127.0.0.1:9001").unwrap();
        assert_eq!((e.scheme(), e.address()), (Scheme::H2c, "127.0.0.1:9001"));
        assert_eq!(Endpoint::from_address(Scheme::Http, "[::1]:80").unwrap().address(), "[::1]:80");
        assert_eq!(
            Endpoint::from_address(Scheme::Http, "users-1.internal:65535").unwrap().address(),
            "users-1.internal:65535"
        );
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "host:port",
            "::1:80",
            "http://x:1",
            "x:1/",
            "x:1/path",
            "bad host:1",
            "a@b:1",
            "",
            ":80",
            "x:+80",
        ] {
            assert!(Endpoint::from_address(Scheme::Http, bad).is_err(), "{bad}");
        }
        let msg = Endpoint::from_address(Scheme::Http, "x:0").unwrap_err().to_string();
        assert!(msg.contains("address `x:0`"), "{msg}");
    }

    #[test]
    fn socket_addrs_become_endpoints() {
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(Endpoint::from_socket_addr(Scheme::Http, v6).unwrap().to_string(), "http://[::1]:8080");
        let v4: SocketAddr = "10.0.0.7:80".parse().unwrap();
        assert_eq!(Endpoint::from_socket_addr(Scheme::Https, v4).unwrap().address(), "10.0.0.7:80");
    }
}
