defmodule Cluster.EventsTest do
  # Subscription bookkeeping of Cluster.Events. The events themselves come from the distribution
  # (:net_kernel.monitor_nodes); here they are injected as the distribution delivers them. Real
  # nodeup/nodedown from real peers are in test/cluster/strategy/static_test.exs.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually

  alias Cluster.Events

  defp deliver(message) do
    send(Process.whereis(Events), message)
    # a call after the send: the event has been fanned out once it returns
    _ = Events.subscribers()
    :ok
  end

  defp subscriber do
    test = self()

    spawn(fn ->
      receive_loop = fn loop ->
        receive do
          :stop ->
            :ok

          msg ->
            send(test, {:got, self(), msg})
            loop.(loop)
        end
      end

      receive_loop.(receive_loop)
    end)
  end

  test "a subscriber receives nodeup and nodedown; after unsubscribe it does not" do
    on_exit(fn -> Events.unsubscribe(self()) end)
    assert :ok == Events.subscribe()
    assert self() in Events.subscribers()
    deliver({:nodeup, :"ev1@h.example"})
    deliver({:nodedown, :"ev1@h.example"})
    assert_receive {:nodeup, :"ev1@h.example"}
    assert_receive {:nodedown, :"ev1@h.example"}

    assert :ok == Events.unsubscribe()
    refute self() in Events.subscribers()
    deliver({:nodeup, :"ev2@h.example"})
    refute_receive {:nodeup, _}, 50
  end

  test "subscribing twice delivers each event once; unsubscribing an unknown pid is fine" do
    on_exit(fn -> Events.unsubscribe(self()) end)
    :ok = Events.subscribe(self())
    :ok = Events.subscribe(self())
    deliver({:nodeup, :"twice@h.example"})
    assert_receive {:nodeup, :"twice@h.example"}
    refute_receive {:nodeup, :"twice@h.example"}, 50
    assert :ok == Events.unsubscribe(spawn(fn -> :ok end))
  end

  test "subscribe/1 subscribes another process" do
    pid = subscriber()
    :ok = Events.subscribe(pid)
    deliver({:nodedown, :"other@h.example"})
    assert_receive {:got, ^pid, {:nodedown, :"other@h.example"}}
    :ok = Events.unsubscribe(pid)
    send(pid, :stop)
  end

  test "a dead subscriber is dropped; the others keep receiving" do
    dead = subscriber()
    alive = subscriber()
    :ok = Events.subscribe(dead)
    :ok = Events.subscribe(alive)
    ref = Process.monitor(dead)
    send(dead, :stop)
    assert_receive {:DOWN, ^ref, :process, ^dead, _}
    eventually(fn -> dead not in Events.subscribers() end, 1_000)
    assert alive in Events.subscribers()
    deliver({:nodeup, :"after@h.example"})
    assert_receive {:got, ^alive, {:nodeup, :"after@h.example"}}
    :ok = Events.unsubscribe(alive)
    send(alive, :stop)
  end

  test "other messages are ignored and do not reach subscribers" do
    on_exit(fn -> Events.unsubscribe(self()) end)
    :ok = Events.subscribe()
    deliver({:nodeup, "not an atom"})
    deliver(:garbage)
    refute_receive _, 50
    assert Process.alive?(Process.whereis(Events))
  end
end
