//! DNS discovery through the system resolver (`localhost` never leaves the machine).
//!
//! `cargo test -p gateway-registry --test dns`

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use gateway_registry::*;
use tokio::time::timeout;

fn addresses(service: &ServiceEndpoints) -> Vec<String> {
    service.snapshot().iter().map(|e| e.address().to_owned()).collect()
}

#[tokio::test]
async fn localhost_resolves_to_loopback_endpoints() {
    let service = ServiceEndpoints::new(
        "local",
        ServiceOptions::default(),
        Source::Dns {
            query: DnsQuery::Address { host: "localhost".into(), port: 8080 },
            scheme: Scheme::Http,
            options: DnsOptions::default(),
        },
    )
    .unwrap();
    timeout(Duration::from_secs(10), service.discovered()).await.expect("localhost resolves");
    let found = addresses(&service);
    assert!(!found.is_empty());
    for address in &found {
        assert!(address == "127.0.0.1:8080" || address == "[::1]:8080", "{found:?}");
    }
    let pick = service.pick(&PickContext::default(), &|_| true).picked().unwrap();
    assert_eq!(pick.endpoint().scheme(), Scheme::Http);
}

#[tokio::test]
async fn dns_services_from_config_take_the_listed_scheme() {
    let config = gateway_config::parse(
        "t.toml",
        r#"
        [services.grpc]
        discovery = "dns"
        dns = "localhost:50051"
        endpoints = ["h2c://localhost:50051"]

        [services.literal]
        discovery = "dns"
        dns = "127.0.0.1:9000"

        [[routes]]
        name = "g"
        path_prefix = "/g"
        service = "grpc"
        "#,
        &|_| None,
    )
    .unwrap();
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let grpc = ServiceEndpoints::from_config("grpc", &config.services["grpc"], &registry).unwrap();
    timeout(Duration::from_secs(10), grpc.discovered()).await.unwrap();
    assert!(grpc.snapshot().iter().all(|e| e.scheme() == Scheme::H2c && e.address().ends_with(":50051")));

    let literal = ServiceEndpoints::from_config("literal", &config.services["literal"], &registry).unwrap();
    timeout(Duration::from_secs(10), literal.discovered()).await.unwrap();
    assert_eq!(addresses(&literal), ["127.0.0.1:9000"]);

    // A service rebuilt with a new definition serves the old set until its first answer.
    let rebuilt = ServiceEndpoints::new(
        "literal",
        ServiceOptions { balancer: Balancer::Random, ..ServiceOptions::default() },
        Source::Dns {
            query: DnsQuery::Address { host: "127.0.0.1".into(), port: 9000 },
            scheme: Scheme::Http,
            options: DnsOptions::default(),
        },
    )
    .unwrap();
    rebuilt.inherit(&literal);
    assert!(Arc::ptr_eq(&rebuilt.snapshot()[0], &literal.snapshot()[0]));
    timeout(Duration::from_secs(10), rebuilt.discovered()).await.unwrap();
    assert!(Arc::ptr_eq(&rebuilt.snapshot()[0], &literal.snapshot()[0]), "state kept after the answer");
}

#[test]
fn dynamic_sources_need_a_runtime() {
    let built = ServiceEndpoints::new(
        "x",
        ServiceOptions::default(),
        Source::Dns {
            query: DnsQuery::Address { host: "localhost".into(), port: 80 },
            scheme: Scheme::Http,
            options: DnsOptions::default(),
        },
    );
    assert!(matches!(built, Err(BuildError::NoRuntime)));
}
