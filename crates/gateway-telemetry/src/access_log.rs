//! The access log's line: one JSON object per request with the fields SPEC.md lists (`ts`,
//! `request_id`, `route`, `method`, `path`, `status`, `upstream`, `duration_ms`, `bytes`) plus
//! `error` (the gateway's error code when it answered itself) and `trace_id`. Absent values
//! are `null`. Written by hand into one buffer: a serializer cost more than the rest of the
//! request's logging.

use std::time::Duration;

use crate::json;

/// What one access-log line says; see [`AccessLine::to_json`].
pub struct AccessLine<'a> {
    /// RFC 3339 UTC with milliseconds.
    pub ts: &'a str,
    /// Needs no JSON escaping (`RequestId` keeps only `[A-Za-z0-9._:-]`).
    pub request_id: &'a str,
    pub route: Option<&'a str>,
    /// An HTTP method: token characters, which need no JSON escaping.
    pub method: &'a str,
    /// The path as the client sent it (normalised), without the query.
    pub path: &'a str,
    pub status: u16,
    /// The upstream endpoint's address, when one was called.
    pub upstream: Option<&'a str>,
    pub duration: Duration,
    /// The response body's size, when known at the head.
    pub bytes: Option<u64>,
    pub error: Option<&'a str>,
    pub trace_id: Option<[u8; 16]>,
}

impl AccessLine<'_> {
    /// The line as a JSON object, without the newline.
    ///
    /// ```
    /// use gateway_telemetry::access_log::AccessLine;
    /// let line = AccessLine {
    ///     ts: "2026-11-30T10:00:00.000Z", request_id: "r1", route: Some("users"), method: "GET",
    ///     path: "/users/7", status: 200, upstream: Some("10.0.0.1:9001"),
    ///     duration: std::time::Duration::from_micros(1500), bytes: Some(64), error: None, trace_id: None,
    /// };
    /// let doc: serde_json::Value = serde_json::from_slice(&line.to_json()).unwrap();
    /// assert_eq!(doc["duration_ms"], 1.5);
    /// assert_eq!(doc["error"], serde_json::Value::Null);
    /// ```
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.path.len());
        self.write_json(&mut out);
        out
    }

    /// Append the line as a JSON object (without the newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":");
        // The timestamp, the request id and the method need no escaping (see their fields).
        json::safe_string(out, self.ts);
        out.extend_from_slice(b",\"request_id\":");
        json::safe_string(out, self.request_id);
        out.extend_from_slice(b",\"route\":");
        optional_string(out, self.route);
        out.extend_from_slice(b",\"method\":");
        json::safe_string(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json::string(out, &[self.path]);
        out.extend_from_slice(b",\"status\":");
        json::unsigned(out, u64::from(self.status));
        out.extend_from_slice(b",\"upstream\":");
        optional_string(out, self.upstream);
        // Milliseconds with microsecond precision, from integers (exact, and no float printing).
        let micros = u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX);
        out.extend_from_slice(b",\"duration_ms\":");
        json::unsigned(out, micros / 1000);
        let frac = micros % 1000;
        out.push(b'.');
        out.extend_from_slice(&[b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8]);
        out.extend_from_slice(b",\"bytes\":");
        match self.bytes {
            Some(bytes) => json::unsigned(out, bytes),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"error\":");
        optional_string(out, self.error);
        out.extend_from_slice(b",\"trace_id\":");
        match &self.trace_id {
            Some(id) => {
                let mut hex = [0u8; 32];
                crate::trace::hex_into(id, &mut hex);
                out.push(b'"');
                out.extend_from_slice(&hex);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
}

fn optional_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(s) => json::string(out, &[s]),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_there_and_escaped() {
        let line = AccessLine {
            ts: "2026-11-30T10:00:00.000Z",
            request_id: "id-1",
            route: None,
            method: "PURGE",
            path: "/a\\b\u{1}/ü",
            status: 504,
            upstream: None,
            duration: Duration::from_nanos(12_345_678_901),
            bytes: None,
            error: Some("gateway_timeout"),
            trace_id: Some([0xab; 16]),
        };
        let doc: serde_json::Value = serde_json::from_slice(&line.to_json()).expect("JSON");
        assert_eq!(doc["request_id"], "id-1");
        assert_eq!(doc["route"], serde_json::Value::Null);
        assert_eq!(doc["method"], "PURGE");
        assert_eq!(doc["path"], "/a\\b\u{1}/ü");
        assert_eq!(doc["status"], 504);
        assert_eq!(doc["upstream"], serde_json::Value::Null);
        assert_eq!(doc["duration_ms"], 12_345.678);
        assert_eq!(doc["bytes"], serde_json::Value::Null);
        assert_eq!(doc["error"], "gateway_timeout");
        assert_eq!(doc["trace_id"], "abababababababababababababababab");
        assert_eq!(doc.as_object().map(|o| o.len()), Some(11));
        let zero = AccessLine { duration: Duration::ZERO, ..line };
        let doc: serde_json::Value = serde_json::from_slice(&zero.to_json()).expect("JSON");
        assert_eq!(doc["duration_ms"], 0.0);
    }
}
