defmodule LibclusterRs.Discovery.SpanTest do
  use ExUnit.Case, async: true

  alias LibclusterRs.Discovery.Span

  test "a round's span: start, counts, stop with the duration from the clock given" do
    {span, start} = Span.open(:topo, SomeStrategy, 3, 1_000, 77)
    meta = %{topology: :topo, strategy: SomeStrategy, round: 3}
    assert start == {[:libcluster, :discovery, :start], %{system_time: 77, monotonic_time: 1_000}, meta}

    span = span |> Span.seen(2) |> Span.seen(1) |> Span.discovered(5)

    assert Span.close(span, :ok, nil, 1_250) ==
             {[:libcluster, :discovery, :stop],
              %{duration: 250, monotonic_time: 1_250, discovered: 5, seen: 3},
              Map.merge(meta, %{result: :ok, error: nil})}
  end

  test "a failed round's stop carries the error" do
    {span, _} = Span.open(:topo, SomeStrategy, 1, 0, 0)
    {_, measurements, meta} = Span.close(span, :error, {:nxdomain, "no such name"}, 10)
    assert measurements == %{duration: 10, monotonic_time: 10, discovered: 0, seen: 0}
    assert meta.result == :error and meta.error == {:nxdomain, "no such name"}
  end

  test "an exception event names the kind, reason and stacktrace" do
    {span, _} = Span.open(:topo, SomeStrategy, 1, 100, 0)

    assert {[:libcluster, :discovery, :exception], %{duration: 5, monotonic_time: 105},
            %{kind: :error, reason: %RuntimeError{}, stacktrace: [], round: 1}} =
             Span.exception(span, :error, %RuntimeError{}, [], 105)
  end

  test "counting with no open span (a stream after its first result) is a no-op" do
    assert Span.seen(nil, 3) == nil
    assert Span.discovered(nil, 3) == nil
  end
end
