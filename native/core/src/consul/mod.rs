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
//! The index rules are Consul's ("Blocking Queries", implementation details), in
//! [`api::next_index`]: an index that goes backwards resets to 0 (a fresh, non-blocking read), an
//! index of 0 is used as 1; and the calls of one query are rate limited (`min_interval` between two
//! starts), with exponential backoff after errors and `Retry-After` honoured on 429 (at most
//! [`crate::http::MAX_SERVER_WAIT`]).
//!
//! Errors are never zero nodes. A 403 names the ACL the token lacks.
//!
//! Layout: this file holds the configuration, the (query, datacenter) slots and the rule that
//! combines their results, and the one-round poll; [`api`](self::api) the requests, the answers and
//! the index rules; [`url`](self::url) the endpoints' URLs; [`error`](self::error) the failures in
//! words; [`watch`](self::watch) the blocking-query loop and its pure scheduling. The transport is
//! [`crate::http`]'s.

mod api;
mod error;
mod url;
mod watch;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::event::{Error, Event, Sink};

pub use watch::watch;

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
    let client = match api::client(cfg) {
        Ok(c) => c,
        Err(e) => return Event::Error(e),
    };
    let dcs = if needs_datacenters(cfg) {
        match api::fetch_datacenters(&client, cfg).await {
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
                api::fetch(client, cfg, q, k.dc.as_deref(), 0, false)
                    .await
                    .map(|a| a.names)
                    .map_err(|f| f.error)
            }
        }))
        .await;
    combine(results.iter()).unwrap_or(Event::Nodes(Vec::new()))
}

/// The shapes every test module of `consul` builds on.
#[cfg(test)]
mod fixtures {
    use super::*;

    pub(super) fn query(endpoint: Endpoint, service: Service) -> Query {
        Query {
            endpoint,
            service,
            passing: false,
            expected: Expected::Ip,
            filter: None,
            datacenters: Datacenters::One(None),
        }
    }

    pub(super) fn config(base: &str) -> Config {
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::{config, query};
    use super::*;
    use crate::event::ErrorKind;

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
        let mut c = config("http://127.0.0.1:8500");
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
