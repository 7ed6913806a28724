defmodule LibclusterRs.Test.Flapper do
  @moduledoc false
  # Run on :peer nodes for the redial-storm test. On the flapping peer, `start_dropping/0` makes the
  # node accept every connection and drop it again at once (it disconnects every node that comes
  # up), as a peer that accepts and immediately disconnects does. It also sweeps every 50 ms:
  # rarely (seen on OTP 25 and 29, about one run in three), a connection stayed up on both sides
  # after the drop at its nodeup, with no second nodeup; a peer that drops every connection must
  # not keep that one. On the dialling peer,
  # `counted_connect/1` is a connect MFA that counts its calls before calling
  # `:net_kernel.connect_node/1`.

  def start_dropping do
    parent = self()

    pid =
      spawn(fn ->
        :ok = :net_kernel.monitor_nodes(true)
        send(parent, :ready)
        drop_loop(0)
      end)

    receive do
      :ready -> :ok
    end

    :persistent_term.put({__MODULE__, :dropper}, pid)
    :ok
  end

  defp drop_loop(drops) do
    receive do
      {:nodeup, node} ->
        :erlang.disconnect_node(node)
        drop_loop(drops + 1)

      {:drops, from} ->
        send(from, {:drops, drops})
        drop_loop(drops)

      _ ->
        drop_loop(drops)
    after
      50 ->
        case Node.list(:connected) do
          [] ->
            drop_loop(drops)

          nodes ->
            Enum.each(nodes, &:erlang.disconnect_node/1)
            drop_loop(drops + length(nodes))
        end
    end
  end

  @doc "How many connections the flapping peer has dropped."
  def drops do
    send(:persistent_term.get({__MODULE__, :dropper}), {:drops, self()})

    receive do
      {:drops, n} -> n
    after
      5_000 -> :timeout
    end
  end

  def start_counter do
    :persistent_term.put({__MODULE__, :calls}, :counters.new(1, [:atomics]))
    :ok
  end

  def counted_connect(node) do
    :counters.add(:persistent_term.get({__MODULE__, :calls}), 1, 1)
    :net_kernel.connect_node(node)
  end

  @doc "How many times the connect MFA was called."
  def calls, do: :counters.get(:persistent_term.get({__MODULE__, :calls}), 1)
end
