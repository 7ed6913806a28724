//! Consul discovery: the service instances of a Consul catalog, named `basename@<address>` (or
//! `basename@<node name>` with `expected: :host`), from the Agent, Health or Catalog HTTP API, in
//! one datacenter, a list of them, or every datacenter the catalog knows.
//!
//! Two ways to follow the catalog:
//!
//! - [`poll_once`]: one round; every query is asked once (concurrently) and one event is sent:
//!   `Nodes` when every query answered, `Partial` when some did, `Error` when none did.
//! - [`watch`]: **blocking queries**. Each Health/Catalog query is re-asked with the last
//!   `X-Consul-Index` and a `wait`, so Consul answers as soon as the service changes; Agent
//!   queries and the datacenter list (which Consul cannot block on) are re-asked every
//!   `poll_interval`. A `Nodes` event is sent whenever the union changes and every query has an
//!   answer; while some query fails, `Partial` (nothing may be pruned) or `Error`.
//!
//! The index rules are Consul's ("Blocking Queries", implementation details), in [`next_index`]:
//! an index that goes backwards resets to 0 (a fresh, non-blocking read), an index of 0 is used as
//! 1; and the calls of one query are rate limited (`min_interval` between two starts), with
//! exponential backoff after errors and `Retry-After` honoured on 429.
//!
//! Errors are never zero nodes. A 403 names the ACL the token lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::event::{Error, ErrorKind, Event, Sink};
use crate::http::{self, BodyError, ClientIdentity, Roots, TransportKind};

/// The most bytes of a Consul answer quoted in an error.
const MAX_QUOTED: usize = 200;

/// Which HTTP API a query asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/agent/service/:id` or `/v1/agent/health/service/name/:name` (the local agent only).
    Agent,
    /// `/v1/health/service/:name` (blocking).
    Health,
    /// `/v1/catalog/service/:name` (blocking).
    Catalog,
}

/// The service a query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    Name(String),
    Id(String),
}

/// What follows `@` in a node name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The service's address (else the node's address), libcluster_consul's default.
    Ip,
    /// The node's name (Health: only when the service has no address of its own, as in
    /// libcluster_consul; Catalog: always).
    Host,
}

/// The datacenters a query runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datacenters {
    /// The query's `dc` (or the agent's own datacenter when `None`).
    One(Option<String>),
    /// Each of these.
    List(Vec<String>),
    /// Every datacenter of `/v1/catalog/datacenters`, re-read every `poll_interval`.
    All,
}

/// One entry of `list_using` (a Multisite entry becomes one query per endpoint of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub endpoint: Endpoint,
    pub service: Service,
    pub passing: bool,
    pub expected: Expected,
    pub filter: Option<String>,
    pub datacenters: Datacenters,
}

/// TLS material: a CA file, a client certificate, or no verification at all.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub insecure: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `http(s)://host:port`, maybe with a query string kept on every request (its path is
    /// replaced, as libcluster_consul does).
    pub base_url: String,
    pub token: Option<String>,
    pub tls: Tls,
    pub basename: String,
    pub queries: Vec<Query>,
    /// The `wait` of a blocking query.
    pub wait: Duration,
    /// The deadline of a request, on top of `wait` (and Consul's `wait / 16` jitter) for a
    /// blocking one.
    pub request_timeout: Duration,
    /// How often queries Consul cannot block on (Agent, the datacenter list) are re-asked while
    /// watching; `None`: never.
    pub poll_interval: Option<Duration>,
    /// The least time between the starts of two requests of one query.
    pub min_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_body: usize,
}

/// One request's target: a query in one datacenter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SlotKey {
    query: usize,
    dc: Option<String>,
}

/// What one successful request returned.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    names: Vec<String>,
    /// `X-Consul-Index`, when the endpoint gives one.
    index: Option<u64>,
}

/// A failed request, with the delay Consul asked for (429 `Retry-After`).
#[derive(Debug, Clone)]
struct Failure {
    error: Error,
    retry_after: Option<Duration>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            error,
            retry_after: None,
        }
    }
}

/// Consul's index rules for the next blocking request: `prev` is the index last asked with,
/// `returned` the answer's `X-Consul-Index`. Backwards → 0 (a fresh read); 0 → 1 (never a busy
/// loop); no index (the endpoint does not block) → 0.
pub fn next_index(prev: u64, returned: Option<u64>) -> u64 {
    match returned {
        None => 0,
        Some(i) if i < prev => 0,
        Some(0) => 1,
        Some(i) => i,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Consul), capped at 10 minutes.
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    let secs: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(600)))
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
pub fn hosts_from_body(
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
pub fn names(basename: &str, hosts: &[String]) -> (Vec<String>, usize) {
    let mut out: Vec<String> = hosts
        .iter()
        .filter_map(|h| crate::node_name::join(basename, h.trim()))
        .collect();
    let dropped = hosts.len() - out.len();
    out.sort_unstable();
    out.dedup();
    (out, dropped)
}

/// The URL of `query` in `dc` (the base URL's query string is kept; `dc` wins over a `dc` in it).
fn query_url(
    cfg: &Config,
    query: &Query,
    dc: Option<&str>,
    index: u64,
    blocking: bool,
) -> Result<Url, Error> {
    let mut url = base(cfg)?;
    let segments: Vec<&str> = match (query.endpoint, &query.service) {
        (Endpoint::Agent, Service::Id(id)) => vec!["v1", "agent", "service", id],
        (Endpoint::Agent, Service::Name(n)) => vec!["v1", "agent", "health", "service", "name", n],
        (Endpoint::Health, Service::Name(n)) => vec!["v1", "health", "service", n],
        (Endpoint::Catalog, Service::Name(n)) => vec!["v1", "catalog", "service", n],
        (_, Service::Id(_)) => {
            return Err(Error::new(
                ErrorKind::Config,
                "only the Agent endpoint looks services up by id; use service: [name: ...]",
            ))
        }
    };
    url.path_segments_mut()
        .map_err(|_| bad_base(cfg))?
        .clear()
        .extend(segments);
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !(dc.is_some() && k == "dc"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some(dc) = dc {
        pairs.push(("dc".into(), dc.into()));
    }
    if query.passing && query.endpoint != Endpoint::Catalog {
        pairs.push(("passing".into(), "true".into()));
    }
    // Consul's filter expressions apply to the Health and Catalog lists (the Agent's per-service
    // endpoints take none).
    if let (Some(f), Endpoint::Health | Endpoint::Catalog) = (&query.filter, query.endpoint) {
        pairs.push(("filter".into(), f.clone()));
    }
    if blocking && index > 0 {
        pairs.push(("index".into(), index.to_string()));
        pairs.push(("wait".into(), format!("{}ms", cfg.wait.as_millis())));
    }
    set_query(&mut url, &pairs);
    Ok(url)
}

fn datacenters_url(cfg: &Config) -> Result<Url, Error> {
    let mut url = base(cfg)?;
    url.path_segments_mut()
        .map_err(|_| bad_base(cfg))?
        .clear()
        .extend(["v1", "catalog", "datacenters"]);
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "dc")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    set_query(&mut url, &pairs);
    Ok(url)
}

fn set_query(url: &mut Url, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
}

fn base(cfg: &Config) -> Result<Url, Error> {
    let url = Url::parse(&cfg.base_url).map_err(|_| bad_base(cfg))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(bad_base(cfg));
    }
    Ok(url)
}

fn bad_base(cfg: &Config) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "base_url {:?} is not an http:// or https:// URL; set base_url or CONSUL_HTTP_ADDR",
            cfg.base_url
        ),
    )
}

/// The ACL a query needs, for 403 messages.
fn acl_needed(query: &Query) -> String {
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
fn status_error(
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

fn transport_error(what: &str, e: &reqwest::Error) -> Error {
    let t = http::classify(e);
    let kind = match t.kind {
        TransportKind::Timeout if e.is_timeout() => ErrorKind::Timeout,
        TransportKind::Tls => ErrorKind::Tls,
        k => k.into(),
    };
    let hint = match kind {
        ErrorKind::Tls => {
            "; the agent's certificate must be signed by ca_file (CONSUL_CACERT) and name the \
             host of base_url, and with verify_incoming the agent needs a client certificate \
             (cert_file/key_file, CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)"
        }
        _ => "; is the Consul agent reachable (base_url or CONSUL_HTTP_ADDR)?",
    };
    Error::new(kind, format!("{what}: {}{hint}", t.detail))
}

/// The HTTP client of a task: TLS from `cfg.tls`, no proxy, no overall timeout (each request
/// sets its own).
pub(crate) fn client(cfg: &Config) -> Result<reqwest::Client, Error> {
    let tls = &cfg.tls;
    let roots = match &tls.ca_file {
        Some(path) => Roots::CaFile(path),
        None => Roots::System,
    };
    let https = cfg.base_url.starts_with("https:");
    let identity = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
        _ => None,
    };
    let tls_config = if https || tls.ca_file.is_some() || identity.is_some() {
        http::tls_config_with_identity(roots, tls.insecure, identity)
    } else {
        http::tls_config(Roots::Empty, false)
    }
    .map_err(|e| {
        Error::new(
            ErrorKind::Tls,
            format!(
                "Consul TLS setup: {e}; check ca_file (CONSUL_CACERT) and cert_file/key_file \
                 (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)"
            ),
        )
    })?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config)
        .no_proxy()
        .connect_timeout(cfg.request_timeout)
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot build the HTTP client: {e}")))
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
    let resp = req.send().await.map_err(|e| transport_error(&what, &e))?;
    let status = resp.status();
    let index = resp
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let retry = retry_after(
        resp.headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
    );
    let filtered = resp
        .headers()
        .get("x-consul-results-filtered-by-acls")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let body = http::read_body(resp, cfg.max_body)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { max } => Error::new(
                ErrorKind::Malformed,
                format!("{what}: the answer is larger than {max} bytes"),
            ),
            BodyError::Timeout(e) | BodyError::Broken { error: e, .. } => {
                transport_error(&what, &e)
            }
        })?;
    Ok((status, index, body, retry, filtered))
}

/// One request of `query` in `dc`.
async fn fetch(
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

async fn fetch_datacenters(client: &reqwest::Client, cfg: &Config) -> Result<Vec<String>, Failure> {
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

fn needs_datacenters(cfg: &Config) -> bool {
    cfg.queries
        .iter()
        .any(|q| q.datacenters == Datacenters::All)
}

/// Every (query, datacenter) to ask, given the catalog's datacenters (for `:all`).
fn slots(cfg: &Config, all_dcs: &[String]) -> BTreeSet<SlotKey> {
    let mut out = BTreeSet::new();
    for (i, q) in cfg.queries.iter().enumerate() {
        let dcs: Vec<Option<String>> = match &q.datacenters {
            Datacenters::One(dc) => vec![dc.clone()],
            Datacenters::List(l) => l.iter().cloned().map(Some).collect(),
            Datacenters::All => all_dcs.iter().cloned().map(Some).collect(),
        };
        for dc in dcs {
            out.insert(SlotKey { query: i, dc });
        }
    }
    out
}

fn in_dc(dc: &Option<String>) -> String {
    dc.as_ref()
        .map(|d| format!(" (datacenter {d})"))
        .unwrap_or_default()
}

/// What a set of per-query results amounts to: `Nodes` when each answered, `Partial` when some
/// did, `Error` when none did (or nothing has answered yet and something failed).
fn combine<'a>(results: impl Iterator<Item = &'a Result<Vec<String>, Error>>) -> Option<Event> {
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    let mut errors: Vec<&Error> = Vec::new();
    let mut ok = 0;
    for r in results {
        match r {
            Ok(n) => {
                ok += 1;
                nodes.extend(n.iter().cloned());
            }
            Err(e) => errors.push(e),
        }
    }
    let error = match errors.as_slice() {
        [] => return Some(Event::Nodes(nodes.into_iter().collect())),
        [one] => (*one).clone(),
        many => Error::new(
            many[0].kind,
            many.iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    if ok == 0 {
        Some(Event::Error(error))
    } else {
        Some(Event::Partial {
            nodes: nodes.into_iter().collect(),
            error,
        })
    }
}

/// One round: every query once, concurrently; one event.
pub async fn poll_once(cfg: Arc<Config>, sink: Arc<dyn Sink>) {
    sink.send(round(&cfg).await);
}

async fn round(cfg: &Config) -> Event {
    let client = match client(cfg) {
        Ok(c) => c,
        Err(e) => return Event::Error(e),
    };
    let dcs = if needs_datacenters(cfg) {
        match fetch_datacenters(&client, cfg).await {
            Ok(d) => d,
            Err(f) => return Event::Error(f.error),
        }
    } else {
        Vec::new()
    };
    let keys: Vec<SlotKey> = slots(cfg, &dcs).into_iter().collect();
    let results: Vec<Result<Vec<String>, Error>> =
        futures::future::join_all(keys.iter().map(|k| {
            let client = &client;
            async move {
                let q = &cfg.queries[k.query];
                fetch(client, cfg, q, k.dc.as_deref(), 0, false)
                    .await
                    .map(|a| a.names)
                    .map_err(|f| f.error)
            }
        }))
        .await;
    combine(results.iter()).unwrap_or(Event::Nodes(Vec::new()))
}

/// The state of one (query, datacenter) while watching.
struct Slot {
    index: u64,
    result: Option<Result<Vec<String>, Error>>,
    backoff: Backoff,
    /// When its next request may start.
    next_at: Instant,
    in_flight: bool,
}

enum Done {
    Query(SlotKey, u64, Instant, Result<Answer, Failure>),
    Datacenters(Result<Vec<String>, Failure>),
}

/// When the next request of a slot starts after an answer: at once for a blocking query (but not
/// sooner than `min_interval` after the last start), after `poll_interval` for one Consul cannot
/// block on.
fn next_start(
    started: Instant,
    now: Instant,
    blocking: bool,
    min_interval: Duration,
    poll_interval: Option<Duration>,
) -> Option<Instant> {
    if blocking {
        Some((started + min_interval).max(now))
    } else {
        poll_interval.map(|p| (started + p.max(min_interval)).max(now))
    }
}

/// Blocking queries until the sink is gone (the handle is stopped).
pub async fn watch(cfg: Arc<Config>, sink: Arc<dyn Sink>) {
    let client = match client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            // The owner restarts an ended stream after its backoff.
            if sink.send(Event::Error(e)) {
                sink.send(Event::Done);
            }
            return;
        }
    };
    let far = || Instant::now() + Duration::from_secs(86_400 * 365);
    let mut slots: BTreeMap<SlotKey, Slot> = BTreeMap::new();
    let want_dcs = needs_datacenters(&cfg);
    let mut dcs: Option<Vec<String>> = None;
    let mut dcs_next_at = Instant::now();
    let mut dcs_in_flight = false;
    let mut dcs_backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut dcs_error: Option<Error> = None;
    if !want_dcs {
        dcs = Some(Vec::new());
    }
    let mut last_sent: Option<Event> = None;
    type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;
    let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
    let new_slot = |cfg: &Config| Slot {
        index: 0,
        result: None,
        backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max),
        next_at: Instant::now(),
        in_flight: false,
    };

    loop {
        // The slot set follows the datacenter list.
        if let Some(list) = &dcs {
            let wanted = self::slots(&cfg, list);
            slots.retain(|k, _| wanted.contains(k));
            for k in wanted {
                slots.entry(k).or_insert_with(|| new_slot(&cfg));
            }
        }
        // Start what is due.
        let now = Instant::now();
        if want_dcs && !dcs_in_flight && dcs_next_at <= now {
            dcs_in_flight = true;
            let (client, cfg) = (client.clone(), cfg.clone());
            inflight.push(Box::pin(async move {
                Done::Datacenters(fetch_datacenters(&client, &cfg).await)
            }));
        }
        for (key, slot) in slots.iter_mut() {
            if slot.in_flight || slot.next_at > now {
                continue;
            }
            slot.in_flight = true;
            let (client, cfg, key, index) = (client.clone(), cfg.clone(), key.clone(), slot.index);
            inflight.push(Box::pin(async move {
                let q = &cfg.queries[key.query];
                let r = fetch(&client, &cfg, q, key.dc.as_deref(), index, true).await;
                Done::Query(key, index, now, r)
            }));
        }
        // Wait for an answer or the next due start.
        let next_due = slots
            .values()
            .filter(|s| !s.in_flight)
            .map(|s| s.next_at)
            .chain((want_dcs && !dcs_in_flight).then_some(dcs_next_at))
            .min()
            .unwrap_or_else(far);
        let done = tokio::select! {
            Some(done) = inflight.next() => done,
            _ = tokio::time::sleep_until(next_due) => continue,
        };
        let now = Instant::now();
        match done {
            Done::Datacenters(r) => {
                dcs_in_flight = false;
                match r {
                    Ok(list) => {
                        dcs_backoff.reset();
                        dcs_error = None;
                        dcs = Some(list);
                        dcs_next_at = cfg.poll_interval.map(|p| now + p).unwrap_or_else(far);
                    }
                    Err(f) => {
                        let delay = f.retry_after.unwrap_or_else(|| dcs_backoff.next_delay());
                        dcs_next_at = now + delay;
                        dcs_error = Some(f.error);
                    }
                }
            }
            Done::Query(key, asked, started, r) => {
                let Some(slot) = slots.get_mut(&key) else {
                    continue; // its datacenter went away meanwhile
                };
                slot.in_flight = false;
                match r {
                    Ok(answer) => {
                        slot.backoff.reset();
                        let blocks = answer.index.is_some()
                            && cfg.queries[key.query].endpoint != Endpoint::Agent;
                        slot.index = if blocks {
                            next_index(asked, answer.index)
                        } else {
                            0
                        };
                        slot.next_at =
                            next_start(started, now, blocks, cfg.min_interval, cfg.poll_interval)
                                .unwrap_or_else(far);
                        slot.result = Some(Ok(answer.names));
                    }
                    Err(f) => {
                        let delay = f.retry_after.unwrap_or_else(|| slot.backoff.next_delay());
                        slot.next_at = now + delay.max(cfg.min_interval);
                        // A fresh read after an error: the index may be stale.
                        slot.index = 0;
                        let q = &cfg.queries[key.query];
                        let mut error = f.error;
                        error.message =
                            format!("{}{}: {}", describe(q), in_dc(&key.dc), error.message);
                        slot.result = Some(Err(error));
                    }
                }
            }
        }
        // Report once every slot has an answer (or something failed).
        let event = if let Some(e) = &dcs_error {
            if slots.is_empty() {
                Some(Event::Error(e.clone()))
            } else {
                // The known datacenters keep being watched; the list itself is stale.
                combine(
                    slots
                        .values()
                        .filter_map(|s| s.result.as_ref())
                        .chain(std::iter::once(&Err(e.clone()))),
                )
            }
        } else if dcs.is_none() {
            None
        } else if slots.values().all(|s| s.result.is_some()) {
            combine(slots.values().filter_map(|s| s.result.as_ref()))
        } else if slots.values().any(|s| matches!(s.result, Some(Err(_)))) {
            combine(slots.values().filter_map(|s| s.result.as_ref()))
        } else {
            None
        };
        if let Some(event) = event {
            // Errors are always reported (the owner counts the streak); the same node set is not
            // re-sent.
            let repeat = matches!(event, Event::Nodes(_)) && last_sent.as_ref() == Some(&event);
            if !repeat {
                if !sink.send(event.clone()) {
                    return;
                }
                last_sent = Some(event);
            }
        }
    }
}

fn describe(q: &Query) -> String {
    let ep = match q.endpoint {
        Endpoint::Agent => "Agent",
        Endpoint::Health => "Health",
        Endpoint::Catalog => "Catalog",
    };
    match &q.service {
        Service::Name(n) => format!("{ep} service \"{n}\""),
        Service::Id(id) => format!("{ep} service id \"{id}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(endpoint: Endpoint, service: Service) -> Query {
        Query {
            endpoint,
            service,
            passing: false,
            expected: Expected::Ip,
            filter: None,
            datacenters: Datacenters::One(None),
        }
    }

    fn cfg(base: &str) -> Config {
        Config {
            base_url: base.into(),
            token: None,
            tls: Tls::default(),
            basename: "app".into(),
            queries: vec![],
            wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            poll_interval: Some(Duration::from_secs(5)),
            min_interval: Duration::from_millis(250),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(5),
            max_body: 1 << 20,
        }
    }

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
    fn retry_after_is_read_in_seconds_and_capped() {
        assert_eq!(retry_after(Some("3")), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(Some(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(Some("99999")), Some(Duration::from_secs(600)));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(None), None);
    }

    #[test]
    fn a_blocking_query_restarts_at_once_but_never_faster_than_min_interval() {
        let t0 = Instant::now();
        let min = Duration::from_millis(250);
        // a change after 10 s of blocking: the next request starts now
        let now = t0 + Duration::from_secs(10);
        assert_eq!(next_start(t0, now, true, min, None), Some(now));
        // an answer after 5 ms (Consul did not block): wait out the rest of min_interval
        let now = t0 + Duration::from_millis(5);
        assert_eq!(next_start(t0, now, true, min, None), Some(t0 + min));
        // an Agent query (no blocking): every poll interval, or never with :infinity
        let p = Some(Duration::from_secs(5));
        assert_eq!(
            next_start(t0, now, false, min, p),
            Some(t0 + Duration::from_secs(5))
        );
        assert_eq!(next_start(t0, now, false, min, None), None);
    }

    #[test]
    fn urls_are_libcluster_consuls_with_dc_filter_and_blocking_parameters() {
        let mut c = cfg("http://127.0.0.1:8500/ignored/path?stale=");
        c.wait = Duration::from_secs(30);
        let mut q = query(Endpoint::Health, Service::Name("my app".into()));
        q.passing = true;
        q.filter = Some("\"canary\" in Service.Tags".into());
        let u = query_url(&c, &q, Some("dc2"), 0, true).unwrap();
        assert_eq!(u.path(), "/v1/health/service/my%20app");
        let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                ("stale".into(), "".into()),
                ("dc".into(), "dc2".into()),
                ("passing".into(), "true".into()),
                ("filter".into(), "\"canary\" in Service.Tags".into()),
            ]
        );
        // with an index: index and wait
        let u = query_url(&c, &q, None, 42, true).unwrap();
        assert!(u.query().unwrap().ends_with("index=42&wait=30000ms"), "{u}");
        // polling never sends an index
        let u = query_url(&c, &q, None, 42, false).unwrap();
        assert!(!u.query().unwrap().contains("index"), "{u}");

        let c = cfg("https://consul:8501?dc=dc1");
        let q = query(Endpoint::Agent, Service::Id("web-1".into()));
        let u = query_url(&c, &q, None, 0, true).unwrap();
        assert_eq!(
            u.as_str(),
            "https://consul:8501/v1/agent/service/web-1?dc=dc1"
        );
        let q = query(Endpoint::Agent, Service::Name("web".into()));
        let u = query_url(&c, &q, Some("dc3"), 0, true).unwrap();
        assert_eq!(
            u.as_str(),
            "https://consul:8501/v1/agent/health/service/name/web?dc=dc3"
        );
        let q = query(Endpoint::Catalog, Service::Name("web".into()));
        let u = query_url(&c, &q, None, 0, true).unwrap();
        assert_eq!(
            u.as_str(),
            "https://consul:8501/v1/catalog/service/web?dc=dc1"
        );
        assert_eq!(
            datacenters_url(&c).unwrap().as_str(),
            "https://consul:8501/v1/catalog/datacenters"
        );
        let q = query(Endpoint::Health, Service::Id("x".into()));
        assert_eq!(
            query_url(&c, &q, None, 0, true).unwrap_err().kind,
            ErrorKind::Config
        );
        assert_eq!(
            base(&cfg("consul:8500")).unwrap_err().kind,
            ErrorKind::Config
        );
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
    fn a_round_with_a_failure_is_partial_or_an_error_never_fewer_nodes() {
        let ok = |n: &[&str]| Ok(n.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let err = Err(Error::new(ErrorKind::Timeout, "slow"));
        let all_ok = [ok(&["app@b", "app@a"]), ok(&["app@a"])];
        assert_eq!(
            combine(all_ok.iter()),
            Some(Event::Nodes(vec!["app@a".into(), "app@b".into()]))
        );
        let some = [ok(&["app@a"]), err.clone()];
        assert!(matches!(
            combine(some.iter()),
            Some(Event::Partial { nodes, .. }) if nodes == vec!["app@a".to_string()]
        ));
        let none = [err.clone(), err];
        assert!(matches!(combine(none.iter()), Some(Event::Error(_))));
    }

    #[test]
    fn multisite_expands_to_one_slot_per_datacenter() {
        let mut c = cfg("http://127.0.0.1:8500");
        let mut q1 = query(Endpoint::Health, Service::Name("web".into()));
        q1.datacenters = Datacenters::All;
        let mut q2 = query(Endpoint::Catalog, Service::Name("web".into()));
        q2.datacenters = Datacenters::List(vec!["dc9".into()]);
        c.queries = vec![q1, q2];
        assert!(needs_datacenters(&c));
        let keys: Vec<(usize, Option<String>)> = slots(&c, &["dc1".into(), "dc2".into()])
            .into_iter()
            .map(|k| (k.query, k.dc))
            .collect();
        assert_eq!(
            keys,
            vec![
                (0, Some("dc1".into())),
                (0, Some("dc2".into())),
                (1, Some("dc9".into()))
            ]
        );
    }
}
