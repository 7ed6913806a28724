defmodule LibclusterRs.MembershipTest do
  # LibclusterRs.Membership driven directly, over the fake distribution (LibclusterRs.Test.FakeDist):
  # every dial is reported to the test as `{:connect, node}` (and, for a `:hang` or `:wait` peer, the
  # attempt's pid as `{:pending, :connect, node, pid}`), every disconnect as `{:disconnect, node}`;
  # how a dial ends is set per node, and a node not set refuses. Async: each test has a topology
  # of its own (telemetry is forwarded for those only, logs are read per topology).
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog

  alias LibclusterRs.Membership
  alias Cluster.Strategy.State
  alias LibclusterRs.Test.{FakeDist, Peer}

  @events [
    [:libcluster, :connect_node, :error],
    [:libcluster, :membership, :backoff]
  ]

  setup do
    LibclusterRs.Test.TelemetryForward.attach(@events, "mem_")
    {:ok, t: :"mem_#{System.unique_integer([:positive])}"}
  end

  # A fake distribution where each node of `peers` answers a connect as its behaviour says
  # (`:accept`, `:refuse`, `:accept_then_drop`, `:hang`, `:wait`), every other node refuses, and
  # the nodes `up` are connected already.
  defp dist(peers, up \\ []) do
    dist = FakeDist.new(reachable: [], up: up)
    for {node, behaviour} <- peers, do: FakeDist.peer(dist, node, connect: behaviour)
    dist
  end

  defp start(t, dist, opts, meta \\ nil) do
    mfas = FakeDist.mfas(dist)

    state = %State{
      topology: t,
      connect: mfas[:connect],
      disconnect: mfas[:disconnect],
      list_nodes: mfas[:list_nodes],
      meta: meta
    }

    {:ok, m} = Membership.start_link(state, opts)
    on_exit(fn -> if Process.alive?(m), do: Process.exit(m, :kill) end)
    m
  end

  # The lines a topology logged (other async modules log into the same capture).
  defp lines_of(log, topology) do
    log |> String.split("\n") |> Enum.filter(&(&1 =~ "[libcluster:#{topology}]")) |> Enum.join("\n")
  end

  defp dials(acc \\ []) do
    receive do
      {:connect, n} -> dials([n | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  @tag capture_log: true
  test "at most :max_concurrency attempts run at once; a finished one makes room", %{t: t} do
    nodes = for i <- 1..5, do: :"n#{i}@h"
    net = dist(Map.new(nodes, &{&1, :wait}))
    m = start(t, net, max_concurrency: 2)
    Membership.discovered(m, nodes)

    # (a `:wait` peer reports its connect, then the attempt's pid)
    assert_receive {:pending, :connect, n1, p1}, 2_000
    assert_receive {:pending, :connect, n2, _p2}, 2_000
    assert_received {:connect, ^n1}
    assert_received {:connect, ^n2}
    # two attempts out, three queued: the membership's own state says so
    assert connects_in_flight(m) == 2
    refute_received {:connect, _}

    FakeDist.reply(p1, :accept)
    assert_receive {:pending, :connect, n3, p3}, 2_000
    assert_received {:connect, ^n3}
    assert connects_in_flight(m) == 2
    refute_received {:connect, _}
    FakeDist.reply(p3, :refuse)
    assert_receive {:connect, n4}, 2_000
    assert_receive {:pending, :connect, ^n4, _}, 2_000
    assert connects_in_flight(m) == 2
    refute_received {:connect, _}
  end

  @tag capture_log: true
  test "a hung attempt does not delay another node and is reported as :timeout", %{t: t} do
    net = dist(%{:hang@h => :hang, :ok@h => :accept})
    m = start(t, net, connect_timeout: 1_000, backoff_min: 5_000, backoff_max: 5_000)
    t0 = System.monotonic_time(:millisecond)
    Membership.discovered(m, [:hang@h, :ok@h])
    assert_receive {:connect, :hang@h}, 2_000
    assert_receive {:pending, :connect, :hang@h, hung}, 2_000
    assert_receive {:connect, :ok@h}, 2_000
    assert Peer.wait_until(fn -> :ok@h in FakeDist.up(net) end, 500)
    # before the hung attempt's deadline (1 s, so that a loaded machine still shows it): it did
    # not wait for it
    assert System.monotonic_time(:millisecond) - t0 < 1_000

    assert_receive {:telemetry, [:libcluster, :connect_node, :error], %{duration: d},
                    %{node: :hang@h, topology: ^t, reason: :timeout}},
                   3_000

    assert System.monotonic_time(:millisecond) - t0 >= 1_000
    assert d == System.convert_time_unit(1_000, :millisecond, :native)
    refute Process.alive?(hung)

    assert_receive {:telemetry, [:libcluster, :membership, :backoff], %{failures: 1},
                    %{node: :hang@h, reason: :timeout}}

    assert %{failures: 1, last_error: :timeout, in_flight: false} = Membership.status(m).pending[:hang@h]
  end

  @tag capture_log: true
  test "a connect MFA that traps exits and never returns is ended at its deadline", %{t: t} do
    state = %State{
      topology: t,
      connect: {LibclusterRs.MembershipTest.Stubborn, :connect, [self()]},
      disconnect: {:erlang, :disconnect_node, []},
      list_nodes: {LibclusterRs.MembershipTest.Stubborn, :list_nodes, []}
    }

    {:ok, m} = Membership.start_link(state, connect_timeout: 200, backoff_min: 60_000, backoff_max: 60_000)
    on_exit(fn -> if Process.alive?(m), do: Process.exit(m, :kill) end)
    Membership.discovered(m, [:stubborn@h])
    assert_receive {:stubborn, :stubborn@h, pid}, 1_000
    ref = Process.monitor(pid)

    assert_receive {:telemetry, [:libcluster, :connect_node, :error], _,
                    %{node: :stubborn@h, reason: :timeout}},
                   2_000

    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}, 1_000
    assert %{failures: 1, last_error: :timeout, in_flight: false} = Membership.status(m).pending[:stubborn@h]
  end

  defmodule ReportSink do
    @moduledoc false
    # A logger handler that forwards every event, whatever its level or domain (supervisor reports
    # included, which Elixir's console drops by default but Erlang's default handler prints).
    def log(event, %{config: %{pid: pid}}), do: send(pid, {:log_event, event})
  end

  @tag capture_log: true
  test "a task ended at its deadline leaves no supervisor error report", %{t: t} do
    :ok = :logger.add_handler(:membership_report_sink, ReportSink, %{level: :all, config: %{pid: self()}})
    on_exit(fn -> :logger.remove_handler(:membership_report_sink) end)
    net = dist(%{:hang@h => :hang})
    m = start(t, net, connect_timeout: 100, backoff_min: 60_000, backoff_max: 60_000)
    Membership.discovered(m, [:hang@h])

    assert_receive {:telemetry, [:libcluster, :connect_node, :error], _, %{node: :hang@h, reason: :timeout}},
                   2_000

    sup = :sys.get_state(m).task_sup

    # The membership's own error line for the streak: a supervisor report would come before it.
    # Other tests run beside this one and log too: only this topology's line and this
    # membership's task supervisor count.
    ours? = fn
      %{msg: {:string, text}} ->
        text = IO.chardata_to_string(text)
        text =~ "[libcluster:#{t}]" and text =~ "did not return within 100 ms"

      _ ->
        false
    end

    assert {:ok, events} = collect_logs(ours?, 2_000)
    assert Membership.status(m).pending[:hang@h].failures == 1

    refute Enum.any?(events, fn
             %{msg: {:report, %{label: {:supervisor, _}, report: report}}} ->
               match?({^sup, _}, report[:supervisor])

             _ ->
               false
           end)
  end

  # The log events received until one matches `pred` (included), in order.
  defp collect_logs(pred, timeout, acc \\ []) do
    receive do
      {:log_event, event} ->
        if pred.(event),
          do: {:ok, Enum.reverse([event | acc])},
          else: collect_logs(pred, timeout, [event | acc])
    after
      timeout -> {:timeout, Enum.reverse(acc)}
    end
  end

  @tag capture_log: true
  test "with :pace, at most that many first dials hold a slot; a slot frees when its dial ends", %{t: t} do
    nodes = for i <- 1..6, do: :"p#{i}@h"
    net = dist(Map.new(nodes, &{&1, :wait}))
    m = start(t, net, pace: 2, pace_hold: 60_000)
    Membership.discovered(m, nodes)

    assert_receive {:pending, :connect, n1, p1}, 500
    assert_receive {:pending, :connect, n2, _p2}, 500
    # two first dials out and holding their slots, four queued
    state = :sys.get_state(m)
    assert connects_in_flight(m) == 2 and map_size(state.pacing) == 2
    assert length(state.queue) == 4
    refute_received {:pending, :connect, _, _}
    # ring order from this node (nonode@nohost sorts before p1@h)
    assert Enum.sort([n1, n2]) == [:p1@h, :p2@h]

    FakeDist.reply(p1, :accept)
    assert_receive {:pending, :connect, n3, _p3}, 500
    assert n3 == :p3@h
    assert map_size(:sys.get_state(m).pacing) == 2
  end

  @tag capture_log: true
  test "with :pace, a dial that hangs holds its slot for :pace_hold at most, then the next one starts", %{
    t: t
  } do
    net = dist(%{:a@h => :hang, :b@h => :hang, :c@h => :accept})
    m = start(t, net, pace: 1, pace_hold: 100, connect_timeout: 60_000)
    Membership.discovered(m, [:a@h, :b@h, :c@h])

    # ring order from this (non-distributed) node: a, b, c; each hang frees its slot after the hold
    assert_receive {:pending, :connect, :a@h, a}, 500
    assert_receive {:pending, :connect, :b@h, b}, 1_000
    assert_receive {:connect, :c@h}, 1_000
    assert Peer.wait_until(fn -> :c@h in FakeDist.up(net) end, 1_000)
    # the hung dials go on, within their deadline
    assert Process.alive?(a) and Process.alive?(b)
    assert connects_in_flight(m) == 2
  end

  @tag capture_log: true
  test "a failing node is retried with exponential backoff, within its bounds, while discovered", %{t: t} do
    net = dist(%{:down@h => :refuse})
    m = start(t, net, backoff_min: 40, backoff_max: 160, min_dial_interval: 1)
    Membership.discovered(m, [:down@h])

    delays =
      for failures <- 1..6 do
        assert_receive {:telemetry, [:libcluster, :membership, :backoff],
                        %{failures: ^failures, delay: delay}, %{node: :down@h, reason: false}},
                       1_000

        base = min(160, 40 * Integer.pow(2, failures - 1))
        assert delay >= floor(base * 0.8) and delay <= ceil(base * 1.2), "failure #{failures}: #{delay}"
        delay
      end

    # the delay doubles up to the maximum
    assert Enum.at(delays, 5) > Enum.at(delays, 0) * 2

    # the first attempt and (at least) five retries were real dials
    assert length(dials()) >= 6

    # no longer discovered: forgotten, and no more retries (the window outlasts backoff_max)
    Membership.discovered(m, [])
    assert Membership.status(m).pending == %{}
    _ = dials()
    Process.sleep(200)
    assert dials() == []
  end

  @tag capture_log: true
  test "a retry waits for its backoff delay", %{t: t} do
    net = dist(%{:down@h => :refuse})
    m = start(t, net, backoff_min: 200, backoff_max: 200)
    Membership.discovered(m, [:down@h])
    assert_receive {:connect, :down@h}, 2_000
    t0 = System.monotonic_time(:millisecond)
    assert_receive {:telemetry, [:libcluster, :membership, :backoff], %{delay: delay}, _}, 2_000
    assert_receive {:connect, :down@h}, 1_000
    waited = System.monotonic_time(:millisecond) - t0
    assert waited >= delay - 5 and waited >= 140, "retried after #{waited} ms, delay #{delay}"
    # a node that comes up is connected by the next retry, and its failures are forgotten
    FakeDist.peer(net, :down@h, connect: :accept)
    assert_receive {:connect, :down@h}, 1_000
    assert Peer.wait_until(fn -> Membership.status(m).pending == %{} end, 1_000)
  end

  @tag capture_log: true
  test "a discovered node that goes down is redialled (at once when it was connected long enough)", %{t: t} do
    net = dist(%{:a@h => :accept})
    m = start(t, net, stable_after: 0, min_dial_interval: 1)
    Membership.discovered(m, [:a@h])
    assert_receive {:connect, :a@h}, 2_000
    assert Peer.wait_until(fn -> FakeDist.up(net) == [:a@h] end, 2_000)

    # the peer drops the connection (silently: every {:disconnect, _} the test sees is the membership's)
    FakeDist.drop(net, :a@h)
    send(m, {:nodedown, :a@h})
    assert_receive {:connect, :a@h}, 2_000
    assert Peer.wait_until(fn -> FakeDist.up(net) == [:a@h] end, 2_000)

    # a node that is not (or no longer) discovered is not redialled on nodedown
    Membership.discovered(m, [])
    assert_receive {:disconnect, :a@h}, 2_000
    send(m, {:nodedown, :a@h})
    refute_receive {:connect, :a@h}, 150
  end

  describe "prune policies" do
    @describetag capture_log: true

    test ":immediate disconnects a node the next discovery omits", %{t: t} do
      net = dist(%{:a@h => :accept, :b@h => :accept})
      m = start(t, net, [])
      Membership.discovered(m, [:a@h, :b@h])
      assert Peer.wait_until(fn -> length(FakeDist.up(net)) == 2 end, 500)
      Membership.discovered(m, [:a@h])
      assert_receive {:disconnect, :b@h}, 2_000
      refute_receive {:disconnect, :a@h}, 50
      assert FakeDist.up(net) == [:a@h]
      # Cluster.status's disconnects.ours
      assert Membership.status(m).disconnects_made == 1
    end

    test ":never never disconnects, and stops redialling", %{t: t} do
      net = dist(%{:a@h => :accept, :b@h => :accept})
      m = start(t, net, prune: :never, backoff_min: 20, backoff_max: 20)
      Membership.discovered(m, [:a@h, :b@h])
      assert Peer.wait_until(fn -> length(FakeDist.up(net)) == 2 end, 500)
      Membership.discovered(m, [:a@h])
      refute_receive {:disconnect, _}, 200
      # b goes away by itself: it is not dialled again
      _ = dials()
      FakeDist.drop(net, :b@h)
      send(m, {:nodedown, :b@h})
      Membership.discovered(m, [:a@h])
      refute_receive {:connect, :b@h}, 150
      # and the membership disconnected nothing at any point
      refute_received {:disconnect, _}
    end

    test "{:grace_period, ms} disconnects a node still missing after ms", %{t: t} do
      net = dist(%{:a@h => :accept, :b@h => :accept})
      m = start(t, net, prune: {:grace_period, 250})
      Membership.discovered(m, [:a@h, :b@h])
      assert Peer.wait_until(fn -> length(FakeDist.up(net)) == 2 end, 500)
      t0 = System.monotonic_time(:millisecond)
      Membership.discovered(m, [:a@h])
      assert Membership.status(m).missing == [:b@h]
      assert_receive {:disconnect, :b@h}, 1_000
      assert System.monotonic_time(:millisecond) - t0 >= 250
      assert Membership.status(m).missing == []
    end

    test "{:grace_period, ms}: a rediscovery within the grace period cancels the prune", %{t: t} do
      net = dist(%{:a@h => :accept, :b@h => :accept})
      m = start(t, net, prune: {:grace_period, 200})
      Membership.discovered(m, [:a@h, :b@h])
      assert Peer.wait_until(fn -> length(FakeDist.up(net)) == 2 end, 500)
      Membership.discovered(m, [:a@h])
      Process.sleep(80)
      Membership.discovered(m, [:a@h, :b@h])
      refute_receive {:disconnect, _}, 400
      assert Enum.sort(FakeDist.up(net)) == [:a@h, :b@h]

      # missing again later: a fresh grace period, from then
      t0 = System.monotonic_time(:millisecond)
      Membership.discovered(m, [:a@h])
      assert_receive {:disconnect, :b@h}, 1_000
      assert System.monotonic_time(:millisecond) - t0 >= 200
    end

    test "a failed discovery never prunes", %{t: t} do
      net = dist(%{:a@h => :accept, :b@h => :accept})
      m = start(t, net, [])
      Membership.discovered(m, [:a@h, :b@h])
      assert Peer.wait_until(fn -> length(FakeDist.up(net)) == 2 end, 500)

      for _ <- 1..3, do: Membership.discovery_failed(m, {:http, "403 Forbidden"})
      refute_receive {:disconnect, _}, 150
      status = Membership.status(m)
      assert status.known == MapSet.new([:a@h, :b@h])
      assert status.errors == 3
      assert {{:http, "403 Forbidden"}, _at} = status.last_error
    end

    test "state.meta is the last known set: the first discovery omitting a node prunes it", %{t: t} do
      net = dist(%{}, [:a@h, :old@h])
      m = start(t, net, [], MapSet.new([:a@h, :old@h]))
      assert Membership.status(m).known == MapSet.new([:a@h, :old@h])
      Membership.discovered(m, [:a@h])
      assert_receive {:disconnect, :old@h}, 2_000
      refute_receive {:disconnect, :a@h}, 50
    end

    test "a node connected by someone else but never discovered is not pruned", %{t: t} do
      net = dist(%{:a@h => :accept}, [:other@h])
      m = start(t, net, [])
      Membership.discovered(m, [:a@h])
      assert Peer.wait_until(fn -> :a@h in FakeDist.up(net) end, 500)
      Membership.discovered(m, [])
      assert_receive {:disconnect, :a@h}, 2_000
      refute_receive {:disconnect, :other@h}, 100
    end
  end

  @tag capture_log: true
  test "a prune cancels the dropped node's queued and in-flight attempts: no dial after it", %{t: t} do
    net = dist(%{:x@h => :wait, :y@h => :wait, :z@h => :wait})
    m = start(t, net, max_concurrency: 1)
    Membership.discovered(m, [:x@h, :y@h, :z@h])
    assert_receive {:connect, first}, 2_000
    assert_receive {:pending, :connect, ^first, pid}, 2_000
    refute_receive {:connect, _}, 50

    # drop the in-flight node and one queued node; keep one
    [keep] = [:x@h, :y@h, :z@h] -- [first | Enum.take([:x@h, :y@h, :z@h] -- [first], 1)]
    [queued_dropped] = [:x@h, :y@h, :z@h] -- [first, keep]
    ref = Process.monitor(pid)
    Membership.discovered(m, [keep])
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}, 2_000
    assert_receive {:connect, ^keep}, 2_000
    assert_receive {:pending, :connect, ^keep, kp}, 2_000
    FakeDist.reply(kp, :accept)
    refute_receive {:connect, _}, 300
    assert FakeDist.up(net) == [keep]
    status = Membership.status(m)
    refute Map.has_key?(status.pending, first)
    refute Map.has_key?(status.pending, queued_dropped)
  end

  defp count_dials(node, ms) do
    deadline = System.monotonic_time(:millisecond) + ms
    count_until(node, deadline, [])
  end

  defp count_until(node, deadline, acc) do
    left = deadline - System.monotonic_time(:millisecond)

    receive do
      {:connect, ^node} -> count_until(node, deadline, [System.monotonic_time(:millisecond) | acc])
    after
      max(left, 0) -> Enum.reverse(acc)
    end
  end

  defp gaps(times), do: times |> Enum.chunk_every(2, 1, :discard) |> Enum.map(fn [a, b] -> b - a end)

  describe "no redial storm" do
    test "a connect that returns true but whose node is not listed afterwards is a failure with backoff",
         %{t: t} do
      node = :"ghost@127.0.0.1"
      net = dist(%{node => :accept_then_drop})

      log =
        capture_log(fn ->
          m = start(t, net, [])
          Membership.discovered(m, [node])
          times = count_dials(node, 2_000)
          # at most about two dials a second (today's code: ~1,000 a second)
          assert length(times) in 1..6, "#{length(times)} dials in 2 s"
          assert Enum.all?(gaps(times), &(&1 >= 450)), inspect(gaps(times))

          assert %{failures: f, last_error: :not_listed} = Membership.status(m).pending[node]
          assert f >= 1
        end)

      log = lines_of(log, t)
      refute log =~ "connected to"
      assert log =~ "list_nodes does not show it"
    end

    test "a node that connects and drops again at once keeps escalating its backoff", %{t: t} do
      node = :"flap@127.0.0.1"
      net = dist(%{node => :accept})

      capture_log(fn ->
        m = start(t, net, backoff_min: 100, backoff_max: 2_000, min_dial_interval: 100, stable_after: 1_000)
        Membership.discovered(m, [node])

        # every time it is up, it drops again right away (as a peer that disconnects on nodeup)
        delays =
          for round <- 1..5 do
            assert_receive {:connect, ^node}, 3_000
            assert Peer.wait_until(fn -> node in Membership.status(m).connected end, 1_000)
            FakeDist.drop(net, node)
            send(m, {:nodedown, node})

            assert_receive {:telemetry, [:libcluster, :membership, :backoff], %{failures: ^round, delay: d},
                            %{node: ^node, reason: :dropped}},
                           1_000

            d
          end

        # the backoff grows instead of being reset by each short-lived connection
        assert Enum.at(delays, 4) > Enum.at(delays, 0) * 4, inspect(delays)
      end)
    end

    test "failures are forgotten once a node stays connected for :stable_after", %{t: t} do
      node = :"steady@127.0.0.1"
      net = dist(%{node => :refuse})

      capture_log(fn ->
        m = start(t, net, backoff_min: 50, backoff_max: 50, min_dial_interval: 50, stable_after: 200)
        Membership.discovered(m, [node])

        assert_receive {:telemetry, [:libcluster, :membership, :backoff], %{failures: 2}, %{node: ^node}},
                       1_000

        FakeDist.peer(net, node, connect: :accept)
        assert Peer.wait_until(fn -> node in FakeDist.up(net) end, 1_000)
        Process.sleep(300)
        _ = Membership.status(m)
        FakeDist.drop(net, node)
        send(m, {:nodedown, node})
        # redialled without a backoff event: its failures were forgotten
        assert_receive {:connect, ^node}, 2_000
        refute_received {:telemetry, [:libcluster, :membership, :backoff], _, %{reason: :dropped}}
      end)
    end

    test "one node is never dialled more often than :min_dial_interval, whatever the backoff", %{t: t} do
      node = :"down@127.0.0.1"
      net = dist(%{node => :refuse})

      capture_log(fn ->
        m = start(t, net, backoff_min: 1, backoff_max: 1, min_dial_interval: 300)
        Membership.discovered(m, [node])
        # rediscoveries and nodedowns do not bypass the floor either
        for _ <- 1..10 do
          Membership.discovered(m, [node])
          send(m, {:nodedown, node})
        end

        times = count_dials(node, 1_300)
        assert length(times) in 2..6, "#{length(times)} dials"
        # The exact floor is proven on the pure core (membership/peers_test.exs); the times here
        # are when the test received each dial, which a loaded scheduler delays: half the floor
        # still tells the floor from none (gaps of 0–1 ms).
        assert Enum.all?(gaps(times), &(&1 >= 150)), inspect(gaps(times))
      end)
    end

    test "\"connected to\" is logged when a node connects, not on every round", %{t: t} do
      node = :"up@127.0.0.1"
      net = dist(%{node => :accept})

      log =
        capture_log(fn ->
          m = start(t, net, [])
          Membership.discovered(m, [node])
          assert_receive {:connect, ^node}
          for _ <- 1..5, do: Membership.discovered(m, [node])
          _ = Membership.status(m)
          Process.sleep(50)
        end)

      log = lines_of(log, t)
      assert length(String.split(log, "connected to :\"up@127.0.0.1\"")) == 2, log
    end
  end

  describe "sightings" do
    @describetag capture_log: true

    test "untrusted sightings cause at most :untrusted_connect_rate connects a second in total", %{t: t} do
      nodes = for i <- 1..200, do: :"fake#{i}@10.255.0.#{rem(i, 250) + 1}"
      net = dist(%{})
      m = start(t, net, untrusted_connect_rate: 10)
      t0 = System.monotonic_time(:millisecond)

      # a flood: every name sighted every 50 ms for 1.5 s
      for _ <- 1..30 do
        Membership.seen(m, nodes)
        Process.sleep(50)
      end

      elapsed = System.monotonic_time(:millisecond) - t0
      n = length(dials())
      # a full bucket (10) plus 10 a second
      assert n <= 10 + ceil(elapsed / 1000 * 10) + 2, "#{n} dials in #{elapsed} ms"
      assert n >= 10
      assert Membership.status(m).sightings_dropped > 0
    end

    test "trusted sightings are not rate-bounded, but get per-node backoff", %{t: t} do
      nodes = for i <- 1..50, do: :"peer#{i}@10.254.0.#{i}"
      net = dist(%{})
      m = start(t, net, backoff_min: 200, backoff_max: 1_000)

      for _ <- 1..20 do
        Membership.seen(m, nodes, trusted: true)
        Process.sleep(50)
      end

      per_node = Enum.frequencies(dials())
      assert map_size(per_node) == 50
      # ~1 s of sightings every 50 ms: a node with backoff 200, 400, 800 ms is dialled about 3 times
      assert Enum.max(Map.values(per_node)) <= 4, inspect(per_node)
    end

    test "a sighted node whose connect fails is dialled again when next heard from, and the log says so",
         %{t: t} do
      sighted = :"heard@127.0.0.1"
      discovered = :"listed@127.0.0.1"
      net = dist(%{sighted => :refuse, discovered => :refuse})

      log =
        capture_log(fn ->
          m = start(t, net, backoff_min: 30, backoff_max: 30, min_dial_interval: 1)
          Membership.seen(m, [sighted])

          assert_receive {:telemetry, [:libcluster, :membership, :backoff], %{failures: 1, delay: delay},
                          %{node: ^sighted}},
                         1_000

          # the refusal was served; its backoff passes several times over without a redial...
          assert_receive {:connect, ^sighted}
          refute_receive {:connect, ^sighted}, delay * 5
          # ...until it is heard from again
          Membership.seen(m, [sighted])
          assert_receive {:connect, ^sighted}, 1_000

          # a discovered node is retried by the timer, as its log says
          Membership.discovered(m, [discovered])
          assert_receive {:connect, ^discovered}
          assert_receive {:connect, ^discovered}, 1_000
          _ = Membership.status(m)
        end)

      log = lines_of(log, t)

      assert log =~
               "cannot connect to :\"heard@127.0.0.1\" (false); dialling it again when it is next heard from",
             log

      refute log =~ ~r/heard@127.0.0.1.*retrying with backoff/
      assert log =~ ~r/listed@127.0.0.1.*retrying with backoff, next in \d+ ms/, log
    end

    test "a sighted node that connects is not dialled again", %{t: t} do
      node = :"gossip@127.0.0.1"
      net = dist(%{node => :accept})
      m = start(t, net, [])
      Membership.seen(m, [node])
      assert_receive {:connect, ^node}
      assert Peer.wait_until(fn -> node in FakeDist.up(net) end, 500)
      for _ <- 1..5, do: Membership.seen(m, [node])
      refute_receive {:connect, ^node}, 200
    end
  end

  test "bad options raise ArgumentError naming the key", %{t: t} do
    for {opts, key} <- [
          {[prune: :sometimes], ":prune"},
          {[prune: {:grace_period, 0}], ":prune"},
          {[max_concurrency: 0], ":max_concurrency"},
          {[connect_timeout: :soon], ":connect_timeout"},
          {[backoff_min: 500, backoff_max: 100], ":backoff_max"},
          {[min_dial_interval: 0], ":min_dial_interval"},
          {[stable_after: -1], ":stable_after"},
          {[list_nodes_timeout: :never], ":list_nodes_timeout"},
          {[untrusted_connect_rate: 0], ":untrusted_connect_rate"}
        ] do
      error = assert_raise ArgumentError, fn -> Membership.validate_opts!(t, opts) end
      assert error.message =~ key
      assert error.message =~ inspect(t)
    end

    assert capture_log(fn -> Membership.validate_opts!(t, bogus: 1) end) =~ ":bogus"
  end

  # Connect attempts in flight: the :connect jobs in the topology's task table.
  defp connects_in_flight(m),
    do: Enum.count(:sys.get_state(m).tasks, &match?({_ref, {{:connect, _node}, _pid, _timer}}, &1))
end
