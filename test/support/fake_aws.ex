defmodule LibclusterRs.Test.FakeAWS do
  @moduledoc false
  # A fake EC2 + STS + IMDSv2 + container-credentials endpoint (test/support/fake_aws.py), run as a
  # port by the calling process (it exits when that process dies). It checks every signed request
  # with botocore (see the script). HTTPS (with a TestCA server certificate) and plain HTTP listen
  # on 127.0.0.1; EC2 at `/`, STS at `/sts`, IMDS at `/latest/...`, container credentials at
  # `/creds`.
  #
  #   fake = FakeAWS.start!(ca)          # ca: a TestCA
  #   FakeAWS.config(fake, instances: [...], region: "eu-west-1")
  #   FakeAWS.add_key(fake, "AKID", "secret", "token")
  #   FakeAWS.fault(fake, on: "ec2", status: 503, code: "RequestLimitExceeded")
  #   FakeAWS.log(fake)                  # [%{"kind" => "ec2", "sig_ok" => true, ...}]
  #
  # botocore comes from the venv `script/setup` makes (`_build/aws_venv`); `unavailable/0` says
  # why the tests cannot run when it is missing.

  alias LibclusterRs.Test.JSON

  defstruct [:port, :https, :http, host: "127.0.0.1"]

  @script Path.expand("fake_aws.py", __DIR__)

  def python do
    System.get_env("LIBCLUSTER_RS_AWS_PYTHON") ||
      Path.expand("../../_build/aws_venv/bin/python", __DIR__)
  end

  @doc "nil when botocore can be imported, else why not."
  def unavailable do
    py = python()

    cond do
      not File.exists?(py) ->
        "#{py} does not exist: run script/setup (it makes a venv with botocore from PyPI)"

      match?({_, 0}, System.cmd(py, ["-c", "import botocore"], stderr_to_stdout: true)) ->
        nil

      true ->
        "botocore cannot be imported by #{py}: run script/setup"
    end
  end

  # opts: `host:` the address to listen on (default "127.0.0.1", e.g. a netns bridge's gateway).
  def start!(ca \\ nil, opts \\ []) do
    host = Keyword.get(opts, :host, "127.0.0.1")
    args = if ca, do: [@script, "--cert", ca.cert, "--key", ca.key], else: [@script]

    port =
      Port.open({:spawn_executable, python()}, [
        :binary,
        {:packet, 4},
        :exit_status,
        args: args ++ ["--host", host]
      ])

    %{"https" => https, "http" => http} = recv!(port)
    %__MODULE__{port: port, https: https, http: http, host: host}
  end

  def https_url(%__MODULE__{https: p, host: h}, path \\ "/"), do: "https://#{h}:#{p}#{path}"
  def http_url(%__MODULE__{http: p, host: h}, path \\ "/"), do: "http://#{h}:#{p}#{path}"

  def config(fake, settings), do: call(fake, Map.put(Map.new(settings), :cmd, "config"))

  def add_key(fake, access_key, secret, token \\ nil),
    do: call(fake, %{cmd: "add_key", access_key: access_key, secret: secret, token: token})

  def fault(fake, fault), do: call(fake, Map.put(Map.new(fault), :cmd, "fault"))

  def log(fake, opts \\ []), do: call(fake, %{cmd: "log", clear: Keyword.get(opts, :clear, false)})

  def stop(%__MODULE__{port: port}) do
    if Port.info(port), do: Port.close(port)
    :ok
  end

  @doc "`n` running instances tagged `tags`, ids i-000..., private IPs 10.0.x.y."
  def instances(n, tags, opts \\ []) do
    for i <- 1..n//1 do
      %{
        id: "i-#{String.pad_leading(Integer.to_string(i), 6, "0")}",
        private_ip: Keyword.get(opts, :ip, fn i -> "10.0.#{div(i, 250)}.#{rem(i, 250) + 1}" end).(i),
        state: "running",
        tags: tags
      }
    end
  end

  defp call(%__MODULE__{port: port}, cmd) do
    Port.command(port, JSON.encode(cmd))
    recv!(port)
  end

  defp recv!(port) do
    receive do
      {^port, {:data, data}} ->
        {:ok, tokens, _} = :erl_scan.string(String.to_charlist(data))
        {:ok, term} = :erl_parse.parse_term(tokens)
        term

      {^port, {:exit_status, status}} ->
        raise "fake_aws.py exited with status #{status}"
    after
      15_000 -> raise "fake_aws.py did not answer"
    end
  end
end
