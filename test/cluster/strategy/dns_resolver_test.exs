defmodule Cluster.Strategy.DNSResolverTest do
  # The DNS strategies with user `resolver` funs (libcluster's seam) and fake connect/list_nodes
  # MFAs: no DNS server, no real nodes.
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually
  import ExUnit.CaptureLog

  alias LibclusterRs.Discovery
  alias Cluster.Strategy.{DNSPoll, Kubernetes}
  alias LibclusterRs.Test.FakeDist

  defp start(table, strategy, config) do
    topology = :"dns_#{System.unique_integer([:positive])}"
    spec = {Cluster.Supervisor, [[{topology, FakeDist.topology(table, strategy, config)}]]}
    sup = start_supervised!(Supervisor.child_spec(spec, id: topology))
    [{^topology, pid, _, _}] = Supervisor.which_children(sup)
    pid
  end

  # A resolver whose answers the test changes: an Agent holding the current answer.
  defp answers(initial) do
    {:ok, agent} = Agent.start_link(fn -> initial end)
    agent
  end

  defp answer(agent), do: Agent.get(agent, & &1)
  defp set_answer(agent, value), do: Agent.update(agent, fn _ -> value end)

  describe "DNSPoll" do
    test "connects base@ip for IPv4 and IPv6 answers, with the query as a charlist" do
      table = FakeDist.new()
      test = self()

      resolver = fn q ->
        send(test, {:asked, q})
        [{10, 0, 0, 1}, {0xFD00, 0, 0, 0, 0, 0, 0, 1}]
      end

      start(table, DNSPoll,
        query: "app.internal",
        node_basename: "app",
        resolver: resolver,
        polling_interval: 100
      )

      assert_receive {:asked, ~c"app.internal"}, 1_000
      assert_receive {:connect, :"app@10.0.0.1"}, 1_000
      assert_receive {:connect, :"app@fd00::1"}, 1_000
    end

    test "poll_interval is an alias of polling_interval, and there is one poll per interval" do
      table = FakeDist.new()
      {:ok, times} = Agent.start_link(fn -> [] end)

      resolver = fn _ ->
        Agent.update(times, &[System.monotonic_time(:millisecond) | &1])
        []
      end

      pid = start(table, DNSPoll, query: "a", node_basename: "app", poll_interval: 200, resolver: resolver)
      assert Discovery.status(pid).interval == 200
      # The sleep is the measurement window: the polls it saw are the test.
      Process.sleep(1_100)
      times = times |> Agent.get(& &1) |> Enum.reverse()
      gaps = times |> Enum.zip(tl(times)) |> Enum.map(fn {a, b} -> b - a end)
      # One timer chain with ±10% jitter: every gap is about 200 ms, never two polls per interval.
      assert length(times) >= 4, inspect(times)
      assert Enum.all?(gaps, &(&1 >= 175)), inspect(gaps)
    end

    test "takes a list of queries and {basename, query} pairs" do
      table = FakeDist.new()

      resolver = fn
        ~c"web.internal" -> [{10, 0, 0, 1}]
        ~c"worker.internal" -> [{10, 0, 0, 2}]
        ~c"db.internal" -> [{10, 0, 0, 3}]
      end

      start(table, DNSPoll,
        query: ["web.internal", {"worker", "worker.internal"}, {"db", "db.internal"}],
        node_basename: "web",
        resolver: resolver
      )

      assert_receive {:connect, :"web@10.0.0.1"}, 1_000
      assert_receive {:connect, :"worker@10.0.0.2"}, 1_000
      assert_receive {:connect, :"db@10.0.0.3"}, 1_000
    end

    test "only pairs need no node_basename" do
      table = FakeDist.new()
      start(table, DNSPoll, query: [{"w", "w.internal"}], resolver: fn _ -> [{10, 0, 0, 7}] end)
      assert_receive {:connect, :"w@10.0.0.7"}, 1_000
    end

    test "a missing or invalid query or node_basename boots, says why once at error level, and shows it in status" do
      for config <- [
            [node_basename: "app"],
            [query: "", node_basename: "app"],
            [query: 42, node_basename: "app"],
            [query: "app.internal"],
            [query: "app.internal", node_basename: ""]
          ] do
        table = FakeDist.new()
        topology = :"dns_#{System.unique_integer([:positive])}"

        log =
          capture_log(fn ->
            entry = FakeDist.topology(table, DNSPoll, [{:resolver, fn _ -> [{10, 0, 0, 1}] end} | config])
            {:ok, sup} = Cluster.Supervisor.start_link([[{topology, entry}]])
            # It runs, as libcluster's DNSPoll does (libcluster logs and connects nothing, no crash).
            assert [{^topology, pid, _, _}] = Supervisor.which_children(sup)
            assert is_pid(pid), inspect(config)

            assert {:ok, status} = Cluster.status(topology)
            assert status.state == :invalid_config
            assert %{kind: :config, message: message} = status.last_error
            assert message =~ ":query" or message =~ ":node_basename", message
            assert status.connected == [] and status.pending == %{}
            assert Cluster.leave(topology) == :ok
            Supervisor.stop(sup)
          end)

        assert [_once] = Regex.scan(~r/\[error\].*\[libcluster:#{topology}\].*connects no node/, log),
               inspect({config, log})

        refute_received {:connect, _}
      end
    end

    test "Kubernetes.DNS and DNSSRV without their required keys boot, connect nothing and say why in status" do
      for {strategy, config, key} <- [
            {Kubernetes.DNS, [service: "svc"], ":application_name"},
            {Kubernetes.DNS, [application_name: "a"], ":service"},
            {Kubernetes.DNSSRV, [service: "s", application_name: "a"], ":namespace"}
          ] do
        table = FakeDist.new()
        topology = :"k8sdns_#{System.unique_integer([:positive])}"

        log =
          capture_log(fn ->
            entry =
              FakeDist.topology(table, strategy, [{:resolver, fn _ -> {:error, :nxdomain} end} | config])

            {:ok, sup} = Cluster.Supervisor.start_link([[{topology, entry}]])

            assert {:ok, %{state: :invalid_config, last_error: %{message: message}}} =
                     Cluster.status(topology)

            assert message =~ key
            Supervisor.stop(sup)
          end)

        assert log =~ "[error]" and log =~ key
        refute_received {:connect, _}
      end
    end

    test "other invalid options raise ArgumentError naming the key" do
      for {key, value} <- [
            nameservers: ["nope"],
            resource_types: [:mx],
            query_timeout: 0,
            polling_interval: -1
          ] do
        error =
          assert_raise ArgumentError, fn ->
            DNSPoll.init(%Cluster.Strategy.State{
              topology: :t,
              config: [{key, value}, query: "a", node_basename: "b"]
            })
          end

        assert error.message =~ inspect(key)
      end
    end

    test "a slow resolver does not stall the strategy, and its timeout prunes nothing" do
      table = FakeDist.new()
      agent = answers({:ok, [{10, 0, 0, 1}]})

      resolver = fn _ ->
        case answer(agent) do
          {:ok, ips} -> ips
          :hang -> Process.sleep(:infinity)
        end
      end

      pid =
        start(table, DNSPoll,
          query: "a",
          node_basename: "app",
          resolver: resolver,
          polling_interval: 100,
          resolver_timeout: 300,
          membership: [prune: :immediate]
        )

      assert_receive {:connect, :"app@10.0.0.1"}, 1_000

      log =
        capture_log(fn ->
          set_answer(agent, :hang)
          # The strategy answers while the resolver hangs.
          {time, status} = :timer.tc(fn -> Discovery.status(pid) end)
          assert time < 50_000
          assert status.mode in [:idle, :round]
          eventually(fn -> Discovery.status(pid).error_streak >= 1 end, 5_000)
          Logger.flush()
        end)

      assert log =~ "did not answer within 300 ms"
      refute_received {:disconnect, _}
      assert FakeDist.up(table) == [:"app@10.0.0.1"]
    end

    test "a resolver that raises is an error, not zero nodes" do
      table = FakeDist.new()
      agent = answers({:ok, [{10, 0, 0, 1}]})

      resolver = fn _ ->
        case answer(agent) do
          {:ok, ips} -> ips
          :raise -> raise "boom"
        end
      end

      pid =
        start(table, DNSPoll,
          query: "a",
          node_basename: "app",
          resolver: resolver,
          polling_interval: 50,
          membership: [prune: :immediate]
        )

      assert_receive {:connect, :"app@10.0.0.1"}, 1_000

      log =
        capture_log(fn ->
          set_answer(agent, :raise)
          eventually(fn -> Discovery.status(pid).error_streak >= 1 end, 5_000)
          Logger.flush()
        end)

      assert log =~ "boom"
      refute_received {:disconnect, _}
    end

    test "with confirm_empty: 2, an empty answer is applied only after two consecutive empty polls" do
      table = FakeDist.new()
      test = self()
      # A scripted sequence of answers, one per poll; the last one repeats.
      {:ok, script} = Agent.start_link(fn -> [[{10, 0, 0, 1}], [], [{10, 0, 0, 1}], [], []] end)

      resolver = fn _ ->
        ips =
          Agent.get_and_update(script, fn
            [h] -> {h, [h]}
            [h | t] -> {h, t}
          end)

        send(test, {:answered, ips})
        ips
      end

      start(table, DNSPoll,
        query: "a",
        node_basename: "app",
        resolver: resolver,
        polling_interval: 100,
        confirm_empty: 2,
        membership: [prune: :immediate]
      )

      assert_receive {:connect, :"app@10.0.0.1"}, 1_000
      assert_receive {:answered, []}, 1_000
      assert_receive {:answered, [_]}, 1_000
      refute_received {:disconnect, _}
      assert_receive {:answered, []}, 1_000
      assert_receive {:answered, []}, 1_000
      assert_receive {:disconnect, :"app@10.0.0.1"}, 1_000
    end

    test "rotating answers do not make nodes flap with the recommended grace period" do
      table = FakeDist.new()
      {:ok, counter} = Agent.start_link(fn -> 0 end)
      all = for i <- 1..6, do: {10, 0, 0, i}

      # Each poll returns 3 of the 6 records, rotating, as some DNS services do.
      resolver = fn _ ->
        n = Agent.get_and_update(counter, &{&1, &1 + 1})
        Enum.map(0..2, &Enum.at(all, rem(n + &1, 6)))
      end

      pid =
        start(table, DNSPoll,
          query: "a",
          node_basename: "app",
          resolver: resolver,
          polling_interval: 50,
          membership: [prune: LibclusterRs.DNS.recommended_grace(50)]
        )

      assert Discovery.status(pid).membership.opts.prune == {:grace_period, 30_000}
      # Nothing is pruned while the answers flap: after a dozen polls (each node missing from six
      # of them), the three the last answer omitted wait out their grace period, and the
      # membership disconnected none.
      eventually(fn -> Agent.get(counter, & &1) >= 12 end, 5_000)
      assert length(Discovery.status(pid).membership.missing) == 3
      refute_received {:disconnect, _}
      assert length(FakeDist.up(table)) == 6
    end

    test "a node really gone is pruned after the grace period" do
      table = FakeDist.new()
      agent = answers({:ok, [{10, 0, 0, 1}, {10, 0, 0, 2}]})
      resolver = fn _ -> elem(answer(agent), 1) end

      start(table, DNSPoll,
        query: "a",
        node_basename: "app",
        resolver: resolver,
        polling_interval: 50,
        membership: [prune: {:grace_period, 150}]
      )

      assert_receive {:connect, :"app@10.0.0.2"}, 1_000
      set_answer(agent, {:ok, [{10, 0, 0, 1}]})
      gone_at = System.monotonic_time(:millisecond)
      assert_receive {:disconnect, :"app@10.0.0.2"}, 1_000
      assert System.monotonic_time(:millisecond) - gone_at >= 140
      assert FakeDist.up(table) == [:"app@10.0.0.1"]
    end

    test "an explicit prune policy wins over the DNS default" do
      table = FakeDist.new()

      pid =
        start(table, DNSPoll,
          query: "a",
          node_basename: "b",
          resolver: fn _ -> [] end,
          membership: [prune: :never]
        )

      assert Discovery.status(pid).membership.opts.prune == :never
    end

    test "answers that are not IP tuples are dropped" do
      table = FakeDist.new()

      start(table, DNSPoll,
        query: "a",
        node_basename: "app",
        resolver: fn _ -> [:junk, {300, 0, 0, 1}, "x", {10, 0, 0, 9}] end
      )

      assert_receive {:connect, :"app@10.0.0.9"}, 1_000
      refute_receive {:connect, _}, 200
    end
  end

  describe "Kubernetes.DNS" do
    test "uses the resolver's hostent, CNAME aliases and all" do
      table = FakeDist.new()

      resolver = fn ~c"myapp-headless" ->
        {:ok, {:hostent, ~c"real.svc", [~c"myapp-headless"], :inet, 4, [{10, 1, 0, 1}, {10, 1, 0, 2}]}}
      end

      start(table, Kubernetes.DNS, service: "myapp-headless", application_name: "myapp", resolver: resolver)
      assert_receive {:connect, :"myapp@10.1.0.1"}, 1_000
      assert_receive {:connect, :"myapp@10.1.0.2"}, 1_000
    end

    test "an IPv6 hostent gives IPv6 node names" do
      table = FakeDist.new()
      resolver = fn _ -> {:ok, {:hostent, ~c"svc", [], :inet6, 16, [{0xFD00, 0, 0, 0, 0, 0, 0, 0x10}]}} end
      start(table, Kubernetes.DNS, service: "svc", application_name: "myapp", resolver: resolver)
      assert_receive {:connect, :"myapp@fd00::10"}, 1_000
    end

    test "a resolver error is an error and never prunes; nxdomain is an empty answer" do
      table = FakeDist.new()
      agent = answers({:ok, {:hostent, ~c"svc", [], :inet, 4, [{10, 1, 0, 1}]}})

      pid =
        start(table, Kubernetes.DNS,
          service: "svc",
          application_name: "myapp",
          resolver: fn _ -> answer(agent) end,
          polling_interval: 50,
          membership: [prune: :immediate]
        )

      assert_receive {:connect, :"myapp@10.1.0.1"}, 1_000

      capture_log(fn ->
        set_answer(agent, {:error, :timeout})
        eventually(fn -> Discovery.status(pid).error_streak >= 1 end, 5_000)
        refute_received {:disconnect, _}
      end)

      set_answer(agent, {:error, :nxdomain})
      assert_receive {:disconnect, :"myapp@10.1.0.1"}, 3_000
    end

    test "missing service or application_name connects nothing" do
      log =
        capture_log(fn ->
          assert :ignore =
                   Kubernetes.DNS.init(%Cluster.Strategy.State{topology: :t, config: [service: "svc"]})

          assert :ignore =
                   Kubernetes.DNS.init(%Cluster.Strategy.State{topology: :t, config: [application_name: "a"]})
        end)

      assert log =~ ":application_name"
      assert log =~ ":service"
    end
  end

  describe "Kubernetes.DNSSRV" do
    test "connects app@<srv target> from the resolver's SRV hostent" do
      table = FakeDist.new()
      test = self()

      resolver = fn q ->
        send(test, {:asked, q})

        {:ok,
         {:hostent, q, [], :srv, 2,
          [
            {10, 50, 4000, ~c"myapp-0.myapp-headless.default.svc.cluster.local"},
            {10, 50, 4000, ~c"myapp-1.myapp-headless.default.svc.cluster.local"}
          ]}}
      end

      start(table, Kubernetes.DNSSRV,
        service: "myapp-headless",
        namespace: "default",
        application_name: "myapp",
        resolver: resolver
      )

      assert_receive {:asked, query}, 1_000

      assert query ==
               String.to_charlist(Kubernetes.DNSSRV.query("myapp-headless", "default", System.get_env()))

      assert_receive {:connect, :"myapp@myapp-0.myapp-headless.default.svc.cluster.local"}, 1_000
      assert_receive {:connect, :"myapp@myapp-1.myapp-headless.default.svc.cluster.local"}, 1_000
    end

    test "the query uses CLUSTER_DOMAIN or cluster.local." do
      assert Kubernetes.DNSSRV.query("s", "ns", %{"CLUSTER_DOMAIN" => "corp.example."}) ==
               "s.ns.svc.corp.example."

      assert Kubernetes.DNSSRV.query("s", "ns", %{}) == "s.ns.svc.cluster.local."
    end

    test "missing namespace connects nothing" do
      assert capture_log(fn ->
               assert :ignore =
                        Kubernetes.DNSSRV.init(%Cluster.Strategy.State{
                          topology: :t,
                          config: [service: "s", application_name: "a"]
                        })
             end) =~ ":namespace"
    end
  end

  describe "libcluster's defaults (prune at once, empty answers at once)" do
    # The three DNS strategies, each with a resolver fun whose answer the test sets: `ips` to the
    # fun's native shape.
    defp strategies do
      [
        {DNSPoll, [query: "a", node_basename: "app"], &Function.identity/1},
        {Kubernetes.DNS, [service: "svc", application_name: "app"],
         &{:ok, {:hostent, ~c"svc", [], :inet, 4, &1}}},
        {Kubernetes.DNSSRV, [service: "svc", namespace: "ns", application_name: "app"],
         fn ips ->
           {:ok, {:hostent, ~c"svc", [], :srv, length(ips), Enum.map(ips, &{10, 50, 4000, :inet.ntoa(&1)})}}
         end}
      ]
    end

    defp start_default(strategy, base, shape, initial, meta \\ nil) do
      table = FakeDist.new()
      test = self()
      agent = answers(initial)

      # `{:once, answer}` is served to one poll; the polls after it hang (each ends as a resolver
      # timeout, an error, which never prunes), so whatever the membership does next was decided
      # by that one answer, however loaded the machine.
      resolver = fn _ ->
        case serve(agent) do
          :hold ->
            Process.sleep(:infinity)

          ips ->
            send(test, {:answered, ips})
            if is_list(ips), do: shape.(ips), else: ips
        end
      end

      config = base ++ [resolver: resolver, polling_interval: 50]
      topology = :"dns_default_#{System.unique_integer([:positive])}"
      spec = FakeDist.topology(table, strategy, config)
      FakeDist.bring_up(table, meta || [])

      {:ok, pid} =
        strategy.start_link([
          %Cluster.Strategy.State{
            topology: topology,
            config: config,
            connect: spec[:connect],
            disconnect: spec[:disconnect],
            list_nodes: spec[:list_nodes],
            meta: if(meta, do: MapSet.new(meta))
          }
        ])

      on_exit(fn -> if Process.alive?(pid), do: Process.exit(pid, :kill) end)
      {pid, agent, table}
    end

    defp serve(agent) do
      Agent.get_and_update(agent, fn
        {:once, answer} -> {answer, :hold}
        :hold -> {:hold, :hold}
        answer -> {answer, answer}
      end)
    end

    # Ends one loop round's strategy and forgets its messages, so that the next round's asserts
    # only ever see the next round's.
    defp stop_default(pid) do
      Process.unlink(pid)
      ref = Process.monitor(pid)
      Process.exit(pid, :kill)
      assert_receive {:DOWN, ^ref, _, _, _}
      flush()
    end

    defp flush do
      receive do
        _ -> flush()
      after
        0 -> :ok
      end
    end

    test "a node the next poll omits is disconnected within that poll" do
      for {strategy, base, shape} <- strategies() do
        {pid, agent, table} = start_default(strategy, base, shape, [{10, 0, 0, 1}, {10, 0, 0, 2}])
        assert Discovery.status(pid).membership.opts.prune == :immediate
        assert_receive {:connect, :"app@10.0.0.2"}, 1_000
        set_answer(agent, {:once, [{10, 0, 0, 1}]})
        # the first poll that omits it disconnects it (the polls after it hang)
        assert_receive {:answered, [_]}, 1_000
        assert_receive {:disconnect, :"app@10.0.0.2"}, 5_000
        assert FakeDist.up(table) == [:"app@10.0.0.1"], inspect(strategy)
        stop_default(pid)
      end
    end

    test "a node given in the initial State.meta and omitted by the first poll is disconnected" do
      for {strategy, base, shape} <- strategies() do
        old = :"app@10.0.0.9"
        {pid, _agent, table} = start_default(strategy, base, shape, [{10, 0, 0, 1}], [old])
        assert_receive {:disconnect, ^old}, 1_000
        assert_receive {:connect, :"app@10.0.0.1"}, 1_000
        assert FakeDist.up(table) == [:"app@10.0.0.1"], inspect(strategy)
        stop_default(pid)
      end
    end

    test "an empty answer (no records, or NXDOMAIN) is applied at the first poll" do
      for {strategy, base, shape} <- strategies(), empty <- [[], {:error, :nxdomain}] do
        {pid, agent, table} = start_default(strategy, base, shape, [{10, 0, 0, 1}])
        assert_receive {:connect, :"app@10.0.0.1"}, 1_000
        set_answer(agent, {:once, empty})
        # the first empty answer disconnects it (the polls after it hang)
        assert_receive {:answered, ^empty}, 1_000
        assert_receive {:disconnect, :"app@10.0.0.1"}, 5_000
        assert FakeDist.up(table) == [], inspect({strategy, empty})
        stop_default(pid)
      end
    end

    test "DNS errors (timeout, SERVFAIL, REFUSED) still never prune" do
      for {strategy, base, shape} <- strategies() do
        {pid, agent, table} = start_default(strategy, base, shape, [{10, 0, 0, 1}])
        assert_receive {:connect, :"app@10.0.0.1"}, 1_000

        capture_log(fn ->
          for error <- [:timeout, :servfail, :refused] do
            set_answer(agent, {:error, error})
            assert_receive {:answered, {:error, ^error}}, 1_000
            assert_receive {:answered, {:error, ^error}}, 3_000
          end

          assert Discovery.status(pid).error_streak >= 1
        end)

        refute_received {:disconnect, _}
        assert FakeDist.up(table) == [:"app@10.0.0.1"], inspect(strategy)
        stop_default(pid)
      end
    end
  end

  describe "combining several queries" do
    test "some failing: found nodes are connected, nothing is pruned, the round is an error" do
      assert {:partial_nodes, ["a@1"], {:timeout, msg}} =
               LibclusterRs.DNS.combine([{"q1", {:ok, ["a@1"]}}, {"q2", {:error, :timeout, "slow"}}])

      assert msg == "q2: slow"
      assert {:nodes, ["a@1"]} = LibclusterRs.DNS.combine([{"q1", {:ok, ["a@1", "a@1"]}}, {"q2", :nothing}])
      assert {:discovery_error, :io, _} = LibclusterRs.DNS.combine([{"q1", {:error, :io, "x"}}])
    end

    test "with a resolver fun: the other queries' nodes still connect, and nothing is disconnected" do
      table = FakeDist.new()
      agent = answers(:ok)

      resolver = fn
        ~c"good" -> [{10, 0, 0, 1}]
        ~c"flaky" -> if answer(agent) == :ok, do: [{10, 0, 0, 2}], else: {:error, :timeout}
      end

      capture_log(fn ->
        pid =
          start(table, DNSPoll,
            query: ["good", "flaky"],
            node_basename: "app",
            resolver: resolver,
            polling_interval: 50,
            membership: [prune: :immediate]
          )

        assert_receive {:connect, :"app@10.0.0.2"}, 1_000
        set_answer(agent, :fail)
        # Nothing is pruned while one query fails: three failed rounds in a row, and the
        # membership still knows both nodes and disconnected none.
        eventually(fn -> Discovery.status(pid).error_streak >= 3 end, 5_000)
        assert Discovery.status(pid).membership.known == MapSet.new([:"app@10.0.0.1", :"app@10.0.0.2"])
        refute_received {:disconnect, _}
      end)

      assert FakeDist.up(table) == [:"app@10.0.0.1", :"app@10.0.0.2"]
    end
  end
end
