# Reaction time from "endpoint becomes ready" in the API to "node connected", and from "endpoint
# not ready" to "node disconnected": watch, polling, and the poll fallback of a list-only Role;
# then API requests per node-hour per mode.
#
#     epmd -daemon; MIX_ENV=test mix run bench/kubernetes/reaction.exs
#
# The fake API server (HTTPS, test/support/fake_kube.ex) runs in this VM; two real nodes run on
# 127.0.0.1: `watcher` runs Cluster.Strategy.Kubernetes, `target@127.0.0.1` is the pod that becomes
# ready. Connection state is sampled through :peer (resolution about a millisecond).

alias LibclusterRs.Test.{FakeKube, Peer}

Code.require_file("bench/support/stats.exs")

kube = FakeKube.start!()
{pa, _} = Peer.start("watcher", "127.0.0.1")
{pb, nb} = Peer.start("target", "127.0.0.1")

endpoints = fn ready ->
  if ready,
    do: FakeKube.endpoints("myapp", ["127.0.0.1"]),
    else: FakeKube.endpoints("myapp", [], not_ready: ["127.0.0.1"])
end

FakeKube.put(kube, :endpoints, endpoints.(false))

wait = fn cond, deadline_ms ->
  t0 = System.monotonic_time(:microsecond)

  Stream.repeatedly(fn -> cond.() end)
  |> Enum.find_index(& &1)

  dt = (System.monotonic_time(:microsecond) - t0) / 1000
  if dt > deadline_ms, do: raise("no reaction within #{deadline_ms} ms")
  dt
end

config = fn extra ->
  [
    kubernetes_node_basename: "target",
    kubernetes_selector: "app=myapp",
    kubernetes_master: kube.master,
    kubernetes_service_account_path: kube.sa_path
  ] ++ extra
end

# Changes happen at a random moment within the polling period (or within 300 ms for the watch),
# so that a poll's phase does not bias the figures.
measure = fn label, extra, samples, spread ->
  {:ok, sup} = Peer.start_cluster(pa, k8s: [strategy: Cluster.Strategy.Kubernetes, config: config.(extra)])
  Process.sleep(500)

  results =
    for _ <- 1..samples do
      Process.sleep(:rand.uniform(spread))
      FakeKube.put(kube, :endpoints, endpoints.(true))
      up = wait.(fn -> nb in Peer.nodes(pa) end, 20_000)
      Process.sleep(:rand.uniform(spread))
      FakeKube.put(kube, :endpoints, endpoints.(false))
      down = wait.(fn -> nb not in Peer.nodes(pa) end, 20_000)
      {up, down}
    end

  Peer.call(pa, Supervisor, :stop, [sup])

  IO.puts(
    "#{label}: ready -> connected median #{Float.round(Bench.Stats.median(Enum.map(results, &elem(&1, 0))), 1)} ms, " <>
      "not ready -> disconnected median #{Float.round(Bench.Stats.median(Enum.map(results, &elem(&1, 1))), 1)} ms " <>
      "(#{samples} samples)"
  )
end

measure.("watch (default)", [], 15, 300)

measure.(
  "polling every 5000 ms (kubernetes_watch: false, libcluster's schedule)",
  [kubernetes_watch: false],
  8,
  5_000
)

# A Role that grants `list` but not `watch`: the strategy falls back to a list every
# polling_interval (here 1000 ms), so its reaction is a poll's (about half an interval on average).
FakeKube.grant(kube, [:list])

measure.(
  "list-only Role: poll fallback every 1000 ms (mode :poll_fallback)",
  [polling_interval: 1_000],
  8,
  1_000
)

FakeKube.grant(kube, [:list, :watch])

# Requests per node-hour. Watch: one list, then one request per watch period (default 300 s, up to
# 20% shorter by jitter); measured here with a 2 s period for 12 s and scaled to 300 s (without jitter: an upper bound).
# Polling: one list per polling_interval, measured at 500 ms and scaled to 5 s.
window = 12_000

for lookup <- [:endpoints, :pods, :endpointslices] do
  count = fn extra ->
    FakeKube.clear_requests(kube)

    {:ok, sup} =
      Peer.start_cluster(pa,
        k8s: [
          strategy: Cluster.Strategy.Kubernetes,
          config: config.([kubernetes_ip_lookup_mode: lookup] ++ extra)
        ]
      )

    Process.sleep(window)
    Peer.call(pa, Supervisor, :stop, [sup])
    length(FakeKube.requests(kube))
  end

  watch = count.(kubernetes_watch_timeout: 2_000)
  poll = count.(kubernetes_watch: false, polling_interval: 500)
  watch_hour = round(watch * (2_000 / 300_000) * (3_600_000 / window))
  poll_hour = round(poll * (500 / 5_000) * (3_600_000 / window))

  IO.puts(
    "#{lookup}: watch #{watch} requests in #{window} ms with a 2 s watch period -> ~#{watch_hour} per node-hour at the 300 s default; " <>
      "polling #{poll} in #{window} ms at 500 ms -> ~#{poll_hour} per node-hour at 5 s"
  )
end

Peer.stop(pa)
Peer.stop(pb)
FakeKube.stop(kube)
