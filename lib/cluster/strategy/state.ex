defmodule Cluster.Strategy.State do
  @moduledoc """
  The state every strategy is started with, as in libcluster 3.5.

    * `topology` - the topology name (an atom)
    * `connect`, `disconnect`, `list_nodes` - the MFAs of the topology (the node is appended to the
      args of `connect` and `disconnect`)
    * `config` - the topology's `config` keyword list, with `{:system, ...}` values resolved
    * `meta` - strategy-owned. Polling strategies keep the `MapSet` of the last successful
      discovery here; a `meta` given in the initial state is taken as that last known set.
  """
  @type t :: %__MODULE__{
          topology: atom(),
          connect: {module(), atom(), [term()]},
          disconnect: {module(), atom(), [term()]},
          list_nodes: {module(), atom(), [term()]},
          meta: term(),
          config: Keyword.t()
        }

  defstruct topology: nil,
            connect: {:net_kernel, :connect_node, []},
            disconnect: {:erlang, :disconnect_node, []},
            list_nodes: {:erlang, :nodes, [:connected]},
            meta: nil,
            config: []
end
