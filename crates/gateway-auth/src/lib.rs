//! `gateway-auth`: identity at the edge. It owns the `[auth.NAME]` providers (JWT with
//! a shared secret, a PEM public key or a JWKS URL; API keys), a route's `auth` list and
//! `require_claims`, the identity headers sent upstream (`forward_claims`,
//! `x-consumer`) and the removal of client-sent copies of them. It does not own the
//! request path: the gateway calls [`IdentityHeaders::strip`] on every request,
//! [`RouteAuth::check`] on routes with `auth`, and turns an [`AuthError`] into the
//! response with [`AuthError::into_gateway_error`].
//!
//! JWT: the provider's `algorithms` are pinned; a token whose header names another
//! algorithm (or `none`) is refused before any key is used, so an RSA public key can
//! never serve as an HMAC secret. `exp` is required; `iss` and `aud` are required and
//! checked when configured; `nbf` is checked; `leeway` (default 60 s) applies to both.
//! A JWKS is fetched when the provider is built, refreshed in the background on its
//! `Cache-Control: max-age` (within [`JwksPolicy`] bounds), refreshed early at most
//! once per 5 s when a token names an unknown `kid`, and kept as it was when the
//! identity provider is down. A JWK is used only with the algorithm it declares, and
//! only if its `use` is `sig` (or absent). Verified tokens are remembered by their
//! SHA-256 until they expire (at most 10,000 per provider), so repeated requests skip
//! the signature check; a token verified once therefore stays accepted until its `exp`
//! even if its key is later dropped from the JWKS.
//!
//! API keys come from the configured header, else from the query parameter; the
//! SHA-256 of the presented key is compared with every configured digest in constant
//! time. `keys_file` (resolved against the configuration's directory) is plain text,
//! one key per line, `CONSUMER SHA256HEX` separated by whitespace; blank lines and
//! lines starting with `#` are ignored:
//!
//! ```text
//! # consumer   sha256 of the key (e.g. `printf %s "$KEY" | sha256sum`)
//! acme         2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
//! ```
//!
//! `require_claims`: exact text (numbers and booleans by their text), membership when
//! the claim is an array, and for `scope`/`scp` every space-separated scope of the
//! value must be granted by the token's `scope` or `scp` (a space-separated string or
//! an array). A dotted name that is not itself a claim walks into objects
//! (`realm_access.roles`). API-key identities have no claims.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use gateway_auth::{IdentityHeaders, Providers, RouteAuth};
//!
//! let text = r#"
//! [services.users]
//! endpoints = ["http://127.0.0.1:9001"]
//!
//! [auth.partners]
//! type = "api_key"
//! header = "x-api-key"
//! keys = [{ consumer = "acme", sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae" }]
//!
//! [[routes]]
//! name = "users"
//! path_prefix = "/api/users"
//! service = "users"
//! auth = ["partners"]
//! "#;
//! let config = gateway_config::parse("gateway.toml", text, &|_| None).unwrap();
//! let providers = Providers::build(&config, std::path::Path::new("."), None).await.unwrap();
//! let route = RouteAuth::compile(&config.routes[0], &providers).unwrap().expect("the route has auth");
//!
//! let mut headers = http::HeaderMap::new();
//! headers.insert("X_Consumer", "admin".parse().unwrap()); // a spoofed identity
//! headers.insert("x-api-key", "foo".parse().unwrap()); // sha256("foo") is configured
//! IdentityHeaders::from_config(&config).strip(&mut headers); // every route, before anything
//! assert!(!headers.contains_key("x-consumer"));
//!
//! let principal = route.check(&headers, None).await.unwrap();
//! assert_eq!(principal.consumer.as_deref(), Some("acme"));
//! assert_eq!(route.upstream_headers(&principal), [(gateway_auth::X_CONSUMER, "acme".parse().unwrap())]);
//! # });
//! ```
#![forbid(unsafe_code)]

mod apikey;
mod cache;
mod claims;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod identity;
mod jwks;
mod jwt;
mod keys;
#[cfg(test)]
mod props;
mod provider;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use gateway_config::{Config, Route};
use gateway_core::Principal;
use http::header::{HeaderMap, HeaderName, HeaderValue};

pub use error::AuthError;
pub use identity::{IdentityHeaders, X_CONSUMER};
pub use jwks::JwksPolicy;
pub use provider::Provider;

use claims::RequiredClaims;

/// Every provider of a configuration, by name.
#[derive(Debug, Default, Clone)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<Provider>>,
}

impl Providers {
    /// No providers (a configuration without `[auth.*]`).
    pub fn empty() -> Self {
        Providers::default()
    }

    /// Builds every `[auth.NAME]` of `config` with the default [`JwksPolicy`].
    ///
    /// A provider of `previous` whose definition is unchanged is kept as it is (no new
    /// JWKS fetch; its caches survive), unless it reads a file (see
    /// [`Provider::reusable`]). The others are built concurrently, each JWKS fetched
    /// once: any failure fails the whole build (every error is returned, by provider
    /// name), so a reload with an unreachable identity provider changes nothing.
    /// Providers of `previous` that are not kept stop their background refresh when
    /// the last request using them is done (their last `Arc` is dropped).
    ///
    /// Runs on a tokio runtime, and the background JWKS refreshes live on that
    /// runtime: call it from one that keeps running (the gateway's main runtime).
    pub async fn build(
        config: &Config,
        base_dir: &Path,
        previous: Option<&Providers>,
    ) -> Result<Providers, Vec<(String, String)>> {
        Providers::build_with(config, base_dir, previous, &JwksPolicy::default()).await
    }

    /// [`Providers::build`] with every JWKS setting given.
    pub async fn build_with(
        config: &Config,
        base_dir: &Path,
        previous: Option<&Providers>,
        policy: &JwksPolicy,
    ) -> Result<Providers, Vec<(String, String)>> {
        let mut by_name = BTreeMap::new();
        let mut building = tokio::task::JoinSet::new();
        for (name, def) in &config.auth {
            if let Some(old) = previous.and_then(|p| p.get(name)) {
                if old.definition() == def && old.reusable() {
                    by_name.insert(name.clone(), old.clone());
                    continue;
                }
            }
            let (name, def, base_dir, policy) = (name.clone(), def.clone(), base_dir.to_path_buf(), policy.clone());
            building.spawn(async move {
                let built = Provider::build_with(&name, &def, &base_dir, &policy).await;
                (name, built)
            });
        }
        let mut errors = Vec::new();
        while let Some(joined) = building.join_next().await {
            match joined {
                Ok((name, Ok(provider))) => {
                    by_name.insert(name, Arc::new(provider));
                }
                Ok((name, Err(message))) => errors.push((name, message)),
                Err(e) => errors.push((String::new(), format!("building a provider failed: {e}"))),
            }
        }
        if errors.is_empty() {
            Ok(Providers { by_name })
        } else {
            errors.sort();
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Provider>)> {
        self.by_name.iter().map(|(name, provider)| (name.as_str(), provider))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// A route's authentication: its providers (any one may accept) and `require_claims`.
#[derive(Debug, Clone)]
pub struct RouteAuth {
    providers: Vec<Arc<Provider>>,
    required: RequiredClaims,
}

impl RouteAuth {
    /// `Ok(None)` for a public route (no `auth`). A provider name that `providers`
    /// lacks is an error, never a public route (configuration validation rules it out).
    pub fn compile(route: &Route, providers: &Providers) -> Result<Option<RouteAuth>, String> {
        if route.auth.is_empty() {
            return Ok(None);
        }
        let mut chosen = Vec::with_capacity(route.auth.len());
        for name in &route.auth {
            let provider = providers.get(name.get_ref()).ok_or_else(|| {
                format!("route `{}`: unknown auth provider `{}`", route.name.get_ref(), name.get_ref())
            })?;
            chosen.push(provider.clone());
        }
        Ok(Some(RouteAuth { providers: chosen, required: RequiredClaims::compile(&route.require_claims) }))
    }

    /// The route's provider names, in order.
    pub fn provider_names(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| p.name())
    }

    /// Tries the providers in order; the first identity that also has the required
    /// claims is the answer. Otherwise: 403 if some provider accepted the credentials
    /// (the identity lacks claims), else the first `Invalid` (401 with
    /// `error="invalid_token"`), else `Missing` (401).
    pub async fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Principal, AuthError> {
        let mut insufficient: Option<String> = None;
        let mut invalid: Option<AuthError> = None;
        for provider in &self.providers {
            match provider.authenticate(headers, query).await {
                Ok(principal) => match self.required.check(&principal.claims) {
                    Ok(()) => return Ok(principal),
                    Err(claim) => {
                        tracing::debug!(provider = provider.name(), claim, "identity lacks a required claim");
                        insufficient.get_or_insert_with(|| claim.to_owned());
                    }
                },
                Err(AuthError::Missing) => {}
                Err(e) => {
                    invalid.get_or_insert(e);
                }
            }
        }
        Err(match (insufficient, invalid) {
            (Some(claim), _) => AuthError::InsufficientClaims(claim),
            (None, Some(e)) => e,
            (None, None) => AuthError::Missing,
        })
    }

    /// Whether the route requires claims beyond a valid identity.
    pub fn requires_claims(&self) -> bool {
        !self.required.is_empty()
    }

    /// The upstream headers for an identity [`RouteAuth::check`] returned: the
    /// `forward_claims` of the provider that accepted it, or `x-consumer` for an API
    /// key. Strip client copies first ([`IdentityHeaders::strip`]), then insert these.
    pub fn upstream_headers(&self, principal: &Principal) -> Vec<(HeaderName, HeaderValue)> {
        self.providers
            .iter()
            .find(|p| p.name() == &*principal.provider)
            .map(|p| p.upstream_headers(principal))
            .unwrap_or_default()
    }
}
