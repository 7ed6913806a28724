defmodule Mix.Tasks.Libcluster.Discover do
  @shortdoc "Runs one discovery round of a topology, connecting nothing"

  @moduledoc """
  A discovery dry run: runs one round of a topology's discovery from the project's config, prints
  the nodes it found and, in plain words, what is wrong. Nothing is connected or disconnected, and
  the `:libcluster_rs` application is not started.

      $ mix libcluster.discover            # every configured topology
      $ mix libcluster.discover k8s        # one topology
      $ MIX_ENV=prod mix libcluster.discover dns --timeout 5000 --shortnames

  Topologies are read from `config :libcluster, topologies: [...]` and
  `config :libcluster_rs, topologies: [...]` (runtime config included), with `{:system, ...}` values
  resolved as at start.

  For each topology it prints:

    * the nodes found (for a streaming strategy such as gossip: the nodes seen until `--timeout`;
      gossip only listens during a dry run, it sends no heartbeat, so no node dials this one)
    * the error the strategy reported, e.g. the DNS name that does not resolve and the server asked,
      or the RBAC rule a Kubernetes service account is missing
    * node names whose host part cannot work with the distribution's name mode: a host without dots
      under long names (`--name`), a fully qualified host or an IP address under short names
      (`--sname`). The mode is this VM's when it is distributed, else the one given with
      `--longnames`/`--shortnames`; without either, long names (what releases use with
      `RELEASE_DISTRIBUTION=name`) are assumed and the mismatch is only a warning.

  ## Static topologies (Epmd, ErlangHosts, LocalEpmd)

  A static topology is not echoed back: the epmd of every host it names is asked natively (the EPMD
  `NAMES` request, all hosts at once, each within 5 s) which node names are registered there.

    * `Cluster.Strategy.Epmd` - each listed node is reported as registered, or as not registered
      (with the names that host's epmd does list); hosts whose epmd did not answer are reported
      with the reason (refused, timeout, no such host...)
    * `Cluster.Strategy.ErlangHosts` - the nodes registered on each host of `.hosts.erlang`, and
      the hosts that did not answer
    * `Cluster.Strategy.LocalEpmd` - the nodes registered in this host's epmd (a VM that is not
      distributed uses this machine's host name, as `--name` or, with `--shortnames`, `--sname`
      would)

  Example:

      $ mix libcluster.discover static
      topology :static
        strategy: Cluster.Strategy.Epmd
        asked epmd (port 4369) on 2 host(s) for the 3 listed node(s) in 3 ms
        registered (1):
          app@10.0.0.1
        not registered (1): their host's epmd does not list them; they are dialled when they start
          app2@10.0.0.1 (epmd on 10.0.0.1 lists: app, other)
        epmd on 10.0.0.2 did not answer (timeout): epmd on 10.0.0.2:4369 did not answer within 5s

  ## Options

    * `--timeout MS` - how long to wait for the round (default `10000`)
    * `--longnames` / `--shortnames` - the name mode the nodes will run with
    * `--epmd-port PORT` - the epmd port of static topologies (default: the topology's
      `epmd_port`, else `ERL_EPMD_PORT`, else `4369`)

  ## Exit status

    * `0` - every topology's discovery succeeded (possibly finding no nodes: that is printed). For
      a static topology: every host's epmd answered and at least one node is there; listed nodes
      that are absent while others are there are printed but do not fail the run (a node that is
      not started yet is dialled when it starts)
    * `1` - a discovery failed or timed out, a DNS strategy found no node (the name does not
      exist, NXDOMAIN, or has no records of the types asked), a static topology's host did not
      answer or none of its nodes is registered, the strategy disabled itself (`:ignore`), or
      node names do not suit the name mode given
    * `2` - bad usage or config: unknown topology, invalid topology config, or a custom strategy
      (one not built on `LibclusterRs.Discovery` cannot run without connecting)

  Only built-in strategies (and custom ones built on `LibclusterRs.Discovery`) can be dry-run: the
  task runs the strategy's real discovery process with a membership that records what it is told
  instead of connecting. A strategy that would announce this node (gossip) implements the optional
  callback `dry_run/1` (`impl -> impl`), called between `init/1` and `discover/2`; one that can say
  why a round found nothing (DNS) implements `dry_run_empty/1`. The task's
  VM is not distributed; strategies that need this node's own name (`LocalEpmd`) need it to be:

      $ elixir --sname dryrun -S mix libcluster.discover local
  """
  use Mix.Task

  alias LibclusterRs.{Discovery, EpmdProbe, NodeName}
  alias __MODULE__.Recorder
  alias Cluster.Strategy.{Epmd, ErlangHosts, LocalEpmd}

  @switches [timeout: :integer, longnames: :boolean, shortnames: :boolean, epmd_port: :integer]
  @static [Epmd, ErlangHosts, LocalEpmd]

  @impl Mix.Task
  def run(args) do
    {opts, argv, invalid} = OptionParser.parse(args, strict: @switches)

    status =
      cond do
        invalid != [] ->
          Mix.shell().error("unknown option(s): #{Enum.map_join(invalid, ", ", &elem(&1, 0))}")
          2

        length(argv) > 1 ->
          Mix.shell().error(
            "usage: mix libcluster.discover [topology] [--timeout MS] [--longnames | --shortnames]"
          )

          2

        true ->
          Mix.Task.run("app.config")
          _ = Application.ensure_all_started(:crypto)
          main(List.first(argv), opts)
      end

    if status != 0, do: exit({:shutdown, status})
    :ok
  end

  @doc false
  # Returns the exit status.
  @spec main(String.t() | nil, Keyword.t()) :: non_neg_integer()
  def main(name, opts) do
    topologies =
      Keyword.merge(
        Application.get_env(:libcluster, :topologies) || [],
        Application.get_env(:libcluster_rs, :topologies) || []
      )

    selected =
      case name do
        nil -> topologies
        name -> Enum.filter(topologies, fn {t, _} -> Atom.to_string(t) == name end)
      end

    cond do
      topologies == [] ->
        Mix.shell().error(
          "no topologies configured: expected `config :libcluster, topologies: [...]` or " <>
            "`config :libcluster_rs, topologies: [...]` (for MIX_ENV=#{Mix.env()})"
        )

        2

      selected == [] ->
        Mix.shell().error(
          "unknown topology #{inspect(name)}; configured: " <>
            Enum.map_join(topologies, ", ", fn {t, _} -> Atom.to_string(t) end)
        )

        2

      true ->
        selected |> Enum.map(fn {t, spec} -> dry_run(t, spec, opts) end) |> Enum.max()
    end
  end

  defp dry_run(topology, spec, opts) do
    Mix.shell().info("topology #{inspect(topology)}")

    try do
      {strategy, state} = Cluster.Supervisor.topology_state!(topology, spec)
      Mix.shell().info("  strategy: #{inspect(strategy)}")

      cond do
        strategy in @static ->
          probe_static(strategy, state, opts)

        discovery?(strategy) ->
          run_round(strategy, state, opts)

        true ->
          fail(
            2,
            "#{inspect(strategy)} is a custom strategy (not built on LibclusterRs.Discovery): it cannot be " <>
              "run without connecting"
          )
      end
    rescue
      e in ArgumentError -> fail(2, "invalid config: " <> Exception.message(e))
    end
  end

  defp discovery?(strategy) do
    behaviours = strategy.module_info(:attributes) |> Keyword.get_values(:behaviour) |> List.flatten()
    Code.ensure_loaded?(strategy) and function_exported?(strategy, :discover, 2) and Discovery in behaviours
  end

  # The real LibclusterRs.Discovery runs the round, in dry-run mode (the strategy's `dry_run/1`
  # impl, no registration), with a recorder as its membership target: the outcomes come back here
  # as messages, nothing is connected.
  defp run_round(strategy, state, opts) do
    timeout = Keyword.get(opts, :timeout, 10_000)
    started = System.monotonic_time(:millisecond)

    case Discovery.start(strategy, state, membership: {Recorder, self()}, dry_run: true) do
      :ignore ->
        fail(1, "the strategy returned :ignore: its config or environment disables it (see the log above)")

      # Config is validated in the strategy's init: a bad value raises an ArgumentError naming the key.
      {:error, {:shutdown, {:init_failed, :error, %ArgumentError{} = e, _stacktrace}}} ->
        fail(2, "invalid config: " <> Exception.message(e))

      {:error, {:shutdown, {failed, kind, reason, stacktrace}}} when failed in [:init_failed, :raised] ->
        fail(1, "the strategy raised: " <> Exception.format(kind, reason, stacktrace))

      {:ok, pid} ->
        ref = Process.monitor(pid)
        acc = %{discovered: nil, seen: MapSet.new(), errors: [], impl: nil, timed_out: false, raised: nil}
        acc = collect(pid, ref, acc, started + timeout)
        Process.demonitor(ref, [:flush])
        if Process.alive?(pid), do: GenServer.stop(pid)

        case acc.raised do
          {kind, reason, stacktrace} ->
            fail(1, "the strategy raised: " <> Exception.format(kind, reason, stacktrace))

          nil ->
            report(acc, System.monotonic_time(:millisecond) - started, timeout, opts, {strategy, acc.impl})
        end
    end
  end

  defp collect(pid, ref, acc, deadline) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {Recorder, :discovered, nodes} ->
        collect(pid, ref, %{acc | discovered: MapSet.union(acc.discovered || MapSet.new(), nodes)}, deadline)

      {Recorder, :seen, nodes} ->
        collect(pid, ref, %{acc | seen: MapSet.union(acc.seen, MapSet.new(nodes))}, deadline)

      {Recorder, :failed, error} ->
        collect(pid, ref, %{acc | errors: acc.errors ++ [error]}, deadline)

      # A round ends when it finishes; a stream (gossip) at its first complete result or error, else
      # at the deadline with what it has seen.
      {Recorder, :round_finished, info} ->
        acc = %{acc | impl: info.impl}

        if (info.mode == :round and info.result == :ok) or acc.errors != [] or acc.discovered != nil,
          do: acc,
          else: collect(pid, ref, acc, deadline)

      {:DOWN, ^ref, :process, _pid, {:shutdown, {:raised, kind, reason, stacktrace}}} ->
        %{acc | raised: {kind, reason, stacktrace}}

      {:DOWN, ^ref, :process, _pid, reason} ->
        %{acc | raised: {:exit, reason, []}}
    after
      wait -> %{acc | timed_out: Discovery.status(pid).mode == :round}
    end
  end

  defp report(acc, elapsed, timeout, opts, {strategy, impl}) do
    # This node itself is never connected to; leave it out.
    nodes =
      MapSet.union(acc.discovered || MapSet.new(), acc.seen) |> MapSet.delete(Node.self()) |> Enum.sort()

    cond do
      acc.errors != [] ->
        if nodes != [] do
          Mix.shell().info("  found #{length(nodes)} node(s) before the failure (an incomplete list)")
          for node <- nodes, do: Mix.shell().info("    #{node}")
        end

        for {kind, message} <- acc.errors, do: Mix.shell().error("  discovery failed (#{kind}): #{message}")
        Mix.shell().error("  nothing would be pruned: a failed round keeps the last known nodes")

        # Only a local configuration failure can be this VM's lack of a name; a server's answer is not.
        if not Node.alive?() and Enum.any?(acc.errors, &match?({:config, _}, &1)) do
          Mix.shell().error(
            "  (this VM is not distributed; if the strategy needs this node's name, run " <>
              "`elixir --sname dryrun -S mix libcluster.discover`)"
          )
        end

        1

      acc.timed_out ->
        fail(1, "discovery did not finish within #{timeout} ms")

      nodes == [] and impl != nil and function_exported?(strategy, :dry_run_empty, 1) ->
        # A DNS strategy that found nothing: the name does not exist or has no records of the
        # types asked. Almost always a wrong name or record type; say which and where.
        fail(1, "found no node in #{elapsed} ms: " <> strategy.dry_run_empty(impl))

      true ->
        Mix.shell().info("  found #{length(nodes)} node(s) in #{elapsed} ms")
        for node <- nodes, do: Mix.shell().info("    #{node}")
        if nodes == [], do: Mix.shell().info("  (discovery succeeded but returned no nodes)")
        name_mode(nodes, opts)
    end
  end

  defp name_mode(nodes, opts) do
    {longnames?, source} =
      cond do
        Node.alive?() -> {:net_kernel.longnames(), :vm}
        opts[:shortnames] -> {false, :given}
        opts[:longnames] -> {true, :given}
        true -> {true, :assumed}
      end

    problems = Enum.flat_map(nodes, &List.wrap(LibclusterRs.NodeName.mode_problem(&1, longnames?)))

    cond do
      problems == [] ->
        Mix.shell().info("  OK")
        0

      source == :assumed ->
        Mix.shell().info(
          "  warning: assuming long names (--name); pass --shortnames if the nodes use --sname"
        )

        for p <- problems, do: Mix.shell().info("  warning: " <> p)
        0

      true ->
        for p <- problems, do: Mix.shell().error("  cannot connect to " <> p)
        1
    end
  end

  ## Static topologies: ask each host's epmd which of the nodes are really there

  defp probe_static(strategy, state, opts) do
    case strategy.init(state) do
      :ignore ->
        fail(1, "the strategy returned :ignore: its config or environment disables it (see the log above)")

      {:ok, impl, _discovery_opts} ->
        probe(strategy, impl, opts)
    end
  rescue
    e in ArgumentError -> fail(2, "invalid config: " <> Exception.message(e))
  end

  defp probe(Epmd, listed, opts) do
    listed = List.delete(listed, Node.self())
    hosts = listed |> Enum.map(&NodeName.host/1) |> Enum.uniq()
    port = opts[:epmd_port] || LocalEpmd.default_epmd_port()
    started = System.monotonic_time(:millisecond)
    answers = EpmdProbe.ask(hosts, port, epmd_timeout(opts))
    elapsed = System.monotonic_time(:millisecond) - started
    %{registered: registered, absent: absent, unanswered: unanswered} = EpmdProbe.compare(listed, answers)

    Mix.shell().info(
      "  asked epmd (port #{port}) on #{length(hosts)} host(s) for the #{length(listed)} listed node(s) " <>
        "in #{elapsed} ms"
    )

    Mix.shell().info("  registered (#{length(registered)}):")
    for node <- registered, do: Mix.shell().info("    #{node}")

    if absent != [] do
      Mix.shell().info(
        "  not registered (#{length(absent)}): their host's epmd does not list them; they are dialled " <>
          "when they start"
      )

      for {node, names} <- absent, do: Mix.shell().info("    #{node} (#{lists(NodeName.host(node), names)})")
    end

    report_static(registered, unanswered, "no listed node is registered in its host's epmd", opts)
  end

  defp probe(ErlangHosts, impl, opts) do
    port = opts[:epmd_port] || impl.epmd_port
    timeout = min(impl.epmd_timeout, epmd_timeout(opts))
    probe_hosts(impl.hosts, port, timeout, "the hosts of .hosts.erlang", opts)
  end

  defp probe(LocalEpmd, impl, opts) do
    host =
      if Node.alive?() do
        NodeName.host(Node.self())
      else
        host = local_host(opts)

        Mix.shell().info(
          "  (this VM is not distributed: node names use host #{host}, as for a node started on this " <>
            "machine with #{if opts[:shortnames], do: "--sname", else: "--name"})"
        )

        host
      end

    port = opts[:epmd_port] || impl.epmd_port
    probe_hosts([host], port, min(impl.timeout, epmd_timeout(opts)), "this host", opts)
  end

  defp probe_hosts(hosts, port, timeout, what, opts) do
    started = System.monotonic_time(:millisecond)
    answers = EpmdProbe.ask(hosts, port, timeout)
    elapsed = System.monotonic_time(:millisecond) - started
    Mix.shell().info("  asked epmd (port #{port}) on #{length(hosts)} host(s) in #{elapsed} ms")

    for {host, {:ok, names}} <- Enum.sort(answers), do: Mix.shell().info("  #{host}: #{lists(host, names)}")

    nodes = answers |> EpmdProbe.nodes() |> List.delete(Node.self())
    %{unanswered: unanswered} = EpmdProbe.compare([], answers)
    Mix.shell().info("  found #{length(nodes)} node(s)")
    for node <- nodes, do: Mix.shell().info("    #{node}")
    report_static(nodes, unanswered, "no node is registered in the epmd of #{what}", opts)
  end

  # 1 when a host did not answer or no node is there at all; listed nodes that are absent while
  # others are there are normal (they are dialled when they start), so they alone do not fail.
  defp report_static(found, unanswered, none, opts) do
    for {host, kind, message} <- unanswered do
      Mix.shell().error("  epmd on #{host} did not answer (#{kind}): #{message}")
    end

    cond do
      unanswered != [] -> 1
      found == [] -> fail(1, none)
      true -> name_mode(found, opts)
    end
  end

  defp lists(host, []), do: "epmd on #{host} lists no node"
  defp lists(host, names), do: "epmd on #{host} lists: " <> Enum.join(Enum.sort(names), ", ")

  defp epmd_timeout(opts), do: min(Keyword.get(opts, :timeout, 10_000), 5_000)

  defp local_host(opts) do
    if opts[:shortnames] do
      {:ok, host} = :inet.gethostname()
      to_string(host)
    else
      to_string(:net_adm.localhost())
    end
  end

  defp fail(status, message) do
    Mix.shell().error("  " <> message)
    status
  end

  defmodule Recorder do
    @moduledoc false
    # The membership target of a dry run's Discovery: every outcome is sent to the task's process
    # (`pid`), nothing is connected.

    def discovered(pid, nodes, _opts), do: send(pid, {__MODULE__, :discovered, MapSet.new(nodes)})
    def seen(pid, nodes, _opts), do: send(pid, {__MODULE__, :seen, nodes})
    def discovery_failed(pid, error), do: send(pid, {__MODULE__, :failed, error})
    def round_finished(pid, info), do: send(pid, {__MODULE__, :round_finished, info})
    def status(_pid, _timeout), do: :dry_run
    def leave(_pid, _timeout), do: :ok
  end
end
