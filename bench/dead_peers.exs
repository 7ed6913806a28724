# Join time of a live peer when the topology also lists K peers that never answer.
#
#     MIX_ENV=test mix run bench/dead_peers.exs        (as root: it makes network namespaces)
#     RUNS=9 KS=0,1,3,10,50 PRELOAD=0 MIX_ENV=test mix run bench/dead_peers.exs
#
# Every run uses a fresh observer node in its own namespace (obs…@198.18.51.11), by default with
# its code preloaded as in a release (PRELOAD=0: modules load from disk on first use), and a
# Cluster.Strategy.Epmd topology listing the K dead peers first and the live peer
# (live@198.18.51.12) last; its name also sorts after every dead peer's. Half of the dead peers are unreachable addresses in the namespace subnet
# (no ARP answer), half are namespaces whose port 4369 accepts and says nothing. The join time is
# measured on the observer, from the start of Cluster.Supervisor to the live peer's nodeup.

alias LibclusterRs.Test.{DeadPeers, Peer}

unless LibclusterRs.Test.Env.root?() do
  IO.puts(:stderr, "bench/dead_peers needs root (network namespaces) and iproute2")
  System.halt(1)
end

runs = String.to_integer(System.get_env("RUNS", "5"))
# PRELOAD=0 measures nodes that load modules from disk on first use (interactive mode).
preload = System.get_env("PRELOAD", "1") != "0"
ks = System.get_env("KS", "0,1,3,10,50") |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)
libcluster = %{0 => "12 ms", 1 => "3.1 s", 3 => "13.1 s", 10 => "50.4 s"}
target_ms = 50

loadavg = fn -> File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ") end
load_before = loadavg.()
dp = DeadPeers.setup(51, Enum.max(ks))
live = DeadPeers.start_live(dp)

Code.require_file("bench/support/stats.exs")
median = &Bench.Stats.median/1

{results, bare} =
  try do
    for k <- ks do
      dead = DeadPeers.dead(dp, k)

      times =
        for i <- 1..runs do
          # Forget failed ARP lookups of the previous run: every run meets unreachable peers afresh.
          System.cmd("ip", ["-n", dp.observer_host.ns, "neigh", "flush", "all"])
          {ms, obs} = DeadPeers.join(dp, dead, "obs#{k}x#{i}", preload: preload)
          Peer.stop(obs)
          ms
        end

      IO.puts("K=#{k}: #{Enum.map_join(times, " ", &:erlang.float_to_binary(&1, decimals: 1))} ms")
      {k, times}
    end
    |> then(fn rows ->
      # Baseline: a bare net_kernel.connect_node/1 to the live peer from a fresh observer, no strategy.
      bare =
        for i <- 1..runs do
          obs = DeadPeers.start_observer(dp, "bare#{i}", preload: preload)
          {ms, true} = Peer.call(obs, DeadPeers, :connect_here, [dp.live_node])
          Peer.stop(obs)
          ms
        end

      IO.puts("bare connect_node: #{Enum.map_join(bare, " ", &:erlang.float_to_binary(&1, decimals: 1))} ms")
      {rows, bare}
    end)
  after
    Peer.stop(live)
    DeadPeers.teardown(dp)
  end

fmt = fn ms -> :erlang.float_to_binary(ms / 1, decimals: 1) <> " ms" end

IO.puts("""

Join time of a live peer next to K never-answering peers (K/2 unreachable, K/2 silent port 4369),
Cluster.Strategy.Epmd, #{runs} runs per K, each with a fresh observer node\
#{if preload, do: " (code preloaded, as in a release)", else: " (interactive code loading)"}
(load average #{load_before} before, #{loadavg.()} after; #{System.schedulers_online()} cores):

| K dead peers | median | min | max | target | meets target | libcluster 3.5 (same machine) |
|---:|---:|---:|---:|---:|:---:|---:|\
""")

for {k, times} <- results do
  med = median.(times)

  IO.puts(
    "| #{k} | #{fmt.(med)} | #{fmt.(Enum.min(times))} | #{fmt.(Enum.max(times))} | ≤ #{target_ms} ms | " <>
      "#{if med <= target_ms, do: "yes", else: "NO"} | #{Map.get(libcluster, k, "-")} |"
  )
end

IO.puts(
  "\nBaseline, a bare :net_kernel.connect_node/1 to the live peer from a fresh observer (no strategy): " <>
    "median #{fmt.(median.(bare))} (min #{fmt.(Enum.min(bare))}, max #{fmt.(Enum.max(bare))})"
)
