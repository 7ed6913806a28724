defmodule Cluster.DeadPeersTest do
  # A topology whose host list holds dead and silent peers next to a live one: the live one joins
  # before any dead peer's connect could have failed (no dial waits on another).
  use ExUnit.Case, async: false
  alias LibclusterRs.Test.{DeadPeers, Peer}

  @moduletag :root
  @moduletag timeout: 120_000

  setup_all do
    dp = DeadPeers.setup(50, 4)
    live = DeadPeers.start_live(dp)

    on_exit(fn ->
      Peer.stop(live)
      DeadPeers.teardown(dp)
    end)

    %{dp: dp}
  end

  test "the live peer joins before any dead peer listed first could have failed", %{dp: dp} do
    dead = DeadPeers.dead(dp, 4)
    {alone_ms, obs0} = DeadPeers.join(dp, [], "alone")
    Peer.stop(obs0)

    {join_ms, obs} = DeadPeers.join(dp, dead, "observer")
    on_exit(fn -> Peer.stop(obs) end)

    # The dead peers are really dead: a plain connect to one of each kind fails, and only after
    # seconds, which is what a sequential connector would have waited for each of them.
    [unreachable, silent | _] = dead

    checks =
      for node <- [unreachable, silent] do
        Task.async(fn -> {node, Peer.call(obs, DeadPeers, :connect_here, [node], 30_000)} end)
      end

    failed_after =
      for {node, {ms, result}} <- Task.await_many(checks, 35_000) do
        assert result == false, "#{inspect(node)} should not be connectable"
        assert ms >= 2_500, "#{inspect(node)} failed after only #{ms} ms: it is not a slow dead peer"
        ms
      end

    # The evidence that nothing waited on them: the live peer was in before the first dead peer
    # could have failed, on the same machine under the same load (bench/dead_peers.exs has the
    # figures).
    assert join_ms < Enum.min(failed_after),
           "live peer joined after #{join_ms} ms with dead peers (#{alone_ms} ms alone); " <>
             "the dead peers failed after #{inspect(failed_after)} ms"

    # Meanwhile the live peer stayed connected, and no dead peer is.
    assert dp.live_node in Peer.nodes(obs)
    refute Enum.any?(dead, &(&1 in Peer.nodes(obs)))
  end
end
