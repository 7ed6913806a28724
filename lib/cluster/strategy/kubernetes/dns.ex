defmodule Cluster.Strategy.Kubernetes.DNS do
  @moduledoc """
  Connects to the pods behind a Kubernetes headless service: every interval, looks up the
  service's A and AAAA records (dual-stack clusters) and connects to `<application_name>@<ip>`
  for each.

  The lookup runs natively (hickory-resolver, never in the strategy process), with the pod's
  resolver configuration (`/etc/resolv.conf`: the cluster DNS server, search domains such as
  `<namespace>.svc.cluster.local`, `ndots:5`), a per-query timeout, TCP on truncation, and CNAME
  chains followed (an answer carrying CNAME aliases works; libcluster 3.5 crashed on it). A
  `:resolver` fun, when given, is used instead.

  It polls once per interval with jitter (libcluster 3.5 polled twice). Errors never
  prune. As in libcluster, an empty answer is applied at once and a pod missing from the answer
  is disconnected within that poll; for partial or rotating answers set `confirm_empty: 2` and
  `membership: [prune: {:grace_period, ms}]` (see `Cluster.Strategy.DNSPoll`).

  ## Options

    * `:service` (required) - the headless service's DNS name, e.g. `"myapp-headless"` or
      `"myapp-headless.default.svc.cluster.local"`
    * `:application_name` (required) - the node basename, the part before `@`
    * `:polling_interval` (alias `:poll_interval`) - ms between polls, default `5_000`
    * `:resolver` - a 1-arity fun given the service as a charlist, returning what
      `:inet_res.getbyname(name, :a)` returns: `{:ok, {:hostent, name, aliases, :inet, 4, ips}}`
      or `{:error, reason}`; with it, only what the fun returns is used
    * `:resolver_timeout`, `:nameservers`, `:query_timeout`, `:query_attempts`, `:resolv_conf`,
      `:confirm_empty` - as in `Cluster.Strategy.DNSPoll`

  A missing `:service` or `:application_name` is logged and the topology connects nothing.

  ## Examples

  A headless service selecting the app's pods (`clusterIP: None`), with the release's node
  name set to `myapp@$(POD_IP)`:

      config :libcluster,
        topologies: [
          k8s: [
            strategy: Cluster.Strategy.Kubernetes.DNS,
            config: [
              service: "myapp-headless",
              application_name: "myapp",
              polling_interval: 5_000
            ]
          ]
        ]

  The same strategy works for any name with one address record per node, such as Fly.io's
  `<app>.internal` (AAAA records, node names `myapp@<ipv6>`):

      config :libcluster,
        topologies: [
          fly: [
            strategy: Cluster.Strategy.Kubernetes.DNS,
            config: [service: "myapp.internal", application_name: "myapp"]
          ]
        ]
  """
  use LibclusterRs.Discovery

  alias LibclusterRs.{Config, DNS}

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    schema = DNS.interval_schema() ++ DNS.schema()
    opts = Config.validate!(config, schema, topology, __MODULE__, [:service, :application_name, :membership])

    with {:ok, service} <- required(config, :service),
         {:ok, app} <- required(config, :application_name) do
      questions = [{app, service, [:a, :aaaa]}]
      impl = Map.merge(opts, %{topology: topology, service: service, app: app, questions: questions})
      {:ok, impl, DNS.discovery_opts(opts, config)}
    else
      {:error, message} -> DNS.ignore(topology, "Kubernetes.DNS: " <> message)
    end
  end

  @doc false
  # The first required key of `keys` whose value is unusable, as a message; nil when all are fine.
  def config_problem(config, keys) do
    if Keyword.keyword?(config) do
      Enum.find_value(keys, fn key ->
        case required(config, key) do
          {:ok, _} -> nil
          {:error, message} -> message
        end
      end)
    end
  end

  @doc false
  def required(config, key) do
    value = Keyword.get(config, key)

    case Config.string().(value) do
      {:ok, s} -> {:ok, s}
      {:error, expected} -> {:error, Config.expected(key, expected, value)}
    end
  end

  @doc false
  # Without a usable :service, :application_name, it starts (as in libcluster) but
  # connects nothing: LibclusterRs.InvalidTopology says why at error level, once, and in Cluster.status/1.
  def child_spec([%Cluster.Strategy.State{config: config} = state] = args) do
    problem = config_problem(config, [:service, :application_name])
    LibclusterRs.InvalidTopology.child_spec(state, __MODULE__, "Kubernetes.DNS", problem) || super(args)
  end

  @impl LibclusterRs.Discovery
  def discover(%{resolver: nil} = impl, tag) do
    {DNS.poll(impl, impl.questions, tag), impl}
  end

  def discover(%{resolver: resolver} = impl, tag) do
    %{service: service, app: app} = impl

    lookup = fn ->
      case resolver.(String.to_charlist(service)) do
        # Any hostent: aliases (CNAMEs) are fine, and v6 hostents too.
        {:ok, {:hostent, _name, _aliases, _type, _len, ips}} -> {:ok, DNS.names_from_ips(app, ips)}
        {:error, reason} -> DNS.resolver_error(reason)
        other -> {:error, :malformed, "the resolver returned #{inspect(other, limit: 5)}"}
      end
    end

    {DNS.run_resolver([{"resolver(#{inspect(service)})", lookup}], impl.resolver_timeout, tag), impl}
  end

  @impl LibclusterRs.Discovery
  def handle_event(event, impl), do: {DNS.handle_event(event), impl}

  @impl LibclusterRs.Discovery
  # `mix libcluster.discover`: why a round found no node.
  def dry_run_empty(impl), do: DNS.empty_message(impl, impl.questions)
end
