# A hostile host floods the LAN with 1,000 fresh node names a second for 60 s (libcluster v1
# heartbeats, the format anyone can forge), while legitimate newcomers keep joining. Measured on
# one of two running nodes (the victim): the atoms the flood made, the CPU of its OS process and
# of its libcluster_rs runtime threads, and the join time of each newcomer (from the start of its
# Cluster.Supervisor until it is connected to both running nodes).
#
# All on loopback: the group 233.252.1.32 on `lo`, TTL 0. The flood is sent from 127.0.0.2 (its
# own sender address) and its names point at 127.0.0.2, so every connect attempt they cause stays
# on this machine; the nodes send from 127.0.0.1.
#
#     MIX_ENV=test mix run bench/gossip/flood.exs [--seconds 60] [--rate 1000]
Code.require_file("bench/support/stats.exs")
alias LibclusterRs.Test.{GossipBench, GossipSender, Peer}

{opts, _, _} = OptionParser.parse(System.argv(), strict: [seconds: :integer, rate: :integer])
seconds = Keyword.get(opts, :seconds, 60)
rate = Keyword.get(opts, :rate, 1_000)

System.cmd("epmd", ["-daemon"])
port = 47_650
group = {233, 252, 1, 32}
# libcluster's defaults otherwise: heartbeats every random 1..5000 ms
config = [port: port, multicast_if: "lo", multicast_ttl: 0]
topology = [gossip: [strategy: Cluster.Strategy.Gossip, config: config]]
args = [args: [~c"-connect_all", ~c"false"]]

victims = for i <- 1..2, do: Peer.start("floodvictim#{i}", "127.0.0.1", args)
for {p, _} <- victims, do: Peer.call(p, GossipBench, :preload, [])
for {p, _} <- victims, do: {:ok, _} = Peer.start_cluster(p, topology)
victim_names = Enum.map(victims, &elem(&1, 1))
Peer.wait_until(fn -> Enum.all?(victims, fn {p, n} -> Peer.nodes(p) == victim_names -- [n] end) end, 20_000)
{v, _} = hd(victims)

atoms0 = Peer.call(v, :erlang, :system_info, [:atom_count])
{proc0, rt0} = Peer.call(v, GossipBench, :cpu_ticks, [])
wall0 = System.monotonic_time(:millisecond)

sock_opts = [ip: {127, 0, 0, 2}, multicast_if: {127, 0, 0, 1}, multicast_ttl: 0]

flood =
  Task.async(fn ->
    GossipSender.flood(group, port, "127.0.0.2", rate, seconds * 1000, sock_opts)
  end)

# Newcomers, one after another while the flood runs (the first after 5 s, when every allowance
# the flood can reach is long spent).
Process.sleep(5_000)

joins =
  Stream.iterate(1, &(&1 + 1))
  |> Enum.reduce_while([], fn i, acc ->
    if System.monotonic_time(:millisecond) - wall0 > (seconds - 8) * 1000 do
      {:halt, Enum.reverse(acc)}
    else
      {p, _} = Peer.start("floodnewcomer#{i}", "127.0.0.1", args)
      Peer.call(p, GossipBench, :preload, [])
      waiter = Peer.call(p, GossipBench, :start_waiter, [2])
      {t0, _sup} = Peer.call(p, GossipBench, :start_cluster_timed, [topology])
      t1 = Peer.call(p, GossipBench, :waiter_result, [waiter], 30_000)
      Peer.stop(p)
      ms = if t1 == :timeout, do: :timeout, else: (t1 - t0) / 1000
      Process.sleep(2_000)
      {:cont, [ms | acc]}
    end
  end)

names = Task.await(flood, (seconds + 30) * 1000)
wall = (System.monotonic_time(:millisecond) - wall0) / 1000
{proc1, rt1} = Peer.call(v, GossipBench, :cpu_ticks, [])
atoms1 = Peer.call(v, :erlang, :system_info, [:atom_count])

flood_atoms =
  names
  |> Enum.chunk_every(5_000)
  |> Enum.map(&Peer.call(v, GossipSender, :existing_atoms, [&1], 60_000))
  |> Enum.sum()

{budget_created, budget_dropped} = Peer.call(v, LibclusterRs.Native, :untrusted_atom_budget, [])

hz = 100
pct = fn ticks -> Float.round(ticks / hz / wall * 100, 2) end
timeouts = Enum.count(joins, &(&1 == :timeout))
ok = Enum.reject(joins, &(&1 == :timeout))

IO.puts("flood: #{length(names)} fresh names from one host in #{Float.round(wall, 1)} s (#{rate}/s asked)")
IO.puts("victim atoms: atom table +#{atoms1 - atoms0}; flood names that became atoms: #{flood_atoms}")

IO.puts(
  "VM-wide unauthenticated-gossip atom budget: created #{budget_created}, dropped at the cap #{budget_dropped}"
)

IO.puts(
  "victim CPU over the flood: OS process #{proc1 - proc0} ticks = #{pct.(proc1 - proc0)} % of one core; libcluster_rs runtime threads #{rt1 - rt0} ticks = #{pct.(rt1 - rt0)} % of one core"
)

if ok != [] do
  IO.puts(
    "newcomer join time during the flood (ms), #{length(joins)} joins: " <>
      Enum.map_join(Enum.sort(ok), " ", &Float.round(&1, 1)) <>
      "; median #{Float.round(Bench.Stats.median(ok), 1)}, max #{Float.round(Enum.max(ok), 1)}" <>
      if(timeouts > 0, do: "; #{timeouts} did not join within 20 s", else: "")
  )
else
  IO.puts("newcomer join time: none of #{length(joins)} newcomers joined within 20 s")
end

IO.puts("load average #{File.read!("/proc/loadavg") |> String.trim()} (shared machine)")
Enum.each(victims, fn {p, _} -> Peer.stop(p) end)
