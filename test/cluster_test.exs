defmodule ClusterTest do
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually
  import ExUnit.CaptureLog

  alias LibclusterRs.Test.{FakeDist, ScriptedStrategy}

  @fast [backoff_min: 20, backoff_max: 40, min_dial_interval: 10]

  defp start_topologies(topologies) do
    start_supervised!({Cluster.Supervisor, [topologies]}, restart: :temporary)
  end

  defp unique(name), do: :"#{name}_#{System.unique_integer([:positive])}"

  defp send_outcome(outcome) do
    assert_receive {:round, pid, tag}, 1_000
    send(pid, {:libcluster_rs, tag, outcome})
    pid
  end

  describe "status/1 through a topology's lifecycle" do
    test "started, discovered, partly connected, failed, left" do
      t = unique(:st)
      dialer = FakeDist.new(reachable: [:"a@h1.example"])

      start_topologies([
        {t, FakeDist.topology(dialer, ScriptedStrategy, test: self(), membership: @fast)}
      ])

      # Started: a round is in flight, nothing discovered yet.
      assert_receive {:round, disc, tag}, 1_000
      assert {:ok, s} = Cluster.status(t)
      assert %{topology: ^t, strategy: ScriptedStrategy, state: :running, pid: ^disc} = s
      assert s.last_discovered == nil and s.last_discovered_at == nil
      assert s.connected == [] and s.pending == %{} and s.last_error == nil
      assert s.rounds == 1
      assert s.extra == %{scripted: true, test: self()}

      # Discovered two nodes: one connects, the other fails and is in backoff.
      log =
        capture_log(fn ->
          send(disc, {:libcluster_rs, tag, {:discovered, [:"a@h1.example", :"b@h2.example"]}})
          assert_receive {:connect, :"b@h2.example"}, 1_000
          assert_receive {:connect, :"a@h1.example"}, 1_000
          status_until(t, &(&1.connected == [:"a@h1.example"] and Map.has_key?(&1.pending, :"b@h2.example")))
          Logger.flush()
        end)

      assert log =~ "cannot connect to :\"b@h2.example\""
      {:ok, s} = Cluster.status(t)
      assert s.last_discovered == [:"a@h1.example", :"b@h2.example"]
      assert %DateTime{} = s.last_discovered_at
      assert DateTime.diff(DateTime.utc_now(), s.last_discovered_at, :second) < 5
      assert s.connected == [:"a@h1.example"]
      assert %{:"b@h2.example" => pending} = s.pending
      assert pending.failures >= 1 and pending.last_error == false
      assert is_integer(pending.next_attempt_in) and pending.next_attempt_in <= 40
      assert s.error_streak == 0
      assert is_integer(s.next_round_in)

      # A failed round: recorded, nothing forgotten.
      capture_log(fn ->
        send(disc, :discover)
        send_outcome({:error, :nxdomain, "app.internal does not resolve (asked 127.0.0.1:53)"})
        status_until(t, &(&1.error_streak == 1))
      end)

      {:ok, s} = Cluster.status(t)
      assert %{kind: :nxdomain, message: "app.internal does not resolve" <> _, at: %DateTime{}} = s.last_error
      assert s.error_streak == 1
      assert s.last_discovered == [:"a@h1.example", :"b@h2.example"]

      # Leaving: no more rounds, no more dials.
      capture_log(fn -> assert :ok = Cluster.leave(t) end)
      {:ok, s} = Cluster.status(t)
      assert s.state == :leaving
      assert s.next_round_in == nil
      flush_dials()
      refute_receive {:connect, _}, 200
    end

    test "custom strategies and ignored topologies show what is known" do
      custom = unique(:custom)
      ignored = unique(:ignored)
      dialer = FakeDist.new(up: [:"c@h3.example"])

      start_topologies([
        {custom, FakeDist.topology(dialer, LibclusterRs.Test.CustomStrategy, [])},
        {ignored, [strategy: Cluster.Strategy.Epmd, config: [hosts: []]]}
      ])

      assert {:ok, %{strategy: LibclusterRs.Test.CustomStrategy, state: :running, pid: pid} = s} =
               Cluster.status(custom)

      assert is_pid(pid)
      assert s.connected == [:"c@h3.example"]
      assert s.last_discovered == nil

      assert {:ok, %{strategy: Cluster.Strategy.Epmd, state: :ignored, pid: nil}} = Cluster.status(ignored)
      assert %{^custom => _, ^ignored => _} = Cluster.status()
      assert Cluster.status(:no_such_topology) == {:error, :not_found}
    end
  end

  describe "await/1" do
    test "returns :ok once enough nodes are connected in the topology" do
      t = unique(:aw)
      dialer = FakeDist.new(reachable: [:"a@h1.example", :"b@h2.example"])
      start_topologies([{t, FakeDist.topology(dialer, ScriptedStrategy, test: self(), membership: @fast)}])

      task = Task.async(fn -> Cluster.await(topology: t, min_nodes: 2, timeout: 5_000) end)
      # not before the nodes are connected
      assert Task.yield(task, 100) == nil
      send_outcome({:discovered, [:"a@h1.example", :"b@h2.example"]})
      assert Task.await(task) == :ok
    end

    test "times out, bounded, when the nodes never come" do
      t = unique(:aw)
      dialer = FakeDist.new(reachable: [])
      start_topologies([{t, FakeDist.topology(dialer, ScriptedStrategy, test: self(), membership: @fast)}])

      capture_log(fn ->
        send_outcome({:discovered, [:"a@h1.example"]})
        {us, result} = :timer.tc(fn -> Cluster.await(topology: t, min_nodes: 1, timeout: 300) end)
        assert result == {:error, :timeout}
        assert us in 290_000..1_000_000
      end)
    end

    test "without a topology counts Node.list/0; a topology that is not running counts none" do
      assert Cluster.await(min_nodes: 0, timeout: 0) == :ok
      assert Cluster.await(min_nodes: 1, timeout: 100) == {:error, :timeout}
      assert Cluster.await(topology: :not_started, min_nodes: 1, timeout: 100) == {:error, :timeout}
    end

    test "never waits forever: bad options raise" do
      assert_raise ArgumentError, ~r/expected :timeout to be a non-negative integer/, fn ->
        Cluster.await(timeout: :infinity)
      end

      assert_raise ArgumentError, ~r/expected :min_nodes/, fn -> Cluster.await(min_nodes: -1) end
      assert_raise ArgumentError, ~r/unknown await option :nodes/, fn -> Cluster.await(nodes: 1) end
    end

    test "the topology option holds the supervisor's start until the nodes are connected" do
      t = unique(:aw)
      dialer = FakeDist.new(reachable: [:"a@h1.example"])

      spec =
        FakeDist.topology(
          dialer,
          ScriptedStrategy,
          [result: {:discovered, [:"a@h1.example"]}, membership: @fast],
          await: [min_nodes: 1, timeout: 5_000]
        )

      sup = start_topologies([{t, spec}])
      # start_link returned: the node was connected by then.
      assert FakeDist.up(dialer) == [:"a@h1.example"]
      # The await child leaves nothing behind.
      ids = for {id, _, _, _} <- Supervisor.which_children(sup), do: id
      assert ids == [t]
    end

    test "the topology option gives up after its timeout and starts anyway" do
      t = unique(:aw)
      dialer = FakeDist.new(reachable: [])

      spec =
        FakeDist.topology(dialer, ScriptedStrategy, [result: {:discovered, []}],
          await: [min_nodes: 1, timeout: 200]
        )

      log =
        capture_log(fn ->
          {:ok, sup} = Cluster.Supervisor.start_link([[{t, spec}]])
          Supervisor.stop(sup)
        end)

      assert log =~ "await: fewer than 1 connected node(s) after 200 ms; starting anyway"
    end
  end

  describe "the application stopping" do
    test "prep_stop makes every running topology leave" do
      t = unique(:app)
      dialer = FakeDist.new(reachable: [])

      capture_log(fn ->
        start_topologies([
          {t,
           FakeDist.topology(dialer, ScriptedStrategy,
             result: {:discovered, [:"z@h.example"]},
             membership: @fast
           )}
        ])

        assert_receive {:connect, :"z@h.example"}, 1_000
        assert LibclusterRs.App.prep_stop(:state) == :state
      end)

      assert {:ok, %{state: :leaving}} = Cluster.status(t)
      flush_dials()
      refute_receive {:connect, _}, 200
    end
  end

  defp flush_dials do
    receive do
      {:connect, _} -> flush_dials()
    after
      0 -> :ok
    end
  end
end
