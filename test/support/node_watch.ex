defmodule LibclusterRs.Test.NodeWatch do
  @moduledoc false
  # Runs on a peer node: counts the nodedowns it sees by reason (`:disconnect` is an
  # `erlang:disconnect_node/1`, which is how `global` cuts a node to prevent overlapping
  # partitions when no topology prunes), started before the topology so that none is missed.

  @doc "Starts the watcher on this node, unlinked; returns its pid."
  def start do
    parent = self()

    pid =
      spawn(fn ->
        :ok = :net_kernel.monitor_nodes(true, [{:node_type, :visible}, :nodedown_reason])
        send(parent, {:watching, self()})
        loop(%{})
      end)

    receive do
      {:watching, ^pid} -> pid
    end
  end

  @doc "The nodedowns seen so far: `%{reason => count}`."
  def downs(pid) do
    ref = make_ref()
    send(pid, {:downs, self(), ref})

    receive do
      {^ref, downs} -> downs
    after
      5_000 -> :no_answer
    end
  end

  defp loop(downs) do
    receive do
      {:nodedown, _node, info} ->
        loop(Map.update(downs, Keyword.get(info, :nodedown_reason), 1, &(&1 + 1)))

      {:downs, from, ref} ->
        send(from, {ref, downs})
        loop(downs)

      _ ->
        loop(downs)
    end
  end
end
