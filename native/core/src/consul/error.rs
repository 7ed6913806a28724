//! Consul's failures in words: what a status means (which token or ACL is missing for 401/403, the
//! Agent endpoint's reach for 404, the wait for 429), which options to check after a transport or
//! TLS setup failure, and which query in which datacenter failed. The kinds are
//! [`crate::http`]'s, except where Consul's answer says more (`ACL not found` is an unknown token).

use std::time::Duration;

use reqwest::StatusCode;

use super::{Endpoint, Query, Service};
use crate::event::{Error, ErrorKind};
use crate::http::{Stage, TlsError, TransportError};

/// The most bytes of a Consul answer quoted in an error.
const MAX_QUOTED: usize = 200;

/// A failed request, with the delay Consul asked for (429 `Retry-After`, at most
/// [`crate::http::MAX_SERVER_WAIT`]).
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) retry_after: Option<Duration>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            error,
            retry_after: None,
        }
    }
}

/// The ACL a query needs, for 403 messages.
pub(super) fn acl_needed(query: &Query) -> String {
    let svc = match &query.service {
        Service::Name(n) => format!("service:read on \"{n}\""),
        Service::Id(id) => format!("service:read on the service of id \"{id}\""),
    };
    match query.endpoint {
        Endpoint::Agent => svc,
        // Health and Catalog lists also drop the nodes the token cannot read.
        Endpoint::Health | Endpoint::Catalog => format!("{svc} and node:read on its nodes"),
    }
}

fn quoted(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_QUOTED)
        .collect()
}

/// A non-success status (other than the Agent health endpoint's 429/503, which carry data), in
/// words: which token or ACL is missing for 401/403.
pub(super) fn status_error(
    what: &str,
    acl: Option<&str>,
    status: StatusCode,
    body: &[u8],
    retry: Option<Duration>,
) -> Failure {
    let said = quoted(body);
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(" (Consul said: {said})")
    };
    let acl_text = acl.unwrap_or("no ACL (any token works)");
    let (kind, message) = match status.as_u16() {
        401 => (
            ErrorKind::Unauthorized,
            format!(
                "{what}: 401 Unauthorized{said}; the token (access_token or CONSUL_HTTP_TOKEN) \
                 was refused"
            ),
        ),
        403 if said.contains("ACL not found") => (
            ErrorKind::Unauthorized,
            format!(
                "{what}: 403{said}: Consul does not know the token; set access_token (or \
                 CONSUL_HTTP_TOKEN) to a token that exists. It needs {acl_text}"
            ),
        ),
        403 => (
            ErrorKind::Forbidden,
            format!(
                "{what}: 403 Permission denied{said}; the token (access_token or \
                 CONSUL_HTTP_TOKEN, or the agent's default token when none is set) lacks \
                 {acl_text}"
            ),
        ),
        404 => (
            ErrorKind::NotFound,
            format!(
                "{what}: 404{said}; check the service name/id, dc, and that this agent knows the \
                 service (the Agent endpoint sees only services registered on this agent)"
            ),
        ),
        429 => (
            ErrorKind::HttpStatus,
            format!(
                "{what}: 429 Too Many Requests{said}; Consul is rate limiting, retrying after {}",
                retry
                    .map(|d| format!("{} s", d.as_secs()))
                    .unwrap_or_else(|| "backoff".into())
            ),
        ),
        _ => (
            ErrorKind::HttpStatus,
            format!("{what}: HTTP {status}{said}"),
        ),
    };
    Failure {
        error: Error::new(kind, message),
        retry_after: retry,
    }
}

/// A transport failure of `what` (e.g. `GET <url>`): which options to check.
pub(super) fn transport_error(what: &str, t: TransportError) -> Error {
    let hint = match (t.stage, t.kind) {
        (Stage::TooLarge, _) => "",
        (_, ErrorKind::Tls) => {
            "; the agent's certificate must be signed by ca_file (CONSUL_CACERT) and name the \
             host of base_url, and with verify_incoming the agent needs a client certificate \
             (cert_file/key_file, CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)"
        }
        _ => "; is the Consul agent reachable (base_url or CONSUL_HTTP_ADDR)?",
    };
    Error::new(t.kind, format!("{what}: {}{hint}", t.detail))
}

/// A TLS setup failure (the CA file, the client certificate or key): the options that name them.
pub(super) fn tls_setup_error(e: TlsError) -> Error {
    Error::new(
        ErrorKind::Tls,
        format!(
            "Consul TLS setup: {e}; check ca_file (CONSUL_CACERT) and cert_file/key_file \
             (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)"
        ),
    )
}

/// `error`, prefixed with the query and datacenter it is about (the watch reports several).
pub(super) fn about(q: &Query, dc: Option<&str>, mut error: Error) -> Error {
    let ep = match q.endpoint {
        Endpoint::Agent => "Agent",
        Endpoint::Health => "Health",
        Endpoint::Catalog => "Catalog",
    };
    let service = match &q.service {
        Service::Name(n) => format!("{ep} service \"{n}\""),
        Service::Id(id) => format!("{ep} service id \"{id}\""),
    };
    let dc = dc.map(|d| format!(" (datacenter {d})")).unwrap_or_default();
    error.message = format!("{service}{dc}: {}", error.message);
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::fixtures::query;

    #[test]
    fn a_403_names_the_acl_and_acl_not_found_names_the_token() {
        let q = query(Endpoint::Health, Service::Name("web".into()));
        let acl = acl_needed(&q);
        let f = status_error(
            "GET x",
            Some(&acl),
            StatusCode::FORBIDDEN,
            b"Permission denied",
            None,
        );
        assert_eq!(f.error.kind, ErrorKind::Forbidden);
        assert!(f.error.message.contains("service:read on \"web\""));
        assert!(f.error.message.contains("node:read"));
        let f = status_error(
            "GET x",
            Some(&acl),
            StatusCode::FORBIDDEN,
            b"ACL not found",
            None,
        );
        assert_eq!(f.error.kind, ErrorKind::Unauthorized);
        assert!(f.error.message.contains("does not know the token"));
        let f = status_error(
            "GET x",
            None,
            StatusCode::TOO_MANY_REQUESTS,
            b"",
            Some(Duration::from_secs(2)),
        );
        assert_eq!(f.retry_after, Some(Duration::from_secs(2)));
        assert!(f.error.message.contains("retrying after 2 s"));
    }

    #[test]
    fn a_watch_error_names_its_query_and_datacenter() {
        let q = query(Endpoint::Agent, Service::Id("web-1".into()));
        let e = about(&q, Some("dc2"), Error::new(ErrorKind::Timeout, "slow"));
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert_eq!(
            e.message,
            "Agent service id \"web-1\" (datacenter dc2): slow"
        );
        let q = query(Endpoint::Health, Service::Name("web".into()));
        let e = about(&q, None, Error::new(ErrorKind::Io, "x"));
        assert_eq!(e.message, "Health service \"web\": x");
    }
}
