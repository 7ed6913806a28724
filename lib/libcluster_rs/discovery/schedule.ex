defmodule LibclusterRs.Discovery.Schedule do
  @moduledoc false
  # When a topology's next discovery round is: a pure function of the last round's result, the
  # strategy's interval and jitter, the error streak and a random draw in [0, 1).
  #
  #   * after a successful round: the interval, varied by `jitter` either way; none for :infinity
  #   * after a failed round: backoff from 1 s doubling per failure, capped by the interval, or by
  #     30 s when the interval is :infinity (so even a run-once strategy heals), ±20 %
  #     (LibclusterRs.Backoff)

  alias LibclusterRs.Backoff

  @error_min 1_000
  @error_cap_run_once 30_000

  @doc "The delay in ms before the next round, or nil for none."
  @spec next_delay(:ok | :error, pos_integer() | :infinity, number(), non_neg_integer(), float()) ::
          pos_integer() | nil
  def next_delay(:ok, :infinity, _jitter, _streak, _random), do: nil
  def next_delay(:ok, ms, jitter, _streak, random), do: Backoff.jitter(ms, jitter, random)

  def next_delay(:error, :infinity, _jitter, streak, random),
    do: Backoff.delay(streak, @error_min, @error_cap_run_once, random)

  def next_delay(:error, ms, _jitter, streak, random), do: Backoff.delay(streak, @error_min, ms, random)
end
