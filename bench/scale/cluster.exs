# The network and the nodes of bench/scale.exs (see the header there). Everything here is named
# `lcs*` (namespaces lcs<i>, veths lcsv<i>, bridge lcsbr0) in 198.19.0.0/16; `cleanup/0` removes
# whatever a killed run left behind, killing only processes inside those namespaces, by PID.
defmodule Bench.Scale.Cluster do
  @bridge "lcsbr0"
  @cookie "lcs_bench"

  def bridge, do: @bridge
  def ns(i), do: "lcs#{i}"
  def ip(i), do: "198.19.1.#{i}"
  def mac(i), do: "02:19:00:00:01:" <> (i |> Integer.to_string(16) |> String.pad_leading(2, "0"))
  def node_name(i), do: :"n#{i}@#{ip(i)}"
  # DNSPoll and Kubernetes (mode :ip) make `<basename>@<ip>` of every address: all nodes share one
  # basename.
  def node_name(i, s) when s in [:dns, :kubernetes], do: :"n@#{ip(i)}"
  def node_name(i, _), do: node_name(i)
  def short_name(_i, s) when s in [:dns, :kubernetes], do: "n"
  def short_name(i, _), do: "n#{i}"
  @dns_ip "198.19.0.2"
  def dns_query, do: "nodes.scale.test"

  ## Network

  @doc "Removes every lcs* namespace (killing its processes by PID) and the bridge."
  def cleanup do
    for ns <- namespaces() do
      kill_ns(ns)
      System.cmd("ip", ["netns", "del", ns], stderr_to_stdout: true)
    end

    {links, _} = System.cmd("ip", ["-o", "link", "show"], stderr_to_stdout: true)

    for [_, l] <- Regex.scan(~r/^\d+: (lcsv\d+)[@:]/m, links),
        do: System.cmd("ip", ["link", "del", l], stderr_to_stdout: true)

    System.cmd("ip", ["link", "del", @bridge], stderr_to_stdout: true)
    for dir <- Path.wildcard("/etc/netns/lcs*"), Regex.match?(~r{/lcs\d+$}, dir), do: File.rm_rf!(dir)
    :ok
  end

  defp namespaces do
    {out, _} = System.cmd("ip", ["netns", "list"], stderr_to_stdout: true)

    out
    |> String.split("\n", trim: true)
    |> Enum.map(&(&1 |> String.split(" ") |> hd()))
    |> Enum.filter(&Regex.match?(~r/^lcs\d+$/, &1))
  end

  defp kill_ns(ns) do
    {pids, _} = System.cmd("ip", ["netns", "pids", ns], stderr_to_stdout: true)
    for pid <- String.split(pids, "\n", trim: true), pid =~ ~r/^\d+$/, do: System.cmd("kill", ["-9", pid])
  end

  @doc """
  Namespaces lcs1..lcsN on bridge lcsbr0 (which holds 198.19.0.1/16), host i at 198.19.1.i with the
  MAC mac(i), a permanent neighbour entry for every other host, and an epmd each.

  `:gossip`: a route for 224.0.0.0/4 on eth0 in every namespace (a namespace has no default route,
  and joining a group on "any interface" needs a route to it: without one the join fails with
  ENODEV). `:kubernetes`: /etc/netns/lcs<i>/hosts maps the API server's in-cluster name to the
  bridge's host address, and permanent neighbour entries both ways between the host (198.19.0.1)
  and every namespace.
  """
  def setup(n, strategy \\ :epmd) do
    true = n <= 250

    if strategy == :kubernetes do
      for i <- 1..n do
        File.mkdir_p!("/etc/netns/#{ns(i)}")

        File.write!(
          "/etc/netns/#{ns(i)}/hosts",
          "127.0.0.1 localhost\n198.19.0.1 kubernetes.default.svc.cluster.local\n"
        )
      end
    end

    # `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: both
    # libraries' DNSPoll then ask the bench's dnsmasq with their default resolver settings.
    if strategy == :dns do
      for i <- 1..n do
        File.mkdir_p!("/etc/netns/#{ns(i)}")
        File.write!("/etc/netns/#{ns(i)}/resolv.conf", "nameserver #{@dns_ip}\n")
      end
    end

    batch!([
      "link add #{@bridge} type bridge",
      "addr add 198.19.0.1/16 dev #{@bridge}",
      "link set #{@bridge} up"
    ])

    File.write("/sys/class/net/#{@bridge}/bridge/multicast_snooping", "0")
    batch!(for i <- 1..n, do: "netns add #{ns(i)}")

    batch!(
      Enum.flat_map(1..n, fn i ->
        [
          "link add lcsv#{i} type veth peer name eth0 netns #{ns(i)}",
          "link set lcsv#{i} master #{@bridge} up"
        ]
      end)
    )

    1..n
    |> Task.async_stream(
      fn i ->
        batch!(
          [
            "link set lo up",
            "link set eth0 address #{mac(i)}",
            "addr add #{ip(i)}/16 dev eth0",
            "link set eth0 up"
          ] ++ neigh_lines(i, n, &mac/1) ++ extra_lines(strategy),
          ns(i)
        )

        {_, 0} = System.cmd("ip", ["netns", "exec", ns(i), "epmd", "-daemon"])
      end,
      max_concurrency: 8,
      timeout: 60_000
    )
    |> Stream.run()

    if strategy == :dns, do: start_dnsmasq(n)

    if strategy == :kubernetes do
      batch!(for j <- 1..n, do: "neigh replace #{ip(j)} lladdr #{mac(j)} nud permanent dev #{@bridge}")
    end

    :ok
  end

  # GOSSIP_ROUTE=0 leaves the route out (to see what a namespace without one does)
  defp extra_lines(:gossip) do
    if System.get_env("GOSSIP_ROUTE", "1") == "1", do: ["route add 224.0.0.0/4 dev eth0"], else: []
  end

  defp extra_lines(:kubernetes) do
    host_mac = File.read!("/sys/class/net/#{@bridge}/address") |> String.trim()
    ["neigh replace 198.19.0.1 lladdr #{host_mac} nud permanent dev eth0"]
  end

  defp extra_lines(_), do: []

  # dnsmasq in namespace lcs0 (198.19.0.2) answering `nodes.scale.test` with the N node addresses
  # (A records) from a hosts file, nothing else. Permanent neighbour entries both ways.
  defp start_dnsmasq(n) do
    dns_mac = "02:19:00:00:00:02"
    batch!(["netns add lcs0"])
    batch!(["link add lcsv0 type veth peer name eth0 netns lcs0", "link set lcsv0 master #{@bridge} up"])

    batch!(
      [
        "link set lo up",
        "link set eth0 address #{dns_mac}",
        "addr add #{@dns_ip}/16 dev eth0",
        "link set eth0 up"
      ] ++
        for(j <- 1..n, do: "neigh replace #{ip(j)} lladdr #{mac(j)} nud permanent dev eth0"),
      "lcs0"
    )

    for i <- 1..n, do: batch!(["neigh replace #{@dns_ip} lladdr #{dns_mac} nud permanent dev eth0"], ns(i))
    dir = Path.join(System.tmp_dir!(), "lcs-dnsmasq")
    File.mkdir_p!(dir)
    File.chmod!(dir, 0o755)
    hosts = Path.join(dir, "hosts")
    File.write!(hosts, Enum.map_join(1..n, fn i -> "#{ip(i)} #{dns_query()}\n" end))
    File.chmod!(hosts, 0o644)

    {out, status} =
      System.cmd(
        "ip",
        ~w(netns exec lcs0 dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --addn-hosts=#{hosts}
           --listen-address=#{@dns_ip} --bind-interfaces --port=53 --local=/test/ --pid-file=#{dir}/pid),
        stderr_to_stdout: true
      )

    if status != 0, do: raise("dnsmasq did not start: #{out}")
    :ok
  end

  # Permanent neighbour entries of host i for every other host j, with the MAC mac_of.(j).
  defp neigh_lines(i, n, mac_of) do
    for j <- 1..n, j != i, do: "neigh replace #{ip(j)} lladdr #{mac_of.(j)} nud permanent dev eth0"
  end

  @doc """
  Splits hosts 1..n in two halves that silently drop each other's packets: every host's neighbour
  entries for the other half point at an unused MAC (frames go nowhere, no ARP failure tells a
  connect that the peer is gone). `heal/1` restores the real MACs.
  """
  def split(n) do
    half = div(n, 2)
    side = fn i -> i <= half end
    pin(n, fn i, j -> if side.(i) == side.(j), do: mac(j), else: "02:19:00:00:ff:ff" end)
  end

  def heal(n), do: pin(n, fn _i, j -> mac(j) end)

  defp pin(n, mac_of) do
    1..n
    |> Task.async_stream(fn i -> batch!(neigh_lines(i, n, &mac_of.(i, &1)), ns(i)) end, max_concurrency: 8)
    |> Stream.run()
  end

  defp batch!(lines, ns \\ nil) do
    file = Path.join(System.tmp_dir!(), "lcs-batch-#{System.unique_integer([:positive])}")
    File.write!(file, Enum.join(lines, "\n") <> "\n")
    args = if ns, do: ["-n", ns, "-batch", file], else: ["-batch", file]

    try do
      case System.cmd("ip", args, stderr_to_stdout: true) do
        {_, 0} -> :ok
        {out, status} -> raise "ip #{Enum.join(args, " ")} failed (#{status}): #{out}"
      end
    after
      File.rm(file)
    end
  end

  ## Nodes

  @doc """
  Starts node i in its namespace with the given code paths; loads the agent and preloads `preload`
  (the library's ebin, or a list of ebin dirs) into it. Returns `%{i, node, peer, os_pid}`.
  """
  def start_node(i, nodes, lib, agent) do
    erl = System.find_executable("erl") |> to_charlist()
    ip = System.find_executable("ip") |> to_charlist()
    paths = Enum.flat_map(lib.paths, fn p -> [~c"-pa", to_charlist(p)] end)

    args =
      [~c"-setcookie", ~c"#{@cookie}", ~c"-kernel", ~c"logger_level", ~c"#{lib.log_level}"] ++
        Enum.map(~w(+S 1:1 +SDcpu 1 +SDio 1 +A 1), &to_charlist/1) ++ paths ++ lib.erl_args

    {:ok, peer, node} =
      :peer.start(%{
        name: to_charlist(short_name(i, lib.strategy)),
        host: to_charlist(ip(i)),
        longnames: true,
        connection: :standard_io,
        exec: {ip, [~c"netns", ~c"exec", to_charlist(ns(i)), erl]},
        args: args,
        wait_boot: 120_000
      })

    {mod, bin} = agent
    {:module, ^mod} = :peer.call(peer, :code, :load_binary, [mod, ~c"agent.exs", bin], 30_000)
    :ok = :peer.call(peer, mod, :init, [nodes], 30_000)
    for app <- lib.apps, do: {:ok, _} = :peer.call(peer, :application, :ensure_all_started, [app], 60_000)
    :ok = :peer.call(peer, mod, :quiet, [], 30_000)
    for dir <- List.wrap(lib.preload), do: :ok = :peer.call(peer, mod, :preload, [dir], 60_000)
    os_pid = :peer.call(peer, :os, :getpid, [], 30_000) |> List.to_integer()
    %{i: i, node: node, peer: peer, os_pid: os_pid}
  end

  @doc "Starts nodes `is` in parallel batches."
  def start_nodes(is, nodes, lib, agent) do
    is
    |> Task.async_stream(&start_node(&1, nodes, lib, agent),
      max_concurrency: 6,
      timeout: 180_000,
      ordered: true
    )
    |> Enum.map(fn {:ok, n} -> n end)
  end

  @doc "kill -9 of the node's OS process (by PID); waits until it is gone."
  def kill_node(%{os_pid: pid, peer: peer}) do
    System.cmd("kill", ["-9", Integer.to_string(pid)], stderr_to_stdout: true)
    ref = Process.monitor(peer)

    receive do
      {:DOWN, ^ref, _, _, _} -> :ok
    after
      10_000 -> :ok
    end

    wait_gone(pid, 100)
  end

  defp wait_gone(_pid, 0), do: :ok

  defp wait_gone(pid, k) do
    if File.exists?("/proc/#{pid}"), do: Process.sleep(50) && wait_gone(pid, k - 1), else: :ok
  end

  def kill_nodes(nodes) do
    nodes |> Task.async_stream(&kill_node/1, max_concurrency: 16, timeout: 30_000) |> Stream.run()
  end

  def call(%{peer: peer}, m, f, a, timeout \\ 30_000), do: :peer.call(peer, m, f, a, timeout)

  @doc "Calls `m.f(a)` on all nodes at once; results in node order."
  def call_all(nodes, m, f, a, timeout \\ 60_000) do
    nodes
    |> Task.async_stream(&call(&1, m, f, a, timeout),
      max_concurrency: length(nodes) + 1,
      timeout: timeout + 5_000
    )
    |> Enum.map(fn {:ok, r} -> r end)
  end

  @doc "As call_all/5, but a node that does not answer in time gives `{:no_answer, reason}`."
  def try_all(nodes, m, f, a, timeout \\ 60_000) do
    nodes
    |> Task.async_stream(
      fn n ->
        try do
          call(n, m, f, a, timeout)
        catch
          kind, reason -> {:no_answer, {kind, reason}}
        end
      end,
      max_concurrency: length(nodes) + 1,
      timeout: timeout + 5_000
    )
    |> Enum.map(fn {:ok, r} -> r end)
  end

  ## Process figures (read from /proc in the root namespace: same PID namespace)

  @doc "CPU ticks (utime + stime) of an OS process."
  def cpu_ticks(pid) do
    [_, rest] = File.read!("/proc/#{pid}/stat") |> String.split(") ", parts: 2)
    fields = String.split(rest)
    String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
  end

  @doc "{rss_kib, threads} of an OS process."
  def rss_threads(pid) do
    status = File.read!("/proc/#{pid}/status")
    [_, rss] = Regex.run(~r/VmRSS:\s+(\d+)/, status)
    [_, threads] = Regex.run(~r/Threads:\s+(\d+)/, status)
    {String.to_integer(rss), String.to_integer(threads)}
  end
end
