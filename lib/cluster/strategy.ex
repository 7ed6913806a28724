defmodule Cluster.Strategy do
  @moduledoc """
  The behaviour of a clustering strategy, and the connect/disconnect helpers custom strategies use.

  A strategy is a process started by `Cluster.Supervisor` with `start_link([%Cluster.Strategy.State{}])`.
  `use Cluster.Strategy` declares the behaviour and a default (overridable) `child_spec/1`, exactly as
  in libcluster 3.5, so existing custom strategies work unchanged:

      defmodule MyApp.Strategy do
        use Cluster.Strategy
        use GenServer
        alias Cluster.Strategy.State

        def start_link([%State{} = state]), do: GenServer.start_link(__MODULE__, state)

        def init(state) do
          Cluster.Strategy.connect_nodes(state.topology, state.connect, state.list_nodes, [:"a@host"])
          {:ok, state}
        end
      end

  `connect_nodes/4` and `disconnect_nodes/4` are synchronous, as in libcluster: they call the MFAs in
  the caller, an exception raised by an MFA propagates to it, and a successful connect is logged
  ("connected to") on every call. The built-in strategies do not use them: they hand their
  discoveries to `LibclusterRs.Membership`, which connects concurrently in supervised tasks with a
  deadline per attempt, contains MFAs that raise or hang, counts a connect whose node `list_nodes`
  does not show afterwards as a failure, and retries failing peers with backoff (at most twice a
  second per node by default).

  ## Telemetry

  libcluster's `[:libcluster, :connect_node | :disconnect_node, :ok | :error]` events are emitted
  by these helpers as in libcluster; see `LibclusterRs.Telemetry` for every event and its metadata.
  """

  alias Cluster.Strategy.State

  @type topology :: atom()
  @type bad_nodes :: [{node(), reason :: term()}]
  @type mfa_tuple :: {module(), atom(), [term()]}
  @type strategy :: module()

  @callback start_link([State.t()]) :: GenServer.on_start() | :ignore

  defmacro __using__(_) do
    quote do
      @behaviour Cluster.Strategy

      @doc false
      def child_spec(args) do
        %{id: __MODULE__, type: :worker, start: {__MODULE__, :start_link, [args]}}
      end

      defoverridable child_spec: 1
    end
  end

  @doc """
  Connects every node in `nodes` that is not this node and not already in `list_nodes`.

  Returns `:ok`, or `{:error, [{node, reason}]}` for the nodes that failed: `false` (unreachable)
  and `:ignored` (this node is not distributed) are errors; `true`, `:ok` and `{:ok, _}` (Partisan)
  are successes. Raises `ArgumentError` when an MFA is not exported with the needed arity.
  """
  @spec connect_nodes(topology(), mfa_tuple(), mfa_tuple(), [node()]) :: :ok | {:error, bad_nodes()}
  def connect_nodes(topology, {_, _, _} = connect, {_, _, _} = list_nodes, nodes) when is_list(nodes) do
    ensure_exported!(connect, 1)
    connected = list_nodes!(list_nodes)

    bad =
      nodes
      |> Enum.uniq()
      |> Enum.reject(&(&1 == Node.self() or MapSet.member?(connected, &1)))
      |> Enum.reduce([], fn node, acc ->
        case connect_node(topology, connect, node) do
          :ok -> acc
          {:error, reason} -> [{node, reason} | acc]
        end
      end)

    if bad == [], do: :ok, else: {:error, Enum.reverse(bad)}
  end

  @doc """
  Disconnects every node in `nodes` that is in `list_nodes` (and is not this node).

  `true` is success; `false` (already disconnected) and `:ignored` are logged but are not errors;
  any other value is returned as `{node, value}` in `{:error, list}`.
  """
  @spec disconnect_nodes(topology(), mfa_tuple(), mfa_tuple(), [node()]) ::
          :ok | {:error, bad_nodes()}
  def disconnect_nodes(topology, {_, _, _} = disconnect, {_, _, _} = list_nodes, nodes)
      when is_list(nodes) do
    ensure_exported!(disconnect, 1)
    connected = list_nodes!(list_nodes)

    bad =
      nodes
      |> Enum.uniq()
      |> Enum.filter(&(&1 != Node.self() and MapSet.member?(connected, &1)))
      |> Enum.reduce([], fn node, acc ->
        case disconnect_node(topology, disconnect, node) do
          :ok -> acc
          {:error, reason} -> [{node, reason} | acc]
        end
      end)

    if bad == [], do: :ok, else: {:error, Enum.reverse(bad)}
  end

  @doc false
  # One connect attempt with telemetry and libcluster's log lines. Shared with LibclusterRs.Membership,
  # which runs it in a task with a deadline. `quiet_failure: true` logs a failure at debug level
  # (Membership logs the first failure of a streak as a warning itself); `quiet_success: true` logs
  # no "connected to" line (Membership logs it when the node is really up, once per connection).
  @spec connect_node(topology(), mfa_tuple(), node(), keyword()) :: :ok | {:error, term()}
  def connect_node(topology, {mod, fun, args}, node, opts \\ []) do
    start = System.monotonic_time()
    result = apply(mod, fun, args ++ [node])
    duration = System.monotonic_time() - start
    meta = %{node: node, topology: topology}

    case classify_connect(result) do
      :ok ->
        LibclusterRs.Telemetry.execute([:libcluster, :connect_node, :ok], %{duration: duration}, meta)

        unless Keyword.get(opts, :quiet_success, false),
          do: Cluster.Logger.info(topology, "connected to #{inspect(node)}")

        :ok

      {:error, reason, telemetry_reason, text} ->
        LibclusterRs.Telemetry.execute(
          [:libcluster, :connect_node, :error],
          %{duration: duration},
          Map.put(meta, :reason, telemetry_reason)
        )

        message = "unable to connect to #{inspect(node)}#{text}"

        if Keyword.get(opts, :quiet_failure, false),
          do: Cluster.Logger.debug(topology, message),
          else: Cluster.Logger.warn(topology, message)

        {:error, reason}
    end
  end

  defp classify_connect(true), do: :ok
  defp classify_connect(:ok), do: :ok
  defp classify_connect({:ok, _}), do: :ok
  defp classify_connect(false), do: {:error, false, :unreachable, ""}
  defp classify_connect(:ignored), do: {:error, :ignored, :not_part_of_network, ": not part of network"}
  defp classify_connect(other), do: {:error, other, other, ": #{inspect(other)}"}

  @doc false
  @spec disconnect_node(topology(), mfa_tuple(), node()) :: :ok | {:error, term()}
  def disconnect_node(topology, {mod, fun, args}, node) do
    start = System.monotonic_time()
    result = apply(mod, fun, args ++ [node])
    duration = System.monotonic_time() - start
    meta = %{node: node, topology: topology}
    error = [:libcluster, :disconnect_node, :error]

    case result do
      ok when ok in [true, :ok] ->
        LibclusterRs.Telemetry.execute([:libcluster, :disconnect_node, :ok], %{duration: duration}, meta)
        Cluster.Logger.info(topology, "disconnected from #{inspect(node)}")
        :ok

      false ->
        LibclusterRs.Telemetry.execute(
          error,
          %{duration: duration},
          Map.put(meta, :reason, :already_disconnected)
        )

        Cluster.Logger.warn(
          topology,
          "disconnect from #{inspect(node)} failed because we're already disconnected"
        )

        :ok

      :ignored ->
        LibclusterRs.Telemetry.execute(
          error,
          %{duration: duration},
          Map.put(meta, :reason, :not_part_of_network)
        )

        Cluster.Logger.warn(
          topology,
          "disconnect from #{inspect(node)} failed because it is not part of the network"
        )

        :ok

      reason ->
        # libcluster 3.5 puts inspect(value) in the event's reason (a string).
        LibclusterRs.Telemetry.execute(error, %{duration: duration}, Map.put(meta, :reason, inspect(reason)))
        Cluster.Logger.warn(topology, "disconnect from #{inspect(node)} failed with: #{inspect(reason)}")
        {:error, reason}
    end
  end

  @doc false
  # The nodes `list_nodes` reports, as a MapSet.
  @spec list_nodes!(mfa_tuple()) :: MapSet.t(node())
  def list_nodes!({mod, fun, args} = mfa) do
    ensure_exported!(mfa, 0)
    MapSet.new(apply(mod, fun, args))
  end

  @doc false
  @spec ensure_exported!(mfa_tuple(), non_neg_integer()) :: :ok
  def ensure_exported!({mod, fun, args}, extra) do
    arity = length(args) + extra

    unless Code.ensure_loaded?(mod) and function_exported?(mod, fun, arity) do
      raise ArgumentError, "#{inspect(mod)}.#{fun}/#{arity} is undefined!"
    end

    :ok
  end
end
