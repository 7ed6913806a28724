defmodule Mix.Tasks.Libcluster.DiscoverGossipTest do
  # The gossip dry run listens only: it hears heartbeats, and sends none (else the cluster's nodes
  # would dial the dry run's VM).
  use ExUnit.Case, async: false

  alias LibclusterRs.Test.GossipSender

  defmodule DryRunProbe do
    # Reports whether the task called its dry_run/1 hook before discover/2.
    use LibclusterRs.Discovery
    @impl LibclusterRs.Discovery
    def init(_state), do: {:ok, %{dry: false}, []}
    @impl LibclusterRs.Discovery
    def dry_run(impl), do: %{impl | dry: true}
    @impl LibclusterRs.Discovery
    def discover(%{dry: dry} = impl, _tag),
      do: {{:discovered, [if(dry, do: :"dry@10.0.0.1", else: :"wet@10.0.0.1")]}, impl}
  end

  test "the task calls a strategy's dry_run/1 hook; gossip's makes it listen only" do
    state = %Cluster.Strategy.State{topology: :gossip_dry_run_hook, config: []}
    {:ok, impl, _} = Cluster.Strategy.Gossip.init(state)
    refute impl.native.listen_only
    assert Cluster.Strategy.Gossip.dry_run(impl).native.listen_only == true

    LibclusterRs.Test.DiscoverRun.configure!(probe: [strategy: DryRunProbe])

    out =
      ExUnit.CaptureIO.capture_io(fn ->
        assert LibclusterRs.Test.DiscoverRun.locked(fn -> Mix.Tasks.Libcluster.Discover.main("probe", []) end) ==
                 0
      end)

    assert out =~ "dry@10.0.0.1"
    refute out =~ "wet@10.0.0.1"
  end

  test "a listen-only gossip task hears heartbeats on loopback and sends none" do
    port = 47_900 + rem(System.unique_integer([:positive]), 90)
    tag = make_ref()

    opts = %{
      node: "dryrun@127.0.0.1",
      port: port,
      if_addr: "0.0.0.0",
      multicast_if: "127.0.0.1",
      multicast_addr: "233.252.1.32",
      multicast_ttl: 0,
      broadcast_only: false,
      wire_format: :v1,
      heartbeat_interval: 50,
      replay_window: 30_000,
      new_names_burst: 64,
      new_names_per_minute: 60,
      new_names_total_burst: 256,
      new_names_total_per_minute: 600,
      verify_sender: false,
      stats_interval: nil,
      listen_only: true
    }

    {handle, stats} = LibclusterRs.Native.gossip_start(tag, opts, nil)
    on_exit(fn -> LibclusterRs.Native.discovery_stop(handle) end)

    LibclusterRs.Test.Peer.wait_until(
      fn -> Map.get(LibclusterRs.Native.gossip_stats(stats), :socket_opened, 0) == 1 end,
      3_000
    )

    sender = GossipSender.open(socket_opts: [multicast_if: {127, 0, 0, 1}, multicast_ttl: 0])
    heartbeat = LibclusterRs.Native.gossip_encode_v1("peer1@127.0.0.1", nil)

    # Repeated until heard: the socket may join the group just after it opened.
    LibclusterRs.Test.Peer.wait_until(
      fn ->
        GossipSender.send_all(sender, {233, 252, 1, 32}, port, [heartbeat])

        receive do
          {:libcluster_rs, ^tag, {:heartbeat, "peer1@127.0.0.1", false}} -> true
        after
          50 -> false
        end
      end,
      3_000
    )

    :gen_udp.close(sender)
    # 300 ms is six heartbeat intervals: none was sent.
    Process.sleep(300)
    counters = LibclusterRs.Native.gossip_stats(stats)
    assert counters.accepted >= 1
    assert Map.get(counters, :sent, 0) == 0
    assert Map.get(counters, :own, 0) == 0
  end

  test "the gossip dry run works on a VM without a name (this test node) and lists what it heard" do
    refute Node.alive?()
    port = 47_900 + rem(System.unique_integer([:positive]), 90)
    config = [port: port, multicast_if: "lo", multicast_ttl: 0]
    LibclusterRs.Test.DiscoverRun.configure!(gossip: [strategy: Cluster.Strategy.Gossip, config: config])

    sender = GossipSender.open(socket_opts: [multicast_if: {127, 0, 0, 1}, multicast_ttl: 0])
    heartbeat = LibclusterRs.Native.gossip_encode_v1("heardpeer@127.0.0.1", nil)

    beating =
      Task.async(fn ->
        for _ <- 1..30 do
          GossipSender.send_all(sender, {233, 252, 1, 32}, port, [heartbeat])
          Process.sleep(50)
        end
      end)

    out =
      ExUnit.CaptureIO.capture_io(fn ->
        assert LibclusterRs.Test.DiscoverRun.locked(fn ->
                 Mix.Tasks.Libcluster.Discover.main("gossip", timeout: 1_000)
               end) == 0
      end)

    Task.await(beating)
    :gen_udp.close(sender)
    assert out =~ "heardpeer@127.0.0.1"
  end
end
