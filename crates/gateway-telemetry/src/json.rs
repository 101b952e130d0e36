//! JSON strings written straight into a byte buffer, for the lines and exports written once
//! per request or span (the access log, OTLP/JSON): no serializer, no intermediate `String`.

/// Whether a JSON string cannot hold `b` as it is: `"`, `\` and control characters.
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte needs escaping: 16 bytes at a time without a branch per byte, which
/// the compiler turns into vector compares.
fn any_needs_escape(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | needs_escape(b)) {
            return true;
        }
    }
    // The rest, padded with a byte that needs nothing, takes the same vector compares.
    let mut last = [b' '; 16];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    last.iter().fold(false, |any, &b| any | needs_escape(b))
}

/// The concatenation of `parts` as one JSON string literal, quotes included.
///
/// ```
/// let mut out = Vec::new();
/// gateway_telemetry::json::string(&mut out, &["GET ", "/a\"b\n"]);
/// assert_eq!(out, br#""GET /a\"b\n""#);
/// ```
pub fn string(out: &mut Vec<u8>, parts: &[&str]) {
    out.reserve(2 + parts.iter().map(|p| p.len()).sum::<usize>());
    out.push(b'"');
    for part in parts {
        escape_into(out, part);
    }
    out.push(b'"');
}

/// `s` as a JSON string literal when the caller knows it needs no escaping (a timestamp we
/// wrote, an HTTP method, a request id of a checked charset): no byte is looked at.
pub fn safe_string(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!any_needs_escape(s.as_bytes()), "{s:?} needs escaping");
    out.reserve(2 + s.len());
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn escape_into(out: &mut Vec<u8>, s: &str) {
    use std::io::Write as _;
    let bytes = s.as_bytes();
    // Paths, hosts and names almost never need escaping: copy them in one go.
    if !any_needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// `value` in decimal, without going through `fmt`.
pub fn unsigned(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_string_round_trips_through_a_json_parser() {
        let long = "a fairly long path/segment/with more than sixteen bytes/\"quoted\"/ü\u{1}";
        let samples = [
            "",
            "plain",
            "ab\"cdefghijklmnopqrstuvwxyz",
            "quote\" back\\slash",
            "\u{0}\u{1f}\t\r\n",
            "ünï €",
            "\u{7f}\u{2028}",
            long,
        ];
        for s in samples {
            let mut out = Vec::new();
            super::string(&mut out, &[s, s]);
            let parsed: String = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(parsed, format!("{s}{s}"));
        }
    }
}
