//! `epmd_names_start/4`: ask many hosts' epmd for their node names, concurrently.
use libcluster_core::epmd;
use rustler::{Env, NifResult, ResourceArc, Term};

use crate::args::{bad, millis};

use crate::handle::{spawn, Discovery};

/// `epmd_names_start(tag, hosts, port, timeout_ms)`: one `{:epmd_names, host, result}` message per
/// host as it answers, then `:done`.
#[rustler::nif]
fn epmd_names_start<'a>(
    env: Env<'a>,
    tag: Term<'a>,
    hosts: Vec<String>,
    port: u16,
    timeout_ms: u64,
) -> NifResult<ResourceArc<Discovery>> {
    if port == 0 {
        return Err(bad("expected the epmd port to be in 1..65535, got: 0"));
    }
    let timeout = millis("timeout_ms", timeout_ms, 3_600_000)?;
    Ok(spawn(env, tag, move |sink| {
        epmd::query_hosts(hosts, port, timeout, sink)
    }))
}
