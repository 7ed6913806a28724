defmodule Cluster.Strategy.Kubernetes do
  @moduledoc """
  Finds the nodes of a Kubernetes service through the Kubernetes API: its Endpoints (libcluster's
  default), its Pods, or its EndpointSlices (`discovery.k8s.io/v1`).

  The HTTP work runs natively (reqwest + rustls). Compared with libcluster 3.5:

    * **Watch by default.** The strategy lists once, then watches from the list's
      `resourceVersion` (with bookmarks). An endpoint that becomes ready reaches the cluster within
      milliseconds instead of at the next poll, and a node costs about 13 API requests an hour
      instead of 720. A watch that ends is re-opened from the last version seen; `410 Gone`
      re-lists; a broken connection reconnects with exponential backoff. Set
      `kubernetes_watch: false` to poll every `polling_interval` like libcluster.
    * **Verified TLS.** The API server's certificate is checked against the service account's
      `ca.crt`, or against the system roots when there is none. The token is never sent over an
      unverified connection unless you set `kubernetes_insecure_skip_tls_verify: true`.
    * **Token rotation.** The service account `token` file is re-read at every request.
    * **Errors never mean "zero nodes".** A 401, 403, 404, 5xx, timeout, TLS failure, malformed or
      truncated body, or a broken watch keeps the last known membership, and the log says what to
      do: a 403 names the verb, the resource, the namespace, the missing RBAC rule and the
      manifest in `priv/rbac/` that grants it; a TLS failure says in plain words what is wrong with
      the certificate. `mix libcluster.discover` prints the same messages before a deploy.
    * `:dns` names are valid for IPv6 pods, `CLUSTER_DOMAIN` applies to every generated name, and
      an Endpoints address without `targetRef` is used instead of crashing the strategy.

  ## Options

    * `:kubernetes_node_basename` - (required) the part before `@` in node names
    * `:kubernetes_selector` - (required, except in `:endpointslices` mode with
      `:kubernetes_service_name`) a label selector, e.g. `"app=myapp"`. In `:endpoints` and
      `:endpointslices` modes it selects services' objects (which carry the service's labels); in
      `:pods` mode, pods.
    * `:kubernetes_namespace` - default: the service account's `namespace` file
    * `:kubernetes_ip_lookup_mode` - `:endpoints` (default), `:pods` or `:endpointslices`:
      * `:endpoints` - the ready `subsets[].addresses[]` of the selected Endpoints
      * `:pods` - pods that are `Running`, not being deleted, and `Ready`; their `status.podIP`
      * `:endpointslices` - endpoints whose `ready` condition is true (or unknown) and that are
        not `terminating`, across every slice of the service and both address families (a pod with
        an IPv4 and an IPv6 address is named by its IPv4 address)
    * `:mode` - how node names are built (default `:ip`):
      * `:ip` - `basename@<ip>` (IPv6 in its RFC 5952 form)
      * `:dns` - `basename@<ip with dashes>.<namespace>.pod.<cluster domain>`; an IPv6 address is
        written as its eight 4-digit groups joined by dashes (a valid DNS label that CoreDNS maps
        back)
      * `:hostname` - `basename@<hostname>.<service>.<namespace>.svc.<cluster domain>`, for pods
        with a hostname (StatefulSets); addresses without a hostname are skipped
    * `:kubernetes_service_name` - the service in `:hostname` names (default: the service that
      published the address: the Endpoints' name, the slice's `kubernetes.io/service-name`, the
      pod's `subdomain`); in `:endpointslices` mode, it also selects the slices by their
      `kubernetes.io/service-name` label
    * `:kubernetes_use_cached_resources` - `true` lists with `resourceVersion=0`, served from the
      API server's cache (default `false`)
    * `:kubernetes_master` - the API server, `host` or `host:port` (default
      `"kubernetes.default.svc"`). As in libcluster, the cluster domain is appended unless the name
      already ends with it or with `.`; IP addresses are used as given. When the key is not set
      and `KUBERNETES_SERVICE_HOST` is (it is in every pod), `KUBERNETES_SERVICE_HOST:
      KUBERNETES_SERVICE_PORT` is used, as in-cluster clients do.
    * `:kubernetes_cluster_name` - the cluster domain is `<name>.local` (default `"cluster"`),
      unless the `CLUSTER_DOMAIN` environment variable is set
    * `:kubernetes_service_account_path` - the directory holding `token`, `ca.crt` and `namespace`
      (default `"/var/run/secrets/kubernetes.io/serviceaccount"`)
    * `:polling_interval` - ms between lists when polling (default `5_000`)
    * `:kubernetes_watch` - watch (default `true` in every mode) or poll (`false`)
    * `:kubernetes_field_selector` - a field selector. Default per mode: `"status.phase=Running"`
      for `:pods` (pods that stop running leave the watch), none otherwise
    * `:kubernetes_request_timeout` - deadline of one list, and of a watch's response headers, in
      ms (default `15_000`, libcluster's)
    * `:kubernetes_watch_timeout` - how long the server keeps one watch open before it is re-opened
      from the last version, in ms (default `300_000`, with up to 20% jitter)
    * `:kubernetes_max_body_bytes` - the largest list accepted (default 64 MiB)
    * `:kubernetes_insecure_skip_tls_verify` - **DANGEROUS**: `true` skips the verification of
      the API server's certificate, so anyone on the path can read the service account token. It
      exists for clusters with broken certificates only; a warning is logged at every start.
      Default `false`.

  ## RBAC

  The service account needs `list` and `watch` on the resource of its mode. Role and RoleBinding
  manifests for each mode are in `priv/rbac/` (`endpoints.json`, `pods.json`,
  `endpointslices.json`; JSON is valid YAML, so `kubectl apply -f` takes them as they are).

  ## Examples

      config :libcluster,
        topologies: [
          k8s: [
            strategy: Cluster.Strategy.Kubernetes,
            config: [
              mode: :ip,
              kubernetes_node_basename: "myapp",
              kubernetes_selector: "app=myapp",
              kubernetes_namespace: "my_namespace"
            ]
          ]
        ]

      # EndpointSlices of one service, names from a headless StatefulSet service
      config :libcluster,
        topologies: [
          k8s: [
            strategy: Cluster.Strategy.Kubernetes,
            config: [
              mode: :hostname,
              kubernetes_ip_lookup_mode: :endpointslices,
              kubernetes_node_basename: "myapp",
              kubernetes_service_name: "myapp-headless"
            ]
          ]
        ]
  """
  use Cluster.Discovery

  alias Cluster.Config

  @service_account_path "/var/run/secrets/kubernetes.io/serviceaccount"

  @impl Cluster.Discovery
  def init(%{topology: topology, config: config}) do
    opts = Config.validate!(config, schema(), topology, __MODULE__, [:membership])
    native = native_opts(opts, topology)

    if native.insecure_skip_tls_verify do
      Cluster.Logger.error(
        topology,
        "kubernetes_insecure_skip_tls_verify is true: the API server's certificate is NOT verified " <>
          "and the service account token can be read by anyone on the network path. Fix the " <>
          "cluster's certificates and remove this option."
      )
    end

    {:ok, native,
     interval: opts.polling_interval, prune: true, round_timeout: opts.kubernetes_request_timeout + 5_000}
  end

  @impl Cluster.Discovery
  def discover(native, tag) do
    handle = Cluster.Native.kubernetes_start(tag, native)
    {{if(native.watch, do: :stream, else: :async), handle}, native}
  end

  defp schema do
    [
      {:kubernetes_node_basename, nil, Config.nullable(Config.string())},
      {:kubernetes_selector, nil, Config.nullable(Config.string())},
      {:kubernetes_namespace, nil, Config.nullable(Config.string())},
      {:kubernetes_ip_lookup_mode, :endpoints, Config.one_of([:endpoints, :pods, :endpointslices])},
      {:mode, :ip, Config.one_of([:ip, :dns, :hostname])},
      {:kubernetes_service_name, nil, Config.nullable(Config.string())},
      {:kubernetes_use_cached_resources, false, Config.boolean()},
      {:kubernetes_master, nil, Config.nullable(Config.string())},
      {:kubernetes_cluster_name, "cluster", Config.string()},
      {:kubernetes_service_account_path, @service_account_path, Config.string()},
      {:polling_interval, 5_000, Config.interval()},
      {:kubernetes_watch, true, Config.boolean()},
      {:kubernetes_field_selector, :default, &field_selector/1},
      {:kubernetes_request_timeout, 15_000, Config.pos_integer()},
      {:kubernetes_watch_timeout, 300_000, Config.pos_integer()},
      {:kubernetes_max_body_bytes, 64 * 1024 * 1024, Config.pos_integer()},
      {:kubernetes_insecure_skip_tls_verify, false, Config.boolean()}
    ]
  end

  defp field_selector(nil), do: {:ok, nil}
  defp field_selector(value), do: Config.string().(value)

  @doc false
  # The map `Cluster.Native.kubernetes_start/2` takes, from the validated config.
  @spec native_opts(map(), atom()) :: map()
  def native_opts(opts, topology) do
    basename = Config.required!(opts, :kubernetes_node_basename, topology, "a non-empty string")
    lookup = opts.kubernetes_ip_lookup_mode
    service = opts.kubernetes_service_name

    label_selector =
      if lookup == :endpointslices and service != nil do
        "kubernetes.io/service-name=#{service}"
      else
        Config.required!(
          opts,
          :kubernetes_selector,
          topology,
          "a label selector string such as \"app=myapp\""
        )
      end

    sa_path = opts.kubernetes_service_account_path
    domain = cluster_domain(opts.kubernetes_cluster_name)

    %{
      api_url: api_url(opts.kubernetes_master, domain, topology),
      service_account_path: sa_path,
      namespace: opts.kubernetes_namespace || namespace_from_file!(sa_path, topology),
      lookup: lookup,
      label_selector: label_selector,
      field_selector: default_field_selector(opts.kubernetes_field_selector, lookup),
      basename: basename,
      mode: opts.mode,
      service_name: service,
      cluster_domain: domain,
      use_cached_resources: opts.kubernetes_use_cached_resources,
      insecure_skip_tls_verify: opts.kubernetes_insecure_skip_tls_verify,
      request_timeout_ms: opts.kubernetes_request_timeout,
      max_body_bytes: opts.kubernetes_max_body_bytes,
      watch: opts.kubernetes_watch,
      watch_timeout_ms: opts.kubernetes_watch_timeout,
      backoff_min_ms: 500,
      backoff_max_ms: backoff_max(opts.polling_interval)
    }
  end

  defp backoff_max(:infinity), do: 30_000
  defp backoff_max(ms), do: max(ms, 1_000) |> min(60_000)

  defp default_field_selector(:default, :pods), do: "status.phase=Running"
  defp default_field_selector(:default, _), do: nil
  defp default_field_selector(selector, _), do: selector

  @doc false
  @spec cluster_domain(String.t()) :: String.t()
  def cluster_domain(cluster_name) do
    case System.get_env("CLUSTER_DOMAIN") do
      domain when is_binary(domain) and domain != "" -> String.trim_trailing(domain, ".")
      _ -> "#{cluster_name}.local"
    end
  end

  @doc false
  # libcluster: the domain is appended to `kubernetes_master` unless it ends with it or with ".".
  @spec api_url(String.t() | nil, String.t(), atom()) :: String.t()
  def api_url(nil, domain, topology) do
    case System.get_env("KUBERNETES_SERVICE_HOST") do
      host when is_binary(host) and host != "" ->
        port = System.get_env("KUBERNETES_SERVICE_PORT") || "443"
        "https://#{bracket(host)}:#{port}"

      _ ->
        api_url("kubernetes.default.svc", domain, topology)
    end
  end

  def api_url("https://" <> _ = url, _domain, _topology), do: String.trim_trailing(url, "/")

  def api_url(master, domain, topology) do
    if String.contains?(master, "://") do
      raise ArgumentError,
            "invalid config for topology #{inspect(topology)}: expected :kubernetes_master to be a " <>
              "host, host:port or https:// URL (the token is never sent in clear), got: #{inspect(master)}"
    end

    {host, port} = split_port(master)

    host =
      cond do
        ip?(host) -> bracket(host)
        String.ends_with?(host, ".") -> String.trim_trailing(host, ".")
        String.ends_with?(host, domain) -> host
        true -> host <> "." <> domain
      end

    "https://" <> host <> port
  end

  defp split_port("[" <> _ = master) do
    case String.split(master, "]:", parts: 2) do
      [h, p] -> {String.trim_leading(h, "["), ":" <> p}
      [h] -> {h |> String.trim_leading("[") |> String.trim_trailing("]"), ""}
    end
  end

  defp split_port(master) do
    case String.split(master, ":") do
      [host, port] -> {host, ":" <> port}
      _ -> {master, ""}
    end
  end

  defp ip?(host), do: match?({:ok, _}, :inet.parse_strict_address(to_charlist(host)))

  defp bracket(host) do
    if String.contains?(host, ":") and not String.starts_with?(host, "["), do: "[#{host}]", else: host
  end

  defp namespace_from_file!(sa_path, topology) do
    path = Path.join(sa_path, "namespace")

    case File.read(path) do
      {:ok, ns} when byte_size(ns) > 0 ->
        String.trim(ns)

      other ->
        raise ArgumentError,
              "invalid config for topology #{inspect(topology)}: expected :kubernetes_namespace to be " <>
                "set, or #{path} to hold the namespace, got: #{inspect(other)}"
    end
  end
end
