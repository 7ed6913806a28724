# Connect attempts per second a topology makes where libcluster_rs used to redial in a loop:
#
#   ghost    - the connect MFA returns true but list_nodes never shows the node (a hidden connect,
#              a lagging custom list_nodes), 1 and 100 such nodes
#   flapper  - a real :peer node that accepts every connection and drops it at once
#   sighted  - 4,096 fake names sighted (untrusted, as unauthenticated gossip) every second
#
#     MIX_ENV=test mix run bench/membership/redial.exs      (SECONDS_PER_CASE=10 by default)
#
# Prints, per case, the median and max of the per-second connect counts, and the load average
# (the machine may be shared: read the figures with it).
Code.require_file("../support/stats.exs", __DIR__)

alias LibclusterRs.Membership
alias Cluster.Strategy.State
alias LibclusterRs.Test.{Flapper, Peer}

defmodule Bench.Redial do
  # connect MFA: counts calls; returns true (never listed) or false
  def connect(counter, reply, _node) do
    :counters.add(counter, 1, 1)
    reply
  end

  def list_nodes, do: []

  # Per-second counts over `seconds` of a counter.
  def per_second(read, seconds, tick \\ fn -> :ok end) do
    Enum.map(1..seconds, fn _ ->
      before = read.()
      tick.()
      Process.sleep(1_000)
      read.() - before
    end)
  end

  def report(name, counts) do
    IO.puts(
      String.pad_trailing(name, 40) <>
        "median #{Bench.Stats.median(counts)}/s, max #{Enum.max(counts)}/s  #{inspect(counts, charlists: :as_lists)}"
    )
  end
end

seconds = String.to_integer(System.get_env("SECONDS_PER_CASE", "10"))
loadavg = fn -> File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ") end
IO.puts("load average before: #{loadavg.()}")

IO.puts(
  "connect calls per second, #{seconds} one-second samples per case (libcluster: at most once per round)"
)

start = fn name, counter, reply, opts ->
  state = %State{
    topology: name,
    connect: {Bench.Redial, :connect, [counter, reply]},
    disconnect: {:erlang, :disconnect_node, []},
    list_nodes: {Bench.Redial, :list_nodes, []}
  }

  {:ok, m} = Membership.start_link(state, opts)
  m
end

Logger.configure(level: :error)

for n <- [1, 100] do
  counter = :counters.new(1, [])
  m = start.(:"ghost_#{n}", counter, true, [])
  Membership.discovered(m, for(i <- 1..n, do: :"ghost#{i}@10.99.0.#{rem(i, 250) + 1}"))
  counts = Bench.Redial.per_second(fn -> :counters.get(counter, 1) end, seconds)
  Bench.Redial.report("ghost, #{n} node(s)", Enum.map(counts, &(&1 / n)) |> Enum.map(&Float.round(&1, 2)))
  Process.unlink(m)
  GenServer.stop(m)
end

counter = :counters.new(1, [])
m = start.(:sighted, counter, false, [])
names = for i <- 1..4_096, do: :"fake#{i}@10.98.#{div(i, 250)}.#{rem(i, 250) + 1}"

counts =
  Bench.Redial.per_second(fn -> :counters.get(counter, 1) end, seconds, fn -> Membership.seen(m, names) end)

Bench.Redial.report("sighted, 4,096 untrusted names", counts)
Process.unlink(m)
GenServer.stop(m)

id = System.unique_integer([:positive])
{flapper, flapper_node} = Peer.start("bflapper#{id}", "127.0.0.1")
{dialer, _} = Peer.start("bdialer#{id}", "127.0.0.1")
:ok = Peer.call(flapper, Flapper, :start_dropping, [])
:ok = Peer.call(dialer, Flapper, :start_counter, [])

{:ok, _} =
  Peer.start_cluster(dialer,
    flap: [
      strategy: Cluster.Strategy.Epmd,
      config: [hosts: [flapper_node]],
      connect: {Flapper, :counted_connect, []}
    ]
  )

counts = Bench.Redial.per_second(fn -> Peer.call(dialer, Flapper, :calls, []) end, seconds)
Bench.Redial.report("real peer that drops every connection", counts)
IO.puts("  (the peer dropped #{Peer.call(flapper, Flapper, :drops, [])} connections)")
Peer.stop(dialer)
Peer.stop(flapper)

IO.puts("load average after: #{loadavg.()}")
