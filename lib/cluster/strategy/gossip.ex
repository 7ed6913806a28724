defmodule Cluster.Strategy.Gossip do
  @moduledoc """
  Forms a cluster with no infrastructure: every node sends a heartbeat to a UDP multicast group
  (IPv4 or IPv6) or to a broadcast address, and connects to every node it hears. A heartbeat from
  an unknown node goes straight to `LibclusterRs.Membership`, so a newcomer is connected within
  milliseconds of its first heartbeat (sent at start). Gossip never disconnects a node that goes
  quiet: the distribution's own failure detection (`net_ticktime`) handles that.

  The socket work runs natively (Rust, socket2 on tokio). Several nodes on one host share the port
  (SO_REUSEADDR and SO_REUSEPORT are set with the host's constants). If the configured interface or
  address does not exist (yet), the strategy stays up, logs it once and retries with backoff.

  Like libcluster's, the strategy starts on a node that is not distributed (yet): it sends and
  reports nothing until the node has a name, and begins heartbeating under it within 0.5 s of
  `Node.start/2` (a later change of name, or `Node.stop/0`, is followed too).

  Untrusted datagrams are parsed by a bounded, hand-written decoder (never `binary_to_term`) and
  node names are validated before an atom is made. Names from unauthenticated (v1) datagrams have
  hard ceilings:

    * at most `:max_unauthenticated_atoms` (default 10,000) atoms in the whole VM, across all
      gossip topologies and strategy restarts. A name that is already an atom is free, so known
      peers keep working at the cap; at the cap, one error-level log line says so, and further
      new names are dropped and counted (`rejected_atom_cap`);
    * new names are rate-limited per sender address (`:new_names_burst`, then
      `:new_names_per_minute`) and for all senders together (`:new_names_total_burst`,
      `:new_names_total_per_minute`). A name over the limit waits for its turn (up to 10 s), and
      turns go first to the sender address admitted least recently, so a flood from one or many
      addresses does not keep a newcomer heartbeating from its own address out (with more
      addresses than the 1,024 tracked ones it still can: use the authenticated format);
    * their sightings are reported as untrusted (`{:seen, nodes, trusted: false}`), so the
      membership bounds the connect attempts they cause; names from authenticated datagrams are
      trusted.

  A name heard again is re-reported with backoff (1 s doubling to 10 s), and at its next heartbeat
  after its node went down. Rejected datagrams are counted by reason and logged at debug level
  only. See `docs/gossip.md` for what is measured and what a hostile host can still do.

  Under `mix libcluster.discover` the strategy only listens: it sends no heartbeat, so the dry
  run's VM is not dialled by the cluster.

  ## Options

    * `:port` - UDP port (default `45892`)
    * `:if_addr` - the local address to use, a tuple or string (default `{0, 0, 0, 0}`: any). A
      specific address selects the interface for the group; the socket itself is bound to the
      wildcard address, because on Linux a socket bound to a unicast address receives no
      multicast or broadcast datagrams
    * `:multicast_if` - the multicast interface, by address (`{192, 168, 1, 10}`, `"fe80::1"`) or by
      name (`"eth0"`); default `nil` (the kernel's choice, or `:if_addr`)
    * `:multicast_addr` - the group, IPv4 or IPv6 (`"ff02::4c43"`, `"ff05::4c43"`), default
      `{233, 252, 1, 32}`; with `broadcast_only: true` the broadcast address (default
      `{255, 255, 255, 255}`)
    * `:multicast_ttl` - multicast TTL, or hop limit for IPv6 (default `1`)
    * `:broadcast_only` - send to a broadcast address instead of a group (default `false`)
    * `:secret` - a shared secret (string). Without `:wire_format` it selects libcluster's v1
      AES-256-CBC format, which has no integrity check and no replay protection (logged once)
    * `:wire_format` - `:v1` (default: libcluster 3.5's format, plain or with `:secret`),
      `:authenticated` (ChaCha20-Poly1305 with a key derived from `:secret` by HKDF, a sender
      timestamp and nonce checked against a replay window; needs `:secret`) or `:both` (sends both,
      accepts both: the migration step)
    * `:heartbeat_interval` - ms between heartbeats (±10 %); default `nil`: a random 1..5000 ms
      like libcluster
    * `:replay_window` - authenticated datagrams older or newer than this many ms are rejected
      (default `30_000`; node clocks must agree within it)
    * `:new_names_burst`, `:new_names_per_minute` - the rate limit on names never heard before from
      unauthenticated datagrams, per sender address (defaults `64` and `60`)
    * `:new_names_total_burst`, `:new_names_total_per_minute` - the same limit for all senders
      together (defaults `256` and `600`)
    * `:max_unauthenticated_atoms` - the most atoms names from unauthenticated datagrams may create
      in this VM, counted VM-wide across topologies and restarts (default `10_000`; `0`: none;
      each topology stops at its own value)
    * `:verify_sender` - a v1 heartbeat whose host part is an IP address counts only when it came
      from that address (default `false`, libcluster's behaviour). Recommended on LANs whose nodes
      are named by the address they send from; wrong behind NAT or for multi-homed nodes that send
      from another interface (see `docs/gossip.md`)
    * `:stats_interval` - ms between `[:libcluster, :gossip, :stats]` telemetry events (only sent
      when the counters changed; default `10_000`, `nil` for none). The counters are also in
      `Cluster.status(topology)` under `extra`

  ## Examples

  An existing libcluster config keeps working and interoperates with libcluster 3.5 nodes:

      config :libcluster,
        topologies: [
          gossip: [strategy: Cluster.Strategy.Gossip, config: [port: 45892, secret: "s3cret"]]
        ]

  A new cluster should use the authenticated format:

      config :libcluster,
        topologies: [
          gossip: [
            strategy: Cluster.Strategy.Gossip,
            config: [secret: System.fetch_env!("GOSSIP_SECRET"), wire_format: :authenticated]
          ]
        ]

  IPv6, link-local group on a named interface:

      config: [multicast_addr: "ff02::4c43", multicast_if: "eth0"]

  ## Migrating a fleet from v1 to the authenticated format without a split

    1. All nodes run v1 (libcluster 3.5 or libcluster_rs with `secret: s`).
    2. Roll every node to `secret: s, wire_format: :both`, one at a time. A `:both` node sends a v1
       and an authenticated heartbeat and accepts both, so it hears and is heard by v1 nodes and
       by the other `:both` nodes.
    3. When no v1 node is left, roll every node to `wire_format: :authenticated`. `:both` nodes
       accept authenticated heartbeats, so the cluster stays whole during this step too.

  With the same secret, v1 and authenticated keys differ (SHA-256 vs HKDF), so keeping the secret
  is safe; changing it at step 3 is fine as well if every node gets the new one.
  """
  use LibclusterRs.Discovery

  alias LibclusterRs.Config
  alias LibclusterRs.NameWatcher

  @default_multicast {233, 252, 1, 32}
  @default_atom_cap 10_000
  @default_broadcast {255, 255, 255, 255}

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    schema = [
      {:port, 45892, Config.port()},
      {:if_addr, {0, 0, 0, 0}, Config.ip_address()},
      {:multicast_if, nil, Config.nullable(interface())},
      {:multicast_addr, nil, Config.nullable(Config.ip_address())},
      {:multicast_ttl, 1, ttl()},
      {:broadcast_only, false, Config.boolean()},
      {:secret, nil, Config.nullable(secret())},
      {:wire_format, nil, Config.nullable(Config.one_of([:v1, :both, :authenticated]))},
      {:heartbeat_interval, nil, Config.nullable(Config.pos_integer())},
      {:replay_window, 30_000, Config.pos_integer()},
      {:new_names_burst, 64, Config.pos_integer()},
      {:new_names_per_minute, 60, Config.non_neg_integer()},
      {:new_names_total_burst, 256, Config.pos_integer()},
      {:new_names_total_per_minute, 600, Config.non_neg_integer()},
      {:max_unauthenticated_atoms, @default_atom_cap, Config.non_neg_integer()},
      {:verify_sender, false, Config.boolean()},
      {:stats_interval, 10_000, Config.nullable(Config.pos_integer())}
    ]

    opts = Config.validate!(config, schema, topology, __MODULE__, [:membership])
    opts = check_combinations!(opts, topology)
    if opts.secret && opts.wire_format == :v1, do: warn_v1_once(topology)

    # Like libcluster, the strategy starts on a node that is not distributed (yet): its heartbeats
    # begin once the node has a name (`Node.start/2` later), see `discover/2`.
    {:ok,
     Map.merge(opts, %{
       topology: topology,
       native: native_opts(opts),
       stats: nil,
       last_stats: %{},
       watcher: nil,
       atom_cap_dropped: 0
     }), interval: :infinity, prune: false}
  end

  defp check_combinations!(opts, topology) do
    wire_format = opts.wire_format || :v1

    if wire_format != :v1 and is_nil(opts.secret) do
      Config.invalid!(topology, :secret, "a non-empty string with wire_format: #{inspect(wire_format)}", nil)
    end

    multicast_addr =
      opts.multicast_addr || if(opts.broadcast_only, do: @default_broadcast, else: @default_multicast)

    cond do
      opts.broadcast_only and tuple_size(multicast_addr) != 4 ->
        Config.invalid!(
          topology,
          :multicast_addr,
          "an IPv4 broadcast address with broadcast_only: true",
          multicast_addr
        )

      not opts.broadcast_only and not multicast?(multicast_addr) ->
        Config.invalid!(
          topology,
          :multicast_addr,
          "a multicast address (224.0.0.0/4 or ff00::/8; or set broadcast_only: true)",
          multicast_addr
        )

      true ->
        %{opts | wire_format: wire_format, multicast_addr: multicast_addr}
    end
  end

  defp multicast?({a, _, _, _}), do: a in 224..239
  defp multicast?({a, _, _, _, _, _, _, _}), do: Bitwise.band(a, 0xFF00) == 0xFF00

  defp warn_v1_once(topology) do
    key = {__MODULE__, :v1_warned, topology}

    unless :persistent_term.get(key, false) do
      :persistent_term.put(key, true)

      Cluster.Logger.warn(
        topology,
        "gossip secret uses libcluster's v1 format (AES-CBC): it is not authenticated, so anyone on the " <>
          "network can forge or replay heartbeats. Use wire_format: :authenticated (or :both while migrating)"
      )
    end
  end

  defp interface do
    fn value ->
      case Config.ip_address().(value) do
        {:ok, ip} ->
          {:ok, ip}

        {:error, _} ->
          case value do
            name when is_binary(name) and byte_size(name) in 1..15 ->
              if name =~ ~r/\A[A-Za-z0-9_.:\-]+\z/, do: {:ok, name}, else: {:error, interface_expected()}

            _ ->
              {:error, interface_expected()}
          end
      end
    end
  end

  defp interface_expected, do: "an IP address (tuple or string) or an interface name such as \"eth0\""

  defp ttl, do: &if(is_integer(&1) and &1 in 0..255, do: {:ok, &1}, else: {:error, "an integer in 0..255"})

  defp secret do
    fn
      s when is_binary(s) and s != "" -> {:ok, s}
      _ -> {:error, "a non-empty string"}
    end
  end

  # The native task's options, built once; `discover/2` adds this node's name, which can change.
  defp native_opts(opts) do
    %{
      node: nil,
      port: opts.port,
      if_addr: ip_string(opts.if_addr),
      multicast_if: opts.multicast_if && ip_string(opts.multicast_if),
      multicast_addr: ip_string(opts.multicast_addr),
      multicast_ttl: opts.multicast_ttl,
      broadcast_only: opts.broadcast_only,
      wire_format: opts.wire_format,
      heartbeat_interval: opts.heartbeat_interval,
      replay_window: opts.replay_window,
      new_names_burst: opts.new_names_burst,
      new_names_per_minute: opts.new_names_per_minute,
      new_names_total_burst: opts.new_names_total_burst,
      new_names_total_per_minute: opts.new_names_total_per_minute,
      verify_sender: opts.verify_sender,
      stats_interval: opts.stats_interval,
      listen_only: false
    }
  end

  @impl LibclusterRs.Discovery
  def discover(impl, tag) do
    native_opts = %{impl.native | node: current_node()}
    {handle, stats} = LibclusterRs.Native.gossip_start(tag, native_opts, impl.secret)
    watcher = impl.watcher || start_watcher()
    NameWatcher.follow(watcher, stats, native_opts.node)
    {{:stream, handle}, %{impl | stats: stats, watcher: watcher}}
  end

  defp current_node, do: NameWatcher.current()

  # Follows this VM's node name, so that a node that becomes distributed later (`Node.start/2`)
  # starts heartbeating under the right name, and tells the native task when a node goes down, so
  # that the node's next heartbeat is reported at once (heard names are otherwise re-reported with
  # backoff).
  defp start_watcher do
    NameWatcher.start(%{
      on_name: &set_node/2,
      on_nodedown: fn task, node -> LibclusterRs.Native.gossip_node_down(task, Atom.to_string(node)) end
    })
  end

  # A name the native validator refuses cannot be announced: announce none rather than crash.
  defp set_node(task, node) do
    LibclusterRs.Native.gossip_set_node(task, node)
  rescue
    ArgumentError -> LibclusterRs.Native.gossip_set_node(task, nil)
  end

  defp ip_string(name) when is_binary(name), do: name
  defp ip_string(ip) when is_tuple(ip), do: ip |> :inet.ntoa() |> List.to_string()

  @impl LibclusterRs.Discovery
  # `mix libcluster.discover`: listen only. A dry run must not announce its own node, or the
  # cluster's nodes would dial it.
  @spec dry_run(map()) :: map()
  def dry_run(impl), do: put_in(impl.native.listen_only, true)

  @impl LibclusterRs.Discovery
  def handle_event({:heartbeat, name, trusted}, impl) when is_boolean(trusted) do
    case node_atom(name, trusted, impl) do
      {:ok, node} ->
        {[{:seen, [node], [trusted: trusted]}], impl}

      :dropped ->
        {[], %{impl | atom_cap_dropped: impl.atom_cap_dropped + 1}}

      :invalid ->
        # The native decoder validates names first; this only guards the two validators' drift.
        Cluster.Logger.debug(impl.topology, "gossip heartbeat with an invalid node name dropped")
        {[], impl}
    end
  end

  def handle_event({:gossip_stats, counters}, impl) do
    counters = with_local_counters(counters, impl)
    LibclusterRs.Telemetry.execute([:libcluster, :gossip, :stats], counters, %{topology: impl.topology})
    {[], %{impl | last_stats: counters}}
  end

  def handle_event(event, impl), do: {[LibclusterRs.Discovery.default_event(event)], impl}

  @impl LibclusterRs.Discovery
  def status_extra(impl) do
    counters = if impl.stats, do: LibclusterRs.Native.gossip_stats(impl.stats), else: impl.last_stats
    {created, dropped} = LibclusterRs.Native.untrusted_atom_budget()

    %{
      wire_format: impl.wire_format,
      multicast_addr: impl.multicast_addr,
      port: impl.port,
      counters: with_local_counters(counters, impl),
      unauthenticated_atoms: %{created: created, dropped: dropped, max: impl.max_unauthenticated_atoms}
    }
  end

  defp with_local_counters(counters, %{atom_cap_dropped: 0}), do: counters
  defp with_local_counters(counters, impl), do: Map.put(counters, :rejected_atom_cap, impl.atom_cap_dropped)

  # A name that is already an atom (a known peer) is free; a new name from an unauthenticated
  # datagram spends one atom of the VM-wide budget (LibclusterRs.NodeName.untrusted_to_node/3).
  defp node_atom(name, trusted, impl) do
    case LibclusterRs.NodeName.untrusted_to_node(name, impl.max_unauthenticated_atoms, trusted) do
      {:ok, node} ->
        {:ok, node}

      :invalid ->
        :invalid

      :full_first ->
        Cluster.Logger.error(
          impl.topology,
          "gossip reached its cap of #{impl.max_unauthenticated_atoms} atoms made from " <>
            "unauthenticated heartbeats in this VM (max_unauthenticated_atoms): new node names " <>
            "from v1 heartbeats are now dropped (counted as rejected_atom_cap); nodes already " <>
            "known keep working. Anyone on the network can send such names: use " <>
            "wire_format: :authenticated with a secret"
        )

        :dropped

      :full ->
        Cluster.Logger.debug(impl.topology, "gossip: new name dropped at the atom cap")
        :dropped
    end
  end
end
