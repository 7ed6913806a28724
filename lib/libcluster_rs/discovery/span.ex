defmodule LibclusterRs.Discovery.Span do
  @moduledoc false
  # The telemetry span of one discovery round (`[:libcluster, :discovery, :start | :stop |
  # :exception]`): when it started, its metadata and the nodes counted so far. Pure: each function
  # takes the clock readings and returns the event to emit as `{name, measurements, metadata}`;
  # the discovery process emits it.

  @enforce_keys [:started, :meta]
  defstruct [:started, :meta, counts: %{discovered: 0, seen: 0}]

  @type t :: %__MODULE__{
          started: integer(),
          meta: map(),
          counts: %{discovered: non_neg_integer(), seen: non_neg_integer()}
        }
  @type event :: {[atom()], map(), map()}

  @doc "Opens the span of round `round`; `now` is `System.monotonic_time()`, `system_time` `System.system_time()`."
  @spec open(atom(), module(), non_neg_integer(), integer(), integer()) :: {t(), event()}
  def open(topology, strategy, round, now, system_time) do
    meta = %{topology: topology, strategy: strategy, round: round}
    span = %__MODULE__{started: now, meta: meta}
    {span, {[:libcluster, :discovery, :start], %{system_time: system_time, monotonic_time: now}, meta}}
  end

  @doc "Adds `n` sighted nodes to the round's count."
  @spec seen(t() | nil, non_neg_integer()) :: t() | nil
  def seen(nil, _n), do: nil
  def seen(span, n), do: put_in(span.counts.seen, span.counts.seen + n)

  @doc "Sets the number of nodes the round discovered."
  @spec discovered(t() | nil, non_neg_integer()) :: t() | nil
  def discovered(nil, _n), do: nil
  def discovered(span, n), do: put_in(span.counts.discovered, n)

  @doc "The stop event: `result` is :ok, :error or :left; `error` the round's `{kind, message}` or nil."
  @spec close(t(), atom(), {atom(), String.t()} | nil, integer()) :: event()
  def close(span, result, error, now) do
    {[:libcluster, :discovery, :stop],
     Map.merge(%{duration: now - span.started, monotonic_time: now}, span.counts),
     Map.merge(span.meta, %{result: result, error: error})}
  end

  @doc "The exception event of strategy code that raised, exited or threw during the round."
  @spec exception(t(), atom(), term(), list(), integer()) :: event()
  def exception(span, kind, reason, stacktrace, now) do
    {[:libcluster, :discovery, :exception], %{duration: now - span.started, monotonic_time: now},
     Map.merge(span.meta, %{kind: kind, reason: reason, stacktrace: stacktrace})}
  end
end
