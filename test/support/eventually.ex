defmodule LibclusterRs.Test.Eventually do
  @moduledoc false
  # The one "eventually" helper (STYLE.md 16): where a test must wait for a process to get
  # somewhere, it polls a condition with this instead of sleeping before an assertion.
  #
  #   import LibclusterRs.Test.Eventually
  #   eventually(fn -> FakeDist.up(dist) == [node] end)
  #   status = eventually(fn -> match?({:ok, %{rounds: r}} when r > 2, Cluster.status(t)) end, 5_000)
  #   eventually(fn -> ... end, 5_000, fn -> "never got there: #{inspect(...)}" end)
  #   status = status_until(topology, &(&1.error_streak >= 2))

  @interval 20

  @doc """
  Calls `fun` every #{@interval} ms until it returns a truthy value, and returns that value. Flunks
  once `timeout` ms have passed (`describe`, a 0-arity fun, names what was awaited).
  """
  def eventually(fun, timeout \\ 10_000, describe \\ nil) when is_function(fun, 0) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, deadline, describe)
  end

  @doc "Polls `Cluster.status(topology)` until `accept` takes it; returns that status."
  def status_until(topology, accept, timeout \\ 5_000) do
    eventually(
      fn ->
        {:ok, status} = Cluster.status(topology)
        accept.(status) && status
      end,
      timeout,
      fn -> "the status never got there; last: #{inspect(Cluster.status(topology), pretty: true)}" end
    )
  end

  defp poll(fun, deadline, describe) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      _ ->
        if System.monotonic_time(:millisecond) > deadline do
          message = if describe, do: describe.(), else: "condition not met in time"
          raise ExUnit.AssertionError, message: message
        else
          Process.sleep(@interval)
          poll(fun, deadline, describe)
        end
    end
  end
end
