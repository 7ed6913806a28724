# The agent of bench/scale.exs: loaded into every measured node (its object code is sent over the
# :peer control channel, so the node needs nothing from this repository but the library under test).
# It records, on the node and with the OS clock (all nodes share one machine, so one clock):
#
#   * every nodeup/nodedown (with the nodedown reason), and since when the node has seen all the
#     others (`full_since`, reset by any nodedown);
#   * every call of `:net_kernel.connect_node/1` and `:erlang.disconnect_node/1`, with its result,
#     through call tracing (the topology keeps its default MFAs: a counting connect MFA would
#     change what libcluster_rs does, e.g. its heal probe runs only with the default MFA). `global`
#     makes its transitive connects by messages, not through connect_node, so every connect_node
#     call here is the library's; disconnects are split by the calling module (global/net_kernel
#     are OTP's, anything else the library's);
#   * `global`'s "... in order to prevent overlapping partitions" log events, error-level log
#     events and warnings, through a logger handler (the default handler is removed, so nothing is
#     printed on the control channel).
defmodule Bench.Scale.Agent do
  @table :scale_agent
  @max_events 200_000

  @doc "Installs the watcher, the tracer and the logger handler. `nodes` are all the cluster's nodes."
  def init(nodes) do
    others = nodes -- [node()]
    parent = self()

    watcher =
      spawn(fn ->
        :ets.new(@table, [:named_table, :public, :ordered_set, write_concurrency: true])
        :ets.insert(@table, {:seq, 0})
        :ok = :net_kernel.monitor_nodes(true, %{node_type: :visible, nodedown_reason: true})
        send(parent, {:ready, self()})
        watch_loop(MapSet.new(others), nil)
      end)

    receive do
      {:ready, ^watcher} -> :ok
    after
      10_000 -> raise "agent watcher did not start"
    end

    Process.register(watcher, :scale_watch)

    tracer = spawn(fn -> trace_loop(%{}) end)
    Process.register(tracer, :scale_tracer)
    ms = [{:_, [], [{:return_trace}, {:message, {:caller}}]}]
    :erlang.trace_pattern({:net_kernel, :connect_node, 1}, ms, [:local])
    :erlang.trace_pattern({:erlang, :disconnect_node, 1}, ms, [:local])
    :erlang.trace(:all, true, [:call, {:tracer, tracer}])
    :erlang.trace(tracer, false, [:call])

    :ok = :logger.add_handler(:scale_count, __MODULE__, %{level: :all})
    quiet()
  end

  @doc "Removes every logger handler but the agent's (call again after starting applications)."
  def quiet do
    for id <- :logger.get_handler_ids(), id != :scale_count, do: :logger.remove_handler(id)
    :ok
  end

  @doc "Starts `Cluster.Supervisor` with `topologies`, unlinked; returns the OS time (µs) just before."
  def start_topology(topologies) do
    :ets.insert(@table, {:reductions0, reductions()})
    at = System.os_time(:microsecond)
    :ets.insert(@table, {:topology_started, at})
    {:ok, sup} = apply(Cluster.Supervisor, :start_link, [[topologies]])
    Process.unlink(sup)
    at
  end

  @doc """
  Turns on call_time counting for every loaded module whose name starts with one of `prefixes`
  (strings such as "Elixir.LibclusterRs."); profile_report/1 reads it. Every process already has
  the call trace flag (init/1), so this costs only the counting.
  """
  def profile_on(prefixes) do
    for {mod, _} <- :code.all_loaded(),
        name = Atom.to_string(mod),
        Enum.any?(prefixes, &String.starts_with?(name, &1)) do
      :erlang.trace_pattern({mod, :_, :_}, true, [:call_time])
    end

    :ok
  end

  @doc "The `k` functions with the most call_time (µs, summed over processes), with their call counts."
  def profile_report(k \\ 15) do
    for {mod, _} <- :code.all_loaded(),
        {f, a} <- safe_functions(mod),
        {:call_time, [_ | _] = per_pid} <- [:erlang.trace_info({mod, f, a}, :call_time)] do
      {calls, us} =
        Enum.reduce(per_pid, {0, 0}, fn {_pid, c, s, u}, {cc, uu} -> {cc + c, uu + s * 1_000_000 + u} end)

      {{mod, f, a}, calls, us}
    end
    |> Enum.sort_by(&(-elem(&1, 2)))
    |> Enum.take(k)
  end

  defp safe_functions(mod) do
    mod.module_info(:functions)
  rescue
    _ -> []
  end

  @doc "Loads every module of the code path directory `dir` (as a release does at boot)."
  def preload(dir) do
    for f <- Path.wildcard(Path.join(dir, "*.beam")) do
      {:module, _} = :code.ensure_loaded(f |> Path.basename(".beam") |> String.to_atom())
    end

    :ok
  end

  @doc "{full_since, connected count}: cheap, for polling."
  def status, do: {lookup(:full_since), length(Node.list())}

  @doc "What the node recorded: a summary, and with `events: true` the event log as well."
  def report(opts \\ []) do
    events = for {{_ts, _seq}, _} = e <- :ets.tab2list(@table), do: e
    full_since = lookup(:full_since)

    summary = %{
      node: node(),
      os_pid: List.to_integer(:os.getpid()),
      full_since: full_since,
      topology_started: lookup(:topology_started),
      connected: length(Node.list()),
      connect_calls: count(events, &match?({:connect_call, _, _}, &1)),
      connect_ok: count(events, &match?({:connect_ret, _, true}, &1)),
      connect_failed: count(events, &match?({:connect_ret, _, r} when r != true, &1)),
      lib_disconnects: count(events, &match?({:disconnect_call, _, :lib}, &1)),
      otp_disconnects: count(events, &match?({:disconnect_call, _, :otp}, &1)),
      global_disconnects: count(events, &match?({:global, _, :disconnected}, &1)),
      global_requests: count(events, &match?({:global, _, :requested}, &1)),
      nodeups: count(events, &match?({:nodeup, _, _}, &1)),
      nodedowns: count(events, &match?({:nodedown, _, _}, &1)),
      # nodedown reasons (connection_closed, disconnect, net_tick_timeout, ...) => count
      nodedown_reasons: events |> Enum.flat_map(fn {_, e} -> nodedown_reason(e) end) |> Enum.frequencies(),
      # OS time (us) of this node's first nodedown, if any
      first_nodedown:
        events
        |> Enum.flat_map(fn {{ts, _}, e} -> if match?({:nodedown, _, _}, e), do: [ts], else: [] end)
        |> Enum.min(fn -> nil end),
      # global's transitive connect (sync_other) saw a nodedown: "'global' at ~w failed to connect to ~w"
      global_connect_failures: count(events, &match?({:global_connect_failed, _}, &1)),
      errors: count(events, &match?({:log, :error, _}, &1)),
      warnings: count(events, &match?({:log, :warning, _}, &1)),
      error_samples:
        events
        |> Enum.filter(&match?({_, {:log, :error, _}}, &1))
        |> Enum.take(3)
        |> Enum.map(fn {_, {_, _, t}} -> t end)
    }

    summary = if opts[:events], do: Map.put(summary, :events, events), else: summary
    if opts[:reductions], do: Map.put(summary, :reductions, reductions_since()), else: summary
  end

  # Reductions per process, keyed by what the process is (registered name, else initial call,
  # else current function), so that the work since the topology start can be told by owner.
  defp reductions do
    for pid <- Process.list(),
        info = Process.info(pid, [:registered_name, :dictionary, :initial_call, :reductions]),
        info != nil,
        reduce: %{} do
      acc ->
        key =
          case info[:registered_name] do
            name when is_atom(name) and name != [] ->
              name

            _ ->
              case info[:dictionary][:"$initial_call"] do
                {m, f, a} -> {m, f, a}
                _ -> info[:initial_call]
              end
          end

        Map.update(acc, {pid, key}, info[:reductions], &(&1 + info[:reductions]))
    end
  end

  @doc false
  # Work done since the topology start, by process kind: %{kind => reductions}. Processes that
  # ended in between are not counted (a connect task's work is lost), so tasks are under-counted.
  def reductions_since do
    before = lookup(:reductions0) || %{}

    reductions()
    |> Enum.map(fn {{_pid, key} = k, r} -> {key, r - Map.get(before, k, 0)} end)
    |> Enum.reduce(%{}, fn {key, r}, acc -> Map.update(acc, key, r, &(&1 + r)) end)
  end

  defp lookup(key) do
    case :ets.lookup(@table, key) do
      [{^key, v}] -> v
      [] -> nil
    end
  end

  defp count(events, pred), do: Enum.count(events, fn {_, e} -> pred.(e) end)

  defp record(event) do
    seq = :ets.update_counter(@table, :seq, 1)
    if seq <= @max_events, do: :ets.insert(@table, {{System.os_time(:microsecond), seq}, event})
  end

  ## Watcher

  # The set is checked on every nodeup/nodedown and, while not full, every 5 ms as well: a nodeup
  # message can be handled before Node.list/0 shows that node.
  defp watch_loop(others, since) do
    receive do
      {:nodeup, node, _info} ->
        record({:nodeup, node, nil})
        watch_loop(others, check(others, since))

      {:nodedown, node, info} ->
        record({:nodedown, node, Map.get(info, :nodedown_reason)})
        watch_loop(others, check(others, since))
    after
      if(since, do: :infinity, else: 5) -> watch_loop(others, check(others, since))
    end
  end

  defp check(others, since) do
    cond do
      not MapSet.subset?(others, MapSet.new(Node.list())) ->
        if since, do: :ets.insert(@table, {:full_since, nil})
        nil

      since == nil ->
        now = System.os_time(:microsecond)
        :ets.insert(@table, {:full_since, now})
        now

      true ->
        since
    end
  end

  ## Tracer

  defp trace_loop(pending) do
    receive do
      {:trace, pid, :call, {:net_kernel, :connect_node, [node]}, _caller} ->
        record({:connect_call, node, nil})
        trace_loop(Map.put(pending, {pid, :connect}, node))

      {:trace, pid, :return_from, {:net_kernel, :connect_node, 1}, result} ->
        {node, pending} = Map.pop(pending, {pid, :connect})
        record({:connect_ret, node, result})
        trace_loop(pending)

      {:trace, _pid, :call, {:erlang, :disconnect_node, [node]}, caller} ->
        who =
          case caller do
            {m, _, _} when m in [:global, :global_group, :net_kernel, :dist_util] -> :otp
            _ -> :lib
          end

        record({:disconnect_call, node, who})
        trace_loop(pending)

      _other ->
        trace_loop(pending)
    end
  end

  defp nodedown_reason({:nodedown, _, reason}), do: [reason]
  defp nodedown_reason(_), do: []

  ## Logger handler

  @doc false
  def log(%{level: level, msg: msg}, _config) do
    case msg do
      {fmt, [_me, what, node]} when is_list(fmt) or is_binary(fmt) ->
        if :string.find(fmt, ~c"overlapping partitions") != :nomatch do
          kind =
            if what in [~c"requested disconnect from", "requested disconnect from"],
              do: :requested,
              else: :disconnected

          record({:global, node, kind})
        end

      {fmt, [_me, node]} when is_list(fmt) or is_binary(fmt) ->
        if :string.find(fmt, ~c"failed to connect to") != :nomatch, do: record({:global_connect_failed, node})

      _ ->
        :ok
    end

    cond do
      level in [:error, :critical, :alert, :emergency] -> record({:log, :error, text(msg)})
      level == :warning -> record({:log, :warning, nil})
      true -> :ok
    end
  end

  defp text({:string, s}), do: s |> IO.chardata_to_string() |> String.slice(0, 300)
  defp text({:report, r}), do: inspect(r, limit: 20) |> String.slice(0, 300)

  defp text({fmt, args}) do
    :io_lib.format(fmt, args) |> IO.chardata_to_string() |> String.slice(0, 300)
  rescue
    _ -> inspect({fmt, args}, limit: 20)
  end
end
