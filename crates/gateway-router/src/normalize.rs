//! Request path normalisation: the one canonical form that is both matched and forwarded.

use std::borrow::Cow;

/// Why a request path was refused. The caller answers any of them with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/` (empty, `*`, or a relative reference).
    #[error("path must start with '/'")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding in path")]
    InvalidEscape,
    /// `%2F`: an encoded `/` would let a client hide a segment boundary from the router.
    #[error("encoded '/' in path")]
    EncodedSlash,
    /// A literal `\` or `%5C`: some upstreams treat it as `/`.
    #[error("backslash in path")]
    Backslash,
    /// A literal NUL or `%00`.
    #[error("NUL in path")]
    Nul,
    /// A space, control character, non-ASCII byte, `#` or `?` (the caller splits the
    /// query off before normalising).
    #[error("character not allowed in path")]
    InvalidByte,
    /// A segment such as `..;x` or `.;x`: never stripped here, but upstreams that strip
    /// `;` parameters (Tomcat, Spring) would see a dot segment the router did not.
    #[error("dot segment with parameters in path")]
    DotSegmentParameter,
}

/// Normalises the path of a request target (without its query).
///
/// - it must start with `/`;
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other
///   escapes are kept with their hex digits in upper case;
/// - then dot segments are removed as RFC 3986 §5.2.4 does (`..` above the root stays
///   at the root), so `%2e%2e` is a dot segment too;
/// - `%2F`, `%5C`, `\`, `%00`, invalid escapes and bytes outside visible ASCII are errors;
/// - `;` parameters stay part of their segment and repeated `/` are kept (`//a` stays
///   `//a`), except that a segment which is a dot segment before its first `;` is an
///   error ([`PathError::DotSegmentParameter`]).
///
/// Returns [`Cow::Borrowed`] when the path is already normal, which is the common case.
///
/// # Errors
/// A [`PathError`] for a path that must be refused (the caller answers 400).
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut rewrite_escapes = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(PathError::InvalidEscape);
                };
                let value = hex_pair(hi, lo).ok_or(PathError::InvalidEscape)?;
                match value {
                    0 => return Err(PathError::Nul),
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    _ => {}
                }
                if is_unreserved(value) || hi.is_ascii_lowercase() || lo.is_ascii_lowercase() {
                    rewrite_escapes = true;
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b'#' | b'?' => return Err(PathError::InvalidByte),
            0x21..=0x7e => i += 1,
            _ => return Err(PathError::InvalidByte),
        }
    }

    let decoded: Cow<'_, str> = if rewrite_escapes { Cow::Owned(decode_unreserved(raw)) } else { Cow::Borrowed(raw) };
    if has_dot_segments(&decoded)? {
        Ok(Cow::Owned(remove_dot_segments(&decoded)))
    } else {
        Ok(decoded)
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters and upper-cases the others. `raw` has been
/// validated: every `%` starts a valid escape and every byte is visible ASCII.
fn decode_unreserved(raw: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let value = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(&hi), Some(&lo)) => hex_pair(hi, lo),
                _ => None,
            };
            match value {
                Some(v) if is_unreserved(v) => out.push(char::from(v)),
                Some(v) => {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(v >> 4)]));
                    out.push(char::from(HEX[usize::from(v & 0x0f)]));
                }
                // Unreachable after validation; keep the byte rather than panic.
                None => {
                    out.push('%');
                    i += 1;
                    continue;
                }
            }
            i += 3;
        } else {
            out.push(char::from(b));
            i += 1;
        }
    }
    out
}

fn is_dot(segment: &str) -> bool {
    segment == "." || segment == ".."
}

/// Whether any segment is `.` or `..`; an error for `..;x`-like segments.
fn has_dot_segments(path: &str) -> Result<bool, PathError> {
    let mut found = false;
    for segment in path.split('/') {
        if is_dot(segment) {
            found = true;
            continue;
        }
        let head_end = match (segment.find(';'), segment.find("%3B")) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => continue,
        };
        if is_dot(&segment[..head_end]) {
            return Err(PathError::DotSegmentParameter);
        }
    }
    Ok(found)
}

/// RFC 3986 §5.2.4 for an absolute path, segment by segment. Empty segments are kept.
fn remove_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut segments = path.get(1..).unwrap_or("").split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                if let Some(pos) = out.rfind('/') {
                    out.truncate(pos);
                }
            }
            _ => {
                out.push('/');
                out.push_str(segment);
                continue;
            }
        }
        // A dot segment at the end leaves the path ending in `/` (`/a/b/..` is `/a/`).
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod props {
    //! The guarantees the router relies on, on generated paths made of the pieces that
    //! matter (the same checks as the `normalize_path` fuzz target in `fuzz/`).
    use proptest::prelude::*;

    use super::normalize_path;

    const PIECES: &[&str] = &[
        "/", "a", "B", ".", "..", "%2e", "%2E%2e", "%252e", "%2F", "%5c", "\\", "%00", ";", ";x", "%41", "%7e", "~",
        "%", "%g1", "#", "?", " ", "é", "//", "-_",
    ];

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..12).prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn normal_paths_are_normal(raw in path()) {
            let Ok(normal) = normalize_path(&raw) else { return Ok(()) };
            let again = normalize_path(&normal);
            prop_assert_eq!(again.as_deref(), Ok(&*normal), "idempotent");
            for segment in normal.split('/') {
                let segment = segment.split(';').next().unwrap_or_default();
                prop_assert!(segment != "." && segment != "..", "dot segment left in {:?} from {:?}", normal, raw);
            }
            let upper = normal.to_ascii_uppercase();
            for encoded in ["%2F", "%5C", "%00", "%2E"] {
                prop_assert!(!upper.contains(encoded), "{} left in {:?} from {:?}", encoded, normal, raw);
            }
            prop_assert!(!normal.contains('\\'));
        }

        #[test]
        fn arbitrary_strings_never_panic(chars in prop::collection::vec(any::<char>(), 0..64)) {
            let raw = String::from_iter(chars);
            let _ = normalize_path(&raw);
            let _ = normalize_path(&format!("/{raw}"));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        normalize_path(p).unwrap().into_owned()
    }

    #[test]
    fn removes_dot_segments() {
        assert_eq!(norm("/a/./b/../c"), "/a/c");
        assert_eq!(norm("/a/b/c/./../../g"), "/a/g");
        assert_eq!(norm("/../../etc"), "/etc");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/."), "/a/");
        assert_eq!(norm("/."), "/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/a/.."), "/");
        assert_eq!(norm("/a/../"), "/");
        assert_eq!(norm("/a/..."), "/a/...");
        assert_eq!(norm("/a/.b/c."), "/a/.b/c.");
    }

    #[test]
    fn encoded_dot_segments() {
        assert_eq!(norm("/%2e%2e/etc"), "/etc");
        assert_eq!(norm("/a/%2E%2e/b"), "/b");
        assert_eq!(norm("/a/.%2e/b"), "/b");
        assert_eq!(norm("/a/%2e/b"), "/a/b");
        assert_eq!(norm("/a/b/%2E%2E"), "/a/");
    }

    #[test]
    fn decodes_unreserved_and_uppercases_the_rest() {
        assert_eq!(norm("/%7euser"), "/~user");
        assert_eq!(norm("/%41%62%2D%5f"), "/Ab-_");
        assert_eq!(norm("/a%2b"), "/a%2B");
        assert_eq!(norm("/a%2B"), "/a%2B");
        assert_eq!(norm("/a%20b%3a"), "/a%20b%3A");
        // `%25` stays encoded, so nothing is decoded twice.
        assert_eq!(norm("/%252e%252e/x"), "/%252e%252e/x");
    }

    #[test]
    fn keeps_parameters_and_repeated_slashes() {
        assert_eq!(norm("/a;v=1/b"), "/a;v=1/b");
        assert_eq!(norm("/a/b;jsessionid=x"), "/a/b;jsessionid=x");
        assert_eq!(norm("//a"), "//a");
        assert_eq!(norm("//a/b"), "//a/b");
        assert_eq!(norm("/a//b/"), "/a//b/");
        assert_eq!(norm("/a//../b"), "/a/b");
    }

    #[test]
    fn borrowed_when_unchanged() {
        for p in ["/", "/api/users/1", "//a", "/a;b", "/a%2B", "/~u", "/a/...", "/a/b/"] {
            assert!(matches!(normalize_path(p).unwrap(), Cow::Borrowed(_)), "{p}");
        }
        assert!(matches!(normalize_path("/a/./b").unwrap(), Cow::Owned(_)));
        assert!(matches!(normalize_path("/a%2b").unwrap(), Cow::Owned(_)));
    }

    #[test]
    fn errors() {
        use PathError::*;
        let cases: &[(&str, PathError)] = &[
            ("", NotAbsolute),
            ("a/b", NotAbsolute),
            ("*", NotAbsolute),
            ("/a%2Fb", EncodedSlash),
            ("/a%2fb", EncodedSlash),
            ("/a%5cb", Backslash),
            ("/a%5Cb", Backslash),
            ("/a\\b", Backslash),
            ("/a%00", Nul),
            ("/a\0", Nul),
            ("/a%zz", InvalidEscape),
            ("/a%2", InvalidEscape),
            ("/a%", InvalidEscape),
            ("/a%g0", InvalidEscape),
            ("/a b", InvalidByte),
            ("/a\tb", InvalidByte),
            ("/a\x7f", InvalidByte),
            ("/caf\u{e9}", InvalidByte),
            ("/a#b", InvalidByte),
            ("/a?b", InvalidByte),
            ("/a/..;/b", DotSegmentParameter),
            ("/a/.;x/b", DotSegmentParameter),
            ("/a/%2e%2e;/b", DotSegmentParameter),
            ("/a/..%3b/b", DotSegmentParameter),
        ];
        for (path, want) in cases {
            assert_eq!(normalize_path(path), Err(*want), "{path:?}");
        }
    }

    #[test]
    fn normal_form_is_a_fixed_point() {
        for p in ["/a/./b/../c", "/%2e%2e/etc", "/a%2b/%7e", "//a/..", "/a/b/.."] {
            let once = norm(p);
            assert!(matches!(normalize_path(&once).unwrap(), Cow::Borrowed(_)), "{p} -> {once}");
        }
    }
}
