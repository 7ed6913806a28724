# The libcluster_rs demo (run it with script/demo): 5 real BEAM nodes on 127.0.0.1 form a cluster
# through a Cluster.Strategy.Epmd topology; one is killed (kill -9), the survivors see it go
# (Cluster.Events), it is restarted and the cluster heals. Every figure is measured, in ms.
#
# This script is not a node itself: it drives the five nodes over stdio (OTP's :peer). Each node
# runs a small recorder subscribed to Cluster.Events that timestamps every {:nodeup, _} and
# {:nodedown, _} with the OS clock, which all five share.

defmodule Demo do
  @names for i <- 1..5, do: :"demo#{i}@127.0.0.1"
  @victim :"demo3@127.0.0.1"

  @recorder ~S"""
  defmodule Demo.Recorder do
    def start do
      parent = self()
      pid =
        spawn(fn ->
          Cluster.Events.subscribe()
          # Peers that dialled this node while it was booting, before anything could subscribe.
          already = for n <- Node.list(), do: {System.os_time(:microsecond), :up_at_boot, n}
          send(parent, :subscribed)
          loop(already)
        end)

      receive do: (:subscribed -> :ok)
      Process.register(pid, __MODULE__)
      :ok
    end

    def events do
      send(__MODULE__, {:events, self()})
      receive do: ({:events, events} -> events)
    end

    defp loop(acc) do
      receive do
        {event, node} when event in [:nodeup, :nodedown] ->
          loop([{System.os_time(:microsecond), event, node} | acc])

        {:events, to} ->
          send(to, {:events, Enum.reverse(acc)})
          loop(acc)
      end
    end
  end
  """

  def run do
    check_epmd!()
    [{recorder, recorder_bin}] = Code.compile_string(@recorder)
    cookie = :"demo_#{System.unique_integer([:positive])}"
    topology = [demo: [strategy: Cluster.Strategy.Epmd, config: [hosts: @names]]]

    IO.puts("Starting 5 nodes (#{Enum.map_join(@names, ", ", &short/1)}) on 127.0.0.1 ...")
    {boot_us, peers} = :timer.tc(fn -> start_nodes(@names, cookie, {recorder, recorder_bin}) end)
    IO.puts("  booted in #{ms(boot_us)} ms (BEAM start-up, not clustering)\n")

    IO.puts("Starting the topology on every node: Cluster.Strategy.Epmd, hosts: all five")
    t0 = now()
    peers |> Enum.map(fn {_, p} -> Task.async(fn -> start_topology(p, topology) end) end) |> Task.await_many()
    formed_at = watch(peers, t0, &full_mesh?(&1, @names), "formed")
    print_membership(peers)

    IO.puts("\nKilling #{short(@victim)} (kill -9 of its OS process)")
    victim = peers[@victim]
    os_pid = :peer.call(victim, :os, :getpid, [])
    t_kill = now()
    System.cmd("kill", ["-9", to_string(os_pid)])
    survivors = Map.delete(peers, @victim)

    down_at =
      watch(survivors, t_kill, fn s -> Enum.all?(Map.values(s), &(@victim not in &1)) end, "nodedown seen",
        only: :nodedown
      )

    IO.puts("\nRestarting #{short(@victim)}")
    t_restart = now()
    %{@victim => new_victim} = start_nodes([@victim], cookie, {recorder, recorder_bin})
    booted = now()
    IO.puts("  booted in #{ms(booted - t_restart)} ms; starting its topology")
    start_topology(new_victim, topology)
    peers = Map.put(survivors, @victim, new_victim)
    healed_at = watch(peers, t_restart, &full_mesh?(&1, @names), "healed")
    print_membership(peers)

    Enum.each(Map.values(peers), &stop/1)

    IO.puts(
      "\nformed 5/5 in #{ms(formed_at - t0)} ms; nodedown seen by all survivors in #{ms(down_at - t_kill)} ms; " <>
        "healed in #{ms(healed_at - t_restart)} ms after the restart began (its boot took #{ms(booted - t_restart)} ms)"
    )
  end

  # Watches the recorders, printing each event as it is seen, until `done?` holds for the
  # membership they describe; returns the OS time of the event that completed it.
  defp watch(peers, t0, done?, label, opts \\ []) do
    deadline = now() + 15_000_000
    do_watch(peers, t0, done?, label, opts, MapSet.new(), deadline)
  end

  defp do_watch(peers, t0, done?, label, opts, printed, deadline) do
    events =
      for {node, p} <- peers, {t, event, other} <- recorder_events(p) do
        {t, node, event, other}
      end
      |> Enum.sort()

    only = Keyword.get(opts, :only)
    membership = Map.new(peers, fn {node, _} -> {node, membership_at(events, node, :infinity)} end)
    done = done?.(membership)
    # Events reach the recorders with a little lag: print those older than 100 ms (all when done),
    # so that the lines come out in time order.
    horizon = if done, do: :infinity, else: now() - 100_000

    fresh =
      Enum.reject(events, fn {t, _, event, _} = e ->
        MapSet.member?(printed, e) or (only != nil and event != only) or t < t0 or t > horizon
      end)

    for {t, node, event, other} = e <- fresh do
      count = length(membership_at(events, node, t))

      what =
        if event == :up_at_boot,
          do: "already connected to #{short(other)} when it booted",
          else: "#{event} #{short(other)}"

      IO.puts("  +#{pad(ms(t - t0), 7)} ms  #{short(node)}: #{what}  (#{short(node)} sees #{count}/4)")

      e
    end

    printed = Enum.into(fresh, printed)

    cond do
      done ->
        t_done =
          events
          # A connection is up on both ends when either records it; :up_at_boot only says when
          # the recorder looked, so it does not time anything.
          |> Enum.filter(
            &(elem(&1, 0) >= t0 and elem(&1, 2) != :up_at_boot and (only == nil or elem(&1, 2) == only))
          )
          |> Enum.map(&elem(&1, 0))
          |> Enum.max(fn -> now() end)

        IO.puts("  => #{label} at +#{ms(t_done - t0)} ms")
        t_done

      now() > deadline ->
        raise "demo: not #{label} within 15 s; membership: #{inspect(membership)}"

      true ->
        Process.sleep(5)
        do_watch(peers, t0, done?, label, opts, printed, deadline)
    end
  end

  # The peers `node` is connected to after replaying its events up to time `t`.
  defp membership_at(events, node, t) do
    events
    |> Enum.filter(fn {et, n, _, _} -> n == node and (t == :infinity or et <= t) end)
    |> Enum.reduce(MapSet.new(), fn
      {_, _, event, other}, acc when event in [:nodeup, :up_at_boot] -> MapSet.put(acc, other)
      {_, _, :nodedown, other}, acc -> MapSet.delete(acc, other)
    end)
    |> MapSet.to_list()
  end

  defp full_mesh?(membership, names) do
    Enum.all?(names, fn n -> Enum.sort(Map.get(membership, n, [])) == Enum.sort(names -- [n]) end)
  end

  defp print_membership(peers) do
    IO.puts("  membership (:erlang.nodes() on each node):")

    for {node, p} <- Enum.sort(peers) do
      nodes = :peer.call(p, :erlang, :nodes, []) |> Enum.sort() |> Enum.map_join(" ", &short/1)
      IO.puts("    #{short(node)}: #{nodes}")
    end
  end

  defp start_nodes(names, cookie, {recorder, bin}) do
    paths = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)

    names
    |> Enum.map(fn node ->
      Task.async(fn ->
        [name, host] = node |> Atom.to_string() |> String.split("@")

        {:ok, p, ^node} =
          :peer.start(%{
            name: to_charlist(name),
            host: to_charlist(host),
            longnames: true,
            connection: :standard_io,
            args:
              [~c"-setcookie", Atom.to_charlist(cookie), ~c"-kernel", ~c"logger_level", ~c"error"] ++ paths,
            wait_boot: 30_000
          })

        {:ok, _} = :peer.call(p, :application, :ensure_all_started, [:libcluster_rs])
        {:module, ^recorder} = :peer.call(p, :code, :load_binary, [recorder, ~c"demo_recorder", bin])
        :ok = :peer.call(p, recorder, :start, [])
        {node, p}
      end)
    end)
    |> Task.await_many(60_000)
    |> Map.new()
  end

  defp start_topology(p, topology) do
    :ok = :peer.call(p, :application, :set_env, [:libcluster_rs, :demo_topology, topology])

    {:ok, _} =
      :peer.call(p, Supervisor, :start_child, [
        LibclusterRs.AppRoot,
        %{id: :demo, start: {Cluster.Supervisor, :start_link, [[topology]]}, type: :supervisor}
      ])
  end

  defp recorder_events(p) do
    :peer.call(p, Demo.Recorder, :events, [])
  catch
    :exit, _ -> []
  end

  defp stop(p) do
    :peer.stop(p)
  catch
    :exit, _ -> :ok
  end

  defp check_epmd! do
    case System.cmd("epmd", ["-names"], stderr_to_stdout: true) do
      {_, 0} -> :ok
      _ -> raise "demo: epmd is not running (script/setup starts it: `epmd -daemon`)"
    end
  end

  defp now, do: System.os_time(:microsecond)
  defp ms(us), do: :erlang.float_to_binary(us / 1000, decimals: 1)
  defp pad(s, n), do: String.pad_leading(s, n)
  defp short(node), do: node |> Atom.to_string() |> String.split("@") |> hd()
end

Demo.run()
