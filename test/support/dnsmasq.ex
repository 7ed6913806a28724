defmodule LibclusterRs.Test.Dnsmasq do
  @moduledoc false
  # A real DNS server for tests: Debian's dnsmasq, started on one address (127.0.0.1 by default)
  # and a high port, answering only from files this helper writes (`--no-resolv`, `--no-hosts`).
  # Names under the `local_domains` (default "test" and "local") that it does not know get
  # NXDOMAIN; any other name gets REFUSED.
  #
  # Records: `{:a, name, ip}`, `{:aaaa, name, ip}` (strings or tuples), `{:srv, name, target, port}`
  # (priority and weight 0), `{:cname, alias, target}`. A and AAAA live in an addn-hosts file that
  # `set_records/2` rewrites and reloads with SIGHUP; dnsmasq reads SRV and CNAME only at start,
  # so a change to those restarts the server on the same address and port. Only the dnsmasq this
  # helper started is ever signalled, by its PID.

  defstruct [:dir, :address, :port, :os_pid, :port_ref, local_domains: ["test", "local"], records: []]

  @type t :: %__MODULE__{}

  @doc "Starts dnsmasq with `records`. Options: `:address` (default \"127.0.0.1\"), `:port`."
  def start(records, opts \\ []) do
    dir = Path.join(System.tmp_dir!(), "lcrs-dnsmasq-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    # dnsmasq started as root drops to `nobody`, which must still read the files.
    File.chmod!(dir, 0o755)

    server = %__MODULE__{
      dir: dir,
      address: Keyword.get(opts, :address, "127.0.0.1"),
      port: Keyword.get(opts, :port),
      local_domains: Keyword.get(opts, :local_domains, ["test", "local"]),
      records: records
    }

    write_files!(server)
    launch(server, 5, server.port == nil)
  end

  @doc "`ip:port` of the server, as DNS strategies' `nameservers:` take it."
  def nameserver(%__MODULE__{address: a, port: p}), do: "#{a}:#{p}"

  @doc "Replaces the records: SIGHUP when only A/AAAA changed, a restart otherwise."
  def set_records(%__MODULE__{} = server, records) do
    restart? = static(records) != static(server.records)
    server = %{server | records: records}
    write_files!(server)

    if restart? do
      server |> stop() |> launch(5, false)
    else
      log = Path.join(server.dir, "log")
      before = count_reads(log)
      {_, 0} = System.cmd("kill", ["-HUP", Integer.to_string(server.os_pid)])
      wait_reloaded(log, before)
      server
    end
  end

  @doc "Stops the server (SIGTERM to its PID) and waits until it is gone. The files stay."
  def stop(%__MODULE__{os_pid: nil} = server), do: server

  def stop(%__MODULE__{os_pid: pid} = server) do
    System.cmd("kill", ["-TERM", Integer.to_string(pid)], stderr_to_stdout: true)
    wait_gone(pid, 100)
    %{server | os_pid: nil, port_ref: nil}
  end

  @doc "Starts a stopped server again on the same address and port."
  def restart(%__MODULE__{os_pid: nil} = server), do: launch(server, 20, false)

  @doc """
  Stops the server and removes its files. Also stops a dnsmasq that a restart started (the caller
  may hold an older struct): the PID in this server's own pid file, if that process is a
  dnsmasq running with this server's directory.
  """
  def cleanup(%__MODULE__{} = server) do
    stop(server)

    with {:ok, text} <- File.read(Path.join(server.dir, "dnsmasq.pid")),
         {pid, _} <- Integer.parse(String.trim(text)),
         {:ok, cmdline} <- File.read("/proc/#{pid}/cmdline"),
         true <- String.starts_with?(Path.basename(hd(String.split(cmdline, <<0>>))), "dnsmasq"),
         true <- String.contains?(cmdline, server.dir) do
      stop(%{server | os_pid: pid})
    end

    File.rm_rf!(server.dir)
    :ok
  end

  @doc "Asks the server directly (`:inet_res`), for assertions."
  def resolve(%__MODULE__{} = server, name, type) do
    {:ok, ip} = :inet.parse_address(to_charlist(server.address))

    :inet_res.lookup(to_charlist(name), :in, type, nameservers: [{ip, server.port}], timeout: 500, retry: 1)
  end

  ## Internals

  defp launch(_server, 0, _random_port?), do: raise("dnsmasq did not start")

  defp launch(server, tries, random_port?) do
    port = if random_port?, do: Enum.random(20_000..60_000), else: server.port
    server = %{server | port: port}

    args =
      [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=#{server.address}",
        "--port=#{port}",
        "--cache-size=0",
        "--addn-hosts=#{Path.join(server.dir, "hosts")}",
        "--conf-file=#{Path.join(server.dir, "records.conf")}",
        "--pid-file=#{Path.join(server.dir, "dnsmasq.pid")}",
        "--log-facility=#{Path.join(server.dir, "log")}"
      ] ++ Enum.map(server.local_domains, &"--local=/#{&1}/")

    ref =
      Port.open({:spawn_executable, System.find_executable("dnsmasq")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: args
      ])

    {:os_pid, os_pid} = Port.info(ref, :os_pid)
    server = %{server | os_pid: os_pid, port_ref: ref}

    if wait_ready(server, ref, 100) do
      server
    else
      stop(server)
      # The port was taken (or a fixed port is not free again yet): try again.
      unless random_port?, do: Process.sleep(100)
      launch(%{server | os_pid: nil}, tries - 1, random_port?)
    end
  end

  defp wait_ready(_server, _ref, 0), do: false

  defp wait_ready(server, ref, n) do
    receive do
      {^ref, {:exit_status, _}} -> false
    after
      0 ->
        case probe(server) do
          :ok ->
            true

          :error ->
            Process.sleep(20)
            wait_ready(server, ref, n - 1)
        end
    end
  end

  # Any answer (even NXDOMAIN) shows that it listens.
  defp probe(server) do
    {:ok, ip} = :inet.parse_address(to_charlist(server.address))

    case :inet_res.resolve(~c"probe.test", :in, :a, nameservers: [{ip, server.port}], timeout: 200, retry: 1) do
      {:ok, _} -> :ok
      {:error, :nxdomain} -> :ok
      {:error, {:nxdomain, _}} -> :ok
      {:error, {:refused, _}} -> :ok
      _ -> :error
    end
  end

  # After SIGHUP, dnsmasq re-reads the file; wait until the log says so.
  defp wait_reloaded(log, before) do
    deadline = System.monotonic_time(:millisecond) + 2_000
    do_wait_reloaded(log, before, deadline)
  end

  defp do_wait_reloaded(log, before, deadline) do
    cond do
      count_reads(log) > before -> :ok
      System.monotonic_time(:millisecond) > deadline -> :ok
      true -> Process.sleep(10) && do_wait_reloaded(log, before, deadline)
    end
  end

  defp count_reads(log) do
    case File.read(log) do
      {:ok, text} -> text |> String.split("read ") |> length()
      _ -> 0
    end
  end

  defp wait_gone(_pid, 0), do: :ok

  defp wait_gone(pid, n) do
    if File.exists?("/proc/#{pid}") and not zombie?(pid) do
      Process.sleep(20)
      wait_gone(pid, n - 1)
    else
      :ok
    end
  end

  defp zombie?(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} -> stat |> String.split(") ") |> List.last() |> String.starts_with?("Z")
      _ -> true
    end
  end

  defp static(records), do: records |> Enum.filter(&(elem(&1, 0) in [:srv, :cname])) |> Enum.sort()

  defp write_files!(server) do
    hosts =
      for {type, name, ip} <- server.records, type in [:a, :aaaa] do
        "#{ip_text(ip)} #{name}\n"
      end

    conf =
      for record <- server.records, record_type(record) in [:srv, :cname] do
        case record do
          {:srv, name, target, port} -> "srv-host=#{name},#{target},#{port},0,0\n"
          {:cname, alias, target} -> "cname=#{alias},#{target}\n"
        end
      end

    write!(Path.join(server.dir, "hosts"), hosts)
    write!(Path.join(server.dir, "records.conf"), conf)
  end

  defp record_type(record), do: elem(record, 0)

  defp write!(path, content) do
    tmp = path <> ".tmp"
    File.write!(tmp, content)
    File.chmod!(tmp, 0o644)
    File.rename!(tmp, path)
  end

  defp ip_text(ip) when is_tuple(ip), do: :inet.ntoa(ip) |> List.to_string()
  defp ip_text(ip), do: ip
end
