//! Discovery logic for libcluster_rs. No rustler here: everything is plain async Rust on tokio and is
//! tested with `cargo test`. The `nif` crate turns [`event::Event`]s into Erlang messages.
pub mod backoff;
pub mod dns;
pub mod epmd;
pub mod event;
pub mod gossip;
pub mod http;
pub mod kubernetes;
pub mod node_name;
pub mod rancher;
pub mod task;
