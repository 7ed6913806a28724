//! Postgres LISTEN/NOTIFY discovery, wire-compatible with libcluster_postgres: every node runs
//! `LISTEN "<channel>"` and sends `NOTIFY "<channel>", '<its node name>'` every heartbeat; a
//! notification from another node is a sighting of it ([`Event::Heartbeat`], untrusted). Postgres
//! never says that a node left, so nothing here ever produces a full node set.
//!
//! One connection per task (tokio-postgres; TLS on rustls through [`crate::http::tls_config`]),
//! driven by the task itself: no spawned tasks, so cancelling the task drops the connection. On
//! connect the task LISTENs and announces itself in one round trip, then announces every
//! heartbeat. A failed connect, a broken connection, or a heartbeat that gets no answer within
//! `query_timeout` is reported as an [`Event::Error`] and retried with [`Backoff`]; after a
//! reconnect it LISTENs and announces again.
//!
//! Payloads are untrusted (anyone who may connect to the database can NOTIFY): each must be a
//! valid node name ([`crate::node_name::is_valid`]), then goes through [`crate::sighting`] (one
//! source: the known-names table and its re-report backoff, and one bucket for new names), before
//! anything reaches Elixir. Everything dropped is counted.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{AsyncMessage, Socket};

use crate::backoff::Backoff;
use crate::event::{Error, ErrorKind, Event, Sink};
use crate::http::{self, Roots};
use crate::sighting::{self, Bucket, Limits, Sightings, Stats};

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, over TCP.
    Tcp(String),
    /// A directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    Socket(PathBuf),
}

/// TLS to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP (Postgrex's `ssl: false`).
    Disable,
    /// TLS required. `verify: false` accepts any certificate (Postgrex's `ssl: true` without
    /// `verify: :verify_peer`); with `verify`, the chain is checked against `ca_file` (else the
    /// system roots) and the certificate against `server_name` (else the host).
    Require {
        verify: bool,
        ca_file: Option<PathBuf>,
        server_name: Option<String>,
        /// A client certificate (PEM chain) and its private key (PEM), for `cert` authentication.
        client_cert: Option<(PathBuf, PathBuf)>,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub tls: Tls,
    /// Server parameters sent at startup (`application_name`, `search_path`...).
    pub parameters: Vec<(String, String)>,
    /// The channel, exactly (it is quoted in SQL, so its case is kept).
    pub channel: String,
    /// This node's name; `None`: listen only (not distributed, or a dry run).
    pub node: Option<String>,
    pub heartbeat: Duration,
    /// Deadline of a connect and of each statement.
    pub timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub new_names_burst: u32,
    pub new_names_per_minute: u32,
}

impl Config {
    /// Guards against a caller that bypassed the Elixir validation.
    pub fn validate(&self) -> Result<(), String> {
        if self.channel.is_empty() || self.channel.contains('\0') {
            return Err("the channel name must be a non-empty string without NUL".into());
        }
        if let Some(node) = &self.node {
            if !crate::node_name::is_valid(node) {
                return Err(format!("invalid node name {node:?}"));
            }
        }
        if self.heartbeat.is_zero() || self.timeout.is_zero() || self.backoff_min.is_zero() {
            return Err("durations must be positive".into());
        }
        // The backoff range was checked once, by the Elixir config layer (Config.backoff_range!);
        // an inverted range would only cap every delay at `backoff_max` (see Backoff::base).
        if self.new_names_burst == 0 {
            return Err("new_names_burst must be positive".into());
        }
        Ok(())
    }

    /// `host:port` or the socket path, for messages.
    pub fn target(&self) -> String {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Socket(dir) => format!("{}/.s.PGSQL.{}", dir.display(), self.port),
        }
    }
}

/// `"ident"`, with `"` doubled: the channel as one identifier, case kept.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'literal'`, with `'` doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The channels to LISTEN on: the channel itself, and its lower-case form when that differs.
/// libcluster_postgres sends `NOTIFY <channel>` unquoted, which Postgres folds to lower case;
/// listening on both hears those nodes whatever the channel's case.
pub fn listen_channels(channel: &str) -> Vec<String> {
    let mut v = vec![channel.to_string()];
    let folded = channel.to_ascii_lowercase();
    if folded != channel {
        v.push(folded);
    }
    v
}

/// `LISTEN` on every channel, then (when this node has a name) the first announcement.
pub fn setup_sql(cfg: &Config) -> String {
    let mut sql: Vec<String> = listen_channels(&cfg.channel)
        .iter()
        .map(|c| format!("LISTEN {}", quote_ident(c)))
        .collect();
    if let Some(n) = notify_sql(cfg) {
        sql.push(n);
    }
    sql.join("; ")
}

/// `NOTIFY "<channel>", '<node>'`, libcluster_postgres's heartbeat.
pub fn notify_sql(cfg: &Config) -> Option<String> {
    cfg.node
        .as_ref()
        .map(|n| format!("NOTIFY {}, {}", quote_ident(&cfg.channel), quote_literal(n)))
}

/// What the receive path decided for one notification.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Verdict {
    /// Valid, another node's, on our channel: on to the sightings.
    Sighted,
    Own,
    BadName,
    OtherChannel,
}

/// Judges notification payloads: the channel, validation and own name here; known names and the
/// limit on new ones in [`Sightings`] (one source: Postgres does not say who sent a payload in a
/// way worth trusting more than the payload). Kept across reconnects.
pub struct Receiver {
    own: Option<String>,
    channels: Vec<String>,
    sightings: Sightings<()>,
}

impl Receiver {
    pub fn new(cfg: &Config, now: Instant) -> Receiver {
        let limits = Limits {
            per_source: None,
            total: Bucket {
                burst: cfg.new_names_burst,
                per_minute: cfg.new_names_per_minute,
            },
        };
        Receiver {
            own: cfg.node.clone(),
            channels: listen_channels(&cfg.channel),
            sightings: Sightings::new(limits, now),
        }
    }

    pub fn judge(&self, channel: &str, payload: &str) -> Verdict {
        if !self.channels.iter().any(|c| c == channel) {
            return Verdict::OtherChannel;
        }
        if !crate::node_name::is_valid(payload) {
            return Verdict::BadName;
        }
        if self.own.as_deref() == Some(payload) {
            return Verdict::Own;
        }
        Verdict::Sighted
    }

    /// Whether new names wait for a token: call [`admit`](Self::admit) every
    /// [`sighting::ADMIT_TICK`] then.
    pub fn waiting(&self) -> bool {
        self.sightings.waiting()
    }

    /// The waiting names that get a token now, counted in `stats`.
    pub fn admit(&mut self, now: Instant, stats: &Stats) -> Vec<String> {
        self.sightings.admit(now, stats)
    }

    /// Judges one notification and returns the names to report now: the payload when known (or
    /// admitted at once) and waiting names that got a token. Counts everything in `stats`.
    pub fn receive(
        &mut self,
        channel: &str,
        payload: &str,
        now: Instant,
        stats: &Stats,
    ) -> Vec<String> {
        let counter = match self.judge(channel, payload) {
            Verdict::Sighted => {
                let (verdict, names) = self.sightings.sight(payload, (), false, now, stats);
                if verdict == sighting::Verdict::Report || verdict == sighting::Verdict::Quiet {
                    stats.incr("accepted");
                }
                return names;
            }
            Verdict::Own => {
                stats.incr("own");
                return Vec::new();
            }
            Verdict::BadName => "rejected_bad_name",
            Verdict::OtherChannel => "rejected_other_channel",
        };
        stats.incr(counter);
        tracing::debug!(
            counter,
            len = payload.len(),
            "postgres notification dropped"
        );
        Vec::new()
    }
}

/// Turns a tokio-postgres failure into a typed error whose message says what to fix.
pub fn describe(cfg: &Config, e: &tokio_postgres::Error, during: &str) -> Error {
    let at = cfg.target();
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let (kind, hint) = if *code == SqlState::INVALID_PASSWORD {
            (
                ErrorKind::Unauthorized,
                format!(
                    "the password of role {:?} is wrong (or the role does not exist): check \
                     :password / :username (or the url)",
                    cfg.user
                ),
            )
        } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            (
                ErrorKind::Unauthorized,
                format!(
                    "role {:?} may not log in to database {:?} from here: the role must exist \
                     and have LOGIN (ALTER ROLE {} LOGIN), and pg_hba.conf must allow it from \
                     this host",
                    cfg.user,
                    cfg.database,
                    quote_ident(&cfg.user)
                ),
            )
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            (
                ErrorKind::Forbidden,
                format!(
                    "role {:?} lacks a privilege; LISTEN/NOTIFY need only CONNECT: GRANT CONNECT \
                     ON DATABASE {} TO {}",
                    cfg.user,
                    quote_ident(&cfg.database),
                    quote_ident(&cfg.user)
                ),
            )
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            (
                ErrorKind::NotFound,
                format!(
                    "database {:?} does not exist: check :database",
                    cfg.database
                ),
            )
        } else if *code == SqlState::TOO_MANY_CONNECTIONS {
            (
                ErrorKind::Refused,
                "the server (or the role's CONNECTION LIMIT) allows no more connections".into(),
            )
        } else {
            (ErrorKind::Io, "retrying".into())
        };
        return Error::new(
            kind,
            format!(
                "{during} {at}: {} (SQLSTATE {}); {hint}",
                db.message(),
                code.code()
            ),
        );
    }
    let detail = http::chain(e);
    let mut kind = ErrorKind::Io;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            kind = ErrorKind::Tls;
            break;
        }
        if let Some(io) = s.downcast_ref::<io::Error>() {
            kind = if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                ErrorKind::Tls
            } else {
                ErrorKind::from_io(io)
            };
            break;
        }
        if s.downcast_ref::<TlsSetupError>().is_some() {
            kind = ErrorKind::Tls;
            break;
        }
        source = s.source();
    }
    let hint = match kind {
        ErrorKind::Tls => "; check :ssl / :ssl_opts (cacertfile, server_name_indication)",
        ErrorKind::Refused | ErrorKind::Unreachable | ErrorKind::Timeout => {
            "; is the server running, and are :hostname / :port (or :socket_dir) right?"
        }
        _ => "",
    };
    Error::new(kind, format!("{during} {at}: {detail}{hint}"))
}

// ---------------------------------------------------------------------------------------------
// TLS: a small MakeTlsConnect on tokio-rustls.

/// The name given to the TLS layer is not a DNS name or IP address.
#[derive(Debug)]
pub struct TlsSetupError(String);

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

#[derive(Clone)]
struct MakeRustls {
    config: Option<Arc<ClientConfig>>,
    server_name: Option<String>,
}

/// `config` is `None` without TLS: tokio-postgres makes a connector for every host even with
/// `sslmode=disable`, and never uses it then.
struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    name: ServerName<'static>,
}

struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = TlsSetupError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, TlsSetupError> {
        let config = self.config.clone();
        let domain = self.server_name.as_deref().unwrap_or(domain);
        let name = match ServerName::try_from(domain.to_string()) {
            Ok(name) => name,
            // Never used without TLS (a Unix socket's "host" is a path).
            Err(_) if config.is_none() => ServerName::from(std::net::Ipv4Addr::LOCALHOST),
            Err(e) => {
                return Err(TlsSetupError(format!(
                    "{domain:?} is not a TLS server name: {e}"
                )))
            }
        };
        Ok(RustlsConnect { config, name })
    }
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<RustlsStream>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let config = self
                .config
                .ok_or_else(|| io::Error::other(TlsSetupError("TLS is not configured".into())))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl TlsStream for RustlsStream {
    // SCRAM without channel binding (SCRAM-SHA-256, not -PLUS): what libpq's default `prefer`
    // falls back to as well.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

fn make_tls(cfg: &Config) -> Result<MakeRustls, Error> {
    match &cfg.tls {
        Tls::Disable => Ok(MakeRustls {
            config: None,
            server_name: None,
        }),
        Tls::Require {
            verify,
            ca_file,
            server_name,
            client_cert,
        } => {
            let roots = match ca_file {
                Some(path) => Roots::CaFileOrSystem(path),
                None => Roots::System,
            };
            if let Some(path) = ca_file {
                if !path.exists() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "the CA file {} (ssl_opts cacertfile) does not exist",
                            path.display()
                        ),
                    ));
                }
            }
            let mut config = http::tls_config(roots, !verify)
                .map_err(|e| Error::new(ErrorKind::Tls, e.to_string()))?;
            // Postgres 17 checks the ALPN of TLS connections: offer only its protocol.
            config.alpn_protocols = vec![b"postgresql".to_vec()];
            if let Some((cert, key)) = client_cert {
                config.client_auth_cert_resolver = Arc::new(load_client_cert(cert, key)?);
            }
            Ok(MakeRustls {
                config: Some(Arc::new(config)),
                server_name: server_name.clone(),
            })
        }
    }
}

/// The client certificate, always offered when the server asks for one.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn load_client_cert(cert: &Path, key: &Path) -> Result<ClientCert, Error> {
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::Config,
            format!("ssl_opts {what} {}: {e}", path.display()),
        )
    };
    let pem = std::fs::read(cert).map_err(|e| bad("certfile", cert, &e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certfile", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("certfile", cert, &"holds no certificate"));
    }
    let pem = std::fs::read(key).map_err(|e| bad("keyfile", key, &e))?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad("keyfile", key, &e))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, der, &provider).map_err(|e| {
        bad(
            "keyfile",
            key,
            &format!("does not fit the certificate: {e}"),
        )
    })?;
    Ok(ClientCert(Arc::new(certified)))
}

fn pg_config(cfg: &Config) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    match &cfg.host {
        Host::Tcp(h) => pg.host(h),
        Host::Socket(dir) => pg.host_path(dir),
    };
    pg.port(cfg.port)
        .user(&cfg.user)
        .dbname(&cfg.database)
        .connect_timeout(cfg.timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .ssl_mode(match cfg.tls {
            Tls::Disable => SslMode::Disable,
            Tls::Require { .. } => SslMode::Require,
        });
    if let Some(p) = &cfg.password {
        pg.password(p);
    }
    let mut options = Vec::new();
    let mut app_name = None;
    for (k, v) in &cfg.parameters {
        if k == "application_name" {
            app_name = Some(v.clone());
        } else {
            // `-c name=value`, with spaces and backslashes escaped as libpq's `options` wants.
            let esc = |s: &str| s.replace('\\', "\\\\").replace(' ', "\\ ");
            options.push(format!("-c {}={}", esc(k), esc(v)));
        }
    }
    pg.application_name(app_name.as_deref().unwrap_or("libcluster_rs"));
    if !options.is_empty() {
        pg.options(options.join(" "));
    }
    pg
}

/// Why a session ended.
enum End {
    /// The owner is gone.
    Stopped,
    Failed(Error),
}

type Query = BoxFuture<'static, Result<(), tokio_postgres::Error>>;

fn query(client: &Arc<tokio_postgres::Client>, sql: String) -> Query {
    let c = client.clone();
    Box::pin(async move { c.batch_execute(&sql).await })
}

/// One connection: connect, LISTEN + announce, then heartbeats until it breaks.
async fn session(
    cfg: &Config,
    tls: &MakeRustls,
    stats: &Stats,
    sink: &Arc<dyn Sink>,
    receiver: &mut Receiver,
    backoff: &mut Backoff,
) -> End {
    let pg = pg_config(cfg);
    let connect = pg.connect(tls.clone());
    let (client, mut connection) = match tokio::time::timeout(cfg.timeout, connect).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return End::Failed(describe(cfg, &e, "cannot connect to")),
        Err(_) => {
            return End::Failed(Error::new(
                ErrorKind::Timeout,
                format!(
                    "cannot connect to {}: no answer within {} ms",
                    cfg.target(),
                    cfg.timeout.as_millis()
                ),
            ))
        }
    };
    stats.incr("connects");
    let client = Arc::new(client);
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let mut inflight: Option<(Query, tokio::time::Instant)> = Some((
        query(&client, setup_sql(cfg)),
        tokio::time::Instant::now() + cfg.timeout,
    ));
    let mut listening = false;
    let mut next_beat = tokio::time::Instant::now() + cfg.heartbeat;
    let mut next_admit = tokio::time::Instant::now();
    loop {
        let deadline = inflight.as_ref().map(|(_, d)| *d);
        tokio::select! {
            msg = messages.next() => match msg {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    for name in receiver.receive(n.channel(), n.payload(), Instant::now(), stats) {
                        if !sink.send(Event::Heartbeat { name, trusted: false }) {
                            return End::Stopped;
                        }
                    }
                }
                Some(Ok(_notice)) => {}
                Some(Err(e)) => return End::Failed(describe(cfg, &e, "lost the connection to")),
                None => {
                    return End::Failed(Error::new(
                        ErrorKind::Io,
                        format!("the connection to {} was closed", cfg.target()),
                    ))
                }
            },
            res = async { (&mut inflight.as_mut().expect("guarded").0).await }, if inflight.is_some() => {
                inflight = None;
                if let Err(e) = res {
                    let during = if listening { "NOTIFY failed on" } else { "LISTEN failed on" };
                    return End::Failed(describe(cfg, &e, during));
                }
                if cfg.node.is_some() {
                    stats.incr("heartbeats_sent");
                }
                if !listening {
                    listening = true;
                    backoff.reset();
                    let detail = format!(
                        "connected to {} as {:?}, database {:?}; listening on channel {:?}{}",
                        cfg.target(),
                        cfg.user,
                        cfg.database,
                        cfg.channel,
                        if cfg.node.is_some() { " and announcing this node" } else { " (listen only)" }
                    );
                    if !sink.send(Event::Connected(detail)) {
                        return End::Stopped;
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or(next_beat)), if deadline.is_some() => {
                return End::Failed(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{} on {} got no answer within {} ms",
                        if listening { "NOTIFY" } else { "LISTEN" },
                        cfg.target(),
                        cfg.timeout.as_millis()
                    ),
                ));
            },
            // Names waiting for a token get it even when nothing more is heard.
            // A deadline kept across loop turns: a stream of other datagrams must not postpone it.
            _ = tokio::time::sleep_until(next_admit), if receiver.waiting() => {
                next_admit = tokio::time::Instant::now() + sighting::ADMIT_TICK;
                for name in receiver.admit(Instant::now(), stats) {
                    if !sink.send(Event::Heartbeat { name, trusted: false }) {
                        return End::Stopped;
                    }
                }
            },
            _ = tokio::time::sleep_until(next_beat) => {
                next_beat += cfg.heartbeat;
                if inflight.is_none() && listening {
                    if let Some(sql) = notify_sql(cfg) {
                        inflight = Some((query(&client, sql), tokio::time::Instant::now() + cfg.timeout));
                    }
                }
            },
        }
    }
}

/// Runs until the owner is gone: connect, listen, announce, reconnect with backoff.
pub async fn run(cfg: Config, stats: Arc<Stats>, sink: Arc<dyn Sink>) {
    let mut receiver = Receiver::new(&cfg, Instant::now());
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let tls = match make_tls(&cfg) {
        Ok(t) => Some(t),
        Err(e) => {
            if !sink.send(Event::Error(e)) {
                return;
            }
            None
        }
    };
    let Some(tls) = tls else {
        // A TLS setup that cannot work will not start working: stay, reporting nothing more.
        std::future::pending::<()>().await;
        return;
    };
    loop {
        match session(&cfg, &tls, &stats, &sink, &mut receiver, &mut backoff).await {
            End::Stopped => return,
            End::Failed(e) => {
                stats.incr("connection_errors");
                if !sink.send(Event::Error(e)) {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(channel: &str, node: Option<&str>) -> Config {
        Config {
            host: Host::Tcp("127.0.0.1".into()),
            port: 5432,
            user: "u".into(),
            password: None,
            database: "d".into(),
            tls: Tls::Disable,
            parameters: vec![],
            channel: channel.into(),
            node: node.map(String::from),
            heartbeat: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            new_names_burst: 3,
            new_names_per_minute: 0,
        }
    }

    #[test]
    fn sql_quotes_the_channel_and_the_name() {
        let c = cfg("my\"chan", Some("a@127.0.0.1"));
        assert_eq!(
            notify_sql(&c).unwrap(),
            "NOTIFY \"my\"\"chan\", 'a@127.0.0.1'"
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
        let c = cfg("Cluster_X", Some("a@h"));
        assert_eq!(
            setup_sql(&c),
            "LISTEN \"Cluster_X\"; LISTEN \"cluster_x\"; NOTIFY \"Cluster_X\", 'a@h'"
        );
        assert_eq!(setup_sql(&cfg("cluster", None)), "LISTEN \"cluster\"");
    }

    #[test]
    fn payloads_are_validated_and_new_names_limited() {
        let c = cfg("ch", Some("me@127.0.0.1"));
        let t0 = Instant::now();
        let mut r = Receiver::new(&c, t0);
        let stats = Stats::default();
        let mut heard = |ch: &str, p: &str, t: Instant| r.receive(ch, p, t, &stats);
        let none: Vec<String> = Vec::new();
        assert_eq!(heard("ch", "me@127.0.0.1", t0), none);
        assert_eq!(heard("other", "a@127.0.0.1", t0), none);
        let long = "a".repeat(300);
        for bad in ["", "nohost", "a@b@c", "x@", "'; DROP", long.as_str()] {
            assert_eq!(heard("ch", bad, t0), none, "{bad:?}");
        }
        assert_eq!(heard("ch", "a@127.0.0.1", t0), vec!["a@127.0.0.1"]);
        assert_eq!(heard("ch", "a@127.0.0.1", t0), none);
        assert_eq!(heard("ch", "b@127.0.0.1", t0), vec!["b@127.0.0.1"]);
        assert_eq!(heard("ch", "c@127.0.0.1", t0), vec!["c@127.0.0.1"]);
        // burst 3, no refill: a fourth new name waits (for ever here), known ones still go through
        assert_eq!(heard("ch", "d@127.0.0.1", t0), none);
        let later = t0 + sighting::REPORT_GAP_MIN;
        assert_eq!(heard("ch", "a@127.0.0.1", later), vec!["a@127.0.0.1"]);
        // the gap doubles
        assert_eq!(
            heard("ch", "a@127.0.0.1", later + sighting::REPORT_GAP_MIN),
            none
        );
        assert_eq!(stats.get("rejected_bad_name"), 6);
        assert_eq!(stats.get("rejected_rate_limited"), 1);
        assert_eq!(stats.get("reported"), 4);
        assert_eq!(stats.get("own"), 1);
        assert_eq!(stats.get("rejected_other_channel"), 1);
        assert!(r.waiting());
    }

    #[test]
    fn a_new_name_waiting_for_a_token_is_reported_when_one_comes() {
        let mut c = cfg("ch", Some("me@127.0.0.1"));
        c.new_names_burst = 1;
        c.new_names_per_minute = 60;
        let t0 = Instant::now();
        let mut r = Receiver::new(&c, t0);
        let stats = Stats::default();
        assert_eq!(r.receive("ch", "a@h", t0, &stats), vec!["a@h"]);
        assert!(r.receive("ch", "b@h", t0, &stats).is_empty());
        assert!(r.admit(t0 + Duration::from_millis(500), &stats).is_empty());
        assert_eq!(
            r.admit(t0 + Duration::from_millis(1_100), &stats),
            vec!["b@h"]
        );
        assert_eq!(stats.get("admitted_after_waiting"), 1);
        assert_eq!(stats.get("reported"), 2);
    }

    #[test]
    fn the_lower_case_channel_of_libcluster_postgres_is_heard() {
        let c = cfg("AbC", None);
        let r = Receiver::new(&c, Instant::now());
        assert_eq!(r.judge("abc", "a@h"), Verdict::Sighted);
        assert_eq!(r.judge("AbC", "b@h"), Verdict::Sighted);
        assert_eq!(r.judge("ABC", "c@h"), Verdict::OtherChannel);
    }

    #[test]
    fn config_is_guarded() {
        assert!(cfg("ch", Some("a@h")).validate().is_ok());
        assert!(cfg("", None).validate().is_err());
        assert!(cfg("ch", Some("bad")).validate().is_err());
        let mut c = cfg("ch", None);
        c.new_names_burst = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn parameters_become_startup_options() {
        let mut c = cfg("ch", None);
        c.parameters = vec![
            ("application_name".into(), "app".into()),
            ("search_path".into(), "a b".into()),
        ];
        let pg = pg_config(&c);
        assert_eq!(pg.get_application_name(), Some("app"));
        assert_eq!(pg.get_options(), Some("-c search_path=a\\ b"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_and_is_retried() {
        // A port nobody listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = cfg("ch", Some("a@127.0.0.1"));
        c.port = port;
        c.backoff_min = Duration::from_millis(20);
        c.backoff_max = Duration::from_millis(40);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(run(c, stats.clone(), Arc::new(tx)));
        for _ in 0..2 {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(Event::Error(e))) => {
                    assert_eq!(e.kind, ErrorKind::Refused, "{e}");
                    assert!(e.message.contains(&format!("127.0.0.1:{port}")), "{e}");
                }
                other => panic!("expected a refused error, got {other:?}"),
            }
        }
        task.abort();
        assert!(stats.get("connection_errors") >= 2);
    }
}
