//! libcluster 3.5's gossip formats.
//!
//! v1 plain: `heartbeat::` ++ `:erlang.term_to_binary(%{node: node()})`. The term is parsed by a
//! hand-written, bounded decoder that accepts a map whose keys and values are atoms (tags 100, 115,
//! 118, 119), holding a `node` key and possibly other atom keys, and rejects everything else.
//!
//! v1 secret: 16-byte IV ++ AES-256-CBC(SHA-256(secret), IV, PKCS#7(plain datagram)).
//! No integrity, no replay protection: kept only to interoperate with libcluster 3.5.

use super::{Reject, MAX_DATAGRAM};
use crate::gossip::crypto;
use crate::node_name;

/// The prefix of every v1 datagram.
pub const V1_PREFIX: &[u8] = b"heartbeat::";
/// At most this many key/value pairs in the v1 map.
const MAX_MAP_PAIRS: u32 = 8;

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

/// What `:erlang.term_to_binary(%{node: :"a@h"})` writes on OTP 25 (ATOM_EXT).
#[cfg(test)]
pub(super) fn otp25(node: &str) -> Vec<u8> {
    let mut v = V1_PREFIX.to_vec();
    v.extend_from_slice(&[131, 116, 0, 0, 0, 1, 100, 0, 4]);
    v.extend_from_slice(b"node");
    v.extend_from_slice(&[100, 0, node.len() as u8]);
    v.extend_from_slice(node.as_bytes());
    v
}

/// The COMPAT vectors (docs/COMPAT.md) and the term decoder's accept/reject cases.
#[cfg(test)]
mod tests {
    use super::*;

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
}
