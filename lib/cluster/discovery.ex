defmodule Cluster.Discovery do
  @moduledoc false
  # The process behind every built-in strategy. It owns the topology's Cluster.Membership, runs
  # discovery rounds (never two at once, never inside `init`, on a jittered schedule), turns native
  # events into membership updates, and applies the rules that hold for every strategy:
  #
  #   * an error never prunes: it is recorded, logged as a warning on the first failure of a streak
  #     (debug after that) and at info level when discovery recovers
  #   * a failed round is retried with backoff (1 s doubling, capped by the interval, or 30 s when
  #     the interval is :infinity), so even a run-once strategy heals
  #   * an empty result after a non-empty one is applied only after `confirm_empty` consecutive
  #     empty rounds
  #
  # A strategy module implements the callbacks below; `use Cluster.Discovery` provides
  # `start_link/1` and `child_spec/1` (via `use Cluster.Strategy`).

  use GenServer

  alias Cluster.{Membership, NodeName}
  alias Cluster.Strategy.State

  @typedoc "What a round, or one native event, produced."
  @type outcome ::
          {:discovered, [node()]}
          | {:seen, [node()]}
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
    * `:membership` - options for `Cluster.Membership`
  """
  @type opts :: Keyword.t()

  @callback init(State.t()) :: {:ok, impl :: term(), opts()} | :ignore
  @callback discover(impl :: term(), tag :: reference()) ::
              {outcome() | {:async, Cluster.Native.handle()} | {:stream, Cluster.Native.handle()},
               impl :: term()}
  @callback handle_event(event :: term(), impl :: term()) :: {[outcome()], impl :: term()}
  @callback status(impl :: term()) :: map()
  @optional_callbacks handle_event: 2, status: 1

  defmacro __using__(_opts) do
    quote do
      use Cluster.Strategy
      @behaviour Cluster.Discovery

      @impl Cluster.Strategy
      def start_link([%Cluster.Strategy.State{} = state]), do: Cluster.Discovery.start_link(__MODULE__, state)
    end
  end

  @doc false
  def start_link(module, %State{} = state) do
    GenServer.start_link(__MODULE__, {module, state})
  end

  @doc "The discovery's view: strategy, last result, error streak, and the membership's status."
  @spec status(pid()) :: map()
  def status(pid), do: GenServer.call(pid, :status)

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
  def init({module, %State{} = state}) do
    case module.init(state) do
      :ignore ->
        :ignore

      {:ok, impl, opts} ->
        membership_opts =
          Keyword.merge(Keyword.get(state.config, :membership, []), Keyword.get(opts, :membership, []))

        {:ok, membership} = Membership.start_link(state, membership_opts)

        s = %{
          module: module,
          impl: impl,
          state: state,
          membership: membership,
          interval: Keyword.get(opts, :interval, 5_000),
          jitter: Keyword.get(opts, :jitter, 0.1),
          prune: Keyword.get(opts, :prune, true),
          confirm_empty: Keyword.get(opts, :confirm_empty, 1),
          round_timeout: Keyword.get(opts, :round_timeout, 30_000),
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
          rounds: 0
        }

        {:ok, s, {:continue, :discover}}
    end
  end

  @impl true
  def handle_continue(:discover, s), do: {:noreply, run_round(s)}

  @impl true
  def handle_info(:discover, s), do: {:noreply, run_round(%{s | timer: nil})}

  def handle_info({:libcluster_rs, tag, event}, %{tag: tag} = s) do
    {outcomes, impl} =
      if function_exported?(s.module, :handle_event, 2) do
        s.module.handle_event(event, s.impl)
      else
        {[default_event(event)], s.impl}
      end

    {:noreply, Enum.reduce(outcomes, %{s | impl: impl}, &apply_outcome/2)}
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
      membership: Membership.status(s.membership),
      strategy_status: if(function_exported?(s.module, :status, 1), do: s.module.status(s.impl), else: %{})
    }

    {:reply, status, s}
  end

  @impl true
  def terminate(_reason, s) do
    if s.handle, do: Cluster.Native.discovery_stop(s.handle)
    :ok
  end

  ## Rounds

  defp run_round(s) do
    tag = make_ref()
    s = %{s | tag: tag, rounds: s.rounds + 1}

    case s.module.discover(s.impl, tag) do
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

  defp apply_outcome({:seen, nodes}, s) do
    Membership.seen(s.membership, nodes)
    s
  end

  defp apply_outcome({:discovered, nodes}, s) do
    nodes = MapSet.new(nodes)

    s =
      cond do
        MapSet.size(nodes) == 0 and MapSet.size(s.last_nodes) > 0 and
            s.empty_streak + 1 < s.confirm_empty ->
          Cluster.Logger.info(
            s.state.topology,
            "discovery returned no nodes after #{MapSet.size(s.last_nodes)}; keeping them until " <>
              "#{s.confirm_empty} consecutive rounds agree"
          )

          %{s | empty_streak: s.empty_streak + 1}

        true ->
          Membership.discovered(s.membership, nodes, prune: s.prune)
          %{s | last_nodes: nodes, empty_streak: 0}
      end

    if s.error_streak > 0 do
      Cluster.Logger.info(s.state.topology, "discovery recovered after #{s.error_streak} failed round(s)")
    end

    s = %{s | error_streak: 0, last_ok_at: System.system_time(:millisecond)}
    finish_round(s, :ok)
  end

  defp apply_outcome({:error, kind, message}, s) do
    topology = s.state.topology

    text =
      "discovery failed (#{kind}): #{message}; keeping the last known #{MapSet.size(s.last_nodes)} node(s)"

    if s.error_streak == 0,
      do: Cluster.Logger.warn(topology, text),
      else: Cluster.Logger.debug(topology, text)

    Membership.discovery_failed(s.membership, {kind, message})
    s = %{s | error_streak: s.error_streak + 1, last_error: {kind, message, System.system_time(:millisecond)}}
    finish_round(s, :error)
  end

  defp apply_outcome(:done, %{mode: :round} = s), do: finish_round(s, :ok)

  defp apply_outcome(:done, %{mode: :stream} = s) do
    # A stream ended by itself: start it again after backoff.
    finish_round(%{s | mode: :round, error_streak: s.error_streak + 1}, :error)
  end

  defp apply_outcome(:done, s), do: s

  # A stream keeps running after each outcome; a round ends and the next one is scheduled.
  defp finish_round(%{mode: :stream} = s, _result), do: s

  defp finish_round(%{mode: :idle} = s, _result), do: s

  defp finish_round(s, result) do
    if s.round_timer, do: Process.cancel_timer(s.round_timer)
    if s.handle, do: Cluster.Native.discovery_stop(s.handle)
    s = %{s | mode: :idle, handle: nil, round_timer: nil, tag: nil}
    schedule(s, result)
  end

  defp schedule(s, result) do
    delay =
      case {result, s.interval} do
        {:ok, :infinity} -> nil
        {:ok, ms} -> jittered(ms, s.jitter)
        {:error, :infinity} -> error_backoff(s.error_streak, 30_000)
        {:error, ms} -> error_backoff(s.error_streak, ms)
      end

    if delay, do: %{s | timer: Process.send_after(self(), :discover, delay)}, else: s
  end

  defp jittered(ms, jitter) do
    spread = ms * jitter
    max(1, round(ms - spread + :rand.uniform() * 2 * spread))
  end

  defp error_backoff(streak, cap) do
    base = min(cap, 1_000 * Integer.pow(2, min(max(streak - 1, 0), 20)))
    jittered(base, 0.2)
  end
end
