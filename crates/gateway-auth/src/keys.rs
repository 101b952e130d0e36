//! Verification keys: from a shared secret, a PEM file or a JWKS document, each tied
//! to the algorithms it may verify.

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Most keys taken from one JWKS document.
const MAX_JWKS_KEYS: usize = 64;

/// One key and what it may be used for.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    /// The JWK `kid`; `None` for a secret or a PEM file.
    pub kid: Option<String>,
    /// The algorithms this key may verify: those of its kind (or the one its JWK
    /// declares) that the provider pins. Never empty.
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("algorithms", &self.algorithms).finish()
    }
}

const RSA_ALGS: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];
const HMAC_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

fn pinned_subset(kind: &[Algorithm], pinned: &[Algorithm]) -> Vec<Algorithm> {
    kind.iter().copied().filter(|a| pinned.contains(a)).collect()
}

/// The HMAC key of a provider with `secret`.
pub(crate) fn from_secret(secret: &str, pinned: &[Algorithm]) -> Result<VerifyKey, String> {
    let algorithms = pinned_subset(&HMAC_ALGS, pinned);
    if algorithms.is_empty() {
        return Err("`secret` is only for HS256, HS384 and HS512".into());
    }
    let key = DecodingKey::from_secret(secret.as_bytes()).map_err(|_| "secret is empty".to_owned())?;
    Ok(VerifyKey { kid: None, algorithms, key })
}

/// The public key of a PEM file: an RSA (`PUBLIC KEY` or `RSA PUBLIC KEY`), EC P-256
/// or P-384, or Ed25519 public key, or a certificate holding one. Private keys are
/// refused: the gateway only verifies.
pub(crate) fn from_pem(pem: &[u8], pinned: &[Algorithm]) -> Result<VerifyKey, String> {
    let text = String::from_utf8_lossy(pem);
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN ").and_then(|rest| rest.strip_suffix("-----")))
        .ok_or("no PEM block (-----BEGIN ...-----) found")?;
    if label.contains("PRIVATE") {
        return Err(format!("holds a {label}; give the public key (or a certificate) instead"));
    }
    let (key, kind, what): (DecodingKey, Vec<Algorithm>, &str) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        (key, RSA_ALGS.to_vec(), "an RSA key")
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => (key, vec![Algorithm::ES256], "an EC P-256 key"),
            Ok(97) => (key, vec![Algorithm::ES384], "an EC P-384 key"),
            _ => return Err("holds an EC key on a curve other than P-256 or P-384".into()),
        }
    } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(32) => (key, vec![Algorithm::EdDSA], "an Ed25519 key"),
            _ => return Err("holds an EdDSA key that is not Ed25519".into()),
        }
    } else {
        return Err(format!("`{label}` is not an RSA, EC (P-256, P-384) or Ed25519 public key or certificate"));
    };
    let algorithms = pinned_subset(&kind, pinned);
    if algorithms.is_empty() {
        return Err(format!("holds {what}, which verifies none of the pinned algorithms {}", names(pinned)));
    }
    Ok(VerifyKey { kid: None, algorithms, key })
}

pub(crate) fn names(algs: &[Algorithm]) -> String {
    algs.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
}

/// The usable keys of a JWKS document (RFC 7517). A key is skipped when its `use` is
/// not `sig`, its `key_ops` lack `verify`, its `alg` is not pinned or does not fit its
/// type, its type or curve is unsupported, or its parameters do not decode. Symmetric
/// (`oct`) keys are never taken from a URL. An error when the document is not a JWKS
/// or has no usable key.
pub(crate) fn from_jwks(body: &[u8], pinned: &[Algorithm]) -> Result<Vec<VerifyKey>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc.get("keys").and_then(Value::as_array).ok_or("not a JWKS document (no \"keys\" array)")?;
    let usable: Vec<VerifyKey> = keys.iter().filter_map(|k| from_jwk(k, pinned)).take(MAX_JWKS_KEYS).collect();
    if usable.is_empty() {
        return Err(format!("no key in the JWKS ({} listed) can verify {}", keys.len(), names(pinned)));
    }
    Ok(usable)
}

fn from_jwk(jwk: &Value, pinned: &[Algorithm]) -> Option<VerifyKey> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if field("use").is_some_and(|u| u != "sig") {
        return None;
    }
    if let Some(ops) = jwk.get("key_ops") {
        if !ops.as_array()?.iter().any(|op| op.as_str() == Some("verify")) {
            return None;
        }
    }
    let declared: Option<Algorithm> = match field("alg") {
        Some(alg) => Some(alg.parse().ok()?),
        None => None,
    };
    let (key, kind) = match (field("kty")?, field("crv")) {
        ("RSA", _) => (DecodingKey::from_rsa_components(field("n")?, field("e")?).ok()?, RSA_ALGS.to_vec()),
        ("EC", Some(crv)) => {
            let (alg, len) = match crv {
                "P-256" => (Algorithm::ES256, 65),
                "P-384" => (Algorithm::ES384, 97),
                _ => return None,
            };
            let key = DecodingKey::from_ec_components(field("x")?, field("y")?).ok()?;
            if key.try_get_as_bytes().ok()?.len() != len {
                return None;
            }
            (key, vec![alg])
        }
        ("OKP", Some("Ed25519")) => {
            let key = DecodingKey::from_ed_components(field("x")?).ok()?;
            if key.try_get_as_bytes().ok()?.len() != 32 {
                return None;
            }
            (key, vec![Algorithm::EdDSA])
        }
        _ => return None,
    };
    let allowed: Vec<Algorithm> = match declared {
        Some(alg) if kind.contains(&alg) => vec![alg],
        Some(_) => return None,
        None => kind,
    };
    let algorithms = pinned_subset(&allowed, pinned);
    if algorithms.is_empty() {
        return None;
    }
    Some(VerifyKey { kid: field("kid").map(str::to_owned), algorithms, key })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const RS: &[Algorithm] = &[Algorithm::RS256, Algorithm::PS256];

    fn rsa_jwk(extra: Value) -> Value {
        let mut k = json!({"kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"});
        if let (Value::Object(k), Value::Object(extra)) = (&mut k, extra) {
            k.extend(extra);
        }
        k
    }

    #[test]
    fn jwk_filters() {
        assert_eq!(from_jwk(&rsa_jwk(json!({})), RS).unwrap().algorithms, RS);
        assert_eq!(from_jwk(&rsa_jwk(json!({"alg": "PS256", "kid": "a"})), RS).unwrap().algorithms, [Algorithm::PS256]);
        assert!(from_jwk(&rsa_jwk(json!({"alg": "RS512"})), RS).is_none(), "alg not pinned");
        assert!(from_jwk(&rsa_jwk(json!({"alg": "ES256"})), RS).is_none(), "alg does not fit kty");
        assert!(from_jwk(&rsa_jwk(json!({"alg": "RSA-OAEP"})), RS).is_none());
        assert!(from_jwk(&rsa_jwk(json!({"use": "enc"})), RS).is_none());
        assert!(from_jwk(&rsa_jwk(json!({"use": "sig"})), RS).is_some());
        assert!(from_jwk(&rsa_jwk(json!({"key_ops": ["encrypt"]})), RS).is_none());
        assert!(from_jwk(&rsa_jwk(json!({"key_ops": ["verify"]})), RS).is_some());
        assert!(from_jwk(&rsa_jwk(json!({"n": "!!"})), RS).is_none());
        assert!(from_jwk(&json!({"kty": "oct", "k": "c2VjcmV0"}), &[Algorithm::HS256]).is_none());
        assert!(from_jwk(&json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}), &[Algorithm::ES256]).is_none());
        assert!(from_jwk(&json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}), &[Algorithm::ES256]).is_none());
        assert!(from_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": "AA"}), &[Algorithm::EdDSA]).is_none());
        assert!(from_jwk(&json!("not an object"), RS).is_none());
    }

    #[test]
    fn jwks_documents() {
        assert!(from_jwks(b"nope", RS).unwrap_err().starts_with("not JSON"));
        assert!(from_jwks(b"{}", RS).is_err());
        assert!(from_jwks(br#"{"keys": []}"#, RS).unwrap_err().starts_with("no key"));
        let doc = json!({"keys": [rsa_jwk(json!({"kid": "a"})), {"kty": "weird"}, rsa_jwk(json!({"kid": "b", "use": "enc"}))]});
        let keys = from_jwks(doc.to_string().as_bytes(), RS).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
    }

    #[test]
    fn pem_refusals() {
        assert!(from_pem(b"garbage", RS).unwrap_err().contains("no PEM block"));
        let private = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(from_pem(private, RS).unwrap_err().contains("PRIVATE KEY"));
        let junk = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(from_pem(junk, RS).is_err());
        assert!(from_secret("s", RS).is_err());
        assert!(from_secret("", &[Algorithm::HS256]).is_err());
        assert_eq!(from_secret("s", &[Algorithm::HS256, Algorithm::HS512]).unwrap().algorithms.len(), 2);
    }
}
