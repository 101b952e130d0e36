//! API keys: presented in a header or a query parameter, known only by their SHA-256
//! digests, compared in constant time.

use std::path::Path;

use gateway_config::AuthProvider;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::AuthError;

const INVALID: AuthError = AuthError::Invalid("invalid api key");

/// Longest key accepted (a header is bounded anyway; this bounds the query form).
const MAX_KEY_BYTES: usize = 4096;

/// One `type = "api_key"` provider, ready to check requests.
#[derive(Clone)]
pub(crate) struct ApiKeys {
    header: Option<HeaderName>,
    query: Option<String>,
    /// The digests in configuration order: `keys`, then `keys_file`.
    digests: Vec<[u8; 32]>,
    /// `consumers[i]` owns `digests[i]`; each is a valid `x-consumer` value.
    consumers: Vec<String>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("header", &self.header)
            .field("query", &self.query)
            .field("keys", &self.digests.len())
            .finish()
    }
}

impl ApiKeys {
    pub(crate) async fn build(def: &AuthProvider, base_dir: &Path) -> Result<ApiKeys, String> {
        let header = match &def.header {
            Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("`{h}` is not a header name"))?),
            None => None,
        };
        let query = def.query.clone();
        if header.is_none() && query.is_none() {
            return Err("an api_key provider needs `header` or `query`".into());
        }
        let mut entries = Vec::new();
        for key in &def.keys {
            let digest = parse_hex_digest(&key.sha256).ok_or("sha256 must be 64 hex digits")?;
            entries.push((key.consumer.clone(), digest));
        }
        if let Some(file) = &def.keys_file {
            let path = base_dir.join(file);
            let text =
                tokio::fs::read_to_string(&path).await.map_err(|e| format!("keys_file {}: {e}", path.display()))?;
            entries.extend(parse_keys_file(&text).map_err(|e| format!("keys_file {}:{e}", path.display()))?);
        }
        if entries.is_empty() {
            return Err("an api_key provider needs at least one key".into());
        }
        let mut digests = Vec::with_capacity(entries.len());
        let mut consumers = Vec::with_capacity(entries.len());
        for (consumer, digest) in entries {
            if consumer.is_empty() || consumer.chars().any(char::is_control) {
                return Err(format!("consumer `{}` is empty or has control characters", consumer.escape_debug()));
            }
            HeaderValue::from_str(&consumer)
                .map_err(|_| format!("consumer `{consumer}` cannot be sent as an x-consumer header"))?;
            digests.push(digest);
            consumers.push(consumer);
        }
        Ok(ApiKeys { header, query, digests, consumers })
    }

    /// The consumer whose key the request presents.
    pub(crate) fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<&str, AuthError> {
        let presented = self.presented(headers, query)?;
        let digest: [u8; 32] = Sha256::digest(&presented).into();
        // Look at every digest, whatever matches, so the time taken does not depend on
        // which key (if any) matched.
        let mut found = Choice::from(0);
        let mut index = 0u32;
        for (i, candidate) in self.digests.iter().enumerate() {
            let eq = candidate.ct_eq(&digest);
            index.conditional_assign(&(i as u32), eq);
            found |= eq;
        }
        if bool::from(found) {
            self.consumers.get(index as usize).map(String::as_str).ok_or(INVALID)
        } else {
            Err(INVALID)
        }
    }

    /// The key bytes from the header, else from the query. Several copies are refused:
    /// which one counts would be a guess.
    fn presented(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Vec<u8>, AuthError> {
        if let Some(name) = &self.header {
            let mut values = headers.get_all(name).iter();
            if let Some(value) = values.next() {
                if values.next().is_some() {
                    return Err(INVALID);
                }
                let key = trim(value.as_bytes());
                if key.is_empty() || key.len() > MAX_KEY_BYTES {
                    return Err(INVALID);
                }
                return Ok(key.to_vec());
            }
        }
        if let (Some(param), Some(query)) = (&self.query, query) {
            let mut found = None;
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if percent_decode(name).is_some_and(|n| n == param.as_bytes()) {
                    if found.is_some() {
                        return Err(INVALID);
                    }
                    found = Some(value);
                }
            }
            if let Some(value) = found {
                if value.len() > 3 * MAX_KEY_BYTES {
                    return Err(INVALID);
                }
                let key = percent_decode(value).ok_or(INVALID)?;
                if key.is_empty() || key.len() > MAX_KEY_BYTES {
                    return Err(INVALID);
                }
                return Ok(key);
            }
        }
        Err(AuthError::Missing)
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// `%XX` decoded (RFC 3986; `+` stays `+`, as keys in base64 need it). `None` for a
/// broken escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn parse_hex_digest(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_value(pair[0])? << 4 | hex_value(pair[1])?;
    }
    Some(out)
}

/// The `keys_file` format: one key per line, `CONSUMER SHA256HEX` separated by
/// whitespace; blank lines and lines starting with `#` are ignored. Errors start with
/// the line number.
pub(crate) fn parse_keys_file(text: &str) -> Result<Vec<(String, [u8; 32])>, String> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [consumer, digest] = fields.as_slice() else {
            return Err(format!("{}: expected `CONSUMER SHA256HEX`", n + 1));
        };
        let digest = parse_hex_digest(digest)
            .ok_or_else(|| format!("{}: the digest must be the 64 hex digits of the key's SHA-256", n + 1))?;
        entries.push(((*consumer).to_owned(), digest));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_file_format() {
        let text = "# partners\n\nacme  2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae\n  beta\tFCDE2B2EDBA56BF408601FB721FE9B5C338D10EE429EA04FAE5511B68FBF8FB9 \n";
        let entries = parse_keys_file(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, "acme");
        assert_eq!(entries[0].1, <[u8; 32]>::from(Sha256::digest(b"foo")));
        assert_eq!(entries[1].1, <[u8; 32]>::from(Sha256::digest(b"bar")));
        assert_eq!(parse_keys_file("acme\n").unwrap_err(), "1: expected `CONSUMER SHA256HEX`");
        assert!(parse_keys_file("\nacme abc\n").unwrap_err().starts_with("2: "));
        assert!(parse_keys_file("a b c\n").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Bb+c").unwrap(), b"a+b+c");
        assert_eq!(percent_decode("%41%6a").unwrap(), b"Aj");
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
    }
}
