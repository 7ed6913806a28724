defmodule LibclusterRs.Membership.PolicyTest do
  use ExUnit.Case, async: true

  alias LibclusterRs.Membership.{Peers, Policy}

  @opts %{backoff_min: 250, backoff_max: 10_000, min_dial_interval: 500, stable_after: 5_000}

  defp set(list), do: MapSet.new(list)

  test "a discovery: this node left out, what it adds and what it drops" do
    assert Policy.discovered(set([:a@h, :b@h]), set([:b@h, :c@h, :self@h]), :self@h) ==
             %{nodes: set([:b@h, :c@h]), added: set([:c@h]), dropped: set([:a@h])}
  end

  test "what to dial: desired nodes that are not connected, not being dialled and due" do
    {peers, _, _} = Peers.fail(%{}, :backoff@h, false, 0, @opts, 0.5)
    desired = set([:up@h, :busy@h, :backoff@h, :new@h])

    assert Policy.to_dial(desired, set([:up@h]), set([:busy@h]), peers, 100) == [:new@h]

    assert Enum.sort(Policy.to_dial(desired, set([:up@h]), set([:busy@h]), peers, 500)) == [
             :backoff@h,
             :new@h
           ]
  end

  test "never-tried nodes are queued first, retries last, nothing twice" do
    {peers, _, _} = Peers.fail(%{}, :old@h, false, 0, @opts, 0.5)
    {queue, busy} = Policy.enqueue([:queued@h], set([:queued@h]), peers, [:old@h, :new@h, :new@h, :queued@h])
    assert queue == [:new@h, :queued@h, :old@h]
    assert busy == set([:queued@h, :old@h, :new@h])
  end

  test "sightings: junk and this node dropped, trusted wins, at most cap waiting" do
    s = Policy.add_sightings(%{}, [:a@h, "junk", :self@h, :a@h], false, :self@h, 2)
    assert s == %{a@h: false}
    s = Policy.add_sightings(s, [:a@h, :b@h, :c@h], true, :self@h, 2)
    assert s == %{a@h: true, b@h: true}
  end

  test "the untrusted bucket: trusted ones all, untrusted as far as tokens allow, never-tried first" do
    {peers, _, _} = Peers.fail(%{}, :retry@h, false, -10_000, @opts, 0.5)
    sightings = %{t1@h: true, t2@h: true, retry@h: false, new1@h: false, new2@h: false}

    {nodes, bucket, dropped} = Policy.take_sightings(sightings, set([]), set([]), peers, {2.0, 0}, 10, 0)
    assert Enum.sort(nodes -- [:t1@h, :t2@h]) |> length() == 2
    assert :t1@h in nodes and :t2@h in nodes and :retry@h not in nodes
    assert bucket == {0.0, 0}
    assert dropped == 1

    # 100 ms later one token has come back (10 a second)
    {nodes, {tokens, 100}, 2} =
      Policy.take_sightings(%{x@h: false, y@h: false, z@h: false}, set([]), set([]), %{}, bucket, 10, 100)

    assert length(nodes) == 1 and tokens == 0.0

    # the bucket never holds more than one second's worth
    {_, {tokens, _}, 0} = Policy.take_sightings(%{x@h: false}, set([]), set([]), %{}, {0.0, 0}, 10, 60_000)
    assert tokens == 9.0
  end

  test "sightings of connected, busy or backed-off nodes are not dialled and not counted as dropped" do
    {peers, _, _} = Peers.fail(%{}, :backoff@h, false, 0, @opts, 0.5)
    sightings = %{up@h: false, busy@h: false, backoff@h: false}

    assert {[], {10.0, 100}, 0} =
             Policy.take_sightings(sightings, set([:up@h]), set([:busy@h]), peers, {10.0, 0}, 10, 100)
  end

  test "grace periods start once per missing node" do
    {missing, started} = Policy.missing(%{a@h: 5}, set([:a@h, :b@h]), 10)
    assert missing == %{a@h: 5, b@h: 10}
    assert started == [:b@h]
  end

  test "a nodeup from an attempt a prune killed is undone within the connect deadline, unless desired again" do
    assert Policy.undo_nodeup?(1_000, 1_500, 10_000, false)
    refute Policy.undo_nodeup?(1_000, 1_500, 10_000, true)
    refute Policy.undo_nodeup?(1_000, 11_000, 10_000, false)
    refute Policy.undo_nodeup?(nil, 1_500, 10_000, false)
  end
end
