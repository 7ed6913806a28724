//! The process sink: turns core [`Event`]s into `{:libcluster_rs, tag, event}` messages.
use std::sync::Mutex;

use libcluster_core::event::{Error, ErrorKind, Event, Sink};
use rustler::env::SavedTerm;
use rustler::{Atom, Encoder, Env, LocalPid, NifResult, NifUnitEnum, OwnedEnv, Term};

use crate::atoms;

pub(crate) struct ProcessSink {
    pid: LocalPid,
    /// Holds the caller's tag term; never cleared, so the saved term stays valid.
    tag_env: Mutex<(OwnedEnv, SavedTerm)>,
}

impl ProcessSink {
    pub(crate) fn new(pid: LocalPid, tag: Term<'_>) -> Self {
        let env = OwnedEnv::new();
        let saved = env.save(tag);
        ProcessSink {
            pid,
            tag_env: Mutex::new((env, saved)),
        }
    }
}

impl Sink for ProcessSink {
    fn send(&self, event: Event) -> bool {
        let guard = match self.tag_env.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (tag_env, saved) = &*guard;
        let mut msg_env = OwnedEnv::new();
        tag_env.run(|env| {
            let tag = saved.load(env);
            msg_env
                .send_and_clear(&self.pid, |menv| {
                    (
                        atoms::libcluster_rs(),
                        tag.in_env(menv),
                        encode(menv, &event),
                    )
                        .encode(menv)
                })
                .is_ok()
        })
    }
}

/// `Kind`, the `NifUnitEnum` twin of `ErrorKind` (the core has no rustler), with the conversions
/// both ways, from one list: the one decoder and encoder of error kinds at the boundary.
macro_rules! kinds {
    ($($kind:ident = $core:ident),* $(,)?) => {
        /// An error kind as its atom (`:timeout`, `:nxdomain`, ...).
        #[derive(NifUnitEnum, Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Kind {
            $($kind),*
        }

        impl From<ErrorKind> for Kind {
            fn from(kind: ErrorKind) -> Kind {
                match kind {
                    $(ErrorKind::$core => Kind::$kind),*
                }
            }
        }

        impl From<Kind> for ErrorKind {
            fn from(kind: Kind) -> ErrorKind {
                match kind {
                    $(Kind::$kind => ErrorKind::$core),*
                }
            }
        }
    };
}

kinds!(
    Timeout = Timeout,
    Refused = Refused,
    Unreachable = Unreachable,
    Nxdomain = NxDomain,
    Servfail = ServFail,
    Unauthorized = Unauthorized,
    Forbidden = Forbidden,
    NotFound = NotFound,
    HttpStatus = HttpStatus,
    Tls = Tls,
    Malformed = Malformed,
    Io = Io,
    Config = Config,
    Panic = Panic,
);

/// Counters (a fixed set of names) as a map of atoms to integers: the stats events of a task and
/// the `*_stats` NIFs of gossip and Postgres. Here, with the other encodings of what tasks report,
/// so that the task modules depend on the sink and never the other way round.
pub(crate) fn encode_stats<'a>(
    env: Env<'a>,
    counters: &[(&'static str, u64)],
) -> NifResult<Term<'a>> {
    let mut map = Term::map_new(env);
    for (name, value) in counters {
        map = map.map_put(Atom::from_str(env, name)?, *value)?;
    }
    Ok(map)
}

fn encode_error<'a>(env: Env<'a>, error: &Error) -> Term<'a> {
    (Kind::from(error.kind), error.message.as_str()).encode(env)
}

pub(crate) fn encode<'a>(env: Env<'a>, event: &Event) -> Term<'a> {
    match event {
        Event::Nodes(nodes) => (atoms::nodes(), nodes).encode(env),
        Event::EpmdNames { host, names } => {
            (atoms::epmd_names(), host.as_str(), (atoms::ok(), names)).encode(env)
        }
        Event::EpmdError { host, error } => (
            atoms::epmd_names(),
            host.as_str(),
            (atoms::error(), encode_error(env, error)),
        )
            .encode(env),
        Event::Partial { nodes, error } => {
            (atoms::partial_nodes(), nodes, encode_error(env, error)).encode(env)
        }
        Event::Error(error) => (
            atoms::discovery_error(),
            Kind::from(error.kind),
            error.message.as_str(),
        )
            .encode(env),
        Event::Done => atoms::done().encode(env),
        Event::Heartbeat { name, trusted } => {
            (atoms::heartbeat(), name.as_str(), *trusted).encode(env)
        }
        Event::GossipStats(counters) => {
            let map = encode_stats(env, counters).unwrap_or_else(|_| Term::map_new(env));
            (atoms::gossip_stats(), map).encode(env)
        }
        Event::WatchMode { fallback, detail } => {
            let mode = if *fallback {
                atoms::poll_fallback()
            } else {
                atoms::watch()
            };
            (atoms::watch_mode(), mode, detail.as_str()).encode(env)
        }
        Event::Connected(detail) => (atoms::connected(), detail.as_str()).encode(env),
    }
}
