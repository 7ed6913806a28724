# A hostile host with 1, 16 or 64 source addresses floods the gossip group with fresh node names
# (libcluster v1 heartbeats, the format anyone can forge), while legitimate newcomers join one
# after another, each from an address of its own, heartbeating as libcluster does (every random
# 1..5000 ms; the first at start). Measured per case: each newcomer's join time (from the start of
# its Cluster.Supervisor until it is connected to both running nodes), and on one running node (the
# victim) the flood names that became atoms and the names the strategy reported.
#
# Real hosts: network namespaces `lcg*` on a bridge in 198.18.210.0/24 (two victims, the hostile
# host with its extra addresses 198.18.210.100.., one namespace per newcomer). Multicast is pinned
# to each namespace's eth0, TTL 1: nothing leaves the bridge. The flood names point at the address
# each is sent from, so `verify_sender` cannot tell them apart and every connect attempt they
# cause stays on the hostile host. Needs root.
#
#     MIX_ENV=test mix run bench/gossip/flood_sources.exs [--sources 1,16,64] [--seconds 60] [--rate 4000]
Code.require_file("bench/support/stats.exs")
alias LibclusterRs.Test.{GossipBench, GossipSender, Netns, Peer}

{opts, _, _} =
  OptionParser.parse(System.argv(), strict: [sources: :string, seconds: :integer, rate: :integer])

cases = opts |> Keyword.get(:sources, "1,16,64") |> String.split(",") |> Enum.map(&String.to_integer/1)
seconds = Keyword.get(opts, :seconds, 60)
rate = Keyword.get(opts, :rate, 4_000)

if System.cmd("id", ["-u"]) |> elem(0) |> String.trim() != "0" do
  IO.puts("flood_sources.exs needs root (network namespaces)")
  System.halt(1)
end

port = 47_660
group = {233, 252, 1, 32}
# libcluster's defaults otherwise: heartbeats every random 1..5000 ms
config = [port: port, multicast_if: "eth0", multicast_ttl: 1]
topology = [gossip: [strategy: Cluster.Strategy.Gossip, config: config]]
args = [args: [~c"-connect_all", ~c"false"]]

run_case = fn sources ->
  net = Netns.setup(210, 2, prefix: "lcg")

  try do
    evil = Netns.add_host(net, 3)
    extra = for i <- 0..(sources - 1), do: "198.18.210.#{100 + i}"
    for a <- extra, do: Netns.exec!(evil.ns, "ip", ["addr", "add", "#{a}/24", "dev", "eth0"])
    for h <- net.hosts ++ [evil], do: Netns.exec!(h.ns, "epmd", ["-daemon"])

    victims = for h <- net.hosts, do: Peer.start("victim", h.ip, [netns: h.ns] ++ args)
    {evil_pid, _} = Peer.start("evil", evil.ip, netns: evil.ns)
    for {p, _} <- victims, do: Peer.call(p, GossipBench, :preload, [])
    sups = for {p, _} <- victims, do: elem(Peer.start_cluster(p, topology), 1)
    victim_names = Enum.map(victims, &elem(&1, 1))

    Peer.wait_until(
      fn -> Enum.all?(victims, fn {p, n} -> Peer.nodes(p) == victim_names -- [n] end) end,
      20_000
    )

    {v, _} = hd(victims)
    [{_, strategy, _, _}] = Peer.call(v, Supervisor, :which_children, [hd(sups)])
    counters0 = Peer.call(v, LibclusterRs.Discovery, :status, [strategy]).extra.counters
    wall0 = System.monotonic_time(:millisecond)

    flood =
      Task.async(fn ->
        Peer.call(
          evil_pid,
          GossipSender,
          :flood_from,
          [group, port, extra, rate, seconds * 1000, [multicast_ttl: 1]],
          (seconds + 30) * 1000
        )
      end)

    # The first newcomer after 5 s, when the burst allowances are long spent.
    Process.sleep(5_000)

    joins =
      Stream.iterate(1, &(&1 + 1))
      |> Enum.reduce_while([], fn i, acc ->
        if System.monotonic_time(:millisecond) - wall0 > (seconds - 8) * 1000 do
          {:halt, Enum.reverse(acc)}
        else
          host = Netns.add_host(net, 3 + i)
          Netns.exec!(host.ns, "epmd", ["-daemon"])
          {p, _} = Peer.start("newcomer#{i}", host.ip, [netns: host.ns] ++ args)
          Peer.call(p, GossipBench, :preload, [])
          waiter = Peer.call(p, GossipBench, :start_waiter, [2])
          {t0, _sup} = Peer.call(p, GossipBench, :start_cluster_timed, [topology])
          t1 = Peer.call(p, GossipBench, :waiter_result, [waiter], 30_000)
          Peer.stop(p)
          Netns.remove_host(host)
          ms = if t1 == :timeout, do: :timeout, else: (t1 - t0) / 1000
          Process.sleep(2_000)
          {:cont, [ms | acc]}
        end
      end)

    names = Task.await(flood, (seconds + 30) * 1000)
    wall = (System.monotonic_time(:millisecond) - wall0) / 1000
    counters1 = Peer.call(v, LibclusterRs.Discovery, :status, [strategy]).extra.counters

    flood_atoms =
      names
      |> Enum.chunk_every(5_000)
      |> Enum.map(&Peer.call(v, GossipSender, :existing_atoms, [&1], 60_000))
      |> Enum.sum()

    d = fn k -> Map.get(counters1, k, 0) - Map.get(counters0, k, 0) end
    ok = Enum.reject(joins, &(&1 == :timeout))
    timeouts = length(joins) - length(ok)

    IO.puts(
      "#{sources} source address(es): #{length(names)} fresh names in #{Float.round(wall, 1)} s " <>
        "(#{rate}/s asked); victim reported #{d.(:reported)} names " <>
        "(#{d.(:admitted_after_waiting)} after waiting), #{d.(:rejected_rate_limited)} not admitted on arrival; " <>
        "flood names that became atoms: #{flood_atoms}"
    )

    if ok != [] do
      IO.puts(
        "  newcomer join time (ms), #{length(joins)} newcomers: " <>
          Enum.map_join(Enum.sort(ok), " ", &Float.round(&1, 1)) <>
          "; median #{Float.round(Bench.Stats.median(ok), 1)}, max #{Float.round(Enum.max(ok), 1)}" <>
          if(timeouts > 0, do: "; #{timeouts} did not join within 20 s", else: "")
      )
    else
      IO.puts("  newcomer join time: none of #{length(joins)} newcomers joined within 20 s")
    end

    IO.puts("  load average #{File.read!("/proc/loadavg") |> String.trim()} (shared machine)")
    Enum.each([evil_pid | Enum.map(victims, &elem(&1, 0))], &Peer.stop/1)
  after
    Netns.teardown(net)
  end
end

Enum.each(cases, run_case)
