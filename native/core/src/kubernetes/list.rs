//! One list of the API objects: the poll, the start of every watch and the fallback while the
//! watch is forbidden.

use std::sync::Arc;

use super::api::{self, Skipped};
use super::client::{self, ApiClient};
use super::Config;
use crate::event::{Error, ErrorKind, Event, Sink};

pub(super) async fn list(cfg: &Config, client: &ApiClient) -> Result<api::ParsedList, Error> {
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
pub(super) async fn poll_once(cfg: Arc<Config>, sink: Arc<dyn Sink>) {
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
