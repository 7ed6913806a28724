//! `dns_lookup_start/2`: one DNS poll (a few questions asked concurrently), answered with one
//! `{:nodes, names}`, `{:partial_nodes, names, {kind, message}}` or `{:discovery_error, kind,
//! message}` message.
use std::net::SocketAddr;
use std::path::PathBuf;

use libcluster_core::dns::{self, Answer, Kind, Question, Settings};
use libcluster_core::event::Error;
use rustler::{Atom, Binary, Env, NifMap, NifResult, NifUnitEnum, ResourceArc, Term};

use crate::args::{bad, millis};
use crate::atoms;
use crate::handle::{spawn, Discovery};
use crate::sink;

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
    Ok(spawn(env, tag, move |sink| async move {
        let event = dns::lookup(&settings, &questions).await;
        sink.send(event);
    }))
}

/// One resolver answer: `{:ok, [name]}`, `:nothing` or `{:error, kind, message}`.
fn answer(term: Term<'_>) -> NifResult<Answer> {
    if let Ok((tag, binaries)) = term.decode::<(Atom, Vec<Binary>)>() {
        if tag == atoms::ok() {
            // A name that is not UTF-8 is no node name: dropped and counted, as in a DNS answer.
            let names: Vec<String> = binaries
                .iter()
                .filter_map(|b| std::str::from_utf8(b.as_slice()).ok().map(str::to_owned))
                .collect();
            let dropped = binaries.len() - names.len();
            return Ok(Answer::Names { names, dropped });
        }
    }
    if let Ok((tag, kind, message)) = term.decode::<(Atom, sink::Kind, String)>() {
        if tag == atoms::error() {
            return Ok(Answer::Failed(Error::new(kind.into(), message)));
        }
    }
    if term.decode::<Atom>().is_ok_and(|a| a == atoms::nothing()) {
        return Ok(Answer::Nothing);
    }
    Err(bad(
        "dns_combine/1 expects answers {:ok, [binary]}, :nothing or {:error, kind, binary}",
    ))
}

/// `dns_combine([{question, answer}])` → `{:nodes, names}`, `{:partial_nodes, names, {kind,
/// message}}` or `{:discovery_error, kind, message}`, by the rule of `libcluster_core::dns`.
#[rustler::nif]
fn dns_combine<'a>(env: Env<'a>, results: Vec<(String, Term<'a>)>) -> NifResult<Term<'a>> {
    let answers = results
        .into_iter()
        .map(|(question, term)| Ok((question, answer(term)?)))
        .collect::<NifResult<Vec<_>>>()?;
    Ok(sink::encode(env, &dns::combine(answers)))
}
