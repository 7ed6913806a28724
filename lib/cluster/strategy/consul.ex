defmodule Cluster.Strategy.Consul do
  @moduledoc """
  Finds the instances of a Consul service and connects them as `node_basename@<address>` (or
  `node_basename@<node name>` with `expected: :host`). It replaces
  [libcluster_consul](https://hex.pm/packages/libcluster_consul) 1.x: its config works unchanged
  (change nothing but the dependency), and the HTTP work runs natively, with no hex dependency.

  What differs from libcluster_consul:

    * **Blocking queries by default.** Health and Catalog queries are re-asked with Consul's
      `index` and `wait`, so Consul answers as soon as the service changes: a new instance is
      connected within milliseconds instead of at the next poll, and an idle cluster costs one
      request per query every `blocking_wait` (5 minutes). Consul's index rules are followed (an
      index that goes backwards starts a fresh read, an index of 0 is waited on as 1), requests of
      one query are at least `blocking_min_interval` apart, failures back off exponentially and a
      `429` waits out its `Retry-After` (at most 10 minutes). Agent queries and the datacenter list (which Consul cannot
      block on) are re-read every `polling_interval`. `blocking_queries: false` polls every
      `polling_interval` like libcluster_consul.
    * **Errors never prune.** libcluster_consul treats a failed request as "no instances" and
      disconnects every node. Here a refused connection, a timeout, a 401/403/404/429/5xx, a TLS
      failure or a body that is not what the endpoint returns keeps the last known membership;
      when only some queries fail (one datacenter of several), their instances stay and the others
      are still applied. A 403 says which ACL the token lacks (`service:read`, `node:read`) and an
      `ACL not found` that the token itself is unknown; `mix libcluster.discover` prints the same.
    * **The Agent health endpoint's 429 and 503** (some instance warning/critical) carry the
      instance list; they are read, not treated as failures. With `passing: true` only the
      instances whose aggregated status is passing are taken.
    * **HTTPS with a CA file and client certificates** (`ca_file`, `cert_file`, `key_file`), and
      the consul CLI's environment: `CONSUL_HTTP_ADDR` (with `CONSUL_HTTP_SSL`),
      `CONSUL_HTTP_TOKEN` / `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
      `CONSUL_CLIENT_KEY` and `CONSUL_HTTP_SSL_VERIFY`. A config key always wins over its variable.
    * Names are validated before any atom is made: an empty or unusable address is dropped (and
      counted at debug level) instead of making the atom `:"app@"`.

  ## Options

    * `:list_using` - (required) the queries, each `Endpoint` or `{Endpoint, opts}`:
      * `Cluster.Strategy.Consul.Agent` - the local agent: `service: [id: id]` reads
        `/v1/agent/service/:id`, `service: [name: name]` `/v1/agent/health/service/name/:name`
      * `Cluster.Strategy.Consul.Health` - `/v1/health/service/:name` (`passing: true` for
        healthy instances only); an instance without a service address is named by its node's
        address (`expected: :host`: its node's name)
      * `Cluster.Strategy.Consul.Catalog` - `/v1/catalog/service/:name`, named by the node's
        address (`expected: :host`: the node's name)
      * `{Cluster.Strategy.Consul.Multisite, datacenters: [...] | :all, endpoints: [...]}` - the
        endpoints in each datacenter (`:all`, the default: every datacenter of
        `/v1/catalog/datacenters`, re-read every `polling_interval`)

      An entry's opts (`:service`, `:passing`, `:expected`, `:dc`, `:filter`) override the
      top-level ones for that entry.
    * `:service` - `[name: "my-app"]` or `[id: "my-app-1"]` (id: Agent only). libcluster_consul
      1.0's `service_name: "my-app"` is read as `service: [name: "my-app"]`
    * `:base_url` - the agent (default `CONSUL_HTTP_ADDR`, else `"http://localhost:8500"`); its
      path is ignored and its query string is kept on every request
    * `:access_token` - sent as `X-Consul-Token` (default `CONSUL_HTTP_TOKEN`, else the contents of
      `CONSUL_HTTP_TOKEN_FILE`, else none: the agent's default token applies)
    * `:dc` - the datacenter asked (default: the agent's)
    * `:filter` - a Consul filter expression, for Health and Catalog queries, e.g.
      `~s("canary" in Service.Tags)`
    * `:passing` - only healthy instances (Health, Agent by name; default `false`)
    * `:expected` - `:ip` (default) or `:host`
    * `:node_basename` - the part before `@` (default: this node's own basename)
    * `:polling_interval` - ms between polls (`blocking_queries: false`), and between reads of
      Agent queries and the datacenter list (default `5_000`)
    * `:blocking_queries` - `true` (default) or `false` (poll)
    * `:blocking_wait` - the `wait` of a blocking query, ms, at most 600_000 (default `300_000`)
    * `:blocking_min_interval` - the least time between two requests of one query, ms (default
      `250`)
    * `:request_timeout` - deadline of a request, ms, on top of the wait for a blocking one
      (default `10_000`)
    * `:ca_file` - the CA bundle the agent's certificate is checked against (default
      `CONSUL_CACERT`, else the system roots)
    * `:cert_file` / `:key_file` - a client certificate and its key, for agents with
      `verify_incoming` (default `CONSUL_CLIENT_CERT` / `CONSUL_CLIENT_KEY`)
    * `:disable_verify_ssl?` - **DANGEROUS**: `true` (or `CONSUL_HTTP_SSL_VERIFY=false`) does not
      verify the agent's certificate, so the token can be read by anyone on the path. An error is
      logged at every start. Default `false`.
    * `:async_initial_connection?` - accepted for compatibility; the first connection is always
      asynchronous (boot never waits for Consul)

  ## ACL

  The token needs `service:read` on the service and, for Health and Catalog, `node:read` on its
  nodes (Consul silently leaves out the instances of nodes the token cannot read). See
  `docs/consul.md` for a policy.

  ## Example

      config :libcluster,
        topologies: [
          consul: [
            strategy: Cluster.Strategy.Consul,
            config: [
              base_url: "https://consul.service.consul:8501",
              access_token: {:system, "CONSUL_HTTP_TOKEN", nil},
              ca_file: "/etc/consul.d/ca.pem",
              service: [name: "my-app"],
              list_using: [{Cluster.Strategy.Consul.Health, passing: true}]
            ]
          ]
        ]
  """
  use LibclusterRs.Discovery

  alias LibclusterRs.Config

  @agent Cluster.Strategy.Consul.Agent
  @health Cluster.Strategy.Consul.Health
  @catalog Cluster.Strategy.Consul.Catalog
  @multisite Cluster.Strategy.Consul.Multisite
  @endpoints %{@agent => :agent, @health => :health, @catalog => :catalog}
  @entry_keys [:service, :passing, :expected, :dc, :filter]

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    opts = Config.validate!(config, schema(), topology, __MODULE__, [:membership])
    impl = impl(opts, config, Config.env(opts), topology)

    if impl.native.insecure do
      Cluster.Logger.error(
        topology,
        "Consul: TLS verification is disabled (disable_verify_ssl? or CONSUL_HTTP_SSL_VERIFY=false): " <>
          "the agent's certificate is NOT verified and the Consul token can be read by anyone on the " <>
          "network path. Give the agent's CA with ca_file (or CONSUL_CACERT) and remove this option."
      )
    end

    interval = opts.polling_interval

    {:ok, impl, interval: interval, prune: true, round_timeout: impl.native.request_timeout_ms * 2 + 5_000}
  end

  @impl LibclusterRs.Discovery
  def discover(impl, tag) do
    blocking = impl.native.blocking and not impl.dry_run
    handle = LibclusterRs.Native.consul_start(tag, %{impl.native | blocking: blocking})
    {{if(blocking, do: :stream, else: :async), handle}, impl}
  end

  @impl LibclusterRs.Discovery
  # Some queries failed: their last instances stay (seen, never pruned), and the error is recorded.
  def handle_event({:partial_nodes, names, {kind, message}}, impl) do
    {nodes, _rejected} = LibclusterRs.NodeName.to_nodes(names)

    {[
       {:seen, nodes, trusted: true},
       {:error, kind, "some Consul queries failed, nothing pruned: " <> to_string(message)}
     ], impl}
  end

  def handle_event(event, impl), do: {[LibclusterRs.Discovery.default_event(event)], impl}

  @impl LibclusterRs.Discovery
  def status_extra(impl) do
    %{
      consul: %{
        mode: if(impl.native.blocking, do: :blocking, else: :poll),
        base_url: impl.native.base_url,
        token: if(impl.native.token, do: impl.token_source, else: :none),
        queries: impl.described,
        acl_needed: impl.acl_needed
      }
    }
  end

  @impl LibclusterRs.Discovery
  # `mix libcluster.discover`: one round of plain reads (no blocking), then the task prints what it
  # found or the error (a 403 names the missing ACL).
  def dry_run(impl) do
    IO.puts("  consul: #{impl.native.base_url}, #{Enum.join(impl.described, "; ")}")

    IO.puts(
      "  token: #{if impl.native.token, do: impl.token_source, else: "none (the agent's default token)"}"
    )

    %{impl | dry_run: true}
  end

  @impl LibclusterRs.Discovery
  def dry_run_empty(impl) do
    "Consul answered, with no instance that makes a node name (#{Enum.join(impl.described, "; ")}). " <>
      "Check the service name, :dc, :passing and :filter, and that the token has " <>
      Enum.join(impl.acl_needed, ", ") <> " (Consul leaves out what the token may not read)"
  end

  defp schema do
    [
      {:list_using, nil, &list_using/1},
      {:service, nil, Config.nullable(&service/1)},
      {:service_name, nil, Config.nullable(&service_name/1)},
      {:base_url, nil, Config.nullable(Config.url())},
      {:access_token, nil, Config.nullable(Config.string())},
      {:dc, nil, Config.nullable(Config.string())},
      {:filter, nil, Config.nullable(Config.string())},
      {:passing, false, Config.boolean()},
      {:expected, :ip, Config.one_of([:ip, :host])},
      {:node_basename, nil, Config.nullable(Config.string())},
      {:polling_interval, 5_000, Config.interval()},
      {:blocking_queries, true, Config.boolean()},
      {:blocking_wait, 300_000, &wait/1},
      {:blocking_min_interval, 250, Config.pos_integer()},
      {:request_timeout, 10_000, Config.pos_integer()},
      {:ca_file, nil, Config.nullable(Config.string())},
      {:cert_file, nil, Config.nullable(Config.string())},
      {:key_file, nil, Config.nullable(Config.string())},
      {:disable_verify_ssl?, false, Config.boolean()},
      {:async_initial_connection?, true, Config.boolean()},
      Config.env_key()
    ]
  end

  defp wait(ms) when is_integer(ms) and ms in 1..600_000, do: {:ok, ms}
  defp wait(_), do: {:error, "an integer of milliseconds in 1..600000 (Consul's limit is 10 minutes)"}

  defp service([{kind, value}]) when kind in [:name, :id] do
    case Config.string().(value) do
      {:ok, s} -> {:ok, [{kind, s}]}
      error -> error
    end
  end

  defp service(_), do: {:error, "[name: \"service\"] or [id: \"service-id\"]"}

  defp list_using(list) when is_list(list) and list != [] do
    if Enum.all?(list, &entry?/1),
      do: {:ok, list},
      else: {:error, list_using_expected()}
  end

  defp list_using(_), do: {:error, list_using_expected()}

  defp list_using_expected do
    "a non-empty list of Cluster.Strategy.Consul.Agent, .Health, .Catalog or .Multisite, each " <>
      "alone or as {endpoint, opts}"
  end

  defp entry?({mod, opts}) when is_list(opts), do: entry?(mod) and Keyword.keyword?(opts)
  defp entry?(mod), do: Map.has_key?(@endpoints, mod) or mod == @multisite

  ## Settings: config keys, then the consul CLI's environment, then defaults

  @doc false
  # The agent's address, the token and the TLS files, from the config (`opts`, validated) and the
  # environment `env` (a map, `System.get_env()` at start): a config key wins over its variable.
  # The one place the environment is read; tests pass their own map.
  @spec connection(map(), %{String.t() => String.t()}) :: map()
  def connection(opts, env) do
    get = fn var -> if (v = Map.get(env, var)) not in [nil, ""], do: v end

    {token, token_source} =
      cond do
        opts.access_token -> {opts.access_token, "access_token"}
        get.("CONSUL_HTTP_TOKEN") -> {get.("CONSUL_HTTP_TOKEN"), "CONSUL_HTTP_TOKEN"}
        path = get.("CONSUL_HTTP_TOKEN_FILE") -> {token_file!(path), "CONSUL_HTTP_TOKEN_FILE (#{path})"}
        true -> {nil, nil}
      end

    cert = opts.cert_file || get.("CONSUL_CLIENT_CERT")
    key = opts.key_file || get.("CONSUL_CLIENT_KEY")

    if cert == nil != (key == nil) do
      raise ArgumentError,
            "Consul: a client certificate needs both :cert_file and :key_file (or CONSUL_CLIENT_CERT " <>
              "and CONSUL_CLIENT_KEY), got: cert #{inspect(cert)}, key #{inspect(key)}"
    end

    # The files themselves are read by each round (a secret mounted after boot is picked up); a
    # missing one is a :tls error naming the key, logged and shown by Cluster.status/1.
    verify = get.("CONSUL_HTTP_SSL_VERIFY")

    %{
      base_url: opts.base_url || env_addr(get) || "http://localhost:8500",
      token: token,
      token_source: token_source,
      ca_file: opts.ca_file || get.("CONSUL_CACERT"),
      cert_file: cert,
      key_file: key,
      insecure: opts.disable_verify_ssl? or (verify != nil and String.downcase(verify) in ["false", "0"])
    }
  end

  # CONSUL_HTTP_ADDR as the consul CLI reads it: a URL, or host:port (https with CONSUL_HTTP_SSL).
  defp env_addr(get) do
    case get.("CONSUL_HTTP_ADDR") do
      nil ->
        nil

      "http://" <> _ = url ->
        url

      "https://" <> _ = url ->
        url

      "unix://" <> _ = addr ->
        raise ArgumentError,
              "Consul: CONSUL_HTTP_ADDR=#{inspect(addr)} is a unix socket, which this strategy " <>
                "does not support; set :base_url to the agent's http(s):// address"

      host_port ->
        ssl = get.("CONSUL_HTTP_SSL")
        scheme = if ssl && String.downcase(ssl) in ["true", "1"], do: "https", else: "http"
        "#{scheme}://#{host_port}"
    end
  end

  defp token_file!(path) do
    case File.read(path) do
      {:ok, text} ->
        String.trim(text)

      {:error, reason} ->
        raise ArgumentError,
              "Consul: CONSUL_HTTP_TOKEN_FILE names #{inspect(path)}, which cannot be read " <>
                "(#{:file.format_error(reason)}); set :access_token or fix the file"
    end
  end

  ## The native options

  defp impl(opts, config, env, topology) do
    Config.required!(opts, :list_using, topology, list_using_expected())
    opts = %{opts | service: opts.service || opts.service_name}
    basename = basename!(opts, config, topology)
    queries = Enum.flat_map(opts.list_using, &queries!(&1, opts, topology))
    conn = connection(opts, env)
    poll_ms = if opts.polling_interval == :infinity, do: 0, else: opts.polling_interval
    {backoff_min, backoff_max} = LibclusterRs.Discovery.Schedule.error_backoff(opts.polling_interval)

    native = %{
      base_url: conn.base_url,
      token: conn.token,
      ca_file: conn.ca_file,
      cert_file: conn.cert_file,
      key_file: conn.key_file,
      insecure: conn.insecure,
      basename: basename,
      queries: queries,
      blocking: opts.blocking_queries,
      wait_ms: opts.blocking_wait,
      request_timeout_ms: opts.request_timeout,
      poll_interval_ms: poll_ms,
      min_interval_ms: opts.blocking_min_interval,
      backoff_min_ms: backoff_min,
      backoff_max_ms: backoff_max,
      max_body_bytes: 32 * 1024 * 1024
    }

    %{
      topology: topology,
      native: native,
      token_source: conn.token_source,
      described: Enum.map(queries, &describe/1),
      acl_needed: queries |> Enum.flat_map(&acl/1) |> Enum.uniq(),
      dry_run: false
    }
  end

  # libcluster_consul: the node's own basename when unset; anything but a non-empty string raises.
  defp basename!(opts, config, topology) do
    case Keyword.fetch(config, :node_basename) do
      {:ok, nil} ->
        own_basename()

      {:ok, _} ->
        opts.node_basename

      :error ->
        own_basename()
    end
    |> case do
      name when is_binary(name) and name != "" ->
        name

      other ->
        Config.invalid!(topology, :node_basename, "a non-empty string", other)
    end
  end

  defp own_basename, do: node() |> Atom.to_string() |> String.split("@") |> hd()

  defp queries!({@multisite, mopts}, opts, topology) do
    dcs =
      case Keyword.get(mopts, :datacenters, :all) do
        :all ->
          :all

        list when is_list(list) and list != [] ->
          case Config.collect(list, Config.string()) do
            {:ok, dcs} ->
              dcs

            :error ->
              Config.invalid!(topology, :datacenters, "a non-empty list of datacenter names or :all", list)
          end

        other ->
          Config.invalid!(topology, :datacenters, "a non-empty list of datacenter names or :all", other)
      end

    endpoints = Keyword.get(mopts, :endpoints)

    unless is_list(endpoints) and endpoints != [] and
             Enum.all?(endpoints, &(entry?(&1) and not match?({@multisite, _}, &1) and &1 != @multisite)) do
      Config.invalid!(
        topology,
        :endpoints,
        "a non-empty list of Agent, Health or Catalog entries (Multisite)",
        endpoints
      )
    end

    base = merge(opts, mopts, topology)

    for entry <- endpoints, q <- queries!(entry, base, topology) do
      if dcs == :all,
        do: %{q | all_datacenters: true},
        else: %{q | datacenters: dcs}
    end
  end

  defp queries!(@multisite, _opts, topology),
    do:
      Config.invalid!(
        topology,
        :list_using,
        "Multisite with opts: {Multisite, datacenters: ..., endpoints: [...]}",
        @multisite
      )

  defp queries!({mod, eopts}, opts, topology), do: [query!(mod, merge(opts, eopts, topology), topology)]
  defp queries!(mod, opts, topology), do: [query!(mod, opts, topology)]

  # An entry's opts override the top-level ones, validated by the same rules.
  defp merge(opts, eopts, topology) do
    Enum.reduce(eopts, opts, fn
      {:service_name, value}, acc ->
        Map.put(acc, :service, Config.check!(topology, :service_name, value, &service_name/1))

      {key, value}, acc when key in @entry_keys ->
        validator = Enum.find_value(schema(), fn {k, _, v} -> if k == key, do: v end)
        Map.put(acc, key, Config.check!(topology, key, value, validator))

      {key, _value}, acc ->
        unless key in [:datacenters, :endpoints] do
          Cluster.Logger.warn(
            topology,
            "unknown list_using option #{inspect(key)} for #{inspect(__MODULE__)} is ignored; known: " <>
              Enum.map_join([:service_name | @entry_keys], ", ", &inspect/1)
          )
        end

        acc
    end)
  end

  # libcluster_consul 1.0's key: service_name: "x" is service: [name: "x"].
  defp service_name(value) do
    case Config.string().(value) do
      {:ok, name} -> {:ok, [name: name]}
      error -> error
    end
  end

  defp query!(mod, opts, topology) do
    endpoint = Map.fetch!(@endpoints, mod)

    {name, id} =
      case {endpoint, opts.service} do
        {_, nil} ->
          Config.invalid!(
            topology,
            :service,
            "[name: \"service\"] or [id: \"service-id\"]",
            nil,
            "the key is required"
          )

        {_, [name: name]} ->
          {name, nil}

        {:agent, [id: id]} ->
          {nil, id}

        {_, [id: _] = service} ->
          Config.invalid!(
            topology,
            :service,
            "[name: \"service\"] for #{inspect(mod)} (only Agent takes an id)",
            service
          )
      end

    %{
      endpoint: endpoint,
      service_name: name,
      service_id: id,
      passing: opts.passing,
      expected: opts.expected,
      filter: opts.filter,
      dc: opts.dc,
      datacenters: nil,
      all_datacenters: false
    }
  end

  defp describe(q) do
    what =
      if q.service_id, do: "service id #{inspect(q.service_id)}", else: "service #{inspect(q.service_name)}"

    where =
      cond do
        q.all_datacenters -> " in every datacenter"
        q.datacenters -> " in " <> Enum.join(q.datacenters, ", ")
        q.dc -> " in " <> q.dc
        true -> ""
      end

    "#{q.endpoint} #{what}#{where}#{if q.passing, do: " (passing)", else: ""}"
  end

  defp acl(%{service_id: id}) when is_binary(id), do: ["service:read (the service of id #{inspect(id)})"]
  defp acl(%{endpoint: :agent, service_name: n}), do: ["service:read on #{inspect(n)}"]
  defp acl(%{service_name: n}), do: ["service:read on #{inspect(n)}", "node:read"]
end
