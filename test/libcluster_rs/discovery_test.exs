defmodule LibclusterRs.DiscoveryTest do
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog

  alias LibclusterRs.{Discovery, Membership}
  alias Cluster.Strategy.State
  alias LibclusterRs.Test.{FakeDist, Peer}

  @moduletag capture_log: true

  # A strategy whose rounds are scripted by the test: `config[:script]` is a fun called with
  # (round_number, tag) that returns an outcome; every call is reported to `config[:test]`.
  defmodule Fake do
    use LibclusterRs.Discovery

    @impl LibclusterRs.Discovery
    def init(%State{config: config}) do
      send(config[:test], {:init, self()})
      {:ok, %{config: config, round: 0}, Keyword.get(config, :opts, [])}
    end

    @impl LibclusterRs.Discovery
    def discover(%{round: n, config: config} = impl, tag) do
      send(config[:test], {:round, n + 1, tag})
      {config[:script].(n + 1, tag), %{impl | round: n + 1}}
    end
  end

  # The distribution is the fake one (LibclusterRs.Test.FakeDist): every connect and disconnect the
  # membership makes is reported to the test as {:connect, node} / {:disconnect, node}.
  setup context do
    {:ok, topology: :"discovery_#{context.line}", dist: FakeDist.new()}
  end

  defp start(ctx, script, opts) do
    test = self()

    mfas = FakeDist.mfas(ctx.dist)

    state = %State{
      topology: ctx.topology,
      connect: mfas[:connect],
      disconnect: mfas[:disconnect],
      list_nodes: mfas[:list_nodes],
      config: [test: test, script: script, opts: opts]
    }

    {:ok, pid} = Fake.start_link([state])
    pid
  end

  test "the first round runs right after start, not inside init", ctx do
    test = self()

    # The first round waits for the test's go: run inside init, start/3 would block until the
    # round gives up (10 s) and the round would end in an error, so no connect would follow.
    script = fn
      1, _ ->
        send(test, {:in_round, self()})

        receive do
          :go -> {:discovered, [:a@h]}
        after
          10_000 -> {:error, :timeout, "the test never released the round"}
        end

      _, _ ->
        :done
    end

    pid = start(ctx, script, interval: :infinity)
    assert_receive {:in_round, round}
    send(round, :go)
    assert_receive {:round, 1, _}
    assert_receive {:connect, :a@h}, 1_000
    assert %{rounds: 1, last_discovered: last} = Discovery.status(pid)
    assert last == MapSet.new([:a@h])
  end

  test "an error is logged as a warning once per streak and retried even with :infinity", ctx do
    script = fn
      n, _ when n <= 3 -> {:error, :servfail, "boom #{n}"}
      _, _ -> {:discovered, [:a@h]}
    end

    log =
      capture_log(fn ->
        pid = start(ctx, script, interval: 40)
        assert_receive {:round, 4, _}, 2_000
        assert_receive {:connect, :a@h}, 1_000
        assert %{error_streak: 0, last_error: {:servfail, "boom 3", _}} = Discovery.status(pid)
      end)

    assert length(Regex.scan(~r/discovery failed \(servfail\)/, log)) == 1
    assert log =~ "discovery recovered after 3 failed round(s)"
  end

  test "with interval :infinity a failed round is retried after a backoff of about 1 s", ctx do
    script = fn
      1, _ -> {:error, :timeout, "slow"}
      _, _ -> {:discovered, []}
    end

    _pid = start(ctx, script, interval: :infinity)
    assert_receive {:round, 1, _}
    t0 = System.monotonic_time(:millisecond)
    assert_receive {:round, 2, _}, 2_000
    assert (System.monotonic_time(:millisecond) - t0) in 750..1_600
    # a success with :infinity schedules nothing more
    refute_receive {:round, 3, _}, 300
  end

  test "an error never prunes: the membership keeps the last known set", ctx do
    script = fn
      1, _ -> {:discovered, [:a@h]}
      _, _ -> {:error, :forbidden, "403"}
    end

    pid = start(ctx, script, interval: 30)
    assert_receive {:connect, :a@h}
    assert_receive {:round, 3, _}, 1_000
    refute_received {:disconnect, _}
    assert MapSet.new([:a@h]) == Discovery.status(pid).membership.known
  end

  test "confirm_empty: an empty result after a non-empty one is applied only when enough rounds agree", ctx do
    script = fn
      1, _ -> {:discovered, [:a@h]}
      _, _ -> {:discovered, []}
    end

    pid = start(ctx, script, interval: 50, confirm_empty: 3)
    assert_receive {:connect, :a@h}
    assert_receive {:round, 3, _}, 1_000
    refute_received {:disconnect, _}
    assert MapSet.new([:a@h]) == Discovery.status(pid).last_discovered
    assert_receive {:round, 4, _}, 1_000
    assert_receive {:disconnect, :a@h}, 1_000
  end

  defp silent_listener do
    {:ok, l} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, active: false)
    {:ok, port} = :inet.port(l)
    on_exit(fn -> :gen_tcp.close(l) end)
    {l, port}
  end

  test "round_timeout: an async round that does not finish is an error, then retried", ctx do
    {_l, port} = silent_listener()

    script = fn
      1, tag -> {:async, LibclusterRs.Native.epmd_names_start(tag, ["127.0.0.1"], port, 60_000)}
      _, _ -> {:discovered, [:b@h]}
    end

    log =
      capture_log(fn ->
        pid = start(ctx, script, interval: 100, round_timeout: 100)
        assert_receive {:round, 1, _}
        assert %{mode: :round} = Discovery.status(pid)
        assert_receive {:round, 2, _}, 1_000
        assert_receive {:connect, :b@h}, 1_000
      end)

    assert log =~ "discovery failed (timeout): discovery round did not finish within 100 ms"
  end

  test "events with a stale tag are ignored; the current tag's events are applied", ctx do
    {_l, port} = silent_listener()

    script = fn _, tag -> {:async, LibclusterRs.Native.epmd_names_start(tag, ["127.0.0.1"], port, 60_000)} end
    pid = start(ctx, script, interval: :infinity)
    assert_receive {:round, 1, tag}
    send(pid, {:libcluster_rs, make_ref(), {:nodes, ["stale@h"]}})
    # (a status call is answered after the message before it: the discovery has handled it, and
    # told the membership nothing)
    assert %{mode: :round, membership: %{discoveries: 0}} = Discovery.status(pid)
    refute_received {:connect, _}
    send(pid, {:libcluster_rs, tag, {:nodes, ["fresh@h", "not a node"]}})
    assert_receive {:connect, :fresh@h}, 1_000
    assert MapSet.new([:fresh@h]) == Discovery.status(pid).last_discovered
    # once the round is over, even its own tag is stale
    send(pid, {:libcluster_rs, tag, {:nodes, ["late@h"]}})
    assert %{membership: %{discoveries: 1, known: known}} = Discovery.status(pid)
    assert known == MapSet.new([:fresh@h])
    refute_received {:connect, :late@h}
  end

  test "the round's native handle is stopped when the round ends", ctx do
    {_l, port} = silent_listener()
    test = self()

    script = fn _, tag ->
      handle = LibclusterRs.Native.epmd_names_start(tag, ["127.0.0.1"], port, 60_000)
      send(test, {:handle, handle})
      {:async, handle}
    end

    pid = start(ctx, script, interval: :infinity)
    assert_receive {:round, 1, tag}
    assert_receive {:handle, handle}
    refute LibclusterRs.Native.discovery_stopped(handle)
    send(pid, {:libcluster_rs, tag, {:nodes, []}})
    Peer.wait_until(fn -> LibclusterRs.Native.discovery_stopped(handle) end, 1_000)
  end

  test "refresh/1 runs a round now", ctx do
    pid = start(ctx, fn _, _ -> {:discovered, []} end, interval: :infinity)
    assert_receive {:round, 1, _}
    Discovery.refresh(pid)
    assert_receive {:round, 2, _}
  end

  test "membership options given in the config reach the membership", ctx do
    pid = start(ctx, fn _, _ -> {:discovered, []} end, interval: :infinity, membership: [prune: :never])
    assert %{membership: %{opts: %{prune: :never}}} = Discovery.status(pid)
    assert is_pid(Registry.lookup(LibclusterRs.Registry, {:membership, ctx.topology}) |> hd() |> elem(0))

    assert Membership.status(
             Registry.lookup(LibclusterRs.Registry, {:membership, ctx.topology})
             |> hd()
             |> elem(0)
           )
  end
end
