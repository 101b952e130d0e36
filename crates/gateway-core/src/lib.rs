//! `gateway-core`: the types every other gateway crate shares.
//!
//! - [`GatewayError`] and its one mapping to a response ([`GatewayError::into_response`]):
//!   the JSON body of SPEC.md, or the gRPC form for gRPC callers.
//! - [`Body`], the concrete response body of the data path: an upstream stream or bytes
//!   the gateway made itself, without boxing.
//! - [`RequestId`], taken from a sane `x-request-id` or generated.
//! - [`Principal`], who a request comes from once authenticated.
//! - [`Rfc3339`], timestamps for logs and the admin API.
//!
//! ```
//! use gateway_core::{ErrorKind, GatewayError, RequestId};
//! let id = RequestId::generate();
//! let resp = GatewayError::new(ErrorKind::RouteNotFound, "no route").into_response(&id, false);
//! assert_eq!(resp.status(), 404);
//! ```

mod body;
mod error;
mod principal;
mod request_id;
mod time;
mod util;

pub use body::{full, Body, BoxError};
pub use error::{Blame, ErrorKind, GatewayError};
pub use principal::Principal;
pub use request_id::{RequestId, X_REQUEST_ID};
pub use time::Rfc3339;
pub use util::{cookie, random_u64};
