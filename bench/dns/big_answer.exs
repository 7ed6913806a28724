# Time to process a 1,000-record answer (and 10,000 records over 4 names: one DNS message holds
# at most 64 KiB): from dns_lookup_start to the {:nodes, names} message (UDP truncated, TCP retry,
# parsing, node-name validation, encoding), then the Elixir side's conversion to node atoms.
# Also how long the NIF call itself takes, how late a 1 ms timer woke meanwhile (OS CPU
# contention shows here too: the machine has 2 cores), and how many times any process or port
# ran for over 10 ms without yielding (erlang:system_monitor long_schedule: a blocked scheduler).
#
#     mix run bench/dns/big_answer.exs                    (DNS_BENCH_RUNS=21 by default)
Code.require_file("support.exs", __DIR__)
alias LibclusterRs.Test.Dnsmasq

runs = String.to_integer(System.get_env("DNS_BENCH_RUNS", "21"))
IO.puts(Bench.DNS.build_info())

records =
  for(i <- 1..1_000, do: {:a, "big.cluster.test", "10.9.#{div(i, 256)}.#{rem(i, 256)}"}) ++
    for n <- 1..4, i <- 1..2_500, do: {:a, "big#{n}.cluster.test", "10.#{n}.#{div(i, 256)}.#{rem(i, 256)}"}

dns = Dnsmasq.start(records)

# A process that wakes every millisecond and records how late it was: a blocked scheduler shows.
probe = fn ->
  parent = self()

  spawn(fn ->
    loop = fn loop, worst ->
      t = System.monotonic_time(:microsecond)

      receive do
        :stop -> send(parent, {:worst_lateness_us, worst})
      after
        1 -> loop.(loop, max(worst, System.monotonic_time(:microsecond) - t - 1_000))
      end
    end

    loop.(loop, 0)
  end)
end

:erlang.system_monitor(self(), [{:long_schedule, 10}])

long_schedules = &Bench.Stats.long_schedules/0

run = fn questions, expected ->
  opts = %{
    questions: questions,
    nameservers: [Dnsmasq.nameserver(dns)],
    resolv_conf: "",
    timeout_ms: 5_000,
    attempts: 1
  }

  results =
    for _ <- 1..runs do
      p = probe.()
      tag = make_ref()
      t0 = System.monotonic_time(:microsecond)
      _h = LibclusterRs.Native.dns_lookup_start(tag, opts)
      t_call = System.monotonic_time(:microsecond) - t0

      names =
        receive do
          {:libcluster_rs, ^tag, {:nodes, names}} -> names
        after
          20_000 -> raise "timeout"
        end

      t_msg = System.monotonic_time(:microsecond) - t0
      {nodes, []} = LibclusterRs.NodeName.to_nodes(names)
      ^expected = length(nodes)
      t_atoms = System.monotonic_time(:microsecond) - t0 - t_msg
      send(p, :stop)
      worst = receive do: ({:worst_lateness_us, w} -> w)
      {t_call, t_msg / 1000, t_atoms / 1000, worst / 1000}
    end

  longs = long_schedules.()
  m = fn i -> results |> Enum.map(&elem(&1, i)) |> Bench.DNS.median() |> Bench.DNS.fmt() end

  IO.puts(
    "  #{expected} records: NIF call #{m.(0)} us, answer message after #{m.(1)} ms, " <>
      "names -> atoms #{m.(2)} ms, worst 1 ms-timer lateness meanwhile #{m.(3)} ms, " <>
      "long_schedule (>10 ms) events in all runs: #{length(longs)}"
  )

  for info <- Enum.take(longs, 3), do: IO.puts("    long_schedule: #{inspect(info)}")
end

IO.puts("medians of #{runs} runs:")
run.([{"app", "big.cluster.test", [:a]}], 1_000)
run.(for(n <- 1..4, do: {"app", "big#{n}.cluster.test", [:a]}), 10_000)
Dnsmasq.cleanup(dns)
