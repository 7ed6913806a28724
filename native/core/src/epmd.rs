//! Asking epmd (port 4369) which node names a host runs: the EPMD `NAMES_REQ` request.
//!
//! Every host is asked concurrently with its own deadline, and each answer is reported as soon as it
//! arrives, so a host that never answers delays nobody else.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::event::{Error, ErrorKind, Event, Sink};

/// epmd's well-known port.
pub const DEFAULT_PORT: u16 = 4369;
/// An epmd answer larger than this is not an epmd answer.
const MAX_REPLY: usize = 64 * 1024;
/// `NAMES_REQ`: a 2-byte length (1) and the request code `n` (110).
const NAMES_REQ: [u8; 3] = [0, 1, 110];

/// The names registered in the epmd of `host:port`, within `timeout` (connect included).
pub async fn names(host: &str, port: u16, timeout: Duration) -> Result<Vec<String>, Error> {
    match tokio::time::timeout(timeout, names_unbounded(host, port)).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("epmd on {host}:{port} did not answer within {timeout:?}"),
        )),
    }
}

async fn names_unbounded(host: &str, port: u16) -> Result<Vec<String>, Error> {
    let describe = |e: std::io::Error| {
        Error::new(
            ErrorKind::from_io(&e),
            format!("epmd on {host}:{port}: {e}"),
        )
    };
    let mut stream = TcpStream::connect((host, port)).await.map_err(describe)?;
    stream.write_all(&NAMES_REQ).await.map_err(describe)?;
    let mut reply = Vec::new();
    (&mut stream)
        .take(MAX_REPLY as u64 + 1)
        .read_to_end(&mut reply)
        .await
        .map_err(describe)?;
    if reply.len() > MAX_REPLY {
        return Err(Error::new(
            ErrorKind::Malformed,
            format!("epmd on {host}:{port} sent more than {MAX_REPLY} bytes"),
        ));
    }
    parse_names_reply(&reply).map_err(|why| {
        Error::new(
            ErrorKind::Malformed,
            format!("epmd on {host}:{port}: {why}"),
        )
    })
}

/// Parse a `NAMES_RESP`: a 4-byte epmd port, then lines `name <name> at port <port>\n`.
/// Lines that do not have that shape, or names that are not valid node basenames, are skipped.
pub fn parse_names_reply(reply: &[u8]) -> Result<Vec<String>, &'static str> {
    if reply.len() < 4 {
        return Err("reply shorter than its 4-byte header");
    }
    let text = std::str::from_utf8(&reply[4..]).map_err(|_| "reply is not text")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("name ")?;
            let (name, port) = rest.rsplit_once(" at port ")?;
            port.trim().parse::<u16>().ok()?;
            crate::node_name::is_valid_basename(name).then(|| name.to_string())
        })
        .collect())
}

/// Ask every host concurrently and report each answer (or error) as it arrives, then `Done`.
/// Stops early when the sink's owner has gone.
pub async fn query_hosts(hosts: Vec<String>, port: u16, timeout: Duration, sink: Arc<dyn Sink>) {
    let mut pending: FuturesUnordered<_> = hosts
        .into_iter()
        .map(|host| async move {
            let result = names(&host, port, timeout).await;
            (host, result)
        })
        .collect();
    while let Some((host, result)) = pending.next().await {
        let event = match result {
            Ok(names) => Event::EpmdNames { host, names },
            Err(error) => Event::EpmdError { host, error },
        };
        if !sink.send(event) {
            return;
        }
    }
    sink.send(Event::Done);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    #[test]
    fn parses_a_names_reply() {
        let mut reply = vec![0, 0, 0x11, 0x11];
        reply.extend_from_slice(b"name a at port 4000\nname b_2 at port 4001\n");
        assert_eq!(parse_names_reply(&reply).unwrap(), vec!["a", "b_2"]);
    }

    #[test]
    fn skips_lines_of_another_shape() {
        let mut reply = vec![0, 0, 0x11, 0x11];
        reply.extend_from_slice(
            b"garbage\nname ok at port 1\nname bad name at port x\nname  at port 3\n",
        );
        assert_eq!(parse_names_reply(&reply).unwrap(), vec!["ok"]);
        assert!(parse_names_reply(&[0, 0]).is_err());
        assert!(parse_names_reply(&[0, 0, 0, 0, 0xff, 0xfe]).is_err());
    }

    /// A fake epmd that answers `NAMES_REQ` with the given names.
    async fn fake_epmd(names: &'static [&'static str]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut req = [0u8; 3];
                sock.read_exact(&mut req).await.unwrap();
                assert_eq!(req, NAMES_REQ);
                let mut reply = vec![0, 0, 0x11, 0x11];
                for (i, n) in names.iter().enumerate() {
                    reply.extend_from_slice(format!("name {n} at port {}\n", 5000 + i).as_bytes());
                }
                sock.write_all(&reply).await.unwrap();
            }
        });
        port
    }

    #[tokio::test]
    async fn asks_a_real_socket() {
        let port = fake_epmd(&["alpha", "beta"]).await;
        let names = names("127.0.0.1", port, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(names, vec!["alpha", "beta"]);
    }

    #[tokio::test]
    async fn a_silent_host_times_out_without_delaying_a_live_one() {
        let live = fake_epmd(&["alpha"]).await;
        // Accepts connections and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = silent.accept().await {
                held.push(sock);
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        // The two hosts use different ports here, so query them as two tasks sharing one sink.
        let sink: Arc<dyn Sink> = Arc::new(tx);
        let s1 = sink.clone();
        tokio::spawn(async move {
            query_hosts(
                vec!["127.0.0.1".into()],
                silent_port,
                Duration::from_millis(500),
                s1,
            )
            .await
        });
        tokio::spawn(query_hosts(
            vec!["127.0.0.1".into()],
            live,
            Duration::from_millis(500),
            sink,
        ));
        let first = rx.recv().await.unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "live host was delayed"
        );
        assert_eq!(
            first,
            Event::EpmdNames {
                host: "127.0.0.1".into(),
                names: vec!["alpha".into()]
            }
        );
        let mut saw_timeout = false;
        while let Some(ev) = rx.recv().await {
            if let Event::EpmdError { error, .. } = ev {
                assert_eq!(error.kind, ErrorKind::Timeout);
                saw_timeout = true;
                break;
            }
        }
        assert!(saw_timeout);
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = names("127.0.0.1", port, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Refused);
    }
}
