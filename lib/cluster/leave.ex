defmodule Cluster.Leave do
  @moduledoc false
  # The last child of every Cluster.Supervisor. Children stop in reverse start order, so this one
  # stops first: it tells each topology of its supervisor to leave (stop discovering and dialling)
  # before any topology process is taken down. It cannot ask the supervisor (which is busy shutting
  # down), so it finds the topologies in Cluster.Registry by name and supervisor pid.
  use GenServer

  @spec child_spec([atom()]) :: Supervisor.child_spec()
  def child_spec(topologies) do
    %{id: __MODULE__, start: {GenServer, :start_link, [__MODULE__, topologies]}, shutdown: 10_000}
  end

  @impl true
  def init(topologies) do
    Process.flag(:trap_exit, true)

    supervisor =
      case Process.get(:"$ancestors") do
        [parent | _] when is_pid(parent) -> parent
        _ -> nil
      end

    {:ok, {supervisor, topologies}}
  end

  @impl true
  def terminate(_reason, {supervisor, topologies}) do
    for topology <- topologies,
        {pid, %{supervisor: ^supervisor}} <- Registry.lookup(Cluster.Registry, {:discovery, topology}) do
      Cluster.leave_pid(pid)
    end

    :ok
  end
end
