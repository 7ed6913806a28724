defmodule LibclusterRs.BackoffTest do
  use ExUnit.Case, async: true

  alias LibclusterRs.Backoff

  doctest LibclusterRs.Backoff

  test "the delay doubles per failure from min and stops at max (random 0.5: no jitter)" do
    assert for(n <- 1..8, do: Backoff.delay(n, 250, 10_000, 0.5)) ==
             [250, 500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000]
  end

  test "the jitter is ±20 % uniform: the draw's extremes give 0.8x and 1.2x" do
    assert Backoff.delay(3, 250, 10_000, 0.0) == 800
    assert Backoff.delay(3, 250, 10_000, 0.25) == 900
    assert Backoff.delay(3, 250, 10_000, 0.75) == 1_100
    # :rand.uniform/0 is < 1.0
    assert Backoff.delay(3, 250, 10_000, 0.9999999) == 1_200
    assert Backoff.jitter_fraction() == 0.2
  end

  test "zero or negative failure counts count as the first; huge ones do not overflow" do
    assert Backoff.delay(0, 1_000, 30_000, 0.5) == 1_000
    assert Backoff.delay(-3, 1_000, 30_000, 0.5) == 1_000
    assert Backoff.delay(1_000_000, 1_000, 30_000, 0.5) == 30_000
  end

  test "a cap below min wins, and a delay is never below 1 ms" do
    assert Backoff.delay(1, 1_000, 300, 0.5) == 300
    assert Backoff.delay(1, 1, 1, 0.0) == 1
    assert Backoff.jitter(0, 0.2, 0.0) == 1
  end

  test "with real random draws every delay stays within the band" do
    for n <- 1..10, _ <- 1..50 do
      base = min(10_000, 250 * Integer.pow(2, n - 1))
      d = Backoff.delay(n, 250, 10_000, :rand.uniform())
      assert d >= round(base * 0.8) and d <= round(base * 1.2), "#{n}: #{d}"
    end
  end
end
