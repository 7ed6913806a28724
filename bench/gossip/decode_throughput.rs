//! Decode throughput of the gossip datagram decoder, in datagrams per second, for valid and
//! garbage input in each wire format. Median of 7 runs of ~200k datagrams each.
//!
//!     cargo run --release -p libcluster_core --example gossip_decode_bench
use std::hint::black_box;
use std::time::Instant;

use libcluster_core::gossip::random_array;
use libcluster_core::gossip::wire::{self, Keys, Mode, ReplayGuard};
use rand::{Rng, RngCore};

const N: usize = 200_000;

fn median_rate(datagrams: &[Vec<u8>], mode: Mode, keys: &Keys) -> f64 {
    let mut rates: Vec<f64> = (0..7)
        .map(|_| {
            // a fresh guard per run: every authenticated datagram is new to it
            let mut guard = ReplayGuard::new(30_000, 1 << 20);
            let t = Instant::now();
            let mut ok = 0usize;
            for d in datagrams {
                if wire::decode_heartbeat(black_box(d), mode, keys, &mut guard, 1_000).is_ok() {
                    ok += 1;
                }
            }
            black_box(ok);
            datagrams.len() as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rates[3]
}

fn main() {
    let mut rng = rand::rng();
    let plain = Keys::new(None);
    let secret = Keys::new(Some(b"bench secret"));
    let names: Vec<String> = (0..N)
        .map(|i| format!("app{i}@10.0.{}.{}", i / 256 % 256, i % 256))
        .collect();

    let v1: Vec<Vec<u8>> = names.iter().map(|n| wire::encode_v1_plain(n)).collect();
    let v1s: Vec<Vec<u8>> = names
        .iter()
        .map(|n| wire::encode_v1_secret(n, secret.v1.as_ref().unwrap(), random_array()))
        .collect();
    let auth: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            wire::encode_authenticated(n, secret.aead.as_ref().unwrap(), 1_000, random_array())
        })
        .collect();
    let garbage: Vec<Vec<u8>> = (0..N)
        .map(|_| {
            let mut v = vec![0u8; rng.random_range(1..300)];
            rng.fill_bytes(&mut v);
            v
        })
        .collect();
    let garbage_prefixed: Vec<Vec<u8>> = garbage
        .iter()
        .map(|g| [wire::V1_PREFIX, &[131, 116], g].concat())
        .collect();
    let forged: Vec<Vec<u8>> = garbage
        .iter()
        .map(|g| [&wire::AUTH_MAGIC[..], &[0; 40], g].concat())
        .collect();

    let report = |what: &str, rate: f64| println!("{what:<48} {:>12.0} datagrams/s", rate);
    report("v1 plain, valid", median_rate(&v1, Mode::V1, &plain));
    report(
        "v1 plain, random bytes",
        median_rate(&garbage, Mode::V1, &plain),
    );
    report(
        "v1 plain, heartbeat:: + random term bytes",
        median_rate(&garbage_prefixed, Mode::V1, &plain),
    );
    report(
        "v1 secret (AES-256-CBC), valid",
        median_rate(&v1s, Mode::V1, &secret),
    );
    report(
        "v1 secret, random bytes",
        median_rate(&garbage, Mode::V1, &secret),
    );
    report(
        "authenticated (ChaCha20-Poly1305), valid",
        median_rate(&auth, Mode::Authenticated, &secret),
    );
    report(
        "authenticated, forged (magic + random)",
        median_rate(&forged, Mode::Authenticated, &secret),
    );
    report(
        "authenticated, random bytes",
        median_rate(&garbage, Mode::Authenticated, &secret),
    );
}
