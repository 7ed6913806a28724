//! `digitalocean_start/2`: one poll of the DigitalOcean API; `digitalocean_parse/2` (dirty): one
//! page body in, names out, for benchmarks.
use std::path::PathBuf;
use std::sync::Arc;

use libcluster_core::digitalocean::{self, Config, Filter, HealthCheck, Naming, Network};
use rustler::{Binary, Encoder, Env, NifMap, NifResult, NifUnitEnum, ResourceArc, Term};

use crate::args::{bad, millis};
use crate::handle::{spawn, Discovery};

#[derive(NifUnitEnum, Clone, Copy)]
pub(crate) enum NetworkOpt {
    Private,
    Public,
}

impl From<NetworkOpt> for Network {
    fn from(n: NetworkOpt) -> Network {
        match n {
            NetworkOpt::Private => Network::Private,
            NetworkOpt::Public => Network::Public,
        }
    }
}

/// The strategy's validated config, as a map with these atom keys.
#[derive(NifMap)]
pub(crate) struct DigitalOceanOpts {
    api_url: String,
    token: String,
    tag_name: Option<String>,
    name: Option<String>,
    network: NetworkOpt,
    ipv6: bool,
    basename: Option<String>,
    health_check_port: Option<u16>,
    health_check_timeout_ms: u64,
    cacertfile: Option<String>,
    request_timeout_ms: u64,
    rate_limit_budget_ms: u64,
}

/// The naming options of `digitalocean_parse/2`.
#[derive(NifMap)]
pub(crate) struct NamingOpts {
    network: NetworkOpt,
    ipv6: bool,
    basename: Option<String>,
}

const MAX_MS: u64 = 86_400_000;

/// `digitalocean_start(tag, opts)`: one `{:nodes, names}` or one `{:discovery_error, kind, msg}`.
#[rustler::nif]
fn digitalocean_start<'a>(
    env: Env<'a>,
    tag: Term<'a>,
    opts: DigitalOceanOpts,
) -> NifResult<ResourceArc<Discovery>> {
    let filter = match (opts.tag_name, opts.name) {
        (Some(_), Some(_)) => {
            return Err(bad("digitalocean_start/2: give tag_name or name, not both"))
        }
        (Some(t), None) => Filter::Tag(t),
        (None, Some(n)) => Filter::Name(n),
        (None, None) => Filter::All,
    };
    let health_check = match opts.health_check_port {
        Some(0) => {
            return Err(bad(
                "digitalocean_start/2: health_check_port must be 1..65535",
            ))
        }
        Some(port) => Some(HealthCheck {
            port,
            timeout: millis(
                "health_check_timeout_ms",
                opts.health_check_timeout_ms,
                MAX_MS,
            )?,
        }),
        None => None,
    };
    let rate_limit_budget = if opts.rate_limit_budget_ms == 0 {
        std::time::Duration::ZERO
    } else {
        millis("rate_limit_budget_ms", opts.rate_limit_budget_ms, MAX_MS)?
    };
    let cfg = Arc::new(Config {
        api_url: opts.api_url,
        token: opts.token,
        filter,
        naming: Naming {
            network: opts.network.into(),
            ipv6: opts.ipv6,
            basename: opts.basename,
        },
        health_check,
        ca_file: opts.cacertfile.map(PathBuf::from),
        request_timeout: millis("request_timeout_ms", opts.request_timeout_ms, MAX_MS)?,
        rate_limit_budget,
    });
    Ok(spawn(env, tag, move |sink| {
        digitalocean::poll_once(cfg, sink)
    }))
}

/// `digitalocean_parse(body, naming)`: `{:ok, names}` or `{:error, {kind, message}}` for one
/// `/v2/droplets` page (no health check). Dirty: a page can be a few MB.
#[rustler::nif(schedule = "DirtyCpu")]
fn digitalocean_parse<'a>(env: Env<'a>, body: Binary<'a>, naming: NamingOpts) -> Term<'a> {
    let naming = Naming {
        network: naming.network.into(),
        ipv6: naming.ipv6,
        basename: naming.basename,
    };
    match digitalocean::names_from_page(&naming, body.as_slice()) {
        Ok(page) => {
            let names: Vec<String> = page.named.into_iter().map(|n| n.node).collect();
            (crate::atoms::ok(), names).encode(env)
        }
        Err(e) => (
            crate::atoms::error(),
            (crate::sink::Kind::from(e.kind), e.message),
        )
            .encode(env),
    }
}
