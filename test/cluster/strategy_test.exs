defmodule Cluster.StrategyTest do
  # Cluster.Strategy.connect_nodes/4 and disconnect_nodes/4 with injected MFAs (the libcluster
  # habit): the MFAs report every call to the test process and return what the test wants.
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog

  alias Cluster.Strategy
  alias LibclusterRs.Test.FakeDist

  @events [
    [:libcluster, :connect_node, :ok],
    [:libcluster, :connect_node, :error],
    [:libcluster, :disconnect_node, :ok],
    [:libcluster, :disconnect_node, :error]
  ]

  setup do
    LibclusterRs.Test.TelemetryForward.attach(@events, "strategy_")
    {:ok, t: :"strategy_#{System.unique_integer([:positive])}", dist: FakeDist.new()}
  end

  # `results` maps a node to the value its call returns (default: the real answer, true).
  defp connect(dist, results) do
    for {node, value} <- results, do: FakeDist.peer(dist, node, connect: {:reply, value})
    FakeDist.mfas(dist)[:connect]
  end

  defp disconnect(dist, results) do
    for {node, value} <- results, do: FakeDist.peer(dist, node, disconnect: {:reply, value})
    FakeDist.mfas(dist)[:disconnect]
  end

  defp listed(dist, nodes) do
    FakeDist.bring_up(dist, nodes)
    FakeDist.mfas(dist)[:list_nodes]
  end

  defp flush_calls do
    receive do
      {:connect, n} -> [{:connect, n} | flush_calls()]
      {:disconnect, n} -> [{:disconnect, n} | flush_calls()]
    after
      0 -> []
    end
  end

  describe "connect_nodes/4" do
    test "true is success: :ok, a telemetry :ok event with a duration, an info line", %{t: t, dist: dist} do
      log =
        capture_log(fn ->
          assert :ok == Strategy.connect_nodes(t, connect(dist, %{}), listed(dist, []), [:a@h, :b@h])
        end)

      assert flush_calls() == [connect: :a@h, connect: :b@h]

      for n <- [:a@h, :b@h] do
        assert_received {:telemetry, [:libcluster, :connect_node, :ok], %{duration: d},
                         %{node: ^n, topology: ^t}}

        assert is_integer(d) and d >= 0
      end

      assert log =~ "[libcluster:#{t}] connected to :a@h"
    end

    test "false is {node, false} with reason :unreachable", %{t: t, dist: dist} do
      log =
        capture_log(fn ->
          assert {:error, [{:down@h, false}]} ==
                   Strategy.connect_nodes(t, connect(dist, %{:down@h => false}), listed(dist, []), [
                     :down@h,
                     :up@h
                   ])
        end)

      assert_received {:telemetry, [:libcluster, :connect_node, :error], %{duration: d},
                       %{node: :down@h, topology: ^t, reason: :unreachable}}

      assert is_integer(d) and d >= 0
      assert_received {:telemetry, [:libcluster, :connect_node, :ok], _, %{node: :up@h}}
      assert log =~ "[libcluster:#{t}] unable to connect to :down@h"
    end

    test ":ignored is {node, :ignored} with reason :not_part_of_network", %{t: t, dist: dist} do
      capture_log(fn ->
        assert {:error, [{:x@h, :ignored}]} ==
                 Strategy.connect_nodes(t, connect(dist, %{:x@h => :ignored}), listed(dist, []), [:x@h])
      end)

      assert_received {:telemetry, [:libcluster, :connect_node, :error], %{duration: _},
                       %{node: :x@h, topology: ^t, reason: :not_part_of_network}}
    end

    test ":ok and {:ok, _} (Partisan) are success", %{t: t, dist: dist} do
      capture_log(fn ->
        results = %{:p@h => :ok, :q@h => {:ok, :some_pid}}
        assert :ok == Strategy.connect_nodes(t, connect(dist, results), listed(dist, []), [:p@h, :q@h])
      end)

      assert_received {:telemetry, [:libcluster, :connect_node, :ok], _, %{node: :p@h}}
      assert_received {:telemetry, [:libcluster, :connect_node, :ok], _, %{node: :q@h}}
      refute_received {:telemetry, [:libcluster, :connect_node, :error], _, _}
    end

    test "any other value is an error carrying that value", %{t: t, dist: dist} do
      capture_log(fn ->
        results = %{:e@h => {:error, :econnrefused}, :f@h => :nope}

        assert {:error, [{:e@h, {:error, :econnrefused}}, {:f@h, :nope}]} ==
                 Strategy.connect_nodes(t, connect(dist, results), listed(dist, []), [:e@h, :f@h])
      end)

      assert_received {:telemetry, [:libcluster, :connect_node, :error], _,
                       %{node: :e@h, reason: {:error, :econnrefused}}}

      assert_received {:telemetry, [:libcluster, :connect_node, :error], _, %{node: :f@h, reason: :nope}}
    end

    test "skips this node, already listed nodes and duplicates", %{t: t, dist: dist} do
      capture_log(fn ->
        nodes = [Node.self(), :listed@h, :new@h, :new@h]
        assert :ok == Strategy.connect_nodes(t, connect(dist, %{}), listed(dist, [:listed@h]), nodes)
      end)

      assert flush_calls() == [connect: :new@h]
    end

    test "nothing to do is :ok without a call", %{t: t, dist: dist} do
      assert :ok == Strategy.connect_nodes(t, connect(dist, %{}), listed(dist, [:a@h]), [:a@h, Node.self()])
      assert flush_calls() == []
      refute_received {:telemetry, _, _, _}
    end

    test "raises ArgumentError when an MFA is not exported with the needed arity", %{t: t, dist: dist} do
      assert_raise ArgumentError, ~r/LibclusterRs.Test.FakeDist.nope\/3 is undefined/, fn ->
        Strategy.connect_nodes(t, {FakeDist, :nope, [1, 2]}, listed(dist, []), [:a@h])
      end

      # connect/3 exists, but with one extra arg it would be connect/4
      assert_raise ArgumentError, ~r/connect\/4 is undefined/, fn ->
        Strategy.connect_nodes(t, {FakeDist, :connect, [1, 2, 3]}, listed(dist, []), [:a@h])
      end

      assert_raise ArgumentError, ~r/list_nodes\/0 is undefined/, fn ->
        Strategy.connect_nodes(t, connect(dist, %{}), {FakeDist, :list_nodes, []}, [:a@h])
      end

      assert_raise ArgumentError, ~r/NoSuchModule.f\/1 is undefined/, fn ->
        Strategy.connect_nodes(t, {NoSuchModule, :f, []}, listed(dist, []), [:a@h])
      end

      assert flush_calls() == []
    end
  end

  describe "disconnect_nodes/4" do
    test "true is success with a telemetry :ok event carrying the duration", %{t: t, dist: dist} do
      log =
        capture_log(fn ->
          assert :ok == Strategy.disconnect_nodes(t, disconnect(dist, %{}), listed(dist, [:a@h]), [:a@h])
        end)

      assert flush_calls() == [disconnect: :a@h]

      assert_received {:telemetry, [:libcluster, :disconnect_node, :ok], %{duration: d},
                       %{node: :a@h, topology: ^t}}

      assert is_integer(d) and d >= 0
      assert log =~ "[libcluster:#{t}] disconnected from :a@h"
    end

    test "false is logged as already disconnected, not an error", %{t: t, dist: dist} do
      log =
        capture_log(fn ->
          assert :ok ==
                   Strategy.disconnect_nodes(t, disconnect(dist, %{:a@h => false}), listed(dist, [:a@h]), [
                     :a@h
                   ])
        end)

      assert_received {:telemetry, [:libcluster, :disconnect_node, :error], %{duration: _},
                       %{node: :a@h, topology: ^t, reason: :already_disconnected}}

      assert log =~ "already disconnected"
    end

    test ":ignored is logged as not part of the network, not an error", %{t: t, dist: dist} do
      log =
        capture_log(fn ->
          assert :ok ==
                   Strategy.disconnect_nodes(t, disconnect(dist, %{:a@h => :ignored}), listed(dist, [:a@h]), [
                     :a@h
                   ])
        end)

      assert_received {:telemetry, [:libcluster, :disconnect_node, :error], _,
                       %{node: :a@h, reason: :not_part_of_network}}

      assert log =~ "not part of the network"
    end

    test "any other value is {node, value}; the telemetry reason is inspect(value), as libcluster 3.5", %{
      t: t,
      dist: dist
    } do
      capture_log(fn ->
        results = %{:a@h => {:error, :busy}, :b@h => true}

        assert {:error, [{:a@h, {:error, :busy}}]} ==
                 Strategy.disconnect_nodes(t, disconnect(dist, results), listed(dist, [:a@h, :b@h]), [
                   :a@h,
                   :b@h
                 ])
      end)

      assert_received {:telemetry, [:libcluster, :disconnect_node, :error], _,
                       %{node: :a@h, reason: "{:error, :busy}"}}

      assert_received {:telemetry, [:libcluster, :disconnect_node, :ok], _, %{node: :b@h}}
    end

    test "skips this node and nodes that are not listed", %{t: t, dist: dist} do
      capture_log(fn ->
        nodes = [Node.self(), :unlisted@h, :listed@h, :listed@h]

        assert :ok ==
                 Strategy.disconnect_nodes(
                   t,
                   disconnect(dist, %{}),
                   listed(dist, [:listed@h, Node.self()]),
                   nodes
                 )
      end)

      assert flush_calls() == [disconnect: :listed@h]
    end

    test "raises ArgumentError when an MFA is not exported", %{t: t, dist: dist} do
      assert_raise ArgumentError, ~r/LibclusterRs.Test.FakeDist.gone\/1 is undefined/, fn ->
        Strategy.disconnect_nodes(t, {FakeDist, :gone, []}, listed(dist, [:a@h]), [:a@h])
      end

      assert_raise ArgumentError, ~r/list_nodes\/2 is undefined/, fn ->
        Strategy.disconnect_nodes(t, disconnect(dist, %{}), {FakeDist, :list_nodes, [1, 2]}, [:a@h])
      end

      assert flush_calls() == []
    end
  end

  test "a custom strategy using these helpers works unchanged under Cluster.Supervisor", %{t: t, dist: dist} do
    defmodule Custom do
      use Cluster.Strategy
      use GenServer

      def start_link([state]), do: GenServer.start_link(__MODULE__, state)

      def init(state) do
        result =
          Cluster.Strategy.connect_nodes(
            state.topology,
            state.connect,
            state.list_nodes,
            state.config[:nodes]
          )

        send(state.config[:test], {:custom_result, result, state})
        {:ok, state}
      end
    end

    spec = [
      strategy: Custom,
      config: [nodes: [:c1@h, :c2@h], test: self()],
      connect: connect(dist, %{:c2@h => false}),
      list_nodes: listed(dist, [])
    ]

    capture_log(fn ->
      start_supervised!({Cluster.Supervisor, [[{t, spec}], [name: :"#{t}_sup"]]})
      assert_receive {:custom_result, {:error, [{:c2@h, false}]}, %Cluster.Strategy.State{} = state}
      assert state.topology == t
      assert state.disconnect == {:erlang, :disconnect_node, []}
      assert [{^t, _pid, :worker, _}] = Supervisor.which_children(:"#{t}_sup")
    end)
  end
end
