defmodule Mix.Tasks.Libcluster.DiscoverTest do
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog

  alias Cluster.Test.ScriptedStrategy

  setup do
    Cluster.Test.DiscoverRun.isolate_topologies()
    :ok
  end

  defp discover(args, during \\ fn _ -> :ok end) do
    {status, output, _ms} = Cluster.Test.DiscoverRun.run(args, during)
    {status, output}
  end

  test "a static topology: prints the nodes, exit 0, connects nothing" do
    Application.put_env(:libcluster, :topologies,
      static: [
        strategy: Cluster.Strategy.Epmd,
        config: [hosts: [:"a@10.0.0.1", :"b@10.0.0.2"]],
        connect: {Kernel, :send, [self()]}
      ]
    )

    {status, out} = discover(["static"])
    assert status == 0
    assert out =~ "topology :static"
    assert out =~ "strategy: Cluster.Strategy.Epmd"
    assert out =~ "found 2 node(s)"
    assert out =~ "a@10.0.0.1" and out =~ "b@10.0.0.2"
    assert out =~ "OK"
    refute_received _
  end

  test "name mode: IP hosts cannot work with short names; exit 1 when the mode is given" do
    Application.put_env(:libcluster, :topologies,
      static: [strategy: Cluster.Strategy.Epmd, config: [hosts: [:"a@10.0.0.1", :b@myhost]]]
    )

    {status, out} = discover(["static", "--shortnames"])
    assert status == 1

    assert out =~
             ~s(cannot connect to a@10.0.0.1: its host part "10.0.0.1" is a fully qualified name or an IP address)

    assert out =~ "--sname"
    refute out =~ "cannot connect to b@myhost"

    {status, out} = discover(["static", "--longnames"])
    assert status == 1

    assert out =~
             ~s(cannot connect to b@myhost: its host part "myhost" is a short name, but this node uses long names)

    # Mode not known: assumed long names, a warning only.
    {status, out} = discover(["static"])
    assert status == 0
    assert out =~ "warning: assuming long names"
    assert out =~ "warning: b@myhost"
  end

  test "a failed discovery prints the strategy's message and exits 1" do
    Application.put_env(:libcluster, :topologies,
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
    Application.put_env(:libcluster, :topologies, fake: [strategy: ScriptedStrategy, config: [test: self()]])

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
    Application.put_env(:libcluster, :topologies, fake: [strategy: ScriptedStrategy, config: [test: self()]])
    {status, out} = discover(["fake", "--timeout", "200"])
    assert status == 1
    assert out =~ "discovery did not finish within 200 ms"
  end

  test "usage and config problems exit 2 with a plain message" do
    Application.put_env(:libcluster, :topologies,
      static: [strategy: Cluster.Strategy.Epmd, config: [hosts: [:"a@h.example"]]],
      custom: [strategy: Cluster.Test.CustomStrategy],
      broken: [strategy: Cluster.Strategy.Epmd, config: [hosts: "a@h"]]
    )

    {status, out} = discover(["nope"])
    assert status == 2
    assert out =~ ~s(unknown topology "nope"; configured: static, custom, broken)

    {status, out} = discover(["custom"])
    assert status == 2
    assert out =~ "is a custom strategy (not built on Cluster.Discovery)"

    {status, out} = discover(["broken"])
    assert status == 2

    assert out =~
             "invalid config: invalid config for topology :broken: expected :hosts to be a list of node names"

    {status, out} = discover(["--bogus"])
    assert status == 2
    assert out =~ "unknown option(s): --bogus"

    Application.delete_env(:libcluster, :topologies)
    {status, out} = discover([])
    assert status == 2
    assert out =~ "no topologies configured"
  end

  test "a strategy that disables itself is reported, exit 1" do
    Application.put_env(:libcluster, :topologies, off: [strategy: Cluster.Strategy.Epmd, config: [hosts: []]])
    {status, out} = discover([])
    assert status == 1
    assert out =~ "returned :ignore"
  end

  test "the topologies of both config keys are found" do
    Application.put_env(:libcluster, :topologies,
      one: [strategy: ScriptedStrategy, config: [result: {:discovered, [:"a@h.example"]}]]
    )

    Application.put_env(:libcluster_rs, :topologies,
      two: [strategy: ScriptedStrategy, config: [result: {:discovered, []}]]
    )

    capture_log(fn ->
      {status, out} = discover([])
      assert status == 0
      assert out =~ "topology :one" and out =~ "topology :two"
      assert out =~ "discovery succeeded but returned no nodes"
    end)
  end
end
