defmodule Cluster.Strategy.Epmd do
  @moduledoc """
  Connects to a fixed list of nodes. The simplest strategy: no discovery, just names.

  Unlike libcluster 3.5, the connects run concurrently with a deadline each (a host that is down or
  silent delays no other), and a node that fails or goes down is redialled with backoff until it is
  back, so the cluster heals without a `timeout`. The strategy never disconnects.

  With `timeout: n` (an integer), as in libcluster, a node that is not connected is dialled again
  once per `n` ms and never more often, whatever happens: `n` is the topology's per-node dial floor
  (`LibclusterRs.Membership`'s `:min_dial_interval`). A node that keeps failing backs off further, up to
  `:backoff_max` (10 s); set `membership: [backoff_max: n]` to dial it exactly once per `n` ms as
  libcluster does.

  ## Options

    * `:hosts` - the node names to connect to (atoms). An empty list makes the strategy `:ignore`.
      Default `[]`.
    * `:timeout` - `:infinity` (default) or an interval in ms at which the list is asserted again
      and the shortest time between two dials of one node (libcluster re-ran its connect at this
      interval; here retries with backoff happen anyway, at least `n` ms apart).
    * `:polling_interval` - an alias of `:timeout`.

  ## Example

      config :libcluster,
        topologies: [
          static: [
            strategy: Cluster.Strategy.Epmd,
            config: [hosts: [:"app@10.0.0.1", :"app@10.0.0.2", :"app@10.0.0.3"]]
          ]
        ]
  """
  use LibclusterRs.Discovery

  alias LibclusterRs.Config

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    schema = [
      {:hosts, [], Config.list_of(&node_name/1, "node names (atoms such as :\"app@host\")")},
      {:timeout, :infinity, Config.interval()},
      {:polling_interval, nil, Config.nullable(Config.interval())}
    ]

    opts = Config.validate!(config, schema, topology, __MODULE__, [:membership])

    case opts.hosts do
      [] ->
        :ignore

      hosts ->
        interval = opts.polling_interval || opts.timeout

        # libcluster re-ran its connects once per `timeout`: a node is never dialled more often.
        membership = if is_integer(interval), do: [min_dial_interval: interval], else: []
        {:ok, hosts, interval: interval, prune: false, membership: membership}
    end
  end

  @impl LibclusterRs.Discovery
  def discover(hosts, _tag), do: {{:discovered, hosts}, hosts}

  defp node_name(node) when is_atom(node) do
    case LibclusterRs.NodeName.to_node(node) do
      {:ok, node} -> {:ok, node}
      :error -> {:error, "a node name"}
    end
  end

  defp node_name(_), do: {:error, "a node name"}
end
