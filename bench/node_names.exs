# The cost of node-name validation, now that one validator (Rust, `node_names_check/1`) serves both
# sides: the NIF call per chunk of 1,000 names (a regular NIF: it must stay well under 1 ms so it
# never holds a scheduler), and `LibclusterRs.NodeName.to_nodes/1` for 5,000 names (a Kubernetes
# list's worth) including the atoms, next to the Elixir regex this replaced (kept here only for the
# comparison). A long_schedule monitor (1 ms) watches the schedulers for the whole run.
#
#     MIX_ENV=prod mix run bench/node_names.exs

Code.require_file("bench/support/stats.exs")

defmodule Bench.OldRegex do
  # The validator LibclusterRs.NodeName used before issue 11, for comparison only.
  @name ~r/\A[A-Za-z0-9_.\-]+@(?:[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)\z/
  def to_nodes(names) do
    for n <- names,
        byte_size(n) <= 255,
        Regex.match?(@name, n),
        not String.contains?(n, ".."),
        do: String.to_atom(n)
  end
end

runs = 51
names = for i <- 1..5_000, do: "app-#{i}@10-#{div(i, 250)}-#{rem(i, 250)}-7.my-svc.prod.svc.cluster.local"
chunk = Enum.take(names, 1_000)
time = fn f -> Bench.Stats.median(for _ <- 1..runs, do: elem(:timer.tc(f), 0)) end

:erlang.system_monitor(self(), [{:long_schedule, 1}])
# warm-up: the atoms exist after the first run, as they do after a topology's first round
LibclusterRs.NodeName.to_nodes(names)

nif = time.(fn -> LibclusterRs.Native.node_names_check(chunk) end)
new = time.(fn -> LibclusterRs.NodeName.to_nodes(names) end)
old = time.(fn -> Bench.OldRegex.to_nodes(names) end)

long = Bench.Stats.long_schedules()

IO.puts("node_names_check/1, 1,000 names:            median #{nif} µs (#{runs} runs)")
IO.puts("NodeName.to_nodes/1, 5,000 names (NIF):     median #{new} µs")
IO.puts("the old Elixir regex, 5,000 names:          median #{old} µs")
IO.puts("long_schedule events (> 1 ms) during the run: #{length(long)}")

IO.puts(
  "load average: #{File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ")} on #{System.schedulers_online()} cores (the machine is shared)"
)
