//! `consul_start/2`: Consul discovery, one poll or blocking queries.
use std::path::PathBuf;
use std::sync::Arc;

use libcluster_core::consul::{self, Config, Datacenters, Endpoint, Expected, Query, Service, Tls};
use rustler::{Env, NifMap, NifResult, NifUnitEnum, ResourceArc, Term};

use crate::args::{bad, millis};
use crate::handle::{spawn, Discovery};

#[derive(NifUnitEnum, Clone, Copy)]
pub(crate) enum EndpointOpt {
    Agent,
    Health,
    Catalog,
}

#[derive(NifUnitEnum, Clone, Copy)]
pub(crate) enum ExpectedOpt {
    Ip,
    Host,
}

/// One query: `service_name` or `service_id`; `datacenters` is `nil` (the query's `dc`), a list,
/// or `all_datacenters: true`.
#[derive(NifMap)]
pub(crate) struct QueryOpts {
    endpoint: EndpointOpt,
    service_name: Option<String>,
    service_id: Option<String>,
    passing: bool,
    expected: ExpectedOpt,
    filter: Option<String>,
    dc: Option<String>,
    datacenters: Option<Vec<String>>,
    all_datacenters: bool,
}

/// The strategy's validated config, as a map with these atom keys.
#[derive(NifMap)]
pub(crate) struct ConsulOpts {
    base_url: String,
    token: Option<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    insecure: bool,
    basename: String,
    queries: Vec<QueryOpts>,
    blocking: bool,
    wait_ms: u64,
    request_timeout_ms: u64,
    /// 0: never (`polling_interval: :infinity`).
    poll_interval_ms: u64,
    min_interval_ms: u64,
    backoff_min_ms: u64,
    backoff_max_ms: u64,
    max_body_bytes: u64,
}

/// The longest duration option the NIF accepts (a day).
const MAX_MS: u64 = 86_400_000;

fn query(q: QueryOpts) -> NifResult<Query> {
    let service = match (q.service_name, q.service_id) {
        (Some(n), None) => Service::Name(n),
        (None, Some(id)) => Service::Id(id),
        _ => {
            return Err(bad(
                "consul_start/2: each query needs exactly one of service_name, service_id",
            ))
        }
    };
    let datacenters = match (q.all_datacenters, q.datacenters) {
        (true, _) => Datacenters::All,
        (false, Some(list)) => Datacenters::List(list),
        (false, None) => Datacenters::One(q.dc),
    };
    Ok(Query {
        endpoint: match q.endpoint {
            EndpointOpt::Agent => Endpoint::Agent,
            EndpointOpt::Health => Endpoint::Health,
            EndpointOpt::Catalog => Endpoint::Catalog,
        },
        service,
        passing: q.passing,
        expected: match q.expected {
            ExpectedOpt::Ip => Expected::Ip,
            ExpectedOpt::Host => Expected::Host,
        },
        filter: q.filter,
        datacenters,
    })
}

/// `consul_start(tag, opts)`: with `blocking: true`, a stream of `{:nodes, names}` whenever the set
/// changes, `{:partial_nodes, names, {kind, msg}}` while some query fails and
/// `{:discovery_error, kind, msg}` while all do (it retries by itself); with `blocking: false`, one
/// round: one of those three events.
#[rustler::nif]
fn consul_start<'a>(
    env: Env<'a>,
    tag: Term<'a>,
    opts: ConsulOpts,
) -> NifResult<ResourceArc<Discovery>> {
    if opts.basename.is_empty() || opts.queries.is_empty() || opts.max_body_bytes == 0 {
        return Err(bad(
            "consul_start/2: basename, queries and max_body_bytes must not be empty",
        ));
    }
    let queries = opts
        .queries
        .into_iter()
        .map(query)
        .collect::<NifResult<Vec<_>>>()?;
    let cfg = Arc::new(Config {
        base_url: opts.base_url,
        token: opts.token,
        tls: Tls {
            ca_file: opts.ca_file.map(PathBuf::from),
            client_cert: opts.cert_file.map(PathBuf::from),
            client_key: opts.key_file.map(PathBuf::from),
            insecure: opts.insecure,
        },
        basename: opts.basename,
        queries,
        wait: millis("wait_ms", opts.wait_ms, MAX_MS)?,
        request_timeout: millis("request_timeout_ms", opts.request_timeout_ms, MAX_MS)?,
        poll_interval: match opts.poll_interval_ms {
            0 => None,
            ms => Some(millis("poll_interval_ms", ms, MAX_MS)?),
        },
        min_interval: millis("min_interval_ms", opts.min_interval_ms, MAX_MS)?,
        backoff_min: millis("backoff_min_ms", opts.backoff_min_ms, MAX_MS)?,
        backoff_max: millis("backoff_max_ms", opts.backoff_max_ms, MAX_MS)?,
        max_body: opts.max_body_bytes as usize,
    });
    let blocking = opts.blocking;
    Ok(spawn(env, tag, move |sink| async move {
        if blocking {
            consul::watch(cfg, sink).await
        } else {
            consul::poll_once(cfg, sink).await
        }
    }))
}
