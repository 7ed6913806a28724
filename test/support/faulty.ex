defmodule LibclusterRs.Test.Faulty do
  @moduledoc false
  # Faults on demand, for LibclusterRs.Test.FakeDist's calls and for resolver funs. `fault` is nil
  # (behave) or `{kind, p}`: the call raises, exits, throws, returns garbage or hangs (`kind` :raise,
  # :exit, :throw, :garbage, :hang) always when `p` is 1.0, else on every `round(1 / p)`-th call, the
  # first included (so "sometimes" is deterministic). Every call that enters a fault is reported to
  # the table's owner as `{:fault_entered, what, kind}`. The table is a FakeDist (its counters live
  # there too).
  #
  #   connect etc.: FakeDist.new(connect: {:hang, 1.0}, list_nodes: {:raise, 0.25}, ...)
  #   resolver:     LibclusterRs.Test.Faulty.resolver(dist, fault, answers)

  @doc """
  A DNSPoll resolver fun answering the IP lists of `answers` in turn (one per poll, cycling), so
  that nodes come and go and are pruned.
  """
  def resolver(table, fault, answers) do
    fn _query ->
      with :ok <- misbehave(table, fault, :resolver) do
        n = :ets.update_counter(table, :__polls__, 1, {:__polls__, 0})
        Enum.at(answers, rem(n - 1, length(answers)))
      end
    end
  end

  @doc "`:ok` if the call behaves, else the fault (raises, exits, throws, hangs or returns garbage)."
  def misbehave(_table, nil, _what), do: :ok

  def misbehave(table, {kind, p}, what) do
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
