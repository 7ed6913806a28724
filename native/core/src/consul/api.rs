//! Consul's HTTP API: the client, the requests of a query and of the datacenter list, the
//! answers' JSON shapes and the hosts libcluster_consul picks from them, and the index rules of
//! blocking queries ([`next_index`]). The transport is [`crate::http`]'s.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::error::{acl_needed, status_error, tls_setup_error, transport_error, Failure};
use super::url::{datacenters_url, query_url};
use super::{Config, Endpoint, Expected, Query, Service};
use crate::event::{Error, ErrorKind};
use crate::http::{self, ClientIdentity, ClientOptions, Roots};

/// What one successful request returned.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Answer {
    pub(super) names: Vec<String>,
    /// `X-Consul-Index`, when the endpoint gives one.
    pub(super) index: Option<u64>,
}

/// Consul's index rules for the next blocking request: `prev` is the index last asked with,
/// `returned` the answer's `X-Consul-Index`. Backwards → 0 (a fresh read); 0 → 1 (never a busy
/// loop); no index (the endpoint does not block) → 0.
pub(super) fn next_index(prev: u64, returned: Option<u64>) -> u64 {
    match returned {
        None => 0,
        Some(i) if i < prev => 0,
        Some(0) => 1,
        Some(i) => i,
    }
}

#[derive(Deserialize)]
struct AgentService {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct AgentHealthEntry {
    #[serde(rename = "AggregatedStatus", default)]
    status: String,
    #[serde(rename = "Service")]
    service: AgentService,
}

#[derive(Deserialize)]
struct HealthNode {
    #[serde(rename = "Node", default)]
    node: String,
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node")]
    node: HealthNode,
    #[serde(rename = "Service")]
    service: AgentService,
}

#[derive(Deserialize)]
struct CatalogEntry {
    #[serde(rename = "Node", default)]
    node: String,
    #[serde(rename = "Address", default)]
    address: String,
}

/// The hosts (what follows `@`) in an answer of `endpoint`, as libcluster_consul 1.1 picks them.
/// A body of another shape is an error.
pub(super) fn hosts_from_body(
    endpoint: Endpoint,
    service: &Service,
    passing: bool,
    expected: Expected,
    body: &[u8],
) -> Result<Vec<String>, String> {
    let err = |e: serde_json::Error| e.to_string();
    Ok(match (endpoint, service) {
        (Endpoint::Agent, Service::Id(_)) => {
            let s: AgentService = serde_json::from_slice(body).map_err(err)?;
            vec![s.address]
        }
        (Endpoint::Agent, Service::Name(_)) => {
            let entries: Vec<AgentHealthEntry> = serde_json::from_slice(body).map_err(err)?;
            entries
                .into_iter()
                .filter(|e| !passing || e.status == "passing")
                .map(|e| e.service.address)
                .collect()
        }
        (Endpoint::Health, _) => {
            let entries: Vec<HealthEntry> = serde_json::from_slice(body).map_err(err)?;
            entries
                .into_iter()
                .map(|e| {
                    if !e.service.address.is_empty() {
                        e.service.address
                    } else if expected == Expected::Host {
                        e.node.node
                    } else {
                        e.node.address
                    }
                })
                .collect()
        }
        (Endpoint::Catalog, _) => {
            let entries: Vec<CatalogEntry> = serde_json::from_slice(body).map_err(err)?;
            entries
                .into_iter()
                .map(|e| match expected {
                    Expected::Host => e.node,
                    Expected::Ip => e.address,
                })
                .collect()
        }
    })
}

/// `basename@host` for each valid host (sorted, deduplicated), and how many were dropped.
pub(super) fn names(basename: &str, hosts: &[String]) -> (Vec<String>, usize) {
    let mut out: Vec<String> = hosts
        .iter()
        .filter_map(|h| crate::node_name::join(basename, h.trim()))
        .collect();
    let dropped = hosts.len() - out.len();
    out.sort_unstable();
    out.dedup();
    (out, dropped)
}

/// The HTTP client of a task: TLS from `cfg.tls` (a plain `http://` agent without a CA file or a
/// client certificate needs no roots), no overall timeout (each request sets its own).
pub(super) fn client(cfg: &Config) -> Result<reqwest::Client, Error> {
    let tls = &cfg.tls;
    let identity = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
        _ => None,
    };
    let roots = match (&tls.ca_file, identity) {
        (Some(path), _) => Roots::CaFile(path),
        (None, Some(_)) => Roots::System,
        (None, None) => Roots::for_url(&cfg.base_url),
    };
    let plain = matches!(roots, Roots::Empty);
    let opts = ClientOptions {
        insecure: tls.insecure && !plain,
        identity,
        connect_timeout: Some(cfg.request_timeout),
        ..ClientOptions::new(roots)
    };
    http::client(opts, tls_setup_error)
}

/// Status, `X-Consul-Index`, body, `Retry-After`, and whether Consul left entries out because of
/// the token's ACLs (`X-Consul-Results-Filtered-By-ACLs`).
type Got = (StatusCode, Option<u64>, Vec<u8>, Option<Duration>, bool);

async fn get(
    client: &reqwest::Client,
    cfg: &Config,
    url: Url,
    timeout: Duration,
) -> Result<Got, Failure> {
    let what = format!("GET {url}");
    let mut req = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(timeout);
    if let Some(t) = &cfg.token {
        req = req.header("X-Consul-Token", t);
    }
    let resp = http::send(req)
        .await
        .map_err(|t| transport_error(&what, t))?;
    let status = resp.status();
    let index = resp
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let retry = http::retry_after(resp.headers()).map(|w| w.wait);
    let filtered = resp
        .headers()
        .get("x-consul-results-filtered-by-acls")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let body = http::read_body(resp, cfg.max_body)
        .await
        .map_err(|t| transport_error(&what, t))?;
    Ok((status, index, body, retry, filtered))
}

/// One request of `query` in `dc`.
pub(super) async fn fetch(
    client: &reqwest::Client,
    cfg: &Config,
    query: &Query,
    dc: Option<&str>,
    index: u64,
    blocking: bool,
) -> Result<Answer, Failure> {
    let url = query_url(cfg, query, dc, index, blocking)?;
    let what = format!("GET {url}");
    let timeout = if blocking && index > 0 {
        cfg.wait + cfg.wait / 16 + cfg.request_timeout
    } else {
        cfg.request_timeout
    };
    let (status, returned, body, retry, filtered) = get(client, cfg, url, timeout).await?;
    // The Agent's health-by-name endpoint answers 429 (some check warning) and 503 (some check
    // critical) with the same list as 200.
    let data_status = status.is_success()
        || (query.endpoint == Endpoint::Agent
            && matches!(query.service, Service::Name(_))
            && matches!(status.as_u16(), 429 | 503)
            && body.first() == Some(&b'['));
    if !data_status {
        let acl = acl_needed(query);
        return Err(status_error(&what, Some(&acl), status, &body, retry));
    }
    // Consul drops, without an error, the entries of services and nodes the token may not read: a
    // list that may be missing instances is not a complete answer.
    if filtered {
        return Err(Error::new(
            ErrorKind::Forbidden,
            format!(
                "{what}: Consul left entries out because of the token's ACLs \
                 (X-Consul-Results-Filtered-By-ACLs); the token (access_token or \
                 CONSUL_HTTP_TOKEN) lacks {}",
                acl_needed(query)
            ),
        )
        .into());
    }
    let hosts = hosts_from_body(
        query.endpoint,
        &query.service,
        query.passing,
        query.expected,
        &body,
    )
    .map_err(|e| {
        Error::new(
            ErrorKind::Malformed,
            format!("{what}: the answer is not what this endpoint returns: {e}"),
        )
    })?;
    let (names, dropped) = names(&cfg.basename, &hosts);
    if dropped > 0 {
        tracing::debug!("{what}: {dropped} address(es) do not make a valid node name; dropped");
    }
    Ok(Answer {
        names,
        index: returned,
    })
}

/// The catalog's datacenters, sorted, without duplicates.
pub(super) async fn fetch_datacenters(
    client: &reqwest::Client,
    cfg: &Config,
) -> Result<Vec<String>, Failure> {
    let url = datacenters_url(cfg)?;
    let what = format!("GET {url}");
    let (status, _, body, retry, _) = get(client, cfg, url, cfg.request_timeout).await?;
    if !status.is_success() {
        return Err(status_error(&what, None, status, &body, retry));
    }
    let mut dcs: Vec<String> = serde_json::from_slice(&body).map_err(|e| {
        Error::new(
            ErrorKind::Malformed,
            format!("{what}: not a list of datacenters: {e}"),
        )
    })?;
    dcs.retain(|d| !d.is_empty());
    dcs.sort();
    dcs.dedup();
    Ok(dcs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_follows_consuls_rules() {
        // first answer, an ordinary change, a timeout with the same index
        assert_eq!(next_index(0, Some(12)), 12);
        assert_eq!(next_index(12, Some(15)), 15);
        assert_eq!(next_index(15, Some(15)), 15);
        // backwards (a snapshot restore): a fresh read
        assert_eq!(next_index(15, Some(9)), 0);
        // zero is never waited on (it would not block): 1
        assert_eq!(next_index(0, Some(0)), 1);
        // no index: the endpoint does not block
        assert_eq!(next_index(15, None), 0);
    }

    #[test]
    fn hosts_are_picked_as_libcluster_consul_picks_them() {
        let health = br#"[
            {"Node":{"Node":"n1","Address":"10.0.0.1"},"Service":{"Address":""}},
            {"Node":{"Node":"n2","Address":"10.0.0.2"},"Service":{"Address":"10.1.0.2"}}]"#;
        let name = Service::Name("web".into());
        assert_eq!(
            hosts_from_body(Endpoint::Health, &name, false, Expected::Ip, health).unwrap(),
            vec!["10.0.0.1", "10.1.0.2"]
        );
        assert_eq!(
            hosts_from_body(Endpoint::Health, &name, false, Expected::Host, health).unwrap(),
            vec!["n1", "10.1.0.2"]
        );
        let catalog = br#"[{"Node":"n1","Address":"10.0.0.1","ServiceAddress":"10.9.9.9"}]"#;
        assert_eq!(
            hosts_from_body(Endpoint::Catalog, &name, false, Expected::Ip, catalog).unwrap(),
            vec!["10.0.0.1"]
        );
        assert_eq!(
            hosts_from_body(Endpoint::Catalog, &name, false, Expected::Host, catalog).unwrap(),
            vec!["n1"]
        );
        let agent = br#"[{"AggregatedStatus":"passing","Service":{"Address":"10.0.0.1"}},
                         {"AggregatedStatus":"critical","Service":{"Address":"10.0.0.2"}}]"#;
        assert_eq!(
            hosts_from_body(Endpoint::Agent, &name, false, Expected::Ip, agent).unwrap(),
            vec!["10.0.0.1", "10.0.0.2"]
        );
        assert_eq!(
            hosts_from_body(Endpoint::Agent, &name, true, Expected::Ip, agent).unwrap(),
            vec!["10.0.0.1"]
        );
        let id = Service::Id("web-1".into());
        assert_eq!(
            hosts_from_body(
                Endpoint::Agent,
                &id,
                false,
                Expected::Ip,
                br#"{"Address":"10.0.0.7"}"#
            )
            .unwrap(),
            vec!["10.0.0.7"]
        );
        for bad in [&b"{}"[..], b"[{\"Node\":1}]", b"<html>", b"null", b"[1]"] {
            assert!(
                hosts_from_body(Endpoint::Health, &name, false, Expected::Ip, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn names_are_validated_before_they_leave_rust() {
        let hosts: Vec<String> = [
            "10.0.0.1",
            "",
            "n1.node.consul",
            "bad host",
            "10.0.0.1",
            "::1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (names, dropped) = names("app", &hosts);
        assert_eq!(names, vec!["app@10.0.0.1", "app@::1", "app@n1.node.consul"]);
        assert_eq!(dropped, 2); // "" and "bad host"
    }
}
