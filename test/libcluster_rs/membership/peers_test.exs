defmodule LibclusterRs.Membership.PeersTest do
  use ExUnit.Case, async: true

  alias LibclusterRs.Membership.Peers

  @opts %{backoff_min: 250, backoff_max: 10_000, min_dial_interval: 500, stable_after: 5_000}
  @n :"a@10.0.0.1"

  test "failures back off from :backoff_min doubling to :backoff_max, ±20 %, never below the dial floor" do
    peers = Peers.dialled(%{}, @n, 0)
    # 250 ms of backoff, but the last dial was at 0: not before 500
    {peers, 1, 500} = Peers.fail(peers, @n, false, 0, @opts, 0.5)
    assert %{failures: 1, next_at: 500, last_error: false, up_since: nil} = peers[@n]

    # dialled again at 1_000, failing at 1_000: 500 ms backoff (the floor is 1_500 too)
    peers = Peers.dialled(peers, @n, 1_000)
    {peers, 2, 500} = Peers.fail(peers, @n, false, 1_000, @opts, 0.5)
    {peers, 3, 1_000} = Peers.fail(peers, @n, false, 1_000, @opts, 0.5)
    {_peers, 4, 1_600} = Peers.fail(peers, @n, false, 1_000, @opts, 0.0)
    {_peers, 4, 2_400} = Peers.fail(peers, @n, false, 1_000, @opts, 0.9999999)

    peers = Enum.reduce(1..20, peers, fn _, p -> elem(Peers.fail(p, @n, false, 1_000, @opts, 0.5), 0) end)
    assert peers[@n].next_at == 1_000 + 10_000
  end

  test "due?: a node without an entry is due; one in backoff is due at next_at" do
    assert Peers.due?(%{}, @n, -5)
    {peers, _, _} = Peers.fail(%{}, @n, false, 0, @opts, 0.5)
    refute Peers.due?(peers, @n, 499)
    assert Peers.due?(peers, @n, 500)
  end

  test "a connect is logged only when the node was down when the dial started" do
    peers = Peers.dialled(%{}, @n, 100)
    {peers, true} = Peers.connected(peers, @n, 150)
    assert peers[@n].up_since == 150
    # dialled again while it stayed up (since before that dial): not new
    {_peers, false} = Peers.connected(Peers.dialled(peers, @n, 300), @n, 320)
    # its nodeup seen after the dial started: new
    peers = %{@n => %{Peers.new(0) | last_dial_at: 100, up_since: 120}}
    {_, true} = Peers.connected(peers, @n, 130)
  end

  test "observe: a node that drops within :stable_after flapped; one that stayed longer is forgiven" do
    {peers, _, _} = Peers.fail(%{}, @n, false, 0, @opts, 0.5)
    {peers, _, _} = Peers.fail(peers, @n, false, 0, @opts, 0.5)
    {peers, true} = Peers.connected(Peers.dialled(peers, @n, 1_000), @n, 1_000)

    assert {^peers, [@n]} = Peers.observe(peers, MapSet.new(), 3_000, @opts)

    {forgiven, []} = Peers.observe(peers, MapSet.new(), 7_000, @opts)
    assert %{failures: 0, last_error: nil, up_since: nil, next_at: 7_000} = forgiven[@n]

    # a listed node with no up_since becomes up
    down = %{@n => Peers.new(0)}
    {up, []} = Peers.observe(down, MapSet.new([@n]), 42, @opts)
    assert up[@n].up_since == 42
  end

  test "reachable: due now but not before the dial floor, failure counts kept" do
    peers = Peers.dialled(%{}, @n, 1_000)
    {peers, _, _} = Peers.fail(peers, @n, false, 1_000, @opts, 0.5)
    {peers, _, _} = Peers.fail(peers, @n, false, 1_000, @opts, 0.5)

    assert %{failures: 2, next_at: 1_500} = Peers.reachable(peers, [@n], 1_200, 500)[@n]
    assert %{failures: 2, next_at: 3_000} = Peers.reachable(peers, [@n, :x@h], 3_000, 500)[@n]
    assert Peers.reachable(%{}, [@n], 0, 500) == %{}
  end

  test "backed_off: desired nodes down with failures or being dialled, with their failure counts" do
    {peers, _, _} = Peers.fail(%{}, @n, false, 0, @opts, 0.5)
    {peers, true} = Peers.connected(peers, :up@h, 0)
    {peers, _, _} = Peers.fail(peers, :sighted@h, false, 0, @opts, 0.5)
    peers = Peers.dialled(peers, :dialling@h, 0)
    # up, then down: its entry is reset (0 failures) and it is being dialled again
    {peers, true} = Peers.connected(peers, :lost@h, 0)
    {peers, []} = Peers.observe(peers, MapSet.new([:up@h]), 60_000, @opts)
    desired = MapSet.new([@n, :up@h, :dialling@h, :lost@h, :queued@h])
    busy = MapSet.new([:dialling@h, :sighted@h, :lost@h, :queued@h])

    # :queued@h waits for its first dial, :dialling@h's first dial is in flight: not watched
    assert Peers.backed_off(peers, desired, busy) == %{@n => 1, :lost@h => 0}
    # ... unless that dial was seen waiting for a host that does not answer
    assert Peers.backed_off(peers, desired, busy, MapSet.new([:dialling@h])) ==
             %{@n => 1, :lost@h => 0, :dialling@h => 0}

    # once up again, a lost node is no longer lost
    {peers, _} = Peers.connected(peers, :lost@h, 70_000)
    {peers, []} = Peers.observe(peers, MapSet.new([:up@h]), 80_000, @opts)
    {peers, true} = Peers.connected(peers, :lost@h, 90_000)
    assert Peers.backed_off(peers, desired, busy) == %{@n => 1}
  end

  test "next_due: the earliest desired node not connected nor being dialled; a new one is due now" do
    {peers, _, _} = Peers.fail(%{}, @n, false, 0, @opts, 0.5)
    assert Peers.next_due(peers, [@n], MapSet.new(), MapSet.new(), 100) == 500
    assert Peers.next_due(peers, [@n, :new@h], MapSet.new(), MapSet.new(), -100) == -100
    assert Peers.next_due(peers, [@n], MapSet.new([@n]), MapSet.new(), 100) == nil
    assert Peers.next_due(peers, [@n], MapSet.new(), MapSet.new([@n]), 100) == nil
  end

  test "gc drops entries of nodes neither desired, up, backed off nor dialled, beyond the cap only" do
    stale = for i <- 1..5, into: %{}, do: {:"n#{i}@h", Peers.new(0)}
    assert Peers.gc(stale, MapSet.new(), MapSet.new(), 10, 10) == stale

    assert Peers.gc(stale, MapSet.new([:n1@h]), MapSet.new([:n2@h]), 10, 3) |> Map.keys() |> Enum.sort() ==
             [:n1@h, :n2@h]
  end
end
