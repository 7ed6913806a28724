defmodule Cluster.Strategy.DigitalOceanTest do
  # Against a fake DigitalOcean API (HTTPS on 127.0.0.1, a CA made for the run): names, filters,
  # pagination, faults that never become zero or partial lists, rate limits, TCP health checks
  # against real loopback ports, config errors, the dry run, and real BEAM nodes connected through
  # the strategy. Async: the dry runs take their turn on the application env (DiscoverRun).
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Test.{EventLog, FakeDigitalOcean, FakeDist, Peer, TestCA}

  setup_all do
    ca = TestCA.shared!(ips: [{127, 0, 0, 1}])
    {:ok, ca: ca}
  end

  defp fake!(ca, opts) do
    fake = FakeDigitalOcean.start!(Keyword.put_new(opts, :tls, ca))
    on_exit(fn -> FakeDigitalOcean.stop(fake) end)
    fake
  end

  defp native_opts(fake, ca, opts \\ %{}) do
    Map.merge(
      %{
        api_url: fake.url,
        token: "good-token",
        tag_name: nil,
        name: nil,
        network: :private,
        ipv6: false,
        basename: nil,
        health_check_port: nil,
        health_check_timeout_ms: 500,
        cacertfile: ca.ca,
        request_timeout_ms: 2_000,
        rate_limit_budget_ms: 5_000
      },
      Map.new(opts)
    )
  end

  # One native poll: `{:nodes, names}` or `{:discovery_error, kind, message}`.
  defp poll(opts, timeout \\ 8_000) do
    tag = make_ref()
    _handle = LibclusterRs.Native.digitalocean_start(tag, opts)

    receive do
      {:libcluster_rs, ^tag, event} -> event
    after
      timeout -> flunk("no answer from the poll in #{timeout} ms")
    end
  end

  defp droplets(n, opts \\ []) do
    for i <- 1..n, do: FakeDigitalOcean.droplet(i, "web-#{i}", "10.0.0.#{i}", opts)
  end

  describe "the native poll" do
    test "reads every page over verified HTTPS, with the bearer token, 200 a page", %{ca: ca} do
      fake = fake!(ca, droplets: droplets(5), page_size: 2)

      assert poll(native_opts(fake, ca)) ==
               {:nodes, for(i <- 1..5, do: "web-#{i}@10.0.0.#{i}")}

      requests = FakeDigitalOcean.requests(fake)
      assert Enum.map(requests, & &1.query["page"]) == ["1", "2", "3"]
      assert Enum.all?(requests, &(&1.path == "/v2/droplets" and &1.query["per_page"] == "200"))
      assert Enum.all?(requests, &(&1.headers["authorization"] == "Bearer good-token"))
    end

    test "the next links name api.digitalocean.com: only their page number is used, the token stays here",
         %{ca: ca} do
      # The fake writes absolute next links on https://api.digitalocean.com, as the real API does;
      # every page was still asked of the fake (and nothing left this machine).
      fake = fake!(ca, droplets: droplets(3), page_size: 1)
      assert {:nodes, [_, _, _]} = poll(native_opts(fake, ca))
      assert length(FakeDigitalOcean.requests(fake)) == 3
    end

    test "names only active Droplets, by network, family and node_basename", %{ca: ca} do
      list = [
        FakeDigitalOcean.droplet(1, "web-1", "10.0.0.1", public: "203.0.113.1", ipv6: "2001:db8::1"),
        FakeDigitalOcean.droplet(2, "web-2", "10.0.0.2", status: "new"),
        FakeDigitalOcean.droplet(3, "web-3", "10.0.0.3", status: "off"),
        FakeDigitalOcean.droplet(4, "bad name", "10.0.0.4")
      ]

      fake = fake!(ca, droplets: list)
      assert poll(native_opts(fake, ca)) == {:nodes, ["web-1@10.0.0.1"]}
      assert poll(native_opts(fake, ca, network: :public)) == {:nodes, ["web-1@203.0.113.1"]}
      assert poll(native_opts(fake, ca, network: :public, ipv6: true)) == {:nodes, ["web-1@2001:db8::1"]}
      # No Droplet has a private IPv6 address.
      assert poll(native_opts(fake, ca, ipv6: true)) == {:nodes, []}

      assert poll(native_opts(fake, ca, basename: "app")) ==
               {:nodes, ["app@10.0.0.1", "app@10.0.0.4"]}
    end

    test "tag_name and name filter on the server", %{ca: ca} do
      list = [
        FakeDigitalOcean.droplet(1, "web-1", "10.0.0.1", tags: ["prod env"]),
        FakeDigitalOcean.droplet(2, "web-2", "10.0.0.2", tags: ["staging"])
      ]

      fake = fake!(ca, droplets: list)
      assert poll(native_opts(fake, ca, tag_name: "prod env")) == {:nodes, ["web-1@10.0.0.1"]}
      assert poll(native_opts(fake, ca, name: "WEB-2")) == {:nodes, ["web-2@10.0.0.2"]}
      [r1, r2] = FakeDigitalOcean.requests(fake)
      assert r1.raw_query =~ "tag_name=prod%20env" and r1.query["tag_name"] == "prod env"
      assert r2.query["name"] == "WEB-2"
    end

    test "401 and 403 are errors that say what the token lacks", %{ca: ca} do
      fake = fake!(ca, droplets: droplets(2))

      assert {:discovery_error, :unauthorized, msg} = poll(native_opts(fake, ca, token: "expired"))
      assert msg =~ "HTTP 401" and msg =~ "the token is invalid or expired"
      assert msg =~ "Unable to authenticate you"
      refute msg =~ "expired-token"

      FakeDigitalOcean.set(fake, :scopes, [])
      assert {:discovery_error, :forbidden, msg} = poll(native_opts(fake, ca))
      assert msg =~ "HTTP 403" and msg =~ "lacks the droplet:read scope"

      # With a tag filter, tag:read is needed too: the message names both scopes.
      FakeDigitalOcean.set(fake, :scopes, ["droplet:read"])
      assert {:nodes, [_, _]} = poll(native_opts(fake, ca))
      assert {:discovery_error, :forbidden, msg} = poll(native_opts(fake, ca, tag_name: "prod"))
      assert msg =~ "droplet:read and tag:read"
    end

    test "500, a malformed body, a truncated page, a failed later page, a wrong CA and a slow answer are errors",
         %{ca: ca} do
      fake = fake!(ca, droplets: droplets(4), page_size: 2)
      opts = native_opts(fake, ca)

      FakeDigitalOcean.fault(fake, {500, [], ~s({"id":"server_error","message":"Server Error"})})
      assert {:discovery_error, :http_status, msg} = poll(opts)
      assert msg =~ "HTTP 500" and msg =~ "Server Error"

      FakeDigitalOcean.fault(fake, {200, [], "<html>502 Bad Gateway</html>"})
      assert {:discovery_error, :malformed, _} = poll(opts)

      FakeDigitalOcean.fault(fake, {200, [], ~s({"droplets":[{"id":1,"name":"web-1")})
      assert {:discovery_error, :malformed, _} = poll(opts)

      # Page 1 answers, page 2 fails: an error, never the first page's two nodes.
      FakeDigitalOcean.clear_requests(fake)
      FakeDigitalOcean.set(fake, :page_size, 2)
      :ok = LibclusterRs.Test.HttpFake.set_handler(fake.http, fail_page_2(fake))
      assert {:discovery_error, :http_status, msg} = poll(opts)
      assert msg =~ "page=2"
      assert length(FakeDigitalOcean.requests(fake)) == 2

      fake2 = fake!(ca, droplets: droplets(1))
      assert {:discovery_error, :tls, _} = poll(native_opts(fake2, ca, cacertfile: ca.other_ca))

      FakeDigitalOcean.fault(fake2, {:delay, 1_500})
      started = System.monotonic_time(:millisecond)
      assert {:discovery_error, :timeout, _} = poll(native_opts(fake2, ca, request_timeout_ms: 300))
      assert System.monotonic_time(:millisecond) - started < 1_400
    end

    test "a total that disagrees with meta.total is an error (the list changed while it was read)", %{ca: ca} do
      fake = fake!(ca, droplets: droplets(2))

      body = FakeDigitalOcean.page_body(droplets(2), 1, 200, 3)

      FakeDigitalOcean.fault(fake, {200, [], body})
      assert {:discovery_error, :malformed, msg} = poll(native_opts(fake, ca))
      assert msg =~ "meta.total says 3"
    end

    test "a 429 is waited out within the round as Retry-After asks", %{ca: ca} do
      fake = fake!(ca, droplets: droplets(3), page_size: 2)
      # Page 1 answers; page 2 is rate limited once.
      FakeDigitalOcean.fault(fake, {:delay, 0})

      FakeDigitalOcean.fault(
        fake,
        {429, [{"retry-after", "1"}], ~s({"id":"too_many_requests","message":"API Rate limit exceeded."})}
      )

      started = System.monotonic_time(:millisecond)
      assert {:nodes, [_, _, _]} = poll(native_opts(fake, ca))
      assert System.monotonic_time(:millisecond) - started >= 1_000
      assert Enum.map(FakeDigitalOcean.requests(fake), & &1.query["page"]) == ["1", "2", "2"]
    end

    test "ratelimit-reset is honoured when there is no Retry-After", %{ca: ca} do
      fake = fake!(ca, droplets: droplets(1))
      reset = System.os_time(:second) + 2
      FakeDigitalOcean.fault(fake, {429, [{"ratelimit-reset", "#{reset}"}], "{}"})
      started = System.monotonic_time(:millisecond)
      assert {:nodes, ["web-1@10.0.0.1"]} = poll(native_opts(fake, ca))
      # The reset is 1 to 2 whole seconds away when the 429 arrives.
      assert System.monotonic_time(:millisecond) - started >= 900
      [first, second] = FakeDigitalOcean.requests(fake)
      assert first.query == second.query
    end

    test "a wait longer than the budget fails at once, and no request is sent until the API's time",
         %{ca: ca} do
      fake = fake!(ca, droplets: droplets(1))
      FakeDigitalOcean.fault(fake, {429, [{"retry-after", "3600"}], "{}"})
      started = System.monotonic_time(:millisecond)
      assert {:discovery_error, :http_status, msg} = poll(native_opts(fake, ca))
      assert System.monotonic_time(:millisecond) - started < 2_000
      assert msg =~ "HTTP 429" and msg =~ "wait 3600 s"
      # A server's wait is honoured for 10 minutes at most (http::MAX_SERVER_WAIT).
      assert msg =~ "asks again in 600 s"

      assert {:discovery_error, :http_status, msg} = poll(native_opts(fake, ca))
      assert msg =~ "no request is sent"
      [_, secs] = Regex.run(~r/for another (\d+) s/, msg)
      assert String.to_integer(secs) in 590..600
      assert length(FakeDigitalOcean.requests(fake)) == 1

      # Another token is another quota.
      FakeDigitalOcean.set(fake, :token, "other-token")
      assert {:nodes, [_]} = poll(native_opts(fake, ca, token: "other-token"))
    end

    test "429s without any hint back off (1 s, 2 s) and fail past the budget", %{ca: ca} do
      fake = fake!(ca, droplets: droplets(1))
      FakeDigitalOcean.fault(fake, {429, [], "{}"}, 3)
      assert {:discovery_error, :http_status, msg} = poll(native_opts(fake, ca, rate_limit_budget_ms: 1_500))
      # 1 s was waited, the next wait (2 s) was past the budget.
      assert length(FakeDigitalOcean.requests(fake)) == 2
      assert msg =~ "after 2 attempt(s)"
    end
  end

  defp fail_page_2(fake) do
    real = :sys.get_state(fake.http.pid).handler

    fn req ->
      if req.query["page"] == "2", do: {500, [], "{}"}, else: real.(req)
    end
  end

  describe "health checks (real loopback ports)" do
    # Three Droplets on three loopback addresses, one port number: listening on 127.0.0.2,
    # closed on 127.0.0.3 (refused), silent on 127.0.0.4 (a full backlog drops the SYN).
    setup do
      {:ok, listening} = :gen_tcp.listen(0, ip: {127, 0, 0, 2}, reuseaddr: true)
      {:ok, port} = :inet.port(listening)
      {:ok, silent} = :gen_tcp.listen(port, ip: {127, 0, 0, 4}, backlog: 0)
      fillers = fill_backlog({127, 0, 0, 4}, port)

      on_exit(fn ->
        Enum.each(fillers, &:gen_tcp.close/1)
        :gen_tcp.close(silent)
        :gen_tcp.close(listening)
      end)

      {:ok, port: port}
    end

    test "only Droplets whose port accepts within the timeout are named; probes run at once",
         %{ca: ca, port: port} do
      list = for i <- 2..4, do: FakeDigitalOcean.droplet(i, "node#{i}", "127.0.0.#{i}")
      fake = fake!(ca, droplets: list)

      assert poll(native_opts(fake, ca)) ==
               {:nodes, ["node2@127.0.0.2", "node3@127.0.0.3", "node4@127.0.0.4"]}

      started = System.monotonic_time(:millisecond)

      assert poll(native_opts(fake, ca, health_check_port: port, health_check_timeout_ms: 700)) ==
               {:nodes, ["node2@127.0.0.2"]}

      elapsed = System.monotonic_time(:millisecond) - started
      # The silent Droplet cost its timeout once, not once per Droplet.
      assert elapsed >= 700 and elapsed < 3_000
    end
  end

  defp fill_backlog(ip, port, acc \\ []) do
    case length(acc) < 8 && :gen_tcp.connect(ip, port, [], 200) do
      {:ok, s} -> fill_backlog(ip, port, [s | acc])
      _ -> acc
    end
  end

  describe "the strategy" do
    defp state(fake, ca, config, dist) do
      %Cluster.Strategy.State{
        topology: :droplets,
        connect: {FakeDist, :connect, [dist]},
        disconnect: {FakeDist, :disconnect, [dist]},
        list_nodes: {FakeDist, :list_nodes, [dist]},
        config:
          Keyword.merge(
            [token: "good-token", api_url: fake.url, cacertfile: ca.ca, polling_interval: 100],
            config
          )
      }
    end

    test "connects, keeps every node through errors, prunes on a real change", %{ca: ca} do
      fake = fake!(ca, droplets: droplets(3), page_size: 2)
      dist = FakeDist.new()
      start_supervised!({Cluster.Strategy.DigitalOcean, [state(fake, ca, [], dist)]})

      for node <- [:"web-1@10.0.0.1", :"web-2@10.0.0.2", :"web-3@10.0.0.3"],
          do: assert_receive({:connect, ^node}, 5_000)

      # 401, 403, 500, garbage and a failed second page: no disconnect.
      FakeDigitalOcean.fault(fake, {401, [], "{}"})
      FakeDigitalOcean.fault(fake, {403, [], "{}"})
      FakeDigitalOcean.fault(fake, {500, [], "{}"})
      FakeDigitalOcean.fault(fake, {200, [], "nope"})
      FakeDigitalOcean.fault(fake, {:delay, 0})
      FakeDigitalOcean.fault(fake, {503, [], "{}"})

      status = status_until(:droplets, &(&1.last_error != nil))
      assert %{kind: kind, message: msg} = status.last_error
      assert kind in [:unauthorized, :forbidden, :http_status, :malformed]
      assert msg =~ "/v2/droplets"
      assert status.extra.digitalocean.filter == :all
      refute inspect(status) =~ "good-token"

      # 2 requests (two pages), then 4 failed rounds of 1 request, one of 2, and a good one of 2.
      eventually(fn -> length(FakeDigitalOcean.requests(fake)) >= 10 end, 10_000)
      refute_received {:disconnect, _}

      FakeDigitalOcean.set_droplets(fake, droplets(2))
      assert_receive {:disconnect, :"web-3@10.0.0.3"}, 5_000
      refute_received {:disconnect, :"web-1@10.0.0.1"}
    end

    test "config errors name the key", %{ca: ca} do
      init = fn config ->
        Cluster.Strategy.DigitalOcean.init(%Cluster.Strategy.State{topology: :d, config: config})
      end

      assert_raise ArgumentError, ~r/:token/, fn -> init.([]) end

      assert_raise ArgumentError, ~r/:tag_name and :name cannot both be given/, fn ->
        init.(token: "t", tag_name: "a", name: "b")
      end

      for {key, value} <- [
            network: :vpc,
            ipv6: "yes",
            health_check: {:http, port: 80},
            health_check: {:tcp, port: 0},
            health_check: {:tcp, timeout: 5},
            health_check: {:tcp, port: 80, timeout: -1},
            api_url: "ftp://x",
            cacertfile: "/nonexistent/ca.pem",
            node_basename: "my app",
            polling_interval: 0
          ] do
        assert_raise ArgumentError, ~r/#{inspect(key)}/, fn -> init.([{:token, "t"}, {key, value}]) end
      end

      assert {:ok, native, opts} =
               init.(token: "t", health_check: {:tcp, port: 4000}, tag_name: "x", cacertfile: ca.ca)

      assert native.health_check_port == 4000 and native.health_check_timeout_ms == 500
      assert native.network == :private and native.ipv6 == false
      assert native.api_url == "https://api.digitalocean.com"
      assert opts[:interval] == 5_000

      log = ExUnit.CaptureLog.capture_log(fn -> {:ok, _, _} = init.(token: "t", ipv6: true) end)
      assert log =~ "no private IPv6 address"
    end

    test "a nil or empty token boots, connects nothing and says why; a missing one fails boot" do
      import ExUnit.CaptureLog

      for value <- [nil, ""] do
        topology = :"do_#{System.unique_integer([:positive])}"

        spec = [
          strategy: Cluster.Strategy.DigitalOcean,
          config: [token: value, api_url: "http://127.0.0.1:9"]
        ]

        log =
          capture_log(fn ->
            {:ok, sup} = Cluster.Supervisor.start_link([[{topology, spec}]])

            assert {:ok, %{state: :invalid_config, last_error: %{kind: :config, message: message}}} =
                     Cluster.status(topology)

            assert message =~ ":token" and message =~ "droplet:read"
            Supervisor.stop(sup)
          end)

        assert log =~ ":token"
      end

      spec = [strategy: Cluster.Strategy.DigitalOcean, config: [tag_name: "x"]]
      assert {:error, reason} = start_supervised({Cluster.Supervisor, [[{:do_missing, spec}]]})
      assert inspect(reason) =~ "token"
    end
  end

  describe "mix libcluster.discover" do
    defp topology(fake, ca, config) do
      LibclusterRs.Test.DiscoverRun.configure!(
        droplets: [
          strategy: Cluster.Strategy.DigitalOcean,
          config: Keyword.merge([token: "good-token", api_url: fake.url, cacertfile: ca.ca], config)
        ]
      )
    end

    test "prints the nodes; an auth error names the scope; nothing found says what was asked", %{ca: ca} do
      fake = fake!(ca, droplets: droplets(2))
      topology(fake, ca, [])
      {status, out, _} = LibclusterRs.Test.DiscoverRun.run(["droplets"])
      assert status == 0
      assert out =~ "found 2 node(s)" and out =~ "web-1@10.0.0.1" and out =~ "web-2@10.0.0.2"

      FakeDigitalOcean.set(fake, :scopes, ["droplet:read"])
      topology(fake, ca, tag_name: "prod")
      {status, out, _} = LibclusterRs.Test.DiscoverRun.run(["droplets"])
      assert status == 1
      assert out =~ "discovery failed (forbidden)" and out =~ "droplet:read and tag:read"

      FakeDigitalOcean.set(fake, :scopes, ["droplet:read", "tag:read"])
      {status, out, _} = LibclusterRs.Test.DiscoverRun.run(["droplets"])
      assert status == 1
      assert out =~ ~s(lists no active Droplet with the tag "prod" with a private IPv4 address)
    end
  end

  describe "end to end" do
    defp status(peer), do: peer |> Peer.call(Cluster, :status, [:droplets]) |> elem(1)

    @tag timeout: 60_000
    test "real nodes connect through the strategy, survive API errors and are pruned", %{ca: ca} do
      # Droplets named after the peers, all on 127.0.0.1: node names `<droplet name>@127.0.0.1`.
      names = for i <- 1..3, do: "do#{i}_#{System.unique_integer([:positive])}"
      droplet = fn name, i -> FakeDigitalOcean.droplet(i, name, "127.0.0.1", tags: ["app"]) end
      [d1, d2, d3] = Enum.with_index(names, 1) |> Enum.map(fn {n, i} -> droplet.(n, i) end)
      fake = fake!(ca, droplets: [d1, d2], page_size: 1)

      peers =
        for name <- names, do: Peer.start(name, "127.0.0.1", args: [~c"-kernel", ~c"connect_all", ~c"false"])

      on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
      [{p1, n1}, {p2, n2}, {p3, _n3}] = peers

      topology = [
        droplets: [
          strategy: Cluster.Strategy.DigitalOcean,
          config: [
            token: "good-token",
            tag_name: "app",
            api_url: fake.url,
            cacertfile: ca.ca,
            polling_interval: 200
          ]
        ]
      ]

      for p <- [p1, p2], do: {:ok, _} = Peer.start_cluster(p, topology)
      eventually(fn -> Peer.nodes(p1) == [n2] end, 10_000)
      assert Peer.nodes(p3) == []

      # The third Droplet is tagged: the other two see it (p3 runs no strategy yet).
      FakeDigitalOcean.set_droplets(fake, [d1, d2, d3])
      eventually(fn -> Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2]) end, 5_000)

      # The API fails every way for a while: nobody is disconnected. Every fault is served, then
      # both strategies finish a good round; p3 never saw a nodedown meanwhile.
      :ok = Peer.call(p3, EventLog, :start, [])
      FakeDigitalOcean.fault(fake, {401, [], "{}"}, 3)
      FakeDigitalOcean.fault(fake, {500, [], "{}"}, 3)
      FakeDigitalOcean.fault(fake, {200, [], "garbage"}, 3)
      eventually(fn -> FakeDigitalOcean.faults_left(fake) == 0 end, 10_000)
      rounds = for p <- [p1, p2], do: {p, status(p).rounds}

      # (a round that starts after a sampled one has ended it)
      eventually(
        fn ->
          Enum.all?(rounds, fn {p, r} -> match?(%{rounds: n, error_streak: 0} when n >= r + 2, status(p)) end)
        end,
        10_000
      )

      assert Enum.any?([p1, p2], &(status(&1).last_error != nil)), "no strategy saw a fault"
      assert Peer.call(p3, EventLog, :events, []) == []
      assert Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2])

      # The Droplet leaves the tag: both running strategies prune it.
      FakeDigitalOcean.set_droplets(fake, [d1, d2])
      eventually(fn -> Peer.nodes(p3) == [] end, 5_000)
      assert Peer.nodes(p1) == [n2]
    end

    @tag timeout: 60_000
    test "real nodes connect only once the health-checked port accepts", %{ca: ca} do
      names = for i <- 1..2, do: "dohc#{i}_#{System.unique_integer([:positive])}"

      fake =
        fake!(ca,
          droplets:
            Enum.with_index(names, 1)
            |> Enum.map(fn {n, i} -> FakeDigitalOcean.droplet(i, n, "127.0.0.1") end)
        )

      # A port that is free now (closed: the checks are refused).
      {:ok, l} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
      {:ok, port} = :inet.port(l)
      :gen_tcp.close(l)

      peers =
        for name <- names, do: Peer.start(name, "127.0.0.1", args: [~c"-kernel", ~c"connect_all", ~c"false"])

      on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
      [{p1, _n1}, {p2, n2}] = peers

      topology = [
        droplets: [
          strategy: Cluster.Strategy.DigitalOcean,
          config: [
            token: "good-token",
            api_url: fake.url,
            cacertfile: ca.ca,
            polling_interval: 200,
            health_check: {:tcp, port: port, timeout: 300}
          ]
        ]
      ]

      for p <- [p1, p2], do: {:ok, _} = Peer.start_cluster(p, topology)
      # Several rounds pass with the port closed: the API lists both, nobody is connected.
      eventually(fn -> length(FakeDigitalOcean.requests(fake)) >= 6 end, 10_000)
      assert Peer.nodes(p1) == []

      {:ok, listening} = :gen_tcp.listen(port, ip: {127, 0, 0, 1}, reuseaddr: true)
      on_exit(fn -> :gen_tcp.close(listening) end)
      eventually(fn -> Peer.nodes(p1) == [n2] end, 10_000)
    end
  end
end
