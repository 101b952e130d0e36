//! `gateway`: the binary's library half. It composes the other crates into a running
//! gateway: listeners on per-core runtimes, the `Runtime` swapped on reload, the admin
//! listener, graceful shutdown, and the demo backends.
//!
//! ```no_run
//! # async fn f() {
//! let handle = gateway::start(std::path::Path::new("gateway.toml")).await.expect("starts");
//! println!("proxy on {}, admin on {}", handle.addr, handle.admin_addr);
//! handle.shutdown().await;
//! # }
//! ```

mod access_log;
mod admin;
mod aggregate;
mod conn_limit;
mod cors;
pub mod demo;
mod idle;
mod keepalive;
mod publish;
mod runtime;
mod server;
mod service;
mod strict;
mod subscriptions;
mod tls;
mod upstream;

/// The raw-input parsers, for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::strict::{HeadScanner, HeadVerdict, Verdicts};
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use gateway_admin::{AdminState, ConfigStatus};
use gateway_config::{Config, ConfigError};
use gateway_router::RouteTable;
use gateway_telemetry::Metrics;
use tokio::sync::watch;

pub use runtime::{BuildEnv, Runtime};

/// State every worker shares.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    /// TLS termination while `server.tls` is set; a reload may turn it on or off.
    pub tls: arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>,
    /// Instances registered through the registry API (`memory` or `etcd` store); lives across reloads.
    pub registry: gateway_registry::Registry,
    /// The tokio runtimes serving this gateway (`main`, `worker-N`), for their metrics.
    pub runtimes: Mutex<Vec<(String, tokio::runtime::Handle)>>,
    /// Open client connections, counted for `server.max_connections[_per_client]`.
    pub connections: Arc<conn_limit::ConnectionLimits>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", gateway_config::ConfigErrors(.0.clone()))]
    Config(Vec<ConfigError>),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// A validated configuration with its compiled route table.
pub struct Loaded {
    pub config: Config,
    pub routes: RouteTable,
    pub hash: u64,
    /// The certificates of `server.tls`, read and checked against their keys.
    pub certificates: Option<tls::Certificates>,
}

/// Read, validate and compile `path`; `Ok(None)` when its content hash is `previous`.
/// Route table errors (templates, unreachable routes) point at the route's position.
pub fn load(path: &Path, previous: Option<u64>) -> Result<Option<Loaded>, Vec<ConfigError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError::at_start(&file, format!("cannot read the configuration file: {e}"))])?;
    let config = gateway_config::parse(&file, &text, &|var| std::env::var(var).ok())?;
    // The files the configuration names (API keys, public keys) are part of its content:
    // a changed key file is a changed configuration, an unchanged one is no reload.
    let base = config_dir(path);
    let mut content = text.clone();
    for named in named_files(&config, &base) {
        content.push('\0');
        content.push_str(&std::fs::read_to_string(&named).unwrap_or_default());
    }
    let hash = gateway_config::content_hash(&content);
    if previous == Some(hash) {
        return Ok(None);
    }
    let routes = RouteTable::compile(&config).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| {
                let route = &config.routes[e.route];
                let span = route.path.as_ref().or(route.path_prefix.as_ref()).map_or(route.name.span(), |p| p.span());
                ConfigError::at_offset(
                    &file,
                    &text,
                    span.start,
                    format!("route `{}`: {}", route.name.get_ref(), e.message),
                )
            })
            .collect::<Vec<_>>()
    })?;
    let certificates = match &config.server.tls {
        None => None,
        Some(setting) => Some(tls::Certificates::load(setting, &base).map_err(|message| {
            let offset = text.find("tls").unwrap_or(0);
            vec![ConfigError::at_offset(&file, &text, offset, message)]
        })?),
    };
    Ok(Some(Loaded { config, routes, hash, certificates }))
}

/// Files whose content the configuration takes in at build time: API key files and JWT
/// public keys (certificates have their own, lighter reload).
fn named_files(config: &Config, base: &Path) -> Vec<PathBuf> {
    config
        .auth
        .values()
        .flat_map(|provider| [&provider.keys_file, &provider.public_key_file])
        .flatten()
        .map(|file| base.join(file))
        .collect()
}

/// Relative paths in the configuration are relative to its directory.
fn config_dir(path: &Path) -> PathBuf {
    path.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// How many worker runtimes `server.workers` asks for.
fn worker_count(config: &Config) -> usize {
    match config.server.workers {
        0 => std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        n => n,
    }
}

struct Control {
    shared: Arc<Shared>,
    admin: AdminState,
    path: PathBuf,
    workers: usize,
    hash: Mutex<Option<u64>>,
    version: AtomicU64,
    reloading: tokio::sync::Mutex<()>,
    /// The listener's SNI resolver; reloads swap the certificates it holds.
    certs: Mutex<Option<Arc<tls::CertResolver>>>,
    /// One channel per worker: a changed `server.listen` sends each its new listener.
    rebind: Vec<tokio::sync::mpsc::UnboundedSender<std::net::TcpListener>>,
    /// The address the workers accept on now.
    addr: Mutex<SocketAddr>,
    /// Queue consumers; kept across reloads while their definitions hold.
    subscriptions: Mutex<Vec<subscriptions::Running>>,
}

impl Control {
    /// Swap the certificates, or turn TLS on or off, for connections accepted from now on.
    fn apply_tls(
        &self,
        certificates: Option<tls::Certificates>,
        tls_on: Option<(Arc<tls::CertResolver>, tokio_rustls::TlsAcceptor)>,
    ) {
        let mut current = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        match (tls_on, certificates) {
            (Some((resolver, acceptor)), _) => {
                *current = Some(resolver);
                self.shared.tls.store(Some(Arc::new(acceptor)));
                tracing::info!("TLS turned on for new connections");
            }
            (None, Some(certs)) => {
                if let Some(resolver) = current.as_ref() {
                    resolver.replace(certs);
                }
            }
            (None, None) => {
                if current.take().is_some() {
                    self.shared.tls.store(None);
                    tracing::info!("TLS turned off for new connections");
                }
            }
        }
    }

    /// Hand each worker its listener on the new address; each drops its old one (which
    /// stops accepting) while the connections it accepted finish as they would.
    fn apply_listeners(&self, listeners: Vec<std::net::TcpListener>) {
        if let Ok(addr) = listeners[0].local_addr() {
            *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = addr;
            tracing::info!(%addr, "listening on the new address");
        }
        for (worker, listener) in self.rebind.iter().zip(listeners) {
            let _ = worker.send(listener);
        }
    }

    fn subscription_metrics(&self) -> Vec<(String, Arc<gateway_events::SubscriptionMetrics>)> {
        subscriptions::metrics(&self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A failed reload: counted, reported in the status, logged once; nothing else changes.
    fn fail_reload(&self, errors: &[ConfigError]) {
        self.shared.metrics.reload(false);
        let mut status = self.admin.config_status();
        status.last_error = errors.first().map(ToString::to_string);
        self.admin.set_config_status(status);
        for e in errors {
            tracing::error!(event = "reload", result = "error", error = %e, "configuration reload failed; the previous configuration keeps serving");
        }
    }

    /// Reload and report the version now serving (an unchanged file keeps its version).
    async fn reload_now(&self) -> Result<u64, Vec<ConfigError>> {
        let version = self.reload().await?;
        Ok(version.unwrap_or_else(|| self.version.load(Ordering::SeqCst)))
    }

    /// Reload from the file: all or nothing. `Ok(None)` when the content did not change.
    async fn reload(&self) -> Result<Option<u64>, Vec<ConfigError>> {
        let _one_at_a_time = self.reloading.lock().await;
        let previous_hash = *self.hash.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&path, previous_hash))
            .await
            .unwrap_or_else(|e| Err(vec![ConfigError::at_start("reload", format!("reload task failed: {e}"))]));
        let loaded = match loaded {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return Ok(None),
            Err(errors) => {
                self.fail_reload(&errors);
                return Err(errors);
            }
        };
        let old = self.shared.runtime.load_full();
        if loaded.config.admin.listen != old.config.admin.listen {
            tracing::warn!("admin.listen changes take effect at the next restart");
        }
        // A new proxy address is bound now, before anything changes: if it cannot be,
        // the reload fails and the old listeners keep serving.
        let listen = loaded.config.server.listen;
        let bound = *self.addr.lock().unwrap_or_else(|e| e.into_inner());
        let listeners = if listen == old.config.server.listen || listen == bound {
            None
        } else {
            match server::bind_listeners(listen, self.workers) {
                Ok(listeners) => Some(listeners),
                Err(e) => {
                    let file = self.path.display().to_string();
                    let errors = vec![ConfigError::at_start(&file, format!("cannot listen on {listen}: {e}"))];
                    self.fail_reload(&errors);
                    return Err(errors);
                }
            }
        };
        // TLS turned on: its server configuration is built now, for the same reason.
        let tls_running = self.certs.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        let (certificates, tls_on) = match (loaded.certificates, tls_running) {
            (Some(certs), false) => {
                let resolver = Arc::new(tls::CertResolver::new(certs));
                match tls::server_config(resolver.clone()) {
                    Ok(config) => (None, Some((resolver, tokio_rustls::TlsAcceptor::from(config)))),
                    Err(e) => {
                        let errors = vec![ConfigError::at_start(&self.path.display().to_string(), e)];
                        self.fail_reload(&errors);
                        return Err(errors);
                    }
                }
            }
            (certificates, _) => (certificates, None),
        };
        self.admin.set_token(loaded.config.admin.token.clone());
        let running = &old.config.registry;
        if loaded.config.registry.store != running.store || loaded.config.registry.etcd != running.etcd {
            tracing::warn!("registry.store and registry.etcd changes take effect at the next restart");
        }
        self.shared.registry.set_ttl(loaded.config.registry.ttl.get());
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        let base_dir = config_dir(&self.path);
        let env = BuildEnv {
            base_dir: &base_dir,
            registry: self.shared.registry.local(),
            metrics: &self.shared.metrics,
            workers: self.workers,
        };
        let runtime = match Runtime::build(loaded.config, loaded.routes, version, Some(&old), &env).await {
            Ok(runtime) => runtime,
            Err(messages) => {
                let file = self.path.display().to_string();
                let errors: Vec<ConfigError> = messages.into_iter().map(|m| ConfigError::at_start(&file, m)).collect();
                self.fail_reload(&errors);
                return Err(errors);
            }
        };
        let runtime = Arc::new(runtime);
        self.shared.runtime.store(runtime.clone());
        self.apply_tls(certificates, tls_on);
        if let Some(listeners) = listeners {
            self.apply_listeners(listeners);
        }
        subscriptions::reconcile(
            &mut self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()),
            &runtime,
            &self.shared,
        );
        *self.hash.lock().unwrap_or_else(|e| e.into_inner()) = Some(loaded.hash);
        self.shared.metrics.reload(true);
        self.admin.set_config_status(loaded_now(version));
        tracing::info!(event = "reload", result = "ok", version, "configuration reloaded");
        Ok(Some(version))
    }
}

/// A running gateway.
pub struct GatewayHandle {
    /// The proxy listener's address (useful when the config asked for port 0).
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    control: Arc<Control>,
    shutdown: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    admin_task: tokio::task::JoinHandle<()>,
    _watchers: Vec<gateway_config::ConfigWatcher>,
}

/// The admin API's status of configuration `version`, loaded now.
fn loaded_now(version: u64) -> ConfigStatus {
    ConfigStatus { version, loaded_at: gateway_core::Rfc3339::now().to_string(), last_error: None }
}

/// Load `config_path`, bind the listeners, start the workers and the admin listener,
/// and watch the file for changes. Must be called inside a tokio runtime, which then
/// runs the admin listener and reloads.
pub async fn start(config_path: &Path) -> Result<GatewayHandle, StartError> {
    let loaded = load(config_path, None)
        .map_err(StartError::Config)?
        .ok_or_else(|| StartError::Config(vec![ConfigError::at_start(&config_path.display().to_string(), "empty")]))?;
    let metrics = Metrics::new();
    let workers = worker_count(&loaded.config);
    let listen = loaded.config.server.listen;
    let admin_listen = loaded.config.admin.listen;
    let listeners =
        server::bind_listeners(listen, workers).map_err(|source| StartError::Listen { addr: listen, source })?;
    let addr = listeners[0].local_addr().map_err(|source| StartError::Listen { addr: listen, source })?;
    let admin_listener = tokio::net::TcpListener::bind(admin_listen)
        .await
        .map_err(|source| StartError::Listen { addr: admin_listen, source })?;
    let admin_addr = admin_listener.local_addr().map_err(|source| StartError::Listen { addr: admin_listen, source })?;

    let (certs, tls) = match loaded.certificates {
        None => (None, None),
        Some(certificates) => {
            let resolver = Arc::new(tls::CertResolver::new(certificates));
            let server_config = tls::server_config(resolver.clone())
                .map_err(|e| StartError::Config(vec![ConfigError::at_start(&config_path.display().to_string(), e)]))?;
            (Some(resolver), Some(tokio_rustls::TlsAcceptor::from(server_config)))
        }
    };
    let tls_files = match &loaded.config.server.tls {
        Some(setting) => tls::files(setting, &config_dir(config_path)),
        None => Vec::new(),
    };
    let admin_token = loaded.config.admin.token.clone();
    let registry = gateway_registry::Registry::from_config(&loaded.config.registry).await.map_err(|e| {
        StartError::Config(vec![ConfigError::at_start(&config_path.display().to_string(), e.to_string())])
    })?;
    let base_dir = config_dir(config_path);
    let env = BuildEnv { base_dir: &base_dir, registry: registry.local(), metrics: &metrics, workers };
    let runtime = Runtime::build(loaded.config, loaded.routes, 1, None, &env).await.map_err(|messages| {
        let file = config_path.display().to_string();
        StartError::Config(messages.into_iter().map(|m| ConfigError::at_start(&file, m)).collect())
    })?;
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(runtime),
        metrics: metrics.clone(),
        tls: arc_swap::ArcSwapOption::from(tls.map(Arc::new)),
        registry,
        runtimes: Mutex::new(vec![("main".to_owned(), tokio::runtime::Handle::current())]),
        connections: Arc::default(),
    });
    let (rebind, mut rebound): (Vec<_>, Vec<_>) =
        (0..listeners.len()).map(|_| tokio::sync::mpsc::unbounded_channel()).unzip();
    let control = Arc::new_cyclic(|weak| {
        let view = admin::AdminView { shared: shared.clone(), control: weak.clone() };
        let admin = AdminState::new(metrics, Arc::new(view), admin_token);
        admin.set_config_status(loaded_now(1));
        Control {
            shared: shared.clone(),
            admin,
            path: config_path.to_path_buf(),
            workers,
            hash: Mutex::new(Some(loaded.hash)),
            version: AtomicU64::new(1),
            reloading: tokio::sync::Mutex::new(()),
            certs: Mutex::new(certs),
            rebind,
            addr: Mutex::new(addr),
            subscriptions: Mutex::new(Vec::new()),
        }
    });
    let admin = control.admin.clone();
    subscriptions::reconcile(
        &mut control.subscriptions.lock().unwrap_or_else(|e| e.into_inner()),
        &shared.runtime.load_full(),
        &shared,
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut threads = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let rebind = rebound.remove(0);
        let shutdown = shutdown_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("gateway-worker-{index}"))
            .spawn(move || {
                gateway_proxy::set_worker_index(index);
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a worker runtime");
                        return;
                    }
                };
                shared
                    .runtimes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((format!("worker-{index}"), rt.handle().clone()));
                rt.block_on(server::serve(listener, rebind, shared, shutdown));
            })
            .map_err(|source| StartError::Listen { addr, source })?;
        threads.push(thread);
    }

    let mut admin_shutdown = shutdown_rx.clone();
    let app = gateway_admin::router_with(admin.clone(), gateway_registry::registry_api(shared.registry.clone()));
    let admin_task = tokio::spawn(async move {
        // The admin listener outlives the drain so /readyz can say 503 meanwhile; it
        // stops when the handle finishes shutting down.
        let serve = axum::serve(admin_listener, app)
            .with_graceful_shutdown(async move { while admin_shutdown.changed().await.is_ok() {} });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });

    let named = named_files(&shared.runtime.load().config, &config_dir(config_path));
    let watchers = watch_files(config_path, &named, &tls_files, control.clone());
    admin.set_ready(true);
    tracing::info!(%addr, %admin_addr, workers, "gateway started");
    Ok(GatewayHandle {
        addr,
        admin_addr,
        control,
        shutdown: shutdown_tx,
        workers: threads,
        admin_task,
        _watchers: watchers,
    })
}

/// Watch the configuration file, and the certificate files it names: a change of either
/// reloads. A certificate change alone re-reads the certificates (a bad one is logged and
/// the old certificates keep serving).
/// Watch the configuration file and the files it names (a change reloads the whole
/// configuration), and the TLS files (a change reloads the certificates only). Files a
/// later reload names are watched from the next start; until then SIGHUP or the admin API
/// reload them.
fn watch_files(
    config_path: &Path,
    named: &[PathBuf],
    tls_files: &[PathBuf],
    control: Arc<Control>,
) -> Vec<gateway_config::ConfigWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Trigger>();
    let task_control = control.clone();
    tokio::spawn(async move {
        while let Some(trigger) = rx.recv().await {
            match trigger {
                Trigger::Config => {
                    let _ = task_control.reload().await;
                }
                Trigger::Certificates => task_control.reload_certificates().await,
            }
        }
    });
    let mut watchers = Vec::new();
    let sources = std::iter::once((config_path.to_path_buf(), Trigger::Config))
        .chain(named.iter().map(|f| (f.clone(), Trigger::Config)))
        .chain(tls_files.iter().map(|f| (f.clone(), Trigger::Certificates)));
    for (path, trigger) in sources {
        let tx = tx.clone();
        match gateway_config::watch(&path, move || {
            let _ = tx.send(trigger);
        }) {
            Ok(w) => watchers.push(w),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot watch file; reload with SIGHUP or the admin API")
            }
        }
    }
    watchers
}

#[derive(Clone, Copy)]
enum Trigger {
    Config,
    Certificates,
}

impl Control {
    async fn reload_certificates(&self) {
        let Some(resolver) = self.certs.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        let runtime = self.shared.runtime.load_full();
        let Some(setting) = runtime.config.server.tls.clone() else { return };
        let base = config_dir(&self.path);
        match tokio::task::spawn_blocking(move || tls::Certificates::load(&setting, &base)).await {
            Ok(Ok(certs)) => {
                resolver.replace(certs);
                tracing::info!("TLS certificates reloaded");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "TLS certificate reload failed; the previous certificates keep serving")
            }
            Err(e) => tracing::error!(error = %e, "TLS certificate reload task failed"),
        }
    }
}

impl GatewayHandle {
    /// Reload the configuration file now. `Ok(version)`; an unchanged file keeps its version.
    pub async fn reload(&self) -> Result<u64, Vec<ConfigError>> {
        self.control.reload_now().await
    }

    /// The address the proxy accepts on now: [`addr`](Self::addr) until a reload changes
    /// `server.listen`.
    pub fn local_addr(&self) -> SocketAddr {
        *self.control.addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.control.shared.metrics
    }

    /// Signal shutdown without waiting for the drain (workers finish on their own).
    pub fn abort(self) {
        self.control.admin.set_ready(false);
        let _ = self.shutdown.send(true);
        self.admin_task.abort();
    }

    /// Stop accepting, let in-flight requests finish (up to `server.shutdown_grace`),
    /// then stop the admin listener.
    pub async fn shutdown(self) {
        self.control.admin.set_ready(false);
        let _ = self.shutdown.send(true);
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
        let running = std::mem::take(&mut *self.control.subscriptions.lock().unwrap_or_else(|e| e.into_inner()));
        subscriptions::shutdown(running).await;
        drop(self.shutdown);
        let _ = self.admin_task.await;
        // The last requests' access-log lines, which the writer thread may not have written.
        access_log::flush();
    }
}
