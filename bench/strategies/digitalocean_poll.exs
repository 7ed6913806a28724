# DigitalOcean: the cost of one poll of 1,000 Droplets (5 pages of 200, each Droplet with the
# attributes a real one has: ~1.9 KB of JSON).
#
#     MIX_ENV=prod mix run bench/strategies/digitalocean_poll.exs       # RUNS=21 to change
#
# 1. parse + names: the five page bodies (binaries, as they arrive) in, node names out, through
#    `LibclusterRs.Native.digitalocean_parse/2` (a dirty NIF: the same code as a poll's).
# 2. a whole poll (`digitalocean_start/2`) over HTTPS on 127.0.0.1 against a server that answers
#    with the pre-encoded pages (so the figure is the client's: TLS, 5 requests, bodies, names),
#    then the same with a TCP health check of all 1,000 Droplets (each on its own loopback
#    address, 127.0.x.y, a listener on 0.0.0.0 accepting them all).
#
# Load average and CPU time (the VM's, from :erlang.statistics(:runtime)) are printed: the machine
# this runs on may be shared.

Code.require_file("bench/support/stats.exs")
Code.require_file("test/support/json.ex")
Code.require_file("test/support/test_ca.ex")
Code.require_file("test/support/http_fake.ex")
Code.require_file("test/support/fake_digitalocean.ex")

alias LibclusterRs.Test.{FakeDigitalOcean, HttpFake, TestCA}

runs = String.to_integer(System.get_env("RUNS", "21"))
load = fn -> File.read!("/proc/loadavg") |> String.split(" ") |> Enum.take(3) |> Enum.join(" ") end

IO.puts(
  "load average at start: #{load.()} on #{System.schedulers_online()} schedulers (the machine may be shared)"
)

n = 1_000
per_page = 200
pages = div(n, per_page)
ip = fn i -> "127.0.#{div(i, 250)}.#{rem(i, 250) + 1}" end
droplets = for i <- 1..n, do: FakeDigitalOcean.droplet(i, "web-#{i}", ip.(i), tags: ["app"])

bodies =
  for p <- 1..pages do
    slice = Enum.slice(droplets, (p - 1) * per_page, per_page)
    FakeDigitalOcean.page_body(slice, p, per_page, n, %{"tag_name" => "app"})
  end

IO.puts(
  "bodies: #{pages} pages, #{Enum.sum(Enum.map(bodies, &byte_size/1))} bytes " <>
    "(#{div(byte_size(hd(bodies)), per_page)} bytes a Droplet)"
)

naming = %{network: :private, ipv6: false, basename: nil}

parse_all = fn ->
  Enum.flat_map(bodies, fn b ->
    {:ok, names} = LibclusterRs.Native.digitalocean_parse(b, naming)
    names
  end)
end

^n = length(parse_all.())

time = fn fun ->
  {cpu0, _} = :erlang.statistics(:runtime)
  t0 = System.monotonic_time(:microsecond)
  result = fun.()
  t1 = System.monotonic_time(:microsecond)
  {cpu1, _} = :erlang.statistics(:runtime)
  {t1 - t0, cpu1 - cpu0, result}
end

samples = for _ <- 1..runs, do: time.(parse_all)
wall = Bench.Stats.median(Enum.map(samples, &elem(&1, 0)))
cpu = Bench.Stats.median(Enum.map(samples, &elem(&1, 1)))

IO.puts(
  "parse + names, 1,000 Droplets (5 pages): median #{Float.round(wall / 1000, 2)} ms wall, " <>
    "#{cpu} ms CPU (whole VM, ms resolution), #{runs} runs"
)

# 2. Whole polls.
{:ok, _} = Application.ensure_all_started(:ssl)
ca = TestCA.make!(ips: [{127, 0, 0, 1}])

http =
  HttpFake.start!(
    tls: ca,
    handler: fn req ->
      page = String.to_integer(req.query["page"] || "1")
      {200, [{"content-type", "application/json"}], Enum.at(bodies, page - 1)}
    end
  )

{:ok, listen} = :gen_tcp.listen(0, ip: {0, 0, 0, 0}, reuseaddr: true, backlog: 1024)
{:ok, port} = :inet.port(listen)

# Accept and close every health probe (8 acceptors: one falls behind 256 probes at once, and the
# kernel then drops SYNs, which costs a probe a 1 s retransmit).
acceptors =
  for _ <- 1..8 do
    spawn_link(fn ->
      Stream.repeatedly(fn -> :gen_tcp.accept(listen) end)
      |> Enum.each(fn
        {:ok, s} -> :gen_tcp.close(s)
        _ -> exit(:normal)
      end)
    end)
  end

opts = %{
  api_url: HttpFake.url(http),
  token: "bench-token",
  tag_name: "app",
  name: nil,
  network: :private,
  ipv6: false,
  basename: nil,
  health_check_port: nil,
  health_check_timeout_ms: 1_000,
  cacertfile: ca.ca,
  request_timeout_ms: 10_000,
  rate_limit_budget_ms: 0
}

poll = fn opts ->
  tag = make_ref()
  _h = LibclusterRs.Native.digitalocean_start(tag, opts)

  receive do
    {:libcluster_rs, ^tag, {:nodes, names}} -> names
    {:libcluster_rs, ^tag, other} -> raise "poll failed: #{inspect(other)}"
  after
    30_000 -> raise "poll timed out"
  end
end

for {label, o} <- [
      {"whole poll, HTTPS, 5 pages", opts},
      {"whole poll + TCP health check of 1,000 Droplets", %{opts | health_check_port: port}}
    ] do
  ^n = length(poll.(o))
  samples = for _ <- 1..runs, do: time.(fn -> poll.(o) end)
  wall = Bench.Stats.median(Enum.map(samples, &elem(&1, 0)))
  cpu = Bench.Stats.median(Enum.map(samples, &elem(&1, 1)))
  worst = Enum.max(Enum.map(samples, &elem(&1, 0)))
  complete = Enum.count(samples, fn {_, _, names} -> length(names) == n end)

  IO.puts(
    "#{label}: median #{Float.round(wall / 1000, 1)} ms wall (max #{Float.round(worst / 1000, 1)} ms), " <>
      "#{cpu} ms CPU of the whole VM (the fake server included), #{runs} runs, " <>
      "all #{n} named in #{complete} of them"
  )
end

Enum.each(acceptors, &Process.unlink/1)
:gen_tcp.close(listen)
HttpFake.stop(http)
TestCA.remove(ca)
IO.puts("load average at end: #{load.()}")
