# Postgres heartbeat → connect latency, against a private PostgreSQL (Debian's package, started
# here in a temp dir on a free loopback port; stopped at the end).
#
#     MIX_ENV=prod mix run bench/strategies/postgres_latency.exs        # RUNS=15 to change
#     MIX_ENV=test mix run bench/strategies/postgres_latency.exs        # the debug build of the NIF
#
# An observer node A runs Cluster.Strategy.Postgres. Measured, on one host clock:
#
#   * heartbeat → connected: a fresh node B (no strategy) is announced by a heartbeat exactly as
#     libcluster_postgres sends it (`NOTIFY <channel>, '<B>'`), written at t0 to a psql session
#     that is already connected and authenticated; until A's `nodeup` of B. This is the path of
#     every heartbeat from a node A does not know yet: Postgres's delivery, A's checks, the
#     membership and the distribution handshake;
#   * topology start → connected: a fresh node B' (modules preloaded, as in a release) starts the
#     topology; until A's `nodeup` of B'. Adds B''s TCP connect, SCRAM authentication and LISTEN
#     before its announcement;
#   * baseline: A's `:net_kernel.connect_node/1` to a fresh node, without any strategy.
Code.require_file("bench/support/stats.exs")

# test/support is compiled in MIX_ENV=test only; the peers never need these modules.
unless Code.ensure_loaded?(LibclusterRs.Test.Peer) do
  for f <- ~w(eventually peer postgres_server), do: Code.require_file("test/support/#{f}.ex")
end

alias LibclusterRs.Test.{Peer, PostgresServer}

runs = String.to_integer(System.get_env("RUNS") || "15")
System.cmd("epmd", ["-daemon"])

pg = PostgresServer.start!()

for sql <- [
      "CREATE DATABASE app",
      "CREATE ROLE cluster LOGIN PASSWORD 'bench'",
      "GRANT CONNECT ON DATABASE app TO cluster"
    ],
    do: PostgresServer.psql!(pg, sql)

config = [hostname: "127.0.0.1", port: pg.port, username: "cluster", password: "bench", database: "app"]
topology = [pg: [strategy: Cluster.Strategy.Postgres, config: config]]
args = [args: [~c"-kernel", ~c"connect_all", ~c"false"]]

preload = """
for m <- [Cluster.Supervisor, Cluster.Strategy.Postgres, LibclusterRs.Discovery, LibclusterRs.Membership,
          LibclusterRs.Native, LibclusterRs.Config, LibclusterRs.NodeName],
    do: Code.ensure_loaded!(m)
:ok
"""

recorder = """
pid =
  spawn(fn ->
    :ok = :net_kernel.monitor_nodes(true)
    loop = fn loop, seen ->
      receive do
        {:nodeup, n} -> loop.(loop, Map.put(seen, n, System.system_time(:microsecond)))
        {:get, n, from} -> send(from, {:t, Map.get(seen, n)}); loop.(loop, seen)
        _ -> loop.(loop, seen)
      end
    end
    loop.(loop, %{})
  end)

Process.register(pid, :bench_nodeups)
:ok
"""

eval = fn peer, code, binding -> peer |> Peer.call(Code, :eval_string, [code, binding]) |> elem(0) end

nodeup_at = fn a, node ->
  Peer.wait_until(
    fn -> eval.(a, "send(:bench_nodeups, {:get, n, self()}); receive do {:t, t} -> t end", n: node) end,
    20_000
  )
end

{a, _na} = Peer.start("pgobs", "127.0.0.1", args)
:ok = eval.(a, preload, [])
:ok = eval.(a, recorder, [])
start_cluster = "{:ok, sup} = Cluster.Supervisor.start_link([t]); Process.unlink(sup); :ok"
:ok = eval.(a, start_cluster, t: topology)
Peer.wait_until(fn -> elem(Peer.call(a, Cluster, :status, [:pg]), 1).extra.connected end, 20_000)

# A psql session connected once, before any timing: each heartbeat is one line on its stdin.
psql =
  Port.open({:spawn_executable, Path.join(pg.bin, "psql")}, [
    :binary,
    :exit_status,
    args: ["-X", "-q", "-h", "127.0.0.1", "-p", "#{pg.port}", "-U", "cluster", "-d", "app"],
    env: [{~c"PGPASSWORD", ~c"bench"}]
  ])

Port.command(psql, "SELECT 1;\n")
channel = elem(Peer.call(a, Cluster, :status, [:pg]), 1).extra.channel

results =
  for i <- 1..runs do
    {h, nh} = Peer.start("pgbeat#{i}", "127.0.0.1", args)
    t0 = System.system_time(:microsecond)
    Port.command(psql, "NOTIFY #{channel}, '#{nh}';\n")
    beat = nodeup_at.(a, nh) - t0
    Peer.stop(h)

    {b, nb} = Peer.start("pgjoin#{i}", "127.0.0.1", args)
    :ok = eval.(b, preload, [])

    t0 =
      eval.(
        b,
        "t0 = System.system_time(:microsecond); {:ok, sup} = Cluster.Supervisor.start_link([t]); Process.unlink(sup); t0",
        t: topology
      )

    start = nodeup_at.(a, nb) - t0
    Peer.stop(b)

    # baseline: a fresh node dialled directly
    {c, nc} = Peer.start("pgdirect#{i}", "127.0.0.1", args)
    direct = eval.(a, "{us, true} = :timer.tc(fn -> :net_kernel.connect_node(n) end); us", n: nc)
    Peer.stop(c)
    Process.sleep(100)

    %{beat: beat / 1000, start: start / 1000, direct: direct / 1000}
  end

Port.close(psql)
Peer.stop(a)
PostgresServer.stop(pg)

show = fn key ->
  xs = Enum.map(results, & &1[key])

  "median #{Float.round(Bench.Stats.median(xs) / 1, 1)} ms  (#{xs |> Enum.sort() |> Enum.map_join(" ", &Float.round(&1 / 1, 1))})"
end

IO.puts(
  "Postgres strategy, #{runs} runs, MIX_ENV=#{Mix.env()}, PostgreSQL #{Path.basename(Path.dirname(pg.bin))} on loopback, modules preloaded"
)

IO.puts("heartbeat (NOTIFY) → connected:          #{show.(:beat)}")
IO.puts("topology start → connected:             #{show.(:start)}")
IO.puts("baseline connect_node to a fresh node:  #{show.(:direct)}")
IO.puts("load average: #{File.read!("/proc/loadavg") |> String.trim()}")
