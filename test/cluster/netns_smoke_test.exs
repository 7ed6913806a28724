defmodule Cluster.NetnsSmokeTest do
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually
  alias LibclusterRs.Test.{Netns, Peer}

  @moduletag :root
  @tag timeout: 60_000
  test "peers in two namespaces connect over the bridge" do
    net = Netns.setup(200, 2)
    on_exit(fn -> Netns.teardown(net) end)
    [h1, h2] = net.hosts
    # epmd must run inside each namespace
    for h <- net.hosts, do: Netns.exec!(h.ns, "epmd", ["-daemon"])
    {p1, n1} = Peer.start("app", h1.ip, netns: h1.ns)
    {p2, n2} = Peer.start("app", h2.ip, netns: h2.ns)
    on_exit(fn -> Enum.each([p1, p2], &Peer.stop/1) end)
    {:ok, _} = Peer.start_cluster(p1, static: [strategy: Cluster.Strategy.Epmd, config: [hosts: [n1, n2]]])
    eventually(fn -> Peer.nodes(p2) == [n1] end)
  end
end
