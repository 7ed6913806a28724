defmodule Cluster.Strategy.Kubernetes.DNSSRV do
  @moduledoc """
  Connects to the pods of a StatefulSet through the SRV records of its headless service: every
  interval, looks up `<service>.<namespace>.svc.<cluster domain>` (the domain is `CLUSTER_DOMAIN`
  when set, else `cluster.local.`) and connects to `<application_name>@<srv target>` for each
  record, e.g. `myapp@myapp-0.myapp-headless.default.svc.cluster.local`.

  The lookup runs natively (hickory-resolver, never in the strategy process), with a per-query
  timeout, TCP on truncation and CNAME chains followed; a `:resolver` fun, when given, is used
  instead. It polls once per interval with jitter (libcluster 3.5 polled twice). Errors never
  prune. As in libcluster, an empty answer is applied at once and a pod missing from the answer
  is disconnected within that poll; for partial or rotating answers set `confirm_empty: 2` and
  `membership: [prune: {:grace_period, ms}]` (see `Cluster.Strategy.DNSPoll`).

  ## Options

    * `:service` (required) - the headless service's name
    * `:namespace` (required) - its namespace
    * `:application_name` (required) - the node basename, the part before `@`
    * `:polling_interval` (alias `:poll_interval`) - ms between polls, default `5_000`
    * `:resolver` - a 1-arity fun given the query as a charlist, returning what
      `:inet_res.getbyname(name, :srv)` returns: `{:ok, {:hostent, name, aliases, :srv, n,
      [{priority, weight, port, target}]}}` or `{:error, reason}`
    * `:resolver_timeout`, `:nameservers`, `:query_timeout`, `:query_attempts`, `:resolv_conf`,
      `:confirm_empty` - as in `Cluster.Strategy.DNSPoll`
    * `:env` - a map of environment variables read instead of the process environment
      (`CLUSTER_DOMAIN`), e.g. in tests; by default the process environment is read once, at start

  A missing `:service`, `:namespace` or `:application_name` is logged and the topology connects
  nothing.

  ## Examples

  A StatefulSet `myapp` with `serviceName: myapp-headless` in namespace `default`, its nodes named
  `myapp@$(POD_NAME).myapp-headless.default.svc.cluster.local`:

      config :libcluster,
        topologies: [
          k8s: [
            strategy: Cluster.Strategy.Kubernetes.DNSSRV,
            config: [
              service: "myapp-headless",
              namespace: "default",
              application_name: "myapp",
              polling_interval: 5_000
            ]
          ]
        ]

  Fly.io's internal DNS serves address records (`<app>.internal` has one AAAA record per
  machine), not SRV records, so for Fly use `Cluster.Strategy.DNSPoll` (or
  `Cluster.Strategy.Kubernetes.DNS`) instead:

      config :libcluster,
        topologies: [
          fly: [
            strategy: Cluster.Strategy.DNSPoll,
            config: [query: "myapp.internal", node_basename: "myapp", resource_types: [:aaaa]]
          ]
        ]

  """
  use LibclusterRs.Discovery

  alias LibclusterRs.{Config, DNS}
  alias Cluster.Strategy.Kubernetes.DNS, as: K8sDNS

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    schema = DNS.interval_schema() ++ DNS.schema() ++ [Config.env_key()]

    opts =
      Config.validate!(config, schema, topology, __MODULE__, [
        :service,
        :namespace,
        :application_name,
        :membership
      ])

    with {:ok, service} <- K8sDNS.required(config, :service),
         {:ok, namespace} <- K8sDNS.required(config, :namespace),
         {:ok, app} <- K8sDNS.required(config, :application_name) do
      query = query(service, namespace, Config.env(opts))

      impl =
        opts
        |> Map.delete(:env)
        |> Map.merge(%{topology: topology, query: query, app: app, questions: [{app, query, [:srv]}]})

      {:ok, impl, DNS.discovery_opts(opts, config)}
    else
      {:error, message} -> DNS.ignore(topology, "Kubernetes.DNSSRV: " <> message)
    end
  end

  @doc false
  # `env`: Config.env/1 (the process environment read once at start, or the `:env` option).
  def query(service, namespace, env) do
    "#{service}.#{namespace}.svc.#{env["CLUSTER_DOMAIN"] || "cluster.local."}"
  end

  @doc false
  # Without a usable :service, :namespace, :application_name, it starts (as in libcluster) but
  # connects nothing: LibclusterRs.InvalidTopology says why at error level, once, and in Cluster.status/1.
  def child_spec([%Cluster.Strategy.State{config: config} = state] = args) do
    problem = K8sDNS.config_problem(config, [:service, :namespace, :application_name])
    LibclusterRs.InvalidTopology.child_spec(state, __MODULE__, "Kubernetes.DNSSRV", problem) || super(args)
  end

  @impl LibclusterRs.Discovery
  def discover(%{resolver: nil} = impl, tag) do
    {DNS.poll(impl, impl.questions, tag), impl}
  end

  def discover(%{resolver: resolver} = impl, tag) do
    %{query: query, app: app} = impl

    lookup = fn ->
      case resolver.(String.to_charlist(query)) do
        {:ok, {:hostent, _name, _aliases, _type, _len, records}} when is_list(records) ->
          {:ok, for({_prio, _weight, _port, target} <- records, do: "#{app}@#{target_text(target)}")}

        {:error, reason} ->
          DNS.resolver_error(reason)

        other ->
          {:error, :malformed, "the resolver returned #{inspect(other, limit: 5)}"}
      end
    end

    {DNS.run_resolver([{"resolver(#{inspect(query)})", lookup}], impl.resolver_timeout, tag), impl}
  end

  @impl LibclusterRs.Discovery
  def handle_event(event, impl), do: {DNS.handle_event(event), impl}

  @impl LibclusterRs.Discovery
  # `mix libcluster.discover`: why a round found no node.
  def dry_run_empty(impl), do: DNS.empty_message(impl, impl.questions)

  defp target_text(target) do
    target |> to_string() |> String.trim_trailing(".")
  rescue
    _ -> ""
  end
end
