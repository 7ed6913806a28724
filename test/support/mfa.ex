defmodule LibclusterRs.Test.Mfa do
  @moduledoc false
  # Injectable connect / disconnect / list_nodes MFAs (libcluster's testing habit): each call is
  # reported to the test process and answers what the test wants.
  #
  #   connect:    {LibclusterRs.Test.Mfa, :connect, [test_pid, reply]}     -> sends {:connect, node}
  #   disconnect: {LibclusterRs.Test.Mfa, :disconnect, [test_pid, reply]}  -> sends {:disconnect, node}
  #   list_nodes: {LibclusterRs.Test.Mfa, :list_nodes, [nodes_or_agent]}
  #
  # `reply` is the value to return, or a 1-arity fun of the node returning it. `nodes_or_agent` is a
  # fixed list or an Agent holding a MapSet (see `connected/1`), which `connect_into/2` updates.

  def connect(test, reply, node) do
    send(test, {:connect, node})
    answer(reply, node)
  end

  def disconnect(test, reply, node) do
    send(test, {:disconnect, node})
    answer(reply, node)
  end

  def list_nodes(nodes) when is_list(nodes), do: nodes
  def list_nodes(agent) when is_pid(agent), do: agent |> Agent.get(& &1) |> MapSet.to_list()

  @doc "An Agent holding the 'connected' set, for `list_nodes`."
  def connected(nodes \\ []) do
    {:ok, agent} = Agent.start_link(fn -> MapSet.new(nodes) end)
    agent
  end

  @doc "A reply fun that marks the node connected in `agent` and returns true."
  def connect_into(agent) do
    fn node ->
      Agent.update(agent, &MapSet.put(&1, node))
      true
    end
  end

  @doc "A reply fun that removes the node from `agent` and returns true."
  def disconnect_from(agent) do
    fn node ->
      Agent.update(agent, &MapSet.delete(&1, node))
      true
    end
  end

  defp answer(fun, node) when is_function(fun, 1), do: fun.(node)
  defp answer(value, _node), do: value
end
