//! rustler glue for libcluster_rs: the runtime, discovery handles, option decoding and message
//! encoding. All discovery logic lives in `libcluster_core`. This file only lists the modules.
#![warn(unreachable_pub)]
mod args;
mod atoms;
mod consul;
mod digitalocean;
mod dns;
mod ec2;
mod epmd;
mod gossip;
mod handle;
mod kubernetes;
mod node_name;
mod postgres;
mod rancher;
mod runtime;
mod sink;

rustler::init!("Elixir.LibclusterRs.Native");
