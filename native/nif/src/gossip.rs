//! `gossip_start/3`, `gossip_stats/1`, the owner's notices `gossip_set_node/2` and
//! `gossip_node_down/2`, and the pure wire helpers `gossip_encode_v1/2` and `gossip_decode/3`
//! (used by tests to prove libcluster 3.5 compatibility from the BEAM side).
use std::net::IpAddr;
use std::sync::Arc;

use libcluster_core::gossip::wire::{self, Keys, Mode, ReplayGuard};
use libcluster_core::gossip::{
    self, random_array, Control, GossipConfig, Interface, Schedule, SocketConfig, CONTROL_QUEUE,
};
use libcluster_core::sighting::Stats;
use rustler::{
    Atom, Binary, Encoder, Env, NifMap, NifResult, NifUnitEnum, OwnedBinary, Resource, ResourceArc,
    Term,
};
use tokio::sync::mpsc;

use crate::args::bad;
use crate::atoms;
use crate::handle::{spawn, Discovery};
use crate::sink::encode_stats;

/// The counters of one gossip task, readable while it runs, and the way to send it notices.
pub(crate) struct GossipStats {
    stats: Arc<Stats>,
    control: mpsc::Sender<Control>,
}

#[rustler::resource_impl]
impl Resource for GossipStats {}

/// Options as `Cluster.Strategy.Gossip` passes them, validated there (with the messages users see);
/// here only decoded, then guarded by [`GossipConfig::validate`].
#[derive(NifMap)]
struct GossipOpts {
    node: Option<String>,
    port: u16,
    if_addr: String,
    multicast_if: Option<String>,
    multicast_addr: String,
    multicast_ttl: u32,
    broadcast_only: bool,
    wire_format: WireFormat,
    heartbeat_interval: Option<u64>,
    replay_window: u64,
    new_names_burst: u32,
    new_names_per_minute: u32,
    new_names_total_burst: u32,
    new_names_total_per_minute: u32,
    verify_sender: bool,
    stats_interval: Option<u64>,
    listen_only: bool,
}

/// `:v1`, `:both` or `:authenticated`.
#[derive(NifUnitEnum, Clone, Copy)]
enum WireFormat {
    V1,
    Both,
    Authenticated,
}

impl From<WireFormat> for Mode {
    fn from(f: WireFormat) -> Mode {
        match f {
            WireFormat::V1 => Mode::V1,
            WireFormat::Both => Mode::Both,
            WireFormat::Authenticated => Mode::Authenticated,
        }
    }
}

fn parse_ip(key: &str, s: &str) -> NifResult<IpAddr> {
    s.parse()
        .map_err(|_| bad(format!("expected :{key} to be an IP address, got: {s:?}")))
}

/// `gossip_start(tag, opts, secret | nil)` → `{handle, stats}`. Events: `{:heartbeat, name}`,
/// `{:gossip_stats, map}`, `{:discovery_error, kind, message}` (socket cannot open yet; retried).
#[rustler::nif]
fn gossip_start<'a>(
    env: Env<'a>,
    tag: Term<'a>,
    opts: GossipOpts,
    secret: Option<Binary<'a>>,
) -> NifResult<(ResourceArc<Discovery>, ResourceArc<GossipStats>)> {
    let multicast_if = opts
        .multicast_if
        .as_deref()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Interface::Addr(ip),
            Err(_) => Interface::Name(s.to_string()),
        });
    let cfg = GossipConfig {
        node: opts.node,
        socket: SocketConfig {
            port: opts.port,
            if_addr: parse_ip("if_addr", &opts.if_addr)?,
            multicast_if,
            multicast_addr: parse_ip("multicast_addr", &opts.multicast_addr)?,
            multicast_ttl: opts.multicast_ttl,
            broadcast_only: opts.broadcast_only,
        },
        mode: opts.wire_format.into(),
        secret: secret.map(|b| b.as_slice().to_vec()),
        schedule: match opts.heartbeat_interval {
            _ if opts.listen_only => Schedule::Silent,
            None => Schedule::Random { max_ms: 5_000 },
            Some(ms) => Schedule::Every { ms },
        },
        replay_window_ms: opts.replay_window,
        new_names_burst: opts.new_names_burst,
        new_names_per_minute: opts.new_names_per_minute,
        new_names_total_burst: opts.new_names_total_burst,
        new_names_total_per_minute: opts.new_names_total_per_minute,
        verify_sender: opts.verify_sender,
        stats_interval_ms: opts.stats_interval,
    };
    cfg.validate().map_err(bad)?;
    let stats = Arc::new(Stats::default());
    let task_stats = stats.clone();
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let handle = spawn(env, tag, move |sink| {
        gossip::run(cfg, task_stats, sink, control_rx)
    });
    Ok((handle, ResourceArc::new(GossipStats { stats, control })))
}

/// The counters of a gossip task as a map of atoms (a fixed set of names) to integers.
#[rustler::nif]
fn gossip_stats<'a>(env: Env<'a>, stats: ResourceArc<GossipStats>) -> NifResult<Term<'a>> {
    encode_stats(env, &stats.stats.snapshot())
}

/// Tells the task this VM's node name (`nil` when not distributed). A full queue drops the notice.
#[rustler::nif]
fn gossip_set_node(task: ResourceArc<GossipStats>, node: Option<String>) -> NifResult<Atom> {
    if let Some(n) = &node {
        if !libcluster_core::node_name::is_valid(n) {
            return Err(bad(format!("invalid node name {n:?}")));
        }
    }
    let _ = task.control.try_send(Control::SetNode(node));
    Ok(atoms::ok())
}

/// Tells the task that `node` went down, so its next heartbeat is reported at once.
#[rustler::nif]
fn gossip_node_down(task: ResourceArc<GossipStats>, node: String) -> Atom {
    let _ = task.control.try_send(Control::NodeDown(node));
    atoms::ok()
}

fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> NifResult<Term<'a>> {
    let mut out = OwnedBinary::new(bytes.len()).ok_or_else(|| bad("cannot allocate a binary"))?;
    out.as_mut_slice().copy_from_slice(bytes);
    Ok(out.release(env).encode(env))
}

/// A libcluster v1 heartbeat for `node` (plain, or AES-CBC with `secret`).
#[rustler::nif]
fn gossip_encode_v1<'a>(
    env: Env<'a>,
    node: String,
    secret: Option<Binary<'a>>,
) -> NifResult<Term<'a>> {
    if node.len() > libcluster_core::node_name::MAX_NODE_NAME_LEN {
        return Err(bad("a node name has at most 255 bytes"));
    }
    let bytes = match secret {
        None => wire::encode_v1_plain(&node),
        Some(s) => {
            let key = Keys::new(Some(s.as_slice()))
                .v1
                .expect("a secret gives a v1 key");
            wire::encode_v1_secret(&node, &key, random_array())
        }
    };
    binary(env, &bytes)
}

/// Decodes one datagram as a node with `wire_format` and `secret` would (without replay state):
/// `{:ok, name}` or `{:error, reason}`.
#[rustler::nif]
fn gossip_decode<'a>(
    env: Env<'a>,
    datagram: Binary<'a>,
    wire_format: WireFormat,
    secret: Option<Binary<'a>>,
) -> NifResult<Term<'a>> {
    let mode = Mode::from(wire_format);
    let keys = Keys::new(secret.as_ref().map(|s| s.as_slice()));
    if mode != Mode::V1 && keys.aead.is_none() {
        return Err(bad("the authenticated format needs a secret"));
    }
    let mut guard = ReplayGuard::new(30_000, 16);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Ok(
        match wire::decode_heartbeat(datagram.as_slice(), mode, &keys, &mut guard, now) {
            Ok((name, _)) => (atoms::ok(), name).encode(env),
            Err(reason) => (atoms::error(), Atom::from_str(env, reason.as_str())?).encode(env),
        },
    )
}
