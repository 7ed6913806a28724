defmodule LibclusterRs.Test.GossipLog do
  @moduledoc false
  # Records the log lines of a node at `level` and above (an Erlang :logger handler), for tests
  # whose strategy runs on a peer: `Peer.call(p, LibclusterRs.Test.GossipLog, :start, [:error])`, then
  # `Peer.call(p, LibclusterRs.Test.GossipLog, :lines, [])`.

  @table __MODULE__

  def start(level \\ :error) do
    parent = self()

    spawn(fn ->
      :ets.new(@table, [:named_table, :public, :ordered_set])
      send(parent, :table_ready)
      Process.sleep(:infinity)
    end)

    receive do: (:table_ready -> :ok)
    :ok = :logger.add_handler(:gossip_test_log, __MODULE__, %{level: level})
  end

  def lines do
    @table |> :ets.tab2list() |> Enum.map(&elem(&1, 1))
  end

  # :logger handler callback
  def log(%{msg: msg}, _config) do
    text =
      try do
        case msg do
          {:string, s} -> IO.chardata_to_string(s)
          {:report, r} -> inspect(r)
          {format, args} -> format |> :io_lib.format(args) |> IO.chardata_to_string()
        end
      rescue
        _ -> inspect(msg)
      end

    :ets.insert(@table, {System.unique_integer([:monotonic]), text})
  end
end
