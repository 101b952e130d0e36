//! The HTTP caching rules the store follows (a subset of RFC 9111 fit for a gateway).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, AGE, CACHE_CONTROL, DATE, EXPIRES, PRAGMA, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};

/// What a request's `Cache-Control` (or `Pragma`) asks of the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    /// Neither look up nor store.
    pub no_store: bool,
    /// Do not answer from the store (`no-cache`, `max-age=0`); storing the new answer is fine.
    pub no_cache: bool,
}

pub(crate) fn request_directives(headers: &HeaderMap) -> RequestDirectives {
    let mut d = RequestDirectives::default();
    let mut any = false;
    for (name, value) in directives(headers) {
        any = true;
        match name.as_str() {
            "no-store" => d.no_store = true,
            "no-cache" => d.no_cache = true,
            "max-age" if value.is_some_and(|v| v.trim_matches('"') == "0") => d.no_cache = true,
            _ => {}
        }
    }
    if !any {
        let pragma = headers.get_all(PRAGMA).iter().filter_map(|v| v.to_str().ok());
        d.no_cache = pragma.flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case("no-cache"));
    }
    d
}

/// Why an answer may not be stored (for tests and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStorable {
    Status,
    SetCookie,
    VaryStar,
    NoStore,
    NoCache,
    Private,
    Expired,
}

/// A storable answer's freshness lifetime and `Vary` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Storable {
    pub lifetime: Duration,
    pub vary: Vec<HeaderName>,
}

/// Whether an answer may be stored, and for how long at most: `route_ttl`, shortened by
/// `s-maxage` (shared entries only), else `max-age`, else `Expires - Date`.
pub(crate) fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    private_entry: bool,
    route_ttl: Duration,
) -> Result<Storable, NotStorable> {
    if status != StatusCode::OK {
        return Err(NotStorable::Status);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    let mut vary = Vec::new();
    for token in headers.get_all(VARY).iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')) {
        let token = token.trim_ascii();
        if token.is_empty() {
            continue;
        }
        if token == b"*" {
            return Err(NotStorable::VaryStar);
        }
        match HeaderName::from_bytes(token) {
            Ok(name) if !vary.contains(&name) => vary.push(name),
            Ok(_) => {}
            // A `Vary` we cannot key on: safer not to store.
            Err(_) => return Err(NotStorable::VaryStar),
        }
    }
    let (mut max_age, mut s_maxage) = (None, None);
    for (name, value) in directives(headers) {
        match name.as_str() {
            "no-store" => return Err(NotStorable::NoStore),
            "no-cache" => return Err(NotStorable::NoCache),
            "private" if !private_entry => return Err(NotStorable::Private),
            "max-age" => max_age = Some(seconds(value)),
            "s-maxage" if !private_entry => s_maxage = Some(seconds(value)),
            _ => {}
        }
    }
    let explicit = match s_maxage.or(max_age) {
        Some(secs) => Some(Duration::from_secs(secs)),
        None => expires_lifetime(headers),
    };
    let lifetime = explicit.map_or(route_ttl, |e| e.min(route_ttl));
    if lifetime.is_zero() {
        return Err(NotStorable::Expired);
    }
    Ok(Storable { lifetime, vary })
}

/// The `Age` an answer arrives with.
pub(crate) fn age(headers: &HeaderMap) -> Duration {
    let secs = headers.get(AGE).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok()).unwrap_or(0);
    Duration::from_secs(secs)
}

/// `Expires - Date` (or now when `Date` is missing); zero for an invalid or past `Expires`,
/// which the RFC says to treat as already expired. `None` without `Expires`.
fn expires_lifetime(headers: &HeaderMap) -> Option<Duration> {
    let expires = headers.get(EXPIRES)?;
    let Some(expires) = expires.to_str().ok().and_then(parse_http_date) else {
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(DATE)
        .and_then(|v| parse_http_date(v.to_str().ok()?))
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    Some(Duration::from_secs(expires.saturating_sub(date)))
}

/// A delta-seconds directive value; a malformed one counts as 0 (not fresh).
fn seconds(value: Option<&str>) -> u64 {
    value.and_then(|v| v.trim_matches('"').parse::<u64>().ok()).unwrap_or(0)
}

/// The `Cache-Control` directives of every `cache-control` header: lower-cased names, raw values.
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<&str>)> {
    headers.get_all(CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).filter_map(
        |item| {
            let item = item.trim();
            if item.is_empty() {
                return None;
            }
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            Some((name.to_ascii_lowercase(), value))
        },
    )
}

/// Seconds since the epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only
/// form senders may generate; the obsolete forms are treated as invalid.
pub(crate) fn parse_http_date(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = &b[r];
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let day = num(5..7)?;
    const MONTHS: [&[u8]; 12] =
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    let month = MONTHS.iter().position(|m| *m == &b[8..11])? as u64 + 1;
    let year = num(12..16)?;
    let (hour, min, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if b[7] != b' ' || b[11] != b' ' || b[16] != b' ' || b[19] != b':' || b[22] != b':' {
        return None;
    }
    if !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 || year < 1970 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), years from March.
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + min * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn response_rules() {
        let ok = |pairs: &[(&'static str, &'static str)]| storable(StatusCode::OK, &headers(pairs), false, TTL);
        assert_eq!(ok(&[]).map(|s| s.lifetime), Ok(TTL));
        assert_eq!(storable(StatusCode::NOT_FOUND, &headers(&[]), false, TTL), Err(NotStorable::Status));
        assert_eq!(ok(&[("set-cookie", "a=b")]), Err(NotStorable::SetCookie));
        assert_eq!(ok(&[("vary", "accept, *")]), Err(NotStorable::VaryStar));
        assert_eq!(ok(&[("cache-control", "public, no-store")]), Err(NotStorable::NoStore));
        assert_eq!(ok(&[("cache-control", "No-Cache")]), Err(NotStorable::NoCache));
        assert_eq!(ok(&[("cache-control", "private")]), Err(NotStorable::Private));
        assert_eq!(ok(&[("cache-control", "max-age=0")]), Err(NotStorable::Expired));
        assert_eq!(ok(&[("cache-control", "max-age=abc")]), Err(NotStorable::Expired));
        assert_eq!(ok(&[("cache-control", "max-age=10")]).map(|s| s.lifetime), Ok(Duration::from_secs(10)));
        assert_eq!(ok(&[("cache-control", "max-age=3600")]).map(|s| s.lifetime), Ok(TTL), "capped by the route");
        assert_eq!(
            ok(&[("cache-control", "max-age=10"), ("cache-control", "s-maxage=5")]).map(|s| s.lifetime),
            Ok(Duration::from_secs(5))
        );
        let vary = ok(&[("vary", "Accept-Language, accept-encoding"), ("vary", "accept-language")]).expect("ok");
        assert_eq!(vary.vary, ["accept-language", "accept-encoding"]);
        // A principal-keyed entry may keep `private`, and ignores s-maxage.
        let private =
            storable(StatusCode::OK, &headers(&[("cache-control", "private, max-age=7, s-maxage=1")]), true, TTL);
        assert_eq!(private.map(|s| s.lifetime), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn expires() {
        let ok = |pairs: &[(&'static str, &'static str)]| storable(StatusCode::OK, &headers(pairs), false, TTL);
        let fresh =
            ok(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT"), ("expires", "Sun, 06 Nov 1994 08:49:47 GMT")]).expect("ok");
        assert_eq!(fresh.lifetime, Duration::from_secs(10));
        assert_eq!(ok(&[("expires", "0")]), Err(NotStorable::Expired));
        assert_eq!(ok(&[("expires", "Sun, 06 Nov 1994 08:49:37 GMT")]), Err(NotStorable::Expired));
        // max-age wins over Expires.
        assert_eq!(
            ok(&[("expires", "0"), ("cache-control", "max-age=9")]).map(|s| s.lifetime),
            Ok(Duration::from_secs(9))
        );
    }

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"), Some(951_825_600));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn request_rules() {
        assert_eq!(request_directives(&headers(&[])), RequestDirectives::default());
        assert!(request_directives(&headers(&[("cache-control", "no-store")])).no_store);
        assert!(request_directives(&headers(&[("cache-control", "no-cache")])).no_cache);
        assert!(request_directives(&headers(&[("cache-control", "max-age=0")])).no_cache);
        assert!(!request_directives(&headers(&[("cache-control", "max-age=60")])).no_cache);
        assert!(request_directives(&headers(&[("pragma", "no-cache")])).no_cache);
        assert!(!request_directives(&headers(&[("pragma", "no-cache"), ("cache-control", "max-age=5")])).no_cache);
    }

    #[test]
    fn ages() {
        assert_eq!(age(&headers(&[("age", "12")])), Duration::from_secs(12));
        assert_eq!(age(&headers(&[("age", "x")])), Duration::ZERO);
    }
}
