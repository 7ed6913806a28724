defmodule Cluster.Strategy.DNSPoll do
  @moduledoc """
  Connects to the nodes behind DNS names: every interval, asks for the names' records and
  connects to `<node_basename>@<address>` for each address (IPv6 in `:inet.ntoa/1` form), or
  `<node_basename>@<target>` for each SRV target.

  The lookup runs natively (hickory-resolver on the NIF's runtime, never in the strategy
  process): it reads `/etc/resolv.conf` (nameservers, search domains, `ndots`) unless
  `:nameservers` is given, has a per-query timeout, retries truncated answers over TCP and
  follows CNAME chains. A `:resolver` fun, when given, is used instead (in a process of its own,
  with a deadline).

  ## How answers are trusted

    * Exactly one poll per interval, with ±10% jitter so that a fleet does not poll in lockstep.
    * A timeout, SERVFAIL, REFUSED or network error is an error: it is logged once per streak
      (naming the query and the server) and nothing is pruned. The poll is retried with backoff.
    * NXDOMAIN or an empty answer is applied at once, as in libcluster: every node is
      disconnected. `confirm_empty: 2` applies it only if the next poll is empty too.
    * When several names are queried and some fail while others answer, the nodes found are
      connected and nothing is pruned.
    * A node missing from an answer is disconnected within that poll, as in libcluster
      (`membership: [prune: :immediate]`, the default).

  For DNS services that return partial or rotating answers (Route 53 multivalue answers, Consul
  DNS, capped record counts), set `membership: [prune: {:grace_period, ms}]` (recommended:
  `max(3 * polling_interval, 30_000)`) and `confirm_empty: 2`, so nodes missing from one answer do
  not flap; see the DNS guide.

  ## Options

    * `:query` (required) - the name to look up: a string, a list of strings, or a list of
      `{node_basename, query}` pairs (the dns_cluster forms; pairs carry their own basename)
    * `:node_basename` (required unless every query is a pair) - the part before `@`
    * `:polling_interval` (alias `:poll_interval`) - ms between polls, default `5_000`
    * `:resource_types` - any of `[:a, :aaaa, :srv]`, default `[:a, :aaaa]`
    * `:resolver` - a 1-arity fun given the query as a charlist and returning a list of IP
      tuples (v4 and v6), as libcluster's; see `lookup_all_ips/1`
    * `:resolver_timeout` - deadline for one call of `:resolver` in ms, default `5_000`
    * `:nameservers` - ask these servers (`["10.0.0.2:53", "[fd00::2]:53"]`) instead of the
      system configuration
    * `:query_timeout` - ms one query may take at one server, default `2_000`
    * `:query_attempts` - tries per server, default `2`
    * `:resolv_conf` - the resolver configuration file, default `"/etc/resolv.conf"`
    * `:confirm_empty` - consecutive empty answers needed before an empty answer after a
      non-empty one is applied, default `1` (at once, as libcluster)

  A missing or invalid `:query` or `:node_basename` does not stop the application (as in
  libcluster): the topology starts, logs why at error level once, connects nothing, and
  `Cluster.status/1` shows it with `state: :invalid_config` and the reason in `:last_error`. Other
  invalid options raise `ArgumentError` at start, naming the key. A `{:system, "VAR"}` value whose
  variable is unset raises too, naming the variable and the key.

  ## Examples

  A Kubernetes headless service (one A/AAAA record per ready pod), nodes named `myapp@<pod ip>`:

      config :libcluster,
        topologies: [
          k8s: [
            strategy: Cluster.Strategy.DNSPoll,
            config: [
              polling_interval: 5_000,
              query: "myapp-headless.default.svc.cluster.local",
              node_basename: "myapp"
            ]
          ]
        ]

  Fly.io, where `<app>.internal` has an AAAA record per machine (nodes named `myapp@<ipv6>`):

      config :libcluster,
        topologies: [
          fly: [
            strategy: Cluster.Strategy.DNSPoll,
            config: [
              query: System.get_env("FLY_APP_NAME", "myapp") <> ".internal",
              node_basename: "myapp",
              resource_types: [:aaaa]
            ]
          ]
        ]

  Several services at once, each with its own basename (the dns_cluster form):

      config :libcluster,
        topologies: [
          mixed: [
            strategy: Cluster.Strategy.DNSPoll,
            config: [query: [{"web", "web.internal"}, {"worker", "worker.internal"}]]
          ]
        ]
  """
  use LibclusterRs.Discovery

  alias LibclusterRs.{Config, DNS}
  alias Cluster.Strategy.State

  @default_types [:a, :aaaa]

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    schema = DNS.interval_schema() ++ [{:resource_types, @default_types, &resource_types/1}] ++ DNS.schema()

    opts = Config.validate!(config, schema, topology, __MODULE__, [:query, :node_basename, :membership])

    case questions(Keyword.get(config, :query), Keyword.get(config, :node_basename), opts.resource_types) do
      {:ok, questions} ->
        impl = Map.merge(opts, %{topology: topology, questions: questions})
        {:ok, impl, DNS.discovery_opts(opts, config)}

      {:error, message} ->
        DNS.ignore(topology, "DNSPoll: " <> message)
    end
  end

  @doc false
  # A DNSPoll without a usable :query or :node_basename starts, as in libcluster, but connects
  # nothing: LibclusterRs.InvalidTopology says why at error level, once, and in Cluster.status/1.
  def child_spec([%State{config: config} = state] = args) do
    LibclusterRs.InvalidTopology.child_spec(state, __MODULE__, "DNSPoll", config_problem(config)) ||
      super(args)
  end

  defp config_problem(config) do
    with true <- Keyword.keyword?(config),
         {:error, message} <- questions(config[:query], config[:node_basename], @default_types) do
      message
    else
      _ -> nil
    end
  end

  @impl LibclusterRs.Discovery
  def discover(%{resolver: nil} = impl, tag) do
    {DNS.poll(impl, impl.questions, tag), impl}
  end

  def discover(%{resolver: resolver} = impl, tag) do
    # libcluster's resolver gives IPs, so it answers the address questions; SRV has no fun form.
    lookups =
      for {basename, query, _types} <- impl.questions do
        {"resolver(#{inspect(query)})",
         fn ->
           case resolver.(String.to_charlist(query)) do
             ips when is_list(ips) -> {:ok, DNS.names_from_ips(basename, ips)}
             {:error, reason} -> DNS.resolver_error(reason)
             other -> {:error, :malformed, "the resolver returned #{inspect(other, limit: 5)}"}
           end
         end}
      end

    {DNS.run_resolver(lookups, impl.resolver_timeout, tag), impl}
  end

  @impl LibclusterRs.Discovery
  def handle_event(event, impl), do: {DNS.handle_event(event), impl}

  @impl LibclusterRs.Discovery
  # `mix libcluster.discover`: why a round found no node.
  def dry_run_empty(impl), do: DNS.empty_message(impl, impl.questions)

  @doc """
  The IPv4 and IPv6 addresses of `name` (a charlist), from `:inet_res` (A, then AAAA), as
  libcluster's `DNSPoll.lookup_all_ips/1`. It runs in the caller and blocks it; the strategy
  itself does not use it unless it is given as `:resolver`.
  """
  @spec lookup_all_ips(charlist()) :: [:inet.ip_address()]
  def lookup_all_ips(name) do
    Enum.flat_map([:a, :aaaa], fn type -> :inet_res.lookup(name, :in, type) end)
  end

  ## Config

  @doc false
  # {:ok, [{basename, query, types}]} or {:error, message}
  def questions(query, basename, types) do
    with {:ok, queries} <- queries(query),
         {:ok, questions} <- with_basenames(queries, basename) do
      {:ok, Enum.map(questions, fn {b, q} -> {b, q, types} end)}
    end
  end

  defp queries(nil), do: {:error, Config.expected(:query, "a non-empty string", nil, "the key is required")}

  defp queries(query) when is_binary(query) or (is_list(query) and query != [] and is_integer(hd(query))),
    do: queries([query])

  defp queries(list) when is_list(list) and list != [] do
    case Config.collect(list, &query_item/1) do
      {:ok, queries} -> {:ok, queries}
      :error -> {:error, bad_query(list)}
    end
  end

  defp queries(other), do: {:error, bad_query(other)}

  defp query_item({basename, query}) do
    with {:ok, b} <- Config.string().(basename),
         {:ok, q} <- Config.string().(query) do
      {:ok, {b, q}}
    else
      _ -> :error
    end
  end

  defp query_item(query) do
    case Config.string().(query) do
      {:ok, q} -> {:ok, {nil, q}}
      _ -> :error
    end
  end

  defp bad_query(value) do
    Config.expected(
      :query,
      "a non-empty string, a list of them, or a list of {node_basename, query} pairs",
      value
    )
  end

  defp with_basenames(queries, basename) do
    if Enum.any?(queries, &match?({nil, _}, &1)) do
      case Config.string().(basename) do
        {:ok, b} ->
          {:ok, Enum.map(queries, fn {q_base, q} -> {q_base || b, q} end)}

        {:error, expected} ->
          {:error, Config.expected(:node_basename, expected, basename)}
      end
    else
      {:ok, queries}
    end
  end

  defp resource_types(types) when is_list(types) and types != [] do
    if Enum.all?(types, &(&1 in [:a, :aaaa, :srv])),
      do: {:ok, Enum.uniq(types)},
      else: {:error, "a non-empty list of :a, :aaaa, :srv"}
  end

  defp resource_types(_), do: {:error, "a non-empty list of :a, :aaaa, :srv"}
end
