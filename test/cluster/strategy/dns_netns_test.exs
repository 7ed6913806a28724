defmodule Cluster.Strategy.DNSNetnsTest do
  # End to end, root only: three hosts (network namespaces on a bridge), each running a node
  # `app@<its address>`, and dnsmasq in the root namespace on the bridge's gateway address
  # answering `app.cluster.test` with their A records. The cluster forms through DNSPoll; a host
  # removed from DNS is pruned; added back, it is reconnected.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Test.{Dnsmasq, Netns, Peer}

  @moduletag :root
  @moduletag :dnsmasq
  @subnet 10

  @tag timeout: 60_000
  test "a cluster forms, prunes and heals through DNSPoll against a real DNS server" do
    net = Netns.setup(@subnet, 3)
    on_exit(fn -> Netns.teardown(net) end)
    [h1, h2, h3] = net.hosts
    record = fn h -> {:a, "app.cluster.test", h.ip} end

    dns = Dnsmasq.start(Enum.map(net.hosts, record), address: net.gateway, port: 5353)
    on_exit(fn -> Dnsmasq.cleanup(dns) end)

    for h <- net.hosts, do: Netns.exec!(h.ns, "epmd", ["-daemon"])
    peers = for h <- net.hosts, do: Peer.start("app", h.ip, netns: h.ns)
    on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
    [{p1, n1}, {p2, n2}, {p3, n3}] = peers

    topology = [
      dns: [
        strategy: Cluster.Strategy.DNSPoll,
        config: [
          query: "app.cluster.test",
          node_basename: "app",
          nameservers: [Dnsmasq.nameserver(dns)],
          polling_interval: 300,
          query_timeout: 500
        ],
        # A grace period (an option; the default prunes at once, as libcluster), shortened for the test.
        membership: [prune: {:grace_period, 900}]
      ]
    ]

    sups = for {p, _} <- peers, do: elem(Peer.start_cluster(p, topology), 1)

    eventually(
      fn ->
        Enum.sort(Peer.nodes(p1)) == Enum.sort([n2, n3]) and Enum.sort(Peer.nodes(p2)) == Enum.sort([n1, n3]) and
          Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2])
      end,
      15_000
    )

    # Host 3 leaves DNS and stops its own discovery (a node being drained): the others prune it.
    dns = Dnsmasq.set_records(dns, [record.(h1), record.(h2)])
    :ok = Peer.call(p3, Supervisor, :stop, [Enum.at(sups, 2)])

    eventually(fn -> Peer.nodes(p1) == [n2] and Peer.nodes(p2) == [n1] end, 10_000)
    # ...and it stays pruned: both strategies finish two more rounds without it.
    status = fn p -> p |> Peer.call(Cluster, :status, [:dns]) |> elem(1) end
    rounds = for p <- [p1, p2], do: {p, status.(p).rounds}

    eventually(
      fn ->
        Enum.all?(rounds, fn {p, r} ->
          s = status.(p)
          s.rounds >= r + 3 and n3 not in s.last_discovered
        end)
      end,
      10_000
    )

    assert Peer.nodes(p1) == [n2]
    assert Peer.nodes(p3) == []

    # Back in DNS: hosts 1 and 2 (host 3 runs no discovery now) connect it again.
    Dnsmasq.set_records(dns, [record.(h1), record.(h2), record.(h3)])
    eventually(fn -> Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2]) end, 10_000)
  end
end
