defmodule LibclusterRs.Membership.FaultsTest do
  use ExUnit.Case, async: true

  alias LibclusterRs.Membership.Faults

  test "a streak starts once, continues, ends at a success; the total survives across streaks" do
    {f, {:started, e}} = Faults.fault(%{}, :connect, "M.c/2", "raised RuntimeError: boom", 1)
    assert %{mfa: "M.c/2", count: 1, total: 1, failing: true, at: 1} = e

    {f, :continued} = Faults.fault(f, :connect, "M.c/2", "exited: :nope", 2)
    assert %{count: 2, total: 2, error: "exited: :nope", at: 2} = f.connect

    # another kind is its own streak
    {f, {:started, _}} = Faults.fault(f, :list_nodes, "M.l/0", "returned :x", 3)

    {f, {:recovered, ended}} = Faults.ok(f, :connect)
    assert ended.count == 2
    assert %{failing: false, count: 0, total: 2, error: "exited: :nope"} = f.connect
    assert {^f, nil} = Faults.ok(f, :connect)

    {f, {:started, e}} = Faults.fault(f, :connect, "M.c/2", "again", 4)
    assert %{count: 1, total: 3} = e
    assert f.list_nodes.failing
  end

  test "a success with no streak changes nothing" do
    assert {%{}, nil} = Faults.ok(%{}, :disconnect)
  end

  test "MFAs are named with the arity the library calls them with" do
    assert Faults.mfa_text(:connect, {:net_kernel, :connect_node, []}) == ":net_kernel.connect_node/1"
    assert Faults.mfa_text(:disconnect, {Mod, :off, [1]}) == "Mod.off/2"
    assert Faults.mfa_text(:list_nodes, {:erlang, :nodes, [:connected]}) == ":erlang.nodes/1"
  end
end
