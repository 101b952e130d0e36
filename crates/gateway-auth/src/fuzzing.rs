//! For the property tests (`props.rs`) and the `jwt` fuzz target in `fuzz/`: one route
//! whose providers are a JWT secret and an API key (`props.toml`), checked without an
//! async caller. Not part of the crate's interface.

use std::sync::OnceLock;

use gateway_core::Principal;
use http::HeaderMap;

use crate::{AuthError, Providers, RouteAuth};

/// The secret of the JWT provider in `props.toml` (HS256, issuer `gw`).
pub const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes!";

/// What the route of `props.toml` answers to a request with `headers`.
///
/// # Panics
/// Never on `headers`; only if `props.toml` itself stopped being a valid route.
pub fn check(headers: &HeaderMap) -> Result<Principal, AuthError> {
    static ROUTE: OnceLock<(tokio::runtime::Runtime, RouteAuth)> = OnceLock::new();
    let (runtime, route) = ROUTE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let config = gateway_config::parse("props.toml", include_str!("props.toml"), &|_| None).expect("props.toml");
        let providers =
            runtime.block_on(Providers::build(&config, std::path::Path::new("."), None)).expect("providers");
        let route = RouteAuth::compile(&config.routes[0], &providers).expect("compiles").expect("the route has auth");
        (runtime, route)
    });
    runtime.block_on(route.check(headers, None))
}
