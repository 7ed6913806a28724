//! The three XML documents the strategy reads, parsed with `roxmltree` (a real parser: a truncated
//! or malformed body is an error, never a short list): `DescribeInstancesResponse`, an AWS error
//! response (`<Response><Errors><Error><Code>`), and STS's `AssumeRoleWithWebIdentityResponse`.
//! Element names are matched without their namespace.

use roxmltree::{Document, Node};

/// One instance of a `DescribeInstancesResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Instance {
    pub instance_id: String,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// One page of a `DescribeInstancesResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Page {
    pub instances: Vec<Instance>,
    pub next_token: Option<String>,
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a, 'i: 'a>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn text(n: Node<'_, '_>, name: &str) -> Option<String> {
    child(n, name)
        .and_then(|c| c.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
}

/// A page, or why the body is not a complete `DescribeInstancesResponse`.
pub(crate) fn describe_instances(body: &[u8]) -> Result<Page, String> {
    let text_body = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let doc = Document::parse(text_body).map_err(|e| format!("not well-formed XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "DescribeInstancesResponse" {
        return Err(format!(
            "the root element is <{}>, not <DescribeInstancesResponse>",
            root.tag_name().name()
        ));
    }
    let reservations =
        child(root, "reservationSet").ok_or("the response has no <reservationSet>".to_string())?;
    let mut instances = Vec::new();
    for r in children(reservations, "item") {
        let Some(set) = child(r, "instancesSet") else {
            return Err("a reservation has no <instancesSet>".into());
        };
        for i in children(set, "item") {
            let tags = child(i, "tagSet")
                .map(|t| {
                    children(t, "item")
                        .filter_map(|item| {
                            let key = child(item, "key")?.text().unwrap_or("").to_string();
                            let value = child(item, "value")
                                .and_then(|v| v.text())
                                .unwrap_or("")
                                .to_string();
                            Some((key, value))
                        })
                        .collect()
                })
                .unwrap_or_default();
            instances.push(Instance {
                instance_id: text(i, "instanceId").unwrap_or_default(),
                private_ip: text(i, "privateIpAddress"),
                public_ip: text(i, "ipAddress"),
                tags,
            });
        }
    }
    Ok(Page {
        instances,
        next_token: text(root, "nextToken"),
    })
}

/// `(code, message)` of an AWS error body (EC2's `<Response><Errors><Error>` or STS's
/// `<ErrorResponse><Error>`), if it is one.
pub(crate) fn error(body: &[u8]) -> Option<(String, String)> {
    let doc = Document::parse(std::str::from_utf8(body).ok()?).ok()?;
    let e = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Error")?;
    Some((text(e, "Code")?, text(e, "Message").unwrap_or_default()))
}

/// Temporary credentials from STS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: String,
}

/// The credentials of an `AssumeRoleWithWebIdentityResponse`.
pub(crate) fn assume_role_with_web_identity(body: &[u8]) -> Result<StsCredentials, String> {
    let text_body = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let doc = Document::parse(text_body).map_err(|e| format!("not well-formed XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "AssumeRoleWithWebIdentityResponse" {
        return Err(format!(
            "the root element is <{}>, not <AssumeRoleWithWebIdentityResponse>",
            root.tag_name().name()
        ));
    }
    let c = child(root, "AssumeRoleWithWebIdentityResult")
        .and_then(|r| child(r, "Credentials"))
        .ok_or("no <Credentials> in the response")?;
    let field = |name: &str| text(c, name).ok_or(format!("no <{name}> in <Credentials>"));
    Ok(StsCredentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: field("SessionToken")?,
        expiration: field("Expiration")?,
    })
}

/// Escapes text for an XML element (tests and the bench build documents with it).
#[cfg(test)]
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn page(ips: &[(&str, &str, Option<&str>)], next: Option<&str>) -> String {
        let items: String = ips
            .iter()
            .map(|(id, private, public)| {
                format!(
                    "<item><reservationId>r-1</reservationId><instancesSet><item>\
                     <instanceId>{id}</instanceId><instanceState><code>16</code><name>running</name></instanceState>\
                     <privateIpAddress>{private}</privateIpAddress>{}\
                     <networkInterfaceSet><item><privateIpAddress>10.9.9.9</privateIpAddress></item></networkInterfaceSet>\
                     <tagSet><item><key>role</key><value>{}</value></item></tagSet>\
                     </item></instancesSet></item>",
                    public.map(|p| format!("<ipAddress>{p}</ipAddress>")).unwrap_or_default(),
                    escape("web & <api> é")
                )
            })
            .collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse \
             xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>x</requestId>\
             <reservationSet>{items}</reservationSet>{}</DescribeInstancesResponse>",
            next.map(|n| format!("<nextToken>{n}</nextToken>"))
                .unwrap_or_default()
        )
    }

    #[test]
    fn reads_instances_tags_and_the_next_token() {
        let body = page(
            &[
                ("i-1", "10.0.0.1", Some("3.3.3.3")),
                ("i-2", "10.0.0.2", None),
            ],
            Some("tok"),
        );
        let p = describe_instances(body.as_bytes()).unwrap();
        assert_eq!(p.next_token.as_deref(), Some("tok"));
        assert_eq!(p.instances.len(), 2);
        assert_eq!(p.instances[0].private_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(p.instances[0].public_ip.as_deref(), Some("3.3.3.3"));
        assert_eq!(p.instances[1].public_ip, None);
        assert_eq!(
            p.instances[1].tags,
            vec![("role".into(), "web & <api> é".into())]
        );
    }

    #[test]
    fn an_empty_reservation_set_is_zero_instances() {
        let p = describe_instances(page(&[], None).as_bytes()).unwrap();
        assert!(p.instances.is_empty());
        assert_eq!(p.next_token, None);
    }

    #[test]
    fn anything_but_a_complete_response_is_an_error() {
        let full = page(&[("i-1", "10.0.0.1", None)], None);
        let truncated = &full[..full.len() - 30];
        for body in [
            truncated,
            "",
            "<Response><Errors/></Response>",
            "<DescribeInstancesResponse><requestId>x</requestId></DescribeInstancesResponse>",
            "{\"reservations\":[]}",
            "<DescribeInstancesResponse><reservationSet><item><instancesSet>",
        ] {
            assert!(describe_instances(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn reads_aws_errors() {
        let ec2 = b"<?xml version=\"1.0\"?><Response><Errors><Error><Code>UnauthorizedOperation</Code>\
            <Message>You are not authorized</Message></Error></Errors><RequestID>r</RequestID></Response>";
        assert_eq!(
            error(ec2),
            Some((
                "UnauthorizedOperation".into(),
                "You are not authorized".into()
            ))
        );
        let sts = b"<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
            <Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>bad</Message></Error></ErrorResponse>";
        assert_eq!(
            error(sts),
            Some(("InvalidIdentityToken".into(), "bad".into()))
        );
        assert_eq!(error(b"<html>"), None);
    }

    #[test]
    fn reads_web_identity_credentials() {
        let body = b"<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
            <AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIA1</AccessKeyId>\
            <SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken>\
            <Expiration>2026-12-01T20:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult>\
            </AssumeRoleWithWebIdentityResponse>";
        let c = assume_role_with_web_identity(body).unwrap();
        assert_eq!(c.access_key_id, "ASIA1");
        assert_eq!(c.expiration, "2026-12-01T20:00:00Z");
        assert!(assume_role_with_web_identity(&body[..body.len() - 10]).is_err());
    }
}
