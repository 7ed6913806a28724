//! Node names as they cross into Elixir, and **the** rule for which names are valid: Elixir asks
//! this module too (through the `node_names_check/1` NIF), so both sides agree by construction.
//! Rust never makes atoms; it makes sure that what Elixir will turn into an atom is a plausible
//! `name@host` of bounded length, so that untrusted input (DNS answers, HTTP bodies, datagrams)
//! cannot smuggle arbitrary strings into the atom table.
//!
//! # The rule
//!
//! A valid node name is `name@host`, at most 255 bytes (an atom's limit), where:
//!
//! - `name` is one or more ASCII letters, digits, `_`, `-` or `.`, without `..`;
//! - `host` is either an IP address as Rust's and Erlang's parsers read it (IPv4 dotted quad, or
//!   IPv6 in any RFC 4291 text form: a host containing `:` must parse as an IPv6 address, so
//!   `app@:::` and `app@1:2` are rejected), or a hostname: ASCII letters, digits, `_`, `-`, `.`,
//!   starting and ending with a letter, digit or `_`, without `..`.
//!
//! Why: the host part is what Erlang's distribution dials (`inet:getaddr/2` on it, or the address
//! itself), and the whole name must match what the peer was started with (`--name`). An IPv6-looking
//! host that is not an address cannot be dialled. A hostname with an empty label (`a..b`,
//! `.host`) does not resolve. A trailing dot (`host.`, the DNS root) would resolve, but a node is
//! never started as `app@host.`, so `app@host.` names a node that does not exist and would only
//! make a second atom for `app@host`; it is rejected. Zone ids (`fe80::1%eth0`) are rejected: no
//! discovery source produces them and `%` has no place in an atom we make from the network.
//!
//! The same cases are tested on both sides from `test/fixtures/node_names.txt`.

use std::net::IpAddr;

/// Erlang atoms hold at most 255 characters.
pub const MAX_NODE_NAME_LEN: usize = 255;

/// Whether `s` is a valid node name (see the module docs for the rule).
pub fn is_valid(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_NODE_NAME_LEN {
        return false;
    }
    let Some((name, host)) = s.split_once('@') else {
        return false;
    };
    is_valid_basename(name) && is_valid_host(host)
}

/// The part before `@`: ASCII letters, digits, `_`, `-`, `.`, without `..`.
pub fn is_valid_basename(name: &str) -> bool {
    !name.is_empty() && name.len() < MAX_NODE_NAME_LEN && name_chars(name.as_bytes())
}

/// Letters, digits, `_`, `-` and `.`, without two dots in a row: one pass, no substring search
/// (this runs for every gossip datagram).
fn name_chars(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    bytes.iter().all(|&b| {
        let ok = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && prev != b'.');
        prev = b;
        ok
    })
}

/// The part after `@`: an IP address, or a hostname (letters, digits, `-`, `_`, `.`; first and
/// last character a letter, digit or `_`; no `..`).
pub fn is_valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() >= MAX_NODE_NAME_LEN {
        return false;
    }
    if host.contains(':') {
        return host.parse::<IpAddr>().is_ok();
    }
    let edge = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = host.as_bytes();
    edge(bytes[0]) && edge(bytes[bytes.len() - 1]) && name_chars(bytes)
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

    /// `(name, valid)` from the shared table, with its placeholders expanded.
    fn table() -> Vec<(String, bool)> {
        include_str!("../../../test/fixtures/node_names.txt")
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|line| {
                let (verdict, name) = line
                    .split_once(' ')
                    .expect("`valid NAME` or `invalid NAME`");
                let name = match name {
                    "<empty>" => String::new(),
                    "<long>" => format!("a@{}", "h".repeat(298)),
                    "<max>" => format!("a@{}", "h".repeat(253)),
                    other => other.replace("<sp>", " ").replace("<nul>", "\0"),
                };
                let valid = match verdict {
                    "valid" => true,
                    "invalid" => false,
                    other => panic!("unknown verdict {other:?} in {line:?}"),
                };
                (name, valid)
            })
            .collect()
    }

    #[test]
    fn agrees_with_the_shared_table() {
        let table = table();
        assert!(table.len() > 30, "the table was not read");
        for (name, valid) in table {
            assert_eq!(is_valid(&name), valid, "{name:?}");
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
