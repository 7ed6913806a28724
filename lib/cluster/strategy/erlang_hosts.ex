defmodule Cluster.Strategy.ErlangHosts do
  @moduledoc """
  Connects to the nodes running on the hosts listed in `.hosts.erlang` (as found by
  `:net_adm.host_file/0`: the current directory, then the home directory).

  Every host's epmd is asked concurrently, each with its own deadline, so a host that is down or
  never answers delays no other (libcluster 3.5 asked them one after another). The strategy never
  disconnects. Without a `.hosts.erlang` file it logs a warning and returns `:ignore`.

  ## Options

    * `:timeout` - `:infinity` (default: look once, like libcluster) or the ms between looks
    * `:polling_interval` - an alias of `:timeout`
    * `:epmd_timeout` - the deadline for one host's epmd answer in ms (default `5_000`)
    * `:epmd_port` - default `4369` (or `ERL_EPMD_PORT` when set)
    * `:hosts_file` - read hosts from this file instead of `.hosts.erlang` (same format)

  ## Example

      # .hosts.erlang
      'db1.example.com'.
      'db2.example.com'.

      config :libcluster,
        topologies: [
          hosts: [strategy: Cluster.Strategy.ErlangHosts, config: [timeout: 30_000]]
        ]
  """
  use LibclusterRs.Discovery

  alias LibclusterRs.Config

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    schema = [
      {:timeout, :infinity, Config.interval()},
      {:polling_interval, nil, Config.nullable(Config.interval())},
      {:epmd_timeout, 5_000, Config.pos_integer()},
      {:epmd_port, Cluster.Strategy.LocalEpmd.default_epmd_port(), Config.port()},
      {:hosts_file, nil, Config.nullable(Config.string())}
    ]

    opts = Config.validate!(config, schema, topology, __MODULE__, [:membership])

    case hosts(opts.hosts_file) do
      {:ok, hosts} ->
        impl = Map.merge(opts, %{topology: topology, hosts: hosts, found: %{}, failed: %{}})
        {:ok, impl, interval: opts.polling_interval || opts.timeout, prune: false}

      {:error, reason} ->
        Cluster.Logger.warn(
          topology,
          "couldn't find .hosts.erlang file (#{inspect(reason)}); not joining any cluster"
        )

        :ignore
    end
  end

  defp hosts(hosts_file) do
    result =
      case hosts_file do
        nil -> :net_adm.host_file()
        path -> :file.consult(to_charlist(path))
      end

    case result do
      {:error, reason} -> {:error, reason}
      hosts when is_list(hosts) -> host_names(hosts)
      {:ok, hosts} when is_list(hosts) -> host_names(hosts)
    end
  end

  # Entries are atoms ('host.example'.) or strings; anything else makes the file unusable.
  defp host_names(hosts) do
    if Enum.all?(hosts, &(is_atom(&1) or is_binary(&1) or (is_list(&1) and List.ascii_printable?(&1)))),
      do: {:ok, Enum.map(hosts, &to_string/1)},
      else: {:error, {:not_host_names, Enum.reject(hosts, &(is_atom(&1) or is_binary(&1) or is_list(&1)))}}
  end

  @impl LibclusterRs.Discovery
  def discover(impl, tag) do
    handle = LibclusterRs.Native.epmd_names_start(tag, impl.hosts, impl.epmd_port, impl.epmd_timeout)
    {{:async, handle}, %{impl | found: %{}, failed: %{}}}
  end

  @impl LibclusterRs.Discovery
  def handle_event({:epmd_names, host, {:ok, names}}, impl) do
    {nodes, _} = LibclusterRs.NodeName.to_nodes(Enum.map(names, &"#{&1}@#{host}"))
    # Connect each host's nodes as soon as that host answers.
    {[{:seen, nodes}], %{impl | found: Map.put(impl.found, host, nodes)}}
  end

  def handle_event({:epmd_names, host, {:error, {kind, message}}}, impl) do
    Cluster.Logger.debug(impl.topology, "cannot ask epmd on #{host}: #{kind}: #{message}")
    {[], %{impl | failed: Map.put(impl.failed, host, {kind, message})}}
  end

  # Every host failed: that is an error, not "no nodes".
  def handle_event(:done, %{found: found, failed: failed} = impl)
      when map_size(found) == 0 and map_size(failed) > 0 do
    summary = Enum.map_join(failed, "; ", fn {host, {kind, msg}} -> "#{host}: #{kind} (#{msg})" end)
    {[{:error, :unreachable, "no host in .hosts.erlang answered: " <> summary}], impl}
  end

  def handle_event(:done, impl) do
    {[{:discovered, impl.found |> Map.values() |> List.flatten()}], impl}
  end

  def handle_event(event, impl), do: {[LibclusterRs.Discovery.default_event(event)], impl}
end
