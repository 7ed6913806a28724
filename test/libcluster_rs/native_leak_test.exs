defmodule LibclusterRs.NativeLeakTest do
  # Resource hygiene of the native runtime: many start/stop cycles and owner deaths leave OS threads,
  # open file descriptors and memory flat, and no NIF call blocks a scheduler long enough for a
  # `long_schedule` system monitor event. Everything talks to fake epmd listeners on loopback.
  use ExUnit.Case, async: false

  alias LibclusterRs.Native

  @moduletag timeout: 60_000
  @cycles 10_000
  @owner_deaths 1_000
  # RSS may grow this much over a run (allocator caches, code, ETS of other tests); a leak of one
  # handle's task, socket or buffers (about 1 KB or more per cycle, 11,000 cycles) would exceed it.
  @rss_tolerance_kb 8 * 1024

  # A fake epmd: every connection reads the 3-byte NAMES request; `:answer` mode replies with one
  # name, `:silent` mode says nothing and waits for the client to go away. Every accepted socket is
  # closed when the client closes, so the listener side holds no fd for long.
  defp fake_epmd(mode) do
    {:ok, listen} =
      :gen_tcp.listen(0, [:binary, active: false, reuseaddr: true, backlog: 1024, ip: {127, 0, 0, 1}])

    {:ok, port} = :inet.port(listen)
    acceptor = spawn(fn -> accept_loop(listen, mode) end)
    :ok = :gen_tcp.controlling_process(listen, acceptor)

    on_exit(fn -> Process.exit(acceptor, :kill) end)
    port
  end

  defp accept_loop(listen, mode) do
    {:ok, sock} = :gen_tcp.accept(listen)
    handler = spawn(fn -> receive(do: (:go -> serve(sock, mode))) end)
    :ok = :gen_tcp.controlling_process(sock, handler)
    send(handler, :go)
    accept_loop(listen, mode)
  end

  defp serve(sock, :answer) do
    with {:ok, <<0, 1, ?n>>} <- :gen_tcp.recv(sock, 3, 5_000) do
      :gen_tcp.send(sock, <<4369::32, "name leak at port 5000\n">>)
    end

    :gen_tcp.close(sock)
  end

  defp serve(sock, :silent) do
    _ = :gen_tcp.recv(sock, 0, 30_000)
    _ = :gen_tcp.recv(sock, 0, 30_000)
    :gen_tcp.close(sock)
  end

  defp threads, do: length(File.ls!("/proc/self/task"))
  defp fds, do: length(File.ls!("/proc/self/fd"))

  defp rss_kb do
    [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, File.read!("/proc/self/status"))
    String.to_integer(kb)
  end

  defp settle(fun, expected, ms \\ 3_000) do
    deadline = System.monotonic_time(:millisecond) + ms

    Stream.repeatedly(fn ->
      value = fun.()

      if value <= expected or System.monotonic_time(:millisecond) > deadline,
        do: value,
        else: Process.sleep(20) && nil
    end)
    |> Enum.find(& &1)
  end

  # Every 10th cycle waits for the answer and the end of the task before stopping it; the others
  # stop it at once, usually while it is connecting.
  defp cycles(port, n) do
    for i <- 1..n do
      tag = make_ref()
      handle = Native.epmd_names_start(tag, ["127.0.0.1"], port, 5_000)

      if rem(i, 10) == 0 do
        assert_receive {:libcluster_rs, ^tag, {:epmd_names, "127.0.0.1", {:ok, ["leak"]}}}, 5_000
        assert_receive {:libcluster_rs, ^tag, :done}, 5_000
      end

      :ok = Native.discovery_stop(handle)
    end

    :ok
  end

  defp owner_deaths(port, n) do
    test = self()

    owners =
      for _ <- 1..n do
        spawn(fn ->
          send(test, {:handle, self(), Native.epmd_names_start(make_ref(), ["127.0.0.1"], port, 60_000)})
          Process.sleep(:infinity)
        end)
      end

    handles = for o <- owners, do: receive(do: ({:handle, ^o, h} -> h))
    for o <- owners, do: Process.exit(o, :kill)
    handles
  end

  defp flush_native do
    receive do
      {:libcluster_rs, _, _} -> flush_native()
    after
      0 -> :ok
    end
  end

  test "start/stop cycles and owner deaths leave threads, fds and memory flat; no long_schedule in a NIF" do
    answer = fake_epmd(:answer)
    silent = fake_epmd(:silent)

    # warm-up, one round of the same shape: the runtime and its worker threads exist, and the
    # allocators (BEAM and Rust) have reached their working set
    cycles(answer, @cycles)
    warm = owner_deaths(silent, @owner_deaths)
    settle(fn -> Enum.count(warm, &(not Native.discovery_stopped(&1))) end, 0)
    flush_native()
    :erlang.garbage_collect()
    # (lets the freed memory go back before the baseline is taken; no assertion follows it)
    Process.sleep(200)

    threads0 = threads()
    fds0 = settle(&fds/0, 0, 300)
    rss0 = rss_kb()

    previous_monitor = :erlang.system_monitor(self(), [{:long_schedule, 50}])

    {cycle_us, :ok} = :timer.tc(fn -> cycles(answer, @cycles) end)
    handles = owner_deaths(silent, @owner_deaths)

    # every owner's death cancelled its task
    assert settle(fn -> Enum.count(handles, &(not Native.discovery_stopped(&1))) end, 0) == 0

    case previous_monitor do
      :undefined -> :erlang.system_monitor(:undefined)
      {pid, opts} -> :erlang.system_monitor(pid, opts)
    end

    flush_native()
    :erlang.garbage_collect()

    threads1 = settle(&threads/0, threads0)
    fds1 = settle(&fds/0, fds0)
    rss1 = rss_kb()

    long =
      Stream.repeatedly(fn ->
        receive do
          {:monitor, _who, :long_schedule, info} -> info
        after
          0 -> nil
        end
      end)
      |> Enum.take_while(& &1)

    in_nif =
      Enum.filter(long, fn info ->
        Enum.any?([info[:in], info[:out]], &match?({LibclusterRs.Native, _, _}, &1))
      end)

    IO.puts(
      "\nnative leak: #{@cycles} cycles in #{div(cycle_us, 1000)} ms " <>
        "(#{round(@cycles / (cycle_us / 1_000_000))}/s), #{@owner_deaths} owner deaths; " <>
        "threads #{threads0} -> #{threads1}, fds #{inspect(fds0)} -> #{inspect(fds1)}, " <>
        "rss #{rss0} -> #{rss1} kB, " <>
        "long_schedule events #{length(long)} (in LibclusterRs.Native: #{length(in_nif)})"
    )

    assert threads1 == threads0
    # (fds are printed with inspect/1 above: interpolating them makes Elixir 1.20's type checker
    # take them for String.Chars, structs included, and warn on this comparison)
    assert fds1 <= fds0
    assert rss1 - rss0 <= @rss_tolerance_kb
    assert in_nif == [], inspect(in_nif)
  end
end
