defmodule Cluster.PeerSmokeTest do
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually
  alias LibclusterRs.Test.Peer

  @tag timeout: 60_000
  test "three peers form a cluster through Epmd" do
    names = for i <- 1..3, do: :"smoke#{i}@127.0.0.1"
    peers = for i <- 1..3, do: Peer.start("smoke#{i}", "127.0.0.1")
    on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)

    for {p, _} <- peers do
      {:ok, _} = Peer.start_cluster(p, static: [strategy: Cluster.Strategy.Epmd, config: [hosts: names]])
    end

    for {p, node} <- peers do
      eventually(fn -> Enum.sort(Peer.nodes(p)) == Enum.sort(names -- [node]) end)
    end
  end
end
