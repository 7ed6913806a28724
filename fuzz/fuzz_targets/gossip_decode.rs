//! Fuzzes the gossip datagram decoder in every mode. Run (nightly):
//!     cargo +nightly fuzz run gossip_decode -- -max_total_time=60
#![no_main]

use libcluster_core::gossip::wire::{decode_heartbeat, Keys, Mode, ReplayGuard};
use libcluster_core::node_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let plain = Keys::new(None);
    let secret = Keys::new(Some(b"fuzz secret"));
    for (mode, keys) in [
        (Mode::V1, &plain),
        (Mode::V1, &secret),
        (Mode::Both, &secret),
        (Mode::Authenticated, &secret),
    ] {
        let mut guard = ReplayGuard::new(30_000, 16);
        if let Ok((name, _)) = decode_heartbeat(data, mode, keys, &mut guard, 0) {
            assert!(node_name::is_valid(&name), "accepted an invalid name {name:?}");
        }
    }
});
