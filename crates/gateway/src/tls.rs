//! TLS termination: certificates from `server.tls`, chosen by SNI, swapped in place when
//! their files change (connections already open keep the certificate they started with).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use gateway_config::{TlsCert, TlsSetting};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The certificates of one configuration, by SNI name.
#[derive(Debug, Default)]
pub struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` entries, stored as `.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Read every certificate and key; relative paths are relative to `base`.
    pub fn load(setting: &TlsSetting, base: &Path) -> Result<Certificates, String> {
        let entries: &[TlsCert] = match setting {
            TlsSetting::One(one) => std::slice::from_ref(one),
            TlsSetting::Many(many) => many,
        };
        let mut certs = Certificates::default();
        for entry in entries {
            let key = Arc::new(load_pair(entry, base)?);
            for host in &entry.hosts {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => certs.wildcard.push((suffix.to_owned(), key.clone())),
                    None => {
                        certs.exact.insert(host, key.clone());
                    }
                }
            }
            if entry.hosts.is_empty() || certs.default.is_none() {
                // The first certificate, or one without hosts, answers clients that send
                // no (or an unknown) server name.
                if entry.hosts.is_empty() || entries.iter().all(|e| !e.hosts.is_empty()) {
                    certs.default.get_or_insert(key.clone());
                }
            }
        }
        certs.wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Ok(certs)
    }

    fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let name = name.to_ascii_lowercase();
            if let Some(key) = self.exact.get(&name) {
                return Some(key.clone());
            }
            if let Some((_, key)) = self.wildcard.iter().find(|(suffix, _)| name.ends_with(suffix.as_str())) {
                return Some(key.clone());
            }
        }
        self.default.clone()
    }
}

/// Every file a TLS setting reads, for the watcher.
pub fn files(setting: &TlsSetting, base: &Path) -> Vec<PathBuf> {
    let entries: &[TlsCert] = match setting {
        TlsSetting::One(one) => std::slice::from_ref(one),
        TlsSetting::Many(many) => many,
    };
    entries.iter().flat_map(|e| [base.join(&e.cert), base.join(&e.key)]).collect()
}

fn load_pair(entry: &TlsCert, base: &Path) -> Result<CertifiedKey, String> {
    let cert_path = base.join(&entry.cert);
    let key_path = base.join(&entry.key);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificate `{}`: {e}", entry.cert))?;
    if chain.is_empty() {
        return Err(format!("certificate file `{}` holds no certificate", entry.cert));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| format!("cannot read key `{}`: {e}", entry.key))?;
    let signing_key = aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("key `{}` is not a supported private key: {e}", entry.key))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("key `{}` does not match certificate `{}`: {e}", entry.key, entry.cert))?;
    Ok(certified)
}

/// The SNI resolver the listener keeps for its whole life; reloads swap what it holds.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: ArcSwap<Certificates>,
}

impl CertResolver {
    pub fn new(certs: Certificates) -> Self {
        CertResolver { current: ArcSwap::from_pointee(certs) }
    }

    pub fn replace(&self, certs: Certificates) {
        self.current.store(Arc::new(certs));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve(hello.server_name())
    }
}

/// rustls' safe defaults (TLS 1.2 and 1.3, no weak suites), ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
