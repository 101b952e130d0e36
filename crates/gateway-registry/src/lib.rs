//! `gateway-registry`: where a service's endpoints come from and which one a request goes to.
//!
//! A service's current endpoint set is an [`EndpointSet`] snapshot published through
//! [`Endpoints`] (an `ArcSwap`), so the proxy never waits on discovery: it loads the
//! snapshot and asks the load balancer for a pick. Sources (today: static lists) replace
//! the snapshot when they learn something new.
//!
//! ```
//! use gateway_registry::{Endpoint, Endpoints};
//! let eps = Endpoints::from_static(&["http://127.0.0.1:9001", "http://127.0.0.1:9002"]).unwrap();
//! let first = eps.pick().unwrap();
//! let second = eps.pick().unwrap();
//! assert_ne!(first.address(), second.address());
//! ```

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme as UriScheme};

/// How the gateway talks to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// HTTP/1.1 in clear (HTTP/2 is never assumed).
    Http,
    /// TLS, HTTP/2 when the upstream offers it by ALPN.
    Https,
    /// HTTP/2 with prior knowledge, in clear.
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

    /// The scheme written in the URI of the upstream request.
    pub fn uri_scheme(self) -> UriScheme {
        match self {
            Scheme::Https => UriScheme::HTTPS,
            Scheme::Http | Scheme::H2c => UriScheme::HTTP,
        }
    }
}

/// Why an endpoint string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("endpoint `{0}` must look like scheme://host:port with scheme http, https or h2c")]
    Malformed(String),
}

/// One upstream address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    scheme: Scheme,
    authority: Authority,
}

impl Endpoint {
    /// Parse `http://host:port`, `https://host[:port]` or `h2c://host:port`.
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        let bad = || EndpointError::Malformed(s.to_owned());
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "h2c" => Scheme::H2c,
            _ => return Err(bad()),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad());
        }
        let with_port = if has_port(rest) {
            rest.to_owned()
        } else {
            let port = if scheme == Scheme::Https { 443 } else { 80 };
            format!("{rest}:{port}")
        };
        let authority: Authority = with_port.parse().map_err(|_| bad())?;
        Ok(Endpoint { scheme, authority })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// `host:port`, as the admin API shows it.
    pub fn address(&self) -> &str {
        self.authority.as_str()
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

fn has_port(hostport: &str) -> bool {
    match hostport.rfind(':') {
        Some(i) => !hostport[i..].contains(']'),
        None => false,
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority)
    }
}

/// One immutable snapshot of a service's endpoints.
pub type EndpointSet = Arc<[Arc<Endpoint>]>;

/// The live endpoints of one service and its round-robin cursor.
pub struct Endpoints {
    current: ArcSwap<Vec<Arc<Endpoint>>>,
    next: AtomicUsize,
}

impl Endpoints {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Endpoints {
            current: ArcSwap::from_pointee(endpoints.into_iter().map(Arc::new).collect()),
            next: AtomicUsize::new(0),
        }
    }

    /// A static list, as `[services.NAME] endpoints = [...]` gives it.
    pub fn from_static<S: AsRef<str>>(list: &[S]) -> Result<Self, EndpointError> {
        let parsed = list.iter().map(|s| Endpoint::parse(s.as_ref())).collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(parsed))
    }

    /// Replace the whole set (a discovery source learned something).
    pub fn publish(&self, endpoints: Vec<Endpoint>) {
        self.current.store(Arc::new(endpoints.into_iter().map(Arc::new).collect()));
    }

    /// Every endpoint now known.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.current.load_full()
    }

    /// Round robin over the current set; `None` when the service has no endpoint.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let set = self.current.load();
        if set.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % set.len();
        Some(set[i].clone())
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
    fn round_robin_visits_every_endpoint_in_turn() {
        let eps = Endpoints::from_static(&["http://a:1", "http://b:1", "http://c:1"]).unwrap();
        let picks: Vec<String> = (0..6).map(|_| eps.pick().unwrap().address().to_owned()).collect();
        assert_eq!(picks, ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1"]);
        eps.publish(vec![]);
        assert!(eps.pick().is_none());
    }
}
