defmodule LibclusterRs.Test.Partition do
  @moduledoc false
  # A cluster of real nodes that can be split in two and healed: hosts in network namespaces on one
  # subnet (198.18.<subnet>.0/24, see LibclusterRs.Test.Netns), side A on the Netns bridge and side B on a
  # second bridge, the two bridges joined by one veth pair (the "uplink"). `split/1` cuts the uplink;
  # each side still reaches itself; `heal/1` restores it. Two ways to cut (option `:mode`):
  #
  #   * `:drop` (default): as a router or firewall that drops traffic (iptables `-j DROP`): every
  #     host has permanent ARP entries for all the others, so with the uplink down packets across
  #     the split are sent and lost silently. A TCP connect across the split hangs, its SYNs lost,
  #     until the connect's own deadline
  #   * `:link`: the uplink is set down, as a switch failure: ARP across the split fails, so a
  #     connect fails within about 3 s with `ehostunreach`, and at once while the failure is cached
  #
  # Used by test/cluster/partition_test.exs and bench/partition.exs. Needs root.
  #
  # Each host runs its own epmd and one node `n<i>@<ip>` with a short net_ticktime (so that a split
  # of a few seconds is noticed: 60 s by default) and an Epmd topology listing all nodes. Each node
  # also runs a watcher that records the OS time (µs) at which its connected set last became the
  # full set of other nodes, so heal times are measured on the nodes, not by polling them.

  alias LibclusterRs.Test.{Netns, Peer}

  defstruct [:net, :bridge_b, :uplink, :side_a, :side_b, :tmp, mode: :drop, dist: :tcp, peers: [], nodes: []]

  # The distribution port of `dist: :epmdless` nodes.
  @fixed_port 4370

  @type t :: %__MODULE__{}

  @doc """
  Makes `size_a + size_b` hosts and starts a node on each, clustered with an Epmd topology.

  Options: `:mode` (`:drop` or `:link`, see above), `:ticktime` (net_ticktime in s, default 4), `:membership` (the topology's membership
  options, e.g. `[probe: false]`), `:logger_level` (the nodes' level; default warning), `:erl_args` (more `erl` arguments,
  e.g. `["-connect_all", "false"]`), `:dist`:

    * `:tcp` (default) - `inet_tcp` distribution, an epmd on every host
    * `:tls` - `-proto_dist inet_tls`, certificates from the run's `LibclusterRs.Test.TestCA` (for
      all the hosts' IPs), dialling nodes verified against its CA (see dist_args/1); an epmd on
      every host
    * `:epmdless` - `-start_epmd false -erl_epmd_port #{@fixed_port}`: every node listens on that
      fixed port, no epmd runs anywhere
  """
  def setup(subnet, size_a, size_b, opts \\ []) do
    net = Netns.setup(subnet, size_a + size_b)
    uplink = {"lcx#{net.id}a", "lcx#{net.id}b"}
    mode = Keyword.get(opts, :mode, :drop)
    dist = Keyword.get(opts, :dist, :tcp)
    p = %__MODULE__{net: net, bridge_b: "lcb#{net.id}b", uplink: uplink, mode: mode, dist: dist}

    try do
      {side_a, side_b} = Enum.split(net.hosts, size_a)
      {up_a, up_b} = p.uplink
      ip!(["link", "add", p.bridge_b, "type", "bridge"])
      File.write("/sys/class/net/#{p.bridge_b}/bridge/multicast_snooping", "0")
      ip!(["link", "set", p.bridge_b, "up"])
      for h <- side_b, do: ip!(["link", "set", h.veth, "master", p.bridge_b])
      ip!(["link", "add", up_a, "type", "veth", "peer", "name", up_b])
      ip!(["link", "set", up_a, "master", net.bridge, "up"])
      ip!(["link", "set", up_b, "master", p.bridge_b, "up"])
      if mode == :drop, do: pin_neighbours(net.hosts)

      if dist != :epmdless, do: for(h <- net.hosts, do: Netns.exec!(h.ns, "epmd", ["-daemon"]))
      p = %{p | side_a: side_a, side_b: side_b}
      {p, dist_args} = dist_args(p)
      start_nodes(p, Keyword.update(opts, :erl_args, dist_args, &(dist_args ++ &1)))
    catch
      kind, reason ->
        teardown(p)
        :erlang.raise(kind, reason, __STACKTRACE__)
    end
  end

  defp start_nodes(p, opts) do
    ticktime = Keyword.get(opts, :ticktime, 4)
    extra = Enum.map(Keyword.get(opts, :erl_args, []), &to_charlist/1)

    level =
      case Keyword.get(opts, :logger_level) do
        nil -> []
        level -> [~c"-kernel", ~c"logger_level", ~c"#{level}"]
      end

    hosts = Enum.with_index(p.net.hosts, 1)
    nodes = for {h, i} <- hosts, do: :"n#{i}@#{h.ip}"

    # One after another: a :peer node ends with the process that started it.
    peers =
      for {h, i} <- hosts do
        args = [~c"-kernel", ~c"net_ticktime", ~c"#{ticktime}" | level] ++ extra
        {peer, _node} = Peer.start("n#{i}", h.ip, netns: h.ns, args: args)

        peer
      end

    p = %{p | peers: peers, nodes: nodes}

    topology = [
      strategy: Cluster.Strategy.Epmd,
      config: [hosts: nodes],
      membership: Keyword.get(opts, :membership, [])
    ]

    for peer <- peers do
      :ok = Peer.call(peer, __MODULE__, :watch_here, [nodes])
      {:ok, _} = Peer.start_cluster(peer, partition: topology)
    end

    p
  end

  defp dist_args(%{dist: :tcp} = p), do: {p, []}

  defp dist_args(%{dist: :epmdless} = p),
    do: {p, ["-start_epmd", "false", "-erl_epmd_port", "#{@fixed_port}"]}

  defp dist_args(%{dist: :tls} = p) do
    ips = for h <- p.net.hosts, do: h.ip |> to_charlist() |> :inet.parse_address() |> elem(1)
    ca = LibclusterRs.Test.TestCA.shared!(ips: ips)
    tmp = Path.join(System.tmp_dir!(), "partition_tls_#{p.net.id}")
    File.mkdir_p!(tmp)
    conf = Path.join(tmp, "ssl_dist.conf")

    # The accepting side verifies the dialling side's client certificate against the run's CA. The
    # dialling side does not verify the server's (verify_none): on OTP 25 inet_tls_dist's client
    # aborted the handshake with these IP-literal node names although ssl:connect/3 with the same
    # files verified fine (not investigated further).
    server = [certfile: ~c"#{ca.cert}", keyfile: ~c"#{ca.key}", cacertfile: ~c"#{ca.ca}"]
    client = [certfile: ~c"#{ca.client_cert}", keyfile: ~c"#{ca.client_key}", cacertfile: ~c"#{ca.ca}"]

    opts = [
      server: server ++ [verify: :verify_peer, fail_if_no_peer_cert: true],
      client: client ++ [verify: :verify_none]
    ]

    File.write!(conf, :io_lib.format(~c"~p.~n", [opts]))
    {%{p | tmp: tmp}, ["-proto_dist", "inet_tls", "-ssl_dist_optfile", conf]}
  end

  @doc "Stops the nodes and removes every namespace, bridge and link `setup/4` made."
  def teardown(%__MODULE__{} = p) do
    for peer <- p.peers, do: Peer.stop(peer)
    if p.tmp, do: File.rm_rf(p.tmp)
    Netns.teardown(p.net)
    # A namespace is destroyed asynchronously after its deletion: remove its veths now.
    for h <- p.net.hosts, do: System.cmd("ip", ["link", "del", h.veth], stderr_to_stdout: true)
    {up_a, _} = p.uplink
    System.cmd("ip", ["link", "del", up_a], stderr_to_stdout: true)
    System.cmd("ip", ["link", "del", p.bridge_b], stderr_to_stdout: true)
    :ok
  end

  @doc "Cuts the uplink: the sides lose each other."
  def split(%__MODULE__{uplink: {up_a, _}}), do: ip!(["link", "set", up_a, "down"])

  @doc "Restores the uplink. Returns the OS time (µs) right after the link is up."
  def heal(%__MODULE__{uplink: {up_a, _}}) do
    ip!(["link", "set", up_a, "up"])
    System.os_time(:microsecond)
  end

  # Permanent ARP entries in every namespace for every other host: no ARP failure tells a connect
  # that the other side is gone.
  defp pin_neighbours(hosts) do
    macs =
      for h <- hosts do
        [_, mac] = Regex.run(~r{link/ether ([0-9a-f:]+)}, ip!(["-n", h.ns, "link", "show", "eth0"]))
        {h, mac}
      end

    for h <- hosts, {other, mac} <- macs, other.ns != h.ns do
      ip!(["-n", h.ns, "neigh", "replace", other.ip, "lladdr", mac, "dev", "eth0", "nud", "permanent"])
    end

    :ok
  end

  @doc "The nodes of side A and side B."
  def sides(%__MODULE__{} = p) do
    Enum.split(p.nodes, length(p.side_a))
  end

  @doc """
  Waits until every node sees every other node. Returns, per node, the OS time (µs) since which its
  set has been full, or raises after `timeout` ms.
  """
  def await_mesh(%__MODULE__{} = p, timeout) do
    Peer.wait_until(
      fn ->
        times = Enum.map(p.peers, &Peer.call(&1, __MODULE__, :full_since_here, []))
        if Enum.all?(times, &is_integer/1), do: times
      end,
      timeout
    )
  rescue
    e in ExUnit.AssertionError ->
      reraise %{e | message: "no full mesh within #{timeout} ms; views: #{inspect(views(p))}"}, __STACKTRACE__
  end

  @doc "Waits until each side sees only itself (the split has been noticed everywhere)."
  def await_split(%__MODULE__{} = p, timeout) do
    {a, b} = sides(p)
    peers = Enum.zip(p.nodes, p.peers)

    Peer.wait_until(
      fn ->
        Enum.all?(peers, fn {node, peer} ->
          mine = if node in a, do: a, else: b
          Enum.sort(Peer.nodes(peer)) == Enum.sort(mine -- [node])
        end)
      end,
      timeout
    )
  end

  @doc "The nodes each node sees (for failure messages)."
  def views(%__MODULE__{} = p), do: Enum.zip(p.nodes, Enum.map(p.peers, &Peer.nodes/1))

  ## On the nodes

  @doc false
  def watch_here(nodes) do
    others = MapSet.new(nodes -- [node()])

    pid =
      spawn(fn ->
        :ok = :net_kernel.monitor_nodes(true)
        watch_loop(others, nil, [])
      end)

    Process.register(pid, :partition_watch)
    :ok
  end

  @doc false
  def full_since_here do
    ref = make_ref()
    send(:partition_watch, {:full_since, self(), ref})

    receive do
      {^ref, since} -> since
    after
      5_000 -> raise "the mesh watcher does not answer"
    end
  end

  @doc false
  # The node's nodeup/nodedown events `[{os_time_us, event, node}]`, oldest first (for diagnosis).
  def events_here do
    ref = make_ref()
    send(:partition_watch, {:events, self(), ref})

    receive do
      {^ref, events} -> Enum.reverse(events)
    after
      5_000 -> raise "the mesh watcher does not answer"
    end
  end

  # The set is checked on every nodeup/nodedown and, while it is not full, every 5 ms as well: a
  # nodeup message can be handled before `Node.list/0` shows that node.
  defp watch_loop(others, since, log) do
    receive do
      {:full_since, from, ref} ->
        send(from, {ref, since})
        watch_loop(others, since, log)

      {:events, from, ref} ->
        send(from, {ref, log})
        watch_loop(others, since, log)

      {event, node} when event in [:nodeup, :nodedown] ->
        log = Enum.take([{System.os_time(:microsecond), event, node} | log], 1_000)
        watch_loop(others, check(others, since), log)
    after
      if(since, do: :infinity, else: 5) -> watch_loop(others, check(others, since), log)
    end
  end

  defp check(others, since) do
    cond do
      not MapSet.subset?(others, MapSet.new(Node.list())) -> nil
      since == nil -> System.os_time(:microsecond)
      true -> since
    end
  end

  defp ip!(args), do: LibclusterRs.Test.Netns.ip!(args)
end
