//! TLS fixtures: a certificate authority made at test time (rcgen), leaf certificates it
//! signs, and rustls configurations for clients and servers that trust only it.
//!
//! ```no_run
//! # async fn f(addr: std::net::SocketAddr) {
//! use gateway_tests::{tls_connect, TestCa};
//! let ca = TestCa::new("test CA");
//! let leaf = ca.leaf(&["localhost"]);
//! let server = leaf.server_config(&["h2", "http/1.1"], None);
//! let stream = tls_connect(addr, "localhost", ca.client_config(&["h2"])).await.unwrap();
//! # }
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate authority that signs [`Leaf`] certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
}

/// A certificate signed by a [`TestCa`], with its private key; valid for server and client auth.
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM.
    pub key_pem: String,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    /// A new CA whose subject common name is `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert_pem: cert.pem(), cert: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    /// The CA certificate, PEM (what a `ca_file` holds).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    /// A root store holding only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        roots
    }

    /// A client configuration that trusts only this CA and offers `alpn` (in order).
    pub fn client_config(&self, alpn: &[&str]) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

impl Leaf {
    /// The certificate, DER (to compare with what a peer presented).
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Write the certificate and key PEM files as `dir/cert` and `dir/key`.
    pub fn write(&self, dir: &Path, cert: &str, key: &str) {
        std::fs::write(dir.join(cert), &self.cert_pem).unwrap();
        std::fs::write(dir.join(key), &self.key_pem).unwrap();
    }

    /// A server configuration presenting this certificate and offering `alpn`; with
    /// `client_ca`, clients must present a certificate signed by it (mTLS).
    pub fn server_config(&self, alpn: &[&str], client_ca: Option<&TestCa>) -> Arc<ServerConfig> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder =
            ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider).build().unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_single_cert(vec![self.cert.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key())).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

/// Open a TLS connection to `addr` verifying `server_name` (sent as SNI); the TCP connect
/// and handshake together get at most 5 seconds.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(std::io::Error::other)?;
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(config).connect(name, tcp).await
    };
    tokio::time::timeout(Duration::from_secs(5), connect).await.map_err(std::io::Error::other)?
}
