//! DigitalOcean discovery: list the account's Droplets (`GET /v2/droplets`, optionally filtered by
//! tag or name), every page of them, and name each active Droplet `basename@<address>` by the
//! address of the configured network (`private`/`public`, IPv4 or IPv6). With a TCP health check,
//! a Droplet is named only when its port accepts a connection within the timeout (all probes run
//! concurrently). One poll per task: one `Nodes` or one `Error`.
//!
//! What makes a round an error, never a zero or partial list: a failed page (transport error, any
//! status but 200), a body that is not a Droplet list page, a `links.pages.next` without a page
//! number, a page count past [`MAX_PAGES`], or a total that disagrees with `meta.total`.
//!
//! Rate limits: a 429 is retried within the round after its `Retry-After` (seconds), else after
//! `ratelimit-reset` (Unix time), else after a doubling backoff, as long as the waits stay within
//! the round's rate-limit budget. Past it, the round fails and no request is sent for the same API
//! URL and token until the server's time has come, at most [`crate::http::MAX_SERVER_WAIT`] (the
//! next rounds fail at once, saying so).
//!
//! The bearer token only ever goes to the configured API URL: the `next` link is read for its page
//! number, never followed as a URL.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::event::{Error, ErrorKind, Event, Sink};
use crate::http::{self, ClientOptions, Roots, ServerWait, Stage, TransportError};

/// The API's largest page.
const PER_PAGE: u32 = 200;
/// More pages than this (40,000 Droplets at 200 a page) is taken as a server that never ends.
const MAX_PAGES: u32 = 200;
/// One page of 200 Droplets is ~1 MB; anything far larger is not a page.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Health probes in flight at once.
const MAX_PROBES: usize = 256;
/// Attempts of one page that got 429 (the first included).
const RATE_LIMIT_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Private,
    Public,
}

impl Network {
    fn as_str(self) -> &'static str {
        match self {
            Network::Private => "private",
            Network::Public => "public",
        }
    }
}

/// Which Droplets the API lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    Tag(String),
    Name(String),
}

/// How a Droplet's address becomes a node name.
#[derive(Debug, Clone)]
pub struct Naming {
    pub network: Network,
    pub ipv6: bool,
    /// `None`: the Droplet's name.
    pub basename: Option<String>,
}

/// A TCP connect that must succeed within `timeout` before a Droplet is named.
#[derive(Debug, Clone, Copy)]
pub struct HealthCheck {
    pub port: u16,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `https://api.digitalocean.com` or a mirror / test server (no trailing slash needed).
    pub api_url: String,
    pub token: String,
    pub filter: Filter,
    pub naming: Naming,
    pub health_check: Option<HealthCheck>,
    /// A PEM CA bundle to verify the API against instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Deadline of one request (headers and body).
    pub request_timeout: Duration,
    /// The longest a round waits in total for 429s before it fails.
    pub rate_limit_budget: Duration,
}

#[derive(Deserialize)]
struct Page {
    // Required: a body without `droplets` is not a list page.
    droplets: Vec<Droplet>,
    #[serde(default)]
    links: Option<Links>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Links {
    #[serde(default)]
    pages: Option<Pages>,
}

#[derive(Deserialize)]
struct Pages {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    total: Option<u64>,
}

#[derive(Deserialize)]
struct Droplet {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    networks: Option<Networks>,
}

#[derive(Deserialize)]
struct Networks {
    #[serde(default)]
    v4: Vec<Address>,
    #[serde(default)]
    v6: Vec<Address>,
}

#[derive(Deserialize)]
struct Address {
    #[serde(default)]
    ip_address: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// A named Droplet: its node name and the address a health check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub node: String,
    pub(crate) ip: IpAddr,
}

/// What one page holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageNames {
    pub named: Vec<Named>,
    /// Droplets on the page, whatever their status.
    pub(crate) droplets: u64,
    /// Active Droplets without an address of the configured network and family, or whose name
    /// would not be a valid node name.
    pub(crate) skipped: u64,
    /// The page number of `links.pages.next`, if there is one.
    pub(crate) next_page: Option<u32>,
    pub(crate) total: Option<u64>,
}

/// Names from one `/v2/droplets` page: every `active` Droplet with an address of the configured
/// network and family (the first such address, as given), `basename@address`.
pub fn names_from_page(naming: &Naming, body: &[u8]) -> Result<PageNames, Error> {
    let page: Page = serde_json::from_slice(body).map_err(|e| {
        Error::new(
            ErrorKind::Malformed,
            format!("the answer is not a page of Droplets (an object with a droplets list): {e}"),
        )
    })?;
    let next = page.links.and_then(|l| l.pages).and_then(|p| p.next);
    let next_page = match next {
        None => None,
        Some(url) => Some(page_number(&url).ok_or_else(|| {
            Error::new(
                ErrorKind::Malformed,
                format!("links.pages.next has no page number: {url:?}"),
            )
        })?),
    };
    let mut out = PageNames {
        droplets: page.droplets.len() as u64,
        next_page,
        total: page.meta.and_then(|m| m.total),
        ..PageNames::default()
    };
    let kind = naming.network.as_str();
    for d in &page.droplets {
        if d.status.as_deref() != Some("active") {
            continue;
        }
        let addresses = match (&d.networks, naming.ipv6) {
            (Some(n), false) => &n.v4[..],
            (Some(n), true) => &n.v6[..],
            (None, _) => &[][..],
        };
        let named = addresses
            .iter()
            .find(|a| a.kind.as_deref() == Some(kind))
            .and_then(|a| a.ip_address.as_deref())
            .and_then(|text| {
                let ip: IpAddr = text.parse().ok()?;
                if ip.is_ipv6() != naming.ipv6 {
                    return None;
                }
                let basename = naming.basename.as_deref().or(d.name.as_deref())?;
                // The address as the API wrote it (libcluster_droplet's names), once it is
                // known to be an address of the right family.
                let node = crate::node_name::join(basename, text)?;
                Some(Named { node, ip })
            });
        match named {
            Some(n) => out.named.push(n),
            None => out.skipped += 1,
        }
    }
    Ok(out)
}

/// The `page` query parameter of a `next` link.
fn page_number(url: &str) -> Option<u32> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "page").then(|| v.parse::<u32>().ok()).flatten()
    })
}

/// The URL of one page.
fn page_url(cfg: &Config, page: u32) -> String {
    let base = cfg.api_url.trim_end_matches('/');
    let mut url = format!("{base}/v2/droplets?page={page}&per_page={PER_PAGE}");
    match &cfg.filter {
        Filter::All => {}
        Filter::Tag(t) => {
            url.push_str("&tag_name=");
            url.push_str(&encode(t));
        }
        Filter::Name(n) => {
            url.push_str("&name=");
            url.push_str(&encode(n));
        }
    }
    url
}

/// Percent-encoding of a query value (everything but RFC 3986 unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Until when requests for one API URL and token must wait, after a 429 the round could not wait
/// out. Keyed by a hash of both, so the token is not kept twice.
fn rate_gate() -> &'static Mutex<HashMap<[u8; 32], Instant>> {
    static GATE: OnceLock<Mutex<HashMap<[u8; 32], Instant>>> = OnceLock::new();
    GATE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn gate_key(cfg: &Config) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(cfg.api_url.trim_end_matches('/').as_bytes());
    h.update([0]);
    h.update(cfg.token.as_bytes());
    h.finalize().into()
}

/// How long a 429 asks to wait: `Retry-After` seconds, else `ratelimit-reset` (Unix time) minus
/// now, else `None`; at most [`http::MAX_SERVER_WAIT`].
fn rate_limit_wait(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<ServerWait> {
    http::retry_after(headers).or_else(|| http::ratelimit_reset(headers, now))
}

struct Fetcher<'a> {
    cfg: &'a Config,
    client: reqwest::Client,
    rate_waited: Duration,
}

impl Fetcher<'_> {
    fn transport_error(&self, url: &str, t: TransportError) -> Error {
        if t.stage == Stage::TooLarge {
            return Error::new(t.kind, format!("GET {url}: {}", t.detail));
        }
        Error::new(
            t.kind,
            format!(
                "GET {url}: {}; is the DigitalOcean API reachable (check api_url{})?",
                t.detail,
                if self.cfg.ca_file.is_some() {
                    " and cacertfile"
                } else {
                    ""
                }
            ),
        )
    }

    /// One page's body, retrying 429s within the round's budget.
    async fn page(&mut self, page: u32) -> Result<Vec<u8>, Error> {
        let url = page_url(self.cfg, page);
        let mut backoff = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            let req = self
                .client
                .get(&url)
                .bearer_auth(&self.cfg.token)
                .header(reqwest::header::ACCEPT, "application/json");
            let resp = http::send(req)
                .await
                .map_err(|t| self.transport_error(&url, t))?;
            let status = resp.status();
            if status.as_u16() == 429 {
                let asked = rate_limit_wait(resp.headers(), SystemTime::now());
                let wait = asked.map_or(backoff, |w| w.wait);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                let left = self.cfg.rate_limit_budget.saturating_sub(self.rate_waited);
                if attempt < RATE_LIMIT_ATTEMPTS && wait <= left {
                    self.rate_waited += wait;
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if let Some(w) = asked {
                    if let Ok(mut gate) = rate_gate().lock() {
                        gate.insert(gate_key(self.cfg), Instant::now() + w.wait);
                    }
                }
                return Err(Error::new(
                    ErrorKind::HttpStatus,
                    format!(
                        "GET {url}: HTTP 429 Too Many Requests after {attempt} attempt(s): the \
                         token's API rate limit (250 requests a minute, 5,000 an hour) is used \
                         up{}; raise polling_interval, or use this token for fewer clients",
                        match asked {
                            Some(w) if w.wait < w.asked => format!(
                                "; the API asks to wait {} s, this client asks again in {} s",
                                w.asked.as_secs(),
                                w.wait.as_secs()
                            ),
                            Some(w) => format!("; the API asks to wait {} s", w.asked.as_secs()),
                            None => String::new(),
                        }
                    ),
                ));
            }
            if !status.is_success() {
                let code = status.as_u16();
                // The API's error object ({"id": ..., "message": ...}), if it sent one.
                let detail = http::read_body(resp, 64 * 1024)
                    .await
                    .ok()
                    .and_then(|b| api_message(&b))
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default();
                return Err(status_error(&url, code, &detail, &self.cfg.filter));
            }
            return http::read_body(resp, MAX_BODY)
                .await
                .map_err(|t| self.transport_error(&url, t));
        }
    }
}

fn api_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ApiError {
        message: String,
    }
    let e: ApiError = serde_json::from_slice(body).ok()?;
    Some(e.message.chars().take(200).collect())
}

fn status_error(url: &str, code: u16, detail: &str, filter: &Filter) -> Error {
    let scope = match filter {
        Filter::Tag(_) => "droplet:read and tag:read scopes (tag_name needs tag:read)",
        _ => "droplet:read scope",
    };
    match code {
        401 => Error::new(
            ErrorKind::Unauthorized,
            format!(
                "GET {url}: HTTP 401 Unauthorized{detail}: the token is invalid or expired; \
                 create a new one (API > Tokens) with the {scope} and set :token"
            ),
        ),
        403 => Error::new(
            ErrorKind::Forbidden,
            format!(
                "GET {url}: HTTP 403 Forbidden{detail}: the token lacks the {scope}; create a \
                 token with custom scopes that include it (API > Tokens) and set :token"
            ),
        ),
        404 => Error::new(
            ErrorKind::NotFound,
            format!("GET {url}: HTTP 404 Not Found{detail}; check api_url"),
        ),
        _ => Error::new(
            ErrorKind::HttpStatus,
            format!("GET {url}: HTTP {code}{detail}"),
        ),
    }
}

fn client(cfg: &Config) -> Result<reqwest::Client, Error> {
    let roots = match &cfg.ca_file {
        Some(path) => Roots::CaFile(path),
        None => Roots::for_url(&cfg.api_url),
    };
    let opts = ClientOptions {
        timeout: Some(cfg.request_timeout),
        ..ClientOptions::new(roots)
    };
    http::client(opts, |e| Error::new(ErrorKind::Tls, e.to_string()))
}

/// Every page, named. An error for any page is the round's error.
async fn list(cfg: &Config) -> Result<Vec<Named>, Error> {
    if let Ok(mut gate) = rate_gate().lock() {
        let now = Instant::now();
        gate.retain(|_, until| *until > now);
        if let Some(until) = gate.get(&gate_key(cfg)) {
            return Err(Error::new(
                ErrorKind::HttpStatus,
                format!(
                    "{}: rate limited (HTTP 429); no request is sent for another {} s, as the \
                     API asked",
                    cfg.api_url,
                    (*until - now).as_secs() + 1
                ),
            ));
        }
    }
    let mut fetcher = Fetcher {
        cfg,
        client: client(cfg)?,
        rate_waited: Duration::ZERO,
    };
    let mut named = Vec::new();
    let mut droplets = 0u64;
    let mut total = None;
    let mut page = 1u32;
    loop {
        let body = fetcher.page(page).await?;
        let p = names_from_page(&cfg.naming, &body)
            .map_err(|e| Error::new(e.kind, format!("{}: {}", page_url(cfg, page), e.message)))?;
        droplets += p.droplets;
        total = p.total.or(total);
        named.extend(p.named);
        match p.next_page {
            None => break,
            Some(next) if next > page && next <= MAX_PAGES => page = next,
            Some(next) => {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "{}: links.pages.next points to page {next} (after page {page}, at most \
                         {MAX_PAGES} pages are read)",
                        page_url(cfg, page)
                    ),
                ))
            }
        }
    }
    if let Some(total) = total {
        if total != droplets {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "{}: the pages held {droplets} Droplet(s) but meta.total says {total} (the \
                     list changed while it was read?); the next round reads it again",
                    cfg.api_url
                ),
            ));
        }
    }
    Ok(named)
}

/// Whether `ip:port` accepts a TCP connection within `timeout`.
async fn tcp_healthy(ip: IpAddr, port: u16, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect(SocketAddr::new(ip, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// The nodes of `named` that pass `check` (all of them without one), probed concurrently; sorted,
/// without duplicates.
async fn healthy_names(named: Vec<Named>, check: Option<HealthCheck>) -> Vec<String> {
    let mut names: Vec<String> = match check {
        None => named.into_iter().map(|n| n.node).collect(),
        Some(hc) => {
            futures::stream::iter(named)
                .map(|n| async move {
                    tcp_healthy(n.ip, hc.port, hc.timeout)
                        .await
                        .then_some(n.node)
                })
                .buffer_unordered(MAX_PROBES)
                .filter_map(|n| async move { n })
                .collect()
                .await
        }
    };
    names.sort_unstable();
    names.dedup();
    names
}

/// One poll: `Nodes` or `Error`.
pub async fn poll_once(cfg: Arc<Config>, sink: Arc<dyn Sink>) {
    let result = match list(&cfg).await {
        Ok(named) => Ok(healthy_names(named, cfg.health_check).await),
        Err(e) => Err(e),
    };
    match result {
        Ok(names) => sink.send(Event::Nodes(names)),
        Err(e) => sink.send(Event::Error(e)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming(network: Network, ipv6: bool, basename: Option<&str>) -> Naming {
        Naming {
            network,
            ipv6,
            basename: basename.map(str::to_string),
        }
    }

    const PAGE: &[u8] = br#"{"droplets":[
        {"id":1,"name":"web-1","status":"active","networks":{
            "v4":[{"ip_address":"203.0.113.1","type":"public"},{"ip_address":"10.10.0.2","type":"private"}],
            "v6":[{"ip_address":"2604:a880:800:10::5e:f001","type":"public"}]}},
        {"id":2,"name":"web-2","status":"new","networks":{"v4":[{"ip_address":"10.10.0.3","type":"private"}]}},
        {"id":3,"name":"web-3","status":"active","networks":{"v4":[{"ip_address":"203.0.113.3","type":"public"}],"v6":[]}},
        {"id":4,"name":"bad name","status":"active","networks":{"v4":[{"ip_address":"10.10.0.5","type":"private"}]}},
        {"id":5,"name":"web-5","status":"active","networks":{"v4":[{"ip_address":"not-an-ip","type":"private"}]}},
        {"id":6,"name":"web-6","status":"active"}],
      "links":{"pages":{"next":"https://api.digitalocean.com/v2/droplets?page=2&per_page=200"}},
      "meta":{"total":9}}"#;

    #[test]
    fn names_active_droplets_by_the_configured_network_and_family() {
        let p = names_from_page(&naming(Network::Private, false, None), PAGE).unwrap();
        let nodes: Vec<_> = p.named.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(nodes, vec!["web-1@10.10.0.2"]);
        // web-3 has no private address, "bad name" is no node name, web-5's address is garbage,
        // web-6 has no networks; web-2 is not active and not counted as skipped.
        assert_eq!(p.skipped, 4);
        assert_eq!(p.droplets, 6);
        assert_eq!(p.next_page, Some(2));
        assert_eq!(p.total, Some(9));

        let p = names_from_page(&naming(Network::Public, false, Some("app")), PAGE).unwrap();
        let nodes: Vec<_> = p.named.iter().map(|n| n.node.as_str()).collect();
        // node_basename replaces the Droplet name, so "bad name"'s Droplet has no public address
        // and is still skipped.
        assert_eq!(nodes, vec!["app@203.0.113.1", "app@203.0.113.3"]);

        let p = names_from_page(&naming(Network::Public, true, None), PAGE).unwrap();
        assert_eq!(p.named.len(), 1);
        assert_eq!(p.named[0].node, "web-1@2604:a880:800:10::5e:f001");
        assert_eq!(
            p.named[0].ip,
            "2604:a880:800:10::5e:f001".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_address_of_the_wrong_family_is_skipped() {
        let body = br#"{"droplets":[{"name":"a","status":"active","networks":{
            "v4":[{"ip_address":"::1","type":"private"}],"v6":[{"ip_address":"10.0.0.1","type":"private"}]}}]}"#;
        for ipv6 in [false, true] {
            let p = names_from_page(&naming(Network::Private, ipv6, None), body).unwrap();
            assert!(p.named.is_empty());
            assert_eq!(p.skipped, 1);
        }
    }

    #[test]
    fn a_body_that_is_not_a_page_is_an_error_not_zero_nodes() {
        let n = naming(Network::Private, false, None);
        for body in [
            &b"{}"[..],
            b"[]",
            b"<html>502 Bad Gateway</html>",
            b"{\"droplets\":[{\"name\":\"a\"",
            b"{\"droplets\":{}}",
            b"{\"droplets\":[],\"links\":{\"pages\":{\"next\":\"https://x/v2/droplets\"}}}",
        ] {
            let e = names_from_page(&n, body).map(|_| ()).unwrap_err();
            assert_eq!(
                e.kind,
                ErrorKind::Malformed,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // An empty list is a valid answer: zero Droplets.
        let p = names_from_page(&n, br#"{"droplets":[],"links":{},"meta":{"total":0}}"#).unwrap();
        assert!(p.named.is_empty() && p.next_page.is_none());
    }

    #[test]
    fn page_urls_carry_the_filter_encoded_and_next_links_their_page() {
        let mut cfg = Config {
            api_url: "https://api.example/".into(),
            token: "t".into(),
            filter: Filter::Tag("prod env/1".into()),
            naming: naming(Network::Private, false, None),
            health_check: None,
            ca_file: None,
            request_timeout: Duration::from_secs(1),
            rate_limit_budget: Duration::from_secs(1),
        };
        assert_eq!(
            page_url(&cfg, 3),
            "https://api.example/v2/droplets?page=3&per_page=200&tag_name=prod%20env%2F1"
        );
        cfg.filter = Filter::Name("web-1".into());
        assert_eq!(
            page_url(&cfg, 1),
            "https://api.example/v2/droplets?page=1&per_page=200&name=web-1"
        );
        assert_eq!(
            page_number("https://a/v2/droplets?per_page=2&page=7"),
            Some(7)
        );
        assert_eq!(page_number("https://a/v2/droplets?page=x"), None);
        assert_eq!(page_number("https://a/v2/droplets"), None);
    }

    #[test]
    fn retry_after_wins_over_ratelimit_reset() {
        use reqwest::header::{HeaderMap, HeaderValue};
        use std::time::UNIX_EPOCH;
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let wait = |h: &HeaderMap| rate_limit_wait(h, now).map(|w| w.wait);
        let mut h = HeaderMap::new();
        assert_eq!(wait(&h), None);
        h.insert("ratelimit-reset", HeaderValue::from_static("1000042"));
        assert_eq!(wait(&h), Some(Duration::from_secs(42)));
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(wait(&h), Some(Duration::from_secs(3)));
    }

    #[tokio::test]
    async fn health_checks_keep_listening_ports_and_drop_closed_and_silent_ones() {
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listening.local_addr().unwrap().port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t = Duration::from_millis(500);
        assert!(tcp_healthy(ip, open, t).await);
        assert!(!tcp_healthy(ip, closed, t).await);

        // A silent port: a listener with a backlog of 0 that nobody accepts from, its queue
        // filled, so the kernel drops further SYNs and a connect hangs until the deadline.
        let silent =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        silent.bind(&SocketAddr::new(ip, 0).into()).unwrap();
        silent.listen(0).unwrap();
        let silent_port = silent.local_addr().unwrap().as_socket().unwrap().port();
        let mut fillers = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(SocketAddr::new(ip, silent_port)),
            )
            .await
            {
                Ok(Ok(s)) => fillers.push(s),
                _ => break,
            }
        }
        let started = Instant::now();
        assert!(!tcp_healthy(ip, silent_port, t).await);
        assert!(started.elapsed() >= t, "{:?}", started.elapsed());

        let named = vec![
            Named {
                node: "b@127.0.0.1".into(),
                ip,
            },
            Named {
                node: "a@127.0.0.1".into(),
                ip,
            },
        ];
        let hc = |port| {
            Some(HealthCheck {
                port,
                timeout: Duration::from_millis(300),
            })
        };
        assert_eq!(
            healthy_names(named.clone(), hc(open)).await,
            vec!["a@127.0.0.1", "b@127.0.0.1"]
        );
        assert!(healthy_names(named.clone(), hc(closed)).await.is_empty());
        assert_eq!(healthy_names(named, None).await.len(), 2);
    }
}
