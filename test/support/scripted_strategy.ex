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
