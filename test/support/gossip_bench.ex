defmodule LibclusterRs.Test.GossipBench do
  @moduledoc false
  # Runs on a peer for bench/gossip/*.exs: times measured where the connections happen.

  @doc """
  Starts a waiter that records the OS time (µs) at which this node is connected to `count` nodes.
  """
  def start_waiter(count) do
    caller = self()

    pid =
      spawn(fn ->
        :ok = :net_kernel.monitor_nodes(true)
        send(caller, {:waiter_ready, self()})
        at = wait(count)

        receive do
          {:result, from} -> send(from, {:waited, at})
        end
      end)

    receive do: ({:waiter_ready, ^pid} -> pid)
  end

  defp wait(count) do
    if length(Node.list(:connected)) >= count do
      System.os_time(:microsecond)
    else
      receive do
        {:nodeup, _} -> wait(count)
        {:nodedown, _} -> wait(count)
      after
        20_000 -> :timeout
      end
    end
  end

  def waiter_result(pid) do
    send(pid, {:result, self()})
    receive do: ({:waited, at} -> at), after: (25_000 -> :timeout)
  end

  @doc """
  Loads every module of the running applications (kernel, stdlib, elixir, logger, libcluster_rs
  and so the NIF), as a release in embedded mode does at boot, so that a timing measures the
  strategy rather than first-use code loading of an interactive-mode node.
  """
  def preload do
    for {app, _, _} <- Application.loaded_applications(),
        {:ok, modules} = :application.get_key(app, :modules),
        module <- modules do
      Code.ensure_loaded(module)
    end

    :ok
  end

  @doc "Starts the cluster supervisor now and returns the OS time (µs) just before."
  def start_cluster_timed(topologies) do
    t0 = System.os_time(:microsecond)
    {:ok, sup} = Cluster.Supervisor.start_link([topologies])
    Process.unlink(sup)
    {t0, sup}
  end

  @doc "Connects to `nodes` concurrently (plain distribution, no strategy); returns elapsed µs."
  def connect_timed(nodes) do
    t0 = System.os_time(:microsecond)
    nodes |> Enum.map(&Task.async(fn -> :net_kernel.connect_node(&1) end)) |> Task.await_many(10_000)
    System.os_time(:microsecond) - t0
  end

  @doc "CPU ticks (user + system) of this OS process and of its libcluster_rs runtime threads."
  def cpu_ticks do
    pid = :os.getpid() |> List.to_string()
    proc = ticks("/proc/#{pid}/stat")

    runtime =
      for tid <- File.ls!("/proc/#{pid}/task"),
          String.starts_with?(File.read!("/proc/#{pid}/task/#{tid}/comm"), "libcluster_rs"),
          reduce: 0 do
        acc -> acc + ticks("/proc/#{pid}/task/#{tid}/stat")
      end

    {proc, runtime}
  end

  defp ticks(path) do
    # fields after the ")" of the comm: state is field 3; utime and stime are fields 14 and 15
    [_, rest] = String.split(File.read!(path), ") ", parts: 2)
    fields = String.split(rest, " ")
    String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
  end
end
