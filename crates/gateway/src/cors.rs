//! CORS per route: preflights answered by the gateway (before authentication, which a
//! browser's preflight never carries), and the allow headers added to actual responses.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use gateway_core::Body;

const ORIGIN: HeaderName = header::ORIGIN;

/// A route's compiled CORS policy.
#[derive(Debug)]
pub struct CorsPolicy {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

impl CorsPolicy {
    pub fn compile(cors: &gateway_config::Cors, route_methods: &[String]) -> Result<CorsPolicy, String> {
        let any_origin = cors.allow_origins.iter().any(|o| o == "*");
        if any_origin && cors.allow_credentials {
            return Err("cors: allow_origins = [\"*\"] cannot be combined with allow_credentials".into());
        }
        let origins = cors
            .allow_origins
            .iter()
            .filter(|o| *o != "*")
            .map(|o| HeaderValue::from_str(o.trim_end_matches('/')).map_err(|_| format!("cors: bad origin `{o}`")))
            .collect::<Result<_, _>>()?;
        let methods = if cors.allow_methods.is_empty() { route_methods } else { &cors.allow_methods };
        let list = |items: &[String], what: &str| -> Result<Option<HeaderValue>, String> {
            if items.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&items.join(", ")).map(Some).map_err(|_| format!("cors: bad {what} list"))
        };
        Ok(CorsPolicy {
            any_origin,
            origins,
            allow_methods: list(methods, "method")?,
            allow_headers: list(&cors.allow_headers, "header")?,
            expose_headers: list(&cors.expose_headers, "expose header")?,
            credentials: cors.allow_credentials,
            max_age: cors.max_age.map(|d| HeaderValue::from(d.get().as_secs())),
        })
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }

    /// The answer to a preflight from an allowed origin; `None` lets the request go on
    /// (to be refused or served like any other).
    pub fn preflight(&self, headers: &HeaderMap) -> Option<Response<Body>> {
        let origin = headers.get(ORIGIN).filter(|o| self.allows(o))?;
        let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        if let Some(methods) = &self.allow_methods {
            let asked = requested.to_str().ok()?;
            let listed = methods.to_str().ok()?.split(", ").any(|m| m == asked);
            if !listed {
                return None;
            }
        }
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        self.allow_origin(out, origin);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone().unwrap_or_else(|| requested.clone()),
        );
        match (&self.allow_headers, headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS)) {
            (Some(allowed), _) => {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone());
            }
            (None, Some(asked)) => {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            (None, None) => {}
        }
        if let Some(max_age) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        Some(response)
    }

    /// Add the allow headers to an actual response for an allowed origin.
    pub fn decorate(&self, origin: &HeaderValue, response: &mut HeaderMap) {
        if self.allows(origin) && !response.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            self.allow_origin(response, origin);
            if let Some(expose) = &self.expose_headers {
                response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
    }

    fn allow_origin(&self, out: &mut HeaderMap, origin: &HeaderValue) {
        if self.any_origin {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            out.append(header::VARY, HeaderValue::from_static("origin"));
        }
        if self.credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

/// A browser preflight: OPTIONS with an Origin and the method it wants to send.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> Option<Method> {
    if method != Method::OPTIONS || !headers.contains_key(ORIGIN) {
        return None;
    }
    headers.get(header::ACCESS_CONTROL_REQUEST_METHOD).and_then(|m| Method::from_bytes(m.as_bytes()).ok())
}
