defmodule LibclusterRs.ContainmentTest do
  # Nothing a user's MFA or resolver fun does crashes a topology or anything above it, every
  # failure shows in Cluster.status, and every process a topology starts ends with it.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually

  alias Cluster.Strategy.DNSPoll
  alias LibclusterRs.Test.{FakeDist, Faulty}

  @moduletag capture_log: true
  @moduletag timeout: 180_000

  @ip1 {10, 77, 0, 1}
  @ip2 {10, 77, 0, 2}
  # Every fourth poll omits app@10.77.0.2, so it is connected, then pruned (disconnected), and so
  # on; it stays long enough for a hanging connect to reach its deadline before the prune.
  @answers [[@ip1, @ip2], [@ip1, @ip2], [@ip1, @ip2], [@ip1]]

  # Short deadlines and intervals, so that a few rounds take a fraction of a second.
  @membership [
    connect_timeout: 60,
    list_nodes_timeout: 100,
    backoff_min: 10,
    backoff_max: 40,
    min_dial_interval: 20
  ]

  defp topology(table, faults, opts \\ []) do
    interval = Keyword.get(opts, :interval, 40)
    for op <- [:connect, :disconnect, :list_nodes], do: FakeDist.set(table, op, faults[op] || :accept)

    [
      strategy: DNSPoll,
      config: [
        query: "app.test",
        node_basename: "app",
        polling_interval: interval,
        resolver: Faulty.resolver(table, faults[:resolver], @answers),
        resolver_timeout: 100
      ],
      membership: @membership
    ] ++ FakeDist.mfas(table)
  end

  # The user's own supervision tree: a Supervisor with Cluster.Supervisor as a child.
  defp start_user_tree(name, topologies) do
    sup_name = :"#{name}_cluster_sup"
    children = [{Cluster.Supervisor, [topologies, [name: sup_name]]}]
    {:ok, user} = Supervisor.start_link(children, strategy: :one_for_one, max_restarts: 3, max_seconds: 5)
    Process.unlink(user)
    cluster = Process.whereis(sup_name)
    [{_, strategy, _, _}] = Supervisor.which_children(cluster)
    %{user: user, cluster: cluster, cluster_name: sup_name, strategy: strategy}
  end

  defp stop_user_tree(%{user: user}) do
    if Process.alive?(user), do: Supervisor.stop(user)
  catch
    :exit, _ -> :ok
  end

  @targets [:connect, :disconnect, :list_nodes, :resolver]
  @kinds [:raise, :exit, :throw, :garbage, :hang]

  test "the fault matrix: every MFA and the resolver, failing in every way, always or every 4th call" do
    app_root = Process.whereis(LibclusterRs.AppRoot)
    assert is_pid(app_root)

    cases =
      for target <- @targets, kind <- @kinds, p <- [1.0, 0.25] do
        name = :"fault_#{target}_#{kind}_#{round(p * 100)}"
        table = FakeDist.new()
        tree = start_user_tree(name, [{name, topology(table, %{target => {kind, p}})}])
        {name, target, kind, p, table, tree}
      end

    on_exit(fn -> for {_, _, _, _, _, tree} <- cases, do: stop_user_tree(tree) end)

    # Every topology has entered its fault at least twice (the table counts the calls: a fault
    # "every 4th call" enters on calls 1, 5, 9...), i.e. lived through it; then nothing may have
    # died or restarted, and each shows its fault in its status.
    eventually(
      fn -> Enum.all?(cases, &served_twice?/1) end,
      30_000,
      fn -> "faults not served twice: #{inspect(for c <- cases, not served_twice?(c), do: elem(c, 0))}" end
    )

    failures =
      for {name, target, kind, p, _table, tree} <- cases,
          problem = check_case(name, target, kind, p, tree),
          do: "#{name}: #{problem}"

    assert failures == [], Enum.join(failures, "\n")

    # the application is still up, with the same root
    assert Process.whereis(LibclusterRs.AppRoot) == app_root
    assert Enum.any?(Application.started_applications(), &(elem(&1, 0) == :libcluster_rs))
  end

  defp served_twice?({_name, target, _kind, p, table, _tree}) do
    calls = :ets.lookup(table, {:calls, target}) |> Enum.map(&elem(&1, 1)) |> Enum.sum()
    calls >= if(p >= 1.0, do: 2, else: 5)
  end

  defp check_case(name, target, kind, p, tree) do
    [{_, strategy, _, _}] =
      if Process.alive?(tree.cluster),
        do: Supervisor.which_children(tree.cluster),
        else: [{nil, nil, nil, nil}]

    cond do
      not Process.alive?(tree.user) -> "the user's supervisor died"
      Process.whereis(tree.cluster_name) != tree.cluster -> "Cluster.Supervisor was restarted"
      strategy != tree.strategy -> "the topology's strategy was restarted"
      true -> check_status(name, target, kind, p)
    end
  end

  defp expected_membership(:list_nodes, p) when p >= 1.0, do: [:unknown]
  defp expected_membership(:list_nodes, _p), do: [:ok, :unknown]
  defp expected_membership(_target, _p), do: [:ok]

  defp check_status(name, target, kind, p) do
    {:ok, status} = Cluster.status(name)

    shown? =
      case {target, kind} do
        {:resolver, _} ->
          status.last_error != nil

        {mfa, _} ->
          match?(%{mfa: _, error: _}, Map.get(status, :mfa_errors, %{})[mfa])
      end

    cond do
      status.state != :running -> "state #{inspect(status.state)}"
      # while list_nodes fails for good, the membership is unknown (every 4th call: it may be either)
      status.membership not in expected_membership(target, p) -> "membership #{inspect(status.membership)}"
      not shown? -> "the #{target} #{kind} (p=#{p}) failure is not in the status: #{inspect(status)}"
      true -> nil
    end
  end

  test "the failure is named in the status: MFA and error" do
    table = FakeDist.new()
    name = :fault_named
    tree = start_user_tree(name, [{name, topology(table, %{list_nodes: {:raise, 1.0}})}])
    on_exit(fn -> stop_user_tree(tree) end)

    status =
      eventually(fn ->
        {:ok, s} = Cluster.status(name)
        s.mfa_errors[:list_nodes] && s
      end)

    assert %{mfa: "LibclusterRs.Test.FakeDist.list_nodes/1", error: error, count: n, failing: true} =
             status.mfa_errors.list_nodes

    assert error =~ "raised RuntimeError: list_nodes fault"
    assert n >= 1
  end

  test "a raising MFA is logged once per streak, naming the MFA" do
    table = FakeDist.new()
    name = :fault_logged

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        tree = start_user_tree(name, [{name, topology(table, %{list_nodes: {:raise, 1.0}})}])

        eventually(fn ->
          match?({:ok, %{mfa_errors: %{list_nodes: %{count: c}}}} when c >= 5, Cluster.status(name))
        end)

        stop_user_tree(tree)
      end)

    lines =
      log |> String.split("\n") |> Enum.filter(&(&1 =~ "LibclusterRs.Test.FakeDist.list_nodes/1 raised"))

    assert length(lines) == 1, log
  end

  test "Cluster.status answers when a membership or a discovery is stuck, and nothing crashes" do
    table = FakeDist.new()
    name = :status_stuck
    tree = start_user_tree(name, [{name, topology(table, %{}, interval: 1_000)}])
    on_exit(fn -> stop_user_tree(tree) end)
    [{membership, _}] = Registry.lookup(LibclusterRs.Registry, {:membership, name})

    :ok = :sys.suspend(membership)
    # (the discovery asks the membership for its part and gives up after its own deadline: the
    # answer says so, and the discovery lives on and answers again)
    {:ok, status} = Cluster.status(name)
    assert status.membership == :unresponsive
    assert status.state == :running
    assert {:ok, %{membership: :unresponsive}} = Cluster.status(name)
    assert Process.alive?(tree.strategy)
    :ok = :sys.resume(membership)
    assert {:ok, %{membership: :ok}} = Cluster.status(name)

    :ok = :sys.suspend(tree.strategy)
    assert {:ok, %{state: :unresponsive}} = Cluster.status(name)
    assert %{^name => %{state: :unresponsive}} = Cluster.status()
    :ok = :sys.resume(tree.strategy)
    assert {:ok, %{state: :running}} = Cluster.status(name)
    assert [{_, pid, _, _}] = Supervisor.which_children(tree.cluster)
    assert pid == tree.strategy
  end

  test "the custom-strategy status does not hang on a hanging list_nodes" do
    table = FakeDist.new(list_nodes: :hang)
    name = :custom_hang

    spec = [
      strategy: LibclusterRs.Test.CustomStrategy,
      list_nodes: FakeDist.mfas(table)[:list_nodes]
    ]

    tree = start_user_tree(name, [{name, spec}])
    on_exit(fn -> stop_user_tree(tree) end)
    {micros, {:ok, status}} = :timer.tc(fn -> Cluster.status(name) end)
    assert status.state == :running
    assert status.connected == []
    assert micros < 3_000_000
  end

  describe "every process a topology starts ends with it" do
    # Connect, disconnect and list_nodes hang in turn; each cycle waits until the hanging call is
    # in flight, then stops the topology.
    test "1,000 start/stop cycles with hanging MFAs leave no process behind" do
      table = FakeDist.new()

      cycle = fn i ->
        target = Enum.at([:connect, :disconnect, :list_nodes, :resolver], rem(i, 4))
        name = :"cycle_#{rem(i, 4)}"
        faults = %{target => {:hang, 1.0}}
        FakeDist.take_all_down(table)
        {:ok, sup} = Cluster.Supervisor.start_link([[{name, topology(table, faults, interval: 5)}]])
        assert_receive {:fault_entered, ^target, :hang}, 5_000
        Supervisor.stop(sup)
        flush()
      end

      # warm up: first-use processes (logger, code loading) are not leaks
      for i <- 0..7, do: cycle.(i)
      before = settled_count()

      for i <- 1..1_000, do: cycle.(i)

      after_count = settled_count(before)
      assert after_count == before, "#{after_count - before} process(es) left after 1,000 cycles"
    end
  end

  defp flush do
    receive do
      {:fault_entered, _, _} -> flush()
      {:connect, _} -> flush()
      {:disconnect, _} -> flush()
    after
      0 -> :ok
    end
  end

  # The process count once it stops changing (tasks killed by a stopping topology exit
  # asynchronously), or once it reaches `target`.
  defp settled_count(target \\ nil) do
    Enum.reduce_while(1..100, length(Process.list()), fn _, last ->
      Process.sleep(50)
      now = length(Process.list())
      if now == target or (target == nil and now == last), do: {:halt, now}, else: {:cont, now}
    end)
  end
end
