defmodule LibclusterRs.NodeNameModeTest do
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually
  import ExUnit.CaptureLog
  alias LibclusterRs.NodeName
  alias LibclusterRs.Test.Peer

  test "mode_problem/2: what Erlang refuses to dial under each name mode" do
    # long names (--name)
    assert NodeName.mode_problem(:"a@10.0.0.1", true) == nil
    assert NodeName.mode_problem(:"a@app.example.com", true) == nil
    assert NodeName.mode_problem(:"a@fd00::1", true) == nil
    assert NodeName.mode_problem(:a@myhost, true) =~ ~s(its host part "myhost" is a short name)
    # short names (--sname)
    assert NodeName.mode_problem(:a@myhost, false) == nil
    assert NodeName.mode_problem(:"a@10.0.0.1", false) =~ "uses short names (--sname)"
    assert NodeName.mode_problem("a@app.example.com", false) =~ "is a fully qualified name or an IP address"
  end

  test "a topology started without distribution warns at start" do
    log =
      capture_log(fn ->
        start_supervised!(
          {Cluster.Supervisor,
           [[nodist: [strategy: Cluster.Strategy.Epmd, config: [hosts: [:"a@h.example"]]]]]},
          restart: :temporary
        )

        Logger.flush()
      end)

    assert log =~ "[libcluster:nodist] this node is not running distributed Erlang"
    assert log =~ "--name or --sname"
  end

  @tag timeout: 60_000
  test "on a long-names node, short-name discoveries are reported in status and logged once" do
    name = "namemode#{System.unique_integer([:positive])}"
    {peer, _} = Peer.start(name, "127.0.0.1")
    on_exit(fn -> Peer.stop(peer) end)

    # `shorthost` must never reach the system resolver: the peer resolves it from its own hosts
    # table only.
    :ok = Peer.call(peer, :inet_db, :add_host, [{127, 0, 0, 1}, [~c"shorthost"]])
    :ok = Peer.call(peer, :inet_db, :set_lookup, [[:file]])

    {:ok, _} =
      Peer.start_cluster(peer,
        mixed: [strategy: Cluster.Strategy.Epmd, config: [hosts: [:a@shorthost, :"b@127.0.0.1"]]]
      )

    eventually(fn ->
      match?({:ok, %{name_problems: [_]}}, Peer.call(peer, Cluster, :status, [:mixed]))
    end)

    {:ok, status} = Peer.call(peer, Cluster, :status, [:mixed])
    assert [problem] = status.name_problems

    assert problem =~
             ~s(a@shorthost: its host part "shorthost" is a short name, but this node uses long names)
  end
end
