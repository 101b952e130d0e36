//! Host matching: exact names and `*.suffix` wildcards, compared without allocating.

/// A route's `host`, lower-cased at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// No `host` (or `host = "*"`): any host, and requests without one.
    Any,
    /// `api.example.com`.
    Exact(Box<str>),
    /// `*.example.com`, stored as `.example.com`: one or more labels before it.
    Suffix(Box<str>),
}

impl HostMatch {
    pub(crate) fn parse(raw: &str) -> Result<HostMatch, String> {
        if raw == "*" {
            return Ok(HostMatch::Any);
        }
        let lower = raw.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let (name, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower, false),
        };
        validate_name(name).map_err(|why| format!("host \"{raw}\": {why}"))?;
        Ok(if wildcard { HostMatch::Suffix(format!(".{name}").into()) } else { HostMatch::Exact(name.into()) })
    }

    /// `host` is already stripped of its port (see [`request_host`]).
    #[inline]
    pub(crate) fn matches(&self, host: Option<&str>) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(want) => host.is_some_and(|h| h.eq_ignore_ascii_case(want)),
            HostMatch::Suffix(suffix) => host.is_some_and(|h| {
                let (h, s) = (h.as_bytes(), suffix.as_bytes());
                h.len() > s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
            }),
        }
    }

    /// Higher is more specific: exact, then wildcards (longer suffix first), then any.
    pub(crate) fn rank(&self) -> (u8, usize) {
        match self {
            HostMatch::Any => (0, 0),
            HostMatch::Suffix(s) => (1, s.len()),
            HostMatch::Exact(_) => (2, 0),
        }
    }
}

fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if let Some(inner) = name.strip_prefix('[') {
        // An IPv6 literal.
        let inner = inner.strip_suffix(']').ok_or("unterminated '['")?;
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return Err("invalid IPv6 literal");
        }
        return Ok(());
    }
    if name.contains(':') {
        return Err("must not include a port (the request's port is ignored)");
    }
    if name.contains('*') {
        return Err("a wildcard is only allowed as a leading \"*.\"");
    }
    if name.starts_with('.') || name.contains("..") {
        return Err("empty label");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        return Err("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// The host of a `Host` header or URI authority without its port and trailing dot.
pub(crate) fn request_host(raw: &str) -> &str {
    let host = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard() {
        let exact = HostMatch::parse("API.example.com").unwrap();
        assert!(exact.matches(Some("api.example.com")));
        assert!(exact.matches(Some("Api.Example.COM")));
        assert!(!exact.matches(Some("x.api.example.com")));
        assert!(!exact.matches(None));

        let wild = HostMatch::parse("*.example.com").unwrap();
        assert!(wild.matches(Some("a.example.com")));
        assert!(wild.matches(Some("a.b.EXAMPLE.com")));
        assert!(!wild.matches(Some("example.com")));
        assert!(!wild.matches(Some(".example.com")));
        assert!(!wild.matches(Some("badexample.com")));
        assert!(!wild.matches(Some("\u{e9}.example.org")));

        assert_eq!(HostMatch::parse("*").unwrap(), HostMatch::Any);
        assert!(HostMatch::Any.matches(None));
    }

    #[test]
    fn request_host_strips_port() {
        assert_eq!(request_host("api.example.com:8080"), "api.example.com");
        assert_eq!(request_host("api.example.com."), "api.example.com");
        assert_eq!(request_host("api.example.com.:80"), "api.example.com");
        assert_eq!(request_host("[::1]:8080"), "[::1]");
        assert_eq!(request_host("[::1]"), "[::1]");
        assert_eq!(request_host("127.0.0.1:1"), "127.0.0.1");
    }

    #[test]
    fn invalid_hosts() {
        for bad in ["", "api.example.com:8080", "a.*.com", "**.a", "*.", "a b", "a/b", ".a", "a..b", "[::1"] {
            assert!(HostMatch::parse(bad).is_err(), "{bad:?}");
        }
        assert!(HostMatch::parse("[::1]").is_ok());
        assert!(HostMatch::parse("example.com.").is_ok());
    }
}
