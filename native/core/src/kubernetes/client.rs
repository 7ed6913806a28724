//! The HTTPS client for the API server: verified TLS (the service account's `ca.crt`, else the
//! system roots), the token read from its file at every request (projected tokens rotate), bounded
//! bodies, and every failure turned into an [`Error`] whose message says what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;

use super::service_account;
use crate::event::{Error, ErrorKind};
use crate::http::{self, ClientOptions, Roots, Stage, TlsError, TransportError};

/// The most of a server's error body we quote in a log line.
const MAX_QUOTED: usize = 400;

/// A TLS setup failure in words: the service account's `ca.crt`, else the system roots.
fn tls_error(e: TlsError) -> Error {
    match e {
        TlsError::NoSystemRoots => Error::new(
            ErrorKind::Tls,
            "no ca.crt in the service account directory and no system root certificates: \
             mount the service account (automountServiceAccountToken) or install \
             ca-certificates",
        ),
        other => Error::new(ErrorKind::Tls, other.to_string()),
    }
}

/// What a request was, for messages: verb, resource, namespace, RBAC group.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub verb: &'static str,
    pub resource: &'static str,
    pub group: &'static str,
    pub namespace: String,
    pub url: reqwest::Url,
}

/// An HTTP client bound to one API server and one service account directory.
pub(super) struct ApiClient {
    http: reqwest::Client,
    token_file: PathBuf,
}

impl ApiClient {
    /// Verified against the service account's `ca.crt` when it exists, else the system roots; no
    /// verification only with `kubernetes_insecure_skip_tls_verify`.
    pub(super) fn new(
        service_account: &Path,
        insecure: bool,
        connect_timeout: Duration,
    ) -> Result<Self, Error> {
        let ca = service_account::ca_file(service_account);
        let opts = ClientOptions {
            insecure,
            connect_timeout: Some(connect_timeout),
            ..ClientOptions::new(Roots::CaFileOrSystem(&ca))
        };
        Ok(ApiClient {
            http: http::client(opts, tls_error)?,
            token_file: service_account::token_file(service_account),
        })
    }

    /// Read at every request: kubelet rewrites projected tokens before they expire.
    fn token(&self) -> Result<String, Error> {
        service_account::token(&self.token_file)
    }

    /// Send `req`, with `timeout` for the whole exchange when given (lists), and return the
    /// response once its status is 200.
    pub(super) async fn get(
        &self,
        req: &Request,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, GetError> {
        let token = self.token().map_err(GetError::Failed)?;
        let mut builder = self
            .http
            .get(req.url.clone())
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        let resp = http::send(builder)
            .await
            .map_err(|t| GetError::Failed(transport_error(req, t)))?;
        if resp.status() == StatusCode::OK {
            return Ok(resp);
        }
        let status = resp.status();
        let body = read_limited(resp, 64 * 1024, req).await.unwrap_or_default();
        let error = status_error(req, status, &body);
        Err(if status == StatusCode::GONE {
            GetError::Gone(error)
        } else {
            GetError::Failed(error)
        })
    }
}

/// How a request failed, where the watch's control flow depends on it.
#[derive(Debug)]
pub(super) enum GetError {
    /// 410 Gone: the resourceVersion expired; the watch re-lists.
    Gone(Error),
    /// Anything else, worded for the operator.
    Failed(Error),
}

impl From<GetError> for Error {
    fn from(e: GetError) -> Error {
        match e {
            GetError::Gone(e) | GetError::Failed(e) => e,
        }
    }
}

/// Read a body of at most `max` bytes.
pub(super) async fn read_limited(
    resp: reqwest::Response,
    max: usize,
    req: &Request,
) -> Result<Vec<u8>, Error> {
    http::read_body(resp, max)
        .await
        .map_err(|t| transport_error(req, t))
}

/// Word a transport failure: what to check or raise.
pub(super) fn transport_error(req: &Request, t: TransportError) -> Error {
    let host = req.url.host_str().unwrap_or("?");
    let port = req.url.port_or_known_default().unwrap_or(443);
    let detail = t.detail;
    match (t.stage, t.kind) {
        (Stage::TooLarge, kind) => Error::new(
            kind,
            format!(
                "{} {}: {detail}; narrow kubernetes_selector or raise kubernetes_max_body_bytes",
                req.verb, req.url
            ),
        ),
        (_, ErrorKind::Timeout) => Error::new(
            ErrorKind::Timeout,
            format!(
                "{} {}: no answer in time ({detail}); check that the API server {host}:{port} is \
                 reachable from this pod, or raise kubernetes_request_timeout",
                req.verb, req.url
            ),
        ),
        (Stage::Body, kind) => Error::new(
            kind,
            format!("{} {}: {detail}; will retry", req.verb, req.url),
        ),
        (_, ErrorKind::Tls) => Error::new(
            ErrorKind::Tls,
            format!(
                "TLS with {host}:{port} failed: {}; nothing was sent ({detail}). The server \
                 certificate must be signed by the CA in the service account's ca.crt (or a system \
                 root when there is none) and name {host}",
                tls_in_plain_words(&detail)
            ),
        ),
        (_, kind) => Error::new(
            kind,
            format!(
                "{} {}: {detail}; check kubernetes_master / KUBERNETES_SERVICE_HOST and network \
                 policies",
                req.verb, req.url
            ),
        ),
    }
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
pub(super) fn status_error(req: &Request, status: StatusCode, body: &[u8]) -> Error {
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
