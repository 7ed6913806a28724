//! `postgres_start/2` (a LISTEN/NOTIFY task) and `postgres_stats/1` (its counters).
use std::path::PathBuf;
use std::sync::Arc;

use libcluster_core::postgres::{self, Host, Tls};
use libcluster_core::sighting::Stats;
use rustler::{Env, NifMap, NifResult, Resource, ResourceArc, Term};

use crate::args::{bad, millis};
use crate::handle::{spawn, Discovery};
use crate::sink::encode_stats;

/// The counters of one Postgres task, readable while it runs.
pub(crate) struct PostgresStats(Arc<Stats>);

#[rustler::resource_impl]
impl Resource for PostgresStats {}

/// Options as `Cluster.Strategy.Postgres` passes them, validated there; here only decoded, then
/// guarded by [`postgres::Config::validate`].
#[derive(NifMap)]
struct PostgresOpts {
    hostname: Option<String>,
    socket_dir: Option<String>,
    port: u16,
    username: String,
    password: Option<String>,
    database: String,
    ssl: bool,
    ssl_verify: bool,
    cacertfile: Option<String>,
    server_name: Option<String>,
    certfile: Option<String>,
    keyfile: Option<String>,
    parameters: Vec<(String, String)>,
    channel_name: String,
    node: Option<String>,
    heartbeat_interval: u64,
    timeout: u64,
    backoff_min: u64,
    backoff_max: u64,
    new_names_burst: u32,
    new_names_per_minute: u32,
}

/// `postgres_start(tag, opts)` → `{handle, stats}`. Events: `{:heartbeat, name, false}`,
/// `{:connected, detail}`, `{:discovery_error, kind, message}` (then retried with backoff).
#[rustler::nif]
fn postgres_start<'a>(
    env: Env<'a>,
    tag: Term<'a>,
    opts: PostgresOpts,
) -> NifResult<(ResourceArc<Discovery>, ResourceArc<PostgresStats>)> {
    let host = match (opts.socket_dir, opts.hostname) {
        (Some(dir), _) => Host::Socket(PathBuf::from(dir)),
        (None, Some(h)) => Host::Tcp(h),
        (None, None) => return Err(bad("expected :hostname or :socket_dir")),
    };
    let tls = if opts.ssl {
        Tls::Require {
            verify: opts.ssl_verify,
            ca_file: opts.cacertfile.map(PathBuf::from),
            server_name: opts.server_name,
            client_cert: match (opts.certfile, opts.keyfile) {
                (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
                (None, None) => None,
                _ => return Err(bad("expected both :certfile and :keyfile, or neither")),
            },
        }
    } else {
        Tls::Disable
    };
    let cfg = postgres::Config {
        host,
        port: opts.port,
        user: opts.username,
        password: opts.password,
        database: opts.database,
        tls,
        parameters: opts.parameters,
        channel: opts.channel_name,
        node: opts.node,
        heartbeat: millis("heartbeat_interval", opts.heartbeat_interval, 86_400_000)?,
        timeout: millis("timeout", opts.timeout, 86_400_000)?,
        backoff_min: millis("backoff_min", opts.backoff_min, 86_400_000)?,
        backoff_max: millis("backoff_max", opts.backoff_max, 86_400_000)?,
        new_names_burst: opts.new_names_burst,
        new_names_per_minute: opts.new_names_per_minute,
    };
    cfg.validate().map_err(bad)?;
    let stats = Arc::new(Stats::default());
    let task_stats = stats.clone();
    let handle = spawn(env, tag, move |sink| postgres::run(cfg, task_stats, sink));
    Ok((handle, ResourceArc::new(PostgresStats(stats))))
}

/// The counters of a Postgres task as a map of atoms (a fixed set of names) to integers.
#[rustler::nif]
fn postgres_stats<'a>(env: Env<'a>, stats: ResourceArc<PostgresStats>) -> NifResult<Term<'a>> {
    encode_stats(env, &stats.0.snapshot())
}
