# CPU per EC2 poll with 500 tagged instances: one round of `Cluster.Strategy.EC2`'s native poll
# (`LibclusterRs.Native.ec2_start/4`: SigV4 signing, the HTTPS request, reading the body, parsing
# the XML with roxmltree, naming 500 nodes) against test/support/fake_aws.py on 127.0.0.1.
#
#     CARGO_TARGET_DIR=target MIX_ENV=prod mix run bench/strategies/ec2_poll.exs
#
# (needs the botocore venv of script/setup; the fake checks every signature, as in the tests.)
#
# CPU is this OS process's (every thread: the NIF's tokio workers as well as the BEAM's
# schedulers, from /proc/self/stat), per poll, measured over batches of polls run one after the
# other; the fake runs in another process and is not counted. The page is ~390 KB of XML (500
# instances with tags and a network interface each, as DescribeInstances returns them). One page
# (MaxResults=1000) and, for pagination, five pages of 100. Wall time includes the fake (Python)
# producing the page, so it mostly measures the fake.

for f <- ~w(test/support/json.ex test/support/test_ca.ex test/support/fake_aws.ex),
    do: Code.require_file(f)

Code.require_file("bench/support/stats.exs")

alias LibclusterRs.Test.{FakeAWS, TestCA}

if why = FakeAWS.unavailable(), do: raise("cannot run: #{why}")

{load, _} = File.read!("/proc/loadavg") |> String.split(" ") |> hd() |> Float.parse()
IO.puts("load average at start: #{load} on #{System.schedulers_online()} cores (the machine is shared)")

ticks_per_s = 100

cpu_ms = fn ->
  # fields 14 and 15 of /proc/self/stat (after the command name in parentheses): utime, stime
  [_, rest] = File.read!("/proc/self/stat") |> String.split(") ", parts: 2)
  fields = String.split(rest, " ")
  (String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))) * 1000 / ticks_per_s
end

ca = TestCA.make!(ips: [{127, 0, 0, 1}])
fake = FakeAWS.start!(ca)
tag = %{"cluster" => "prod", "Name" => "web", "team" => "platform"}
FakeAWS.config(fake, region: "eu-west-1", instances: FakeAWS.instances(500, tag))
FakeAWS.add_key(fake, "AKIDBENCH", "bench/secret", "bench-token")

env = %{
  "AWS_REGION" => "eu-west-1",
  "AWS_ENDPOINT_URL_EC2" => FakeAWS.https_url(fake),
  "AWS_CA_BUNDLE" => ca.ca,
  "AWS_ACCESS_KEY_ID" => "AKIDBENCH",
  "AWS_SECRET_ACCESS_KEY" => "bench/secret",
  "AWS_SESSION_TOKEN" => "bench-token"
}

{:ok, client} =
  LibclusterRs.Native.ec2_client(%{
    env: env,
    tag_name: "cluster",
    ip_type: :private,
    region: nil,
    ec2_endpoint: nil,
    sts_endpoint: nil,
    imds_endpoint: nil,
    ca_bundle: nil,
    request_timeout_ms: 30_000,
    imds_timeout_ms: 1_000,
    polling_interval_ms: 5_000
  })

poll = fn ->
  ref = make_ref()
  _h = LibclusterRs.Native.ec2_start(ref, client, "prod", "app")

  receive do
    {:libcluster_rs, ^ref, {:nodes, names}} -> length(names)
    {:libcluster_rs, ^ref, other} -> raise "poll failed: #{inspect(other)}"
  after
    60_000 -> raise "poll timed out"
  end
end

batch = 10
samples = 9

for {label, page_size} <- [{"1 page of 500", 1000}, {"5 pages of 100", 100}] do
  FakeAWS.config(fake, page_size: page_size)
  500 = poll.()

  results =
    for _ <- 1..samples do
      c0 = cpu_ms.()
      t0 = System.monotonic_time(:microsecond)
      for _ <- 1..batch, do: 500 = poll.()
      t1 = System.monotonic_time(:microsecond)
      c1 = cpu_ms.()
      {(c1 - c0) / batch, (t1 - t0) / batch / 1000}
    end

  cpu = Bench.Stats.median(Enum.map(results, &elem(&1, 0)))
  wall = Bench.Stats.median(Enum.map(results, &elem(&1, 1)))

  # The same process idle for as long as a batch took: the VM's own background CPU, for scale.
  idle =
    Bench.Stats.median(
      for _ <- 1..3 do
        c0 = cpu_ms.()
        Process.sleep(round(wall * batch))
        (cpu_ms.() - c0) / batch
      end
    )

  IO.puts(
    "#{label}: CPU per poll (this process) median #{Float.round(cpu * 1.0, 2)} ms " <>
      "(#{samples} batches of #{batch}); idle VM over the same wall time #{Float.round(idle * 1.0, 2)} ms; " <>
      "wall per poll median #{Float.round(wall * 1.0, 1)} ms (includes the fake)"
  )
end

log = FakeAWS.log(fake)
ok = Enum.count(log, &(&1["kind"] == "ec2" and &1["sig_ok"]))
IO.puts("requests checked by botocore: #{ok} of #{Enum.count(log, &(&1["kind"] == "ec2"))}")

{load, _} = File.read!("/proc/loadavg") |> String.split(" ") |> hd() |> Float.parse()
IO.puts("load average at end: #{load}")
FakeAWS.stop(fake)
TestCA.remove(ca)
