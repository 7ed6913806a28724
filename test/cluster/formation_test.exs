defmodule Cluster.FormationTest do
  # Real :peer nodes on loopback: a 20-node mesh formed by paced first dials (the default), with no node cut by
  # `global`, and a refusing peer whose backoff keeps growing.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually
  alias LibclusterRs.Test.{NodeWatch, Peer}

  @moduletag timeout: 300_000

  defp start_peers(names, opts \\ []) do
    peers =
      names
      |> Task.async_stream(
        fn node ->
          [name, host] = node |> Atom.to_string() |> String.split("@")
          {pid, ^node} = Peer.start(name, host, opts)
          # Peer.start links the node to this short-lived task
          Process.unlink(pid)
          {pid, node}
        end,
        max_concurrency: 4,
        timeout: 120_000
      )
      |> Enum.map(fn {:ok, p} -> p end)

    on_exit(fn ->
      peers |> Task.async_stream(fn {p, _} -> Peer.stop(p) end, timeout: 60_000) |> Stream.run()
    end)

    peers
  end

  @tag :slow
  test "20 nodes dialling each other with the default pacing form a full mesh, and global cuts no node" do
    id = System.unique_integer([:positive])
    names = for i <- 1..20, do: :"mesh#{id}n#{String.pad_leading("#{i}", 2, "0")}@127.0.0.1"
    peers = start_peers(names)
    watchers = for {p, _} <- peers, do: {p, Peer.call(p, NodeWatch, :start, [])}

    topologies = [mesh: [strategy: Cluster.Strategy.Epmd, config: [hosts: names]]]

    peers
    |> Task.async_stream(fn {p, _} -> {:ok, _} = Peer.start_cluster(p, topologies) end, max_concurrency: 20)
    |> Stream.run()

    for {p, node} <- peers do
      assert eventually(fn -> Enum.sort(Peer.nodes(p)) == Enum.sort(names -- [node]) end, 120_000),
             "#{node} sees #{length(Peer.nodes(p))} of #{length(names) - 1}"
    end

    # every node is connected to every other, and no node was cut on the way with a disconnect
    # (`global`'s prevention of overlapping partitions; Epmd never prunes); other nodedowns (a tick
    # timeout on an overloaded machine) are not what this test is about
    for {p, w} <- watchers do
      downs = Peer.call(p, NodeWatch, :downs, [w])
      assert is_map(downs) and Map.get(downs, :disconnect, 0) == 0, inspect(downs)
    end
  end

  @tag :slow
  test "a real peer that refuses every connect is dialled with a backoff that keeps growing" do
    id = System.unique_integer([:positive])
    [{dialer, _}] = start_peers([:"dialer#{id}@127.0.0.1"])
    # another cookie: the handshake fails, connect_node returns false at once
    [{_, refuser}] = start_peers([:"refuser#{id}@127.0.0.1"], cookie: :another_cookie)

    # no heal probe: its early redials of a peer whose epmd answers would blur the backoff
    membership = [backoff_min: 20, backoff_max: 60_000, min_dial_interval: 10, probe: false]

    {:ok, _} =
      Peer.start_cluster(dialer,
        refuse: [strategy: Cluster.Strategy.Epmd, config: [hosts: [refuser]], membership: membership]
      )

    failures = fn ->
      {:ok, status} = Peer.call(dialer, Cluster, :status, [:refuse])
      get_in(status.pending, [refuser, :failures]) || 0
    end

    # Evidence that the streak is never restarted: the count reaches 6, then 8. Between the moment
    # 6 is seen (before the 7th dial) and the 8th failure lies at least the 7th failure's delay,
    # 20 * 2^6 ms less 20 % jitter (a delay stuck near its minimum would take about 40 ms).
    assert eventually(fn -> failures.() >= 6 end, 60_000)
    t6 = System.monotonic_time(:millisecond)
    assert failures.() == 6, "more than one failure between two status reads: no backoff"
    assert eventually(fn -> failures.() >= 8 end, 60_000)
    elapsed = System.monotonic_time(:millisecond) - t6
    assert elapsed >= LibclusterRs.Backoff.delay(7, 20, 60_000, 0.0), "6 -> 8 failures in #{elapsed} ms"

    {:ok, status} = Peer.call(dialer, Cluster, :status, [:refuse])
    assert %{last_error: false} = status.pending[refuser]
    assert Peer.nodes(dialer) == []
  end
end
