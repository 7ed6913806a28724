defmodule LibclusterRs.Discovery do
  @moduledoc false
  # The process behind every built-in strategy. It owns the topology's LibclusterRs.Membership, runs
  # discovery rounds (never two at once, never inside `init`, on a jittered schedule), turns native
  # events into membership updates, and applies the rules that hold for every strategy:
  #
  #   * an error never prunes: it is recorded, logged as a warning on the first failure of a streak
  #     (an error for a :config error; debug after that) and at info level when discovery recovers
  #   * a failed round is retried with backoff (1 s doubling, capped by the interval, or 30 s when
  #     the interval is :infinity), so even a run-once strategy heals
  #   * an empty result after a non-empty one is applied only after `confirm_empty` consecutive
  #     empty rounds
  #
  # A strategy module implements the callbacks below; `use LibclusterRs.Discovery` provides
  # `start_link/1` and `child_spec/1` (via `use Cluster.Strategy`).
  #
  # The decisions live in pure modules, tested without a process: when the next round is
  # (Discovery.Schedule), what to trust (Discovery.Trust), the telemetry span (Discovery.Span) and
  # the name-mode diagnostics (Discovery.Diagnostics). This process holds the state, routes the
  # messages and performs the effects they decide (timers, telemetry, logs, membership calls).
  #
  # The membership target is `{module, term}`: `module.discovered(term, nodes, prune: bool)`,
  # `seen(term, nodes, opts)`, `discovery_failed(term, error)`, `status(term, timeout)`,
  # `leave(term, timeout)` and, if exported, `round_finished(term, info)` at the end of each round
  # (info: `%{mode, result, strategy, impl}`). The default is the topology's LibclusterRs.Membership;
  # the dry run (`mix libcluster.discover`) passes a recorder.

  use GenServer

  alias LibclusterRs.{Membership, NodeName}
  alias LibclusterRs.Discovery.{Diagnostics, Schedule, Span, Trust}

  # How long a status or leave waits for the membership (which answers at once unless stuck).
  @membership_timeout 500
  alias Cluster.Strategy.State

  # `{:seen, nodes}` is a sighting from an untrusted source (e.g. an unauthenticated heartbeat);
  # `{:seen, nodes, trusted: true}` one from an authenticated source. See LibclusterRs.Membership.seen/3.
  @typedoc "What a round, or one native event, produced."
  @type outcome ::
          {:discovered, [node()]}
          | {:seen, [node()]}
          | {:seen, [node()], Keyword.t()}
          | {:error, kind :: atom(), message :: String.t()}
          | :done
          | :pending

  @typedoc """
  Options a strategy returns from `init/1`:

    * `:interval` - ms between rounds, or `:infinity` (default `5_000`)
    * `:jitter` - the fraction by which an interval varies either way (default `0.1`)
    * `:prune` - whether a complete discovery that omits a node may disconnect it (default `true`)
    * `:confirm_empty` - consecutive empty rounds needed before an empty result replaces a
      non-empty one (default `1`)
    * `:round_timeout` - the deadline of one asynchronous round in ms (default `30_000`)
    * `:membership` - options for `LibclusterRs.Membership`
  """
  @type opts :: Keyword.t()

  @callback init(State.t()) :: {:ok, impl :: term(), opts()} | :ignore
  @callback discover(impl :: term(), tag :: reference()) ::
              {outcome() | {:async, LibclusterRs.Native.handle()} | {:stream, LibclusterRs.Native.handle()},
               impl :: term()}
  @callback handle_event(event :: term(), impl :: term()) :: {[outcome()], impl :: term()}

  @doc """
  Strategy-specific details for `Cluster.status/1`, returned under its `:extra` key. A gossip
  strategy reports its datagram counters here (`%{gossip: %{accepted: n, rejected: %{reason => n}}}`),
  a watching strategy its resource version, and so on. Called in the discovery process; must be
  cheap and must not block.
  """
  @callback status_extra(impl :: term()) :: map()

  @doc """
  `mix libcluster.discover`: the impl a dry run uses instead of `impl`, e.g. one that listens
  without announcing this node (gossip) or lists once instead of watching (Kubernetes). Called
  between `init/1` and the first `discover/2`.
  """
  @callback dry_run(impl :: term()) :: term()

  @doc "`mix libcluster.discover`: why a round that succeeded found no node (e.g. the DNS name asked)."
  @callback dry_run_empty(impl :: term()) :: String.t()

  @optional_callbacks handle_event: 2, status_extra: 1, dry_run: 1, dry_run_empty: 1

  defmacro __using__(_opts) do
    quote do
      use Cluster.Strategy
      @behaviour LibclusterRs.Discovery

      @impl Cluster.Strategy
      def start_link([%Cluster.Strategy.State{} = state]),
        do: LibclusterRs.Discovery.start_link(__MODULE__, state)
    end
  end

  @doc false
  # `opts`: `membership: {module, term}` (the membership target, see above; default: a new
  # LibclusterRs.Membership) and `dry_run: true` (the strategy's `dry_run/1` impl, no registration,
  # no distribution warning, and a failing `init/1` stops with `{:shutdown, {:init_failed, kind,
  # reason, stacktrace}}` instead of crashing). The dry run starts it unlinked with `start/3`.
  def start_link(module, %State{} = state, opts \\ []) do
    GenServer.start_link(__MODULE__, {module, state, opts})
  end

  @doc false
  def start(module, %State{} = state, opts) do
    GenServer.start(__MODULE__, {module, state, opts})
  end

  @doc """
  The discovery's view: strategy, last result, error streak, and the membership's status
  (`membership: :unresponsive` when the membership did not answer in time).
  """
  @spec status(pid(), timeout()) :: map()
  def status(pid, timeout \\ 5_000), do: GenServer.call(pid, :status, timeout)

  @doc false
  # The topology's Task.Supervisor, for work a strategy starts from the discovery process (e.g. a
  # DNS `resolver` fun, the gossip watcher): it is linked to the discovery, so that work ends with
  # the topology (the dry run's discovery has one too). Outside a discovery process, the
  # application's LibclusterRs.TaskSupervisor, if running.
  @spec task_supervisor() :: pid() | atom() | nil
  def task_supervisor do
    Process.get(:cluster_task_supervisor) || Process.whereis(LibclusterRs.TaskSupervisor)
  end

  @doc """
  Stops discovery and reconnection for good (graceful leave): no further rounds, the native task
  stops, and the membership stops dialling (see `LibclusterRs.Membership.leave/1`). Nothing is
  disconnected. Idempotent.
  """
  @spec leave(pid()) :: :ok
  def leave(pid), do: GenServer.call(pid, :leave)

  # The outcomes of one native event.
  defp translate(module, event, impl) do
    if function_exported?(module, :handle_event, 2) do
      module.handle_event(event, impl)
    else
      {[default_event(event)], impl}
    end
  end

  @doc "Runs a round now (if none is in flight)."
  @spec refresh(pid()) :: :ok
  def refresh(pid), do: GenServer.cast(pid, :refresh)

  @doc "Default translation of the native events shared by all strategies."
  @spec default_event(term()) :: outcome()
  def default_event({:nodes, names}) when is_list(names) do
    {nodes, _rejected} = NodeName.to_nodes(names)
    {:discovered, nodes}
  end

  def default_event({:discovery_error, kind, message}), do: {:error, kind, to_string(message)}
  def default_event(:done), do: :done
  def default_event(_other), do: :pending

  ## Server

  @impl true
  def init({module, %State{} = state, opts}) do
    if opts[:dry_run] do
      try do
        case module.init(state) do
          {:ok, impl, dopts} ->
            impl = if function_exported?(module, :dry_run, 1), do: module.dry_run(impl), else: impl
            {:ok, impl, dopts}

          :ignore ->
            :ignore
        end
      catch
        kind, reason -> {:stop, {:shutdown, {:init_failed, kind, reason, __STACKTRACE__}}}
      else
        :ignore -> :ignore
        {:ok, impl, dopts} -> {:ok, new(module, impl, state, dopts, opts), {:continue, :discover}}
      end
    else
      case module.init(state) do
        :ignore ->
          :ignore

        {:ok, impl, dopts} ->
          register(state.topology)
          warn_unless_distributed(state.topology)
          {:ok, new(module, impl, state, dopts, opts), {:continue, :discover}}
      end
    end
  end

  defp new(module, impl, state, dopts, opts) do
    {:ok, tasks} = Task.Supervisor.start_link()
    Process.put(:cluster_task_supervisor, tasks)

    membership =
      case opts[:membership] do
        {_mod, _term} = target ->
          target

        nil ->
          membership_opts =
            Keyword.merge(Keyword.get(state.config, :membership, []), Keyword.get(dopts, :membership, []))

          # Validated here so that a bad option raises in the strategy's init, naming the key.
          _ = Membership.validate_opts!(state.topology, membership_opts)
          {:ok, membership} = Membership.start_link(state, membership_opts)
          {Membership, membership}
      end

    %{
      module: module,
      impl: impl,
      state: state,
      membership: membership,
      interval: Keyword.get(dopts, :interval, 5_000),
      jitter: Keyword.get(dopts, :jitter, 0.1),
      prune: Keyword.get(dopts, :prune, true),
      confirm_empty: Keyword.get(dopts, :confirm_empty, 1),
      round_timeout: Keyword.get(dopts, :round_timeout, 30_000),
      tag: nil,
      handle: nil,
      mode: :idle,
      timer: nil,
      round_timer: nil,
      error_streak: 0,
      empty_streak: 0,
      last_nodes: if(match?(%MapSet{}, state.meta), do: state.meta, else: MapSet.new()),
      last_ok_at: nil,
      last_error: nil,
      rounds: 0,
      # the open telemetry span of the current round (Discovery.Span), or nil
      span: nil,
      diagnostics: %Diagnostics{},
      dry_run: opts[:dry_run] == true
    }
  end

  @impl true
  def handle_continue(:discover, s), do: contain(s, fn -> {:noreply, run_round(s)} end)

  @impl true
  def handle_info(:discover, %{mode: :left} = s), do: {:noreply, s}
  def handle_info(:discover, s), do: {:noreply, run_round(%{s | timer: nil})}

  def handle_info({:libcluster_rs, tag, event}, %{tag: tag} = s) when tag != nil do
    contain(s, fn ->
      {outcomes, impl} = guarded(s, fn -> translate(s.module, event, s.impl) end)
      {:noreply, Enum.reduce(outcomes, %{s | impl: impl}, &apply_outcome/2)}
    end)
  end

  def handle_info({:libcluster_rs, _stale_tag, _event}, s), do: {:noreply, s}

  def handle_info({:round_timeout, tag}, %{tag: tag, mode: :round} = s) do
    s = apply_outcome({:error, :timeout, "discovery round did not finish within #{s.round_timeout} ms"}, s)
    {:noreply, s}
  end

  def handle_info({:round_timeout, _}, s), do: {:noreply, s}
  def handle_info(_other, s), do: {:noreply, s}

  @impl true
  def handle_cast(:refresh, %{mode: :idle} = s) do
    if s.timer, do: Process.cancel_timer(s.timer)
    {:noreply, run_round(%{s | timer: nil})}
  end

  def handle_cast(:refresh, s), do: {:noreply, s}

  defp register(topology) do
    supervisor =
      case Process.get(:"$ancestors") do
        [parent | _] when is_pid(parent) -> parent
        _ -> nil
      end

    _ = Registry.register(LibclusterRs.Registry, {:discovery, topology}, %{supervisor: supervisor})
    :ok
  end

  defp warn_unless_distributed(topology) do
    unless Node.alive?() do
      Cluster.Logger.warn(
        topology,
        "this node is not running distributed Erlang, so no node can be connected until it is " <>
          "(start it with --name or --sname, or in a release set RELEASE_DISTRIBUTION=name and RELEASE_NODE)"
      )
    end
  end

  defp status_extra(s) do
    if function_exported?(s.module, :status_extra, 1), do: s.module.status_extra(s.impl), else: %{}
  end

  # The discovery's own log lines; a dry run prints what it found itself.
  defp log(%{dry_run: true}, _level, _text), do: :ok
  defp log(s, :debug, text), do: Cluster.Logger.debug(s.state.topology, text)
  defp log(s, :info, text), do: Cluster.Logger.info(s.state.topology, text)
  defp log(s, :warn, text), do: Cluster.Logger.warn(s.state.topology, text)
  defp log(s, :error, text), do: Cluster.Logger.error(s.state.topology, text)

  # In a dry run, strategy code that raises stops the discovery with `{:shutdown, {:raised, kind,
  # reason, stacktrace}}` for the task to report (no crash report); otherwise it crashes the
  # discovery, which its topology's supervisor restarts.
  defp contain(%{dry_run: true} = s, fun) do
    fun.()
  catch
    kind, reason -> {:stop, {:shutdown, {:raised, kind, reason, __STACKTRACE__}}, s}
  end

  defp contain(_s, fun), do: fun.()

  # Runs strategy code; an exception closes the round's span with an :exception event and is re-raised.
  defp guarded(s, fun) do
    fun.()
  rescue
    e ->
      emit_exception(s, :error, e, __STACKTRACE__)
      reraise e, __STACKTRACE__
  catch
    kind, reason ->
      emit_exception(s, kind, reason, __STACKTRACE__)
      :erlang.raise(kind, reason, __STACKTRACE__)
  end

  defp emit_exception(%{span: %Span{} = span}, kind, reason, stacktrace) do
    emit(Span.exception(span, kind, reason, stacktrace, System.monotonic_time()))
  end

  defp emit_exception(_s, _kind, _reason, _stacktrace), do: :ok

  defp emit({event, measurements, metadata}),
    do: LibclusterRs.Telemetry.execute(event, measurements, metadata)

  defp open_span(s) do
    {span, event} =
      Span.open(s.state.topology, s.module, s.rounds, System.monotonic_time(), System.system_time())

    emit(event)
    %{s | span: span}
  end

  defp close_span(%{span: nil} = s, _result), do: s

  defp close_span(%{span: span} = s, result) do
    error =
      case {result, s.last_error} do
        {:error, {kind, message, _at}} -> {kind, message}
        _ -> nil
      end

    emit(Span.close(span, result, error, System.monotonic_time()))
    %{s | span: nil}
  end

  defp check_name_mode(s, nodes, source) do
    longnames? = if Node.alive?(), do: :net_kernel.longnames()
    {diagnostics, warning} = Diagnostics.check(s.diagnostics, nodes, source, longnames?)
    if warning, do: log(s, :warn, warning)
    %{s | diagnostics: diagnostics}
  end

  @impl true
  def handle_call(:status, _from, s) do
    status = %{
      strategy: s.module,
      mode: s.mode,
      interval: s.interval,
      rounds: s.rounds,
      last_discovered: s.last_nodes,
      last_ok_at: s.last_ok_at,
      last_error: s.last_error,
      error_streak: s.error_streak,
      next_round_in: (s.timer && Process.read_timer(s.timer)) || nil,
      extra: status_extra(s),
      name_problems: s.diagnostics.problems,
      membership: membership_status(s.membership)
    }

    {:reply, status, s}
  end

  def handle_call(:leave, _from, %{mode: :left} = s), do: {:reply, :ok, s}

  def handle_call(:leave, _from, s) do
    for t <- [s.timer, s.round_timer], t != nil, do: Process.cancel_timer(t)
    if s.handle, do: LibclusterRs.Native.discovery_stop(s.handle)
    s = close_span(s, :left)
    {mod, target} = s.membership
    _ = safe_call(fn -> mod.leave(target, @membership_timeout) end)
    Cluster.Logger.info(s.state.topology, "leaving: discovery and reconnection stopped")

    LibclusterRs.Telemetry.execute([:libcluster, :topology, :leave], %{}, %{
      topology: s.state.topology,
      strategy: s.module
    })

    {:reply, :ok, %{s | mode: :left, timer: nil, round_timer: nil, handle: nil, tag: nil}}
  end

  # A membership never waits for user code, but a status must not crash the discovery even if it
  # is stuck: it then says so.
  defp membership_status({mod, target}) do
    case safe_call(fn -> mod.status(target, @membership_timeout) end) do
      {:ok, status} -> status
      :error -> :unresponsive
    end
  end

  @doc false
  # A call that may time out or hit a dead process, as `{:ok, reply}` or `:error`. Late replies
  # after a timeout are dropped by the runtime (process aliases), so nothing leaks. Also used by
  # `Cluster.status/1`.
  @spec safe_call((() -> term())) :: {:ok, term()} | :error
  def safe_call(fun) do
    {:ok, fun.()}
  catch
    :exit, _ -> :error
  end

  @impl true
  def terminate(_reason, s) do
    if s.handle, do: LibclusterRs.Native.discovery_stop(s.handle)
    :ok
  end

  ## Rounds

  defp run_round(%{mode: :left} = s), do: s

  defp run_round(s) do
    tag = make_ref()
    s = open_span(%{s | tag: tag, rounds: s.rounds + 1})

    case guarded(s, fn -> s.module.discover(s.impl, tag) end) do
      {{:async, handle}, impl} ->
        timer = Process.send_after(self(), {:round_timeout, tag}, s.round_timeout)
        %{s | impl: impl, handle: handle, mode: :round, round_timer: timer}

      {{:stream, handle}, impl} ->
        %{s | impl: impl, handle: handle, mode: :stream}

      {outcome, impl} ->
        apply_outcome(outcome, %{s | impl: impl, mode: :round})
    end
  end

  defp apply_outcome(:pending, s), do: s

  defp apply_outcome({:seen, nodes}, s), do: apply_outcome({:seen, nodes, []}, s)

  defp apply_outcome({:seen, nodes, opts}, s) do
    {mod, target} = s.membership
    mod.seen(target, nodes, opts)
    s = %{s | span: Span.seen(s.span, length(nodes))}
    check_name_mode(s, nodes, :seen)
  end

  defp apply_outcome({:discovered, nodes}, s) do
    nodes = MapSet.new(nodes)
    s = check_name_mode(%{s | span: Span.discovered(s.span, MapSet.size(nodes))}, nodes, :discovered)

    s =
      case Trust.on_discovered(nodes, s.last_nodes, s.empty_streak, s.confirm_empty) do
        {:hold, empty_streak} ->
          log(
            s,
            :info,
            "discovery returned no nodes after #{MapSet.size(s.last_nodes)}; keeping them until " <>
              "#{s.confirm_empty} consecutive rounds agree"
          )

          %{s | empty_streak: empty_streak}

        :apply ->
          {mod, target} = s.membership
          mod.discovered(target, nodes, prune: s.prune)
          %{s | last_nodes: nodes, empty_streak: 0}
      end

    if s.error_streak > 0 do
      log(s, :info, "discovery recovered after #{s.error_streak} failed round(s)")
    end

    s = %{s | error_streak: 0, last_ok_at: System.system_time(:millisecond)}
    finish_round(s, :ok)
  end

  defp apply_outcome({:error, kind, message}, s) do
    text =
      "discovery failed (#{kind}): #{message}; keeping the last known #{MapSet.size(s.last_nodes)} node(s)"

    log(s, Trust.error_level(s.error_streak, kind), text)

    {mod, target} = s.membership
    mod.discovery_failed(target, {kind, message})
    s = %{s | error_streak: s.error_streak + 1, last_error: {kind, message, System.system_time(:millisecond)}}
    finish_round(s, :error)
  end

  defp apply_outcome(:done, %{mode: :round} = s), do: finish_round(s, :ok)

  defp apply_outcome(:done, %{mode: :stream} = s) do
    # A stream ended by itself: start it again after backoff.
    finish_round(%{s | mode: :round, error_streak: s.error_streak + 1}, :error)
  end

  defp apply_outcome(:done, s), do: s

  # A stream keeps running after each outcome (its span closes at its first result); a round ends
  # and the next one is scheduled.
  defp finish_round(%{mode: :stream} = s, result), do: s |> close_span(result) |> round_finished(result)

  defp finish_round(%{mode: mode} = s, _result) when mode in [:idle, :left], do: s

  defp finish_round(s, result) do
    s = close_span(s, result)
    if s.round_timer, do: Process.cancel_timer(s.round_timer)
    if s.handle, do: LibclusterRs.Native.discovery_stop(s.handle)
    mode = s.mode
    s = %{s | mode: :idle, handle: nil, round_timer: nil, tag: nil}
    s = round_finished(s, result, mode)

    case Schedule.next_delay(result, s.interval, s.jitter, s.error_streak, :rand.uniform()) do
      nil -> s
      delay -> %{s | timer: Process.send_after(self(), :discover, delay)}
    end
  end

  defp round_finished(s, result, mode \\ :stream) do
    {mod, target} = s.membership

    if function_exported?(mod, :round_finished, 2) do
      mod.round_finished(target, %{mode: mode, result: result, strategy: s.module, impl: s.impl})
    end

    s
  end
end
