//! The blocking-query watch. [`Schedule`] decides, as a plain function of what it was told, the
//! clock and a jitter source: which requests start, when the loop wakes next, how an answer moves
//! a slot (index, backoff, next start) and what is reported. [`watch`] only runs the requests it
//! starts and sends what it reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::api::{self, next_index, Answer};
use super::error::{about, Failure};
use super::{combine, needs_datacenters, slots, Config, Endpoint, SlotKey};
use crate::backoff::Backoff;
use crate::event::{Error, Event, Sink};

/// The state of one (query, datacenter) while watching.
struct Slot {
    index: u64,
    result: Option<Result<Vec<String>, Error>>,
    backoff: Backoff,
    /// When its next request may start; `None`: never (an Agent query without a poll interval).
    next_at: Option<Instant>,
    in_flight: bool,
}

impl Slot {
    fn new(cfg: &Config, now: Instant) -> Slot {
        Slot {
            index: 0,
            result: None,
            backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max),
            next_at: Some(now),
            in_flight: false,
        }
    }
}

/// The datacenter list (`datacenters: :all`), re-read every poll interval.
struct Datacenters {
    wanted: bool,
    /// The last list read; without `:all`, empty from the start.
    list: Option<Vec<String>>,
    next_at: Option<Instant>,
    in_flight: bool,
    backoff: Backoff,
    /// The last read failed: the list is stale (or unknown).
    error: Option<Error>,
}

/// A request to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Start {
    /// The datacenter list.
    Datacenters,
    /// A query in a datacenter, blocking on `index` when it is not 0.
    Query { key: SlotKey, index: u64 },
}

/// A request that finished.
pub(super) enum Done {
    Datacenters(Result<Vec<String>, Failure>),
    /// `asked`: the index it blocked on; `started`: when it started.
    Query {
        key: SlotKey,
        asked: u64,
        started: Instant,
        result: Result<Answer, Failure>,
    },
}

/// What the watch decides, without I/O.
pub(super) struct Schedule {
    cfg: Arc<Config>,
    slots: BTreeMap<SlotKey, Slot>,
    dcs: Datacenters,
    last_sent: Option<Event>,
}

impl Schedule {
    pub(super) fn new(cfg: Arc<Config>, now: Instant) -> Schedule {
        let wanted = needs_datacenters(&cfg);
        let mut schedule = Schedule {
            dcs: Datacenters {
                wanted,
                list: (!wanted).then(Vec::new),
                next_at: Some(now),
                in_flight: false,
                backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max),
                error: None,
            },
            cfg,
            slots: BTreeMap::new(),
            last_sent: None,
        };
        schedule.follow_datacenters(now);
        schedule
    }

    /// The slot set follows the datacenter list: a new slot starts at once, a slot of a
    /// datacenter that went away is dropped (with its result).
    fn follow_datacenters(&mut self, now: Instant) {
        let Some(list) = &self.dcs.list else {
            return;
        };
        let wanted = slots(&self.cfg, list);
        self.slots.retain(|k, _| wanted.contains(k));
        for k in wanted {
            self.slots
                .entry(k)
                .or_insert_with(|| Slot::new(&self.cfg, now));
        }
    }

    /// The requests due at `now`, marked in flight.
    pub(super) fn start_due(&mut self, now: Instant) -> Vec<Start> {
        let due = |next_at: Option<Instant>| next_at.is_some_and(|t| t <= now);
        let mut starts = Vec::new();
        if self.dcs.wanted && !self.dcs.in_flight && due(self.dcs.next_at) {
            self.dcs.in_flight = true;
            starts.push(Start::Datacenters);
        }
        for (key, slot) in self.slots.iter_mut() {
            if !slot.in_flight && due(slot.next_at) {
                slot.in_flight = true;
                starts.push(Start::Query {
                    key: key.clone(),
                    index: slot.index,
                });
            }
        }
        starts
    }

    /// When the next request that is not in flight is due; `None`: none will be until an answer
    /// arrives.
    pub(super) fn next_due(&self) -> Option<Instant> {
        let dcs = (self.dcs.wanted && !self.dcs.in_flight)
            .then_some(self.dcs.next_at)
            .flatten();
        self.slots
            .values()
            .filter(|s| !s.in_flight)
            .filter_map(|s| s.next_at)
            .chain(dcs)
            .min()
    }

    /// Apply a finished request at `now` (`unit`, in `[0, 1)`, jitters a backoff delay), and say
    /// what to report, if anything.
    pub(super) fn done(&mut self, done: Done, now: Instant, unit: f64) -> Option<Event> {
        let cfg = self.cfg.clone();
        match done {
            Done::Datacenters(result) => {
                self.dcs.in_flight = false;
                match result {
                    Ok(list) => {
                        self.dcs.backoff.reset();
                        self.dcs.error = None;
                        self.dcs.list = Some(list);
                        self.dcs.next_at = cfg.poll_interval.map(|p| now + p);
                        self.follow_datacenters(now);
                    }
                    Err(f) => {
                        let delay = f
                            .retry_after
                            .unwrap_or_else(|| self.dcs.backoff.next_with(unit));
                        self.dcs.next_at = Some(now + delay);
                        self.dcs.error = Some(f.error);
                    }
                }
            }
            Done::Query {
                key,
                asked,
                started,
                result,
            } => {
                let Some(slot) = self.slots.get_mut(&key) else {
                    return None; // its datacenter went away meanwhile
                };
                slot.in_flight = false;
                let q = &cfg.queries[key.query];
                match result {
                    Ok(answer) => {
                        slot.backoff.reset();
                        let blocks = answer.index.is_some() && q.endpoint != Endpoint::Agent;
                        slot.index = if blocks {
                            next_index(asked, answer.index)
                        } else {
                            0
                        };
                        slot.next_at =
                            next_start(started, now, blocks, cfg.min_interval, cfg.poll_interval);
                        slot.result = Some(Ok(answer.names));
                    }
                    Err(f) => {
                        let delay = f
                            .retry_after
                            .unwrap_or_else(|| slot.backoff.next_with(unit));
                        slot.next_at = Some(now + delay.max(cfg.min_interval));
                        // A fresh read after an error: the index may be stale.
                        slot.index = 0;
                        slot.result = Some(Err(about(q, key.dc.as_deref(), f.error)));
                    }
                }
            }
        }
        self.report()
    }

    /// What the slots amount to once every slot has an answer (or something failed). Errors are
    /// always reported (the owner counts the streak); the same node set is not reported twice in
    /// a row.
    fn report(&mut self) -> Option<Event> {
        let results = || self.slots.values().filter_map(|s| s.result.as_ref());
        let event = if let Some(e) = &self.dcs.error {
            if self.slots.is_empty() {
                Some(Event::Error(e.clone()))
            } else {
                // The known datacenters keep being watched; the list itself is stale.
                combine(results().chain(std::iter::once(&Err(e.clone()))))
            }
        } else if self.dcs.list.is_none() {
            None
        } else if self.slots.values().all(|s| s.result.is_some())
            || self
                .slots
                .values()
                .any(|s| matches!(s.result, Some(Err(_))))
        {
            combine(results())
        } else {
            None
        }?;
        let repeat = matches!(event, Event::Nodes(_)) && self.last_sent.as_ref() == Some(&event);
        if repeat {
            return None;
        }
        self.last_sent = Some(event.clone());
        Some(event)
    }
}

/// When the next request of a slot starts after an answer: at once for a blocking query (but not
/// sooner than `min_interval` after the last start), after `poll_interval` for one Consul cannot
/// block on (`None`: never).
fn next_start(
    started: Instant,
    now: Instant,
    blocking: bool,
    min_interval: Duration,
    poll_interval: Option<Duration>,
) -> Option<Instant> {
    if blocking {
        Some((started + min_interval).max(now))
    } else {
        poll_interval.map(|p| (started + p.max(min_interval)).max(now))
    }
}

/// Blocking queries until the sink is gone (the handle is stopped).
pub async fn watch(cfg: Arc<Config>, sink: Arc<dyn Sink>) {
    let client = match api::client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            // The owner restarts an ended stream after its backoff.
            if sink.send(Event::Error(e)) {
                sink.send(Event::Done);
            }
            return;
        }
    };
    let mut schedule = Schedule::new(cfg.clone(), Instant::now());
    type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;
    let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
    loop {
        let now = Instant::now();
        for start in schedule.start_due(now) {
            let (client, cfg) = (client.clone(), cfg.clone());
            inflight.push(Box::pin(async move {
                match start {
                    Start::Datacenters => {
                        Done::Datacenters(api::fetch_datacenters(&client, &cfg).await)
                    }
                    Start::Query { key, index } => {
                        let q = &cfg.queries[key.query];
                        let dc = key.dc.as_deref();
                        let result = api::fetch(&client, &cfg, q, dc, index, true).await;
                        Done::Query {
                            key,
                            asked: index,
                            started: now,
                            result,
                        }
                    }
                }
            }));
        }
        // Wait for an answer or the next due start.
        let next_due = schedule
            .next_due()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        let done = tokio::select! {
            Some(done) = inflight.next() => done,
            _ = tokio::time::sleep_until(next_due) => continue,
        };
        if let Some(event) = schedule.done(done, Instant::now(), rand::random::<f64>()) {
            if !sink.send(event) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::fixtures::{config, query};
    use crate::consul::{Datacenters as Dcs, Service};
    use crate::event::ErrorKind;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn answer(names: &[&str], index: Option<u64>) -> Result<Answer, Failure> {
        Ok(Answer {
            names: names.iter().map(|s| s.to_string()).collect(),
            index,
        })
    }

    fn failure(retry_after: Option<Duration>) -> Result<Answer, Failure> {
        Err(Failure {
            error: Error::new(ErrorKind::Timeout, "slow"),
            retry_after,
        })
    }

    fn key(query: usize, dc: Option<&str>) -> SlotKey {
        SlotKey {
            query,
            dc: dc.map(String::from),
        }
    }

    fn ask(key: SlotKey, index: u64) -> Start {
        Start::Query { key, index }
    }

    fn done(key: SlotKey, asked: u64, started: Instant, result: Result<Answer, Failure>) -> Done {
        Done::Query {
            key,
            asked,
            started,
            result,
        }
    }

    /// One Health query (blocking) and one Agent query (polled every 5 s).
    fn health_and_agent() -> Arc<Config> {
        let mut c = config("http://127.0.0.1:8500");
        c.queries = vec![
            query(Endpoint::Health, Service::Name("web".into())),
            query(Endpoint::Agent, Service::Name("web".into())),
        ];
        Arc::new(c)
    }

    #[test]
    fn every_query_starts_at_once_and_nothing_is_reported_before_each_answered() {
        let t0 = Instant::now();
        let mut s = Schedule::new(health_and_agent(), t0);
        let starts = s.start_due(t0);
        assert_eq!(starts, vec![ask(key(0, None), 0), ask(key(1, None), 0)]);
        // in flight: nothing more to start, nothing due
        assert!(s.start_due(t0).is_empty());
        assert_eq!(s.next_due(), None);

        let t1 = t0 + MS(40);
        let health = done(key(0, None), 0, t0, answer(&["app@b"], Some(12)));
        assert_eq!(s.done(health, t1, 0.5), None);
        let agent = done(key(1, None), 0, t0, answer(&["app@a"], None));
        assert_eq!(
            s.done(agent, t1, 0.5),
            Some(Event::Nodes(vec!["app@a".into(), "app@b".into()]))
        );
    }

    #[test]
    fn a_blocking_answer_re_asks_with_its_index_and_an_agent_answer_after_the_poll_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(health_and_agent(), t0);
        s.start_due(t0);
        // Consul answered at once (no block): the re-ask waits out min_interval (250 ms)
        let t1 = t0 + MS(5);
        s.done(
            done(key(0, None), 0, t0, answer(&["app@b"], Some(12))),
            t1,
            0.5,
        );
        s.done(done(key(1, None), 0, t0, answer(&["app@a"], None)), t1, 0.5);
        assert_eq!(s.next_due(), Some(t0 + MS(250)));
        assert!(s.start_due(t0 + MS(249)).is_empty());
        assert_eq!(s.start_due(t0 + MS(250)), vec![ask(key(0, None), 12)]);
        // the Agent query is next due one poll interval after it started
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(5)));

        // a change after 10 s of blocking, with an index gone backwards: re-ask at once, fresh
        let t2 = t0 + Duration::from_secs(10);
        let event = s.done(
            done(key(0, None), 12, t0 + MS(250), answer(&["app@c"], Some(9))),
            t2,
            0.5,
        );
        assert_eq!(
            event,
            Some(Event::Nodes(vec!["app@a".into(), "app@c".into()]))
        );
        let starts = s.start_due(t2);
        assert!(starts.contains(&ask(key(0, None), 0)));
        assert!(starts.contains(&ask(key(1, None), 0)));
    }

    /// [`health_and_agent`] without a poll interval, both started at `t0`, the Agent query answered
    /// (`app@a`): it is never asked again, so only the Health slot is scheduled.
    fn agent_asked_once(t0: Instant) -> Schedule {
        let mut c = (*health_and_agent()).clone();
        c.poll_interval = None;
        let mut s = Schedule::new(Arc::new(c), t0);
        s.start_due(t0);
        s.done(done(key(1, None), 0, t0, answer(&["app@a"], None)), t0, 0.5);
        s
    }

    #[test]
    fn an_agent_query_without_a_poll_interval_is_asked_once() {
        let s = agent_asked_once(Instant::now());
        // only the Health query's answer is awaited; the Agent slot is never due again
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn a_failure_backs_off_from_a_fresh_read_or_waits_as_consul_asks() {
        let t0 = Instant::now();
        let mut s = agent_asked_once(t0);
        s.done(
            done(key(0, None), 0, t0, answer(&["app@b"], Some(12))),
            t0,
            0.5,
        );
        let t1 = t0 + Duration::from_secs(1);
        s.start_due(t1);

        // backoff_min 500 ms, jitter ±20 %: unit 0 is 400 ms; the index is dropped
        let event = s.done(done(key(0, None), 12, t1, failure(None)), t1, 0.0);
        match event {
            Some(Event::Partial { nodes, error }) => {
                assert_eq!(nodes, vec!["app@a".to_string()]);
                assert_eq!(error.message, "Health service \"web\": slow");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.next_due(), Some(t1 + MS(400)));
        assert_eq!(s.start_due(t1 + MS(400)), vec![ask(key(0, None), 0)]);
        // the second failure doubles (unit 1: 1,200 ms); the same error is reported again
        let t2 = t1 + MS(400);
        assert!(s
            .done(done(key(0, None), 0, t2, failure(None)), t2, 1.0)
            .is_some());
        assert_eq!(s.next_due(), Some(t2 + MS(1_200)));

        // Retry-After wins over the backoff, but never below min_interval
        let t3 = t2 + MS(1_200);
        s.start_due(t3);
        s.done(
            done(key(0, None), 0, t3, failure(Some(Duration::from_secs(7)))),
            t3,
            0.5,
        );
        assert_eq!(s.next_due(), Some(t3 + Duration::from_secs(7)));
        let t4 = t3 + Duration::from_secs(7);
        s.start_due(t4);
        s.done(
            done(key(0, None), 0, t4, failure(Some(Duration::ZERO))),
            t4,
            0.5,
        );
        assert_eq!(s.next_due(), Some(t4 + MS(250)));

        // a success resets the backoff and reports the full set again
        let t5 = t4 + MS(250);
        s.start_due(t5);
        assert_eq!(
            s.done(
                done(key(0, None), 0, t5, answer(&["app@b"], Some(13))),
                t5,
                0.5
            ),
            Some(Event::Nodes(vec!["app@a".into(), "app@b".into()]))
        );
        let t6 = t5 + Duration::from_secs(1);
        s.start_due(t6);
        s.done(done(key(0, None), 13, t6, failure(None)), t6, 0.5);
        assert_eq!(s.next_due(), Some(t6 + MS(500)));
    }

    #[test]
    fn the_same_node_set_is_not_reported_twice_in_a_row() {
        let t0 = Instant::now();
        let mut s = Schedule::new(health_and_agent(), t0);
        s.start_due(t0);
        s.done(done(key(1, None), 0, t0, answer(&["app@a"], None)), t0, 0.5);
        assert!(s
            .done(
                done(key(0, None), 0, t0, answer(&["app@b"], Some(3))),
                t0,
                0.5
            )
            .is_some());
        let t1 = t0 + MS(250);
        s.start_due(t1);
        // a blocking query that timed out with the same index: nothing new
        assert_eq!(
            s.done(
                done(key(0, None), 3, t1, answer(&["app@b"], Some(3))),
                t1,
                0.5
            ),
            None
        );
    }

    #[test]
    fn slots_follow_the_datacenter_list() {
        let mut c = config("http://127.0.0.1:8500");
        let mut q = query(Endpoint::Health, Service::Name("web".into()));
        q.datacenters = Dcs::All;
        c.queries = vec![q];
        let t0 = Instant::now();
        let mut s = Schedule::new(Arc::new(c), t0);
        // only the list is asked first
        assert_eq!(s.start_due(t0), vec![Start::Datacenters]);
        // the list arrives: no (empty) node set yet, one query per datacenter starts
        let dcs = Done::Datacenters(Ok(vec!["dc1".into(), "dc2".into()]));
        assert_eq!(s.done(dcs, t0, 0.5), None);
        assert_eq!(
            s.start_due(t0),
            vec![ask(key(0, Some("dc1")), 0), ask(key(0, Some("dc2")), 0),]
        );
        s.done(
            done(key(0, Some("dc1")), 0, t0, answer(&["app@a"], Some(1))),
            t0,
            0.5,
        );
        let both = s.done(
            done(key(0, Some("dc2")), 0, t0, answer(&["app@b"], Some(1))),
            t0,
            0.5,
        );
        assert_eq!(
            both,
            Some(Event::Nodes(vec!["app@a".into(), "app@b".into()]))
        );
        // re-read every poll interval (5 s); dc2 went away: its nodes go with it at once
        let t1 = t0 + Duration::from_secs(5);
        assert!(s.start_due(t1).contains(&Start::Datacenters));
        let event = s.done(Done::Datacenters(Ok(vec!["dc1".into()])), t1, 0.5);
        assert_eq!(event, Some(Event::Nodes(vec!["app@a".into()])));
        // a late answer of the removed datacenter changes nothing
        let late = done(key(0, Some("dc2")), 1, t1, answer(&["app@z"], Some(2)));
        assert_eq!(s.done(late, t1, 0.5), None);

        // the list fails: the known datacenters are still watched, the round is partial
        let t2 = t1 + Duration::from_secs(5);
        s.start_due(t2);
        let failed = Done::Datacenters(Err(Error::new(ErrorKind::Refused, "down").into()));
        match s.done(failed, t2, 0.0) {
            Some(Event::Partial { nodes, error }) => {
                assert_eq!(nodes, vec!["app@a".to_string()]);
                assert_eq!(error.kind, ErrorKind::Refused);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.next_due(), Some(t2 + MS(400)));
    }

    #[test]
    fn a_datacenter_list_that_never_arrived_is_an_error() {
        let mut c = config("http://127.0.0.1:8500");
        let mut q = query(Endpoint::Catalog, Service::Name("web".into()));
        q.datacenters = Dcs::All;
        c.queries = vec![q];
        let t0 = Instant::now();
        let mut s = Schedule::new(Arc::new(c), t0);
        s.start_due(t0);
        let failed = Done::Datacenters(Err(Failure {
            error: Error::new(ErrorKind::HttpStatus, "429"),
            retry_after: Some(Duration::from_secs(3)),
        }));
        assert!(
            matches!(s.done(failed, t0, 0.5), Some(Event::Error(e)) if e.kind == ErrorKind::HttpStatus)
        );
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn a_blocking_query_restarts_at_once_but_never_faster_than_min_interval() {
        let t0 = Instant::now();
        let min = Duration::from_millis(250);
        // a change after 10 s of blocking: the next request starts now
        let now = t0 + Duration::from_secs(10);
        assert_eq!(next_start(t0, now, true, min, None), Some(now));
        // an answer after 5 ms (Consul did not block): wait out the rest of min_interval
        let now = t0 + Duration::from_millis(5);
        assert_eq!(next_start(t0, now, true, min, None), Some(t0 + min));
        // an Agent query (no blocking): every poll interval, or never with :infinity
        let p = Some(Duration::from_secs(5));
        assert_eq!(
            next_start(t0, now, false, min, p),
            Some(t0 + Duration::from_secs(5))
        );
        assert_eq!(next_start(t0, now, false, min, None), None);
    }
}
