//! `gateway-registry`: where a service's endpoints come from and which one a request goes to.
//!
//! A service's current endpoint set is a snapshot published through
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

pub use gateway_config::Scheme;

/// The scheme written in the URI of the upstream request.
fn uri_scheme(scheme: Scheme) -> UriScheme {
    match scheme {
        Scheme::Https => UriScheme::HTTPS,
        Scheme::Http | Scheme::H2c => UriScheme::HTTP,
    }
}

/// Why an endpoint string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct EndpointError(String);

/// One upstream address.
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

    /// The scheme of the URI sent upstream (`h2c` is `http` on the wire).
    pub fn uri_scheme(&self) -> UriScheme {
        uri_scheme(self.scheme)
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

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority)
    }
}

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
