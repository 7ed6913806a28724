defmodule Cluster.OverlayMfaTest do
  # An overlay instead of the full mesh, plugged in the way libcluster users plug in Partisan: the
  # topology's `connect`, `disconnect` and `list_nodes` are the overlay's peer service (join, leave,
  # members). The overlay here is a stand-in (an Agent holding the member set and a log of calls,
  # never touching the distribution), loaded into a real :peer node that runs the topology; the
  # nodes it is told about are real :peer nodes with the same cookie, so a distribution connection
  # made by the library would succeed and be seen. docs/scale.md, "When the full mesh stops being
  # the right design", documents the setup these tests back.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually
  alias LibclusterRs.Test.{MFA, Peer, ScriptedStrategy}

  @moduletag :slow
  @moduletag timeout: 180_000
  @moduletag :capture_log

  {:module, _, overlay_bin, _} =
    defmodule Overlay do
      @moduledoc false
      # Stand-in for an overlay's peer service (Partisan's partisan_peer_service join/leave/members):
      # the member set and every call, in an Agent registered under this module's name. It also
      # records this node's distribution nodeups (visible and hidden), and can answer the rounds of
      # LibclusterRs.Test.ScriptedStrategy with the node set `discover/1` sets.

      def start do
        {:ok, _} =
          Agent.start(fn -> %{members: MapSet.new(), log: [], nodeups: [], discover: []} end, name: __MODULE__)

        caller = self()

        watcher =
          spawn(fn ->
            :ok = :net_kernel.monitor_nodes(true, %{node_type: :all})
            send(caller, {:ready, self()})
            watch()
          end)

        # monitor_nodes is in place before start/0 returns
        receive do
          {:ready, ^watcher} -> :ok
        after
          5_000 -> raise "the nodeup watcher did not start"
        end
      end

      defp watch do
        receive do
          {:nodeup, node, info} ->
            Agent.update(__MODULE__, &%{&1 | nodeups: [{node, info[:node_type]} | &1.nodeups]})

          _ ->
            :ok
        end

        watch()
      end

      # connect MFA: Partisan's join
      def join(node) do
        Agent.update(
          __MODULE__,
          &%{&1 | members: MapSet.put(&1.members, node), log: [{:join, node} | &1.log]}
        )

        true
      end

      # disconnect MFA: Partisan's leave
      def leave(node) do
        Agent.update(
          __MODULE__,
          &%{&1 | members: MapSet.delete(&1.members, node), log: [{:leave, node} | &1.log]}
        )

        true
      end

      # list_nodes MFA: Partisan's members (this node excluded, as :erlang.nodes/1 excludes it)
      def members, do: Agent.get(__MODULE__, &MapSet.to_list(&1.members))

      @doc "The overlay's failure detector lost `node`: it is no longer a member (no leave call)."
      def lost(node), do: Agent.update(__MODULE__, &%{&1 | members: MapSet.delete(&1.members, node)})

      def log, do: Agent.get(__MODULE__, &Enum.reverse(&1.log))
      def nodeups, do: Agent.get(__MODULE__, &Enum.reverse(&1.nodeups))

      @doc "Sets the nodes the next ScriptedStrategy rounds return."
      def discover(nodes), do: Agent.update(__MODULE__, &%{&1 | discover: nodes})

      @doc "Starts the process that answers ScriptedStrategy's rounds; returns its pid."
      def start_script do
        pid = spawn(fn -> script() end)
        Process.register(pid, :overlay_script)
        pid
      end

      defp script do
        receive do
          {:round, disc, tag} ->
            nodes = Agent.get(__MODULE__, & &1.discover)
            send(disc, {:libcluster_rs, tag, {:discovered, nodes}})
        end

        script()
      end
    end

  # The overlay's object code, loaded into the peer that runs the topology: the peers get this
  # project's code paths, but this module exists only in the memory of the test node.
  @overlay_bin overlay_bin

  defp load_overlay(peer) do
    {:module, Overlay} =
      Peer.call(peer, :code, :load_binary, [Overlay, ~c"overlay_mfa_test.exs", @overlay_bin])

    :ok = Peer.call(peer, Overlay, :start, [])
  end

  @tag :slow
  test "Epmd through an overlay's MFAs: the overlay gets every node, the library makes no distribution connection, and the overlay's members are what the membership trusts" do
    id = System.unique_integer([:positive])
    [a, b, c] = names = for x <- ~w(a b c), do: :"ovl#{id}#{x}@127.0.0.1"
    [{pa, ^a}, {pb, ^b}, {pc, ^c}] = start_peers(names)
    load_overlay(pa)

    # Epmd redials every 200 ms (its `timeout`), so a node the overlay loses is dialled again soon
    topology = [strategy: Cluster.Strategy.Epmd, config: [hosts: [b, c], timeout: 200]] ++ overlay_mfas()
    {:ok, _} = Peer.start_cluster(pa, ovl: topology)

    # (a) every discovered node reaches the overlay's join
    eventually(fn ->
      Enum.sort(for {:join, n} <- Peer.call(pa, Overlay, :log, []), do: n) |> Enum.uniq() == [b, c]
    end)

    # (d) the membership takes the overlay's members as connected...
    status = fn ->
      {:ok, s} = Peer.call(pa, Cluster, :status, [:ovl])
      s
    end

    eventually(fn -> Enum.sort(status.().connected) == [b, c] end)

    # ... and trusts them for liveness: a member the overlay loses is joined again
    joins_of_c = fn -> Enum.count(Peer.call(pa, Overlay, :log, []), &(&1 == {:join, c})) end
    before = joins_of_c.()
    :ok = Peer.call(pa, Overlay, :lost, [c])
    eventually(fn -> joins_of_c.() > before end)
    eventually(fn -> Enum.sort(status.().connected) == [b, c] end)

    # (b) no distribution connection, visible or hidden, was ever made by the node running the
    # topology (its nodeups since before the topology started), and none is up on any side
    assert Peer.call(pa, Overlay, :nodeups, []) == []
    assert connected(pa) == []
    refute a in connected(pb)
    refute a in connected(pc)
    # nothing failed on the way: the overlay's MFAs behaved, and no disconnect was asked for
    s = status.()
    assert s.mfa_errors == %{} and s.disconnects.ours == 0
    refute Enum.any?(Peer.call(pa, Overlay, :log, []), &match?({:leave, _}, &1))
  end

  @tag :slow
  test "a node the discovery no longer returns reaches the overlay's leave, and still no distribution connection" do
    id = System.unique_integer([:positive])
    [a, b, c] = names = for x <- ~w(a b c), do: :"ovl#{id}#{x}@127.0.0.1"
    [{pa, ^a}, {pb, ^b}, {pc, ^c}] = start_peers(names)
    load_overlay(pa)

    # the discovery is scripted on the peer (rounds every 100 ms answer what Overlay.discover/1 set)
    :ok = Peer.call(pa, Overlay, :discover, [[b, c]])
    script = Peer.call(pa, Overlay, :start_script, [])

    topology = [strategy: ScriptedStrategy, config: [test: script, opts: [interval: 100]]] ++ overlay_mfas()

    {:ok, _} = Peer.start_cluster(pa, ovl: topology)
    eventually(fn -> Enum.sort(Peer.call(pa, Overlay, :members, [])) == [b, c] end)

    # c goes away: its node stops, and the discovery stops returning it (a pod deleted)
    Peer.stop(pc)
    :ok = Peer.call(pa, Overlay, :discover, [[b]])

    # (c) the disconnect MFA, the overlay's leave, is called for it, and only for it
    eventually(fn -> {:leave, c} in Peer.call(pa, Overlay, :log, []) end)
    assert Peer.call(pa, Overlay, :members, []) == [b]
    assert for({:leave, n} <- Peer.call(pa, Overlay, :log, []), do: n) == [c]
    {:ok, s} = Peer.call(pa, Cluster, :status, [:ovl])
    assert s.connected == [b] and s.disconnects.ours == 1

    # (b) and the library made no distribution connection on the way
    assert Peer.call(pa, Overlay, :nodeups, []) == []
    assert connected(pa) == []
    refute a in connected(pb)
  end

  defp start_peers(names) do
    peers =
      names
      |> Task.async_stream(
        fn node ->
          [name, host] = node |> Atom.to_string() |> String.split("@")
          {pid, ^node} = Peer.start(name, host)
          Process.unlink(pid)
          {pid, node}
        end,
        max_concurrency: 3,
        timeout: 120_000
      )
      |> Enum.map(fn {:ok, p} -> p end)

    on_exit(fn ->
      peers |> Task.async_stream(fn {p, _} -> Peer.stop(p) end, timeout: 60_000) |> Stream.run()
    end)

    peers
  end

  # (full names: test/mfa_guard_test.exs reads them from this source)
  defp overlay_mfas do
    spec = [
      connect: {Cluster.OverlayMfaTest.Overlay, :join, []},
      disconnect: {Cluster.OverlayMfaTest.Overlay, :leave, []},
      list_nodes: {Cluster.OverlayMfaTest.Overlay, :members, []}
    ]

    MFA.check_topology!(spec)
  end

  defp connected(peer), do: Peer.call(peer, :erlang, :nodes, [:connected])
end
