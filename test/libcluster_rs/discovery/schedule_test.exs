defmodule LibclusterRs.Discovery.ScheduleTest do
  use ExUnit.Case, async: true

  alias LibclusterRs.Discovery.Schedule

  doctest LibclusterRs.Discovery.Schedule

  test "the native tasks that retry by themselves get the failed-round range: one rule" do
    for interval <- [200, 1_000, 5_000, 300_000, :infinity] do
      {min, max} = Schedule.error_backoff(interval)
      assert min <= max
      # The first and the capped delays of a failed round are the range's ends (jitter at 0.5).
      assert Schedule.next_delay(:error, interval, 0.1, 1, 0.5) == min
      assert Schedule.next_delay(:error, interval, 0.1, 40, 0.5) == max
    end

    state = fn strategy, config ->
      strategy.init(%Cluster.Strategy.State{topology: :schedule_rule, config: config})
    end

    {:ok, consul, _} =
      state.(Cluster.Strategy.Consul,
        list_using: [Cluster.Strategy.Consul.Agent],
        service: [name: "a"],
        polling_interval: 7_000,
        env: %{}
      )

    assert {consul.native.backoff_min_ms, consul.native.backoff_max_ms} == Schedule.error_backoff(7_000)

    {:ok, kube, _} =
      state.(Cluster.Strategy.Kubernetes,
        kubernetes_node_basename: "a",
        kubernetes_selector: "app=a",
        kubernetes_namespace: "d",
        polling_interval: :infinity,
        env: %{}
      )

    assert {kube.native.backoff_min_ms, kube.native.backoff_max_ms} == Schedule.error_backoff(:infinity)
  end

  test "after a successful round: the interval, varied by the strategy's jitter" do
    assert Schedule.next_delay(:ok, 5_000, 0.1, 0, 0.5) == 5_000
    assert Schedule.next_delay(:ok, 5_000, 0.1, 0, 0.0) == 4_500
    assert Schedule.next_delay(:ok, 5_000, 0.1, 0, 0.9999999) == 5_500
    assert Schedule.next_delay(:ok, 5_000, 0, 0, 0.0) == 5_000
  end

  test "after a successful round of a run-once strategy: no next round" do
    assert Schedule.next_delay(:ok, :infinity, 0.1, 0, 0.5) == nil
  end

  test "after failed rounds: 1 s doubling per failure, capped by the interval, ±20 %" do
    assert for(streak <- 1..5, do: Schedule.next_delay(:error, 5_000, 0.1, streak, 0.5)) ==
             [1_000, 2_000, 4_000, 5_000, 5_000]

    assert Schedule.next_delay(:error, 5_000, 0.1, 2, 0.0) == 1_600
    assert Schedule.next_delay(:error, 5_000, 0.1, 2, 0.9999999) == 2_400
  end

  test "a run-once strategy that fails retries too, capped at 30 s" do
    assert for(streak <- [1, 5, 6, 50], do: Schedule.next_delay(:error, :infinity, 0.1, streak, 0.5)) ==
             [1_000, 16_000, 30_000, 30_000]
  end

  test "an interval below 1 s caps the error backoff at the interval" do
    assert Schedule.next_delay(:error, 200, 0.1, 1, 0.5) == 200
  end
end
