//! One `[auth.NAME]`, built and ready to check requests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway_config::{AuthProvider, AuthType};
use gateway_core::Principal;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::apikey::ApiKeys;
use crate::identity::X_CONSUMER;
use crate::jwks::JwksPolicy;
use crate::jwt::Jwt;
use crate::AuthError;

enum Kind {
    Jwt(Box<Jwt>),
    ApiKey(ApiKeys),
}

/// One identity provider: JWT (secret, PEM public key or JWKS) or API keys.
pub struct Provider {
    name: Arc<str>,
    definition: AuthProvider,
    kind: Kind,
}

impl std::fmt::Debug for Provider {
    // Never the definition: it holds the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Provider");
        d.field("name", &self.name);
        match &self.kind {
            Kind::Jwt(jwt) => d.field("jwt", jwt),
            Kind::ApiKey(keys) => d.field("api_key", keys),
        };
        d.finish()
    }
}

impl Provider {
    /// Builds a provider with the default [`JwksPolicy`] and this fetch timeout. A JWKS
    /// provider fetches its keys here (an unreachable identity provider is an error)
    /// and starts its background refresh on the current tokio runtime; relative
    /// `public_key_file` and `keys_file` are resolved against `base_dir`.
    pub async fn build(
        name: &str,
        def: &AuthProvider,
        base_dir: &Path,
        fetch_timeout: Duration,
    ) -> Result<Provider, String> {
        let policy = JwksPolicy { fetch_timeout, ..JwksPolicy::default() };
        Provider::build_with(name, def, base_dir, &policy).await
    }

    /// [`Provider::build`] with every JWKS setting given.
    pub async fn build_with(
        name: &str,
        def: &AuthProvider,
        base_dir: &Path,
        policy: &JwksPolicy,
    ) -> Result<Provider, String> {
        let name: Arc<str> = Arc::from(name);
        let kind = match def.kind {
            AuthType::Jwt => Kind::Jwt(Box::new(Jwt::build(name.clone(), def, base_dir, policy).await?)),
            AuthType::ApiKey => Kind::ApiKey(ApiKeys::build(def, base_dir).await?),
        };
        Ok(Provider { name, definition: def.clone(), kind })
    }

    /// The `[auth.NAME]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition it was built from: a reload keeps a provider whose definition
    /// did not change (and so its JWKS cache and verified-token cache).
    pub fn definition(&self) -> &AuthProvider {
        &self.definition
    }

    /// Whether a reload may keep this provider when its definition is unchanged: not
    /// when it read a file (`public_key_file`, `keys_file`), which may have changed
    /// and is cheap to read again.
    pub fn reusable(&self) -> bool {
        self.definition.public_key_file.is_none() && self.definition.keys_file.is_none()
    }

    /// Checks the credentials of one request. `query` is the raw query string (for
    /// `query = "NAME"` API keys). Never panics on client input; never logs a token or
    /// a key.
    pub async fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Principal, AuthError> {
        match &self.kind {
            Kind::Jwt(jwt) => jwt.authenticate(headers).await,
            Kind::ApiKey(keys) => {
                let consumer = keys.authenticate(headers, query)?;
                Ok(Principal {
                    provider: self.name.clone(),
                    subject: Some(consumer.to_owned()),
                    consumer: Some(consumer.to_owned()),
                    claims: serde_json::Map::new(),
                })
            }
        }
    }

    /// The headers that carry `principal` upstream: its `forward_claims` (JWT), or
    /// `x-consumer` (API keys).
    pub fn upstream_headers(&self, principal: &Principal) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        match &self.kind {
            Kind::Jwt(jwt) => jwt.upstream_headers(principal, &mut out),
            Kind::ApiKey(_) => {
                if let Some(value) = principal.consumer.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
                    out.push((X_CONSUMER, value));
                }
            }
        }
        out
    }
}
