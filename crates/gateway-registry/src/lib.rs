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
//! - Sources ([`Source`], [`Discover`]): static lists, DNS A/AAAA and SRV
//!   ([`DnsDiscovery`], [`DnsQuery`], [`srv_endpoints`]), and the registry
//!   ([`MemoryRegistry`]) that instances join through [`registry_api`].
//! - Stores ([`Registry`]): `memory` ([`MemoryRegistry`], this gateway alone) or `etcd`
//!   ([`EtcdRegistry`]: keys bound to leases of `registry.ttl`, mirrored into a local
//!   [`MemoryRegistry`] by a watch on the prefix, so every gateway sharing it serves every
//!   instance; while etcd is unreachable the mirror keeps the last known instances and
//!   [`Registry::status`] says degraded).
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
//! Active checks of `kind = "grpc"` call `grpc.health.v1.Health/Check` over HTTP/2 (h2c,
//! or TLS for `https` endpoints) and pass on `SERVING`. `https` endpoints are probed with
//! the TLS settings the caller puts in [`HealthCheckOptions::tls`] (the gateway passes the
//! service's own), else by a TCP connect.
//!
//! Not here yet: TLS and authentication to etcd.
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
mod etcd;
mod health;
mod registry;
mod service;
mod state;
mod store;
#[cfg(test)]
mod tests;
mod util;

pub use api::{registry_api, MAX_REGISTRATION_BYTES};
pub use balance::{Balancer, HashOn, Pick, PickContext, VIRTUAL_NODES};
pub use discover::{
    srv_endpoints, Discover, Discovered, DiscoveryError, DnsDiscovery, DnsOptions, DnsQuery, EndpointSet, SrvTarget,
    StaticDiscovery,
};
pub use endpoint::{Endpoint, EndpointError, Scheme};
pub use etcd::{EtcdOptions, EtcdRegistry};
pub use health::{HealthCheckKind, HealthCheckOptions, ProbeTls};
pub use registry::{
    valid_name, InstanceView, MemoryRegistry, Registered, RegistryDiscovery, RegistryError, ServiceSummary, MAX_WEIGHT,
};
pub use service::{BuildError, EndpointCounts, ServiceEndpoints, ServiceOptions, Source};
pub use state::{EndpointState, Metadata, Outcome, PassiveHealth, Picked};
pub use store::{Registry, StoreStatus};
