defmodule LibclusterRs.Test.TestCA do
  @moduledoc false
  # A certificate authority made for one test run (openssl CLI, EC P-256, valid 2 days), with a
  # server certificate for the given IPs (and `localhost`), a client certificate for mutual TLS,
  # and a second, unrelated CA for "wrong CA" cases. Every file is PEM in a fresh temp dir.
  #
  #   ca = TestCA.make!(ips: [{127, 0, 0, 1}])
  #   ca.ca / ca.cert / ca.key / ca.client_cert / ca.client_key / ca.other_ca   (paths)
  #   TestCA.remove(ca)
  #
  # Tests use `shared!/1`: one CA per run and per set of IPs and host names (six openssl calls
  # each), made by the first test that asks, kept read-only and removed after the suite
  # (test_helper.exs). A test that changes a file copies it first (FakeKube copies ca.crt).

  defstruct [:dir, :ca, :cert, :key, :client_cert, :client_key, :other_ca]

  def make!(opts \\ []) do
    dir = Path.join(System.tmp_dir!(), "test_ca_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    run = fn args -> {_, 0} = System.cmd("openssl", args, cd: dir, stderr_to_stdout: true) end
    ips = Keyword.get(opts, :ips, [{127, 0, 0, 1}])
    names = Keyword.get(opts, :hostnames, ["localhost"])
    san = Enum.map(ips, &"IP:#{:inet.ntoa(&1)}") ++ Enum.map(names, &"DNS:#{&1}")

    File.write!(
      Path.join(dir, "server.ext"),
      "subjectAltName=#{Enum.join(san, ",")}\nbasicConstraints=CA:FALSE\n"
    )

    File.write!(Path.join(dir, "client.ext"), "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")

    for ca <- ["ca", "other-ca"] do
      run.(~w(req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2
              -subj /CN=#{ca} -keyout #{ca}.key -out #{ca}.crt))
    end

    for {who, cn} <- [{"server", "server"}, {"client", "client"}] do
      run.(~w(req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=#{cn}
              -keyout #{who}.key -out #{who}.csr))

      run.(~w(x509 -req -in #{who}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2
              -extfile #{who}.ext -out #{who}.crt))
    end

    file = &Path.join(dir, &1)

    %__MODULE__{
      dir: dir,
      ca: file.("ca.crt"),
      cert: file.("server.crt"),
      key: file.("server.key"),
      client_cert: file.("client.crt"),
      client_key: file.("client.key"),
      other_ca: file.("other-ca.crt")
    }
  end

  def remove(%__MODULE__{dir: dir}), do: File.rm_rf!(dir)

  @doc """
  The run's CA for these `ips` and `hostnames` (the options of `make!/1`): made once, whichever
  test (of whichever async module) asks first, the others wait for it.
  """
  def shared!(opts \\ []) do
    key = {__MODULE__, Enum.sort(Keyword.get(opts, :ips, [{127, 0, 0, 1}])), Keyword.get(opts, :hostnames)}

    case :persistent_term.get(key, nil) do
      nil ->
        # the first makers of one key take turns (LibclusterRs.Test.Lock, started by test_helper.exs)
        LibclusterRs.Test.Lock.hold(key, fn ->
          with nil <- :persistent_term.get(key, nil) do
            ca = make!(opts)
            :persistent_term.put(key, ca)
            ca
          end
        end)

      ca ->
        ca
    end
  end

  @doc "Removes the CAs `shared!/1` made (after the suite)."
  def remove_shared do
    for {{__MODULE__, _, _} = key, ca} <- :persistent_term.get() do
      remove(ca)
      :persistent_term.erase(key)
    end

    :ok
  end
end
