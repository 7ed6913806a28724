defmodule Cluster.Strategy.EpmdTest do
  # Epmd's `timeout:` with injected MFAs: a node that is not listed is dialled again once per
  # `timeout` ms, never sooner, whether its connect fails or "succeeds" without the node showing up.
  use ExUnit.Case, async: true

  alias Cluster.Strategy.Epmd
  alias LibclusterRs.Test.Mfa

  @moduletag capture_log: true
  @node :"epmd_peer@127.0.0.1"

  defp start(config, reply) do
    topology = :"epmd_#{System.unique_integer([:positive])}"

    test = self()

    # The MFA stamps the time it runs: a loaded VM may deliver the message late.
    stamped = fn node ->
      send(test, {:dialled_at, node, System.monotonic_time(:millisecond)})
      reply
    end

    spec = [
      strategy: Epmd,
      config: [hosts: [@node]] ++ config,
      connect: {Mfa, :connect, [self(), stamped]},
      disconnect: {Mfa, :disconnect, [self(), true]},
      list_nodes: {Mfa, :list_nodes, [[]]}
    ]

    start_supervised!({Cluster.Supervisor, [[{topology, spec}]]})
  end

  defp dial_times(ms) do
    deadline = System.monotonic_time(:millisecond) + ms
    collect(deadline, [])
  end

  defp collect(deadline, acc) do
    receive do
      {:dialled_at, @node, at} -> collect(deadline, [at | acc])
    after
      max(deadline - System.monotonic_time(:millisecond), 0) -> Enum.reverse(acc)
    end
  end

  defp gaps(times), do: times |> Enum.chunk_every(2, 1, :discard) |> Enum.map(fn [a, b] -> b - a end)

  for {what, reply} <- [{"fails (false)", false}, {"returns true but is never listed", true}] do
    test "timeout: n - a node whose connect #{what} is dialled once per n ms, not sooner" do
      start([timeout: 400], unquote(reply))
      times = dial_times(2_100)
      # about one dial per 400 ms (libcluster's rhythm), never two within 400 ms
      assert length(times) in 2..6, "#{length(times)} dials: #{inspect(gaps(times))}"
      assert Enum.all?(gaps(times), &(&1 >= 390)), inspect(gaps(times))
    end
  end

  test "timeout: :infinity keeps redialling with backoff" do
    start([], false)
    times = dial_times(1_700)
    assert length(times) >= 2
    assert Enum.all?(gaps(times), &(&1 >= 450)), inspect(gaps(times))
  end

  test "the Epmd timeout is the membership's dial floor" do
    assert {:ok, _, opts} =
             Epmd.init(%Cluster.Strategy.State{topology: :t, config: [hosts: [@node], timeout: 5_000]})

    assert opts[:membership] == [min_dial_interval: 5_000]
    assert {:ok, _, opts} = Epmd.init(%Cluster.Strategy.State{topology: :t, config: [hosts: [@node]]})
    assert opts[:membership] == []
  end
end
