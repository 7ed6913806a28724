defmodule Cluster.Strategy.StaticTest do
  # Epmd, LocalEpmd and ErlangHosts with real peers and real distribution. The peers use a private
  # epmd on a free loopback port (ERL_EPMD_PORT), so LocalEpmd sees only this test's nodes.
  # Async: nothing of this VM is shared (the epmd is private, the nodes are peers).
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Test.Peer

  @moduletag timeout: 120_000
  @host "127.0.0.1"

  setup_all do
    {:ok, sock} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(sock)
    :gen_tcp.close(sock)

    epmd =
      Port.open({:spawn_executable, System.find_executable("epmd")}, [
        :binary,
        :exit_status,
        args: ["-port", Integer.to_string(port), "-address", "127.0.0.1"]
      ])

    {:os_pid, os_pid} = Port.info(epmd, :os_pid)

    on_exit(fn -> System.cmd("kill", ["-9", Integer.to_string(os_pid)], stderr_to_stdout: true) end)

    # wait until it answers
    eventually(
      fn -> match?({_, 0}, System.cmd("epmd", ["-port", "#{port}", "-names"], stderr_to_stdout: true)) end,
      5_000
    )

    {:ok, epmd_port: port}
  end

  defp start_peer(name, epmd_port) do
    # (failed redials of the killed node are logged as warnings on the survivors: expected here)
    {pid, node} =
      Peer.start(name, @host,
        env: [{"ERL_EPMD_PORT", Integer.to_string(epmd_port)}],
        args: [~c"-kernel", ~c"logger_level", ~c"error"]
      )

    # the test kills peers on purpose: their control processes must not take the test with them
    Process.unlink(pid)
    {pid, node}
  end

  defp os_kill(peer) do
    os_pid = Peer.call(peer, :os, :getpid, [])
    {_, 0} = System.cmd("kill", ["-9", List.to_string(os_pid)])
  end

  # Starts 3 peers with `topology` (a function of the node names), checks they form a full mesh,
  # kills the third, checks a subscriber on the first gets {:nodedown, n3}, restarts the third and
  # checks it is back in the cluster (and the subscriber got {:nodeup, n3}).
  defp form_kill_restart(prefix, epmd_port, topology) do
    names = for i <- 1..3, do: "#{prefix}#{i}"
    nodes = for n <- names, do: :"#{n}@#{@host}"

    peers =
      names
      |> Enum.map(fn n -> Task.async(fn -> start_peer(n, epmd_port) end) end)
      |> Enum.map(&Task.await(&1, 60_000))

    on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
    [{p1, n1}, {p2, _n2}, {p3, n3}] = peers
    :ok = Peer.call(p1, LibclusterRs.Test.EventLog, :start, [])

    t0 = System.monotonic_time(:millisecond)
    for {p, _} <- peers, do: {:ok, _} = Peer.start_cluster(p, topology.(nodes))

    for {p, node} <- peers do
      eventually(fn -> Enum.sort(Peer.nodes(p)) == Enum.sort(nodes -- [node]) end, 15_000)
    end

    formed_ms = System.monotonic_time(:millisecond) - t0

    os_kill(p3)

    eventually(
      fn -> {:nodedown, n3} in Peer.call(p1, LibclusterRs.Test.EventLog, :events, []) end,
      10_000
    )

    assert n3 not in Peer.nodes(p1)
    assert n3 not in Peer.nodes(p2)

    {p3b, ^n3} = start_peer("#{prefix}3", epmd_port)
    on_exit(fn -> Peer.stop(p3b) end)
    {:ok, _} = Peer.start_cluster(p3b, topology.(nodes))

    eventually(fn -> Enum.sort(Peer.nodes(p3b)) == Enum.sort(nodes -- [n3]) end, 15_000)
    eventually(fn -> n3 in Peer.nodes(p1) and n3 in Peer.nodes(p2) end, 15_000)

    events = Peer.call(p1, LibclusterRs.Test.EventLog, :events, [])
    down_at = Enum.find_index(events, &(&1 == {:nodedown, n3}))
    assert {:nodeup, n3} in Enum.drop(events, down_at + 1), inspect(events)
    assert n1 not in for({_, n} <- events, do: n)
    formed_ms
  end

  test "Epmd: 3 nodes form a cluster; a killed node is reported down and rejoins", %{epmd_port: port} do
    form_kill_restart("st_epmd", port, fn nodes ->
      [static: [strategy: Cluster.Strategy.Epmd, config: [hosts: nodes]]]
    end)
  end

  test "LocalEpmd: the same through the local epmd", %{epmd_port: port} do
    form_kill_restart("st_local", port, fn _nodes ->
      [local: [strategy: Cluster.Strategy.LocalEpmd, config: [polling_interval: 200]]]
    end)
  end

  @tag :tmp_dir
  test "ErlangHosts: the same through a hosts file", %{epmd_port: port, tmp_dir: dir} do
    hosts_file = Path.join(dir, "hosts.erlang")
    File.write!(hosts_file, "'#{@host}'.\n")

    form_kill_restart("st_hosts", port, fn _nodes ->
      [
        hosts: [
          strategy: Cluster.Strategy.ErlangHosts,
          config: [hosts_file: hosts_file, timeout: 200, epmd_port: port]
        ]
      ]
    end)
  end
end
