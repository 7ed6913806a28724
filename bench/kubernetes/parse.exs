# Parse time and peak memory of a Kubernetes list, measured from the Elixir side: the body (a
# binary, as it arrives) goes in, the node set comes out (`LibclusterRs.Native.kubernetes_parse/7`, a
# dirty NIF: the same parse and naming code as a poll or a watch's initial list).
#
#     MIX_ENV=prod mix run bench/kubernetes/parse.exs
#
# Bodies: 5,000 pods with full metadata, spec and status (~14 MB, the shape of `kubectl get pods
# -o json`), and 5,000 endpoints in 50 EndpointSlices of 100. Peak memory is the process's peak RSS
# above its RSS before the call (Linux: VmHWM is reset through /proc/self/clear_refs), which sees
# the NIF's allocations as well as the BEAM's. CPU time is the VM's (idle apart from the parse),
# from :erlang.statistics(:runtime): on a loaded shared machine, wall time overstates the cost.

Code.require_file("test/support/json.ex")
Code.require_file("test/support/fake_kube.ex")

alias LibclusterRs.Test.{FakeKube, JSON}

defmodule Bench.Mem do
  def status(key) do
    File.read!("/proc/self/status")
    |> String.split("\n")
    |> Enum.find_value(fn line ->
      case String.split(line, ":", parts: 2) do
        [^key, v] -> v |> String.trim() |> String.split(" ") |> hd() |> String.to_integer()
        _ -> nil
      end
    end)
  end

  # Peak RSS growth (KiB) while `fun` runs.
  def peak_extra(fun) do
    :erlang.garbage_collect()
    File.write!("/proc/self/clear_refs", "5")
    before = status("VmRSS")
    result = fun.()
    {status("VmHWM") - before, result}
  end
end

Code.require_file("bench/support/stats.exs")

ip = fn i -> "10.#{div(i, 65536)}.#{rem(div(i, 256), 256)}.#{rem(i, 256)}" end

# Server-side apply bookkeeping (managedFields) brings a pod to the ~2.8 KB of a real one.
managed = fn ->
  fields =
    Map.new(1..6, fn k -> {"f:field#{k}", %{"f:sub" => %{}, "k:{\"name\":\"c#{k}\"}" => %{"." => %{}}}} end)

  [
    %{
      "manager" => "kubelet",
      "operation" => "Update",
      "apiVersion" => "v1",
      "time" => "2026-11-22T00:00:00Z",
      "fieldsType" => "FieldsV1",
      "subresource" => "status",
      "fieldsV1" => fields
    }
  ]
end

pods =
  for i <- 1..5_000 do
    pod = FakeKube.pod("myapp-#{i}", ip.(i), ready: rem(i, 10) != 0)
    put_in(pod, ["metadata", "managedFields"], managed.())
  end

pod_body =
  JSON.encode_binary(%{
    "kind" => "PodList",
    "apiVersion" => "v1",
    "metadata" => %{"resourceVersion" => "123456"},
    "items" => pods
  })

slices =
  for s <- 0..49 do
    eps =
      for e <- 1..100 do
        i = s * 100 + e
        cond = if rem(i, 10) == 0, do: FakeKube.terminating(), else: FakeKube.ready()
        {ip.(i), "myapp-#{i}", cond}
      end

    FakeKube.slice("myapp-#{s}", "myapp", "IPv4", eps)
  end

slice_body =
  JSON.encode_binary(%{
    "kind" => "EndpointSliceList",
    "apiVersion" => "discovery.k8s.io/v1",
    "metadata" => %{"resourceVersion" => "1"},
    "items" => slices
  })

runs = 21
{load, _} = File.read!("/proc/loadavg") |> String.split(" ") |> hd() |> Float.parse()
IO.puts("load average at start: #{load} on #{System.schedulers_online()} cores (the machine is shared)")

for {label, lookup, body} <- [
      {"5,000 pods", :pods, pod_body},
      {"5,000 endpoints in 50 EndpointSlices", :endpointslices, slice_body}
    ] do
  parse = fn ->
    LibclusterRs.Native.kubernetes_parse(lookup, :ip, "myapp", "default", "cluster.local", nil, body)
  end

  {:ok, names} = parse.()

  samples =
    for _ <- 1..runs do
      {cpu0, _} = :erlang.statistics(:runtime)
      {kib, {us, {:ok, _}}} = Bench.Mem.peak_extra(fn -> :timer.tc(parse) end)
      {cpu1, _} = :erlang.statistics(:runtime)
      {us, kib, cpu1 - cpu0}
    end

  time_ms = Bench.Stats.median(Enum.map(samples, &elem(&1, 0))) / 1000
  mem_mb = Bench.Stats.median(Enum.map(samples, &elem(&1, 1))) / 1024
  cpu_ms = Bench.Stats.median(Enum.map(samples, &elem(&1, 2)))

  IO.puts(
    "#{label}: body #{Float.round(byte_size(body) / 1_000_000, 1)} MB, #{length(names)} nodes; " <>
      "median parse #{Float.round(time_ms, 1)} ms wall, #{cpu_ms} ms CPU (whole VM), median peak extra RSS #{Float.round(mem_mb, 1)} MB (#{runs} runs)"
  )
end
