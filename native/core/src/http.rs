//! What every HTTP-based strategy (Kubernetes, Rancher; later EC2, Consul, DigitalOcean) needs
//! from the transport, in one place:
//!
//! - [`tls_config`]: a rustls config (ring, TLS 1.2/1.3, ALPN h2 + http/1.1) verified against a
//!   CA bundle file when it exists, else the system roots ([`Roots`]); or, only when a user set an
//!   insecure option by name, no verification at all;
//! - [`read_body`]: a response body read in chunks up to a byte limit ([`BodyError`]);
//! - [`classify`]: a `reqwest` failure before any status line, as a [`TransportKind`] an operator
//!   understands (timeout, TLS, refused, unreachable, other I/O), with the error chain as text.
//!
//! Strategies keep their own messages (which option to check, what to fix): this module returns
//! typed errors and the strategy words them.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::event::ErrorKind;

/// The certificates a server is verified against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Roots<'a> {
    /// The PEM bundle at this path when it exists, else the system roots.
    CaFileOrSystem(&'a Path),
    /// The system roots (`rustls-native-certs`).
    System,
    /// None: for a client that only ever speaks plain HTTP.
    Empty,
    /// The system roots (if any) plus every certificate of the PEM bundle at this path, which must
    /// exist and hold one (the AWS SDKs' `AWS_CA_BUNDLE`).
    SystemAndFile(&'a Path),
    /// The PEM bundle at this path, which must exist (a CA file the user named).
    CaFile(&'a Path),
}

/// A client certificate chain and its private key (PEM files), for servers that require mutual
/// TLS (e.g. Consul with `verify_incoming`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIdentity<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// Why no TLS config could be built.
#[derive(Debug)]
pub(crate) enum TlsError {
    /// The crypto provider refused the protocol versions (a build problem).
    Setup(String),
    /// The CA bundle exists but cannot be read.
    ReadCa { path: String, error: std::io::Error },
    /// The CA bundle is not valid PEM.
    BadPem { path: String, error: String },
    /// The CA bundle holds a certificate rustls refuses.
    BadCertificate { path: String, error: String },
    /// The CA bundle holds no certificate.
    EmptyCa { path: String },
    /// No CA bundle was given or found, and the system has no root certificates.
    NoSystemRoots,
    /// The client certificate or key cannot be read, parsed, or do not match.
    ClientIdentity { path: String, error: String },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Setup(e) => write!(f, "cannot set up TLS: {e}"),
            TlsError::ReadCa { path, error } => {
                write!(f, "cannot read the CA bundle {path}: {error}")
            }
            TlsError::BadPem { path, error } => {
                write!(f, "the CA bundle {path} is not valid PEM: {error}")
            }
            TlsError::BadCertificate { path, error } => {
                write!(f, "the CA bundle {path} holds a bad certificate: {error}")
            }
            TlsError::EmptyCa { path } => write!(f, "the CA bundle {path} holds no certificate"),
            TlsError::NoSystemRoots => write!(
                f,
                "no system root certificates: install ca-certificates (or give a CA bundle)"
            ),
            TlsError::ClientIdentity { path, error } => {
                write!(
                    f,
                    "the client certificate/key {path} cannot be used: {error}"
                )
            }
        }
    }
}

impl std::error::Error for TlsError {}

/// Build the rustls config for `roots`. `insecure` (an explicit, loudly documented option of the
/// strategy) skips verification entirely and ignores `roots`.
pub(crate) fn tls_config(roots: Roots<'_>, insecure: bool) -> Result<ClientConfig, TlsError> {
    tls_config_with_identity(roots, insecure, None)
}

/// [`tls_config`], presenting `identity` (a client certificate and key) when the server asks.
pub(crate) fn tls_config_with_identity(
    roots: Roots<'_>,
    insecure: bool,
    identity: Option<ClientIdentity<'_>>,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        builder.with_root_certificates(root_store(roots)?)
    };
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let (certs, key) = load_identity(id)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::ClientIdentity {
                    path: id.key.display().to_string(),
                    error: e.to_string(),
                })?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn load_identity(id: ClientIdentity<'_>) -> Result<Identity, TlsError> {
    let bad = |path: &Path, error: String| TlsError::ClientIdentity {
        path: path.display().to_string(),
        error,
    };
    let cert_pem = std::fs::read(id.cert).map_err(|e| bad(id.cert, e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(id.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(id.cert, "no certificate in the file".into()));
    }
    let key_pem = std::fs::read(id.key).map_err(|e| bad(id.key, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(id.key, e.to_string()))?;
    Ok((certs, key))
}

fn root_store(roots: Roots<'_>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::Empty => {}
        Roots::SystemAndFile(path) => {
            add_system_roots(&mut store);
            add_pem_file(&mut store, path)?;
        }
        Roots::CaFile(path) => add_pem_file(&mut store, path)?,
        Roots::CaFileOrSystem(path) if path.exists() => add_pem_file(&mut store, path)?,
        Roots::CaFileOrSystem(_) | Roots::System => {
            add_system_roots(&mut store);
            if store.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(store)
}

/// The system roots (`rustls-native-certs`); the ones rustls refuses are skipped.
fn add_system_roots(store: &mut RootCertStore) {
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = store.add(cert);
    }
}

/// Every certificate of the PEM bundle at `path`, which must exist and hold at least one.
fn add_pem_file(store: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| TlsError::ReadCa {
        path: shown.clone(),
        error,
    })?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| TlsError::BadPem {
            path: shown.clone(),
            error: e.to_string(),
        })?;
        store.add(cert).map_err(|e| TlsError::BadCertificate {
            path: shown.clone(),
            error: e.to_string(),
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(TlsError::EmptyCa { path: shown });
    }
    Ok(())
}

/// Accepts any certificate. Only built when the user set the insecure option by name.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// More than the limit arrived; reading stopped there.
    TooLarge { max: usize },
    /// The body stopped arriving in time (the request's timeout).
    Timeout(reqwest::Error),
    /// The connection broke after `read` bytes.
    Broken { read: usize, error: reqwest::Error },
}

/// Read a body of at most `max` bytes, in chunks (never more than `max` plus one chunk in memory).
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::with_capacity(
        resp.content_length()
            .map(|l| (l as usize).min(max))
            .unwrap_or(64 * 1024),
    );
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(BodyError::TooLarge { max });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(BodyError::Timeout(e)),
            Err(error) => {
                return Err(BodyError::Broken {
                    read: body.len(),
                    error,
                })
            }
        }
    }
}

/// What failed before an HTTP status arrived, as an operator thinks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// No answer before the deadline (the request's, or the OS's `ETIMEDOUT`).
    Timeout,
    /// The TLS handshake or the certificate check failed.
    Tls,
    /// The server's host actively refused the connection.
    Refused,
    /// No route, host down, network unreachable; or the connection could not be made for a reason
    /// the OS did not name.
    Unreachable,
    /// Any other I/O failure.
    Io,
}

impl From<TransportKind> for ErrorKind {
    fn from(k: TransportKind) -> ErrorKind {
        match k {
            TransportKind::Timeout => ErrorKind::Timeout,
            TransportKind::Tls => ErrorKind::Tls,
            TransportKind::Refused => ErrorKind::Refused,
            TransportKind::Unreachable => ErrorKind::Unreachable,
            TransportKind::Io => ErrorKind::Io,
        }
    }
}

/// A classified transport failure.
#[derive(Debug, Clone)]
pub(crate) struct TransportError {
    pub kind: TransportKind,
    /// The failure happened while connecting (nothing was sent).
    pub connect: bool,
    /// The error and its causes, `: `-joined ([`chain`]).
    pub detail: String,
}

/// The error kind of an HTTP status that is not a success: 401 and 403 are auth problems (the
/// strategy words which token or permission), anything else is a plain status error.
pub(crate) fn status_kind(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Forbidden,
        _ => ErrorKind::HttpStatus,
    }
}

/// Classify a failure before a status line arrived.
pub(crate) fn classify(e: &reqwest::Error) -> TransportError {
    let detail = chain(e);
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if is_tls(e, &detail) {
        TransportKind::Tls
    } else {
        match io_kind(e) {
            Some(ErrorKind::Refused) => TransportKind::Refused,
            Some(ErrorKind::Timeout) => TransportKind::Timeout,
            Some(ErrorKind::Unreachable) => TransportKind::Unreachable,
            Some(_) => TransportKind::Io,
            None if e.is_connect() => TransportKind::Unreachable,
            None => TransportKind::Io,
        }
    };
    TransportError {
        kind,
        connect: e.is_connect(),
        detail,
    }
}

/// The error and its causes, `: `-joined (a cause already quoted by its parent is skipped).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn is_tls(e: &(dyn std::error::Error + 'static), text: &str) -> bool {
    // hyper-util boxes connector errors in types of its own; the rustls error is not always
    // reachable by downcasting, so its text is checked too.
    if [
        "invalid peer certificate",
        "tls handshake",
        "received fatal alert",
        "InvalidCertificate",
    ]
    .iter()
    .any(|needle| text.contains(needle))
    {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// The first OS-level I/O error in the chain, classified.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(ErrorKind::from_io(io));
        }
        cur = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_falls_back_to_the_system_roots_and_a_bad_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("libcluster-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.crt");
        match tls_config(Roots::CaFileOrSystem(&missing), false) {
            Ok(_) | Err(TlsError::NoSystemRoots) => {}
            Err(other) => panic!("{other}"),
        }
        let empty = dir.join("empty.crt");
        std::fs::write(&empty, b"no pem here").unwrap();
        assert!(matches!(
            tls_config(Roots::CaFileOrSystem(&empty), false),
            Err(TlsError::EmptyCa { .. })
        ));
        // insecure ignores the roots
        assert!(tls_config(Roots::CaFileOrSystem(&empty), true).is_ok());
        assert!(tls_config(Roots::Empty, false).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_named_ca_file_must_exist_and_a_client_identity_must_be_readable() {
        let dir = std::env::temp_dir().join(format!("libcluster-http-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        // unlike CaFileOrSystem, a CA file the user named never falls back to the system roots
        assert!(matches!(
            tls_config(Roots::CaFile(&missing), false),
            Err(TlsError::ReadCa { .. })
        ));
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, b"not pem").unwrap();
        for (cert, key) in [(&missing, &missing), (&garbage, &garbage)] {
            let id = ClientIdentity { cert, key };
            assert!(matches!(
                tls_config_with_identity(Roots::Empty, false, Some(id)),
                Err(TlsError::ClientIdentity { .. })
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_refused_connection_is_classified_by_its_io_error() {
        // a port that was just free: connecting to it is refused
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(Roots::Empty, false).unwrap())
            .no_proxy()
            .build()
            .unwrap();
        let e = client
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();
        let t = classify(&e);
        assert_eq!(t.kind, TransportKind::Refused, "{}", t.detail);
        assert!(t.connect);
    }
}
