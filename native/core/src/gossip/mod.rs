//! Gossip discovery: a long-lived task that sends this node's heartbeat to a multicast group (or a
//! broadcast address) and reports every accepted heartbeat from another node as
//! [`Event::Heartbeat`]. It never reports a node as gone: gossip only adds nodes.
//!
//! Hostile-network safety lives here, before anything reaches Elixir:
//! - every datagram goes through the bounded decoders of [`wire`];
//! - names from unauthenticated (v1) datagrams go through [`crate::sighting`], with the sender
//!   address as the source: known names are re-reported with backoff (and at once after
//!   [`Control::NodeDown`]); new names are limited per sender address and in total, and shared
//!   fairly among sender addresses, so a flood from one or many addresses does not keep a
//!   newcomer out. The hard ceiling on atoms is VM-wide and lives where atoms are made (Elixir,
//!   with the counter in the NIF);
//! - rejections are counted by reason ([`Stats`]) and logged at debug level only.

mod crypto;
mod socket;
pub mod wire;

/// Random bytes from the OS RNG, for v1 IVs and authenticated nonces.
pub use crypto::random_array;
pub use socket::{Interface, SocketConfig};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::event::{Error, ErrorKind, Event, Sink};
use crate::sighting::Stats;
use crate::sighting::{self, Bucket, Limits, Sightings};
use wire::{Format, Keys, Mode, Reject, ReplayGuard};

/// Authenticated nonces remembered for replay detection.
const MAX_REPLAY_ENTRIES: usize = 65_536;
/// Consecutive send failures after which the socket is reopened (an interface went away).
const REOPEN_AFTER_SEND_ERRORS: u32 = 5;
/// Control messages queued at most (they come from one process; more are dropped).
pub const CONTROL_QUEUE: usize = 1_024;

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
    /// `None` while the VM is not distributed: nothing is sent, and (unless listening only)
    /// nothing is reported, until [`Control::SetNode`] gives a name.
    pub node: Option<String>,
    pub socket: SocketConfig,
    pub mode: Mode,
    pub secret: Option<Vec<u8>>,
    pub schedule: Schedule,
    /// Authenticated datagrams whose timestamp is further than this from now are stale.
    pub replay_window_ms: u64,
    /// New names from unauthenticated datagrams, per sender address: a bucket of `burst`
    /// refilled at `per_minute`.
    pub new_names_burst: u32,
    pub new_names_per_minute: u32,
    /// The same, for all senders together.
    pub new_names_total_burst: u32,
    pub new_names_total_per_minute: u32,
    /// A v1 heartbeat whose host part is an IP address counts only when it came from that address.
    pub verify_sender: bool,
    /// Send `Event::GossipStats` this often when the counters changed (`None`: never).
    pub stats_interval_ms: Option<u64>,
}

impl GossipConfig {
    /// The NIF's guard: `Cluster.Strategy.Gossip` validates every option (with the messages users
    /// see) before the task starts; this only refuses a config that cannot work, from a caller that
    /// bypassed it. Returns the message for `ArgumentError`.
    pub fn validate(&self) -> Result<(), String> {
        if self.socket.port == 0 {
            return Err("expected :port to be an integer in 1..65535, got: 0".into());
        }
        if self.schedule == (Schedule::Every { ms: 0 }) {
            return Err("expected :heartbeat_interval to be a positive integer".into());
        }
        if let Some(node) = &self.node {
            if !crate::node_name::is_valid(node) {
                return Err(format!("invalid node name {node:?}"));
            }
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

/// What the owner tells a running task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The VM's node name changed (`Node.start/2` after boot, or `Node.stop/0`).
    SetNode(Option<String>),
    /// This node went down: report its next heartbeat at once.
    NodeDown(String),
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

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether `name`'s host part names another address than `from` (only IP literals can).
pub fn sender_mismatch(name: &str, from: IpAddr) -> bool {
    let host = name.rsplit_once('@').map(|(_, h)| h).unwrap_or("");
    match host.parse::<IpAddr>() {
        Ok(ip) => canonical(ip) != canonical(from),
        Err(_) => false,
    }
}

/// What the receive path decided for one accepted name.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Report,
    /// Reported recently; nothing to do.
    Quiet,
    Own,
    /// New, no token now: it waits for one (see [`crate::sighting`]).
    Waiting,
    /// New, and the sender table is full of senders with names waiting.
    RateLimited,
    /// This VM has no node name yet: nothing is reported.
    NotDistributed,
    /// `verify_sender`: the host part names another address than the sender's.
    SenderMismatch,
}

impl From<sighting::Verdict> for Verdict {
    fn from(v: sighting::Verdict) -> Verdict {
        match v {
            sighting::Verdict::Report => Verdict::Report,
            sighting::Verdict::Quiet => Verdict::Quiet,
            sighting::Verdict::Waiting => Verdict::Waiting,
            sighting::Verdict::Dropped => Verdict::RateLimited,
        }
    }
}

/// The receive-side state: decoders' keys, replay guard, and the sightings (known names and the
/// new-name allowance).
pub struct Receiver {
    own: Option<String>,
    /// Report heartbeats even without a node name (the dry run listens without one).
    report_without_node: bool,
    mode: Mode,
    keys: Keys,
    replay: ReplayGuard,
    sightings: Sightings<IpAddr>,
    verify_sender: bool,
}

impl Receiver {
    pub fn new(cfg: &GossipConfig, now: Instant) -> Receiver {
        Receiver {
            own: cfg.node.clone(),
            report_without_node: cfg.schedule == Schedule::Silent,
            mode: cfg.mode,
            keys: Keys::new(cfg.secret.as_deref()),
            replay: ReplayGuard::new(cfg.replay_window_ms, MAX_REPLAY_ENTRIES),
            sightings: Sightings::new(
                Limits {
                    per_source: Some(Bucket {
                        burst: cfg.new_names_burst,
                        per_minute: cfg.new_names_per_minute,
                    }),
                    total: Bucket {
                        burst: cfg.new_names_total_burst,
                        per_minute: cfg.new_names_total_per_minute,
                    },
                },
                now,
            ),
            verify_sender: cfg.verify_sender,
        }
    }

    /// Applies a control message from the owner.
    pub fn control(&mut self, msg: Control) {
        match msg {
            Control::SetNode(node) => {
                if node != self.own {
                    // Names heard under another identity are reported afresh.
                    self.sightings.forget_known();
                    self.own = node;
                }
            }
            Control::NodeDown(name) => self.sightings.node_down(&name),
        }
    }

    pub fn own(&self) -> Option<&str> {
        self.own.as_deref()
    }

    /// Sender addresses that currently have a bucket.
    pub fn senders(&self) -> usize {
        self.sightings.sources()
    }

    /// Whether new names wait for a token: call [`admit`](Self::admit) every
    /// [`sighting::ADMIT_TICK`] then, even when nothing is heard.
    pub fn waiting(&self) -> bool {
        self.sightings.waiting()
    }

    /// The waiting names that get a token now (untrusted), counted in `stats`.
    pub fn admit(&mut self, now: Instant, stats: &Stats) -> Vec<String> {
        self.sightings.admit(now, stats)
    }

    /// Decodes and judges one datagram from `from`, updating `stats`. Returns the names to report
    /// now, each with whether it came in an authenticated datagram: the name heard (when known,
    /// trusted, or admitted at once) and waiting names that got a token.
    pub fn receive(
        &mut self,
        datagram: &[u8],
        from: IpAddr,
        now: Instant,
        wall_ms: u64,
        stats: &Stats,
    ) -> Vec<(String, bool)> {
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
                return Vec::new();
            }
        };
        let trusted = format == Format::Authenticated;
        let (verdict, names) = match self.judge(&name, format, from) {
            Some(early) => (early, Vec::new()),
            None => {
                let (v, names) = self
                    .sightings
                    .sight(&name, canonical(from), trusted, now, stats);
                (v.into(), names)
            }
        };
        match verdict {
            Verdict::Report | Verdict::Quiet => {
                stats.incr("accepted");
                stats.incr(accept_counter(format));
            }
            Verdict::Own => stats.incr("own"),
            Verdict::NotDistributed => stats.incr("ignored_not_distributed"),
            Verdict::Waiting | Verdict::RateLimited => {
                tracing::debug!(%from, "gossip: new name from an unauthenticated datagram rate-limited");
            }
            Verdict::SenderMismatch => {
                stats.incr("rejected_sender_mismatch");
                tracing::debug!(%from, "gossip: v1 heartbeat whose host part is not its sender");
            }
        }
        // The heard name first (trusted when authenticated), then waiting names given a token.
        names
            .into_iter()
            .map(|n| {
                let t = trusted && n == name;
                (n, t)
            })
            .collect()
    }

    /// The gossip-only checks, before the sightings: `Some` verdict when the name goes no further.
    fn judge(&self, name: &str, format: Format, from: IpAddr) -> Option<Verdict> {
        match &self.own {
            Some(own) if own == name => return Some(Verdict::Own),
            None if !self.report_without_node => return Some(Verdict::NotDistributed),
            _ => {}
        }
        let trusted = format == Format::Authenticated;
        if self.verify_sender && !trusted && sender_mismatch(name, from) {
            return Some(Verdict::SenderMismatch);
        }
        None
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

/// Opens the socket, retrying with [`Backoff`] (1 s doubling to 30 s, ±20 %). The first failure is reported
/// to the sink once; later ones are logged at debug. `None` when the sink is gone.
async fn open_with_retry(
    cfg: &SocketConfig,
    sink: &dyn Sink,
    stats: &Stats,
) -> Option<(UdpSocket, std::net::SocketAddr)> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let result = socket::open(cfg).and_then(|(s, dest)| Ok((UdpSocket::from_std(s)?, dest)));
        match result {
            Ok(ok) => {
                stats.incr("socket_opened");
                if backoff.failures() > 0 {
                    tracing::info!(
                        failures = backoff.failures(),
                        "gossip socket opened after retrying"
                    );
                }
                return Some(ok);
            }
            Err(err) => {
                stats.incr("socket_open_failed");
                let message = format!(
                    "cannot open the gossip socket (port {}, group {}): {err}; retrying",
                    cfg.port, cfg.multicast_addr
                );
                if backoff.failures() == 0 {
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
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The gossip task. Runs until cancelled (its future is dropped) or the sink is gone. `control`
/// carries the owner's notices (node name changes, nodes that went down); when its sender is
/// dropped the task goes on without it.
pub async fn run(
    cfg: GossipConfig,
    stats: Arc<Stats>,
    sink: Arc<dyn Sink>,
    mut control: mpsc::Receiver<Control>,
) {
    let keys = Keys::new(cfg.secret.as_deref());
    let mut receiver = Receiver::new(&cfg, Instant::now());
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
    let stats_every = cfg.stats_interval_ms.map(Duration::from_millis);
    let mut last_stats: Vec<(&'static str, u64)> = Vec::new();
    let mut control_open = true;

    'open: loop {
        let Some((sock, dest)) = open_with_retry(&cfg.socket, sink.as_ref(), &stats).await else {
            return;
        };
        let mut next_beat = tokio::time::Instant::now();
        let mut next_admit = tokio::time::Instant::now();
        let mut next_stats = stats_every.map(|d| tokio::time::Instant::now() + d);
        let mut send_errors = 0u32;
        loop {
            let stats_at = next_stats
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            let sending = cfg.schedule != Schedule::Silent && receiver.own().is_some();
            tokio::select! {
                received = sock.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        // `buf` is one byte longer than the limit, so an oversized datagram shows.
                        let heard =
                            receiver.receive(&buf[..n], from.ip(), Instant::now(), wall_ms(), &stats);
                        for (name, trusted) in heard {
                            if !sink.send(Event::Heartbeat { name, trusted }) {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        stats.incr("recv_errors");
                        tracing::debug!(%err, "gossip recv failed");
                    }
                },
                msg = control.recv(), if control_open => match msg {
                    Some(msg) => {
                        let named = matches!(&msg, Control::SetNode(Some(n)) if Some(n.as_str()) != receiver.own());
                        receiver.control(msg);
                        if named {
                            // A new name: announce it now rather than at the next scheduled beat.
                            next_beat = tokio::time::Instant::now();
                        }
                    }
                    None => control_open = false,
                },
                _ = tokio::time::sleep_until(next_beat), if sending => {
                    let node = receiver.own().unwrap_or_default().to_string();
                    for datagram in wire::encode_heartbeat(&node, cfg.mode, &keys, wall_ms()) {
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
                // Names waiting for a token get it even when nothing more is heard.
                // A deadline kept across loop turns: a stream of other datagrams must not postpone it.
                _ = tokio::time::sleep_until(next_admit), if receiver.waiting() => {
                    next_admit = tokio::time::Instant::now() + sighting::ADMIT_TICK;
                    for name in receiver.admit(Instant::now(), &stats) {
                        if !sink.send(Event::Heartbeat { name, trusted: false }) {
                            return;
                        }
                    }
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

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));

    fn config(node: &str, port: u16) -> GossipConfig {
        GossipConfig {
            node: Some(node.into()),
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
            new_names_total_burst: 256,
            new_names_total_per_minute: 600,
            verify_sender: false,
            stats_interval_ms: None,
        }
    }

    fn hb(name: &str) -> Vec<u8> {
        wire::encode_v1_plain(name)
    }

    fn name(r: Vec<(String, bool)>) -> Option<String> {
        r.into_iter().next().map(|(n, _)| n)
    }

    #[test]
    fn new_unauthenticated_names_are_rate_limited_known_ones_are_not() {
        let cfg = config("me@h", 1);
        let t0 = Instant::now();
        let mut r = Receiver::new(&cfg, t0);
        let stats = Stats::default();
        let mut reported = 0;
        for i in 0..100 {
            if r.receive(&hb(&format!("n{i}@h")), A, t0, 0, &stats).len() == 1 {
                reported += 1;
            }
        }
        assert_eq!(reported, 4);
        assert_eq!(stats.get("rejected_rate_limited"), 96);
        // one more token per second at 60/min
        let late = r.receive(
            &hb("late@h"),
            A,
            t0 + Duration::from_millis(1_100),
            0,
            &stats,
        );
        assert_eq!(late, vec![("late@h".to_string(), false)]);
        // a known name is reported again after the gap, without a token
        let again = r.receive(&hb("n0@h"), A, t0 + Duration::from_millis(1_200), 0, &stats);
        assert_eq!(name(again).as_deref(), Some("n0@h"));
        // own heartbeats are ignored
        assert!(r.receive(&hb("me@h"), A, t0, 0, &stats).is_empty());
        assert_eq!(stats.get("own"), 1);
    }

    #[test]
    fn one_flooding_sender_does_not_use_up_the_allowance_of_another() {
        let cfg = config("me@h", 1);
        let t0 = Instant::now();
        let mut r = Receiver::new(&cfg, t0);
        let stats = Stats::default();
        for i in 0..10_000 {
            let t = t0 + Duration::from_millis(i);
            r.receive(&hb(&format!("flood{i}@h")), A, t, 0, &stats);
        }
        // 4 at once, then 1 a second for 10 s
        assert!(stats.get("accepted") <= 4 + 11, "{:?}", stats.snapshot());
        let t = t0 + Duration::from_millis(10_000);
        // the newcomer's name goes first; A's bucket has refilled too, so one of its waiting names
        // may follow
        let newcomer = r.receive(&hb("newcomer@h"), B, t, 0, &stats);
        assert_eq!(newcomer[0], ("newcomer@h".to_string(), false));
    }

    #[test]
    fn the_total_bucket_bounds_many_senders() {
        let mut cfg = config("me@h", 1);
        cfg.new_names_total_burst = 10;
        cfg.new_names_total_per_minute = 0;
        let t0 = Instant::now();
        let mut r = Receiver::new(&cfg, t0);
        let stats = Stats::default();
        let reported = (0..5_000u32)
            .filter(|i| {
                let from = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
                r.receive(&hb(&format!("n{i}@h")), from, t0, 0, &stats)
                    .len()
                    == 1
            })
            .count();
        assert_eq!(reported, 10);
        // the sender table stays bounded
        assert!(r.senders() <= sighting::MAX_SOURCES, "{}", r.senders());
    }

    #[test]
    fn known_names_are_re_reported_with_backoff_and_at_once_after_node_down() {
        let cfg = config("me@h", 1);
        let t0 = Instant::now();
        let mut r = Receiver::new(&cfg, t0);
        let stats = Stats::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // heard every 100 ms for 40 s: reported at 0, 1, 3, 7, 15, 25, 35 s
        let reports: Vec<u64> = (0..400)
            .map(|i| i * 100)
            .filter(|&ms| r.receive(&hb("peer@h"), A, at(ms), 0, &stats).len() == 1)
            .collect();
        assert_eq!(
            reports,
            vec![0, 1_000, 3_000, 7_000, 15_000, 25_000, 35_000]
        );
        // the owner says the node went down: its next heartbeat is reported at once
        r.control(Control::NodeDown("peer@h".into()));
        assert!(r.receive(&hb("peer@h"), A, at(40_000), 0, &stats).len() == 1);
        assert!(r
            .receive(&hb("peer@h"), A, at(40_100), 0, &stats)
            .is_empty());
        assert!(r.receive(&hb("peer@h"), A, at(41_000), 0, &stats).len() == 1);
    }

    #[test]
    fn without_a_node_name_nothing_is_reported_until_one_is_set() {
        let mut cfg = config("me@h", 1);
        cfg.node = None;
        let t0 = Instant::now();
        let mut r = Receiver::new(&cfg, t0);
        let stats = Stats::default();
        assert!(r.receive(&hb("peer@h"), A, t0, 0, &stats).is_empty());
        assert_eq!(stats.get("ignored_not_distributed"), 1);
        r.control(Control::SetNode(Some("me@h".into())));
        assert!(r.receive(&hb("peer@h"), A, t0, 0, &stats).len() == 1);
        assert!(r.receive(&hb("me@h"), A, t0, 0, &stats).is_empty());
        // the dry run (listen only) reports without a name
        cfg.schedule = Schedule::Silent;
        let mut listener = Receiver::new(&cfg, t0);
        assert!(listener.receive(&hb("peer@h"), A, t0, 0, &stats).len() == 1);
    }

    #[test]
    fn verify_sender_checks_ip_hosts_of_v1_heartbeats_only() {
        let mut cfg = config("me@h", 1);
        cfg.verify_sender = true;
        let t0 = Instant::now();
        let mut r = Receiver::new(&cfg, t0);
        let stats = Stats::default();
        assert!(r.receive(&hb("a@198.18.0.2"), A, t0, 0, &stats).is_empty());
        assert_eq!(stats.get("rejected_sender_mismatch"), 1);
        assert!(r.receive(&hb("a@198.18.0.1"), A, t0, 0, &stats).len() == 1);
        // an IPv4-mapped sender counts as its IPv4 address
        let mapped: IpAddr = "::ffff:198.18.0.2".parse().unwrap();
        assert!(r.receive(&hb("b@198.18.0.2"), mapped, t0, 0, &stats).len() == 1);
        // hostnames cannot be checked and pass
        assert!(r.receive(&hb("c@app.example"), A, t0, 0, &stats).len() == 1);
        // off by default
        let mut plain = Receiver::new(&config("me@h", 1), t0);
        assert!(plain.receive(&hb("d@198.18.0.2"), A, t0, 0, &stats).len() == 1);
    }

    #[test]
    fn authenticated_names_are_not_rate_limited_and_are_trusted() {
        let mut cfg = config("me@h", 1);
        cfg.mode = Mode::Authenticated;
        cfg.secret = Some(b"pw".to_vec());
        cfg.verify_sender = true;
        let keys = Keys::new(Some(b"pw"));
        let t0 = Instant::now();
        let mut r = Receiver::new(&cfg, t0);
        let stats = Stats::default();
        let n = (0..50)
            .filter(|i| {
                let d = wire::encode_authenticated(
                    &format!("n{i}@10.9.9.9"),
                    keys.aead.as_ref().unwrap(),
                    1_000,
                    crypto::random_array(),
                );
                r.receive(&d, A, t0, 1_000, &stats) == vec![(format!("n{i}@10.9.9.9"), true)]
            })
            .count();
        assert_eq!(n, 50);
    }

    fn spawn(
        cfg: GossipConfig,
    ) -> (
        mpsc::UnboundedReceiver<Event>,
        mpsc::Sender<Control>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
        let sink: Arc<dyn Sink> = Arc::new(tx);
        let task = tokio::spawn(run(cfg, Arc::new(Stats::default()), sink, ctl_rx));
        (rx, ctl_tx, task)
    }

    async fn heard(
        rx: &mut mpsc::UnboundedReceiver<Event>,
        want: usize,
        within: Duration,
    ) -> std::collections::BTreeSet<String> {
        let mut heard = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + within;
        while heard.len() < want {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Heartbeat { name, .. })) => {
                    heard.insert(name);
                }
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                _ => break,
            }
        }
        heard
    }

    #[tokio::test]
    async fn nodes_on_loopback_share_the_port_and_hear_each_other() {
        let port = 46_000 + (std::process::id() % 1000) as u16;
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(spawn(config(&format!("n{i}@127.0.0.1"), port)));
        }
        for (i, (rx, _, _)) in nodes.iter_mut().enumerate() {
            let heard = heard(rx, 2, Duration::from_secs(5)).await;
            assert_eq!(heard.len(), 2, "node {i} heard only {heard:?}");
            assert!(!heard.contains(&format!("n{i}@127.0.0.1")));
        }
        for (_, _, t) in nodes {
            t.abort();
        }
    }

    #[tokio::test]
    async fn a_waiting_name_is_admitted_by_the_tick_while_only_known_names_are_heard() {
        let port = 44_000 + (std::process::id() % 1000) as u16;
        let mut cfg = config("me@127.0.0.1", port);
        cfg.schedule = Schedule::Silent;
        cfg.new_names_total_burst = 1;
        cfg.new_names_total_per_minute = 600;
        let (mut rx, _ctl, task) = spawn(cfg);
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        sock.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
        sock.set_multicast_ttl_v4(0).unwrap();
        sock.bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        let sock = std::net::UdpSocket::from(sock);
        let group = std::net::SocketAddr::from((Ipv4Addr::new(233, 252, 1, 32), port));
        // the task's socket opens asynchronously: repeat "a" until it is heard
        let mut got = std::collections::BTreeSet::new();
        for _ in 0..100 {
            sock.send_to(&hb("a@h"), group).unwrap();
            got = heard(&mut rx, 1, Duration::from_millis(20)).await;
            if !got.is_empty() {
                break;
            }
        }
        assert!(got.contains("a@h"), "{got:?}");
        // "b" finds no token (burst 1) and waits; only the known "a" is heard from then on, every
        // 5 ms, more often than the tick: the tick still admits "b" when a token comes (100 ms)
        sock.send_to(&hb("b@h"), group).unwrap();
        let mut admitted = false;
        for _ in 0..200 {
            sock.send_to(&hb("a@h"), group).unwrap();
            if heard(&mut rx, 1, Duration::from_millis(5))
                .await
                .contains("b@h")
            {
                admitted = true;
                break;
            }
        }
        assert!(admitted, "b was never admitted");
        task.abort();
    }

    #[tokio::test]
    async fn a_nameless_node_starts_heartbeating_when_it_gets_a_name() {
        let port = 45_000 + (std::process::id() % 1000) as u16;
        let (mut rx1, _c1, t1) = spawn(config("one@127.0.0.1", port));
        let mut late = config("x@h", port);
        late.node = None;
        let (mut rx2, c2, t2) = spawn(late);
        // nameless: it neither sends (one hears nothing) nor reports (it heard one)
        let none = heard(&mut rx1, 1, Duration::from_millis(500)).await;
        assert!(none.is_empty(), "{none:?}");
        assert!(heard(&mut rx2, 1, Duration::from_millis(200))
            .await
            .is_empty());
        c2.send(Control::SetNode(Some("two@127.0.0.1".into())))
            .await
            .unwrap();
        let got = heard(&mut rx1, 1, Duration::from_secs(2)).await;
        assert!(got.contains("two@127.0.0.1"), "{got:?}");
        let got = heard(&mut rx2, 1, Duration::from_secs(2)).await;
        assert!(got.contains("one@127.0.0.1"), "{got:?}");
        t1.abort();
        t2.abort();
    }

    #[tokio::test]
    async fn a_missing_interface_is_reported_once_and_retried() {
        let mut cfg = config("me@h", 46_999);
        cfg.socket.multicast_if = Some(socket::Interface::Name("nosuchif0".into()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_ctl, ctl_rx) = mpsc::channel(1);
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(run(cfg, stats.clone(), Arc::new(tx), ctl_rx));
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
