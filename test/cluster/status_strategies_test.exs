defmodule Cluster.StatusStrategiesTest do
  # `Cluster.status/1` for real strategies: Kubernetes (watch) against the fake API server through
  # its lifecycle, and gossip's counters under `extra` on a peer node. Async: topology names of
  # its own, and a gossip port range no other test uses (46_600-46_899).
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually
  import ExUnit.CaptureLog

  alias LibclusterRs.Test.{FakeDist, FakeKube, Peer}

  test "Kubernetes (watch): discovered, connected, a 403 keeps everything, recovery" do
    kube = FakeKube.start!()
    on_exit(fn -> FakeKube.stop(kube) end)
    [a, b] = [:"app@10.0.0.1", :"app@10.0.0.2"]

    FakeKube.put(
      kube,
      :endpoints,
      FakeKube.endpoints("myapp", ["10.0.0.1", "10.0.0.2"], labels: %{"app" => "myapp"})
    )

    dialer = FakeDist.new(reachable: [a])

    spec =
      FakeDist.topology(
        dialer,
        Cluster.Strategy.Kubernetes,
        kubernetes_node_basename: "app",
        kubernetes_selector: "app=myapp",
        kubernetes_master: kube.master,
        kubernetes_service_account_path: kube.sa_path,
        membership: [backoff_min: 50, backoff_max: 100]
      )

    t = :"k8s_status_#{System.unique_integer([:positive])}"

    capture_log(fn ->
      start_supervised!({Cluster.Supervisor, [[{t, spec}]]}, restart: :temporary)

      # Discovered both; a connects, b is in backoff with its next attempt.
      s = status_until(t, &(&1.last_discovered == [a, b] and &1.connected == [a]))
      assert %{strategy: Cluster.Strategy.Kubernetes, state: :running, last_error: nil} = s
      assert %DateTime{} = s.last_discovered_at
      assert %{^b => %{failures: f, next_attempt_in: next}} = s.pending
      assert f >= 1 and is_integer(next)
      assert s.error_streak == 0
      eventually(fn -> FakeKube.watchers(kube) == 1 end, 3_000)

      # The watch expires (410), the re-lists are forbidden twice: the error is kept, nothing pruned.
      FakeKube.fault(kube, :list, {:status, 403})
      FakeKube.fault(kube, :list, {:status, 403})
      FakeKube.expire(kube)
      s = status_until(t, &(&1.last_error != nil and &1.last_error.kind == :forbidden))
      assert s.last_error.message =~ "may not list endpoints in namespace default"
      assert s.last_error.message =~ "priv/rbac/endpoints.json"
      assert %DateTime{} = s.last_error.at
      assert s.error_streak >= 1
      assert s.last_discovered == [a, b]
      assert s.connected == [a]
      assert Map.has_key?(s.pending, b)
      refute_received {:disconnect, _}

      # Recovery: a successful list clears the streak, keeps the last error for the record, and a
      # real change prunes.
      s = status_until(t, &(&1.error_streak == 0 and &1.last_error != nil), 10_000)
      assert s.last_discovered == [a, b]
      refute_received {:disconnect, _}
      eventually(fn -> FakeKube.watchers(kube) == 1 end, 5_000)
      FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ["10.0.0.1"], labels: %{"app" => "myapp"}))
      s = status_until(t, &(&1.last_discovered == [a]))
      assert s.pending == %{}
      assert s.connected == [a]
    end)
  end

  @tag timeout: 30_000
  test "gossip: accepted and rejected counters under extra" do
    port = 46_600 + rem(System.unique_integer([:positive]), 300)
    {p, _} = Peer.start("gstatus", "127.0.0.1", args: [~c"-connect_all", ~c"false"])
    on_exit(fn -> Peer.stop(p) end)

    {:ok, _sup} =
      Peer.start_cluster(p,
        gossip: [
          strategy: Cluster.Strategy.Gossip,
          config: [
            port: port,
            multicast_if: "lo",
            multicast_ttl: 0,
            heartbeat_interval: 300,
            stats_interval: 200
          ]
        ]
      )

    assert {:ok, s} = Peer.call(p, Cluster, :status, [:gossip])
    assert s.strategy == Cluster.Strategy.Gossip and s.state == :running
    assert %{wire_format: :v1, port: ^port, counters: %{}} = s.extra

    # The socket is live once the node has heard its own heartbeat on the group: garbage sent
    # before that could be lost without any fault of the counters.
    eventually(
      fn ->
        {:ok, s} = Peer.call(p, Cluster, :status, [:gossip])
        Map.get(s.extra.counters, :own, 0) >= 1
      end,
      10_000
    )

    sender =
      LibclusterRs.Test.GossipSender.open(socket_opts: [multicast_if: {127, 0, 0, 1}, multicast_ttl: 0])

    on_exit(fn -> :gen_udp.close(sender) end)
    garbage = LibclusterRs.Test.GossipSender.garbage(50)

    # UDP may drop datagrams under load, so the garbage is sent again on each poll until both
    # counters moved; `rounds` counts how often it went out.
    rounds = :counters.new(1, [])

    eventually(
      fn ->
        LibclusterRs.Test.GossipSender.send_all(sender, {233, 252, 1, 32}, port, garbage)
        :counters.add(rounds, 1, 1)
        {:ok, s} = Peer.call(p, Cluster, :status, [:gossip])

        Map.get(s.extra.counters, :rejected_malformed, 0) > 0 and
          Map.get(s.extra.counters, :rejected_too_large, 0) > 0
      end,
      10_000
    )

    {:ok, s} = Peer.call(p, Cluster, :status, [:gossip])
    counters = s.extra.counters
    assert Enum.all?(counters, fn {_, v} -> is_integer(v) and v >= 0 end)
    # three oversized datagrams went out per round (UDP may drop some, never count more)
    assert counters.rejected_too_large in 1..(3 * :counters.get(rounds, 1))
    # Its own heartbeats are counted apart, and garbage connected nothing.
    assert counters.own >= 1 and counters.sent >= 1
    assert s.last_error == nil
    assert Peer.nodes(p) == []
  end
end
