defmodule LibclusterRs.Test.Netns do
  @moduledoc false
  # Several "hosts" on one machine: network namespaces on a bridge, with addresses in 198.18.<k>.0/24
  # (a private benchmarking range). The root namespace holds 198.18.<k>.1 on the bridge, so a server
  # started by the test in the root namespace (dnsmasq, an API server) is reachable from every host.
  # Needs root; tests that use it are tagged `@tag :root`. Everything is removed by `teardown/1`
  # (call it from `on_exit`), and only processes started in these namespaces are ever killed.

  defstruct [:id, :subnet, :bridge, :gateway, ns_prefix: "lcn", veth_prefix: "lcv", hosts: []]

  @type host :: %{ns: String.t(), ip: String.t(), veth: String.t()}
  @type t :: %__MODULE__{
          id: String.t(),
          subnet: 0..255,
          bridge: String.t(),
          gateway: String.t(),
          ns_prefix: String.t(),
          veth_prefix: String.t(),
          hosts: [host()]
        }

  @doc """
  Creates `count` namespaces on a fresh bridge in subnet `198.18.<subnet>.0/24`. Host `i` (1-based)
  gets `198.18.<subnet>.<10 + i>`. Options: `ipv6: true` keeps IPv6 enabled (link-local addresses and
  multicast) in the namespaces; `prefix: "lcg"` names namespaces `lcg…`, veths `lcgv…` and the bridge
  `lcgb…` (default: `lcn…`, `lcv…`, `lcb…`), for a caller that owns its own prefix.
  """
  @spec setup(0..255, pos_integer(), Keyword.t()) :: t()
  def setup(subnet, count, opts \\ []) do
    # Random, not a counter: a VM's counters restart from the same values, and a run that was killed
    # may have left its namespaces behind.
    id = :crypto.strong_rand_bytes(3) |> Base.encode32(case: :lower, padding: false)

    {ns_prefix, veth_prefix, bridge} =
      case Keyword.get(opts, :prefix) do
        nil -> {"lcn", "lcv", "lcb#{id}"}
        prefix -> {prefix, prefix <> "v", "#{prefix}b#{id}"}
      end

    gateway = "198.18.#{subnet}.1"
    ip!(["link", "add", bridge, "type", "bridge"])
    # Flood multicast to every port: there is no IGMP querier on a test bridge.
    File.write("/sys/class/net/#{bridge}/bridge/multicast_snooping", "0")
    ip!(["addr", "add", "#{gateway}/24", "dev", bridge])
    ip!(["link", "set", bridge, "up"])

    net = %__MODULE__{
      id: id,
      subnet: subnet,
      bridge: bridge,
      gateway: gateway,
      ns_prefix: ns_prefix,
      veth_prefix: veth_prefix
    }

    hosts =
      for i <- 1..count do
        ns = "#{ns_prefix}#{id}h#{i}"
        veth = "#{veth_prefix}#{id}h#{i}"
        addr = "198.18.#{subnet}.#{10 + i}"
        ip!(["netns", "add", ns])
        ip!(["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        ip!(["link", "set", veth, "master", bridge, "up"])
        ip!(["-n", ns, "link", "set", "lo", "up"])
        ip!(["-n", ns, "addr", "add", "#{addr}/24", "dev", "eth0"])
        ip!(["-n", ns, "link", "set", "eth0", "up", "multicast", "on"])
        ip!(["-n", ns, "route", "add", "default", "via", gateway])

        if Keyword.get(opts, :ipv6, false) do
          exec!(ns, "sysctl", ["-qw", "net.ipv6.conf.all.disable_ipv6=0"])
          exec!(ns, "sysctl", ["-qw", "net.ipv6.conf.eth0.disable_ipv6=0"])
        end

        %{ns: ns, ip: addr, veth: veth}
      end

    %{net | hosts: hosts}
  end

  @doc "Adds one more namespace to `net` (e.g. a hostile sender), returning the new host."
  @spec add_host(t(), pos_integer()) :: host()
  def add_host(%__MODULE__{} = net, i) do
    ns = "#{net.ns_prefix}#{net.id}h#{i}"
    veth = "#{net.veth_prefix}#{net.id}h#{i}"
    addr = "198.18.#{net.subnet}.#{10 + i}"
    ip!(["netns", "add", ns])
    ip!(["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
    ip!(["link", "set", veth, "master", net.bridge, "up"])
    ip!(["-n", ns, "link", "set", "lo", "up"])
    ip!(["-n", ns, "addr", "add", "#{addr}/24", "dev", "eth0"])
    ip!(["-n", ns, "link", "set", "eth0", "up", "multicast", "on"])
    ip!(["-n", ns, "route", "add", "default", "via", net.gateway])
    %{ns: ns, ip: addr, veth: veth}
  end

  @doc "Kills the processes in the test's namespaces (by PID) and deletes namespaces and bridge."
  @spec teardown(t()) :: :ok
  def teardown(%__MODULE__{} = net) do
    {out, _} = System.cmd("ip", ["netns", "list"], stderr_to_stdout: true)

    namespaces =
      out
      |> String.split("\n", trim: true)
      |> Enum.map(&(&1 |> String.split(" ") |> hd()))
      |> Enum.filter(&String.starts_with?(&1, "#{net.ns_prefix}#{net.id}h"))

    for ns <- namespaces do
      kill_all(ns)
      System.cmd("ip", ["netns", "del", ns], stderr_to_stdout: true)
    end

    System.cmd("ip", ["link", "del", net.bridge], stderr_to_stdout: true)
    :ok
  end

  @doc "Removes one host added by `add_host/2` (its processes, by PID, then its namespace and veth)."
  @spec remove_host(host()) :: :ok
  def remove_host(%{ns: ns}) do
    kill_all(ns)
    System.cmd("ip", ["netns", "del", ns], stderr_to_stdout: true)
    :ok
  end

  @doc "Kills every process running in namespace `ns`, by PID (`ip netns pids`)."
  @spec kill_all(String.t()) :: :ok
  def kill_all(ns) do
    {pids, _} = System.cmd("ip", ["netns", "pids", ns], stderr_to_stdout: true)

    for pid <- String.split(pids, "\n", trim: true), pid =~ ~r/^\d+$/ do
      System.cmd("kill", ["-9", pid], stderr_to_stdout: true)
    end

    :ok
  end

  @doc "Runs a command inside namespace `ns`, raising on failure."
  @spec exec!(String.t(), String.t(), [String.t()]) :: String.t()
  def exec!(ns, cmd, args), do: ip!(["netns", "exec", ns, cmd | args])

  @doc "Starts a long-running OS process in `ns` (e.g. a silent listener); returns the Port."
  @spec spawn(String.t(), String.t(), [String.t()]) :: port()
  def spawn(ns, cmd, args) do
    Port.open({:spawn_executable, System.find_executable("ip")}, [
      :binary,
      :exit_status,
      args: ["netns", "exec", ns, cmd | args]
    ])
  end

  @doc "Runs `ip` with `args`; raises with its output when it fails."
  def ip!(args) do
    case System.cmd("ip", args, stderr_to_stdout: true) do
      {out, 0} -> out
      {out, status} -> raise "ip #{Enum.join(args, " ")} failed (#{status}): #{out}"
    end
  end
end
