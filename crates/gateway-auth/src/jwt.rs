//! JWT providers: a bearer token checked against pinned algorithms, the provider's
//! keys, and the registered claims (`exp` always, `iss`/`aud` when configured, `nbf`).

use std::path::Path;
use std::sync::Arc;

use gateway_config::{AuthProvider, StringOrList};
use gateway_core::Principal;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use jsonwebtoken::errors::{Error as JwtError, ErrorKind as JwtErrorKind};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::cache::{unix_now, TokenCache, MAX_CACHED_TOKEN_BYTES};
use crate::identity::claim_header_value;
use crate::jwks::{HttpSource, Jwks, JwksPolicy};
use crate::keys::{self, VerifyKey};
use crate::AuthError;

/// Longest bearer token looked at.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// A token without `kid` is tried against at most this many keys of its algorithm.
const MAX_KIDLESS_CANDIDATES: usize = 4;
/// Leeway when the provider sets none (as Envoy's default clock skew).
const DEFAULT_LEEWAY_SECS: u64 = 60;
/// More leeway than this is not clock skew.
const MAX_LEEWAY_SECS: u64 = 24 * 3600;
/// Verified tokens remembered per provider.
const TOKEN_CACHE_ENTRIES: usize = 10_000;

const INVALID_TOKEN: AuthError = AuthError::Invalid("invalid token");

enum KeySource {
    /// A secret or a PEM file: read once when the provider is built.
    Static(Vec<VerifyKey>),
    Jwks(Jwks),
}

/// One `type = "jwt"` provider.
pub(crate) struct Jwt {
    name: Arc<str>,
    /// One prepared validation per pinned algorithm; a token whose header names any
    /// other algorithm is refused before a key is looked at.
    validations: Vec<(Algorithm, Validation)>,
    keys: KeySource,
    issuer: Option<String>,
    /// `forward_claims`: claim name and the upstream header it becomes.
    forward: Vec<(String, HeaderName)>,
    cache: TokenCache,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.keys {
            KeySource::Static(_) => "static",
            KeySource::Jwks(_) => "jwks",
        };
        let algorithms: Vec<Algorithm> = self.validations.iter().map(|(a, _)| *a).collect();
        f.debug_struct("Jwt").field("algorithms", &algorithms).field("keys", &source).finish()
    }
}

impl Jwt {
    pub(crate) async fn build(
        name: Arc<str>,
        def: &AuthProvider,
        base_dir: &Path,
        policy: &JwksPolicy,
    ) -> Result<Jwt, String> {
        let mut pinned = Vec::new();
        for alg in &def.algorithms {
            let parsed: Algorithm = alg.parse().map_err(|_| format!("unknown JWT algorithm `{alg}`"))?;
            if !pinned.contains(&parsed) {
                pinned.push(parsed);
            }
        }
        if pinned.is_empty() {
            return Err("a jwt provider needs algorithms = [...]".into());
        }
        let leeway = def.leeway.map_or(DEFAULT_LEEWAY_SECS, |d| d.get().as_secs());
        if leeway > MAX_LEEWAY_SECS {
            return Err(format!("leeway {leeway}s is more than 24h"));
        }
        let audience: Option<Vec<String>> = match &def.audience {
            None => None,
            Some(StringOrList::One(a)) => Some(vec![a.clone()]),
            Some(StringOrList::Many(list)) if list.is_empty() => return Err("audience is an empty list".into()),
            Some(StringOrList::Many(list)) => Some(list.clone()),
        };
        let mut forward = Vec::with_capacity(def.forward_claims.len());
        for (claim, header) in &def.forward_claims {
            let name = HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("forward_claims: `{header}` is not a header name"))?;
            forward.push((claim.clone(), name));
        }

        let keys = match (&def.secret, &def.public_key_file, &def.jwks_url) {
            (Some(secret), None, None) => KeySource::Static(vec![keys::from_secret(secret, &pinned)?]),
            (None, Some(file), None) => {
                let path = base_dir.join(file);
                let pem =
                    tokio::fs::read(&path).await.map_err(|e| format!("public_key_file {}: {e}", path.display()))?;
                let key =
                    keys::from_pem(&pem, &pinned).map_err(|e| format!("public_key_file {}: {e}", path.display()))?;
                KeySource::Static(vec![key])
            }
            (None, None, Some(url)) => {
                if pinned.iter().any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) {
                    return Err("HS* algorithms need `secret`; keys from a jwks_url are public keys".into());
                }
                let source = HttpSource::new(url, policy)?;
                let jwks = Jwks::start(name.clone(), Box::new(source), pinned.clone(), policy.clone())
                    .await
                    .map_err(|e| format!("jwks_url {url}: {e}"))?;
                KeySource::Jwks(jwks)
            }
            _ => return Err("a jwt provider needs exactly one of jwks_url, public_key_file or secret".into()),
        };

        let validations = pinned
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(issuer) = &def.issuer {
                    v.set_issuer(&[issuer]);
                    required.push("iss");
                }
                match &audience {
                    Some(list) => {
                        v.set_audience(list);
                        required.push("aud");
                    }
                    None => v.validate_aud = false,
                }
                v.set_required_spec_claims(&required);
                (*alg, v)
            })
            .collect();

        Ok(Jwt {
            name,
            validations,
            keys,
            issuer: def.issuer.clone(),
            forward,
            cache: TokenCache::new(TOKEN_CACHE_ENTRIES),
        })
    }

    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer_token(headers)?;
        let now = unix_now();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(principal) = self.cache.get(&digest, now) {
            return Ok(principal);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| self.refuse("malformed token header"))?;
        // Pinning: the algorithm decides which validation (and so which keys) may be
        // used; an algorithm not pinned (`none` cannot even be parsed) ends here.
        let Some(validation) = self.validations.iter().find(|(a, _)| *a == header.alg).map(|(_, v)| v) else {
            return Err(self.refuse("algorithm not allowed"));
        };
        let kid = header.kid.as_deref();
        let claims = match &self.keys {
            KeySource::Static(keys) => {
                let candidates = candidates(keys, header.alg, kid);
                self.verify(token, &candidates, validation)?.ok_or_else(|| self.refuse("no key for the algorithm"))?
            }
            KeySource::Jwks(jwks) => {
                let seen = {
                    let set = jwks.current();
                    let candidates = candidates(&set.keys, header.alg, kid);
                    if let Some(claims) = self.verify(token, &candidates, validation)? {
                        return self.accept(claims, digest, token.len(), now);
                    }
                    set.generation
                };
                // Unknown key: maybe the identity provider rotated. Only worth a
                // (rate-limited) fetch if the token claims to come from it.
                if !self.issuer_may_match(token) {
                    return Err(self.refuse("unknown key, foreign issuer"));
                }
                if !jwks.refresh_for_unknown_key(seen).await {
                    return Err(self.refuse("unknown key"));
                }
                let set = jwks.current();
                let candidates = candidates(&set.keys, header.alg, kid);
                self.verify(token, &candidates, validation)?.ok_or_else(|| self.refuse("unknown key"))?
            }
        };
        self.accept(claims, digest, token.len(), now)
    }

    /// Tries the candidate keys; `Ok(None)` when there is none.
    fn verify(
        &self,
        token: &str,
        candidates: &[&VerifyKey],
        validation: &Validation,
    ) -> Result<Option<Map<String, Value>>, AuthError> {
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return Ok(Some(data.claims)),
                // Signature checks come before claim checks: only these may succeed
                // with another key.
                Err(e) if is_key_error(&e) => last = Some(e),
                Err(e) => return Err(self.refuse_jwt(&e)),
            }
        }
        match last {
            Some(e) => Err(self.refuse_jwt(&e)),
            None => Ok(None),
        }
    }

    fn accept(
        &self,
        claims: Map<String, Value>,
        digest: [u8; 32],
        token_len: usize,
        now: u64,
    ) -> Result<Principal, AuthError> {
        for (claim, _) in &self.forward {
            if claims.get(claim).is_some_and(|v| claim_header_value(v).is_err()) {
                return Err(self.refuse("a forwarded claim has control characters"));
            }
        }
        let subject = match claims.get("sub") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let exp = claims.get("exp").and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)));
        let principal = Principal { provider: self.name.clone(), subject, consumer: None, claims };
        if let Some(exp) = exp {
            if token_len <= MAX_CACHED_TOKEN_BYTES {
                self.cache.insert(digest, principal.clone(), exp, now);
            }
        }
        Ok(principal)
    }

    /// Whether the token's (unverified) `iss` could be this provider's.
    fn issuer_may_match(&self, token: &str) -> bool {
        let Some(issuer) = &self.issuer else { return true };
        #[derive(serde::Deserialize)]
        struct Iss {
            iss: Option<Value>,
        }
        match jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token) {
            Ok(Iss { iss: Some(Value::String(s)) }) => s == *issuer,
            Ok(Iss { iss: Some(Value::Array(list)) }) => list.iter().any(|v| v.as_str() == Some(issuer)),
            _ => false,
        }
    }

    pub(crate) fn upstream_headers(&self, principal: &Principal, out: &mut Vec<(HeaderName, HeaderValue)>) {
        for (claim, header) in &self.forward {
            if let Some(Ok(Some(value))) = principal.claims.get(claim).map(claim_header_value) {
                out.push((header.clone(), value));
            }
        }
    }

    /// A refusal. The reason goes to the debug log (never the token); the client sees
    /// "invalid token".
    fn refuse(&self, reason: &'static str) -> AuthError {
        tracing::debug!(provider = %self.name, reason, "token refused");
        INVALID_TOKEN
    }

    fn refuse_jwt(&self, e: &JwtError) -> AuthError {
        match e.kind() {
            JwtErrorKind::ExpiredSignature => {
                tracing::debug!(provider = %self.name, reason = "expired", "token refused");
                AuthError::Invalid("token expired")
            }
            JwtErrorKind::ImmatureSignature => {
                tracing::debug!(provider = %self.name, reason = "not yet valid", "token refused");
                AuthError::Invalid("token not yet valid")
            }
            JwtErrorKind::InvalidSignature => self.refuse("bad signature"),
            JwtErrorKind::InvalidIssuer => self.refuse("wrong issuer"),
            JwtErrorKind::InvalidAudience => self.refuse("wrong audience"),
            JwtErrorKind::MissingRequiredClaim(_) => self.refuse("missing required claim"),
            JwtErrorKind::InvalidClaimFormat(_) => self.refuse("malformed claim"),
            JwtErrorKind::InvalidAlgorithm => self.refuse("algorithm does not fit the key"),
            _ => self.refuse("malformed token"),
        }
    }
}

fn is_key_error(e: &JwtError) -> bool {
    matches!(
        e.kind(),
        JwtErrorKind::InvalidSignature
            | JwtErrorKind::InvalidKeyFormat
            | JwtErrorKind::InvalidEcdsaKey
            | JwtErrorKind::InvalidEddsaKey
            | JwtErrorKind::InvalidRsaKey(_)
    )
}

/// The keys that may verify a token of `alg` naming `kid`. A token with a `kid` needs a
/// key with that `kid`, except that a lone key without one (a secret, a PEM file, a
/// one-key JWKS without ids) verifies whatever the token names. A token without `kid`
/// is tried against the keys of its algorithm, if there are only a few.
fn candidates<'k>(keys: &'k [VerifyKey], alg: Algorithm, kid: Option<&str>) -> Vec<&'k VerifyKey> {
    let usable = keys.iter().filter(|k| k.algorithms.contains(&alg));
    match kid {
        Some(kid) => {
            let matched: Vec<&VerifyKey> = usable.clone().filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if !matched.is_empty() {
                return matched;
            }
            match keys {
                [only] if only.kid.is_none() && only.algorithms.contains(&alg) => vec![only],
                _ => Vec::new(),
            }
        }
        None => {
            let all: Vec<&VerifyKey> = usable.collect();
            if all.len() <= MAX_KIDLESS_CANDIDATES {
                all
            } else {
                Vec::new()
            }
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme in any case). Another scheme
/// is not for this provider (`Missing`); a malformed bearer value, or several
/// `Authorization` headers, is `Invalid`.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Err(AuthError::Missing) };
    if values.next().is_some() {
        return Err(INVALID_TOKEN);
    }
    let bytes = value.as_bytes();
    let (scheme, rest) = match bytes.iter().position(|b| *b == b' ') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(AuthError::Missing);
    }
    let token = rest.trim_ascii();
    let token68 = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b);
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !token.iter().all(token68) {
        return Err(INVALID_TOKEN);
    }
    std::str::from_utf8(token).map_err(|_| INVALID_TOKEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&headers(&["Bearer abc.def.ghi"])), Ok("abc.def.ghi"));
        assert_eq!(bearer_token(&headers(&["bEaReR   abc.def.ghi  "])), Ok("abc.def.ghi"));
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(bearer_token(&headers(&["Basic dXNlcjpwYXNz"])), Err(AuthError::Missing));
        assert_eq!(bearer_token(&headers(&["Bearer"])), Err(INVALID_TOKEN));
        assert_eq!(bearer_token(&headers(&["Bearer "])), Err(INVALID_TOKEN));
        assert_eq!(bearer_token(&headers(&["Bearer a b"])), Err(INVALID_TOKEN));
        assert_eq!(bearer_token(&headers(&["Bearer a\"b"])), Err(INVALID_TOKEN));
        assert_eq!(bearer_token(&headers(&["Bearer a", "Bearer b"])), Err(INVALID_TOKEN));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap_or(HeaderValue::from_static("x")));
        assert_eq!(bearer_token(&h), Err(INVALID_TOKEN));
    }

    fn key(kid: Option<&str>, algs: &[Algorithm]) -> VerifyKey {
        VerifyKey {
            kid: kid.map(str::to_owned),
            algorithms: algs.to_vec(),
            key: jsonwebtoken::DecodingKey::from_ed_der(&[0; 32]),
        }
    }

    #[test]
    fn candidate_selection() {
        let ed = Algorithm::EdDSA;
        let set = [key(Some("a"), &[ed]), key(Some("b"), &[ed]), key(Some("c"), &[Algorithm::ES256])];
        let kids = |v: Vec<&VerifyKey>| v.iter().map(|k| k.kid.clone().unwrap_or_default()).collect::<Vec<_>>();
        assert_eq!(kids(candidates(&set, ed, Some("b"))), ["b"]);
        assert_eq!(kids(candidates(&set, ed, Some("c"))), Vec::<String>::new(), "kid of another algorithm");
        assert_eq!(kids(candidates(&set, ed, Some("z"))), Vec::<String>::new());
        assert_eq!(kids(candidates(&set, ed, None)), ["a", "b"]);
        let lone = [key(None, &[ed])];
        assert_eq!(candidates(&lone, ed, Some("anything")).len(), 1);
        assert_eq!(candidates(&lone, Algorithm::ES256, None).len(), 0);
        let lone_with_kid = [key(Some("a"), &[ed])];
        assert_eq!(candidates(&lone_with_kid, ed, Some("new")).len(), 0, "unknown kid: refresh, not a guess");
        let many: Vec<VerifyKey> = (0..5).map(|i| key(Some(&i.to_string()), &[ed])).collect();
        assert_eq!(candidates(&many, ed, None).len(), 0);
    }
}
