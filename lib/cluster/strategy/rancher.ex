defmodule Cluster.Strategy.Rancher do
  @moduledoc """
  Finds the containers of this container's Rancher (1.x) service through the Rancher metadata
  service, and names each `basename@<its first IP>`.

  The HTTP request runs natively. Unlike libcluster 3.5, a failed request (unreachable metadata
  service, an HTTP error, a body that is not a service) keeps the last known membership instead of
  disconnecting every node.

  ## Options

    * `:node_basename` - (required) the part before `@` in node names. Missing, it raises at
      start (as libcluster's `Keyword.fetch!` does); present but unusable (`nil`, `""`), the
      topology starts as in libcluster, connects nothing, logs why once at error level and shows
      `state: :invalid_config` in `Cluster.status/1`
    * `:polling_interval` - ms between requests (default `5_000`)
    * `:rancher_metadata_url` - the service metadata URL (default libcluster's
      `"http://rancher-metadata/latest/self/service"`)
    * `:rancher_timeout` - deadline of one request in ms (default `5_000`)

  ## Example

      config :libcluster,
        topologies: [
          rancher: [
            strategy: Cluster.Strategy.Rancher,
            config: [node_basename: "myapp", polling_interval: 10_000]
          ]
        ]
  """
  use LibclusterRs.Discovery

  alias LibclusterRs.Config

  @default_url "http://rancher-metadata/latest/self/service"

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    schema = [
      {:node_basename, nil, Config.nullable(Config.string())},
      {:polling_interval, 5_000, Config.interval()},
      {:rancher_metadata_url, @default_url, Config.url()},
      {:rancher_timeout, 5_000, Config.pos_integer()}
    ]

    opts = Config.validate!(config, schema, topology, __MODULE__, [:membership])
    Config.required!(opts, :node_basename, topology, "a non-empty string")

    {:ok, opts, interval: opts.polling_interval, prune: true, round_timeout: opts.rancher_timeout + 2_000}
  end

  @doc false
  # A :node_basename that is present but unusable (nil, "", not a string) does not stop boot, as in
  # libcluster (which warns at every poll): LibclusterRs.InvalidTopology says why at error level, once,
  # and in Cluster.status/1. A missing key raises, as libcluster's Keyword.fetch! does.
  def child_spec([%Cluster.Strategy.State{config: config} = state] = args) do
    with true <- Keyword.keyword?(config),
         {:ok, value} <- Keyword.fetch(config, :node_basename),
         {:error, expected} <- Config.string().(value) do
      LibclusterRs.InvalidTopology.child_spec(
        state,
        __MODULE__,
        "Rancher: " <> Config.expected(:node_basename, expected, value)
      )
    else
      _ -> super(args)
    end
  end

  @impl LibclusterRs.Discovery
  def discover(opts, tag) do
    handle =
      LibclusterRs.Native.rancher_start(
        tag,
        opts.rancher_metadata_url,
        opts.node_basename,
        opts.rancher_timeout
      )

    {{:async, handle}, opts}
  end
end
