//! The HTTPS client for the API server: verified TLS (the service account's `ca.crt`, else the
//! system roots), the token read from its file at every request (projected tokens rotate), bounded
//! bodies, and every failure turned into an [`Error`] whose message says what to do.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::event::{Error, ErrorKind};

/// The most of a server's error body we quote in a log line.
const MAX_QUOTED: usize = 400;

/// Build the rustls config: ring provider, TLS 1.2/1.3, verified against `ca_file` when it exists,
/// else against the system roots. `insecure` (an explicit, loudly documented option) skips
/// verification entirely.
pub fn tls_config(ca_file: Option<&Path>, insecure: bool) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Tls, format!("cannot set up TLS: {e}")))?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(ca_file)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) if path.exists() => {
            let bytes = std::fs::read(path).map_err(|e| {
                Error::new(
                    ErrorKind::Tls,
                    format!("cannot read the CA bundle {}: {e}", path.display()),
                )
            })?;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| {
                    Error::new(
                        ErrorKind::Tls,
                        format!("the CA bundle {} is not valid PEM: {e}", path.display()),
                    )
                })?;
                store.add(cert).map_err(|e| {
                    Error::new(
                        ErrorKind::Tls,
                        format!(
                            "the CA bundle {} holds a bad certificate: {e}",
                            path.display()
                        ),
                    )
                })?;
            }
            if store.is_empty() {
                return Err(Error::new(
                    ErrorKind::Tls,
                    format!("the CA bundle {} holds no certificate", path.display()),
                ));
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(Error::new(
                    ErrorKind::Tls,
                    "no ca.crt in the service account directory and no system root certificates: \
                     mount the service account (automountServiceAccountToken) or install \
                     ca-certificates",
                ));
            }
        }
    }
    Ok(store)
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

/// What a request was, for messages: verb, resource, namespace, RBAC group.
#[derive(Debug, Clone)]
pub struct Request {
    pub verb: &'static str,
    pub resource: &'static str,
    pub group: &'static str,
    pub namespace: String,
    pub url: reqwest::Url,
}

/// An HTTP client bound to one API server and one service account directory.
pub struct ApiClient {
    http: reqwest::Client,
    token_file: PathBuf,
}

impl ApiClient {
    pub fn new(
        tls: ClientConfig,
        token_file: PathBuf,
        connect_timeout: Duration,
    ) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(connect_timeout)
            // The API server is reached directly, as in-cluster clients do; proxies would see the token.
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Tls, format!("cannot build the HTTP client: {e}"))
            })?;
        Ok(ApiClient { http, token_file })
    }

    /// Read at every request: kubelet rewrites projected tokens before they expire.
    fn token(&self) -> Result<String, Error> {
        // A small local file (tmpfs in a pod): a blocking read costs microseconds.
        match std::fs::read_to_string(&self.token_file) {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            Ok(_) => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the service account token {} is empty",
                    self.token_file.display()
                ),
            )),
            Err(e) => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "cannot read the service account token {}: {e}; mount the service account \
                     (automountServiceAccountToken: true) or set kubernetes_service_account_path",
                    self.token_file.display()
                ),
            )),
        }
    }

    /// Send `req`, with `timeout` for the whole exchange when given (lists), and return the
    /// response once its status is 200.
    pub async fn get(
        &self,
        req: &Request,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, Error> {
        let token = self.token()?;
        let mut builder = self
            .http
            .get(req.url.clone())
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        let resp = builder.send().await.map_err(|e| transport_error(req, &e))?;
        if resp.status() == StatusCode::OK {
            return Ok(resp);
        }
        let status = resp.status();
        let body = read_limited(resp, 64 * 1024, timeout, req)
            .await
            .unwrap_or_default();
        Err(status_error(req, status, &body))
    }
}

/// Read a body of at most `max` bytes.
pub async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
    _timeout: Option<Duration>,
    req: &Request,
) -> Result<Vec<u8>, Error> {
    let mut body = Vec::with_capacity(
        resp.content_length()
            .map(|l| (l as usize).min(max))
            .unwrap_or(64 * 1024),
    );
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(Error::new(
                        ErrorKind::Malformed,
                        format!(
                            "{} {}: the answer is larger than {max} bytes; narrow \
                             kubernetes_selector or raise kubernetes_max_body_bytes",
                            req.verb, req.url
                        ),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(transport_error(req, &e)),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "{} {}: the answer was truncated after {} bytes ({}); will retry",
                        req.verb,
                        req.url,
                        body.len(),
                        chain(&e)
                    ),
                ))
            }
        }
    }
}

/// The error and its causes, `: `-joined.
pub fn chain(e: &dyn std::error::Error) -> String {
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

fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    // hyper-util boxes connector errors in types of its own; the rustls error is not always
    // reachable by downcasting, so its text is checked too.
    let text = chain(e);
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

/// Classify a failure before a status line arrived.
pub fn transport_error(req: &Request, e: &reqwest::Error) -> Error {
    let host = req.url.host_str().unwrap_or("?");
    let port = req.url.port_or_known_default().unwrap_or(443);
    let detail = chain(e);
    if e.is_timeout() {
        return Error::new(
            ErrorKind::Timeout,
            format!(
                "{} {}: no answer in time ({detail}); check that the API server {host}:{port} is \
                 reachable from this pod, or raise kubernetes_request_timeout",
                req.verb, req.url
            ),
        );
    }
    if is_tls(e) {
        return Error::new(
            ErrorKind::Tls,
            format!(
                "TLS with {host}:{port} failed: {}; nothing was sent ({detail}). The server \
                 certificate must be signed by the CA in the service account's ca.crt (or a system \
                 root when there is none) and name {host}",
                tls_in_plain_words(&detail)
            ),
        );
    }
    let kind = io_kind(e).unwrap_or(if e.is_connect() {
        ErrorKind::Unreachable
    } else {
        ErrorKind::Io
    });
    Error::new(
        kind,
        format!(
            "{} {}: {detail}; check kubernetes_master / KUBERNETES_SERVICE_HOST and network \
             policies",
            req.verb, req.url
        ),
    )
}

/// The common certificate failures, in the words an operator needs.
fn tls_in_plain_words(detail: &str) -> &'static str {
    if detail.contains("UnknownIssuer") {
        "the API server's certificate is not signed by a CA this node trusts (a wrong or stale ca.crt?)"
    } else if detail.contains("NotValidForName") {
        "the API server's certificate does not name the host asked (check kubernetes_master)"
    } else if detail.contains("Expired") || detail.contains("NotValidYet") {
        "the API server's certificate is expired or not yet valid (check the clocks)"
    } else {
        "the TLS handshake with the API server did not complete"
    }
}

/// Turn a non-200 status into an error that says what to do.
pub fn status_error(req: &Request, status: StatusCode, body: &[u8]) -> Error {
    let server: String = serde_json::from_slice::<super::api::Status>(body)
        .ok()
        .and_then(|s| s.message)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_QUOTED)
        .collect();
    let said = if server.is_empty() {
        String::new()
    } else {
        format!(" (the server said: {server})")
    };
    let (verb, resource, group, ns) = (req.verb, req.resource, req.group, &req.namespace);
    let group_shown = if group.is_empty() { "\"\"" } else { group };
    match status.as_u16() {
        401 => Error::new(
            ErrorKind::Unauthorized,
            format!(
                "401 Unauthorized for {verb} {resource} in namespace {ns}{said}: the service \
                 account token was rejected; check that the token file is current (it is re-read \
                 at every request) and that the service account still exists"
            ),
        ),
        403 => Error::new(
            ErrorKind::Forbidden,
            format!(
                "403 Forbidden: the service account may not {verb} {resource} in namespace \
                 {ns}{said}. Grant it a Role in namespace {ns} with the rule {{apiGroups: \
                 [{group_shown}], resources: [\"{resource}\"], verbs: [\"list\", \"watch\"]}} \
                 and a RoleBinding to the service account (see priv/rbac/{resource}.json)"
            ),
        ),
        404 => Error::new(
            ErrorKind::NotFound,
            format!(
                "404 Not Found for {verb} {resource} in namespace {ns}{said}: check \
                 kubernetes_namespace{}",
                if group.is_empty() {
                    String::new()
                } else {
                    format!(" and that the API server serves {group}/v1 (Kubernetes 1.21 or later)")
                }
            ),
        ),
        410 => Error::new(
            ErrorKind::HttpStatus,
            format!(
                "410 Gone for {verb} {resource}{said}: the resourceVersion expired; re-listing"
            ),
        ),
        code @ 500..=599 => Error::new(
            ErrorKind::HttpStatus,
            format!(
                "the API server failed with {code} for {verb} {resource} in namespace {ns}{said}; \
                 retrying with backoff"
            ),
        ),
        code => Error::new(
            ErrorKind::HttpStatus,
            format!("unexpected HTTP {code} for {verb} {resource} in namespace {ns}{said}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::tls_in_plain_words;

    #[test]
    fn certificate_failures_in_plain_words() {
        assert!(
            tls_in_plain_words("invalid peer certificate: UnknownIssuer").contains("not signed")
        );
        assert!(
            tls_in_plain_words("invalid peer certificate: NotValidForName")
                .contains("kubernetes_master")
        );
        assert!(tls_in_plain_words("invalid peer certificate: Expired").contains("expired"));
        assert!(tls_in_plain_words("received fatal alert").contains("did not complete"));
    }
}
