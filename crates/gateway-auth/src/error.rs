//! Why a request was refused, in the terms RFC 6750 allows a client to see.

use gateway_core::{ErrorKind, GatewayError};
use http::header::{HeaderValue, WWW_AUTHENTICATE};
use http::StatusCode;

/// An authentication or authorisation failure. The texts are safe to show: they never
/// say which part of a signature check failed, never echo a token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials this route accepts were presented (401, `www-authenticate: Bearer`).
    #[error("credentials missing")]
    Missing,
    /// Credentials were presented and refused (401, `error="invalid_token"`). The text is
    /// one of a few fixed phrases such as "invalid token" or "token expired".
    #[error("{0}")]
    Invalid(&'static str),
    /// A valid identity without the claims the route requires (403,
    /// `error="insufficient_scope"`). Holds the name of the first missing claim (from the
    /// configuration, never from the token).
    #[error("insufficient claims: {0}")]
    InsufficientClaims(String),
}

impl AuthError {
    /// 401 for missing or invalid credentials, 403 for insufficient claims.
    pub fn status(&self) -> u16 {
        self.status_code().as_u16()
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => StatusCode::UNAUTHORIZED,
            AuthError::InsufficientClaims(_) => StatusCode::FORBIDDEN,
        }
    }

    /// True for the 403 case: the client is known, the route wants more.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::InsufficientClaims(_))
    }

    /// The `www-authenticate` challenge for this failure (RFC 6750 section 3).
    pub fn www_authenticate(&self) -> HeaderValue {
        match self {
            AuthError::Missing => HeaderValue::from_static("Bearer"),
            AuthError::Invalid(text) => {
                // The texts are fixed phrases of this crate, but a header must never be
                // built from something that could break it: fall back to the bare form.
                let full = format!("Bearer error=\"invalid_token\", error_description=\"{text}\"");
                if text.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ') {
                    if let Ok(value) = HeaderValue::from_str(&full) {
                        return value;
                    }
                }
                HeaderValue::from_static("Bearer error=\"invalid_token\"")
            }
            AuthError::InsufficientClaims(_) => HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
        }
    }

    /// The gateway's one error type, with the status, code and challenge of SPEC.md
    /// (`unauthorized` or `forbidden`); gRPC callers get UNAUTHENTICATED or
    /// PERMISSION_DENIED from it.
    pub fn into_gateway_error(self) -> GatewayError {
        let kind = if self.is_forbidden() { ErrorKind::Forbidden } else { ErrorKind::Unauthorized };
        let challenge = self.www_authenticate();
        GatewayError::new(kind, self.to_string()).with_header(WWW_AUTHENTICATE, challenge)
    }
}

impl From<AuthError> for GatewayError {
    fn from(e: AuthError) -> Self {
        e.into_gateway_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_challenges() {
        assert_eq!(AuthError::Missing.status(), 401);
        assert_eq!(AuthError::Missing.www_authenticate(), "Bearer");
        let expired = AuthError::Invalid("token expired");
        assert_eq!(expired.status(), 401);
        assert_eq!(expired.www_authenticate(), "Bearer error=\"invalid_token\", error_description=\"token expired\"");
        let weird = AuthError::Invalid("a \"quoted\" text");
        assert_eq!(weird.www_authenticate(), "Bearer error=\"invalid_token\"");
        let forbidden = AuthError::InsufficientClaims("scope".into());
        assert_eq!(forbidden.status(), 403);
        assert_eq!(forbidden.www_authenticate(), "Bearer error=\"insufficient_scope\"");
        let e = forbidden.into_gateway_error();
        assert_eq!(e.kind, ErrorKind::Forbidden);
        assert_eq!(e.headers[0].0, WWW_AUTHENTICATE);
        assert_eq!(AuthError::Missing.into_gateway_error().kind, ErrorKind::Unauthorized);
    }
}
