//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` header.
//!
//! Parsing is strict, as the recommendation asks of version `00`:
//! - exactly `00-<32 hex>-<16 hex>-<2 hex>`, 55 bytes, lowercase hex only (uppercase is
//!   invalid), after trimming optional whitespace (space, tab) at either end;
//! - an all-zero trace id or parent id is invalid;
//! - version `ff` is invalid; a version that is not two lowercase hex digits is invalid;
//! - a *future* version (`01`..`fe`) is parsed as the spec requires of a version-00
//!   parser: the first 55 bytes must have the version-00 layout, and anything after them
//!   must start with `-` (the extra fields are ignored). The context we send on is always
//!   version `00`.
//!
//! `tracestate` is not parsed here: the caller forwards it untouched when the incoming
//! `traceparent` was valid, and drops it when the gateway started a new trace (its
//! entries would describe another trace).

use std::fmt;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The `traceparent` header name.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header name (forwarded untouched; see the module docs).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

/// A span's identity as it travels in `traceparent`: which trace, which span, and the
/// trace flags (bit 0: sampled).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace every hop shares; never all zero.
    pub trace_id: [u8; 16],
    /// The span that sends this context (the parent of the receiver's span); never all zero.
    pub span_id: [u8; 8],
    /// Trace flags; only [`TraceContext::SAMPLED`] is defined.
    pub flags: u8,
}

impl TraceContext {
    /// The `sampled` trace flag: the sender may have recorded its span.
    pub const SAMPLED: u8 = 0x01;

    /// Whether the sampled flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The context of the single `traceparent` header in `headers`: `None` when it is
    /// missing, malformed, or repeated (several `traceparent` fields are invalid).
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceContext> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        parse_traceparent(first)
    }

    /// The version-00 `traceparent` text, on the stack.
    pub fn to_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [0u8; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        out[2] = b'-';
        hex_into(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.span_id, &mut out[36..52]);
        out[52] = b'-';
        hex_into(&[self.flags], &mut out[53..55]);
        out
    }

    /// The `traceparent` header value. Its buffer is the only allocation.
    pub fn to_header(&self) -> HeaderValue {
        // Hex digits and dashes are always valid header bytes; the fallback is unreachable
        // (and would only send an invalid traceparent, which receivers replace).
        HeaderValue::from_bytes(&self.to_bytes()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The trace id as 32 lowercase hex digits (for log lines that correlate with traces).
    pub fn trace_id_hex(&self) -> String {
        hex_string(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        hex_string(&self.span_id)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

/// Formats as the `traceparent` value.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        // Always ASCII; `from_utf8` cannot fail.
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

/// Parse one `traceparent` value (see the module docs for the rules). `None` when it is
/// invalid: the caller then starts a new trace.
pub fn parse_traceparent(value: &HeaderValue) -> Option<TraceContext> {
    parse_bytes(value.as_bytes())
}

pub(crate) fn parse_bytes(value: &[u8]) -> Option<TraceContext> {
    let b = trim_ows(value);
    if b.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(b[0], b[1])?;
    match version {
        0xff => return None,
        0x00 if b.len() != TRACEPARENT_LEN => return None,
        // A future version may append fields, each introduced by `-`.
        _ if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    unhex_into(&b[3..35], &mut trace_id)?;
    let mut span_id = [0u8; 8];
    unhex_into(&b[36..52], &mut span_id)?;
    let flags = hex_byte(b[53], b[54])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(TraceContext { trace_id, span_id, flags })
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// Lowercase hex digit value; uppercase is invalid in `traceparent`.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(nibble(hi)? << 4 | nibble(lo)?)
}

fn unhex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (pair, byte) in hex.chunks_exact(2).zip(out.iter_mut()) {
        *byte = hex_byte(pair[0], pair[1])?;
    }
    Some(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Write `bytes` as lowercase hex into `out` (which holds exactly twice as many bytes).
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

pub(crate) fn hex_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        s.push(char::from(HEX[usize::from(byte >> 4)]));
        s.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(s: &str) -> Option<TraceContext> {
        parse_bytes(s.as_bytes())
    }

    #[test]
    fn round_trips() {
        let ctx = parse(VALID).expect("valid");
        assert_eq!(ctx.trace_id[0], 0x4b);
        assert_eq!(ctx.trace_id[15], 0x36);
        assert_eq!(ctx.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(ctx.is_sampled());
        assert_eq!(ctx.to_header(), VALID);
        assert_eq!(ctx.to_string(), VALID);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id_hex(), "00f067aa0ba902b7");
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        assert!(!unsampled.is_sampled());
        assert_eq!(parse_traceparent(&HeaderValue::from_static(VALID)), Some(ctx));
    }

    #[test]
    fn optional_whitespace_is_trimmed() {
        assert!(parse(&format!(" \t{VALID}\t ")).is_some());
    }

    #[test]
    fn rejects_malformed_values() {
        let cases = [
            ("", "empty"),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"),
            ("0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version not hex"),
            ("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version uppercase"),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "zero trace id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "zero span id"),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "uppercase trace id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", "uppercase span id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", "uppercase flags"),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", "short trace id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01", "long trace id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", "short span id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", "short flags"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011", "long flags"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", "trailing dash on version 00"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "extra field on version 00"),
            ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", "wrong separators"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x", "flags not hex"),
            ("00-4bf92f3577b34da6a3ce929d0e0e47-36-00f067aa0ba902b7-01", "dash inside trace id"),
            ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", "future version, no dash before more"),
        ];
        for (value, why) in cases {
            assert_eq!(parse(value), None, "{why}: {value}");
        }
    }

    #[test]
    fn future_versions_are_read_as_version_00_and_sent_on_as_00() {
        let ctx =
            parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds").expect("valid");
        assert_eq!(ctx.to_header(), VALID);
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        // Zero ids stay invalid in any version.
        assert!(parse("01-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn several_traceparent_fields_are_invalid() {
        let mut headers = HeaderMap::new();
        assert_eq!(TraceContext::from_headers(&headers), None);
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(TraceContext::from_headers(&headers).is_some());
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(TraceContext::from_headers(&headers), None);
    }
}
