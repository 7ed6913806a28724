defmodule LibclusterRs.Test.FakeNodes do
  @moduledoc false
  # libcluster's testing habit: connect/disconnect/list_nodes MFAs that record "connections" in a
  # public ETS table and tell the test process, so strategies run without real nodes.

  def new do
    table = :ets.new(:fake_nodes, [:public, :set])
    :ets.insert(table, {:__test__, self()})
    table
  end

  @doc "A topology entry for `Cluster.Supervisor` using the fake MFAs."
  def topology(table, strategy, config) do
    [
      strategy: strategy,
      config: config,
      connect: {__MODULE__, :connect, [table]},
      disconnect: {__MODULE__, :disconnect, [table]},
      list_nodes: {__MODULE__, :list_nodes, [table]}
    ]
  end

  def connect(table, node) do
    :ets.insert(table, {node})
    send(test(table), {:connect, node})
    true
  end

  def disconnect(table, node) do
    :ets.delete(table, node)
    send(test(table), {:disconnect, node})
    true
  end

  def list_nodes(table) do
    for {node} <- :ets.tab2list(table), do: node
  end

  def connected(table), do: table |> list_nodes() |> Enum.sort()

  defp test(table), do: :ets.lookup_element(table, :__test__, 2)
end
