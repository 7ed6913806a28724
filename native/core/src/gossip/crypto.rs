//! The cryptography of the gossip formats, in one place: SHA-256 and AES-256-CBC for libcluster's
//! v1 `secret`, HKDF-SHA256 and ChaCha20-Poly1305 for the authenticated format.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

const HKDF_SALT: &[u8] = b"libcluster_rs gossip";
const HKDF_INFO: &[u8] = b"heartbeat v2 chacha20poly1305";

/// libcluster's key: SHA-256 of the secret.
pub(super) fn v1_key(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// The AEAD key: HKDF-SHA256 of the secret (a different key from v1's, so one format's traffic
/// tells nothing about the other's key).
pub(super) fn aead_key(secret: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(HKDF_SALT), secret)
        .expand(HKDF_INFO, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

pub(super) fn aes_cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    Aes256CbcEnc::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plain)
}

/// `None` when the padding is wrong (wrong key or not an encrypted datagram).
pub(super) fn aes_cbc_decrypt(key: &[u8; 32], iv: &[u8; 16], body: &[u8]) -> Option<Vec<u8>> {
    Aes256CbcDec::new(key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(body)
        .ok()
}

/// ChaCha20-Poly1305: ciphertext ++ 16-byte tag.
pub(super) fn seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(key.into())
        .encrypt(nonce.into(), Payload { msg: plain, aad })
        .expect("ChaCha20-Poly1305 encryption of a short message cannot fail")
}

/// `None` unless the tag verifies.
pub(super) fn open(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    ChaCha20Poly1305::new(key.into())
        .decrypt(nonce.into(), Payload { msg: sealed, aad })
        .ok()
}

/// Fresh random bytes from the OS-seeded thread RNG (IVs, nonces).
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rng().fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_per_format_and_secret() {
        assert_ne!(v1_key(b"a"), aead_key(b"a"));
        assert_ne!(aead_key(b"a"), aead_key(b"b"));
        assert_eq!(aead_key(b"a"), aead_key(b"a"));
    }

    #[test]
    fn seal_open_round_trip() {
        let key = aead_key(b"k");
        let sealed = seal(&key, &[1; 12], b"aad", b"hello");
        assert_eq!(open(&key, &[1; 12], b"aad", &sealed).unwrap(), b"hello");
        assert!(open(&key, &[1; 12], b"aae", &sealed).is_none());
        assert!(open(&key, &[2; 12], b"aad", &sealed).is_none());
    }
}
