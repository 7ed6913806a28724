defmodule Cluster.Supervisor do
  @moduledoc """
  Starts one strategy process per topology, as in libcluster 3.5.

      # config/runtime.exs
      config :libcluster,
        topologies: [
          example: [
            strategy: Cluster.Strategy.Epmd,
            config: [hosts: [:"a@127.0.0.1", :"b@127.0.0.1"]]
          ]
        ]

      # application.ex
      children = [
        {Cluster.Supervisor, [Application.get_env(:libcluster, :topologies), [name: MyApp.ClusterSupervisor]]},
        # ...
      ]

  ## Topology keys

    * `:strategy` - the strategy module (required)
    * `:config` - the strategy's keyword list (default `[]`); values may be `{:system, "VAR"}`,
      `{:system, "VAR", default}` or `{:system, :integer | :atom | :boolean | :string, "VAR",
      default}`, resolved at start. An unset `{:system, "VAR"}` (it has no default) or a value that
      cannot be converted raises an `ArgumentError` naming the variable, the key and the topology
    * `:connect` - `{m, f, a}` called with the node appended (default `{:net_kernel, :connect_node, []}`)
    * `:disconnect` - default `{:erlang, :disconnect_node, []}`
    * `:list_nodes` - default `{:erlang, :nodes, [:connected]}`
    * `:membership` - options for `LibclusterRs.Membership` (built-in strategies only): `:prune`,
      `:connect_timeout`, `:max_concurrency`, `:backoff_min`, `:backoff_max`
    * `:await` - `[min_nodes: n, timeout: ms]`: after starting this topology, the supervisor's start
      waits (at most `timeout`) until the topology has `n` connected nodes, so that children started
      after `Cluster.Supervisor` find peers. On timeout it logs a warning and goes on. See
      `Cluster.await/1`.

  ## Graceful leave

  Every built-in topology stops dialling once the system is stopping (`System.stop/0`, SIGTERM), and
  when the `:libcluster_rs` application stops (`prep_stop`), so a node that is draining is not
  re-dialled by its own topologies. `Cluster.leave/0,1` does the same on demand, e.g. at the start of
  a custom drain. The supervisor's children stay exactly one per topology (plus a transient `await:`
  child that leaves nothing behind), as in libcluster.

  Each child's id is the topology name; the supervisor is `:one_for_one`. Bad topology specs raise
  an `ArgumentError` naming the topology and the key.

  A topology name that another running `Cluster.Supervisor` already runs (for example one started
  both by `config :libcluster_rs, topologies:` and by your own supervisor) is logged as a warning
  that names the topology and both supervisors: each would run its own strategy process.

  Instead of starting this supervisor yourself you may let the application start it:
  `config :libcluster_rs, topologies: [...]` (opt-in; the explicit supervisor stays the default).
  """
  use Supervisor

  alias Cluster.Strategy.State

  @topology_keys [:strategy, :config, :connect, :disconnect, :list_nodes, :membership, :child_spec, :await]

  @spec start_link([Keyword.t() | Keyword.t()]) :: Supervisor.on_start()
  def start_link([topologies]), do: start_link([topologies, []])

  def start_link([topologies, opts]) when is_list(opts) do
    Supervisor.start_link(__MODULE__, topologies || [], opts)
  end

  @impl true
  def init(topologies) do
    children = get_configured_topologies(topologies)
    register(topologies)

    awaits =
      for {topology, spec} <- topologies, opts = Keyword.get(spec, :await), into: %{} do
        {topology, LibclusterRs.Await.child_spec(topology, opts)}
      end

    children =
      Enum.flat_map(children, fn %{id: id} = child ->
        if await = awaits[id], do: [child, await], else: [child]
      end)

    Supervisor.init(children, strategy: :one_for_one)
  end

  # Lets Cluster.status/0 find this supervisor's topologies, including custom strategies.
  defp register(topologies) do
    info =
      for {topology, spec} <- topologies do
        {topology,
         %{
           strategy: Keyword.get(spec, :strategy),
           list_nodes: Keyword.get(spec, :list_nodes, {:erlang, :nodes, [:connected]})
         }}
      end

    warn_started_twice(Keyword.keys(topologies))
    _ = Registry.register(LibclusterRs.Registry, {:supervisor, self()}, info)
    :ok
  rescue
    # LibclusterRs.Registry is started by the :libcluster_rs application; without it, status is unavailable.
    ArgumentError -> :ok
  end

  # A topology that another running Cluster.Supervisor already runs is started twice: two strategy
  # processes discover and dial the same nodes. libcluster says nothing; say which and where.
  defp warn_started_twice(names) do
    others =
      Registry.select(LibclusterRs.Registry, [
        {{{:supervisor, :"$1"}, :_, :"$2"}, [{:"=/=", :"$1", self()}], [{{:"$1", :"$2"}}]}
      ])

    for {other, other_topologies} <- others, {topology, _} <- other_topologies, topology in names do
      Cluster.Logger.warn(
        topology,
        "topology #{inspect(topology)} is started twice: by #{place(other)} and by #{place(self())}; " <>
          "each runs its own strategy process, so its nodes are discovered and dialled twice. " <>
          "Start it in one place only (with `config :libcluster_rs, topologies:`, do not also start " <>
          "your own Cluster.Supervisor with the same topologies)"
      )
    end

    :ok
  end

  defp place(pid) do
    case Process.info(pid, :registered_name) do
      {:registered_name, LibclusterRs.AppSupervisor} ->
        "LibclusterRs.AppSupervisor (the :libcluster_rs application, from `config :libcluster_rs, topologies:`)"

      {:registered_name, name} when is_atom(name) ->
        "the Cluster.Supervisor #{inspect(name)}"

      _ ->
        "the Cluster.Supervisor #{inspect(pid)}"
    end
  end

  @doc false
  # The strategy and the initial `%State{}` of a topology spec, validated as at start (shared with
  # the `libcluster.discover` dry run).
  @spec topology_state!(atom(), Keyword.t()) :: {module(), State.t()}
  def topology_state!(topology, spec) do
    unless Keyword.keyword?(spec) do
      raise ArgumentError,
            "expected topology #{inspect(topology)} to be a keyword list, got: #{inspect(spec)}"
    end

    for {key, _} <- spec, key not in @topology_keys do
      Cluster.Logger.warn(topology, "unknown topology key #{inspect(key)} is ignored")
    end

    strategy = fetch_strategy!(topology, spec)
    config = Keyword.get(spec, :config, [])

    unless Keyword.keyword?(config) do
      raise ArgumentError,
            "invalid topology #{inspect(topology)}: expected :config to be a keyword list, got: #{inspect(config)}"
    end

    config = LibclusterRs.Config.resolve_system!(config, topology)
    config = if m = spec[:membership], do: Keyword.put_new(config, :membership, m), else: config

    state = %State{
      topology: topology,
      connect: mfa!(topology, spec, :connect, {:net_kernel, :connect_node, []}),
      disconnect: mfa!(topology, spec, :disconnect, {:erlang, :disconnect_node, []}),
      list_nodes: mfa!(topology, spec, :list_nodes, {:erlang, :nodes, [:connected]}),
      config: config,
      meta: nil
    }

    {strategy, state}
  end

  @doc false
  @spec get_configured_topologies(Keyword.t()) :: [Supervisor.child_spec()]
  def get_configured_topologies(topologies) do
    unless Keyword.keyword?(topologies) do
      raise ArgumentError,
            "expected topologies to be a keyword list of name: [strategy: ..., config: ...], got: #{inspect(topologies)}"
    end

    names = Keyword.keys(topologies)

    case names -- Enum.uniq(names) do
      [] ->
        :ok

      [twice | _] ->
        raise ArgumentError,
              "expected each topology name to appear once, got: #{inspect(twice)} twice " <>
                "(a supervisor cannot run two children with one id)"
    end

    for {topology, spec} <- topologies do
      child_spec(topology, spec)
    end
  end

  defp child_spec(topology, spec) do
    {strategy, state} = topology_state!(topology, spec)
    base = Supervisor.child_spec({strategy, [state]}, id: topology)

    case Keyword.get(spec, :child_spec) do
      nil -> base
      overrides when is_list(overrides) -> Supervisor.child_spec(base, overrides)
    end
  end

  defp fetch_strategy!(topology, spec) do
    case Keyword.fetch(spec, :strategy) do
      {:ok, mod} when is_atom(mod) and mod != nil ->
        unless Code.ensure_loaded?(mod) do
          raise ArgumentError,
                "invalid topology #{inspect(topology)}: expected :strategy to be a strategy module, " <>
                  "got: #{inspect(mod)} (module not available)"
        end

        mod

      {:ok, other} ->
        raise ArgumentError,
              "invalid topology #{inspect(topology)}: expected :strategy to be a strategy module, got: #{inspect(other)}"

      :error ->
        raise ArgumentError,
              "invalid topology #{inspect(topology)}: expected :strategy to be a strategy module, got: nil (the key is required)"
    end
  end

  defp mfa!(topology, spec, key, default) do
    case Keyword.get(spec, key, default) do
      {m, f, a} = mfa when is_atom(m) and is_atom(f) and is_list(a) ->
        mfa

      other ->
        raise ArgumentError,
              "invalid topology #{inspect(topology)}: expected #{inspect(key)} to be an MFA tuple " <>
                "{module, function, args}, got: #{inspect(other)}"
    end
  end
end
