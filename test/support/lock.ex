defmodule LibclusterRs.Test.Lock do
  @moduledoc false
  # Named locks for tests of async modules that must take turns on something global (the
  # application env a dry run reads, the making of the run's CA). One process holds them all,
  # started by test_helper.exs; waiters are served in order, and a holder that dies releases.
  #
  #   Lock.hold(:discover_env, fn -> ... end)
  use GenServer

  def start do
    {:ok, pid} = GenServer.start(__MODULE__, nil, name: __MODULE__)
    pid
  end

  @doc "Runs `fun` holding the lock `name`; returns what it returns."
  def hold(name, fun) do
    :ok = GenServer.call(__MODULE__, {:acquire, name}, :infinity)

    try do
      fun.()
    after
      GenServer.call(__MODULE__, {:release, name}, :infinity)
    end
  end

  @impl true
  def init(nil), do: {:ok, %{}}

  # state: name => {holder_pid, monitor_ref, :queue.queue(from)}
  @impl true
  def handle_call({:acquire, name}, {pid, _} = from, locks) do
    case locks do
      %{^name => {holder, ref, waiting}} ->
        {:noreply, Map.put(locks, name, {holder, ref, :queue.in(from, waiting)})}

      _ ->
        {:reply, :ok, Map.put(locks, name, {pid, Process.monitor(pid), :queue.new()})}
    end
  end

  def handle_call({:release, name}, {pid, _}, locks) do
    case locks do
      %{^name => {^pid, ref, waiting}} ->
        Process.demonitor(ref, [:flush])
        {:reply, :ok, next(locks, name, waiting)}

      _ ->
        {:reply, :ok, locks}
    end
  end

  @impl true
  def handle_info({:DOWN, ref, :process, _, _}, locks) do
    case Enum.find(locks, fn {_, {_, r, _}} -> r == ref end) do
      {name, {_, _, waiting}} -> {:noreply, next(locks, name, waiting)}
      nil -> {:noreply, locks}
    end
  end

  defp next(locks, name, waiting) do
    case :queue.out(waiting) do
      {{:value, {pid, _} = from}, rest} ->
        GenServer.reply(from, :ok)
        Map.put(locks, name, {pid, Process.monitor(pid), rest})

      {:empty, _} ->
        Map.delete(locks, name)
    end
  end
end
