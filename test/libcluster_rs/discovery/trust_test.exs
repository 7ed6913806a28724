defmodule LibclusterRs.Discovery.TrustTest do
  use ExUnit.Case, async: true

  alias LibclusterRs.Discovery.Trust

  @some MapSet.new([:"a@h.example"])
  @none MapSet.new()

  test "a non-empty result is always applied" do
    assert Trust.on_discovered(@some, @none, 0, 3) == :apply
    assert Trust.on_discovered(@some, @some, 2, 3) == :apply
  end

  test "an empty result after a non-empty one waits for confirm_empty consecutive rounds" do
    assert Trust.on_discovered(@none, @some, 0, 3) == {:hold, 1}
    assert Trust.on_discovered(@none, @some, 1, 3) == {:hold, 2}
    assert Trust.on_discovered(@none, @some, 2, 3) == :apply
  end

  test "with confirm_empty 1 (the default) an empty result applies at once; after an empty set, always" do
    assert Trust.on_discovered(@none, @some, 0, 1) == :apply
    assert Trust.on_discovered(@none, @none, 0, 3) == :apply
  end

  test "a failure logs at warning level (error for :config) when a streak starts, debug after" do
    assert Trust.error_level(0, :nxdomain) == :warn
    assert Trust.error_level(0, :config) == :error
    assert Trust.error_level(1, :config) == :debug
    assert Trust.error_level(4, :timeout) == :debug
  end
end
