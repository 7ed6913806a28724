//! EC2 discovery: every running instance carrying a tag (`tag:<name>=<value>`), named
//! `<app_prefix>@<private or public IP>`, through `DescribeInstances` (the Query API, SigV4-signed,
//! `NextToken` pagination, XML parsed with a real parser).
//!
//! - [`sigv4`]: the signature; [`xml`]: the three documents read;
//! - [`imds`]: instance metadata, IMDSv2 only (token, then GET), with a short deadline;
//! - [`credentials`]: the SDKs' chain: environment keys, web identity (STS), the container
//!   endpoint, the instance profile; cached and refreshed before they expire.
//!
//! The process environment is never read here: the strategy passes the `AWS_*` variables it read
//! (in one place, `Cluster.Strategy.EC2`) in [`Settings::env`], so tests inject their own.
//!
//! A [`Client`] lives as long as its topology (credentials, the IMDS token, the region and this
//! instance's own tag value are cached in it); each round is one [`poll`]. Any failure, including a
//! failed page or a 200 whose body is not a complete `DescribeInstancesResponse`, is an error, never
//! zero or a partial list. `RequestLimitExceeded` closes a gate: rounds before it opens fail at once
//! without a request; the gate's delay starts at the polling interval and doubles up to four of them.

mod credentials;
mod imds;
mod sigv4;
mod xml;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::backoff::Backoff;
use crate::event::{Error, ErrorKind, Event, Sink};
use crate::http::{self, ClientOptions, Roots, TransportError};

/// A response body larger than this is refused (a page of 1000 instances is about 5 MB).
const MAX_BODY: usize = 32 * 1024 * 1024;
/// DescribeInstances page size (the API's maximum).
const PAGE_SIZE: &str = "1000";
/// A pagination loop longer than this is an error.
const MAX_PAGES: usize = 10_000;
const EC2_VERSION: &str = "2016-11-15";

/// Which address names an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpType {
    /// `privateIpAddress`
    Private,
    /// `ipAddress` (instances without one are skipped)
    Public,
}

/// What the strategy configured. Endpoint and region keys override the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `AWS_*` variables (name → value) the strategy read from the process environment, or a
    /// test's own map.
    pub env: HashMap<String, String>,
    pub tag_name: String,
    pub ip_type: IpType,
    pub region: Option<String>,
    pub ec2_endpoint: Option<String>,
    pub sts_endpoint: Option<String>,
    pub imds_endpoint: Option<String>,
    /// A CA bundle added to the system roots; else `AWS_CA_BUNDLE`.
    pub ca_bundle: Option<String>,
    /// The deadline of one EC2, STS or container-endpoint request.
    pub request_timeout: Duration,
    /// The deadline of one IMDS request (short: outside AWS nothing answers).
    pub imds_timeout: Duration,
    /// The strategy's polling interval: the unit of the throttling gate.
    pub polling_interval: Duration,
}

impl Settings {
    /// A non-empty environment variable.
    pub(crate) fn env(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }
}

/// What `Cluster.status/1` shows about the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    pub region: Option<String>,
    pub credentials: Option<String>,
    pub instance_id: Option<String>,
    pub tag_value: Option<String>,
    pub instances: Option<usize>,
    pub pages: Option<usize>,
    pub throttled: u32,
}

/// A topology's EC2 client: settings, one HTTP client, and what is cached between rounds.
pub struct Client {
    settings: Settings,
    http: reqwest::Client,
    state: tokio::sync::Mutex<State>,
    info: Mutex<Info>,
}

struct State {
    region: Option<String>,
    instance_id: Option<String>,
    own_tag: Option<String>,
    imds_token: Option<(String, Instant)>,
    creds: credentials::Cache,
    /// The last EC2 answer was `RequestLimitExceeded` (or `Throttling`).
    throttled: bool,
    throttle: Backoff,
    throttled_until: Option<Instant>,
}

impl Client {
    /// A client, or why its HTTP client cannot be built (a bad CA bundle: `ErrorKind::Config`).
    pub fn new(settings: Settings) -> Result<Client, Error> {
        let ca = settings
            .ca_bundle
            .clone()
            .or_else(|| settings.env("AWS_CA_BUNDLE").map(String::from));
        // Without system roots, plain-HTTP endpoints (IMDS, a local fake) still work.
        let opts = ClientOptions {
            connect_timeout: Some(settings.request_timeout),
            ..ClientOptions::new(Roots::SystemIfAnyPlus(ca.as_deref().map(Path::new)))
        };
        let http = http::client(opts, |e| Error::new(ErrorKind::Config, e.to_string()))?;
        let source = credentials::Source::from_settings(&settings);
        let gate = settings.polling_interval.max(Duration::from_millis(100));
        Ok(Client {
            http,
            state: tokio::sync::Mutex::new(State {
                region: None,
                instance_id: None,
                own_tag: None,
                imds_token: None,
                creds: credentials::Cache::new(source),
                throttled: false,
                throttle: Backoff::new(gate, gate * 4),
                throttled_until: None,
            }),
            info: Mutex::new(Info::default()),
            settings,
        })
    }

    /// The latest [`Info`].
    pub fn info(&self) -> Info {
        match self.info.lock() {
            Ok(i) => i.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn update_info(&self, f: impl FnOnce(&mut Info)) {
        let mut guard = match self.info.lock() {
            Ok(i) => i,
            Err(p) => p.into_inner(),
        };
        f(&mut guard);
    }

    /// The region: the `region` key, `AWS_REGION`, `AWS_DEFAULT_REGION`, else IMDS (cached).
    async fn region(&self, st: &mut State) -> Result<String, Error> {
        if let Some(r) = self.settings.region.clone().or_else(|| {
            self.settings
                .env("AWS_REGION")
                .or_else(|| self.settings.env("AWS_DEFAULT_REGION"))
                .map(String::from)
        }) {
            return Ok(r);
        }
        if let Some(r) = &st.region {
            return Ok(r.clone());
        }
        let r = imds::get(self, st, "/latest/meta-data/placement/region")
            .await
            .map_err(|e| {
                Error::new(
                    e.kind,
                    format!(
                        "cannot learn the region: {}; set AWS_REGION or the :region option",
                        e.message
                    ),
                )
            })?;
        st.region = Some(r.clone());
        Ok(r)
    }

    async fn instance_id(&self, st: &mut State) -> Result<String, Error> {
        if let Some(id) = &st.instance_id {
            return Ok(id.clone());
        }
        let id = imds::get(self, st, "/latest/meta-data/instance-id")
            .await
            .map_err(|e| {
                Error::new(
                    e.kind,
                    format!(
                        "cannot learn this instance's id to read its own {:?} tag: {}; outside \
                         EC2, set :ec2_tagvalue",
                        self.settings.tag_name, e.message
                    ),
                )
            })?;
        st.instance_id = Some(id.clone());
        Ok(id)
    }

    fn ec2_endpoint(&self, region: &str) -> String {
        self.settings
            .ec2_endpoint
            .clone()
            .or_else(|| {
                self.settings
                    .env("AWS_ENDPOINT_URL_EC2")
                    .or_else(|| self.settings.env("AWS_ENDPOINT_URL"))
                    .map(String::from)
            })
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"))
    }

    pub(crate) fn sts_endpoint(&self, region: &str) -> String {
        self.settings
            .sts_endpoint
            .clone()
            .or_else(|| {
                self.settings
                    .env("AWS_ENDPOINT_URL_STS")
                    .or_else(|| self.settings.env("AWS_ENDPOINT_URL"))
                    .map(String::from)
            })
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"))
    }

    /// One signed EC2 Query API call; the body of a 200, or the classified error.
    async fn ec2_call(
        &self,
        st: &mut State,
        region: &str,
        creds: &sigv4::Credentials,
        params: &[(String, String)],
    ) -> Result<Vec<u8>, Error> {
        let endpoint = self.ec2_endpoint(region);
        let body = sigv4::form(params);
        let resp = signed_post(self, &endpoint, region, "ec2", creds, body).await?;
        let (status, bytes) = resp;
        if status == 200 {
            return Ok(bytes);
        }
        let (error, throttled) = ec2_error(status, &bytes, &endpoint, creds);
        st.throttled = throttled;
        Err(error)
    }

    /// This instance's own value of the tag (cached once known).
    async fn own_tag_value(
        &self,
        st: &mut State,
        region: &str,
        creds: &sigv4::Credentials,
    ) -> Result<String, Error> {
        if let Some(v) = &st.own_tag {
            return Ok(v.clone());
        }
        let id = self.instance_id(st).await?;
        let params = vec![
            ("Action".to_string(), "DescribeInstances".to_string()),
            ("Version".to_string(), EC2_VERSION.to_string()),
            ("InstanceId.1".to_string(), id.clone()),
        ];
        let body = self.ec2_call(st, region, creds, &params).await?;
        let page = xml::describe_instances(&body).map_err(|e| malformed(&e))?;
        let instance = page
            .instances
            .iter()
            .find(|i| i.instance_id == id)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("DescribeInstances does not list this instance ({id})"),
                )
            })?;
        let value = instance
            .tags
            .iter()
            .find(|(k, _)| *k == self.settings.tag_name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "this instance ({id}) has no tag {:?}: tag it, or set :ec2_tagvalue",
                        self.settings.tag_name
                    ),
                )
            })?;
        st.own_tag = Some(value.clone());
        Ok(value)
    }

    /// Every page of `DescribeInstances` for the tag, as IP addresses (sorted, unique). Any failed
    /// or incomplete page fails the whole call.
    async fn describe(
        &self,
        st: &mut State,
        region: &str,
        creds: &sigv4::Credentials,
        tag_value: &str,
    ) -> Result<(Vec<String>, usize, usize), Error> {
        let mut ips = Vec::new();
        let mut token: Option<String> = None;
        let mut seen_tokens = std::collections::HashSet::new();
        let mut instances = 0;
        for page_no in 1..=MAX_PAGES {
            let mut params = vec![
                ("Action".to_string(), "DescribeInstances".to_string()),
                ("Version".to_string(), EC2_VERSION.to_string()),
                (
                    "Filter.1.Name".to_string(),
                    format!("tag:{}", self.settings.tag_name),
                ),
                ("Filter.1.Value.1".to_string(), tag_value.to_string()),
                (
                    "Filter.2.Name".to_string(),
                    "instance-state-name".to_string(),
                ),
                ("Filter.2.Value.1".to_string(), "running".to_string()),
                ("MaxResults".to_string(), PAGE_SIZE.to_string()),
            ];
            if let Some(t) = &token {
                params.push(("NextToken".to_string(), t.clone()));
            }
            let body = self
                .ec2_call(st, region, creds, &params)
                .await
                .map_err(|e| {
                    if page_no > 1 {
                        Error::new(e.kind, format!("page {page_no}: {}", e.message))
                    } else {
                        e
                    }
                })?;
            let page = xml::describe_instances(&body).map_err(|e| {
                let e = malformed(&e);
                Error::new(e.kind, format!("page {page_no}: {}", e.message))
            })?;
            instances += page.instances.len();
            for i in page.instances {
                let ip = match self.settings.ip_type {
                    IpType::Private => i.private_ip,
                    IpType::Public => i.public_ip,
                };
                if let Some(ip) = ip {
                    ips.push(ip);
                }
            }
            match page.next_token {
                None => {
                    ips.sort_unstable();
                    ips.dedup();
                    return Ok((ips, instances, page_no));
                }
                Some(t) => {
                    if !seen_tokens.insert(t.clone()) {
                        return Err(Error::new(
                            ErrorKind::Malformed,
                            format!("DescribeInstances repeated the NextToken of page {page_no}"),
                        ));
                    }
                    token = Some(t);
                }
            }
        }
        Err(Error::new(
            ErrorKind::Malformed,
            format!("DescribeInstances returned more than {MAX_PAGES} pages"),
        ))
    }
}

/// One round: the tag value (given, or this instance's own), every page, and the result: names
/// `<prefix>@<ip>` when `prefix` is given, else the IPs themselves (for a user's `ip_to_nodename`).
async fn discover(
    client: &Client,
    tag_value: Option<String>,
    prefix: Option<&str>,
) -> Result<Vec<String>, Error> {
    let mut st = client.state.lock().await;
    if let Some(until) = st.throttled_until {
        let now = Instant::now();
        if now < until {
            return Err(Error::new(
                ErrorKind::HttpStatus,
                format!(
                    "EC2 is throttling DescribeInstances (RequestLimitExceeded); next request in {} ms",
                    (until - now).as_millis()
                ),
            ));
        }
    }
    st.throttled = false;
    let result = discover_locked(client, &mut st, tag_value, prefix).await;
    match &result {
        Err(_) if st.throttled => {
            let delay = st.throttle.next_delay();
            st.throttled_until = Some(Instant::now() + delay);
            let n = st.throttle.failures();
            client.update_info(|i| i.throttled = n);
        }
        Err(_) => {}
        Ok(_) => {
            st.throttle.reset();
            st.throttled_until = None;
            client.update_info(|i| i.throttled = 0);
        }
    }
    result
}

async fn discover_locked(
    client: &Client,
    st: &mut State,
    tag_value: Option<String>,
    prefix: Option<&str>,
) -> Result<Vec<String>, Error> {
    let region = client.region(st).await?;
    client.update_info(|i| i.region = Some(region.clone()));
    // Once per round: a refresh (when they are about to expire) never happens between pages.
    let creds = credentials::get(client, st, &region).await?;
    let tag_value = match tag_value {
        Some(v) => v,
        None => client.own_tag_value(st, &region, &creds).await?,
    };
    let instance_id = st.instance_id.clone();
    client.update_info(|i| {
        i.tag_value = Some(tag_value.clone());
        i.instance_id = instance_id;
    });
    let (ips, instances, pages) = client.describe(st, &region, &creds, &tag_value).await?;
    client.update_info(|i| {
        i.instances = Some(instances);
        i.pages = Some(pages);
    });
    Ok(match prefix {
        None => ips,
        Some(prefix) => names(prefix, &ips),
    })
}

/// `prefix@ip` for each IP; anything that is not an IP address (or makes an invalid name) is
/// dropped.
fn names(prefix: &str, ips: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ips
        .iter()
        .filter_map(|ip| {
            let ip: std::net::IpAddr = ip.trim().parse().ok()?;
            crate::node_name::from_ip(prefix, ip)
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// One round as a task: one `Nodes` (names, or IPs without a prefix) or one `Error`.
pub async fn poll_once(
    client: Arc<Client>,
    tag_value: Option<String>,
    prefix: Option<String>,
    sink: Arc<dyn Sink>,
) {
    match discover(&client, tag_value, prefix.as_deref()).await {
        Ok(names) => sink.send(Event::Nodes(names)),
        Err(e) => sink.send(Event::Error(e)),
    };
}

/// Unix time in seconds.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn malformed(detail: &str) -> Error {
    Error::new(
        ErrorKind::Malformed,
        format!(
            "the DescribeInstances answer is not a complete DescribeInstancesResponse: {detail}"
        ),
    )
}

/// `(host header, canonical path)` of an endpoint URL.
fn host_and_path(url: &reqwest::Url) -> Option<(String, String)> {
    let host = url.host_str()?;
    let host = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let path = if url.path().is_empty() {
        "/"
    } else {
        url.path()
    };
    Some((host, path.to_string()))
}

/// A SigV4-signed form POST to `endpoint`: `(status, body)`.
async fn signed_post(
    client: &Client,
    endpoint: &str,
    region: &str,
    service: &str,
    creds: &sigv4::Credentials,
    body: String,
) -> Result<(u16, Vec<u8>), Error> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("the {service} endpoint {endpoint:?} is not a URL: {e}"),
        )
    })?;
    let (host, path) = host_and_path(&url).ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            format!("the {service} endpoint {endpoint:?} has no host"),
        )
    })?;
    const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
    let headers = sigv4::sign(
        &sigv4::Request {
            method: "POST",
            host: &host,
            path: &path,
            query: "",
            headers: &[("content-type", CONTENT_TYPE)],
            body: body.as_bytes(),
        },
        creds,
        region,
        service,
        &sigv4::amz_date(now_unix()),
    );
    let mut req = client
        .http
        .post(url)
        .timeout(client.settings.request_timeout)
        .body(body);
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    send(req, endpoint, "POST").await
}

/// Send and read the whole body: `(status, body)`, or a transport error naming the URL.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    url: &str,
    method: &str,
) -> Result<(u16, Vec<u8>), Error> {
    let failed = |t: TransportError| Error::new(t.kind, format!("{method} {url}: {}", t.detail));
    let resp = http::send(req).await.map_err(failed)?;
    let status = resp.status().as_u16();
    let body = http::read_body(resp, MAX_BODY).await.map_err(failed)?;
    Ok((status, body))
}

/// A non-200 EC2 answer as an error an operator can act on, and whether it is throttling.
fn ec2_error(
    status: u16,
    body: &[u8],
    endpoint: &str,
    creds: &sigv4::Credentials,
) -> (Error, bool) {
    let (code, message) = xml::error(body).unwrap_or_else(|| (String::new(), String::new()));
    let detail = if code.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {code}: {message}")
    };
    let key = &creds.access_key_id;
    let throttled = matches!(code.as_str(), "RequestLimitExceeded" | "Throttling");
    let error = match (status, code.as_str()) {
        (_, "UnauthorizedOperation") | (403, _) => Error::new(
            ErrorKind::Forbidden,
            format!(
                "DescribeInstances at {endpoint}: {detail}; the credentials (access key {key}) lack \
                 the IAM permission ec2:DescribeInstances"
            ),
        ),
        (_, "AuthFailure") | (401, _) => Error::new(
            ErrorKind::Unauthorized,
            format!(
                "DescribeInstances at {endpoint}: {detail}; AWS rejected the credentials (access \
                 key {key}): check them, and that they may call ec2:DescribeInstances"
            ),
        ),
        (_, "RequestLimitExceeded") | (_, "Throttling") => Error::new(
            ErrorKind::HttpStatus,
            format!(
                "DescribeInstances at {endpoint}: {detail} (RequestLimitExceeded): backing off"
            ),
        ),
        _ => Error::new(
            ErrorKind::HttpStatus,
            format!("DescribeInstances at {endpoint}: {detail}"),
        ),
    };
    (error, throttled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_what_is_not_an_ip() {
        let ips = vec![
            "10.0.0.2".to_string(),
            "nope".into(),
            "10.0.0.1".into(),
            "10.0.0.2".into(),
        ];
        assert_eq!(names("app", &ips), vec!["app@10.0.0.1", "app@10.0.0.2"]);
        assert!(names("bad name", &ips).is_empty());
    }

    #[test]
    fn auth_errors_name_the_permission() {
        let creds = sigv4::Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "s".into(),
            session_token: None,
        };
        let body =
            b"<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>no</Message>\
            </Error></Errors></Response>";
        let (e, throttled) = ec2_error(403, body, "https://ec2", &creds);
        assert!(!throttled);
        assert_eq!(e.kind, ErrorKind::Forbidden);
        assert!(e.message.contains("ec2:DescribeInstances"), "{}", e.message);
        let (e, _) = ec2_error(401, b"", "https://ec2", &creds);
        assert_eq!(e.kind, ErrorKind::Unauthorized);
        assert!(e.message.contains("ec2:DescribeInstances"), "{}", e.message);
        let body =
            b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow</Message>\
            </Error></Errors></Response>";
        let (e, throttled) = ec2_error(503, body, "https://ec2", &creds);
        assert!(throttled);
        assert_eq!(e.kind, ErrorKind::HttpStatus);
    }

    #[test]
    fn hosts_carry_a_non_default_port() {
        let u = reqwest::Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            host_and_path(&u).unwrap(),
            ("127.0.0.1:8080".into(), "/".into())
        );
        let u = reqwest::Url::parse("https://ec2.eu-west-1.amazonaws.com:443/").unwrap();
        assert_eq!(
            host_and_path(&u).unwrap(),
            ("ec2.eu-west-1.amazonaws.com".into(), "/".into())
        );
    }
}
