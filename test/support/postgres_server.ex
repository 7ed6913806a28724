defmodule LibclusterRs.Test.PostgresServer do
  @moduledoc false
  # A private PostgreSQL cluster for one test module: Debian's `postgresql` package (initdb,
  # pg_ctl, psql from /usr/lib/postgresql/<version>/bin), initialised in a fresh temp dir, on a
  # free loopback port, with its Unix socket in the data dir. initdb refuses root, so as root every
  # server command runs as the `postgres` user (`runuser`); otherwise as the current user.
  #
  #   pg = PostgresServer.start!(tls: %TestCA{}, hba: ["hostssl app client 127.0.0.1/32 cert"])
  #                                                   # both optional; TLS verifies client certs with the CA
  #   pg.port / pg.dir / pg.password (of the superuser `postgres`)
  #   PostgresServer.psql!(pg, "CREATE ROLE ...")
  #   PostgresServer.restart!(pg)                     # pg_ctl stop -m fast, then start, same port
  #   PostgresServer.stop(pg)                         # pg_ctl stop on this data dir only
  #
  # TCP accepts SCRAM passwords from 127.0.0.1 (TLS or not); the socket trusts `postgres` only.

  defstruct [:dir, :data, :port, :bin, :password, :user]

  @doc "The bin dir of the newest installed PostgreSQL, or nil."
  def bin_dir do
    "/usr/lib/postgresql/*/bin/initdb"
    |> Path.wildcard()
    |> Enum.sort_by(fn p -> p |> Path.dirname() |> Path.dirname() |> Path.basename() |> Integer.parse() end)
    |> List.last()
    |> case do
      nil -> nil
      initdb -> Path.dirname(initdb)
    end
  end

  def available?, do: bin_dir() != nil and (not root?() or System.find_executable("runuser") != nil)

  defp root?, do: System.get_env("USER") == "root" or match?({"0\n", 0}, System.cmd("id", ["-u"]))

  def start!(opts \\ []) do
    bin = bin_dir() || raise "PostgreSQL is not installed (apt-get install postgresql; script/setup does)"
    dir = Path.join(System.tmp_dir!(), "pg_test_#{System.unique_integer([:positive])}")
    data = Path.join(dir, "data")
    File.mkdir_p!(dir)
    user = if root?(), do: "postgres", else: System.get_env("USER")
    if root?(), do: {_, 0} = System.cmd("chown", ["postgres:postgres", dir])
    password = "pw#{System.unique_integer([:positive])}"
    pwfile = Path.join(dir, "pw")
    File.write!(pwfile, password)
    if root?(), do: {_, 0} = System.cmd("chown", ["postgres:postgres", pwfile])

    run!(bin, "initdb", [
      "-D",
      data,
      "-U",
      "postgres",
      "--pwfile",
      pwfile,
      "-A",
      "scram-sha-256",
      "--auth-local",
      "trust",
      "-E",
      "UTF8",
      "--no-sync"
    ])

    port = free_port()

    conf = [
      "listen_addresses = '127.0.0.1'",
      "port = #{port}",
      "unix_socket_directories = '#{data}'",
      "fsync = off",
      "synchronous_commit = off",
      "full_page_writes = off",
      "shared_buffers = 16MB",
      "max_connections = 40",
      "log_min_messages = warning"
    ]

    conf =
      case Keyword.get(opts, :tls) do
        nil ->
          conf

        ca ->
          for {src, dst} <- [{ca.cert, "server.crt"}, {ca.key, "server.key"}, {ca.ca, "root.crt"}] do
            File.cp!(src, Path.join(data, dst))
            File.chmod!(Path.join(data, dst), 0o600)
            if root?(), do: {_, 0} = System.cmd("chown", ["postgres:postgres", Path.join(data, dst)])
          end

          conf ++
            [
              "ssl = on",
              "ssl_cert_file = 'server.crt'",
              "ssl_key_file = 'server.key'",
              "ssl_ca_file = 'root.crt'"
            ]
      end

    File.write!(Path.join(data, "postgresql.auto.conf"), Enum.join(conf, "\n") <> "\n", [:append])

    hba = Enum.map_join(Keyword.get(opts, :hba, []), "", &(&1 <> "\n"))

    File.write!(Path.join(data, "pg_hba.conf"), """
    local all postgres trust
    #{hba}host all all 127.0.0.1/32 scram-sha-256
    """)

    pg = %__MODULE__{dir: dir, data: data, port: port, bin: bin, password: password, user: user}
    start_server!(pg)
    pg
  end

  defp start_server!(pg) do
    run!(pg.bin, "pg_ctl", ["-D", pg.data, "-l", Path.join(pg.dir, "log"), "-w", "-t", "30", "start"])
  end

  @doc "Stops the server of this data dir (fast shutdown: sessions are cut) and starts it again."
  def restart!(pg, pause_ms \\ 0) do
    stop_server(pg)
    Process.sleep(pause_ms)
    start_server!(pg)
  end

  @doc "Stops the server of this data dir only."
  def stop_server(pg) do
    _ = run(pg.bin, "pg_ctl", ["-D", pg.data, "-m", "fast", "-w", "-t", "30", "stop"])
    :ok
  end

  @doc "Stops the server and removes its directory."
  def stop(pg) do
    stop_server(pg)
    File.rm_rf!(pg.dir)
    :ok
  end

  @doc "Runs SQL as the superuser over the Unix socket; returns psql's output (unaligned, tuples only)."
  def psql!(pg, sql, db \\ "postgres") do
    case psql(pg, sql, db) do
      {out, 0} -> out
      {out, status} -> raise "psql exited #{status}: #{out}"
    end
  end

  def psql(pg, sql, db \\ "postgres") do
    run(pg.bin, "psql", [
      "-X",
      "-q",
      "-A",
      "-t",
      "-v",
      "ON_ERROR_STOP=1",
      "-h",
      pg.data,
      "-p",
      "#{pg.port}",
      "-U",
      "postgres",
      "-d",
      db,
      "-c",
      sql
    ])
  end

  @doc """
  A psql session that connects over TCP as `user`/`password` (as any client would) and runs `sql`,
  e.g. what a libcluster_postgres node sends: `NOTIFY cluster, 'app@10.0.0.1'`. `sql`: a statement
  or a list of them (one `-c` each).
  """
  def client_psql(pg, user, password, db, sql) do
    env = [{"PGPASSWORD", password}]
    # One -c per statement: each runs in its own transaction (a LISTEN takes effect at commit).
    commands = sql |> List.wrap() |> Enum.flat_map(&["-c", &1])

    System.cmd(
      Path.join(pg.bin, "psql"),
      [
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        "#{pg.port}",
        "-U",
        user,
        "-d",
        db | commands
      ],
      env: env,
      stderr_to_stdout: true
    )
  end

  defp run!(bin, cmd, args) do
    case run(bin, cmd, args) do
      {_, 0} -> :ok
      {out, status} -> raise "#{cmd} exited #{status}: #{out}"
    end
  end

  defp run(bin, cmd, args) do
    exe = Path.join(bin, cmd)

    if root?() do
      System.cmd("runuser", ["-u", "postgres", "--", exe | args], stderr_to_stdout: true, cd: "/")
    else
      System.cmd(exe, args, stderr_to_stdout: true)
    end
  end

  defp free_port do
    {:ok, s} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(s)
    :gen_tcp.close(s)
    port
  end
end
