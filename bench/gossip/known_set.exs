# The connect-amplification case: a hostile host has got 4,096 fake names (the native known-names
# cap) accepted and keeps sending all of them, each once a second. Before, every known name was
# re-reported to the membership once a second (4,096 sightings a second, 4,028 connect attempts a
# second, a full core). Measured on the victim over `--seconds`: the sightings reported to
# Elixir (the native `reported` counter; each one is a `Membership.seen` call and, when due, a
# connect attempt) and the victim's CPU.
#
# The victim's allowances are raised so that all 4,096 names are admitted at once (at the
# defaults one host gets 64, then 60 a minute: 67 minutes for 4,096). All on loopback; the names
# point at 127.0.0.2 and are sent from 127.0.0.2.
#
#     MIX_ENV=test mix run bench/gossip/known_set.exs [--seconds 30] [--names 4096]
Code.require_file("bench/support/stats.exs")
alias LibclusterRs.Test.{GossipBench, GossipSender, Peer}

{opts, _, _} = OptionParser.parse(System.argv(), strict: [seconds: :integer, names: :integer])
seconds = Keyword.get(opts, :seconds, 30)
count = Keyword.get(opts, :names, 4_096)

System.cmd("epmd", ["-daemon"])
port = 47_660
group = {233, 252, 1, 32}

config = [
  port: port,
  multicast_if: "lo",
  multicast_ttl: 0,
  stats_interval: 1_000,
  new_names_burst: count + 100,
  new_names_total_burst: count + 100,
  max_unauthenticated_atoms: count + 1_000
]

topology = [gossip: [strategy: Cluster.Strategy.Gossip, config: config]]
{v, _} = Peer.start("knownvictim", "127.0.0.1", args: [~c"-connect_all", ~c"false"])
Peer.call(v, GossipBench, :preload, [])
{:ok, sup} = Peer.start_cluster(v, topology)
[{_, pid, _, _}] = Peer.call(v, Supervisor, :which_children, [sup])
counters = fn -> Peer.call(v, LibclusterRs.Discovery, :status, [pid]).extra.counters end
Process.sleep(1_000)

datagrams = GossipSender.fresh_names(count, "127.0.0.2") |> Enum.map(&elem(&1, 1))
sock_opts = [ip: {127, 0, 0, 2}, multicast_if: {127, 0, 0, 1}, multicast_ttl: 0]
# Admit them all first (one pass), keep sending for 20 s (the re-report gaps grow 1, 2, 4, 8, 10 s),
# then measure the steady state.
GossipSender.repeat(group, port, datagrams, count, 1_000, sock_opts)
GossipSender.repeat(group, port, datagrams, count, 20_000, sock_opts)

c0 = counters.()
{proc0, rt0} = Peer.call(v, GossipBench, :cpu_ticks, [])
sent = GossipSender.repeat(group, port, datagrams, count, seconds * 1000, sock_opts)
{proc1, rt1} = Peer.call(v, GossipBench, :cpu_ticks, [])
c1 = counters.()

get = fn c, k -> Map.get(c, k, 0) end
reported = get.(c1, :reported) - get.(c0, :reported)
accepted = get.(c1, :accepted) - get.(c0, :accepted)
hz = 100
pct = fn ticks -> Float.round(ticks / hz / seconds * 100, 2) end

IO.puts(
  "#{count} known fake names, each sent once a second; measured over #{seconds} s after 21 s of it (#{sent} datagrams)"
)

IO.puts(
  "accepted #{accepted}; reported to the strategy #{reported} = #{Float.round(reported / seconds, 1)} sightings/s (before: one per name per second, #{count}/s)"
)

IO.puts(
  "victim CPU: OS process #{pct.(proc1 - proc0)} % of one core; libcluster_rs runtime threads #{pct.(rt1 - rt0)} % of one core"
)

IO.puts("load average #{File.read!("/proc/loadavg") |> String.trim()} (shared machine)")
Peer.stop(v)
