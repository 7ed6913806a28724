defmodule LibclusterRs.InvalidTopology do
  @moduledoc false
  # Stands in for a topology whose config cannot work but which libcluster 3.5 boots anyway (for
  # example DNSPoll without a usable `:query`: libcluster logs and connects nothing, it does not
  # crash). Boot goes on as in libcluster, and the topology is never silently unclustered:
  #
  #   * it says why at error level, once, when it starts;
  #   * `Cluster.status/1` shows it with `state: :invalid_config` and the reason in `last_error`
  #     (`kind: :config`);
  #   * it connects and disconnects nothing, and `Cluster.leave/1` is a no-op.
  #
  # A strategy opts in from its `child_spec/1`, where the config is already resolved:
  #
  #     def child_spec([%State{} = state] = args) do
  #       InvalidTopology.child_spec(state, __MODULE__, "DNSPoll", config_problem(state.config)) ||
  #         super(args)
  #     end
  #
  # The status reply has the shape of `LibclusterRs.Discovery.status/2`'s, so `Cluster.status/1` reads it
  # like any built-in topology's.

  use GenServer

  alias Cluster.Strategy.State

  @doc "A child spec running this stand-in for `strategy`'s topology in `state`."
  @spec child_spec(State.t(), module(), String.t()) :: Supervisor.child_spec()
  def child_spec(%State{} = state, strategy, message) do
    %{id: strategy, type: :worker, start: {__MODULE__, :start_link, [state, strategy, message]}}
  end

  @doc false
  # The stand-in's child spec when there is a `problem` (its message is prefixed with `label`), or
  # nil when there is none, for `InvalidTopology.child_spec(...) || super(args)`.
  @spec child_spec(State.t(), module(), String.t(), String.t() | nil) :: map() | nil
  def child_spec(_state, _strategy, _label, nil), do: nil

  def child_spec(%State{} = state, strategy, label, problem),
    do: child_spec(state, strategy, label <> ": " <> problem)

  @spec start_link(State.t(), module(), String.t()) :: GenServer.on_start()
  def start_link(%State{} = state, strategy, message) do
    GenServer.start_link(__MODULE__, {state, strategy, message})
  end

  @impl true
  def init({%State{topology: topology}, strategy, message}) do
    Cluster.Logger.error(
      topology,
      "#{inspect(strategy)}: #{message}; this topology connects no node until its config is fixed " <>
        "(see Cluster.status(#{inspect(topology)}))"
    )

    supervisor =
      case Process.get(:"$ancestors") do
        [parent | _] when is_pid(parent) -> parent
        _ -> nil
      end

    # LibclusterRs.Registry is started by the :libcluster_rs application; without it, status is unavailable.
    try do
      Registry.register(LibclusterRs.Registry, {:discovery, topology}, %{supervisor: supervisor})
    rescue
      ArgumentError -> :ok
    end

    {:ok, %{topology: topology, strategy: strategy, message: message, at: System.system_time(:millisecond)}}
  end

  @impl true
  def handle_call(:status, _from, s) do
    status = %{
      strategy: s.strategy,
      mode: :invalid_config,
      interval: :infinity,
      rounds: 0,
      last_discovered: MapSet.new(),
      last_ok_at: nil,
      last_error: {:config, s.message, s.at},
      error_streak: 1,
      next_round_in: nil,
      extra: %{},
      name_problems: [],
      membership: %{
        topology: s.topology,
        connected: MapSet.new(),
        pending: %{},
        leaving: false,
        mfa_errors: %{}
      }
    }

    {:reply, status, s}
  end

  # Nothing to stop: this topology never dials.
  def handle_call(:leave, _from, s), do: {:reply, :ok, s}
end
