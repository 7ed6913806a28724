defmodule Cluster.PartitionTest do
  # Five real nodes in network namespaces, split 2|3 by cutting the link between their two bridges
  # (packets across the split lost silently, as behind a router that drops them), then healed: the
  # full mesh must be back soon after the network is. The bounds are generous (a shared, loaded
  # machine); bench/partition.exs measures the heal time and compares with `probe: false`.
  #
  # The nodes run with net_ticktime 4 s, so each side notices the split within about 5 s.
  use ExUnit.Case, async: false
  alias LibclusterRs.Membership.Probe
  alias LibclusterRs.Test.{Partition, Peer}

  @moduletag :root
  # Five nodes, a partition held for seconds by design: the slow lane (README, "Tests").
  @moduletag :slow
  @moduletag timeout: 180_000

  # The topology's membership options (`[probe: false]` is the membership before the heal probe).
  @membership []

  test "a long partition (18 s) heals to a full mesh within 3 s of the network coming back" do
    p = Partition.setup(162, 2, 3, membership: @membership)
    on_exit(fn -> Partition.teardown(p) end)
    Partition.await_mesh(p, 30_000)

    Partition.split(p)
    split_at = System.monotonic_time(:millisecond)
    Partition.await_split(p, 15_000)

    # A connect across the split hangs in its TCP connect, and the probe finds its setup in the
    # real net_kernel (the part of the heal that reads OTP's tables).
    [p1 | _] = p.peers
    {_, [n3 | _]} = Partition.sides(p)
    Peer.call(p1, :erlang, :spawn, [:net_kernel, :connect_node, [n3]])
    Peer.wait_until(fn -> Peer.call(p1, Probe, :stuck_setups, [n3]) != [] end, 3_000)

    Process.sleep(max(18_000 - (System.monotonic_time(:millisecond) - split_at), 0))
    assert_heals_within(p, 3_000)
  end

  # The case that is slow without the probe: the network returns while the connects made after the
  # nodedowns still hang (their SYNs were lost, the kernel resends them only after 1 s and 3 s, and
  # net_kernel gives up after net_setuptime, 7 s). Without the probe the heal waits for them (about
  # 2 s here); the probe ends them and redials.
  test "the network returning while connects from the partition still hang: full mesh within 1.5 s" do
    p = Partition.setup(166, 2, 3, membership: @membership)
    on_exit(fn -> Partition.teardown(p) end)
    Partition.await_mesh(p, 30_000)

    Partition.split(p)
    Partition.await_split(p, 15_000)
    Process.sleep(4_500)
    assert_heals_within(p, 1_500)
  end

  defp assert_heals_within(p, bound_ms) do
    healed_at = Partition.heal(p)
    times = Partition.await_mesh(p, 30_000)
    per_node = Enum.map(times, &((&1 - healed_at) / 1000))
    heal_ms = Enum.max(per_node)

    assert heal_ms <= bound_ms,
           "full mesh #{heal_ms} ms after the network came back (bound #{bound_ms} ms); " <>
             "per node: #{inspect(per_node)} ms"
  end
end
