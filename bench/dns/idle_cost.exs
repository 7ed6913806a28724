# Idle cost: 10 DNSPoll topologies polling every second (3 records each, nothing changing) for a
# minute, against dnsmasq on loopback. Reports scheduler utilisation (:scheduler.utilization) and
# the BEAM process's OS CPU (schedulers + tokio threads) with the topologies running, and the same
# over an equal baseline period without them.
#
#     mix run bench/dns/idle_cost.exs                     (DNS_BENCH_SECONDS=60 by default)
Code.require_file("support.exs", __DIR__)
alias LibclusterRs.Test.{Dnsmasq, FakeNodes}

seconds = String.to_integer(System.get_env("DNS_BENCH_SECONDS", "60"))
IO.puts(Bench.DNS.build_info())
dns = Dnsmasq.start(for t <- 1..10, i <- 1..3, do: {:a, "app#{t}.cluster.test", "10.0.#{t}.#{i}"})

measure = fn ->
  cpu0 = Bench.DNS.os_cpu_ms()
  s0 = :scheduler.sample_all()
  Process.sleep(seconds * 1_000)
  s1 = :scheduler.sample_all()
  cpu = Bench.DNS.os_cpu_ms() - cpu0
  util = :scheduler.utilization(s0, s1)
  {:total, total, _} = List.keyfind(util, :total, 0)
  {:weighted, weighted, _} = List.keyfind(util, :weighted, 0) || {:weighted, total, nil}
  {total * 100, weighted * 100, cpu / (seconds * 10)}
end

{b_total, b_weighted, b_cpu} = measure.()

table = FakeNodes.new()

sups =
  for t <- 1..10 do
    config = [
      query: "app#{t}.cluster.test",
      node_basename: "app",
      nameservers: [Dnsmasq.nameserver(dns)],
      polling_interval: 1_000
    ]

    Bench.DNS.start_topology(table, config, :"idle_#{t}")
  end

# Let every topology connect its 3 nodes, then measure the steady state.
Process.sleep(2_000)
30 = length(FakeNodes.connected(table))
{t_total, t_weighted, t_cpu} = measure.()

rounds =
  Enum.sum(
    for sup <- sups,
        {_, sup2, _, _} <- Supervisor.which_children(sup),
        {_, pid, _, _} <- Supervisor.which_children(sup2),
        do: LibclusterRs.Discovery.status(pid).rounds
  )

f = &Bench.DNS.fmt/1
IO.puts("#{seconds} s each:")

IO.puts(
  "  baseline (no topologies):     scheduler utilisation #{f.(b_total)}% (weighted #{f.(b_weighted)}%), OS CPU #{f.(b_cpu)}% of one core"
)

IO.puts(
  "  10 topologies, 1 s interval:  scheduler utilisation #{f.(t_total)}% (weighted #{f.(t_weighted)}%), OS CPU #{f.(t_cpu)}% of one core"
)

IO.puts(
  "  difference: scheduler #{f.(t_total - b_total)} points, OS CPU #{f.(t_cpu - b_cpu)}% of one core; #{rounds} polls in all"
)

Enum.each(sups, &Supervisor.stop/1)
Dnsmasq.cleanup(dns)
