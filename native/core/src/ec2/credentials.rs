//! Credentials in the AWS SDKs' order, the first source that is configured wins:
//!
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. web identity: `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` through STS
//!    `AssumeRoleWithWebIdentity` (EKS IRSA; `AWS_ROLE_SESSION_NAME` or a generated name);
//! 3. the container endpoint: `AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI` (ECS, EKS Pod
//!    Identity), with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or `_TOKEN` as `Authorization`;
//! 4. the instance profile through IMDSv2.
//!
//! Temporary credentials are cached and refreshed 5 minutes before they expire; if a refresh
//! fails while the cached ones are still valid, those are used.

use serde::Deserialize;

use super::sigv4::{self, Credentials};
use super::{imds, now_unix, send, xml, Client, Settings, State};
use crate::event::{Error, ErrorKind};

/// Refresh this long before expiry.
const REFRESH_MARGIN: u64 = 300;
const ECS_HOST: &str = "http://169.254.170.2";

/// Where the credentials come from (decided once, from the environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Env,
    WebIdentity {
        token_file: String,
        role_arn: String,
        session_name: String,
    },
    Container {
        uri: String,
        token_file: Option<String>,
        token: Option<String>,
    },
    InstanceProfile,
}

impl Source {
    /// The first configured source of the chain.
    pub(crate) fn from_settings(s: &Settings) -> Source {
        if s.env("AWS_ACCESS_KEY_ID").is_some() && s.env("AWS_SECRET_ACCESS_KEY").is_some() {
            return Source::Env;
        }
        if let (Some(file), Some(arn)) =
            (s.env("AWS_WEB_IDENTITY_TOKEN_FILE"), s.env("AWS_ROLE_ARN"))
        {
            let session_name = s
                .env("AWS_ROLE_SESSION_NAME")
                .map(String::from)
                .unwrap_or_else(|| {
                    format!(
                        "libcluster-rs-{}",
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis())
                            .unwrap_or(0)
                    )
                });
            return Source::WebIdentity {
                token_file: file.to_string(),
                role_arn: arn.to_string(),
                session_name,
            };
        }
        let uri = s
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .map(String::from)
            .or_else(|| {
                s.env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                    .map(|p| format!("{ECS_HOST}{p}"))
            });
        if let Some(uri) = uri {
            return Source::Container {
                uri,
                token_file: s
                    .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
                    .map(String::from),
                token: s.env("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(String::from),
            };
        }
        Source::InstanceProfile
    }

    /// For logs and `Cluster.status/1`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Source::Env => "environment (AWS_ACCESS_KEY_ID)".into(),
            Source::WebIdentity { role_arn, .. } => format!("web identity ({role_arn})"),
            Source::Container { uri, .. } => format!("container endpoint ({uri})"),
            Source::InstanceProfile => "instance profile (IMDSv2)".into(),
        }
    }
}

/// The cache of one client.
pub(crate) struct Cache {
    pub(crate) source: Source,
    current: Option<(Credentials, Option<u64>)>,
}

impl Cache {
    pub(crate) fn new(source: Source) -> Cache {
        Cache {
            source,
            current: None,
        }
    }
}

/// Valid credentials, from the cache unless they are missing or about to expire.
pub(crate) async fn get(
    client: &Client,
    st: &mut State,
    region: &str,
) -> Result<Credentials, Error> {
    let now = now_unix();
    if let Some((c, exp)) = &st.creds.current {
        if exp.is_none_or(|e| now + REFRESH_MARGIN < e) {
            return Ok(c.clone());
        }
    }
    client.update_info(|i| i.credentials = Some(st.creds.source.describe()));
    match fetch(client, st, region).await {
        Ok((c, exp)) => {
            st.creds.current = Some((c.clone(), exp));
            Ok(c)
        }
        Err(e) => match &st.creds.current {
            // A failed refresh: the old ones still work until they expire.
            Some((c, Some(exp))) if now < *exp => Ok(c.clone()),
            _ => Err(e),
        },
    }
}

async fn fetch(
    client: &Client,
    st: &mut State,
    region: &str,
) -> Result<(Credentials, Option<u64>), Error> {
    let s = &client.settings;
    match st.creds.source.clone() {
        Source::Env => Ok((
            Credentials {
                access_key_id: s.env("AWS_ACCESS_KEY_ID").unwrap_or_default().to_string(),
                secret_access_key: s
                    .env("AWS_SECRET_ACCESS_KEY")
                    .unwrap_or_default()
                    .to_string(),
                session_token: s.env("AWS_SESSION_TOKEN").map(String::from),
            },
            None,
        )),
        Source::WebIdentity {
            token_file,
            role_arn,
            session_name,
        } => web_identity(client, region, &token_file, &role_arn, &session_name).await,
        Source::Container {
            uri,
            token_file,
            token,
        } => container(client, &uri, token_file.as_deref(), token.as_deref()).await,
        Source::InstanceProfile => instance_profile(client, st).await,
    }
}

fn expiry(text: &str, what: &str) -> Result<Option<u64>, Error> {
    sigv4::parse_iso8601(text).map(Some).ok_or_else(|| {
        Error::new(
            ErrorKind::Malformed,
            format!("{what}: the expiration {text:?} is not an ISO 8601 time"),
        )
    })
}

async fn web_identity(
    client: &Client,
    region: &str,
    token_file: &str,
    role_arn: &str,
    session_name: &str,
) -> Result<(Credentials, Option<u64>), Error> {
    let token = std::fs::read_to_string(token_file).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot read AWS_WEB_IDENTITY_TOKEN_FILE {token_file}: {e}"),
        )
    })?;
    let endpoint = client.sts_endpoint(region);
    let body = sigv4::form(&[
        ("Action".into(), "AssumeRoleWithWebIdentity".into()),
        ("Version".into(), "2011-06-15".into()),
        ("RoleArn".into(), role_arn.into()),
        ("RoleSessionName".into(), session_name.into()),
        ("WebIdentityToken".into(), token.trim().into()),
    ]);
    // AssumeRoleWithWebIdentity is not signed: the web identity token is the credential.
    let req = client
        .http
        .post(&endpoint)
        .timeout(client.settings.request_timeout)
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body);
    let what = format!("STS AssumeRoleWithWebIdentity at {endpoint} for {role_arn}");
    let (status, bytes) = send(req, &endpoint, "POST").await?;
    if status != 200 {
        let (code, message) = xml::error(&bytes).unwrap_or_default();
        let kind = crate::http::status_kind(status);
        return Err(Error::new(
            kind,
            format!(
                "{what}: HTTP {status} {code}: {message}; the role's trust policy must allow \
                 sts:AssumeRoleWithWebIdentity for this service account"
            ),
        ));
    }
    let c = xml::assume_role_with_web_identity(&bytes)
        .map_err(|e| Error::new(ErrorKind::Malformed, format!("{what}: {e}")))?;
    let exp = expiry(&c.expiration, &what)?;
    Ok((
        Credentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: Some(c.session_token),
        },
        exp,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonCredentials {
    #[serde(default)]
    code: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: Option<String>,
}

fn from_json(body: &[u8], what: &str) -> Result<(Credentials, Option<u64>), Error> {
    let j: JsonCredentials = serde_json::from_slice(body).map_err(|e| {
        Error::new(
            ErrorKind::Malformed,
            format!("{what}: not a credentials object: {e}"),
        )
    })?;
    if let Some(code) = j.code.as_deref().filter(|c| *c != "Success") {
        return Err(Error::new(
            ErrorKind::HttpStatus,
            format!("{what}: Code {code:?}"),
        ));
    }
    let exp = match &j.expiration {
        Some(e) => expiry(e, what)?,
        None => None,
    };
    Ok((
        Credentials {
            access_key_id: j.access_key_id,
            secret_access_key: j.secret_access_key,
            session_token: j.token.filter(|t| !t.is_empty()),
        },
        exp,
    ))
}

/// Whether a full URI may be used: https anywhere; http only to loopback or the ECS / EKS Pod
/// Identity addresses, as in the SDKs.
fn allowed_container_uri(uri: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(uri) else {
        return false;
    };
    match url.scheme() {
        "https" => true,
        "http" => {
            let host = url.host_str().unwrap_or("");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    ip.is_loopback()
                        || ["169.254.170.2", "169.254.170.23", "fd00:ec2::23"]
                            .iter()
                            .any(|a| a.parse::<std::net::IpAddr>().ok() == Some(ip))
                }
                Err(_) => host == "localhost",
            }
        }
        _ => false,
    }
}

async fn container(
    client: &Client,
    uri: &str,
    token_file: Option<&str>,
    token: Option<&str>,
) -> Result<(Credentials, Option<u64>), Error> {
    if !allowed_container_uri(uri) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI {uri:?}: http:// is only allowed to loopback, \
                 169.254.170.2, 169.254.170.23 or fd00:ec2::23"
            ),
        ));
    }
    let auth = match token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {f}: {e}"),
                    )
                })?
                .trim()
                .to_string(),
        ),
        None => token.map(String::from),
    };
    let mut req = client
        .http
        .get(uri)
        .timeout(client.settings.request_timeout);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let what = format!("the container credentials endpoint {uri}");
    let (status, body) = send(req, uri, "GET").await?;
    if status != 200 {
        let kind = crate::http::status_kind(status);
        return Err(Error::new(
            kind,
            format!("{what}: HTTP {status}; check AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)"),
        ));
    }
    from_json(&body, &what)
}

async fn instance_profile(
    client: &Client,
    st: &mut State,
) -> Result<(Credentials, Option<u64>), Error> {
    const BASE: &str = "/latest/meta-data/iam/security-credentials/";
    let no_creds = |e: Error| {
        Error::new(
            e.kind,
            format!(
                "no AWS credentials: none in the environment (AWS_ACCESS_KEY_ID, \
                 AWS_WEB_IDENTITY_TOKEN_FILE, AWS_CONTAINER_CREDENTIALS_*), and the instance \
                 profile is unavailable: {}",
                e.message
            ),
        )
    };
    let roles = imds::get(client, st, BASE).await.map_err(no_creds)?;
    let role = roles.lines().next().unwrap_or("").trim().to_string();
    let body = imds::get(client, st, &format!("{BASE}{role}"))
        .await
        .map_err(no_creds)?;
    from_json(
        body.as_bytes(),
        &format!("the instance profile role {role}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn settings(env: &[(&str, &str)]) -> Settings {
        Settings {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            tag_name: "t".into(),
            ip_type: super::super::IpType::Private,
            region: None,
            ec2_endpoint: None,
            sts_endpoint: None,
            imds_endpoint: None,
            ca_bundle: None,
            request_timeout: Duration::from_secs(1),
            imds_timeout: Duration::from_secs(1),
            polling_interval: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_sources_come_in_the_sdk_order() {
        let all = [
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_ROLE_SESSION_NAME", "me"),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/creds"),
        ];
        assert_eq!(Source::from_settings(&settings(&all)), Source::Env);
        assert_eq!(
            Source::from_settings(&settings(&all[2..])),
            Source::WebIdentity {
                token_file: "/t".into(),
                role_arn: "arn:aws:iam::1:role/r".into(),
                session_name: "me".into()
            }
        );
        match Source::from_settings(&settings(&all[2..4])) {
            Source::WebIdentity { session_name, .. } => {
                assert!(session_name.starts_with("libcluster-rs-"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Source::from_settings(&settings(&all[5..])),
            Source::Container {
                uri: "http://169.254.170.2/v2/creds".into(),
                token_file: None,
                token: None
            }
        );
        // a key without its secret is not a source
        assert_eq!(
            Source::from_settings(&settings(&all[..1])),
            Source::InstanceProfile
        );
    }

    #[test]
    fn container_uris_over_http_stay_local() {
        assert!(allowed_container_uri("http://127.0.0.1:9/creds"));
        assert!(allowed_container_uri(
            "http://169.254.170.23/v1/credentials"
        ));
        assert!(allowed_container_uri(
            "http://[fd00:ec2::23]/v1/credentials"
        ));
        assert!(allowed_container_uri("https://creds.example.com/"));
        assert!(!allowed_container_uri("http://10.0.0.1/creds"));
        assert!(!allowed_container_uri("ftp://127.0.0.1/"));
    }

    #[test]
    fn reads_json_credentials() {
        let (c, exp) = from_json(
            br#"{"Code":"Success","AccessKeyId":"ASIA","SecretAccessKey":"s","Token":"t","Expiration":"2015-08-30T12:36:00Z"}"#,
            "x",
        )
        .unwrap();
        assert_eq!(c.session_token.as_deref(), Some("t"));
        assert_eq!(exp, Some(1_440_938_160));
        assert!(from_json(br#"{"AccessKeyId":"A"}"#, "x").is_err());
        assert!(from_json(
            br#"{"Code":"Failure","AccessKeyId":"A","SecretAccessKey":"s"}"#,
            "x"
        )
        .is_err());
    }
}
