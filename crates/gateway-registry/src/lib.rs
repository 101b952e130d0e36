//! `gateway-registry`: where a service's endpoints come from, whether they are healthy,
//! and which one a call goes to.
//!
//! - [`ServiceEndpoints`] is one service's live endpoint set: an `ArcSwap` snapshot of
//!   [`EndpointState`]s that discovery replaces (an endpoint that stays keeps its state),
//!   the load balancer over it ([`Balancer`]: round robin, weighted when weights differ;
//!   least request and peak EWMA by power of two choices; random; consistent hash on a
//!   header, cookie or the client IP), passive health (outlier ejection on connect
//!   failures, [`PassiveHealth`]) and active health checks ([`HealthCheckOptions`]).
//!   The proxy never waits on discovery: a pick loads the snapshot and chooses.
//! - Sources ([`Source`], [`Discover`]): static lists, DNS A/AAAA ([`DnsDiscovery`]),
//!   and the registry ([`MemoryRegistry`]) that instances join through [`registry_api`].
//!
//! Endpoints start healthy: an endpoint serves until active checks prove it bad
//! (`unhealthy_threshold` failures in a row) and comes back after `healthy_threshold`
//! passes. Only endpoints that are healthy, not ejected, and admitted by the caller's
//! circuit breaker are picked; when every endpoint is unhealthy or ejected, a pick
//! answers [`Pick::AllUnhealthy`] (503) unless [`ServiceOptions::panic_mode`] is on.
//!
//! Endpoints registered in the registry are `http` unless their metadata says
//! `"scheme": "https"` or `"h2c"`; `"weight"` (1-1000) weights them.
//!
//! Not here yet: the etcd store; DNS SRV records; gRPC health checks (`kind = "grpc"`
//! and `https` endpoints are checked by a TCP connect, since TLS settings live in the
//! proxy crate).
//!
//! ```
//! use gateway_registry::{Endpoint, Outcome, Pick, PickContext, ServiceEndpoints};
//!
//! let users = ServiceEndpoints::from_endpoints(
//!     "users",
//!     vec![Endpoint::parse("http://127.0.0.1:9001").unwrap(), Endpoint::parse("http://127.0.0.1:9002").unwrap()],
//! );
//! let admit = |_: &gateway_registry::EndpointState| true; // the circuit breaker's say
//! let Pick::Picked(call) = users.pick(&PickContext::default(), &admit) else { panic!("no endpoint") };
//! assert_eq!(call.address(), "127.0.0.1:9001");
//! assert_eq!(call.state().in_flight(), 1);
//! // ... send the request to call.endpoint(), then:
//! users.report(call.state(), Outcome::Response { latency: call.elapsed() });
//! drop(call); // the call is over
//! let next = users.pick(&PickContext::default(), &admit).picked().unwrap();
//! assert_eq!(next.address(), "127.0.0.1:9002");
//! assert_eq!(users.counts().healthy, 2);
//! ```

#![forbid(unsafe_code)]

mod api;
mod balance;
mod discover;
mod endpoint;
mod health;
mod registry;
mod service;
mod state;
#[cfg(test)]
mod tests;
mod util;

pub use api::{registry_api, MAX_REGISTRATION_BYTES};
pub use balance::{Balancer, HashOn, Pick, PickContext, VIRTUAL_NODES};
pub use discover::{Discover, Discovered, DiscoveryError, DnsDiscovery, DnsOptions, EndpointSet, StaticDiscovery};
pub use endpoint::{Endpoint, EndpointError, Scheme};
pub use health::{HealthCheckKind, HealthCheckOptions};
pub use registry::{
    valid_name, InstanceView, MemoryRegistry, Registered, RegistryDiscovery, RegistryError, ServiceSummary, MAX_WEIGHT,
};
pub use service::{BuildError, EndpointCounts, ServiceEndpoints, ServiceOptions, Source};
pub use state::{EndpointState, Metadata, Outcome, PassiveHealth, Picked};
