defmodule Cluster.Strategy.EC2E2ETest do
  # Real BEAM nodes in three network namespaces (198.18.47.11-13; root needed), named
  # `ec2e2e@<private ip>`, finding each other through the fake EC2 (HTTPS with a CA made here, every
  # signature checked by botocore) on the bridge's gateway. The peers read the real process
  # environment, as on AWS: one gets its credentials, region and own tag value from IMDSv2 (an
  # instance profile), the other from AWS_ACCESS_KEY_ID / AWS_SESSION_TOKEN / AWS_REGION.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Test.{FakeAWS, Netns, Peer, TestCA}

  @moduletag :root
  @subnet 47
  @gateway {198, 18, @subnet, 1}

  case FakeAWS.unavailable() do
    nil -> :ok
    why -> @moduletag skip: "botocore is not available (#{why})"
  end

  @tag timeout: 90_000
  test "tagged instances connect, survive EC2 errors, and are pruned when untagged" do
    net = Netns.setup(@subnet, 3)
    on_exit(fn -> Netns.teardown(net) end)
    for h <- net.hosts, do: Netns.exec!(h.ns, "epmd", ["-daemon"])
    [ip1, ip2, ip3] = Enum.map(net.hosts, & &1.ip)

    ca = TestCA.shared!(ips: [@gateway])
    fake = FakeAWS.start!(ca, host: "198.18.#{@subnet}.1")
    on_exit(fn -> FakeAWS.stop(fake) end)

    tag = %{"cluster" => "prod eu é"}
    instance = fn id, ip, tags -> %{id: id, private_ip: ip, state: "running", tags: tags} end
    FakeAWS.config(fake, region: "eu-central-1", instance_id: "i-1", page_size: 1)

    FakeAWS.config(fake,
      instances: [
        instance.("i-1", ip1, tag),
        instance.("i-2", ip2, tag),
        instance.("i-3", ip3, %{"cluster" => "staging"})
      ]
    )

    FakeAWS.add_key(fake, "AKIDPEER2", "peer2/secret", "peer2-token")

    common = [
      {"AWS_ENDPOINT_URL_EC2", FakeAWS.https_url(fake)},
      {"AWS_CA_BUNDLE", ca.ca},
      {"AWS_EC2_METADATA_SERVICE_ENDPOINT", FakeAWS.http_url(fake, "")}
    ]

    static = [
      {"AWS_ACCESS_KEY_ID", "AKIDPEER2"},
      {"AWS_SECRET_ACCESS_KEY", "peer2/secret"},
      {"AWS_SESSION_TOKEN", "peer2-token"},
      {"AWS_REGION", "eu-central-1"}
    ]

    envs = [common, common ++ static, common ++ static]

    peers =
      for {h, env} <- Enum.zip(net.hosts, envs) do
        Peer.start("ec2e2e", h.ip, netns: h.ns, env: env, args: [~c"-kernel", ~c"connect_all", ~c"false"])
      end

    on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
    [{p1, n1}, {p2, n2}, {p3, _n3}] = peers

    # Peer 1: libcluster_ec2's minimal config (the tag value is this instance's own, via IMDS).
    topology = fn config ->
      [
        ec2: [
          strategy: Cluster.Strategy.EC2,
          config: [ec2_tagname: "cluster", app_prefix: "ec2e2e", polling_interval: 300] ++ config
        ]
      ]
    end

    {:ok, _} = Peer.start_cluster(p1, topology.([]))
    {:ok, _} = Peer.start_cluster(p2, topology.(ec2_tagvalue: "prod eu é"))
    eventually(fn -> Peer.nodes(p1) == [n2] and Peer.nodes(p2) == [n1] end, 15_000)
    assert Peer.nodes(p3) == []

    # The third instance gets the tag: both connect it.
    FakeAWS.config(fake,
      instances: [instance.("i-1", ip1, tag), instance.("i-2", ip2, tag), instance.("i-3", ip3, tag)]
    )

    eventually(fn -> Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2]) end, 10_000)

    # EC2 fails, throttles and answers garbage: nobody is disconnected. Every fault is served, then
    # both strategies finish a good round; p3 saw no nodedown meanwhile.
    :ok = Peer.call(p3, LibclusterRs.Test.EventLog, :start, [])
    served = fn -> fake |> FakeAWS.log() |> Enum.count(&(&1["fault"] != nil)) end
    served_before = served.()

    for f <- [
          [status: 500],
          [status: 503, code: "RequestLimitExceeded"],
          [body: "truncate"],
          [status: 500],
          [body: "<html/>"]
        ],
        do: FakeAWS.fault(fake, [on: "ec2"] ++ f)

    eventually(fn -> served.() == served_before + 5 end, 15_000)
    status = fn p -> p |> Peer.call(Cluster, :status, [:ec2]) |> elem(1) end
    rounds = for p <- [p1, p2], do: {p, status.(p).rounds}

    # (a round that starts after a sampled one has ended it)
    eventually(
      fn ->
        Enum.all?(rounds, fn {p, r} -> match?(%{rounds: n, error_streak: 0} when n >= r + 2, status.(p)) end)
      end,
      15_000
    )

    assert Peer.call(p3, LibclusterRs.Test.EventLog, :events, []) == []
    assert Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2])

    # The instance loses its tag: both strategies prune it.
    FakeAWS.config(fake,
      instances: [instance.("i-1", ip1, tag), instance.("i-2", ip2, tag), instance.("i-3", ip3, %{})]
    )

    eventually(fn -> Peer.nodes(p3) == [] end, 15_000)
    assert Peer.nodes(p1) == [n2]

    # Every EC2 request was signed correctly; peer 1 used IMDSv2 only, peer 2 its session token.
    log = FakeAWS.log(fake)
    ec2 = Enum.filter(log, &(&1["kind"] == "ec2" and &1["fault"] == nil))
    assert length(ec2) > 10
    assert Enum.all?(ec2, & &1["sig_ok"]), inspect(Enum.reject(ec2, & &1["sig_ok"]))
    assert Enum.any?(ec2, &(&1["access_key"] =~ "ASIAIMDS"))
    assert Enum.any?(ec2, &(&1["access_key"] == "AKIDPEER2" and &1["session_token"]))
    refute Enum.any?(log, &Map.get(&1, "imdsv1"))
    assert Enum.any?(ec2, &(&1["instance_ids"] == ["i-1"]))
  end
end
