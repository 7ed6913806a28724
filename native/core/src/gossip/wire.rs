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
//! nonce against the nonces seen within that window (see [`ReplayGuard`]).

use std::collections::{HashMap, VecDeque};

use crate::gossip::crypto;
use crate::node_name;

/// The prefix of every v1 datagram.
pub const V1_PREFIX: &[u8] = b"heartbeat::";
/// The prefix of every authenticated datagram.
pub const AUTH_MAGIC: &[u8; 4] = b"LCG2";
/// Datagrams above this size are dropped unread. A v1 datagram with a 255-byte name is ~290 bytes.
pub const MAX_DATAGRAM: usize = 1024;
/// At most this many key/value pairs in the v1 map.
const MAX_MAP_PAIRS: u32 = 8;
const AUTH_HEADER: usize = 4 + 8 + 12;
const AUTH_TAG: usize = 16;

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
// v1 plain
// ---------------------------------------------------------------------------------------------

/// `heartbeat::` ++ term_to_binary(%{node: :"<node>"}) as OTP 26 writes it (SMALL_ATOM_UTF8_EXT).
/// `node` must be at most 255 bytes.
pub fn encode_v1_plain(node: &str) -> Vec<u8> {
    debug_assert!(node.len() <= 255);
    let mut out = Vec::with_capacity(V1_PREFIX.len() + 14 + node.len());
    out.extend_from_slice(V1_PREFIX);
    out.extend_from_slice(&[131, 116, 0, 0, 0, 1, 119, 4]);
    out.extend_from_slice(b"node");
    out.push(119);
    out.push(node.len() as u8);
    out.extend_from_slice(node.as_bytes());
    out
}

/// Decodes a v1 plain datagram into the node name (validated).
pub fn decode_v1_plain(datagram: &[u8]) -> Result<String, Reject> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(Reject::TooLarge);
    }
    let term = datagram.strip_prefix(V1_PREFIX).ok_or(Reject::Malformed)?;
    let name = decode_heartbeat_term(term)?;
    let name = std::str::from_utf8(name).map_err(|_| Reject::BadName)?;
    if !node_name::is_valid(name) {
        return Err(Reject::BadName);
    }
    Ok(name.to_string())
}

/// A bounded reader over the external term format.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        let end = self.pos.checked_add(n).ok_or(Reject::Malformed)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Reject::Malformed)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, Reject> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Reject> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Reject> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An atom in any of the four encodings; returns its bytes (latin1 or UTF-8).
    fn atom(&mut self) -> Result<&'a [u8], Reject> {
        let len = match self.u8()? {
            100 | 118 => self.u16()? as usize,
            115 | 119 => self.u8()? as usize,
            _ => return Err(Reject::Malformed),
        };
        if len > node_name::MAX_NODE_NAME_LEN {
            return Err(Reject::Malformed);
        }
        self.take(len)
    }
}

/// Parses `131, 116, arity, (atom, atom)*` with exactly one `node` key; returns the node bytes.
fn decode_heartbeat_term(term: &[u8]) -> Result<&[u8], Reject> {
    let mut r = Reader { buf: term, pos: 0 };
    if r.u8()? != 131 || r.u8()? != 116 {
        return Err(Reject::Malformed);
    }
    let arity = r.u32()?;
    if arity == 0 || arity > MAX_MAP_PAIRS {
        return Err(Reject::Malformed);
    }
    let mut node = None;
    for _ in 0..arity {
        let key = r.atom()?;
        let value = r.atom()?;
        if key == b"node" {
            if node.is_some() {
                return Err(Reject::Malformed);
            }
            node = Some(value);
        }
    }
    if r.pos != term.len() {
        return Err(Reject::Malformed);
    }
    node.ok_or(Reject::Malformed)
}

// ---------------------------------------------------------------------------------------------
// v1 secret
// ---------------------------------------------------------------------------------------------

/// IV ++ AES-256-CBC(key, IV, PKCS#7(plain)).
pub fn encode_v1_secret(node: &str, key: &[u8; 32], iv: [u8; 16]) -> Vec<u8> {
    let plain = encode_v1_plain(node);
    let mut out = Vec::with_capacity(16 + plain.len() + 16);
    out.extend_from_slice(&iv);
    out.extend_from_slice(&crypto::aes_cbc_encrypt(key, &iv, &plain));
    out
}

pub fn decode_v1_secret(datagram: &[u8], key: &[u8; 32]) -> Result<String, Reject> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(Reject::TooLarge);
    }
    if datagram.len() < 32 || datagram.len() & 15 != 0 {
        return Err(Reject::Decrypt);
    }
    let (iv, body) = datagram.split_at(16);
    let iv: [u8; 16] = iv.try_into().map_err(|_| Reject::Decrypt)?;
    let plain = crypto::aes_cbc_decrypt(key, &iv, body).ok_or(Reject::Decrypt)?;
    if !plain.starts_with(V1_PREFIX) {
        return Err(Reject::Decrypt);
    }
    decode_v1_plain(&plain)
}

// ---------------------------------------------------------------------------------------------
// Authenticated
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const PLAIN_VECTOR: &str =
        "6865617274626561743a3a 83 74 00000001 77 04 6e6f6465 77 0e 6d796170704031302e302e302e31";
    const SECRET_VECTOR: &str = "00000000000000000000000000000000506f109beae05de5db8c36f0e0274bd3927738f683ea757ffdaa8fef57a80a28b535a64efb098de04516a36ae0aa8160";

    #[test]
    fn v1_plain_vector() {
        assert_eq!(encode_v1_plain("myapp@10.0.0.1"), hex(PLAIN_VECTOR));
        assert_eq!(
            decode_v1_plain(&hex(PLAIN_VECTOR)).unwrap(),
            "myapp@10.0.0.1"
        );
    }

    #[test]
    fn v1_secret_vector() {
        let key = crypto::v1_key(b"somepassword");
        assert_eq!(
            key.to_vec(),
            hex("42a9798b99d4afcec9995e47a1d246b98ebc96be7a732323eee39d924006ee1d")
        );
        let datagram = encode_v1_secret("myapp@10.0.0.1", &key, [0; 16]);
        assert_eq!(datagram.len(), 64);
        assert_eq!(datagram, hex(SECRET_VECTOR));
        assert_eq!(
            decode_v1_secret(&hex(SECRET_VECTOR), &key).unwrap(),
            "myapp@10.0.0.1"
        );
        let other = crypto::v1_key(b"otherpassword");
        assert!(decode_v1_secret(&hex(SECRET_VECTOR), &other).is_err());
    }

    /// What `:erlang.term_to_binary(%{node: :"a@h"})` writes on OTP 25 (ATOM_EXT).
    fn otp25(node: &str) -> Vec<u8> {
        let mut v = V1_PREFIX.to_vec();
        v.extend_from_slice(&[131, 116, 0, 0, 0, 1, 100, 0, 4]);
        v.extend_from_slice(b"node");
        v.extend_from_slice(&[100, 0, node.len() as u8]);
        v.extend_from_slice(node.as_bytes());
        v
    }

    #[test]
    fn accepts_all_four_atom_tags_and_extra_keys() {
        assert_eq!(decode_v1_plain(&otp25("a@h")).unwrap(), "a@h");
        for (tag, wide) in [(100u8, true), (115, false), (118, true), (119, false)] {
            let atom = |s: &str| {
                let mut v = vec![tag];
                if wide {
                    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
                } else {
                    v.push(s.len() as u8);
                }
                v.extend_from_slice(s.as_bytes());
                v
            };
            let mut d = V1_PREFIX.to_vec();
            d.extend_from_slice(&[131, 116, 0, 0, 0, 2]);
            d.extend(atom("version"));
            d.extend(atom("v2"));
            d.extend(atom("node"));
            d.extend(atom("app@10.1.2.3"));
            assert_eq!(decode_v1_plain(&d).unwrap(), "app@10.1.2.3", "tag {tag}");
        }
    }

    #[test]
    fn rejects_other_terms() {
        let good = encode_v1_plain("a@h");
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"heartbeat::".to_vec(),
            good[..good.len() - 1].to_vec(),
            [good.clone(), vec![0]].concat(),
            // compressed term
            [V1_PREFIX, &[131, 80, 0, 0, 0, 10]].concat(),
            // a binary instead of an atom value
            [
                V1_PREFIX,
                &[131, 116, 0, 0, 0, 1, 119, 4],
                b"node",
                &[109, 0, 0, 0, 3],
                b"a@h",
            ]
            .concat(),
            // no node key
            [
                V1_PREFIX,
                &[131, 116, 0, 0, 0, 1, 119, 4],
                b"name",
                &[119, 3],
                b"a@h",
            ]
            .concat(),
            // two node keys
            [
                V1_PREFIX,
                &[131, 116, 0, 0, 0, 2, 119, 4],
                b"node",
                &[119, 3],
                b"a@h",
                &[119, 4],
                b"node",
                &[119, 3],
                b"b@h",
            ]
            .concat(),
            // huge arity
            [V1_PREFIX, &[131, 116, 255, 255, 255, 255]].concat(),
            // atom length past the end
            [V1_PREFIX, &[131, 116, 0, 0, 0, 1, 100, 255, 255]].concat(),
        ];
        for c in cases {
            assert!(decode_v1_plain(&c).is_err(), "{c:?}");
        }
        assert_eq!(decode_v1_plain(&otp25("no-at-sign")), Err(Reject::BadName));
        assert_eq!(decode_v1_plain(&otp25("a b@h")), Err(Reject::BadName));
        assert_eq!(
            decode_v1_plain(&vec![0; MAX_DATAGRAM + 1]),
            Err(Reject::TooLarge)
        );
    }

    fn keys(secret: &[u8]) -> Keys {
        Keys::new(Some(secret))
    }

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
            otp25("app@host.local"),
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
