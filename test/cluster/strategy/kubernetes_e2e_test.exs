defmodule Cluster.Strategy.KubernetesE2ETest do
  # Real BEAM nodes in three network namespaces (198.18.30.11-13; root needed), named `k8se2e@<ip>`
  # as in `mode: :ip` (one basename: one epmd per host), discovering each other through the fake API server's Endpoints watch: a pod becomes
  # ready and is connected, faults keep everyone connected, a terminating pod is pruned. With a
  # list-only Role the strategies poll (the same prune and join), then watch again once it is fixed.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Test.{EventLog, FakeKube, Netns, Peer}

  @moduletag :root
  @subnet 30

  @tag timeout: 60_000
  test "pods appear, become ready and terminate; nodes connect and are pruned" do
    net = Netns.setup(@subnet, 3)
    on_exit(fn -> Netns.teardown(net) end)
    for h <- net.hosts, do: Netns.exec!(h.ns, "epmd", ["-daemon"])
    # The API server listens on the bridge's gateway address, reachable from every namespace.
    kube = FakeKube.start!(ip: {198, 18, @subnet, 1})
    on_exit(fn -> FakeKube.stop(kube) end)
    [ip1, ip2, ip3] = Enum.map(net.hosts, & &1.ip)

    put = fn ready, not_ready ->
      FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ready, not_ready: not_ready))
    end

    put.([ip1, ip2], [ip3])

    peers =
      for h <- net.hosts,
          do: Peer.start("k8se2e", h.ip, netns: h.ns, args: [~c"-kernel", ~c"connect_all", ~c"false"])

    on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
    [{p1, n1}, {p2, n2}, {p3, _n3}] = peers

    topology = [
      k8s: [
        strategy: Cluster.Strategy.Kubernetes,
        config: [
          kubernetes_node_basename: "k8se2e",
          kubernetes_selector: "app=myapp",
          kubernetes_master: kube.master,
          kubernetes_service_account_path: kube.sa_path,
          polling_interval: 300,
          kubernetes_watch_retry_interval: 2_000
        ]
      ]
    ]

    # The third node is a pod that is not ready yet: it runs, but nobody may connect to it.
    for p <- [p1, p2], do: {:ok, _} = Peer.start_cluster(p, topology)
    eventually(fn -> Peer.nodes(p1) == [n2] and Peer.nodes(p2) == [n1] end, 10_000)
    # Both strategies have discovered the endpoints, without it: nobody dials it.
    status = fn p -> p |> Peer.call(Cluster, :status, [:k8s]) |> elem(1) end
    eventually(fn -> Enum.all?([p1, p2], &(status.(&1).last_discovered == Enum.sort([n1, n2]))) end, 5_000)
    assert Peer.nodes(p3) == []

    # Ready: connected by both within the watch's reaction time.
    t0 = System.monotonic_time(:millisecond)
    put.([ip1, ip2, ip3], [])
    eventually(fn -> Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2]) end, 5_000)
    reaction = System.monotonic_time(:millisecond) - t0
    assert reaction < 2_000, "took #{reaction} ms"

    # The API server breaks: failing, streams cut. Every fault is served and both strategies watch
    # again; nobody was disconnected meanwhile (p3 saw no nodedown).
    :ok = Peer.call(p3, EventLog, :start, [])
    FakeKube.fault(kube, :watch, {:status, 503})
    FakeKube.fault(kube, :watch, {:status, 503})
    FakeKube.fault(kube, :watch, {:status, 500})
    FakeKube.fault(kube, :watch, {:status, 500})
    FakeKube.break_watches(kube)
    eventually(fn -> FakeKube.faults_left(kube) == 0 and FakeKube.watchers(kube) == 2 end, 10_000)
    assert Peer.call(p3, EventLog, :events, []) == []
    assert Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2])
    assert n2 in Peer.nodes(p1)

    # Terminating: the pod leaves the ready addresses; both running strategies prune it.
    put.([ip1, ip2], [ip3])
    eventually(fn -> Peer.nodes(p3) == [] end, 5_000)
    assert Peer.nodes(p1) == [n2]

    # The Role loses `watch` (libcluster needs only `list`): the strategies fall back to polling
    # every 300 ms; the pod becomes ready again and is connected, then leaves and is pruned.
    FakeKube.grant(kube, [:list])
    FakeKube.break_watches(kube)
    eventually(fn -> FakeKube.watchers(kube) == 0 end, 5_000)
    put.([ip1, ip2, ip3], [])
    eventually(fn -> Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2]) end, 5_000)
    put.([ip1, ip2], [ip3])
    eventually(fn -> Peer.nodes(p3) == [] end, 5_000)

    # Fixed: both return to watching within a retry interval.
    FakeKube.grant(kube, [:list, :watch])
    eventually(fn -> FakeKube.watchers(kube) == 2 end, 10_000)
    assert Peer.nodes(p1) == [n2]
  end
end
