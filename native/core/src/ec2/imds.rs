//! Instance metadata, IMDSv2 only: `PUT /latest/api/token` with a TTL header, then GETs with the
//! token. Every request has a short deadline (outside AWS nothing answers at 169.254.169.254).
//! The token is cached until shortly before its TTL ends. Containers need the instance's
//! `HttpPutResponseHopLimit` at 2 or more (see the guide); the client side has nothing to set.

use std::time::{Duration, Instant};

use super::{send, Client, State};
use crate::event::{Error, ErrorKind};

const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// With `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6` (IPv6-only subnets).
const DEFAULT_ENDPOINT_V6: &str = "http://[fd00:ec2::254]";
const TOKEN_TTL_SECS: u64 = 21_600;

/// The IMDS base URL: the `imds_endpoint` option, `AWS_EC2_METADATA_SERVICE_ENDPOINT`, or the
/// link-local default (IPv4, or IPv6 with `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`). `None`
/// when `AWS_EC2_METADATA_DISABLED=true`.
pub(crate) fn endpoint(client: &Client) -> Option<String> {
    let s = &client.settings;
    if s.env("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return None;
    }
    let e = s
        .imds_endpoint
        .clone()
        .or_else(|| s.env("AWS_EC2_METADATA_SERVICE_ENDPOINT").map(String::from))
        .unwrap_or_else(|| {
            let v6 = s
                .env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE")
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("ipv6"));
            if v6 {
                DEFAULT_ENDPOINT_V6
            } else {
                DEFAULT_ENDPOINT
            }
            .to_string()
        });
    Some(e.trim_end_matches('/').to_string())
}

fn unreachable(base: &str, e: Error, timeout: Duration) -> Error {
    Error::new(
        e.kind,
        format!(
            "the instance metadata service (IMDSv2) at {base} did not answer within {} ms \
             ({}); not on EC2, or IMDS disabled, or the hop limit too low for a container",
            timeout.as_millis(),
            e.message
        ),
    )
}

async fn token(client: &Client, st: &mut State, base: &str) -> Result<String, Error> {
    if let Some((t, until)) = &st.imds_token {
        if Instant::now() < *until {
            return Ok(t.clone());
        }
    }
    let timeout = client.settings.imds_timeout;
    let url = format!("{base}/latest/api/token");
    let req = client.http.put(&url).timeout(timeout).header(
        "x-aws-ec2-metadata-token-ttl-seconds",
        TOKEN_TTL_SECS.to_string(),
    );
    let (status, body) = send(req, &url, "PUT")
        .await
        .map_err(|e| unreachable(base, e, timeout))?;
    if status != 200 {
        return Err(Error::new(
            if status == 403 {
                ErrorKind::Forbidden
            } else {
                ErrorKind::HttpStatus
            },
            format!("PUT {url}: HTTP {status}; IMDSv2 refused a session token"),
        ));
    }
    let t = String::from_utf8(body)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::new(ErrorKind::Malformed, format!("PUT {url}: an empty token")))?;
    st.imds_token = Some((
        t.clone(),
        Instant::now() + Duration::from_secs(TOKEN_TTL_SECS - 60),
    ));
    Ok(t)
}

/// The text at `path` (e.g. `/latest/meta-data/instance-id`), trimmed and non-empty.
pub(crate) async fn get(client: &Client, st: &mut State, path: &str) -> Result<String, Error> {
    let base = endpoint(client).ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            "the instance metadata service is disabled (AWS_EC2_METADATA_DISABLED=true)",
        )
    })?;
    let timeout = client.settings.imds_timeout;
    for attempt in 0..2 {
        let t = token(client, st, &base).await?;
        let url = format!("{base}{path}");
        let req = client
            .http
            .get(&url)
            .timeout(timeout)
            .header("x-aws-ec2-metadata-token", t);
        let (status, body) = send(req, &url, "GET")
            .await
            .map_err(|e| unreachable(&base, e, timeout))?;
        match status {
            200 => {
                return String::from_utf8(body)
                    .ok()
                    .map(|b| b.trim().to_string())
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| {
                        Error::new(ErrorKind::Malformed, format!("GET {url}: an empty answer"))
                    })
            }
            // The token expired or was revoked: get a new one, once.
            401 if attempt == 0 => st.imds_token = None,
            404 => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("GET {url}: HTTP 404"),
                ))
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::HttpStatus,
                    format!("GET {url}: HTTP {status}"),
                ))
            }
        }
    }
    Err(Error::new(
        ErrorKind::Unauthorized,
        format!("GET {base}{path}: IMDS refused a fresh token"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::{IpType, Settings};
    use std::time::Duration;

    fn client(env: &[(&str, &str)], option: Option<&str>) -> Client {
        Client::new(Settings {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tag_name: "t".into(),
            ip_type: IpType::Private,
            region: None,
            ec2_endpoint: None,
            sts_endpoint: None,
            imds_endpoint: option.map(String::from),
            ca_bundle: None,
            request_timeout: Duration::from_secs(1),
            imds_timeout: Duration::from_secs(1),
            polling_interval: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn the_endpoint_follows_the_sdk_variables() {
        assert_eq!(endpoint(&client(&[], None)).unwrap(), DEFAULT_ENDPOINT);
        let v6 = [("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6")];
        assert_eq!(endpoint(&client(&v6, None)).unwrap(), DEFAULT_ENDPOINT_V6);
        let custom = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/")];
        assert_eq!(
            endpoint(&client(&custom, None)).unwrap(),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            endpoint(&client(&custom, Some("http://[::1]:8"))).unwrap(),
            "http://[::1]:8"
        );
        let off = [("AWS_EC2_METADATA_DISABLED", "true")];
        assert_eq!(endpoint(&client(&off, None)), None);
    }
}
