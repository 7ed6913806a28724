defmodule Cluster.StatusDNSTest do
  # `Cluster.status/1` through a DNSPoll topology's lifecycle against a real DNS server (dnsmasq
  # on 127.0.0.1, a high port), with injected connect/list_nodes MFAs (no real nodes).
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually
  import ExUnit.CaptureLog

  alias Cluster.Strategy.DNSPoll
  alias LibclusterRs.Test.{Dnsmasq, FakeDist}

  @moduletag :dnsmasq

  @one :"app@10.0.0.1"
  @two :"app@10.0.0.2"
  @three :"app@10.0.0.3"

  defp records(ips), do: for(ip <- ips, do: {:a, "app.cluster.test", ip})

  test "discovered, connected, pending in backoff, last error during an outage, recovery" do
    dns = Dnsmasq.start(records(["10.0.0.1", "10.0.0.2"]))
    on_exit(fn -> Dnsmasq.cleanup(dns) end)

    topology = :"status_dns_#{System.unique_integer([:positive])}"
    # app@10.0.0.2 refuses connections until the test makes it reachable.
    dialer = FakeDist.new(reachable: [@one])

    config = [
      query: "app.cluster.test",
      node_basename: "app",
      nameservers: [Dnsmasq.nameserver(dns)],
      polling_interval: 200,
      query_timeout: 200,
      query_attempts: 1,
      membership: [backoff_min: 100, backoff_max: 200, min_dial_interval: 50]
    ]

    # Status times are whole milliseconds: compare with the same precision.
    before = DateTime.utc_now() |> DateTime.truncate(:millisecond)

    log =
      capture_log(fn ->
        start_supervised!({Cluster.Supervisor, [[{topology, FakeDist.topology(dialer, DNSPoll, config)}]]})

        # Discovered: both records; one connected, the other pending with its failure and backoff.
        s = status_until(topology, &(&1.last_discovered != nil and &1.pending != %{}))
        assert %{strategy: DNSPoll, state: :running, interval: 200} = s
        assert s.last_discovered == [@one, @two]
        assert DateTime.compare(s.last_discovered_at, before) != :lt
        assert s.connected == [@one]
        assert %{@two => pending} = s.pending
        assert pending.failures >= 1
        # The connect MFA returned false: that is the recorded reason.
        assert pending.last_error == false
        assert is_integer(pending.next_attempt_in) and pending.next_attempt_in <= 200
        assert s.last_error == nil and s.error_streak == 0
        assert s.name_problems == []

        # Outage: the server goes away. The error names the query and the server; nothing is
        # forgotten or disconnected.
        dns = Dnsmasq.stop(dns)
        s = status_until(topology, &(&1.last_error != nil))
        assert %{kind: kind, message: message, at: %DateTime{} = failed_at} = s.last_error
        assert kind in [:timeout, :refused, :unreachable, :io]
        assert message =~ ~s("app.cluster.test")
        assert message =~ Dnsmasq.nameserver(dns)
        assert s.error_streak >= 1
        assert s.last_discovered == [@one, @two]
        assert s.connected == [@one]
        assert Map.has_key?(s.pending, @two)
        refute_received {:disconnect, _}

        # Recovery: the server is back with a third node, and app@10.0.0.2 accepts connections.
        FakeDist.reachable(dialer, [@one, @two, @three])
        dns = Dnsmasq.restart(dns)
        Dnsmasq.set_records(dns, records(["10.0.0.1", "10.0.0.2", "10.0.0.3"]))

        s = status_until(topology, &(&1.connected == [@one, @two, @three]), 8_000)
        assert s.last_discovered == [@one, @two, @three]
        assert DateTime.compare(s.last_discovered_at, failed_at) == :gt
        assert s.error_streak == 0
        assert s.pending == %{}
      end)

    # The outage was logged once per streak, naming the query.
    assert log =~ "app.cluster.test"
  end
end
