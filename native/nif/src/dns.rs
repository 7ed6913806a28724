//! `dns_lookup_start/2`: one DNS poll (a few questions asked concurrently), answered with one
//! `{:nodes, names}`, `{:partial_nodes, names, {kind, message}}` or `{:discovery_error, kind,
//! message}` message.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libcluster_core::dns::{self, Kind, Question, Settings};
use rustler::{Atom, Env, Error, NifMap, NifResult, ResourceArc, Term};

use crate::atoms;
use crate::handle::{spawn, Discovery};

#[derive(NifMap)]
struct LookupOpts {
    /// `[{basename, name, [:a | :aaaa | :srv]}]`
    questions: Vec<(String, String, Vec<Atom>)>,
    /// `["ip:port", ...]`; empty → the system configuration.
    nameservers: Vec<String>,
    resolv_conf: String,
    timeout_ms: u64,
    attempts: u64,
}

fn kind(atom: Atom) -> NifResult<Kind> {
    if atom == atoms::a() {
        Ok(Kind::A)
    } else if atom == atoms::aaaa() {
        Ok(Kind::Aaaa)
    } else if atom == atoms::srv() {
        Ok(Kind::Srv)
    } else {
        Err(Error::BadArg)
    }
}

#[rustler::nif]
fn dns_lookup_start<'a>(
    env: Env<'a>,
    tag: Term<'a>,
    opts: LookupOpts,
) -> NifResult<ResourceArc<Discovery>> {
    if opts.timeout_ms == 0 || opts.timeout_ms > 600_000 || opts.attempts == 0 || opts.attempts > 10
    {
        return Err(Error::BadArg);
    }
    if opts.questions.is_empty() || opts.questions.len() > 1024 {
        return Err(Error::BadArg);
    }
    let questions = opts
        .questions
        .into_iter()
        .map(|(basename, name, kinds)| {
            let kinds = kinds.into_iter().map(kind).collect::<NifResult<Vec<_>>>()?;
            if kinds.is_empty() || name.is_empty() {
                return Err(Error::BadArg);
            }
            Ok(Question {
                basename,
                name,
                kinds,
            })
        })
        .collect::<NifResult<Vec<_>>>()?;
    let nameservers = opts
        .nameservers
        .iter()
        .map(|s| s.parse::<SocketAddr>().map_err(|_| Error::BadArg))
        .collect::<NifResult<Vec<_>>>()?;
    let settings = Settings {
        nameservers,
        resolv_conf: PathBuf::from(opts.resolv_conf),
        timeout: Duration::from_millis(opts.timeout_ms),
        attempts: opts.attempts as usize,
    };
    Ok(spawn(env, tag, move |sink, _cancel| async move {
        let event = dns::lookup(&settings, &questions).await;
        sink.send(event);
    }))
}
