defmodule Cluster.Strategy.LocalEpmd do
  @moduledoc """
  Connects to every node registered in this host's epmd, with this node's host part: the way to
  cluster several nodes on one machine without listing them.

  epmd is asked natively (the EPMD `NAMES` request on port 4369, with a deadline), never from the
  strategy process. When epmd is not running the strategy stays up and retries with backoff. Nodes
  that leave epmd are no longer redialled; the strategy never disconnects.

  ## Options

    * `:polling_interval` - ms between looks at epmd, or `:infinity` to look once (libcluster's
      behaviour). Default `5_000`, so nodes started later are found too.
    * `:epmd_port` - default `4369` (or `ERL_EPMD_PORT` when set)

  ## Example

      config :libcluster,
        topologies: [
          local: [strategy: Cluster.Strategy.LocalEpmd]
        ]
  """
  use LibclusterRs.Discovery

  alias LibclusterRs.Config

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    schema = [
      {:polling_interval, 5_000, Config.interval()},
      {:epmd_port, default_epmd_port(), Config.port()},
      {:timeout, 5_000, Config.pos_integer()}
    ]

    opts = Config.validate!(config, schema, topology, __MODULE__, [:membership])
    {:ok, Map.put(opts, :hosts, %{}), interval: opts.polling_interval, prune: false}
  end

  @impl LibclusterRs.Discovery
  def discover(opts, tag) do
    host = LibclusterRs.NodeName.host(Node.self())

    if Node.alive?() do
      handle = LibclusterRs.Native.epmd_names_start(tag, [host], opts.epmd_port, opts.timeout)
      {{:async, handle}, opts}
    else
      {{:error, :config, "this node is not alive (start it with --name or --sname)"}, opts}
    end
  end

  @impl LibclusterRs.Discovery
  def handle_event({:epmd_names, host, {:ok, names}}, opts) do
    {nodes, _} = LibclusterRs.NodeName.to_nodes(Enum.map(names, &"#{&1}@#{host}"))
    {[{:discovered, nodes}], opts}
  end

  def handle_event({:epmd_names, host, {:error, {kind, message}}}, opts) do
    {[{:error, kind, "cannot ask epmd on #{host}: #{message}"}], opts}
  end

  def handle_event(event, opts), do: {[LibclusterRs.Discovery.default_event(event)], opts}

  @doc false
  def default_epmd_port do
    case Integer.parse(System.get_env("ERL_EPMD_PORT") || "") do
      {port, ""} when port in 1..65535 -> port
      _ -> 4369
    end
  end
end
