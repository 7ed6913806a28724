defmodule Cluster.Strategy.EC2Test do
  # Against test/support/fake_aws.py: EC2, STS, IMDSv2 and a container-credentials endpoint on
  # 127.0.0.1 (EC2 and STS over HTTPS with a CA made here), where botocore recomputes every
  # request's SigV4 signature from the credentials the fake issued. The environment is injected
  # through the `env` key: nothing here reads or changes the test process's own environment.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Test.{DiscoverRun, FakeAWS, FakeDist, TestCA}

  case FakeAWS.unavailable() do
    nil -> :ok
    why -> @moduletag skip: "botocore is not available (#{why})"
  end

  @tag_name "cluster group"
  # A value with spaces and non-ASCII characters (encoded in the form body and the XML).
  @tag_value "web tier é ü 日本 & <x>"

  setup_all do
    ca = TestCA.shared!(ips: [{127, 0, 0, 1}])
    {:ok, ca: ca}
  end

  setup %{ca: ca} do
    fake = FakeAWS.start!(ca)
    on_exit(fn -> FakeAWS.stop(fake) end)

    FakeAWS.config(fake,
      region: "eu-west-1",
      instances:
        FakeAWS.instances(5, %{@tag_name => @tag_value, "Name" => "web"}) ++
          [
            %{id: "i-other", private_ip: "10.9.0.1", state: "running", tags: %{@tag_name => "other"}},
            %{id: "i-stopped", private_ip: "10.9.0.2", state: "stopped", tags: %{@tag_name => @tag_value}}
          ],
      page_size: 2
    )

    FakeAWS.add_key(fake, "AKIDSTATIC", "static/secret+key", "session-token-1")
    {:ok, fake: fake}
  end

  @names for i <- 1..5, do: "app@10.0.0.#{i + 1}"

  defp env(fake, ca, extra) do
    Map.merge(
      %{
        "AWS_REGION" => "eu-west-1",
        "AWS_ENDPOINT_URL_EC2" => FakeAWS.https_url(fake),
        "AWS_ENDPOINT_URL_STS" => FakeAWS.https_url(fake, "/sts"),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT" => FakeAWS.http_url(fake, ""),
        "AWS_CA_BUNDLE" => ca.ca
      },
      extra
    )
  end

  @static %{
    "AWS_ACCESS_KEY_ID" => "AKIDSTATIC",
    "AWS_SECRET_ACCESS_KEY" => "static/secret+key",
    "AWS_SESSION_TOKEN" => "session-token-1"
  }

  defp client(env, extra \\ %{}) do
    opts =
      Map.merge(
        %{
          env: env,
          tag_name: @tag_name,
          ip_type: :private,
          region: nil,
          ec2_endpoint: nil,
          sts_endpoint: nil,
          imds_endpoint: nil,
          ca_bundle: nil,
          request_timeout_ms: 2_000,
          imds_timeout_ms: 1_000,
          polling_interval_ms: 300
        },
        extra
      )

    {:ok, client} = LibclusterRs.Native.ec2_client(opts)
    client
  end

  defp poll_round(client, value \\ @tag_value, prefix \\ "app") do
    tag = make_ref()
    handle = LibclusterRs.Native.ec2_start(tag, client, value, prefix)
    assert_receive {:libcluster_rs, ^tag, event}, 8_000
    _ = handle
    event
  end

  defp ec2_requests(fake), do: fake |> FakeAWS.log() |> Enum.filter(&(&1["kind"] == "ec2"))

  describe "signing and pagination (verified by botocore)" do
    test "environment keys with a session token, over HTTPS, every page", %{fake: fake, ca: ca} do
      c = client(env(fake, ca, @static))
      assert poll_round(c) == {:nodes, @names}

      reqs = ec2_requests(fake)
      assert length(reqs) == 3
      assert Enum.map(reqs, & &1["page_start"]) == [0, 2, 4]

      for r <- reqs do
        assert r["sig_ok"] == true, inspect(r)
        assert r["tls"] == true
        assert r["session_token"] == true
        assert r["access_key"] == "AKIDSTATIC"
        assert "x-amz-security-token" in r["signed_headers"]

        assert r["filters"] == %{
                 ("tag:" <> @tag_name) => [@tag_value],
                 "instance-state-name" => ["running"]
               }
      end

      # The same client, public IPs: instances without one are skipped.
      FakeAWS.config(fake,
        instances: [
          %{id: "i-p", private_ip: "10.0.0.9", public_ip: "203.0.113.7", tags: %{@tag_name => @tag_value}},
          %{id: "i-q", private_ip: "10.0.0.8", tags: %{@tag_name => @tag_value}}
        ]
      )

      pub = client(env(fake, ca, @static), %{ip_type: :public})
      assert poll_round(pub) == {:nodes, ["app@203.0.113.7"]}
      # Without a prefix (for a user's ip_to_nodename) the IPs themselves.
      assert poll_round(c, @tag_value, nil) == {:nodes, ["10.0.0.8", "10.0.0.9"]}
    end

    test "a signature made with the wrong secret is refused by the fake (the check is real)", %{
      fake: fake,
      ca: ca
    } do
      c = client(env(fake, ca, %{@static | "AWS_SECRET_ACCESS_KEY" => "not/the+secret"}))
      assert {:discovery_error, :unauthorized, msg} = poll_round(c)
      assert msg =~ "AuthFailure" and msg =~ "ec2:DescribeInstances"
      assert [%{"sig_ok" => false, "sig_error" => "signature mismatch"}] = ec2_requests(fake)

      # A missing session token is refused too.
      c = client(env(fake, ca, Map.delete(@static, "AWS_SESSION_TOKEN")))
      assert {:discovery_error, :unauthorized, _} = poll_round(c)
    end

    test "web identity: STS AssumeRoleWithWebIdentity, a generated session name, cached, refreshed before expiry",
         %{fake: fake, ca: ca} do
      dir = Path.join(System.tmp_dir!(), "ec2_wi_#{System.unique_integer([:positive])}")
      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)
      token_file = Path.join(dir, "token")
      File.write!(token_file, "eyJ.web.identity\n")
      arn = "arn:aws:iam::123456789012:role/cluster"
      FakeAWS.config(fake, web_identity: %{token: "eyJ.web.identity", role_arn: arn}, sts_ttl: 3_600)

      c = client(env(fake, ca, %{"AWS_WEB_IDENTITY_TOKEN_FILE" => token_file, "AWS_ROLE_ARN" => arn}))
      assert poll_round(c) == {:nodes, @names}
      assert poll_round(c) == {:nodes, @names}

      log = FakeAWS.log(fake, clear: true)
      assert [sts] = Enum.filter(log, &(&1["kind"] == "sts"))
      assert sts["status"] == 200 and sts["tls"] == true
      assert sts["role_session_name"] =~ ~r/^libcluster-rs-\d+$/
      assert sts["signed"] == false
      ec2 = Enum.filter(log, &(&1["kind"] == "ec2"))
      assert length(ec2) == 6
      assert Enum.all?(ec2, &(&1["sig_ok"] and &1["session_token"] and &1["access_key"] == sts["issued"]))

      # Credentials that expire within the refresh margin (5 min) are fetched again each round.
      FakeAWS.config(fake, sts_ttl: 120)

      c =
        client(
          env(fake, ca, %{
            "AWS_WEB_IDENTITY_TOKEN_FILE" => token_file,
            "AWS_ROLE_ARN" => arn,
            "AWS_ROLE_SESSION_NAME" => "pod-1"
          })
        )

      assert poll_round(c) == {:nodes, @names}
      assert poll_round(c) == {:nodes, @names}
      stss = fake |> FakeAWS.log() |> Enum.filter(&(&1["kind"] == "sts"))
      assert length(stss) == 2
      assert Enum.all?(stss, &(&1["role_session_name"] == "pod-1"))

      # A refused web identity token: an error that says which role.
      File.write!(token_file, "expired")
      c = client(env(fake, ca, %{"AWS_WEB_IDENTITY_TOKEN_FILE" => token_file, "AWS_ROLE_ARN" => arn}))
      assert {:discovery_error, :http_status, msg} = poll_round(c)
      assert msg =~ "InvalidIdentityToken" and msg =~ arn
    end

    test "the container endpoint with its authorization token file", %{fake: fake, ca: ca} do
      dir = Path.join(System.tmp_dir!(), "ec2_ctr_#{System.unique_integer([:positive])}")
      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)
      File.write!(Path.join(dir, "token"), "Bearer pod-identity\n")
      FakeAWS.config(fake, container_token: "Bearer pod-identity")

      e =
        env(fake, ca, %{
          "AWS_CONTAINER_CREDENTIALS_FULL_URI" => FakeAWS.http_url(fake, "/creds/v1"),
          "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" => Path.join(dir, "token")
        })

      assert poll_round(client(e)) == {:nodes, @names}
      log = FakeAWS.log(fake)

      assert [%{"authorization" => "Bearer pod-identity", "issued" => key}] =
               Enum.filter(log, &(&1["kind"] == "container"))

      assert Enum.all?(Enum.filter(log, &(&1["kind"] == "ec2")), &(&1["sig_ok"] and &1["access_key"] == key))

      # The token given directly; a wrong one is refused.
      e = %{
        Map.delete(e, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        | "AWS_CONTAINER_CREDENTIALS_FULL_URI" => FakeAWS.http_url(fake, "/creds/v1")
      }

      assert {:discovery_error, :unauthorized, _} =
               poll_round(client(Map.put(e, "AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer wrong")))
    end

    test "IMDSv2: the region, the instance profile and this instance's own tag value", %{fake: fake, ca: ca} do
      FakeAWS.config(fake,
        instance_id: "i-000003",
        region: "ap-southeast-2",
        imds_role: "cluster-role"
      )

      e = fake |> env(ca, %{}) |> Map.delete("AWS_REGION")
      c = client(e)
      # nil: this instance's own value of the tag.
      assert poll_round(c, nil) == {:nodes, @names}

      assert LibclusterRs.Native.ec2_info(c)
             |> Map.take([:region, :instance_id, :tag_value, :instances, :pages]) ==
               %{
                 region: "ap-southeast-2",
                 instance_id: "i-000003",
                 tag_value: @tag_value,
                 instances: 5,
                 pages: 3
               }

      log = FakeAWS.log(fake, clear: true)
      imds = Enum.filter(log, &(&1["kind"] == "imds"))
      assert [%{"method" => "PUT", "ttl" => "21600"} | gets] = imds
      assert Enum.all?(gets, &(&1["method"] == "GET" and &1["status"] == 200))
      refute Enum.any?(log, &Map.get(&1, "imdsv1"))
      [own | pages] = Enum.filter(log, &(&1["kind"] == "ec2"))
      assert own["instance_ids"] == ["i-000003"] and own["sig_ok"]
      assert length(pages) == 3 and Enum.all?(pages, &(&1["sig_ok"] and &1["access_key"] =~ "ASIAIMDS"))

      # Cached: the next round asks IMDS nothing and does not look the tag up again.
      assert poll_round(c, nil) == {:nodes, @names}
      log = FakeAWS.log(fake)
      assert Enum.filter(log, &(&1["kind"] == "imds")) == []
      assert length(log) == 3
    end

    test "outside AWS, IMDS times out fast and the error says what to set", %{fake: fake, ca: ca} do
      # A listener that never answers: the connection is accepted by the kernel, nothing more.
      {:ok, silent} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, backlog: 16)
      {:ok, port} = :inet.port(silent)

      e =
        fake
        |> env(ca, %{"AWS_EC2_METADATA_SERVICE_ENDPOINT" => "http://127.0.0.1:#{port}"})
        |> Map.delete("AWS_REGION")

      t0 = System.monotonic_time(:millisecond)
      assert {:discovery_error, :timeout, msg} = poll_round(client(e))
      assert System.monotonic_time(:millisecond) - t0 < 3_000
      assert msg =~ "AWS_REGION" and msg =~ "IMDSv2"
      :gen_tcp.close(silent)
    end
  end

  describe "faults" do
    setup %{fake: fake, ca: ca} do
      {:ok, c: client(env(fake, ca, @static))}
    end

    test "401 AuthFailure and 403 UnauthorizedOperation name ec2:DescribeInstances", %{fake: fake, c: c} do
      FakeAWS.fault(fake, on: "ec2", status: 401, code: "AuthFailure", message: "bad credentials")
      assert {:discovery_error, :unauthorized, msg} = poll_round(c)
      assert msg =~ "ec2:DescribeInstances" and msg =~ "AuthFailure"

      FakeAWS.fault(fake,
        on: "ec2",
        status: 403,
        code: "UnauthorizedOperation",
        message: "You are not authorized"
      )

      assert {:discovery_error, :forbidden, msg} = poll_round(c)
      assert msg =~ "lack the IAM permission ec2:DescribeInstances"
    end

    test "500, a truncated or garbage 200, and a failed second page are errors, never a short list", %{
      fake: fake,
      c: c
    } do
      FakeAWS.fault(fake, on: "ec2", status: 500, code: "InternalError")
      assert {:discovery_error, :http_status, _} = poll_round(c)

      FakeAWS.fault(fake, on: "ec2", body: "truncate")
      assert {:discovery_error, :malformed, msg} = poll_round(c)
      assert msg =~ "DescribeInstancesResponse"

      FakeAWS.fault(fake, on: "ec2", body: "<html>maintenance</html>")
      assert {:discovery_error, :malformed, _} = poll_round(c)

      for fault <- [[status: 500], [body: "truncate"]] do
        FakeAWS.fault(fake, on: "ec2", pass: true)
        FakeAWS.fault(fake, [on: "ec2"] ++ fault)
        assert {:discovery_error, _, msg} = poll_round(c)
        assert msg =~ "page 2"
      end

      assert poll_round(c) == {:nodes, @names}
    end

    test "a slow answer times out", %{fake: fake, ca: ca} do
      c = client(env(fake, ca, @static), %{request_timeout_ms: 300})
      FakeAWS.fault(fake, on: "ec2", delay_ms: 1_000)
      assert {:discovery_error, :timeout, _} = poll_round(c)
    end

    test "RequestLimitExceeded backs off without requests, then recovers within a few intervals", %{
      fake: fake,
      c: c
    } do
      FakeAWS.fault(fake,
        on: "ec2",
        status: 503,
        code: "RequestLimitExceeded",
        message: "Request limit exceeded."
      )

      assert {:discovery_error, :http_status, msg} = poll_round(c)
      assert msg =~ "RequestLimitExceeded"
      assert LibclusterRs.Native.ec2_info(c).throttled == 1
      n = length(ec2_requests(fake))

      # At once: held back, no request.
      assert {:discovery_error, :http_status, msg} = poll_round(c)
      assert msg =~ "next request in"
      assert length(ec2_requests(fake)) == n

      # The gate is one polling interval (300 ms here, ±20 %).
      eventually(fn -> poll_round(c) == {:nodes, @names} end, 2_000)
      assert LibclusterRs.Native.ec2_info(c).throttled == 0
    end
  end

  describe "the strategy" do
    defp state(dist, fake, ca, config) do
      %Cluster.Strategy.State{
        topology: :"ec2_#{System.unique_integer([:positive])}",
        connect: {FakeDist, :connect, [dist]},
        disconnect: {FakeDist, :disconnect, [dist]},
        list_nodes: {FakeDist, :list_nodes, [dist]},
        config:
          Keyword.merge([ec2_tagname: @tag_name, polling_interval: 150, env: env(fake, ca, @static)], config)
      }
    end

    test "funs for the tag value and the names; errors keep nodes; a removed tag prunes", %{
      fake: fake,
      ca: ca
    } do
      test = self()
      all = for i <- 1..5, do: :"web@10.0.0.#{i + 1}"
      dist = FakeDist.new(up: all)

      config = [
        ec2_tagvalue: fn name ->
          send(test, {:tagvalue_called, name})
          @tag_value
        end,
        app_prefix: "web",
        ip_to_nodename: fn ips, prefix ->
          send(test, {:ips, ips})
          Enum.map(ips, &:"#{prefix}@#{&1}")
        end
      ]

      start_supervised!({Cluster.Strategy.EC2, [state(dist, fake, ca, config)]})
      assert_receive {:tagvalue_called, @tag_name}, 5_000
      assert_receive {:ips, ips}, 5_000
      assert Enum.all?(ips, &is_binary/1)
      eventually(fn -> FakeDist.up(dist) == all end, 5_000)

      # Failing rounds: nothing is disconnected.
      for f <- [[status: 500], [body: "truncate"], [status: 403, code: "UnauthorizedOperation"]],
          do: FakeAWS.fault(fake, [on: "ec2"] ++ f)

      eventually(fn -> Enum.count(FakeAWS.log(fake), &(&1["fault"] != nil)) == 3 end, 8_000)
      refute Enum.any?(FakeDist.calls(dist), &match?({:disconnect, _, _}, &1))

      # One instance loses the tag: pruned.
      FakeAWS.config(fake, instances: FakeAWS.instances(4, %{@tag_name => @tag_value}))

      eventually(
        fn -> Enum.any?(FakeDist.calls(dist), &match?({:disconnect, :"web@10.0.0.6", _}, &1)) end,
        8_000
      )
    end

    test "an ip_to_nodename that raises or hangs fails its round, contained", %{fake: fake, ca: ca} do
      dist = FakeDist.new()
      counter = :counters.new(1, [])

      config = [
        ec2_tagvalue: @tag_value,
        fun_timeout: 200,
        ip_to_nodename: fn _ips, _prefix ->
          :counters.add(counter, 1, 1)

          case :counters.get(counter, 1) do
            1 -> raise "boom"
            2 -> Process.sleep(:infinity)
            _ -> [:"app@10.0.0.2", "app@10.0.0.3", "not a node", 42]
          end
        end
      ]

      st = state(dist, fake, ca, config)
      pid = start_supervised!({Cluster.Strategy.EC2, [st]})
      # The raising round is an error of that round, naming the fun and the exception.
      status_until(st.topology, fn s ->
        match?(%{last_error: %{message: "the :ip_to_nodename fun failed" <> _}}, s)
      end)
      |> then(&assert(&1.last_error.message =~ "boom"))

      eventually(fn -> :counters.get(counter, 1) >= 3 end, 8_000)

      eventually(
        fn ->
          Enum.sort(for {:connect, n, _} <- FakeDist.calls(dist), do: n) |> Enum.uniq() == [
            :"app@10.0.0.2",
            :"app@10.0.0.3"
          ]
        end,
        5_000
      )

      assert Process.alive?(pid)
    end

    test "Cluster.status and the dry run say ec2:DescribeInstances is missing", %{fake: fake, ca: ca} do
      for _ <- 1..20,
          do:
            FakeAWS.fault(fake,
              on: "ec2",
              status: 403,
              code: "UnauthorizedOperation",
              message: "You are not authorized to perform this operation."
            )

      topology = :"ec2_status_#{System.unique_integer([:positive])}"

      config = [
        ec2_tagname: @tag_name,
        ec2_tagvalue: @tag_value,
        polling_interval: 5_000,
        env: env(fake, ca, @static)
      ]

      start_supervised!(
        {Cluster.Supervisor, [[{topology, [strategy: Cluster.Strategy.EC2, config: config]}]]}
      )

      status = status_until(topology, fn s -> match?(%{last_error: %{kind: :forbidden}}, s) end)

      assert status.last_error.message =~ "ec2:DescribeInstances"
      assert status.extra.ec2.tag_name == @tag_name
      assert status.extra.ec2.credentials =~ "environment"

      DiscoverRun.configure!(ec2: [strategy: Cluster.Strategy.EC2, config: config])
      {status, out, _ms} = DiscoverRun.run(["ec2"])
      assert status != 0
      assert out =~ "ec2:DescribeInstances", out
    end

    test "the dry run lists the nodes and connects none", %{fake: fake, ca: ca} do
      config = [ec2_tagname: @tag_name, ec2_tagvalue: @tag_value, env: env(fake, ca, @static)]
      # a connect would reach this process as {:connect, node}
      connect = LibclusterRs.Test.MFA.recorder(self(), :connect)
      DiscoverRun.configure!(ec2: [strategy: Cluster.Strategy.EC2, config: config, connect: connect])
      {status, out, _ms} = DiscoverRun.run(["ec2"])
      assert status == 0, out
      for n <- @names, do: assert(out =~ n)
      refute_received {:connect, _}

      FakeAWS.config(fake, instances: [])
      {status, out, _ms} = DiscoverRun.run(["ec2"])
      assert status != 0
      assert out =~ "no running instance with the tag"
    end

    test "config is validated, naming the key or the variable", %{fake: fake, ca: ca} do
      init = fn config -> Cluster.Strategy.EC2.init(%Cluster.Strategy.State{topology: :t, config: config}) end
      e = env(fake, ca, @static)
      assert_raise ArgumentError, ~r/:ec2_tagname/, fn -> init.(env: e) end
      assert_raise ArgumentError, ~r/:ip_type/, fn -> init.(ec2_tagname: "a", ip_type: :elastic, env: e) end

      assert_raise ArgumentError, ~r/:ec2_tagvalue/, fn ->
        init.(ec2_tagname: "a", ec2_tagvalue: 42, env: e)
      end

      assert_raise ArgumentError, ~r/:ip_to_nodename/, fn ->
        init.(ec2_tagname: "a", ip_to_nodename: fn x -> x end, env: e)
      end

      assert_raise ArgumentError, ~r/:ec2_endpoint/, fn ->
        init.(ec2_tagname: "a", ec2_endpoint: "ec2.local", env: e)
      end

      assert_raise ArgumentError, ~r/AWS_ENDPOINT_URL_EC2/, fn ->
        init.(ec2_tagname: "a", env: %{e | "AWS_ENDPOINT_URL_EC2" => "localhost:4566"})
      end

      assert_raise ArgumentError, ~r/AWS_CA_BUNDLE/, fn ->
        init.(ec2_tagname: "a", env: %{e | "AWS_CA_BUNDLE" => "/nonexistent/ca.pem"})
      end

      bad_pem = Path.join(ca.dir, "not.pem")
      File.write!(bad_pem, "not a certificate")

      assert_raise ArgumentError, ~r/AWS_CA_BUNDLE/, fn ->
        init.(ec2_tagname: "a", env: %{e | "AWS_CA_BUNDLE" => bad_pem})
      end

      assert {:ok, impl, opts} = init.(ec2_tagname: "a", show_debug: true, env: e)
      assert impl.app_prefix == "app" and impl.ip_type == :private and opts[:interval] == 5_000
      # An empty tag value is a valid EC2 tag value.
      assert {:ok, %{ec2_tagvalue: ""}, _} = init.(ec2_tagname: "a", ec2_tagvalue: "", env: e)
    end

    test "a nil tag name, tag value or prefix boots and connects nothing, as in libcluster_ec2", %{
      fake: fake,
      ca: ca
    } do
      import ExUnit.CaptureLog

      for key <- [:ec2_tagname, :ec2_tagvalue, :app_prefix] do
        topology = :"ec2_nil_#{System.unique_integer([:positive])}"
        config = Keyword.put([ec2_tagname: @tag_name, env: env(fake, ca, @static)], key, nil)

        log =
          capture_log(fn ->
            {:ok, sup} =
              Cluster.Supervisor.start_link([[{topology, [strategy: Cluster.Strategy.EC2, config: config]}]])

            assert {:ok, %{state: :invalid_config, last_error: %{message: message}}} =
                     Cluster.status(topology)

            assert message =~ inspect(key)
            Supervisor.stop(sup)
          end)

        assert [_once] = Regex.scan(~r/\[error\].*connects no node/, log)
      end

      assert ec2_requests(fake) == []
      spec = [strategy: Cluster.Strategy.EC2, config: [env: env(fake, ca, @static)]]
      assert {:error, reason} = start_supervised({Cluster.Supervisor, [[{:ec2_missing, spec}]]})
      assert inspect(reason) =~ "ec2_tagname"
    end
  end
end
