defmodule Mix.Tasks.Libcluster.DiscoverDNSTest do
  # The dry run against a real DNS server: dnsmasq on 127.0.0.1 (a high port) started by the test.
  # Async: the dry runs take their turn on the application env (DiscoverRun).
  use ExUnit.Case, async: true

  alias LibclusterRs.Test.Dnsmasq

  @moduletag :dnsmasq

  setup do
    dns =
      Dnsmasq.start([
        {:a, "app.cluster.test", "10.0.0.1"},
        {:a, "app.cluster.test", "10.0.0.2"},
        {:srv, "_app._tcp.cluster.test", "app-0.app.cluster.test", 4000}
      ])

    on_exit(fn -> Dnsmasq.cleanup(dns) end)

    {:ok, dns: dns}
  end

  defp configure(dns, extra) do
    config =
      Keyword.merge(
        [
          query: "app.cluster.test",
          node_basename: "app",
          nameservers: [Dnsmasq.nameserver(dns)],
          query_timeout: 300,
          query_attempts: 1
        ],
        extra
      )

    # Connecting anything would reach this process as {:connect, node}: the dry run must not.
    # (Nothing can be disconnected: a dry run has no earlier round whose nodes it could prune.)
    LibclusterRs.Test.DiscoverRun.configure!(
      dns: [
        strategy: Cluster.Strategy.DNSPoll,
        config: config,
        connect: LibclusterRs.Test.MFA.recorder(self(), :connect)
      ]
    )
  end

  defp discover(args) do
    {status, output, _ms} = LibclusterRs.Test.DiscoverRun.run(args)
    {status, output}
  end

  test "a name that resolves: the nodes are printed, exit 0, nothing connected", %{dns: dns} do
    configure(dns, [])
    {status, out} = discover(["dns", "--longnames"])
    assert status == 0, out
    assert out =~ "strategy: Cluster.Strategy.DNSPoll"
    assert out =~ "found 2 node(s)"
    assert out =~ "app@10.0.0.1" and out =~ "app@10.0.0.2"
    assert out =~ "OK"
    refute_received {:connect, _}
  end

  test "NXDOMAIN: the DNS name and the server asked, exit 1", %{dns: dns} do
    configure(dns, query: "nope.cluster.test")
    assert Dnsmasq.resolve(dns, "nope.cluster.test", :a) == []
    {status, out} = discover(["dns"])
    assert status == 1, out
    assert out =~ ~s("nope.cluster.test")
    assert out =~ Dnsmasq.nameserver(dns)
    assert out =~ ~s(found no node)

    assert out =~
             ~s|the DNS name "nope.cluster.test" does not exist (NXDOMAIN) or has no A/AAAA records, asked of #{Dnsmasq.nameserver(dns)}|
  end

  @tag :tmp_dir
  test "without nameservers, the explanation names the servers of resolv.conf", %{tmp_dir: dir} do
    path = Path.join(dir, "resolv.conf")
    File.write!(path, "search cluster.test\nnameserver 10.96.0.10\nnameserver fd00::10\n")
    opts = %{resolver: nil, nameservers: [], resolv_conf: path}

    assert LibclusterRs.DNS.empty_message(opts, [{"app", "_app._tcp.x.test", [:srv]}]) ==
             ~s|the DNS name "_app._tcp.x.test" does not exist (NXDOMAIN) or has no SRV records, | <>
               "asked of 10.96.0.10:53, [fd00::10]:53 (from #{path})"
  end

  test "a server that is down: the DNS name and the server asked, exit 1", %{dns: dns} do
    dns = Dnsmasq.stop(dns)
    configure(dns, [])
    {started, {status, out}} = :timer.tc(fn -> discover(["dns"]) end)
    assert status == 1, out
    assert out =~ "app.cluster.test"
    assert out =~ Dnsmasq.nameserver(dns)
    assert out =~ "nothing would be pruned"
    assert out =~ "no answer (1 attempt(s) of 300ms each)"
    # The "run distributed" hint is for strategies that need this node's name, not for DNS.
    refute out =~ "not distributed"
    assert started < 5_000_000
  end

  test "a refused name: plain words; a partial answer lists what was found and exits 1", %{dns: dns} do
    # The test's dnsmasq refuses names outside its local domains.
    configure(dns, query: "app.example.com")
    {status, out} = discover(["dns"])
    assert status == 1, out

    assert out =~
             ~s|discovery failed (servfail): A records of "app.example.com" from #{Dnsmasq.nameserver(dns)}: the server refused to answer (REFUSED)|

    configure(dns, query: ["app.cluster.test", "app.example.com"])
    {status, out} = discover(["dns", "--longnames"])
    assert status == 1, out
    assert out =~ "found 2 node(s) before the failure (an incomplete list)"
    assert out =~ "app@10.0.0.1" and out =~ "app@10.0.0.2"
    assert out =~ "some queries failed, nothing pruned"
  end

  test "node names whose host part does not fit the name mode are reported", %{dns: dns} do
    # A records give IP hosts: they cannot work with short names.
    configure(dns, [])
    {status, out} = discover(["dns", "--shortnames"])
    assert status == 1, out
    assert out =~ ~s(cannot connect to app@10.0.0.1: its host part "10.0.0.1")
    assert out =~ "--sname"

    # SRV targets are fully qualified: fine under long names, not under short names.
    configure(dns, query: "_app._tcp.cluster.test", resource_types: [:srv])
    {status, out} = discover(["dns", "--longnames"])
    assert status == 0, out
    assert out =~ "app@app-0.app.cluster.test"

    {status, out} = discover(["dns", "--shortnames"])
    assert status == 1, out
    assert out =~ "cannot connect to app@app-0.app.cluster.test"
  end
end
