defmodule Cluster.Strategy.PostgresTest do
  # Against a real PostgreSQL (Debian's package), started here as a private cluster in a temp dir.
  # Async: the server is this module's, topology names are its own, logs are read per topology and
  # the dry runs take their turn on the application env (DiscoverRun).
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Test.{DiscoverRun, FakeDist, Peer, PostgresServer, TestCA}

  @moduletag timeout: 120_000
  @cpw "cluster pw"

  setup_all do
    unless PostgresServer.available?(), do: raise("PostgreSQL is not installed: run script/setup")
    ca = TestCA.shared!(ips: [{127, 0, 0, 1}])
    # the role "client" logs in with the test CA's client certificate (CN=client) only
    pg =
      PostgresServer.start!(
        tls: ca,
        hba: ["hostssl app client 127.0.0.1/32 cert", "local app cluster scram-sha-256"]
      )

    # registered before anything else can fail, so the server never outlives the module
    on_exit(fn -> PostgresServer.stop(pg) end)

    for sql <- [
          "CREATE DATABASE app",
          "REVOKE CONNECT ON DATABASE app FROM PUBLIC",
          "CREATE ROLE cluster LOGIN PASSWORD '#{@cpw}'",
          "GRANT CONNECT ON DATABASE app TO cluster",
          "CREATE ROLE noconnect LOGIN PASSWORD 'npw'",
          "CREATE ROLE nologin NOLOGIN PASSWORD 'xpw'",
          "CREATE ROLE client LOGIN",
          "GRANT CONNECT ON DATABASE app TO client"
        ],
        do: PostgresServer.psql!(pg, sql)

    %{pg: pg, ca: ca}
  end

  defp config(pg, extra) do
    Keyword.merge(
      [
        hostname: "127.0.0.1",
        port: pg.port,
        username: "cluster",
        password: @cpw,
        database: "app",
        heartbeat_interval: 300,
        backoff_min: 50,
        backoff_max: 300,
        connect_timeout: 3_000
      ],
      extra
    )
  end

  defp start_topology(pg, topology, extra, dist \\ FakeDist.new()) do
    state = %Cluster.Strategy.State{
      topology: topology,
      connect: {FakeDist, :connect, [dist]},
      disconnect: {FakeDist, :disconnect, [dist]},
      list_nodes: {FakeDist, :list_nodes, [dist]},
      config: config(pg, extra)
    }

    start_supervised!(Supervisor.child_spec({Cluster.Strategy.Postgres, [state]}, id: topology))
    dist
  end

  defp extra(topology), do: elem(Cluster.status(topology), 1).extra

  # Whether a session of the server has run `LISTEN "channel"` (and is idle after it).
  defp listening?(pg, channel) do
    PostgresServer.psql!(
      pg,
      "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"#{channel}\"' AND state = 'idle'"
    ) =~ ~r/^\s*[1-9]/m
  end

  describe "config" do
    # An empty environment unless the test gives one: the process's PG* variables do not matter.
    defp init(config),
      do:
        Cluster.Strategy.Postgres.init(%Cluster.Strategy.State{
          topology: :t,
          config: Keyword.put_new(config, :env, %{})
        })

    test "libcluster_postgres's keys and defaults" do
      {:ok, impl, opts} = init(database: "app", username: "u", hostname: "db", password: "p")
      assert opts[:prune] == false
      assert impl.heartbeat_interval == 5_000
      assert impl.port == 5432
      assert impl.channel_name == Cluster.Strategy.Postgres.clean_cookie(Node.get_cookie())
      assert Cluster.Strategy.Postgres.clean_cookie(:"a-b.c$d") == "a_b_c_d"
      refute impl.ssl

      {:ok, impl, _} =
        init(database: "app", username: "u", channel_name: "Chan", parameters: [application_name: "x"])

      assert impl.channel_name == "Chan"
      assert impl.parameters == [{"application_name", "x"}]
    end

    test "url, socket and ssl forms" do
      {:ok, impl, _} =
        init(url: "postgres://us%40r:p%3Aw@db.example:6543/my_db?sslmode=verify-full", username: "ignored")

      assert {impl.hostname, impl.port, impl.username, impl.password, impl.database} ==
               {"db.example", 6543, "us@r", "p:w", "my_db"}

      assert impl.ssl and impl.ssl_verify

      {:ok, impl, _} = init(database: "d", username: "u", socket: "/run/postgresql/.s.PGSQL.5433")
      assert {impl.socket_dir, impl.port} == {"/run/postgresql", 5433}

      log =
        capture_log(fn ->
          {:ok, impl, _} = init(database: "d", username: "u", ssl: true)
          assert impl.ssl and not impl.ssl_verify
        end)

      assert log =~ "does not verify"

      {:ok, impl, _} =
        init(
          database: "d",
          username: "u",
          ssl: true,
          ssl_opts: [verify: :verify_peer, cacertfile: ~c"/ca.pem"]
        )

      assert {impl.ssl_verify, impl.cacertfile} == {true, "/ca.pem"}
    end

    test "bad values raise an ArgumentError naming the key" do
      for {config, key} <- [
            {[database: "d", username: "u", port: 0], ":port"},
            {[database: "d", username: "u", heartbeat_interval: 0], ":heartbeat_interval"},
            {[database: "d", username: "u", ssl: :maybe], ":ssl"},
            {[database: "d", username: "u", ssl: true, ssl_opts: [certfile: "c.pem"]], ":keyfile"},
            {[database: "d", username: "u", ssl: true, ssl_opts: [cert: "der"]], ":cert"},
            {[database: "d", username: "u", ssl_opts: [verify: :yes]], ":verify"},
            {[database: "d", username: "u", url: "http://x/y"], ":url"},
            {[database: "d", username: "u", socket: "/tmp/sock"], ":socket"},
            {[database: "d", username: "u", parameters: [a: {1}]], ":parameters"},
            {[database: "d", username: "u", channel_name: ""], ":channel_name"}
          ] do
        error = assert_raise ArgumentError, fn -> init(config) end
        assert error.message =~ key, "#{inspect(config)}: #{error.message}"
      end

      assert_raise ArgumentError, ~r/expected :database to be a non-empty string, got: nil/, fn ->
        init(username: "u")
      end

      assert_raise ArgumentError, ~r/expected :username to be a non-empty string, got: nil/, fn ->
        init(database: "d")
      end

      assert_raise ArgumentError, ~r/expected :env to be a map/, fn -> init(database: "d", env: [1]) end
    end

    test "libpq's variables come from the environment map, read once at start; keys win" do
      env = %{
        "PGHOST" => "envhost",
        "PGPORT" => "6001",
        "PGUSER" => "envuser",
        "PGPASSWORD" => "envpw",
        "PGDATABASE" => "envdb"
      }

      {:ok, impl, _} = init(env: env)

      assert {impl.hostname, impl.port, impl.username, impl.password, impl.database} ==
               {"envhost", 6001, "envuser", "envpw", "envdb"}

      # The whole environment is not kept in the strategy's state.
      refute Map.has_key?(impl, :env)
      # The native options are built once, at init; discover/2 adds only this node's name.
      assert %{hostname: "envhost", port: 6001, database: "envdb", node: nil} = impl.native

      {:ok, impl, _} = init(env: env, hostname: "keyhost", database: "keydb")
      assert {impl.hostname, impl.database, impl.username} == {"keyhost", "keydb", "envuser"}

      # USER when PGUSER is unset; a PGPORT that is not a port falls back to 5432, as libpq.
      {:ok, impl, _} = init(env: %{"USER" => "login", "PGDATABASE" => "d", "PGPORT" => "x"})
      assert {impl.username, impl.port} == {"login", 5432}
    end

    test "no database anywhere: the topology boots, connects nothing and says why" do
      config = [username: "u", env: %{}]

      log =
        capture_log(fn ->
          start_supervised!(
            {Cluster.Supervisor, [[pg_nodb_cfg: [strategy: Cluster.Strategy.Postgres, config: config]]]}
          )

          status = status_until(:pg_nodb_cfg, &(&1.state == :invalid_config))
          assert status.last_error.message =~ "no database"
        end)

      assert log =~ "set :database"

      # PGDATABASE in the environment map is a database: no stand-in.
      assert %{start: {Cluster.Strategy.Postgres, :start_link, _}} =
               Cluster.Strategy.Postgres.child_spec([
                 %Cluster.Strategy.State{
                   topology: :pg_envdb,
                   config: [username: "u", env: %{"PGDATABASE" => "d"}]
                 }
               ])
    end
  end

  test "an outage after a recovery is warned about once (the discovery warns only on the first)" do
    {:ok, impl, _} =
      Cluster.Strategy.Postgres.init(%Cluster.Strategy.State{
        topology: :pg_outage_once,
        config: [database: "d", username: "u"]
      })

    log =
      capture_log(fn ->
        {[{:error, :io, "first"}], impl} =
          Cluster.Strategy.Postgres.handle_event({:discovery_error, :io, "first"}, impl)

        {[], impl} = Cluster.Strategy.Postgres.handle_event({:connected, "back"}, impl)
        {_, impl} = Cluster.Strategy.Postgres.handle_event({:discovery_error, :refused, "second"}, impl)
        {_, _} = Cluster.Strategy.Postgres.handle_event({:discovery_error, :refused, "third"}, impl)
      end)

    log = log |> String.split("\n") |> Enum.filter(&(&1 =~ "[libcluster:pg_outage_once]")) |> Enum.join("\n")
    refute log =~ "first"
    assert log =~ "refused: second"
    refute log =~ "third"
  end

  describe "against the server" do
    test "a psql session that NOTIFYs as a libcluster_postgres node gets connected; garbage is dropped and counted",
         %{pg: pg} do
      # libcluster_postgres sends the channel unquoted: Postgres folds it to lower case.
      start_topology(pg, :pg_psql, channel_name: "MixedCase")
      status_until(:pg_psql, & &1.extra.connected, 10_000)

      garbage = [
        "",
        "no_at_sign",
        "'); DROP TABLE x; --",
        "a@b@c",
        "name@-bad-",
        String.duplicate("a", 300) <> "@127.0.0.1",
        "pg_garbage_#{System.unique_integer([:positive])}@@h"
      ]

      for payload <- garbage do
        sql = "NOTIFY MixedCase, '#{String.replace(payload, "'", "''")}'"
        assert {_, 0} = PostgresServer.client_psql(pg, "cluster", @cpw, "app", sql)
      end

      assert {_, 0} =
               PostgresServer.client_psql(pg, "cluster", @cpw, "app", "NOTIFY MixedCase, 'old@127.0.0.1'")

      assert_receive {:connect, :"old@127.0.0.1"}, 5_000

      counters =
        eventually(fn ->
          c = extra(:pg_psql).counters
          c[:rejected_bad_name] == length(garbage) && c
        end)

      assert counters.reported == 1
      assert counters.connects == 1
      # the garbage made no atom
      assert_raise ArgumentError, fn -> String.to_existing_atom(List.last(garbage)) end
    end

    test "through the Unix socket (socket_dir, and Postgrex's socket)", %{pg: pg} do
      start_topology(pg, :pg_socket_dir, socket_dir: pg.data, channel_name: "sock")
      assert status_until(:pg_socket_dir, & &1.extra.connected, 10_000).extra.server =~ ".s.PGSQL.#{pg.port}"

      start_topology(pg, :pg_socket,
        socket: Path.join(pg.data, ".s.PGSQL.#{pg.port}"),
        port: 1,
        channel_name: "sock"
      )

      status_until(:pg_socket, & &1.extra.connected, 10_000)

      assert {_, 0} = PostgresServer.client_psql(pg, "cluster", @cpw, "app", "NOTIFY sock, 'sock@127.0.0.1'")
      assert_receive {:connect, :"sock@127.0.0.1"}, 5_000
    end

    test "new names are rate-limited; known names still go through", %{pg: pg} do
      start_topology(pg, :pg_limit, channel_name: "limited", new_names_burst: 2, new_names_per_minute: 0)
      status_until(:pg_limit, & &1.extra.connected, 10_000)
      base = System.unique_integer([:positive])

      sql = Enum.map_join(1..5, "; ", fn i -> "NOTIFY limited, 'lim#{base}_#{i}@127.0.0.1'" end)
      assert {_, 0} = PostgresServer.client_psql(pg, "cluster", @cpw, "app", sql)
      assert_receive {:connect, first}, 5_000
      assert_receive {:connect, second}, 5_000
      assert Enum.sort([first, second]) == [:"lim#{base}_1@127.0.0.1", :"lim#{base}_2@127.0.0.1"]

      counters =
        eventually(fn ->
          c = extra(:pg_limit).counters
          c[:rejected_rate_limited] == 3 && c
        end)

      assert counters.reported == 2
      refute_received {:connect, _}
    end

    test "auth failures say which role, password or grant is wrong (status and dry run)", %{pg: pg} do
      start_topology(pg, :pg_badpw, password: "wrong")
      start_topology(pg, :pg_noconnect, username: "noconnect", password: "npw")
      start_topology(pg, :pg_nologin, username: "nologin", password: "xpw")
      start_topology(pg, :pg_nodb, database: "missing_db")

      badpw = status_until(:pg_badpw, & &1.last_error, 10_000)
      assert badpw.last_error.kind == :unauthorized
      assert badpw.last_error.message =~ ~s(password of role "cluster")
      assert badpw.extra.connected == false

      noconnect = status_until(:pg_noconnect, & &1.last_error, 10_000)
      assert noconnect.last_error.kind == :forbidden
      assert noconnect.last_error.message =~ ~s(GRANT CONNECT ON DATABASE "app" TO "noconnect")

      nologin = status_until(:pg_nologin, & &1.last_error, 10_000)
      assert nologin.last_error.kind == :unauthorized
      assert nologin.last_error.message =~ ~s(ALTER ROLE "nologin" LOGIN)

      nodb = status_until(:pg_nodb, & &1.last_error, 10_000)
      assert nodb.last_error.kind == :not_found
      assert nodb.last_error.message =~ ~s(database "missing_db" does not exist)

      # the same through `mix libcluster.discover`

      DiscoverRun.configure!(
        pgdry: [
          strategy: Cluster.Strategy.Postgres,
          config: config(pg, username: "noconnect", password: "npw")
        ]
      )

      {status, out, _} = DiscoverRun.run(["pgdry", "--timeout", "3000"])
      assert status == 1, out
      assert out =~ ~s(GRANT CONNECT ON DATABASE "app" TO "noconnect")
    end

    test "the dry run listens only and prints the nodes it heard", %{pg: pg} do
      assert Cluster.Strategy.Postgres.dry_run(%{listen_only: false}).listen_only

      # a connect would reach this process as {:connect, node}
      DiscoverRun.configure!(
        pgdry_ok: [
          strategy: Cluster.Strategy.Postgres,
          config: config(pg, channel_name: "dryrun"),
          connect: LibclusterRs.Test.MFA.recorder(self(), :connect)
        ]
      )

      # announced once the dry run's session LISTENs, as a node's heartbeat would be
      notify = fn _task ->
        eventually(fn -> listening?(pg, "dryrun") end, 2_000)
        PostgresServer.client_psql(pg, "cluster", @cpw, "app", "NOTIFY dryrun, 'heard@127.0.0.1'")
      end

      {status, out, _} = DiscoverRun.run(["pgdry_ok", "--timeout", "2500"], notify)
      assert status == 0, out
      assert out =~ "heard@127.0.0.1"
      refute_received {:connect, _}
    end

    test "TLS: verified against the test CA, refused with another CA; the session is encrypted",
         %{pg: pg, ca: ca} do
      start_topology(pg, :pg_tls,
        ssl: :verify_full,
        ssl_opts: [cacertfile: ca.ca],
        parameters: [application_name: "pg_tls_check"]
      )

      assert status_until(:pg_tls, & &1.extra.connected, 10_000).extra.ssl == :verified

      assert PostgresServer.psql!(pg, """
             SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'pg_tls_check'
             """) =~ "t"

      start_topology(pg, :pg_tls_wrong, ssl: true, ssl_opts: [verify: :verify_peer, cacertfile: ca.other_ca])
      wrong = status_until(:pg_tls_wrong, & &1.last_error, 10_000)
      assert wrong.last_error.kind == :tls, inspect(wrong.last_error)
      refute wrong.extra.connected

      # cert authentication: the client certificate is the only credential
      start_topology(pg, :pg_tls_cert,
        username: "client",
        password: nil,
        ssl: :verify_full,
        ssl_opts: [cacertfile: ca.ca, certfile: ca.client_cert, keyfile: ca.client_key]
      )

      assert status_until(:pg_tls_cert, & &1.extra.connected, 10_000).last_error == nil

      start_topology(pg, :pg_tls_nocert,
        username: "client",
        password: nil,
        ssl: :verify_full,
        ssl_opts: [cacertfile: ca.ca]
      )

      nocert = status_until(:pg_tls_nocert, & &1.last_error, 10_000)
      assert nocert.last_error.kind == :unauthorized, inspect(nocert.last_error)
      assert nocert.last_error.message =~ "certificate", nocert.last_error.message
    end
  end

  describe "end to end with real BEAM nodes" do
    # The peers a test uses, started for it (by the test process: :peer links to its caller).
    defp peers(names) do
      peers =
        for name <- names do
          Peer.start("#{name}#{System.unique_integer([:positive])}", "127.0.0.1",
            args: [~c"-kernel", ~c"connect_all", ~c"false"]
          )
        end

      on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
      peers
    end

    setup %{pg: pg} do
      # A heartbeat far longer than the test: every announcement seen here is the one made at
      # (re)connect. The reconnect delay is 2-3 s, so a listener can be in place before it.
      config =
        config(pg, channel_name: "e2e", heartbeat_interval: 600_000, backoff_min: 2_500, backoff_max: 2_500)

      %{topology: [pg: [strategy: Cluster.Strategy.Postgres, config: config]]}
    end

    test "nodes connect through the strategy, and reconnect, re-LISTEN and re-announce after a server restart",
         %{pg: pg, topology: topology} do
      [{a, na}, {b, nb}, {c, nc}, {old, nold}] = peers(["pga", "pgb", "pgc", "pgold"])
      {:ok, _} = Peer.start_cluster(a, topology)
      status_a = fn -> Peer.call(a, Cluster, :status, [:pg]) |> elem(1) end
      eventually(fn -> status_a.().extra.connected end, 10_000)
      # b announces when it connects; a hears it and connects
      {:ok, _} = Peer.start_cluster(b, topology)
      eventually(fn -> Peer.nodes(a) == [nb] and Peer.nodes(b) == [na] end, 15_000)

      # a libcluster_postgres node announces with psql's NOTIFY (channel unquoted); both connect to it
      assert {_, 0} = PostgresServer.client_psql(pg, "cluster", @cpw, "app", "NOTIFY e2e, '#{nold}'")
      eventually(fn -> nold in Peer.nodes(a) and nold in Peer.nodes(b) end, 10_000)
      assert Enum.sort(Peer.nodes(old)) == Enum.sort([na, nb])
      assert status_a.().extra.counters.connects == 1
      assert status_a.().extra.counters.heartbeats_sent == 1

      PostgresServer.restart!(pg)

      # A listener in place before the strategies reconnect (2-3 s after the outage): it hears
      # both announce themselves again, without any heartbeat being due.
      listener =
        Task.async(fn ->
          PostgresServer.client_psql(pg, "cluster", @cpw, "app", ["LISTEN e2e", "SELECT pg_sleep(5)"])
        end)

      {out, 0} = Task.await(listener, 15_000)
      assert out =~ ~s(payload "#{na}"), out
      assert out =~ ~s(payload "#{nb}"), out

      # nothing was disconnected by the outage; a's error is in its status, and it is connected
      # again on a second session
      assert nb in Peer.nodes(a)

      sa =
        eventually(
          fn ->
            s = status_a.()
            s.extra.counters.connects == 2 && s
          end,
          10_000
        )

      assert sa.extra.connected
      assert sa.extra.counters.heartbeats_sent == 2
      assert sa.last_error.kind in [:io, :refused], inspect(sa.last_error)

      # c starts after the restart and announces once: a and b hear it only because they LISTEN again
      {:ok, _} = Peer.start_cluster(c, topology)
      eventually(fn -> nc in Peer.nodes(a) and nc in Peer.nodes(b) end, 15_000)
    end

    test "a node that is not distributed at start listens, and announces itself once it has a name",
         %{topology: topology} do
      [{a, _na}] = peers(["pga"])
      {:ok, _} = Peer.start_cluster(a, topology)
      paths = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)

      {:ok, late, :nonode@nohost} =
        :peer.start_link(%{
          connection: :standard_io,
          args: [~c"-setcookie", ~c"libcluster_rs_test", ~c"-kernel", ~c"connect_all", ~c"false"] ++ paths,
          wait_boot: 30_000
        })

      on_exit(fn -> Peer.stop(late) end)
      {:ok, _} = Peer.call(late, :application, :ensure_all_started, [:libcluster_rs])
      {:ok, _} = Peer.start_cluster(late, topology)
      status = fn -> Peer.call(late, Cluster, :status, [:pg]) |> elem(1) end
      eventually(fn -> status.().extra.connected end, 10_000)
      assert status.().extra.counters[:heartbeats_sent] == nil

      name = :"late#{System.unique_integer([:positive])}@127.0.0.1"
      {:ok, _} = Peer.call(late, Node, :start, [name, :longnames])
      eventually(fn -> name in Peer.nodes(a) end, 10_000)
      assert status.().extra.counters.heartbeats_sent == 1
    end
  end
end
