//! The headers that carry an identity upstream, and the removal of client-sent copies.

use gateway_config::Config;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

/// The header that names an API key's consumer upstream.
pub const X_CONSUMER: HeaderName = HeaderName::from_static("x-consumer");

/// Every identity header the gateway sets anywhere in a configuration: all
/// `forward_claims` header names and `x-consumer`. Client-sent copies are removed on
/// every route, in any letter case and with `_` for `-` (`x_user_id` for `x-user-id`),
/// so that no client can inject an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// Lower case, `-` for `_`, without duplicates.
    names: Vec<String>,
}

impl IdentityHeaders {
    pub fn from_config(config: &Config) -> Self {
        let mut names = vec![X_CONSUMER.as_str().to_owned()];
        for provider in config.auth.values() {
            for header in provider.forward_claims.values() {
                let normal: String = header.bytes().map(|b| char::from(normalise(b))).collect();
                if !names.contains(&normal) {
                    names.push(normal);
                }
            }
        }
        IdentityHeaders { names }
    }

    /// The header names, normalised (lower case, `-` for `_`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Whether a header is (a spelling of) an identity header.
    pub fn is_identity(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.len() == name.len() && n.bytes().zip(name.bytes()).all(|(a, b)| a == normalise(b)))
    }

    /// Removes every client-sent identity header. Allocates nothing when there is none.
    pub fn strip(&self, headers: &mut HeaderMap) {
        let doomed: Vec<HeaderName> = headers.keys().filter(|k| self.is_identity(k.as_str())).cloned().collect();
        for name in doomed {
            headers.remove(&name);
        }
    }
}

fn normalise(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        other => other.to_ascii_lowercase(),
    }
}

/// A claim as an upstream header value: strings as they are, numbers and booleans
/// printed, arrays of those joined with `,`. `Ok(None)` for what is not forwarded
/// (null, objects, nested arrays); `Err(())` for a value that must never be forwarded
/// (control characters, or not a valid header value): the request is then refused.
pub(crate) fn claim_header_value(value: &Value) -> Result<Option<HeaderValue>, ()> {
    let text = match value {
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match scalar_text(item) {
                    Some(t) => parts.push(t),
                    None => return Ok(None),
                }
            }
            parts.join(",")
        }
        other => match scalar_text(other) {
            Some(t) => t,
            None => return Ok(None),
        },
    };
    if text.chars().any(char::is_control) {
        return Err(());
    }
    HeaderValue::from_str(&text).map(Some).map_err(|_| ())
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn matching_ignores_case_and_underscores() {
        let ids = IdentityHeaders { names: vec!["x-consumer".into(), "x-user-id".into()] };
        assert!(ids.is_identity("x-user-id"));
        assert!(ids.is_identity("X-User-Id"));
        assert!(ids.is_identity("x_user_id"));
        assert!(ids.is_identity("x_user-id"));
        assert!(ids.is_identity("X-CONSUMER"));
        assert!(!ids.is_identity("x-user-idx"));
        assert!(!ids.is_identity("x-user"));

        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", HeaderValue::from_static("spoof"));
        headers.append("x-user-id", HeaderValue::from_static("spoof2"));
        headers.insert("x_user_id", HeaderValue::from_static("spoof"));
        headers.insert("x-consumer", HeaderValue::from_static("spoof"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        ids.strip(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }

    #[test]
    fn claim_values() {
        assert_eq!(claim_header_value(&json!("alice")).unwrap().unwrap(), "alice");
        assert_eq!(claim_header_value(&json!(42)).unwrap().unwrap(), "42");
        assert_eq!(claim_header_value(&json!(true)).unwrap().unwrap(), "true");
        assert_eq!(claim_header_value(&json!(["a", 1])).unwrap().unwrap(), "a,1");
        assert_eq!(claim_header_value(&json!("zoë")).unwrap().unwrap().as_bytes(), "zoë".as_bytes());
        assert_eq!(claim_header_value(&json!({"a": 1})), Ok(None));
        assert_eq!(claim_header_value(&json!(null)), Ok(None));
        assert_eq!(claim_header_value(&json!([["a"]])), Ok(None));
        assert!(claim_header_value(&json!("a\r\nx-admin: true")).is_err());
        assert!(claim_header_value(&json!("tab\there")).is_err());
        assert!(claim_header_value(&json!("del\u{7f}")).is_err());
        assert!(claim_header_value(&json!("c1\u{85}")).is_err());
        assert!(claim_header_value(&json!(["ok", "bad\n"])).is_err());
    }
}
