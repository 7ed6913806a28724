# Join latency: a new node joins a running 3-node gossip cluster. Measured on the new node, from
# the start of its Cluster.Supervisor until it is connected to all three (median of 9 joins).
# Heartbeats use libcluster's default schedule (random 1..5000 ms), so the figure is what a user
# gets: the newcomer's first heartbeat is sent at start and every running node connects to it.
#
# With `--cold` the joiner's modules (and the NIF) are loaded on first use inside the timing, as in
# a dev (interactive-mode) node; by default they are loaded first, as a release does at boot.
alias LibclusterRs.Test.{GossipBench, Peer}

preload? = "--cold" not in System.argv()

System.cmd("epmd", ["-daemon"])
port = 47_600
config = [port: port, multicast_if: "lo", multicast_ttl: 0]
topology = [gossip: [strategy: Cluster.Strategy.Gossip, config: config]]
args = [args: [~c"-connect_all", ~c"false"]]

base = for i <- 1..3, do: Peer.start("joinbase#{i}", "127.0.0.1", args)
for {p, _} <- base, do: {:ok, _} = Peer.start_cluster(p, topology)
base_names = Enum.map(base, &elem(&1, 1))

Peer.wait_until(
  fn -> Enum.all?(base, fn {p, n} -> Enum.sort(Peer.nodes(p)) == Enum.sort(base_names -- [n]) end) end,
  20_000
)

runs =
  for i <- 1..9 do
    {p, _} = Peer.start("joiner#{i}", "127.0.0.1", args)
    if preload?, do: Peer.call(p, GossipBench, :preload, [])
    waiter = Peer.call(p, GossipBench, :start_waiter, [3])
    {t0, _sup} = Peer.call(p, GossipBench, :start_cluster_timed, [topology])
    t1 = Peer.call(p, GossipBench, :waiter_result, [waiter], 30_000)
    Peer.stop(p)
    # Baseline in the same conditions: a fresh node dialling the three directly.
    {b, _} = Peer.start("baseline#{i}", "127.0.0.1", args)
    if preload?, do: Peer.call(b, GossipBench, :preload, [])
    direct = Peer.call(b, GossipBench, :connect_timed, [base_names])
    Peer.stop(b)
    Process.sleep(200)
    {(t1 - t0) / 1000, direct / 1000}
  end

baseline = runs |> Enum.map(&elem(&1, 1)) |> Enum.sort()
runs = Enum.map(runs, &elem(&1, 0))

IO.puts(
  "baseline: direct concurrent connect_node to the 3 (ms): #{Enum.map_join(baseline, " ", &Float.round(&1, 1))}"
)

IO.puts(
  "median direct connect: #{Float.round(Enum.at(baseline, 4), 1)} ms; load average #{File.read!("/proc/loadavg") |> String.trim()}"
)

sorted = Enum.sort(runs)
median = Enum.at(sorted, div(length(sorted), 2))
IO.puts("join latency into a 3-node cluster (ms), 9 runs: #{Enum.map_join(sorted, " ", &Float.round(&1, 1))}")
mode = if preload?, do: "modules preloaded", else: "cold: modules loaded on first use"
IO.puts("median join latency (#{mode}): #{Float.round(median, 1)} ms (libcluster 3.5 reference: 8-15 ms)")
Enum.each(base, fn {p, _} -> Peer.stop(p) end)
