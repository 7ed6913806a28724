defmodule Cluster.SupervisorTest do
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog

  alias Cluster.Strategy.State

  setup do
    {:ok, t: :"sup_#{System.unique_integer([:positive])}"}
  end

  defmodule Reporter do
    @moduledoc false
    # A libcluster-style custom strategy: reports its state, then connects its `nodes` through the
    # public helper, as custom strategies do.
    use Cluster.Strategy
    use GenServer

    @impl Cluster.Strategy
    def start_link([%State{} = state]), do: GenServer.start_link(__MODULE__, state)

    @impl GenServer
    def init(state) do
      send(state.config[:test], {:started, state.topology, self(), state})

      result =
        Cluster.Strategy.connect_nodes(
          state.topology,
          state.connect,
          state.list_nodes,
          state.config[:nodes] || []
        )

      send(state.config[:test], {:connected, state.topology, result})
      {:ok, state}
    end
  end

  test "[topologies, [name: ...]]: one :one_for_one child per topology, id = topology name", %{t: t} do
    a = :"#{t}_a"
    b = :"#{t}_b"
    name = :"#{t}_supervisor"

    topologies = [
      {a, [strategy: Reporter, config: [test: self()]]},
      {b, [strategy: Reporter, config: [test: self()]]}
    ]

    pid = start_supervised!({Cluster.Supervisor, [topologies, [name: name]]})
    assert Process.whereis(name) == pid
    assert_receive {:started, ^a, pa, %State{}}
    assert_receive {:started, ^b, _pb, %State{}}

    children = Supervisor.which_children(name)
    assert Enum.sort(Enum.map(children, &elem(&1, 0))) == Enum.sort([a, b])
    assert {^a, ^pa, :worker, [Reporter]} = List.keyfind(children, a, 0)

    # :one_for_one: a crashing topology is restarted alone
    {b, pb, _, _} = List.keyfind(children, b, 0)
    Process.exit(pa, :kill)
    assert_receive {:started, ^a, pa2, _}
    assert pa2 != pa
    assert {b, pb, :worker, [Reporter]} == List.keyfind(Supervisor.which_children(name), b, 0)
  end

  test "start_link([topologies]) without options; defaults in the state", %{t: t} do
    start_supervised!({Cluster.Supervisor, [[{t, [strategy: Reporter, config: [test: self()]]}]]})
    assert_receive {:started, ^t, _, state}

    assert %State{
             topology: ^t,
             connect: {:net_kernel, :connect_node, []},
             disconnect: {:erlang, :disconnect_node, []},
             list_nodes: {:erlang, :nodes, [:connected]},
             meta: nil
           } = state

    assert state.config[:test] == self()
  end

  test "a custom strategy gets the topology's MFAs and connects through connect_nodes/4", %{t: t} do
    dist = LibclusterRs.Test.FakeDist.new()
    mfas = LibclusterRs.Test.FakeDist.mfas(dist)

    spec = [
      strategy: Reporter,
      config: [test: self(), nodes: [:"x@h.example"]],
      connect: mfas[:connect],
      list_nodes: mfas[:list_nodes]
    ]

    capture_log(fn ->
      start_supervised!({Cluster.Supervisor, [[{t, spec}]]})
      assert_receive {:connect, :"x@h.example"}
      assert_receive {:connected, ^t, :ok}
    end)
  end

  test "a built-in strategy that returns :ignore leaves no running child", %{t: t} do
    topologies = [{t, [strategy: Cluster.Strategy.Epmd, config: [hosts: []]]}]
    start_supervised!({Cluster.Supervisor, [topologies, [name: :"#{t}_s"]]})
    assert [{^t, :undefined, :worker, _}] = Supervisor.which_children(:"#{t}_s")
  end

  test "unknown topology keys log a warning naming the key", %{t: t} do
    log =
      capture_log(fn ->
        start_supervised!(
          {Cluster.Supervisor, [[{t, [strategy: Reporter, config: [test: self()], strategyy: :x]}]]}
        )

        assert_receive {:started, ^t, _, _}
      end)

    assert log =~ "[libcluster:#{t}] unknown topology key :strategyy"
  end

  describe "bad topology specs raise ArgumentError naming the topology and the key" do
    defp bad(topologies, fragments) do
      e = assert_raise ArgumentError, fn -> Cluster.Supervisor.get_configured_topologies(topologies) end
      for f <- fragments, do: assert(e.message =~ f, "#{inspect(f)} not in: #{e.message}")
      # and the supervisor does not start
      assert {:error, _} = start_supervised({Cluster.Supervisor, [topologies]})
    end

    test "strategy missing, not an atom, or not a module", %{t: t} do
      bad([{t, [config: []]}], [inspect(t), ":strategy"])
      bad([{t, [strategy: "Epmd"]}], [inspect(t), ":strategy"])
      bad([{t, [strategy: NoSuch.Strategy]}], [inspect(t), ":strategy", "NoSuch.Strategy"])
    end

    test "config not a keyword list", %{t: t} do
      bad([{t, [strategy: Reporter, config: %{a: 1}]}], [inspect(t), ":config"])
    end

    test "connect, disconnect, list_nodes not MFAs", %{t: t} do
      bad([{t, [strategy: Reporter, connect: &Node.connect/1]}], [inspect(t), ":connect"])
      bad([{t, [strategy: Reporter, disconnect: {:erlang, :disconnect_node}]}], [inspect(t), ":disconnect"])
      bad([{t, [strategy: Reporter, list_nodes: {:erlang, :nodes, :connected}]}], [inspect(t), ":list_nodes"])
    end

    test "a topology that is not a keyword list, topologies that are not one", %{t: t} do
      bad([{t, :epmd}], [inspect(t)])
      bad([:epmd], ["topologies"])
    end

    test "a built-in strategy with a bad value fails the start naming the key", %{t: t} do
      spec = [strategy: Cluster.Strategy.Epmd, config: [hosts: [:a@h], timeout: 0]]

      assert {:error, reason} = start_supervised({Cluster.Supervisor, [[{t, spec}]]})
      assert inspect(reason) =~ "ArgumentError"
      assert inspect(reason) =~ ":timeout"
    end
  end

  describe "a topology started twice" do
    defp reporter(t), do: [{t, [strategy: Reporter, config: [test: self()]]}]

    test "through config :libcluster_rs and the app's own supervisor: warned, naming both places", %{t: t} do
      # What LibclusterRs.App starts for `config :libcluster_rs, topologies: [...]`.
      start_supervised!(%{
        id: :app_sup,
        start: {Cluster.Supervisor, :start_link, [[reporter(t), [name: LibclusterRs.AppSupervisor]]]}
      })

      log =
        capture_log(fn ->
          start_supervised!(%{
            id: :own_sup,
            start: {Cluster.Supervisor, :start_link, [[reporter(t), [name: Cluster.SupervisorTest.Own]]]}
          })
        end)

      assert log =~ "[warning]"
      assert log =~ "[libcluster:#{t}] topology #{inspect(t)} is started twice"
      assert log =~ "LibclusterRs.AppSupervisor" and log =~ "config :libcluster_rs"
      assert log =~ "Cluster.SupervisorTest.Own"
    end

    test "by two unnamed supervisors: warned; other topologies are not", %{t: t} do
      first = start_supervised!(%{id: :one, start: {Cluster.Supervisor, :start_link, [[reporter(t)]]}})
      other = :"#{t}_other"

      log =
        capture_log(fn ->
          start_supervised!(%{
            id: :two,
            start: {Cluster.Supervisor, :start_link, [[reporter(t) ++ reporter(other)]]}
          })
        end)

      assert log =~ "topology #{inspect(t)} is started twice" and log =~ inspect(first)
      refute log =~ "topology #{inspect(other)} is started twice"
    end

    test "twice in one supervisor's list: an ArgumentError naming the topology", %{t: t} do
      e =
        assert_raise ArgumentError, fn ->
          Cluster.Supervisor.get_configured_topologies(reporter(t) ++ reporter(t))
        end

      assert e.message =~ inspect(t) and e.message =~ "twice"
    end
  end
end
