defmodule Cluster do
  @moduledoc """
  Looking into and steering the running topologies: `status/0,1`, `mesh/1`, `await/1` and
  `leave/0,1`.

  Topologies are found wherever they run: under any `Cluster.Supervisor` (your own, or the one the
  application starts for `config :libcluster_rs, topologies: [...]`), and built-in strategy
  processes started by hand.

      iex> Cluster.status(:k8s)
      {:ok,
       %{
         topology: :k8s,
         strategy: Cluster.Strategy.Kubernetes,
         state: :running,
         last_discovered: [:"app@10.0.0.7", :"app@10.0.0.9"],
         last_discovered_at: ~U[2026-11-22 23:59:58.123Z],
         connected: [:"app@10.0.0.7"],
         pending: %{:"app@10.0.0.9" => %{failures: 3, last_error: false, next_attempt_in: 1840, in_flight: false}},
         last_error: nil,
         ...
       }}

  ## Status

  `status/1` returns, for a built-in strategy (one built on `LibclusterRs.Discovery`):

    * `:topology`, `:strategy`, `:pid`
    * `:state` - `:running`, `:leaving` (after `leave/1` or while the system stops), `:ignored` (the
      strategy's config disabled it, e.g. `Epmd` with no hosts), `:invalid_config` (its config
      cannot work, e.g. `DNSPoll` without a usable `:query`: it runs, as in libcluster, connects
      nothing, and `:last_error` says why), `:not_running` (its supervisor is
      restarting it) or `:unresponsive` (it did not answer within a second)
    * `:last_discovered` - the nodes of the last successful discovery (sorted), or `nil` before the first
    * `:last_discovered_at` - when, as a UTC `DateTime`
    * `:connected` - the discovered nodes that are connected (per the topology's `list_nodes`)
    * `:pending` - the discovered nodes that are not connected: `%{node => %{failures: n,
      last_error: reason, next_attempt_in: ms, in_flight: boolean}}`; `failures > 0` means the node is
      in backoff and `next_attempt_in` is when it is dialled again. `last_error` is what the connect
      returned (`false`, `:ignored`, `:timeout`...), `:not_listed` (it returned `true` but
      `list_nodes` did not show the node) or `:dropped` (the node connected and dropped again at
      once). Nodes only sighted (gossip) and in backoff are included too, at most 50.
    * `:last_error` - the last failed discovery: `%{kind: atom, message: string, at: DateTime}`, or `nil`
    * `:error_streak` - consecutive failed rounds (0 when the last round succeeded)
    * `:rounds`, `:interval`, `:next_round_in` (ms, or `nil` when no round is scheduled)
    * `:name_problems` - discovered node names that cannot be connected with this node's name
      mode (a short host under `--name`, a fully qualified host or an IP under `--sname`), as
      sentences; at most 10
    * `:membership` - `:ok`; `:unknown` while the topology's `list_nodes` MFA is failing
      (`:connected` is then its last good answer plus the nodes whose connect returned true since;
      nothing is pruned or disconnected, and the discovered nodes not known to be up are still
      dialled, each with its backoff); or `:unresponsive` when the topology's membership did not
      answer in time (the other membership keys are then empty)
    * `:mfa_errors` - the topology's MFAs (`:connect`, `:disconnect`, `:list_nodes`) that have
      failed (raised, exited, thrown, returned something unexpected or not returned in time):
      `%{kind => %{mfa: "Mod.fun/arity", error: text, failing: boolean, count: n, total: n, at:
      DateTime}}`. `failing` is true while the failure streak lasts (`count` failures in a row);
      `error` and `at` are the last failure's; `total` counts all. `%{}` when none ever failed.
      (A failed resolver fun is a failed discovery: see `:last_error`.)
    * `:disconnects` - who cut connections: `:ours` counts the disconnects this topology made
      (its `disconnect` MFA, e.g. pruning a node discovery no longer returns); `:global` counts
      the connections `global` cut in this VM "in order to prevent overlapping partitions" (OTP
      25+, kernel `prevent_overlapping_partitions`), and `:requested` the times it asked a peer
      to cut its connection to this node, with the last few in `:recent` (`%{what:
      :disconnected | :requested, node: node, at: DateTime}`). `global` reports these only in
      warning logs, which is where they are read: `:seen` is `false` when the primary logger
      level is above `:warning`, and the counts then stay 0.
    * `:heal_probe` - the topology's heal probe (`LibclusterRs.Membership.Probe`), `nil` when it
      has none: `%{method: how peers are asked, reported: n, setups_ended: n}`. `method` is
      `{:epmd, port}` or `{:dist_port, epmd_module}` (no epmd: the peers' distribution ports are
      tried); `reported` counts peers found back and redialled at once, `setups_ended` the
      connection setups stuck in a partition that it ended (see "Healing" in
      `LibclusterRs.Membership`)
    * `:extra` - strategy-specific details from the optional `c:LibclusterRs.Discovery.status_extra/1`
      callback, e.g. the gossip strategy's accepted/rejected datagram counters. `%{}` when the
      strategy reports nothing.

  A custom strategy (a libcluster-style GenServer) is shown with what is known about it: `:topology`,
  `:strategy`, `:pid`, `:state` and `:connected` (everything its `list_nodes` MFA reports); the other
  keys are `nil`.
  """

  alias LibclusterRs.{Discovery, Membership}

  @type topology :: atom()
  @type status :: %{required(atom()) => term()}

  @call_timeout 1_000

  @doc "The status of every running topology, by name. See the moduledoc for the keys."
  @spec status() :: %{topology() => status()}
  def status do
    Map.new(topologies(), fn {topology, info} -> {topology, build_status(topology, info)} end)
  end

  @doc "The status of one topology, or `{:error, :not_found}` when no topology of that name runs."
  @spec status(topology()) :: {:ok, status()} | {:error, :not_found}
  def status(topology) do
    case Map.fetch(topologies(), topology) do
      {:ok, info} -> {:ok, build_status(topology, info)}
      :error -> {:error, :not_found}
    end
  end

  @doc """
  Checks that the cluster is a full mesh: asks every node for its own view (`:erlang.nodes/0`
  over `:erpc`, all at once, each within `:timeout`), widens the set with the nodes those views
  name, and names every missing link. Nothing of libcluster_rs needs to run on the nodes asked.

      iex> Cluster.mesh()
      %{
        nodes: [:"a@10.0.0.1", :"b@10.0.0.2", :"c@10.0.0.3"],
        full_mesh: false,
        missing: [{:"a@10.0.0.1", :"c@10.0.0.3"}, {:"c@10.0.0.3", :"a@10.0.0.1"}],
        asymmetric: [],
        unreachable: %{},
        truncated: false
      }

  `{a, b}` in `:missing` means that `a` does not see `b`; it is in `:asymmetric` too when `b` does
  see `a` (a one-sided view, usually a connection being set up or torn down). `:unreachable` maps
  the nodes that did not answer to why. From this node by default (this node and `Node.list/0`);
  `mix libcluster.mesh` runs it from outside, as a hidden node.

  ## Options

    * `:seeds` - start from these nodes instead of this one, which is then not counted as a member
      (what `mix libcluster.mesh --node` does)
    * `:timeout` - ms per question, default `5_000`
    * `:max_nodes` - at most this many nodes are asked (`:seeds` first, in their order), default
      `1_000`; `:truncated` is true when some were left out
    * `:rounds` - how many times the set is widened with nodes the answers named, default `3`
  """
  @spec mesh(Keyword.t()) :: %{
          nodes: [node()],
          full_mesh: boolean(),
          missing: [{node(), node()}],
          asymmetric: [{node(), node()}],
          unreachable: %{node() => term()},
          truncated: boolean()
        }
  def mesh(opts \\ []), do: LibclusterRs.Mesh.check(opts)

  @doc """
  Waits until this node is connected to at least `min_nodes` other nodes, for at most `timeout` ms.
  Returns `:ok`, or `{:error, :timeout}`. It never blocks forever: `timeout` must be an integer.

      # application.ex: start the children that need peers after the cluster has formed
      def start(_type, _args) do
        children = [{Cluster.Supervisor, [topologies(), [name: MyApp.ClusterSupervisor]]}]
        {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one, name: MyApp.Supervisor)
        _ = Cluster.await(min_nodes: 2, timeout: 10_000)
        # ...
      end

  The same wait can be declared on a topology (`await: [min_nodes: 2, timeout: 10_000]`, see
  `Cluster.Supervisor`).

  ## Options

    * `:min_nodes` - the number of connected nodes, not counting this one (as `Node.list/0`
      counts). Default `1`.
    * `:timeout` - ms, default `10_000`
    * `:topology` - count only the nodes this topology discovered and connected (a topology that
      is not running yet counts as none). Without it, every connected visible node counts.
  """
  @spec await(Keyword.t()) :: :ok | {:error, :timeout}
  def await(opts \\ []) do
    opts = validate_await!(opts)
    deadline = System.monotonic_time(:millisecond) + opts[:timeout]
    wait(opts[:topology], opts[:min_nodes], deadline)
  end

  @doc false
  @spec validate_await!(Keyword.t()) :: Keyword.t()
  def validate_await!(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "expected await options to be a keyword list, got: #{inspect(opts)}"
    end

    for {key, _} <- opts, key not in [:min_nodes, :timeout, :topology] do
      raise ArgumentError,
            "unknown await option #{inspect(key)}; expected :min_nodes, :timeout or :topology"
    end

    min = Keyword.get(opts, :min_nodes, 1)
    timeout = Keyword.get(opts, :timeout, 10_000)
    topology = Keyword.get(opts, :topology)

    unless is_integer(min) and min >= 0 do
      raise ArgumentError, "expected :min_nodes to be a non-negative integer, got: #{inspect(min)}"
    end

    unless is_integer(timeout) and timeout >= 0 do
      raise ArgumentError,
            "expected :timeout to be a non-negative integer (milliseconds; waiting forever is not " <>
              "supported), got: #{inspect(timeout)}"
    end

    unless is_atom(topology) do
      raise ArgumentError, "expected :topology to be a topology name (an atom), got: #{inspect(topology)}"
    end

    [min_nodes: min, timeout: timeout, topology: topology]
  end

  defp wait(topology, min, deadline) do
    remaining = deadline - System.monotonic_time(:millisecond)

    cond do
      count(topology, max(remaining, 1)) >= min ->
        :ok

      remaining <= 0 ->
        {:error, :timeout}

      true ->
        Process.sleep(min(50, remaining))
        wait(topology, min, deadline)
    end
  end

  defp count(nil, _timeout), do: length(Node.list())

  defp count(topology, timeout) do
    case Registry.lookup(LibclusterRs.Registry, {:membership, topology}) do
      [{pid, _}] ->
        case safe_call(fn -> Membership.status(pid, min(timeout, @call_timeout)) end) do
          {:ok, %{connected: connected}} -> MapSet.size(connected)
          _ -> 0
        end

      [] ->
        case Map.fetch(topologies(), topology) do
          {:ok, %{list_nodes: mfa}} -> mfa |> list_nodes() |> length()
          _ -> 0
        end
    end
  end

  @doc """
  Graceful leave: stops discovery and dialling in every topology (or in `topology`), for good.
  Nothing is disconnected: the node keeps its connections while it drains, and its own topologies
  no longer re-dial a peer that drops. Custom (non-built-in) strategies are not affected.

  It is called for you when the `:libcluster_rs` application stops, and built-in topologies stop
  dialling by themselves once the system is stopping (`System.stop/0`, SIGTERM). Call it yourself to start draining earlier, e.g. first thing in your application's
  `prep_stop/1`.
  """
  @spec leave() :: :ok
  def leave do
    for {{:discovery, _}, pid, _} <- registry_entries(), do: leave_pid(pid)
    :ok
  end

  @spec leave(topology()) :: :ok | {:error, :not_found}
  def leave(topology) do
    case Registry.lookup(LibclusterRs.Registry, {:discovery, topology}) do
      [{pid, _}] -> leave_pid(pid)
      [] -> {:error, :not_found}
    end
  end

  @doc false
  def leave_pid(pid) do
    case safe_call(fn -> Discovery.leave(pid) end) do
      {:ok, :ok} -> :ok
      _ -> :ok
    end
  end

  ## Finding topologies

  # topology => %{strategy, list_nodes, supervisor, discovery}
  defp topologies do
    entries = registry_entries()

    from_supervisors =
      for {{:supervisor, sup}, _pid, topologies} <- entries,
          {topology, info} <- topologies,
          into: %{},
          do: {topology, Map.put(info, :supervisor, sup)}

    from_discoveries =
      for {{:discovery, topology}, pid, _} <- entries, into: %{}, do: {topology, %{discovery: pid}}

    Map.merge(from_supervisors, from_discoveries, fn _topology, a, b -> Map.merge(a, b) end)
  end

  defp registry_entries do
    Registry.select(LibclusterRs.Registry, [{{:"$1", :"$2", :"$3"}, [], [{{:"$1", :"$2", :"$3"}}]}])
  rescue
    ArgumentError -> []
  end

  ## Building a status

  defp build_status(topology, %{discovery: pid} = info) do
    case safe_call(fn -> Discovery.status(pid, @call_timeout) end) do
      {:ok, d} ->
        {m, membership} =
          case d.membership do
            %{mfa_errors: %{list_nodes: %{failing: true}}} = m ->
              {m, :unknown}

            %{} = m ->
              {m, :ok}

            :unresponsive ->
              {%{leaving: false, connected: [], pending: %{}, mfa_errors: %{}, heal_probe: nil},
               :unresponsive}
          end

        %{
          topology: topology,
          strategy: d.strategy,
          pid: pid,
          state:
            cond do
              d.mode == :invalid_config -> :invalid_config
              d.mode == :left or m.leaving -> :leaving
              true -> :running
            end,
          last_discovered: if(d.last_ok_at, do: Enum.sort(d.last_discovered)),
          last_discovered_at: datetime(d.last_ok_at),
          connected: Enum.sort(m.connected),
          pending: m.pending,
          last_error: last_error(d.last_error),
          error_streak: d.error_streak,
          rounds: d.rounds,
          interval: d.interval,
          next_round_in: d.next_round_in,
          name_problems: d.name_problems,
          extra: d.extra,
          membership: membership,
          mfa_errors: mfa_errors(Map.get(m, :mfa_errors, %{})),
          disconnects: disconnects(m),
          heal_probe: Map.get(m, :heal_probe)
        }

      :error ->
        unknown(topology, Map.get(info, :strategy), pid, :unresponsive)
    end
  end

  defp build_status(topology, %{supervisor: sup, strategy: strategy} = info) do
    child =
      case safe_call(fn -> GenServer.call(sup, :which_children, @call_timeout) end) do
        {:ok, children} -> Enum.find_value(children, fn {id, pid, _, _} -> if id == topology, do: pid end)
        :error -> nil
      end

    case child do
      pid when is_pid(pid) ->
        # A running child not registered as a discovery: a custom strategy.
        Map.merge(unknown(topology, strategy, pid, :running), %{
          connected: info.list_nodes |> list_nodes() |> Enum.sort()
        })

      :undefined ->
        unknown(topology, strategy, nil, :ignored)

      _ ->
        unknown(topology, strategy, nil, :not_running)
    end
  end

  # `global`'s cuts are the VM's (it does not know topologies); ours are the topology's.
  defp disconnects(m) do
    global = LibclusterRs.GlobalWatch.snapshot() || %{global: 0, requested: 0, recent: [], seen: false}
    Map.put(global, :ours, Map.get(m, :disconnects_made, 0))
  end

  defp unknown(topology, strategy, pid, state) do
    %{
      topology: topology,
      strategy: strategy,
      pid: pid,
      state: state,
      last_discovered: nil,
      last_discovered_at: nil,
      connected: [],
      pending: %{},
      last_error: nil,
      error_streak: nil,
      rounds: nil,
      interval: nil,
      next_round_in: nil,
      name_problems: [],
      extra: %{},
      membership: nil,
      mfa_errors: %{},
      disconnects: nil,
      heal_probe: nil
    }
  end

  defp mfa_errors(errors) do
    Map.new(errors, fn {kind, e} -> {kind, %{e | at: datetime(e.at)}} end)
  end

  defp last_error(nil), do: nil
  defp last_error({kind, message, at}), do: %{kind: kind, message: message, at: datetime(at)}

  defp datetime(nil), do: nil
  defp datetime(ms), do: DateTime.from_unix!(ms, :millisecond)

  # A custom strategy's list_nodes is user code: run with a deadline, outside the caller, and
  # anything but a list counts as none.
  defp list_nodes({m, f, a}) do
    # (Reached only through the application's registry, so its Task.Supervisor runs.)
    task =
      Task.Supervisor.async_nolink(LibclusterRs.TaskSupervisor, fn -> safe_apply(m, f, a) end,
        shutdown: :brutal_kill
      )

    case Task.yield(task, @call_timeout) || Task.shutdown(task, :brutal_kill) do
      {:ok, list} when is_list(list) -> list
      _ -> []
    end
  end

  defp safe_apply(m, f, a) do
    apply(m, f, a)
  catch
    _, _ -> []
  end

  defp safe_call(fun), do: Discovery.safe_call(fun)
end
