defmodule Cluster.MeshTest do
  # Cluster.mesh/1, `mix libcluster.mesh` and the `global` disconnect counts of Cluster.status/1,
  # with real nodes. Async: the peers are nodes of their own, with names unique to the module.
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually
  alias LibclusterRs.Test.Peer

  @moduletag timeout: 120_000
  # no transitive connects: the links a test makes are the only ones
  @no_auto [~c"-connect_all", ~c"false"]

  defp start_peers(prefix, n, args) do
    id = System.unique_integer([:positive])
    peers = for i <- 1..n, do: Peer.start("#{prefix}#{i}_#{id}", "127.0.0.1", args: args)
    on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
    peers
  end

  defp link({pa, _}, {_, b}), do: true = Peer.call(pa, Node, :connect, [b])

  test "names the missing links of a chain a - b - c, in both directions, until a and c connect" do
    [{pa, a}, {_, b}, {_, c}] = peers = start_peers("mesh", 3, @no_auto)
    [p1, p2, p3] = peers
    link(p1, p2)
    link(p2, p3)

    mesh = Peer.call(pa, Cluster, :mesh, [])
    assert mesh.nodes == Enum.sort([a, b, c])
    assert mesh.missing == Enum.sort([{a, c}, {c, a}])
    assert mesh.asymmetric == []
    assert mesh.unreachable == %{}
    refute mesh.full_mesh

    link(p1, p3)
    assert %{full_mesh: true, missing: [], nodes: [_, _, _]} = Peer.call(pa, Cluster, :mesh, [])
  end

  test "mix libcluster.mesh checks from a hidden node that never joins the mesh" do
    [{_, a}, _, _] = peers = start_peers("meshtask", 3, @no_auto)
    [p1, p2, p3] = peers
    link(p1, p2)
    link(p2, p3)
    [{checker, _}] = start_peers("meshchk", 1, [~c"-hidden"])

    assert {1, text} = Peer.call(checker, Mix.Tasks.Libcluster.Mesh, :report, [["--node", "#{a}"]])
    assert text =~ "3 nodes"
    assert text =~ "#{a} does not see #{elem(p3, 1)}"
    refute text =~ "meshchk"

    link(p1, p3)
    assert {0, text} = Peer.call(checker, Mix.Tasks.Libcluster.Mesh, :report, [["--node", "#{a}"]])
    assert text =~ "full mesh"
    # hidden: no member counts the checker among its nodes
    for {p, _} <- peers,
        do: refute(Enum.any?(Peer.call(p, Node, :list, []), &(&1 |> to_string() =~ "meshchk")))
  end

  test "a node that does not answer is named, not counted as seen" do
    [{pa, a}] = start_peers("meshlone", 1, @no_auto)
    ghost = :"ghost_#{System.unique_integer([:positive])}@127.0.0.1"
    mesh = Peer.call(pa, Cluster, :mesh, [[seeds: [a, ghost], timeout: 2_000]])
    assert Map.keys(mesh.unreachable) == [ghost]
    refute mesh.full_mesh

    assert mesh.truncated == false
    # at most :max_nodes nodes are asked; the check says it stopped short
    assert %{nodes: [^a], truncated: true} =
             Peer.call(pa, Cluster, :mesh, [[seeds: [a, ghost], max_nodes: 1]])

    assert_raise ArgumentError, ~r/:timeout/, fn -> Cluster.mesh(timeout: 0) end
    assert_raise ArgumentError, ~r/:seeds/, fn -> Cluster.mesh(seeds: ["a@h"]) end
  end

  test "Cluster.status counts the connections global cuts to prevent overlapping partitions" do
    # default kernel settings: prevent_overlapping_partitions is on (OTP 25+)
    peers = start_peers("meshglobal", 3, [])
    [{_, a}, {pb, b}, {_, c}] = peers

    for {p, node} <- peers do
      {:ok, _} =
        Peer.start_cluster(p, [
          {:"g#{System.unique_integer([:positive])}",
           [strategy: Cluster.Strategy.Epmd, config: [hosts: [a, b, c]]]}
        ])

      eventually(fn -> Enum.sort(Peer.call(p, Node, :list, [])) == Enum.sort([a, b, c] -- [node]) end)
    end

    # b drops c while a still sees both: global cuts more to keep the partitions from overlapping
    true = Peer.call(pb, :erlang, :disconnect_node, [c])

    counts =
      eventually(
        fn ->
          snaps = for {p, _} <- peers, do: Peer.call(p, LibclusterRs.GlobalWatch, :snapshot, [])
          total = snaps |> Enum.map(&(&1.global + &1.requested)) |> Enum.sum()
          total > 0 && snaps
        end,
        15_000
      )

    assert Enum.all?(counts, & &1.seen)
    assert Enum.any?(counts, fn s -> Enum.any?(s.recent, &(&1.node in [a, b, c])) end)

    # ... and Cluster.status shows them, apart from the topology's own (none here)
    statuses = for {p, _} <- peers, do: Peer.call(p, Cluster, :status, [])

    for status <- statuses, {_, s} <- status do
      assert %{ours: 0, global: g, requested: r, seen: true} = s.disconnects
      assert is_integer(g) and is_integer(r)
    end

    assert Enum.sum(
             for status <- statuses, {_, s} <- status, do: s.disconnects.global + s.disconnects.requested
           ) > 0
  end
end
