# The NIF's cost: start/stop cycles per second, the longest NIF call, and the VM's OS threads, open
# file descriptors and memory before and after rounds of 10,000 start/stop cycles and 1,000 owner
# deaths (3 rounds; the timings are those of the first).
#
#     mix run bench/native.exs                  (debug build of the NIF)
#     MIX_ENV=prod mix run bench/native.exs     (release build, what users run)
#     CYCLES=100000 DEATHS=10000 ROUNDS=5 mix run bench/native.exs
#
# Each cycle starts an epmd NAMES query against a loopback port that accepts nothing (a listen
# socket that is never accepted from), so the task is in flight, holding a socket, when it is
# stopped. Owner deaths: a process starts a query and exits; the monitor cancels the task.
# A long_schedule system monitor (threshold 1 ms) watches every scheduler for the whole run.

defmodule NativeBench do
  alias LibclusterRs.Native

  @control_term Enum.to_list(1..400)

  def run do
    cycles = String.to_integer(System.get_env("CYCLES", "10000"))
    deaths = String.to_integer(System.get_env("DEATHS", "1000"))
    rounds = String.to_integer(System.get_env("ROUNDS", "3"))

    # Connects complete in the kernel backlog (or wait for room in it) and the query then waits for
    # a NAMES answer that never comes.
    {:ok, listen} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, backlog: 4096, active: false)
    {:ok, port} = :inet.port(listen)

    # Warm-up: the runtime is built on first use; its threads are part of the steady state.
    for _ <- 1..1_000, do: cycle(port)
    Process.sleep(500)
    before = snapshot()

    monitor = spawn(fn -> monitor_init() end)
    :ok = GenServer.call(monitor, :ready)

    {total_us, timings} = :timer.tc(fn -> for _ <- 1..cycles, do: cycle(port) end)
    # Summarised now, so that the 10,000 timings are not counted in the "after" memory.
    timings = summarise(timings)
    {deaths_us, _} = :timer.tc(fn -> for _ <- 1..deaths, do: owner_death(port) end)

    # Let cancelled tasks finish dropping their sockets, then look again.
    Process.sleep(1_000)
    long = GenServer.call(monitor, :report)
    after_ = snapshot()

    # More rounds of the same: a leak grows with every round, allocator caches do not.
    later =
      for r <- 2..rounds//1 do
        for _ <- 1..cycles, do: cycle(port)
        for _ <- 1..deaths, do: owner_death(port)
        Process.sleep(1_000)
        {r, snapshot()}
      end

    :gen_tcp.close(listen)
    report(cycles, total_us, deaths, deaths_us, timings, long, [{0, before}, {1, after_} | later])
  end

  # Starts and stops one task, timing each NIF call.
  defp cycle(port) do
    {t_start, h} = :timer.tc(Native, :epmd_names_start, [make_ref(), ["127.0.0.1"], port, 5_000])
    {t_stop, :ok} = :timer.tc(Native, :discovery_stop, [h])
    # Control: a BIF of similar duration (a few µs) timed the same way. Its outliers are the OS
    # preempting the scheduler thread (the machine's other load), not anything a NIF does.
    {t_control, _} = :timer.tc(:erlang, :term_to_binary, [@control_term])
    {t_start, t_stop, t_control}
  end

  # A process starts a query and exits; its monitor must cancel the task.
  defp owner_death(port) do
    pid = spawn(__MODULE__, :owner, [port])
    ref = Process.monitor(pid)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    end
  end

  def owner(port), do: Native.epmd_names_start(make_ref(), ["127.0.0.1"], port, 5_000)

  # A tiny GenServer-compatible loop holding the VM's system monitor.
  defp monitor_init do
    :erlang.system_monitor(self(), [{:long_schedule, 1}])
    monitor_loop([])
  end

  defp monitor_loop(acc) do
    receive do
      {:monitor, pid, :long_schedule, info} ->
        monitor_loop([{pid, info} | acc])

      {:"$gen_call", from, :ready} ->
        GenServer.reply(from, :ok)
        monitor_loop(acc)

      {:"$gen_call", from, :report} ->
        :erlang.system_monitor(:undefined)
        GenServer.reply(from, Enum.reverse(acc))
    end
  end

  defp snapshot do
    :erlang.garbage_collect()
    status = File.read!("/proc/self/status")
    [_, rss] = Regex.run(~r/VmRSS:\s+(\d+) kB/, status)

    %{
      threads: length(File.ls!("/proc/self/task")),
      fds: length(File.ls!("/proc/self/fd")),
      rss_kb: String.to_integer(rss),
      beam_kb: div(:erlang.memory(:total), 1024)
    }
  end

  defp pct(xs, p) do
    s = Enum.sort(xs)
    Enum.at(s, min(length(s) - 1, trunc(length(s) * p)))
  end

  defp summarise(timings) do
    for i <- 0..2 do
      xs = Enum.map(timings, &elem(&1, i))

      "median #{pct(xs, 0.5)} µs, p99 #{pct(xs, 0.99)} µs, longest #{Enum.max(xs)} µs, " <>
        "#{Enum.count(xs, &(&1 >= 1_000))} calls ≥ 1 ms"
    end
  end

  defp report(cycles, total_us, deaths, deaths_us, [starts, stops, controls], long, snapshots) do
    {:ok, loadavg} = File.read("/proc/loadavg")
    profile = if Mix.env() == :prod, do: "release", else: "debug"

    row = fn label, cells ->
      Enum.map_join([label | cells], &String.pad_trailing(&1, 13)) |> String.trim_trailing()
    end

    cells = fn f -> Enum.map(snapshots, fn {_, snap} -> f.(snap) end) end

    # A NIF that blocked a scheduler would show up with a LibclusterRs.Native function as its location.
    nif_long = Enum.filter(long, fn {_pid, info} -> inspect(info) =~ "LibclusterRs.Native" end)

    long_text =
      "#{length(long)} in total, #{length(nif_long)} located in a LibclusterRs.Native call" <>
        if(long == [], do: "", else: "; first: #{inspect(hd(long), limit: 6)}")

    IO.puts("""
    NIF build: #{profile} (MIX_ENV=#{Mix.env()}); #{System.schedulers_online()} schedulers online; \
    load average #{loadavg |> String.split() |> Enum.take(3) |> Enum.join(" ")}

    start/stop cycles:  #{cycles} in #{div(total_us, 1000)} ms = #{round(cycles / (total_us / 1_000_000))} cycles/s
    owner deaths:       #{deaths} in #{div(deaths_us, 1000)} ms
    epmd_names_start:   #{starts}
    discovery_stop:     #{stops}
    control:            #{controls}
    long_schedule (≥ 1 ms) events during the run: #{long_text}

    Snapshots before the run, and after each round of #{cycles} cycles + #{deaths} owner deaths:

    #{row.("", Enum.map(snapshots, fn
      {0, _} -> "before"
      {r, _} -> "round #{r}"
    end))}
    #{row.("threads", cells.(&"#{&1.threads}"))}
    #{row.("fds", cells.(&"#{&1.fds}"))}
    #{row.("RSS", cells.(&"#{&1.rss_kb} kB"))}
    #{row.("BEAM memory", cells.(&"#{&1.beam_kb} kB"))}
    """)
  end
end

NativeBench.run()
