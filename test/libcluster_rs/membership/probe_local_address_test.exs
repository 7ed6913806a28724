defmodule LibclusterRs.Membership.ProbeLocalAddressTest do
  # Which hosts the heal probe may ask (LibclusterRs.Membership.Probe.local_address/1). These tests
  # add a host to the VM's hosts table and point its resolver at a dnsmasq: global state, so they
  # run alone (synchronous), out of the async probe_test.exs.
  use ExUnit.Case, async: false

  alias LibclusterRs.Membership.Probe
  alias LibclusterRs.Test.Dnsmasq

  describe "local_address/1" do
    test "IP literals as they are, names from the local hosts table" do
      assert Probe.local_address("10.1.2.3") == "10.1.2.3"
      assert Probe.local_address("::1") == "::1"
      assert Probe.local_address("localhost") == "127.0.0.1"

      name = ~c"probe-#{System.unique_integer([:positive])}.test"
      :ok = :inet_db.add_host({10, 9, 8, 7}, [name])
      on_exit(fn -> :inet_db.del_host({10, 9, 8, 7}) end)
      assert Probe.local_address(to_string(name)) == "10.9.8.7"
      assert Probe.local_address("not-in-any-table.invalid") == nil
    end

    @tag :dnsmasq
    test "a name that only DNS knows is not resolved (no lookup leaves the machine)" do
      dns = Dnsmasq.start([{:a, "only-in-dns.test", "10.7.7.7"}])
      on_exit(fn -> Dnsmasq.cleanup(dns) end)

      lookup = :inet_db.res_option(:lookup)
      nameservers = :inet_db.res_option(:nameservers)

      on_exit(fn ->
        :inet_db.res_option(:lookup, lookup)
        :inet_db.res_option(:nameservers, nameservers)
      end)

      :inet_db.res_option(:nameservers, [{{127, 0, 0, 1}, dns.port}])
      :inet_db.res_option(:lookup, [:file, :dns])
      # The VM's resolver does know it...
      assert {:ok, {10, 7, 7, 7}} = :inet.getaddr(~c"only-in-dns.test", :inet)
      # ...the probe does not ask it.
      assert Probe.local_address("only-in-dns.test") == nil
      assert Probe.new() |> Probe.put_watched(%{:"a@only-in-dns.test" => 1}) |> Probe.hosts() == []
    end
  end
end
