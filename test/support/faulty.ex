defmodule LibclusterRs.Test.Faulty do
  @moduledoc false
  # Topology MFAs and resolver funs that misbehave on demand, over a fake distribution kept in a
  # public ETS table (`{node}` rows are "connected"). `fault` is nil (behave) or `{kind, p}`: the
  # call raises, exits, throws, returns garbage or hangs (`kind` :raise, :exit, :throw, :garbage,
  # :hang) always when `p` is 1.0, else on every `round(1 / p)`-th call, the first included (so
  # "sometimes" is deterministic). Every call that enters a fault is reported to the table's owner
  # as `{:fault_entered, what, kind}`.
  #
  #   connect:    {LibclusterRs.Test.Faulty, :connect, [table, fault]}
  #   disconnect: {LibclusterRs.Test.Faulty, :disconnect, [table, fault]}
  #   list_nodes: {LibclusterRs.Test.Faulty, :list_nodes, [table, fault]}
  #   resolver:   LibclusterRs.Test.Faulty.resolver(table, fault, answers)

  def new do
    table = :ets.new(:faulty, [:public, :set])
    :ets.insert(table, {:__owner__, self()})
    :ets.insert(table, {:__polls__, 0})
    table
  end

  def connect(table, fault, node) do
    with :ok <- misbehave(table, fault, :connect) do
      :ets.insert(table, {node})
      true
    end
  end

  def disconnect(table, fault, node) do
    with :ok <- misbehave(table, fault, :disconnect) do
      :ets.delete(table, node)
      true
    end
  end

  def list_nodes(table, fault) do
    with :ok <- misbehave(table, fault, :list_nodes) do
      for {node} <- :ets.tab2list(table), is_atom(node), do: node
    end
  end

  @doc """
  A DNSPoll resolver fun answering the IP lists of `answers` in turn (one per poll, cycling), so
  that nodes come and go and are pruned.
  """
  def resolver(table, fault, answers) do
    fn _query ->
      with :ok <- misbehave(table, fault, :resolver) do
        n = :ets.update_counter(table, :__polls__, 1)
        Enum.at(answers, rem(n - 1, length(answers)))
      end
    end
  end

  defp misbehave(_table, nil, _what), do: :ok

  defp misbehave(table, {kind, p}, what) do
    n = :ets.update_counter(table, {:calls, what}, 1, {{:calls, what}, 0})

    if p >= 1.0 or rem(n - 1, round(1 / p)) == 0 do
      owner = :ets.lookup_element(table, :__owner__, 2)
      send(owner, {:fault_entered, what, kind})

      case kind do
        :raise -> raise "#{what} fault"
        :exit -> exit({:fault, what})
        :throw -> throw({:fault, what})
        :garbage -> garbage(what)
        :hang -> Process.sleep(:infinity)
      end
    else
      :ok
    end
  end

  # Never :ok, so that `with` returns it as the call's result.
  defp garbage(:list_nodes), do: :not_a_list
  defp garbage(:resolver), do: :not_a_list
  defp garbage(_), do: {:weird, :value}
end
