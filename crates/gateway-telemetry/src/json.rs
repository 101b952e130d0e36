//! JSON strings written straight into a byte buffer, for the lines and exports written once
//! per request or span (the access log, OTLP/JSON): no serializer, no intermediate `String`.

/// Bytes a JSON string cannot hold as they are: `"`, `\` and control characters.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The concatenation of `parts` as one JSON string literal, quotes included.
///
/// ```
/// let mut out = Vec::new();
/// gateway_telemetry::json::string(&mut out, &["GET ", "/a\"b\n"]);
/// assert_eq!(out, br#""GET /a\"b\n""#);
/// ```
pub fn string(out: &mut Vec<u8>, parts: &[&str]) {
    out.push(b'"');
    for part in parts {
        escape_into(out, part);
    }
    out.push(b'"');
}

fn escape_into(out: &mut Vec<u8>, s: &str) {
    use std::io::Write as _;
    let bytes = s.as_bytes();
    // Paths, hosts and names almost never need escaping: copy them in one go.
    if !bytes.iter().any(|&b| NEEDS_ESCAPE[usize::from(b)]) {
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
        let samples = ["", "plain", "quote\" back\\slash", "\u{0}\u{1f}\t\r\n", "ünï €", "\u{7f}\u{2028}"];
        for s in samples {
            let mut out = Vec::new();
            super::string(&mut out, &[s, s]);
            let parsed: String = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(parsed, format!("{s}{s}"));
        }
    }
}
