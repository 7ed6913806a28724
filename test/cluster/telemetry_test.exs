defmodule Cluster.TelemetryTest do
  # Runs against the real :telemetry when it is loaded, or the test double in
  # test/support/telemetry_double.ex otherwise.
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually
  import ExUnit.CaptureLog

  alias LibclusterRs.Test.{FakeDist, ScriptedStrategy}

  @events [
    [:libcluster, :discovery, :start],
    [:libcluster, :discovery, :stop],
    [:libcluster, :discovery, :exception],
    [:libcluster, :membership, :added],
    [:libcluster, :membership, :removed],
    [:libcluster, :membership, :pruned],
    [:libcluster, :membership, :backoff],
    [:libcluster, :topology, :leave]
  ]

  setup do
    LibclusterRs.Test.TelemetryForward.attach(@events, "tel_")
    t = :"tel_#{System.unique_integer([:positive])}"
    {:ok, topology: t}
  end

  defp start(t, dialer, config, extra \\ []) do
    spec = FakeDist.topology(dialer, ScriptedStrategy, [test: self()] ++ config, extra)
    start_supervised!({Cluster.Supervisor, [[{t, spec}]]}, restart: :temporary)
  end

  defp outcome(outcome) do
    assert_receive {:round, pid, tag}, 1_000
    send(pid, {:libcluster_rs, tag, outcome})
  end

  test "a discovery round is a span with topology, strategy and counts", %{topology: t} do
    capture_log(fn ->
      start(t, FakeDist.new(reachable: [:"a@h.example", :"b@h.example"]), [])

      assert_receive {:telemetry, [:libcluster, :discovery, :start], %{system_time: _, monotonic_time: _},
                      %{topology: ^t, strategy: ScriptedStrategy, round: 1}}

      outcome({:discovered, [:"a@h.example", :"b@h.example"]})

      assert_receive {:telemetry, [:libcluster, :discovery, :stop], m,
                      %{topology: ^t, strategy: ScriptedStrategy, round: 1, result: :ok, error: nil}}

      assert m.discovered == 2 and m.seen == 0 and is_integer(m.duration) and m.duration >= 0

      assert_receive {:telemetry, [:libcluster, :membership, :added], %{count: 2},
                      %{topology: ^t, source: :discovered, nodes: nodes}}

      assert Enum.sort(nodes) == [:"a@h.example", :"b@h.example"]
    end)
  end

  test "a failed round stops with result :error and the error", %{topology: t} do
    capture_log(fn ->
      start(t, FakeDist.new(reachable: []), [])
      outcome({:error, :http, "403 Forbidden"})

      assert_receive {:telemetry, [:libcluster, :discovery, :stop], %{discovered: 0},
                      %{topology: ^t, result: :error, error: {:http, "403 Forbidden"}}}
    end)
  end

  test "a strategy that raises emits :exception", %{topology: t} do
    capture_log(fn ->
      start(t, FakeDist.new(reachable: []), [])
      outcome({:raise, "boom"})

      assert_receive {:telemetry, [:libcluster, :discovery, :exception], %{duration: _},
                      %{
                        topology: ^t,
                        strategy: ScriptedStrategy,
                        kind: :error,
                        reason: %RuntimeError{},
                        stacktrace: [_ | _]
                      }}
    end)
  end

  test "removed and pruned, with the prune policy", %{topology: t} do
    capture_log(fn ->
      dialer = FakeDist.new(reachable: [:"a@h.example", :"b@h.example"])
      start(t, dialer, opts: [interval: :infinity])
      outcome({:discovered, [:"a@h.example", :"b@h.example"]})
      assert_receive {:connect, :"b@h.example"}
      assert_receive {:connect, :"a@h.example"}
      status_until(t, &(length(&1.connected) == 2))
      [{disc, _}] = Registry.lookup(LibclusterRs.Registry, {:discovery, t})
      LibclusterRs.Discovery.refresh(disc)
      outcome({:discovered, [:"a@h.example"]})

      assert_receive {:telemetry, [:libcluster, :membership, :removed], %{count: 1},
                      %{topology: ^t, nodes: [:"b@h.example"], prune: :immediate}}

      assert_receive {:telemetry, [:libcluster, :membership, :pruned], %{count: 1},
                      %{topology: ^t, nodes: [:"b@h.example"], prune: :immediate}}

      assert_receive {:disconnect, :"b@h.example"}
    end)
  end

  test "backoff after a failed connect", %{topology: t} do
    capture_log(fn ->
      start(t, FakeDist.new(reachable: []),
        membership: [backoff_min: 100, backoff_max: 200, min_dial_interval: 50]
      )

      outcome({:discovered, [:"down@h.example"]})

      assert_receive {:telemetry, [:libcluster, :membership, :backoff], %{failures: 1, delay: delay},
                      %{topology: ^t, node: :"down@h.example", reason: false}}

      assert delay in 75..125
    end)
  end

  test "every event the code emits is documented in docs/telemetry.md" do
    doc = File.read!("docs/telemetry.md")

    emitted =
      Path.wildcard("lib/**/*.ex")
      |> Enum.flat_map(fn path ->
        Regex.scan(~r/\[:libcluster, :(\w+), :(\w+)\]/, File.read!(path), capture: :all_but_first)
      end)
      |> Enum.concat(for [_, a, b] <- @events, do: [Atom.to_string(a), Atom.to_string(b)])
      |> Enum.uniq()

    assert length(emitted) >= 12

    for [a, b] <- emitted do
      assert doc =~ "[:libcluster, :#{a}, :#{b}]", "[:libcluster, :#{a}, :#{b}] is not in docs/telemetry.md"
    end
  end
end
