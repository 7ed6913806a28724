defmodule LibclusterRs.Backoff do
  @moduledoc false
  # The one backoff rule of the Elixir side (the Rust core has the same rule in `native/core`):
  # the delay after the `n`th consecutive failure is `min * 2^(n-1)`, capped at `max`, then varied
  # by ±20 % uniformly (`jitter/3`), and never below 1 ms. Pure: the random draw (a float in
  # [0, 1), e.g. `:rand.uniform()`) is an argument, so a test can give the extremes.

  @jitter 0.2

  @doc "The fraction by which a backoff delay varies either way."
  @spec jitter_fraction() :: float()
  def jitter_fraction, do: @jitter

  @doc """
  The delay in ms after `failures` (>= 1) consecutive failures, from `min` doubling per failure
  up to `max`, ±20 %. `failures` below 1 count as 1.

      iex> LibclusterRs.Backoff.delay(1, 250, 10_000, 0.5)
      250
      iex> LibclusterRs.Backoff.delay(3, 250, 10_000, 0.0)
      800
      iex> LibclusterRs.Backoff.delay(40, 250, 10_000, 0.5)
      10000
  """
  @spec delay(integer(), pos_integer(), pos_integer(), float()) :: pos_integer()
  def delay(failures, min, max, random) do
    base = Kernel.min(max, min * Integer.pow(2, Kernel.min(Kernel.max(failures - 1, 0), 30)))
    jitter(base, @jitter, random)
  end

  @doc """
  `ms` varied uniformly by `fraction` either way (`random` 0.0 gives the low end, 0.5 `ms`
  itself), at least 1.

      iex> LibclusterRs.Backoff.jitter(5_000, 0.1, 0.0)
      4500
  """
  @spec jitter(non_neg_integer(), number(), float()) :: pos_integer()
  def jitter(ms, fraction, random) do
    spread = ms * fraction
    Kernel.max(1, round(ms - spread + random * 2 * spread))
  end
end
