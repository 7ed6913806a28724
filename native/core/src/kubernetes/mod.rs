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

//! Layout: this file holds the configuration and naming; [`list`](self::list) lists once (the
//! poll, and the start of every watch); [`watch`](self::watch) follows the watch stream, with the
//! forbidden-watch fallback and the dry-run probe. Backoff is [`crate::backoff`], the transport
//! [`crate::http`] (through [`client`]).

mod api;
mod client;
mod list;
mod service_account;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::event::{Error, ErrorKind, Event, Sink};
use api::Skipped;
use client::{ApiClient, Request};

use list::poll_once;
use watch::watch;

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
    /// `kubernetes_namespace`; empty: the service account's `namespace` file, read by [`run`] at
    /// the start of each task.
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
        ApiClient::new(
            &self.service_account_path,
            self.insecure_skip_tls_verify,
            self.request_timeout.min(Duration::from_secs(10)),
        )
    }
}

/// The task of one round: resolve the namespace (the service account's file when
/// `kubernetes_namespace` is unset, see [`service_account`]), then watch (`watch`) or list once. A
/// namespace that cannot be read is a `:config` error, and the task ends (a watch says `Done`), so
/// the owner's next round reads the file again.
pub async fn run(mut cfg: Config, watch_mode: bool, sink: Arc<dyn Sink>) {
    if cfg.namespace.is_empty() {
        match service_account::namespace(&cfg.service_account_path) {
            Ok(ns) => cfg.namespace = ns,
            Err(e) => {
                if sink.send(Event::Error(e)) && watch_mode {
                    sink.send(Event::Done);
                }
                return;
            }
        }
    }
    let cfg = Arc::new(cfg);
    if watch_mode {
        watch(cfg, sink).await
    } else {
        poll_once(cfg, sink).await
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
