# Cluster formation at scale: N real BEAM nodes, each in its own network namespace with its own
# epmd, on one bridge, clustered by Cluster.Strategy.Epmd listing all N nodes; libcluster_rs and
# libcluster 3.5 side by side, same harness, same config. docs/scale.md has the method and figures.
#
#     MIX_ENV=prod mix run bench/scale.exs                 (as root: it makes network namespaces)
#     NS=10,25,50,100 RUNS=3 LIBS=rs,3.5 MIX_ENV=prod mix run bench/scale.exs
#     RS_LIB=/work/wt/scale NS=100 LIBS=rs MIX_ENV=prod mix run bench/scale.exs
#
# Environment:
#   NS        node counts (default 10,25,50)                RUNS  runs per N and library (default 3)
#   LIBS      rs, 3.5 or both (default: both when libcluster 3.5 is built, else rs)
#   RS_LIB    checkout whose build the nodes load (default: this one); RS_ENV its Mix env (prod):
#             the nodes get -pa $RS_LIB/_build/$RS_ENV/lib/libcluster_rs/ebin (and its priv/ NIF)
#   LIBCLUSTER35  libcluster 3.5's ebin dir (default /work/ext/libcluster-3.5/ebin; see its README)
#   EPMD_TIMEOUT  the Epmd strategy's `timeout` config (default 5000: libcluster 3.5 redials every
#             5 s; the same config goes to both libraries, as a drop-in user would have it)
#   STRATEGY  epmd (default): Epmd listing all N; dns: DNSPoll (polling_interval = EPMD_TIMEOUT)
#             of nodes.scale.test against a dnsmasq holding N A records (nodes named n@<ip>);
#             gossip: Gossip on the bridge, group GOSSIP_GROUP (239.19.0.1) port GOSSIP_PORT
#             (45899), multicast_if = the node's own address, multicast_ttl 1, libcluster's
#             random 1..5 s heartbeat (GOSSIP_ROUTE=0 leaves out the namespaces' route for
#             224.0.0.0/4); kubernetes: Kubernetes, mode :ip, :pods lookup of app=scale against
#             the fake API server of bench/scale/kube.exs listing N pods (nodes named n@<ip>;
#             polling_interval = EPMD_TIMEOUT; libcluster_rs watches by default, 3.5 polls)
#   SCENARIOS formation (default), rolling, partition (comma-separated)
#   IDLE      1 (default): idle CPU and RSS per node, measured once per N and library after run 1
#   LOG_LEVEL the nodes' logger level (default warning); FORM_TIMEOUT ms (default 300000)
#   ERL_ARGS  extra erl arguments for every node, e.g. "-kernel prevent_overlapping_partitions false"
#   MEMBERSHIP  libcluster_rs only: a keyword list (Elixir syntax) given to the topology as its
#             `membership:` options, e.g. MEMBERSHIP='[pace: 4, pace_hold: 100]' (default: none)
#
# Nodes: n<i>@198.19.1.<i> in namespace lcs<i>, flags +S 1:1 +SDcpu 1 +SDio 1 +A 1, default kernel
# settings (prevent_overlapping_partitions on), the library's modules preloaded (as in a release).
# Every namespace holds permanent neighbour entries for all the others: without them, from about 40
# namespaces the kernel's one ARP table (gc_thresh3 = 1024) overflows and nothing forms.
# The coordinator (this script) is not distributed: it drives each node over :peer's standard I/O
# connection, so it never joins the mesh it measures. The nodes record their figures themselves
# (bench/scale/agent.exs), with the OS clock, which all of them share.
#
# Formation: from the last node's topology start to the moment the last node has seen all N-1
# others (and kept them: the full mesh must hold for 2 s). A fresh set of nodes for every run.

Process.flag(:trap_exit, true)
Code.require_file("bench/support/stats.exs")
Code.require_file("bench/scale/cluster.exs")
Code.require_file("bench/scale/kube.exs")
[{agent_mod, agent_bin}] = Code.require_file("bench/scale/agent.exs")
agent = {agent_mod, agent_bin}
alias Bench.Scale.{Agent, Cluster}

{uid, 0} = System.cmd("id", ["-u"])

if String.trim(uid) != "0" do
  IO.puts(:stderr, "bench/scale needs root (network namespaces) and iproute2")
  System.halt(1)
end

ints = fn var, default ->
  System.get_env(var, default) |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)
end

ns_list = ints.("NS", "10,25,50")
runs = String.to_integer(System.get_env("RUNS", "3"))
scenarios = System.get_env("SCENARIOS", "formation") |> String.split(",", trim: true)
idle? = System.get_env("IDLE", "1") == "1"
form_timeout = String.to_integer(System.get_env("FORM_TIMEOUT", "300000"))

strategy =
  case System.get_env("STRATEGY", "epmd") do
    s when s in ~w(epmd dns gossip kubernetes) -> String.to_atom(s)
    other -> raise ArgumentError, "STRATEGY must be epmd, dns, gossip or kubernetes, got: #{inspect(other)}"
  end

gossip_group = System.get_env("GOSSIP_GROUP", "239.19.0.1")
gossip_port = String.to_integer(System.get_env("GOSSIP_PORT", "45899"))

epmd_timeout =
  case System.get_env("EPMD_TIMEOUT", "5000") do
    "infinity" -> :infinity
    ms -> String.to_integer(ms)
  end

rs_root = System.get_env("RS_LIB", File.cwd!()) |> Path.expand()
rs_env = System.get_env("RS_ENV", "prod")
rs_ebin = Path.join([rs_root, "_build", rs_env, "lib", "libcluster_rs", "ebin"])
lc_ebin = System.get_env("LIBCLUSTER35", "/work/ext/libcluster-3.5/ebin")

unless File.exists?(Path.join(rs_ebin, "libcluster_rs.app")) and
         File.exists?(Path.join([rs_ebin, "..", "priv", "native", "libcluster_nif.so"])) do
  IO.puts(:stderr, "no libcluster_rs build in #{rs_ebin} (run `MIX_ENV=#{rs_env} mix compile` in #{rs_root})")
  System.halt(1)
end

libs =
  System.get_env("LIBS", if(File.dir?(lc_ebin), do: "rs,3.5", else: "rs"))
  |> String.split(",", trim: true)

if "3.5" in libs and not File.exists?(Path.join(lc_ebin, "Elixir.Cluster.Strategy.Epmd.beam")) do
  IO.puts(
    :stderr,
    "LIBS has 3.5 but #{lc_ebin} holds no libcluster build (see /work/ext/libcluster-3.5/README.md)"
  )

  System.halt(1)
end

elixir_paths = for app <- [:elixir, :logger], do: :code.lib_dir(app, :ebin) |> List.to_string()
log_level = System.get_env("LOG_LEVEL", "warning")
erl_args = System.get_env("ERL_ARGS", "") |> String.split(" ", trim: true) |> Enum.map(&to_charlist/1)

# MEMBERSHIP: libcluster_rs's `membership:` options for the topology (libcluster 3.5 has none).
membership =
  case System.get_env("MEMBERSHIP", "") |> String.trim() do
    "" ->
      []

    text ->
      value =
        try do
          {value, _} = Code.eval_string(text)
          value
        rescue
          e -> raise ArgumentError, "MEMBERSHIP: not an Elixir term (#{Exception.message(e)}): #{text}"
        end

      unless is_list(value) and value != [] and Keyword.keyword?(value) do
        raise ArgumentError,
              "MEMBERSHIP must be a non-empty keyword list such as '[pace: 4]', got: #{inspect(value)}"
      end

      value
  end

lib_spec = fn
  "rs" ->
    %{
      name: "libcluster_rs",
      paths: elixir_paths ++ [rs_ebin],
      apps: [:libcluster_rs],
      preload: rs_ebin,
      log_level: log_level,
      erl_args: erl_args,
      strategy: strategy,
      membership: membership
    }

  "3.5" ->
    %{
      name: "libcluster 3.5",
      paths: elixir_paths ++ [lc_ebin],
      # libcluster 3.5's Kubernetes strategy asks with :httpc (its application starts :inets, :ssl)
      apps: if(strategy == :kubernetes, do: [:logger, :inets, :ssl], else: [:logger]),
      # with Kubernetes, also the OTP applications its :httpc requests run on, loaded at boot as in
      # a release (otherwise its first list would load them, inside the measured time)
      preload:
        if(strategy == :kubernetes,
          do: [
            lc_ebin
            | Enum.map(~w(inets ssl public_key asn1 crypto)a, &List.to_string(:code.lib_dir(&1, :ebin)))
          ],
          else: lc_ebin
        ),
      log_level: log_level,
      erl_args: erl_args,
      strategy: strategy,
      membership: []
    }
end

loadavg = fn -> File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ") end
load1 = fn -> File.read!("/proc/loadavg") |> String.split() |> hd() |> String.to_float() end
median = &Bench.Stats.median/1
{clk, 0} = System.cmd("getconf", ["CLK_TCK"])
clk_tck = clk |> String.trim() |> String.to_integer()
fmt_ms = fn ms -> if ms >= 10_000, do: "#{Float.round(ms / 1000, 1)} s", else: "#{round(ms)} ms" end

defmodule Bench.Scale.Run do
  alias Bench.Scale.{Agent, Cluster}

  @doc """
  The topology node `i` starts (the same for all nodes but Gossip's `multicast_if`); `membership`
  (libcluster_rs only) goes in as `membership:`.
  """
  def topologies(nodes, timeout, strategy, membership, i) do
    [{name, spec}] = topology(nodes, timeout, strategy, i)
    if membership == [], do: [{name, spec}], else: [{name, spec ++ [membership: membership]}]
  end

  @doc "Starts every node's topology at once; returns the start times (OS µs), in node order."
  def start_topologies(started, nodes, timeout, strategy, membership) do
    started
    |> Task.async_stream(
      &Cluster.call(
        &1,
        Agent,
        :start_topology,
        [topologies(nodes, timeout, strategy, membership, &1.i)],
        60_000
      ),
      max_concurrency: length(started) + 1,
      timeout: 65_000
    )
    |> Enum.map(fn {:ok, at} -> at end)
  end

  defp topology(nodes, timeout, :epmd, _i) do
    [scale: [strategy: :"Elixir.Cluster.Strategy.Epmd", config: [hosts: nodes, timeout: timeout]]]
  end

  defp topology(_nodes, interval, :dns, _i) do
    [
      scale: [
        strategy: :"Elixir.Cluster.Strategy.DNSPoll",
        config: [query: Cluster.dns_query(), node_basename: "n", polling_interval: interval]
      ]
    ]
  end

  # libcluster 3.5's Gossip config (both libraries take it): the group and port, the node's own
  # bridge-side address as the multicast interface, TTL 1; the socket bound to 0.0.0.0 (default).
  defp topology(_nodes, _timeout, :gossip, i) do
    [
      scale: [
        strategy: :"Elixir.Cluster.Strategy.Gossip",
        config: [
          port: String.to_integer(System.get_env("GOSSIP_PORT", "45899")),
          multicast_addr: System.get_env("GOSSIP_GROUP", "239.19.0.1"),
          multicast_if: Cluster.ip(i),
          multicast_ttl: 1
        ]
      ]
    ]
  end

  # libcluster 3.5's Kubernetes config (both libraries take it); the API server is
  # bench/scale/kube.exs's (kubernetes.default.svc.cluster.local:443 in every namespace).
  defp topology(_nodes, interval, :kubernetes, _i) do
    [
      scale: [
        strategy: :"Elixir.Cluster.Strategy.Kubernetes",
        config: [
          mode: :ip,
          kubernetes_node_basename: "n",
          kubernetes_selector: "app=scale",
          kubernetes_namespace: "default",
          kubernetes_ip_lookup_mode: :pods,
          kubernetes_master: Bench.Scale.Kube.master(),
          kubernetes_service_account_path: Bench.Scale.Kube.sa_path(),
          polling_interval: interval
        ]
      ]
    ]
  end

  @doc """
  Waits until every node has seen all the others, and still does 2 s later with the same
  full_since everywhere. Returns {:ok, full_since per node} or {:timeout, connected counts}.
  """
  def await_mesh(started, deadline) do
    # a node too busy to answer counts as not formed yet
    statuses =
      Cluster.try_all(started, Agent, :status, [])
      |> Enum.map(fn
        {:no_answer, _} -> {nil, 0}
        status -> status
      end)

    sinces = Enum.map(statuses, &elem(&1, 0))

    cond do
      Enum.all?(sinces, &is_integer/1) ->
        Process.sleep(2_000)
        again = Cluster.try_all(started, Agent, :status, []) |> Enum.map(&elem(&1, 0))
        if again == sinces, do: {:ok, sinces}, else: await_mesh(started, deadline)

      System.monotonic_time(:millisecond) > deadline ->
        {:timeout, Enum.map(statuses, &elem(&1, 1))}

      true ->
        Process.sleep(500)
        await_mesh(started, deadline)
    end
  end

  def idle(started, clk_tck) do
    Process.sleep(5_000)
    t0 = Enum.map(started, &Cluster.cpu_ticks(&1.os_pid))
    Process.sleep(10_000)
    t1 = Enum.map(started, &Cluster.cpu_ticks(&1.os_pid))
    # % of one core over 10 s
    cpu = Enum.zip_with(t0, t1, fn a, b -> (b - a) * 100 / (clk_tck * 10) end)
    mem = Enum.map(started, &Cluster.rss_threads(&1.os_pid))
    %{cpu: cpu, rss_mb: Enum.map(mem, fn {kib, _} -> kib / 1024 end), threads: Enum.map(mem, &elem(&1, 1))}
  end

  def sum(reports, key), do: reports |> Enum.map(&Map.fetch!(&1, key)) |> Enum.sum()

  @doc "Waits until every node of 1..half sees only 1..half, and the others only the others."
  def await_split(started, half, deadline) do
    ok =
      Enum.all?(Cluster.call_all(started, Agent, :status, []) |> Enum.zip(started), fn {{_, c}, s} ->
        mine = if s.i <= half, do: half, else: length(started) - half
        c == mine - 1
      end)

    cond do
      ok -> true
      System.monotonic_time(:millisecond) > deadline -> false
      true -> Process.sleep(250) && await_split(started, half, deadline)
    end
  end

  @doc """
  Collateral nodedowns in a rolling restart: from all incarnations' event logs and the kill times
  `[{node, os_time_us}]`, the nodedowns at A of B that are not A's first nodedown of B after a kill
  of B (or of A itself, for events of A's earlier incarnation), split by cause.
  """
  def collateral(reports, kills) do
    by_node = Enum.group_by(reports, & &1.node, & &1.events)
    events = Map.new(by_node, fn {node, evs} -> {node, Enum.concat(evs)} end)
    kill_times = Enum.group_by(kills, &elem(&1, 0), &elem(&1, 1))

    downs = for {a, evs} <- events, {{t, _}, {:nodedown, b, _}} <- evs, do: {a, b, t}

    # the first nodedown of B at A after each kill of B is expected
    expected =
      for {a, evs} <- events, {b, ks} <- kill_times, k <- ks, reduce: MapSet.new() do
        acc ->
          first =
            Enum.find_value(evs, fn
              {{t, _}, {:nodedown, ^b, _}} when t >= k -> t
              _ -> nil
            end)

          if first, do: MapSet.put(acc, {a, b, first}), else: acc
      end

    near? = fn node, other, t, pred ->
      Enum.any?(Map.get(events, node, []), fn {{t2, _}, e} -> abs(t2 - t) <= 1_000_000 and pred.(e, other) end)
    end

    global? = fn e, other -> match?({:global, ^other, _}, e) end
    lib? = fn e, other -> match?({:disconnect_call, ^other, :lib}, e) end
    coll = Enum.reject(downs, &MapSet.member?(expected, &1))

    causes =
      Enum.map(coll, fn {a, b, t} ->
        cond do
          near?.(a, b, t, global?) or near?.(b, a, t, global?) -> :global
          near?.(a, b, t, lib?) or near?.(b, a, t, lib?) -> :library
          true -> :other
        end
      end)

    f = Enum.frequencies(causes)

    %{
      total: length(coll),
      global: Map.get(f, :global, 0),
      library: Map.get(f, :library, 0),
      other: Map.get(f, :other, 0)
    }
  end

  @doc """
  Where the tail of a formation goes: per-node full-mesh times (`sinces`, OS µs) after `from` (µs)
  as p50/p90/max, and the `k` links that came up last (the later of the two ends' last nodeup),
  each with the last connect_node call each end made towards the other before it (ms after
  `from`, and what it returned), so that a late link shows whether nobody dialled it, or a dial
  was slow or failed. `reports` are the agents' reports with `events: true`.
  """
  def tail(reports, sinces, from, k \\ 5) do
    rel = fn t -> round((t - from) / 1000) end
    sorted = sinces |> Enum.map(rel) |> Enum.sort()
    pct = fn p -> Enum.at(sorted, min(length(sorted) - 1, trunc(p * length(sorted)))) end
    events = Map.new(reports, &{&1.node, &1.events})

    last_up = fn a, b ->
      Enum.reduce(Map.get(events, a, []), nil, fn
        {{t, _}, {:nodeup, ^b, _}}, _ -> t
        _, acc -> acc
      end)
    end

    dial = fn a, b, before ->
      evs = Map.get(events, a, [])

      call =
        Enum.reduce(evs, nil, fn
          {{t, _}, {:connect_call, ^b, _}}, _ when t <= before -> t
          _, acc -> acc
        end)

      ret =
        call &&
          Enum.find_value(evs, fn
            {{t, _}, {:connect_ret, ^b, r}} when t >= call -> {rel.(t), r}
            _ -> nil
          end)

      if call, do: "#{rel.(call)} ms -> #{inspect(ret)}", else: "none"
    end

    names = Map.keys(events)

    links =
      for a <- names, b <- names, a < b, ta = last_up.(a, b), tb = last_up.(b, a), ta && tb do
        {max(ta, tb), a, b}
      end
      |> Enum.sort(:desc)
      |> Enum.take(k)

    IO.puts(
      "    full mesh per node (ms after the last topology start): p50 #{pct.(0.5)}, p90 #{pct.(0.9)}, max #{List.last(sorted)}"
    )

    for {t, a, b} <- links do
      IO.puts(
        "    late link #{a} <-> #{b} up at #{rel.(t)} ms; last dial by #{a}: #{dial.(a, b, t)}; by #{b}: #{dial.(b, a, t)}"
      )
    end

    :ok
  end
end

alias Bench.Scale.Run

formation = fn n, lib, run ->
  nodes = for i <- 1..n, do: Cluster.node_name(i, strategy)
  t_boot = System.monotonic_time(:millisecond)
  started = Cluster.start_nodes(1..n, nodes, lib, agent)

  try do
    boot_s = (System.monotonic_time(:millisecond) - t_boot) / 1000

    # PROFILE=1: call_time of the libraries' own functions on every node (bench/scale/agent.exs)
    profile? = System.get_env("PROFILE") == "1"

    if profile?,
      do: Cluster.call_all(started, Agent, :profile_on, [["Elixir.LibclusterRs.", "Elixir.Cluster."]])

    kube = Bench.Scale.Kube.current()
    if kube, do: Bench.Scale.Kube.clear_requests(kube)
    cpu0 = Enum.map(started, &Cluster.cpu_ticks(&1.os_pid))
    starts = Run.start_topologies(started, nodes, epmd_timeout, strategy, lib.membership)

    last_start = Enum.max(starts)
    spread_ms = (last_start - Enum.min(starts)) / 1000
    deadline = System.monotonic_time(:millisecond) + form_timeout
    result = Run.await_mesh(started, deadline)
    load = load1.()
    # CPU the nodes used from just before their topologies started until formed (+ the 2 s hold)
    cpu_s = (Enum.sum(Enum.map(started, &Cluster.cpu_ticks(&1.os_pid))) - Enum.sum(cpu0)) / clk_tck
    reports = Cluster.call_all(started, Agent, :report, [[events: true, reductions: true]])
    # API requests from the first topology start until the mesh was seen whole (2 s after)
    api = if kube, do: Bench.Scale.Kube.requests(kube)

    # Where the nodes' work went (REDUCTIONS=1): reductions since the topology start, summed over
    # all nodes by process kind, the top 12 (processes that ended in between are not counted).
    if profile? do
      started
      |> Cluster.call_all(Agent, :profile_report, [40])
      |> Enum.concat()
      |> Enum.reduce(%{}, fn {mfa, c, us}, acc ->
        Map.update(acc, mfa, {c, us}, fn {c0, u0} -> {c0 + c, u0 + us} end)
      end)
      |> Enum.sort_by(fn {_, {_, us}} -> -us end)
      |> Enum.take(20)
      |> Enum.each(fn {{m, f, a}, {c, us}} ->
        IO.puts("    call_time #{inspect(m)}.#{f}/#{a}: #{div(us, 1000)} ms in #{c} calls (all nodes)")
      end)
    end

    if System.get_env("REDUCTIONS") == "1" do
      total = reports |> Enum.flat_map(&Map.to_list(&1.reductions)) |> Enum.map(&elem(&1, 1)) |> Enum.sum()

      reports
      |> Enum.flat_map(&Map.to_list(&1.reductions))
      |> Enum.reduce(%{}, fn {k, r}, acc -> Map.update(acc, k, r, &(&1 + r)) end)
      |> Enum.sort_by(&(-elem(&1, 1)))
      |> Enum.take(12)
      |> Enum.each(fn {k, r} ->
        IO.puts("    reductions #{inspect(k)}: #{r} (#{Float.round(r * 100 / max(total, 1), 1)} %)")
      end)

      IO.puts("    reductions total: #{total}")
    end

    ms =
      case result do
        {:ok, sinces} -> (Enum.max(sinces) - last_start) / 1000
        {:timeout, _} -> nil
      end

    if ms, do: Run.tail(reports, elem(result, 1), last_start)

    idle = if idle? and run == 1 and ms, do: Run.idle(started, clk_tck)

    r = %{
      ms: ms,
      connects: Run.sum(reports, :connect_calls),
      failed: Run.sum(reports, :connect_failed),
      # calls that never returned: their task was killed (connect_timeout) or is still running
      abandoned:
        Run.sum(reports, :connect_calls) - Run.sum(reports, :connect_ok) - Run.sum(reports, :connect_failed),
      gdisc: Run.sum(reports, :global_disconnects),
      greq: Run.sum(reports, :global_requests),
      libdisc: Run.sum(reports, :lib_disconnects),
      nodedowns: Run.sum(reports, :nodedowns),
      errors: Run.sum(reports, :errors),
      warnings: Run.sum(reports, :warnings),
      load: load,
      idle: idle,
      gconnfail: Run.sum(reports, :global_connect_failures),
      reasons:
        reports
        |> Enum.map(& &1.nodedown_reasons)
        |> Enum.reduce(%{}, &Map.merge(&1, &2, fn _, a, b -> a + b end)),
      first_down:
        case reports |> Enum.map(& &1.first_nodedown) |> Enum.reject(&is_nil/1) do
          [] -> nil
          ts -> (Enum.min(ts) - last_start) / 1000
        end
    }

    formed =
      case result do
        {:ok, _} ->
          "formed in #{fmt_ms.(ms)}"

        {:timeout, counts} ->
          "NOT FORMED within #{form_timeout} ms (connected counts #{inspect(Enum.frequencies(counts))})"
      end

    IO.puts(
      "N=#{n} #{lib.name} run #{run}: #{formed}; starts spread #{round(spread_ms)} ms; " <>
        "connect calls #{r.connects} (failed #{r.failed}, abandoned #{r.abandoned}; minimum #{div(n * (n - 1), 2)}); " <>
        "global disconnects #{r.gdisc} (+#{r.greq} requested); library disconnects #{r.libdisc}; " <>
        "nodedowns #{r.nodedowns}; error lines #{r.errors}, warnings #{r.warnings}; " <>
        "boot #{Float.round(boot_s, 1)} s; CPU #{Float.round(cpu_s, 1)} s; load #{loadavg.()}" <>
        case api do
          {lists, watches} -> "; API requests: #{lists} lists, #{watches} watches"
          nil -> ""
        end
    )

    if r.nodedowns > 0 or r.gconnfail > 0 do
      IO.puts(
        "    first nodedown #{if r.first_down, do: fmt_ms.(r.first_down), else: "–"} after the last topology start; " <>
          "nodedown reasons #{inspect(r.reasons)}; global transitive connects failed #{r.gconnfail}"
      )
    end

    samples = reports |> Enum.flat_map(& &1.error_samples) |> Enum.take(3)
    for s <- samples, do: IO.puts("    error sample: #{s}")

    if idle do
      IO.puts(
        "    idle per node: CPU median #{Float.round(median.(idle.cpu), 2)} % (max #{Float.round(Enum.max(idle.cpu), 2)} %) of a core; " <>
          "RSS median #{Float.round(median.(idle.rss_mb), 1)} MB; threads #{median.(idle.threads)}"
      )
    end

    r
  after
    Cluster.kill_nodes(started)
  end
end

# Rolling restart: form, then kill -9 and restart node after node (ROLL_BATCH at a time, default
# 1), the next batch once the restarted nodes' topologies have started. Measured: time from the
# last topology start to the full mesh, nodes left out (not seeing all others ROLL_TIMEOUT ms after
# the last restart), and collateral nodedowns: a nodedown at A of B that is not A's first nodedown
# of B after B's kill, split by cause (global: global logged a disconnect between A and B within
# 1 s; library: the library called disconnect_node between them within 1 s; other).
roll_batch = String.to_integer(System.get_env("ROLL_BATCH", "1"))
roll_timeout = String.to_integer(System.get_env("ROLL_TIMEOUT", "60000"))

rolling = fn n, lib, run ->
  nodes = for i <- 1..n, do: Cluster.node_name(i, strategy)
  started = Cluster.start_nodes(1..n, nodes, lib, agent)
  alive = :ets.new(:alive, [:set, :public])
  for s <- started, do: :ets.insert(alive, {s.i, s})

  try do
    Run.start_topologies(started, nodes, epmd_timeout, strategy, lib.membership)
    {:ok, _} = Run.await_mesh(started, System.monotonic_time(:millisecond) + form_timeout)

    {old_events, kills, last_start} =
      started
      |> Enum.chunk_every(roll_batch)
      |> Enum.reduce({[], [], nil}, fn batch, {evs, kills, _} ->
        olds = Cluster.call_all(batch, Agent, :report, [[events: true]])
        killed_at = System.os_time(:microsecond)
        Cluster.kill_nodes(batch)
        fresh = Cluster.start_nodes(Enum.map(batch, & &1.i), nodes, lib, agent)
        for s <- fresh, do: :ets.insert(alive, {s.i, s})
        starts = Run.start_topologies(fresh, nodes, epmd_timeout, strategy, lib.membership)
        {evs ++ olds, kills ++ Enum.map(batch, &{&1.node, killed_at}), Enum.max(starts)}
      end)

    current = :ets.tab2list(alive) |> Enum.sort() |> Enum.map(&elem(&1, 1))
    result = Run.await_mesh(current, System.monotonic_time(:millisecond) + roll_timeout)
    finals = Cluster.call_all(current, Agent, :report, [[events: true]])

    {ms, left_out} =
      case result do
        {:ok, sinces} -> {(Enum.max(sinces) - last_start) / 1000, 0}
        {:timeout, counts} -> {nil, Enum.count(counts, &(&1 < n - 1))}
      end

    # the other nodes may dial a restarted node before its own topology starts: the mesh can be
    # whole before the last topology start (a negative figure); from the last kill it is not
    last_kill = kills |> Enum.map(&elem(&1, 1)) |> Enum.max()
    since_kill = if ms, do: ms + (last_start - last_kill) / 1000

    collateral = Run.collateral(old_events ++ finals, kills)
    if ms, do: Run.tail(finals, elem(result, 1), last_start)

    for sample <- finals |> Enum.flat_map(& &1.error_samples) |> Enum.uniq() |> Enum.take(3),
        do: IO.puts("    error sample: #{sample}")

    IO.puts(
      "N=#{n} #{lib.name} rolling (#{roll_batch} at a time) run #{run}: " <>
        if(ms,
          do:
            "full mesh #{fmt_ms.(ms)} after the last topology start (#{fmt_ms.(since_kill)} after the last kill)",
          else: "NO full mesh within #{roll_timeout} ms"
        ) <>
        "; nodes left out #{left_out}; collateral nodedowns #{collateral.total} (global #{collateral.global}, " <>
        "library #{collateral.library}, other #{collateral.other}); connect calls #{Run.sum(old_events ++ finals, :connect_calls)}; " <>
        "global disconnects #{Run.sum(old_events ++ finals, :global_disconnects)}; error lines #{Run.sum(old_events ++ finals, :errors)}; load #{loadavg.()}"
    )

    %{ms: ms, left_out: left_out, collateral: collateral}
  after
    Cluster.kill_nodes(:ets.tab2list(alive) |> Enum.map(&elem(&1, 1)))
  end
end

# Partition: form, then split hosts 1..N/2 from the rest with silent drops (neighbour entries to
# an unused MAC), wait until every node sees only its own half, hold until HOLD s (default 30, the
# issue's "held 30 s") after the split, heal. Measured: the hold actually kept, time from the heal
# to the full mesh, nodes left out (not seeing all others 120 s after the heal), and per phase
# (split: from the split to the heal; heal: from the heal to the end) nodedowns by reason,
# disconnects made by `global` and by the library, connect calls. The nodes' net_ticktime is
# TICKTIME (default 4: with the default 60 s a split of HOLD s breaks no connection), set once the
# mesh has formed (TICK_AT=split, the default: :net_kernel.set_net_ticktime(TICKTIME, 1) on every
# node, then a wait until every node runs with it), or at boot with `-kernel net_ticktime`
# (TICK_AT=boot; at N = 100 on this machine a 4 s tick during formation makes connections time out
# faster than they are set up, and the mesh never forms).
hold_s = String.to_integer(System.get_env("HOLD", "30"))
ticktime = System.get_env("TICKTIME", "4")

tick_at =
  case System.get_env("TICK_AT", "split") do
    t when t in ["split", "boot"] -> t
    other -> raise ArgumentError, "TICK_AT must be split or boot, got: #{inspect(other)}"
  end

set_tick = fn started ->
  t = String.to_integer(ticktime)
  Cluster.call_all(started, :net_kernel, :set_net_ticktime, [t, 1])

  Stream.repeatedly(fn ->
    Process.sleep(250)
    Cluster.call_all(started, :net_kernel, :get_net_ticktime, [])
  end)
  |> Enum.find(fn ticks -> Enum.all?(ticks, &(&1 == t)) end)
end

partition = fn n, lib, run ->
  lib =
    if tick_at == "boot",
      do: %{lib | erl_args: lib.erl_args ++ [~c"-kernel", ~c"net_ticktime", to_charlist(ticktime)]},
      else: lib

  nodes = for i <- 1..n, do: Cluster.node_name(i, strategy)
  started = Cluster.start_nodes(1..n, nodes, lib, agent)

  reasons = fn reports ->
    reports
    |> Enum.map(& &1.nodedown_reasons)
    |> Enum.reduce(%{}, &Map.merge(&1, &2, fn _, a, b -> a + b end))
  end

  delta = fn later, earlier ->
    r1 = reasons.(later)
    r0 = reasons.(earlier)
    by_reason = for {k, v} <- r1, v - Map.get(r0, k, 0) > 0, into: %{}, do: {k, v - Map.get(r0, k, 0)}
    d = fn key -> Run.sum(later, key) - Run.sum(earlier, key) end

    "nodedowns #{d.(:nodedowns)} #{inspect(by_reason)}; global disconnects #{d.(:global_disconnects)} " <>
      "(+#{d.(:global_requests)} requested); library disconnects #{d.(:lib_disconnects)}; " <>
      "connect calls #{d.(:connect_calls)} (failed #{d.(:connect_failed)}); error lines #{d.(:errors)}"
  end

  try do
    Run.start_topologies(started, nodes, epmd_timeout, strategy, lib.membership)

    # a mesh that never forms is reported, not a crash of the whole bench
    with {:timeout, counts} <- Run.await_mesh(started, System.monotonic_time(:millisecond) + form_timeout),
         do: throw({:not_formed, counts})

    if tick_at == "split", do: set_tick.(started)
    before = Cluster.call_all(started, Agent, :report, [])
    split_at = System.monotonic_time(:millisecond)
    Cluster.split(n)
    half = div(n, 2)
    noticed = Run.await_split(started, half, System.monotonic_time(:millisecond) + 120_000)
    noticed_s = (System.monotonic_time(:millisecond) - split_at) / 1000
    Process.sleep(max(hold_s * 1000 - (System.monotonic_time(:millisecond) - split_at), 0))
    at_heal = Cluster.call_all(started, Agent, :report, [])
    heal_start = System.monotonic_time(:millisecond)
    Cluster.heal(n)
    held_s = (heal_start - split_at) / 1000
    healed_at = System.os_time(:microsecond)
    result = Run.await_mesh(started, System.monotonic_time(:millisecond) + 120_000)
    after_ = Cluster.call_all(started, Agent, :report, [])

    {ms, left_out} =
      case result do
        {:ok, sinces} -> {(Enum.max(sinces) - healed_at) / 1000, 0}
        {:timeout, counts} -> {nil, Enum.count(counts, &(&1 < n - 1))}
      end

    IO.puts(
      "N=#{n} #{lib.name} partition #{half}|#{n - half} run #{run}: net_ticktime #{ticktime} (set at #{tick_at}); held #{held_s} s (HOLD #{hold_s}); " <>
        "split noticed everywhere after #{if noticed, do: "#{noticed_s} s", else: "NEVER"}; " <>
        if(ms, do: "full mesh #{fmt_ms.(ms)} after the heal", else: "NO full mesh within 120 s of the heal") <>
        "; nodes left out #{left_out}; load #{loadavg.()}\n" <>
        "    split phase: #{delta.(at_heal, before)}\n" <>
        "    heal phase:  #{delta.(after_, at_heal)}"
    )

    %{ms: ms, left_out: left_out}
  catch
    {:not_formed, counts} ->
      IO.puts(
        "N=#{n} #{lib.name} partition run #{run}: NOT FORMED within #{form_timeout} ms, no split made " <>
          "(connected counts #{inspect(Enum.frequencies(counts))}); load #{loadavg.()}"
      )

      %{ms: nil, left_out: nil}
  after
    Cluster.kill_nodes(started)
  end
end

IO.puts(
  "bench/scale: N=#{Enum.join(ns_list, ",")}, #{runs} runs, libs #{Enum.join(libs, ",")}, " <>
    "strategy #{strategy}#{if strategy == :gossip, do: " #{gossip_group}:#{gossip_port}"} (timeout/polling_interval #{inspect(epmd_timeout)}), libcluster_rs from #{rs_ebin}, " <>
    "membership #{inspect(membership)}#{if erl_args != [], do: ", erl args #{Enum.join(erl_args, " ")}"}; load #{loadavg.()}"
)

# One run at a time: a second run's cleanup would delete the first one's namespaces.
owner = "/tmp/lcs-bench.pid"

case File.read(owner) do
  {:ok, pid} ->
    if File.exists?("/proc/#{String.trim(pid)}") and String.trim(pid) != System.pid() do
      IO.puts(:stderr, "another bench/scale run (OS pid #{String.trim(pid)}) owns the lcs* namespaces")
      System.halt(1)
    end

  _ ->
    :ok
end

File.write!(owner, System.pid())
Cluster.cleanup()

results =
  try do
    for n <- ns_list do
      Cluster.setup(n, strategy)
      kube = if strategy == :kubernetes, do: Bench.Scale.Kube.start(Enum.map(1..n, &Cluster.ip/1))

      try do
        per_lib =
          for run <- 1..runs, lib <- libs, reduce: %{} do
            acc ->
              spec = lib_spec.(lib)
              r = if "formation" in scenarios, do: formation.(n, spec, run)
              if "rolling" in scenarios, do: rolling.(n, spec, run)
              if "partition" in scenarios, do: partition.(n, spec, run)
              Map.update(acc, lib, [r], &(&1 ++ [r]))
          end

        {n, per_lib, loadavg.()}
      after
        if kube, do: Bench.Scale.Kube.stop(kube)
        Cluster.cleanup()
      end
    end
  after
    Cluster.cleanup()
    File.rm(owner)
  end

strategy_title =
  case strategy do
    :epmd ->
      "Epmd with all N hosts (timeout: #{inspect(epmd_timeout)})"

    :dns ->
      "DNSPoll of N A records (polling_interval #{inspect(epmd_timeout)})"

    :gossip ->
      "Gossip on the bridge (group #{gossip_group}:#{gossip_port}, heartbeats every 1..5 s)"

    :kubernetes ->
      "Kubernetes, :pods of a fake API server listing N pods (polling_interval #{inspect(epmd_timeout)})"
  end

if "formation" in scenarios do
  cell = fn
    nil ->
      {"–", "–", "–", nil}

    rs ->
      ok = rs |> Enum.map(& &1.ms) |> Enum.reject(&is_nil/1)
      not_formed = length(rs) - length(ok)

      time =
        case ok do
          [] -> "not formed"
          _ -> "#{fmt_ms.(median.(ok))} (#{fmt_ms.(Enum.min(ok))}–#{fmt_ms.(Enum.max(ok))})"
        end

      time = if not_formed > 0, do: time <> ", #{not_formed} not formed", else: time
      c = "#{round(median.(Enum.map(rs, & &1.connects)))} (#{round(median.(Enum.map(rs, & &1.failed)))})"
      g = "#{round(median.(Enum.map(rs, & &1.gdisc)))}"
      {time, c, g, if(ok == [], do: nil, else: median.(ok))}
  end

  IO.puts("""

  Formation, #{strategy_title}, medians of #{runs} runs (min–max);
  connect calls (failed) and global disconnects are medians of the per-run totals over all nodes.

  | N | libcluster_rs | connects (failed) | global disconnects | libcluster 3.5 | connects (failed) | global disconnects | rs / 3.5 | load avg |
  |---|---|---|---|---|---|---|---|---|\
  """)

  for {n, per_lib, load} <- results do
    {rt, rc, rg, rm} = cell.(per_lib["rs"])
    {lt, lc, lg, lm} = cell.(per_lib["3.5"])
    ratio = if rm && lm && lm > 0, do: "#{Float.round(rm / lm, 2)}×", else: "–"

    IO.puts(
      "| #{n} (min #{div(n * (n - 1), 2)}) | #{rt} | #{rc} | #{rg} | #{lt} | #{lc} | #{lg} | #{ratio} | #{load} |"
    )
  end

  idle_rows =
    for {n, per_lib, _} <- results, {lib, [%{idle: idle} | _]} <- per_lib, idle != nil do
      "| #{n} | #{lib_spec.(lib).name} | #{Float.round(median.(idle.cpu), 2)} % (max #{Float.round(Enum.max(idle.cpu), 2)} %) | " <>
        "#{Float.round(median.(idle.rss_mb), 1)} MB | #{median.(idle.threads)} |"
    end

  if idle_rows != [] do
    IO.puts("\nIdle per node once formed (10 s, after 5 s settling), medians over the nodes:\n")
    IO.puts("| N | library | CPU, % of one core | RSS | threads |\n|---|---|---|---|---|")
    Enum.each(idle_rows, &IO.puts/1)
  end
end

IO.puts("\nload average at the end: #{loadavg.()}")
