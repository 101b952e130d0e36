//! Which bucket a request draws from: the `key` of a `[rate_limits.NAME]`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use gateway_core::Principal;
use http::header::{HeaderMap, HeaderName};

/// The longest key text (header value, claim, consumer) that gets a bucket of its own, in
/// bytes. Longer values share [`LimitKey::Shared`], so a client cannot make the gateway hold
/// a 16 KiB header value per bucket.
pub const MAX_KEY_LEN: usize = 256;

/// Where a limit takes its key from, parsed from the `key` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `ip`: the client address (see SPEC "Client address"), IPv6 grouped by /64.
    Ip,
    /// `global`: one bucket for every request.
    Global,
    /// `consumer`: the principal's consumer (API keys).
    Consumer,
    /// `header:NAME`: the first value of a request header.
    Header(HeaderName),
    /// `claim:NAME`: a verified JWT claim.
    Claim(Box<str>),
}

/// A `key` setting that is not one of the forms above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate-limit key `{0}` must be \"ip\", \"global\", \"consumer\", \"header:NAME\" or \"claim:NAME\"")]
pub struct KeySourceError(pub String);

impl FromStr for KeySource {
    type Err = KeySourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || KeySourceError(s.to_owned());
        match s.split_once(':') {
            None => match s {
                "ip" => Ok(KeySource::Ip),
                "global" => Ok(KeySource::Global),
                "consumer" => Ok(KeySource::Consumer),
                _ => Err(bad()),
            },
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes()).map(KeySource::Header).map_err(|_| bad()),
            Some(("claim", name)) if !name.is_empty() && !name.contains(char::is_whitespace) => {
                Ok(KeySource::Claim(name.into()))
            }
            Some(_) => Err(bad()),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Ip => f.write_str("ip"),
            KeySource::Global => f.write_str("global"),
            KeySource::Consumer => f.write_str("consumer"),
            KeySource::Header(name) => write!(f, "header:{name}"),
            KeySource::Claim(name) => write!(f, "claim:{name}"),
        }
    }
}

impl KeySource {
    /// The bucket key of one request.
    ///
    /// `client_ip` is the client address as resolved through `trusted_proxies`. A request
    /// without the header, claim or consumer (or with an empty or over-long one) gets
    /// [`LimitKey::Shared`]: one bucket for all such requests of this limit, never a bypass.
    /// `ip` and `global` do not allocate.
    pub fn key(&self, client_ip: IpAddr, headers: &HeaderMap, principal: Option<&Principal>) -> LimitKey {
        match self {
            KeySource::Ip => LimitKey::Ip(ip_bucket(client_ip)),
            KeySource::Global => LimitKey::Shared,
            KeySource::Consumer => LimitKey::text(principal.and_then(|p| p.consumer.as_deref())),
            KeySource::Header(name) => {
                let value = headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()));
                LimitKey::text(value.as_deref())
            }
            KeySource::Claim(name) => {
                let value = principal.and_then(|p| p.claim_str(name));
                LimitKey::text(value.as_deref())
            }
        }
    }
}

/// The address one client is counted under: IPv4-mapped IPv6 addresses count as the IPv4
/// address; other IPv6 addresses are grouped by their /64 prefix, since one host usually
/// holds a whole /64 and could otherwise take a fresh bucket (or connection slot) each time.
pub fn ip_bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = v6.to_bits() & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from_bits(prefix))
        }
    }
}

/// The bucket one request draws from, within one limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// A client address (IPv6: the /64 network).
    Ip(IpAddr),
    /// A header value, claim or consumer.
    Text(Box<str>),
    /// The one bucket of `global` limits, and of requests that lack the key.
    Shared,
}

impl LimitKey {
    fn text(value: Option<&str>) -> LimitKey {
        match value {
            Some(v) if !v.is_empty() && v.len() <= MAX_KEY_LEN => LimitKey::Text(v.into()),
            _ => LimitKey::Shared,
        }
    }

    /// The key's part of a Redis key: `i:ADDR`, `v:TEXT` or `*` (prefixes keep the forms apart).
    pub(crate) fn redis_suffix(&self) -> String {
        match self {
            LimitKey::Ip(ip) => format!("i:{ip}"),
            LimitKey::Text(text) => format!("v:{text}"),
            LimitKey::Shared => "*".to_owned(),
        }
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitKey::Ip(ip) => write!(f, "{ip}"),
            LimitKey::Text(text) => f.write_str(text),
            LimitKey::Shared => f.write_str("(shared)"),
        }
    }
}

#[cfg(test)]
mod props {
    //! The `key` setting and the key of a request, on generated input: parsing never
    //! panics and what parses displays back to itself; a request's header, whatever its
    //! bytes, gives a bounded key or the shared bucket, never a panic.
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn key_settings_round_trip(text in "(ip|global|consumer|header|claim|x)?(:[ -~\\t\u{e9}]{0,8})?") {
            if let Ok(source) = text.parse::<KeySource>() {
                prop_assert_eq!(source.to_string().parse::<KeySource>(), Ok(source.clone()), "{} shown as {}", text, source);
            }
        }

        #[test]
        fn request_keys_are_bounded(value in prop::collection::vec(any::<u8>(), 0..300)) {
            let source = KeySource::Header(HeaderName::from_static("x-user"));
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert("x-user", value);
            }
            match source.key(IpAddr::from([192, 0, 2, 1]), &headers, None) {
                LimitKey::Text(text) => prop_assert!(!text.is_empty() && text.len() <= MAX_KEY_LEN),
                LimitKey::Shared => {}
                LimitKey::Ip(ip) => prop_assert!(false, "a header key gave an address {}", ip),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use http::HeaderValue;

    use super::*;

    fn principal(consumer: Option<&str>, claims: serde_json::Value) -> Principal {
        let serde_json::Value::Object(claims) = claims else { panic!("claims must be an object") };
        Principal { provider: Arc::from("main"), subject: None, consumer: consumer.map(str::to_owned), claims }
    }

    fn parse(s: &str) -> KeySource {
        s.parse().unwrap()
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn parses_every_form() {
        assert_eq!(parse("ip"), KeySource::Ip);
        assert_eq!(parse("global"), KeySource::Global);
        assert_eq!(parse("consumer"), KeySource::Consumer);
        assert_eq!(parse("header:X-User-Id"), KeySource::Header(HeaderName::from_static("x-user-id")));
        assert_eq!(parse("claim:sub"), KeySource::Claim("sub".into()));
        for bad in ["", "ips", "header:", "header:a b", "claim:", "claim:a b", "cookie:x"] {
            assert!(bad.parse::<KeySource>().is_err(), "{bad}");
        }
        assert_eq!(parse("header:X-User-Id").to_string(), "header:x-user-id");
    }

    #[test]
    fn ip_key() {
        let headers = HeaderMap::new();
        assert_eq!(parse("ip").key(IP, &headers, None), LimitKey::Ip(IP));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(parse("ip").key(mapped, &headers, None), LimitKey::Ip(IP), "v4-mapped is the v4 client");
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let ip = parse("ip");
        assert_eq!(ip.key(a, &headers, None), ip.key(b, &headers, None), "one /64, one bucket");
        assert_ne!(ip.key(a, &headers, None), ip.key(other, &headers, None));
        assert_eq!(ip.key(a, &headers, None), LimitKey::Ip("2001:db8:1:2::".parse().unwrap()));
    }

    #[test]
    fn global_is_one_key() {
        let g = parse("global");
        let p = principal(Some("acme"), serde_json::json!({}));
        assert_eq!(g.key(IP, &HeaderMap::new(), None), LimitKey::Shared);
        assert_eq!(g.key("10.0.0.1".parse().unwrap(), &HeaderMap::new(), Some(&p)), LimitKey::Shared);
    }

    #[test]
    fn header_key_present_and_missing() {
        let h = parse("header:x-api-user");
        let mut headers = HeaderMap::new();
        assert_eq!(h.key(IP, &headers, None), LimitKey::Shared, "missing: the shared bucket");
        headers.insert("x-api-user", HeaderValue::from_static(""));
        assert_eq!(h.key(IP, &headers, None), LimitKey::Shared, "empty counts as missing");
        headers.insert("x-api-user", HeaderValue::from_static("alice"));
        assert_eq!(h.key(IP, &headers, None), LimitKey::Text("alice".into()));
        headers.append("x-api-user", HeaderValue::from_static("bob"));
        assert_eq!(h.key(IP, &headers, None), LimitKey::Text("alice".into()), "the first value");
        let long = "x".repeat(MAX_KEY_LEN + 1);
        headers.insert("x-api-user", HeaderValue::from_str(&long).unwrap());
        assert_eq!(h.key(IP, &headers, None), LimitKey::Shared, "over-long: the shared bucket");
    }

    #[test]
    fn claim_key() {
        let c = parse("claim:tenant");
        let headers = HeaderMap::new();
        assert_eq!(c.key(IP, &headers, None), LimitKey::Shared, "anonymous");
        let p = principal(None, serde_json::json!({"tenant": "t1", "n": 42, "obj": {"a": 1}}));
        assert_eq!(c.key(IP, &headers, Some(&p)), LimitKey::Text("t1".into()));
        assert_eq!(parse("claim:n").key(IP, &headers, Some(&p)), LimitKey::Text("42".into()));
        assert_eq!(parse("claim:obj").key(IP, &headers, Some(&p)), LimitKey::Shared);
        assert_eq!(parse("claim:absent").key(IP, &headers, Some(&p)), LimitKey::Shared);
    }

    #[test]
    fn consumer_key() {
        let c = parse("consumer");
        let headers = HeaderMap::new();
        assert_eq!(
            c.key(IP, &headers, Some(&principal(Some("acme"), serde_json::json!({})))),
            LimitKey::Text("acme".into())
        );
        assert_eq!(c.key(IP, &headers, Some(&principal(None, serde_json::json!({})))), LimitKey::Shared);
        assert_eq!(c.key(IP, &headers, None), LimitKey::Shared);
    }

    #[test]
    fn redis_suffixes_keep_forms_apart() {
        assert_eq!(LimitKey::Ip(IP).redis_suffix(), "i:192.0.2.7");
        assert_eq!(LimitKey::Text("192.0.2.7".into()).redis_suffix(), "v:192.0.2.7");
        assert_eq!(LimitKey::Shared.redis_suffix(), "*");
    }
}
