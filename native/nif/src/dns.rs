//! `dns_lookup_start/2`: one DNS poll (a few questions asked concurrently), answered with one
//! `{:nodes, names}`, `{:partial_nodes, names, {kind, message}}` or `{:discovery_error, kind,
//! message}` message.
use std::net::SocketAddr;
use std::path::PathBuf;

use libcluster_core::dns::{self, Kind, Question, Settings};
use rustler::{Env, NifMap, NifResult, NifUnitEnum, ResourceArc, Term};

use crate::args::{bad, millis};
use crate::handle::{spawn, Discovery};

#[derive(NifMap)]
struct LookupOpts {
    /// `[{basename, name, [:a | :aaaa | :srv]}]`
    questions: Vec<(String, String, Vec<RecordType>)>,
    /// `["ip:port", ...]`; empty → the system configuration.
    nameservers: Vec<String>,
    resolv_conf: String,
    timeout_ms: u64,
    attempts: u64,
}

/// `:a`, `:aaaa` or `:srv`.
#[derive(NifUnitEnum, Clone, Copy)]
enum RecordType {
    A,
    Aaaa,
    Srv,
}

impl From<RecordType> for Kind {
    fn from(t: RecordType) -> Kind {
        match t {
            RecordType::A => Kind::A,
            RecordType::Aaaa => Kind::Aaaa,
            RecordType::Srv => Kind::Srv,
        }
    }
}

#[rustler::nif]
fn dns_lookup_start<'a>(
    env: Env<'a>,
    tag: Term<'a>,
    opts: LookupOpts,
) -> NifResult<ResourceArc<Discovery>> {
    let timeout = millis("timeout_ms", opts.timeout_ms, 600_000)?;
    if opts.attempts == 0 || opts.attempts > 10 {
        return Err(bad(format!(
            "expected :attempts to be in 1..10, got: {}",
            opts.attempts
        )));
    }
    if opts.questions.is_empty() || opts.questions.len() > 1024 {
        return Err(bad(format!(
            "expected 1..1024 DNS questions, got: {}",
            opts.questions.len()
        )));
    }
    let questions = opts
        .questions
        .into_iter()
        .map(|(basename, name, kinds)| {
            let kinds: Vec<Kind> = kinds.into_iter().map(Kind::from).collect();
            if kinds.is_empty() || name.is_empty() {
                return Err(bad(
                    "a DNS question needs a name and at least one record type",
                ));
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
        .map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|_| bad(format!("expected a nameserver as \"ip:port\", got: {s:?}")))
        })
        .collect::<NifResult<Vec<_>>>()?;
    let settings = Settings {
        nameservers,
        resolv_conf: PathBuf::from(opts.resolv_conf),
        timeout,
        attempts: opts.attempts as usize,
    };
    Ok(spawn(env, tag, move |sink, _cancel| async move {
        let event = dns::lookup(&settings, &questions).await;
        sink.send(event);
    }))
}
