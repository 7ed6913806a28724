//! The closed set of events a discovery task reports to its owner, and the [`Sink`] they go through.
//!
//! The `nif` crate encodes each event as `{:libcluster_rs, tag, event}`; the Elixir shapes are listed
//! next to each variant and documented in `LibclusterRs.Native`.

use std::fmt;

/// Why a discovery (or one host of it) failed. Encoded as an atom of the same name in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer before the deadline. `:timeout`
    Timeout,
    /// The peer actively refused the connection. `:refused`
    Refused,
    /// No route, host down, network unreachable. `:unreachable`
    Unreachable,
    /// The name does not exist. `:nxdomain`
    NxDomain,
    /// The DNS server failed or refused to answer. `:servfail`
    ServFail,
    /// HTTP 401. `:unauthorized`
    Unauthorized,
    /// HTTP 403. `:forbidden`
    Forbidden,
    /// HTTP 404. `:not_found`
    NotFound,
    /// Any other unexpected HTTP status. `:http_status`
    HttpStatus,
    /// TLS handshake or certificate verification failed. `:tls`
    Tls,
    /// The peer answered bytes we could not parse. `:malformed`
    Malformed,
    /// A local I/O error (socket, file). `:io`
    Io,
    /// The options given to the task cannot work. `:config`
    Config,
    /// The task panicked; the panic was caught and the task ended. `:panic`
    Panic,
}

impl ErrorKind {
    /// The atom name used on the Elixir side.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Refused => "refused",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::NxDomain => "nxdomain",
            ErrorKind::ServFail => "servfail",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Tls => "tls",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Io => "io",
            ErrorKind::Config => "config",
            ErrorKind::Panic => "panic",
        }
    }

    /// Classify an I/O error the way an operator thinks about it.
    pub fn from_io(err: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as K;
        match err.kind() {
            K::ConnectionRefused => ErrorKind::Refused,
            K::TimedOut => ErrorKind::Timeout,
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                ErrorKind::Unreachable
            }
            _ => ErrorKind::Io,
        }
    }
}

/// A failure with a human-readable message meant for the operator's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::new(ErrorKind::from_io(&err), err.to_string())
    }
}

/// What a discovery task tells its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A complete, successful discovery: these are all the nodes right now.
    /// `{:nodes, [binary]}`
    Nodes(Vec<String>),
    /// The names registered in one host's epmd (`name` without `@host`).
    /// `{:epmd_names, host, {:ok, [binary]}}`
    EpmdNames { host: String, names: Vec<String> },
    /// One host's epmd could not be asked; the other hosts are unaffected.
    /// `{:epmd_names, host, {:error, {kind, message}}}`
    EpmdError { host: String, error: Error },
    /// A round where some questions were answered and others failed: these nodes exist, but the
    /// list is not complete, so nothing may be pruned because of it.
    /// `{:partial_nodes, [binary], {kind, message}}`
    Partial { nodes: Vec<String>, error: Error },
    /// A discovery round failed. The owner keeps its last known membership.
    /// `{:discovery_error, kind, message}`
    Error(Error),
    /// A one-shot task has sent everything it will send. `:done`
    Done,
    /// Gossip: an accepted heartbeat from another node (a partial sighting, never a full set);
    /// `trusted` when it came in an authenticated datagram. `{:heartbeat, binary, boolean}`
    Heartbeat { name: String, trusted: bool },
    /// Gossip: the task's counters (accepted/rejected by reason, sent...), sent periodically when
    /// they changed. `{:gossip_stats, %{atom => non_neg_integer}}`
    GossipStats(Vec<(&'static str, u64)>),
    /// Kubernetes: how the task follows the API server changed. `fallback: true`: the watch is
    /// forbidden (the Role grants `list` but not `watch`), so the task lists every poll interval
    /// and retries the watch now and then; `false`: it watches (again). `detail` is for the log.
    /// `{:watch_mode, :poll_fallback | :watch, binary}`
    WatchMode { fallback: bool, detail: String },
    /// A long-lived connection (Postgres) is (re)established and listening; `detail` is for the
    /// log. `{:connected, binary}`
    Connected(String),
}

/// Where a task's events go. `send` returns `false` when nobody is listening any more (the owner
/// died); the task should then stop.
pub trait Sink: Send + Sync + 'static {
    fn send(&self, event: Event) -> bool;
}

/// A sink backed by a tokio channel, for tests and benchmarks of core logic.
impl Sink for tokio::sync::mpsc::UnboundedSender<Event> {
    fn send(&self, event: Event) -> bool {
        tokio::sync::mpsc::UnboundedSender::send(self, event).is_ok()
    }
}
