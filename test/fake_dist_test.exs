defmodule LibclusterRs.FakeDistTest do
  # The fake distribution of the tests answers as the real one does (checked against real :peer
  # nodes), and plays the awkward peers it claims to.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Test.{FakeDist, Peer}

  @tag timeout: 60_000
  test "connect, list and disconnect answer what the real distribution answers" do
    suffix = System.unique_integer([:positive])
    {a, _} = Peer.start("fdreal_a#{suffix}", "127.0.0.1", args: [~c"-connect_all", ~c"false"])
    {b, b_node} = Peer.start("fdreal_b#{suffix}", "127.0.0.1", args: [~c"-connect_all", ~c"false"])
    on_exit(fn -> Enum.each([a, b], &Peer.stop/1) end)
    absent = :"fdreal_absent#{suffix}@127.0.0.1"

    # the same sequence of calls, on a real node and on the fake
    real = fn ->
      [
        Peer.call(a, :net_kernel, :connect_node, [b_node]),
        b_node in Peer.call(a, :erlang, :nodes, [:connected]),
        Peer.call(a, :erlang, :disconnect_node, [b_node]),
        Peer.call(a, :erlang, :disconnect_node, [b_node]),
        Peer.call(a, :net_kernel, :connect_node, [absent]),
        absent in Peer.call(a, :erlang, :nodes, [:connected])
      ]
    end

    dist = FakeDist.new(reachable: [b_node])

    fake = fn ->
      [
        FakeDist.connect(dist, b_node),
        b_node in FakeDist.list_nodes(dist),
        FakeDist.disconnect(dist, b_node),
        FakeDist.disconnect(dist, b_node),
        FakeDist.connect(dist, absent),
        absent in FakeDist.list_nodes(dist)
      ]
    end

    assert real.() == [true, true, true, false, false, false]
    assert fake.() == real.()
    # one vocabulary: every connect and disconnect is reported, in order
    assert_received {:connect, ^b_node}
    assert_received {:disconnect, ^b_node}
    assert_received {:disconnect, ^b_node}
    assert_received {:connect, ^absent}
  end

  test "a peer that accepts and drops at once: true, never listed" do
    dist = FakeDist.new(connect: :accept_then_drop)
    assert FakeDist.connect(dist, :"x@127.0.0.1") == true
    assert FakeDist.list_nodes(dist) == []
  end

  test "a peer that accepts and drops after N ms: listed, then gone" do
    dist = FakeDist.new()
    FakeDist.peer(dist, :"x@127.0.0.1", connect: {:accept_then_drop, 200})
    assert FakeDist.connect(dist, :"x@127.0.0.1") == true
    assert FakeDist.list_nodes(dist) == [:"x@127.0.0.1"]
    eventually(fn -> FakeDist.list_nodes(dist) == [] end, 2_000)
    # a drop is not a disconnect: nothing is reported
    refute_received {:disconnect, _}
  end

  test "a connect that hangs, and one the test ends" do
    dist = FakeDist.new(connect: :hang)
    hung = Task.async(fn -> FakeDist.connect(dist, :"h@127.0.0.1") end)
    assert_receive {:connect, :"h@127.0.0.1"}
    assert_receive {:pending, :connect, :"h@127.0.0.1", _pid}
    assert Task.yield(hung, 100) == nil
    Task.shutdown(hung, :brutal_kill)

    FakeDist.set(dist, :connect, :wait)
    waiting = Task.async(fn -> FakeDist.connect(dist, :"w@127.0.0.1") end)
    assert_receive {:pending, :connect, :"w@127.0.0.1", pid}
    FakeDist.reply(pid, :accept)
    assert Task.await(waiting) == true
    assert FakeDist.up(dist) == [:"w@127.0.0.1"]
  end

  test "list_nodes that lags or hangs; a disconnect that answers something else" do
    dist = FakeDist.new(up: [:"u@127.0.0.1"], list_nodes: {:lag, 300})
    {micros, nodes} = :timer.tc(fn -> FakeDist.list_nodes(dist) end)
    assert nodes == [:"u@127.0.0.1"] and micros >= 300_000

    FakeDist.set(dist, :list_nodes, :hang)
    listing = Task.async(fn -> FakeDist.list_nodes(dist) end)
    assert Task.yield(listing, 100) == nil
    Task.shutdown(listing, :brutal_kill)

    FakeDist.set(dist, :disconnect, {:reply, :ignored})
    assert FakeDist.disconnect(dist, :"u@127.0.0.1") == :ignored
    FakeDist.set(dist, :list_nodes, :accept)
    assert FakeDist.up(dist) == []
  end

  test "once the owning test is gone, the network is down" do
    owner = Task.async(fn -> FakeDist.new(up: [:"u@127.0.0.1"]) end)
    ref = Process.monitor(owner.pid)
    dist = Task.await(owner)
    # The table goes with its owner's exit, which comes just after its reply.
    assert_receive {:DOWN, ^ref, :process, _, _}
    assert FakeDist.connect(dist, :"u@127.0.0.1") == false
    assert FakeDist.disconnect(dist, :"u@127.0.0.1") == false
    assert FakeDist.list_nodes(dist) == []
  end
end
