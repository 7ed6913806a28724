//! The watch: list, then follow the watch stream from the list's resourceVersion, re-listing on
//! 410 Gone, reconnecting with backoff on failures, and falling back to polling while the Role
//! forbids the watch. Also the dry run's probe.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::api::{self, Skipped, Target};
use super::client::{self, ApiClient, GetError, Request};
use super::list::list;
use super::{Config, Naming};
use crate::backoff::{jitter_random, Backoff};
use crate::event::{Error, ErrorKind, Event, Sink};

/// The members known from the last list and the watch events since.
#[derive(Default)]
struct Members {
    objects: HashMap<String, Vec<Target>>,
    last_sent: Option<Vec<String>>,
}

impl Members {
    fn names(&self, naming: &Naming) -> Vec<String> {
        let mut skipped = Skipped::default();
        let names = api::node_names(naming, self.objects.values().flatten(), &mut skipped);
        if skipped.bad_name > 0 {
            tracing::debug!(
                dropped = skipped.bad_name,
                "addresses without a valid node name"
            );
        }
        names
    }

    /// Send the set if it changed (or if nothing was sent since the last error). False: owner gone.
    fn publish(&mut self, naming: &Naming, sink: &dyn Sink) -> bool {
        let names = self.names(naming);
        if self.last_sent.as_ref() == Some(&names) {
            return true;
        }
        self.last_sent = Some(names.clone());
        sink.send(Event::Nodes(names))
    }

    fn failed(&mut self, error: Error, sink: &dyn Sink) -> bool {
        self.last_sent = None;
        sink.send(Event::Error(error))
    }
}

/// How a watch request ended.
enum WatchEnd {
    /// The server closed the stream cleanly (its timeout): re-watch from the last version.
    Closed,
    /// 410 Gone (as a status or an ERROR event): re-list.
    Gone,
    /// The owner is gone.
    Stop,
}

/// List + watch until cancelled (the future is dropped) or the owner goes away. While the watch
/// is forbidden, list every `poll_interval` instead and retry the watch every
/// `watch_retry_interval`.
pub(super) async fn watch(cfg: Arc<Config>, sink: Arc<dyn Sink>) {
    let client = match cfg.client() {
        Ok(c) => c,
        Err(e) => {
            // Nothing can work until the config or files change: let the owner retry later.
            if sink.send(Event::Error(e)) {
                sink.send(Event::Done);
            }
            return;
        }
    };
    if cfg.probe {
        return probe(&cfg, &client, &*sink).await;
    }
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut members = Members::default();
    // `Some(when the watch is tried again)` while the watch is forbidden.
    let mut fallback: Option<tokio::time::Instant> = None;
    'relist: loop {
        let mut version = match list(&cfg, &client).await {
            Ok(parsed) => {
                members.objects = parsed.objects;
                if !members.publish(&cfg.naming, &*sink) {
                    return;
                }
                parsed.resource_version.unwrap_or_default()
            }
            Err(e) => {
                if !members.failed(e, &*sink) {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue 'relist;
            }
        };
        backoff.reset();
        loop {
            if let Some(retry_at) = fallback {
                // Polling: one list per interval, as libcluster does; the watch when it is due.
                tokio::time::sleep(jitter_random(cfg.poll_interval, 0.1)).await;
                match list(&cfg, &client).await {
                    Ok(parsed) => {
                        members.objects = parsed.objects;
                        version = parsed.resource_version.unwrap_or_default();
                        if !members.publish(&cfg.naming, &*sink) {
                            return;
                        }
                    }
                    Err(e) => {
                        if !members.failed(e, &*sink) {
                            return;
                        }
                        continue;
                    }
                }
                if tokio::time::Instant::now() < retry_at {
                    continue;
                }
            }
            let opened = tokio::time::Instant::now();
            match watch_once(
                &cfg,
                &client,
                &mut version,
                &mut members,
                &*sink,
                &mut fallback,
            )
            .await
            {
                // A server that ends every watch at once must not be asked in a tight loop.
                Ok(WatchEnd::Closed) if opened.elapsed() < Duration::from_secs(1) => {
                    tokio::time::sleep(backoff.next_delay()).await
                }
                Ok(WatchEnd::Closed) => backoff.reset(),
                Ok(WatchEnd::Gone) => continue 'relist,
                Ok(WatchEnd::Stop) => return,
                Err(e) if e.kind == ErrorKind::Forbidden => {
                    // The Role grants list (the list just worked) but not watch: poll instead.
                    let entering = fallback.is_none();
                    fallback = Some(
                        tokio::time::Instant::now() + jitter_random(cfg.watch_retry_interval, 0.2),
                    );
                    if entering {
                        if !sink.send(Event::WatchMode {
                            fallback: true,
                            detail: e.message,
                        }) {
                            return;
                        }
                    } else {
                        tracing::debug!("the watch is still forbidden; polling on");
                    }
                }
                Err(e) => {
                    if fallback.is_some() {
                        // Still polling: try the watch again only at the next retry time.
                        fallback = Some(
                            tokio::time::Instant::now()
                                + jitter_random(cfg.watch_retry_interval, 0.2),
                        );
                    }
                    if !members.failed(e, &*sink) {
                        return;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// The dry run of a watching topology: list once, then open a watch and close it at once to learn
/// whether the Role allows it; report the mode the strategy would run in, then the nodes, and end.
async fn probe(cfg: &Config, client: &ApiClient, sink: &dyn Sink) {
    let parsed = match list(cfg, client).await {
        Ok(parsed) => parsed,
        Err(e) => {
            sink.send(Event::Error(e));
            return;
        }
    };
    let version = parsed.resource_version.clone().unwrap_or_default();
    let mut extra = vec![("watch", "1"), ("timeoutSeconds", "1")];
    if !version.is_empty() {
        extra.push(("resourceVersion", version.as_str()));
    }
    let mode = match cfg.request("watch", &extra) {
        Ok(req) => match client
            .get(&req, Some(cfg.request_timeout))
            .await
            .map_err(Error::from)
        {
            Ok(_stream) => Some(Event::WatchMode {
                fallback: false,
                detail: format!(
                    "the service account may watch {} in namespace {}",
                    cfg.lookup.resource(),
                    cfg.namespace
                ),
            }),
            Err(e) if e.kind == ErrorKind::Forbidden => Some(Event::WatchMode {
                fallback: true,
                detail: e.message,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "the watch probe failed");
                None
            }
        },
        Err(_) => None,
    };
    if let Some(event) = mode {
        if !sink.send(event) {
            return;
        }
    }
    let mut skipped = Skipped::default();
    let names = api::node_names(&cfg.naming, parsed.objects.values().flatten(), &mut skipped);
    sink.send(Event::Nodes(names));
}

/// The longest watch event line we accept (one object).
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

async fn watch_once(
    cfg: &Config,
    client: &ApiClient,
    version: &mut String,
    members: &mut Members,
    sink: &dyn Sink,
    fallback: &mut Option<tokio::time::Instant>,
) -> Result<WatchEnd, Error> {
    // Spread re-watches of many nodes over time.
    let secs = cfg.watch_timeout.as_secs().max(1);
    let secs = secs - (rand::random::<u64>() % secs.div_ceil(5).max(1));
    let timeout_s = secs.to_string();
    let mut extra = vec![
        ("watch", "1"),
        ("allowWatchBookmarks", "true"),
        ("timeoutSeconds", timeout_s.as_str()),
    ];
    if !version.is_empty() {
        extra.push(("resourceVersion", version.as_str()));
    }
    let req = cfg.request("watch", &extra)?;
    let mut resp = match tokio::time::timeout(cfg.request_timeout, client.get(&req, None)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(GetError::Gone(_))) => return Ok(WatchEnd::Gone),
        Ok(Err(GetError::Failed(e))) => return Err(e),
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "watch {}: no answer within {:?}; reconnecting",
                    req.url, cfg.request_timeout
                ),
            ))
        }
    };
    // Allowed again after a fallback to polling: say so.
    if fallback.take().is_some()
        && !sink.send(Event::WatchMode {
            fallback: false,
            detail: format!(
                "the watch of {} in namespace {} is allowed again",
                cfg.lookup.resource(),
                cfg.namespace
            ),
        })
    {
        return Ok(WatchEnd::Stop);
    }
    // Connected: after an error, say so at once (the set itself may be unchanged).
    if !members.publish(&cfg.naming, sink) {
        return Ok(WatchEnd::Stop);
    }
    // No bytes for this long (bookmarks arrive about every minute) means a dead connection.
    let idle = Duration::from_secs(secs) + cfg.request_timeout;
    let mut line: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(idle, resp.chunk()).await {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "watch {}: the stream went silent for {idle:?}; reconnecting",
                        req.url
                    ),
                ))
            }
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => {
                if line.iter().any(|b| !b.is_ascii_whitespace()) {
                    return Err(Error::new(
                        ErrorKind::Malformed,
                        format!(
                            "watch {}: the stream ended inside an event ({} bytes); reconnecting",
                            req.url,
                            line.len()
                        ),
                    ));
                }
                return Ok(WatchEnd::Closed);
            }
            Ok(Err(e)) => {
                let t = crate::http::classify(&e);
                return Err(Error::new(
                    t.kind,
                    format!(
                        "watch {}: the stream broke ({}); reconnecting from resourceVersion {}",
                        req.url, t.detail, version
                    ),
                ));
            }
        };
        let mut rest: &[u8] = &chunk;
        let mut changed = false;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let event = std::mem::take(&mut line);
            match apply_event(cfg, &event, version, members, &req)? {
                Applied::Changed => changed = true,
                Applied::Unchanged => {}
                Applied::Gone => return Ok(WatchEnd::Gone),
            }
        }
        line.extend_from_slice(rest);
        if line.len() > MAX_EVENT_BYTES {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "watch {}: an event is larger than {MAX_EVENT_BYTES} bytes; reconnecting",
                    req.url
                ),
            ));
        }
        // One publish per chunk: a burst of events yields one membership update.
        if changed && !members.publish(&cfg.naming, sink) {
            return Ok(WatchEnd::Stop);
        }
    }
}

enum Applied {
    Changed,
    Unchanged,
    Gone,
}

fn apply_event(
    cfg: &Config,
    line: &[u8],
    version: &mut String,
    members: &mut Members,
    req: &Request,
) -> Result<Applied, Error> {
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Applied::Unchanged);
    }
    let malformed = |e: serde_json::Error| {
        Error::new(
            ErrorKind::Malformed,
            format!("watch {}: a malformed event ({e}); reconnecting", req.url),
        )
    };
    let head: api::EventHead = serde_json::from_slice(line).map_err(malformed)?;
    match head.kind.as_str() {
        "ADDED" | "MODIFIED" | "DELETED" => {
            let mut skipped = Skipped::default();
            let (key, rv, targets) =
                api::object_targets(cfg.lookup, line, &cfg.namespace, &mut skipped)
                    .map_err(malformed)?;
            if let Some(rv) = rv {
                *version = rv;
            }
            if head.kind == "DELETED" {
                members.objects.remove(&key);
            } else {
                members.objects.insert(key, targets);
            }
            Ok(Applied::Changed)
        }
        "BOOKMARK" => {
            let ev: api::WatchEvent<api::ObjectMetaOnly> =
                serde_json::from_slice(line).map_err(malformed)?;
            if let Some(rv) = ev.object.metadata.resource_version {
                *version = rv;
            }
            Ok(Applied::Unchanged)
        }
        "ERROR" => {
            let ev: api::WatchEvent<api::Status> =
                serde_json::from_slice(line).map_err(malformed)?;
            if ev.object.code == Some(410) || ev.object.reason.as_deref() == Some("Expired") {
                return Ok(Applied::Gone);
            }
            let status = reqwest::StatusCode::from_u16(ev.object.code.unwrap_or(500))
                .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::to_vec(&serde_json::json!({
                "message": ev.object.message.unwrap_or_default()
            }))
            .unwrap_or_default();
            Err(client::status_error(req, status, &body))
        }
        other => {
            tracing::debug!(kind = %other.chars().take(32).collect::<String>(), "unknown watch event");
            Ok(Applied::Unchanged)
        }
    }
}
