# Heal time after a partition: 5 real nodes in network namespaces, split 2|3 by cutting the link
# between their two bridges, kept apart for S seconds (counted from the split), healed. The heal
# time is from the link coming back up to the moment the last node sees all 4 others (measured on
# the nodes themselves, OS clock). See test/support/partition.ex for the network.
#
#     MIX_ENV=test mix run bench/partition.exs                (as root: it makes network namespaces)
#     RUNS=5 SPLITS=10,30,60 CONFIGS=probe,no_probe MODE=drop GLOBAL=1 MIX_ENV=test mix run bench/partition.exs
#     DIST=tcp,tls,epmdless RUNS=3 SPLITS=10 MIX_ENV=test mix run bench/partition.exs
#
# DIST: the distributions to measure (default tcp): `tcp` (inet_tcp, epmd on every host), `tls`
# (`-proto_dist inet_tls`, certificates from a CA made for the run), `epmdless` (`-start_epmd false
# -erl_epmd_port 4370`, no epmd anywhere). See LibclusterRs.Test.Partition.setup/4.
#
# MODE=drop (default): packets across the split are lost silently (permanent ARP entries), as behind
# a router or firewall that drops them; a connect across the split hangs until net_setuptime.
# MODE=link: a plain link cut; ARP across the split fails too.
#
# Configs: `probe` is the default membership (the heal probe of LibclusterRs.Membership.Probe);
# `no_probe` is `membership: [probe: false]`, which is exactly the membership before the probe (the
# "before" figure). Every node runs Cluster.Strategy.Epmd listing all 5 nodes, with default
# membership options otherwise (backoff 250 ms .. 10 s) and `-kernel net_ticktime 4`, so that the
# split is noticed within about 5 s (with the default 60 s a short partition breaks no connection).
# One cluster per config is reused for all its runs; each run starts from a full mesh.

alias LibclusterRs.Test.Partition

unless LibclusterRs.Test.Env.root?() do
  IO.puts(:stderr, "bench/partition needs root (network namespaces) and iproute2")
  System.halt(1)
end

# DIST=tls makes its certificates with the tests' TestCA, whose makers take turns through this lock.
LibclusterRs.Test.Lock.start()
runs = String.to_integer(System.get_env("RUNS", "5"))

splits =
  System.get_env("SPLITS", "10,30,60") |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)

configs = System.get_env("CONFIGS", "probe,no_probe") |> String.split(",", trim: true)
dists = System.get_env("DIST", "tcp") |> String.split(",", trim: true) |> Enum.map(&String.to_existing_atom/1)
Enum.each(dists, fn d -> d in [:tcp, :tls, :epmdless] || raise(ArgumentError, "DIST: unknown #{d}") end)
mode = System.get_env("MODE", "drop") |> String.to_existing_atom()
# GLOBAL=0: nodes run with `-connect_all false`, so `global` neither connects nodes transitively nor
# keeps dialling lost ones: the heal is then the membership's work alone.
erl_args = if System.get_env("GLOBAL", "1") == "0", do: ["-connect_all", "false"], else: []
target_ms = 1_500

membership = fn
  "probe" -> []
  "no_probe" -> [probe: false]
end

Code.require_file("bench/support/stats.exs")
median = &Bench.Stats.median/1
loadavg = fn -> File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ") end
load_before = loadavg.()

results =
  for {dist, config} <- for(d <- dists, c <- configs, do: {d, c}) do
    p =
      Partition.setup(200, 2, 3,
        membership: membership.(config),
        logger_level: :error,
        mode: mode,
        erl_args: erl_args,
        dist: dist
      )

    try do
      Partition.await_mesh(p, 60_000)

      for split_s <- splits do
        times =
          for run <- 1..runs do
            Partition.split(p)
            split_at = System.monotonic_time(:millisecond)
            Partition.await_split(p, 30_000)
            noticed_ms = System.monotonic_time(:millisecond) - split_at
            Process.sleep(max(split_s * 1_000 - noticed_ms, 0))
            healed_at = Partition.heal(p)
            full = Partition.await_mesh(p, 60_000)
            ms = (Enum.max(full) - healed_at) / 1000

            IO.puts(
              "#{dist} #{config} split #{split_s} s run #{run}: heal #{:erlang.float_to_binary(ms, decimals: 0)} ms " <>
                "(split noticed after #{noticed_ms} ms; load #{loadavg.()})"
            )

            # Let the nodes settle (global's sync after the heal) before the next split.
            Process.sleep(2_000)
            ms
          end

        {dist, config, split_s, times}
      end
    after
      Partition.teardown(p)
    end
  end
  |> List.flatten()

fmt = fn ms -> :erlang.float_to_binary(ms / 1, decimals: 0) <> " ms" end

IO.puts("""

Heal time after a 2|3 partition of 5 nodes (network namespaces, link cut between two bridges,
mode #{mode}#{if erl_args != [], do: ", -connect_all false", else: ""}), Cluster.Strategy.Epmd, net_ticktime 4 s, #{runs} runs per partition length
(load average #{load_before} before, #{loadavg.()} after; #{System.schedulers_online()} cores, shared machine):

| distribution | config | partition | median | max | all runs | target ≤ #{target_ms} ms |
|---|---|---:|---:|---:|---|:---:|\
""")

for {dist, config, split_s, times} <- results do
  IO.puts(
    "| #{dist} | #{config} | #{split_s} s | #{fmt.(median.(times))} | #{fmt.(Enum.max(times))} | " <>
      "#{Enum.map_join(times, ", ", &:erlang.float_to_binary(&1 / 1, decimals: 0))} | " <>
      "#{if Enum.max(times) <= target_ms, do: "yes", else: "NO"} |"
  )
end

IO.puts("\nlibcluster 3.5 with `timeout: 5000` (issue 12, not measured here): 0.7–2.9 s.")
