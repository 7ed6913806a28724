//! `kubernetes_start/2` and the dirty `kubernetes_parse/5` (body in, names out).
use std::path::PathBuf;

use libcluster_core::kubernetes::{self, Config, Lookup, NameMode, Naming};
use rustler::{Binary, Encoder, Env, NifMap, NifResult, NifUnitEnum, ResourceArc, Term};

use crate::args::{bad, millis};

use crate::handle::{spawn, Discovery};

#[derive(NifUnitEnum, Clone, Copy)]
pub(crate) enum LookupMode {
    Endpoints,
    Pods,
    Endpointslices,
}

impl LookupMode {
    fn lookup(self, pods_ready_only: bool) -> Lookup {
        match self {
            LookupMode::Endpoints => Lookup::Endpoints,
            LookupMode::Pods => Lookup::Pods {
                ready_only: pods_ready_only,
            },
            LookupMode::Endpointslices => Lookup::EndpointSlices,
        }
    }
}

#[derive(NifUnitEnum, Clone, Copy)]
pub enum Mode {
    Ip,
    Dns,
    Hostname,
}

impl From<Mode> for NameMode {
    fn from(m: Mode) -> NameMode {
        match m {
            Mode::Ip => NameMode::Ip,
            Mode::Dns => NameMode::Dns,
            Mode::Hostname => NameMode::Hostname,
        }
    }
}

/// The strategy's validated config, as a map with these atom keys.
#[derive(NifMap)]
pub(crate) struct KubernetesOpts {
    api_url: String,
    service_account_path: String,
    /// `nil`: the service account's `namespace` file, read by the task (the core owns those files).
    namespace: Option<String>,
    lookup: LookupMode,
    pods_ready_only: bool,
    label_selector: Option<String>,
    field_selector: Option<String>,
    basename: String,
    mode: Mode,
    service_name: Option<String>,
    cluster_domain: String,
    use_cached_resources: bool,
    insecure_skip_tls_verify: bool,
    request_timeout_ms: u64,
    max_body_bytes: u64,
    watch: bool,
    watch_timeout_ms: u64,
    backoff_min_ms: u64,
    backoff_max_ms: u64,
    poll_interval_ms: u64,
    watch_retry_interval_ms: u64,
    probe: bool,
}

/// The longest duration option the NIF accepts (a day).
const MAX_MS: u64 = 86_400_000;

/// `kubernetes_start(tag, opts)`: with `watch: true`, a stream of `{:nodes, names}` whenever the
/// set changes and `{:discovery_error, kind, msg}` on failures (it reconnects by itself); with
/// `watch: false`, one list: one `{:nodes, names}` or one error. A forbidden watch falls back to
/// listing every `poll_interval_ms` (`{:watch_mode, :poll_fallback, msg}`, then
/// `{:watch_mode, :watch, msg}` once a retry succeeds). `probe: true` (the dry run): list, try the
/// watch once, send `{:watch_mode, ...}` and `{:nodes, names}`, end.
#[rustler::nif]
fn kubernetes_start<'a>(
    env: Env<'a>,
    tag: Term<'a>,
    opts: KubernetesOpts,
) -> NifResult<ResourceArc<Discovery>> {
    if opts.max_body_bytes == 0 || opts.namespace.as_deref() == Some("") || opts.basename.is_empty()
    {
        return Err(bad(
            "kubernetes_start/2: max_body_bytes, namespace and basename must not be empty",
        ));
    }
    let cfg = Config {
        api_url: opts.api_url,
        service_account_path: PathBuf::from(opts.service_account_path),
        // Empty: read from the service account by the task (kubernetes::run).
        namespace: opts.namespace.unwrap_or_default(),
        lookup: opts.lookup.lookup(opts.pods_ready_only),
        label_selector: opts.label_selector,
        field_selector: opts.field_selector,
        naming: Naming {
            basename: opts.basename,
            mode: opts.mode.into(),
            service_name: opts.service_name,
            cluster_domain: opts.cluster_domain,
        },
        use_cached_resources: opts.use_cached_resources,
        insecure_skip_tls_verify: opts.insecure_skip_tls_verify,
        request_timeout: millis("request_timeout_ms", opts.request_timeout_ms, MAX_MS)?,
        max_body_bytes: opts.max_body_bytes as usize,
        watch_timeout: millis("watch_timeout_ms", opts.watch_timeout_ms, MAX_MS)?,
        backoff_min: millis("backoff_min_ms", opts.backoff_min_ms, MAX_MS)?,
        backoff_max: millis("backoff_max_ms", opts.backoff_max_ms, MAX_MS)?,
        poll_interval: millis("poll_interval_ms", opts.poll_interval_ms, MAX_MS)?,
        watch_retry_interval: millis(
            "watch_retry_interval_ms",
            opts.watch_retry_interval_ms,
            MAX_MS,
        )?,
        probe: opts.probe,
    };
    let watch = opts.watch;
    Ok(spawn(env, tag, move |sink| {
        kubernetes::run(cfg, watch, sink)
    }))
}

/// `kubernetes_parse(lookup, mode, basename, namespace, cluster_domain, service_name, body)`:
/// `{:ok, names}` or `{:error, {kind, message}}`, with the default rules (pods: every pod with an
/// IP). Dirty: a list body can be tens of MB.
#[rustler::nif(schedule = "DirtyCpu")]
#[allow(clippy::too_many_arguments)]
fn kubernetes_parse<'a>(
    env: Env<'a>,
    lookup: LookupMode,
    mode: Mode,
    basename: String,
    namespace: String,
    cluster_domain: String,
    service_name: Option<String>,
    body: Binary<'a>,
) -> Term<'a> {
    let naming = Naming {
        basename,
        mode: mode.into(),
        service_name,
        cluster_domain,
    };
    match kubernetes::names_from_list(lookup.lookup(false), &naming, &namespace, body.as_slice()) {
        Ok((names, _version)) => (crate::atoms::ok(), names).encode(env),
        Err(e) => (
            crate::atoms::error(),
            (crate::sink::Kind::from(e.kind), e.message),
        )
            .encode(env),
    }
}
