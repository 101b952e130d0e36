//! The OTLP protobuf encoding of `ExportTraceServiceRequest`, written by hand (field numbers
//! from opentelemetry-proto's `trace/v1/trace.proto`, `common/v1/common.proto` and
//! `resource/v1/resource.proto`): a few hundred bytes per span, with no code generator and
//! no message structs to fill.
//!
//! A span is written in place as a `ScopeSpans.spans` field, behind two bytes kept for its
//! length (which is known once it is written); a batch's envelope (resource, scope, their
//! lengths) is written when the batch is sent, in front of a copy of its spans.

use bytes::Bytes;

use super::{describe, encode_fixed, Memo, SpanSink, SCOPE_NAME};
use crate::trace::span::SpanRecord;

/// Bytes a span takes, about: room reserved before each span is written.
const SPAN_BYTES: usize = 400;

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;

/// A field's key, for field numbers below 16 (one byte).
const fn key(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

pub(crate) struct Encoder {
    /// `ResourceSpans.resource` (field 1), whole.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), whole.
    scope: Vec<u8>,
    /// The `FIXED` attributes, as `Span.attributes` fields.
    fixed: Box<[Box<[u8]>]>,
}

impl Encoder {
    pub(crate) fn new(resource: &[(&str, &str)]) -> Encoder {
        // Resource { repeated KeyValue attributes = 1 }
        let mut attributes = Vec::new();
        for (key, value) in resource {
            string_attribute(&mut attributes, 1, key, &[value]);
        }
        let mut resource = Vec::new();
        len_prefix(&mut resource, 1, attributes.len());
        resource.extend_from_slice(&attributes);
        // InstrumentationScope { string name = 1; string version = 2 }
        let mut scope_body = Vec::new();
        string_field(&mut scope_body, 1, &[SCOPE_NAME]);
        string_field(&mut scope_body, 2, &[env!("CARGO_PKG_VERSION")]);
        let mut scope = Vec::new();
        len_prefix(&mut scope, 1, scope_body.len());
        scope.extend_from_slice(&scope_body);
        let fixed = encode_fixed(|out, key, value| string_attribute(out, 9, key, &[value]));
        Encoder { resource, scope, fixed }
    }

    /// Append `span` as a `ScopeSpans.spans` field (field 2), ready for [`request`](Self::request).
    pub(crate) fn append_span(&self, span: &SpanRecord<'_>, out: &mut Vec<u8>, memo: &mut Memo) {
        out.reserve(SPAN_BYTES);
        out.push(key(2, LEN));
        // Two bytes of room for the length, which is known once the span is written.
        let at = out.len();
        out.extend_from_slice(&[0, 0]);
        describe(span, &mut Proto { out: &mut *out, fixed: &self.fixed, memo });
        close_len_prefix(out, at);
    }

    /// One `ExportTraceServiceRequest` holding the spans [`append_span`](Self::append_span)
    /// wrote one after another into the `spans` runs.
    pub(crate) fn request(&self, spans: &[&[u8]]) -> Bytes {
        // ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }
        // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2 }
        // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2 }
        let scope_spans = self.scope.len() + spans.iter().map(|run| run.len()).sum::<usize>();
        let resource_spans = self.resource.len() + 1 + varint_len(scope_spans as u64) + scope_spans;
        let mut out = Vec::with_capacity(1 + 10 + resource_spans);
        len_prefix(&mut out, 1, resource_spans);
        out.extend_from_slice(&self.resource);
        len_prefix(&mut out, 2, scope_spans);
        out.extend_from_slice(&self.scope);
        for run in spans {
            out.extend_from_slice(run);
        }
        Bytes::from(out)
    }
}

/// Write the length of what follows the two bytes at `at` into them, as a varint: moving
/// what follows when the varint is one byte (a span under 128 bytes) or more than two.
fn close_len_prefix(out: &mut Vec<u8>, at: usize) {
    let len = out.len() - at - 2;
    match varint_len(len as u64) {
        1 => {
            out.copy_within(at + 2.., at + 1);
            out.truncate(out.len() - 1);
            out[at] = len as u8;
        }
        2 => {
            out[at] = (len as u8) | 0x80;
            out[at + 1] = (len >> 7) as u8;
        }
        _ => {
            let mut prefix = Vec::with_capacity(10);
            varint(&mut prefix, len as u64);
            out.splice(at..at + 2, prefix);
        }
    }
}

/// Writes one `Span` message's fields.
struct Proto<'a> {
    out: &'a mut Vec<u8>,
    fixed: &'a [Box<[u8]>],
    memo: &'a mut Memo,
}

impl SpanSink for Proto<'_> {
    fn start(&mut self, span: &SpanRecord<'_>, name: &[&str]) {
        // The fixed-size fields, assembled on the stack and copied in once:
        // bytes trace_id = 1; bytes span_id = 2; bytes parent_span_id = 4 (empty for a root);
        // SpanKind kind = 6; fixed64 start_time_unix_nano = 7, end = 8.
        let mut head = [0u8; 58];
        head[..2].copy_from_slice(&[key(1, LEN), 16]);
        head[2..18].copy_from_slice(&span.trace_id);
        head[18..20].copy_from_slice(&[key(2, LEN), 8]);
        head[20..28].copy_from_slice(&span.span_id);
        let mut at = 28;
        if span.parent_id != [0; 8] {
            head[28..30].copy_from_slice(&[key(4, LEN), 8]);
            head[30..38].copy_from_slice(&span.parent_id);
            at = 38;
        }
        head[at..at + 3].copy_from_slice(&[key(6, VARINT), span.kind.otlp(), key(7, I64)]);
        head[at + 3..at + 11].copy_from_slice(&span.start_unix_nanos.to_le_bytes());
        head[at + 11] = key(8, I64);
        head[at + 12..at + 20].copy_from_slice(&span.end_unix_nanos.to_le_bytes());
        self.out.extend_from_slice(&head[..at + 20]);
        // string name = 5
        string_field(self.out, 5, name);
    }

    fn str(&mut self, key: &'static str, parts: &[&str]) {
        // repeated KeyValue attributes = 9
        string_attribute(self.out, 9, key, parts);
    }

    fn int(&mut self, name: &'static str, value: u64) {
        // KeyValue { string key = 1; AnyValue value = 2 }, AnyValue { int64 int_value = 3 }
        let any_value = 1 + varint_len(value);
        let key_value = 1 + varint_len(name.len() as u64) + name.len() + 2 + any_value;
        let out = &mut *self.out;
        out.reserve(2 + key_value);
        if key_value < 0x80 {
            // Ports and status codes: every length is one byte.
            out.extend_from_slice(&[key(9, LEN), key_value as u8, key(1, LEN), name.len() as u8]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&[key(2, LEN), any_value as u8, key(3, VARINT)]);
        } else {
            len_prefix(out, 9, key_value);
            len_prefix(out, 1, name.len());
            out.extend_from_slice(name.as_bytes());
            len_prefix(out, 2, any_value);
            out.push(key(3, VARINT));
        }
        varint(out, value);
    }

    fn fixed(&mut self, index: usize) {
        self.out.extend_from_slice(&self.fixed[index]);
    }

    fn memo(&mut self, key: &[&[u8]], write: impl FnOnce(&mut Self)) {
        if let Some(run) = self.memo.get(key) {
            self.out.extend_from_slice(run);
            return;
        }
        let start = self.out.len();
        write(self);
        self.memo.store(key, &self.out[start..]);
    }

    fn end(&mut self, error: bool) {
        if error {
            // Status status = 15 { StatusCode code = 3 } with STATUS_CODE_ERROR (2).
            self.out.extend_from_slice(&[key(15, LEN), 2, key(3, VARINT), 2]);
        }
    }
}

/// A `KeyValue` with a string `AnyValue` (field 1), as field `field`.
#[inline]
fn string_attribute(out: &mut Vec<u8>, field: u8, name: &str, parts: &[&str]) {
    let text: usize = parts.iter().map(|p| p.len()).sum();
    let any_value = 1 + varint_len(text as u64) + text;
    let key_value = 2 + name.len() + 1 + varint_len(any_value as u64) + any_value;
    // One capacity check for the whole attribute (this runs a dozen times per span).
    out.reserve(1 + 10 + key_value);
    if key_value < 0x80 {
        // Most attributes: every length is one byte, so each head is one small copy.
        out.extend_from_slice(&[key(field, LEN), key_value as u8, key(1, LEN), name.len() as u8]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&[key(2, LEN), any_value as u8, key(1, LEN), text as u8]);
    } else {
        len_prefix(out, field, key_value);
        len_prefix(out, 1, name.len());
        out.extend_from_slice(name.as_bytes());
        len_prefix(out, 2, any_value);
        len_prefix(out, 1, text);
    }
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
}

/// A string field whose value is the concatenation of `parts`.
fn string_field(out: &mut Vec<u8>, field: u8, parts: &[&str]) {
    len_prefix(out, field, parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
}

/// The key and length of a length-delimited field.
#[inline]
fn len_prefix(out: &mut Vec<u8>, field: u8, len: usize) {
    out.push(key(field, LEN));
    varint(out, len as u64);
}

#[inline]
fn varint(out: &mut Vec<u8>, mut value: u64) {
    if value < 0x80 {
        // Lengths of keys and most values: one byte.
        out.push(value as u8);
        return;
    }
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
fn varint_len(value: u64) -> usize {
    match value {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        // 7 bits per byte.
        _ => (64 - value.leading_zeros() as usize).div_ceil(7),
    }
}

/// `partial_success.rejected_spans` of an `ExportTraceServiceResponse`, else 0 (also for a
/// body that is not valid protobuf).
pub(super) fn rejected_spans(body: &[u8]) -> u64 {
    // ExportTraceServiceResponse { ExportTracePartialSuccess partial_success = 1 }
    // ExportTracePartialSuccess { int64 rejected_spans = 1; string error_message = 2 }
    let Some(partial) = Reader(body).find_len(1) else { return 0 };
    Reader(partial).find_varint(1).unwrap_or(0)
}

/// Walks the fields of one message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    /// The next field: its number, and its value (a varint, or the bytes of the others).
    fn next(&mut self) -> Option<(u64, Result<u64, &'a [u8]>)> {
        if self.0.is_empty() {
            return None;
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Ok(self.varint()?),
            1 => Err(self.take(8)?),
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                Err(self.take(len)?)
            }
            5 => Err(self.take(4)?),
            _ => return None,
        };
        Some((key >> 3, value))
    }

    fn find_len(mut self, field: u64) -> Option<&'a [u8]> {
        while let Some((number, value)) = self.next() {
            if let (true, Err(bytes)) = (number == field, value) {
                return Some(bytes);
            }
        }
        None
    }

    fn find_varint(mut self, field: u64) -> Option<u64> {
        while let Some((number, value)) = self.next() {
            if let (true, Ok(v)) = (number == field, value) {
                return Some(v);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_their_lengths() {
        for value in [0u64, 1, 127, 128, 300, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            assert_eq!(Reader(&out).varint(), Some(value));
        }
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }

    #[test]
    fn a_length_prefix_closes_around_what_follows_it() {
        for len in [0usize, 5, 127, 128, 300, 16_383, 16_384, 70_000] {
            let mut out = vec![7u8, 0, 0];
            out.extend((0..len).map(|i| i as u8));
            close_len_prefix(&mut out, 1);
            let mut reader = Reader(&out[1..]);
            assert_eq!(reader.varint(), Some(len as u64));
            assert_eq!(reader.0.len(), len, "{len}");
            assert!(reader.0.iter().enumerate().all(|(i, &b)| b == i as u8));
            assert_eq!(out[0], 7);
        }
    }

    #[test]
    fn reads_partial_success() {
        assert_eq!(rejected_spans(b""), 0);
        // partial_success { rejected_spans: 3, error_message: "x" }
        assert_eq!(rejected_spans(&[0x0a, 0x05, 0x08, 0x03, 0x12, 0x01, b'x']), 3);
        // an unknown field first, then partial_success { rejected_spans: 300 }
        assert_eq!(rejected_spans(&[0x10, 0x01, 0x0a, 0x03, 0x08, 0xac, 0x02]), 300);
        // truncated: nothing read
        assert_eq!(rejected_spans(&[0x0a, 0x09, 0x08]), 0);
    }
}
