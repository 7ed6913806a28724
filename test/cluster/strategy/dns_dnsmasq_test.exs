defmodule Cluster.Strategy.DNSDnsmasqTest do
  # The DNS strategies' native lookups against a real DNS server (dnsmasq on 127.0.0.1, a high
  # port, records rewritten and reloaded by the test), with fake connect/list_nodes MFAs.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually
  import ExUnit.CaptureLog

  alias LibclusterRs.Discovery
  alias Cluster.Strategy.{DNSPoll, Kubernetes}
  alias LibclusterRs.Test.{Dnsmasq, FakeDist}

  @moduletag :dnsmasq

  setup do
    dns = Dnsmasq.start([{:a, "app.cluster.test", "10.0.0.1"}, {:a, "app.cluster.test", "10.0.0.2"}])
    on_exit(fn -> Dnsmasq.cleanup(dns) end)
    {:ok, dns: dns}
  end

  defp start(table, strategy, config) do
    topology = :"dnsmasq_#{System.unique_integer([:positive])}"
    spec = {Cluster.Supervisor, [[{topology, FakeDist.topology(table, strategy, config)}]]}
    sup = start_supervised!(Supervisor.child_spec(spec, id: topology))
    [{^topology, pid, _, _}] = Supervisor.which_children(sup)
    pid
  end

  defp poll_config(dns, extra) do
    [
      query: "app.cluster.test",
      node_basename: "app",
      nameservers: [Dnsmasq.nameserver(dns)],
      polling_interval: 100,
      query_timeout: 300,
      query_attempts: 1
    ]
    |> Keyword.merge(extra)
  end

  defp one_poll(dns, questions, extra \\ %{}) do
    tag = make_ref()

    opts =
      Map.merge(
        %{
          questions: questions,
          nameservers: [Dnsmasq.nameserver(dns)],
          resolv_conf: "/etc/resolv.conf",
          timeout_ms: 500,
          attempts: 1
        },
        extra
      )

    _handle = LibclusterRs.Native.dns_lookup_start(tag, opts)
    assert_receive {:libcluster_rs, ^tag, event}, 5_000
    event
  end

  test "A records: nodes are added and removed as the records change", %{dns: dns} do
    table = FakeDist.new()
    start(table, DNSPoll, poll_config(dns, membership: [prune: :immediate]))
    assert_receive {:connect, :"app@10.0.0.1"}, 2_000
    assert_receive {:connect, :"app@10.0.0.2"}, 2_000

    dns =
      Dnsmasq.set_records(dns, [{:a, "app.cluster.test", "10.0.0.2"}, {:a, "app.cluster.test", "10.0.0.3"}])

    assert_receive {:connect, :"app@10.0.0.3"}, 2_000
    assert_receive {:disconnect, :"app@10.0.0.1"}, 2_000
    assert FakeDist.up(table) == [:"app@10.0.0.2", :"app@10.0.0.3"]
    Dnsmasq.stop(dns)
  end

  test "AAAA records give IPv6 node names; A and AAAA are both asked by default", %{dns: dns} do
    Dnsmasq.set_records(dns, [{:a, "app.cluster.test", "10.0.0.1"}, {:aaaa, "app.cluster.test", "fd00::1:2"}])

    assert {:nodes, ["app@10.0.0.1", "app@fd00::1:2"]} =
             one_poll(dns, [{"app", "app.cluster.test", [:a, :aaaa]}])

    table = FakeDist.new()
    pid = start(table, DNSPoll, poll_config(dns, resource_types: [:aaaa]))
    assert_receive {:connect, :"app@fd00::1:2"}, 2_000
    # two more rounds found only the AAAA node: the A record was never asked
    eventually(fn -> Discovery.status(pid).rounds >= 3 end, 3_000)
    assert Discovery.status(pid).membership.known == MapSet.new([:"app@fd00::1:2"])
    refute_received {:connect, :"app@10.0.0.1"}
  end

  test "Kubernetes.DNS asks A and AAAA for the service", %{dns: dns} do
    Dnsmasq.set_records(dns, [
      {:a, "myapp-headless.default.svc.cluster.local", "10.8.0.1"},
      {:aaaa, "myapp-headless.default.svc.cluster.local", "fd00::8"}
    ])

    table = FakeDist.new()

    start(table, Kubernetes.DNS,
      service: "myapp-headless.default.svc.cluster.local.",
      application_name: "myapp",
      nameservers: [Dnsmasq.nameserver(dns)]
    )

    assert_receive {:connect, :"myapp@10.8.0.1"}, 2_000
    assert_receive {:connect, :"myapp@fd00::8"}, 2_000
  end

  test "SRV targets become node names (Kubernetes.DNSSRV)", %{dns: dns} do
    query = Kubernetes.DNSSRV.query("myapp-headless", "default", %{})

    Dnsmasq.set_records(dns, [
      {:srv, String.trim_trailing(query, "."), "myapp-0.myapp-headless.default.svc.cluster.local", 4000},
      {:srv, String.trim_trailing(query, "."), "myapp-1.myapp-headless.default.svc.cluster.local", 4000}
    ])

    table = FakeDist.new()

    start(table, Kubernetes.DNSSRV,
      service: "myapp-headless",
      namespace: "default",
      application_name: "myapp",
      nameservers: [Dnsmasq.nameserver(dns)],
      # no CLUSTER_DOMAIN: the default cluster.local.
      env: %{}
    )

    assert_receive {:connect, :"myapp@myapp-0.myapp-headless.default.svc.cluster.local"}, 2_000
    assert_receive {:connect, :"myapp@myapp-1.myapp-headless.default.svc.cluster.local"}, 2_000
  end

  test "CNAME chains are followed", %{dns: dns} do
    Dnsmasq.set_records(dns, [
      {:cname, "app.cluster.test", "mid.cluster.test"},
      {:cname, "mid.cluster.test", "real.cluster.test"},
      {:a, "real.cluster.test", "10.0.0.7"}
    ])

    assert {:nodes, ["app@10.0.0.7"]} = one_poll(dns, [{"app", "app.cluster.test", [:a]}])
    table = FakeDist.new()
    start(table, DNSPoll, poll_config(dns, []))
    assert_receive {:connect, :"app@10.0.0.7"}, 2_000
  end

  test "outage: nothing is pruned while the server is down, and discovery recovers", %{dns: dns} do
    table = FakeDist.new()
    pid = start(table, DNSPoll, poll_config(dns, membership: [prune: :immediate]))
    assert_receive {:connect, :"app@10.0.0.2"}, 2_000
    dns = Dnsmasq.stop(dns)

    log =
      capture_log(fn ->
        status = eventually(fn -> Discovery.status(pid) |> then(&(&1.error_streak >= 1 && &1)) end, 5_000)
        Logger.flush()
        assert {kind, message, _} = status.last_error
        assert kind in [:timeout, :refused, :unreachable, :io]
        # The message names the query and the server asked.
        assert message =~ "app.cluster.test"
        assert message =~ Dnsmasq.nameserver(dns)
      end)

    assert log =~ "discovery failed"
    refute_received {:disconnect, _}
    assert FakeDist.up(table) == [:"app@10.0.0.1", :"app@10.0.0.2"]

    # Back, with a new node: found at the next retry (backoff from 1 s).
    dns = Dnsmasq.restart(dns)

    Dnsmasq.set_records(dns, [
      {:a, "app.cluster.test", "10.0.0.1"},
      {:a, "app.cluster.test", "10.0.0.2"},
      {:a, "app.cluster.test", "10.0.0.4"}
    ])

    assert_receive {:connect, :"app@10.0.0.4"}, 4_000
    assert Discovery.status(pid).error_streak == 0
  end

  test "REFUSED is an error naming the query and server; NXDOMAIN is an empty answer", %{dns: dns} do
    assert {:discovery_error, :servfail, message} = one_poll(dns, [{"app", "app.example.com", [:a]}])

    assert message =~
             ~s|A records of "app.example.com" from #{Dnsmasq.nameserver(dns)}: the server refused to answer (REFUSED)|

    assert {:nodes, []} = one_poll(dns, [{"app", "nope.cluster.test", [:a, :aaaa, :srv]}])
    # Several questions, one refused: partial, with the other's nodes.
    assert {:partial_nodes, ["app@10.0.0.1", "app@10.0.0.2"], {:servfail, msg}} =
             one_poll(dns, [{"app", "app.cluster.test", [:a]}, {"app", "app.example.com", [:a]}])

    assert msg =~ "app.example.com"
  end

  test "by default (libcluster's), a sudden NXDOMAIN is applied at the first poll", %{dns: dns} do
    table = FakeDist.new()
    pid = start(table, DNSPoll, poll_config(dns, polling_interval: 60_000))
    assert_receive {:connect, :"app@10.0.0.2"}, 2_000
    dns = Dnsmasq.set_records(dns, [])
    assert Dnsmasq.resolve(dns, "app.cluster.test", :a) == []
    poll(pid, 2)
    assert_receive {:disconnect, :"app@10.0.0.1"}, 1_000
    assert_receive {:disconnect, :"app@10.0.0.2"}, 1_000
  end

  test "with confirm_empty: 2, a sudden NXDOMAIN is trusted only on the second consecutive poll", %{dns: dns} do
    table = FakeDist.new()
    # Polls only when the test asks (refresh), so that each poll is counted exactly.
    pid =
      start(
        table,
        DNSPoll,
        poll_config(dns, polling_interval: 60_000, confirm_empty: 2, membership: [prune: :immediate])
      )

    assert_receive {:connect, :"app@10.0.0.2"}, 2_000
    dns = Dnsmasq.set_records(dns, [])
    assert Dnsmasq.resolve(dns, "app.cluster.test", :a) == []

    log =
      capture_log(fn ->
        poll(pid, 2)
        # the empty answer did not reach the membership: it still knows both nodes
        assert Discovery.status(pid).membership.known == MapSet.new([:"app@10.0.0.1", :"app@10.0.0.2"])
        refute_received {:disconnect, _}
        poll(pid, 3)
        assert_receive {:disconnect, :"app@10.0.0.1"}, 1_000
      end)

    assert log =~ "keeping them until 2 consecutive rounds agree"
  end

  # Runs round `n` now and waits until it has finished.
  defp poll(pid, n) do
    Discovery.refresh(pid)

    eventually(
      fn -> match?(%{rounds: ^n, mode: :idle}, Discovery.status(pid)) end,
      3_000
    )
  end

  test "rotating answers do not make nodes flap with the recommended grace period", %{dns: dns} do
    table = FakeDist.new()
    all = for i <- 1..4, do: {:a, "app.cluster.test", "10.0.0.#{i}"}
    dns = Dnsmasq.set_records(dns, all)

    start(
      table,
      DNSPoll,
      poll_config(dns, polling_interval: 100, membership: [prune: LibclusterRs.DNS.recommended_grace(100)])
    )

    eventually(fn -> length(FakeDist.up(table)) == 4 end, 3_000)

    # The server now answers a rotating half of the records, changing every ~150 ms.
    # (the sleep paces the changes: it is the scenario, not a wait)
    Enum.reduce(1..8, dns, fn round, dns ->
      Process.sleep(150)
      Dnsmasq.set_records(dns, Enum.take(Enum.drop(all ++ all, rem(round, 4)), 2))
    end)

    refute_received {:disconnect, _}
    assert length(FakeDist.up(table)) == 4
  end

  test "a 1,000-record answer (truncated over UDP, retried over TCP)", %{dns: dns} do
    records = for i <- 1..1_000, do: {:a, "big.cluster.test", "10.1.#{div(i, 256)}.#{rem(i, 256)}"}
    Dnsmasq.set_records(dns, records)
    assert {:nodes, nodes} = one_poll(dns, [{"app", "big.cluster.test", [:a]}])
    assert length(nodes) == 1_000
  end

  test "10,000 records in one poll: the start returns at once and the answer arrives whole", %{dns: dns} do
    # One DNS message holds at most 64 KiB (about 4,000 A records), so 10,000 records are 4 names.
    records =
      for n <- 1..4, i <- 1..2_500 do
        {:a, "big#{n}.cluster.test", "10.#{n}.#{div(i, 256)}.#{rem(i, 256)}"}
      end

    Dnsmasq.set_records(dns, records)
    questions = for n <- 1..4, do: {"app", "big#{n}.cluster.test", [:a]}
    tag = make_ref()

    opts = %{
      questions: questions,
      nameservers: [Dnsmasq.nameserver(dns)],
      resolv_conf: "",
      timeout_ms: 2_000,
      attempts: 1
    }

    {start_us, _handle} = :timer.tc(fn -> LibclusterRs.Native.dns_lookup_start(tag, opts) end)
    assert start_us < 5_000
    assert_receive {:libcluster_rs, ^tag, {:nodes, nodes}}, 10_000
    assert length(nodes) == 10_000
    {nodes, []} = LibclusterRs.NodeName.to_nodes(nodes)
    assert length(nodes) == 10_000
  end

  test "DNSPoll.lookup_all_ips/1 answers A and AAAA for a charlist (:inet_res)", %{dns: dns} do
    Dnsmasq.set_records(dns, [{:a, "app.cluster.test", "10.0.0.1"}, {:aaaa, "app.cluster.test", "fd00::1"}])
    # Point :inet_res at the test's server (never at the machine's resolver), then restore it.
    saved = :inet_db.res_option(:nameservers)
    :inet_db.res_option(:nameservers, [{{127, 0, 0, 1}, dns.port}])

    try do
      assert DNSPoll.lookup_all_ips(~c"app.cluster.test.") == [{10, 0, 0, 1}, {0xFD00, 0, 0, 0, 0, 0, 0, 1}]
    after
      :inet_db.res_option(:nameservers, saved)
    end
  end
end
