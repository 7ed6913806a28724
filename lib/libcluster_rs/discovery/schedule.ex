defmodule LibclusterRs.Discovery.Schedule do
  @moduledoc false
  # When a topology's next discovery round is: a pure function of the last round's result, the
  # strategy's interval and jitter, the error streak and a random draw in [0, 1).
  #
  #   * after a successful round: the interval, varied by `jitter` either way; none for :infinity
  #   * after a failed round: backoff from 1 s doubling per failure, capped by the interval, or by
  #     30 s when the interval is :infinity (so even a run-once strategy heals), ±20 %
  #     (LibclusterRs.Backoff)
  #
  # `error_backoff/1` is that range, and the one rule for it: native tasks that retry by
  # themselves (Consul's blocking queries, the Kubernetes watch) are given the same range, so a
  # topology never retries slower than its interval whichever side retries.

  alias LibclusterRs.Backoff

  @error_min 1_000
  @error_cap_run_once 30_000

  @doc "The delay in ms before the next round, or nil for none."
  @spec next_delay(:ok | :error, pos_integer() | :infinity, number(), non_neg_integer(), float()) ::
          pos_integer() | nil
  def next_delay(:ok, :infinity, _jitter, _streak, _random), do: nil
  def next_delay(:ok, ms, jitter, _streak, random), do: Backoff.jitter(ms, jitter, random)

  def next_delay(:error, interval, _jitter, streak, random) do
    {min, max} = error_backoff(interval)
    Backoff.delay(streak, min, max, random)
  end

  @doc """
  The retry range `{min, max}` in ms after errors, for a topology whose interval is `interval`:
  from 1 s (the interval when shorter), capped by the interval, or by 30 s for `:infinity`.

      iex> LibclusterRs.Discovery.Schedule.error_backoff(5_000)
      {1000, 5000}
      iex> LibclusterRs.Discovery.Schedule.error_backoff(:infinity)
      {1000, 30000}
      iex> LibclusterRs.Discovery.Schedule.error_backoff(200)
      {200, 200}
  """
  @spec error_backoff(pos_integer() | :infinity) :: {pos_integer(), pos_integer()}
  def error_backoff(:infinity), do: {@error_min, @error_cap_run_once}
  def error_backoff(ms) when is_integer(ms) and ms > 0, do: {min(@error_min, ms), ms}
end
