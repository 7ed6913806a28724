defmodule LibclusterRs.NodeNameTest do
  # The Elixir side of the shared table: the Rust unit test in native/core/src/node_name.rs reads
  # the same file, so both sides are checked against the same cases.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  alias LibclusterRs.NodeName

  @table Path.expand("../fixtures/node_names.txt", __DIR__)
  @external_resource @table

  defp expand("<empty>"), do: ""
  defp expand("<long>"), do: "a@" <> String.duplicate("h", 298)
  defp expand("<max>"), do: "a@" <> String.duplicate("h", 253)
  defp expand(name), do: name |> String.replace("<sp>", " ") |> String.replace("<nul>", <<0>>)

  defp table do
    for line <- File.read!(@table) |> String.split("\n"),
        line != "" and not String.starts_with?(line, "#") do
      [verdict, name] = String.split(line, " ", parts: 2)
      {expand(name), verdict == "valid"}
    end
  end

  test "agrees with the shared table, one name at a time and as a batch" do
    table = table()
    assert length(table) > 30

    for {name, valid} <- table do
      assert NodeName.valid?(name) == valid, inspect(name)
      assert match?({:ok, _}, NodeName.to_node(name)) == valid, inspect(name)
    end

    {nodes, rejected} = NodeName.to_nodes(Enum.map(table, &elem(&1, 0)))
    assert Enum.map(nodes, &Atom.to_string/1) == for({n, true} <- table, do: n)
    assert rejected == for({n, false} <- table, do: n)
  end

  test "atoms are checked by their text; other terms are rejected" do
    assert NodeName.to_node(:"a@127.0.0.1") == {:ok, :"a@127.0.0.1"}
    assert NodeName.to_node(:"a@host.") == :error
    assert NodeName.to_node(nil) == :error
    assert NodeName.to_nodes([1, {:a}, ~c"a@b", "a@b"]) == {[:a@b], [1, {:a}, ~c"a@b"]}
    refute NodeName.valid?(:a@b)
  end

  test "long lists are checked in chunks, in order" do
    names = for i <- 1..5_001, do: if(rem(i, 1000) == 0, do: "bad@host.", else: "n#{i}@10.0.0.1")
    {nodes, rejected} = NodeName.to_nodes(names)
    assert length(nodes) == 4_996
    assert hd(nodes) == :"n1@10.0.0.1" and List.last(nodes) == :"n5001@10.0.0.1"
    assert rejected == List.duplicate("bad@host.", 5)
  end

  test "the NIF refuses what is not a list, and more than 2,000 names in one call" do
    assert_raise ArgumentError, fn -> LibclusterRs.Native.node_names_check(:nope) end

    assert_raise ArgumentError, ~r/at most 2000/, fn ->
      LibclusterRs.Native.node_names_check(List.duplicate("a@b", 2_001))
    end
  end

  @tag capture_log: true
  test "rejected names are logged at debug level with their count" do
    log = capture_log([level: :debug], fn -> NodeName.to_nodes(["ok@10.0.0.1", "a..b@x", "y@"]) end)
    assert log =~ "dropped 2 invalid node name(s)"
    assert log =~ "a..b@x"
  end
end
