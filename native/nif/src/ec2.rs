//! `ec2_client/1`, `ec2_start/4`, `ec2_info/1`: a topology's EC2 client (a resource holding the
//! credential cache) and one poll per round.
use std::collections::HashMap;
use std::sync::Arc;

use libcluster_core::ec2::{self, Client, IpType, Settings};
use rustler::{Encoder, Env, NifMap, NifResult, NifUnitEnum, Resource, ResourceArc, Term};

use crate::args::{bad, millis};
use crate::handle::{spawn, Discovery};

pub(crate) struct Ec2Client {
    inner: Arc<Client>,
}

#[rustler::resource_impl]
impl Resource for Ec2Client {}

#[derive(NifUnitEnum, Clone, Copy)]
pub(crate) enum Ip {
    Private,
    Public,
}

/// The strategy's validated config, as a map with these atom keys.
#[derive(NifMap)]
pub(crate) struct Ec2Opts {
    env: HashMap<String, String>,
    tag_name: String,
    ip_type: Ip,
    region: Option<String>,
    ec2_endpoint: Option<String>,
    sts_endpoint: Option<String>,
    imds_endpoint: Option<String>,
    ca_bundle: Option<String>,
    request_timeout_ms: u64,
    imds_timeout_ms: u64,
    polling_interval_ms: u64,
}

const MAX_MS: u64 = 86_400_000;

/// `ec2_client(opts)`: `{:ok, client}` or `{:error, message}` (a CA bundle that cannot be used).
#[rustler::nif]
fn ec2_client(env: Env<'_>, opts: Ec2Opts) -> NifResult<Term<'_>> {
    if opts.tag_name.is_empty() {
        return Err(bad("ec2_client/1: tag_name must not be empty"));
    }
    let settings = Settings {
        env: opts.env,
        tag_name: opts.tag_name,
        ip_type: match opts.ip_type {
            Ip::Private => IpType::Private,
            Ip::Public => IpType::Public,
        },
        region: opts.region,
        ec2_endpoint: opts.ec2_endpoint,
        sts_endpoint: opts.sts_endpoint,
        imds_endpoint: opts.imds_endpoint,
        ca_bundle: opts.ca_bundle,
        request_timeout: millis("request_timeout_ms", opts.request_timeout_ms, MAX_MS)?,
        imds_timeout: millis("imds_timeout_ms", opts.imds_timeout_ms, MAX_MS)?,
        polling_interval: millis("polling_interval_ms", opts.polling_interval_ms, MAX_MS)?,
    };
    Ok(match Client::new(settings) {
        Ok(c) => (
            crate::atoms::ok(),
            ResourceArc::new(Ec2Client { inner: Arc::new(c) }),
        )
            .encode(env),
        Err(e) => (crate::atoms::error(), e.message).encode(env),
    })
}

/// `ec2_start(tag, client, tag_value | nil, prefix | nil)`: one `{:nodes, names}` (or, without a
/// prefix, `{:nodes, ips}`) or one `{:discovery_error, kind, message}`.
#[rustler::nif]
fn ec2_start<'a>(
    env: Env<'a>,
    tag: Term<'a>,
    client: ResourceArc<Ec2Client>,
    tag_value: Option<String>,
    prefix: Option<String>,
) -> NifResult<ResourceArc<Discovery>> {
    let client = client.inner.clone();
    Ok(spawn(env, tag, move |sink| {
        ec2::poll_once(client, tag_value, prefix, sink)
    }))
}

/// What the client learnt: a map for `Cluster.status/1`.
#[rustler::nif]
fn ec2_info(env: Env<'_>, client: ResourceArc<Ec2Client>) -> Term<'_> {
    let i = client.inner.info();
    let mut map = Term::map_new(env);
    let pairs: [(&str, Term<'_>); 7] = [
        ("region", i.region.encode(env)),
        ("credentials", i.credentials.encode(env)),
        ("instance_id", i.instance_id.encode(env)),
        ("tag_value", i.tag_value.encode(env)),
        ("instances", i.instances.encode(env)),
        ("pages", i.pages.encode(env)),
        ("throttled", i.throttled.encode(env)),
    ];
    for (k, v) in pairs {
        if let Ok(key) = rustler::Atom::from_str(env, k) {
            if let Ok(m) = map.map_put(key.encode(env), v) {
                map = m;
            }
        }
    }
    map
}
