defmodule LibclusterRs.GlobalWatch do
  @moduledoc false
  # Counts the connections that `global` cuts in this VM "in order to prevent overlapping
  # partitions" (OTP 25+, kernel `prevent_overlapping_partitions`, on by default). `global` says so
  # only in a warning it logs (the same format on OTP 25 to 29):
  #
  #     'global' at node ~p ~s node ~p in order to prevent overlapping partitions
  #
  # where ~s is "disconnected" (this node cut the connection), "requested disconnect from" (this
  # node asked the other one to cut its connection to this node) or "excluded global group
  # member". A logger handler (it runs in `global`'s process, so it only matches and sends) passes
  # those events to this server, which keeps the counts and the last few; `Cluster.status/1` shows
  # them as `:disconnects`. The handler sees what the primary logger level lets through: with a
  # primary level above `:warning` the events are not seen, and `snapshot/0` says so (`seen: false`).
  use GenServer

  @handler :libcluster_rs_global_watch
  @recent 10

  def start_link(_), do: GenServer.start_link(__MODULE__, [], name: __MODULE__)

  @doc """
  `%{global: n, requested: n, recent: [%{what: :disconnected | :requested, node: node, at: DateTime}],
  seen: boolean}` for this VM; `nil` when the watch is not running.
  """
  def snapshot do
    GenServer.call(__MODULE__, :snapshot, 1_000)
  catch
    :exit, _ -> nil
  end

  # The logger handler callback: runs in the logging process.
  def log(%{msg: {:report, _}}, _config), do: :ok

  def log(%{msg: {format, [_this, what, other]}}, _config) when is_list(format) or is_binary(format) do
    with true <- overlapping?(format),
         kind when kind != nil <- kind(what),
         pid when is_pid(pid) <- Process.whereis(__MODULE__) do
      send(pid, {:global_disconnect, kind, other, System.system_time(:millisecond)})
    end

    :ok
  end

  def log(_event, _config), do: :ok

  defp overlapping?(format) do
    format = IO.chardata_to_string(format)

    String.starts_with?(format, "'global' at node") and
      String.contains?(format, "prevent overlapping partitions")
  rescue
    _ -> false
  end

  defp kind(what) do
    case to_string(what) do
      "disconnected" -> :disconnected
      "requested disconnect from" -> :requested
      _ -> nil
    end
  rescue
    _ -> nil
  end

  @impl true
  def init(_) do
    Process.flag(:trap_exit, true)
    _ = :logger.remove_handler(@handler)
    :ok = :logger.add_handler(@handler, __MODULE__, %{level: :warning})
    {:ok, %{disconnected: 0, requested: 0, recent: []}}
  end

  @impl true
  def handle_info({:global_disconnect, kind, node, at}, s) do
    entry = %{what: kind, node: node, at: DateTime.from_unix!(at, :millisecond)}
    {:noreply, %{s | kind => s[kind] + 1, recent: Enum.take([entry | s.recent], @recent)}}
  end

  def handle_info(_, s), do: {:noreply, s}

  @impl true
  def handle_call(:snapshot, _from, s) do
    seen = :logger.compare_levels(:logger.get_primary_config().level, :warning) != :gt
    {:reply, %{global: s.disconnected, requested: s.requested, recent: s.recent, seen: seen}, s}
  end

  @impl true
  def terminate(_, _), do: :logger.remove_handler(@handler)
end
