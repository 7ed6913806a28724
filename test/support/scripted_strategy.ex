defmodule LibclusterRs.Test.ScriptedStrategy do
  @moduledoc false
  # A LibclusterRs.Discovery strategy driven by the test: each round sends `{:round, discovery_pid, tag}`
  # to `config[:test]` and stays pending; the test then sends `{:libcluster_rs, tag, outcome}` to the
  # discovery pid, and every such event is taken as that outcome. `config[:result]` instead answers
  # every round at once with that outcome. `config[:opts]` are the LibclusterRs.Discovery options.
  use LibclusterRs.Discovery

  @impl LibclusterRs.Discovery
  def init(%{config: config}) do
    if config[:ignore], do: :ignore, else: {:ok, Map.new(config), Keyword.get(config, :opts, [])}
  end

  @impl LibclusterRs.Discovery
  def discover(impl, tag) do
    if pid = impl[:test], do: send(pid, {:round, self(), tag})

    case impl[:result] do
      nil -> {:pending, impl}
      {:raise, message} -> raise message
      outcome -> {outcome, impl}
    end
  end

  @impl LibclusterRs.Discovery
  def handle_event({:raise, message}, _impl), do: raise(message)
  def handle_event(outcome, impl), do: {[outcome], impl}

  @impl LibclusterRs.Discovery
  def status_extra(impl), do: %{scripted: true, test: impl[:test]}
end

defmodule LibclusterRs.Test.Dialer do
  @moduledoc false
  # Injected connect / list_nodes MFAs: a fake distribution. Every dial is reported to the test as
  # `{:dial, node}`; nodes in `reachable` connect, the others fail (`false`).
  use Agent

  def start(test, reachable) do
    {:ok, pid} =
      Agent.start(fn -> %{test: test, reachable: MapSet.new(reachable), connected: MapSet.new()} end)

    pid
  end

  def connect(agent, node) do
    Agent.get_and_update(agent, fn s ->
      send(s.test, {:dial, node})

      if MapSet.member?(s.reachable, node),
        do: {true, %{s | connected: MapSet.put(s.connected, node)}},
        else: {false, s}
    end)
  end

  def disconnect(agent, node) do
    Agent.get_and_update(agent, fn s ->
      send(s.test, {:hangup, node})
      {MapSet.member?(s.connected, node), %{s | connected: MapSet.delete(s.connected, node)}}
    end)
  end

  def list(agent), do: Agent.get(agent, &MapSet.to_list(&1.connected))

  @doc "A topology spec using this dialer."
  def topology(agent, strategy, config, extra \\ []) do
    [
      strategy: strategy,
      config: config,
      connect: {__MODULE__, :connect, [agent]},
      disconnect: {__MODULE__, :disconnect, [agent]},
      list_nodes: {__MODULE__, :list, [agent]}
    ] ++ extra
  end
end

defmodule LibclusterRs.Test.CustomStrategy do
  @moduledoc false
  # A libcluster-style custom strategy (not built on LibclusterRs.Discovery).
  use Cluster.Strategy
  use GenServer

  @impl Cluster.Strategy
  def start_link([state]), do: GenServer.start_link(__MODULE__, state)

  @impl GenServer
  def init(state), do: {:ok, state}
end
