use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of one request: the client's `x-request-id` when it is sane, else a fresh one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Keep the client's id when it is 1 to 128 characters of `[A-Za-z0-9._:-]`;
    /// anything else (empty, huge, spaces, quotes) is replaced, so it is safe in logs.
    pub fn from_client(value: Option<&HeaderValue>) -> Self {
        match value {
            Some(v) if is_sane(v.as_bytes()) => RequestId(v.clone()),
            _ => Self::generate(),
        }
    }

    /// A fresh 32-hex-digit id, unique within the process and unlikely to collide across
    /// processes (time-seeded per thread, plus a global counter).
    pub fn generate() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let random = crate::random_u64();
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex(random, &mut buf[..16]);
        hex(count, &mut buf[16..]);
        RequestId(HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value"))
    }

    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Both constructors guarantee visible ASCII.
        self.0.to_str().unwrap_or("")
    }
}

fn is_sane(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_and_replaces_insane_ids() {
        let sane = HeaderValue::from_static("abc-123.x:y_z");
        assert_eq!(RequestId::from_client(Some(&sane)).as_str(), "abc-123.x:y_z");
        let insane = HeaderValue::from_static("a b\"c");
        assert_ne!(RequestId::from_client(Some(&insane)).as_str(), "a b\"c");
        let long = HeaderValue::from_str(&"a".repeat(200)).expect("valid");
        assert_eq!(RequestId::from_client(Some(&long)).as_str().len(), 32);
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(RequestId::generate(), RequestId::generate());
    }
}
