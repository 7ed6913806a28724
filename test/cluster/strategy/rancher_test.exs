defmodule Cluster.Strategy.RancherTest do
  # Against a Rancher metadata server started by the test (HTTP on 127.0.0.1, or on a netns bridge
  # for the end-to-end test with real nodes): names from the service's containers, and errors that
  # never prune. Async: topologies of its own; logs are read per topology.
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Test.{FakeDist, JSON}

  # A metadata server answering every request with the head of its queue of answers (the last
  # answer repeats). Answers: `{:json, term}`, `{:status, code}`, `:garbage`.
  defp metadata_server(answers, ip \\ {127, 0, 0, 1}) do
    {:ok, agent} = Agent.start_link(fn -> answers end)
    {:ok, listen} = :gen_tcp.listen(0, [:binary, ip: ip, active: false, reuseaddr: true])
    {:ok, port} = :inet.port(listen)
    test = self()

    spawn_link(fn -> accept(listen, agent, test) end)
    {port, agent}
  end

  defp accept(listen, agent, test) do
    case :gen_tcp.accept(listen) do
      {:ok, sock} ->
        {:ok, request} = :gen_tcp.recv(sock, 0, 5_000)
        [line | _] = String.split(request, "\r\n")
        send(test, {:request, line, request =~ ~r/accept: application\/json/i})

        answer =
          Agent.get_and_update(agent, fn
            [a] -> {a, [a]}
            [a | rest] -> {a, rest}
          end)

        {code, body} =
          case answer do
            {:json, term} -> {200, JSON.encode_binary(term)}
            {:status, code} -> {code, "error"}
            :garbage -> {200, "<html>Not a service</html>"}
          end

        :gen_tcp.send(
          sock,
          "HTTP/1.1 #{code} X\r\nContent-Length: #{byte_size(body)}\r\nConnection: close\r\n\r\n#{body}"
        )

        :gen_tcp.close(sock)
        accept(listen, agent, test)

      {:error, _} ->
        :ok
    end
  end

  defp service(ips) do
    %{
      "name" => "web",
      "stack_name" => "app",
      "kind" => "service",
      "containers" =>
        for {ip, i} <- Enum.with_index(ips) do
          %{"name" => "app_web_#{i}", "ips" => [ip], "primary_ip" => ip, "state" => "running"}
        end
    }
  end

  test "the native poll reads /self/service and names containers by their first IP" do
    {port, _} = metadata_server([{:json, service(["10.42.0.2", "10.42.0.3"])}])
    tag = make_ref()
    _h = LibclusterRs.Native.rancher_start(tag, "http://127.0.0.1:#{port}/latest/self/service", "app", 2_000)
    assert_receive {:libcluster_rs, ^tag, {:nodes, ["app@10.42.0.2", "app@10.42.0.3"]}}, 3_000
    assert_receive {:request, "GET /latest/self/service HTTP/1.1", true}
  end

  test "HTTP errors, garbage and a closed port are errors" do
    {port, _} = metadata_server([{:status, 500}, :garbage])
    url = "http://127.0.0.1:#{port}/latest/self/service"

    for expected <- [:http_status, :malformed] do
      tag = make_ref()
      _h = LibclusterRs.Native.rancher_start(tag, url, "app", 2_000)
      assert_receive {:libcluster_rs, ^tag, {:discovery_error, ^expected, msg}}, 3_000
      assert msg =~ url
    end

    {:ok, l} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, closed} = :inet.port(l)
    :gen_tcp.close(l)
    tag = make_ref()
    _h = LibclusterRs.Native.rancher_start(tag, "http://127.0.0.1:#{closed}/", "app", 2_000)
    assert_receive {:libcluster_rs, ^tag, {:discovery_error, :refused, _}}, 3_000
  end

  test "the strategy connects, keeps nodes through errors, and prunes on a real change" do
    {port, agent} =
      metadata_server([
        {:json, service(["10.42.0.2", "10.42.0.3"])},
        {:status, 503},
        :garbage,
        {:json, service(["10.42.0.2"])}
      ])

    dist = FakeDist.new(up: [:"app@10.42.0.2", :"app@10.42.0.3"])

    state = %Cluster.Strategy.State{
      topology: :rancher,
      connect: {FakeDist, :connect, [dist]},
      disconnect: {FakeDist, :disconnect, [dist]},
      list_nodes: {FakeDist, :list_nodes, [dist]},
      config: [
        node_basename: "app",
        polling_interval: 100,
        rancher_metadata_url: "http://127.0.0.1:#{port}/latest/self/service"
      ]
    }

    start_supervised!({Cluster.Strategy.Rancher, [state]})

    # Two failed rounds (503, then garbage) come before the pruning answer: nothing is dropped
    # until a successful answer omits the node.
    assert_receive {:disconnect, :"app@10.42.0.3"}, 8_000
    refute_received {:disconnect, :"app@10.42.0.2"}
    assert Agent.get(agent, & &1) == [{:json, service(["10.42.0.2"])}]
  end

  test "config is validated" do
    state = %Cluster.Strategy.State{topology: :r, config: []}
    assert_raise ArgumentError, ~r/node_basename/, fn -> Cluster.Strategy.Rancher.init(state) end
    state = %{state | config: [node_basename: "a", rancher_metadata_url: "ftp://x"]}
    assert_raise ArgumentError, ~r/rancher_metadata_url/, fn -> Cluster.Strategy.Rancher.init(state) end
  end

  @tag :root
  @tag timeout: 60_000
  test "an unusable node_basename boots, as in libcluster, and says why once; a missing one raises" do
    import ExUnit.CaptureLog

    for value <- [nil, "", 42] do
      topology = :"rancher_#{System.unique_integer([:positive])}"
      spec = [strategy: Cluster.Strategy.Rancher, config: [node_basename: value]]

      log =
        capture_log(fn ->
          {:ok, sup} = Cluster.Supervisor.start_link([[{topology, spec}]])

          assert {:ok, %{state: :invalid_config, last_error: %{kind: :config, message: message}}} =
                   Cluster.status(topology)

          assert message =~ ":node_basename"
          Supervisor.stop(sup)
        end)

      assert [_once] = Regex.scan(~r/\[error\].*\[libcluster:#{topology}\].*connects no node/, log)
    end

    spec = [strategy: Cluster.Strategy.Rancher, config: [polling_interval: 1_000]]
    assert {:error, reason} = start_supervised({Cluster.Supervisor, [[{:rancher_missing, spec}]]})
    assert inspect(reason) =~ "node_basename"
  end

  test "end to end: real nodes in network namespaces connect, survive errors, and are pruned" do
    alias LibclusterRs.Test.{Netns, Peer}
    net = Netns.setup(31, 3)
    on_exit(fn -> Netns.teardown(net) end)
    for h <- net.hosts, do: Netns.exec!(h.ns, "epmd", ["-daemon"])
    [ip1, ip2, ip3] = Enum.map(net.hosts, & &1.ip)

    # The metadata server listens on the bridge's gateway, reachable from every namespace.
    {port, agent} = metadata_server([{:json, service([ip1, ip2])}], {198, 18, 31, 1})

    peers =
      for h <- net.hosts,
          do: Peer.start("rancher", h.ip, netns: h.ns, args: [~c"-kernel", ~c"connect_all", ~c"false"])

    on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
    [{p1, n1}, {p2, n2}, {p3, _}] = peers

    topology = [
      rancher: [
        strategy: Cluster.Strategy.Rancher,
        config: [
          node_basename: "rancher",
          polling_interval: 200,
          rancher_metadata_url: "http://198.18.31.1:#{port}/latest/self/service"
        ]
      ]
    ]

    # The third container runs but is not in the service yet.
    for p <- [p1, p2], do: {:ok, _} = Peer.start_cluster(p, topology)
    eventually(fn -> Peer.nodes(p1) == [n2] end, 10_000)
    assert Peer.nodes(p3) == []

    Agent.update(agent, fn _ -> [{:json, service([ip1, ip2, ip3])}] end)
    eventually(fn -> Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2]) end, 5_000)

    # The metadata service fails and then answers garbage: once the failures are served and both
    # strategies have failed rounds in a row, nobody was disconnected (p3 saw no nodedown).
    :ok = Peer.call(p3, LibclusterRs.Test.EventLog, :start, [])
    Agent.update(agent, fn _ -> [{:status, 503}, {:status, 500}, :garbage, :garbage] end)
    status = fn p -> p |> Peer.call(Cluster, :status, [:rancher]) |> elem(1) end
    eventually(fn -> Agent.get(agent, &length/1) == 1 end, 5_000)
    eventually(fn -> Enum.all?([p1, p2], &(status.(&1).error_streak >= 2)) end, 5_000)
    assert Peer.call(p3, LibclusterRs.Test.EventLog, :events, []) == []
    assert Enum.sort(Peer.nodes(p3)) == Enum.sort([n1, n2])

    # The container leaves the service: both running strategies prune it.
    Agent.update(agent, fn _ -> [{:json, service([ip1, ip2])}] end)
    eventually(fn -> Peer.nodes(p3) == [] end, 5_000)
    assert Peer.nodes(p1) == [n2]
  end
end
