defmodule LibclusterRs.Membership.CallsTest do
  # The user MFAs are the seam users inject, so plain functions stand in for them here; the
  # membership tests and test/cluster/redial_storm_test.exs run the same calls against real peers.
  use ExUnit.Case, async: true

  alias LibclusterRs.Membership.Calls

  def listed(nodes), do: nodes
  def boom, do: raise("boom")
  def bye, do: exit(:bye)
  def toss, do: throw(:ball)
  def garbage, do: :not_a_list
  def connect(answer, _node), do: answer
  def disconnect(answer, _node), do: answer

  test "list_nodes: a list is a set; raising, exiting, throwing and garbage are faults naming what happened" do
    assert {:ok, set} = Calls.list_nodes({__MODULE__, :listed, [[:a@h, :a@h, :b@h]]})
    assert set == MapSet.new([:a@h, :b@h])
    assert {:fault, "raised RuntimeError: boom"} = Calls.list_nodes({__MODULE__, :boom, []})
    assert {:fault, "exited: :bye"} = Calls.list_nodes({__MODULE__, :bye, []})
    assert {:fault, "threw :ball"} = Calls.list_nodes({__MODULE__, :toss, []})

    assert {:fault, "returned :not_a_list (expected a list of nodes)"} =
             Calls.list_nodes({__MODULE__, :garbage, []})
  end

  test "connect: true and listed is :ok; true but not listed is a failure (no redial storm)" do
    listed = {__MODULE__, :listed, [[:a@h]]}
    assert {:dialled, at, :ok} = Calls.connect(:t, {__MODULE__, :connect, [true]}, listed, :a@h)
    assert is_integer(at)

    assert {:dialled, _, {:error, :not_listed, {:connect, :ok}}} =
             Calls.connect(:t, {__MODULE__, :connect, [true]}, listed, :b@h)
  end

  test "connect: false and :ignored are plain failures; garbage, raising and a broken list_nodes are faults" do
    listed = {__MODULE__, :listed, [[]]}

    assert {_, _, {:error, false, {:connect, :ok}}} =
             Calls.connect(:t, {__MODULE__, :connect, [false]}, listed, :a@h)

    assert {_, _, {:error, :ignored, {:connect, :ok}}} =
             Calls.connect(:t, {__MODULE__, :connect, [:ignored]}, listed, :a@h)

    assert {_, _, {:error, :weird, {:connect, "returned :weird (expected true, false or :ignored)"}}} =
             Calls.connect(:t, {__MODULE__, :connect, [:weird]}, listed, :a@h)

    assert {_, _, {:error, :list_nodes_failed, {:list_nodes, "raised RuntimeError: boom"}}} =
             Calls.connect(:t, {__MODULE__, :connect, [true]}, {__MODULE__, :boom, []}, :a@h)
  end

  test "disconnect: only listed nodes get the MFA; each answer is reported; a broken list_nodes stops it" do
    listed = {__MODULE__, :listed, [[:a@h, :b@h]]}

    assert [{:list_nodes, :ok}, {:disconnect, :ok}] =
             Calls.disconnect(:t, {__MODULE__, :disconnect, [true]}, listed, [:a@h, :gone@h])

    assert [{:list_nodes, :ok}, {:disconnect, "returned :nope (expected true or false)"}] =
             Calls.disconnect(:t, {__MODULE__, :disconnect, [:nope]}, listed, [:b@h])

    assert [{:list_nodes, "exited: :bye"}] =
             Calls.disconnect(:t, {__MODULE__, :disconnect, [true]}, {__MODULE__, :bye, []}, [:a@h])
  end
end
