defmodule LibclusterRs.Membership do
  @moduledoc """
  Applies discovery results for one topology: the single path through which every built-in
  strategy connects and disconnects nodes.

  A strategy tells its membership what it found; the membership works out what to do:

    * `discovered/3` - the complete set a successful discovery returned. Nodes in it that are not
      connected (per `list_nodes`) are connected; nodes that an earlier discovery returned and this
      one does not are pruned according to the `:prune` policy.
    * `seen/3` - nodes sighted by a source that is not a complete list (a gossip heartbeat). They are
      connected if needed, and never pruned. Sightings are untrusted by default (`trusted: false`):
      the connects they cause are bounded per topology (`:untrusted_connect_rate`).
    * `discovery_failed/2` - a failed discovery. It is recorded and logged; it never prunes anything.

  Connects run concurrently in supervised tasks of the topology, never in the strategy process, at
  most `:max_concurrency` at a time and each within `:connect_timeout`. A node that fails is retried
  with exponential backoff with jitter (from `:backoff_min` to `:backoff_max`); a discovered node
  that goes down is redialled the same way. A node that hangs therefore never delays another.

  A connect counts as a success only when `list_nodes` shows the node afterwards: a connect MFA that
  returns `true` for a peer that accepts and drops the connection (or for a hidden connect, or with a
  `list_nodes` that lags) is a failure for the backoff. A node that connects and drops again within
  `:stable_after` keeps escalating its backoff; its failures are forgotten only once it stays
  connected that long. Whatever happens, one node is never dialled more often than once per
  `:min_dial_interval` (`Cluster.Strategy.Epmd` with `timeout: n` raises that floor to `n`).

  ## Containment of the topology's MFAs

  The `connect`, `disconnect` and `list_nodes` MFAs are the user's code, and run in tasks of the
  topology's `Task.Supervisor`, never in this process, each with a deadline (`:connect_timeout`
  for connects and disconnects, `:list_nodes_timeout` for `list_nodes`). An MFA that raises, exits,
  throws, returns something it should not or hangs counts as a failed attempt (or a failed
  `list_nodes` round, retried with backoff); it is logged at error level once per streak, naming the
  MFA and the error, and shown by `Cluster.status/1` under `:mfa_errors`. The membership keeps the
  last good answer of `list_nodes` and refreshes it asynchronously, so its own process never waits
  for user code and `status/2` always answers. (The default `list_nodes`, `:erlang.nodes/1`, is a
  BIF that cannot fail: it is called directly.) When the topology stops, its tasks stop with it.

  While `list_nodes` fails, the membership is unknown: nothing is pruned or disconnected on it,
  but the discovered nodes not known to be up (the last good answer, plus the nodes whose connect
  returned true since) are still dialled, each with its backoff, so a broken `list_nodes` never
  keeps reachable nodes apart. A connect that returns true then counts as unconfirmed (reason
  `:list_nodes_failed`), and the node is dialled again with backoff (a no-op while it is up).

  ## Options

  Given under `membership:` in a topology (`[strategy: ..., config: ..., membership: [...]]`) or in
  the strategy's `config`:

    * `:prune` - what happens to a node that a successful discovery no longer returns:
      * `:immediate` (default, libcluster's behaviour) - it is disconnected at once
      * `{:grace_period, ms}` - it is disconnected if it is still missing `ms` later; a discovery that
        returns it again in the meantime cancels that. Use it for DNS services that return partial
        or rotating answers.
      * `:never` - it is no longer redialled, but never disconnected
    * `:connect_timeout` - the deadline of one connect (and of one disconnect) attempt in ms
      (default `10_000`)
    * `:max_concurrency` - connect attempts in flight at once (default `64`); more wait their turn,
      nodes never tried before first
    * `:pace` - `:auto` (default), `:infinity` or a positive integer: how many dials may hold a
      slot at once (within `:max_concurrency`). When N nodes start together, or a partition heals,
      and each dials all others at once, their connection setups collide with each other, with
      `global`'s own connects and with its partition prevention (from about 100 nodes, a storm of
      disconnects). A slot is held while the dial is making progress and freed as soon
      as its setup is seen waiting for a host that has not answered (a dead peer), so a live peer
      listed after dead ones is still dialled within milliseconds. `:auto` is 8 slots when the
      topology connects with `:net_kernel.connect_node/1` (whose setups can be seen), and no
      pacing with any other connect MFA; `:infinity` turns pacing off (see "Dialling order and
      pacing" below)
    * `:pace_hold` - the longest, in ms, that a paced dial holds its slot (default `5_000`);
      with a connect MFA other than the default, setups cannot be seen and every paced dial holds
      its slot this long unless it ends sooner
    * `:backoff_min` / `:backoff_max` - the retry delay after the first failure, doubling per
      failure up to the maximum, ±20% uniform jitter (defaults `250` / `10_000` ms)
    * `:min_dial_interval` - the shortest time in ms between two connect attempts to one node,
      whatever happens (default `500`: at most two dials a second per node)
    * `:stable_after` - ms a node must stay connected before its earlier failures are forgotten
      (default `5_000`); a node that drops sooner counts as failed again
    * `:list_nodes_timeout` - the deadline of one `list_nodes` call in ms (default `5_000`)
    * `:untrusted_connect_rate` - connect attempts per second that untrusted sightings (`seen/3`
      with `trusted: false`, e.g. unauthenticated gossip) may cause in this topology, all nodes
      together (default `10`); sightings beyond it are dropped until the next one
    * `:probe` - `:auto` (default), `true` or `false`: ask the epmd of unreachable peers' hosts
      whether they are back, to redial them at once (see "Healing" below). `:auto` probes when the
      topology connects with the default `{:net_kernel, :connect_node, []}`

  Errors never prune: a failed discovery leaves the last known set in place.

  ## Dialling order and pacing

  Nodes never dialled before are dialled first, in ring order: the names sorted, starting with the
  first name after this node's own and wrapping around, so that nodes starting together do not all
  dial the same peer first and two neighbours do not dial each other first. A queued node that is
  connected by the time its turn comes (it dialled us, or `global` connected it) is not dialled,
  as libcluster's `connect_nodes` skips listed nodes.

  At most `:pace` dials hold a slot at once. The membership looks at the setup of each paced
  dial in `net_kernel`'s connection table 2 ms after it starts, then at twice the time since it
  started (at most every 500 ms): one that has heard nothing yet from the peer's host (in its epmd
  lookup or its TCP connect, no reply waiting) frees its slot and goes on concurrently within
  `:connect_timeout`; one that is past that point keeps its slot until it ends, or for
  `:pace_hold` ms at most. So a dead peer holds back the next dial for a few ms, and a cluster of
  live peers that are slow to set up is dialled `:pace` at a time. Retries are paced too: backoff
  spaces one peer's dials, but when a partition heals the probe makes every lost peer due at once.
  What the MFAs receive, and which nodes end up connected, do not
  change, only when dials start. The decisions are `LibclusterRs.Membership.Pace`'s plain functions;
  the look at a setup is `LibclusterRs.Membership.Probe.setup_stage/1`.

  ## Healing

  After a partition, peers have backed off up to `:backoff_max`, and connects started during the
  partition hang in their TCP connect. So that the cluster does not wait for either once the network
  is back, a probe (`LibclusterRs.Membership.Probe`) asks the epmd of the unreachable peers' hosts
  (peers in backoff, peers that were connected, went down and are being redialled, and peers whose
  dial is seen waiting on a host that does not answer; not a first connection whose setup
  progresses) every 500 ms which names are registered, through the NIF (no
  scheduler and no `net_kernel` call waits for it). A peer whose name appears again is redialled at
  once, and so are peers whose hosts cannot be probed. A host is only asked when it is an IP literal
  or in the local hosts table: the probe never causes a DNS lookup. Failure counts are kept, so a
  peer that answers epmd but still cannot be connected backs off as before: backoff is never
  shortened for a dead peer, and a live one never waits for a dead one (`:min_dial_interval` still
  holds). A connection setup to a returning peer that is still stuck in a TCP connect started during
  the partition is ended rather than left to its `net_setuptime`. The probe runs by default when the
  topology connects with the default `{:net_kernel, :connect_node, []}`; with a custom connect MFA,
  `probe: true` turns it on (it then only moves the MFA's retries earlier); `probe: false` turns it
  off.

  ## Leaving

  `leave/1` stops all dialling for good: attempts in flight are abandoned, no retry is scheduled,
  and later discoveries, sightings and `nodedown`s connect nothing. Nothing is disconnected. A
  membership also stops dialling by itself once the system is shutting down (`:init.get_status/0`
  reports `:stopping`, e.g. after `System.stop/0` or SIGTERM), so a draining node is not re-dialled by
  its own discovery while the rest of the application stops.

  The decisions are plain functions of the state, the clock and a random draw, tested without a
  process: what the membership wants (`LibclusterRs.Membership.Policy`: what a discovery adds and
  drops, what to dial now and in what order, the sightings bucket, grace periods) and the dialer's
  per-node backoff (`LibclusterRs.Membership.Peers`, with the one backoff rule of
  `LibclusterRs.Backoff`). This process holds the state, routes the messages and runs what they
  decide: tasks, timers, telemetry and logs.

  Membership changes are reported as telemetry events (`added`, `removed`, `pruned`, `backoff`);
  see `LibclusterRs.Telemetry`.
  """
  use GenServer

  alias LibclusterRs.{Backoff, Config}
  alias LibclusterRs.Membership.{Calls, Faults, Pace, Peers, Policy, Status}
  alias Cluster.Strategy.State

  @type prune :: :immediate | :never | {:grace_period, pos_integer()}

  @defaults %{
    prune: :immediate,
    connect_timeout: 10_000,
    max_concurrency: 64,
    backoff_min: 250,
    backoff_max: 10_000,
    min_dial_interval: 500,
    stable_after: 5_000,
    list_nodes_timeout: 5_000,
    untrusted_connect_rate: 10,
    probe: :auto,
    pace: :auto,
    pace_hold: 5_000
  }

  # Backoff entries of nodes that are neither wanted nor connected are dropped beyond this many.
  @peers_cap 10_000
  # Sightings waiting for a `list_nodes` answer, at most.
  @sightings_cap 4_096

  defstruct topology: nil,
            connect: nil,
            disconnect: nil,
            list_nodes: nil,
            opts: @defaults,
            task_sup: nil,
            # the last successful complete discovery (libcluster's `meta`)
            known: MapSet.new(),
            known_at: nil,
            # nodes to keep connected: `known` minus pruned ones
            desired: MapSet.new(),
            # The per-node backoff state, the one place it lives (LibclusterRs.Membership.Peers):
            # node => %{failures, next_at, last_error, last_dial_at, up_since, lost}.
            peers: %{},
            # Every task of the topology, one table: task ref => {job, pid, deadline timer}, the job
            # being {:connect, node}, :list_nodes or {:disconnect, nodes}. Each has a deadline
            # ({:deadline, ref} kills it) and ends in task_done/3, however it ended.
            tasks: %{},
            queue: [],
            # dials holding a pacing slot: task ref => {check timer, node, started at}
            # (LibclusterRs.Membership.Pace)
            pacing: %{},
            # whether connection setups can be seen (the default connect MFA): see Pace.window/2
            setups_seen: false,
            # nodes in flight or queued, for O(1) lookups with large discoveries
            busy: MapSet.new(),
            # node => monotonic ms when a prune killed its connect attempt
            cancelled: %{},
            # node => monotonic ms when it went missing (grace-period prune)
            missing: %{},
            # nodes this topology has asked its disconnect MFA to disconnect, ever
            disconnects_made: 0,
            # the last good `list_nodes` answer, and the refresh in flight
            listed: MapSet.new(),
            listed_at: nil,
            list_again: false,
            list_failures: 0,
            # sightings waiting for the next `list_nodes` answer: node => trusted?
            sightings: %{},
            # the token bucket of untrusted sightings: {tokens, monotonic ms}
            bucket: nil,
            sightings_dropped: 0,
            # :connect | :disconnect | :list_nodes => %{mfa, error, count, at}: the current failure streak
            mfa_errors: %{},
            retry_timer: nil,
            last_error: nil,
            discoveries: 0,
            errors: 0,
            leaving: false,
            # heal probe: the LibclusterRs.Membership.Probe pid, or nil (off), and its
            # {method, counters} (read by status without a call)
            probe: nil,
            probe_counters: nil,
            # what the probe was last told to watch (told again only when it changes; nil: tell it)
            probe_watch: %{},
            # nodes whose dial in flight was seen waiting for a host that does not answer
            # (Probe.setup_stage/1 at a pacing look): the heal probe watches them
            waiting: MapSet.new()

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

  @doc """
  Nodes sighted by a partial source: connected if needed, never pruned. Every sighted node has
  per-node backoff like any other. With `trusted: false` (the default, e.g. unauthenticated gossip)
  the connects caused by sightings are also bounded to `:untrusted_connect_rate` a second for the
  whole topology; `trusted: true` (authenticated sources) lifts that bound.
  """
  @spec seen(pid(), [node()], Keyword.t()) :: :ok
  def seen(membership, nodes, opts \\ []) do
    GenServer.cast(membership, {:seen, nodes, Keyword.get(opts, :trusted, false) == true})
  end

  @doc "A failed discovery: recorded, never prunes."
  @spec discovery_failed(pid(), term()) :: :ok
  def discovery_failed(membership, error), do: GenServer.cast(membership, {:failed, error})

  @doc "Stops dialling for good (see \"Leaving\" above). Idempotent."
  @spec leave(pid(), timeout()) :: :ok
  def leave(membership, timeout \\ 5_000), do: GenServer.call(membership, :leave, timeout)

  @doc "A snapshot of the membership: known, desired, connected, pending, backoff and MFA failures."
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
      {:min_dial_interval, @defaults.min_dial_interval, Config.pos_integer()},
      {:stable_after, @defaults.stable_after, Config.non_neg_integer()},
      {:list_nodes_timeout, @defaults.list_nodes_timeout, Config.pos_integer()},
      {:untrusted_connect_rate, @defaults.untrusted_connect_rate, Config.pos_integer()},
      {:probe, @defaults.probe, Config.one_of([:auto, true, false])},
      {:pace, @defaults.pace, &validate_pace/1},
      {:pace_hold, @defaults.pace_hold, Config.pos_integer()}
    ]

    opts |> Config.validate!(schema, topology, __MODULE__) |> Config.backoff_range!(topology)
  end

  defp validate_pace(:auto), do: {:ok, :auto}
  defp validate_pace(:infinity), do: {:ok, :infinity}
  defp validate_pace(n) when is_integer(n) and n > 0, do: {:ok, n}
  defp validate_pace(_), do: {:error, ":auto, :infinity or a positive integer"}

  defp validate_prune(:immediate), do: {:ok, :immediate}
  defp validate_prune(:never), do: {:ok, :never}
  defp validate_prune({:grace_period, ms} = p) when is_integer(ms) and ms > 0, do: {:ok, p}
  defp validate_prune(_), do: {:error, ":immediate, :never or {:grace_period, milliseconds}"}

  ## Server

  @impl true
  def init({state, opts}) do
    topology = state.topology
    _ = Registry.register(LibclusterRs.Registry, {:membership, topology}, self())
    # The topology's tasks (connects, disconnects, list_nodes): linked to this process, so they
    # end with the topology.
    {:ok, tasks} = Task.Supervisor.start_link()

    known =
      case state.meta do
        %MapSet{} = set -> set
        _ -> MapSet.new()
      end

    opts = validate_opts!(topology, opts)
    setups_seen = state.connect == {:net_kernel, :connect_node, []}
    opts = %{opts | pace: Pace.window(opts.pace, setups_seen)}

    m = %__MODULE__{
      topology: topology,
      connect: state.connect,
      disconnect: state.disconnect,
      list_nodes: state.list_nodes,
      opts: opts,
      task_sup: tasks,
      setups_seen: setups_seen,
      known: known,
      desired: known,
      bucket: {opts.untrusted_connect_rate * 1.0, now()}
    }

    :ok = :net_kernel.monitor_nodes(true)
    {:ok, start_probe(m)}
  end

  @impl true
  def handle_cast({:discovered, _, _}, %{leaving: true} = m), do: {:noreply, m}
  def handle_cast({:seen, _, _}, %{leaving: true} = m), do: {:noreply, m}

  def handle_cast({:discovered, nodes, prune?}, m) do
    %{nodes: nodes, added: added, dropped: dropped} = Policy.discovered(m.known, nodes, Node.self())
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

    m = %{m | desired: nodes, peers: Map.drop(m.peers, MapSet.to_list(dropped) -- connecting(m))}
    {:noreply, refresh(m)}
  end

  def handle_cast({:seen, nodes, trusted?}, m) do
    sightings = Policy.add_sightings(m.sightings, nodes, trusted?, Node.self(), @sightings_cap)
    {:noreply, refresh(%{m | sightings: sightings})}
  end

  def handle_cast({:failed, error}, m) do
    {:noreply, %{m | last_error: {error, System.system_time(:millisecond)}, errors: m.errors + 1}}
  end

  @impl true
  def handle_call(:status, _from, m) do
    m = if inline_list?(m.list_nodes), do: observe(%{m | listed: list_inline(m), listed_at: now()}), else: m
    now = now()
    status = Status.build(m, now)

    # An answer older than a moment is refreshed for the next caller (never waited for here).
    m = if m.listed_at == nil or now - m.listed_at > 200, do: refresh(m), else: m
    {:reply, status, m}
  end

  def handle_call(:leave, _from, m), do: {:reply, :ok, stop_dialling(m)}

  # Every task of the topology ends in task_done/3, whichever way: its reply, its crash, or its
  # deadline (the kill shows as a DOWN with reason :killed).
  @impl true
  def handle_info({ref, result}, m) when is_reference(ref) do
    if Map.has_key?(m.tasks, ref) do
      Process.demonitor(ref, [:flush])
      {:noreply, task_done(m, ref, result)}
    else
      {:noreply, m}
    end
  end

  def handle_info({:DOWN, ref, :process, _pid, reason}, m) do
    if Map.has_key?(m.tasks, ref) do
      {:noreply, task_done(m, ref, if(reason == :killed, do: :deadline, else: {:crashed, reason}))}
    else
      {:noreply, m}
    end
  end

  def handle_info({:deadline, ref}, m) do
    with {_job, pid, _timer} <- Map.get(m.tasks, ref), do: end_task(m, pid)
    {:noreply, m}
  end

  def handle_info(:retry, %{leaving: true} = m), do: {:noreply, m}
  def handle_info(:retry, m), do: {:noreply, refresh(%{m | retry_timer: nil})}

  def handle_info({:grace_expired, node, since}, m) do
    case Map.fetch(m.missing, node) do
      {:ok, ^since} ->
        m = %{m | missing: Map.delete(m.missing, node)}
        emit(m, :pruned, [node], %{prune: m.opts.prune})
        {:noreply, disconnect_async(m, [node])}

      # Missing again since a later discovery: that one's timer decides.
      {:ok, _later} ->
        {:noreply, m}

      :error ->
        {:noreply, m}
    end
  end

  def handle_info({:nodedown, node}, m) do
    if not m.leaving and (MapSet.member?(m.desired, node) or Map.has_key?(m.peers, node)),
      do: {:noreply, refresh(m)},
      else: {:noreply, m}
  end

  def handle_info({:nodeup, node}, m) do
    {cancelled_at, cancelled} = Map.pop(m.cancelled, node)
    m = %{m | cancelled: cancelled}

    # The connection of an attempt killed by a prune completed after all: undo it.
    m =
      if Policy.undo_nodeup?(cancelled_at, now(), m.opts.connect_timeout, MapSet.member?(m.desired, node)),
        do: disconnect_async(m, [node]),
        else: m

    # The probe forgets a node at its nodeup by itself: what it was last told no longer holds, so
    # the next sync tells it again (else a node that comes up and goes down between two syncs
    # would stay unprobed).
    m = if is_map(m.probe_watch) and Map.has_key?(m.probe_watch, node), do: %{m | probe_watch: nil}, else: m

    # Up, maybe connected by someone else (e.g. the peer dialled us): its failures are forgotten
    # only once it has stayed connected for `:stable_after` (see observe/1).
    {:noreply, %{m | peers: Peers.up(m.peers, node, now())}}
  end

  def handle_info({:probe_reachable, nodes}, m), do: {:noreply, probe_reachable(m, nodes)}

  # A look at a paced dial (LibclusterRs.Membership.Pace.check/3): its slot is freed when its
  # setup waits for a peer's host that has not answered, or after `:pace_hold` ms; the next first
  # dial may then start (this one goes on within its deadline).
  def handle_info({:pace_check, ref}, m) do
    case Map.fetch(m.pacing, ref) do
      {:ok, {_timer, node, started}} ->
        stage = if m.setups_seen, do: LibclusterRs.Membership.Probe.setup_stage(node)

        case Pace.check(stage, now() - started, m.opts.pace_hold) do
          :release ->
            waiting = if stage == :waiting, do: MapSet.put(m.waiting, node), else: m.waiting

            {:noreply,
             %{m | pacing: Map.delete(m.pacing, ref), waiting: waiting}
             |> start_attempts()
             |> schedule_retry()}

          {:keep, ms} ->
            timer = Process.send_after(self(), {:pace_check, ref}, ms)
            {:noreply, %{m | pacing: Map.put(m.pacing, ref, {timer, node, started})}}
        end

      :error ->
        {:noreply, m}
    end
  end

  def handle_info(_other, m), do: {:noreply, m}

  ## Backoff state

  # A failure (LibclusterRs.Membership.Peers.fail/6): logged when a streak starts, always reported
  # as a backoff event.
  defp fail(m, node, reason, now) do
    {peers, failures, delay} = Peers.fail(m.peers, node, reason, now, m.opts, :rand.uniform())

    if failures == 1 do
      Cluster.Logger.warn(
        m.topology,
        failure_text(m, node, reason) <> "; " <> next_attempt(m, node, delay)
      )
    end

    LibclusterRs.Telemetry.execute(
      [:libcluster, :membership, :backoff],
      %{failures: failures, delay: delay},
      %{topology: m.topology, node: node, reason: reason}
    )

    %{m | peers: peers}
  end

  # What the failure log promises: a discovered node is redialled by the retry timer; a node only
  # sighted (gossip, Postgres: names heard from the network) is not, it is dialled again when it
  # is heard from again and its backoff is over (Policy.take_sightings/7).
  defp next_attempt(m, node, delay) do
    if MapSet.member?(m.desired, node),
      do: "retrying with backoff, next in #{delay} ms",
      else: "dialling it again when it is next heard from, not sooner than #{delay} ms from now"
  end

  # Up/down transitions from the last `list_nodes` answer; nodes that flapped count as failed.
  defp observe(m) do
    now = now()
    {peers, flapped} = Peers.observe(m.peers, m.listed, now, m.opts)
    Enum.reduce(flapped, %{m | peers: peers}, &fail(&2, &1, :dropped, now))
  end

  defp failure_text(_m, node, :list_nodes_failed),
    do:
      "dialled #{inspect(node)} (the connect returned true) but list_nodes failed, so it is not known to be up"

  defp failure_text(m, node, reason) do
    text =
      case reason do
        :not_listed -> "the connect returned true but list_nodes does not show it"
        :dropped -> "it connected but dropped again within #{m.opts.stable_after} ms"
        other -> inspect(other)
      end

    "cannot connect to #{inspect(node)} (#{text})"
  end

  ## list_nodes

  # The default list_nodes is a BIF that cannot raise or hang: it is called in place.
  defp inline_list?({:erlang, :nodes, args}) when args in [[], [:connected], [:visible]], do: true
  defp inline_list?({Node, :list, args}) when args in [[], [:connected], [:visible]], do: true
  defp inline_list?(_), do: false

  defp list_inline(%{list_nodes: {mod, fun, args}}), do: MapSet.new(apply(mod, fun, args))

  # Asks `list_nodes` again and then reconciles. Inline for the default MFA; otherwise in a task
  # with a deadline, one at a time (a request while one is in flight asks again after it).
  defp refresh(%{leaving: true} = m), do: m

  defp refresh(m) do
    cond do
      inline_list?(m.list_nodes) ->
        listed(m, list_inline(m))

      Enum.any?(m.tasks, &match?({_ref, {:list_nodes, _, _}}, &1)) ->
        %{m | list_again: true}

      true ->
        list_nodes = m.list_nodes

        {_ref, m} =
          start_task(m, :list_nodes, fn -> Calls.list_nodes(list_nodes) end, m.opts.list_nodes_timeout)

        %{m | list_again: false}
    end
  end

  defp list_done(m, result) do
    result =
      case result do
        :deadline -> {:fault, "did not return within #{m.opts.list_nodes_timeout} ms"}
        {:crashed, reason} -> {:fault, "crashed: #{inspect(reason)}"}
        other -> other
      end

    case result do
      {:ok, set} ->
        m = m |> mfa_ok(:list_nodes) |> listed(set)
        if m.list_again, do: refresh(m), else: m

      {:fault, error} ->
        m = mfa_fault(m, :list_nodes, error)
        failures = m.list_failures + 1
        delay = Backoff.delay(failures, m.opts.backoff_min, m.opts.backoff_max, :rand.uniform())
        m = %{m | list_failures: failures, list_again: false}

        # Membership unknown: nothing is pruned or disconnected on it, but the discovered nodes
        # not known to be up (the last good answer, plus the connects that returned true since)
        # are still dialled, each with its backoff (a connect to a connected node is a no-op that
        # returns true). Then list_nodes is asked again at the earlier of its own backoff and the
        # next dial due.
        m = reconcile(m)
        dial_due_in = m.retry_timer && Process.read_timer(m.retry_timer)

        cond do
          m.leaving ->
            m

          is_integer(dial_due_in) and dial_due_in <= delay ->
            m

          true ->
            if m.retry_timer, do: Process.cancel_timer(m.retry_timer)
            %{m | retry_timer: Process.send_after(self(), :retry, delay)}
        end
    end
  end

  # A fresh `list_nodes` answer: observe transitions, then dial what is due.
  defp listed(m, set) do
    m = observe(%{m | listed: set, listed_at: now(), list_failures: 0})
    reconcile(m)
  end

  ## Reconciling

  defp reconcile(%{leaving: true} = m), do: m

  defp reconcile(m) do
    now = now()

    m
    |> enqueue(Policy.to_dial(m.desired, m.listed, m.busy, m.peers, now))
    |> take_sightings(now)
    |> start_attempts()
    |> schedule_retry()
  end

  # Sighted nodes that are due, as far as Policy.take_sightings/7 lets them through.
  defp take_sightings(%{sightings: sightings} = m, _now) when map_size(sightings) == 0, do: m

  defp take_sightings(m, now) do
    {nodes, bucket, dropped} =
      Policy.take_sightings(
        m.sightings,
        m.listed,
        m.busy,
        m.peers,
        m.bucket,
        m.opts.untrusted_connect_rate,
        now
      )

    emit(m, :added, Enum.reject(nodes, &MapSet.member?(m.known, &1)), %{source: :seen})

    %{m | sightings: %{}, bucket: bucket, sightings_dropped: m.sightings_dropped + dropped}
    |> enqueue(nodes)
  end

  defp enqueue(m, nodes) do
    {queue, busy} = Policy.enqueue(m.queue, m.busy, m.peers, Pace.ring(nodes, Node.self()))

    %{m | queue: queue, busy: busy}
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

  # What starts now is LibclusterRs.Membership.Pace.take/5's: within `:max_concurrency`, first
  # dials within `:pace`, and queued nodes that are connected by now are not dialled.
  defp start_queued(m) do
    free = max(m.opts.max_concurrency - length(connecting(m)), 0)
    paced_free = if m.opts.pace == :infinity, do: :infinity, else: max(m.opts.pace - map_size(m.pacing), 0)
    # With the default list_nodes the answer is fresh and kept: a node skipped here because it is
    # connected is then not due (schedule_retry/1) until a refresh says otherwise.
    m = if inline_list?(m.list_nodes), do: %{m | listed: list_inline(m), listed_at: now()}, else: m
    {starts, skipped, queue} = Pace.take(m.queue, m.listed, free, paced_free)
    m = %{m | queue: queue, busy: Enum.reduce(skipped, m.busy, &MapSet.delete(&2, &1))}
    Enum.reduce(starts, m, fn {node, paced?}, m -> start_attempt(m, node, paced?) end)
  end

  defp system_stopping? do
    match?({:stopping, _}, :init.get_status())
  end

  # Graceful leave: abandon attempts in flight, forget queued ones, schedule nothing again.
  defp stop_dialling(m) do
    {_killed, m} = kill_tasks(m, &match?({:connect, _}, &1))

    for {_ref, {timer, _node, _started}} <- m.pacing, do: Process.cancel_timer(timer)

    if m.retry_timer, do: Process.cancel_timer(m.retry_timer)
    LibclusterRs.Membership.Probe.watch(m.probe, %{})

    %{
      m
      | leaving: true,
        pacing: %{},
        queue: [],
        busy: MapSet.new(),
        retry_timer: nil,
        sightings: %{},
        probe_watch: %{},
        waiting: MapSet.new()
    }
  end

  defp start_attempt(m, node, paced?) do
    %{topology: topology, connect: connect, list_nodes: list_nodes} = m
    now = now()

    {ref, m} =
      start_task(
        m,
        {:connect, node},
        fn -> Calls.connect(topology, connect, list_nodes, node) end,
        m.opts.connect_timeout
      )

    pacing =
      if paced? do
        first = if m.setups_seen, do: Pace.first_check(), else: m.opts.pace_hold
        Map.put(m.pacing, ref, {Process.send_after(self(), {:pace_check, ref}, first), node, now})
      else
        m.pacing
      end

    %{m | pacing: pacing, peers: Peers.dialled(m.peers, node, now)}
  end

  defp attempt_done(m, ref, node, {:dialled, dialled_at, result}) do
    attempt_done(%{m | peers: Peers.dialled(m.peers, node, dialled_at, false)}, ref, node, result)
  end

  defp attempt_done(m, ref, node, :deadline) do
    fault = {:connect, "did not return within #{m.opts.connect_timeout} ms"}
    attempt_done(m, ref, node, {:error, :timeout, fault})
  end

  defp attempt_done(m, ref, node, {:crashed, reason} = crashed) do
    attempt_done(m, ref, node, {:error, crashed, {:connect, "crashed: #{inspect(reason, limit: 5)}"}})
  end

  defp attempt_done(m, ref, node, result) do
    m = %{
      m
      | busy: MapSet.delete(m.busy, node),
        pacing: release(m.pacing, ref),
        waiting: MapSet.delete(m.waiting, node)
    }

    now = now()

    m =
      case result do
        :ok ->
          m = mfa_ok(m, :connect)
          {peers, newly?} = Peers.connected(m.peers, node, now)

          # Logged once per connection: the node was down when this dial started (its nodeup may
          # have been seen already).
          if newly?, do: Cluster.Logger.info(m.topology, "connected to #{inspect(node)}")

          %{m | peers: peers, listed: MapSet.put(m.listed, node)}

        {:error, reason, fault} ->
          m =
            case fault do
              {kind, :ok} -> mfa_ok(m, kind)
              {kind, error} -> mfa_fault(m, kind, error)
              nil -> m
            end

          if reason == :timeout do
            LibclusterRs.Telemetry.execute(
              [:libcluster, :connect_node, :error],
              %{duration: System.convert_time_unit(m.opts.connect_timeout, :millisecond, :native)},
              %{node: node, topology: m.topology, reason: :timeout}
            )
          end

          fail(m, node, reason, now)
      end

    %{m | peers: Peers.gc(m.peers, m.desired, m.busy, now, @peers_cap)}
    |> start_attempts()
    |> schedule_retry()
  end

  # The pacing slot of attempt `ref`, if it still holds one, is freed.
  defp release(pacing, ref) do
    case Map.pop(pacing, ref) do
      {nil, pacing} ->
        pacing

      {{timer, _node, _started}, pacing} ->
        Process.cancel_timer(timer)
        pacing
    end
  end

  defp schedule_retry(%{leaving: true} = m), do: m

  defp schedule_retry(m) do
    if m.retry_timer, do: Process.cancel_timer(m.retry_timer)
    m = sync_probe(m)
    now = now()

    case Peers.next_due(m.peers, m.desired, m.listed, m.busy, now) do
      nil -> %{m | retry_timer: nil}
      at -> %{m | retry_timer: Process.send_after(self(), :retry, max(at - now, 0))}
    end
  end

  ## Heal probe (LibclusterRs.Membership.Probe): the whole hook is start_probe/1, sync_probe/1
  ## (called from schedule_retry/1 and stop_dialling/1) and probe_reachable/2.

  # `:auto`: only for Erlang distribution's own connect; a custom connect MFA may not use epmd (or
  # net_kernel) at all, so probing is then asked for with `probe: true`.
  defp start_probe(%{opts: %{probe: mode}} = m)
       when mode == true or (mode == :auto and m.connect == {:net_kernel, :connect_node, []}) do
    {:ok, probe} =
      LibclusterRs.Membership.Probe.start_link(topology: m.topology, only_when_distributed: mode == :auto)

    %{m | probe: probe, probe_counters: LibclusterRs.Membership.Probe.counters(probe)}
  end

  defp start_probe(m), do: m

  # The desired nodes being dialled (queued or in flight) and the desired nodes that are down with
  # backoff state, with their failure counts: after a nodedown the first attempt may hang for
  # seconds in a partition, and the probe must watch that node already. Nodes only sighted (gossip)
  # are never probed: their names come from the network.
  defp sync_probe(%{probe: nil} = m), do: m

  defp sync_probe(m) do
    watch = Peers.backed_off(m.peers, m.desired, m.busy, m.waiting)

    if watch == m.probe_watch do
      m
    else
      LibclusterRs.Membership.Probe.watch(m.probe, watch)
      %{m | probe_watch: watch}
    end
  end

  # `nodes` are reachable again: their backoff ends now (never sooner than `:min_dial_interval`
  # after their last dial) and they are redialled. Failure counts stay, so a node that still fails
  # backs off from where it was (no hammering of dead peers).
  defp probe_reachable(%{leaving: true} = m, _nodes), do: m

  defp probe_reachable(m, nodes) do
    refresh(%{m | peers: Peers.reachable(m.peers, nodes, now(), m.opts.min_dial_interval)})
  end

  ## MFA failures

  # A failure of the topology's `kind` MFA (LibclusterRs.Membership.Faults): logged at error
  # level when a streak starts.
  defp mfa_fault(m, kind, error) do
    mfa = Faults.mfa_text(kind, Map.fetch!(m, kind))

    case Faults.fault(m.mfa_errors, kind, mfa, error, now_ms()) do
      {faults, :continued} ->
        %{m | mfa_errors: faults}

      {faults, {:started, _}} ->
        what = if kind == :list_nodes, do: "round", else: "attempt"

        Cluster.Logger.error(
          m.topology,
          "the #{kind} MFA #{mfa} #{error}; counted as a failed #{what} and retried with backoff " <>
            "(logged once until it works again)"
        )

        %{m | mfa_errors: faults}
    end
  end

  # The `kind` MFA worked: a streak ends.
  defp mfa_ok(m, kind) do
    case Faults.ok(m.mfa_errors, kind) do
      {_, nil} ->
        m

      {faults, {:recovered, e}} ->
        Cluster.Logger.info(m.topology, "the #{kind} MFA #{e.mfa} works again after #{e.count} failure(s)")
        %{m | mfa_errors: faults}
    end
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

      m.opts.prune == :never ->
        cancel_attempts(m, dropped)

      match?({:grace_period, _}, m.opts.prune) ->
        {:grace_period, ms} = m.opts.prune
        now = now()
        {missing, started} = Policy.missing(m.missing, dropped, now)
        for node <- started, do: Process.send_after(self(), {:grace_expired, node, now}, ms)
        %{cancel_attempts(m, dropped) | missing: missing}
    end
  end

  # A node that discovery dropped must not be dialled by an attempt queued or in flight from before:
  # such attempts are dropped or killed. A killed attempt may still complete the connection inside
  # the distribution, so a nodeup from it shortly after is disconnected again (see :nodeup).
  defp cancel_attempts(m, nodes) do
    {cancelled, m} =
      kill_tasks(m, fn
        {:connect, node} -> MapSet.member?(nodes, node)
        _job -> false
      end)

    pacing = Enum.reduce(cancelled, m.pacing, fn {ref, _}, pacing -> release(pacing, ref) end)

    now = now()
    killed = for {_ref, {{:connect, node}, _, _}} <- cancelled, into: %{}, do: {node, now}
    recent = for {n, at} <- m.cancelled, now - at < m.opts.connect_timeout, into: %{}, do: {n, at}

    %{
      m
      | pacing: pacing,
        queue: Enum.reject(m.queue, &MapSet.member?(nodes, &1)),
        busy: MapSet.difference(m.busy, nodes),
        cancelled: Map.merge(recent, killed)
    }
  end

  # Disconnects run in tasks of the topology too, with the connect deadline.
  defp disconnect_async(m, nodes) do
    %{topology: topology, disconnect: disconnect, list_nodes: list_nodes} = m

    {_ref, m} =
      start_task(
        m,
        {:disconnect, nodes},
        fn -> Calls.disconnect(topology, disconnect, list_nodes, nodes) end,
        m.opts.connect_timeout
      )

    %{m | disconnects_made: m.disconnects_made + length(nodes)}
  end

  defp disconnect_done(m, result) do
    faults =
      case result do
        :deadline -> [{:disconnect, "did not return within #{m.opts.connect_timeout} ms"}]
        {:crashed, reason} -> [{:disconnect, "crashed: #{inspect(reason, limit: 5)}"}]
        list when is_list(list) -> list
      end

    Enum.reduce(faults, m, fn
      {kind, :ok}, m -> mfa_ok(m, kind)
      {kind, error}, m -> mfa_fault(m, kind, error)
    end)
  end

  ## Helpers

  defp emit(m, event, nodes, meta) do
    nodes = Enum.to_list(nodes)

    if nodes != [] do
      LibclusterRs.Telemetry.execute(
        [:libcluster, :membership, event],
        %{count: length(nodes)},
        Map.merge(meta, %{topology: m.topology, nodes: nodes})
      )
    end

    :ok
  end

  ## Tasks

  # Starts `fun` as a task of the topology doing `job`, with a deadline of `timeout` ms.
  defp start_task(m, job, fun, timeout) do
    task = Task.Supervisor.async_nolink(m.task_sup, fun, shutdown: :brutal_kill)
    timer = Process.send_after(self(), {:deadline, task.ref}, timeout)
    {task.ref, %{m | tasks: Map.put(m.tasks, task.ref, {job, task.pid, timer})}}
  end

  # Task `ref` ended with `result`: its reply, `:deadline` or `{:crashed, reason}`.
  defp task_done(m, ref, result) do
    {{job, _pid, timer}, tasks} = Map.pop(m.tasks, ref)
    Process.cancel_timer(timer)
    m = %{m | tasks: tasks}

    case job do
      {:connect, node} -> attempt_done(m, ref, node, result)
      :list_nodes -> list_done(m, result)
      {:disconnect, _nodes} -> disconnect_done(m, result)
    end
  end

  # Ends the tasks whose job `which?` accepts, unheard: neither their reply nor their DOWN is seen.
  defp kill_tasks(m, which?) do
    {killed, kept} = Enum.split_with(m.tasks, fn {_ref, {job, _, _}} -> which?.(job) end)

    for {ref, {_job, pid, timer}} <- killed do
      Process.demonitor(ref, [:flush])
      Process.cancel_timer(timer)
      end_task(m, pid)
    end

    {killed, %{m | tasks: Map.new(kept)}}
  end

  # Kills a task (its reason is :killed), through its supervisor: a task killed from outside
  # makes the supervisor log a "child_terminated" error report, one per deadline, which at scale
  # was thousands of error lines for what the membership already reports once per streak.
  defp end_task(m, pid), do: Task.Supervisor.terminate_child(m.task_sup, pid)

  # The nodes with a connect attempt in flight.
  defp connecting(m), do: for({_ref, {{:connect, node}, _, _}} <- m.tasks, do: node)

  defp now, do: System.monotonic_time(:millisecond)
  defp now_ms, do: System.system_time(:millisecond)
end
