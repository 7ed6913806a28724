defmodule Cluster.Strategy.EC2 do
  @moduledoc """
  Connects the running EC2 instances that carry a tag: every polling interval, asks EC2's
  `DescribeInstances` for the instances with the tag `ec2_tagname` = `ec2_tagvalue` in state
  `running`, and connects `<app_prefix>@<private IP>` (or public IP) for each one.

  It takes the config of libcluster_ec2's `ClusterEC2.Strategy.Tags` unchanged: switch the
  `strategy:` module and drop the `libcluster_ec2`, `ex_aws`, `ex_aws_ec2`, `sweet_xml` and
  `hackney` dependencies.

  Everything AWS runs natively (no hex dependency): the Query API request signed with SigV4, every
  `NextToken` page, the XML parsed with a real parser, instance metadata through IMDSv2 only
  (token first; a 1 s deadline, so that it fails fast outside AWS), and credentials in the AWS
  SDKs' order (see "Credentials"). Credentials are cached and refreshed before they expire.

  ## How answers are trusted

    * A failed request, a failed page or an answer that is not a complete
      `DescribeInstancesResponse` is an error: the last known nodes stay connected (libcluster_ec2
      disconnected every node instead). The round is retried with backoff.
    * `RequestLimitExceeded` (EC2 throttling) holds requests back for one polling interval, then
      two, up to four, and resets on success.
    * An instance missing from a complete answer is disconnected, as in libcluster_ec2.
    * An auth error says what is missing: `AuthFailure` (HTTP 401) or `UnauthorizedOperation`
      (HTTP 403) name the IAM permission `ec2:DescribeInstances`, in the log, in
      `Cluster.status/1` and in `mix libcluster.discover`.

  ## Options

    * `:ec2_tagname` (required) - the tag's name
    * `:ec2_tagvalue` - the tag's value: a string (`""` included), a 0-arity fun, or a 1-arity fun given the tag
      name (called every round, in a process of its own, within `:fun_timeout`). Default: this
      instance's own value of the tag (its instance id from IMDS, then `DescribeInstances` on it;
      cached once known)
    * `:app_prefix` - the part before `@`, default `"app"`
    * `:ip_type` - `:private` (default, `privateIpAddress`) or `:public` (`ipAddress`; instances
      without one are skipped)
    * `:ip_to_nodename` - a 2-arity fun given the IPs (binaries) and `:app_prefix`, returning the
      node names (atoms or binaries); called every round in a process of its own within
      `:fun_timeout` (a raise, an exit or a timeout is an error of that round)
    * `:polling_interval` - ms between rounds, default `5_000`
    * `:show_debug` - `true` logs each round's nodes at debug level (accepted for
      compatibility; libcluster's `debug: true` shows the rest)

  A missing `:ec2_tagname` raises at start. `nil` for `:ec2_tagname`, `:ec2_tagvalue` or
  `:app_prefix` boots, as in libcluster_ec2, but connects nothing: the topology logs why once at
  error level and `Cluster.status/1` shows `state: :invalid_config`. Other invalid values raise
  `ArgumentError` at start, naming the key (or the environment variable).

  Beyond libcluster_ec2 (all optional):

    * `:region` - overrides `AWS_REGION` and IMDS
    * `:ec2_endpoint`, `:sts_endpoint` - override `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL_STS`
      (`http://` allowed, for local endpoints)
    * `:imds_endpoint` - overrides `AWS_EC2_METADATA_SERVICE_ENDPOINT`
    * `:ca_bundle` - a PEM file of extra CAs (added to the system roots); overrides `AWS_CA_BUNDLE`
    * `:request_timeout` - ms one EC2, STS or credentials request may take, default `10_000`
    * `:imds_timeout` - ms one IMDS request may take, default `1_000`
    * `:fun_timeout` - ms a `:ec2_tagvalue` or `:ip_to_nodename` fun may take, default `5_000`
    * `:env` - a map of `AWS_*` variables used instead of the process environment (for tests)

  ## Environment (as the AWS SDKs)

  `AWS_REGION` (then `AWS_DEFAULT_REGION`, then IMDS) for the region; `AWS_ENDPOINT_URL_EC2`,
  `AWS_ENDPOINT_URL_STS` (or `AWS_ENDPOINT_URL`) for the endpoints;
  `AWS_EC2_METADATA_SERVICE_ENDPOINT`, `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6` and
  `AWS_EC2_METADATA_DISABLED` for IMDS; `AWS_CA_BUNDLE` for an extra CA file. They are read once,
  when the topology starts (the `:env` option replaces them all).

  ## Credentials

  The first configured source wins, in the SDKs' order:

    1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
    2. web identity (EKS IRSA): `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, through STS
       `AssumeRoleWithWebIdentity` (session name `AWS_ROLE_SESSION_NAME`, or a generated one);
    3. the container endpoint (ECS, EKS Pod Identity): `AWS_CONTAINER_CREDENTIALS_FULL_URI` or
       `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or
       `AWS_CONTAINER_AUTHORIZATION_TOKEN`;
    4. the instance profile, through IMDSv2.

  The IAM policy needs `ec2:DescribeInstances` only; see the EC2 guide (`docs/ec2.md`).

  ## Example

      config :libcluster,
        topologies: [
          ec2: [
            strategy: Cluster.Strategy.EC2,
            config: [
              ec2_tagname: "elasticbeanstalk:environment-name",
              app_prefix: "myapp",
              polling_interval: 10_000
            ]
          ]
        ]

  Nodes must be started as `myapp@<private IP>` (e.g. `RELEASE_NODE=myapp@$(hostname -i)`).
  """
  use LibclusterRs.Discovery

  require Logger

  alias LibclusterRs.{Config, NodeName}

  # The environment variables the strategy reads, read here and nowhere else.
  @env_prefix "AWS_"

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    opts = Config.validate!(config, schema(), topology, __MODULE__, [:membership])
    Config.required!(opts, :ec2_tagname, topology, "a non-empty string")

    env = aws_env(Config.env(opts))
    check_env!(topology, env)

    native = %{
      env: env,
      tag_name: opts.ec2_tagname,
      ip_type: opts.ip_type,
      region: opts.region,
      ec2_endpoint: opts.ec2_endpoint,
      sts_endpoint: opts.sts_endpoint,
      imds_endpoint: opts.imds_endpoint,
      ca_bundle: opts.ca_bundle,
      request_timeout_ms: opts.request_timeout,
      imds_timeout_ms: opts.imds_timeout,
      polling_interval_ms: if(opts.polling_interval == :infinity, do: 86_400_000, else: opts.polling_interval)
    }

    client =
      case LibclusterRs.Native.ec2_client(native) do
        {:ok, client} ->
          client

        {:error, message} ->
          key = if opts.ca_bundle, do: ":ca_bundle", else: "AWS_CA_BUNDLE"

          raise ArgumentError,
                "invalid config for topology #{inspect(topology)}: #{key}: #{message}"
      end

    impl = opts |> Map.delete(:env) |> Map.merge(%{topology: topology, client: client})
    # A round: credentials (maybe STS or IMDS), maybe this instance's tag, every page, and the funs.
    round_timeout = 4 * opts.request_timeout + 2 * opts.fun_timeout + 4 * opts.imds_timeout + 2_000

    {:ok, impl, interval: opts.polling_interval, prune: true, round_timeout: round_timeout}
  end

  defp schema do
    [
      {:ec2_tagname, nil, Config.nullable(Config.string())},
      {:ec2_tagvalue, nil, &tag_value/1},
      {:app_prefix, "app", Config.string()},
      {:ip_type, :private, Config.one_of([:private, :public])},
      {:ip_to_nodename, nil, Config.nullable(Config.fun(2))},
      {:polling_interval, 5_000, Config.interval()},
      {:show_debug, false, Config.boolean()},
      {:region, nil, Config.nullable(Config.string())},
      {:ec2_endpoint, nil, Config.nullable(Config.url())},
      {:sts_endpoint, nil, Config.nullable(Config.url())},
      {:imds_endpoint, nil, Config.nullable(Config.url())},
      {:ca_bundle, nil, Config.nullable(&file/1)},
      {:request_timeout, 10_000, Config.pos_integer()},
      {:imds_timeout, 1_000, Config.pos_integer()},
      {:fun_timeout, 5_000, Config.pos_integer()},
      Config.env_key()
    ]
  end

  # An empty string is a valid EC2 tag value.
  defp tag_value(v) when is_function(v, 0) or is_function(v, 1) or is_binary(v), do: {:ok, v}
  defp tag_value(nil), do: {:ok, nil}
  defp tag_value(_), do: {:error, "a string, a 0-arity fun or a 1-arity fun"}

  @doc false
  # As in libcluster_ec2, a `nil` :ec2_tagname, :ec2_tagvalue or :app_prefix does not stop boot: it
  # connects nothing (libcluster_ec2 warned at every poll). LibclusterRs.InvalidTopology says why at
  # error level, once, and in Cluster.status/1. A missing :ec2_tagname raises, as its
  # Keyword.fetch! crashed the strategy.
  def child_spec([%Cluster.Strategy.State{config: config} = state] = args) do
    problem =
      if Keyword.keyword?(config) do
        Enum.find_value([:ec2_tagname, :ec2_tagvalue, :app_prefix], fn key ->
          if Keyword.has_key?(config, key) and Keyword.get(config, key) == nil,
            do: "#{inspect(key)} is nil (not configured)"
        end)
      end

    LibclusterRs.InvalidTopology.child_spec(state, __MODULE__, "EC2", problem) || super(args)
  end

  defp file(value) do
    with {:ok, path} <- Config.string().(value), true <- File.regular?(path) do
      {:ok, path}
    else
      _ -> {:error, "the path of an existing PEM file"}
    end
  end

  # The AWS_* variables of the environment (Config.env/1: the process's, read once at start, or
  # the :env option): only these cross to the native client.
  defp aws_env(env), do: Map.filter(env, fn {k, _} -> String.starts_with?(k, @env_prefix) end)

  # Environment values that cannot work raise at start, naming the variable.
  defp check_env!(topology, env) do
    for var <-
          ~w(AWS_ENDPOINT_URL_EC2 AWS_ENDPOINT_URL_STS AWS_ENDPOINT_URL AWS_EC2_METADATA_SERVICE_ENDPOINT),
        value = env[var],
        value not in [nil, ""],
        match?({:error, _}, Config.url().(value)) do
      Config.invalid!(topology, var, "an http:// or https:// URL", value, "an environment variable")
    end

    case env["AWS_CA_BUNDLE"] do
      path when path in [nil, ""] ->
        :ok

      path ->
        unless File.regular?(path) do
          Config.invalid!(
            topology,
            "AWS_CA_BUNDLE",
            "the path of an existing PEM file",
            path,
            "an environment variable"
          )
        end
    end

    :ok
  end

  ## Rounds

  @impl LibclusterRs.Discovery
  def discover(%{ec2_tagvalue: value, ip_to_nodename: nil} = impl, tag) when not is_function(value) do
    handle = LibclusterRs.Native.ec2_start(tag, impl.client, value, impl.app_prefix)
    {{:async, handle}, impl}
  end

  # A user fun is involved: the whole round runs in a process of its own under the topology's
  # Task.Supervisor (it ends with the topology), each fun in a further process with a deadline.
  # The round's process always answers with exactly one event (its own deadline covers the rest).
  def discover(impl, tag) do
    owner = self()
    sup = LibclusterRs.Discovery.task_supervisor()

    {:ok, _} =
      Task.Supervisor.start_child(
        sup,
        fn -> send(owner, {:libcluster_rs, tag, fun_round(impl, sup)}) end,
        shutdown: :brutal_kill
      )

    {:pending, impl}
  end

  defp fun_round(impl, sup) do
    with {:ok, value} <- resolve_tag_value(impl, sup),
         {:ok, found} <- native_round(impl, value) do
      case impl.ip_to_nodename do
        nil -> {:nodes, found}
        fun -> to_nodenames(fun, found, impl, sup)
      end
    end
  catch
    kind, reason -> {:discovery_error, :io, "the EC2 round failed: #{Exception.format_banner(kind, reason)}"}
  end

  defp resolve_tag_value(%{ec2_tagvalue: fun} = impl, sup) when is_function(fun) do
    call = if is_function(fun, 1), do: fn -> fun.(impl.ec2_tagname) end, else: fun

    case contained(sup, call, impl.fun_timeout) do
      {:ok, value} when is_binary(value) and value != "" ->
        {:ok, value}

      {:ok, other} ->
        {:discovery_error, :config,
         "the :ec2_tagvalue fun returned #{inspect(other, limit: 5)}, not a non-empty string"}

      {:error, why} ->
        {:discovery_error, :io, "the :ec2_tagvalue fun #{why}"}
    end
  end

  defp resolve_tag_value(impl, _sup), do: {:ok, impl.ec2_tagvalue}

  # The native poll, started from this process (so its events come here).
  defp native_round(impl, value) do
    ref = make_ref()
    prefix = if impl.ip_to_nodename, do: nil, else: impl.app_prefix
    handle = LibclusterRs.Native.ec2_start(ref, impl.client, value, prefix)
    deadline = 4 * impl.request_timeout + 4 * impl.imds_timeout + 1_000

    receive do
      {:libcluster_rs, ^ref, {:nodes, found}} -> {:ok, found}
      {:libcluster_rs, ^ref, {:discovery_error, _, _} = error} -> error
    after
      deadline ->
        LibclusterRs.Native.discovery_stop(handle)
        {:discovery_error, :timeout, "DescribeInstances did not finish within #{deadline} ms"}
    end
  end

  defp to_nodenames(fun, ips, impl, sup) do
    case contained(sup, fn -> fun.(ips, impl.app_prefix) end, impl.fun_timeout) do
      {:ok, nodes} when is_list(nodes) ->
        {:ec2_nodes, nodes}

      {:ok, other} ->
        {:discovery_error, :config,
         "the :ip_to_nodename fun returned #{inspect(other, limit: 5)}, not a list"}

      {:error, why} ->
        {:discovery_error, :io, "the :ip_to_nodename fun #{why}"}
    end
  end

  # Runs user code in a process of its own with a deadline: {:ok, result} or {:error, why}.
  # (A raise is caught in the task, so it is reported once, by the round, without a crash report.)
  defp contained(sup, fun, timeout) do
    task = Task.Supervisor.async_nolink(sup, fn -> guard(fun) end, shutdown: :brutal_kill)

    case Task.yield(task, timeout) || Task.shutdown(task, :brutal_kill) do
      {:ok, {:ok, result}} -> {:ok, result}
      {:ok, {:raised, text}} -> {:error, "failed: " <> text}
      {:exit, reason} -> {:error, "failed: #{Exception.format_exit(reason)}"}
      nil -> {:error, "did not return within #{timeout} ms"}
    end
  end

  defp guard(fun) do
    {:ok, fun.()}
  catch
    kind, reason -> {:raised, Exception.format_banner(kind, reason)}
  end

  @impl LibclusterRs.Discovery
  def handle_event({:ec2_nodes, names}, impl) do
    names = Enum.map(names, fn n -> if is_atom(n), do: Atom.to_string(n), else: n end)
    {nodes, _rejected} = NodeName.to_nodes(names)
    debug(impl, nodes)
    {[{:discovered, nodes}], impl}
  end

  def handle_event({:nodes, _} = event, impl) do
    outcome = LibclusterRs.Discovery.default_event(event)
    with {:discovered, nodes} <- outcome, do: debug(impl, nodes)
    {[outcome], impl}
  end

  def handle_event(event, impl), do: {[LibclusterRs.Discovery.default_event(event)], impl}

  defp debug(%{show_debug: true, topology: topology}, nodes) do
    Logger.debug("[libcluster:#{topology}] EC2: #{length(nodes)} node(s): #{inspect(nodes, limit: 20)}")
  end

  defp debug(_impl, _nodes), do: :ok

  ## Status and dry run

  @impl LibclusterRs.Discovery
  def status_extra(impl) do
    info = LibclusterRs.Native.ec2_info(impl.client)
    %{ec2: Map.merge(%{tag_name: impl.ec2_tagname, ip_type: impl.ip_type}, info)}
  end

  @impl LibclusterRs.Discovery
  def dry_run_empty(impl) do
    info = LibclusterRs.Native.ec2_info(impl.client)
    value = info[:tag_value] || "(this instance's own value)"

    "DescribeInstances in #{info[:region] || "?"} lists no running instance with the tag " <>
      "#{inspect(impl.ec2_tagname)} = #{inspect(value)}" <>
      if(impl.ip_type == :public, do: " that has a public IP", else: "")
  end
end
