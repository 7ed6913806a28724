defmodule Cluster.Strategy.DigitalOcean do
  @moduledoc """
  Connects the Droplets of a DigitalOcean account, found through the DigitalOcean API
  (`GET /v2/droplets`, every page), optionally filtered by tag or by name. Replaces
  libcluster_droplet's `Cluster.Strategy.Droplet`: the config keys, their defaults and the node
  names are the same, so switching is changing `strategy:` (see `docs/digitalocean.md`).

  Each active Droplet (`"status": "active"`) is named `<basename>@<address>`: the basename is
  `:node_basename`, or the Droplet's name; the address is the Droplet's first address of the
  configured `:network` (`"private"`, the VPC address, or `"public"`) in `networks.v4`, or
  `networks.v6` with `ipv6: true`, as the API writes it. A Droplet without such an address, or
  whose name would not make a valid node name, is left out.

  With `:health_check`, a Droplet is named only when a TCP connection to its address and port
  succeeds within the timeout (all probes run at once, natively). As in libcluster_droplet, a
  Droplet whose check fails is left out of that round's list, so a node already connected is
  disconnected when its check fails.

  The requests and health checks run natively (Rust). Unlike libcluster_droplet:

    * any failure (unreachable API, TLS, 401, 403, 429, 5xx, a body that is not a page of
      Droplets, a page missing) fails the whole round and keeps the last known nodes; no partial
      list is ever applied;
    * a 429 is retried within the round after the API's `Retry-After` (else `ratelimit-reset`,
      else a doubling backoff) for up to 30 s in total; a longer wait fails the round, and no
      request is sent until the API's time has come (at most 10 minutes: a later time is asked
      again then);
    * the token is sent to `:api_url` only (the API's `next` links are read for their page
      number, never followed to another host);
    * the API is verified against the system's CA certificates (or `:cacertfile`).

  The token needs the `droplet:read` scope, and `tag:read` too with `:tag_name` (a 403 says so).

  ## Options

    * `:token` - (required) a DigitalOcean API token, sent as `Authorization: Bearer <token>`.
      Missing, it raises at start; present but `nil` or `""` (an unset environment variable), the
      topology starts, connects nothing, and says why in the log (once) and in `Cluster.status/1`
    * `:network` - `:private` (default) or `:public`: which address names a node
    * `:ipv6` - `true` to use the Droplet's IPv6 address (default `false`)
    * `:tag_name` - list only the Droplets with this tag
    * `:name` - list only the Droplets with this name (the API matches it case-insensitively).
      Giving both `:tag_name` and `:name` raises an `ArgumentError`
    * `:node_basename` - the part before `@` in node names (default: each Droplet's name)
    * `:health_check` - `{:tcp, port: port, timeout: ms}` (timeout default `500`): name a Droplet
      only when its `port` accepts a TCP connection within `timeout`
    * `:polling_interval` - ms between polls (default `5_000`), or `:infinity`

  New in libcluster_rs:

    * `:api_url` - the API's base URL (default `"https://api.digitalocean.com"`), for a mirror, a
      proxy or a test server; `http://` is accepted for a local one
    * `:cacertfile` - a PEM file of CA certificates to verify `:api_url` against, instead of the
      system's (it must exist at start)
    * `:request_timeout` - deadline of one request, ms (default `10_000`)

  ## Example

      config :libcluster,
        topologies: [
          droplets: [
            strategy: Cluster.Strategy.DigitalOcean,
            config: [
              token: {:system, "DIGITALOCEAN_TOKEN"},
              tag_name: "myapp",
              node_basename: "myapp",
              health_check: {:tcp, port: 4000, timeout: 500},
              polling_interval: 10_000
            ]
          ]
        ]
  """
  use LibclusterRs.Discovery

  alias LibclusterRs.Config

  @default_api_url "https://api.digitalocean.com"
  @rate_limit_budget 30_000
  @dry_run_rate_limit_budget 3_000

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    schema = [
      {:token, nil, Config.nullable(Config.string())},
      {:network, :private, Config.one_of([:private, :public])},
      {:ipv6, false, Config.boolean()},
      {:tag_name, nil, Config.nullable(Config.string())},
      {:name, nil, Config.nullable(Config.string())},
      {:node_basename, nil, Config.nullable(&basename/1)},
      {:health_check, nil, Config.nullable(&health_check/1)},
      {:polling_interval, 5_000, Config.interval()},
      {:api_url, @default_api_url, &url/1},
      {:cacertfile, nil, Config.nullable(&file/1)},
      {:request_timeout, 10_000, Config.pos_integer()}
    ]

    opts = Config.validate!(config, schema, topology, __MODULE__, [:membership])
    Config.required!(opts, :token, topology, "a non-empty string (a DigitalOcean API token)")

    if opts.tag_name && opts.name do
      raise ArgumentError,
            "invalid config for topology #{inspect(topology)}: :tag_name and :name cannot both be " <>
              "given (the API filters by one of them); got: tag_name: #{inspect(opts.tag_name)}, " <>
              "name: #{inspect(opts.name)}"
    end

    if opts.ipv6 and opts.network == :private do
      Cluster.Logger.warn(
        topology,
        "ipv6: true with network: :private: Droplets have no private IPv6 address (VPC networks " <>
          "are IPv4), so this topology will find no node; use network: :public with ipv6: true"
      )
    end

    {port, check_timeout} = opts.health_check || {nil, 500}
    token = opts.token

    native = %{
      api_url: opts.api_url,
      # Kept in a closure so that the token never shows in a crash report or a status.
      token: fn -> token end,
      tag_name: opts.tag_name,
      name: opts.name,
      network: opts.network,
      ipv6: opts.ipv6,
      basename: opts.node_basename,
      health_check_port: port,
      health_check_timeout_ms: check_timeout,
      cacertfile: opts.cacertfile,
      request_timeout_ms: opts.request_timeout,
      rate_limit_budget_ms: @rate_limit_budget
    }

    # A round may wait out 429s (30 s) and run health checks after its requests.
    round_timeout = @rate_limit_budget + 4 * opts.request_timeout + check_timeout + 5_000
    {:ok, native, interval: opts.polling_interval, prune: true, round_timeout: round_timeout}
  end

  defp basename(value) do
    with {:ok, s} <- Config.string().(value),
         true <- LibclusterRs.NodeName.valid?("#{s}@h") do
      {:ok, s}
    else
      _ -> {:error, "a non-empty string of letters, digits, _, - and ."}
    end
  end

  defp health_check({:tcp, opts} = value) when is_list(opts) do
    with true <- Keyword.keyword?(opts),
         [] <- Keyword.keys(opts) -- [:port, :timeout],
         {:ok, port} <- Keyword.fetch(opts, :port),
         {:ok, port} <- Config.port().(port),
         {:ok, timeout} <- Config.pos_integer().(Keyword.get(opts, :timeout, 500)) do
      {:ok, {port, timeout}}
    else
      _ -> health_check(value, :bad)
    end
  end

  defp health_check(_value), do: health_check(nil, :bad)

  defp health_check(_value, :bad),
    do: {:error, "{:tcp, port: 1..65535, timeout: ms} (timeout optional, default 500), or nil"}

  defp url(value) do
    with {:ok, url} <- Config.url().(value), do: {:ok, String.trim_trailing(url, "/")}
  end

  defp file(value) do
    case Config.string().(value) do
      {:ok, path} ->
        if File.regular?(path), do: {:ok, path}, else: {:error, "the path of an existing PEM file"}

      error ->
        error
    end
  end

  @doc false
  # A :token that is present but unusable (nil, "", not a string: typically an unset environment
  # variable) does not stop boot, as in libcluster_droplet (whose requests then fail with 401):
  # LibclusterRs.InvalidTopology says why at error level, once, and in Cluster.status/1. A missing
  # key raises, as libcluster_droplet's Keyword.fetch! does.
  def child_spec([%Cluster.Strategy.State{config: config} = state] = args) do
    with true <- Keyword.keyword?(config),
         {:ok, value} <- Keyword.fetch(config, :token),
         {:error, expected} <- Config.string().(value) do
      LibclusterRs.InvalidTopology.child_spec(
        state,
        __MODULE__,
        "DigitalOcean: " <>
          Config.expected(:token, "#{expected} (a DigitalOcean API token with the droplet:read scope)", value)
      )
    else
      _ -> super(args)
    end
  end

  @impl LibclusterRs.Discovery
  def discover(native, tag) do
    handle = LibclusterRs.Native.digitalocean_start(tag, %{native | token: native.token.()})
    {{:async, handle}, native}
  end

  @impl LibclusterRs.Discovery
  def status_extra(native) do
    %{
      digitalocean: %{
        api_url: native.api_url,
        filter:
          cond do
            native.tag_name -> {:tag_name, native.tag_name}
            native.name -> {:name, native.name}
            true -> :all
          end,
        network: native.network,
        ipv6: native.ipv6,
        health_check:
          native.health_check_port &&
            {:tcp, port: native.health_check_port, timeout: native.health_check_timeout_ms}
      }
    }
  end

  @impl LibclusterRs.Discovery
  # `mix libcluster.discover`: a 429 fails at once instead of waiting up to 30 s.
  def dry_run(native), do: %{native | rate_limit_budget_ms: @dry_run_rate_limit_budget}

  @impl LibclusterRs.Discovery
  def dry_run_empty(native) do
    filter =
      cond do
        native.tag_name -> " with the tag #{inspect(native.tag_name)}"
        native.name -> " named #{inspect(native.name)}"
        true -> ""
      end

    family = if native.ipv6, do: "IPv6", else: "IPv4"

    checked =
      if native.health_check_port,
        do: ", or none of them accepted a TCP connection on port #{native.health_check_port}",
        else: ""

    "the API at #{native.api_url} lists no active Droplet#{filter} with a #{native.network} " <>
      "#{family} address#{checked}"
  end
end
