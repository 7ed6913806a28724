//! Node names as they cross into Elixir. Rust never makes atoms; it makes sure that what Elixir will
//! turn into an atom is a plausible `name@host` of bounded length, so that untrusted input (DNS
//! answers, HTTP bodies, datagrams) cannot smuggle arbitrary strings into the atom table.

use std::net::IpAddr;

/// Erlang atoms hold at most 255 characters.
pub const MAX_NODE_NAME_LEN: usize = 255;

/// Whether `s` is a valid node name: `name@host`, the name made of ASCII letters, digits, `_` and
/// `-`, the host a hostname, an IPv4 address or an IPv6 address, at most 255 bytes in all.
pub fn is_valid(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_NODE_NAME_LEN {
        return false;
    }
    let Some((name, host)) = s.split_once('@') else {
        return false;
    };
    is_valid_basename(name) && is_valid_host(host)
}

/// The part before `@`.
pub fn is_valid_basename(name: &str) -> bool {
    !name.is_empty()
        && name.len() < MAX_NODE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The part after `@`: a DNS name (letters, digits, `-`, `_`, `.`) or an IP address.
pub fn is_valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() >= MAX_NODE_NAME_LEN {
        return false;
    }
    if host.contains(':') {
        return host.parse::<IpAddr>().is_ok();
    }
    !host.starts_with('.')
        && !host.starts_with('-')
        && !host.contains("..")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `basename@host`, or `None` when the result would not be a valid node name.
pub fn join(basename: &str, host: &str) -> Option<String> {
    let node = format!("{basename}@{host}");
    is_valid(&node).then_some(node)
}

/// `basename@<ip>`, the form DNSPoll and Kubernetes `:ip` mode use. IPv6 addresses use the
/// RFC 5952 text form, which is what `:inet.ntoa/1` prints for ordinary addresses.
pub fn from_ip(basename: &str, ip: IpAddr) -> Option<String> {
    join(basename, &ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "app@10.0.0.1",
            "my_app-1@host.example.com",
            "app@::1",
            "app@fd00::1:2",
            "a@b",
            "app@pod-1.svc.cluster.local",
        ] {
            assert!(is_valid(ok), "{ok}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_node_name() {
        let long = format!("a@{}", "h".repeat(300));
        for bad in [
            "",
            "app",
            "@host",
            "app@",
            "app@host@x",
            "ap p@host",
            "app@ho st",
            "app@ho\0st",
            "app@:::",
            "app@..x",
            "app@-x",
            "app@'x'",
            "é@host",
            long.as_str(),
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn builds_names_from_ips() {
        assert_eq!(
            from_ip("app", "10.1.2.3".parse().unwrap()).as_deref(),
            Some("app@10.1.2.3")
        );
        assert_eq!(
            from_ip("app", "fd00:0:0:0:0:0:0:1".parse().unwrap()).as_deref(),
            Some("app@fd00::1")
        );
        assert_eq!(from_ip("bad name", "10.1.2.3".parse().unwrap()), None);
    }
}
