//! The URLs of Consul's endpoints: a query in a datacenter (with `filter`, `passing` and the
//! blocking `index`/`wait`), the datacenter list; the base URL's query string is kept.

use reqwest::Url;

use super::{Config, Endpoint, Query, Service};
use crate::event::{Error, ErrorKind};

/// The URL of `query` in `dc` (the base URL's query string is kept; `dc` wins over a `dc` in it).
pub(super) fn query_url(
    cfg: &Config,
    query: &Query,
    dc: Option<&str>,
    index: u64,
    blocking: bool,
) -> Result<Url, Error> {
    let mut url = base(cfg)?;
    let segments: Vec<&str> = match (query.endpoint, &query.service) {
        (Endpoint::Agent, Service::Id(id)) => vec!["v1", "agent", "service", id],
        (Endpoint::Agent, Service::Name(n)) => vec!["v1", "agent", "health", "service", "name", n],
        (Endpoint::Health, Service::Name(n)) => vec!["v1", "health", "service", n],
        (Endpoint::Catalog, Service::Name(n)) => vec!["v1", "catalog", "service", n],
        (_, Service::Id(_)) => {
            return Err(Error::new(
                ErrorKind::Config,
                "only the Agent endpoint looks services up by id; use service: [name: ...]",
            ))
        }
    };
    url.path_segments_mut()
        .map_err(|_| bad_base(cfg))?
        .clear()
        .extend(segments);
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !(dc.is_some() && k == "dc"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some(dc) = dc {
        pairs.push(("dc".into(), dc.into()));
    }
    if query.passing && query.endpoint != Endpoint::Catalog {
        pairs.push(("passing".into(), "true".into()));
    }
    // Consul's filter expressions apply to the Health and Catalog lists (the Agent's per-service
    // endpoints take none).
    if let (Some(f), Endpoint::Health | Endpoint::Catalog) = (&query.filter, query.endpoint) {
        pairs.push(("filter".into(), f.clone()));
    }
    if blocking && index > 0 {
        pairs.push(("index".into(), index.to_string()));
        pairs.push(("wait".into(), format!("{}ms", cfg.wait.as_millis())));
    }
    set_query(&mut url, &pairs);
    Ok(url)
}

pub(super) fn datacenters_url(cfg: &Config) -> Result<Url, Error> {
    let mut url = base(cfg)?;
    url.path_segments_mut()
        .map_err(|_| bad_base(cfg))?
        .clear()
        .extend(["v1", "catalog", "datacenters"]);
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "dc")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    set_query(&mut url, &pairs);
    Ok(url)
}

fn set_query(url: &mut Url, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
}

fn base(cfg: &Config) -> Result<Url, Error> {
    let url = Url::parse(&cfg.base_url).map_err(|_| bad_base(cfg))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(bad_base(cfg));
    }
    Ok(url)
}

fn bad_base(cfg: &Config) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "base_url {:?} is not an http:// or https:// URL; set base_url or CONSUL_HTTP_ADDR",
            cfg.base_url
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::fixtures::{config, query};
    use std::time::Duration;

    #[test]
    fn urls_are_libcluster_consuls_with_dc_filter_and_blocking_parameters() {
        let mut c = config("http://127.0.0.1:8500/ignored/path?stale=");
        c.wait = Duration::from_secs(30);
        let mut q = query(Endpoint::Health, Service::Name("my app".into()));
        q.passing = true;
        q.filter = Some("\"canary\" in Service.Tags".into());
        let u = query_url(&c, &q, Some("dc2"), 0, true).unwrap();
        assert_eq!(u.path(), "/v1/health/service/my%20app");
        let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                ("stale".into(), "".into()),
                ("dc".into(), "dc2".into()),
                ("passing".into(), "true".into()),
                ("filter".into(), "\"canary\" in Service.Tags".into()),
            ]
        );
        // with an index: index and wait
        let u = query_url(&c, &q, None, 42, true).unwrap();
        assert!(u.query().unwrap().ends_with("index=42&wait=30000ms"), "{u}");
        // polling never sends an index
        let u = query_url(&c, &q, None, 42, false).unwrap();
        assert!(!u.query().unwrap().contains("index"), "{u}");

        let c = config("https://consul:8501?dc=dc1");
        let q = query(Endpoint::Agent, Service::Id("web-1".into()));
        let u = query_url(&c, &q, None, 0, true).unwrap();
        assert_eq!(
            u.as_str(),
            "https://consul:8501/v1/agent/service/web-1?dc=dc1"
        );
        let q = query(Endpoint::Agent, Service::Name("web".into()));
        let u = query_url(&c, &q, Some("dc3"), 0, true).unwrap();
        assert_eq!(
            u.as_str(),
            "https://consul:8501/v1/agent/health/service/name/web?dc=dc3"
        );
        let q = query(Endpoint::Catalog, Service::Name("web".into()));
        let u = query_url(&c, &q, None, 0, true).unwrap();
        assert_eq!(
            u.as_str(),
            "https://consul:8501/v1/catalog/service/web?dc=dc1"
        );
        assert_eq!(
            datacenters_url(&c).unwrap().as_str(),
            "https://consul:8501/v1/catalog/datacenters"
        );
        let q = query(Endpoint::Health, Service::Id("x".into()));
        assert_eq!(
            query_url(&c, &q, None, 0, true).unwrap_err().kind,
            ErrorKind::Config
        );
        assert_eq!(
            base(&config("consul:8500")).unwrap_err().kind,
            ErrorKind::Config
        );
    }
}
