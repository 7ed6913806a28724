defmodule LibclusterRs.UntrustedAtomsTest do
  # LibclusterRs.NodeName.untrusted_to_node/3, the one place names from untrusted sources become
  # atoms. Synchronous: it reads the VM-wide budget, which no other test may spend meanwhile.
  use ExUnit.Case, async: false

  alias LibclusterRs.{Native, NodeName}

  test "a new untrusted name spends one atom of the budget; known, trusted and invalid ones do not" do
    {created, _} = Native.untrusted_atom_budget()
    cap = created + 1_000
    name = "untrusted#{System.unique_integer([:positive])}@127.0.0.1"

    assert {:ok, node} = NodeName.untrusted_to_node(name, cap)
    assert Atom.to_string(node) == name
    assert elem(Native.untrusted_atom_budget(), 0) == created + 1

    # already an atom: free
    assert {:ok, ^node} = NodeName.untrusted_to_node(name, cap)
    # trusted (authenticated gossip): no budget
    trusted = "trusted#{System.unique_integer([:positive])}@127.0.0.1"
    assert {:ok, _} = NodeName.untrusted_to_node(trusted, cap, true)
    # invalid: no atom
    assert NodeName.untrusted_to_node("not a node name", cap) == :invalid
    assert elem(Native.untrusted_atom_budget(), 0) == created + 1
  end
end
