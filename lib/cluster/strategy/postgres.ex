defmodule Cluster.Strategy.Postgres do
  @moduledoc """
  Forms a cluster through a PostgreSQL database the nodes already share, with `LISTEN`/`NOTIFY`
  (replaces [libcluster_postgres](https://github.com/supabase/libcluster_postgres); no Postgrex
  needed). Every node listens on a channel and announces its node name there every
  `:heartbeat_interval`; a node that hears another connects to it. Postgres never says that a node
  left, so this strategy never disconnects anyone: the distribution's own failure detection
  (`net_ticktime`) handles that.

  The wire behaviour is libcluster_postgres's, so a fleet may mix both during a migration: each
  node sends `NOTIFY "<channel>", '<node name>'` and runs `LISTEN "<channel>"`. libcluster_postgres
  sends its NOTIFY with the channel unquoted, which Postgres folds to lower case; this strategy
  also listens on the lower-case channel when the name has capitals, so it hears those nodes
  whatever the channel's case.

  The connection runs natively (tokio-postgres, TLS on rustls), one connection per node. The node
  announces itself as soon as it is connected and listening, and again after every reconnect. A
  failed connect or a broken connection (a server restart, a failover) is reported once (a
  warning; `Cluster.status/1` shows it under `:last_error`), keeps every connected node, and is
  retried with backoff; after a reconnect it listens and announces again.

  Notification payloads are untrusted: any role that can connect to the database can `NOTIFY`.
  Each payload must be a valid node name (`name@host`, checked natively before any atom is made);
  names never heard before are rate-limited (`:new_names_burst`, `:new_names_per_minute`; a name
  over the limit waits up to 10 s for a token, as gossip's do), and at
  most `:max_new_atoms` atoms are made from them in the VM (a budget shared with gossip's
  unauthenticated names). Their sightings count as untrusted, so the membership bounds the connects
  they cause (`untrusted_connect_rate`). Dropped payloads are counted by reason (see
  `Cluster.status/1`, `extra.counters`) and logged at debug level.

  An authentication or permission error says which role, password, database or grant is wrong;
  the grants needed are in `docs/postgres.md` (LISTEN and NOTIFY need only `CONNECT` on the
  database).

  A node that is not distributed when the strategy starts only listens; within 0.5 s of getting a
  name (`Node.start/2`) it reconnects and announces itself. Under `mix libcluster.discover` the strategy only
  listens as well, so the dry run's VM is not dialled by the cluster.

  ## Options

  libcluster_postgres's keys, with its (Postgrex's) defaults and meaning:

    * `:hostname` - the server (default: `PGHOST`, else `"localhost"`)
    * `:port` - default: `PGPORT`, else `5432`
    * `:username` - default: `PGUSER`, else `USER`
    * `:password` - default: `PGPASSWORD`, else none
    * `:database` - default: `PGDATABASE`. Without any, the topology boots (as with
      libcluster_postgres, whose connection then fails), connects nothing, logs why once at error
      level and shows `state: :invalid_config` in `Cluster.status/1`
    * `:socket_dir` - connect through the Unix socket `<socket_dir>/.s.PGSQL.<port>` instead of TCP
      (`:ssl` does not apply there); `:socket` (the socket file itself, named `.s.PGSQL.<port>`) is
      accepted too
    * `:ssl` - `false` (default), `true`, or `:verify_full`. `true` without `verify: :verify_peer`
      in `:ssl_opts` encrypts but does not verify the server (as Postgrex; logged once as a
      warning); `:verify_full` or `ssl_opts: [verify: :verify_peer]` verifies the certificate
      chain against `:cacertfile` (else the system's CA certificates) and the host name
    * `:ssl_opts` - `:verify` (`:verify_peer` / `:verify_none`), `:cacertfile`,
      `:server_name_indication` (the name to verify, a string or charlist, when `:hostname` is an
      address), and a client certificate for `cert` authentication: `:certfile` and `:keyfile`
      (PEM files, both or neither). Other Erlang `:ssl` options are ignored
    * `:parameters` - server parameters sent at connect, e.g.
      `[application_name: "myapp", search_path: "app"]` (default `application_name`:
      `"libcluster_rs"`)
    * `:url` - `postgres://user:password@host:port/database?ssl=true`; its parts win over the keys
      above (as with Ecto's `:url`). `sslmode=disable|require|verify-full` is read too
    * `:socket_options` - accepted and ignored
    * `:heartbeat_interval` - ms between announcements (default `5_000`)
    * `:channel_name` - the channel (default: this node's cookie with every non-word character
      replaced by `_`, as libcluster_postgres)

  Beyond libcluster_postgres:

    * `:connect_timeout` - deadline of a connect and of each statement, ms (default `5_000`); a
      heartbeat that gets no answer in time counts as a broken connection
    * `:backoff_min`, `:backoff_max` - reconnect delay, doubling per failure with ±20 % jitter
      (defaults `1_000` and `30_000`, DBConnection's)
    * `:new_names_burst`, `:new_names_per_minute` - the limit on names never heard before
      (defaults `256` and `600`)
    * `:max_new_atoms` - the most atoms notification payloads may create in this VM (default
      `10_000`, counted with gossip's unauthenticated names)
    * `:env` - a map of environment variables read instead of the process environment (`PGHOST`,
      `PGPORT`, `PGUSER`, `USER`, `PGPASSWORD`, `PGDATABASE`), e.g. in tests; by default the
      process environment is read once, at start

  ## Example

      config :libcluster,
        topologies: [
          postgres: [
            strategy: Cluster.Strategy.Postgres,
            config: [
              hostname: "db.internal",
              username: "cluster",
              password: System.get_env("CLUSTER_DB_PASSWORD"),
              database: "app",
              ssl: :verify_full,
              ssl_opts: [cacertfile: "/etc/ssl/db-ca.pem"],
              channel_name: "myapp_cluster"
            ]
          ]
        ]
  """
  use LibclusterRs.Discovery

  alias LibclusterRs.Config

  @default_atom_cap 10_000

  @impl LibclusterRs.Discovery
  def init(%{topology: topology, config: config}) do
    schema = [
      {:hostname, nil, Config.nullable(Config.string())},
      {:port, nil, Config.nullable(Config.port())},
      {:username, nil, Config.nullable(Config.string())},
      {:password, nil, Config.nullable(&password/1)},
      {:database, nil, Config.nullable(Config.string())},
      {:socket_dir, nil, Config.nullable(Config.string())},
      {:socket, nil, Config.nullable(Config.string())},
      {:socket_options, [], fn v -> if is_list(v), do: {:ok, v}, else: {:error, "a list"} end},
      {:ssl, false, &ssl/1},
      {:ssl_opts, [], &ssl_opts/1},
      {:parameters, [], &parameters/1},
      {:url, nil, Config.nullable(&url/1)},
      {:heartbeat_interval, 5_000, Config.pos_integer()},
      {:channel_name, nil, Config.nullable(&channel/1)},
      {:connect_timeout, 5_000, Config.pos_integer()},
      {:backoff_min, 1_000, Config.pos_integer()},
      {:backoff_max, 30_000, Config.pos_integer()},
      {:new_names_burst, 256, Config.pos_integer()},
      {:new_names_per_minute, 600, Config.non_neg_integer()},
      {:max_new_atoms, @default_atom_cap, Config.non_neg_integer()},
      Config.env_key()
    ]

    opts = Config.validate!(config, schema, topology, __MODULE__, [:membership])
    opts = Config.backoff_range!(opts, topology)
    env = Config.env(opts)
    opts = opts |> merge_url() |> env_defaults(env) |> socket!(topology) |> tls!(topology)

    if is_nil(opts.database) do
      Config.invalid!(
        topology,
        :database,
        "a non-empty string",
        nil,
        "the key is required unless PGDATABASE is set or :url names one"
      )
    end

    if is_nil(opts.username),
      do: Config.invalid!(topology, :username, "a non-empty string", nil, "PGUSER and USER are unset too")

    channel = opts.channel_name || clean_cookie(Node.get_cookie())
    if opts.ssl and not opts.ssl_verify, do: warn_unverified_once(topology)

    opts = %{Map.delete(opts, :env) | channel_name: channel}

    impl =
      Map.merge(opts, %{
        topology: topology,
        native: native_opts(opts),
        stats: nil,
        listen_only: false,
        connected_at: nil,
        errors_seen: 0,
        atom_cap_dropped: 0
      })

    {:ok, impl, interval: :infinity, prune: false}
  end

  @doc false
  # No database anywhere (no :database, none in :url, no PGDATABASE): libcluster_postgres boots and
  # its connection fails; here the topology boots too, connects nothing, says why once at error
  # level and shows `state: :invalid_config` in Cluster.status/1.
  def child_spec([%Cluster.Strategy.State{} = state] = args) do
    LibclusterRs.InvalidTopology.child_spec(state, __MODULE__, "Postgres", database_problem(state.config)) ||
      super(args)
  end

  defp database_problem(config) do
    with true <- Keyword.keyword?(config),
         nil <- Keyword.get(config, :database),
         nil <- url_database(Keyword.get(config, :url)),
         nil <- Config.env(config)["PGDATABASE"] do
      "no database: set :database (or a :url naming one, or PGDATABASE); nothing is connected"
    else
      _ -> nil
    end
  end

  defp url_database(url) when is_binary(url) do
    case URI.parse(url).path do
      "/" <> db when db != "" -> db
      _ -> nil
    end
  end

  defp url_database(_), do: nil

  # libcluster_postgres's default channel: the cookie, non-word characters replaced by `_`.
  @doc false
  def clean_cookie(cookie) when is_atom(cookie), do: cookie |> Atom.to_string() |> clean_cookie()
  def clean_cookie(cookie) when is_binary(cookie), do: String.replace(cookie, ~r/\W/u, "_")

  defp password(p) when is_binary(p), do: {:ok, p}
  defp password(p) when is_list(p), do: {:ok, List.to_string(p)}
  defp password(_), do: {:error, "a string"}

  defp channel(c) when is_binary(c) and c != "" do
    if String.contains?(c, <<0>>), do: {:error, "a non-empty string without NUL"}, else: {:ok, c}
  end

  defp channel(c) when is_atom(c) and c not in [nil, true, false], do: channel(Atom.to_string(c))
  defp channel(_), do: {:error, "a non-empty string"}

  defp ssl(v) when is_boolean(v), do: {:ok, v}
  defp ssl(:verify_full), do: {:ok, :verify_full}
  defp ssl(v) when is_list(v), do: if(Keyword.keyword?(v), do: {:ok, v}, else: ssl(:bad))
  defp ssl(_), do: {:error, "true, false, :verify_full or a keyword list of ssl options"}

  defp ssl_opts(v) when is_list(v), do: if(Keyword.keyword?(v), do: {:ok, v}, else: ssl_opts(:bad))
  defp ssl_opts(_), do: {:error, "a keyword list (verify, cacertfile, server_name_indication)"}

  defp parameters(v) when is_list(v) do
    v
    |> Config.collect(fn
      {k, val} when (is_atom(k) or is_binary(k)) and (is_binary(val) or is_atom(val) or is_integer(val)) ->
        {:ok, {to_string(k), to_string(val)}}

      _ ->
        :error
    end)
    |> case do
      {:ok, list} -> {:ok, list}
      :error -> {:error, "a keyword list of parameter names to strings"}
    end
  end

  defp parameters(_), do: {:error, "a keyword list of parameter names to strings"}

  defp url(u) when is_binary(u) do
    case URI.parse(u) do
      %URI{scheme: s, host: h} when s in ["postgres", "postgresql", "ecto"] and is_binary(h) and h != "" ->
        {:ok, u}

      _ ->
        {:error, "a postgres://user:password@host:port/database URL"}
    end
  end

  defp url(_), do: {:error, "a postgres://user:password@host:port/database URL"}

  # The URL's parts win over the keys, as with Ecto's :url.
  defp merge_url(%{url: nil} = opts), do: opts

  defp merge_url(%{url: url} = opts) do
    uri = URI.parse(url)
    {user, pass} = userinfo(uri.userinfo)
    db = uri.path && uri.path |> String.trim_leading("/") |> URI.decode()
    query = URI.decode_query(uri.query || "")

    ssl =
      case {query["ssl"], query["sslmode"]} do
        {"true", _} -> true
        {"false", _} -> false
        {_, mode} when mode in ["require", "prefer"] -> true
        {_, mode} when mode in ["verify-ca", "verify-full"] -> :verify_full
        {_, "disable"} -> false
        _ -> opts.ssl
      end

    %{
      opts
      | hostname: uri.host,
        port: uri.port || opts.port,
        username: user || opts.username,
        password: pass || opts.password,
        database: if(db in [nil, ""], do: opts.database, else: db),
        ssl: ssl
    }
  end

  defp userinfo(nil), do: {nil, nil}

  defp userinfo(info) do
    case String.split(info, ":", parts: 2) do
      [u, p] -> {URI.decode(u), URI.decode(p)}
      [u] -> {URI.decode(u), nil}
    end
  end

  # Postgrex's defaults from libpq's environment variables (`env`: Config.env/1, read once at start).
  defp env_defaults(opts, env) do
    port =
      opts.port ||
        case Integer.parse(env["PGPORT"] || "") do
          {p, ""} when p in 1..65535 -> p
          _ -> 5432
        end

    %{
      opts
      | hostname: opts.hostname || env["PGHOST"] || "localhost",
        port: port,
        username: opts.username || env["PGUSER"] || env["USER"],
        password: opts.password || env["PGPASSWORD"],
        database: opts.database || env["PGDATABASE"]
    }
  end

  # Postgrex's :socket is the socket file itself: `<dir>/.s.PGSQL.<port>`.
  defp socket!(%{socket: nil} = opts, _topology), do: opts

  defp socket!(%{socket: path} = opts, topology) do
    case Regex.run(~r/\A\.s\.PGSQL\.(\d+)\z/, Path.basename(path)) do
      [_, port] ->
        %{opts | socket_dir: Path.dirname(path), port: String.to_integer(port)}

      nil ->
        Config.invalid!(
          topology,
          :socket,
          "the path of a Postgres socket file (<dir>/.s.PGSQL.<port>)",
          path,
          "or use :socket_dir"
        )
    end
  end

  defp tls!(opts, topology) do
    {ssl, ssl_opts} =
      case opts.ssl do
        list when is_list(list) -> {true, Keyword.merge(opts.ssl_opts, list)}
        other -> {other, opts.ssl_opts}
      end

    for key <- [:cert, :key], Keyword.has_key?(ssl_opts, key) do
      Config.invalid!(
        topology,
        {:ssl_opts, key},
        "absent (DER client certificates are not supported; give PEM files as :certfile and :keyfile)",
        Keyword.get(ssl_opts, key)
      )
    end

    file = fn key ->
      case Keyword.get(ssl_opts, key) do
        nil -> nil
        f when is_binary(f) or is_list(f) -> to_string(f)
        other -> Config.invalid!(topology, {:ssl_opts, key}, "a file path", other)
      end
    end

    {certfile, keyfile} = {file.(:certfile), file.(:keyfile)}

    if is_nil(certfile) != is_nil(keyfile) do
      missing = if certfile, do: :keyfile, else: :certfile

      Config.invalid!(
        topology,
        {:ssl_opts, missing},
        "a file path",
        nil,
        ":certfile and :keyfile go together"
      )
    end

    verify =
      case Keyword.get(ssl_opts, :verify) do
        :verify_peer -> true
        :verify_none -> false
        nil -> ssl == :verify_full
        other -> Config.invalid!(topology, {:ssl_opts, :verify}, ":verify_peer or :verify_none", other)
      end

    cacertfile = file.(:cacertfile)

    sni =
      case Keyword.get(ssl_opts, :server_name_indication) do
        nil -> nil
        :disable -> nil
        n when is_binary(n) or is_list(n) -> to_string(n)
        other -> Config.invalid!(topology, {:ssl_opts, :server_name_indication}, "a host name", other)
      end

    Map.merge(opts, %{
      ssl: ssl != false,
      ssl_verify: verify,
      cacertfile: cacertfile,
      server_name: sni,
      certfile: certfile,
      keyfile: keyfile
    })
  end

  defp warn_unverified_once(topology) do
    key = {__MODULE__, :unverified_warned, topology}

    unless :persistent_term.get(key, false) do
      :persistent_term.put(key, true)

      Cluster.Logger.warn(
        topology,
        "Postgres: ssl: true without verify: :verify_peer encrypts but does not verify the server's " <>
          "certificate (as Postgrex); set ssl: :verify_full (with ssl_opts: [cacertfile: ...]) to verify it"
      )
    end
  end

  # The native task's options, built once; `discover/2` adds this node's name, which can change.
  defp native_opts(opts) do
    %{
      hostname: opts.hostname,
      socket_dir: opts.socket_dir,
      port: opts.port,
      username: opts.username,
      password: opts.password,
      database: opts.database,
      # TLS does not apply to Unix sockets (as in libpq): the server refuses it there.
      ssl: opts.ssl and is_nil(opts.socket_dir),
      ssl_verify: opts.ssl_verify,
      cacertfile: opts.cacertfile,
      server_name: opts.server_name,
      certfile: opts.certfile,
      keyfile: opts.keyfile,
      parameters: opts.parameters,
      channel_name: opts.channel_name,
      node: nil,
      heartbeat_interval: opts.heartbeat_interval,
      timeout: opts.connect_timeout,
      backoff_min: opts.backoff_min,
      backoff_max: opts.backoff_max,
      new_names_burst: opts.new_names_burst,
      new_names_per_minute: opts.new_names_per_minute
    }
  end

  @impl LibclusterRs.Discovery
  def discover(impl, tag) do
    node = own_node(impl)
    {handle, stats} = LibclusterRs.Native.postgres_start(tag, %{impl.native | node: node})
    if is_nil(node) and not impl.listen_only, do: await_name(tag)
    {{:stream, handle}, %{impl | stats: stats}}
  end

  # A node that is not distributed yet listens only; once it has a name, the stream is restarted
  # (`:node_named` → `:done`) so that it announces itself. A stale tag (the stream restarted
  # meanwhile) is ignored by the discovery.
  defp await_name(tag) do
    owner = self()

    watcher =
      LibclusterRs.NameWatcher.start(%{
        on_name: fn
          tag, name when is_binary(name) ->
            # A name that cannot be announced keeps the node listening only (own_node/1 warns).
            if LibclusterRs.NodeName.valid?(name) do
              send(owner, {:libcluster_rs, tag, :node_named})
              :stop
            end

          _tag, nil ->
            :ok
        end
      })

    LibclusterRs.NameWatcher.follow(watcher, tag, nil)
  end

  defp own_node(%{listen_only: true}), do: nil

  defp own_node(impl) do
    name = LibclusterRs.NameWatcher.current()

    cond do
      is_nil(name) ->
        nil

      LibclusterRs.NodeName.valid?(name) ->
        name

      true ->
        Cluster.Logger.warn(
          impl.topology,
          "Postgres: this node's name #{name} cannot be announced; listening only"
        )

        nil
    end
  end

  @impl LibclusterRs.Discovery
  # `mix libcluster.discover`: listen only, so the cluster's nodes do not dial the dry run's VM.
  def dry_run(impl), do: %{impl | listen_only: true}

  @impl LibclusterRs.Discovery
  def dry_run_empty(impl) do
    "no notification on channel #{inspect(impl.channel_name)} of database #{inspect(impl.database)} " <>
      "within the timeout (nodes announce every #{impl.heartbeat_interval} ms)"
  end

  @impl LibclusterRs.Discovery
  def handle_event({:heartbeat, name, _trusted}, impl) do
    case node_atom(name, impl) do
      {:ok, node} -> {[{:seen, [node], [trusted: false]}], impl}
      :dropped -> {[], %{impl | atom_cap_dropped: impl.atom_cap_dropped + 1}}
    end
  end

  def handle_event(:node_named, impl), do: {[:done], impl}

  def handle_event({:connected, detail}, impl) do
    Cluster.Logger.info(impl.topology, "Postgres: " <> to_string(detail))
    {[], %{impl | connected_at: System.system_time(:millisecond)}}
  end

  def handle_event({:discovery_error, kind, message} = event, impl) do
    # The discovery warns on the first error of its streak only, and a stream of sightings never
    # ends that streak: an outage after a recovery is warned about here, once.
    if impl.connected_at != nil and impl.errors_seen > 0 do
      Cluster.Logger.warn(
        impl.topology,
        "Postgres: #{kind}: #{message}; keeping every connected node, reconnecting with backoff"
      )
    end

    {[LibclusterRs.Discovery.default_event(event)],
     %{impl | connected_at: nil, errors_seen: impl.errors_seen + 1}}
  end

  def handle_event(event, impl), do: {[LibclusterRs.Discovery.default_event(event)], impl}

  # Names were validated natively; a name that is already an atom is free, a new one spends one
  # atom of the VM-wide budget for names from untrusted sources (LibclusterRs.NodeName.untrusted_to_node/3).
  defp node_atom(name, impl) do
    case LibclusterRs.NodeName.untrusted_to_node(name, impl.max_new_atoms) do
      {:ok, node} ->
        {:ok, node}

      :invalid ->
        :dropped

      full ->
        level = if full == :full_first, do: :error, else: :debug

        log(
          level,
          impl.topology,
          "Postgres: new node name dropped at the VM's cap of atoms from " <>
            "untrusted names (max_new_atoms #{impl.max_new_atoms}); known nodes keep working"
        )

        :dropped
    end
  end

  defp log(:error, topology, text), do: Cluster.Logger.error(topology, text)
  defp log(_, topology, text), do: Cluster.Logger.debug(topology, text)

  @impl LibclusterRs.Discovery
  def status_extra(impl) do
    counters = if impl.stats, do: LibclusterRs.Native.postgres_stats(impl.stats), else: %{}

    counters =
      if impl.atom_cap_dropped > 0,
        do: Map.put(counters, :rejected_atom_cap, impl.atom_cap_dropped),
        else: counters

    %{
      connected: impl.connected_at != nil,
      connected_at: impl.connected_at,
      server:
        if(impl.socket_dir,
          do: "#{impl.socket_dir}/.s.PGSQL.#{impl.port}",
          else: "#{impl.hostname}:#{impl.port}"
        ),
      username: impl.username,
      database: impl.database,
      channel: impl.channel_name,
      ssl:
        cond do
          not impl.ssl or impl.socket_dir != nil -> false
          impl.ssl_verify -> :verified
          true -> :unverified
        end,
      counters: counters
    }
  end
end
