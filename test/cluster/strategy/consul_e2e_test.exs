defmodule Cluster.Strategy.ConsulE2ETest do
  # Real BEAM nodes in three network namespaces (198.18.43.11-13; root needed), named
  # `consule2e@<ip>`, discovering each other through FakeConsul's Health API over HTTPS (test CA,
  # client certificates) with blocking queries: an instance that registers is connected while the
  # queries are held, Consul failing disconnects nobody, an instance that deregisters is pruned.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Test.{FakeConsul, HttpFake, Netns, Peer, TestCA}

  @moduletag :root
  @subnet 43

  @tag timeout: 60_000
  test "instances register and deregister; nodes connect and are pruned; faults prune nothing" do
    net = Netns.setup(@subnet, 3)
    on_exit(fn -> Netns.teardown(net) end)
    for h <- net.hosts, do: Netns.exec!(h.ns, "epmd", ["-daemon"])
    gateway = {198, 18, @subnet, 1}
    ca = TestCA.shared!(ips: [gateway])
    # The agent listens on the bridge's gateway address, reachable from every namespace.
    consul = FakeConsul.start!(tls: ca, client_ca: ca.ca, ip: gateway)
    on_exit(fn -> FakeConsul.stop(consul) end)
    [ip1, ip2, ip3] = Enum.map(net.hosts, & &1.ip)

    put = fn ips ->
      FakeConsul.put(consul, "myapp", for(ip <- ips, do: FakeConsul.instance("node-#{ip}", ip)))
    end

    put.([ip1, ip2])

    peers =
      for h <- net.hosts,
          do: Peer.start("consule2e", h.ip, netns: h.ns, args: [~c"-kernel", ~c"connect_all", ~c"false"])

    on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
    [{p1, n1}, {p2, n2}, {p3, _n3}] = peers

    # libcluster_consul's config, plus the TLS files; the node basename defaults to the node's own
    topology = [
      consul: [
        strategy: Cluster.Strategy.Consul,
        config: [
          base_url: consul.url,
          ca_file: ca.ca,
          cert_file: ca.client_cert,
          key_file: ca.client_key,
          service: [name: "myapp"],
          list_using: [{Cluster.Strategy.Consul.Health, passing: true}],
          polling_interval: 30_000
        ]
      ]
    ]

    # The third node has not registered yet: it runs, but nobody may connect to it.
    for p <- [p1, p2], do: {:ok, _} = Peer.start_cluster(p, topology)
    eventually(fn -> Peer.nodes(p1) == [n2] and Peer.nodes(p2) == [n1] end, 10_000)
    eventually(fn -> FakeConsul.blocked(consul) == 2 end, 5_000)
    assert Peer.nodes(p3) == []

    # Registered: connected by both while their queries were held (polling_interval is 30 s).
    t0 = System.monotonic_time(:millisecond)
    put.([ip1, ip2, ip3])
    eventually(fn -> length(Peer.nodes(p3)) == 2 end, 5_000)
    reaction = System.monotonic_time(:millisecond) - t0
    assert reaction < 2_000, "took #{reaction} ms"

    # Consul fails (the held queries answer, the next requests get 500/403): nobody is disconnected.
    for fault <- [{500, [], "boom"}, {403, [], "Permission denied"}, {500, [], "boom"}, {500, [], "boom"}],
        do: HttpFake.fault(FakeConsul.http(consul), fault)

    # Every fault is served, and both strategies hold a query again (each handled its faults
    # first); p3 saw no nodedown meanwhile.
    :ok = Peer.call(p3, LibclusterRs.Test.EventLog, :start, [])
    put.([ip1, ip2, ip3])

    eventually(
      fn -> HttpFake.faults_left(FakeConsul.http(consul)) == 0 and FakeConsul.blocked(consul) == 2 end,
      15_000
    )

    assert Peer.call(p3, LibclusterRs.Test.EventLog, :events, []) == []
    assert length(Peer.nodes(p3)) == 2
    assert n2 in Peer.nodes(p1)

    # Deregistered: both running strategies prune it.
    put.([ip1, ip2])
    eventually(fn -> Peer.nodes(p3) == [] end, 10_000)
    assert Peer.nodes(p1) == [n2]
  end
end
