defmodule Cluster.Strategy.GossipTest do
  # Async: the peers are real nodes of their own, on multicast ports of their own; the check that
  # counts this VM's atoms is in gossip_atoms_test.exs (synchronous).
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually

  alias LibclusterRs.Native
  alias Cluster.Strategy.{Gossip, State}
  alias LibclusterRs.Test.{GossipLog, GossipSender, Peer}

  describe "libcluster 3.5 wire compatibility" do
    test "a heartbeat written by term_to_binary on this OTP (ATOM_EXT on OTP 25) is accepted" do
      term = :erlang.term_to_binary(%{node: :"myapp@10.0.0.1"})
      datagram = "heartbeat::" <> term

      if :erlang.system_info(:otp_release) == ~c"25" do
        # 131, 116, arity, then the key atom: ATOM_EXT (tag 100)
        assert <<131, 116, 1::32, 100, _::binary>> = term
      end

      assert Native.gossip_decode(datagram, :v1, nil) == {:ok, "myapp@10.0.0.1"}
    end

    test "a Rust-encoded v1 heartbeat decodes with binary_to_term, as libcluster reads it" do
      assert "heartbeat::" <> term = Native.gossip_encode_v1("myapp@10.0.0.1", nil)
      assert :erlang.binary_to_term(term) == %{node: :"myapp@10.0.0.1"}
    end

    test "v1 secret: libcluster's AES-256-CBC both ways" do
      secret = "somepassword"
      key = :crypto.hash(:sha256, secret)

      # Rust → libcluster: decrypt as libcluster does
      <<iv::binary-16, ciphertext::binary>> = Native.gossip_encode_v1("myapp@10.0.0.1", secret)
      padded = :crypto.crypto_one_time(:aes_256_cbc, key, iv, ciphertext, false)
      pad = :binary.last(padded)
      plain = binary_part(padded, 0, byte_size(padded) - pad)
      assert "heartbeat::" <> term = plain
      assert :erlang.binary_to_term(term) == %{node: :"myapp@10.0.0.1"}

      # libcluster → Rust: encrypt as libcluster does (PKCS#7 pad, random IV)
      plain = "heartbeat::" <> :erlang.term_to_binary(%{node: :"other@10.0.0.2"})
      pad = 16 - rem(byte_size(plain), 16)
      iv = :crypto.strong_rand_bytes(16)
      ct = :crypto.crypto_one_time(:aes_256_cbc, key, iv, plain <> :binary.copy(<<pad>>, pad), true)
      assert Native.gossip_decode(iv <> ct, :v1, secret) == {:ok, "other@10.0.0.2"}
      assert {:error, _} = Native.gossip_decode(iv <> ct, :v1, "wrong")
      assert {:error, _} = Native.gossip_decode(iv <> ct, :authenticated, secret)
      assert Native.gossip_decode(iv <> ct, :both, secret) == {:ok, "other@10.0.0.2"}
    end
  end

  describe "config" do
    defp init(config), do: Gossip.init(%State{topology: :gossip_test, config: config})

    test "bad values raise ArgumentError naming the key" do
      for {config, key} <- [
            {[port: 0], ":port"},
            {[multicast_addr: "10.0.0.1"], ":multicast_addr"},
            {[multicast_addr: "nonsense"], ":multicast_addr"},
            {[multicast_ttl: 300], ":multicast_ttl"},
            {[wire_format: :authenticated], ":secret"},
            {[wire_format: :v3, secret: "x"], ":wire_format"},
            {[broadcast_only: true, multicast_addr: "ff02::1"], ":multicast_addr"},
            {[heartbeat_interval: 0], ":heartbeat_interval"},
            {[multicast_if: "has space"], ":multicast_if"},
            {[secret: ""], ":secret"},
            {[max_unauthenticated_atoms: -1], ":max_unauthenticated_atoms"},
            {[verify_sender: :yes], ":verify_sender"},
            {[new_names_total_burst: 0], ":new_names_total_burst"}
          ] do
        error = assert_raise ArgumentError, fn -> init(config) end
        assert error.message =~ key, "#{inspect(config)}: #{error.message}"
      end
    end

    test "the NIF itself rejects options that cannot work with an ArgumentError" do
      opts = %{
        node: "a@127.0.0.1",
        port: 45892,
        if_addr: "0.0.0.0",
        multicast_if: nil,
        multicast_addr: "10.0.0.1",
        multicast_ttl: 1,
        broadcast_only: false,
        wire_format: :v1,
        heartbeat_interval: nil,
        replay_window: 30_000,
        new_names_burst: 64,
        new_names_per_minute: 60,
        new_names_total_burst: 256,
        new_names_total_per_minute: 600,
        verify_sender: false,
        stats_interval: nil,
        listen_only: false
      }

      error = assert_raise ArgumentError, fn -> Native.gossip_start(make_ref(), opts, nil) end
      assert error.message =~ "multicast_addr"

      error =
        assert_raise ArgumentError, fn ->
          Native.gossip_start(make_ref(), %{opts | multicast_addr: "ff02::1", wire_format: :both}, nil)
        end

      assert error.message =~ "secret"
    end
  end

  describe "sightings" do
    test "names from authenticated datagrams are trusted, names from v1 datagrams are not" do
      {:ok, impl, _} = Gossip.init(%State{topology: :gossip_trust, config: []})

      assert {[{:seen, [:"a@127.0.0.1"], [trusted: true]}], _} =
               Gossip.handle_event({:heartbeat, "a@127.0.0.1", true}, impl)

      assert {[{:seen, [:"a@127.0.0.1"], [trusted: false]}], _} =
               Gossip.handle_event({:heartbeat, "a@127.0.0.1", false}, impl)
    end

    test "a new v1 name past the VM-wide cap is dropped and counted; an existing atom is free" do
      # cap 0: this VM's budget is never spent by this test
      {:ok, impl, _} = Gossip.init(%State{topology: :gossip_cap0, config: [max_unauthenticated_atoms: 0]})
      [{name, _}] = GossipSender.fresh_names(1, "127.0.0.1")

      {{[], impl}, _log} =
        ExUnit.CaptureLog.with_log(fn -> Gossip.handle_event({:heartbeat, name, false}, impl) end)

      assert GossipSender.existing_atoms([name]) == 0
      assert Gossip.status_extra(impl).counters.rejected_atom_cap == 1

      assert {[{:seen, [:"known@127.0.0.1"], _}], _} =
               Gossip.handle_event({:heartbeat, "known@127.0.0.1", false}, impl)
    end
  end

  describe "on loopback" do
    setup do
      System.cmd("epmd", ["-daemon"])
      :ok
    end

    @tag timeout: 60_000
    test "several peers share the port and mesh; foreign datagrams do not hurt" do
      port = 47_100 + rem(System.unique_integer([:positive]), 500)

      topology = [
        gossip: [
          strategy: Gossip,
          config: [
            port: port,
            multicast_if: "lo",
            multicast_ttl: 0,
            heartbeat_interval: 300,
            stats_interval: 200
          ]
        ]
      ]

      # A libcluster-style socket (reuseaddr only) shares the port with the nodes.
      listener =
        GossipSender.open(port: port, socket_opts: [add_membership: {{233, 252, 1, 32}, {127, 0, 0, 1}}])

      on_exit(fn -> :gen_udp.close(listener) end)

      # :peer links to the caller, so peers are started from the test process.
      peers = for i <- 1..3, do: Peer.start("gossip#{i}", "127.0.0.1", args: [~c"-connect_all", ~c"false"])

      on_exit(fn -> Enum.each(peers, fn {p, _} -> Peer.stop(p) end) end)
      names = Enum.map(peers, &elem(&1, 1))
      sups = for {p, _} <- peers, do: elem(Peer.start_cluster(p, topology), 1)

      for {p, node} <- peers do
        eventually(fn -> Enum.sort(Peer.nodes(p)) == Enum.sort(names -- [node]) end, 10_000)
      end

      # The libcluster-style listener heard heartbeats too, and can read them with binary_to_term.
      assert {:ok, {_, _, "heartbeat::" <> term}} = :gen_udp.recv(listener, 0, 2_000)
      assert %{node: node} = :erlang.binary_to_term(term)
      assert node in names

      # Foreign and hostile datagrams, sent to the group on loopback only (TTL 0).
      {p1, _} = hd(peers)
      # Load the code the peer may run first, so that the atom count below measures what the
      # network made, not atoms from modules loaded on first use.
      modules =
        for app <- [:libcluster_rs, :kernel, :stdlib, :elixir, :logger, :crypto],
            {:ok, ms} = :application.get_key(app, :modules),
            m <- ms,
            do: m

      Peer.call(p1, :code, :ensure_modules_loaded, [modules], 60_000)
      atoms_before = Peer.call(p1, :erlang, :system_info, [:atom_count])
      sender = GossipSender.open(socket_opts: [multicast_if: {127, 0, 0, 1}, multicast_ttl: 0])
      GossipSender.send_all(sender, {233, 252, 1, 32}, port, GossipSender.garbage(300))
      # (paces the two bursts, as two senders would: not a wait before an assertion)
      Process.sleep(100)
      flood = GossipSender.fresh_names(500, "127.0.0.1")
      GossipSender.send_all(sender, {233, 252, 1, 32}, port, Enum.map(flood, &elem(&1, 1)))
      :gen_udp.close(sender)

      [{_, pid, _, _}] = Peer.call(p1, Supervisor, :which_children, [hd(sups)])

      counters =
        eventually(fn ->
          c = Peer.call(p1, LibclusterRs.Discovery, :status, [pid]).extra.counters

          # a counter shows up once it has counted something: absent is 0 (not yet processed)
          n = &Map.get(c, &1, 0)

          n.(:rejected_malformed) > 0 and n.(:rejected_too_large) > 0 and n.(:rejected_rate_limited) > 0 and
            n.(:accepted) > 0 and c
        end)

      assert counters.rejected_malformed > 0
      # at most the burst of new names (64, +1 per second) became atoms
      flood_atoms = Peer.call(p1, GossipSender, :existing_atoms, [Enum.map(flood, &elem(&1, 0))])
      assert flood_atoms <= 64 + 3
      # and the atom table as a whole grew by far less than the flood (code loading adds a few)
      assert Peer.call(p1, :erlang, :system_info, [:atom_count]) - atoms_before < 250

      # still meshed, the strategy still the same process
      assert Peer.call(p1, Process, :alive?, [pid])
      assert length(Peer.nodes(p1)) == 2
    end

    @tag timeout: 30_000
    test "an interface that does not exist: the strategy stays alive and keeps retrying" do
      {p, _} = Peer.start("gossipnoif", "127.0.0.1")
      on_exit(fn -> Peer.stop(p) end)

      {:ok, sup} =
        Peer.start_cluster(p, gossip: [strategy: Gossip, config: [port: 47_999, multicast_if: "nosuchif0"]])

      [{_, pid, _, _}] = Peer.call(p, Supervisor, :which_children, [sup])

      status =
        eventually(fn ->
          s = Peer.call(p, LibclusterRs.Discovery, :status, [pid])
          s.extra.counters.socket_open_failed >= 2 && s
        end)

      assert Peer.call(p, Process, :alive?, [pid])
      assert {_kind, message, _} = status.last_error
      assert message =~ "nosuchif0"
      assert status.extra.counters.socket_open_failed >= 2
    end
  end

  describe "a node that is not distributed at start (libcluster starts and keeps running)" do
    setup do
      System.cmd("epmd", ["-daemon"])
      :ok
    end

    # A peer without distribution (no name): controlled over stdio, like every test peer.
    defp start_undistributed do
      paths = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)

      {:ok, pid, :nonode@nohost} =
        :peer.start_link(%{
          connection: :standard_io,
          exec: System.find_executable("erl") |> to_charlist(),
          args: [~c"-kernel", ~c"logger_level", ~c"warning", ~c"-connect_all", ~c"false"] ++ paths,
          wait_boot: 30_000
        })

      {:ok, _} = :peer.call(pid, :application, :ensure_all_started, [:libcluster_rs])
      pid
    end

    @tag timeout: 60_000
    test "the strategy starts, and joins the cluster once Node.start/2 names the node" do
      port = 47_700 + rem(System.unique_integer([:positive]), 200)
      config = [port: port, multicast_if: "lo", multicast_ttl: 0, heartbeat_interval: 300]
      topology = [gossip: [strategy: Gossip, config: config]]

      {a, _} = Peer.start("gossipearly", "127.0.0.1", args: [~c"-connect_all", ~c"false"])
      late = start_undistributed()
      on_exit(fn -> Enum.each([a, late], &Peer.stop/1) end)
      {:ok, _} = Peer.start_cluster(a, topology)

      assert Peer.call(late, Node, :alive?, []) == false
      {:ok, _sup} = Peer.start_cluster(late, topology)
      # (pids of a peer without distribution do not survive the trip here and back: compare their
      # local part, and ask the peer for everything else by topology name)
      strategy = fn ->
        [{pid, _}] = Peer.call(late, Registry, :lookup, [LibclusterRs.Registry, {:discovery, :gossip}])
        pid |> :erlang.pid_to_list() |> to_string() |> String.split(".") |> tl()
      end

      pid = strategy.()
      status = fn -> elem(Peer.call(late, Cluster, :status, [:gossip]), 1) end

      # Not distributed: it runs, sends nothing, and reports nothing, through several heartbeats
      # it skipped (its counter says so).
      counters =
        eventually(
          fn ->
            c = status.().extra.counters
            Map.get(c, :ignored_not_distributed, 0) >= 3 && c
          end,
          10_000
        )

      assert strategy.() == pid
      assert Peer.nodes(a) == []
      assert Map.get(counters, :sent, 0) == 0

      name = :"gossiplate#{System.unique_integer([:positive])}@127.0.0.1"
      {:ok, _} = Peer.call(late, Node, :start, [name, :longnames])
      true = Peer.call(late, Node, :set_cookie, [:libcluster_rs_test])

      eventually(fn -> Peer.nodes(a) == [name] end, 10_000)
      # the same strategy process, now heartbeating under its name
      assert strategy.() == pid
      assert status.().extra.counters.sent > 0
    end
  end

  describe "the VM-wide cap on atoms from unauthenticated gossip" do
    setup do
      System.cmd("epmd", ["-daemon"])
      :ok
    end

    @tag timeout: 90_000
    test "holds across strategy restarts, logs once at error level, and known peers keep working" do
      port = 47_900 + rem(System.unique_integer([:positive]), 90)
      cap = 30

      topology = [
        gossip: [
          strategy: Gossip,
          config: [
            port: port,
            multicast_if: "lo",
            multicast_ttl: 0,
            heartbeat_interval: 300,
            max_unauthenticated_atoms: cap
          ]
        ]
      ]

      {v, _} = Peer.start("gossipcapv", "127.0.0.1", args: [~c"-connect_all", ~c"false"])
      # a known peer: it runs no strategy; its libcluster-style heartbeats are sent from here
      {k, k_node} = Peer.start("gossipcapk", "127.0.0.1", args: [~c"-connect_all", ~c"false"])
      on_exit(fn -> Enum.each([v, k], &Peer.stop/1) end)
      :ok = Peer.call(v, GossipLog, :start, [:error])

      sender = GossipSender.open(socket_opts: [multicast_if: {127, 0, 0, 1}, multicast_ttl: 0])
      on_exit(fn -> :gen_udp.close(sender) end)
      k_beat = Native.gossip_encode_v1(Atom.to_string(k_node), nil)
      beat_k = fn -> GossipSender.send_all(sender, {233, 252, 1, 32}, port, [k_beat]) end

      {:ok, sup} = Peer.start_cluster(v, topology)
      eventually(fn -> beat_k.() && Peer.nodes(v) == [k_node] end, 10_000)

      # A flood of fresh names: the per-sender allowance lets 64 through, the cap takes 29 more.
      flood1 = GossipSender.fresh_names(500, "127.0.0.1")
      GossipSender.send_all(sender, {233, 252, 1, 32}, port, Enum.map(flood1, &elem(&1, 1)))

      eventually(
        fn -> match?({^cap, dropped} when dropped > 0, Peer.call(v, Native, :untrusted_atom_budget, [])) end,
        5_000
      )

      # The cap is logged at error level (a peer's log line travels to this node's console first,
      # which can hold the logging process up for a moment: wait for it).
      eventually(fn -> Peer.call(v, GossipLog, :lines, []) != [] end, 10_000)

      # Restart the strategy: a fresh native task with a fresh allowance, the same VM-wide budget.
      :ok = Peer.call(v, Supervisor, :stop, [sup])
      true = Peer.call(v, :erlang, :disconnect_node, [k_node])
      assert Peer.nodes(v) == []
      {:ok, sup} = Peer.start_cluster(v, topology)
      [{_, pid, _, _}] = Peer.call(v, Supervisor, :which_children, [sup])

      # At the cap, the known peer is connected again by its heartbeat (its name is an atom already).
      eventually(fn -> beat_k.() && Peer.nodes(v) == [k_node] end, 10_000)

      flood2 = GossipSender.fresh_names(500, "127.0.0.1")
      GossipSender.send_all(sender, {233, 252, 1, 32}, port, Enum.map(flood2, &elem(&1, 1)))
      status = fn -> Peer.call(v, LibclusterRs.Discovery, :status, [pid]).extra end
      eventually(fn -> status.().counters[:rejected_atom_cap] end, 5_000)

      # and after the flood too
      true = Peer.call(v, :erlang, :disconnect_node, [k_node])
      eventually(fn -> beat_k.() && Peer.nodes(v) == [k_node] end, 10_000)

      extra = status.()
      assert extra.unauthenticated_atoms.created == cap
      assert extra.unauthenticated_atoms.dropped > 0
      assert extra.unauthenticated_atoms.max == cap

      names = Enum.map(flood1 ++ flood2, &elem(&1, 0))
      assert Peer.call(v, GossipSender, :existing_atoms, [names]) == cap - 1

      # one error-level line for the whole VM, recommending the authenticated format
      assert [line] = Peer.call(v, GossipLog, :lines, [])
      assert line =~ "max_unauthenticated_atoms"
      assert line =~ "wire_format: :authenticated"
    end
  end
end
