# Shared by the benchmarks (Code.require_file("bench/support/stats.exs"), run from the project root).
defmodule Bench.Stats do
  @doc "The median of a non-empty list of numbers (the mean of the two middle ones for an even count)."
  def median(xs) do
    s = Enum.sort(xs)
    n = length(s)

    if rem(n, 2) == 1,
      do: Enum.at(s, div(n, 2)),
      else: (Enum.at(s, div(n, 2) - 1) + Enum.at(s, div(n, 2))) / 2
  end

  @doc "The `:long_schedule` system-monitor messages waiting in the mailbox (taken from it)."
  def long_schedules do
    Stream.repeatedly(fn ->
      receive do
        {:monitor, _, :long_schedule, info} -> info
      after
        0 -> nil
      end
    end)
    |> Enum.take_while(& &1)
  end
end
