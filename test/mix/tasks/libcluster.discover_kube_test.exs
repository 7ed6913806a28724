defmodule Mix.Tasks.Libcluster.DiscoverKubeTest do
  # `mix libcluster.discover` against the fake Kubernetes API server (HTTPS on 127.0.0.1, a CA made
  # for the run) and a Rancher metadata server on 127.0.0.1: exit statuses and the plain-words
  # messages an operator reads.
  # Async: the dry runs take their turn on the application env (DiscoverRun).
  use ExUnit.Case, async: true

  alias LibclusterRs.Test.{FakeKube, JSON}

  setup do
    kube = FakeKube.start!()
    on_exit(fn -> FakeKube.stop(kube) end)

    FakeKube.put(
      kube,
      :endpoints,
      FakeKube.endpoints("myapp", ["10.0.0.1", "10.0.0.2"], labels: %{"app" => "myapp"})
    )

    {:ok, kube: kube}
  end

  defp discover(args), do: LibclusterRs.Test.DiscoverRun.run(args)

  defp k8s(kube, config, drop \\ []) do
    LibclusterRs.Test.DiscoverRun.configure!(
      k8s: [
        strategy: Cluster.Strategy.Kubernetes,
        config:
          [
            kubernetes_node_basename: "app",
            kubernetes_selector: "app=myapp",
            kubernetes_master: kube.master,
            kubernetes_service_account_path: kube.sa_path
          ]
          |> Keyword.merge(config)
          |> Keyword.drop(drop),
        connect: {Kernel, :send, [self()]},
        disconnect: {Kernel, :send, [self()]}
      ]
    )
  end

  test "a watching topology: prints the nodes of the first list, ends, connects nothing", %{kube: kube} do
    k8s(kube, [])
    {status, out, ms} = discover(["k8s", "--timeout", "8000"])
    assert status == 0
    assert out =~ "strategy: Cluster.Strategy.Kubernetes"
    assert out =~ "found 2 node(s)"
    assert out =~ "app@10.0.0.1" and out =~ "app@10.0.0.2"
    assert out =~ "OK"
    assert out =~ "mode: watch (the service account may watch endpoints in namespace default)"
    # It ended after the first list, long before the timeout, and left no watch open.
    assert ms < 5_000
    assert [%{verb: :list} | _] = FakeKube.requests(kube)
    # The fake notices a closed watch when it writes to it: bookmarks until it does.
    LibclusterRs.Test.Peer.wait_until(
      fn ->
        FakeKube.bookmark(kube)
        FakeKube.watchers(kube) == 0
      end,
      3_000
    )

    refute_received _
  end

  test "a polling topology and the :endpointslices mode", %{kube: kube} do
    FakeKube.put(
      kube,
      :endpointslices,
      FakeKube.slice("myapp-abc", "myapp", "IPv4", [{"10.0.1.1", "myapp-0", FakeKube.ready()}])
    )

    k8s(kube,
      kubernetes_watch: false,
      kubernetes_ip_lookup_mode: :endpointslices,
      kubernetes_service_name: "myapp"
    )

    {status, out, _} = discover(["k8s"])
    assert status == 0
    assert out =~ "found 1 node(s)"
    assert out =~ "app@10.0.1.1"
    refute_received _
  end

  test "403: the verb, resource, namespace, the missing rule and priv/rbac/; exit 1", %{kube: kube} do
    FakeKube.fault(kube, :list, {:status, 403})
    k8s(kube, [])
    {status, out, _} = discover(["k8s"])
    assert status == 1
    assert out =~ "discovery failed (forbidden)"
    assert out =~ "the service account may not list endpoints in namespace default"
    assert out =~ ~s(resources: ["endpoints"], verbs: ["list", "watch"])
    assert out =~ "RoleBinding"
    assert out =~ "priv/rbac/endpoints.json"
    assert out =~ "nothing would be pruned"
    # An API's answer has nothing to do with this VM not being distributed.
    refute out =~ "not distributed"
    refute out =~ "found"
    refute_received _
  end

  test "a wrong CA is a TLS failure that says nothing was sent and what to check", %{kube: kube} do
    k8s(kube, kubernetes_service_account_path: kube.wrong_ca_sa_path)
    {status, out, _} = discover(["k8s"])
    assert status == 1
    assert out =~ "discovery failed (tls)"
    assert out =~ "nothing was sent"
    assert out =~ "the API server's certificate is not signed by a CA this node trusts"
    assert out =~ "ca.crt"
    assert FakeKube.requests(kube) == []
  end

  test "401: the token was rejected, and what to check", %{kube: kube} do
    File.write!(Path.join(kube.sa_path, "token"), "stale")
    k8s(kube, [])
    {status, out, _} = discover(["k8s"])
    assert status == 1
    assert out =~ "discovery failed (unauthorized)"
    assert out =~ "401 Unauthorized for list endpoints in namespace default"
    assert out =~ "token was rejected"
  end

  test "bad Kubernetes config is a usage error naming the key", %{kube: kube} do
    k8s(kube, [], [:kubernetes_selector])
    {status, out, _} = discover(["k8s"])
    assert status == 2
    assert out =~ "invalid config"
    assert out =~ ":kubernetes_selector"

    k8s(kube, kubernetes_ip_lookup_mode: :nodes)
    {status, out, _} = discover(["k8s"])
    assert status == 2
    assert out =~ ":kubernetes_ip_lookup_mode"
  end

  test "a required key given as nil: libcluster boots with it; the dry run says why nothing connects",
       %{kube: kube} do
    # As for every strategy whose required key is nil: the topology boots as an invalid topology,
    # and the dry run reports the config as invalid (exit 2), naming the key.
    k8s(kube, kubernetes_selector: nil)
    {status, out, _} = discover(["k8s"])
    assert status == 2
    assert out =~ "invalid config"
    assert out =~ "expected :kubernetes_selector to be a label selector string"
    assert out =~ "got: nil"
    assert FakeKube.requests(kube) == []
  end

  test "a list-only Role: the dry run shows the poll fallback, the missing verb and the manifest",
       %{kube: kube} do
    FakeKube.grant(kube, [:list])
    k8s(kube, polling_interval: 2_000)
    {status, out, _} = discover(["k8s"])
    # Discovery works (by polling): the nodes are found and the run succeeds.
    assert status == 0
    assert out =~ "found 2 node(s)"
    assert out =~ "mode: poll_fallback (watch forbidden, polling instead"
    assert out =~ "lists endpoints every 2000 ms"
    assert out =~ "may not watch endpoints in namespace default"
    assert out =~ ~s(resources: ["endpoints"], verbs: ["list", "watch"])
    assert out =~ "priv/rbac/endpoints.json"
  end

  test "a polling topology shows its mode", %{kube: kube} do
    k8s(kube, kubernetes_watch: false)
    {status, out, _} = discover(["k8s"])
    assert status == 0
    assert out =~ "mode: poll every 5000 ms (kubernetes_watch: false)"
    assert [%{verb: :list}] = FakeKube.requests(kube)
  end

  test "no namespace file and no kubernetes_namespace: the file and the key that fixes it", %{kube: kube} do
    path = Path.join(kube.sa_path, "namespace")
    File.rm!(path)
    k8s(kube, [])
    {status, out, _} = discover(["k8s"])
    assert status == 1
    assert out =~ "discovery failed (config): the service account's namespace file #{path} cannot be read"
    assert out =~ "set :kubernetes_namespace"
    assert out =~ "nothing would be pruned"
    assert FakeKube.requests(kube) == []
  end

  test "no token: the file and the key that fixes it; nothing is sent", %{kube: kube} do
    path = Path.join(kube.sa_path, "token")
    File.rm!(path)
    k8s(kube, [])
    {status, out, _} = discover(["k8s"])
    assert status == 1
    assert out =~ "discovery failed (config): cannot read the service account token #{path}"
    assert out =~ "kubernetes_service_account_path"
    assert FakeKube.requests(kube) == []
  end

  test "Rancher: a dry run against a metadata server, then an HTTP error" do
    service = %{
      "name" => "web",
      "containers" => [
        %{"name" => "app_web_1", "ips" => ["10.42.0.2"], "primary_ip" => "10.42.0.2", "state" => "running"},
        %{"name" => "app_web_2", "ips" => ["10.42.0.3"], "primary_ip" => "10.42.0.3", "state" => "running"}
      ]
    }

    {:ok, listen} = :gen_tcp.listen(0, [:binary, ip: {127, 0, 0, 1}, active: false, reuseaddr: true])
    {:ok, port} = :inet.port(listen)
    on_exit(fn -> :gen_tcp.close(listen) end)
    server = spawn_link(fn -> serve(listen, [{200, JSON.encode_binary(service)}, {500, "oops"}]) end)
    on_exit(fn -> Process.exit(server, :kill) end)

    LibclusterRs.Test.DiscoverRun.configure!(
      rancher: [
        strategy: Cluster.Strategy.Rancher,
        config: [node_basename: "app", rancher_metadata_url: "http://127.0.0.1:#{port}/latest/self/service"],
        connect: {Kernel, :send, [self()]}
      ]
    )

    {status, out, _} = discover(["rancher"])
    assert status == 0
    assert out =~ "strategy: Cluster.Strategy.Rancher"
    assert out =~ "found 2 node(s)"
    assert out =~ "app@10.42.0.2" and out =~ "app@10.42.0.3"

    {status, out, _} = discover(["rancher"])
    assert status == 1
    assert out =~ "discovery failed"
    assert out =~ "500"
    refute_received _
  end

  defp serve(listen, answers) do
    case :gen_tcp.accept(listen) do
      {:ok, sock} ->
        {:ok, _request} = :gen_tcp.recv(sock, 0, 5_000)
        [{code, body} | rest] = answers

        :gen_tcp.send(
          sock,
          "HTTP/1.1 #{code} X\r\nContent-Type: application/json\r\nContent-Length: #{byte_size(body)}\r\n" <>
            "Connection: close\r\n\r\n" <> body
        )

        :gen_tcp.close(sock)
        serve(listen, if(rest == [], do: answers, else: rest))

      {:error, _} ->
        :ok
    end
  end
end
