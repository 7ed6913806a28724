defmodule LibclusterRs.Membership.SetupStageTest do
  # Pacing next to real dead peers (namespaces, as test/cluster/dead_peers_test.exs): a setup to a
  # peer whose host never answers is seen `:waiting` (Probe.setup_stage/1), and a paced dial to one
  # frees its slot, so the live peer listed after the dead ones joins while their dials are still
  # in flight, without waiting for any of them to fail.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually
  alias LibclusterRs.Membership.Probe
  alias LibclusterRs.Test.{DeadPeers, Peer}

  @moduletag :root
  @moduletag timeout: 120_000

  setup_all do
    dp = DeadPeers.setup(52, 2)
    live = DeadPeers.start_live(dp)

    on_exit(fn ->
      Peer.stop(live)
      DeadPeers.teardown(dp)
    end)

    %{dp: dp}
  end

  test "a setup to an unreachable or a silent peer waits; once connected, nothing is pending", %{dp: dp} do
    obs = DeadPeers.start_observer(dp, "stage")
    on_exit(fn -> Peer.stop(obs) end)
    dead = DeadPeers.dead(dp, 2)

    for node <- dead, do: Peer.call(obs, :erlang, :spawn, [:net_kernel, :connect_node, [node]])

    for node <- dead do
      assert eventually(fn -> Peer.call(obs, Probe, :setup_stage, [node]) == :waiting end, 5_000),
             "#{node}: #{inspect(Peer.call(obs, Probe, :setup_stage, [node]))}"
    end

    assert Peer.call(obs, :net_kernel, :connect_node, [dp.live_node])
    assert Peer.call(obs, Probe, :setup_stage, [dp.live_node]) == :none
  end

  test "with one pacing slot held up to a minute, the live peer after two dead ones joins while they are still dialled",
       %{dp: dp} do
    obs = DeadPeers.start_observer(dp, "paced")
    on_exit(fn -> Peer.stop(obs) end)
    # "app@..." (the dead peers) sort before "live@...", and both before "paced@...": in ring order
    # from the observer the dead peers are dialled first
    dead = DeadPeers.dead(dp, 2)

    topologies = [
      paced: [
        strategy: Cluster.Strategy.Epmd,
        config: [hosts: dead ++ [dp.live_node]],
        membership: [pace: 1, pace_hold: 60_000]
      ]
    ]

    {:ok, _} = Peer.start_cluster(obs, topologies)
    assert eventually(fn -> dp.live_node in Peer.nodes(obs) end, 30_000)

    # Had the live peer waited for a dead peer's slot, that dial would have ended (failed) first.
    {:ok, status} = Peer.call(obs, Cluster, :status, [:paced])

    for node <- dead do
      assert %{failures: 0, in_flight: true} = status.pending[node], inspect(status.pending)
    end
  end
end
