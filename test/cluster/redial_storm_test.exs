defmodule Cluster.RedialStormTest do
  # A real peer that accepts every connection and drops it at once: a topology dials it at most
  # about twice a second (libcluster: once per round), not in a tight loop.
  # Async: the peers are real nodes of their own (a loaded machine only lowers the dial rates,
  # which are bounded from above).
  use ExUnit.Case, async: true

  alias Cluster.Strategy.Epmd
  alias LibclusterRs.Test.{Flapper, Peer}

  @moduletag timeout: 120_000

  # One flapping peer and one dialling peer for the module; each test runs its own topology on
  # the dialler (stopped after it) and counts from a fresh counter.
  setup_all do
    id = System.unique_integer([:positive])
    {flapper, flapper_node} = Peer.start("flapper#{id}", "127.0.0.1")
    {dialer, _} = Peer.start("dialer#{id}", "127.0.0.1")

    on_exit(fn ->
      Peer.stop(dialer)
      Peer.stop(flapper)
    end)

    :ok = Peer.call(flapper, Flapper, :start_dropping, [])
    %{flapper: flapper, flapper_node: flapper_node, dialer: dialer}
  end

  setup ctx do
    :ok = Peer.call(ctx.dialer, Flapper, :start_counter, [])
    %{drops_before: Peer.call(ctx.flapper, Flapper, :drops, [])}
  end

  defp start_topology(ctx, config) do
    {:ok, sup} =
      Peer.start_cluster(ctx.dialer,
        storm: [
          strategy: Epmd,
          config: [hosts: [ctx.flapper_node]] ++ config,
          connect: {Flapper, :counted_connect, []}
        ]
      )

    on_exit(fn -> Peer.call(ctx.dialer, Supervisor, :stop, [sup]) end)
  end

  # Counts the dials over `ms` from the topology's start, and checks the peer really accepted
  # (and dropped) connections meanwhile.
  defp count_calls(ctx, ms) do
    t0 = System.monotonic_time(:millisecond)
    # (the sleep is the counting window)
    Process.sleep(ms)
    calls = Peer.call(ctx.dialer, Flapper, :calls, [])
    elapsed = System.monotonic_time(:millisecond) - t0
    drops = Peer.call(ctx.flapper, Flapper, :drops, []) - ctx.drops_before
    assert drops >= 1, "the peer never accepted a connection"
    {calls, elapsed}
  end

  test "a peer that accepts and drops every connection is dialled at most about twice a second", ctx do
    start_topology(ctx, [])
    {calls, elapsed} = count_calls(ctx, 4_000)
    # at most ~2 a second plus slack (today's code: hundreds a second)
    assert calls >= 1
    assert calls <= 2 * elapsed / 1000 + 2, "#{calls} dials in #{elapsed} ms"
  end

  test "with Epmd timeout: n, at most one dial per n ms", ctx do
    start_topology(ctx, timeout: 1_500)
    {calls, elapsed} = count_calls(ctx, 4_500)
    assert calls >= 1
    assert calls <= elapsed / 1_500 + 1, "#{calls} dials in #{elapsed} ms"
  end
end
