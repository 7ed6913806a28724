# Formation of a full mesh of N real nodes on loopback, every node running Cluster.Strategy.Epmd
# with all N names and starting its topology at about the same moment.
#
#     MIX_ENV=test mix run bench/membership/formation.exs
#     NS=10,25,40 RUNS=3 MEMBERSHIP='[pace: :infinity]' MIX_ENV=test mix run bench/membership/formation.exs
#
# A quick loopback stand-in for bench/scale.exs (one host, one epmd, no namespaces, no root): it
# shows what the dialling order and concurrency do to formation time, connect calls and the
# disconnects `global` makes. The coordinator (this VM) is not distributed: it drives the nodes
# over :peer's standard I/O, so it never joins the mesh it measures.
#
# Per run and N it prints: formation (from the first topology start until every node sees the
# other N-1: on one host every node is up before any topology starts, so the first one to start
# can dial them all), the connect calls (telemetry `[:libcluster, :connect_node, :ok | :error]`, all
# nodes together, against the N(N-1)/2 minimum), how many failed, and the nodedowns seen by all
# nodes: those with reason `disconnect` (an `erlang:disconnect_node/1`: `global`'s partition
# prevention, since this topology never prunes) and the others. MEMBERSHIP is an Elixir keyword
# list given as the topology's `membership:` options.
Code.require_file("../support/stats.exs", __DIR__)

alias LibclusterRs.Test.Peer

# A module defined in a script exists only in this VM: its object code is sent to the nodes.
{:module, _, watch_bin, _} =
  defmodule Bench.Formation.Watch do
    # Runs on every node: counts connect telemetry and nodedowns by reason, and notes the first
    # moment this node sees `want` other nodes.
    def start(want) do
      parent = self()

      pid =
        spawn(fn ->
          :ok = :net_kernel.monitor_nodes(true, [{:node_type, :visible}, :nodedown_reason])
          counters = :counters.new(2, [:atomics])

          :telemetry.attach_many(
            {__MODULE__, self()},
            [[:libcluster, :connect_node, :ok], [:libcluster, :connect_node, :error]],
            fn [_, _, kind], _, _, c -> :counters.add(c, if(kind == :ok, do: 1, else: 2), 1) end,
            counters
          )

          send(parent, {:ready, self()})
          loop(%{want: want, formed_at: nil, counters: counters, downs: %{}})
        end)

      receive do
        {:ready, ^pid} -> pid
      end
    end

    defp loop(s) do
      receive do
        {:nodeup, _node, _} ->
          loop(check(s))

        {:nodedown, _node, info} ->
          reason = Keyword.get(info, :nodedown_reason)
          key = if reason == :disconnect, do: :disconnect, else: :other
          loop(%{s | downs: Map.update(s.downs, key, 1, &(&1 + 1))})

        {:report, from} ->
          send(
            from,
            {:report, node(),
             %{
               formed_at: s.formed_at,
               ok: :counters.get(s.counters, 1),
               error: :counters.get(s.counters, 2),
               downs: s.downs,
               seen: length(Node.list())
             }}
          )

          loop(s)
      end
    end

    defp check(%{formed_at: nil, want: want} = s) do
      if length(Node.list()) >= want, do: %{s | formed_at: System.system_time(:microsecond)}, else: s
    end

    defp check(s), do: s

    def report(pid) do
      send(pid, {:report, self()})

      receive do
        {:report, _node, r} -> r
      after
        5_000 -> :no_answer
      end
    end

    # Starts the topology here; returns the system time (us) it started at.
    def start_topology(topologies) do
      {:ok, sup} = Cluster.Supervisor.start_link([topologies])
      Process.unlink(sup)
      System.system_time(:microsecond)
    end
  end

ns = System.get_env("NS", "10,25") |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)
runs = String.to_integer(System.get_env("RUNS", "3"))
{membership, _} = Code.eval_string(System.get_env("MEMBERSHIP", "[]"))
loadavg = fn -> File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ") end

IO.puts("load average before: #{loadavg.()}; membership options: #{inspect(membership)}")

results =
  for n <- ns, run <- 1..runs do
    names = for i <- 1..n, do: :"f#{run}n#{String.pad_leading("#{i}", 3, "0")}@127.0.0.1"

    peers =
      names
      |> Task.async_stream(
        fn node ->
          [name, host] = node |> Atom.to_string() |> String.split("@")
          {pid, ^node} = Peer.start(name, host, args: [~c"+S", ~c"1:1", ~c"+A", ~c"1"])
          # Peer.start links the node to this short-lived task.
          Process.unlink(pid)
          {:module, _} = Peer.call(pid, :code, :ensure_loaded, [Cluster.Strategy.Epmd])
          pid
        end,
        max_concurrency: 8,
        timeout: 60_000
      )
      |> Enum.map(fn {:ok, pid} -> pid end)

    watchers =
      for pid <- peers do
        {:module, _} =
          Peer.call(pid, :code, :load_binary, [Bench.Formation.Watch, ~c"formation.exs", watch_bin])

        Peer.call(pid, Bench.Formation.Watch, :start, [n - 1])
      end

    topologies = [scale: [strategy: Cluster.Strategy.Epmd, config: [hosts: names], membership: membership]]

    started =
      peers
      |> Task.async_stream(&Peer.call(&1, Bench.Formation.Watch, :start_topology, [topologies]),
        max_concurrency: n,
        timeout: 30_000
      )
      |> Enum.map(fn {:ok, t} -> t end)

    first_start = Enum.min(started)
    deadline = System.monotonic_time(:millisecond) + 120_000

    _ =
      Stream.repeatedly(fn ->
        Process.sleep(100)
        Enum.zip_with(peers, watchers, fn pid, w -> Peer.call(pid, Bench.Formation.Watch, :report, [w]) end)
      end)
      |> Enum.find(fn rs ->
        Enum.all?(rs, &match?(%{formed_at: t} when t != nil, &1)) or
          System.monotonic_time(:millisecond) > deadline
      end)

    # Let late redials and global's last moves land before counting.
    Process.sleep(1_000)

    reports =
      Enum.zip_with(peers, watchers, fn pid, w -> Peer.call(pid, Bench.Formation.Watch, :report, [w]) end)

    formed? = Enum.all?(reports, &(&1.formed_at != nil and &1.seen == n - 1))
    formed_ms = if formed?, do: (Enum.max(Enum.map(reports, & &1.formed_at)) - first_start) / 1000

    calls = Enum.sum(Enum.map(reports, &(&1.ok + &1.error)))
    failed = Enum.sum(Enum.map(reports, & &1.error))
    disc = Enum.sum(Enum.map(reports, &Map.get(&1.downs, :disconnect, 0)))
    other = Enum.sum(Enum.map(reports, &Map.get(&1.downs, :other, 0)))

    IO.puts(
      "N=#{n} run #{run}: formed #{if formed?, do: "in #{Float.round(formed_ms, 1)} ms", else: "NOT (after 120 s)"}, " <>
        "#{calls} connect calls (min #{div(n * (n - 1), 2)}), #{failed} failed, " <>
        "nodedowns: #{disc} disconnect, #{other} other; load #{loadavg.()}"
    )

    peers |> Task.async_stream(&Peer.stop/1, max_concurrency: 16, timeout: 30_000) |> Stream.run()
    {n, formed_ms, calls, failed, disc, other}
  end

IO.puts("\n| N | formation median (ms) | connect calls | failed | disconnect nodedowns | other nodedowns |")
IO.puts("|---:|---:|---:|---:|---:|---:|")

for {n, rows} <- Enum.group_by(results, &elem(&1, 0)) |> Enum.sort() do
  med = fn i ->
    rows
    |> Enum.map(&elem(&1, i))
    |> Enum.reject(&is_nil/1)
    |> then(&if(&1 == [], do: "-", else: Bench.Stats.median(&1)))
  end

  IO.puts("| #{n} | #{med.(1)} | #{med.(2)} | #{med.(3)} | #{med.(4)} | #{med.(5)} |")
end

IO.puts("load average after: #{loadavg.()}")
