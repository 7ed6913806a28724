# Ten nodes started together: time from the first strategy start until every node is connected
# to the nine others (median of 5 rounds). Default heartbeat schedule (random 1..5000 ms).
alias LibclusterRs.Test.{GossipBench, Peer}

System.cmd("epmd", ["-daemon"])
n = 10
args = [args: [~c"-connect_all", ~c"false"]]
peers = for i <- 1..n, do: Peer.start("mesh#{i}", "127.0.0.1", args)
# as a release does at boot (see GossipBench.preload/0)
for {p, _} <- peers, do: Peer.call(p, GossipBench, :preload, [])

rounds =
  for round <- 1..5 do
    port = 47_700 + round

    topology = [
      gossip: [strategy: Cluster.Strategy.Gossip, config: [port: port, multicast_if: "lo", multicast_ttl: 0]]
    ]

    waiters = for {p, _} <- peers, do: Peer.call(p, GossipBench, :start_waiter, [n - 1])

    starts =
      peers
      |> Enum.map(fn {p, _} ->
        Task.async(fn -> Peer.call(p, GossipBench, :start_cluster_timed, [topology]) end)
      end)
      |> Task.await_many(30_000)

    t0 = starts |> Enum.map(&elem(&1, 0)) |> Enum.min()

    done =
      for {{p, _}, w} <- Enum.zip(peers, waiters), do: Peer.call(p, GossipBench, :waiter_result, [w], 30_000)

    ms = (Enum.max(done) - t0) / 1000

    # reset: stop the strategies, drop every connection
    for {{p, _}, {_, sup}} <- Enum.zip(peers, starts), do: Peer.call(p, Supervisor, :stop, [sup])
    for {p, _} <- peers, node <- Peer.nodes(p), do: Peer.call(p, :erlang, :disconnect_node, [node])
    Peer.wait_until(fn -> Enum.all?(peers, fn {p, _} -> Peer.nodes(p) == [] end) end, 10_000)
    ms
  end

sorted = Enum.sort(rounds)
IO.puts("10 nodes fully meshed (ms), 5 rounds: #{Enum.map_join(sorted, " ", &Float.round(&1, 1))}")
IO.puts("median time to full mesh: #{Float.round(Enum.at(sorted, 2), 1)} ms (target <= 1000 ms)")
Enum.each(peers, fn {p, _} -> Peer.stop(p) end)
