defmodule Cluster.Strategy.GossipAtomsTest do
  # Hostile gossip makes no atom in this VM: the check counts the VM's whole atom table, so it runs
  # alone (synchronous), out of the async gossip_test.exs.
  use ExUnit.Case, async: false

  alias LibclusterRs.Native
  alias LibclusterRs.Test.GossipSender

  test "hostile datagrams are rejected without creating atoms" do
    # warm up (module loading makes atoms of its own)
    for d <- GossipSender.garbage(10), do: Native.gossip_decode(d, :v1, nil)
    before = :erlang.system_info(:atom_count)

    for d <- GossipSender.garbage(200) do
      assert {:error, reason} = Native.gossip_decode(d, :v1, nil)
      assert is_atom(reason)
    end

    assert :erlang.system_info(:atom_count) == before

    # valid heartbeats of unknown names make no atom either: only LibclusterRs.NodeName does, later
    flood = GossipSender.fresh_names(50, "127.0.0.1")
    for {_, d} <- flood, do: assert({:ok, _} = Native.gossip_decode(d, :v1, nil))
    assert GossipSender.existing_atoms(Enum.map(flood, &elem(&1, 0))) == 0
  end
end
