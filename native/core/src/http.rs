//! The HTTP transport of every HTTP-based strategy (Kubernetes, Rancher, EC2, Consul,
//! DigitalOcean), in one place; the strategies keep only their API's meaning (URLs, bodies, what
//! each status means, which option to check):
//!
//! - [`client`]: the one `reqwest` client builder ([`ClientOptions`]): rustls ([`tls_config`]:
//!   ring, TLS 1.2/1.3, ALPN h2 + http/1.1) verified against [`Roots`] (a CA bundle, the system
//!   roots) or, only when a user set an insecure option by name, not at all; a client certificate
//!   for mutual TLS ([`ClientIdentity`]); the deadlines; never a proxy;
//! - [`send`] and [`read_body`] (a body read in chunks up to a byte limit): every failure comes
//!   back as a [`TransportError`], whose kind is [`classify`]'s, the one mapping from a transport
//!   failure to an [`ErrorKind`];
//! - [`status_kind`]: the one mapping of 401/403 (the strategy words which token or permission);
//! - [`retry_after`] and [`ratelimit_reset`]: how long a server asks to wait, with one cap,
//!   [`MAX_SERVER_WAIT`].
//!
//! This module returns typed errors and plain-words details; the strategy words the message.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::event::{Error, ErrorKind};

/// The certificates a server is verified against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Roots<'a> {
    /// The PEM bundle at this path when it exists, else the system roots.
    CaFileOrSystem(&'a Path),
    /// The system roots (`rustls-native-certs`).
    System,
    /// None: for a client that only ever speaks plain HTTP.
    Empty,
    /// The system roots, if the system has any, plus every certificate of the PEM bundle at this
    /// path when one is given, which must then exist and hold one (the AWS SDKs' rule for
    /// `AWS_CA_BUNDLE`; without system roots, plain-HTTP endpoints still work).
    SystemIfAnyPlus(Option<&'a Path>),
    /// The PEM bundle at this path, which must exist (a CA file the user named).
    CaFile(&'a Path),
}

impl Roots<'static> {
    /// The roots of a client that talks to `url` only, when no CA file was named: the system roots
    /// for `https://` (an error at setup when there are none), none for plain HTTP (which a host
    /// without system roots can still speak).
    pub(crate) fn for_url(url: &str) -> Roots<'static> {
        if url.starts_with("https:") {
            Roots::System
        } else {
            Roots::Empty
        }
    }
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
        Roots::SystemIfAnyPlus(path) => {
            add_system_roots(&mut store);
            if let Some(path) = path {
                add_pem_file(&mut store, path)?;
            }
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

/// What [`client`] builds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientOptions<'a> {
    /// The certificates servers are verified against.
    pub roots: Roots<'a>,
    /// No verification at all: only when the user set the strategy's insecure option by name.
    pub insecure: bool,
    /// A client certificate, presented when the server asks (mutual TLS).
    pub identity: Option<ClientIdentity<'a>>,
    /// The deadline of a connection (TCP and TLS).
    pub connect_timeout: Option<Duration>,
    /// The deadline of a whole exchange (status and body); `None`: each request sets its own.
    pub timeout: Option<Duration>,
}

impl<'a> ClientOptions<'a> {
    /// Verified against `roots`, no client certificate, no deadline.
    pub(crate) fn new(roots: Roots<'a>) -> ClientOptions<'a> {
        ClientOptions {
            roots,
            insecure: false,
            identity: None,
            connect_timeout: None,
            timeout: None,
        }
    }
}

/// The one `reqwest` client builder. Never through a proxy: discovery talks to its API directly,
/// as in-cluster and agent clients do, and a proxy from the environment (`HTTPS_PROXY`) would see
/// the tokens. `tls_error` words a TLS setup failure for the strategy (which option names the
/// file); a client that cannot be built otherwise is an `Io` error.
pub(crate) fn client(
    opts: ClientOptions<'_>,
    tls_error: impl FnOnce(TlsError) -> Error,
) -> Result<reqwest::Client, Error> {
    let tls =
        tls_config_with_identity(opts.roots, opts.insecure, opts.identity).map_err(tls_error)?;
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy();
    if let Some(t) = opts.connect_timeout {
        builder = builder.connect_timeout(t);
    }
    if let Some(t) = opts.timeout {
        builder = builder.timeout(t);
    }
    builder
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot build the HTTP client: {e}")))
}

/// Where an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Connecting (TCP, TLS): nothing was sent.
    Connect,
    /// The request was sent; no status line arrived (or the redirects went nowhere).
    Request,
    /// The status arrived; the body did not, whole.
    Body,
    /// The body passed the caller's limit; reading stopped there.
    TooLarge,
}

/// A failed exchange: what an operator calls it ([`classify`]), where it failed, and the detail
/// for the message (the error and its causes, or what was wrong with the body).
#[derive(Debug, Clone)]
pub(crate) struct TransportError {
    pub kind: ErrorKind,
    pub stage: Stage,
    pub detail: String,
}

/// Send `req`: the response (whatever its status), or the failure classified.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, TransportError> {
    req.send().await.map_err(|e| classify(&e))
}

/// Read a body of at most `max` bytes, in chunks (never more than `max` plus one chunk in memory).
/// A body that stops early is `Malformed` (unless it timed out or TLS failed): the answer is
/// incomplete, and its detail says after how many bytes.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, TransportError> {
    let mut body = Vec::with_capacity(
        resp.content_length()
            .map(|l| (l as usize).min(max))
            .unwrap_or(64 * 1024),
    );
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(TransportError {
                        kind: ErrorKind::Malformed,
                        stage: Stage::TooLarge,
                        detail: format!("the answer is larger than {max} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                let mut t = classify(&e);
                t.stage = Stage::Body;
                if t.kind != ErrorKind::Timeout {
                    t.detail = format!(
                        "the answer was truncated after {} bytes ({})",
                        body.len(),
                        t.detail
                    );
                }
                return Err(t);
            }
        }
    }
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

/// The one mapping from a transport failure to an [`ErrorKind`]; the first rule that holds wins:
///
/// | the failure | kind |
/// | --- | --- |
/// | the request's deadline passed, or the OS's `ETIMEDOUT` | `Timeout` |
/// | the TLS handshake or the certificate check | `Tls` |
/// | connecting: the host refused | `Refused` |
/// | connecting: anything else (no route, host down, a name that does not resolve, a reason the OS did not name) | `Unreachable` |
/// | too many redirects, or a redirect to nowhere | `HttpStatus` |
/// | an answer that is not HTTP, or a body that stopped early | `Malformed` |
/// | any other failure once connected (reset or closed before the answer) | `Io` |
pub(crate) fn classify(e: &reqwest::Error) -> TransportError {
    let detail = chain(e);
    let stage = if e.is_connect() {
        Stage::Connect
    } else if e.is_body() || e.is_decode() {
        Stage::Body
    } else {
        Stage::Request
    };
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if is_tls(e, &detail) {
        ErrorKind::Tls
    } else if io_kind(e) == Some(ErrorKind::Refused) {
        ErrorKind::Refused
    } else if stage == Stage::Connect {
        ErrorKind::Unreachable
    } else if e.is_redirect() {
        ErrorKind::HttpStatus
    } else if stage == Stage::Body || is_not_http(e) {
        ErrorKind::Malformed
    } else {
        ErrorKind::Io
    };
    TransportError {
        kind,
        stage,
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
    [
        "invalid peer certificate",
        "tls handshake",
        "received fatal alert",
        "InvalidCertificate",
    ]
    .iter()
    .any(|needle| text.contains(needle))
        || find::<rustls::Error>(e).is_some()
}

/// The first OS-level I/O error in the chain, classified.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    find::<std::io::Error>(e).map(ErrorKind::from_io)
}

/// Whether the server's bytes were not an HTTP answer (hyper could not parse the status line or
/// the headers).
fn is_not_http(e: &(dyn std::error::Error + 'static)) -> bool {
    find::<hyper::Error>(e).is_some_and(hyper::Error::is_parse)
}

/// The first error of type `T` among `e` and its causes, looking inside I/O errors too (an
/// `io::Error`'s `source` skips the error it wraps: rustls's, wrapped twice by the connector).
fn find<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(t) = find::<T>(inner) {
                return Some(t);
            }
        }
        cur = c.source();
    }
    None
}

/// The longest wait a server's `Retry-After` or `ratelimit-reset` is honoured for: 10 minutes,
/// for every API. Consul asks for seconds; DigitalOcean's hourly quota may reset up to an hour
/// later, but a client that asks again after 10 minutes reads the reset time again and waits out
/// the rest, so recovery is never later for it. A value past the cap is a broken header or a
/// skewed clock, which must not silence discovery for longer (nor overflow a deadline).
pub(crate) const MAX_SERVER_WAIT: Duration = Duration::from_secs(600);

/// How long a server asked to wait before the next request, and how long this client waits: the
/// same, at most [`MAX_SERVER_WAIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerWait {
    pub asked: Duration,
    pub wait: Duration,
}

impl ServerWait {
    fn asked(asked: Duration) -> ServerWait {
        ServerWait {
            asked,
            wait: asked.min(MAX_SERVER_WAIT),
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the APIs asked here).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<ServerWait> {
    let secs = header_number(headers, reqwest::header::RETRY_AFTER.as_str())?;
    Some(ServerWait::asked(Duration::from_secs(secs)))
}

/// `ratelimit-reset` (the Unix time a quota resets, as DigitalOcean sends it) minus `now`; a time
/// already past is no wait.
pub(crate) fn ratelimit_reset(
    headers: &reqwest::header::HeaderMap,
    now: SystemTime,
) -> Option<ServerWait> {
    let reset = header_number(headers, "ratelimit-reset")?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(ServerWait::asked(Duration::from_secs(
        reset.saturating_sub(now),
    )))
}

fn header_number(headers: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
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

    /// A server on 127.0.0.1 that takes one connection, reads what the client sends first (a
    /// request, or a TLS ClientHello), then does `answer` with the connection.
    fn serve_once(answer: impl FnOnce(&mut std::net::TcpStream) + Send + 'static) -> u16 {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let _ = sock.read(&mut [0u8; 4096]);
            answer(&mut sock);
        });
        port
    }

    fn write(sock: &mut std::net::TcpStream, bytes: &[u8]) {
        use std::io::Write;
        sock.write_all(bytes).unwrap();
        sock.flush().unwrap();
    }

    fn test_client(timeout: Option<Duration>) -> reqwest::Client {
        let opts = ClientOptions {
            timeout,
            ..ClientOptions::new(Roots::Empty)
        };
        client(opts, |e| Error::new(ErrorKind::Tls, e.to_string())).unwrap()
    }

    async fn get(client: &reqwest::Client, url: &str) -> Result<reqwest::Response, TransportError> {
        send(client.get(url)).await
    }

    /// A request to 127.0.0.1:`port` that fails.
    async fn get_err(timeout: Option<Duration>, port: u16) -> TransportError {
        let url = format!("http://127.0.0.1:{port}/");
        get(&test_client(timeout), &url).await.unwrap_err()
    }

    /// A 200 from 127.0.0.1:`port` whose body cannot be read whole within `max` bytes.
    async fn body_err(timeout: Option<Duration>, port: u16, max: usize) -> TransportError {
        let url = format!("http://127.0.0.1:{port}/");
        let resp = get(&test_client(timeout), &url).await.unwrap();
        read_body(resp, max).await.unwrap_err()
    }

    fn expect(t: &TransportError, kind: ErrorKind, stage: Stage) {
        assert_eq!((t.kind, t.stage), (kind, stage), "{}", t.detail);
    }

    #[tokio::test]
    async fn connect_failures_are_refused_or_unreachable() {
        // a port that was just free: connecting to it is refused
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = get_err(None, port).await;
        expect(&t, ErrorKind::Refused, Stage::Connect);

        // a name that does not resolve (a resolver that knows no name: no query leaves the host)
        struct NoNames;
        impl reqwest::dns::Resolve for NoNames {
            fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
                Box::pin(async { Err(std::io::Error::other("no such host").into()) })
            }
        }
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(Roots::Empty, false).unwrap())
            .no_proxy()
            .dns_resolver(Arc::new(NoNames))
            .build()
            .unwrap();
        let t = get(&client, "http://api.example/").await.unwrap_err();
        expect(&t, ErrorKind::Unreachable, Stage::Connect);
    }

    #[tokio::test]
    async fn a_tls_handshake_with_a_server_that_does_not_speak_tls_is_tls() {
        // the client speaks first in TLS: its ClientHello is answered in plain HTTP
        let port = serve_once(|s| write(s, b"HTTP/1.1 400 Bad Request\r\n\r\n"));
        let t = get(&test_client(None), &format!("https://127.0.0.1:{port}/"))
            .await
            .unwrap_err();
        expect(&t, ErrorKind::Tls, Stage::Connect);
    }

    #[tokio::test]
    async fn after_connecting_silence_is_a_timeout_garbage_malformed_and_a_close_io() {
        let silent = serve_once(|_| std::thread::sleep(Duration::from_secs(2)));
        let t = get_err(Some(Duration::from_millis(200)), silent).await;
        expect(&t, ErrorKind::Timeout, Stage::Request);

        let not_http = serve_once(|s| write(s, b"SSH-2.0-OpenSSH_9.6\r\n\r\n"));
        let t = get_err(None, not_http).await;
        expect(&t, ErrorKind::Malformed, Stage::Request);

        let closes = serve_once(|_| {});
        let t = get_err(None, closes).await;
        expect(&t, ErrorKind::Io, Stage::Request);
    }

    #[tokio::test]
    async fn a_redirect_loop_is_an_http_status_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::Read;
            for conn in listener.incoming() {
                let Ok(mut sock) = conn else { return };
                std::thread::spawn(move || loop {
                    let mut buf = [0u8; 4096];
                    match sock.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => write(
                            &mut sock,
                            b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n",
                        ),
                    }
                });
            }
        });
        let t = get_err(None, port).await;
        expect(&t, ErrorKind::HttpStatus, Stage::Request);
    }

    #[tokio::test]
    async fn a_body_that_stops_early_is_malformed_too_large_or_a_timeout() {
        let cut = serve_once(|s| {
            write(
                s,
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
            );
        });
        let t = body_err(None, cut, 1_000).await;
        expect(&t, ErrorKind::Malformed, Stage::Body);
        assert!(
            t.detail
                .starts_with("the answer was truncated after 10 bytes ("),
            "{}",
            t.detail
        );

        let big = serve_once(|s| {
            write(
                s,
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
            )
        });
        let t = body_err(None, big, 5).await;
        expect(&t, ErrorKind::Malformed, Stage::TooLarge);
        assert_eq!(t.detail, "the answer is larger than 5 bytes");

        let slow = serve_once(|s| {
            write(s, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234");
            std::thread::sleep(Duration::from_secs(2));
        });
        let t = body_err(Some(Duration::from_millis(300)), slow, 1_000).await;
        expect(&t, ErrorKind::Timeout, Stage::Body);
    }

    #[test]
    fn server_waits_are_read_in_seconds_or_from_the_reset_time_and_capped() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let secs = Duration::from_secs;
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        assert_eq!(ratelimit_reset(&h, now), None);
        for (value, asked) in [("3", 3), (" 7 ", 7), ("600", 600)] {
            h.insert("retry-after", HeaderValue::from_static(value));
            let w = retry_after(&h).unwrap();
            assert_eq!((w.asked, w.wait), (secs(asked), secs(asked)));
        }
        // past the cap: asked as sent, waited at most MAX_SERVER_WAIT (a deadline never overflows)
        h.insert(
            "retry-after",
            HeaderValue::from_static("18446744073709551615"),
        );
        let w = retry_after(&h).unwrap();
        assert_eq!((w.asked, w.wait), (secs(u64::MAX), MAX_SERVER_WAIT));
        // the HTTP-date form is not read
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);

        h.insert("ratelimit-reset", HeaderValue::from_static("1000042"));
        assert_eq!(ratelimit_reset(&h, now).unwrap().wait, secs(42));
        h.insert("ratelimit-reset", HeaderValue::from_static("1003600"));
        let w = ratelimit_reset(&h, now).unwrap();
        assert_eq!((w.asked, w.wait), (secs(3_600), MAX_SERVER_WAIT));
        // a reset in the past: no wait
        h.insert("ratelimit-reset", HeaderValue::from_static("5"));
        assert_eq!(ratelimit_reset(&h, now).unwrap().wait, Duration::ZERO);
    }

    #[test]
    fn a_plain_http_url_needs_no_roots() {
        assert!(matches!(
            Roots::for_url("https://api.example"),
            Roots::System
        ));
        assert!(matches!(
            Roots::for_url("http://rancher-metadata/"),
            Roots::Empty
        ));
    }
}
