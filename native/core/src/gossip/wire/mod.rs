//! Gossip datagrams: the libcluster v1 format (plain and `secret`/AES-256-CBC), and the
//! authenticated format of libcluster_rs. Everything here is a pure function of bytes, so it is
//! unit-tested, property-tested and fuzzed without a socket.
//!
//! v1 plain: `heartbeat::` ++ `:erlang.term_to_binary(%{node: node()})`. The term is parsed by a
//! hand-written, bounded decoder that accepts a map whose keys and values are atoms (tags 100, 115,
//! 118, 119), holding a `node` key and possibly other atom keys, and rejects everything else.
//!
//! v1 secret: 16-byte IV ++ AES-256-CBC(SHA-256(secret), IV, PKCS#7(plain datagram)).
//! No integrity, no replay protection: kept only to interoperate with libcluster 3.5.
//!
//! Authenticated (libcluster_rs): `LCG2` ++ timestamp (u64 BE, ms since the Unix epoch) ++
//! 12-byte random nonce ++ ChaCha20-Poly1305(key, nonce, node name, aad = the 24 header bytes).
//! The key is HKDF-SHA256(secret). The receiver checks the timestamp against a window and the
//! nonce against the nonces seen within that window (see [`ReplayGuard`]).//!
//! Layout: [`v1`] holds libcluster 3.5's formats (with the COMPAT vectors as tests),
//! [`authenticated`] the AEAD format and its replay guard; this file the types both share and the
//! dispatch by [`Mode`].

mod authenticated;
mod v1;

use crate::gossip::crypto;

pub use authenticated::{
    encode_authenticated, open_authenticated, Authenticated, ReplayGuard, AUTH_MAGIC,
};
pub use v1::{decode_v1_plain, decode_v1_secret, encode_v1_plain, encode_v1_secret, V1_PREFIX};

/// Datagrams above this size are dropped unread. A v1 datagram with a 255-byte name is ~290 bytes.
pub const MAX_DATAGRAM: usize = 1024;

/// Why a datagram was not accepted. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Larger than [`MAX_DATAGRAM`].
    TooLarge,
    /// Not a heartbeat in any format this node accepts (wrong prefix, bad term, trailing bytes).
    Malformed,
    /// A well-formed heartbeat whose node name is not a valid `name@host`.
    BadName,
    /// v1 secret: decryption produced garbage (wrong secret or not encrypted).
    Decrypt,
    /// Authenticated: the AEAD tag did not verify (forged, tampered, wrong secret).
    Auth,
    /// Authenticated: the timestamp is outside the replay window.
    Stale,
    /// Authenticated: this nonce was already accepted within the window.
    Replay,
    /// A format this node is configured not to accept (e.g. v1 when authenticated-only).
    FormatNotAccepted,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::Malformed => "malformed",
            Reject::BadName => "bad_name",
            Reject::Decrypt => "decrypt",
            Reject::Auth => "auth",
            Reject::Stale => "stale",
            Reject::Replay => "replay",
            Reject::FormatNotAccepted => "format_not_accepted",
        }
    }
}

/// The format a datagram was accepted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    V1Plain,
    V1Secret,
    Authenticated,
}

/// Which formats a node sends and accepts. See the moduledoc of `Cluster.Strategy.Gossip` for
/// the migration path v1 → `Both` → `Authenticated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// libcluster 3.5: plain without a secret, AES-CBC with one.
    V1,
    /// Send v1 and authenticated; accept both. The migration step.
    Both,
    /// Send and accept only the authenticated format.
    Authenticated,
}

/// Keys derived once from the configured secret.
#[derive(Clone)]
pub struct Keys {
    /// SHA-256(secret), for v1 AES-256-CBC.
    pub v1: Option<[u8; 32]>,
    /// HKDF-SHA256(secret), for the AEAD.
    pub aead: Option<[u8; 32]>,
}

impl Keys {
    pub fn new(secret: Option<&[u8]>) -> Keys {
        Keys {
            v1: secret.map(crypto::v1_key),
            aead: secret.map(crypto::aead_key),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch by mode
// ---------------------------------------------------------------------------------------------

/// The datagrams a node in `mode` sends for one heartbeat.
pub fn encode_heartbeat(node: &str, mode: Mode, keys: &Keys, now_ms: u64) -> Vec<Vec<u8>> {
    let v1 = || match &keys.v1 {
        Some(key) => encode_v1_secret(node, key, crypto::random_array()),
        None => encode_v1_plain(node),
    };
    let auth = || {
        let key = keys
            .aead
            .as_ref()
            .expect("authenticated mode needs a secret");
        encode_authenticated(node, key, now_ms, crypto::random_array())
    };
    match mode {
        Mode::V1 => vec![v1()],
        Mode::Both => vec![v1(), auth()],
        Mode::Authenticated => vec![auth()],
    }
}

/// Decodes one datagram as a node in `mode` accepts it. The replay check happens here too.
pub fn decode_heartbeat(
    datagram: &[u8],
    mode: Mode,
    keys: &Keys,
    replay: &mut ReplayGuard,
    now_ms: u64,
) -> Result<(String, Format), Reject> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(Reject::TooLarge);
    }
    let accepts_auth = mode != Mode::V1 && keys.aead.is_some();
    let accepts_v1 = mode != Mode::Authenticated;
    if accepts_auth && datagram.starts_with(AUTH_MAGIC) {
        let key = keys.aead.as_ref().expect("checked above");
        match open_authenticated(datagram, key) {
            Ok(msg) => {
                replay.check(&msg, now_ms)?;
                return Ok((msg.node, Format::Authenticated));
            }
            // A v1 secret datagram whose random IV starts with the magic: try it as v1 below.
            Err(e) if !accepts_v1 || keys.v1.is_none() => return Err(e),
            Err(_) => {}
        }
    }
    if !accepts_v1 {
        return Err(if datagram.starts_with(V1_PREFIX) {
            Reject::FormatNotAccepted
        } else {
            Reject::Malformed
        });
    }
    match &keys.v1 {
        Some(key) => {
            if datagram.starts_with(V1_PREFIX) {
                // A plain datagram: libcluster with a secret ignores these too.
                return Err(Reject::FormatNotAccepted);
            }
            decode_v1_secret(datagram, key).map(|n| (n, Format::V1Secret))
        }
        None => decode_v1_plain(datagram).map(|n| (n, Format::V1Plain)),
    }
}

/// The keys of `secret`, for the tests of this module and its children.
#[cfg(test)]
fn keys(secret: &[u8]) -> Keys {
    Keys::new(Some(secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_name;
    use rand::{Rng, RngCore, SeedableRng};

    #[test]
    fn both_mode_accepts_both_and_sends_both() {
        let k = keys(b"pw");
        let mut g = ReplayGuard::new(30_000, 1024);
        let sent = encode_heartbeat("a@h", Mode::Both, &k, 1_000);
        assert_eq!(sent.len(), 2);
        for (d, fmt) in sent.iter().zip([Format::V1Secret, Format::Authenticated]) {
            assert_eq!(
                decode_heartbeat(d, Mode::Both, &k, &mut g, 1_000),
                Ok(("a@h".to_string(), fmt))
            );
        }
        // a v1 node decodes the v1 datagram of a Both node and rejects the other
        let mut g = ReplayGuard::new(30_000, 1024);
        assert!(decode_heartbeat(&sent[0], Mode::V1, &k, &mut g, 1_000).is_ok());
        assert!(decode_heartbeat(&sent[1], Mode::V1, &k, &mut g, 1_000).is_err());
        // an authenticated node accepts the authenticated one only
        assert!(decode_heartbeat(&sent[0], Mode::Authenticated, &k, &mut g, 1_000).is_err());
        assert!(decode_heartbeat(&sent[1], Mode::Authenticated, &k, &mut g, 1_000).is_ok());
    }

    #[test]
    fn plain_mode_round_trip_and_secret_mismatch() {
        let none = Keys::new(None);
        let mut g = ReplayGuard::new(30_000, 16);
        let d = encode_heartbeat("x@y", Mode::V1, &none, 0).remove(0);
        assert_eq!(
            decode_heartbeat(&d, Mode::V1, &none, &mut g, 0).unwrap().0,
            "x@y"
        );
        // a secret node ignores plain datagrams, a plain node ignores encrypted ones
        let k = keys(b"pw");
        assert!(decode_heartbeat(&d, Mode::V1, &k, &mut g, 0).is_err());
        let e = encode_heartbeat("x@y", Mode::V1, &k, 0).remove(0);
        assert!(decode_heartbeat(&e, Mode::V1, &none, &mut g, 0).is_err());
    }

    /// Property test: arbitrary bytes, and mutations of valid datagrams, never panic, and what is
    /// accepted is always a valid node name.
    #[test]
    fn decoder_never_panics_and_accepts_only_valid_names() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x1c1u64);
        let k = keys(b"pw");
        let none = Keys::new(None);
        let seeds = [
            encode_v1_plain("app@10.0.0.1"),
            v1::otp25("app@host.local"),
            encode_v1_secret("app@10.0.0.1", k.v1.as_ref().unwrap(), [3; 16]),
            encode_authenticated("app@10.0.0.1", k.aead.as_ref().unwrap(), 0, [4; 12]),
        ];
        for i in 0..200_000 {
            let d: Vec<u8> = if i % 4 == 0 {
                let len = rng.random_range(0..64);
                let mut v = vec![0; len];
                rng.fill_bytes(&mut v);
                if rng.random_bool(0.5) {
                    [V1_PREFIX, &[131, 116], &v].concat()
                } else {
                    v
                }
            } else {
                let mut v = seeds[rng.random_range(0..seeds.len())].clone();
                for _ in 0..rng.random_range(1..4) {
                    match rng.random_range(0..3) {
                        0 if !v.is_empty() => {
                            let j = rng.random_range(0..v.len());
                            v[j] = rng.random();
                        }
                        1 if !v.is_empty() => {
                            let j = rng.random_range(0..v.len());
                            v.truncate(j);
                        }
                        _ => v.push(rng.random()),
                    }
                }
                v
            };
            for (mode, keys) in [(Mode::V1, &none), (Mode::V1, &k), (Mode::Both, &k)] {
                let mut g = ReplayGuard::new(30_000, 64);
                if let Ok((name, _)) = decode_heartbeat(&d, mode, keys, &mut g, 0) {
                    assert!(node_name::is_valid(&name), "{name:?}");
                }
            }
        }
    }
}
