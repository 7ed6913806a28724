# CPU of an idle gossiping node: three meshed nodes with the default heartbeat schedule; CPU ticks
# of one node's OS process and of its libcluster_rs runtime threads over 20 s, compared with an
# identical node that runs no strategy.
alias LibclusterRs.Test.{GossipBench, Peer}

System.cmd("epmd", ["-daemon"])
seconds = 20
config = [port: 47_800, multicast_if: "lo", multicast_ttl: 0]
topology = [gossip: [strategy: Cluster.Strategy.Gossip, config: config]]
peers = for i <- 1..3, do: Peer.start("idle#{i}", "127.0.0.1", args: [~c"-connect_all", ~c"false"])
{control, _} = Peer.start("idlecontrol", "127.0.0.1")
for {p, _} <- peers, do: {:ok, _} = Peer.start_cluster(p, topology)
Peer.wait_until(fn -> Enum.all?(peers, fn {p, _} -> length(Peer.nodes(p)) == 2 end) end, 20_000)
Process.sleep(2_000)

{p1, _} = hd(peers)
hz = 100
{a0, r0} = Peer.call(p1, GossipBench, :cpu_ticks, [])
{c0, _} = Peer.call(control, GossipBench, :cpu_ticks, [])
Process.sleep(seconds * 1000)
{a1, r1} = Peer.call(p1, GossipBench, :cpu_ticks, [])
{c1, _} = Peer.call(control, GossipBench, :cpu_ticks, [])

pct = fn ticks -> Float.round(ticks / hz / seconds * 100, 3) end
IO.puts("over #{seconds} s (#{hz} ticks/s):")
IO.puts("  gossiping node, whole OS process: #{a1 - a0} ticks = #{pct.(a1 - a0)} % of one core")
IO.puts("  gossiping node, libcluster_rs runtime threads: #{r1 - r0} ticks = #{pct.(r1 - r0)} % of one core")
IO.puts("  control node (no strategy), whole OS process: #{c1 - c0} ticks = #{pct.(c1 - c0)} % of one core")
Enum.each([control | Enum.map(peers, &elem(&1, 0))], &Peer.stop/1)
