# Time from a DNS record change (dnsmasq records rewritten + SIGHUP) to the connect of the new
# node, as a function of polling_interval. The connect MFA is a fake that reports to this process,
# so the figure is discovery latency, not Erlang distribution setup.
#
#     mix run bench/dns/change_to_connect.exs            (DNS_BENCH_RUNS=9 by default)
Code.require_file("support.exs", __DIR__)
alias LibclusterRs.Test.{Dnsmasq, FakeNodes}

runs = String.to_integer(System.get_env("DNS_BENCH_RUNS", "9"))
IO.puts(Bench.DNS.build_info())
IO.puts("record change -> connect, #{runs} runs per interval (median, min, max in ms)")

for interval <- [100, 250, 500, 1_000, 2_000] do
  dns = Dnsmasq.start([{:a, "app.cluster.test", "10.0.0.1"}])
  table = FakeNodes.new()

  config = [
    query: "app.cluster.test",
    node_basename: "app",
    nameservers: [Dnsmasq.nameserver(dns)],
    polling_interval: interval
  ]

  sup = Bench.DNS.start_topology(table, config, :"bench_#{interval}")

  receive do
    {:connect, :"app@10.0.0.1"} -> :ok
  after
    5_000 -> raise "no first connect"
  end

  {times, dns} =
    Enum.map_reduce(1..runs, dns, fn i, dns ->
      # Change at a random phase of the poll cycle.
      Process.sleep(:rand.uniform(interval))
      ip = "10.0.1.#{i}"
      records = [{:a, "app.cluster.test", "10.0.0.1"}, {:a, "app.cluster.test", ip}]
      t0 = System.monotonic_time(:microsecond)
      dns = Dnsmasq.set_records(dns, records)
      node = :"app@#{ip}"

      receive do
        {:connect, ^node} -> {(System.monotonic_time(:microsecond) - t0) / 1000, dns}
      after
        10_000 -> raise "no connect for #{node}"
      end
    end)

  Supervisor.stop(sup)
  Dnsmasq.cleanup(dns)

  IO.puts(
    "  polling_interval #{String.pad_leading(to_string(interval), 5)} ms: median #{Bench.DNS.fmt(Bench.DNS.median(times))} ms" <>
      " (min #{Bench.DNS.fmt(Enum.min(times))}, max #{Bench.DNS.fmt(Enum.max(times))}; expected about interval/2)"
  )
end
