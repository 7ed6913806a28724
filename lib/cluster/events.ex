defmodule Cluster.Events do
  @moduledoc """
  Cluster membership events for any process that wants them.

      Cluster.Events.subscribe()
      receive do
        {:nodeup, node} -> ...
        {:nodedown, node} -> ...
      end

  A subscriber receives `{:nodeup, node}` when a node joins this node's cluster (a connection is
  established, whichever topology or code made it) and `{:nodedown, node}` when it leaves. The
  source is the distribution itself (`:net_kernel.monitor_nodes/1`), so the events are true even
  for nodes connected by hand. Subscribers are monitored and dropped when they exit; subscribing
  twice delivers each event once.

  The server is started by the `:libcluster_rs` application.
  """
  use GenServer

  @spec subscribe(pid()) :: :ok
  def subscribe(pid \\ self()) when is_pid(pid), do: GenServer.call(__MODULE__, {:subscribe, pid})

  @spec unsubscribe(pid()) :: :ok
  def unsubscribe(pid \\ self()) when is_pid(pid), do: GenServer.call(__MODULE__, {:unsubscribe, pid})

  @doc false
  @spec subscribers() :: [pid()]
  def subscribers, do: GenServer.call(__MODULE__, :subscribers)

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @impl true
  def init(nil) do
    # Works before the distribution starts too; the subscription holds once it does.
    :ok = :net_kernel.monitor_nodes(true)
    {:ok, %{}}
  end

  @impl true
  def handle_call({:subscribe, pid}, _from, subs) do
    subs = if Map.has_key?(subs, pid), do: subs, else: Map.put(subs, pid, Process.monitor(pid))
    {:reply, :ok, subs}
  end

  def handle_call({:unsubscribe, pid}, _from, subs) do
    {ref, subs} = Map.pop(subs, pid)
    if ref, do: Process.demonitor(ref, [:flush])
    {:reply, :ok, subs}
  end

  def handle_call(:subscribers, _from, subs), do: {:reply, Map.keys(subs), subs}

  @impl true
  def handle_info({event, node} = message, subs) when event in [:nodeup, :nodedown] and is_atom(node) do
    for {pid, _} <- subs, do: send(pid, message)
    {:noreply, subs}
  end

  def handle_info({:DOWN, _ref, :process, pid, _reason}, subs), do: {:noreply, Map.delete(subs, pid)}
  def handle_info(_other, subs), do: {:noreply, subs}
end
