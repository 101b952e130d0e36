//! `gateway-traffic`: the building blocks of a route's traffic management, pure and tested
//! alone; the proxy in `gateway` wires them into the request path.
//!
//! - [`split`]: which service of a weighted `split` a request goes to, optionally sticky on a
//!   header or cookie.
//! - [`mirror`]: which requests are copied to a shadow service, and a bounded copy of their body.
//! - [`headers`]: `request_headers` / `response_headers` transforms with placeholders,
//!   compiled once.
//! - [`cache`]: a per-route response cache bounded by entries and bytes, with request coalescing.
//! - [`compress`]: whether to compress an answer (gzip, br, zstd) and a streaming body that does.
//!
//! Everything is compiled from the route's configuration once per reload; per request the
//! work is a lookup or two and no allocation beyond what the answer needs.
//!
//! ```
//! use gateway_config::schema::SplitTarget;
//! use gateway_traffic::split::Split;
//! use http::HeaderMap;
//! use serde_spanned::Spanned;
//!
//! let targets = [
//!     SplitTarget { service: Spanned::new(0..0, "checkout".to_owned()), weight: 90 },
//!     SplitTarget { service: Spanned::new(0..0, "checkout-v2".to_owned()), weight: 10 },
//! ];
//! let split = Split::compile(&targets, Some("header:x-user-id")).unwrap();
//! let mut headers = HeaderMap::new();
//! headers.insert("x-user-id", "user-42".parse().unwrap());
//! // The same user always lands on the same side, whatever the random number.
//! let side = split.pick(&headers, gateway_traffic::random_u64());
//! assert_eq!(split.pick(&headers, gateway_traffic::random_u64()), side);
//! ```

#![forbid(unsafe_code)]

pub mod cache;
pub mod compress;
pub mod headers;
pub mod mirror;
pub mod split;
mod util;

#[cfg(test)]
mod testutil;

pub use util::random_u64;

#[cfg(test)]
mod tests {
    /// The bodies must fit `gateway_core::Body::boxed` (`Send + 'static`) around the gateway's
    /// own body types.
    #[test]
    fn bodies_are_send() {
        fn send<T: Send + 'static>() {}
        send::<crate::compress::CompressedBody<gateway_core::Body>>();
        send::<crate::mirror::MirrorBody<gateway_core::Body>>();
        send::<crate::mirror::BodyCopy>();
        send::<crate::cache::PrefixedBody<gateway_core::Body>>();
        send::<crate::cache::MissTicket>();
        send::<crate::cache::CacheStore>();
        send::<crate::split::Split>();
        send::<crate::headers::CompiledTransform>();
    }
}
