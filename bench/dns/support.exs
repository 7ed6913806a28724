# Shared by the DNS benchmarks: a real dnsmasq on 127.0.0.1 (the test helper), fake
# connect/list_nodes MFAs that report to the benchmark process, and statistics.
for file <- ["test/support/dnsmasq.ex", "test/support/dns_nodes.ex"] do
  unless Code.ensure_loaded?(
           if file =~ "dnsmasq", do: LibclusterRs.Test.Dnsmasq, else: LibclusterRs.Test.FakeNodes
         ) do
    Code.require_file(file)
  end
end

Code.require_file("bench/support/stats.exs")

defmodule Bench.DNS do
  defdelegate median(list), to: Bench.Stats

  def fmt(x) when is_float(x), do: :erlang.float_to_binary(x, decimals: 2)
  def fmt(x), do: to_string(x)

  # CPU seconds used by this OS process (all threads: schedulers, dirty schedulers, tokio).
  def os_cpu_ms do
    [_, rest] = File.read!("/proc/self/stat") |> String.split(") ", parts: 2)
    fields = String.split(rest)
    # utime and stime are fields 14 and 15 (1-based) of the whole line; 12 and 13 after "pid (comm) ".
    ticks = String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
    ticks * 1000 / clk_tck()
  end

  defp clk_tck do
    case System.cmd("getconf", ["CLK_TCK"]) do
      {n, 0} -> n |> String.trim() |> String.to_integer()
      _ -> 100
    end
  end

  def start_topology(table, config, name) do
    spec =
      {Cluster.Supervisor,
       [[{name, LibclusterRs.Test.FakeNodes.topology(table, Cluster.Strategy.DNSPoll, config)}]]}

    {:ok, sup} = Supervisor.start_link([spec], strategy: :one_for_one)
    sup
  end

  def build_info do
    "NIF build: #{if Mix.env() == :prod, do: "release", else: "debug (run with MIX_ENV=prod for release figures)"}, " <>
      "OTP #{System.otp_release()}, #{System.schedulers_online()} schedulers, #{:erlang.system_info(:logical_processors)} CPUs"
  end
end

Logger.configure(level: :warning)
