defmodule Cluster.Membership do
  @moduledoc """
  Applies discovery results for one topology: the single path through which every built-in
  strategy connects and disconnects nodes.

  A strategy tells its membership what it found; the membership works out what to do:

    * `discovered/3` - the complete set a successful discovery returned. Nodes in it that are not
      connected (per `list_nodes`) are connected; nodes that an earlier discovery returned and this
      one does not are pruned according to the `:prune` policy.
    * `seen/2` - nodes sighted by a source that is not a complete list (a gossip heartbeat). They are
      connected if needed, and never pruned.
    * `discovery_failed/2` - a failed discovery. It is recorded and logged; it never prunes anything.

  Connects run concurrently in processes of their own, never in the strategy process, at most
  `:max_concurrency` at a time and each within `:connect_timeout`. A node that fails is retried with
  exponential backoff with jitter (from `:backoff_min` to `:backoff_max`) for as long as discovery
  keeps returning it; a discovered node that goes down is redialled the same way. A node that hangs
  therefore never delays another.

  ## Options

  Given under `membership:` in a topology (`[strategy: ..., config: ..., membership: [...]]`) or in
  the strategy's `config`:

    * `:prune` - what happens to a node that a successful discovery no longer returns:
      * `:immediate` (default, libcluster's behaviour) - it is disconnected at once
      * `{:grace_period, ms}` - it is disconnected if it is still missing `ms` later; a discovery that
        returns it again in the meantime cancels that. Use it for DNS services that return partial
        or rotating answers.
      * `:never` - it is no longer redialled, but never disconnected
    * `:connect_timeout` - the deadline of one connect attempt in ms (default `10_000`)
    * `:max_concurrency` - connect attempts in flight at once (default `64`); more wait their turn,
      nodes never tried before first
    * `:backoff_min` / `:backoff_max` - the retry delay after the first failure, doubling per
      failure up to the maximum, ±25% jitter (defaults `250` / `10_000` ms)
    * `:probe` - `:auto` (default), `true` or `false`: ask the epmd of unreachable peers' hosts
      whether they are back, to redial them at once (see "Healing" below). `:auto` probes when the
      topology connects with the default `{:net_kernel, :connect_node, []}`

  Errors never prune: a failed discovery leaves the last known set in place.

  ## Healing

  After a partition, peers have backed off up to `:backoff_max`, and connects started during the
  partition hang in their TCP connect. So that the cluster does not wait for either once the network
  is back, a probe (`Cluster.Membership.Probe`) asks the epmd of the unreachable peers' hosts (being
  dialled or in backoff) every 500 ms which names are registered, through the NIF (no scheduler and
  no `net_kernel` call waits for it). A peer whose name appears again is redialled at once, and
  so are peers whose hosts cannot be probed. A host is only asked when it is an IP literal or in the
  local hosts table: the probe never causes a DNS lookup. Failure counts are kept, so a peer that
  answers epmd but still cannot be connected backs off as before: backoff is never shortened for a
  dead peer, and a live one never waits for a dead one. A connection setup to a returning peer that
  is still stuck in a TCP connect started during the partition is ended rather than left to its
  `net_setuptime`. The probe runs by default when the topology connects with the default
  `{:net_kernel, :connect_node, []}`; with a custom connect MFA, `probe: true` turns it on (it then
  only moves the MFA's retries earlier); `probe: false` turns it off.

  ## Leaving

  `leave/1` stops all dialling for good: attempts in flight are abandoned, no retry is scheduled,
  and later discoveries, sightings and `nodedown`s connect nothing. Nothing is disconnected. A
  membership also stops dialling by itself once the system is shutting down (`:init.get_status/0`
  reports `:stopping`, e.g. after `System.stop/0` or SIGTERM), so a draining node is not re-dialled by
  its own discovery while the rest of the application stops.

  Membership changes are reported as telemetry events (`added`, `removed`, `pruned`, `backoff`);
  see `Cluster.Telemetry`.
  """
  use GenServer

  alias Cluster.Config
  alias Cluster.Strategy.State

  @type prune :: :immediate | :never | {:grace_period, pos_integer()}

  @defaults %{
    prune: :immediate,
    connect_timeout: 10_000,
    max_concurrency: 64,
    backoff_min: 250,
    backoff_max: 10_000,
    probe: :auto
  }

  defstruct topology: nil,
            connect: nil,
            disconnect: nil,
            list_nodes: nil,
            opts: @defaults,
            # the last successful complete discovery (libcluster's `meta`)
            known: MapSet.new(),
            known_at: nil,
            # nodes to keep connected: `known` minus pruned ones
            desired: MapSet.new(),
            # node => %{failures, next_at, last_error}
            peers: %{},
            # pid => {node, started_at, timer}
            inflight: %{},
            queue: [],
            # nodes in flight or queued, for O(1) lookups with large discoveries
            busy: MapSet.new(),
            # node => monotonic ms when a prune killed its connect attempt
            cancelled: %{},
            # node => monotonic ms when it went missing (grace-period prune)
            missing: %{},
            retry_timer: nil,
            last_error: nil,
            discoveries: 0,
            errors: 0,
            leaving: false,
            # heal probe: the Cluster.Membership.Probe pid, or nil (`probe: false`)
            probe: nil

  ## API

  @doc """
  Starts a membership for the topology of `state`, linked to the caller. `opts` are the options
  above; `state.meta`, when a `MapSet`, is taken as the last known set.
  """
  @spec start_link(State.t(), Keyword.t()) :: GenServer.on_start()
  def start_link(%State{} = state, opts \\ []) do
    GenServer.start_link(__MODULE__, {state, opts})
  end

  @doc "A complete successful discovery. `prune: false` stops redialling dropped nodes but never disconnects."
  @spec discovered(pid(), Enumerable.t(), Keyword.t()) :: :ok
  def discovered(membership, nodes, opts \\ []) do
    GenServer.cast(membership, {:discovered, MapSet.new(nodes), Keyword.get(opts, :prune, true)})
  end

  @doc "Nodes sighted by a partial source: connected if needed, never pruned."
  @spec seen(pid(), [node()]) :: :ok
  def seen(membership, nodes), do: GenServer.cast(membership, {:seen, nodes})

  @doc "A failed discovery: recorded, never prunes."
  @spec discovery_failed(pid(), term()) :: :ok
  def discovery_failed(membership, error), do: GenServer.cast(membership, {:failed, error})

  @doc "Stops dialling for good (see \"Leaving\" above). Idempotent."
  @spec leave(pid()) :: :ok
  def leave(membership), do: GenServer.call(membership, :leave)

  @doc "A snapshot of the membership: known, desired, connected, pending and backoff state."
  @spec status(pid(), timeout()) :: map()
  def status(membership, timeout \\ 5_000), do: GenServer.call(membership, :status, timeout)

  @doc "Validates membership options; raises ArgumentError naming the key."
  @spec validate_opts!(atom(), Keyword.t()) :: map()
  def validate_opts!(topology, opts) do
    schema = [
      {:prune, @defaults.prune, &validate_prune/1},
      {:connect_timeout, @defaults.connect_timeout, Config.pos_integer()},
      {:max_concurrency, @defaults.max_concurrency, Config.pos_integer()},
      {:backoff_min, @defaults.backoff_min, Config.pos_integer()},
      {:backoff_max, @defaults.backoff_max, Config.pos_integer()},
      {:probe, @defaults.probe, Config.one_of([:auto, true, false])}
    ]

    validated = Config.validate!(opts, schema, topology, __MODULE__)

    if validated.backoff_max < validated.backoff_min do
      raise ArgumentError,
            "invalid config for topology #{inspect(topology)}: expected :backoff_max to be >= :backoff_min " <>
              "(#{validated.backoff_min}), got: #{validated.backoff_max}"
    end

    validated
  end

  defp validate_prune(:immediate), do: {:ok, :immediate}
  defp validate_prune(:never), do: {:ok, :never}
  defp validate_prune({:grace_period, ms} = p) when is_integer(ms) and ms > 0, do: {:ok, p}
  defp validate_prune(_), do: {:error, ":immediate, :never or {:grace_period, milliseconds}"}

  ## Server

  @impl true
  def init({state, opts}) do
    topology = state.topology
    _ = Registry.register(Cluster.Registry, {:membership, topology}, self())

    known =
      case state.meta do
        %MapSet{} = set -> set
        _ -> MapSet.new()
      end

    m = %__MODULE__{
      topology: topology,
      connect: state.connect,
      disconnect: state.disconnect,
      list_nodes: state.list_nodes,
      opts: validate_opts!(topology, opts),
      known: known,
      desired: known
    }

    :ok = :net_kernel.monitor_nodes(true)
    {:ok, start_probe(m)}
  end

  @impl true
  def handle_cast({:discovered, _, _}, %{leaving: true} = m), do: {:noreply, m}
  def handle_cast({:seen, _}, %{leaving: true} = m), do: {:noreply, m}

  def handle_cast({:discovered, nodes, prune?}, m) do
    nodes = MapSet.delete(nodes, Node.self())
    dropped = MapSet.difference(m.known, nodes)
    added = MapSet.difference(nodes, m.known)
    emit(m, :added, added, %{source: :discovered})
    emit(m, :removed, dropped, %{prune: if(prune?, do: m.opts.prune, else: :never)})
    m = %{m | known: nodes, known_at: System.system_time(:millisecond), discoveries: m.discoveries + 1}
    m = %{m | missing: Map.drop(m.missing, MapSet.to_list(nodes))}

    m =
      if prune? do
        prune(m, dropped)
      else
        m
      end

    m = %{m | desired: nodes, peers: Map.take(m.peers, MapSet.to_list(nodes) ++ inflight_nodes(m))}
    {:noreply, reconcile(m)}
  end

  def handle_cast({:seen, nodes}, m) do
    connected = connected(m)

    fresh =
      Enum.filter(nodes, fn n ->
        n != Node.self() and not MapSet.member?(connected, n) and due?(m, n, now()) and
          not attempting?(m, n)
      end)

    emit(m, :added, Enum.reject(fresh, &MapSet.member?(m.known, &1)), %{source: :seen})
    {:noreply, m |> enqueue(fresh) |> start_attempts()}
  end

  def handle_cast({:failed, error}, m) do
    {:noreply, %{m | last_error: {error, System.system_time(:millisecond)}, errors: m.errors + 1}}
  end

  @impl true
  def handle_call(:status, _from, m) do
    now = now()
    connected = connected(m)

    pending =
      for {node, peer} <- m.peers, not MapSet.member?(connected, node), into: %{} do
        {node,
         %{
           failures: peer.failures,
           last_error: peer.last_error,
           next_attempt_in: max(peer.next_at - now, 0),
           in_flight: attempting?(m, node)
         }}
      end

    status = %{
      topology: m.topology,
      known: m.known,
      known_at: m.known_at,
      desired: m.desired,
      connected: MapSet.intersection(connected, MapSet.union(m.desired, m.known)),
      pending: pending,
      missing: Map.keys(m.missing),
      last_error: m.last_error,
      discoveries: m.discoveries,
      errors: m.errors,
      leaving: m.leaving,
      opts: m.opts
    }

    {:reply, status, m}
  end

  def handle_call(:leave, _from, m), do: {:reply, :ok, stop_dialling(m)}

  @impl true
  def handle_info({:attempt_deadline, pid}, m) do
    if Map.has_key?(m.inflight, pid), do: Process.exit(pid, :kill)
    {:noreply, m}
  end

  def handle_info({:DOWN, _ref, :process, pid, reason}, m) do
    case Map.pop(m.inflight, pid) do
      {nil, _} ->
        {:noreply, m}

      {{node, _started, timer}, inflight} ->
        Process.cancel_timer(timer)
        m = %{m | inflight: inflight, busy: MapSet.delete(m.busy, node)}

        result =
          case reason do
            {:connect_result, :ok} -> :ok
            {:connect_result, {:error, r}} -> {:error, r}
            :killed -> {:error, :timeout}
            other -> {:error, {:crashed, other}}
          end

        {:noreply, m |> record(node, result) |> start_attempts() |> schedule_retry()}
    end
  end

  def handle_info(:retry, %{leaving: true} = m), do: {:noreply, m}
  def handle_info(:retry, m), do: {:noreply, reconcile(%{m | retry_timer: nil})}

  def handle_info({:grace_expired, node, since}, m) do
    case Map.fetch(m.missing, node) do
      {:ok, ^since} ->
        m = %{m | missing: Map.delete(m.missing, node)}
        emit(m, :pruned, [node], %{prune: m.opts.prune})
        disconnect_async(m, [node])
        {:noreply, m}

      # Missing again since a later discovery: that one's timer decides.
      {:ok, _later} ->
        {:noreply, m}

      :error ->
        {:noreply, m}
    end
  end

  def handle_info({:nodedown, node}, m) do
    if MapSet.member?(m.desired, node) and not m.leaving, do: {:noreply, reconcile(m)}, else: {:noreply, m}
  end

  def handle_info({:nodeup, node}, m) do
    {cancelled_at, cancelled} = Map.pop(m.cancelled, node)
    m = %{m | cancelled: cancelled}

    if is_integer(cancelled_at) and now() - cancelled_at < m.opts.connect_timeout and
         not MapSet.member?(m.desired, node) do
      # The connection of an attempt killed by a prune completed after all: undo it.
      disconnect_async(m, [node])
    end

    # Connected by someone else (e.g. the peer dialled us): forget its failures.
    {:noreply, %{m | peers: Map.delete(m.peers, node)}}
  end

  def handle_info({:probe_reachable, nodes}, m), do: {:noreply, probe_reachable(m, nodes)}
  def handle_info(_other, m), do: {:noreply, m}

  ## Reconciling

  defp reconcile(%{leaving: true} = m), do: m

  defp reconcile(m) do
    connected = connected(m)
    now = now()

    todo =
      Enum.filter(m.desired, fn n ->
        not MapSet.member?(connected, n) and not attempting?(m, n) and due?(m, n, now)
      end)

    m |> enqueue(todo) |> start_attempts() |> schedule_retry()
  end

  # Never-tried nodes go first, so a newcomer is not queued behind peers that keep failing.
  defp enqueue(m, nodes) do
    new = nodes |> Enum.uniq() |> Enum.reject(&MapSet.member?(m.busy, &1))
    {fresh, retries} = Enum.split_with(new, &(not Map.has_key?(m.peers, &1)))
    %{m | queue: fresh ++ m.queue ++ retries, busy: Enum.into(new, m.busy)}
  end

  defp start_attempts(%{queue: []} = m), do: m
  defp start_attempts(%{leaving: true} = m), do: m

  defp start_attempts(m) do
    if system_stopping?() do
      Cluster.Logger.info(m.topology, "the system is stopping: no more connects")
      stop_dialling(m)
    else
      start_queued(m)
    end
  end

  defp start_queued(%{queue: []} = m), do: m

  defp start_queued(m) do
    if map_size(m.inflight) >= m.opts.max_concurrency do
      m
    else
      [node | rest] = m.queue
      start_queued(start_attempt(%{m | queue: rest}, node))
    end
  end

  defp system_stopping? do
    match?({:stopping, _}, :init.get_status())
  end

  # Graceful leave: abandon attempts in flight, forget queued ones, schedule nothing again.
  defp stop_dialling(m) do
    for {pid, {_node, _started, timer}} <- m.inflight do
      Process.cancel_timer(timer)
      Process.exit(pid, :kill)
    end

    if m.retry_timer, do: Process.cancel_timer(m.retry_timer)
    Cluster.Membership.Probe.watch(m.probe, %{})
    %{m | leaving: true, inflight: %{}, queue: [], busy: MapSet.new(), retry_timer: nil}
  end

  # The attempt logs a failure at debug level only: `record/3` warns once per failure streak.
  defp start_attempt(m, node) do
    topology = m.topology
    connect = m.connect

    {pid, _ref} =
      spawn_monitor(fn ->
        exit({:connect_result, Cluster.Strategy.connect_node(topology, connect, node, quiet_failure: true)})
      end)

    timer = Process.send_after(self(), {:attempt_deadline, pid}, m.opts.connect_timeout)
    %{m | inflight: Map.put(m.inflight, pid, {node, now(), timer})}
  end

  defp record(m, node, :ok), do: %{m | peers: Map.delete(m.peers, node)}

  defp record(m, node, {:error, reason}) do
    if MapSet.member?(m.desired, node) do
      peer = Map.get(m.peers, node, %{failures: 0, next_at: 0, last_error: nil})
      failures = peer.failures + 1
      delay = backoff(m.opts, failures)

      if failures == 1 do
        Cluster.Logger.warn(
          m.topology,
          "cannot connect to #{inspect(node)} (#{inspect(reason)}); retrying with backoff, next in #{delay} ms"
        )
      end

      if reason == :timeout do
        Cluster.Telemetry.execute(
          [:libcluster, :connect_node, :error],
          %{duration: System.convert_time_unit(m.opts.connect_timeout, :millisecond, :native)},
          %{node: node, topology: m.topology, reason: :timeout}
        )
      end

      Cluster.Telemetry.execute(
        [:libcluster, :membership, :backoff],
        %{failures: failures, delay: delay},
        %{topology: m.topology, node: node, reason: reason}
      )

      peers = Map.put(m.peers, node, %{failures: failures, next_at: now() + delay, last_error: reason})
      %{m | peers: peers}
    else
      %{m | peers: Map.delete(m.peers, node)}
    end
  end

  defp backoff(opts, failures) do
    base = min(opts.backoff_max, opts.backoff_min * Integer.pow(2, min(failures - 1, 30)))
    jitter = :rand.uniform() * 0.5 + 0.75
    max(1, round(base * jitter))
  end

  defp schedule_retry(%{leaving: true} = m), do: m

  defp schedule_retry(m) do
    if m.retry_timer, do: Process.cancel_timer(m.retry_timer)
    sync_probe(m)
    connected = connected(m)
    now = now()

    # A node without a backoff entry is due now (monotonic time may be negative: never default to 0).
    next =
      m.desired
      |> Enum.reject(&(MapSet.member?(connected, &1) or attempting?(m, &1)))
      |> Enum.map(fn n -> m.peers |> Map.get(n, %{next_at: now}) |> Map.fetch!(:next_at) end)
      |> Enum.min(fn -> nil end)

    case next do
      nil -> %{m | retry_timer: nil}
      at -> %{m | retry_timer: Process.send_after(self(), :retry, max(at - now, 0))}
    end
  end

  ## Heal probe (Cluster.Membership.Probe): the whole hook is start_probe/1, sync_probe/1 (called
  ## from schedule_retry/1 and stop_dialling/1) and probe_reachable/2 (the :probe_reachable message).

  # `:auto`: only for Erlang distribution's own connect; a custom connect MFA may not use epmd (or
  # net_kernel) at all, so probing is then asked for with `probe: true`.
  defp start_probe(%{opts: %{probe: mode}} = m)
       when mode == true or (mode == :auto and m.connect == {:net_kernel, :connect_node, []}) do
    {:ok, probe} =
      Cluster.Membership.Probe.start_link(topology: m.topology, only_when_distributed: mode == :auto)

    %{m | probe: probe}
  end

  defp start_probe(m), do: m

  # The desired nodes being dialled (queued or in flight, failure count 0 until they fail) and the
  # nodes in backoff (always desired), with their failure counts: after a nodedown the first attempt
  # may hang for seconds in a partition, and the probe must watch that node already. Nodes only
  # sighted (gossip) are never probed: their names come from the network.
  defp sync_probe(m) do
    dialling = for node <- m.busy, MapSet.member?(m.desired, node), into: %{}, do: {node, 0}
    backoff = Map.new(m.peers, fn {node, peer} -> {node, peer.failures} end)
    Cluster.Membership.Probe.watch(m.probe, Map.merge(dialling, backoff))
  end

  # `nodes` are reachable again: their backoff ends now and they are redialled. Failure counts
  # stay, so a node that still fails backs off from where it was (no hammering of dead peers).
  defp probe_reachable(%{leaving: true} = m, _nodes), do: m

  defp probe_reachable(m, nodes) do
    now = now()

    peers =
      Enum.reduce(nodes, m.peers, fn node, peers ->
        case peers do
          %{^node => peer} -> Map.put(peers, node, %{peer | next_at: now})
          _ -> peers
        end
      end)

    reconcile(%{m | peers: peers})
  end

  ## Pruning

  defp prune(m, dropped) do
    dropped = MapSet.delete(dropped, Node.self())

    cond do
      MapSet.size(dropped) == 0 ->
        m

      m.opts.prune == :immediate ->
        emit(m, :pruned, dropped, %{prune: :immediate})
        m = cancel_attempts(m, dropped)
        disconnect_async(m, MapSet.to_list(dropped))
        m

      m.opts.prune == :never ->
        cancel_attempts(m, dropped)

      match?({:grace_period, _}, m.opts.prune) ->
        {:grace_period, ms} = m.opts.prune
        now = now()

        missing =
          Enum.reduce(dropped, m.missing, fn node, acc ->
            if Map.has_key?(acc, node) do
              acc
            else
              Process.send_after(self(), {:grace_expired, node, now}, ms)
              Map.put(acc, node, now)
            end
          end)

        %{cancel_attempts(m, dropped) | missing: missing}
    end
  end

  # A node that discovery dropped must not be dialled by an attempt queued or in flight from before:
  # such attempts are dropped or killed. A killed attempt may still complete the connection inside
  # the distribution, so a nodeup from it shortly after is disconnected again (see :nodeup).
  defp cancel_attempts(m, nodes) do
    {cancelled, inflight} = Enum.split_with(m.inflight, fn {_pid, {n, _, _}} -> MapSet.member?(nodes, n) end)

    for {pid, {_node, _, timer}} <- cancelled do
      Process.cancel_timer(timer)
      Process.exit(pid, :kill)
    end

    now = now()
    killed = for {_pid, {node, _, _}} <- cancelled, into: %{}, do: {node, now}
    recent = for {n, at} <- m.cancelled, now - at < m.opts.connect_timeout, into: %{}, do: {n, at}

    %{
      m
      | inflight: Map.new(inflight),
        queue: Enum.reject(m.queue, &MapSet.member?(nodes, &1)),
        busy: MapSet.difference(m.busy, nodes),
        cancelled: Map.merge(recent, killed)
    }
  end

  # Disconnects run outside the membership process too.
  defp disconnect_async(m, nodes) do
    %{topology: topology, disconnect: disconnect, list_nodes: list_nodes} = m

    spawn(fn ->
      Cluster.Strategy.disconnect_nodes(topology, disconnect, list_nodes, nodes)
    end)
  end

  ## Helpers

  defp emit(m, event, nodes, meta) do
    nodes = Enum.to_list(nodes)

    if nodes != [] do
      Cluster.Telemetry.execute(
        [:libcluster, :membership, event],
        %{count: length(nodes)},
        Map.merge(meta, %{topology: m.topology, nodes: nodes})
      )
    end

    :ok
  end

  defp connected(m), do: Cluster.Strategy.list_nodes!(m.list_nodes)

  defp attempting?(m, node), do: MapSet.member?(m.busy, node)

  defp inflight_nodes(m), do: Enum.map(m.inflight, fn {_pid, {n, _, _}} -> n end)

  defp due?(m, node, now) do
    case Map.fetch(m.peers, node) do
      {:ok, %{next_at: at}} -> at <= now
      :error -> true
    end
  end

  defp now, do: System.monotonic_time(:millisecond)
end
