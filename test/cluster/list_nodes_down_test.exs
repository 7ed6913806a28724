defmodule Cluster.ListNodesDownTest do
  # Issue 19, part 4: while a topology's list_nodes MFA fails, its discovered nodes are still
  # dialled (each with its backoff), nothing is pruned on it, and the status says the membership
  # is unknown. Real nodes: a connect to a node that is already up is a no-op returning true.
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually
  alias LibclusterRs.Test.Peer

  @moduletag timeout: 120_000

  test "a raising list_nodes does not keep reachable nodes apart, and prunes nothing" do
    id = System.unique_integer([:positive])
    {pa, _a} = Peer.start("lnd_a#{id}", "127.0.0.1")
    {pb, b} = Peer.start("lnd_b#{id}", "127.0.0.1")
    {pc, c} = Peer.start("lnd_c#{id}", "127.0.0.1")
    on_exit(fn -> Enum.each([pa, pb, pc], &Peer.stop/1) end)
    topology = :"lnd#{id}"

    {:ok, _} =
      Peer.start_cluster(pa, [
        {topology,
         [
           strategy: Cluster.Strategy.Epmd,
           config: [hosts: [b, c]],
           list_nodes: LibclusterRs.Test.MFA.raising_list_nodes()
         ]}
      ])

    # both are dialled although list_nodes has never answered
    eventually(fn -> Enum.sort(Peer.call(pa, Node, :list, [])) == Enum.sort([b, c]) end, 15_000)

    status =
      eventually(fn ->
        {:ok, s} = Peer.call(pa, Cluster, :status, [topology])
        s.mfa_errors[:list_nodes] && s
      end)

    assert status.membership == :unknown
    assert status.mfa_errors.list_nodes.failing
    assert status.mfa_errors.list_nodes.error =~ "list_nodes is down"
    assert status.disconnects.ours == 0

    # c goes away: with list_nodes down, its nodedown makes it due again, and it is redialled with
    # backoff once it is back (never pruned: the membership is unknown)
    Peer.stop(pc)
    eventually(fn -> Peer.call(pa, Node, :list, []) == [b] end, 15_000)
    {pc2, ^c} = Peer.start("lnd_c#{id}", "127.0.0.1")
    on_exit(fn -> Peer.stop(pc2) end)
    eventually(fn -> Enum.sort(Peer.call(pa, Node, :list, [])) == Enum.sort([b, c]) end, 30_000)

    {:ok, s} = Peer.call(pa, Cluster, :status, [topology])
    assert s.membership == :unknown
    assert s.disconnects.ours == 0
  end
end
