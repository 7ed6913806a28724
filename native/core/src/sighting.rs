//! Untrusted sightings: node names heard from anyone who can reach a listener (gossip v1
//! datagrams, Postgres NOTIFY payloads), on their way to a dial. Both listeners use this module,
//! which owns:
//! - the known-names table: a name already reported is reported again only with backoff (1 s
//!   doubling to 10 s), or at once after a node-down notice. When the table is full, the least
//!   recently reported half is forgotten (the one eviction rule; a forgotten live node is a new
//!   name again at its next heartbeat, so forgetting everything at once would send every live
//!   node back through the allowance);
//! - the allowance for new names: a token bucket per source (gossip: the sender address;
//!   Postgres has one source) and one for all sources together;
//! - fair admission: a new name that finds no token waits (a few names per source, for
//!   [`WAIT_TTL`] after it was last heard) and each token goes to the waiting source that was
//!   admitted least recently (never before first), then to a name heard repeatedly over names
//!   heard once, then to the source that has waited longest. A flood of fresh names from many
//!   addresses therefore no longer starves a newcomer: every address already served stands
//!   behind one that never was. The limit: an attacker with more addresses than the source table
//!   holds ([`MAX_SOURCES`]) can still slow or block admission; only the authenticated gossip
//!   format, whose names are not rate-limited, stops it;
//! - the counters ([`Stats`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A known name is reported again after this gap at first; the gap doubles per report...
pub const REPORT_GAP_MIN: Duration = Duration::from_millis(1_000);
/// ... up to this. A node-down notice for the name resets it (the next heartbeat is reported).
pub const REPORT_GAP_MAX: Duration = Duration::from_millis(10_000);
/// At most this many names are remembered; the least recently reported half is forgotten when full.
pub const MAX_KNOWN_NAMES: usize = 4_096;
/// At most this many sources have a bucket. When full, the least recently heard half of the
/// sources with nothing waiting is forgotten (a forgotten source starts again with a full bucket,
/// which the total bucket bounds); when every source has names waiting, a new source's name is
/// dropped.
pub const MAX_SOURCES: usize = 1_024;
/// Names waiting for a token, per source. When full, the least promising one (heard once, heard
/// longest ago) makes room.
pub const WAITING_PER_SOURCE: usize = 4;
/// A waiting name not heard again within this is dropped (a live node heartbeats more often).
pub const WAIT_TTL: Duration = Duration::from_millis(10_000);
/// How often a listener with waiting names should call [`Sightings::admit`] when nothing is heard.
pub const ADMIT_TICK: Duration = Duration::from_millis(50);

/// Counters by name, shared between a listener task and whoever asks for them.
#[derive(Debug, Default)]
pub struct Stats {
    counters: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    pub fn incr(&self, name: &'static str) {
        self.add(name, 1);
    }

    pub fn add(&self, name: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry(name).or_insert(0) += n;
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

/// A token bucket for names never heard before.
#[derive(Debug, Clone)]
struct NameLimiter {
    burst: f64,
    per_ms: f64,
    tokens: f64,
    last: Instant,
}

impl NameLimiter {
    fn new(burst: u32, per_minute: u32, now: Instant) -> NameLimiter {
        NameLimiter {
            burst: burst as f64,
            per_ms: per_minute as f64 / 60_000.0,
            tokens: burst as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64() * 1000.0;
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.burst);
    }

    /// Whether a token is there (after refilling), without taking it.
    fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes a token if there is one.
    fn allow(&mut self, now: Instant) -> bool {
        if self.ready(now) {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub burst: u32,
    pub per_minute: u32,
}

/// The allowance for new names: per source (none: one bucket for everything) and in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_source: Option<Bucket>,
    pub total: Bucket,
}

/// What [`Sightings::sight`] decided for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Report it now (known and due again, trusted, or new and admitted at once).
    Report,
    /// Known and reported recently: nothing to do.
    Quiet,
    /// New and no token for it now: it waits; [`Sightings::admit`] may report it later.
    Waiting,
    /// New, and the source table is full of sources with names waiting: dropped.
    Dropped,
}

struct Known {
    last_report: Instant,
    gap: Duration,
}

struct Candidate {
    name: String,
    heard: u32,
    last_heard: Instant,
}

impl Candidate {
    /// Higher is more promising: heard repeatedly beats heard once, then heard last.
    fn promise(&self) -> (bool, Instant) {
        (self.heard > 1, self.last_heard)
    }
}

/// A waiting source's place in line: lower is served first.
type Turn = (Option<Instant>, bool, Instant);

struct Source {
    bucket: Option<NameLimiter>,
    last_seen: Instant,
    last_admitted: Option<Instant>,
    waiting_since: Instant,
    waiting: Vec<Candidate>,
}

impl Source {
    fn drop_expired(&mut self, now: Instant) {
        self.waiting
            .retain(|c| now.saturating_duration_since(c.last_heard) < WAIT_TTL);
    }

    fn ready(&mut self, now: Instant) -> bool {
        self.bucket.as_mut().is_none_or(|b| b.ready(now))
    }

    /// Lower is served first: never admitted, then admitted longest ago; then a name heard
    /// repeatedly; then waiting longest.
    fn turn(&self) -> Turn {
        let repeated = self.waiting.iter().any(|c| c.heard > 1);
        (self.last_admitted, !repeated, self.waiting_since)
    }
}

/// The known names, the per-source and total allowance, and the names waiting for it. `K` names a
/// source (an IP address for gossip, `()` for Postgres).
pub struct Sightings<K> {
    limits: Limits,
    known: HashMap<String, Known>,
    sources: HashMap<K, Source>,
    total: NameLimiter,
}

impl<K: Eq + Hash + Copy> Sightings<K> {
    pub fn new(limits: Limits, now: Instant) -> Sightings<K> {
        Sightings {
            limits,
            known: HashMap::new(),
            sources: HashMap::new(),
            total: NameLimiter::new(limits.total.burst, limits.total.per_minute, now),
        }
    }

    /// One sighting of `name` from `from`, judged and counted in `stats` (`reported`,
    /// `rejected_rate_limited`: not admitted on arrival, `admitted_after_waiting`,
    /// `dropped_source_table_full`). A `trusted` name (authenticated) skips the allowance.
    /// Returns the verdict on `name` and the names to report now: `name` first when it is
    /// reported, then waiting names that got a token (tokens go in turn, not to the last heard).
    /// While [`waiting`](Self::waiting), call [`admit`](Self::admit) every [`ADMIT_TICK`].
    pub fn sight(
        &mut self,
        name: &str,
        from: K,
        trusted: bool,
        now: Instant,
        stats: &Stats,
    ) -> (Verdict, Vec<String>) {
        let mut verdict = self.hear(name, from, trusted, now);
        let mut report = Vec::new();
        if verdict == Verdict::Report {
            report.push(name.to_string());
        }
        if verdict == Verdict::Waiting {
            let admitted = self.grant(now);
            if let Some(i) = admitted.iter().position(|n| n == name) {
                verdict = Verdict::Report;
                report.push(admitted[i].clone());
            }
            let others: Vec<String> = admitted.into_iter().filter(|n| n != name).collect();
            stats.add("admitted_after_waiting", others.len() as u64);
            stats.add("reported", others.len() as u64);
            report.extend(others);
        }
        match verdict {
            Verdict::Report => stats.incr("reported"),
            Verdict::Quiet => {}
            Verdict::Waiting => stats.incr("rejected_rate_limited"),
            Verdict::Dropped => {
                stats.incr("rejected_rate_limited");
                stats.incr("dropped_source_table_full");
            }
        }
        (verdict, report)
    }

    /// The waiting names that get a token now, counted in `stats`: each is known from now on and
    /// is to be reported.
    pub fn admit(&mut self, now: Instant, stats: &Stats) -> Vec<String> {
        let admitted = self.grant(now);
        stats.add("admitted_after_waiting", admitted.len() as u64);
        stats.add("reported", admitted.len() as u64);
        admitted
    }

    fn hear(&mut self, name: &str, from: K, trusted: bool, now: Instant) -> Verdict {
        if let Some(k) = self.known.get_mut(name) {
            if now.saturating_duration_since(k.last_report) < k.gap {
                return Verdict::Quiet;
            }
            k.last_report = now;
            k.gap = (k.gap * 2).clamp(REPORT_GAP_MIN, REPORT_GAP_MAX);
            return Verdict::Report;
        }
        if trusted {
            self.remember(name, now);
            return Verdict::Report;
        }
        let Some(source) = self.source(from, now) else {
            return Verdict::Dropped;
        };
        source.last_seen = now;
        if let Some(c) = source.waiting.iter_mut().find(|c| c.name == name) {
            c.heard = c.heard.saturating_add(1);
            c.last_heard = now;
            return Verdict::Waiting;
        }
        if source.waiting.is_empty() {
            source.waiting_since = now;
        }
        if source.waiting.len() >= WAITING_PER_SOURCE {
            let worst = (0..source.waiting.len())
                .min_by_key(|&i| source.waiting[i].promise())
                .expect("full");
            source.waiting.swap_remove(worst);
        }
        source.waiting.push(Candidate {
            name: name.to_string(),
            heard: 1,
            last_heard: now,
        });
        Verdict::Waiting
    }

    /// Hands out the tokens there are now, in turn (see the module doc), and returns the names
    /// admitted.
    fn grant(&mut self, now: Instant) -> Vec<String> {
        let mut admitted = Vec::new();
        while self.total.ready(now) {
            let mut best: Option<(K, Turn)> = None;
            for (k, s) in self.sources.iter_mut() {
                if s.waiting.is_empty() {
                    continue;
                }
                s.drop_expired(now);
                if s.waiting.is_empty() || !s.ready(now) {
                    continue;
                }
                let turn = s.turn();
                if best.as_ref().is_none_or(|(_, t)| turn < *t) {
                    best = Some((*k, turn));
                }
            }
            let Some((k, _)) = best else { break };
            let s = self.sources.get_mut(&k).expect("found above");
            let pick = (0..s.waiting.len())
                .max_by_key(|&i| s.waiting[i].promise())
                .expect("not empty");
            let c = s.waiting.swap_remove(pick);
            if let Some(b) = s.bucket.as_mut() {
                b.allow(now);
            }
            s.last_admitted = Some(now);
            self.total.allow(now);
            self.remember(&c.name, now);
            admitted.push(c.name);
        }
        admitted
    }

    /// Whether names wait for a token.
    pub fn waiting(&self) -> bool {
        self.sources.values().any(|s| !s.waiting.is_empty())
    }

    /// The node went down: its next sighting is reported at once.
    pub fn node_down(&mut self, name: &str) {
        if let Some(k) = self.known.get_mut(name) {
            k.gap = Duration::ZERO;
        }
    }

    /// Forgets every known name (this node changed its name: report everything afresh).
    pub fn forget_known(&mut self) {
        self.known.clear();
    }

    /// Sources that currently have a bucket.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    fn remember(&mut self, name: &str, now: Instant) {
        if self.known.len() >= MAX_KNOWN_NAMES {
            forget_oldest_half(&mut self.known, |k| Some(k.last_report));
        }
        self.known.insert(
            name.to_string(),
            Known {
                last_report: now,
                gap: REPORT_GAP_MIN,
            },
        );
    }

    fn source(&mut self, from: K, now: Instant) -> Option<&mut Source> {
        if !self.sources.contains_key(&from) && self.sources.len() >= MAX_SOURCES {
            // Half at once, so a flood of addresses costs O(log n) per new one, not a scan each.
            forget_oldest_half(&mut self.sources, |s| {
                s.waiting.is_empty().then_some(s.last_seen)
            });
            if self.sources.len() >= MAX_SOURCES {
                return None;
            }
        }
        let per_source = self.limits.per_source;
        Some(self.sources.entry(from).or_insert_with(|| Source {
            bucket: per_source.map(|b| NameLimiter::new(b.burst, b.per_minute, now)),
            last_seen: now,
            last_admitted: None,
            waiting_since: now,
            waiting: Vec::new(),
        }))
    }
}

/// Removes the entries of `map` whose age is in the older half of those that have one (`None`:
/// keep).
fn forget_oldest_half<K: Eq + Hash, V>(
    map: &mut HashMap<K, V>,
    age: impl Fn(&V) -> Option<Instant>,
) {
    let mut times: Vec<Instant> = map.values().filter_map(&age).collect();
    if times.is_empty() {
        return;
    }
    let mid = times.len() / 2;
    let (_, cut, _) = times.select_nth_unstable(mid);
    let cut = *cut;
    map.retain(|_, v| age(v).is_none_or(|t| t > cut));
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOSSIP: Limits = Limits {
        per_source: Some(Bucket {
            burst: 64,
            per_minute: 60,
        }),
        total: Bucket {
            burst: 256,
            per_minute: 600,
        },
    };

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// Sights `name` from `from`: the names reported now.
    fn offer(s: &mut Sightings<u32>, name: &str, from: u32, now: Instant) -> Vec<String> {
        s.sight(name, from, false, now, &Stats::default()).1
    }

    /// A flood of `rate` fresh names a second, round robin over `addresses` sources (numbered
    /// from 1000), for `from_ms..to_ms`, in 1 ms steps; `newcomer` (source 1, heartbeating every
    /// `beat_ms` from `joins_at`) is the legitimate node. Returns when the newcomer was admitted.
    fn flood(addresses: u32, rate: u32, joins_at: u64, beat_ms: u64, to_ms: u64) -> Option<u64> {
        let t0 = Instant::now();
        let mut s: Sightings<u32> = Sightings::new(GOSSIP, t0);
        let mut admitted_fresh = 0u64;
        let mut n = 0u32;
        for t in 0..to_ms {
            let now = ms(t0, t);
            let mut reported = Vec::new();
            // `rate` a second, spread over the milliseconds
            let due = (t + 1) * rate as u64 / 1000 - t * rate as u64 / 1000;
            for _ in 0..due {
                n += 1;
                let name = format!("f{n}@evil");
                reported.extend(offer(&mut s, &name, 1000 + n % addresses, now));
            }
            if t >= joins_at && (t - joins_at).is_multiple_of(beat_ms) {
                reported.extend(offer(&mut s, "newcomer@h", 1, now));
            }
            // the listener's tick
            if t.is_multiple_of(ADMIT_TICK.as_millis() as u64) {
                reported.extend(s.grant(now));
            }
            if reported.iter().any(|n| n == "newcomer@h") {
                return Some(t - joins_at);
            }
            admitted_fresh += reported.len() as u64;
            // the total allowance bounds what the flood gets: the burst, then the rate
            assert!(
                admitted_fresh <= 256 + t * 600 / 60_000 + 1,
                "{admitted_fresh} at {t}"
            );
        }
        None
    }

    #[test]
    fn a_newcomer_gets_in_during_a_flood_from_one_16_or_64_addresses() {
        for addresses in [1, 16, 64] {
            for joins_at in [100, 2_000, 7_500, 20_000] {
                // heard once only: its first heartbeat must be enough
                let waited = flood(addresses, 4_000, joins_at, 1_000_000, joins_at + 2_000);
                assert!(
                    waited.is_some_and(|w| w < 2_000),
                    "{addresses} addresses, joining at {joins_at} ms: {waited:?}"
                );
            }
        }
    }

    #[test]
    fn a_newcomer_waits_behind_addresses_that_were_never_served_but_not_behind_the_rest() {
        // 300 sources send one fresh name each at once: the total burst admits 256, 44 wait.
        let t0 = Instant::now();
        let mut s: Sightings<u32> = Sightings::new(GOSSIP, t0);
        for i in 0..300u32 {
            offer(&mut s, &format!("w{i}@evil"), 1000 + i, t0);
        }
        // 256 admitted at once; 44 wait, never served
        assert_eq!(s.known.len(), 256);
        // the newcomer arrives later: behind the 44 never-served sources (FIFO among them)
        assert!(offer(&mut s, "newcomer@h", 1, ms(t0, 10)).is_empty());
        let mut order = Vec::new();
        let mut t = 10;
        while !order.iter().any(|n| n == "newcomer@h") && t < 6_000 {
            t += 100;
            order.extend(s.grant(ms(t0, t)));
        }
        let pos = order
            .iter()
            .position(|n| n == "newcomer@h")
            .expect("admitted");
        assert_eq!(pos, 44, "{order:?}");
        // the newcomer took the last token. A source already served (w0's) and one never served
        // both offer a name now: the never-served one goes first.
        assert_eq!(
            s.hear("again@evil", 1000, false, ms(t0, t)),
            Verdict::Waiting
        );
        assert_eq!(s.hear("late@h", 2, false, ms(t0, t)), Verdict::Waiting);
        assert_eq!(s.grant(ms(t0, t + 110)), vec!["late@h".to_string()]);
        assert_eq!(s.grant(ms(t0, t + 220)), vec!["again@evil".to_string()]);
    }

    #[test]
    fn a_name_heard_repeatedly_goes_before_names_heard_once() {
        let limits = Limits {
            per_source: None,
            total: Bucket {
                burst: 1,
                per_minute: 60,
            },
        };
        let t0 = Instant::now();
        let mut s: Sightings<()> = Sightings::new(limits, t0);
        assert_eq!(s.hear("first@h", (), false, t0), Verdict::Waiting);
        assert_eq!(s.grant(t0), vec!["first@h".to_string()]);
        // no token: a real node repeats its heartbeat, fresh names do not
        for (i, name) in ["real@h", "f1@h", "f2@h", "real@h", "f3@h", "f4@h", "f5@h"]
            .iter()
            .enumerate()
        {
            assert_eq!(
                s.hear(name, (), false, ms(t0, 10 + i as u64)),
                Verdict::Waiting
            );
        }
        assert!(s.grant(ms(t0, 500)).is_empty());
        // four wait at most; the repeated one was kept, the oldest heard-once ones made room
        assert_eq!(s.grant(ms(t0, 1_100)), vec!["real@h".to_string()]);
        // then the most recently heard
        assert_eq!(s.grant(ms(t0, 2_200)), vec!["f5@h".to_string()]);
        // a waiting name not heard again within WAIT_TTL is dropped
        assert!(s.grant(ms(t0, 20_000)).is_empty());
        assert!(!s.waiting());
    }

    #[test]
    fn known_names_are_re_reported_with_backoff_and_at_once_after_node_down() {
        let t0 = Instant::now();
        let mut s: Sightings<u32> = Sightings::new(GOSSIP, t0);
        // heard every 100 ms for 40 s: reported at 0, 1, 3, 7, 15, 25, 35 s
        let reports: Vec<u64> = (0..400)
            .map(|i| i * 100)
            .filter(|&t| !offer(&mut s, "peer@h", 1, ms(t0, t)).is_empty())
            .collect();
        assert_eq!(
            reports,
            vec![0, 1_000, 3_000, 7_000, 15_000, 25_000, 35_000]
        );
        s.node_down("peer@h");
        assert_eq!(s.hear("peer@h", 1, false, ms(t0, 40_000)), Verdict::Report);
        assert_eq!(s.hear("peer@h", 1, false, ms(t0, 40_100)), Verdict::Quiet);
        assert_eq!(s.hear("peer@h", 1, false, ms(t0, 41_000)), Verdict::Report);
        // trusted names skip the allowance
        let mut strict: Sightings<u32> = Sightings::new(
            Limits {
                per_source: None,
                total: Bucket {
                    burst: 1,
                    per_minute: 0,
                },
            },
            t0,
        );
        for i in 0..10 {
            assert_eq!(
                strict.hear(&format!("t{i}@h"), 1, true, t0),
                Verdict::Report
            );
        }
    }

    #[test]
    fn a_full_known_table_forgets_the_least_recently_reported_half() {
        let limits = Limits {
            per_source: None,
            total: Bucket {
                burst: u32::MAX,
                per_minute: 0,
            },
        };
        let t0 = Instant::now();
        let mut s: Sightings<()> = Sightings::new(limits, t0);
        for i in 0..MAX_KNOWN_NAMES as u64 {
            assert_eq!(
                s.hear(&format!("n{i}@h"), (), true, ms(t0, i)),
                Verdict::Report
            );
        }
        // n0 is reported again (at 1 s): among the most recent now
        let late = ms(t0, MAX_KNOWN_NAMES as u64 + 1_000);
        assert_eq!(s.hear("n0@h", (), true, late), Verdict::Report);
        assert_eq!(s.hear("one_more@h", (), true, late), Verdict::Report);
        assert!(
            s.known.len() <= MAX_KNOWN_NAMES / 2 + 2,
            "{}",
            s.known.len()
        );
        // the newest half stayed known (quiet), n0 too; the oldest are new again
        assert_eq!(s.hear("n0@h", (), true, late), Verdict::Quiet);
        let newest = format!("n{}@h", MAX_KNOWN_NAMES - 1);
        // (1 ms after it was reported: quiet if known, reported if forgotten)
        let soon = ms(t0, MAX_KNOWN_NAMES as u64);
        assert_eq!(s.hear(&newest, (), true, soon), Verdict::Quiet);
        assert_eq!(s.hear("n1@h", (), true, ms(t0, 2)), Verdict::Report);
    }

    #[test]
    fn the_source_table_stays_bounded_and_keeps_sources_with_names_waiting() {
        let limits = Limits {
            per_source: Some(Bucket {
                burst: 1,
                per_minute: 0,
            }),
            total: Bucket {
                burst: 10,
                per_minute: 0,
            },
        };
        let t0 = Instant::now();
        let mut s: Sightings<u32> = Sightings::new(limits, t0);
        // 10 admitted; every later source waits until the table is full of waiting sources
        let mut dropped = 0;
        for i in 0..5_000u32 {
            match s.hear(&format!("n{i}@h"), i, false, ms(t0, i as u64)) {
                Verdict::Dropped => dropped += 1,
                Verdict::Waiting => {}
                other => panic!("{other:?}"),
            }
            s.grant(ms(t0, i as u64));
        }
        assert!(s.sources() <= MAX_SOURCES, "{}", s.sources());
        assert_eq!(s.known.len(), 10);
        // the 10 served sources (nothing waiting) were forgotten to make room, then new ones dropped
        assert_eq!(dropped, 5_000 - MAX_SOURCES as u32 - 10);
    }
}
