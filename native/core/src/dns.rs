//! DNS discovery: one poll = one [`lookup`] of a few (name, record type) questions on
//! hickory-resolver, answered with a single [`Event`].
//!
//! The Elixir side owns the schedule; this module only answers "who is there right now". Each
//! question is asked concurrently. The resolver follows CNAME chains, retries a truncated UDP
//! answer over TCP, and reads the system configuration (`/etc/resolv.conf`: nameservers, search
//! domains, `ndots`) unless explicit nameservers are given.
//!
//! How answers combine into the one event of a poll:
//!
//! * every question answered (records, NODATA or NXDOMAIN) → `Nodes(all names)`; NXDOMAIN and
//!   NODATA count as "no records", and the Elixir side decides whether to trust a sudden empty set
//! * some questions failed (timeout, SERVFAIL, REFUSED, network) and some answered →
//!   `Partial { nodes, error }`: the names found are connected but nothing is pruned, since the
//!   failed questions' nodes are unknown
//! * every question failed → `Error`, naming each question and the servers asked
//!   (`A records of "app.internal" from 10.0.0.2:53: no answer (2 attempt(s) of 2s each)`)
//!
//! Names are built and validated here ([`crate::node_name`]); an invalid one (a hostile SRV
//! target, say) is dropped and counted, never sent.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use futures::future::join_all;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::event::{Error, ErrorKind, Event};
use crate::node_name;

/// The record types a question can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    A,
    Aaaa,
    Srv,
}

impl Kind {
    fn record_type(self) -> RecordType {
        match self {
            Kind::A => RecordType::A,
            Kind::Aaaa => RecordType::AAAA,
            Kind::Srv => RecordType::SRV,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::A => "A",
            Kind::Aaaa => "AAAA",
            Kind::Srv => "SRV",
        }
    }
}

/// One name to ask about, the record types to ask for, and the basename its nodes get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub basename: String,
    pub name: String,
    pub kinds: Vec<Kind>,
}

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Explicit servers (`ip:port`); empty means "the system configuration".
    pub nameservers: Vec<SocketAddr>,
    /// The resolv.conf to read when `nameservers` is empty.
    pub resolv_conf: PathBuf,
    /// Deadline of one query to one server.
    pub timeout: Duration,
    /// Tries per server.
    pub attempts: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            nameservers: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// A resolver built from `settings`, and a description of the servers it asks (for messages).
fn resolver(settings: &Settings) -> Result<(TokioResolver, String), Error> {
    let (config, mut opts) = if settings.nameservers.is_empty() {
        let data = std::fs::read(&settings.resolv_conf).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot read {}: {e}", settings.resolv_conf.display()),
            )
        })?;
        hickory_resolver::system_conf::parse_resolv_conf(data).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot use {}: {e}", settings.resolv_conf.display()),
            )
        })?
    } else {
        let servers = settings
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    let servers = describe_servers(&config);
    opts.timeout = settings.timeout;
    opts.attempts = settings.attempts.max(1);
    // Every poll must see the server's current answer, and only DNS is asked (like :inet_res).
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.try_tcp_on_error = true;
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = opts;
    let resolver = builder.build().map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot build a resolver for {servers}: {e}"),
        )
    })?;
    Ok((resolver, servers))
}

fn describe_servers(config: &ResolverConfig) -> String {
    let mut seen = Vec::new();
    for ns in config.name_servers() {
        let port = ns.connections.first().map(|c| c.port).unwrap_or(53);
        let text = SocketAddr::new(ns.ip, port).to_string();
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    seen.join(", ")
}

/// What one (name, type) question produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Node names (validated), and how many records were dropped as invalid names.
    Names { names: Vec<String>, dropped: usize },
    /// NXDOMAIN or NODATA: the server says there is nothing.
    Nothing,
    /// The question could not be answered.
    Failed(Error),
}

/// Ask every question (each record type of each name concurrently) and combine the answers.
pub async fn lookup(settings: &Settings, questions: &[Question]) -> Event {
    let (resolver, servers) = match resolver(settings) {
        Ok(r) => r,
        Err(e) => return Event::Error(e),
    };
    // Bounds a question even if the resolver walks several search domains or servers.
    let deadline = settings.timeout * (settings.attempts.max(1) as u32) * 4;
    let (resolver, servers) = (&resolver, servers.as_str());
    let asks = questions.iter().flat_map(|q| {
        q.kinds.iter().map(move |&kind| async move {
            let answer = match tokio::time::timeout(
                deadline,
                resolver.lookup(q.name.as_str(), kind.record_type()),
            )
            .await
            {
                Err(_) => Answer::Failed(Error::new(
                    ErrorKind::Timeout,
                    format!("no answer within {deadline:?}"),
                )),
                Ok(Ok(lookup)) => {
                    names_from_records(&q.basename, kind, lookup.answers().iter().map(|r| &r.data))
                }
                Ok(Err(e)) => match classify(&e) {
                    // hickory says only "request timed out": say what was tried.
                    Answer::Failed(err) if err.kind == ErrorKind::Timeout => {
                        Answer::Failed(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "no answer ({} attempt(s) of {:?} each)",
                                settings.attempts.max(1),
                                settings.timeout
                            ),
                        ))
                    }
                    answer => answer,
                },
            };
            (
                format!("{} records of \"{}\" from {servers}", kind.as_str(), q.name),
                answer,
            )
        })
    });
    let answers = join_all(asks).await;
    combine(answers)
}

/// Node names from the records of one answer. Records of other types (the CNAMEs of a chain)
/// are skipped; invalid names are dropped and counted.
fn names_from_records<'a>(
    basename: &str,
    kind: Kind,
    records: impl Iterator<Item = &'a RData>,
) -> Answer {
    let mut names = Vec::new();
    let mut dropped = 0;
    for data in records {
        let name = match (kind, data) {
            (Kind::A, RData::A(a)) => node_name::from_ip(basename, IpAddr::V4(a.0)),
            (Kind::Aaaa, RData::AAAA(a)) => node_name::from_ip(basename, IpAddr::V6(a.0)),
            (Kind::Srv, RData::SRV(srv)) => {
                let target = srv.target.to_ascii();
                let host = target.strip_suffix('.').unwrap_or(&target);
                node_name::join(basename, host)
            }
            _ => continue,
        };
        match name {
            Some(n) => names.push(n),
            None => dropped += 1,
        }
    }
    if names.is_empty() && dropped == 0 {
        Answer::Nothing
    } else {
        Answer::Names { names, dropped }
    }
}

/// NXDOMAIN and NODATA are answers ("nothing there"); everything else is a failure.
fn classify(err: &NetError) -> Answer {
    let kind = match err {
        NetError::Dns(DnsError::NoRecordsFound(_)) => return Answer::Nothing,
        NetError::Timeout => ErrorKind::Timeout,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => return Answer::Nothing,
        NetError::Dns(DnsError::ResponseCode(code)) => {
            let message = match code {
                ResponseCode::Refused => "the server refused to answer (REFUSED)".to_string(),
                ResponseCode::ServFail => "the server failed to answer (SERVFAIL)".to_string(),
                other => format!("the server answered with an error: {other}"),
            };
            return Answer::Failed(Error::new(ErrorKind::ServFail, message));
        }
        NetError::Io(io) => ErrorKind::from_io(io),
        NetError::NoConnections | NetError::Busy => ErrorKind::Unreachable,
        NetError::Proto(_) | NetError::Truncated => ErrorKind::Malformed,
        _ => ErrorKind::Io,
    };
    Answer::Failed(Error::new(kind, err.to_string()))
}

/// One event from the answers of a poll; see the module documentation for the rule.
pub fn combine(answers: Vec<(String, Answer)>) -> Event {
    let mut names = BTreeSet::new();
    let mut failures: Vec<(String, Error)> = Vec::new();
    let mut answered = 0;
    let mut dropped = 0;
    for (question, answer) in answers {
        match answer {
            Answer::Names {
                names: n,
                dropped: d,
            } => {
                answered += 1;
                dropped += d;
                names.extend(n);
            }
            Answer::Nothing => answered += 1,
            Answer::Failed(e) => failures.push((question, e)),
        }
    }
    if dropped > 0 {
        tracing::debug!(
            dropped,
            "DNS records that make no valid node name were dropped"
        );
    }
    let nodes: Vec<String> = names.into_iter().collect();
    if failures.is_empty() {
        return Event::Nodes(nodes);
    }
    let kind = failures[0].1.kind;
    let message = failures
        .iter()
        .map(|(q, e)| format!("{q}: {}", e.message))
        .collect::<Vec<_>>()
        .join("; ");
    let error = Error::new(kind, message);
    if answered == 0 {
        Event::Error(error)
    } else {
        Event::Partial { nodes, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, SRV};
    use hickory_resolver::proto::rr::Name;
    use std::str::FromStr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    fn ok(names: &[&str]) -> Answer {
        Answer::Names {
            names: names.iter().map(|s| s.to_string()).collect(),
            dropped: 0,
        }
    }

    #[test]
    fn builds_names_from_a_aaaa_and_srv_and_skips_cnames() {
        let records = [
            RData::CNAME(CNAME(Name::from_str("real.example.").unwrap())),
            RData::A(A("10.0.0.1".parse().unwrap())),
            RData::A(A("10.0.0.2".parse().unwrap())),
        ];
        assert_eq!(
            names_from_records("app", Kind::A, records.iter()),
            ok(&["app@10.0.0.1", "app@10.0.0.2"])
        );
        let v6 = [RData::AAAA(AAAA("fd00::1".parse().unwrap()))];
        assert_eq!(
            names_from_records("app", Kind::Aaaa, v6.iter()),
            ok(&["app@fd00::1"])
        );
        let srv = [RData::SRV(SRV::new(
            10,
            10,
            4000,
            Name::from_str("app-0.app.default.svc.cluster.local.").unwrap(),
        ))];
        assert_eq!(
            names_from_records("app", Kind::Srv, srv.iter()),
            ok(&["app@app-0.app.default.svc.cluster.local"])
        );
    }

    #[test]
    fn drops_names_that_are_not_node_names() {
        let srv = [
            RData::SRV(SRV::new(0, 0, 1, Name::from_str("ok.example.").unwrap())),
            RData::SRV(SRV::new(
                0,
                0,
                1,
                Name::from_labels(vec![&b"b@d x"[..], b"example"]).unwrap(),
            )),
        ];
        assert_eq!(
            names_from_records("app", Kind::Srv, srv.iter()),
            Answer::Names {
                names: vec!["app@ok.example".into()],
                dropped: 1
            }
        );
        let a = [RData::A(A("10.0.0.1".parse().unwrap()))];
        assert_eq!(
            names_from_records("bad name", Kind::A, a.iter()),
            Answer::Names {
                names: vec![],
                dropped: 1
            }
        );
        assert_eq!(
            names_from_records("app", Kind::A, [].iter()),
            Answer::Nothing
        );
    }

    #[test]
    fn ten_thousand_records_take_milliseconds() {
        let records: Vec<RData> = (0..10_000u32)
            .map(|i| RData::A(A(std::net::Ipv4Addr::from(0x0a00_0000 + i))))
            .collect();
        let start = Instant::now();
        let answer = names_from_records("app", Kind::A, records.iter());
        let event = combine(vec![("A big".into(), answer)]);
        let elapsed = start.elapsed();
        match event {
            Event::Nodes(n) => assert_eq!(n.len(), 10_000),
            other => panic!("unexpected {other:?}"),
        }
        assert!(elapsed < Duration::from_millis(500), "took {elapsed:?}");
    }

    #[test]
    fn combines_answers_by_the_documented_rule() {
        let timeout = || Answer::Failed(Error::new(ErrorKind::Timeout, "request timed out"));
        // All answered: the union, sorted and deduplicated; NXDOMAIN counts as nothing.
        assert_eq!(
            combine(vec![
                ("A x".into(), ok(&["app@10.0.0.2", "app@10.0.0.1"])),
                ("AAAA x".into(), Answer::Nothing),
                ("A y".into(), ok(&["app@10.0.0.1"])),
            ]),
            Event::Nodes(vec!["app@10.0.0.1".into(), "app@10.0.0.2".into()])
        );
        assert_eq!(
            combine(vec![("A x".into(), Answer::Nothing)]),
            Event::Nodes(vec![])
        );
        // Some failed: partial.
        match combine(vec![
            ("A x via 127.0.0.1:53".into(), ok(&["app@10.0.0.1"])),
            ("A y via 127.0.0.1:53".into(), timeout()),
        ]) {
            Event::Partial { nodes, error } => {
                assert_eq!(nodes, vec!["app@10.0.0.1".to_string()]);
                assert_eq!(error.kind, ErrorKind::Timeout);
                assert_eq!(error.message, "A y via 127.0.0.1:53: request timed out");
            }
            other => panic!("unexpected {other:?}"),
        }
        // All failed: an error naming every question.
        match combine(vec![("A x".into(), timeout()), ("A y".into(), timeout())]) {
            Event::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Timeout);
                assert!(e.message.contains("A x") && e.message.contains("A y"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn classifies_resolver_errors() {
        use hickory_resolver::net::NoRecords;
        use hickory_resolver::proto::op::Query;
        let nx = NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
            Query::default(),
            ResponseCode::NXDomain,
        )));
        assert_eq!(classify(&nx), Answer::Nothing);
        let servfail = NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail));
        assert_eq!(
            classify(&servfail),
            Answer::Failed(Error::new(
                ErrorKind::ServFail,
                "the server failed to answer (SERVFAIL)"
            ))
        );
        let refused = NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused));
        assert_eq!(
            classify(&refused),
            Answer::Failed(Error::new(
                ErrorKind::ServFail,
                "the server refused to answer (REFUSED)"
            ))
        );
        assert!(
            matches!(classify(&NetError::Timeout), Answer::Failed(e) if e.kind == ErrorKind::Timeout)
        );
    }

    #[test]
    fn reads_search_and_ndots_from_a_resolv_conf() {
        let dir = std::env::temp_dir().join(format!("lcrs-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(
            &path,
            "nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
        )
        .unwrap();
        let settings = Settings {
            resolv_conf: path.clone(),
            ..Settings::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (resolver, servers) = resolver(&settings).unwrap();
            assert_eq!(servers, "127.0.0.1:53");
            assert_eq!(resolver.options().ndots, 5);
        });
        let missing = Settings {
            resolv_conf: dir.join("nope"),
            ..Settings::default()
        };
        assert_eq!(resolver(&missing).unwrap_err().kind, ErrorKind::Config);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A UDP server on loopback that never answers: the query must time out with a message that
    /// names the question and the server.
    #[tokio::test]
    async fn a_silent_server_times_out_naming_query_and_server() {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let settings = Settings {
            nameservers: vec![addr],
            timeout: Duration::from_millis(200),
            attempts: 1,
            ..Settings::default()
        };
        let questions = [Question {
            basename: "app".into(),
            name: "app.cluster.test.".into(),
            kinds: vec![Kind::A],
        }];
        let start = Instant::now();
        let event = lookup(&settings, &questions).await;
        assert!(start.elapsed() < Duration::from_secs(3));
        match event {
            Event::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
                assert!(
                    e.message
                        .contains("A records of \"app.cluster.test.\" from 127.0.0.1:"),
                    "{e}"
                );
                assert!(
                    e.message.contains("no answer (1 attempt(s) of 200ms each)"),
                    "{e}"
                );
                assert!(e.message.contains(&addr.to_string()), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(sock);
    }

    /// A server on loopback that answers UDP with an empty truncated reply (TC=1) and TCP with
    /// `count` A records behind a CNAME: the resolver must retry over TCP and follow the CNAME.
    async fn truncating_server(count: u32) -> (SocketAddr, Arc<AtomicUsize>) {
        use hickory_resolver::proto::op::{Message, OpCode};
        use hickory_resolver::proto::rr::Record;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let query = Message::from_vec(&buf[..n]).unwrap();
                let mut reply = Message::response(query.metadata.id, OpCode::Query);
                reply.metadata.truncation = true;
                reply.add_queries(query.queries.clone());
                udp.send_to(&reply.to_vec().unwrap(), from).await.unwrap();
            }
        });
        let counter = tcp_queries.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = tcp.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    while sock.read_exact(&mut len).await.is_ok() {
                        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                        sock.read_exact(&mut buf).await.unwrap();
                        counter.fetch_add(1, Ordering::SeqCst);
                        let query = Message::from_vec(&buf).unwrap();
                        let name = query.queries[0].name().clone();
                        let real = Name::from_str("real.cluster.test.").unwrap();
                        let mut reply = Message::response(query.metadata.id, OpCode::Query);
                        reply.add_queries(query.queries.clone());
                        if query.queries[0].query_type() == RecordType::A {
                            reply.add_answer(Record::from_rdata(
                                name,
                                0,
                                RData::CNAME(CNAME(real.clone())),
                            ));
                            for i in 0..count {
                                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
                                reply.add_answer(Record::from_rdata(
                                    real.clone(),
                                    0,
                                    RData::A(A(ip)),
                                ));
                            }
                        }
                        let bytes = reply.to_vec().unwrap();
                        sock.write_all(&(bytes.len() as u16).to_be_bytes())
                            .await
                            .unwrap();
                        sock.write_all(&bytes).await.unwrap();
                    }
                });
            }
        });
        (addr, tcp_queries)
    }

    #[tokio::test]
    async fn a_truncated_answer_is_retried_over_tcp_and_cnames_are_followed() {
        let (addr, tcp_queries) = truncating_server(2_000).await;
        let settings = Settings {
            nameservers: vec![addr],
            timeout: Duration::from_secs(2),
            attempts: 1,
            ..Settings::default()
        };
        let questions = [Question {
            basename: "app".into(),
            name: "app.cluster.test.".into(),
            kinds: vec![Kind::A],
        }];
        match lookup(&settings, &questions).await {
            Event::Nodes(nodes) => {
                assert_eq!(nodes.len(), 2_000);
                assert!(nodes.contains(&"app@10.0.0.1".to_string()));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(tcp_queries.load(Ordering::SeqCst) >= 1);
    }
}
