//! The authenticated format of libcluster_rs: `LCG2` ++ timestamp (u64 BE, ms since the Unix
//! epoch) ++ 12-byte random nonce ++ ChaCha20-Poly1305(key, nonce, node name, aad = the 24 header
//! bytes). The key is HKDF-SHA256(secret). The receiver checks the timestamp against a window and
//! the nonce against the nonces seen within that window ([`ReplayGuard`]).

use std::collections::{HashMap, VecDeque};

use super::{Reject, MAX_DATAGRAM};
use crate::gossip::crypto;
use crate::node_name;

/// The prefix of every authenticated datagram.
pub const AUTH_MAGIC: &[u8; 4] = b"LCG2";
const AUTH_HEADER: usize = 4 + 8 + 12;
const AUTH_TAG: usize = 16;

pub fn encode_authenticated(
    node: &str,
    key: &[u8; 32],
    timestamp_ms: u64,
    nonce: [u8; 12],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(AUTH_HEADER + node.len() + AUTH_TAG);
    out.extend_from_slice(AUTH_MAGIC);
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&nonce);
    let sealed = crypto::seal(key, &nonce, &out, node.as_bytes());
    out.extend_from_slice(&sealed);
    out
}

/// A verified authenticated datagram, before the replay check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub node: String,
    pub timestamp_ms: u64,
    pub nonce: [u8; 12],
}

/// Verifies the AEAD tag and the name. Time and replay are checked by [`ReplayGuard`].
pub fn open_authenticated(datagram: &[u8], key: &[u8; 32]) -> Result<Authenticated, Reject> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(Reject::TooLarge);
    }
    if datagram.len() < AUTH_HEADER + AUTH_TAG + 3 || !datagram.starts_with(AUTH_MAGIC) {
        return Err(Reject::Malformed);
    }
    let (header, sealed) = datagram.split_at(AUTH_HEADER);
    let timestamp_ms = u64::from_be_bytes(header[4..12].try_into().map_err(|_| Reject::Malformed)?);
    let nonce: [u8; 12] = header[12..24].try_into().map_err(|_| Reject::Malformed)?;
    let plain = crypto::open(key, &nonce, header, sealed).ok_or(Reject::Auth)?;
    let node = String::from_utf8(plain).map_err(|_| Reject::BadName)?;
    if !node_name::is_valid(&node) {
        return Err(Reject::BadName);
    }
    Ok(Authenticated {
        node,
        timestamp_ms,
        nonce,
    })
}

/// Rejects authenticated datagrams whose timestamp is more than `window_ms` away from now, and
/// nonces already accepted within the window. Only datagrams that passed the AEAD check are
/// recorded, so a sender without the key cannot fill it.
pub struct ReplayGuard {
    window_ms: u64,
    max_entries: usize,
    seen: HashMap<[u8; 12], u64>,
    order: VecDeque<([u8; 12], u64)>,
}

impl ReplayGuard {
    pub fn new(window_ms: u64, max_entries: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            max_entries,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn check(&mut self, msg: &Authenticated, now_ms: u64) -> Result<(), Reject> {
        if msg.timestamp_ms.abs_diff(now_ms) > self.window_ms {
            return Err(Reject::Stale);
        }
        self.expire(now_ms);
        if self.seen.contains_key(&msg.nonce) {
            return Err(Reject::Replay);
        }
        if self.seen.len() >= self.max_entries {
            // Only authentic traffic gets here; dropping the oldest keeps memory bounded. A
            // datagram whose nonce was evicted still needs a timestamp inside the window.
            if let Some((old, _)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(msg.nonce, msg.timestamp_ms);
        self.order.push_back((msg.nonce, now_ms));
        Ok(())
    }

    fn expire(&mut self, now_ms: u64) {
        // Entries are kept for twice the window: a timestamp may be up to `window` in the future.
        while let Some(&(nonce, at)) = self.order.front() {
            if now_ms.saturating_sub(at) > 2 * self.window_ms {
                self.order.pop_front();
                self.seen.remove(&nonce);
            } else {
                break;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode_heartbeat, encode_v1_plain, encode_v1_secret, keys, Format, Mode};
    use super::*;

    #[test]
    fn authenticated_round_trip() {
        let k = keys(b"s3cret");
        let mut guard = ReplayGuard::new(30_000, 1024);
        let d = encode_authenticated("app@10.0.0.2", k.aead.as_ref().unwrap(), 1_000_000, [7; 12]);
        let r = decode_heartbeat(&d, Mode::Authenticated, &k, &mut guard, 1_000_500).unwrap();
        assert_eq!(r, ("app@10.0.0.2".to_string(), Format::Authenticated));
    }

    #[test]
    fn authenticated_negative_suite() {
        let k = keys(b"s3cret");
        let key = *k.aead.as_ref().unwrap();
        let now = 5_000_000;
        let d = encode_authenticated("app@10.0.0.2", &key, now, [9; 12]);

        // wrong key
        let mut g = ReplayGuard::new(30_000, 1024);
        let wrong = keys(b"other");
        assert_eq!(
            decode_heartbeat(&d, Mode::Authenticated, &wrong, &mut g, now),
            Err(Reject::Auth)
        );

        // a flipped bit anywhere
        for byte in 0..d.len() {
            for bit in 0..8 {
                let mut t = d.clone();
                t[byte] ^= 1 << bit;
                let mut g = ReplayGuard::new(30_000, 1024);
                let r = decode_heartbeat(&t, Mode::Authenticated, &k, &mut g, now);
                assert!(r.is_err(), "bit {bit} of byte {byte} flipped was accepted");
            }
        }

        // replay
        let mut g = ReplayGuard::new(30_000, 1024);
        assert!(decode_heartbeat(&d, Mode::Authenticated, &k, &mut g, now).is_ok());
        assert_eq!(
            decode_heartbeat(&d, Mode::Authenticated, &k, &mut g, now + 10),
            Err(Reject::Replay)
        );

        // old and future timestamps
        let mut g = ReplayGuard::new(30_000, 1024);
        assert_eq!(
            decode_heartbeat(&d, Mode::Authenticated, &k, &mut g, now + 30_001),
            Err(Reject::Stale)
        );
        assert_eq!(
            decode_heartbeat(&d, Mode::Authenticated, &k, &mut g, now - 30_001),
            Err(Reject::Stale)
        );

        // truncated and extended
        for len in 0..d.len() {
            let mut g = ReplayGuard::new(30_000, 1024);
            assert!(decode_heartbeat(&d[..len], Mode::Authenticated, &k, &mut g, now).is_err());
        }
        let mut g = ReplayGuard::new(30_000, 1024);
        let longer = [d.clone(), vec![0]].concat();
        assert!(decode_heartbeat(&longer, Mode::Authenticated, &k, &mut g, now).is_err());

        // v1 datagrams are not accepted in authenticated mode
        let v1 = encode_v1_secret("app@h", k.v1.as_ref().unwrap(), [1; 16]);
        assert!(decode_heartbeat(&v1, Mode::Authenticated, &k, &mut g, now).is_err());
        assert_eq!(
            decode_heartbeat(
                &encode_v1_plain("a@h"),
                Mode::Authenticated,
                &k,
                &mut g,
                now
            ),
            Err(Reject::FormatNotAccepted)
        );
    }

    #[test]
    fn replay_guard_forgets_after_the_window_and_stays_bounded() {
        let mut g = ReplayGuard::new(1_000, 4);
        let m = |n: u8, t: u64| Authenticated {
            node: "a@h".into(),
            timestamp_ms: t,
            nonce: [n; 12],
        };
        for n in 0..10 {
            assert!(g.check(&m(n, 100), 100).is_ok());
        }
        assert!(g.len() <= 4);
        assert_eq!(g.check(&m(9, 100), 200), Err(Reject::Replay));
        // after 2 windows the entry is gone, but the timestamp is then stale anyway
        assert_eq!(g.check(&m(9, 100), 5_000), Err(Reject::Stale));
    }
}
