defmodule Cluster.Strategy.KubernetesEnvTest do
  # The Kubernetes strategies' defaults that come from the environment (KUBERNETES_SERVICE_HOST,
  # KUBERNETES_SERVICE_PORT, CLUSTER_DOMAIN). The environment is an input, a map (the `:env`
  # option, else the process environment read once at start): nothing here touches the process's.
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog

  test "API address: libcluster's rule, KUBERNETES_SERVICE_HOST, per-mode defaults" do
    alias Cluster.Strategy.Kubernetes, as: K

    assert K.api_url("kubernetes.default.svc", "cluster.local", %{}, :t) ==
             "https://kubernetes.default.svc.cluster.local"

    assert K.api_url("api.example.com.", "cluster.local", %{}, :t) == "https://api.example.com"
    assert K.api_url("k.svc.cluster.local", "cluster.local", %{}, :t) == "https://k.svc.cluster.local"
    assert K.api_url("127.0.0.1:6443", "cluster.local", %{}, :t) == "https://127.0.0.1:6443"
    assert K.api_url("[fd00::1]:6443", "cluster.local", %{}, :t) == "https://[fd00::1]:6443"

    in_pod = %{"KUBERNETES_SERVICE_HOST" => "fd00::10", "KUBERNETES_SERVICE_PORT" => "8443"}
    assert K.api_url(nil, "cluster.local", in_pod, :t) == "https://[fd00::10]:8443"
    # The key wins over the variables.
    assert K.api_url("127.0.0.1:6443", "cluster.local", in_pod, :t) == "https://127.0.0.1:6443"
    assert K.api_url(nil, "cluster.local", %{}, :t) == "https://kubernetes.default.svc.cluster.local"

    assert K.cluster_domain("cluster", %{"CLUSTER_DOMAIN" => "corp.example."}) == "corp.example"
    assert K.cluster_domain("prod", %{}) == "prod.local"

    state = %Cluster.Strategy.State{
      topology: :k8s,
      config: [
        kubernetes_node_basename: "a",
        kubernetes_selector: "app=a",
        kubernetes_namespace: "d",
        kubernetes_ip_lookup_mode: :pods,
        env: %{}
      ]
    }

    # The strategy reads its environment through :env (else the process's, once at start).
    {:ok, %{native: native}, _} =
      K.init(%{
        state
        | config: Keyword.put(state.config, :env, Map.put(in_pod, "CLUSTER_DOMAIN", "corp.example"))
      })

    assert native.api_url == "https://[fd00::10]:8443"
    assert native.cluster_domain == "corp.example"

    {:ok, %{native: native}, _} = K.init(state)
    assert native.api_url == "https://kubernetes.default.svc.cluster.local"
    assert native.cluster_domain == "cluster.local"

    assert_raise ArgumentError, ~r/expected :env to be a map of string names to string values/, fn ->
      K.init(%{state | config: Keyword.put(state.config, :env, [{"CLUSTER_DOMAIN", "x"}])})
    end

    # :pods: no field selector and no readiness filter by default (libcluster's), both with
    # kubernetes_pods_ready_only.
    {:ok, %{native: native}, opts} = K.init(state)
    assert native.field_selector == nil
    refute native.pods_ready_only
    assert native.watch
    assert opts[:interval] == 5_000

    {:ok, %{native: native}, _} =
      K.init(%{state | config: state.config ++ [kubernetes_pods_ready_only: true]})

    assert native.field_selector == "status.phase=Running"
    assert native.pods_ready_only

    {:ok, %{native: native}, _} =
      K.init(%{
        state
        | config: state.config ++ [kubernetes_pods_ready_only: true, kubernetes_field_selector: nil]
      })

    assert native.field_selector == nil

    slices_config = [
      kubernetes_node_basename: "a",
      kubernetes_ip_lookup_mode: :endpointslices,
      kubernetes_service_name: "svc",
      kubernetes_namespace: "d"
    ]

    {:ok, %{native: native}, _} = K.init(%{state | config: slices_config})
    assert native.label_selector == "kubernetes.io/service-name=svc"
    assert native.field_selector == nil

    # Ready-only means nothing outside :pods: said, not silently ignored.
    log =
      capture_log(fn ->
        {:ok, _, _} = K.init(%{state | config: slices_config ++ [kubernetes_pods_ready_only: true]})
      end)

    assert log =~ "kubernetes_pods_ready_only applies to kubernetes_ip_lookup_mode: :pods only"
  end

  test "DNSSRV: the query's cluster domain is CLUSTER_DOMAIN from the environment map" do
    alias Cluster.Strategy.Kubernetes.DNSSRV

    config = [
      service: "svc",
      namespace: "ns",
      application_name: "app",
      resolver: fn _ -> {:error, :nxdomain} end
    ]

    init = fn env ->
      DNSSRV.init(%Cluster.Strategy.State{topology: :srv_env, config: [env: env] ++ config})
    end

    assert {:ok, %{query: "svc.ns.svc.cluster.local."}, _} = init.(%{})
    assert {:ok, %{query: "svc.ns.svc.corp.example."}, _} = init.(%{"CLUSTER_DOMAIN" => "corp.example."})
  end
end
