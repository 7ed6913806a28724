//! `rancher_start/4`: one poll of the Rancher metadata service.
use std::sync::Arc;

use libcluster_core::rancher;
use rustler::{Env, NifResult, ResourceArc, Term};

use crate::args::millis;
use crate::handle::{spawn, Discovery};

/// `rancher_start(tag, url, basename, timeout_ms)`: one `{:nodes, names}` or one error.
#[rustler::nif]
fn rancher_start<'a>(
    env: Env<'a>,
    tag: Term<'a>,
    url: String,
    basename: String,
    timeout_ms: u64,
) -> NifResult<ResourceArc<Discovery>> {
    let cfg = Arc::new(rancher::Config {
        url,
        basename,
        timeout: millis("timeout_ms", timeout_ms, 86_400_000)?,
    });
    Ok(spawn(env, tag, move |sink| rancher::poll_once(cfg, sink)))
}
