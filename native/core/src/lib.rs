//! Discovery logic for libcluster_rs. No rustler here: everything is plain async Rust on tokio and is
//! tested with `cargo test`. The `nif` crate turns [`event::Event`]s into Erlang messages.
//!
//! The public modules are the API, one per strategy (plus [`event`], [`node_name`] and [`task`]);
//! inside them, everything is private unless re-exported. [`backoff`] and [`http`] are shared by
//! the strategies and private to the crate.
#![warn(unreachable_pub)]
mod backoff;
pub mod consul;
pub mod digitalocean;
pub mod dns;
pub mod ec2;
pub mod epmd;
pub mod event;
pub mod gossip;
mod http;
pub mod kubernetes;
pub mod node_name;
pub mod postgres;
pub mod rancher;
pub mod sighting;
pub mod task;
