defmodule Mix.Tasks.Libcluster.DiscoverTest do
  # Async: the dry runs take their turn on the application env (DiscoverRun).
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog

  alias LibclusterRs.Test.ScriptedStrategy

  defp discover(args, during \\ fn _ -> :ok end) do
    {status, output, _ms} = LibclusterRs.Test.DiscoverRun.run(args, during)
    {status, output}
  end

  describe "a static topology is probed through each host's epmd (real epmd, a real peer)" do
    setup do
      name = "probe_#{System.unique_integer([:positive])}"
      {peer, node} = LibclusterRs.Test.Peer.start(name, "127.0.0.1")
      on_exit(fn -> LibclusterRs.Test.Peer.stop(peer) end)
      {:ok, peer: node, name: name}
    end

    test "Epmd: registered and absent listed nodes are told apart; exit 0 when some are there", ctx do
      absent = :"absent_#{System.unique_integer([:positive])}@127.0.0.1"

      LibclusterRs.Test.DiscoverRun.configure!(
        static: [
          strategy: Cluster.Strategy.Epmd,
          config: [hosts: [ctx.peer, absent]],
          connect: {Kernel, :send, [self()]}
        ]
      )

      {status, out} = discover(["static"])
      assert status == 0, out
      assert out =~ "strategy: Cluster.Strategy.Epmd"
      assert out =~ "asked epmd (port 4369) on 1 host(s) for the 2 listed node(s)"
      assert out =~ "registered (1):\n    #{ctx.peer}\n"
      assert out =~ "not registered (1)"
      assert out =~ "#{absent} (epmd on 127.0.0.1 lists: " and out =~ ctx.name
      # Not the config echoed back as "OK" before the probe.
      refute out =~ "found 2 node(s)"
      refute_received _
    end

    test "Epmd: no listed node registered is exit 1", _ctx do
      absent = :"absent_#{System.unique_integer([:positive])}@127.0.0.1"

      LibclusterRs.Test.DiscoverRun.configure!(
        static: [strategy: Cluster.Strategy.Epmd, config: [hosts: [absent]]]
      )

      {status, out} = discover(["static"])
      assert status == 1, out
      assert out =~ "registered (0)"
      assert out =~ "no listed node is registered in its host's epmd"
    end

    test "Epmd: a host whose epmd does not answer is named with the reason, exit 1", ctx do
      LibclusterRs.Test.DiscoverRun.configure!(
        static: [strategy: Cluster.Strategy.Epmd, config: [hosts: [ctx.peer]]]
      )

      # A port where nothing listens: refused.
      {:ok, closed} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
      {:ok, closed_port} = :inet.port(closed)
      :ok = :gen_tcp.close(closed)
      {status, out} = discover(["static", "--epmd-port", "#{closed_port}"])
      assert status == 1, out
      assert out =~ "epmd on 127.0.0.1 did not answer (refused)"

      # A listener that accepts and never answers: a timeout within --timeout.
      {:ok, silent} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, active: false)
      {:ok, silent_port} = :inet.port(silent)
      {status, out} = discover(["static", "--epmd-port", "#{silent_port}", "--timeout", "500"])
      assert status == 1, out
      assert out =~ "epmd on 127.0.0.1 did not answer (timeout)"
      :gen_tcp.close(silent)
    end

    @tag :tmp_dir
    test "ErlangHosts: the nodes registered on each host of the hosts file", %{tmp_dir: dir} = ctx do
      hosts = Path.join(dir, "hosts.erlang")
      File.write!(hosts, "'127.0.0.1'.\n")

      LibclusterRs.Test.DiscoverRun.configure!(
        hosts: [strategy: Cluster.Strategy.ErlangHosts, config: [hosts_file: hosts]]
      )

      {status, out} = discover(["hosts"])
      assert status == 0, out
      assert out =~ "127.0.0.1: epmd on 127.0.0.1 lists: " and out =~ ctx.name
      assert out =~ "    #{ctx.peer}\n"
    end

    test "LocalEpmd, run on a distributed node: the nodes in this host's epmd, without itself", ctx do
      {runner, runner_node} =
        LibclusterRs.Test.Peer.start("probe_runner_#{System.unique_integer([:positive])}", "127.0.0.1")

      on_exit(fn -> LibclusterRs.Test.Peer.stop(runner) end)

      :ok =
        LibclusterRs.Test.Peer.call(runner, Application, :put_env, [
          :libcluster,
          :topologies,
          [local: [strategy: Cluster.Strategy.LocalEpmd]]
        ])

      # The task runs on the peer (a distributed node, as `elixir --name ... -S mix` would be), its
      # output captured there by Mix.Shell.Process.
      code = """
      {:ok, _} = Application.ensure_all_started(:mix)
      Mix.shell(Mix.Shell.Process)
      status = Mix.Tasks.Libcluster.Discover.main("local", [])
      lines = Stream.repeatedly(fn -> receive do {:mix_shell, _, [l]} -> l after 0 -> nil end end)
      {status, lines |> Enum.take_while(& &1) |> Enum.join("\\n")}
      """

      {{status, out}, _} = LibclusterRs.Test.Peer.call(runner, Code, :eval_string, [code])
      assert status == 0, out
      assert out =~ "strategy: Cluster.Strategy.LocalEpmd"
      assert out =~ "127.0.0.1: epmd on 127.0.0.1 lists: "
      assert out =~ "    #{ctx.peer}"
      refute out =~ "    #{runner_node}"
    end

    test "name mode: the registered nodes are checked against the mode given", ctx do
      LibclusterRs.Test.DiscoverRun.configure!(
        static: [strategy: Cluster.Strategy.Epmd, config: [hosts: [ctx.peer]]]
      )

      {status, out} = discover(["static", "--shortnames"])
      assert status == 1, out
      assert out =~ "cannot connect to #{ctx.peer}"
    end
  end

  test "name mode: IP hosts cannot work with short names; exit 1 when the mode is given" do
    LibclusterRs.Test.DiscoverRun.configure!(
      found: [strategy: ScriptedStrategy, config: [result: {:discovered, [:"a@10.0.0.1", :b@myhost]}]]
    )

    {status, out} = discover(["found", "--shortnames"])
    assert status == 1

    assert out =~
             ~s(cannot connect to a@10.0.0.1: its host part "10.0.0.1" is a fully qualified name or an IP address)

    assert out =~ "--sname"
    refute out =~ "cannot connect to b@myhost"

    {status, out} = discover(["found", "--longnames"])
    assert status == 1

    assert out =~
             ~s(cannot connect to b@myhost: its host part "myhost" is a short name, but this node uses long names)

    # Mode not known: assumed long names, a warning only.
    {status, out} = discover(["found"])
    assert status == 0
    assert out =~ "warning: assuming long names"
    assert out =~ "warning: b@myhost"
  end

  test "a failed discovery prints the strategy's message and exits 1" do
    LibclusterRs.Test.DiscoverRun.configure!(
      dns: [
        strategy: ScriptedStrategy,
        config: [result: {:error, :nxdomain, "app.internal: NXDOMAIN from 127.0.0.1:5353"}]
      ]
    )

    {status, out} = discover([])
    assert status == 1
    assert out =~ "discovery failed (nxdomain): app.internal: NXDOMAIN from 127.0.0.1:5353"
    assert out =~ "nothing would be pruned"
  end

  test "an asynchronous round: events until the round ends" do
    LibclusterRs.Test.DiscoverRun.configure!(fake: [strategy: ScriptedStrategy, config: [test: self()]])

    {status, out} =
      discover(["fake"], fn _task ->
        assert_receive {:round, pid, tag}, 5_000
        send(pid, {:libcluster_rs, tag, {:seen, [:"x@10.1.0.1"]}})
        send(pid, {:libcluster_rs, tag, {:discovered, [:"y@10.1.0.2"]}})
      end)

    assert status == 0
    assert out =~ "found 2 node(s)"
    assert out =~ "x@10.1.0.1" and out =~ "y@10.1.0.2"
  end

  test "a round that never ends times out with exit 1" do
    LibclusterRs.Test.DiscoverRun.configure!(fake: [strategy: ScriptedStrategy, config: [test: self()]])
    {status, out} = discover(["fake", "--timeout", "200"])
    assert status == 1
    assert out =~ "discovery did not finish within 200 ms"
  end

  test "usage and config problems exit 2 with a plain message" do
    LibclusterRs.Test.DiscoverRun.configure!(
      static: [strategy: Cluster.Strategy.Epmd, config: [hosts: [:"a@h.example"]]],
      custom: [strategy: LibclusterRs.Test.CustomStrategy],
      broken: [strategy: Cluster.Strategy.Epmd, config: [hosts: "a@h"]]
    )

    {status, out} = discover(["nope"])
    assert status == 2
    assert out =~ ~s(unknown topology "nope"; configured: static, custom, broken)

    {status, out} = discover(["custom"])
    assert status == 2
    assert out =~ "is a custom strategy (not built on LibclusterRs.Discovery)"

    {status, out} = discover(["broken"])
    assert status == 2

    assert out =~
             "invalid config: invalid config for topology :broken: expected :hosts to be a list of node names"

    {status, out} = discover(["--bogus"])
    assert status == 2
    assert out =~ "unknown option(s): --bogus"

    LibclusterRs.Test.DiscoverRun.configure!([])
    {status, out} = discover([])
    assert status == 2
    assert out =~ "no topologies configured"
  end

  test "a strategy that disables itself is reported, exit 1" do
    LibclusterRs.Test.DiscoverRun.configure!(off: [strategy: Cluster.Strategy.Epmd, config: [hosts: []]])
    {status, out} = discover([])
    assert status == 1
    assert out =~ "returned :ignore"
  end

  test "the topologies of both config keys are found" do
    LibclusterRs.Test.DiscoverRun.configure!(
      one: [strategy: ScriptedStrategy, config: [result: {:discovered, [:"a@h.example"]}]]
    )

    LibclusterRs.Test.DiscoverRun.configure!(
      [two: [strategy: ScriptedStrategy, config: [result: {:discovered, []}]]],
      :libcluster_rs
    )

    capture_log(fn ->
      {status, out} = discover([])
      assert status == 0
      assert out =~ "topology :one" and out =~ "topology :two"
      assert out =~ "discovery succeeded but returned no nodes"
    end)
  end
end
