defmodule LibclusterRs.Discovery.DiagnosticsTest do
  use ExUnit.Case, async: true

  alias LibclusterRs.Discovery.Diagnostics

  test "long names: a short host is a problem, warned about once" do
    {d, warning} = Diagnostics.check(%Diagnostics{}, [:a@shorthost, :"b@10.0.0.1"], :discovered, true)
    assert [problem] = d.problems
    assert problem =~ "a@shorthost"
    assert warning =~ "discovered node names that cannot be connected from this node, e.g. a@shorthost"

    {d, warning} = Diagnostics.check(d, [:c@othershort], :discovered, true)
    assert warning == nil
    assert [problem] = d.problems
    assert problem =~ "c@othershort"
  end

  test "short names: an IP host is a problem" do
    {d, warning} = Diagnostics.check(%Diagnostics{}, [:"b@10.0.0.1"], :discovered, false)
    assert [_] = d.problems
    assert warning
  end

  test "a complete discovery replaces the problems, sightings add to them (at most 10)" do
    {d, _} = Diagnostics.check(%Diagnostics{}, [:a@s1], :discovered, true)
    {d, _} = Diagnostics.check(d, [:b@s2], :seen, true)
    assert length(d.problems) == 2

    {d, _} = Diagnostics.check(d, for(i <- 1..20, do: :"n#{i}@short"), :seen, true)
    assert length(d.problems) == 10

    {d, _} = Diagnostics.check(d, [:"ok@h.example"], :discovered, true)
    assert d.problems == []
    assert d.warned
  end

  test "a node that is not distributed (no name mode) checks nothing" do
    assert {%Diagnostics{problems: [], warned: false}, nil} =
             Diagnostics.check(%Diagnostics{}, [:a@shorthost], :discovered, nil)
  end
end
