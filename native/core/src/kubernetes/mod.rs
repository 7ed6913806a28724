//! Kubernetes discovery: Endpoints, Pods or EndpointSlices of one namespace, by list + watch (the
//! default) or by polling. The task reports complete node sets (`Event::Nodes`) whenever the set
//! changes, and typed errors (`Event::Error`) that never stand for "no nodes".
//!
//! Watch: list (optionally `resourceVersion=0`, served from the API server's cache), then watch
//! from the list's resourceVersion with bookmarks; a clean end of the stream re-watches from the
//! last resourceVersion seen, 410 Gone re-lists, any failure reconnects with exponential backoff.
//!
//! A Role that grants `list` but not `watch` (libcluster needs only `list`) gets a 403 on the
//! watch: the task then falls back to listing every poll interval, says so once
//! (`Event::WatchMode`), and retries the watch every `watch_retry_interval`, so a fixed Role is
//! picked up without a restart.

pub mod api;
pub mod client;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{jitter_random, Backoff};
use crate::event::{Error, ErrorKind, Event, Sink};
use api::{Skipped, Target};
use client::{ApiClient, GetError, Request};

/// Which API object lists the cluster's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Endpoints,
    /// Pods of the selector. libcluster takes every pod with a `status.podIP`; `ready_only` keeps
    /// only those that are `Running`, `Ready` and not being deleted.
    Pods {
        ready_only: bool,
    },
    EndpointSlices,
}

impl Lookup {
    fn resource(self) -> &'static str {
        match self {
            Lookup::Endpoints => "endpoints",
            Lookup::Pods { .. } => "pods",
            Lookup::EndpointSlices => "endpointslices",
        }
    }
    fn group(self) -> &'static str {
        match self {
            Lookup::EndpointSlices => "discovery.k8s.io",
            _ => "",
        }
    }
    fn path(self, namespace: &str) -> String {
        match self {
            Lookup::EndpointSlices => {
                format!("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices")
            }
            other => format!("/api/v1/namespaces/{namespace}/{}", other.resource()),
        }
    }
}

/// The host part of node names (COMPAT: `:ip`, `:dns`, `:hostname`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMode {
    Ip,
    Dns,
    Hostname,
}

/// How targets become node names.
#[derive(Debug, Clone)]
pub struct Naming {
    pub basename: String,
    pub mode: NameMode,
    /// `kubernetes_service_name`; when `None`, the publishing service is used.
    pub service_name: Option<String>,
    /// Without a trailing dot, e.g. `cluster.local`.
    pub cluster_domain: String,
}

/// Everything one discovery needs; built by the NIF from the strategy's validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://host[:port]`
    pub api_url: String,
    pub service_account_path: PathBuf,
    pub namespace: String,
    pub lookup: Lookup,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub naming: Naming,
    pub use_cached_resources: bool,
    pub insecure_skip_tls_verify: bool,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Server-side timeout of one watch request (it is re-opened from the last resourceVersion).
    pub watch_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Between lists while the watch is forbidden (the strategy's `polling_interval`).
    pub poll_interval: Duration,
    /// How often a forbidden watch is tried again.
    pub watch_retry_interval: Duration,
    /// The dry run: list once, find out whether the watch is allowed, report both and end.
    pub probe: bool,
}

impl Config {
    fn request(&self, verb: &'static str, extra: &[(&str, &str)]) -> Result<Request, Error> {
        let mut url = reqwest::Url::parse(&self.api_url)
            .and_then(|u| u.join(&self.lookup.path(&self.namespace)))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("bad API server address {:?}: {e}", self.api_url),
                )
            })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &self.label_selector {
                q.append_pair("labelSelector", s);
            }
            if let Some(s) = &self.field_selector {
                q.append_pair("fieldSelector", s);
            }
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        Ok(Request {
            verb,
            resource: self.lookup.resource(),
            group: self.lookup.group(),
            namespace: self.namespace.clone(),
            url,
        })
    }

    fn client(&self) -> Result<ApiClient, Error> {
        let ca = self.service_account_path.join("ca.crt");
        let tls = client::tls_config(&ca, self.insecure_skip_tls_verify)?;
        ApiClient::new(
            tls,
            self.service_account_path.join("token"),
            self.request_timeout.min(Duration::from_secs(10)),
        )
    }
}

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

/// Parse a list body into sorted node names: the whole "body in, node set out" path, used by the
/// poll and by benchmarks.
pub fn names_from_list(
    lookup: Lookup,
    naming: &Naming,
    namespace: &str,
    body: &[u8],
) -> Result<(Vec<String>, Option<String>), Error> {
    let mut skipped = Skipped::default();
    let parsed = api::parse_list(lookup, body, namespace, &mut skipped).map_err(|e| {
        Error::new(
            ErrorKind::Malformed,
            format!(
                "the {} list is not valid JSON of the expected shape: {e}",
                lookup.resource()
            ),
        )
    })?;
    let names = api::node_names(naming, parsed.objects.values().flatten(), &mut skipped);
    Ok((names, parsed.resource_version))
}

async fn list(cfg: &Config, client: &ApiClient) -> Result<api::ParsedList, Error> {
    let mut extra = Vec::new();
    if cfg.use_cached_resources {
        extra.push(("resourceVersion", "0"));
    }
    let req = cfg.request("list", &extra)?;
    let resp = client.get(&req, Some(cfg.request_timeout)).await?;
    let body = tokio::time::timeout(
        cfg.request_timeout,
        client::read_limited(resp, cfg.max_body_bytes, &req),
    )
    .await
    .map_err(|_| {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "list {}: the body did not arrive within {:?}; raise kubernetes_request_timeout",
                req.url, cfg.request_timeout
            ),
        )
    })??;
    let mut skipped = Skipped::default();
    let parsed = api::parse_list(cfg.lookup, &body, &cfg.namespace, &mut skipped).map_err(|e| {
        Error::new(
            ErrorKind::Malformed,
            format!(
                "list {}: the answer is not a valid {} list ({e}); is kubernetes_master an API server?",
                req.url,
                cfg.lookup.resource()
            ),
        )
    })?;
    if skipped.bad_ip > 0 {
        tracing::debug!(dropped = skipped.bad_ip, "addresses that are not IPs");
    }
    Ok(parsed)
}

/// One poll: list once, report `Nodes` or `Error`.
pub async fn poll_once(cfg: Arc<Config>, sink: Arc<dyn Sink>) {
    let result = async {
        let client = cfg.client()?;
        list(&cfg, &client).await
    }
    .await;
    match result {
        Ok(parsed) => {
            let mut skipped = Skipped::default();
            let names =
                api::node_names(&cfg.naming, parsed.objects.values().flatten(), &mut skipped);
            sink.send(Event::Nodes(names));
        }
        Err(e) => {
            sink.send(Event::Error(e));
        }
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
pub async fn watch(cfg: Arc<Config>, sink: Arc<dyn Sink>) {
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
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "watch {}: the stream broke ({}); reconnecting from resourceVersion {}",
                        req.url,
                        crate::http::chain(&e),
                        version
                    ),
                ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_request_urls_per_mode() {
        let cfg = Config {
            api_url: "https://10.96.0.1:443".into(),
            service_account_path: "/nonexistent".into(),
            namespace: "prod".into(),
            lookup: Lookup::EndpointSlices,
            label_selector: Some("kubernetes.io/service-name=my app".into()),
            field_selector: None,
            naming: Naming {
                basename: "a".into(),
                mode: NameMode::Ip,
                service_name: None,
                cluster_domain: "cluster.local".into(),
            },
            use_cached_resources: true,
            insecure_skip_tls_verify: false,
            request_timeout: Duration::from_secs(1),
            max_body_bytes: 1,
            watch_timeout: Duration::from_secs(300),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
            poll_interval: Duration::from_secs(5),
            watch_retry_interval: Duration::from_secs(300),
            probe: false,
        };
        let r = cfg.request("list", &[("resourceVersion", "0")]).unwrap();
        assert_eq!(
            r.url.as_str(),
            "https://10.96.0.1/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dmy+app&resourceVersion=0"
        );
        let mut cfg = cfg;
        cfg.lookup = Lookup::Pods { ready_only: true };
        cfg.field_selector = Some("status.phase=Running".into());
        cfg.label_selector = Some("app=x".into());
        let r = cfg.request("watch", &[("watch", "1")]).unwrap();
        assert_eq!(
            r.url.as_str(),
            "https://10.96.0.1/api/v1/namespaces/prod/pods?labelSelector=app%3Dx&fieldSelector=status.phase%3DRunning&watch=1"
        );
    }

    #[test]
    fn a_forbidden_message_names_verb_resource_namespace_and_rule() {
        let cfg_req = Request {
            verb: "watch",
            resource: "endpointslices",
            group: "discovery.k8s.io",
            namespace: "prod".into(),
            url: reqwest::Url::parse("https://x/").unwrap(),
        };
        let e = client::status_error(
            &cfg_req,
            reqwest::StatusCode::FORBIDDEN,
            br#"{"kind":"Status","message":"endpointslices.discovery.k8s.io is forbidden"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Forbidden);
        for needle in [
            "may not watch endpointslices in namespace prod",
            "apiGroups: [discovery.k8s.io]",
            "verbs: [\"list\", \"watch\"]",
            "RoleBinding",
            "is forbidden",
        ] {
            assert!(e.message.contains(needle), "{needle} in {}", e.message);
        }
    }
}

/// The RBAC manifests shipped in `priv/rbac/` grant exactly what each mode requests.
#[cfg(test)]
mod rbac_tests {
    use super::Lookup;
    use serde_json::Value;

    fn manifest(lookup: Lookup) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../priv/rbac")
            .join(format!("{}.json", lookup.resource()));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not valid JSON: {e}"))
    }

    #[test]
    fn rbac_manifests_grant_list_and_watch_for_each_mode() {
        for lookup in [
            Lookup::Endpoints,
            Lookup::Pods { ready_only: false },
            Lookup::EndpointSlices,
        ] {
            let doc = manifest(lookup);
            assert_eq!(doc["apiVersion"], "v1");
            assert_eq!(doc["kind"], "List");
            let items = doc["items"].as_array().expect("items");
            let role = items.iter().find(|i| i["kind"] == "Role").expect("a Role");
            let binding = items
                .iter()
                .find(|i| i["kind"] == "RoleBinding")
                .expect("a RoleBinding");
            for obj in [role, binding] {
                assert_eq!(obj["apiVersion"], "rbac.authorization.k8s.io/v1");
                assert!(obj["metadata"]["name"].is_string());
                assert!(obj["metadata"]["namespace"].is_string());
            }
            let rule = role["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| {
                    r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == lookup.resource())
                })
                .expect("a rule for the mode's resource");
            assert!(rule["apiGroups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == lookup.group()));
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert!(
                verbs.contains(&"list") && verbs.contains(&"watch"),
                "{verbs:?}"
            );
            assert_eq!(binding["roleRef"]["kind"], "Role");
            assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
            assert_eq!(binding["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
            let subject = &binding["subjects"][0];
            assert_eq!(subject["kind"], "ServiceAccount");
            assert!(subject["name"].is_string() && subject["namespace"].is_string());
        }
    }
}
