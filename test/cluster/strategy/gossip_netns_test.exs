defmodule Cluster.Strategy.GossipNetnsTest do
  # Four hosts (network namespaces on a bridge, 198.18.20.0/24), each running a node, and a
  # hostile fifth. The nodes run with -connect_all false, so every connection is made by gossip.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually

  alias Cluster.Strategy.Gossip
  alias LibclusterRs.Test.{GossipSender, Netns, Peer}

  @moduletag :root
  @subnet 20
  @group {233, 252, 1, 32}

  setup_all do
    net = Netns.setup(@subnet, 4, ipv6: true)
    evil = Netns.add_host(net, 5)
    on_exit(fn -> Netns.teardown(net) end)
    for h <- net.hosts ++ [evil], do: Netns.exec!(h.ns, "epmd", ["-daemon"])

    # :peer links peers to the starting process: start them from a process that lives as long as
    # the module's tests.
    me = self()

    owner =
      spawn(fn ->
        peers =
          for h <- net.hosts, do: Peer.start("app", h.ip, netns: h.ns, args: [~c"-connect_all", ~c"false"])

        {evil_pid, _} = Peer.start("evil", evil.ip, netns: evil.ns)
        send(me, {:peers, peers, evil_pid})
        receive do: (:stop -> Enum.each([evil_pid | Enum.map(peers, &elem(&1, 0))], &Peer.stop/1))
      end)

    assert_receive {:peers, peers, evil_pid}, 60_000
    on_exit(fn -> send(owner, :stop) end)
    %{net: net, evil: evil, evil_pid: evil_pid, peers: peers}
  end

  setup %{peers: peers} do
    # Each test starts from no connections: its supervisors are stopped and nodes disconnected.
    {:ok, started} = Agent.start(fn -> [] end)

    on_exit(fn ->
      for {p, sup} <- Agent.get(started, & &1) do
        try do
          Peer.call(p, Supervisor, :stop, [sup])
        catch
          :exit, _ -> :ok
        end
      end

      Agent.stop(started)
      for {p, _} <- peers, n <- Peer.nodes(p), do: Peer.call(p, :erlang, :disconnect_node, [n])
    end)

    %{started: started}
  end

  defp start(started, peers, configs) do
    Enum.zip(peers, configs)
    |> Enum.map(fn {{p, _}, config} ->
      {:ok, sup} = Peer.start_cluster(p, gossip: [strategy: Gossip, config: config])
      Agent.update(started, &[{p, sup} | &1])
      sup
    end)
  end

  defp meshed?(peers) do
    names = Enum.map(peers, &elem(&1, 1))
    Enum.all?(peers, fn {p, n} -> Enum.sort(Peer.nodes(p)) == Enum.sort(names -- [n]) end)
  end

  defp counters(p, sup) do
    [{_, pid, _, _}] = Peer.call(p, Supervisor, :which_children, [sup])
    true = Peer.call(p, Process, :alive?, [pid])
    Peer.call(p, LibclusterRs.Discovery, :status, [pid]).extra.counters
  end

  @tag timeout: 60_000
  test "IPv4 multicast, under a hostile sender", %{
    peers: peers,
    started: started,
    evil: evil,
    evil_pid: evil_pid
  } do
    config = [heartbeat_interval: 200, stats_interval: 200, multicast_ttl: 1]
    # Load the code the peers may run first, so that the atom count below measures what the network
    # made, not atoms from modules loaded on first use.
    modules =
      for app <- [:libcluster_rs, :kernel, :stdlib, :elixir, :logger, :crypto],
          {:ok, ms} = :application.get_key(app, :modules),
          m <- ms,
          do: m

    for {p, _} <- peers, do: Peer.call(p, :code, :ensure_modules_loaded, [modules], 60_000)
    atoms_before = for {p, _} <- peers, do: Peer.call(p, :erlang, :system_info, [:atom_count])

    # The flood names point at the hostile host itself, so connect attempts stay in the test network.
    flood = GossipSender.fresh_names(2_000, evil.ip)
    sock_opts = [multicast_if: ip(evil.ip), multicast_ttl: 1]

    sups = start(started, peers, List.duplicate(config, 4))
    t0 = System.monotonic_time(:millisecond)

    # The hostile traffic starts once every node listens (a blast sent before a socket is open
    # reaches nobody, and the checks below would then prove nothing).
    eventually(fn ->
      Enum.all?(Enum.zip(peers, sups), fn {{p, _}, sup} ->
        Map.get(counters(p, sup), :socket_opened, 0) > 0
      end)
    end)

    hostile =
      Task.async(fn ->
        Peer.call(
          evil_pid,
          GossipSender,
          :blast,
          [@group, 45892, GossipSender.garbage(500), sock_opts],
          30_000
        )
      end)

    Peer.call(
      evil_pid,
      GossipSender,
      :blast,
      [@group, 45892, Enum.map(flood, &elem(&1, 1)), sock_opts],
      30_000
    )

    Task.await(hostile, 30_000)

    eventually(fn -> meshed?(peers) end, 15_000)
    elapsed_s = div(System.monotonic_time(:millisecond) - t0, 1000) + 1
    names = Enum.map(flood, &elem(&1, 0))

    for {{p, _}, sup, before} <- Enum.zip([peers, sups, atoms_before]) do
      c = counters(p, sup)
      assert c.rejected_malformed > 0
      assert c.rejected_rate_limited > 0
      flood_atoms = Peer.call(p, GossipSender, :existing_atoms, [names])
      # burst 64, then 60 per minute
      assert flood_atoms <= 64 + elapsed_s, "#{flood_atoms} flood names became atoms"
      assert Peer.call(p, :erlang, :system_info, [:atom_count]) - before < 400
    end
  end

  @tag timeout: 60_000
  test "a newcomer joins within 2 s while another host floods 1,000 fresh names a second", %{
    peers: peers,
    started: started,
    evil: evil,
    evil_pid: evil_pid
  } do
    config = [port: 45896, heartbeat_interval: 200, stats_interval: 200, multicast_if: "eth0"]
    [newcomer | cluster] = peers
    sups = start(started, cluster, List.duplicate(config, 3))
    eventually(fn -> meshed?(cluster) end, 15_000)

    # From the hostile namespace, naming only its own address (connect attempts stay there).
    sock_opts = [multicast_if: ip(evil.ip), multicast_ttl: 1]

    flood =
      Task.async(fn ->
        Peer.call(evil_pid, GossipSender, :flood, [@group, 45896, evil.ip, 1_000, 8_000, sock_opts], 20_000)
      end)

    # Every allowance the flood can reach is spent: each node has rejected hundreds of its names
    # (more than every burst: 64 per sender, 256 in total).
    limited_before =
      eventually(
        fn ->
          limited =
            for {{p, _}, sup} <- Enum.zip(cluster, sups),
                do: Map.get(counters(p, sup), :rejected_rate_limited, 0)

          Enum.all?(limited, &(&1 >= 500)) && limited
        end,
        10_000
      )

    _ = start(started, [newcomer], [config])
    eventually(fn -> meshed?(peers) end, 2_000)

    # The flood was still on when it joined, and it was being limited: every running node keeps
    # rejecting its names (the join itself can take a few ms, too short to count on).
    eventually(
      fn ->
        limited_after =
          for {{p, _}, sup} <- Enum.zip(cluster, sups), do: counters(p, sup).rejected_rate_limited

        Enum.zip(limited_before, limited_after) |> Enum.all?(fn {b, a} -> a > b + 100 end)
      end,
      3_000
    )

    assert Task.yield(flood, 0) == nil
    names = Task.await(flood, 20_000)
    assert length(names) > 6_000
  end

  @tag timeout: 60_000
  test "a newcomer joins while the flood comes from 16 source addresses of one host", %{
    peers: peers,
    started: started,
    evil: evil,
    evil_pid: evil_pid
  } do
    # One hostile host with 16 addresses: between them they used to spend the total allowance (a
    # burst of 256, then 600 a minute) as fast as it refilled, and no newcomer got in. Admission is
    # now in turn among sender addresses, and a newcomer's address has never been served.
    sources = for i <- 100..115, do: "198.18.#{@subnet}.#{i}"
    for a <- sources, do: Netns.exec!(evil.ns, "ip", ["addr", "add", "#{a}/24", "dev", "eth0"])

    on_exit(fn ->
      for a <- sources, do: System.cmd("ip", ["-n", evil.ns, "addr", "del", "#{a}/24", "dev", "eth0"])
    end)

    config = [port: 45897, heartbeat_interval: 200, stats_interval: 200, multicast_if: "eth0"]
    [newcomer | cluster] = peers
    sups = start(started, cluster, List.duplicate(config, 3))
    eventually(fn -> meshed?(cluster) end, 15_000)

    flood =
      Task.async(fn ->
        Peer.call(
          evil_pid,
          GossipSender,
          :flood_from,
          [@group, 45897, sources, 2_000, 10_000, [multicast_ttl: 1]],
          30_000
        )
      end)

    # Every burst the flood can reach is spent: each node has kept hundreds of its names waiting.
    limited_before =
      eventually(
        fn ->
          limited =
            for {{p, _}, sup} <- Enum.zip(cluster, sups),
                do: Map.get(counters(p, sup), :rejected_rate_limited, 0)

          Enum.all?(limited, &(&1 >= 1_000)) && limited
        end,
        10_000
      )

    _ = start(started, [newcomer], [config])
    eventually(fn -> meshed?(peers) end, 5_000)

    # The flood was still on, and still being limited, when the newcomer joined.
    eventually(
      fn ->
        limited_after =
          for {{p, _}, sup} <- Enum.zip(cluster, sups), do: counters(p, sup).rejected_rate_limited

        Enum.zip(limited_before, limited_after) |> Enum.all?(fn {b, a} -> a > b + 100 end)
      end,
      3_000
    )

    assert Task.yield(flood, 0) == nil
    names = Task.await(flood, 30_000)
    # the flood came from every address
    assert names |> Enum.map(&(&1 |> String.split("@") |> List.last())) |> Enum.uniq() |> length() == 16
  end

  @tag timeout: 30_000
  test "broadcast_only", %{peers: peers, started: started} do
    config = [
      broadcast_only: true,
      multicast_addr: "198.18.#{@subnet}.255",
      port: 45893,
      heartbeat_interval: 200
    ]

    _ = start(started, peers, List.duplicate(config, 4))
    eventually(fn -> meshed?(peers) end, 10_000)
  end

  @tag timeout: 30_000
  test "IPv6 multicast (ff02::, interface by name)", %{peers: peers, started: started} do
    config = [multicast_addr: "ff02::4c43", multicast_if: "eth0", port: 45894, heartbeat_interval: 200]
    _ = start(started, peers, List.duplicate(config, 4))
    eventually(fn -> meshed?(peers) end, 15_000)
  end

  @tag timeout: 30_000
  test "different secrets stay apart; forged and replayed datagrams are rejected",
       %{peers: peers, started: started, evil: evil, evil_pid: evil_pid} do
    base = [wire_format: :authenticated, port: 45895, heartbeat_interval: 200, stats_interval: 200]

    configs = [
      [secret: "alpha"] ++ base,
      [secret: "alpha"] ++ base,
      [secret: "beta"] ++ base,
      [secret: "beta"] ++ base
    ]

    recording =
      Task.async(fn ->
        Peer.call(evil_pid, GossipSender, :record_authenticated, [45895, @group, ip(evil.ip), 5_000], 10_000)
      end)

    sups = start(started, peers, configs)
    [{p1, n1}, {p2, n2}, {p3, n3}, {p4, n4}] = peers
    eventually(fn -> Peer.nodes(p1) == [n2] and Peer.nodes(p3) == [n4] end, 10_000)

    recorded = Task.await(recording, 10_000)
    assert is_binary(recorded)
    forged = for _ <- 1..100, do: "LCG2" <> :crypto.strong_rand_bytes(60)
    flipped = for i <- 0..(byte_size(recorded) - 1), do: flip(recorded, i)
    sock_opts = [multicast_if: ip(evil.ip), multicast_ttl: 1]

    Peer.call(evil_pid, GossipSender, :blast, [
      @group,
      45895,
      List.duplicate(recorded, 20) ++ forged ++ flipped,
      sock_opts
    ])

    # Every node has received the blast (its counters say so), and nothing was connected by it.
    eventually(
      fn ->
        all = for {{p, _}, sup} <- Enum.zip(peers, sups), do: counters(p, sup)

        Enum.all?(all, &(Map.get(&1, :rejected_auth, 0) > 100)) and
          Enum.sum(Enum.map(all, &Map.get(&1, :rejected_replay, 0))) >= 20
      end,
      10_000
    )

    assert Peer.nodes(p1) == [n2]
    assert Peer.nodes(p2) == [n1]
    assert Peer.nodes(p3) == [n4]
    assert Peer.nodes(p4) == [n3]
  end

  defp flip(bin, i) do
    # split_binary/2: Elixir 1.20 wants `size(^i)`, which Elixir 1.14 rejects.
    {pre, <<b, post::binary>>} = :erlang.split_binary(bin, i)
    <<pre::binary, Bitwise.bxor(b, 1), post::binary>>
  end

  defp ip(s) do
    {:ok, ip} = :inet.parse_address(to_charlist(s))
    ip
  end
end
