defmodule LibclusterRs.Membership.ProbeTest do
  # The heal probe: its decisions as plain functions, then the process against a fake epmd and the
  # real one (with a real peer node), then the membership hook. Async: the tests that change the
  # VM's resolver (local_address/1) are in probe_local_address_test.exs.
  use ExUnit.Case, async: true

  alias LibclusterRs.Membership
  alias LibclusterRs.Membership.Probe
  alias Cluster.Strategy.State
  alias LibclusterRs.Test.{FakeDist, FakeEpmd, Peer}

  # A resolver standing in for the local hosts table: "h1" and "h2" are known, the rest are not.
  defp table("h1"), do: "10.0.0.1"
  defp table("h2"), do: "10.0.0.2"
  defp table(_), do: nil

  defp probe(watched), do: Probe.new(&table/1) |> Probe.put_watched(watched)

  describe "decisions" do
    test "one query per distinct host; hosts outside the local table are never asked" do
      p = probe(%{:a@h1 => 1, :b@h1 => 4, :c@h2 => 1, :d@elsewhere => 2, :nohost => 1})
      assert Enum.sort(Probe.hosts(p)) == ["10.0.0.1", "10.0.0.2"]
    end

    test "at most max hosts a round; more take turns" do
      hosts = for i <- 1..5, do: "10.0.0.#{i}"
      assert Probe.round_hosts(hosts, 7, 5) == hosts
      rounds = for r <- 0..4, do: Probe.round_hosts(hosts, r, 2)
      assert Enum.all?(rounds, &(length(&1) == 2))
      assert rounds |> List.flatten() |> Enum.uniq() |> Enum.sort() == hosts
    end

    test "a peer is reported when its name appears, not again while it stays registered" do
      p = probe(%{:a@h1 => 3})
      assert {[], p} = Probe.answer(p, "10.0.0.1", {:error, {:timeout, "no answer"}})
      assert {[], p} = Probe.answer(p, "10.0.0.1", {:ok, ["other"]})
      assert {[:a@h1], p} = Probe.answer(p, "10.0.0.1", {:ok, ["other", "a"]})
      assert {[], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      assert {[], _} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
    end

    test "the first answer of a streak that shows the name reports it (a short partition)" do
      p = probe(%{:a@h1 => 1})
      assert {[:a@h1], _} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
    end

    test "one follow-up if the attempt in flight fails after the report, then backoff rules" do
      p = probe(%{:a@h1 => 5})
      {[:a@h1], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      # The attempt that was in flight failed: failures 5 -> 6 while the name stays registered.
      p = Probe.put_watched(p, %{:a@h1 => 6})
      assert {[:a@h1], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      # And the redial failed too (another cookie, a closed distribution port): no more reports.
      p = Probe.put_watched(p, %{:a@h1 => 7})
      assert {[], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      p = Probe.put_watched(p, %{:a@h1 => 8})
      assert {[], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      # Until it goes away and comes back.
      {[], p} = Probe.answer(p, "10.0.0.1", {:error, {:refused, "closed"}})
      assert {[:a@h1], _} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
    end

    test "an answer only concerns the peers of its host" do
      p = probe(%{:a@h1 => 1, :a@h2 => 1})
      assert {[:a@h2], p} = Probe.answer(p, "10.0.0.2", {:ok, ["a"]})
      assert {[:a@h1], _} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
    end

    test "peers that cannot be probed are reported when a probed one returns, once per failure count" do
      p = probe(%{:a@h1 => 2, :b@h2 => 2, :x@elsewhere => 4})
      # A host answering without a return says nothing about the network.
      assert {[], p} = Probe.answer(p, "10.0.0.2", {:ok, []})
      assert {[:a@h1, :x@elsewhere], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      {[], p} = Probe.answer(p, "10.0.0.1", {:error, {:timeout, "gone"}})
      # Another return while x has not failed again: x is not redialled twice for one failure.
      assert {[:a@h1], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      p = Probe.put_watched(p, %{:a@h1 => 2, :b@h2 => 2, :x@elsewhere => 5})
      assert {[:b@h2, :x@elsewhere], _} = Probe.answer(p, "10.0.0.2", {:ok, ["b"]})
    end

    test "a follow-up is due at once when the failure count grows right after a report" do
      p = probe(%{:a@h1 => 2, :b@h1 => 2})
      {[:a@h1], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      assert {[], p} = Probe.followups(p)
      p = Probe.put_watched(p, %{:a@h1 => 3, :b@h1 => 3})
      # b was never reported (its name is absent): no follow-up for it.
      assert {[:a@h1], p} = Probe.followups(p)
      p = Probe.put_watched(p, %{:a@h1 => 4, :b@h1 => 4})
      assert {[], _} = Probe.followups(p)
    end

    test "setups stuck while the host did not answer are ended when the node returns, no others" do
      stuck = spawn(fn -> Process.sleep(:infinity) end)
      later = spawn(fn -> Process.sleep(:infinity) end)
      setups = %{:a@h1 => [stuck], :b@h2 => [later]}
      p = Probe.new(&table/1, &Map.get(setups, &1, [])) |> Probe.put_watched(%{:a@h1 => 1, :b@h2 => 1})

      {[], p} = Probe.answer(p, "10.0.0.1", {:error, {:timeout, "no answer"}})
      assert {[], p} = Probe.take_abort(p)
      {[:a@h1], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      assert {[{:a@h1, ^stuck}], p} = Probe.take_abort(p)

      # b's host answered (without b) before b returned: its pending setup is not from an outage.
      {[], p} = Probe.answer(p, "10.0.0.2", {:ok, []})
      {[:b@h2], p} = Probe.answer(p, "10.0.0.2", {:ok, ["b"]})
      assert {[], _} = Probe.take_abort(p)
    end

    test "a peer that leaves the backed-off set is forgotten; its next streak starts afresh" do
      p = probe(%{:a@h1 => 1})
      {[:a@h1], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      p = Probe.put_watched(p, %{})
      assert Probe.hosts(p) == []
      assert {[], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      p = Probe.put_watched(p, %{:a@h1 => 1})
      assert {[:a@h1], p} = Probe.answer(p, "10.0.0.1", {:ok, ["a"]})
      assert Probe.forget(p, :a@h1) |> Probe.hosts() == []
    end
  end

  # Until the probe has started `n` rounds (so `n - 1` have been answered and handled).
  defp await_rounds(probe, n), do: Peer.wait_until(fn -> :sys.get_state(probe).rounds >= n end, 5_000)

  describe "the process" do
    test "reports a peer when the fake epmd starts listing it, once" do
      epmd = FakeEpmd.start(["other"])
      {:ok, probe} = Probe.start_link(port: epmd.port, interval: 50, deadline: 40)
      Probe.watch(probe, %{:"app@127.0.0.1" => 3})

      # two answers without the name were handled (a round starts once the previous one ended)
      Peer.wait_until(fn -> FakeEpmd.queries(epmd) >= 3 end, 5_000)
      refute_received {:probe_reachable, _}

      FakeEpmd.set_names(epmd, ["other", "app"])
      assert_receive {:probe_reachable, [:"app@127.0.0.1"]}, 1_000
      # and not again for the next two answers that list it
      reported_at = FakeEpmd.queries(epmd)
      Peer.wait_until(fn -> FakeEpmd.queries(epmd) >= reported_at + 3 end, 5_000)
      refute_received {:probe_reachable, _}
    end

    test "asks each host once per round, and stops asking when nothing is backed off" do
      epmd = FakeEpmd.start([])
      {:ok, probe} = Probe.start_link(port: epmd.port, interval: 100, deadline: 80)
      watched = Map.new(1..5, &{:"n#{&1}@127.0.0.1", 1})
      started = System.monotonic_time(:millisecond)
      Probe.watch(probe, watched)
      Peer.wait_until(fn -> FakeEpmd.queries(epmd) >= 4 end, 5_000)
      elapsed = System.monotonic_time(:millisecond) - started
      queries = FakeEpmd.queries(epmd)
      # 5 peers on one host: one query per round (a round every 100 ms at most), not one per peer
      # (that would be 5 queries in the first round alone). Bounded by the clock, so a loaded
      # machine (fewer rounds) cannot fail it.
      assert queries <= div(elapsed, 100) + 2, "#{queries} queries in #{elapsed} ms"

      Probe.watch(probe, %{})
      # A round may have been out when the set emptied; once it is back, no round and no tick is
      # left, and no query follows for several intervals.
      assert_idle(probe, epmd)
    end

    test "a nodeup ends the probing of that peer" do
      epmd = FakeEpmd.start([])
      {:ok, probe} = Probe.start_link(port: epmd.port, interval: 50, deadline: 40)
      Probe.watch(probe, %{:"app@127.0.0.1" => 1})
      Peer.wait_until(fn -> FakeEpmd.queries(epmd) >= 1 end, 2_000)
      send(probe, {:nodeup, :"app@127.0.0.1"})
      assert_idle(probe, epmd)
    end

    # Nothing is out and nothing is scheduled (the state says so), and no query comes during three
    # intervals (the window is the claim "it stopped asking").
    defp assert_idle(probe, epmd) do
      Peer.wait_until(fn -> match?(%{round: nil, timer: nil}, :sys.get_state(probe)) end, 2_000)
      before = FakeEpmd.queries(epmd)
      Process.sleep(3 * :sys.get_state(probe).interval)
      assert FakeEpmd.queries(epmd) == before
    end

    @tag timeout: 120_000
    test "against the real epmd: a real node is reported when it comes back" do
      name = "probe#{System.unique_integer([:positive])}"
      node = :"#{name}@127.0.0.1"
      {:ok, probe} = Probe.start_link(interval: 100)
      Probe.watch(probe, %{node => 1})
      # two rounds answered without it
      await_rounds(probe, 3)
      refute_received {:probe_reachable, _}

      {peer, ^node} = Peer.start(name, "127.0.0.1")
      assert_receive {:probe_reachable, [^node]}, 2_000

      # It goes away (its name leaves epmd) and comes back: reported again.
      Peer.stop(peer)

      Peer.wait_until(fn ->
        {:ok, names} = :erl_epmd.names(~c"127.0.0.1")
        not List.keymember?(names, to_charlist(name), 0)
      end)

      await_rounds(probe, :sys.get_state(probe).rounds + 2)
      refute_received {:probe_reachable, _}
      {peer, ^node} = Peer.start(name, "127.0.0.1")
      on_exit(fn -> Peer.stop(peer) end)
      assert_receive {:probe_reachable, [^node]}, 2_000
    end
  end

  describe "without epmd (method {:dist_port, module})" do
    # An -epmd_module standing in for a user's: every node listens on the port in the calling
    # test's persistent term.
    defmodule FixedPortEpmd do
      @moduledoc false
      def port_please(_name, _ip, _timeout), do: {:port, :persistent_term.get({__MODULE__, :port}), 6}
    end

    test "the method follows the distribution: epmd here, the module's port otherwise" do
      assert {:epmd, port} = Probe.method()
      assert port == Probe.epmd_port()
    end

    test "a peer is reported when its distribution port accepts again, once" do
      # A port that refuses (the host is there, the node is not), then accepts (the node is back).
      {:ok, l} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, active: false, reuseaddr: true)
      {:ok, port} = :inet.port(l)
      :gen_tcp.close(l)
      :persistent_term.put({FixedPortEpmd, :port}, port)

      {:ok, probe} = Probe.start_link(method: {:dist_port, FixedPortEpmd}, interval: 50, deadline: 40)
      Probe.watch(probe, %{:"app@127.0.0.1" => 2})
      await_rounds(probe, 3)
      refute_received {:probe_reachable, _}

      {:ok, _l} = :gen_tcp.listen(port, ip: {127, 0, 0, 1}, active: false, reuseaddr: true)
      assert_receive {:probe_reachable, [:"app@127.0.0.1"]}, 2_000
      await_rounds(probe, :sys.get_state(probe).rounds + 2)
      refute_received {:probe_reachable, _}
      assert %{method: {:dist_port, FixedPortEpmd}, reported: 1, setups_ended: 0} = Probe.stats(probe)
    end

    test "a module that raises or hangs costs one round's deadline, never the probe" do
      {:ok, probe} = Probe.start_link(method: {:dist_port, :no_such_epmd_module}, interval: 50, deadline: 40)
      Probe.watch(probe, %{:"app@127.0.0.1" => 2})
      await_rounds(probe, 3)
      refute_received {:probe_reachable, _}
      assert Process.alive?(probe)
    end
  end

  describe "the membership hook" do
    # Over the tests' fake distribution: every node refuses until the test makes it reachable,
    # and hangs@127.1.1.3's handshake never finishes.
    defp membership(opts) do
      dist = FakeDist.new(reachable: [])
      FakeDist.peer(dist, :"hangs@127.1.1.3", connect: :hang)
      topology = :"probe_#{System.unique_integer([:positive])}"
      mfas = FakeDist.mfas(dist)

      state = %State{
        topology: topology,
        connect: mfas[:connect],
        disconnect: mfas[:disconnect],
        list_nodes: mfas[:list_nodes]
      }

      {:ok, m} = Membership.start_link(state, opts)
      {m, dist}
    end

    # A discovered node fails its first dial (next attempt 22.5-37.5 s away); then the fake
    # distribution accepts it. Returns the membership and its fake distribution.
    defp backed_off(node, probe) do
      {m, dist} = membership(backoff_min: 30_000, backoff_max: 30_000, probe: probe)
      Membership.discovered(m, [node])
      Peer.wait_until(fn -> match?(%{failures: 1}, Membership.status(m).pending[node]) end, 2_000)
      FakeDist.reachable(dist, [node])
      {m, dist}
    end

    # A real node of that name boots (registering in epmd).
    defp boot(name) do
      {peer, node} = Peer.start(name, "127.0.0.1")
      on_exit(fn -> Peer.stop(peer) end)
      node
    end

    defp dials(dist, node), do: Enum.count(FakeDist.calls(dist), &match?({:connect, ^node, _}, &1))

    @tag timeout: 120_000
    test "a backed-off peer that registers in epmd again is redialled before its backoff ends" do
      name = "probem#{System.unique_integer([:positive])}"
      {m, dist} = backed_off(:"#{name}@127.0.0.1", true)
      node = boot(name)
      Peer.wait_until(fn -> node in FakeDist.up(dist) end, 3_000)
      assert dials(dist, node) == 2
      assert Membership.status(m).pending == %{}
    end

    # The same peer, with a probing membership beside it as the yardstick: once that one has
    # redialled (the probe saw the name), the one without a probe has still not.
    @tag timeout: 120_000
    test "with probe: false the same peer waits out its backoff" do
      name = "probem#{System.unique_integer([:positive])}"
      node = :"#{name}@127.0.0.1"
      {_, probing} = backed_off(node, true)
      {off, not_probing} = backed_off(node, false)
      assert :sys.get_state(off).probe == nil
      ^node = boot(name)
      Peer.wait_until(fn -> node in FakeDist.up(probing) end, 3_000)
      assert dials(not_probing, node) == 1
      assert %{failures: 1} = Membership.status(off).pending[node]
    end

    test "discovered nodes are watched once a dial fails, not during their first dial; sighted ones never" do
      {m, _dist} = membership(backoff_min: 30_000, backoff_max: 30_000, probe: true)
      Membership.seen(m, [:"sighted@127.1.1.1"])
      assert_receive {:connect, :"sighted@127.1.1.1"}, 1_000
      Membership.discovered(m, [:"listed@127.1.1.2", :"hangs@127.1.1.3"])
      assert_receive {:connect, :"listed@127.1.1.2"}, 1_000
      assert_receive {:connect, :"hangs@127.1.1.3"}, 1_000

      # listed@ failed its first dial (the fake distribution refuses it); hangs@'s first dial is
      # still in flight: it is watched only if it fails
      Peer.wait_until(fn -> watched(m) == %{:"listed@127.1.1.2" => 1} end, 1_000)
    end

    # What the membership's probe watches: node => failure count.
    defp watched(m) do
      :sys.get_state(:sys.get_state(m).probe).core.watched |> Map.new(fn {n, e} -> {n, e.failures} end)
    end

    # `node` connects and stays longer than stable_after (50 ms), so that its drop is a loss, not
    # a flap (no failure); then it drops, and its redial hangs.
    defp lose_with_hanging_redial(m, dist, node) do
      FakeDist.reachable(dist, [node])
      Membership.discovered(m, [node])
      Peer.wait_until(fn -> node in FakeDist.up(dist) end, 1_000)
      Process.sleep(100)
      FakeDist.peer(dist, node, connect: :hang)
      FakeDist.drop(dist, node)
      send(m, {:nodedown, node})
    end

    test "a node that was up and went down is watched from its first redial on" do
      {m, dist} = membership(backoff_min: 30_000, backoff_max: 30_000, stable_after: 50, probe: true)
      node = :"lost@127.1.1.4"
      lose_with_hanging_redial(m, dist, node)
      Peer.wait_until(fn -> watched(m) == %{node => 0} end, 1_000)
    end

    test "a watched node that comes up and goes down again is watched again" do
      {m, dist} = membership(backoff_min: 30_000, backoff_max: 30_000, stable_after: 50, probe: true)
      node = :"lost@127.1.1.4"
      probe = :sys.get_state(m).probe
      watched = fn -> watched(m) end

      # lost: its redial hangs, and the probe watches it
      lose_with_hanging_redial(m, dist, node)
      Peer.wait_until(fn -> watched.() == %{node => 0} end, 1_000)

      # it comes up (the peer dialled us): the probe forgets it on its own nodeup
      FakeDist.bring_up(dist, [node])
      send(probe, {:nodeup, node})
      send(m, {:nodeup, node})
      Peer.wait_until(fn -> watched.() == %{} end, 1_000)
      Process.sleep(100)

      # and is lost again, its first redial still hanging: the same watch set as before, told again
      FakeDist.drop(dist, node)
      send(m, {:nodedown, node})
      Peer.wait_until(fn -> watched.() == %{node => 0} end, 1_000)
    end

    test "probe is :auto (on for net_kernel's connect only), true or false" do
      assert_raise ArgumentError, ~r/:probe/, fn -> Membership.validate_opts!(:t, probe: :yes) end
      assert Membership.validate_opts!(:t, []).probe == :auto

      {custom, _dist} = membership([])
      assert :sys.get_state(custom).probe == nil

      state = %State{
        topology: :"probe_#{System.unique_integer([:positive])}",
        connect: {:net_kernel, :connect_node, []},
        disconnect: {:erlang, :disconnect_node, []},
        list_nodes: {:erlang, :nodes, [:connected]}
      }

      {:ok, default} = Membership.start_link(state, [])
      assert is_pid(:sys.get_state(default).probe)
      {:ok, off} = Membership.start_link(%{state | topology: :"#{state.topology}_off"}, probe: false)
      assert :sys.get_state(off).probe == nil
    end
  end
end
