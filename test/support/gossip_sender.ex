defmodule LibclusterRs.Test.GossipSender do
  @moduledoc false
  # A hostile (or merely foreign) gossip sender for tests. Runs on the test node or on a peer
  # (e.g. inside a fifth network namespace) and sends raw datagrams with :gen_udp.

  @doc "Opens a UDP socket for sending to `dest` (multicast/broadcast allowed, TTL 0 on loopback)."
  def open(opts \\ []) do
    base = [:binary, active: false, reuseaddr: true, broadcast: true]
    extra = Keyword.get(opts, :socket_opts, [])
    {:ok, socket} = :gen_udp.open(Keyword.get(opts, :port, 0), base ++ extra)
    socket
  end

  @doc "Opens a socket with `socket_opts`, sends `datagrams` to `{ip, port}`, closes it."
  def blast(ip, port, datagrams, socket_opts) do
    socket = open(socket_opts: socket_opts)
    sent = send_all(socket, ip, port, datagrams)
    :gen_udp.close(socket)
    sent
  end

  @doc "Sends every datagram in `datagrams` to `{ip, port}`; returns how many were sent."
  def send_all(socket, ip, port, datagrams) do
    Enum.count(datagrams, fn d -> :gen_udp.send(socket, ip, port, d) == :ok end)
  end

  @doc "The hostile mix: random bytes, truncated terms, huge datagrams, `binary_to_term` bait."
  def garbage(count) do
    valid = "heartbeat::" <> :erlang.term_to_binary(%{node: :"victim@127.0.0.1"})

    randoms = for _ <- 1..count, do: :crypto.strong_rand_bytes(:rand.uniform(300))
    truncated = for i <- 0..(byte_size(valid) - 1), do: binary_part(valid, 0, i)

    bait = [
      "heartbeat::" <> :erlang.term_to_binary(%{node: "a string@host"}),
      "heartbeat::" <> :erlang.term_to_binary(%{node: {:tuple, 1}}),
      "heartbeat::" <> :erlang.term_to_binary(%{node: :"bad name with spaces"}),
      "heartbeat::" <> :erlang.term_to_binary(%{node: :"victim@127.0.0.1", x: fn -> :ok end}),
      "heartbeat::" <> :erlang.term_to_binary(List.duplicate(:a, 100)),
      compressed(%{node: :"victim@127.0.0.1"}),
      "heartbeat::" <> <<131, 116, 255, 255, 255, 255>>,
      "LCG2" <> :crypto.strong_rand_bytes(60)
    ]

    huge = for n <- [1025, 4096, 60_000], do: :binary.copy(<<0>>, n)
    huge ++ randoms ++ truncated ++ bait
  end

  # What term_to_binary(term, [:compressed]) writes when compression pays off: tag 80.
  defp compressed(term) do
    <<131, body::binary>> = :erlang.term_to_binary(term)
    "heartbeat::" <> <<131, 80, byte_size(body)::32>> <> :zlib.compress(body)
  end

  @doc "v1 plain heartbeats for `count` fresh names, as libcluster on this OTP writes them."
  # The host must be loopback or the test's own namespace address: the victims will try to
  # connect to every name that gets through.
  def fresh_names(count, host) do
    for i <- 1..count do
      # No atom is made here: the term is built by hand (ATOM_EXT).
      name = "flood#{i}_#{System.unique_integer([:positive])}@#{host}"
      {name, "heartbeat::" <> <<131, 116, 1::32, 100, 4::16, "node", 100, byte_size(name)::16, name::binary>>}
    end
  end

  @doc """
  Sends `per_second` fresh-name v1 heartbeats a second (in batches every 50 ms) naming `host`
  to `{ip, port}` for `duration_ms`. Returns the names sent. `host` must be loopback or the
  sender's own namespace address (see `fresh_names/2`).
  """
  def flood(ip, port, host, per_second, duration_ms, socket_opts) do
    socket = open(socket_opts: socket_opts)
    batch = max(div(per_second, 20), 1)
    t0 = System.monotonic_time(:millisecond)
    names = flood_loop(socket, ip, port, host, batch, t0, t0 + duration_ms, 0, [])
    :gen_udp.close(socket)
    names
  end

  defp flood_loop(socket, ip, port, host, batch, t0, stop, tick, acc) do
    now = System.monotonic_time(:millisecond)

    if now >= stop do
      acc |> Enum.reverse() |> List.flatten()
    else
      flood = fresh_names(batch, host)
      send_all(socket, ip, port, Enum.map(flood, &elem(&1, 1)))
      next = t0 + (tick + 1) * 50
      Process.sleep(max(next - System.monotonic_time(:millisecond), 0))
      flood_loop(socket, ip, port, host, batch, t0, stop, tick + 1, [Enum.map(flood, &elem(&1, 0)) | acc])
    end
  end

  @doc """
  Like `flood/6`, from several source addresses of this host: one socket bound to each address in
  `sources` (IPv4 strings, all on the interface multicast leaves by), the fresh names spread over
  them round robin, each name pointing at the address it is sent from (so `verify_sender` does not
  tell them apart, and every connect attempt they cause stays on the sender's host). Returns the
  names sent.
  """
  def flood_from(ip, port, sources, per_second, duration_ms, socket_opts) do
    sockets =
      for src <- sources do
        {:ok, addr} = :inet.parse_address(to_charlist(src))
        {src, open(socket_opts: [ip: addr, multicast_if: addr] ++ socket_opts)}
      end

    batch = max(div(per_second, 20), 1)
    t0 = System.monotonic_time(:millisecond)
    names = flood_from_loop(List.to_tuple(sockets), ip, port, batch, t0, t0 + duration_ms, 0, [])
    for {_, socket} <- sockets, do: :gen_udp.close(socket)
    names
  end

  defp flood_from_loop(sockets, ip, port, batch, t0, stop, tick, acc) do
    if System.monotonic_time(:millisecond) >= stop do
      acc |> Enum.reverse() |> List.flatten()
    else
      sent =
        for i <- 0..(batch - 1) do
          {host, socket} = elem(sockets, rem(tick * batch + i, tuple_size(sockets)))
          [{name, datagram}] = fresh_names(1, host)
          :gen_udp.send(socket, ip, port, datagram)
          name
        end

      next = t0 + (tick + 1) * 50
      Process.sleep(max(next - System.monotonic_time(:millisecond), 0))
      flood_from_loop(sockets, ip, port, batch, t0, stop, tick + 1, [sent | acc])
    end
  end

  @doc """
  Sends `datagrams` over and over, `per_second` a second (in batches every 50 ms), to
  `{ip, port}` for `duration_ms`. Returns how many were sent.
  """
  def repeat(ip, port, datagrams, per_second, duration_ms, socket_opts) do
    socket = open(socket_opts: socket_opts)
    batch = max(div(per_second, 20), 1)
    t0 = System.monotonic_time(:millisecond)
    sent = repeat_loop(socket, ip, port, List.to_tuple(datagrams), batch, t0, t0 + duration_ms, 0, 0)
    :gen_udp.close(socket)
    sent
  end

  defp repeat_loop(socket, ip, port, all, batch, t0, stop, tick, sent) do
    if System.monotonic_time(:millisecond) >= stop do
      sent
    else
      chunk = for i <- (tick * batch)..(tick * batch + batch - 1), do: elem(all, rem(i, tuple_size(all)))
      n = send_all(socket, ip, port, chunk)
      next = t0 + (tick + 1) * 50
      Process.sleep(max(next - System.monotonic_time(:millisecond), 0))
      repeat_loop(socket, ip, port, all, batch, t0, stop, tick + 1, sent + n)
    end
  end

  @doc "How many of `names` exist as atoms on this node (without creating any)."
  def existing_atoms(names) do
    Enum.count(names, fn n ->
      try do
        _ = String.to_existing_atom(n)
        true
      rescue
        ArgumentError -> false
      end
    end)
  end

  @doc "Receives one datagram on `port` (joined to `group` on `ifaddr`), or `nil` after `timeout`."
  def record(port, group, ifaddr, timeout) do
    {:ok, socket} =
      :gen_udp.open(port, [
        :binary,
        active: false,
        reuseaddr: true,
        ip: {0, 0, 0, 0},
        add_membership: {group, ifaddr}
      ])

    result =
      case :gen_udp.recv(socket, 0, timeout) do
        {:ok, {_, _, data}} -> data
        _ -> nil
      end

    :gen_udp.close(socket)
    result
  end

  @doc "Records an authenticated datagram from the group (skipping v1 ones), or `nil`."
  def record_authenticated(port, group, ifaddr, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout

    {:ok, socket} =
      :gen_udp.open(port, [
        :binary,
        active: false,
        reuseaddr: true,
        ip: {0, 0, 0, 0},
        add_membership: {group, ifaddr}
      ])

    result = recv_auth(socket, deadline)
    :gen_udp.close(socket)
    result
  end

  defp recv_auth(socket, deadline) do
    left = deadline - System.monotonic_time(:millisecond)

    if left <= 0 do
      nil
    else
      case :gen_udp.recv(socket, 0, left) do
        {:ok, {_, _, "LCG2" <> _ = data}} -> data
        {:ok, _} -> recv_auth(socket, deadline)
        _ -> nil
      end
    end
  end
end
