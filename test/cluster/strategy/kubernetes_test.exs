defmodule Cluster.Strategy.KubernetesTest do
  # Against a fake API server on 127.0.0.1 (HTTPS, a CA made for the run, bearer tokens, list and
  # watch): every lookup mode and name form, watch semantics, token rotation, a wrong CA, each fault.
  # Async: every test has its own server and topology names of its own; logs are read per
  # topology (other modules log at the same time). The test that sets KUBERNETES_SERVICE_HOST and
  # CLUSTER_DOMAIN is in kubernetes_env_test.exs (synchronous).
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually
  import ExUnit.CaptureLog

  alias LibclusterRs.Test.{FakeDist, FakeKube}

  setup do
    kube = FakeKube.start!()
    on_exit(fn -> FakeKube.stop(kube) end)
    {:ok, kube: kube}
  end

  defp native(kube, overrides) do
    Map.merge(
      %{
        api_url: "https://#{kube.master}",
        service_account_path: kube.sa_path,
        namespace: "default",
        lookup: :endpoints,
        pods_ready_only: false,
        label_selector: "app=myapp",
        field_selector: nil,
        basename: "app",
        mode: :ip,
        service_name: nil,
        cluster_domain: "cluster.local",
        use_cached_resources: false,
        insecure_skip_tls_verify: false,
        request_timeout_ms: 1_500,
        max_body_bytes: 4_000_000,
        watch: false,
        watch_timeout_ms: 300_000,
        backoff_min_ms: 50,
        backoff_max_ms: 200,
        poll_interval_ms: 5_000,
        watch_retry_interval_ms: 300_000,
        probe: false
      },
      Map.new(overrides)
    )
  end

  defp poll(kube, overrides \\ []) do
    tag = make_ref()
    _handle = LibclusterRs.Native.kubernetes_start(tag, native(kube, overrides))

    receive do
      {:libcluster_rs, ^tag, event} -> event
    after
      5_000 -> flunk("no answer from the kubernetes task")
    end
  end

  defp next(tag, timeout \\ 3_000) do
    receive do
      {:libcluster_rs, ^tag, event} -> event
    after
      timeout -> flunk("no event within #{timeout} ms")
    end
  end

  # Starts the strategy over the test's FakeDist (it sends {:connect | :disconnect, node} here).
  defp start_strategy(kube, topology, config) do
    dist = FakeDist.new()

    state = %Cluster.Strategy.State{
      topology: topology,
      connect: {FakeDist, :connect, [dist]},
      disconnect: {FakeDist, :disconnect, [dist]},
      list_nodes: {FakeDist, :list_nodes, [dist]},
      config:
        Keyword.merge(
          [
            kubernetes_node_basename: "app",
            kubernetes_selector: "app=myapp",
            kubernetes_master: kube.master,
            kubernetes_service_account_path: kube.sa_path
          ],
          config
        )
    }

    start_supervised!(Supervisor.child_spec({Cluster.Strategy.Kubernetes, [state]}, id: topology))
  end

  defp occurrences(log, text), do: log |> String.split(text) |> length() |> Kernel.-(1)

  # The lines a topology logged (other async modules log into the same capture).
  defp lines_of(log, topology) do
    log |> String.split("\n") |> Enum.filter(&(&1 =~ "[libcluster:#{topology}]")) |> Enum.join("\n")
  end

  describe "lookup modes and node names" do
    test ":endpoints reads ready addresses, with and without targetRef", %{kube: kube} do
      FakeKube.put(
        kube,
        :endpoints,
        FakeKube.endpoints("myapp", [{"10.0.0.1", "myapp-0"}, {"10.0.0.2", :no_target_ref}],
          labels: %{"app" => "myapp"},
          not_ready: ["10.0.0.3"]
        )
      )

      FakeKube.put(kube, :endpoints, FakeKube.endpoints("other", ["10.9.9.9"], labels: %{"app" => "other"}))

      assert {:nodes, ["app@10.0.0.1", "app@10.0.0.2"]} = poll(kube)

      assert {:nodes, ["app@10-0-0-1.default.pod.corp.example", "app@10-0-0-2.default.pod.corp.example"]} =
               poll(kube, mode: :dns, cluster_domain: "corp.example")

      assert {:nodes, ["app@myapp-0.myapp.default.svc.corp.example"]} =
               poll(kube, mode: :hostname, cluster_domain: "corp.example")

      assert {:nodes, ["app@myapp-0.headless.default.svc.cluster.local"]} =
               poll(kube, mode: :hostname, service_name: "headless")

      [req | _] = FakeKube.requests(kube)
      assert req.query["labelSelector"] == "app=myapp"
      assert req.auth == "Bearer token-1"
    end

    test ":pods takes every pod with an IP, whatever its phase, readiness or deletion (libcluster)",
         %{kube: kube} do
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-0", "10.1.0.1"))
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-1", "10.1.0.2", ready: false))
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-2", "10.1.0.3", phase: "Pending", ready: false))
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-3", "10.1.0.4", deleting: true))
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-4", "fd00::4"))
      # Scheduled but without an IP yet: nothing to connect to.
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-5", nil, phase: "Pending", ready: false))

      assert {:nodes, ["app@10.1.0.1", "app@10.1.0.2", "app@10.1.0.3", "app@10.1.0.4", "app@fd00::4"]} =
               poll(kube, lookup: :pods)

      # No field selector: libcluster asks for the selector's pods only.
      [req] = FakeKube.requests(kube)
      assert req.query == %{"labelSelector" => "app=myapp"}

      assert {:nodes,
              [
                "app@myapp-0.myapp-headless.default.svc.cluster.local",
                "app@myapp-1.myapp-headless.default.svc.cluster.local",
                "app@myapp-2.myapp-headless.default.svc.cluster.local",
                "app@myapp-3.myapp-headless.default.svc.cluster.local",
                "app@myapp-4.myapp-headless.default.svc.cluster.local"
              ]} = poll(kube, lookup: :pods, mode: :hostname)
    end

    test ":pods with pods_ready_only: running, ready pods that are not being deleted", %{kube: kube} do
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-0", "10.1.0.1"))
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-1", "10.1.0.2", ready: false))
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-2", "10.1.0.3", phase: "Pending", ready: false))
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-3", "10.1.0.4", deleting: true))
      FakeKube.put(kube, :pods, FakeKube.pod("myapp-4", "fd00::4"))

      assert {:nodes, ["app@10.1.0.1", "app@fd00::4"]} = poll(kube, lookup: :pods, pods_ready_only: true)

      assert {:nodes,
              [
                "app@10-1-0-1.default.pod.cluster.local",
                "app@fd00-0000-0000-0000-0000-0000-0000-0004.default.pod.cluster.local"
              ]} =
               poll(kube,
                 lookup: :pods,
                 pods_ready_only: true,
                 mode: :dns,
                 field_selector: "status.phase=Running"
               )

      assert List.last(FakeKube.requests(kube)).query["fieldSelector"] == "status.phase=Running"
    end

    test ":endpointslices honours conditions, several slices and dual stack", %{kube: kube} do
      v4 = [
        {"10.2.0.1", "p1", FakeKube.ready()},
        {"10.2.0.2", "p2", FakeKube.terminating()},
        {"10.2.0.3", "p3", FakeKube.not_ready()}
      ]

      FakeKube.put(kube, :endpointslices, FakeKube.slice("myapp-a", "myapp", "IPv4", v4))

      FakeKube.put(
        kube,
        :endpointslices,
        FakeKube.slice("myapp-b", "myapp", "IPv4", [{"10.2.0.4", "p4", %{}}])
      )

      FakeKube.put(
        kube,
        :endpointslices,
        FakeKube.slice("myapp-v6", "myapp", "IPv6", [
          {"fd00::1", "p1", FakeKube.ready()},
          {"fd00::5", "p5", FakeKube.ready()}
        ])
      )

      FakeKube.put(
        kube,
        :endpointslices,
        FakeKube.slice("other-a", "other", "IPv4", [{"10.9.0.1", "o", FakeKube.ready()}])
      )

      slices = [lookup: :endpointslices, label_selector: "kubernetes.io/service-name=myapp"]
      assert {:nodes, ["app@10.2.0.1", "app@10.2.0.4", "app@fd00::5"]} = poll(kube, slices)

      assert {:nodes,
              [
                "app@p1.myapp.default.svc.cluster.local",
                "app@p4.myapp.default.svc.cluster.local",
                "app@p5.myapp.default.svc.cluster.local"
              ]} = poll(kube, slices ++ [mode: :hostname])

      assert {:nodes, [_, _, "app@fd00-0000-0000-0000-0000-0000-0000-0005.default.pod.cluster.local"]} =
               poll(kube, slices ++ [mode: :dns])

      assert List.last(FakeKube.requests(kube)).path ==
               "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    end

    test "kubernetes_use_cached_resources lists with resourceVersion=0", %{kube: kube} do
      assert {:nodes, []} = poll(kube, use_cached_resources: true)
      assert [%{query: %{"resourceVersion" => "0"}}] = FakeKube.requests(kube)
    end
  end

  describe "watch" do
    test "lists, then streams changes within milliseconds; bookmarks, 410 and broken streams", %{kube: kube} do
      FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ["10.0.0.1"], labels: %{"app" => "myapp"}))
      tag = make_ref()
      handle = LibclusterRs.Native.kubernetes_start(tag, native(kube, watch: true))
      assert {:nodes, ["app@10.0.0.1"]} = next(tag)
      eventually(fn -> FakeKube.watchers(kube) == 1 end, 3_000)

      [list, watch] = FakeKube.requests(kube)
      assert list.verb == :list
      assert watch.query["watch"] == "1"
      assert watch.query["allowWatchBookmarks"] == "true"
      assert watch.query["resourceVersion"] == "1001"

      t0 = System.monotonic_time(:millisecond)

      FakeKube.put(
        kube,
        :endpoints,
        FakeKube.endpoints("myapp", ["10.0.0.1", "10.0.0.2"], labels: %{"app" => "myapp"})
      )

      assert {:nodes, ["app@10.0.0.1", "app@10.0.0.2"]} = next(tag)
      assert System.monotonic_time(:millisecond) - t0 < 500

      # A bookmark moves the resourceVersion without a change: a pod (not watched here) takes the
      # server to 1003, the bookmark says so, and the watch reports nothing for it (the next
      # message is the broken stream's error below).
      FakeKube.put(kube, :pods, FakeKube.pod("elsewhere", "10.9.0.1"))
      FakeKube.bookmark(kube)

      # A broken stream is an error (not an empty set), then the watch resumes from the last
      # version, the bookmark's.
      FakeKube.clear_requests(kube)
      FakeKube.break_watches(kube)
      assert {:discovery_error, kind, msg} = next(tag)
      assert kind in [:io, :malformed]
      assert msg =~ "watch"
      assert {:nodes, ["app@10.0.0.1", "app@10.0.0.2"]} = next(tag)
      assert [%{verb: :watch, query: %{"resourceVersion" => "1003"}}] = FakeKube.requests(kube)

      # 410 Gone: re-list, then watch again.
      FakeKube.clear_requests(kube)
      FakeKube.expire(kube)
      FakeKube.delete(kube, :endpoints, "myapp")
      assert {:nodes, []} = next(tag)

      eventually(
        fn -> Enum.map(FakeKube.requests(kube), & &1.verb) == [:list, :watch] end,
        3_000
      )

      LibclusterRs.Native.discovery_stop(handle)
    end

    test "a forbidden re-list keeps reporting errors, never an empty set", %{kube: kube} do
      FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ["10.0.0.1"], labels: %{"app" => "myapp"}))
      tag = make_ref()
      handle = LibclusterRs.Native.kubernetes_start(tag, native(kube, watch: true))
      assert {:nodes, ["app@10.0.0.1"]} = next(tag)
      eventually(fn -> FakeKube.watchers(kube) == 1 end, 3_000)
      FakeKube.fault(kube, :list, {:status, 403})
      FakeKube.fault(kube, :list, {:status, 500})
      # 410 Gone: the watch re-lists, and the re-lists fail.
      FakeKube.expire(kube)
      assert {:discovery_error, :forbidden, msg} = next(tag)
      assert msg =~ "may not list endpoints in namespace default"
      assert {:discovery_error, :http_status, msg} = next(tag)
      assert msg =~ "500"
      assert {:nodes, ["app@10.0.0.1"]} = next(tag)
      LibclusterRs.Native.discovery_stop(handle)
    end

    test "a list-only Role: the watch's 403 falls back to polling, said once; a granted watch is picked up",
         %{kube: kube} do
      FakeKube.grant(kube, [:list])
      FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ["10.0.0.1"], labels: %{"app" => "myapp"}))
      tag = make_ref()
      opts = native(kube, watch: true, poll_interval_ms: 100, watch_retry_interval_ms: 700)
      # Kept referenced to the end: a collected handle stops its task.
      handle = LibclusterRs.Native.kubernetes_start(tag, opts)
      assert {:nodes, ["app@10.0.0.1"]} = next(tag)
      assert {:watch_mode, :poll_fallback, msg} = next(tag)
      assert msg =~ "may not watch endpoints in namespace default"
      assert msg =~ "priv/rbac/endpoints.json"

      # Polling at poll_interval: a change arrives within a few intervals.
      FakeKube.put(
        kube,
        :endpoints,
        FakeKube.endpoints("myapp", ["10.0.0.1", "10.0.0.2"], labels: %{"app" => "myapp"})
      )

      assert {:nodes, ["app@10.0.0.1", "app@10.0.0.2"]} = next(tag, 1_000)

      # A failed list while polling is an error, never an empty set; the next list recovers.
      FakeKube.fault(kube, :list, {:status, 500})
      assert {:discovery_error, :http_status, _} = next(tag, 1_000)
      assert {:nodes, ["app@10.0.0.1", "app@10.0.0.2"]} = next(tag, 1_000)

      # The watch is retried now and then, and each forbidden retry stays silent.
      eventually(
        fn -> kube |> FakeKube.requests() |> Enum.count(&(&1.verb == :watch)) >= 3 end,
        5_000
      )

      refute_received {:libcluster_rs, ^tag, _}

      # The Role is fixed: the next retry watches, and changes arrive at once again.
      FakeKube.grant(kube, [:list, :watch])
      assert {:watch_mode, :watch, _} = next(tag, 3_000)
      eventually(fn -> FakeKube.watchers(kube) == 1 end, 3_000)
      FakeKube.clear_requests(kube)
      FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ["10.0.0.3"], labels: %{"app" => "myapp"}))
      assert {:nodes, ["app@10.0.0.3"]} = next(tag, 500)
      assert FakeKube.requests(kube) == []
      LibclusterRs.Native.discovery_stop(handle)
    end
  end

  describe "credentials" do
    test "the token is read at every request (rotation)", %{kube: kube} do
      assert {:nodes, []} = poll(kube)
      FakeKube.rotate_token(kube, "token-2")
      assert {:nodes, []} = poll(kube)
      assert Enum.map(FakeKube.requests(kube), & &1.auth) == ["Bearer token-1", "Bearer token-2"]
    end

    test "a watch reconnect picks up a rotated token", %{kube: kube} do
      tag = make_ref()
      _handle = LibclusterRs.Native.kubernetes_start(tag, native(kube, watch: true))
      assert {:nodes, []} = next(tag)
      eventually(fn -> FakeKube.watchers(kube) == 1 end, 3_000)
      FakeKube.rotate_token(kube, "token-3")
      FakeKube.break_watches(kube)
      assert {:discovery_error, _, _} = next(tag)
      assert {:nodes, []} = next(tag)
      assert List.last(FakeKube.requests(kube)).auth == "Bearer token-3"
    end

    test "a server the CA does not vouch for is refused and receives nothing", %{kube: kube} do
      assert {:discovery_error, :tls, msg} = poll(kube, service_account_path: kube.wrong_ca_sa_path)
      assert msg =~ "nothing was sent"
      assert FakeKube.requests(kube) == []
    end

    test "without ca.crt the system roots are used, never no verification", %{kube: kube} do
      File.rm!(Path.join(kube.sa_path, "ca.crt"))
      # The run's CA is in no system store: refused, and the token was not sent.
      assert {:discovery_error, :tls, _} = poll(kube)
      assert FakeKube.requests(kube) == []
    end

    test "only the explicit insecure option skips verification", %{kube: kube} do
      assert {:nodes, []} =
               poll(kube, service_account_path: kube.wrong_ca_sa_path, insecure_skip_tls_verify: true)

      assert [_] = FakeKube.requests(kube)
    end

    test "a stale token is a 401 that says what to check", %{kube: kube} do
      File.write!(Path.join(kube.sa_path, "token"), "stale")
      assert {:discovery_error, :unauthorized, msg} = poll(kube)
      assert msg =~ "token"
    end

    test "a missing token file is a config error, and nothing is sent", %{kube: kube} do
      File.rm!(Path.join(kube.sa_path, "token"))
      assert {:discovery_error, :config, msg} = poll(kube)
      assert msg =~ "service account token"
      assert FakeKube.requests(kube) == []
    end
  end

  describe "faults are typed errors" do
    test "403 names the verb, resource, namespace and the missing rule", %{kube: kube} do
      FakeKube.fault(kube, :list, {:status, 403})
      assert {:discovery_error, :forbidden, msg} = poll(kube, lookup: :endpointslices)
      assert msg =~ "may not list endpointslices in namespace default"
      assert msg =~ ~s(apiGroups: [discovery.k8s.io], resources: ["endpointslices"], verbs: ["list", "watch"])
      assert msg =~ "RoleBinding"
      assert msg =~ "cannot list resource"
    end

    test "404, 500, slow, malformed and truncated answers", %{kube: kube} do
      FakeKube.fault(kube, :list, {:status, 404})
      assert {:discovery_error, :not_found, msg} = poll(kube)
      assert msg =~ "kubernetes_namespace"

      FakeKube.fault(kube, :list, {:status, 500})
      assert {:discovery_error, :http_status, msg} = poll(kube)
      assert msg =~ "500"

      FakeKube.fault(kube, :list, {:slow, 1_500})
      assert {:discovery_error, :timeout, msg} = poll(kube, request_timeout_ms: 300)
      assert msg =~ "kubernetes_request_timeout"

      FakeKube.fault(kube, :list, :malformed)
      assert {:discovery_error, :malformed, _} = poll(kube)

      FakeKube.fault(kube, :list, :truncate)
      assert {:discovery_error, :malformed, msg} = poll(kube)
      assert msg =~ "truncated"
    end

    test "a body larger than kubernetes_max_body_bytes is refused", %{kube: kube} do
      for i <- 1..50, do: FakeKube.put(kube, :pods, FakeKube.pod("p#{i}", "10.3.0.#{i}"))
      assert {:discovery_error, :malformed, msg} = poll(kube, lookup: :pods, max_body_bytes: 10_000)
      assert msg =~ "larger than 10000 bytes"
    end
  end

  describe "the strategy" do
    test "validates its config with precise messages" do
      state = %Cluster.Strategy.State{
        topology: :k8s,
        config: [kubernetes_selector: "app=x", kubernetes_namespace: "d"]
      }

      assert_raise ArgumentError, ~r/kubernetes_node_basename/, fn ->
        Cluster.Strategy.Kubernetes.init(state)
      end

      state = %{
        state
        | config: [
            kubernetes_node_basename: "a",
            kubernetes_namespace: "d",
            mode: :fqdn,
            kubernetes_selector: "x"
          ]
      }

      assert_raise ArgumentError, ~r/expected :mode to be one of :ip, :dns, :hostname/, fn ->
        Cluster.Strategy.Kubernetes.init(state)
      end

      state = %{state | config: [kubernetes_node_basename: "a", kubernetes_namespace: "d"]}
      assert_raise ArgumentError, ~r/kubernetes_selector/, fn -> Cluster.Strategy.Kubernetes.init(state) end

      state = %{
        state
        | config: [kubernetes_node_basename: "a", kubernetes_namespace: "d", kubernetes_selector: 7]
      }

      assert_raise ArgumentError, ~r/expected :kubernetes_selector to be a non-empty string, got: 7/, fn ->
        Cluster.Strategy.Kubernetes.init(state)
      end

      state = %{
        state
        | config: [
            kubernetes_node_basename: "a",
            kubernetes_selector: "x",
            kubernetes_namespace: "d",
            kubernetes_master: "http://x"
          ]
      }

      assert_raise ArgumentError, ~r/kubernetes_master/, fn -> Cluster.Strategy.Kubernetes.init(state) end
    end

    test "polling: every fault keeps the last membership; a successful change prunes", %{kube: kube} do
      dist = FakeDist.new()
      FakeKube.put(kube, :pods, FakeKube.pod("a", "10.5.0.1"))
      FakeKube.put(kube, :pods, FakeKube.pod("b", "10.5.0.2"))

      state = %Cluster.Strategy.State{
        topology: :k8s_poll,
        connect: {FakeDist, :connect, [dist]},
        disconnect: {FakeDist, :disconnect, [dist]},
        list_nodes: {FakeDist, :list_nodes, [dist]},
        config: [
          kubernetes_node_basename: "app",
          kubernetes_selector: "app=myapp",
          kubernetes_ip_lookup_mode: :pods,
          kubernetes_watch: false,
          polling_interval: 100,
          kubernetes_request_timeout: 300,
          kubernetes_master: kube.master,
          kubernetes_service_account_path: kube.sa_path
        ]
      }

      start_supervised!({Cluster.Strategy.Kubernetes, [state]})
      assert_receive {:connect, :"app@10.5.0.1"}, 3_000
      assert_receive {:connect, :"app@10.5.0.2"}, 3_000

      faults = [
        {:status, 401},
        {:status, 403},
        {:status, 404},
        {:status, 500},
        {:slow, 600},
        :malformed,
        :truncate
      ]

      FakeKube.clear_requests(kube)
      for f <- faults, do: FakeKube.fault(kube, :list, f)
      # Pod b is deleted while the API fails: only a successful answer may prune it.
      FakeKube.delete(kube, :pods, "b")
      assert_receive {:disconnect, :"app@10.5.0.2"}, 10_000
      # Every fault was served before that successful answer, and none pruned anything.
      assert length(FakeKube.requests(kube)) >= length(faults) + 1
      refute_received {:disconnect, :"app@10.5.0.1"}
    end

    test "connects what the API lists, prunes what it drops, and keeps everything on errors", %{kube: kube} do
      dist = FakeDist.new()

      FakeKube.put(
        kube,
        :endpoints,
        FakeKube.endpoints("myapp", ["10.0.0.1", "10.0.0.2"], labels: %{"app" => "myapp"})
      )

      state = %Cluster.Strategy.State{
        topology: :k8s,
        connect: {FakeDist, :connect, [dist]},
        disconnect: {FakeDist, :disconnect, [dist]},
        list_nodes: {FakeDist, :list_nodes, [dist]},
        config: [
          kubernetes_node_basename: "app",
          kubernetes_selector: "app=myapp",
          kubernetes_master: kube.master,
          kubernetes_service_account_path: kube.sa_path
        ]
      }

      start_supervised!({Cluster.Strategy.Kubernetes, [state]})
      assert_receive {:connect, :"app@10.0.0.1"}, 3_000
      assert_receive {:connect, :"app@10.0.0.2"}, 3_000
      eventually(fn -> FakeKube.watchers(kube) == 1 end, 3_000)

      # Faults in a row: the watch ends with 410 Gone, the re-list is malformed, then forbidden,
      # the next watch fails too. Nothing is disconnected.
      FakeKube.fault(kube, :list, :malformed)
      FakeKube.fault(kube, :list, {:status, 403})
      FakeKube.fault(kube, :watch, {:status, 500})
      FakeKube.expire(kube)

      # Recovery: every fault was served (the first list and watch, the malformed and the
      # forbidden re-list, a good one, the failed watch and a good one), and nothing was
      # disconnected meanwhile. Then a real change prunes.
      eventually(
        fn ->
          verbs = kube |> FakeKube.requests() |> Enum.map(& &1.verb)

          Enum.count(verbs, &(&1 == :list)) == 4 and Enum.count(verbs, &(&1 == :watch)) == 3 and
            FakeKube.watchers(kube) == 1
        end,
        10_000,
        fn -> "no recovery; requests: #{inspect(Enum.map(FakeKube.requests(kube), & &1.verb))}" end
      )

      refute_received {:disconnect, _}
      FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ["10.0.0.1"], labels: %{"app" => "myapp"}))
      assert_receive {:disconnect, :"app@10.0.0.2"}, 3_000
      refute_received {:disconnect, :"app@10.0.0.1"}
    end
  end

  describe "libcluster 3.5's behaviour" do
    test "pods whose readiness waits for the cluster are connected; ready-only waits for Ready", %{kube: kube} do
      # The readiness probe of these pods passes only once they are clustered (Horde, Mnesia...).
      FakeKube.put(kube, :pods, FakeKube.pod("a", "10.6.0.1", ready: false))
      FakeKube.put(kube, :pods, FakeKube.pod("b", "10.6.0.2", phase: "Pending", ready: false))
      start_strategy(kube, :k8s_not_ready, kubernetes_ip_lookup_mode: :pods)
      assert_receive {:connect, :"app@10.6.0.1"}, 3_000
      assert_receive {:connect, :"app@10.6.0.2"}, 3_000
      refute Enum.any?(FakeKube.requests(kube), &Map.has_key?(&1.query, "fieldSelector"))

      # A pod being deleted is still listed, so still connected, as in libcluster; it leaves with
      # its object.
      FakeKube.put(kube, :pods, FakeKube.pod("a", "10.6.0.1", ready: false, deleting: true))
      FakeKube.delete(kube, :pods, "a")
      assert_receive {:disconnect, :"app@10.6.0.1"}, 3_000
      refute_received {:disconnect, :"app@10.6.0.2"}
    end

    test "kubernetes_pods_ready_only: Running, Ready and not being deleted", %{kube: kube} do
      FakeKube.put(kube, :pods, FakeKube.pod("a", "10.6.0.1", ready: false))
      FakeKube.put(kube, :pods, FakeKube.pod("c", "10.6.0.3"))

      start_strategy(kube, :k8s_ready_only, kubernetes_ip_lookup_mode: :pods, kubernetes_pods_ready_only: true)

      assert_receive {:connect, :"app@10.6.0.3"}, 3_000
      assert [%{query: %{"fieldSelector" => "status.phase=Running"}} | _] = FakeKube.requests(kube)
      refute_received {:connect, :"app@10.6.0.1"}
      FakeKube.put(kube, :pods, FakeKube.pod("a", "10.6.0.1"))
      assert_receive {:connect, :"app@10.6.0.1"}, 3_000
      FakeKube.put(kube, :pods, FakeKube.pod("c", "10.6.0.3", deleting: true))
      assert_receive {:disconnect, :"app@10.6.0.3"}, 3_000
    end

    test "a list-only Role: polls, warns once, connects and prunes; a granted watch is picked up",
         %{kube: kube} do
      FakeKube.grant(kube, [:list])
      FakeKube.put(kube, :pods, FakeKube.pod("a", "10.7.0.1"))
      topology = :k8s_list_only

      log =
        capture_log(fn ->
          start_strategy(kube, topology,
            kubernetes_ip_lookup_mode: :pods,
            polling_interval: 200,
            kubernetes_watch_retry_interval: 700
          )

          assert_receive {:connect, :"app@10.7.0.1"}, 3_000
          s = status_until(topology, &(&1.extra.kubernetes.mode == :poll_fallback))
          assert s.extra.kubernetes.watch_forbidden =~ "may not watch pods in namespace default"
          assert s.last_error == nil

          # A pod added after the first list is connected within a few polling intervals.
          t0 = System.monotonic_time(:millisecond)
          FakeKube.put(kube, :pods, FakeKube.pod("b", "10.7.0.2"))
          assert_receive {:connect, :"app@10.7.0.2"}, 2_000
          assert System.monotonic_time(:millisecond) - t0 < 1_500

          # One removed is pruned.
          FakeKube.delete(kube, :pods, "a")
          assert_receive {:disconnect, :"app@10.7.0.1"}, 2_000

          # Forbidden retries of the watch stay quiet.
          eventually(
            fn -> kube |> FakeKube.requests() |> Enum.count(&(&1.verb == :watch)) >= 2 end,
            5_000
          )

          # The Role is fixed: the strategy returns to watching.
          FakeKube.grant(kube, [:list, :watch])
          status_until(topology, &(&1.extra.kubernetes.mode == :watch), 5_000)
          eventually(fn -> FakeKube.watchers(kube) == 1 end, 3_000)
          FakeKube.put(kube, :pods, FakeKube.pod("c", "10.7.0.3"))
          assert_receive {:connect, :"app@10.7.0.3"}, 1_000
        end)

      log = lines_of(log, topology)
      assert occurrences(log, "watch forbidden, polling instead") == 1
      [warning] = Regex.run(~r/\[warning\].*watch forbidden, polling instead.*/, log)
      assert warning =~ "may not watch pods in namespace default"
      assert warning =~ ~s(resources: ["pods"], verbs: ["list", "watch"])
      assert warning =~ "priv/rbac/pods.json"
      assert warning =~ "lists pods every 200 ms"
      assert warning =~ "tries the watch again every 700 ms"
      assert log =~ "watching again"
      refute log =~ "discovery failed"
    end

    test "no namespace file and no kubernetes_namespace: boots, says so once, picks the file up", %{
      kube: kube
    } do
      FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ["10.8.0.1"], labels: %{"app" => "myapp"}))
      path = Path.join(kube.sa_path, "namespace")
      File.rm!(path)
      topology = :k8s_no_namespace

      log =
        capture_log(fn ->
          start_strategy(kube, topology, polling_interval: 100)
          s = status_until(topology, &(&1.error_streak >= 3))
          assert %{kind: :config, message: message} = s.last_error
          assert message =~ path
          assert message =~ ":kubernetes_namespace"
          refute_received {:connect, _}
          assert FakeKube.requests(kube) == []

          File.write!(path, "default")
          assert_receive {:connect, :"app@10.8.0.1"}, 3_000
        end)

      log = lines_of(log, topology)
      assert occurrences(log, "namespace file #{path}") == 1
      assert [_] = Regex.run(~r/\[error\].*namespace file #{Regex.escape(path)}/, log)
    end

    test "no token: boots, says so once, picks the token up", %{kube: kube} do
      FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ["10.8.0.2"], labels: %{"app" => "myapp"}))
      path = Path.join(kube.sa_path, "token")
      File.rm!(path)
      topology = :k8s_no_token

      log =
        capture_log(fn ->
          start_strategy(kube, topology, polling_interval: 200)
          s = status_until(topology, &(&1.error_streak >= 2))
          assert %{kind: :config, message: message} = s.last_error
          assert message =~ path
          assert message =~ "kubernetes_service_account_path"
          assert FakeKube.requests(kube) == []

          File.write!(path, "token-1\n")
          assert_receive {:connect, :"app@10.8.0.2"}, 5_000
        end)

      log = lines_of(log, topology)
      assert occurrences(log, "cannot read the service account token #{path}") == 1
      assert [_] = Regex.run(~r/\[error\].*service account token #{Regex.escape(path)}/, log)
    end

    test "a required key given as nil boots as an invalid topology, says why once; a missing key raises",
         %{kube: kube} do
      FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ["10.8.0.3"], labels: %{"app" => "myapp"}))

      for {key, topology} <- [
            kubernetes_selector: :k8s_nil_selector,
            kubernetes_node_basename: :k8s_nil_basename
          ] do
        log =
          capture_log(fn ->
            start_strategy(kube, topology, [{key, nil}, polling_interval: 100])
            # As DNSPoll, EC2, DigitalOcean, Rancher, Postgres and the DNS strategies: boots, says why.
            s = status_until(topology, &(&1.state == :invalid_config))
            assert %{kind: :config, message: message} = s.last_error
            assert message =~ "expected #{inspect(key)} to be"
            assert message =~ "got: nil"
          end)

        log = lines_of(log, topology)
        assert occurrences(log, "expected #{inspect(key)} to be") == 1
        assert log =~ "[error]"
      end

      # Nothing was asked of the API server, and nothing connected.
      refute_received {:connect, _}
      assert FakeKube.requests(kube) == []

      # The selector is not required for the EndpointSlices of one named service, nil or not.
      slices = [
        kubernetes_selector: nil,
        kubernetes_ip_lookup_mode: :endpointslices,
        kubernetes_service_name: "myapp",
        kubernetes_namespace: "default"
      ]

      start_strategy(kube, :k8s_nil_selector_slices, slices)
      assert {:ok, %{state: state}} = Cluster.status(:k8s_nil_selector_slices)
      assert state != :invalid_config

      state = %Cluster.Strategy.State{topology: :k8s, config: [kubernetes_node_basename: "a"]}
      assert_raise ArgumentError, ~r/:kubernetes_selector/, fn -> Cluster.Strategy.Kubernetes.init(state) end
    end

    # Our own objects, shaped like the API's (and like the responses libcluster's tests record):
    # each mode must give the node names libcluster 3.5 gives for them.
    test "node names are libcluster's for the same API objects", %{kube: kube} do
      FakeKube.put(
        kube,
        :endpoints,
        FakeKube.endpoints("svc-a", [{"10.48.0.7", "web-0"}], namespace: "default", labels: %{"app" => "web"})
      )

      # An address whose pod lives in another namespace: libcluster names it after the targetRef's.
      FakeKube.put(
        kube,
        :endpoints,
        put_in(
          FakeKube.endpoints("svc-b", [{"10.48.0.8", "web-1"}], labels: %{"app" => "web"}),
          ["subsets", Access.at(0), "addresses", Access.at(0), "targetRef", "namespace"],
          "team-b"
        )
      )

      # A pod with nothing but its IP, hostname and namespace, as libcluster reads it.
      FakeKube.put(kube, :pods, %{
        "metadata" => %{"name" => "web-2", "namespace" => "default", "labels" => %{"app" => "web"}},
        "spec" => %{"hostname" => "web-2"},
        "status" => %{"podIP" => "10.48.0.9"}
      })

      names = fn config ->
        state = %Cluster.Strategy.State{
          topology: :k8s_names,
          config:
            [
              kubernetes_node_basename: "base",
              kubernetes_selector: "app=web",
              kubernetes_master: kube.master,
              kubernetes_service_account_path: kube.sa_path,
              kubernetes_watch: false
            ] ++ config
        }

        {:ok, impl, _} = Cluster.Strategy.Kubernetes.init(state)
        tag = make_ref()
        {{:async, _handle}, _impl} = Cluster.Strategy.Kubernetes.discover(impl, tag)
        assert {:nodes, names} = next(tag)
        names
      end

      assert names.([]) == ["base@10.48.0.7", "base@10.48.0.8"]

      assert names.(mode: :dns, kubernetes_cluster_name: "my_cluster") ==
               ["base@10-48-0-7.default.pod.my_cluster.local", "base@10-48-0-8.team-b.pod.my_cluster.local"]

      assert names.(
               mode: :hostname,
               kubernetes_cluster_name: "my_cluster",
               kubernetes_service_name: "my_service"
             ) ==
               [
                 "base@web-0.my_service.default.svc.my_cluster.local",
                 "base@web-1.my_service.team-b.svc.my_cluster.local"
               ]

      pods = [kubernetes_ip_lookup_mode: :pods]
      assert names.(pods) == ["base@10.48.0.9"]
      assert names.(pods ++ [mode: :dns]) == ["base@10-48-0-9.default.pod.cluster.local"]

      assert names.(pods ++ [mode: :hostname, kubernetes_service_name: "web"]) ==
               ["base@web-2.web.default.svc.cluster.local"]
    end
  end
end
