defmodule LibclusterRs.DNS do
  @moduledoc false
  # What the DNS strategies (DNSPoll, Kubernetes.DNS, Kubernetes.DNSSRV) share: the resolver
  # options, one poll (native, or a user `resolver` fun run outside the strategy process with a
  # deadline), the translation of answers into LibclusterRs.Discovery outcomes, and the DNS defaults,
  # which are libcluster 3.5's:
  #
  #   * prune `:immediate` - a node that an earlier poll returned and this one omits is disconnected
  #     within this poll; `membership: [prune: {:grace_period, ms}]` keeps it for `ms` instead
  #   * `confirm_empty: 1` - an empty answer (NXDOMAIN or no records) is applied at once;
  #     `confirm_empty: 2` applies it only when the next poll is empty too
  #   * errors (timeout, SERVFAIL, REFUSED, network) never prune (libcluster defect 3 is not copied)
  #   * a poll where some questions fail and others answer connects what was found and prunes
  #     nothing (`{:partial_nodes, ...}`), then counts as a failed round
  #
  # For DNS services that return partial or rotating answers (Route 53 multivalue, Consul DNS), the
  # guide recommends `{:grace_period, recommended_grace(interval)}` and `confirm_empty: 2`.

  alias LibclusterRs.{Config, NodeName}

  @confirm_empty 1
  @grace_polls 3
  @grace_min 30_000

  @doc "Schema entries for the resolver options every DNS strategy takes."
  def schema do
    [
      {:resolver, nil, Config.nullable(Config.fun(1))},
      {:nameservers, [], &nameservers/1},
      {:query_timeout, 2_000, Config.pos_integer()},
      {:query_attempts, 2, &attempts/1},
      {:resolver_timeout, 5_000, Config.pos_integer()},
      {:resolv_conf, "/etc/resolv.conf", Config.string()},
      {:confirm_empty, @confirm_empty, Config.pos_integer()}
    ]
  end

  @doc "Schema entries for the poll interval, `:polling_interval` and libcluster's doc name `:poll_interval`."
  def interval_schema do
    [
      {:polling_interval, nil, Config.nullable(Config.interval())},
      {:poll_interval, nil, Config.nullable(Config.interval())}
    ]
  end

  @doc """
  Options for `LibclusterRs.Discovery` with the DNS defaults, from the validated `opts` (interval
  entries and `confirm_empty` included); a `membership: [prune: ...]` in config wins.
  """
  def discovery_opts(opts, config) do
    interval = opts.polling_interval || opts.poll_interval || 5_000
    user_prune = config |> Keyword.get(:membership, []) |> Keyword.get(:prune)

    [
      interval: interval,
      jitter: 0.1,
      confirm_empty: Map.get(opts, :confirm_empty, @confirm_empty),
      membership: [prune: user_prune || default_prune(interval)]
    ]
  end

  @doc "The default prune policy of a DNS strategy: libcluster's, `:immediate`."
  def default_prune(_interval), do: :immediate

  @doc """
  The grace period the guide recommends for DNS services with partial or rotating answers, polling
  every `interval` ms: `max(3 * polling_interval, 30_000)`.
  """
  def recommended_grace(:infinity), do: {:grace_period, @grace_min}
  def recommended_grace(interval), do: {:grace_period, max(@grace_polls * interval, @grace_min)}

  @doc "How many consecutive empty polls it takes to apply an empty answer, by default."
  def confirm_empty, do: @confirm_empty

  @doc """
  Starts one poll. `questions` are `{basename, name, types}`. Returns what
  `LibclusterRs.Discovery.discover/2` returns for it (with `impl` unchanged).
  """
  def poll(opts, questions, tag) do
    handle =
      LibclusterRs.Native.dns_lookup_start(tag, %{
        questions: questions,
        nameservers: opts.nameservers,
        resolv_conf: opts.resolv_conf,
        timeout_ms: opts.query_timeout,
        attempts: opts.query_attempts
      })

    {:async, handle}
  end

  @doc """
  Runs `lookups` (a list of `{description, fun}`, each fun returning `{:ok, [name]}`, `:nothing` or
  `{:error, kind, message}`) concurrently in processes of their own, each within `timeout` ms,
  and sends the combined result to the caller as a native event under `tag`. Returns at once.
  """
  def run_resolver(lookups, timeout, tag) do
    owner = self()

    # Under the topology's Task.Supervisor, so a poll in flight ends with its topology.
    start_supervised(fn ->
      results =
        lookups
        |> Task.async_stream(fn {_, fun} -> safely(fun) end,
          timeout: timeout,
          on_timeout: :kill_task,
          max_concurrency: max(length(lookups), 1),
          ordered: true
        )
        |> Enum.zip(lookups)
        |> Enum.map(fn
          {{:ok, result}, {what, _}} ->
            {what, result}

          {{:exit, :timeout}, {what, _}} ->
            {what, {:error, :timeout, "the resolver did not answer within #{timeout} ms"}}

          {{:exit, reason}, {what, _}} ->
            {what, {:error, :io, "the resolver exited: #{inspect(reason)}"}}
        end)

      send(owner, {:libcluster_rs, tag, combine(results)})
    end)

    :pending
  end

  # Strategies run in a LibclusterRs.Discovery process (the dry run's too), which always has one.
  defp start_supervised(fun) do
    {:ok, _} =
      Task.Supervisor.start_child(LibclusterRs.Discovery.task_supervisor(), fun, shutdown: :brutal_kill)
  end

  defp safely(fun) do
    fun.()
  rescue
    e -> {:error, :io, "the resolver raised: " <> Exception.message(e)}
  catch
    kind, reason -> {:error, :io, "the resolver failed: #{inspect({kind, reason})}"}
  end

  @doc """
  Combines the answers of several queries into one native event, by the rule of the native lookup
  (it lives once, in `native/core/src/dns.rs`): all answered → `{:nodes, names}` (sorted, without
  duplicates); some failed → `{:partial_nodes, names, {kind, message}}`; all failed →
  `{:discovery_error, kind, message}`.
  """
  def combine(results), do: LibclusterRs.Native.dns_combine(results)

  @doc """
  For the dry run: what an empty answer to `questions` means, naming each DNS name, the record
  types asked and the servers (explicit `nameservers`, those of `resolv_conf`, or the `resolver` fun).
  """
  def empty_message(opts, questions) do
    asked = servers_text(opts)

    names =
      Enum.map_join(questions, "; ", fn {_basename, name, types} ->
        types = Enum.map_join(types, "/", &(&1 |> Atom.to_string() |> String.upcase()))
        "the DNS name #{inspect(name)} does not exist (NXDOMAIN) or has no #{types} records"
      end)

    names <> ", asked of " <> asked
  end

  defp servers_text(%{resolver: fun}) when is_function(fun), do: "the :resolver fun"
  defp servers_text(%{nameservers: [_ | _] = servers}), do: Enum.join(servers, ", ")

  defp servers_text(%{resolv_conf: path}) do
    servers =
      case File.read(path) do
        {:ok, text} ->
          for line <- String.split(text, "\n"),
              [_, ip] <- [Regex.run(~r/^\s*nameserver\s+(\S+)/, line)],
              do: if(String.contains?(ip, ":"), do: "[#{ip}]:53", else: ip <> ":53")

        _ ->
          []
      end

    case servers do
      [] -> "the servers of #{path}"
      servers -> Enum.join(servers, ", ") <> " (from #{path})"
    end
  end

  @doc "Turns a DNS event into Discovery outcomes."
  def handle_event({:partial_nodes, names, {kind, message}}) do
    {nodes, _rejected} = NodeName.to_nodes(names)
    [{:seen, nodes}, {:error, kind, "some queries failed, nothing pruned: " <> to_string(message)}]
  end

  def handle_event(event), do: [LibclusterRs.Discovery.default_event(event)]

  @doc "`basename@<ip>` for each IP tuple; anything that is not an IP address is dropped."
  def names_from_ips(basename, ips) when is_list(ips) do
    Enum.flat_map(ips, fn ip ->
      case ip_text(ip) do
        {:ok, text} -> ["#{basename}@#{text}"]
        :error -> []
      end
    end)
  end

  def names_from_ips(_basename, _other), do: []

  defp ip_text(ip) when is_tuple(ip) and tuple_size(ip) in [4, 8] do
    case :inet.ntoa(ip) do
      {:error, _} -> :error
      text -> {:ok, List.to_string(text)}
    end
  rescue
    _ -> :error
  end

  defp ip_text(_), do: :error

  @doc "What a resolver's `{:error, reason}` means: NXDOMAIN is an answer, the rest are failures."
  def resolver_error(:nxdomain), do: :nothing
  def resolver_error(:timeout), do: {:error, :timeout, "the resolver timed out"}
  def resolver_error(:servfail), do: {:error, :servfail, "the server failed (servfail)"}
  def resolver_error(:refused), do: {:error, :servfail, "the server refused (refused)"}
  def resolver_error(reason), do: {:error, :io, "the resolver returned #{inspect(reason)}"}

  ## Validators

  # "ip:port", "[v6]:port", "ip" (port 53), or {ip_tuple, port}.
  defp nameservers(list) when is_list(list) do
    case Config.collect(list, &nameserver/1) do
      {:ok, servers} -> {:ok, servers}
      :error -> {:error, expected_nameservers()}
    end
  end

  defp nameservers(_), do: {:error, expected_nameservers()}

  defp expected_nameservers, do: ~S|a list of "ip:port" strings (e.g. ["127.0.0.1:5353", "[::1]:53"])|

  defp nameserver({ip, port}) when is_tuple(ip) and is_integer(port) and port in 1..65535 do
    case ip_text(ip) do
      {:ok, text} -> {:ok, format_server(ip, text, port)}
      :error -> :error
    end
  end

  defp nameserver(text) when is_binary(text) or is_list(text) do
    text = to_string(text)

    {host, port} =
      case Regex.run(~r/\A\[(.+)\]:(\d+)\z/, text) do
        [_, host, port] ->
          {host, port}

        nil ->
          case String.split(text, ":") do
            [host, port] -> {host, port}
            _ -> {text, "53"}
          end
      end

    with {:ok, ip} <- :inet.parse_strict_address(to_charlist(host)),
         {port, ""} when port in 1..65535 <- Integer.parse(port) do
      {:ok, format_server(ip, List.to_string(:inet.ntoa(ip)), port)}
    else
      _ -> :error
    end
  end

  defp nameserver(_), do: :error

  defp format_server(ip, text, port) when tuple_size(ip) == 8, do: "[#{text}]:#{port}"
  defp format_server(_ip, text, port), do: "#{text}:#{port}"

  defp attempts(n) when is_integer(n) and n in 1..10, do: {:ok, n}
  defp attempts(_), do: {:error, "an integer in 1..10"}

  @doc "Logs a configuration problem that COMPAT says must not crash, and opts the strategy out."
  def ignore(topology, message) do
    Cluster.Logger.error(topology, message <> "; this topology will not connect any node")
    :ignore
  end
end
