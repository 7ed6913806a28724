//! Rancher (1.x) discovery: ask the metadata service for this container's service and name every
//! container of it `basename@<first ip>`. One poll per task; any failure is an error, never an empty
//! set.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::event::{Error, ErrorKind, Event, Sink};
use crate::http::{self, ClientOptions, Roots, Stage, TransportError};

const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub url: String,
    pub basename: String,
    pub timeout: Duration,
}

#[derive(Deserialize)]
struct Service {
    // `containers` is required: a body without it is not a service.
    containers: Vec<Container>,
}

#[derive(Deserialize)]
struct Container {
    #[serde(default)]
    ips: Option<Vec<String>>,
    #[serde(default)]
    primary_ip: Option<String>,
}

/// Node names from a `/self/service` body.
fn names_from_body(basename: &str, body: &[u8]) -> Result<Vec<String>, Error> {
    let svc: Service = serde_json::from_slice(body).map_err(|e| {
        Error::new(
            ErrorKind::Malformed,
            format!("the Rancher metadata answer is not a service object with containers: {e}"),
        )
    })?;
    let mut names: Vec<String> = svc
        .containers
        .iter()
        .filter_map(|c| {
            let ip = c
                .ips
                .as_ref()
                .and_then(|ips| ips.first().cloned())
                .or_else(|| c.primary_ip.clone())?;
            let ip: std::net::IpAddr = ip.trim().parse().ok()?;
            crate::node_name::from_ip(basename, ip)
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

async fn fetch(cfg: &Config) -> Result<Vec<String>, Error> {
    // An https metadata URL is verified against the system roots.
    let opts = ClientOptions {
        timeout: Some(cfg.timeout),
        ..ClientOptions::new(Roots::for_url(&cfg.url))
    };
    let client = http::client(opts, |e| Error::new(ErrorKind::Tls, e.to_string()))?;
    let failed = |t: TransportError| {
        let hint = match t.stage {
            Stage::TooLarge => "",
            _ => "; is the Rancher metadata service reachable (set rancher_metadata_url)?",
        };
        Error::new(t.kind, format!("GET {}: {}{hint}", cfg.url, t.detail))
    };
    let req = client
        .get(&cfg.url)
        .header(reqwest::header::ACCEPT, "application/json");
    let resp = http::send(req).await.map_err(failed)?;
    let status = resp.status();
    if !status.is_success() {
        let kind = match status.as_u16() {
            404 => ErrorKind::NotFound,
            other => http::status_kind(other),
        };
        return Err(Error::new(
            kind,
            format!(
                "GET {}: HTTP {status}; check rancher_metadata_url and that this container runs \
                 in a Rancher service",
                cfg.url
            ),
        ));
    }
    let body = http::read_body(resp, MAX_BODY).await.map_err(failed)?;
    names_from_body(&cfg.basename, &body).map_err(|e| {
        Error::new(
            e.kind,
            format!("GET {}: {}; check rancher_metadata_url", cfg.url, e.message),
        )
    })
}

/// One poll: `Nodes` or `Error`.
pub async fn poll_once(cfg: Arc<Config>, sink: Arc<dyn Sink>) {
    match fetch(&cfg).await {
        Ok(names) => sink.send(Event::Nodes(names)),
        Err(e) => sink.send(Event::Error(e)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_container_by_its_first_ip() {
        let body = br#"{"name":"web","stack_name":"app","containers":[
            {"name":"web-1","ips":["10.42.0.2","10.42.0.3"],"primary_ip":"10.42.0.2"},
            {"name":"web-2","ips":["10.42.0.4"]},
            {"name":"web-3","ips":[],"primary_ip":"10.42.0.5"},
            {"name":"web-4","ips":["garbage"]}]}"#;
        assert_eq!(
            names_from_body("app", body).unwrap(),
            vec!["app@10.42.0.2", "app@10.42.0.4", "app@10.42.0.5"]
        );
    }

    #[test]
    fn a_body_that_is_not_a_service_is_an_error_not_zero_nodes() {
        for body in [&b"{}"[..], b"Not found", b"{\"containers\":[", b"[]"] {
            let e = names_from_body("app", body).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Malformed);
        }
    }
}
