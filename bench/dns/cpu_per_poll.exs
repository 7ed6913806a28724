# CPU per poll: one native DNS poll (A + AAAA for a name with 3 records, against dnsmasq on
# loopback), run back to back. CPU is the BEAM OS process's user+system time (schedulers and the
# NIF's tokio threads), divided by the number of polls; dnsmasq's own CPU is not counted.
#
#     mix run bench/dns/cpu_per_poll.exs                  (DNS_BENCH_POLLS=2000 by default)
Code.require_file("support.exs", __DIR__)
alias LibclusterRs.Test.Dnsmasq

polls = String.to_integer(System.get_env("DNS_BENCH_POLLS", "2000"))
IO.puts(Bench.DNS.build_info())
dns = Dnsmasq.start(for i <- 1..3, do: {:a, "app.cluster.test", "10.0.0.#{i}"})

opts = %{
  questions: [{"app", "app.cluster.test", [:a, :aaaa]}],
  nameservers: [Dnsmasq.nameserver(dns)],
  resolv_conf: "/etc/resolv.conf",
  timeout_ms: 2_000,
  attempts: 1
}

poll = fn ->
  tag = make_ref()
  _handle = LibclusterRs.Native.dns_lookup_start(tag, opts)

  receive do
    {:libcluster_rs, ^tag, {:nodes, [_, _, _]}} -> :ok
    {:libcluster_rs, ^tag, other} -> raise "unexpected #{inspect(other)}"
  after
    5_000 -> raise "timeout"
  end
end

# Warm up (runtime threads, allocator).
for _ <- 1..50, do: poll.()

samples =
  for _batch <- 1..5 do
    cpu0 = Bench.DNS.os_cpu_ms()
    t0 = System.monotonic_time(:microsecond)
    for _ <- 1..div(polls, 5), do: poll.()
    wall = System.monotonic_time(:microsecond) - t0
    cpu = Bench.DNS.os_cpu_ms() - cpu0
    {cpu * 1000 / div(polls, 5), wall / div(polls, 5)}
  end

{cpu, wall} = Enum.unzip(samples)
IO.puts("#{polls} polls in 5 batches (median of batches):")
IO.puts("  CPU per poll:  #{Bench.DNS.fmt(Bench.DNS.median(cpu))} us (BEAM process, all threads)")
IO.puts("  wall per poll: #{Bench.DNS.fmt(Bench.DNS.median(wall))} us (sequential, includes dnsmasq)")

{_, reds0} = Process.info(self(), :reductions)
poll.()
{_, reds1} = Process.info(self(), :reductions)
IO.puts("  reductions in the calling process per poll: #{reds1 - reds0}")
Dnsmasq.cleanup(dns)
