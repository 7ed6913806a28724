defmodule LibclusterRs.App do
  @moduledoc false
  # The :libcluster_rs application: the event server, the registry of memberships, a task
  # supervisor, and (opt-in) the topologies of `config :libcluster_rs, topologies: [...]`.
  use Application

  @impl true
  def start(_type, _args) do
    # `config :libcluster, ...` (sys.config, runtime.exs) is applied only to a loaded :libcluster.
    _ = LibclusterRs.LibclusterApp.load()
    topologies = Application.get_env(:libcluster_rs, :topologies, [])

    children =
      [
        {Registry, keys: :unique, name: LibclusterRs.Registry},
        # Short tasks of the library outside any topology (e.g. `Cluster.status/1` asking a custom
        # strategy's list_nodes); each topology has a Task.Supervisor of its own.
        {Task.Supervisor, name: LibclusterRs.TaskSupervisor},
        # counts the connections `global` cuts to prevent overlapping partitions (Cluster.status/1)
        LibclusterRs.GlobalWatch,
        Cluster.Events
      ] ++
        if topologies == [] do
          []
        else
          [{Cluster.Supervisor, [topologies, [name: LibclusterRs.AppSupervisor]]}]
        end

    Supervisor.start_link(children, strategy: :rest_for_one, name: LibclusterRs.AppRoot)
  end

  # Graceful leave: before the tree stops, every topology still running stops discovering and
  # dialling, so this node is not re-dialled by its own topologies while it goes down.
  @impl true
  def prep_stop(state) do
    Cluster.leave()
    state
  end
end
