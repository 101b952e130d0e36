//! Where endpoint sets come from: the [`Discover`] notion and DNS discovery.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::state::Metadata;
use crate::{Endpoint, Scheme};

/// One endpoint as a discovery source reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// Address and scheme.
    pub endpoint: Endpoint,
    /// Balancing weight (1 when `None`).
    pub weight: Option<u32>,
    /// What a registration carried.
    pub metadata: Option<Arc<Metadata>>,
}

impl From<Endpoint> for Discovered {
    fn from(endpoint: Endpoint) -> Self {
        Discovered { endpoint, weight: None, metadata: None }
    }
}

/// A complete endpoint set of one service, as a source last learned it.
pub type EndpointSet = Arc<[Discovered]>;

/// A source of endpoint sets: static lists, DNS, the registry, or anything else.
///
/// A source publishes complete sets through a watch channel, so whoever follows it
/// (a [`crate::ServiceEndpoints`]) always sees the latest and never waits on the
/// source in the request path. `None` means the source has no answer yet (a DNS
/// name before its first resolution). Dropping the source stops whatever it runs.
pub trait Discover: Send + Sync + 'static {
    /// The current set and every later one.
    fn subscribe(&self) -> watch::Receiver<Option<EndpointSet>>;
}

/// A fixed list (`discovery = "static"`).
pub struct StaticDiscovery {
    tx: watch::Sender<Option<EndpointSet>>,
}

impl StaticDiscovery {
    /// A source that always answers `endpoints`.
    pub fn new(endpoints: Vec<Discovered>) -> Self {
        StaticDiscovery { tx: watch::Sender::new(Some(Arc::from(endpoints))) }
    }
}

impl Discover for StaticDiscovery {
    fn subscribe(&self) -> watch::Receiver<Option<EndpointSet>> {
        self.tx.subscribe()
    }
}

/// Bounds on how often a DNS name is resolved again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOptions {
    /// Re-resolve no sooner than this, whatever the record TTL says.
    pub min_ttl: Duration,
    /// Re-resolve at least this often.
    pub max_ttl: Duration,
    /// The longest wait between retries while the resolver fails (the first is `min_ttl`, then doubling).
    pub max_retry: Duration,
}

impl Default for DnsOptions {
    /// TTL clamped to 1 s..5 min; failed lookups retried after 1 s, doubling to 30 s.
    fn default() -> Self {
        DnsOptions {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            max_retry: Duration::from_secs(30),
        }
    }
}

/// Why a discovery source could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Background tasks need a tokio runtime.
    #[error("discovery needs a tokio runtime")]
    NoRuntime,
}

/// `discovery = "dns"`: the A and AAAA records of a name, re-resolved when their TTL
/// runs out (clamped by [`DnsOptions`]). When the resolver fails (timeout, SERVFAIL,
/// NXDOMAIN, no records), the last good answer is kept and the lookup retried with
/// back-off. The resolver follows `/etc/resolv.conf` and `/etc/hosts`; `localhost`
/// always resolves to 127.0.0.1 and ::1 without asking a server (RFC 6761).
pub struct DnsDiscovery {
    rx: watch::Receiver<Option<EndpointSet>>,
    task: AbortHandle,
}

impl DnsDiscovery {
    /// Start resolving `host` (a DNS name or an IP address) in the background; every
    /// address becomes `scheme://address:port`. Must run inside a tokio runtime.
    pub fn spawn(host: &str, port: u16, scheme: Scheme, options: DnsOptions) -> Result<Self, DiscoveryError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DiscoveryError::NoRuntime)?;
        let (tx, rx) = watch::channel(None);
        let resolver = resolver();
        let host = host.to_owned();
        let task = runtime.spawn(resolve_loop(resolver, host, port, scheme, options, tx)).abort_handle();
        Ok(DnsDiscovery { rx, task })
    }
}

impl Discover for DnsDiscovery {
    fn subscribe(&self) -> watch::Receiver<Option<EndpointSet>> {
        self.rx.clone()
    }
}

impl Drop for DnsDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The system's resolver; without a readable `/etc/resolv.conf`, one that knows only
/// `/etc/hosts` and `localhost` (never a public resolver the operator did not choose).
fn resolver() -> TokioResolver {
    let mut builder = match TokioResolver::builder_tokio() {
        Ok(builder) => builder,
        Err(e) => {
            tracing::warn!(error = %e, "no system DNS configuration; resolving from /etc/hosts only");
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![]),
                TokioConnectionProvider::default(),
            )
        }
    };
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build()
}

/// The current retry delay; doubles the next one up to `max`.
fn backoff(retry: &mut Duration, max: Duration) -> Duration {
    let now = *retry;
    *retry = (now * 2).min(max);
    now
}

async fn resolve_loop(
    resolver: TokioResolver,
    host: String,
    port: u16,
    scheme: Scheme,
    options: DnsOptions,
    tx: watch::Sender<Option<EndpointSet>>,
) {
    let mut retry = options.min_ttl;
    loop {
        let wait = match resolver.lookup_ip(host.as_str()).await {
            Ok(lookup) => {
                let mut endpoints: Vec<Endpoint> = lookup
                    .iter()
                    .filter_map(|ip| Endpoint::from_socket_addr(scheme, SocketAddr::new(ip, port)).ok())
                    .collect();
                endpoints.sort_by(|a, b| a.address().cmp(b.address()));
                endpoints.dedup();
                if endpoints.is_empty() {
                    tracing::warn!(%host, "DNS answer has no address; keeping the last good answer");
                    backoff(&mut retry, options.max_retry)
                } else {
                    retry = options.min_ttl;
                    let set: EndpointSet = endpoints.into_iter().map(Discovered::from).collect();
                    tx.send_if_modified(|current| {
                        let changed = current.as_deref() != Some(&*set);
                        if changed {
                            tracing::info!(%host, addresses = set.len(), "DNS endpoints changed");
                            *current = Some(set);
                        }
                        changed
                    });
                    let ttl = lookup.valid_until().saturating_duration_since(std::time::Instant::now());
                    ttl.clamp(options.min_ttl, options.max_ttl.max(options.min_ttl))
                }
            }
            Err(e) => {
                tracing::warn!(%host, error = %e, "DNS lookup failed; keeping the last good answer");
                backoff(&mut retry, options.max_retry)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}
