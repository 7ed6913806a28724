# Consul: time from a service change (an instance registers in FakeConsul) to the connect of its
# node, with blocking queries (the default) and with polling (`blocking_queries: false`, as
# libcluster_consul), at the same polling_interval. The connect MFA reports to this process, so the
# figure is discovery latency, not Erlang distribution setup. HTTPS with a test CA and client
# certificates, on 127.0.0.1.
#
#     mix run bench/strategies/consul_latency.exs        (CONSUL_BENCH_RUNS=9, CONSUL_BENCH_INTERVAL=2000)
for {file, mod} <- [
      {"test/support/json.ex", LibclusterRs.Test.JSON},
      {"test/support/test_ca.ex", LibclusterRs.Test.TestCA},
      {"test/support/http_fake.ex", LibclusterRs.Test.HttpFake},
      {"test/support/fake_consul.ex", LibclusterRs.Test.FakeConsul}
    ],
    not Code.ensure_loaded?(mod),
    do: Code.require_file(file)

Code.require_file("bench/support/stats.exs")
Logger.configure(level: :warning)
{:ok, _} = Application.ensure_all_started(:ssl)

alias LibclusterRs.Test.{FakeConsul, TestCA}

defmodule Bench.Consul do
  # Connected nodes live in a public ETS table, so list_nodes shows them (no redials).
  def connect({pid, table}, node) do
    :ets.insert(table, {node})
    send(pid, {:connect, table, node})
    true
  end

  def list_nodes({_pid, table}), do: for({node} <- :ets.tab2list(table), do: node)
  def disconnect({_pid, table}, node), do: :ets.delete(table, node)
  def fmt(x) when is_float(x), do: :erlang.float_to_binary(x, decimals: 1)
  def fmt(x), do: to_string(x)
end

runs = String.to_integer(System.get_env("CONSUL_BENCH_RUNS", "9"))
interval = String.to_integer(System.get_env("CONSUL_BENCH_INTERVAL", "2000"))
loadavg = fn -> File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ") end

IO.puts(
  "NIF build: #{if Mix.env() == :prod, do: "release", else: "debug (MIX_ENV=prod for release figures)"}, " <>
    "OTP #{System.otp_release()}, #{System.schedulers_online()} schedulers"
)

IO.puts("load average before: #{loadavg.()}")
IO.puts("service change -> connect, #{runs} runs per mode, polling_interval #{interval} ms")
ca = TestCA.make!(ips: [{127, 0, 0, 1}])

medians =
  for {mode, blocking} <- [blocking: true, polling: false] do
    consul = FakeConsul.start!(tls: ca, client_ca: ca.ca)
    FakeConsul.put(consul, "web", [FakeConsul.instance("n0", "10.0.0.1")])
    me = {self(), :ets.new(:bench_nodes, [:public, :set])}
    {_, table} = me

    topology = [
      strategy: Cluster.Strategy.Consul,
      connect: {Bench.Consul, :connect, [me]},
      disconnect: {Bench.Consul, :disconnect, [me]},
      list_nodes: {Bench.Consul, :list_nodes, [me]},
      config: [
        base_url: consul.url,
        ca_file: ca.ca,
        cert_file: ca.client_cert,
        key_file: ca.client_key,
        node_basename: "app",
        service: [name: "web"],
        list_using: [{Cluster.Strategy.Consul.Health, passing: true}],
        polling_interval: interval,
        blocking_queries: blocking
      ]
    ]

    {:ok, sup} = Cluster.Supervisor.start_link([[{:"consul_bench_#{mode}", topology}]])

    receive do
      {:connect, ^table, :"app@10.0.0.1"} -> :ok
    after
      10_000 -> raise "no first connect"
    end

    times =
      for i <- 1..runs do
        # a change at a random phase of the poll cycle
        Process.sleep(:rand.uniform(interval))
        instances = for j <- 0..i, do: FakeConsul.instance("n#{j}", "10.0.1.#{j}")
        t0 = System.monotonic_time(:microsecond)
        FakeConsul.put(consul, "web", instances)
        node = :"app@10.0.1.#{i}"

        receive do
          {:connect, ^table, ^node} -> (System.monotonic_time(:microsecond) - t0) / 1000
        after
          interval * 3 -> raise "no connect for #{node}"
        end
      end

    Supervisor.stop(sup)
    FakeConsul.stop(consul)
    median = Bench.Stats.median(times)

    IO.puts(
      "  #{String.pad_trailing(to_string(mode), 8)} median #{Bench.Consul.fmt(median)} ms " <>
        "(min #{Bench.Consul.fmt(Enum.min(times))}, max #{Bench.Consul.fmt(Enum.max(times))})"
    )

    {mode, median}
  end

TestCA.remove(ca)
ratio = medians[:polling] / medians[:blocking]
IO.puts("  polling / blocking median ratio: #{Bench.Consul.fmt(ratio)}x")
IO.puts("load average after: #{loadavg.()}")
