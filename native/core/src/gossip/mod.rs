//! Gossip discovery: a long-lived task that sends this node's heartbeat to a multicast group (or a
//! broadcast address) and reports every accepted heartbeat from another node as
//! [`Event::Heartbeat`]. It never reports a node as gone: gossip only adds nodes.
//!
//! Hostile-network safety lives here, before anything reaches Elixir:
//! - every datagram goes through the bounded decoders of [`wire`];
//! - new names from unauthenticated (v1) datagrams are rate-limited by a token bucket
//!   ([`NameLimiter`]), so a flood of fresh names cannot exhaust the atom table (Elixir makes an
//!   atom of every name it is sent);
//! - a name already reported is reported again at most once per [`REPORT_GAP`], so a flood of
//!   valid heartbeats cannot flood the strategy process;
//! - rejections are counted by reason ([`Stats`]) and logged at debug level only.

pub mod crypto;
pub mod socket;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::net::UdpSocket;

use crate::event::{Error, ErrorKind, Event, Sink};
use socket::SocketConfig;
use wire::{Format, Keys, Mode, Reject, ReplayGuard};

/// A known name is reported again at most this often.
pub const REPORT_GAP: Duration = Duration::from_millis(1_000);
/// At most this many names are remembered; the least recently heard is forgotten first.
pub const MAX_KNOWN_NAMES: usize = 4_096;
/// Authenticated nonces remembered for replay detection.
const MAX_REPLAY_ENTRIES: usize = 65_536;
/// Consecutive send failures after which the socket is reopened (an interface went away).
const REOPEN_AFTER_SEND_ERRORS: u32 = 5;

/// When heartbeats are sent (the first one right after the socket opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every random 1..=max ms (libcluster: 1..5000).
    Random { max_ms: u64 },
    /// Every `ms` ms, ±10 %.
    Every { ms: u64 },
    /// Never: listen only (the discovery dry run, which must not announce itself).
    Silent,
}

#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node's name (`name@host`), sent in every heartbeat; our own heartbeats are ignored.
    pub node: String,
    pub socket: SocketConfig,
    pub mode: Mode,
    pub secret: Option<Vec<u8>>,
    pub schedule: Schedule,
    /// Authenticated datagrams whose timestamp is further than this from now are stale.
    pub replay_window_ms: u64,
    /// New names from unauthenticated datagrams: a bucket of `burst` refilled at `per_minute`.
    pub new_names_burst: u32,
    pub new_names_per_minute: u32,
    /// Send `Event::GossipStats` this often when the counters changed (`None`: never).
    pub stats_interval_ms: Option<u64>,
}

impl GossipConfig {
    /// Checks what the Elixir side cannot: combinations. Returns the message for `ArgumentError`.
    pub fn validate(&self) -> Result<(), String> {
        if !crate::node_name::is_valid(&self.node) {
            return Err(format!("invalid node name {:?}", self.node));
        }
        if self.mode != Mode::V1 && self.secret.is_none() {
            return Err("the authenticated format needs a :secret".into());
        }
        if self.socket.broadcast_only && self.socket.multicast_addr.is_ipv6() {
            return Err("broadcast_only needs an IPv4 address (IPv6 has no broadcast)".into());
        }
        if !self.socket.broadcast_only && !self.socket.multicast_addr.is_multicast() {
            return Err(format!(
                "multicast_addr {} is not a multicast address (set broadcast_only: true for broadcast)",
                self.socket.multicast_addr
            ));
        }
        Ok(())
    }
}

/// Counters by name, shared between the task and whoever asks for them (`gossip_stats/1`).
#[derive(Debug, Default)]
pub struct Stats {
    counters: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    pub fn incr(&self, name: &'static str) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry(name).or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn get(&self, name: &str) -> u64 {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.get(name).copied().unwrap_or(0)
    }
}

fn reject_counter(r: Reject) -> &'static str {
    match r {
        Reject::TooLarge => "rejected_too_large",
        Reject::Malformed => "rejected_malformed",
        Reject::BadName => "rejected_bad_name",
        Reject::Decrypt => "rejected_decrypt",
        Reject::Auth => "rejected_auth",
        Reject::Stale => "rejected_stale",
        Reject::Replay => "rejected_replay",
        Reject::FormatNotAccepted => "rejected_format_not_accepted",
    }
}

fn accept_counter(f: Format) -> &'static str {
    match f {
        Format::V1Plain => "accepted_v1_plain",
        Format::V1Secret => "accepted_v1_secret",
        Format::Authenticated => "accepted_authenticated",
    }
}

/// A token bucket for names this node has not heard before.
pub struct NameLimiter {
    burst: f64,
    per_ms: f64,
    tokens: f64,
    last: Instant,
}

impl NameLimiter {
    pub fn new(burst: u32, per_minute: u32, now: Instant) -> NameLimiter {
        NameLimiter {
            burst: burst as f64,
            per_ms: per_minute as f64 / 60_000.0,
            tokens: burst as f64,
            last: now,
        }
    }

    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64() * 1000.0;
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the receive path decided for one accepted name.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Report,
    /// Reported recently; nothing to do.
    Quiet,
    Own,
    RateLimited,
}

/// The receive-side state: decoders' keys, replay guard, known names and the new-name limiter.
pub struct Receiver {
    own: String,
    mode: Mode,
    keys: Keys,
    replay: ReplayGuard,
    known: HashMap<String, Instant>,
    limiter: NameLimiter,
}

impl Receiver {
    pub fn new(cfg: &GossipConfig, now: Instant) -> Receiver {
        Receiver {
            own: cfg.node.clone(),
            mode: cfg.mode,
            keys: Keys::new(cfg.secret.as_deref()),
            replay: ReplayGuard::new(cfg.replay_window_ms, MAX_REPLAY_ENTRIES),
            known: HashMap::new(),
            limiter: NameLimiter::new(cfg.new_names_burst, cfg.new_names_per_minute, now),
        }
    }

    /// Decodes and judges one datagram, updating `stats`. Returns the name to report, if any.
    pub fn receive(
        &mut self,
        datagram: &[u8],
        now: Instant,
        wall_ms: u64,
        stats: &Stats,
    ) -> Option<String> {
        let (name, format) = match wire::decode_heartbeat(
            datagram,
            self.mode,
            &self.keys,
            &mut self.replay,
            wall_ms,
        ) {
            Ok(ok) => ok,
            Err(reason) => {
                stats.incr(reject_counter(reason));
                tracing::debug!(
                    reason = reason.as_str(),
                    len = datagram.len(),
                    "gossip datagram rejected"
                );
                return None;
            }
        };
        match self.judge(&name, format, now) {
            Verdict::Report => {
                stats.incr("accepted");
                stats.incr(accept_counter(format));
                Some(name)
            }
            Verdict::Quiet => {
                stats.incr("accepted");
                stats.incr(accept_counter(format));
                None
            }
            Verdict::Own => {
                stats.incr("own");
                None
            }
            Verdict::RateLimited => {
                stats.incr("rejected_rate_limited");
                tracing::debug!("gossip: new name from an unauthenticated datagram rate-limited");
                None
            }
        }
    }

    fn judge(&mut self, name: &str, format: Format, now: Instant) -> Verdict {
        if name == self.own {
            return Verdict::Own;
        }
        if let Some(last) = self.known.get_mut(name) {
            if now.saturating_duration_since(*last) < REPORT_GAP {
                return Verdict::Quiet;
            }
            *last = now;
            return Verdict::Report;
        }
        if format != Format::Authenticated && !self.limiter.allow(now) {
            return Verdict::RateLimited;
        }
        if self.known.len() >= MAX_KNOWN_NAMES {
            if let Some(oldest) = self
                .known
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                self.known.remove(&oldest);
            }
        }
        self.known.insert(name.to_string(), now);
        Verdict::Report
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn next_delay(schedule: Schedule) -> Duration {
    let mut rng = rand::rng();
    let ms = match schedule {
        Schedule::Random { max_ms } => rng.random_range(1..=max_ms.max(1)),
        Schedule::Every { ms } => {
            let spread = ms / 10;
            rng.random_range(ms - spread..=ms + spread).max(1)
        }
        Schedule::Silent => 86_400_000,
    };
    Duration::from_millis(ms)
}

/// Opens the socket, retrying with backoff (1 s doubling to 30 s). The first failure is reported
/// to the sink once; later ones are logged at debug. `None` when the sink is gone.
async fn open_with_retry(
    cfg: &SocketConfig,
    sink: &dyn Sink,
    stats: &Stats,
) -> Option<(UdpSocket, std::net::SocketAddr)> {
    let mut failures: u32 = 0;
    loop {
        let result = socket::open(cfg).and_then(|(s, dest)| Ok((UdpSocket::from_std(s)?, dest)));
        match result {
            Ok(ok) => {
                stats.incr("socket_opened");
                if failures > 0 {
                    tracing::info!(failures, "gossip socket opened after retrying");
                }
                return Some(ok);
            }
            Err(err) => {
                stats.incr("socket_open_failed");
                let message = format!(
                    "cannot open the gossip socket (port {}, group {}): {err}; retrying",
                    cfg.port, cfg.multicast_addr
                );
                if failures == 0 {
                    let kind = match ErrorKind::from_io(&err) {
                        ErrorKind::Io => ErrorKind::Config,
                        other => other,
                    };
                    if !sink.send(Event::Error(Error::new(kind, message))) {
                        return None;
                    }
                } else {
                    tracing::debug!(%message);
                }
                failures = failures.saturating_add(1);
                let backoff = 1_000u64
                    .saturating_mul(1 << (failures - 1).min(5))
                    .min(30_000);
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
        }
    }
}

/// The gossip task. Runs until cancelled (its future is dropped) or the sink is gone.
pub async fn run(cfg: GossipConfig, stats: Arc<Stats>, sink: Arc<dyn Sink>) {
    let keys = Keys::new(cfg.secret.as_deref());
    let mut receiver = Receiver::new(&cfg, Instant::now());
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
    let stats_every = cfg.stats_interval_ms.map(Duration::from_millis);
    let mut last_stats: Vec<(&'static str, u64)> = Vec::new();

    'open: loop {
        let Some((sock, dest)) = open_with_retry(&cfg.socket, sink.as_ref(), &stats).await else {
            return;
        };
        let mut next_beat = tokio::time::Instant::now();
        let mut next_stats = stats_every.map(|d| tokio::time::Instant::now() + d);
        let mut send_errors = 0u32;
        loop {
            let stats_at = next_stats
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                received = sock.recv_from(&mut buf) => match received {
                    Ok((n, _from)) => {
                        // `buf` is one byte longer than the limit, so an oversized datagram shows.
                        if let Some(name) = receiver.receive(&buf[..n], Instant::now(), wall_ms(), &stats) {
                            if !sink.send(Event::Heartbeat(name)) {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        stats.incr("recv_errors");
                        tracing::debug!(%err, "gossip recv failed");
                    }
                },
                _ = tokio::time::sleep_until(next_beat), if cfg.schedule != Schedule::Silent => {
                    for datagram in wire::encode_heartbeat(&cfg.node, cfg.mode, &keys, wall_ms()) {
                        match sock.send_to(&datagram, dest).await {
                            Ok(_) => {
                                stats.incr("sent");
                                send_errors = 0;
                            }
                            Err(err) => {
                                stats.incr("send_errors");
                                send_errors += 1;
                                tracing::debug!(%err, %dest, "gossip heartbeat not sent");
                            }
                        }
                    }
                    if send_errors >= REOPEN_AFTER_SEND_ERRORS {
                        tracing::debug!("gossip: reopening the socket after repeated send failures");
                        continue 'open;
                    }
                    next_beat = tokio::time::Instant::now() + next_delay(cfg.schedule);
                },
                _ = tokio::time::sleep_until(stats_at), if next_stats.is_some() => {
                    let snapshot = stats.snapshot();
                    if snapshot != last_stats {
                        last_stats = snapshot.clone();
                        if !sink.send(Event::GossipStats(snapshot)) {
                            return;
                        }
                    }
                    next_stats = stats_every.map(|d| tokio::time::Instant::now() + d);
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use tokio::sync::mpsc;

    fn config(node: &str, port: u16) -> GossipConfig {
        GossipConfig {
            node: node.into(),
            socket: SocketConfig {
                port,
                if_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                multicast_if: Some(socket::Interface::Name("lo".into())),
                multicast_addr: "233.252.1.32".parse().unwrap(),
                multicast_ttl: 0,
                broadcast_only: false,
            },
            mode: Mode::V1,
            secret: None,
            schedule: Schedule::Every { ms: 50 },
            replay_window_ms: 30_000,
            new_names_burst: 4,
            new_names_per_minute: 60,
            stats_interval_ms: None,
        }
    }

    #[test]
    fn new_unauthenticated_names_are_rate_limited_known_ones_are_not() {
        let cfg = config("me@h", 1);
        let t0 = Instant::now();
        let mut r = Receiver::new(&cfg, t0);
        let stats = Stats::default();
        let mut reported = 0;
        for i in 0..100 {
            let d = wire::encode_v1_plain(&format!("n{i}@h"));
            if r.receive(&d, t0, 0, &stats).is_some() {
                reported += 1;
            }
        }
        assert_eq!(reported, 4);
        assert_eq!(stats.get("rejected_rate_limited"), 96);
        // one more token per second at 60/min
        assert!(r
            .receive(
                &wire::encode_v1_plain("late@h"),
                t0 + Duration::from_millis(1_100),
                0,
                &stats
            )
            .is_some());
        // a known name is reported again after the gap, without a token
        let again = r.receive(
            &wire::encode_v1_plain("n0@h"),
            t0 + Duration::from_millis(1_200),
            0,
            &stats,
        );
        assert_eq!(again.as_deref(), Some("n0@h"));
        // own heartbeats are ignored
        assert!(r
            .receive(&wire::encode_v1_plain("me@h"), t0, 0, &stats)
            .is_none());
        assert_eq!(stats.get("own"), 1);
    }

    #[test]
    fn authenticated_names_are_not_rate_limited() {
        let mut cfg = config("me@h", 1);
        cfg.mode = Mode::Authenticated;
        cfg.secret = Some(b"pw".to_vec());
        let keys = Keys::new(Some(b"pw"));
        let t0 = Instant::now();
        let mut r = Receiver::new(&cfg, t0);
        let stats = Stats::default();
        let n = (0..50)
            .filter(|i| {
                let d = wire::encode_authenticated(
                    &format!("n{i}@h"),
                    keys.aead.as_ref().unwrap(),
                    1_000,
                    crypto::random_array(),
                );
                r.receive(&d, t0, 1_000, &stats).is_some()
            })
            .count();
        assert_eq!(n, 50);
    }

    #[tokio::test]
    async fn nodes_on_loopback_share_the_port_and_hear_each_other() {
        let port = 46_000 + (std::process::id() % 1000) as u16;
        let mut rxs = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (tx, rx) = mpsc::unbounded_channel();
            let sink: Arc<dyn Sink> = Arc::new(tx);
            let stats = Arc::new(Stats::default());
            tasks.push(tokio::spawn(run(
                config(&format!("n{i}@127.0.0.1"), port),
                stats,
                sink,
            )));
            rxs.push(rx);
        }
        for (i, rx) in rxs.iter_mut().enumerate() {
            let mut heard = std::collections::BTreeSet::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while heard.len() < 2 {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Event::Heartbeat(n))) => {
                        heard.insert(n);
                    }
                    Ok(Some(other)) => panic!("unexpected {other:?}"),
                    _ => panic!("node {i} heard only {heard:?}"),
                }
            }
            assert!(!heard.contains(&format!("n{i}@127.0.0.1")));
        }
        for t in tasks {
            t.abort();
        }
    }

    #[tokio::test]
    async fn a_missing_interface_is_reported_once_and_retried() {
        let mut cfg = config("me@h", 46_999);
        cfg.socket.multicast_if = Some(socket::Interface::Name("nosuchif0".into()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(run(cfg, stats.clone(), Arc::new(tx)));
        match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            Ok(Some(Event::Error(e))) => assert!(e.message.contains("nosuchif0"), "{e}"),
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert!(stats.get("socket_open_failed") >= 2, "retried");
        assert!(rx.try_recv().is_err(), "reported once");
        assert!(!task.is_finished());
        task.abort();
    }
}
