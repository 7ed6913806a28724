defmodule LibclusterRs.NativeTest do
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Native

  # A fake epmd on loopback that answers NAMES with the given names.
  defp fake_epmd(names) do
    {:ok, listen} = :gen_tcp.listen(0, [:binary, active: false, reuseaddr: true, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(listen)

    spawn_link(fn ->
      {:ok, sock} = :gen_tcp.accept(listen)
      {:ok, <<0, 1, ?n>>} = :gen_tcp.recv(sock, 3)
      lines = Enum.map_join(names, fn n -> "name #{n} at port 5000\n" end)
      :ok = :gen_tcp.send(sock, <<4369::32, lines::binary>>)
      :gen_tcp.close(sock)
      Process.sleep(:infinity)
    end)

    port
  end

  test "epmd_names_start answers per host, then :done" do
    port = fake_epmd(["alpha", "beta"])
    tag = make_ref()
    handle = Native.epmd_names_start(tag, ["127.0.0.1"], port, 2_000)
    assert_receive {:libcluster_rs, ^tag, {:epmd_names, "127.0.0.1", {:ok, ["alpha", "beta"]}}}, 2_000
    assert_receive {:libcluster_rs, ^tag, :done}, 2_000
    assert :ok = Native.discovery_stop(handle)
    assert Native.discovery_stopped(handle)
  end

  test "a refused host is an error event, not an empty list" do
    {:ok, l} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(l)
    :gen_tcp.close(l)
    tag = make_ref()
    _handle = Native.epmd_names_start(tag, ["127.0.0.1"], port, 2_000)
    assert_receive {:libcluster_rs, ^tag, {:epmd_names, "127.0.0.1", {:error, {:refused, msg}}}}, 2_000
    assert msg =~ "127.0.0.1"
  end

  test "bad arguments raise ArgumentError" do
    assert_raise ArgumentError, fn -> Native.epmd_names_start(make_ref(), ["h"], 0, 100) end
    assert_raise ArgumentError, fn -> Native.epmd_names_start(make_ref(), "h", 4369, 100) end
    assert_raise ArgumentError, fn -> Native.epmd_names_start(make_ref(), ["h"], 4369, 0) end
  end

  test "the owner's death cancels the task" do
    test = self()

    owner =
      spawn(fn ->
        # Accepts and never answers, so the task would wait for its whole deadline.
        {:ok, l} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
        {:ok, port} = :inet.port(l)
        send(test, {:handle, Native.epmd_names_start(make_ref(), ["127.0.0.1"], port, 60_000)})
        Process.sleep(:infinity)
      end)

    assert_receive {:handle, handle}
    refute Native.discovery_stopped(handle)
    Process.exit(owner, :kill)
    eventually(fn -> Native.discovery_stopped(handle) end, 1_000)
  end

  test "garbage-collecting a handle cancels its task and closes its socket" do
    test = self()
    {:ok, l} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(l)

    spawn_link(fn ->
      {:ok, sock} = :gen_tcp.accept(l)
      # NAMES_REQ arrives; the fake epmd never answers and waits for the client to go away. The
      # test collects the handle only once the request is in (earlier, the client could close
      # before sending it).
      {:ok, _} = :gen_tcp.recv(sock, 3, 5_000)
      send(test, :accepted)
      send(test, {:client_closed, :gen_tcp.recv(sock, 0, 10_000)})
    end)

    owner =
      spawn(fn ->
        _ = Native.epmd_names_start(make_ref(), ["127.0.0.1"], port, 60_000)

        receive do
          :gc -> :erlang.garbage_collect()
        end

        Process.sleep(:infinity)
      end)

    assert_receive :accepted, 2_000
    send(owner, :gc)
    # the owner is alive: only the collected handle can have cancelled the task
    assert_receive {:client_closed, {:error, :closed}}, 5_000
    assert Process.alive?(owner)
    Process.exit(owner, :kill)
  end
end
