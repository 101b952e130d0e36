//! Where endpoint sets come from: the [`Discover`] notion and DNS discovery.

use std::net::{IpAddr, SocketAddr};
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

/// What a [`DnsDiscovery`] asks the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsQuery {
    /// The A and AAAA records of `host`, each address with `port`.
    Address {
        /// A DNS name or an IP address.
        host: String,
        /// The port every address gets.
        port: u16,
    },
    /// The SRV records of `name` (`_http._tcp.users.internal`): each target's A/AAAA
    /// records with the record's port and weight, the lowest priority only (see
    /// [`srv_endpoints`]).
    Srv {
        /// The SRV owner name.
        name: String,
    },
}

impl DnsDiscovery {
    /// Start resolving `host` (a DNS name or an IP address) in the background; every
    /// address becomes `scheme://address:port`. Must run inside a tokio runtime.
    pub fn spawn(host: &str, port: u16, scheme: Scheme, options: DnsOptions) -> Result<Self, DiscoveryError> {
        Self::spawn_query(DnsQuery::Address { host: host.to_owned(), port }, scheme, options)
    }

    /// Start answering `query` in the background; every address becomes
    /// `scheme://address:port`. Must run inside a tokio runtime.
    pub fn spawn_query(query: DnsQuery, scheme: Scheme, options: DnsOptions) -> Result<Self, DiscoveryError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DiscoveryError::NoRuntime)?;
        let (tx, rx) = watch::channel(None);
        let resolver = resolver();
        let task = runtime.spawn(resolve_loop(resolver, query, scheme, options, tx)).abort_handle();
        Ok(DnsDiscovery { rx, task })
    }
}

/// One SRV record with the addresses its target resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// Lower is preferred.
    pub priority: u16,
    /// Share among targets of the same priority (0-65535).
    pub weight: u16,
    /// The port the service listens on at this target.
    pub port: u16,
    /// The target's A/AAAA addresses (empty when it did not resolve).
    pub addresses: Vec<IpAddr>,
}

/// The endpoints SRV records name (RFC 2782): only targets of the lowest priority that
/// has at least one resolved address are used (higher priorities are the fallback for
/// when none of those resolve); each address gets its record's port, and the record's
/// weight becomes the endpoint weight, scaled into 1..=[`crate::MAX_WEIGHT`] keeping
/// proportions (weight 0, "rarely", becomes 1). Sorted by address, without duplicates.
pub fn srv_endpoints(targets: &[SrvTarget], scheme: Scheme) -> Vec<Discovered> {
    let Some(priority) = targets.iter().filter(|t| !t.addresses.is_empty()).map(|t| t.priority).min() else {
        return Vec::new();
    };
    let chosen: Vec<&SrvTarget> = targets.iter().filter(|t| t.priority == priority).collect();
    let max = chosen.iter().map(|t| u32::from(t.weight)).max().unwrap_or(0);
    let limit = crate::MAX_WEIGHT;
    let weight = |w: u16| -> u32 {
        let w = u32::from(w);
        let scaled = if max > limit { (u64::from(w) * u64::from(limit) / u64::from(max)) as u32 } else { w };
        scaled.clamp(1, limit)
    };
    let mut out: Vec<Discovered> = chosen
        .iter()
        .flat_map(|t| {
            t.addresses.iter().filter_map(move |ip| {
                let endpoint = Endpoint::from_socket_addr(scheme, SocketAddr::new(*ip, t.port)).ok()?;
                Some(Discovered { endpoint, weight: Some(weight(t.weight)), metadata: None })
            })
        })
        .collect();
    out.sort_by(|a, b| a.endpoint.address().cmp(b.endpoint.address()));
    out.dedup_by(|a, b| a.endpoint == b.endpoint);
    out
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

/// An answer: the endpoints, and until when they are valid.
type Answer = (Vec<Discovered>, std::time::Instant);

async fn lookup_addresses(resolver: &TokioResolver, host: &str) -> Result<(Vec<IpAddr>, std::time::Instant), String> {
    let lookup = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
    Ok((lookup.iter().collect(), lookup.valid_until()))
}

async fn lookup(resolver: &TokioResolver, query: &DnsQuery, scheme: Scheme) -> Result<Answer, String> {
    match query {
        DnsQuery::Address { host, port } => {
            let (addresses, valid_until) = lookup_addresses(resolver, host).await?;
            let mut endpoints: Vec<Discovered> = addresses
                .into_iter()
                .filter_map(|ip| Endpoint::from_socket_addr(scheme, SocketAddr::new(ip, *port)).ok())
                .map(Discovered::from)
                .collect();
            endpoints.sort_by(|a, b| a.endpoint.address().cmp(b.endpoint.address()));
            endpoints.dedup();
            Ok((endpoints, valid_until))
        }
        DnsQuery::Srv { name } => {
            let srv = resolver.srv_lookup(name.as_str()).await.map_err(|e| e.to_string())?;
            let mut valid_until = srv.as_lookup().valid_until();
            let mut targets = Vec::new();
            for record in srv.iter() {
                let target = record.target();
                if target.is_root() {
                    continue; // "." : the service is decidedly not available there
                }
                let host = target.to_ascii();
                let addresses = match lookup_addresses(resolver, &host).await {
                    Ok((addresses, until)) => {
                        valid_until = valid_until.min(until);
                        addresses
                    }
                    Err(e) => {
                        tracing::warn!(srv = %name, target = %host, error = %e, "SRV target does not resolve");
                        Vec::new()
                    }
                };
                targets.push(SrvTarget {
                    priority: record.priority(),
                    weight: record.weight(),
                    port: record.port(),
                    addresses,
                });
            }
            Ok((srv_endpoints(&targets, scheme), valid_until))
        }
    }
}

async fn resolve_loop(
    resolver: TokioResolver,
    query: DnsQuery,
    scheme: Scheme,
    options: DnsOptions,
    tx: watch::Sender<Option<EndpointSet>>,
) {
    let name = match &query {
        DnsQuery::Address { host, .. } => host.clone(),
        DnsQuery::Srv { name } => format!("srv://{name}"),
    };
    let mut retry = options.min_ttl;
    loop {
        let wait = match lookup(&resolver, &query, scheme).await {
            Ok((endpoints, _)) if endpoints.is_empty() => {
                tracing::warn!(host = %name, "DNS answer has no address; keeping the last good answer");
                backoff(&mut retry, options.max_retry)
            }
            Ok((endpoints, valid_until)) => {
                retry = options.min_ttl;
                let set: EndpointSet = Arc::from(endpoints);
                tx.send_if_modified(|current| {
                    let changed = current.as_deref() != Some(&*set);
                    if changed {
                        tracing::info!(host = %name, addresses = set.len(), "DNS endpoints changed");
                        *current = Some(set);
                    }
                    changed
                });
                let ttl = valid_until.saturating_duration_since(std::time::Instant::now());
                ttl.clamp(options.min_ttl, options.max_ttl.max(options.min_ttl))
            }
            Err(e) => {
                tracing::warn!(host = %name, error = %e, "DNS lookup failed; keeping the last good answer");
                backoff(&mut retry, options.max_retry)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}
