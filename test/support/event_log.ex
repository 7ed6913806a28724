defmodule LibclusterRs.Test.EventLog do
  @moduledoc false
  # A Cluster.Events subscriber that records what it receives, for tests that cannot receive the
  # events themselves (the test node is not distributed; the subscriber runs on a peer). Start it
  # on a peer with `Peer.call(p, LibclusterRs.Test.EventLog, :start, [])`, read it with `events/0`.

  def start do
    parent = self()

    pid =
      spawn(fn ->
        :ok = Cluster.Events.subscribe(self())
        send(parent, {:subscribed, self()})
        loop([])
      end)

    receive do
      {:subscribed, ^pid} -> :ok
    end

    true = Process.register(pid, __MODULE__)
    :ok
  end

  @doc "The events received so far, oldest first."
  def events do
    ref = make_ref()
    send(__MODULE__, {:events, self(), ref})

    receive do
      {^ref, events} -> events
    after
      5_000 -> exit(:event_log_timeout)
    end
  end

  defp loop(acc) do
    receive do
      {:events, from, ref} ->
        send(from, {ref, Enum.reverse(acc)})
        loop(acc)

      event ->
        loop([event | acc])
    end
  end
end
