//! Black-box tests of the gateway over real sockets. One test binary: every module
//! shares the fixtures of `gateway-tests`.
#![allow(clippy::unwrap_used)]

mod aggregate;
mod attacks;
mod auth;
mod connections;
mod events;
mod framing;
mod grpc;
mod h2_attacks;
mod lifecycle;
mod observability;
mod protocols;
mod proxy;
mod ratelimit;
mod registry;
mod resilience;
mod routing;
mod traffic;
