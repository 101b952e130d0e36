//! TLS to upstreams: webpki roots or a configured CA, optional client certificate (mTLS).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Build the client TLS configuration of one service. `ca_file`, `client_cert` and
/// `client_key` are relative to `base`.
pub fn client_config(
    ca_file: Option<&str>,
    client_cert: Option<&str>,
    client_key: Option<&str>,
    base: &Path,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let certs = read_certs(&base.join(file), file)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("ca_file `{file}` holds no usable CA certificate"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    let config = match (client_cert, client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(&base.join(cert), cert)?;
            let key_der =
                PrivateKeyDer::from_pem_file(base.join(key)).map_err(|e| format!("cannot read key `{key}`: {e}"))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| format!("client certificate `{cert}`: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificate file `{name}`: {e}"))?;
    if certs.is_empty() {
        return Err(format!("certificate file `{name}` holds no certificate"));
    }
    Ok(certs)
}
