defmodule Cluster.Strategy.Kubernetes do
  @moduledoc """
  Finds the nodes of a Kubernetes service through the Kubernetes API: its Endpoints (libcluster's
  default), its Pods, or its EndpointSlices (`discovery.k8s.io/v1`).

  The HTTP work runs natively (reqwest + rustls). With libcluster 3.5's config it connects the
  same nodes as libcluster; what differs is how it gets there:

    * **Watch by default.** The strategy lists once, then watches from the list's
      `resourceVersion` (with bookmarks). An endpoint that becomes ready reaches the cluster within
      milliseconds instead of at the next poll, and a node costs about 13 API requests an hour
      instead of 720. A watch that ends is re-opened from the last version seen; `410 Gone`
      re-lists; a broken connection reconnects with exponential backoff. Set
      `kubernetes_watch: false` to poll every `polling_interval` like libcluster.
    * **A Role without `watch` still works.** libcluster needs only the `list` verb, and many
      Roles grant only that. When the watch is answered `403 Forbidden`, the strategy falls back
      to listing every `polling_interval` (libcluster's schedule), logs one warning that names the
      missing verb, the resource, the namespace and the manifest in `priv/rbac/`, and tries the
      watch again every `kubernetes_watch_retry_interval` (5 minutes), so a fixed Role is picked
      up without a restart. `Cluster.status/1` shows the mode under
      `extra.kubernetes.mode`: `:watch`, `:poll` (`kubernetes_watch: false`) or `:poll_fallback`.
    * **Verified TLS.** The API server's certificate is checked against the service account's
      `ca.crt`, or against the system roots when there is none. The token is never sent over an
      unverified connection unless you set `kubernetes_insecure_skip_tls_verify: true`.
    * **Token rotation.** The service account `token` file is re-read at every request.
    * **Errors never mean "zero nodes".** A 401, 403, 404, 5xx, timeout, TLS failure, malformed or
      truncated body, or a broken watch keeps the last known membership, and the log says what to
      do: a 403 names the verb, the resource, the namespace, the missing RBAC rule and the
      manifest in `priv/rbac/` that grants it; a TLS failure says in plain words what is wrong with
      the certificate. `mix libcluster.discover` prints the same messages before a deploy.
    * **Boot never fails on a missing service account.** As with libcluster, a missing
      `namespace` file (without `:kubernetes_namespace`) or a missing `token` does not stop the
      application: each round fails with a `:config` error that names the file and the key that
      fixes it (logged at error level once per streak, and shown as `last_error` by
      `Cluster.status/1`), nothing is connected or pruned, and the next rounds try again, so a
      file that appears later is picked up.
    * `:dns` names are valid for IPv6 pods, `CLUSTER_DOMAIN` applies to every generated name, and
      an Endpoints address without `targetRef` is used instead of crashing the strategy.

  ## Options

    * `:kubernetes_node_basename` - (required) the part before `@` in node names
    * `:kubernetes_selector` - (required, except in `:endpointslices` mode with
      `:kubernetes_service_name`) a label selector, e.g. `"app=myapp"`. In `:endpoints` and
      `:endpointslices` modes it selects services' objects (which carry the service's labels); in
      `:pods` mode, pods.

      A required key that is missing, or a value of the wrong type, raises an `ArgumentError`
      naming the key (libcluster crashes at start as well). A required key given as `nil` (say
      `System.get_env("UNSET")` in `runtime.exs`) boots, as libcluster does, and connects nothing:
      the topology says why once at error level, naming the key, and `Cluster.status/1` shows it
      with `state: :invalid_config` (as the other strategies do).
    * `:kubernetes_namespace` - default: the service account's `namespace` file, read at each
      round until it is there
    * `:kubernetes_ip_lookup_mode` - `:endpoints` (default), `:pods` or `:endpointslices`:
      * `:endpoints` - the ready `subsets[].addresses[]` of the selected Endpoints
      * `:pods` - every pod of the selector that has a `status.podIP`, whatever its phase,
        readiness or deletion state (libcluster's rule: a pod whose readiness probe waits for the
        cluster must be connected to become ready). See `:kubernetes_pods_ready_only`.
      * `:endpointslices` - endpoints whose `ready` condition is true (or unknown) and that are
        not `terminating`, across every slice of the service and both address families (a pod with
        an IPv4 and an IPv6 address is named by its IPv4 address)
    * `:kubernetes_pods_ready_only` - `:pods` mode only: `true` takes only pods that are
      `Running`, `Ready` and not being deleted (and asks for `status.phase=Running` unless
      `:kubernetes_field_selector` is set). Recommended when the app's readiness does not depend
      on the cluster: a node joins when its pod is ready and leaves as soon as it starts
      terminating. Do not use it when the readiness probe waits for the cluster (Horde, Mnesia,
      Oban peers...): no pod would ever become ready. Default `false` (libcluster's behaviour).
    * `:mode` - how node names are built (default `:ip`):
      * `:ip` - `basename@<ip>`, the address as the API wrote it (as libcluster does)
      * `:dns` - `basename@<ip with dashes>.<namespace>.pod.<cluster domain>`; an IPv6 address is
        written as its eight 4-digit groups joined by dashes (a valid DNS label that CoreDNS maps
        back)
      * `:hostname` - `basename@<hostname>.<service>.<namespace>.svc.<cluster domain>`, for pods
        with a hostname (StatefulSets); addresses without a hostname are skipped (libcluster
        dials a name with an empty label for them, which never connects)
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
    * `:polling_interval` - ms between lists when polling, and when the watch is forbidden
      (default `5_000`; with `:infinity`, a forbidden watch is replaced by a list every 30 s)
    * `:kubernetes_watch` - watch (default `true` in every mode) or poll (`false`)
    * `:kubernetes_watch_retry_interval` - while the watch is forbidden, how often it is tried
      again, in ms (default `300_000`, with up to 20% jitter)
    * `:kubernetes_field_selector` - a field selector. Default: none (libcluster's), except
      `"status.phase=Running"` with `kubernetes_pods_ready_only: true`; `nil` sends none
    * `:kubernetes_request_timeout` - deadline of one list, and of a watch's response headers, in
      ms (default `15_000`, libcluster's)
    * `:kubernetes_watch_timeout` - how long the server keeps one watch open before it is re-opened
      from the last version, in ms (default `300_000`, with up to 20% jitter)
    * `:kubernetes_max_body_bytes` - the largest list accepted (default 64 MiB)
    * `:env` - a map of environment variables read instead of the process environment
      (`KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT`, `CLUSTER_DOMAIN`), e.g. in tests; by
      default the process environment is read once, at start
    * `:kubernetes_insecure_skip_tls_verify` - **DANGEROUS**: `true` skips the verification of
      the API server's certificate, so anyone on the path can read the service account token. It
      exists for clusters with broken certificates only; an error is logged at every start.
      Default `false`.

  ## RBAC

  The service account needs `list` on the resource of its mode (what libcluster needs) and should
  have `watch` too: without it the strategy polls (see above). Role and RoleBinding manifests that
  grant both for each mode are in `priv/rbac/` (`endpoints.json`, `pods.json`,
  `endpointslices.json`; JSON is valid YAML, so `kubectl apply -f` takes them as they are).

  The differences from libcluster 3.5 that remain, and the options that restore libcluster's
  behaviour, are listed in the Kubernetes guide (`docs/kubernetes.md`).

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

      # Pods whose readiness does not depend on the cluster: a node joins once its pod is Ready
      config :libcluster,
        topologies: [
          k8s: [
            strategy: Cluster.Strategy.Kubernetes,
            config: [
              kubernetes_node_basename: "myapp",
              kubernetes_selector: "app=myapp",
              kubernetes_ip_lookup_mode: :pods,
              kubernetes_pods_ready_only: true
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
  use LibclusterRs.Discovery

  alias LibclusterRs.Config

  @service_account_path "/var/run/secrets/kubernetes.io/serviceaccount"

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    opts = Config.validate!(config, schema(), topology, __MODULE__, [:membership])
    impl = impl(opts, Config.env(opts), topology)

    if opts.kubernetes_insecure_skip_tls_verify do
      Cluster.Logger.error(
        topology,
        "kubernetes_insecure_skip_tls_verify is true: the API server's certificate is NOT verified " <>
          "and the service account token can be read by anyone on the network path. Fix the " <>
          "cluster's certificates and remove this option."
      )
    end

    {:ok, impl,
     interval: opts.polling_interval, prune: true, round_timeout: opts.kubernetes_request_timeout + 5_000}
  end

  @doc false
  # A required key given as nil (`System.get_env("UNSET")` in runtime.exs) does not stop libcluster
  # from booting: it warns at every poll and connects nothing. As the other strategies do,
  # LibclusterRs.InvalidTopology says why at error level, once, and in Cluster.status/1. A
  # missing key raises in init/1, as libcluster's Keyword.fetch! crashed the strategy.
  def child_spec([%Cluster.Strategy.State{config: config} = state] = args) do
    LibclusterRs.InvalidTopology.child_spec(state, __MODULE__, "Kubernetes", nil_key_problem(config)) ||
      super(args)
  end

  defp nil_key_problem(config) do
    if Keyword.keyword?(config) do
      config
      |> required_keys()
      |> Enum.find_value(fn {key, expected} ->
        if Keyword.has_key?(config, key) and Keyword.get(config, key) == nil,
          do: Config.expected(key, expected, nil, "not configured")
      end)
    end
  end

  # The required keys and what each must be. The selector is not needed for the EndpointSlices of
  # one named service. `config`: the keyword config, or the validated options.
  defp required_keys(config) do
    slices_of_service? =
      config[:kubernetes_ip_lookup_mode] == :endpointslices and config[:kubernetes_service_name] != nil

    [kubernetes_node_basename: "a non-empty string"] ++
      if(slices_of_service?,
        do: [],
        else: [kubernetes_selector: "a label selector string such as \"app=myapp\""]
      )
  end

  @impl LibclusterRs.Discovery
  # The service account's files (token, ca.crt and, without :kubernetes_namespace, namespace) are
  # read by the native task, which owns them: a namespace file that is not there yet fails the
  # round with a :config error (logged at error level once per streak, shown by Cluster.status),
  # nothing is connected or pruned, and the next round reads it again.
  def discover(impl, tag) do
    native = %{impl.native | probe: impl.dry_run}
    handle = LibclusterRs.Native.kubernetes_start(tag, native)
    mode = if native.watch, do: :watch, else: :poll
    {{if(native.watch, do: :stream, else: :async), handle}, %{impl | mode: mode, watch_forbidden: nil}}
  end

  @impl LibclusterRs.Discovery
  # The native task reports when the watch is forbidden (it then polls) and when it is allowed again.
  def handle_event({:watch_mode, :poll_fallback, detail}, impl) do
    text =
      "watch forbidden, polling instead: #{detail}. Until the Role allows watch, this topology " <>
        "lists #{impl.resource} every #{impl.fallback_poll_ms} ms (mode :poll_fallback in " <>
        "Cluster.status) and tries the watch again every #{duration(impl.native.watch_retry_interval_ms)}"

    if impl.dry_run,
      do: dry_run_note("mode: poll_fallback (" <> text <> ")"),
      else: Cluster.Logger.warn(impl.topology, text)

    {[:pending], %{impl | mode: :poll_fallback, watch_forbidden: detail}}
  end

  def handle_event({:watch_mode, :watch, detail}, impl) do
    cond do
      impl.dry_run ->
        dry_run_note("mode: watch (#{detail})")

      impl.mode == :poll_fallback ->
        Cluster.Logger.info(impl.topology, "watching again (mode :watch): #{detail}")

      true ->
        :ok
    end

    {[:pending], %{impl | mode: :watch, watch_forbidden: nil}}
  end

  def handle_event(event, impl), do: {[LibclusterRs.Discovery.default_event(event)], impl}

  @impl LibclusterRs.Discovery
  def status_extra(impl) do
    %{
      kubernetes: %{
        mode: impl.mode,
        # nil when it comes from the service account's file (read by the native task)
        namespace: impl.namespace,
        resource: impl.resource,
        watch_forbidden: impl.watch_forbidden
      }
    }
  end

  @impl LibclusterRs.Discovery
  # `mix libcluster.discover`: a watching topology lists once, tries the watch once (to show the
  # mode it would run in) and ends; the mode is printed with the task's output.
  @spec dry_run(map()) :: map()
  def dry_run(impl) do
    if impl.mode == :poll,
      do: dry_run_note("mode: poll every #{impl.fallback_poll_ms} ms (kubernetes_watch: false)")

    %{impl | dry_run: true}
  end

  defp dry_run_note(text), do: IO.puts("  " <> text)

  defp duration(ms) when ms >= 10_000 and rem(ms, 1_000) == 0, do: "#{div(ms, 1_000)} s"
  defp duration(ms), do: "#{ms} ms"

  defp schema do
    [
      {:kubernetes_node_basename, nil, Config.nullable(Config.string())},
      {:kubernetes_selector, nil, Config.nullable(Config.string())},
      {:kubernetes_namespace, nil, Config.nullable(Config.string())},
      {:kubernetes_ip_lookup_mode, :endpoints, Config.one_of([:endpoints, :pods, :endpointslices])},
      {:kubernetes_pods_ready_only, false, Config.boolean()},
      {:mode, :ip, Config.one_of([:ip, :dns, :hostname])},
      {:kubernetes_service_name, nil, Config.nullable(Config.string())},
      {:kubernetes_use_cached_resources, false, Config.boolean()},
      {:kubernetes_master, nil, Config.nullable(Config.string())},
      {:kubernetes_cluster_name, "cluster", Config.string()},
      {:kubernetes_service_account_path, @service_account_path, Config.string()},
      {:polling_interval, 5_000, Config.interval()},
      {:kubernetes_watch, true, Config.boolean()},
      {:kubernetes_watch_retry_interval, 300_000, Config.pos_integer()},
      {:kubernetes_field_selector, :default, &field_selector/1},
      {:kubernetes_request_timeout, 15_000, Config.pos_integer()},
      {:kubernetes_watch_timeout, 300_000, Config.pos_integer()},
      {:kubernetes_max_body_bytes, 64 * 1024 * 1024, Config.pos_integer()},
      {:kubernetes_insecure_skip_tls_verify, false, Config.boolean()},
      Config.env_key()
    ]
  end

  defp field_selector(nil), do: {:ok, nil}
  defp field_selector(value), do: Config.string().(value)

  # The strategy's state: the native options (the namespace is resolved at each round when it
  # comes from the service account's file) and the mode it runs in. `env`: Config.env/1.
  defp impl(opts, env, topology) do
    if opts.kubernetes_pods_ready_only and opts.kubernetes_ip_lookup_mode != :pods do
      Cluster.Logger.warn(
        topology,
        "kubernetes_pods_ready_only applies to kubernetes_ip_lookup_mode: :pods only; with " <>
          "#{inspect(opts.kubernetes_ip_lookup_mode)} it is ignored (those modes take ready addresses already)"
      )
    end

    lookup = opts.kubernetes_ip_lookup_mode
    service = opts.kubernetes_service_name

    required = required_keys(opts)

    basename =
      Config.required!(opts, :kubernetes_node_basename, topology, required[:kubernetes_node_basename])

    label_selector =
      case required[:kubernetes_selector] do
        nil -> "kubernetes.io/service-name=#{service}"
        expected -> Config.required!(opts, :kubernetes_selector, topology, expected)
      end

    domain = cluster_domain(opts.kubernetes_cluster_name, env)
    fallback_poll_ms = if opts.polling_interval == :infinity, do: 30_000, else: opts.polling_interval
    {backoff_min, backoff_max} = LibclusterRs.Discovery.Schedule.error_backoff(opts.polling_interval)

    native = %{
      api_url: api_url(opts.kubernetes_master, domain, env, topology),
      service_account_path: opts.kubernetes_service_account_path,
      namespace: opts.kubernetes_namespace,
      lookup: lookup,
      pods_ready_only: opts.kubernetes_pods_ready_only,
      label_selector: label_selector,
      field_selector:
        default_field_selector(opts.kubernetes_field_selector, lookup, opts.kubernetes_pods_ready_only),
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
      backoff_min_ms: backoff_min,
      backoff_max_ms: backoff_max,
      poll_interval_ms: fallback_poll_ms,
      watch_retry_interval_ms: opts.kubernetes_watch_retry_interval,
      probe: false
    }

    %{
      topology: topology,
      native: native,
      namespace: opts.kubernetes_namespace,
      resource: Atom.to_string(lookup),
      mode: if(opts.kubernetes_watch, do: :watch, else: :poll),
      watch_forbidden: nil,
      fallback_poll_ms: fallback_poll_ms,
      dry_run: false
    }
  end

  # Pods: no field selector by default (libcluster's), `status.phase=Running` with ready-only.
  defp default_field_selector(:default, :pods, true), do: "status.phase=Running"
  defp default_field_selector(:default, _lookup, _ready_only), do: nil
  defp default_field_selector(selector, _lookup, _ready_only), do: selector

  @doc false
  # `env`: Config.env/1 (the strategy's, or a test's map).
  @spec cluster_domain(String.t(), %{String.t() => String.t()}) :: String.t()
  def cluster_domain(cluster_name, env) do
    case env["CLUSTER_DOMAIN"] do
      domain when is_binary(domain) and domain != "" -> String.trim_trailing(domain, ".")
      _ -> "#{cluster_name}.local"
    end
  end

  @doc false
  # libcluster: the domain is appended to `kubernetes_master` unless it ends with it or with ".".
  @spec api_url(String.t() | nil, String.t(), %{String.t() => String.t()}, atom()) :: String.t()
  def api_url(nil, domain, env, topology) do
    case env["KUBERNETES_SERVICE_HOST"] do
      host when is_binary(host) and host != "" ->
        port = env["KUBERNETES_SERVICE_PORT"] || "443"
        "https://#{bracket(host)}:#{port}"

      _ ->
        api_url("kubernetes.default.svc", domain, env, topology)
    end
  end

  def api_url("https://" <> _ = url, _domain, _env, _topology), do: String.trim_trailing(url, "/")

  def api_url(master, domain, _env, topology) do
    if String.contains?(master, "://") do
      Config.invalid!(
        topology,
        :kubernetes_master,
        "a host, host:port or https:// URL",
        master,
        "the token is never sent in clear"
      )
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
end
