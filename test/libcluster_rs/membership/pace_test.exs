defmodule LibclusterRs.Membership.PaceTest do
  use ExUnit.Case, async: true
  alias LibclusterRs.Membership.Pace

  describe "ring/2" do
    test "starts with the first name after this node's own and wraps around" do
      nodes = [:a@h, :b@h, :d@h, :e@h]
      assert Pace.ring(nodes, :c@h) == [:d@h, :e@h, :a@h, :b@h]
      assert Pace.ring(Enum.reverse(nodes), :c@h) == [:d@h, :e@h, :a@h, :b@h]
    end

    test "nodes of one cluster do not all dial the same peer first" do
      names = for i <- 1..20, do: :"n#{String.pad_leading("#{i}", 2, "0")}@h"
      firsts = for self <- names, do: hd(Pace.ring(names -- [self], self))
      assert Enum.sort(firsts) == Enum.sort(names)
    end

    test "the last name wraps to the first, and the empty set stays empty" do
      assert Pace.ring([:a@h, :b@h], :z@h) == [:a@h, :b@h]
      assert Pace.ring([], :a@h) == []
    end
  end

  describe "take/5" do
    test "dials start within the paced slots, the rest wait in order" do
      queue = [:a@h, :b@h, :c@h, :d@h]

      assert Pace.take(queue, MapSet.new(), 64, 2) ==
               {[{:a@h, true}, {:b@h, true}], [], [:c@h, :d@h]}
    end

    test "max_concurrency bounds the starts too" do
      assert Pace.take([:r@h, :a@h, :b@h], MapSet.new(), 2, 4) ==
               {[{:r@h, true}, {:a@h, true}], [], [:b@h]}

      assert Pace.take([:a@h], MapSet.new(), 0, 4) == {[], [], [:a@h]}
    end

    test "nodes connected by now are dropped, not dialled, even when no slot is free" do
      listed = MapSet.new([:b@h, :d@h])

      assert Pace.take([:a@h, :b@h, :c@h, :d@h], listed, 64, 1) ==
               {[{:a@h, true}], [:b@h, :d@h], [:c@h]}
    end

    test "with pacing off every dial starts, none holding a slot" do
      assert Pace.take([:a@h, :b@h], MapSet.new(), 64, :infinity) ==
               {[{:a@h, false}, {:b@h, false}], [], []}
    end
  end

  describe "window/2" do
    test ":auto paces when setups can be seen, and not otherwise" do
      assert Pace.window(:auto, true) == Pace.auto_pace()
      assert Pace.window(:auto, false) == :infinity
    end

    test "an explicit pace stands either way" do
      assert Pace.window(4, false) == 4
      assert Pace.window(4, true) == 4
      assert Pace.window(:infinity, true) == :infinity
    end
  end

  describe "check/3" do
    test "a setup waiting for the peer's host frees its slot at once" do
      assert Pace.check(:waiting, 5, 5_000) == :release
    end

    test "a setup the peer answered keeps its slot, looked at again at twice its age, at most every 500 ms" do
      assert Pace.check(:answered, 2, 5_000) == {:keep, 2}
      assert Pace.check(:none, 8, 5_000) == {:keep, 8}
      assert Pace.check(:answered, 0, 5_000) == {:keep, Pace.first_check()}
      assert Pace.check(:answered, 400, 5_000) == {:keep, 400}
      assert Pace.check(:answered, 1_200, 5_000) == {:keep, 500}
    end

    test "no slot is held longer than the hold" do
      assert Pace.check(:answered, 5_000, 5_000) == :release
      assert Pace.check(:answered, 4_998, 5_000) == {:keep, 2}
      assert Pace.check(nil, 200, 200) == :release
    end

    test "when setups cannot be seen, the slot is held for all of the hold" do
      assert Pace.check(nil, 0, 200) == {:keep, 200}
      assert Pace.check(nil, 150, 200) == {:keep, 50}
    end
  end
end
