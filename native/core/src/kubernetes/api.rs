//! The Kubernetes API shapes we read, and how they become node names.
//!
//! Only the fields discovery needs are declared; serde skips everything else without building it,
//! so a 14 MB pod list costs a scan, not a tree. Lists are bounded by the caller (body size) and
//! every name goes through [`crate::node_name`] before it leaves Rust.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;

use super::{Lookup, NameMode, Naming};

// ---- list and watch envelopes ----

#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub(crate) struct List<T> {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default = "Vec::new", deserialize_with = "null_as_empty")]
    pub items: Vec<T>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: Option<String>,
}

/// The `type` of a watch event, read before the object so that ERROR and BOOKMARK objects are not
/// parsed as the watched kind.
#[derive(Deserialize)]
pub(crate) struct EventHead {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Deserialize)]
pub(crate) struct WatchEvent<T> {
    pub object: T,
}

/// `metav1.Status`, the body of API errors and of watch ERROR events.
#[derive(Deserialize, Default)]
pub(crate) struct Status {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// A BOOKMARK event's object: only its resourceVersion matters.
#[derive(Deserialize, Default)]
pub(crate) struct ObjectMetaOnly<'a> {
    #[serde(default, borrow)]
    pub metadata: ObjectMeta<'a>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ObjectMeta<'a> {
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: Option<String>,
    #[serde(rename = "deletionTimestamp", default)]
    pub deletion_timestamp: Option<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    pub labels: Option<Labels<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Labels<'a> {
    #[serde(rename = "kubernetes.io/service-name", default, borrow)]
    pub service_name: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ObjectRef<'a> {
    #[serde(default, borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
}

/// Accept `null` where the API reference says "list" (older servers send `"subsets": null`).
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

// ---- core/v1 Endpoints ----

#[derive(Deserialize, Default)]
pub(crate) struct Endpoints<'a> {
    #[serde(default, borrow)]
    pub metadata: ObjectMeta<'a>,
    #[serde(default = "Vec::new", deserialize_with = "null_as_empty", borrow)]
    pub subsets: Vec<EndpointSubset<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct EndpointSubset<'a> {
    // Only ready addresses; `notReadyAddresses` is skipped by serde.
    #[serde(default = "Vec::new", deserialize_with = "null_as_empty", borrow)]
    pub addresses: Vec<EndpointAddress<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct EndpointAddress<'a> {
    #[serde(default, borrow)]
    pub ip: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub hostname: Option<Cow<'a, str>>,
    #[serde(rename = "targetRef", default, borrow)]
    pub target_ref: Option<ObjectRef<'a>>,
}

// ---- core/v1 Pod ----

#[derive(Deserialize, Default)]
pub(crate) struct Pod<'a> {
    #[serde(default, borrow)]
    pub metadata: ObjectMeta<'a>,
    #[serde(default, borrow)]
    pub spec: Option<PodSpec<'a>>,
    #[serde(default, borrow)]
    pub status: Option<PodStatus<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct PodSpec<'a> {
    #[serde(default, borrow)]
    pub hostname: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub subdomain: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct PodStatus<'a> {
    #[serde(default, borrow)]
    pub phase: Option<Cow<'a, str>>,
    #[serde(rename = "podIP", default, borrow)]
    pub pod_ip: Option<Cow<'a, str>>,
    #[serde(default = "Vec::new", deserialize_with = "null_as_empty", borrow)]
    pub conditions: Vec<PodCondition<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct PodCondition<'a> {
    #[serde(rename = "type", default, borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub status: Cow<'a, str>,
}

// ---- discovery.k8s.io/v1 EndpointSlice ----

#[derive(Deserialize, Default)]
pub(crate) struct EndpointSlice<'a> {
    #[serde(default, borrow)]
    pub metadata: ObjectMeta<'a>,
    #[serde(rename = "addressType", default, borrow)]
    pub address_type: Option<Cow<'a, str>>,
    #[serde(default = "Vec::new", deserialize_with = "null_as_empty", borrow)]
    pub endpoints: Vec<SliceEndpoint<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct SliceEndpoint<'a> {
    #[serde(default = "Vec::new", deserialize_with = "null_as_empty", borrow)]
    pub addresses: Vec<Cow<'a, str>>,
    #[serde(default)]
    pub conditions: Option<SliceConditions>,
    #[serde(default, borrow)]
    pub hostname: Option<Cow<'a, str>>,
    #[serde(rename = "targetRef", default, borrow)]
    pub target_ref: Option<ObjectRef<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct SliceConditions {
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub serving: Option<bool>,
    #[serde(default)]
    pub terminating: Option<bool>,
}

// ---- from objects to targets ----

/// One ready address of one workload, before it becomes a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub ip: IpAddr,
    /// The address as the API wrote it (trimmed). `:ip` names use it verbatim, as libcluster does:
    /// a node started with `RELEASE_NODE=app@$(POD_IP)` carries exactly this text.
    pub address: String,
    pub namespace: String,
    pub hostname: Option<String>,
    /// The service that published it (Endpoints name, EndpointSlice service label, pod subdomain).
    pub service: Option<String>,
    /// What the address belongs to (`kind/namespace/name` of the targetRef), to pick one address
    /// family per pod on dual-stack services (EndpointSlices only: libcluster names every address
    /// of an Endpoints object, and so do we).
    pub owner: Option<String>,
}

/// Why addresses were left out; reported at debug level, never as an error.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Skipped {
    pub bad_ip: usize,
    pub bad_name: usize,
}

impl Target {
    /// An address published for `target_ref` (a pod, usually) in an object of namespace `obj_ns`;
    /// without a targetRef the namespace is the object's. `owned`: remember the targetRef as the
    /// owner, for the dual-stack rule.
    fn referenced(
        (ip, address): (IpAddr, String),
        target_ref: Option<&ObjectRef<'_>>,
        obj_ns: &str,
        hostname: Option<&str>,
        service: Option<&str>,
        owned: bool,
    ) -> Target {
        Target {
            ip,
            address,
            namespace: target_ref
                .and_then(|r| r.namespace.as_deref())
                .unwrap_or(obj_ns)
                .to_owned(),
            hostname: hostname.map(str::to_owned),
            service: service.map(str::to_owned),
            owner: if owned {
                target_ref.and_then(|r| owner_key(r, obj_ns))
            } else {
                None
            },
        }
    }
}

fn owner_key(r: &ObjectRef<'_>, fallback_ns: &str) -> Option<String> {
    let name = r.name.as_deref()?;
    Some(format!(
        "{}/{}/{}",
        r.kind.as_deref().unwrap_or(""),
        r.namespace.as_deref().unwrap_or(fallback_ns),
        name
    ))
}

/// The address and its text as the API wrote it.
fn parse_ip(s: &str, skipped: &mut Skipped) -> Option<(IpAddr, String)> {
    let s = s.trim();
    match s.parse() {
        Ok(ip) => Some((ip, s.to_owned())),
        Err(_) => {
            skipped.bad_ip += 1;
            None
        }
    }
}

impl Endpoints<'_> {
    pub(crate) fn targets(&self, default_ns: &str, skipped: &mut Skipped) -> Vec<Target> {
        let obj_ns = self.metadata.namespace.as_deref().unwrap_or(default_ns);
        let mut out = Vec::new();
        for subset in &self.subsets {
            for a in &subset.addresses {
                let Some(ip) = a.ip.as_deref().and_then(|s| parse_ip(s, skipped)) else {
                    continue;
                };
                // An address without targetRef (a manually managed Endpoints) is still an address:
                // its namespace is the object's. libcluster crashed here.
                out.push(Target::referenced(
                    ip,
                    a.target_ref.as_ref(),
                    obj_ns,
                    a.hostname.as_deref(),
                    self.metadata.name.as_deref(),
                    false,
                ));
            }
        }
        out
    }
}

impl Pod<'_> {
    /// libcluster's rule by default: every pod that has a `status.podIP`, whatever its phase,
    /// readiness or deletion state (an app whose readiness probe waits for the cluster must still
    /// be found). With `ready_only`: only pods that are `Running`, `Ready` and not being deleted.
    pub(crate) fn targets(
        &self,
        default_ns: &str,
        ready_only: bool,
        skipped: &mut Skipped,
    ) -> Vec<Target> {
        let Some(status) = &self.status else {
            return Vec::new();
        };
        if ready_only && !self.running_ready_and_not_deleting(status) {
            return Vec::new();
        }
        let Some((ip, address)) = status.pod_ip.as_deref().and_then(|s| parse_ip(s, skipped))
        else {
            return Vec::new();
        };
        let spec = self.spec.as_ref();
        vec![Target {
            ip,
            address,
            namespace: self
                .metadata
                .namespace
                .as_deref()
                .unwrap_or(default_ns)
                .to_owned(),
            hostname: spec.and_then(|s| s.hostname.as_deref().map(str::to_owned)),
            service: spec.and_then(|s| s.subdomain.as_deref().map(str::to_owned)),
            owner: None,
        }]
    }

    fn running_ready_and_not_deleting(&self, status: &PodStatus<'_>) -> bool {
        self.metadata.deletion_timestamp.is_none()
            && status.phase.as_deref() == Some("Running")
            && status
                .conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.status == "True")
    }
}

impl EndpointSlice<'_> {
    /// Endpoints that are ready (an absent `ready` falls back to `serving`, then to true, as the
    /// API reference says consumers should) and not terminating. FQDN slices carry no IPs: skipped.
    pub(crate) fn targets(&self, default_ns: &str, skipped: &mut Skipped) -> Vec<Target> {
        match self.address_type.as_deref() {
            Some("IPv4") | Some("IPv6") | None => {}
            Some(_) => return Vec::new(),
        }
        let obj_ns = self.metadata.namespace.as_deref().unwrap_or(default_ns);
        let service = self
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.service_name.as_deref());
        let mut out = Vec::new();
        for ep in &self.endpoints {
            let c = ep.conditions.as_ref();
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let ready = c.and_then(|c| c.ready.or(c.serving)).unwrap_or(true);
            if !ready || terminating {
                continue;
            }
            // Each endpoint represents one pod; its addresses are fungible, the first one counts.
            let Some(ip) = ep.addresses.first().and_then(|s| parse_ip(s, skipped)) else {
                continue;
            };
            out.push(Target::referenced(
                ip,
                ep.target_ref.as_ref(),
                obj_ns,
                ep.hostname.as_deref(),
                service,
                true,
            ));
        }
        out
    }
}

/// Parse one object of the watched kind and return its key (`namespace/name`), resourceVersion and
/// targets.
pub(crate) fn object_targets(
    lookup: Lookup,
    json: &[u8],
    default_ns: &str,
    skipped: &mut Skipped,
) -> serde_json::Result<(String, Option<String>, Vec<Target>)> {
    fn key(m: &ObjectMeta<'_>) -> String {
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or(""),
            m.name.as_deref().unwrap_or("")
        )
    }
    Ok(match lookup {
        Lookup::Endpoints => {
            let o: WatchEvent<Endpoints> = serde_json::from_slice(json)?;
            let t = o.object.targets(default_ns, skipped);
            (
                key(&o.object.metadata),
                o.object.metadata.resource_version,
                t,
            )
        }
        Lookup::Pods { ready_only } => {
            let o: WatchEvent<Pod> = serde_json::from_slice(json)?;
            let t = o.object.targets(default_ns, ready_only, skipped);
            (
                key(&o.object.metadata),
                o.object.metadata.resource_version,
                t,
            )
        }
        Lookup::EndpointSlices => {
            let o: WatchEvent<EndpointSlice> = serde_json::from_slice(json)?;
            let t = o.object.targets(default_ns, skipped);
            (
                key(&o.object.metadata),
                o.object.metadata.resource_version,
                t,
            )
        }
    })
}

/// A parsed list: `namespace/name` → targets, and the list's resourceVersion.
pub(crate) struct ParsedList {
    pub resource_version: Option<String>,
    pub objects: HashMap<String, Vec<Target>>,
}

pub(crate) fn parse_list(
    lookup: Lookup,
    body: &[u8],
    default_ns: &str,
    skipped: &mut Skipped,
) -> serde_json::Result<ParsedList> {
    fn key(m: &ObjectMeta<'_>, i: usize) -> String {
        match &m.name {
            Some(n) => format!("{}/{}", m.namespace.as_deref().unwrap_or(""), n),
            None => format!("#{i}"),
        }
    }
    macro_rules! parse {
        ($ty:ty, |$o:ident| $targets:expr) => {{
            let l: List<$ty> = serde_json::from_slice(body)?;
            let objects = l
                .items
                .iter()
                .enumerate()
                .map(|(i, $o)| (key(&$o.metadata, i), $targets))
                .collect();
            ParsedList {
                resource_version: l.metadata.resource_version,
                objects,
            }
        }};
    }
    let parsed = match lookup {
        Lookup::Endpoints => parse!(Endpoints, |o| o.targets(default_ns, skipped)),
        Lookup::Pods { ready_only } => {
            parse!(Pod, |o| o.targets(default_ns, ready_only, skipped))
        }
        Lookup::EndpointSlices => parse!(EndpointSlice, |o| o.targets(default_ns, skipped)),
    };
    Ok(parsed)
}

// ---- names ----

/// An IPv6 address in full (eight 4-digit groups) with `-` for `:`: a valid DNS label that CoreDNS's
/// `pods` answers resolve back (it maps `-` to `:`), never starting with `-` nor holding `--`.
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:04x}"))
            .collect::<Vec<_>>()
            .join("-"),
    }
}

/// Turn targets into sorted, unique, valid node names. On dual-stack services an owner with both
/// families keeps only its IPv4 address (one pod, one node name).
pub(super) fn node_names<'a>(
    naming: &Naming,
    targets: impl Iterator<Item = &'a Target>,
    skipped: &mut Skipped,
) -> Vec<String> {
    let targets: Vec<&Target> = targets.collect();
    let mut has_v4: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // Only dual-stack sets need the owner index.
    if targets.iter().any(|t| t.owner.is_some() && t.ip.is_ipv6()) {
        for t in &targets {
            if let (Some(o), IpAddr::V4(_)) = (&t.owner, t.ip) {
                has_v4.insert(o.as_str());
            }
        }
    }
    let domain = naming.cluster_domain.as_str();
    let mut names: Vec<String> = targets
        .into_iter()
        .filter(|t| match (&t.owner, t.ip) {
            (Some(o), IpAddr::V6(_)) => !has_v4.contains(o.as_str()),
            _ => true,
        })
        .filter_map(|t| {
            let host = match naming.mode {
                NameMode::Ip => t.address.clone(),
                NameMode::Dns => format!("{}.{}.pod.{domain}", dashed(t.ip), t.namespace),
                NameMode::Hostname => {
                    let service = naming.service_name.as_deref().or(t.service.as_deref());
                    match (&t.hostname, service) {
                        (Some(h), Some(s)) => format!("{h}.{s}.{}.svc.{domain}", t.namespace),
                        _ => {
                            skipped.bad_name += 1;
                            return None;
                        }
                    }
                }
            };
            let name = crate::node_name::join(&naming.basename, &host);
            if name.is_none() {
                skipped.bad_name += 1;
            }
            name
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming(mode: NameMode) -> Naming {
        Naming {
            basename: "app".into(),
            mode,
            service_name: None,
            cluster_domain: "cluster.local".into(),
        }
    }

    fn names(lookup: Lookup, mode: NameMode, body: &str) -> Vec<String> {
        let mut s = Skipped::default();
        let l = parse_list(lookup, body.as_bytes(), "default", &mut s).unwrap();
        node_names(&naming(mode), l.objects.values().flatten(), &mut s)
    }

    const ENDPOINTS: &str = r#"{"kind":"EndpointsList","apiVersion":"v1","metadata":{"resourceVersion":"42"},
      "items":[{"metadata":{"name":"myapp","namespace":"prod","resourceVersion":"40"},
        "subsets":[{"addresses":[
          {"ip":"10.0.0.1","hostname":"myapp-0","nodeName":"n1","targetRef":{"kind":"Pod","namespace":"prod","name":"myapp-0","uid":"u1"}},
          {"ip":"10.0.0.2"}],
          "notReadyAddresses":[{"ip":"10.0.0.3","targetRef":{"kind":"Pod","namespace":"prod","name":"myapp-2"}}],
          "ports":[{"name":"epmd","port":4369,"protocol":"TCP"}]}]},
        {"metadata":{"name":"empty","namespace":"prod"},"subsets":null}]}"#;

    #[test]
    fn endpoints_ready_addresses_with_and_without_target_ref() {
        assert_eq!(
            names(Lookup::Endpoints, NameMode::Ip, ENDPOINTS),
            vec!["app@10.0.0.1", "app@10.0.0.2"]
        );
        assert_eq!(
            names(Lookup::Endpoints, NameMode::Dns, ENDPOINTS),
            vec![
                "app@10-0-0-1.prod.pod.cluster.local",
                "app@10-0-0-2.prod.pod.cluster.local"
            ]
        );
        // The address without a hostname cannot have a :hostname name; the service comes from
        // the Endpoints object's name when kubernetes_service_name is not set.
        assert_eq!(
            names(Lookup::Endpoints, NameMode::Hostname, ENDPOINTS),
            vec!["app@myapp-0.myapp.prod.svc.cluster.local"]
        );
        let mut s = Skipped::default();
        let l = parse_list(Lookup::Endpoints, ENDPOINTS.as_bytes(), "x", &mut s).unwrap();
        assert_eq!(l.resource_version.as_deref(), Some("42"));
    }

    fn pod(name: &str, ip: &str, phase: &str, ready: &str, deleting: bool) -> String {
        let del = if deleting {
            r#","deletionTimestamp":"2026-01-01T00:00:00Z""#
        } else {
            ""
        };
        format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"default","labels":{{"app":"myapp"}}{del}}},
            "spec":{{"hostname":"{name}","subdomain":"myapp-headless","containers":[{{"name":"c","image":"x"}}]}},
            "status":{{"phase":"{phase}","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],
              "conditions":[{{"type":"Initialized","status":"True"}},{{"type":"Ready","status":"{ready}"}}]}}}}"#
        )
    }

    fn pods_body() -> String {
        format!(
            r#"{{"kind":"PodList","metadata":{{"resourceVersion":"7"}},"items":[{},{},{},{},{},{},{}]}}"#,
            pod("a", "10.1.0.1", "Running", "True", false),
            pod("b", "10.1.0.2", "Pending", "False", false),
            pod("c", "10.1.0.3", "Running", "False", false),
            pod("d", "10.1.0.4", "Running", "True", true),
            pod("e", "fd00::5", "Running", "True", false),
            // Scheduled, no IP yet: nothing to connect to in any mode.
            r#"{"metadata":{"name":"f","namespace":"default"},"spec":{},"status":{"phase":"Pending"}}"#,
            // Only what libcluster reads: a podIP, no phase, no conditions.
            r#"{"metadata":{"name":"g","namespace":"other"},"spec":{"hostname":"g-0"},"status":{"podIP":"10.1.0.7"}}"#,
        )
    }

    #[test]
    fn pods_with_an_ip_whatever_their_phase_readiness_or_deletion_by_default() {
        let body = pods_body();
        let all = Lookup::Pods { ready_only: false };
        assert_eq!(
            names(all, NameMode::Ip, &body),
            vec![
                "app@10.1.0.1",
                "app@10.1.0.2",
                "app@10.1.0.3",
                "app@10.1.0.4",
                "app@10.1.0.7",
                "app@fd00::5"
            ]
        );
        assert_eq!(
            names(all, NameMode::Dns, &body)[..2],
            [
                "app@10-1-0-1.default.pod.cluster.local",
                "app@10-1-0-2.default.pod.cluster.local"
            ]
        );
        assert!(names(all, NameMode::Dns, &body)
            .contains(&"app@10-1-0-7.other.pod.cluster.local".to_string()));
    }

    #[test]
    fn pods_ready_only_takes_running_ready_pods_that_are_not_being_deleted() {
        let body = pods_body();
        let ready = Lookup::Pods { ready_only: true };
        assert_eq!(
            names(ready, NameMode::Ip, &body),
            vec!["app@10.1.0.1", "app@fd00::5"]
        );
        assert_eq!(
            names(ready, NameMode::Dns, &body),
            vec![
                "app@10-1-0-1.default.pod.cluster.local",
                "app@fd00-0000-0000-0000-0000-0000-0000-0005.default.pod.cluster.local"
            ]
        );
        assert_eq!(
            names(ready, NameMode::Hostname, &body),
            vec![
                "app@a.myapp-headless.default.svc.cluster.local",
                "app@e.myapp-headless.default.svc.cluster.local"
            ]
        );
    }

    const SLICES: &str = r#"{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{"resourceVersion":"99"},
      "items":[
       {"metadata":{"name":"myapp-abc","namespace":"default","labels":{"kubernetes.io/service-name":"myapp"}},
        "addressType":"IPv4",
        "endpoints":[
          {"addresses":["10.2.0.1"],"conditions":{"ready":true,"serving":true,"terminating":false},"hostname":"p1","targetRef":{"kind":"Pod","namespace":"default","name":"p1"}},
          {"addresses":["10.2.0.2"],"conditions":{"ready":false,"serving":true,"terminating":true},"targetRef":{"kind":"Pod","namespace":"default","name":"p2"}},
          {"addresses":["10.2.0.3"],"conditions":{"ready":false},"targetRef":{"kind":"Pod","namespace":"default","name":"p3"}},
          {"addresses":["10.2.0.4"],"conditions":{},"targetRef":{"kind":"Pod","namespace":"default","name":"p4"}}],
        "ports":[{"name":"epmd","port":4369}]},
       {"metadata":{"name":"myapp-v6","namespace":"default","labels":{"kubernetes.io/service-name":"myapp"}},
        "addressType":"IPv6",
        "endpoints":[
          {"addresses":["fd00::1"],"conditions":{"ready":true},"targetRef":{"kind":"Pod","namespace":"default","name":"p1"}},
          {"addresses":["fd00::9"],"conditions":{"ready":true},"targetRef":{"kind":"Pod","namespace":"default","name":"p9"}}]},
       {"metadata":{"name":"myapp-fqdn","namespace":"default"},"addressType":"FQDN",
        "endpoints":[{"addresses":["example.com"]}]},
       {"metadata":{"name":"myapp-def","namespace":"default","labels":{"kubernetes.io/service-name":"myapp"}},
        "addressType":"IPv4","endpoints":null}]}"#;

    #[test]
    fn endpointslices_conditions_dual_stack_and_several_slices() {
        // p1 has both families: IPv4 wins; p2 terminating, p3 not ready; p4 unknown = ready;
        // p9 is IPv6 only.
        assert_eq!(
            names(Lookup::EndpointSlices, NameMode::Ip, SLICES),
            vec!["app@10.2.0.1", "app@10.2.0.4", "app@fd00::9"]
        );
        assert_eq!(
            names(Lookup::EndpointSlices, NameMode::Hostname, SLICES),
            vec!["app@p1.myapp.default.svc.cluster.local"]
        );
    }

    #[test]
    fn cluster_domain_applies_to_every_generated_name() {
        let mut n = naming(NameMode::Dns);
        n.cluster_domain = "corp.example".into();
        let mut s = Skipped::default();
        let l = parse_list(Lookup::Endpoints, ENDPOINTS.as_bytes(), "d", &mut s).unwrap();
        let got = node_names(&n, l.objects.values().flatten(), &mut s);
        assert!(
            got.iter().all(|x| x.ends_with(".pod.corp.example")),
            "{got:?}"
        );
        n.mode = NameMode::Hostname;
        n.service_name = Some("svc".into());
        let got = node_names(&n, l.objects.values().flatten(), &mut s);
        assert_eq!(got, vec!["app@myapp-0.svc.prod.svc.corp.example"]);
    }

    #[test]
    fn bad_addresses_are_dropped_and_counted() {
        let body = r#"{"items":[{"metadata":{"name":"x"},"subsets":[{"addresses":[
            {"ip":"not-an-ip"},{"ip":"10.0.0.1","hostname":"bad host"}]}]}]}"#;
        let mut s = Skipped::default();
        let l = parse_list(Lookup::Endpoints, body.as_bytes(), "d", &mut s).unwrap();
        assert_eq!(s.bad_ip, 1);
        let got = node_names(
            &naming(NameMode::Hostname),
            l.objects.values().flatten(),
            &mut s,
        );
        assert!(got.is_empty());
        assert_eq!(s.bad_name, 1);
    }

    #[test]
    fn malformed_and_wrongly_typed_bodies_are_errors() {
        let mut s = Skipped::default();
        assert!(parse_list(
            Lookup::Pods { ready_only: false },
            b"{\"items\":[",
            "d",
            &mut s
        )
        .is_err());
        assert!(parse_list(
            Lookup::Pods { ready_only: false },
            b"{\"items\":{}}",
            "d",
            &mut s
        )
        .is_err());
        assert!(parse_list(Lookup::Pods { ready_only: false }, b"<html>", "d", &mut s).is_err());
    }

    #[test]
    fn ip_names_keep_the_address_as_the_api_wrote_it() {
        // libcluster interpolates the API's text: so must we, or a node named after its POD_IP
        // (the same text) would be dialled under another name.
        let body = r#"{"items":[{"metadata":{"name":"x","namespace":"d"},"subsets":[{"addresses":[
            {"ip":"FD00:0:0::4","targetRef":{"kind":"Pod","namespace":"d","name":"p"}},
            {"ip":" 10.0.0.1 ","targetRef":{"kind":"Pod","namespace":"d","name":"q"}}]}]}]}"#;
        assert_eq!(
            names(Lookup::Endpoints, NameMode::Ip, body),
            vec!["app@10.0.0.1", "app@FD00:0:0::4"]
        );
        assert_eq!(
            names(Lookup::Endpoints, NameMode::Dns, body),
            vec![
                "app@10-0-0-1.d.pod.cluster.local",
                "app@fd00-0000-0000-0000-0000-0000-0000-0004.d.pod.cluster.local"
            ]
        );
    }

    #[test]
    fn endpoints_name_every_address_even_two_families_of_one_pod() {
        // libcluster connects every ready address of an Endpoints object; only EndpointSlices
        // (not a libcluster mode) keep one family per pod.
        let body = r#"{"items":[{"metadata":{"name":"x","namespace":"d"},"subsets":[{"addresses":[
            {"ip":"10.0.0.1","targetRef":{"kind":"Pod","namespace":"d","name":"p"}},
            {"ip":"fd00::1","targetRef":{"kind":"Pod","namespace":"d","name":"p"}}]}]}]}"#;
        assert_eq!(
            names(Lookup::Endpoints, NameMode::Ip, body),
            vec!["app@10.0.0.1", "app@fd00::1"]
        );
    }

    #[test]
    fn ipv6_dns_labels_are_valid() {
        assert_eq!(
            dashed("::1".parse().unwrap()),
            "0000-0000-0000-0000-0000-0000-0000-0001"
        );
        assert_eq!(dashed("10.0.0.1".parse().unwrap()), "10-0-0-1");
    }
}
