defmodule Cluster.Strategy.ConsulTest do
  # Against FakeConsul (HTTPS with a CA and a client certificate made for the run, real blocking
  # queries): libcluster_consul's endpoints and names, blocking queries with Consul's index rules,
  # faults that never prune, ACL messages, the consul CLI's environment, and config validation.
  # Async: the environment is the strategy's `env` input, and the dry run takes its turn on the
  # application env (DiscoverRun).
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually

  alias Cluster.Strategy.Consul
  alias LibclusterRs.Test.{DiscoverRun, FakeConsul, FakeDist, HttpFake, TestCA}

  @health Cluster.Strategy.Consul.Health
  @catalog Cluster.Strategy.Consul.Catalog
  @agent Cluster.Strategy.Consul.Agent
  @multisite Cluster.Strategy.Consul.Multisite

  setup_all do
    ca = TestCA.shared!(ips: [{127, 0, 0, 1}])
    {:ok, ca: ca}
  end

  defp start_consul(ca, opts \\ []) do
    consul = FakeConsul.start!([tls: ca, client_ca: ca.ca] ++ opts)
    on_exit(fn -> FakeConsul.stop(consul) end)
    consul
  end

  # The native options as the strategy builds them (over TLS with the test CA and client cert).
  defp native(consul, ca, config) do
    config =
      Keyword.merge(
        [
          base_url: consul.url,
          ca_file: ca.ca,
          cert_file: ca.client_cert,
          key_file: ca.client_key,
          node_basename: "app",
          service: [name: "web"],
          list_using: [@health],
          blocking_min_interval: 20,
          request_timeout: 2_000
        ],
        config
      )

    {:ok, impl, _} = Consul.init(%Cluster.Strategy.State{topology: :consul, config: config})
    impl.native
  end

  defp start_native(native) do
    tag = make_ref()
    handle = LibclusterRs.Native.consul_start(tag, native)
    on_exit(fn -> LibclusterRs.Native.discovery_stop(handle) end)
    {tag, handle}
  end

  defp web(ips), do: for({ip, i} <- Enum.with_index(ips), do: FakeConsul.instance("n#{i}", ip))

  describe "one poll (blocking_queries: false)" do
    test "Health, Catalog and Agent name nodes as libcluster_consul does, over HTTPS with a client certificate",
         %{ca: ca} do
      consul = start_consul(ca)

      FakeConsul.put(consul, "web", [
        FakeConsul.instance("n1", "10.0.0.1", id: "web-1"),
        FakeConsul.instance("n2", "10.0.0.2", service_address: "10.1.0.2", status: "critical", id: "web-2")
      ])

      cases = [
        {[list_using: [@health]], ["app@10.0.0.1", "app@10.1.0.2"]},
        {[list_using: [{@health, passing: true}]], ["app@10.0.0.1"]},
        {[list_using: [{@health, expected: :host}]], ["app@10.1.0.2", "app@n1"]},
        {[list_using: [@catalog]], ["app@10.0.0.1", "app@10.0.0.2"]},
        {[list_using: [{@catalog, expected: :host}]], ["app@n1", "app@n2"]},
        # the agent answers 503 (one instance critical) with the list: read, not a failure
        {[list_using: [@agent]], ["app@10.1.0.2"]},
        {[list_using: [{@agent, service: [id: "web-2"]}]], ["app@10.1.0.2"]}
      ]

      for {config, expected} <- cases do
        {tag, _} =
          start_native(native(consul, ca, [blocking_queries: false, access_token: "s3cr3t"] ++ config))

        assert_receive {:libcluster_rs, ^tag, {:nodes, ^expected}}, 5_000
      end

      # (the first agent instance has no service address: no valid node name, dropped, not an atom "app@")
      for req <- FakeConsul.requests(consul), do: assert(req.headers["x-consul-token"] == "s3cr3t")
      paths = consul |> FakeConsul.requests() |> Enum.map(& &1.path) |> Enum.uniq()

      assert paths == [
               "/v1/health/service/web",
               "/v1/catalog/service/web",
               "/v1/agent/health/service/name/web",
               "/v1/agent/service/web-2"
             ]
    end

    test "filter and dc are sent; Multisite asks every datacenter, and a failing one is partial",
         %{ca: ca} do
      consul = start_consul(ca, datacenters: ["dc1", "dc2"])
      FakeConsul.put(consul, "web", [FakeConsul.instance("a", "10.0.0.1", tags: ["canary"])], dc: "dc1")
      FakeConsul.put(consul, "web", [FakeConsul.instance("b", "10.0.0.2")], dc: "dc2")

      {tag, _} =
        start_native(
          native(consul, ca,
            blocking_queries: false,
            dc: "dc2",
            list_using: [{@health, filter: ~s("canary" in Service.Tags), dc: "dc1"}, @catalog]
          )
        )

      assert_receive {:libcluster_rs, ^tag, {:nodes, ["app@10.0.0.1", "app@10.0.0.2"]}}, 5_000
      [h, c] = FakeConsul.requests(consul) |> Enum.sort_by(& &1.path, :desc)
      assert h.query == %{"dc" => "dc1", "filter" => ~s("canary" in Service.Tags)}
      assert c.query == %{"dc" => "dc2"}

      multisite = [
        list_using: [{@multisite, datacenters: :all, endpoints: [@health]}],
        blocking_queries: false
      ]

      {tag, _} = start_native(native(consul, ca, multisite))
      assert_receive {:libcluster_rs, ^tag, {:nodes, ["app@10.0.0.1", "app@10.0.0.2"]}}, 5_000

      # a datacenter that Consul cannot reach: the other's nodes come as a partial answer
      multisite = [
        list_using: [{@multisite, datacenters: ["dc1", "dc3"], endpoints: [@health]}],
        blocking_queries: false
      ]

      {tag, _} = start_native(native(consul, ca, multisite))
      assert_receive {:libcluster_rs, ^tag, {:partial_nodes, ["app@10.0.0.1"], {:http_status, msg}}}, 5_000
      assert msg =~ "No path to datacenter"
    end

    test "faults are errors, never zero nodes: 401, 403, 429, 500, malformed, slow, wrong CA, no client cert",
         %{ca: ca} do
      consul = start_consul(ca)
      FakeConsul.put(consul, "web", web(["10.0.0.1"]))
      http = FakeConsul.http(consul)
      opts = native(consul, ca, blocking_queries: false, request_timeout: 500)

      faults = [
        {{401, [], "unauthorized"}, :unauthorized, "token"},
        {{403, [], "Permission denied"}, :forbidden, ~s(service:read on "web" and node:read)},
        {{429, [{"retry-after", "3"}], "slow down"}, :http_status, "retrying after 3 s"},
        {{500, [], "boom"}, :http_status, "500"},
        {{200, [], "<html>not consul</html>"}, :malformed, "not what this endpoint returns"},
        {{200, [{"content-type", "application/json"}], ~s({"Node": "n1"})}, :malformed,
         "/v1/health/service/web"},
        {{:delay, 1_500}, :timeout, "reachable"}
      ]

      for {fault, kind, text} <- faults do
        HttpFake.fault(http, fault)
        {tag, _} = start_native(opts)
        assert_receive {:libcluster_rs, ^tag, {:discovery_error, ^kind, msg}}, 5_000
        assert msg =~ text
      end

      {tag, _} = start_native(%{opts | ca_file: ca.other_ca})
      assert_receive {:libcluster_rs, ^tag, {:discovery_error, :tls, msg}}, 5_000
      assert msg =~ "ca_file"

      # a missing CA file or client key: an error that names the key (the files are read at each
      # start of the task, so a secret mounted after boot is picked up)
      {tag, _} = start_native(%{opts | ca_file: "/nonexistent/ca.pem"})
      assert_receive {:libcluster_rs, ^tag, {:discovery_error, :tls, msg}}, 5_000
      assert msg =~ "/nonexistent/ca.pem" and msg =~ "ca_file"
      {tag, _} = start_native(%{opts | key_file: "/nonexistent/key.pem"})
      assert_receive {:libcluster_rs, ^tag, {:discovery_error, :tls, msg}}, 5_000
      assert msg =~ "/nonexistent/key.pem" and msg =~ "key_file"

      {tag, _} = start_native(%{opts | cert_file: nil, key_file: nil})
      assert_receive {:libcluster_rs, ^tag, {:discovery_error, kind, _}}, 5_000
      assert kind in [:tls, :io, :malformed]

      # and after all that, a good answer
      {tag, _} = start_native(opts)
      assert_receive {:libcluster_rs, ^tag, {:nodes, ["app@10.0.0.1"]}}, 5_000
    end

    test "ACLs: an unknown token, a token without service:read, and entries Consul filtered out", %{ca: ca} do
      acl = %{
        "good" => %{services: :all, nodes: true},
        "no-node-read" => %{services: ["web"], nodes: false},
        "other-service" => %{services: ["db"], nodes: true}
      }

      consul = start_consul(ca, acl: acl)
      FakeConsul.put(consul, "web", web(["10.0.0.1"]))

      run = fn config ->
        {tag, _} = start_native(native(consul, ca, [blocking_queries: false] ++ config))
        assert_receive {:libcluster_rs, ^tag, event}, 5_000
        event
      end

      assert {:nodes, ["app@10.0.0.1"]} = run.(access_token: "good")
      assert {:discovery_error, :unauthorized, msg} = run.(access_token: "stale")
      assert msg =~ "does not know the token"
      assert {:discovery_error, :forbidden, msg} = run.(access_token: "no-node-read")
      assert msg =~ "X-Consul-Results-Filtered-By-ACLs"
      assert msg =~ "node:read"
      assert {:discovery_error, :forbidden, msg} = run.(access_token: "other-service", list_using: [@agent])
      assert msg =~ ~s(lacks service:read on "web")
    end
  end

  describe "blocking queries" do
    test "a change arrives while the query is held; the index and wait are Consul's", %{ca: ca} do
      consul = start_consul(ca)
      FakeConsul.put(consul, "web", web(["10.0.0.1"]))
      {tag, _} = start_native(native(consul, ca, blocking_wait: 20_000, list_using: [@health, @catalog]))
      assert_receive {:libcluster_rs, ^tag, {:nodes, ["app@10.0.0.1"]}}, 5_000
      # both queries are now held by the server
      eventually(fn -> FakeConsul.blocked(consul) == 2 end, 5_000)

      t0 = System.monotonic_time(:millisecond)
      FakeConsul.put(consul, "web", web(["10.0.0.1", "10.0.0.2"]))
      assert_receive {:libcluster_rs, ^tag, {:nodes, ["app@10.0.0.1", "app@10.0.0.2"]}}, 5_000
      # a generous bound (a poll would take polling_interval); the bench measures the real figure
      assert System.monotonic_time(:millisecond) - t0 < 2_000

      blocking = consul |> FakeConsul.requests() |> Enum.filter(&Map.has_key?(&1.query, "index"))
      assert blocking != []
      for r <- blocking, do: assert(r.query["wait"] == "20000ms")
      # the first read of each query has no index; the next ones carry the index it returned (11)
      assert Enum.any?(blocking, &(&1.query["index"] == "11"))
      refute_received {:libcluster_rs, ^tag, {:nodes, _}}
    end

    test "an index that goes backwards starts a fresh read; an index of 0 is waited on as 1", %{ca: ca} do
      consul = start_consul(ca)
      FakeConsul.put(consul, "web", web(["10.0.0.1"]))
      # (as Consul, the fake holds a query until its index passes the one asked, so a lower index
      # is seen when the wait expires: a short wait)
      {tag, _} = start_native(native(consul, ca, blocking_wait: 500))
      assert_receive {:libcluster_rs, ^tag, {:nodes, _}}, 5_000
      eventually(fn -> FakeConsul.blocked(consul) == 1 end, 5_000)
      http = FakeConsul.http(consul)
      indexes = fn -> http |> HttpFake.requests() |> Enum.map(& &1.query["index"]) end

      # a snapshot restore: the index drops from 11 to 3
      FakeConsul.set_index(consul, "web", 3)
      HttpFake.clear_requests(http)
      # (a held query may have timed out and been re-asked with 11 just before the clear)
      after_held = fn held -> indexes.() |> Enum.drop_while(&(&1 == held)) |> Enum.take(2) end
      eventually(fn -> after_held.("11") == [nil, "3"] end, 5_000)
      # a fresh read (no index), then blocking on 3

      # an index of 0 (a Consul bug): again a fresh read (0 < 3), then never index=0 but 1
      FakeConsul.set_index(consul, "web", 0)
      HttpFake.clear_requests(http)
      eventually(fn -> after_held.("3") == [nil, "1"] end, 5_000)
      refute "0" in indexes.()
    end

    test "errors back off, 429 waits out Retry-After, and nothing is sent as zero nodes", %{ca: ca} do
      consul = start_consul(ca)
      FakeConsul.put(consul, "web", web(["10.0.0.1"]))
      http = FakeConsul.http(consul)
      {tag, _} = start_native(native(consul, ca, blocking_wait: 20_000))
      assert_receive {:libcluster_rs, ^tag, {:nodes, ["app@10.0.0.1"]}}, 5_000
      eventually(fn -> FakeConsul.blocked(consul) == 1 end, 5_000)

      HttpFake.fault(http, {429, [{"retry-after", "1"}], "rate limited"})
      HttpFake.fault(http, {500, [], "boom"})
      # The held query answers the change; the next requests meet the faults.
      FakeConsul.put(consul, "web", web(["10.0.0.1", "10.0.0.3"]))
      assert_receive {:libcluster_rs, ^tag, {:nodes, ["app@10.0.0.1", "app@10.0.0.3"]}}, 5_000

      assert_receive {:libcluster_rs, ^tag, {:discovery_error, :http_status, msg}}, 5_000
      assert msg =~ "429"
      t429 = System.monotonic_time(:millisecond)
      assert_receive {:libcluster_rs, ^tag, {:discovery_error, :http_status, msg}}, 5_000
      assert msg =~ "500"
      # Retry-After: the request after the 429 waited 1 s (backoff alone: 0.5 s +- 20 %)
      assert System.monotonic_time(:millisecond) - t429 >= 900

      # recovered (after about 0.5 s of backoff): the next change arrives
      FakeConsul.put(consul, "web", web(["10.0.0.3"]))
      assert_receive {:libcluster_rs, ^tag, {:nodes, ["app@10.0.0.3"]}}, 5_000
      refute_received {:libcluster_rs, ^tag, {:nodes, []}}
    end
  end

  describe "the strategy" do
    test "connects, keeps nodes through faults, prunes on a real change; status names the ACL",
         %{ca: ca} do
      consul = start_consul(ca, acl: %{"good" => %{services: :all, nodes: true}})
      FakeConsul.put(consul, "web", web(["10.0.0.1", "10.0.0.2"]))
      dist = FakeDist.new()
      topology = :"consul_#{System.unique_integer([:positive])}"

      config = [
        base_url: consul.url,
        ca_file: ca.ca,
        cert_file: ca.client_cert,
        key_file: ca.client_key,
        access_token: "good",
        node_basename: "app",
        service: [name: "web"],
        list_using: [{@health, passing: true}],
        polling_interval: 200,
        blocking_min_interval: 20
      ]

      start_supervised!(
        {Consul,
         [
           %Cluster.Strategy.State{topology: topology, config: config}
           |> Map.merge(Map.new(FakeDist.mfas(dist)))
         ]}
      )

      assert_receive {:connect, :"app@10.0.0.1"}, 5_000
      assert_receive {:connect, :"app@10.0.0.2"}, 5_000
      assert {:ok, %{extra: %{consul: %{mode: :blocking, token: "access_token"}}}} = Cluster.status(topology)

      # The token is revoked: the held query answers (an unchanged service), the next requests fail;
      # nobody is disconnected, and the status says what is wrong.
      HttpFake.fault(FakeConsul.http(consul), {403, [], "ACL not found"}, 3)
      FakeConsul.put(consul, "web", web(["10.0.0.1", "10.0.0.2"]))

      status = status_until(topology, fn s -> match?(%{last_error: %{kind: :unauthorized}}, s) end)
      # every fault was served (and the strategy has moved past them) before the refute below
      eventually(fn -> HttpFake.faults_left(FakeConsul.http(consul)) == 0 end, 10_000)
      status_until(topology, fn s -> s.error_streak >= 3 or s.error_streak == 0 end)

      assert status.last_error.message =~ "does not know the token"
      assert status.last_error.message =~ ~s(service:read on "web")
      refute_received {:disconnect, _}

      # Consul answers again, with a change: it is applied.
      FakeConsul.put(consul, "web", web(["10.0.0.1"]))
      assert_receive {:disconnect, :"app@10.0.0.2"}, 10_000
      refute_received {:disconnect, :"app@10.0.0.1"}
    end

    test "mix libcluster.discover reads once and names the missing ACL", %{ca: ca} do
      consul = start_consul(ca, acl: %{"weak" => %{services: ["db"], nodes: true}})
      FakeConsul.put(consul, "web", web(["10.0.0.1"]))

      DiscoverRun.configure!(
        consul: [
          strategy: Consul,
          config: [
            base_url: consul.url,
            ca_file: ca.ca,
            cert_file: ca.client_cert,
            key_file: ca.client_key,
            access_token: "weak",
            node_basename: "app",
            service: [name: "web"],
            list_using: [@agent]
          ]
        ]
      )

      {status, out, _} = DiscoverRun.run(["consul", "--timeout", "5000"])
      assert status != 0
      assert out =~ ~s(lacks service:read on "web")
      assert out =~ "token: access_token"
      refute Enum.any?(FakeConsul.requests(consul), &Map.has_key?(&1.query, "index"))
    end
  end

  describe "config" do
    defp init(config), do: Consul.init(%Cluster.Strategy.State{topology: :c, config: config})

    test "libcluster_consul's keys are validated, naming the key" do
      base = [service: [name: "web"], list_using: [@health], node_basename: "app"]
      assert {:ok, _, _} = init(base)

      for {config, key} <- [
            {Keyword.delete(base, :list_using), ":list_using"},
            {Keyword.put(base, :list_using, [Foo]), ":list_using"},
            {Keyword.delete(base, :service), ":service"},
            {Keyword.put(base, :service, name: "a", id: "b"), ":service"},
            {Keyword.put(base, :list_using, [{@health, service: [id: "x"]}]), ":service"},
            {Keyword.put(base, :expected, :dns), ":expected"},
            {Keyword.put(base, :node_basename, ""), ":node_basename"},
            {Keyword.put(base, :base_url, "consul:8500"), ":base_url"},
            {Keyword.put(base, :blocking_wait, 700_000), ":blocking_wait"},
            {Keyword.put(base, :list_using, [@multisite]), ":list_using"},
            {Keyword.put(base, :list_using, [{@multisite, endpoints: []}]), ":endpoints"},
            {Keyword.put(base, :list_using, [{@multisite, datacenters: "dc1", endpoints: [@health]}]),
             ":datacenters"}
          ] do
        assert_raise ArgumentError, ~r/#{Regex.escape(key)}/, fn -> init(config) end
      end

      # libcluster_consul 1.0's service_name, top level or per entry
      {:ok, impl, _} = init(base |> Keyword.delete(:service) |> Keyword.put(:service_name, "old"))
      assert [%{service_name: "old"}] = impl.native.queries
      {:ok, impl, _} = init(Keyword.put(base, :list_using, [{@catalog, service_name: "cat"}]))
      assert [%{endpoint: :catalog, service_name: "cat"}] = impl.native.queries

      # defaults: the node's own basename, localhost:8500 (unless CONSUL_HTTP_ADDR), blocking
      {:ok, impl, opts} = init(Keyword.delete(base, :node_basename))
      assert impl.native.basename == node() |> Atom.to_string() |> String.split("@") |> hd()
      assert impl.native.blocking
      assert opts[:interval] == 5_000
    end

    test "the consul CLI's environment, with config keys winning", %{ca: ca} do
      opts = %{
        base_url: nil,
        access_token: nil,
        ca_file: nil,
        cert_file: nil,
        key_file: nil,
        disable_verify_ssl?: false
      }

      assert Consul.connection(opts, %{}).base_url == "http://localhost:8500"

      env = %{
        "CONSUL_HTTP_ADDR" => "10.0.0.5:8501",
        "CONSUL_HTTP_SSL" => "true",
        "CONSUL_HTTP_TOKEN" => "from-env",
        "CONSUL_CACERT" => ca.ca,
        "CONSUL_CLIENT_CERT" => ca.client_cert,
        "CONSUL_CLIENT_KEY" => ca.client_key
      }

      c = Consul.connection(opts, env)
      assert c.base_url == "https://10.0.0.5:8501"
      assert {c.token, c.token_source} == {"from-env", "CONSUL_HTTP_TOKEN"}
      assert {c.ca_file, c.cert_file, c.key_file} == {ca.ca, ca.client_cert, ca.client_key}
      refute c.insecure

      c = Consul.connection(%{opts | base_url: "http://127.0.0.1:1", access_token: "cfg"}, env)
      assert {c.base_url, c.token} == {"http://127.0.0.1:1", "cfg"}
      assert Consul.connection(opts, %{"CONSUL_HTTP_ADDR" => "https://c:1"}).base_url == "https://c:1"
      assert Consul.connection(opts, %{"CONSUL_HTTP_SSL_VERIFY" => "false"}).insecure

      token_file = Path.join(ca.dir, "token")
      File.write!(token_file, "from-file\n")
      assert Consul.connection(opts, %{"CONSUL_HTTP_TOKEN_FILE" => token_file}).token == "from-file"

      assert_raise ArgumentError, ~r/CONSUL_HTTP_TOKEN_FILE/, fn ->
        Consul.connection(opts, %{"CONSUL_HTTP_TOKEN_FILE" => "/nonexistent"})
      end

      assert_raise ArgumentError, ~r/CONSUL_HTTP_ADDR/, fn ->
        Consul.connection(opts, %{"CONSUL_HTTP_ADDR" => "unix:///var/run/consul.sock"})
      end

      assert_raise ArgumentError, ~r/CONSUL_CLIENT_KEY/, fn ->
        Consul.connection(opts, %{"CONSUL_CLIENT_CERT" => ca.client_cert})
      end
    end
  end
end
