defmodule LibclusterRs.Test.DeadPeers do
  @moduledoc false
  # A topology holding one live peer next to K peers that never answer, on namespaces of one bridge
  # (198.18.<subnet>.0/24). Used by test/cluster/dead_peers_test.exs and bench/dead_peers.exs.
  #
  #   * host 1 runs the observer (a fresh BEAM per measurement, so that no half-open connection of an
  #     earlier run is left in its net_kernel), host 2 the live peer `live@<ip>`: its name sorts
  #     after every dead peer's `app@...`, so a membership that tries nodes in sorted order tries
  #     it last (the worst case)
  #   * silent peers: hosts 3.. whose port 4369 accepts and never says anything. The listen socket is
  #     opened in the namespace (gen_tcp's `netns` option) by a process of this VM and closed with it,
  #     so no OS process has to be found and killed afterwards
  #   * unreachable peers: `app@198.18.<subnet>.<200 + i>`, an address no namespace holds, so ARP
  #     gets no answer and a connect fails only after the kernel gives up (about 3 s)
  #
  # Needs root.

  alias LibclusterRs.Test.{Netns, Peer}

  defstruct [:net, :observer_host, :live_host, :live_node, silent: [], unreachable: [], listeners: []]

  @doc "Sets up namespaces for up to `max_dead` dead peers (half silent, rounded down; half unreachable)."
  def setup(subnet, max_dead) do
    silent_count = div(max_dead, 2)
    unreachable_count = max_dead - silent_count
    net = Netns.setup(subnet, 2 + silent_count)
    [observer, live | silent_hosts] = net.hosts

    # A setup that fails half-way removes what it made: namespaces left behind hold the subnet's
    # addresses, and every later setup of that subnet would fail on them.
    listeners =
      try do
        for h <- [observer, live], do: Netns.exec!(h.ns, "epmd", ["-daemon"])
        listeners = Enum.map(silent_hosts, &silent_listener(&1.ns))
        for h <- silent_hosts, do: wait_listening(h.ip)
        listeners
      rescue
        e ->
          Netns.teardown(net)
          reraise e, __STACKTRACE__
      end

    %__MODULE__{
      net: net,
      observer_host: observer,
      live_host: live,
      live_node: :"live@#{live.ip}",
      silent: Enum.map(silent_hosts, &:"app@#{&1.ip}"),
      unreachable: for(i <- 1..unreachable_count//1, do: :"app@198.18.#{subnet}.#{200 + i}"),
      listeners: listeners
    }
  end

  @doc "Stops the listeners and removes the namespaces (killing, by PID, what runs in them)."
  def teardown(%__MODULE__{} = dp) do
    for pid <- dp.listeners, do: Process.exit(pid, :kill)
    Netns.teardown(dp.net)
  end

  @doc "Starts the live peer; returns its :peer pid."
  def start_live(%__MODULE__{live_host: h}) do
    {pid, _node} = Peer.start("live", h.ip, netns: h.ns)
    pid
  end

  @doc "The `k` dead peers of a run: half unreachable, half silent, interleaved."
  def dead(%__MODULE__{} = dp, k) do
    unreachable = Enum.take(dp.unreachable, k - div(k, 2))
    silent = Enum.take(dp.silent, div(k, 2))

    if length(unreachable) + length(silent) != k do
      raise ArgumentError, "setup was made for fewer than #{k} dead peers"
    end

    interleave(unreachable, silent)
  end

  @doc """
  Starts a fresh observer, then an Epmd topology listing the `dead` nodes first and the live peer
  last (the worst order for a sequential connector). Returns `{join_ms, observer_pid}` where
  `join_ms` is measured on the observer from the start of `Cluster.Supervisor` to the live peer's
  nodeup. The caller stops the observer.
  """
  def join(%__MODULE__{} = dp, dead, name, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, 15_000)
    obs = start_observer(dp, name, opts)
    topologies = [bench: [strategy: Cluster.Strategy.Epmd, config: [hosts: dead ++ [dp.live_node]]]]
    us = Peer.call(obs, __MODULE__, :join_here, [topologies, dp.live_node, timeout], timeout + 5_000)
    {us / 1000, obs}
  end

  @doc """
  Starts a fresh observer node. `preload: true` loads every module of kernel, stdlib, elixir and
  libcluster_rs first, as a release (embedded mode) does at boot, so that the measurement does not
  include loading modules from disk on first use (interactive mode).
  """
  def start_observer(%__MODULE__{observer_host: h}, name, opts \\ []) do
    {obs, _node} = Peer.start(name, h.ip, netns: h.ns)
    if Keyword.get(opts, :preload, false), do: :ok = Peer.call(obs, __MODULE__, :preload_here, [], 60_000)
    obs
  end

  @doc false
  def preload_here do
    for app <- [:kernel, :stdlib, :elixir, :libcluster_rs],
        {:ok, modules} = :application.get_key(app, :modules),
        module <- modules,
        do: Code.ensure_loaded(module)

    :ok
  end

  @doc false
  # Runs on the observer.
  def join_here(topologies, live, timeout) do
    :ok = :net_kernel.monitor_nodes(true)
    t0 = System.monotonic_time(:microsecond)
    {:ok, sup} = Cluster.Supervisor.start_link([topologies])
    Process.unlink(sup)

    receive do
      {:nodeup, ^live} -> System.monotonic_time(:microsecond) - t0
    after
      timeout -> raise "#{inspect(live)} did not join within #{timeout} ms"
    end
  end

  @doc false
  # Runs on the observer: how long a plain `net_kernel.connect_node/1` to `node` takes, and its result.
  def connect_here(node) do
    {us, result} = :timer.tc(:net_kernel, :connect_node, [node])
    {us / 1000, result}
  end

  defp silent_listener(ns) do
    parent = self()

    pid =
      spawn(fn ->
        {:ok, listen} =
          :gen_tcp.listen(4369, [
            :binary,
            active: false,
            reuseaddr: true,
            backlog: 1024,
            netns: "/var/run/netns/#{ns}"
          ])

        send(parent, {:listening, self()})
        accept_forever(listen, [])
      end)

    receive do
      {:listening, ^pid} -> pid
    after
      5_000 -> raise "silent listener in #{ns} did not start"
    end
  end

  # Accepts and holds every connection, saying nothing.
  defp accept_forever(listen, held) do
    {:ok, sock} = :gen_tcp.accept(listen)
    accept_forever(listen, [sock | held])
  end

  defp wait_listening(ip) do
    {:ok, addr} = :inet.parse_address(to_charlist(ip))

    LibclusterRs.Test.Eventually.eventually(
      fn ->
        case :gen_tcp.connect(addr, 4369, [active: false], 200) do
          {:ok, s} ->
            :gen_tcp.close(s)
            true

          _ ->
            false
        end
      end,
      5_000
    )
  end

  defp interleave([a | as], [b | bs]), do: [a, b | interleave(as, bs)]
  defp interleave(as, []), do: as
  defp interleave([], bs), do: bs
end
