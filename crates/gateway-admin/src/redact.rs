//! Secrets never leave the admin API: every secret, key digest, token and password in the
//! configuration shows as `"***"`, and credentials inside URLs are masked.

use serde_json::Value;

/// Keys whose values are always secret, wherever they appear.
const SECRET_KEYS: &[&str] = &["secret", "token", "password", "sha256"];

/// Redact `value` in place.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) && !v.is_null() && !v.is_object() && !v.is_array() {
                    *v = Value::String("***".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Some(masked) = mask_url_credentials(s) {
                *s = masked;
            }
        }
        _ => {}
    }
}

/// `scheme://user:pass@host` -> `scheme://***@host`.
fn mask_url_credentials(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(format!("{scheme}://***@{}", &rest[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_credentials_are_masked() {
        let mut v = serde_json::json!({
            "auth": { "main": { "secret": "s3cret", "keys": [{ "consumer": "acme", "sha256": "abcd" }] } },
            "admin": { "token": "t0ken" },
            "redis": { "url": "redis://user:pw@127.0.0.1:6379/0" },
            "server": { "tls": { "cert": "c.pem", "key": "k.pem" } },
            "services": { "a": { "endpoints": ["http://127.0.0.1:1"] } },
        });
        redact(&mut v);
        let text = v.to_string();
        for secret in ["s3cret", "abcd", "t0ken", "pw@"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(v["redis"]["url"], "redis://***@127.0.0.1:6379/0");
        assert_eq!(v["auth"]["main"]["keys"][0]["consumer"], "acme");
        assert_eq!(v["services"]["a"]["endpoints"][0], "http://127.0.0.1:1");
    }
}
