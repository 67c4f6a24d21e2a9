//! Outbound TLS: which certificate authorities Chronicle trusts, and the rustls client settings
//! every outbound connection is made with — PostgreSQL ([`postgres`], with libpq's `sslmode`),
//! SMTP (STARTTLS and SMTPS) and HTTPS (webhooks and providers).
//!
//! The trust is process-wide, as `SSL_CERT_FILE` is: the system's roots (read by
//! rustls-native-certs, which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`) plus, when the
//! operator names one, a CA file of PEM certificates for a private CA ([`configure`], from
//! `--tls-ca-file`). Until [`configure`] is called the system's roots alone are trusted.
//!
//! The crypto provider is *ring*: aws-lc-rs would need a C toolchain and cmake and build for
//! minutes on a small machine.

pub mod postgres;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why the trusted certificates could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the CA file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the CA file {path} holds no PEM certificate")]
    Empty { path: PathBuf },
    #[error("the CA file {path}: {why}")]
    Bad { path: PathBuf, why: String },
    #[error("building the TLS client: {0}")]
    Client(#[source] rustls::Error),
}

/// The certificates Chronicle trusts, in both forms its clients take them.
pub struct Trust {
    /// Every trusted certificate, DER (lettre builds its own rustls configuration from these).
    pub certificates: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    /// The default client configuration: full verification (chain and name) against `roots`.
    client: Arc<ClientConfig>,
}

static TRUST: RwLock<Option<Arc<Trust>>> = RwLock::new(None);

/// Trusts the system's roots plus the certificates in `ca_file`, for every connection made from
/// now on. Called once at start with `--tls-ca-file`; a later call replaces the trust.
pub fn configure(ca_file: Option<&Path>) -> Result<(), TlsError> {
    let mut certificates = native_roots();
    if let Some(path) = ca_file {
        certificates.extend(read_pem(path)?);
    }
    let trust = Arc::new(Trust::new(certificates)?);
    *TRUST.write().unwrap_or_else(|e| e.into_inner()) = Some(trust);
    Ok(())
}

/// What is trusted now: as [`configure`] left it, else the system's roots alone.
pub fn trust() -> Arc<Trust> {
    if let Some(t) = TRUST.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return t.clone();
    }
    let mut slot = TRUST.write().unwrap_or_else(|e| e.into_inner());
    slot.get_or_insert_with(|| Arc::new(Trust::new(native_roots()).expect("the system's roots build a client"))).clone()
}

/// The crypto provider of every connection. (rustls marks *ring*'s provider deprecated for
/// lacking post-quantum key exchange, which only its aws-lc-rs provider has; see the crate's
/// docs for why it is *ring*.)
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (a CA bundle).
pub fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Bad { path: path.into(), why: e.to_string() })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty { path: path.into() });
    }
    Ok(certificates)
}

fn native_roots() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system's trusted certificates");
    }
    found.certs
}

impl Trust {
    fn new(certificates: Vec<CertificateDer<'static>>) -> Result<Trust, TlsError> {
        let roots = Arc::new(root_store(&certificates));
        let client = Arc::new(client_config(Verify::Full, roots.clone())?);
        Ok(Trust { certificates, roots, client })
    }

    /// A client configuration that verifies the chain and the name (HTTPS, SMTP, PostgreSQL's
    /// `verify-full`).
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }
}

fn root_store(certificates: &[CertificateDer<'static>]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    // A system bundle can hold a certificate rustls cannot parse; it is skipped, as libssl does.
    let (_added, ignored) = roots.add_parsable_certificates(certificates.iter().cloned());
    if ignored > 0 {
        tracing::debug!(ignored, "trusted certificates rustls could not parse were skipped");
    }
    roots
}

/// A server configuration for serving HTTPS from a PEM certificate chain and its private key
/// (`--tls-cert`, `--tls-key`).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::pki_types::PrivateKeyDer;
    let chain = read_pem(cert)?;
    let bytes = std::fs::read(key).map_err(|source| TlsError::Read { path: key.into(), source })?;
    let key_der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Bad { path: key.into(), why: format!("no private key: {e}") })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Client)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Bad { path: cert.into(), why: e.to_string() })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The chain up to a trusted root, and that it names the host.
    Full,
    /// The chain only (libpq's `verify-ca`).
    Chain,
    /// Nothing: encryption without authentication (libpq's `require` and `prefer`).
    Nothing,
}

/// A client configuration with the given verification against `roots`.
pub fn client_config(verify: Verify, roots: Arc<RootCertStore>) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(TlsError::Client)?;
    let config = match verify {
        Verify::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        Verify::Chain | Verify::Nothing => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Client(rustls::Error::General(e.to_string())))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Lenient { inner, verify })).with_no_client_auth()
        }
    };
    Ok(config)
}

/// The verifier of `verify-ca` (a name mismatch is accepted) and of `require` (any certificate
/// is accepted); the handshake's signatures are checked in both.
#[derive(Debug)]
struct Lenient {
    inner: Arc<WebPkiServerVerifier>,
    verify: Verify,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.verify == Verify::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS failure in an error's chain, told plainly, if there is one: what a retry, a dead
/// letter and the log say when a connection failed at TLS.
pub fn tls_reason(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cur) = e {
        if let Some(r) = cur.downcast_ref::<rustls::Error>() {
            return Some(format!("TLS: {r}"));
        }
        // tokio-rustls wraps rustls' error in an io::Error, and the clients above it wrap that
        // in io::Errors again; an io::Error's `source` skips what it wraps, so look inside.
        let mut inner = cur.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        while let Some(i) = inner {
            if let Some(r) = i.downcast_ref::<rustls::Error>() {
                return Some(format!("TLS: {r}"));
            }
            inner = i.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        }
        e = cur.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_is_read_or_refused_with_its_reason() {
        let dir = std::env::temp_dir().join(format!("chronicle-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        assert!(matches!(read_pem(&empty), Err(TlsError::Empty { .. })));
        assert!(matches!(read_pem(&dir.join("missing.pem")), Err(TlsError::Read { .. })));
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
        assert!(read_pem(&bad).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tls_failure_is_found_in_an_error_chain() {
        let inner = std::io::Error::other(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        let reason = tls_reason(&inner).unwrap();
        assert!(reason.starts_with("TLS: invalid peer certificate"), "{reason}");
        // As hyper-rustls hands it on: an io::Error around tokio-rustls' io::Error.
        let wrapped = std::io::Error::other(std::io::Error::other(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)));
        let reason = tls_reason(&wrapped).unwrap();
        assert!(reason.starts_with("TLS: invalid peer certificate"), "{reason}");
        assert!(tls_reason(&std::io::Error::other("connection refused")).is_none());
    }
}
