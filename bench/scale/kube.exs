# The fake Kubernetes API server of bench/scale.exs (STRATEGY=kubernetes): the tests' FakeKube
# (test/support/fake_kube.ex: HTTPS, bearer token, list and watch of Pods in the API's shapes,
# resourceVersions and bookmarks) on the bridge's host address 198.19.0.1, holding N pods whose
# IPs are the node IPs, label app=scale, namespace default.
#
# Both libraries get libcluster 3.5's config. libcluster 3.5 always asks
# https://<kubernetes_master>.<cluster domain>/ on port 443 and checks the name in the server's
# certificate, so: the CA's server certificate also names kubernetes.default.svc.cluster.local,
# every namespace's /etc/hosts (/etc/netns/lcs<i>/hosts, bind-mounted by `ip netns exec`) maps
# that name to 198.19.0.1, and a TCP relay on 198.19.0.1:443 passes the TLS connections through
# to FakeKube's port. The service account dir (token, ca.crt, namespace) is a copy of FakeKube's
# at the fixed path sa_path/0, given to both libraries as `kubernetes_service_account_path`.
# (TestCA.shared!/1's lock is the test suite's; the CA is made here instead)
Code.put_compiler_option(:no_warn_undefined, [{LibclusterRs.Test.Lock, :hold, 2}])

for f <- ~w(test/support/json.ex test/support/test_ca.ex test/support/fake_kube.ex),
    do: Code.require_file(f)

defmodule Bench.Scale.Kube do
  alias LibclusterRs.Test.{FakeKube, TestCA}

  @host_ip {198, 19, 0, 1}
  @master "kubernetes.default.svc"
  @fqdn "kubernetes.default.svc.cluster.local"

  @sa "/tmp/lcs-kube-sa"

  def sa_path, do: @sa
  def host_ip, do: @host_ip
  def master, do: @master
  def fqdn, do: @fqdn

  @doc "Starts the API server with `ips` as pods n-<i>; returns `%{kube, sa_path, relay}`."
  def start(ips) do
    {:ok, _} = Application.ensure_all_started(:ssl)
    # FakeKube takes its certificates from TestCA.shared!(ips: [ip]): make that CA here, with
    # the in-cluster name as well (TestCA.shared! alone would name only the IP and localhost).
    ca = TestCA.make!(ips: [@host_ip], hostnames: [@fqdn, "localhost"])
    :persistent_term.put({TestCA, [@host_ip], nil}, ca)
    kube = FakeKube.start!(ip: @host_ip)

    for {ip, i} <- Enum.with_index(ips, 1),
        do: FakeKube.put(kube, :pods, FakeKube.pod("n-#{i}", ip, labels: %{"app" => "scale"}))

    File.rm_rf!(@sa)
    File.cp_r!(kube.sa_path, @sa)
    relay = start_relay(443, kube.port)
    handle = %{kube: kube, ca: ca, relay: relay}
    :persistent_term.put({__MODULE__, :current}, handle)
    handle
  end

  @doc "The running server (started by start/1), or nil."
  def current, do: :persistent_term.get({__MODULE__, :current}, nil)

  def stop(%{kube: kube, ca: ca, relay: relay}) do
    :persistent_term.erase({__MODULE__, :current})
    Process.exit(relay, :kill)
    FakeKube.stop(kube)
    TestCA.remove(ca)
    :persistent_term.erase({TestCA, [@host_ip], nil})
    File.rm_rf!(@sa)
    :ok
  end

  @doc "Requests the server has received since the last clear: {lists, watches}."
  def requests(%{kube: kube}) do
    reqs = FakeKube.requests(kube)
    {Enum.count(reqs, &(&1.verb == :list)), Enum.count(reqs, &(&1.verb == :watch))}
  end

  def clear_requests(%{kube: kube}), do: FakeKube.clear_requests(kube)

  # A TCP relay from @host_ip:from to @host_ip:to (TLS passes through untouched).
  defp start_relay(from, to) do
    parent = self()

    pid =
      spawn(fn ->
        {:ok, l} =
          :gen_tcp.listen(from, [:binary, ip: @host_ip, active: false, reuseaddr: true, backlog: 1024])

        send(parent, {:relay, self()})
        accept(l, to)
      end)

    receive do
      {:relay, ^pid} -> pid
    after
      5_000 -> raise "the relay to FakeKube did not start"
    end
  end

  defp accept(l, to) do
    {:ok, a} = :gen_tcp.accept(l)

    pid =
      spawn(fn ->
        receive do
          :go -> :ok
        end

        case :gen_tcp.connect(@host_ip, to, [:binary, active: false]) do
          {:ok, b} ->
            spawn_link(fn -> pump(b, a) end)
            pump(a, b)

          _ ->
            :gen_tcp.close(a)
        end
      end)

    :ok = :gen_tcp.controlling_process(a, pid)
    send(pid, :go)
    accept(l, to)
  end

  defp pump(from, to) do
    case :gen_tcp.recv(from, 0) do
      {:ok, data} ->
        :gen_tcp.send(to, data)
        pump(from, to)

      {:error, _} ->
        :gen_tcp.close(to)
        :gen_tcp.close(from)
        exit(:normal)
    end
  end
end
