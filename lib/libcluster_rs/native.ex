defmodule LibclusterRs.Native do
  @moduledoc false
  # The NIF's Elixir face: stubs only. Every function returns within microseconds; discovery work
  # runs on the NIF's tokio runtime and answers the calling process by message:
  #
  #     {:libcluster_rs, tag, event}
  #
  # `tag` is the term the caller passed to the `*_start` function (a `make_ref()`), and `event` is one of:
  #
  #   * `{:nodes, [binary]}` - a complete successful discovery: all node names right now
  #   * `{:epmd_names, host, {:ok, [name]} | {:error, {kind, message}}}` - one host's epmd answer
  #   * `{:partial_nodes, [binary], {kind, message}}` - some of a round's questions failed: these
  #     nodes exist, but the list is incomplete, so nothing may be pruned because of it
  #   * `{:discovery_error, kind, message}` - a failed round; keep the last known membership
  #   * `:done` - a one-shot task has sent everything it will send
  #   * `{:heartbeat, binary, trusted :: boolean}` - gossip: an accepted heartbeat from another node
  #     (validated name); `trusted` when it came in an authenticated datagram
  #   * `{:gossip_stats, %{atom => non_neg_integer}}` - gossip: counters, sent when they changed
  #   * `{:watch_mode, :poll_fallback | :watch, binary}` - kubernetes: the watch is forbidden, so the
  #     task polls (or: it watches again); the binary says why, for the log
  #   * `{:connected, binary}` - postgres: the connection is (re)established and listening (for the log)
  #
  # `kind` is one of `:timeout, :refused, :unreachable, :nxdomain, :servfail, :unauthorized,
  # :forbidden, :not_found, :http_status, :tls, :malformed, :io, :config, :panic`.
  #
  # A `*_start` function returns a handle (a resource). The task stops when `discovery_stop/1` is
  # called, when the calling process dies, or when the handle is garbage-collected: keep the handle
  # for as long as you want the events. Upgrading the NIF needs a node restart (hot code loading
  # of the .so is not supported).

  @compile {:autoload, false}
  @on_load :load_nif

  @doc false
  def load_nif do
    path = :filename.join(:code.priv_dir(:libcluster_rs), ~c"native/libcluster_nif")

    case :erlang.load_nif(path, 0) do
      :ok ->
        :ok

      {:error, {reason, text}} ->
        IO.warn("libcluster_rs: cannot load its NIF #{path}.so (#{reason}): #{text}", [])
        :abort
    end
  end

  @typedoc "A running discovery task. Keep it referenced for as long as you want its events."
  @type handle :: reference()

  @doc """
  Combines `[{question, answer}]`, each answer `{:ok, [binary]}`, `:nothing` or
  `{:error, kind, binary}`, into one event exactly as `dns_lookup_start/2` does: `{:nodes, names}`,
  `{:partial_nodes, names, {kind, message}}` or `{:discovery_error, kind, message}`. Used for the
  answers of a user's `:resolver` fun, so that the rule lives once.
  """
  @spec dns_combine([{String.t(), {:ok, [String.t()]} | :nothing | {:error, atom(), String.t()}}]) ::
          term()
  def dns_combine(_results), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Ask the epmd of every host for its node names, concurrently, each within `timeout_ms`."
  @spec epmd_names_start(term(), [String.t()], 1..65535, pos_integer()) :: handle()
  def epmd_names_start(_tag, _hosts, _port, _timeout_ms), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  One DNS poll: every `{basename, name, types}` question (types among `:a`, `:aaaa`, `:srv`) is
  asked concurrently, then exactly one `{:nodes, names}`, `{:partial_nodes, names, {kind, msg}}`
  or `{:discovery_error, kind, msg}` arrives. `opts` is a map with `:questions`, `:nameservers`
  (`["ip:port"]`, empty for the system configuration), `:resolv_conf` (path), `:timeout_ms` (per
  query) and `:attempts`.
  """
  @spec dns_lookup_start(term(), %{
          questions: [{String.t(), String.t(), [:a | :aaaa | :srv]}],
          nameservers: [String.t()],
          resolv_conf: String.t(),
          timeout_ms: pos_integer(),
          attempts: pos_integer()
        }) :: handle()
  def dns_lookup_start(_tag, _opts), do: :erlang.nif_error(:nif_not_loaded)

  @typedoc "The counters of a running gossip task."
  @type gossip_stats :: reference()

  @doc """
  Start gossip (see `Cluster.Strategy.Gossip`): heartbeats for `opts.node` (`nil`: none until
  `gossip_set_node/2` gives a name) and a stream of `{:heartbeat, name, trusted}` events
  (`opts.listen_only: true`: no heartbeats are sent, for the dry run). Raises `ArgumentError` on
  options that cannot work.
  """
  @spec gossip_start(term(), map(), binary() | nil) :: {handle(), gossip_stats()}
  def gossip_start(_tag, _opts, _secret), do: :erlang.nif_error(:nif_not_loaded)

  @doc "The counters of a gossip task: accepted and rejected datagrams by reason, sent, errors."
  @spec gossip_stats(gossip_stats()) :: %{atom() => non_neg_integer()}
  def gossip_stats(_stats), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Tells a gossip task this VM's node name (`nil` when it is not distributed)."
  @spec gossip_set_node(gossip_stats(), String.t() | nil) :: :ok
  def gossip_set_node(_stats, _node), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Tells a gossip task that a node went down: its next heartbeat is reported at once."
  @spec gossip_node_down(gossip_stats(), String.t()) :: :ok
  def gossip_node_down(_stats, _node), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Reserves one atom of the VM-wide budget for node names from untrusted sources (unauthenticated
  gossip, Postgres NOTIFY), whose cap is `cap`: `:ok`, or `:full` (`:full_first` the first time in
  this VM). Called only by `LibclusterRs.NodeName.untrusted_to_node/3`.
  """
  @spec untrusted_atom_reserve(non_neg_integer()) :: :ok | :full | :full_first
  def untrusted_atom_reserve(_cap), do: :erlang.nif_error(:nif_not_loaded)

  @doc "`{created, dropped}`: the VM-wide count of atoms made from untrusted node names."
  @spec untrusted_atom_budget() :: {non_neg_integer(), non_neg_integer()}
  def untrusted_atom_budget, do: :erlang.nif_error(:nif_not_loaded)

  @doc "A libcluster v1 heartbeat datagram for `node` (plain, or AES-256-CBC with `secret`)."
  @spec gossip_encode_v1(String.t(), binary() | nil) :: binary()
  def gossip_encode_v1(_node, _secret), do: :erlang.nif_error(:nif_not_loaded)

  @typedoc "The counters of a running Postgres task."
  @type postgres_stats :: reference()

  @doc """
  Start Postgres LISTEN/NOTIFY (see `Cluster.Strategy.Postgres`): events `{:heartbeat, name, false}`,
  `{:connected, detail}` and `{:discovery_error, kind, message}` (retried with backoff).
  """
  @spec postgres_start(term(), map()) :: {handle(), postgres_stats()}
  def postgres_start(_tag, _opts), do: :erlang.nif_error(:nif_not_loaded)

  @doc "The counters of a Postgres task: notifications reported, dropped by reason, heartbeats sent, errors."
  @spec postgres_stats(postgres_stats()) :: %{atom() => non_neg_integer()}
  def postgres_stats(_stats), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Decodes one gossip datagram as a node with `wire_format` and `secret` would."
  @spec gossip_decode(binary(), :v1 | :both | :authenticated, binary() | nil) ::
          {:ok, String.t()} | {:error, atom()}
  def gossip_decode(_datagram, _wire_format, _secret), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Start a Kubernetes discovery. `opts` is the map `Cluster.Strategy.Kubernetes` builds from its
  validated config (its `impl.native`, with the namespace resolved). With `watch: true` it streams
  `{:nodes, names}` on every change and reconnects by itself; a forbidden watch falls back to a
  list every `poll_interval_ms` (`{:watch_mode, ...}` events); otherwise it lists once. With
  `namespace: nil` the task reads the service account's `namespace` file at its start (a
  `{:discovery_error, :config, msg}` naming the file when it cannot).
  """
  @spec kubernetes_start(term(), map()) :: handle()
  def kubernetes_start(_tag, _opts), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Parse a list body into node names (a dirty NIF): the path of one poll, for benchmarks and checks."
  @spec kubernetes_parse(
          :endpoints | :pods | :endpointslices,
          :ip | :dns | :hostname,
          String.t(),
          String.t(),
          String.t(),
          String.t() | nil,
          binary()
        ) :: {:ok, [String.t()]} | {:error, {atom(), String.t()}}
  def kubernetes_parse(_lookup, _mode, _basename, _namespace, _domain, _service, _body),
    do: :erlang.nif_error(:nif_not_loaded)

  @doc "Ask the Rancher metadata service once: one `{:nodes, names}` or one error."
  @spec rancher_start(term(), String.t(), String.t(), pos_integer()) :: handle()
  def rancher_start(_tag, _url, _basename, _timeout_ms), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  A topology's EC2 client (it caches credentials, the IMDS token, the region and this instance's tag
  value): `{:ok, client}` or `{:error, message}`. `opts` is the map `Cluster.Strategy.EC2` builds.
  """
  @spec ec2_client(map()) :: {:ok, reference()} | {:error, String.t()}
  def ec2_client(_opts), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  One EC2 round with `client`: one `{:nodes, names}` (`prefix@ip`), or with `prefix` nil one
  `{:nodes, ips}`, or one `{:discovery_error, kind, message}`. `tag_value` nil: this instance's own.
  """
  @spec ec2_start(term(), reference(), String.t() | nil, String.t() | nil) :: handle()
  def ec2_start(_tag, _client, _tag_value, _prefix), do: :erlang.nif_error(:nif_not_loaded)

  @doc "What `client` learnt (region, credentials source, instance id, tag value, counts)."
  @spec ec2_info(reference()) :: map()
  def ec2_info(_client), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Consul discovery (`Cluster.Strategy.Consul` builds `opts`). `blocking: true`: a stream of
  `{:nodes, names}` whenever the set changes, `{:partial_nodes, names, {kind, msg}}` while some
  query fails, `{:discovery_error, kind, msg}` while all do; `blocking: false`: one of those, once.
  """
  @spec consul_start(term(), map()) :: handle()
  def consul_start(_tag, _opts), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Lists the DigitalOcean API's Droplets once (every page; 429s waited out within
  `rate_limit_budget_ms`), health-checks them when `health_check_port` is set: one `{:nodes, names}`
  or one error.
  """
  @spec digitalocean_start(term(), %{
          api_url: String.t(),
          token: String.t(),
          tag_name: String.t() | nil,
          name: String.t() | nil,
          network: :private | :public,
          ipv6: boolean(),
          basename: String.t() | nil,
          health_check_port: 1..65535 | nil,
          health_check_timeout_ms: pos_integer(),
          cacertfile: String.t() | nil,
          request_timeout_ms: pos_integer(),
          rate_limit_budget_ms: non_neg_integer()
        }) :: handle()
  def digitalocean_start(_tag, _opts), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Names from one `/v2/droplets` page body (dirty NIF, no health check; for benchmarks)."
  @spec digitalocean_parse(binary(), %{
          network: :private | :public,
          ipv6: boolean(),
          basename: String.t() | nil
        }) ::
          {:ok, [String.t()]} | {:error, {atom(), String.t()}}
  def digitalocean_parse(_body, _naming), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Splits `names` (a list of at most 2,000 terms) by the node-name rule of the Rust core
  (`native/core/src/node_name.rs`): `{valid, rejected}`, each in the input's order. A binary or an
  atom (other than `nil`, `true`, `false`) is valid when its text is; any other term is rejected.
  Use `LibclusterRs.NodeName`, which chunks longer lists.
  """
  @spec node_names_check([term()]) :: {[String.t() | atom()], [term()]}
  def node_names_check(_names), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Stop a discovery task. Idempotent."
  @spec discovery_stop(handle()) :: :ok
  def discovery_stop(_handle), do: :erlang.nif_error(:nif_not_loaded)

  @doc "Whether a discovery task has been stopped (by `discovery_stop/1`, owner death or GC)."
  @spec discovery_stopped(handle()) :: boolean()
  def discovery_stopped(_handle), do: :erlang.nif_error(:nif_not_loaded)
end
