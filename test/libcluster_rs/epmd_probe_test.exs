defmodule LibclusterRs.EpmdProbeTest do
  use ExUnit.Case, async: true

  import LibclusterRs.Test.Eventually

  alias LibclusterRs.EpmdProbe

  test "compare: registered, absent (with what the host lists) and hosts that did not answer" do
    answers = %{
      "10.0.0.1" => {:ok, ["app", "other"]},
      "10.0.0.2" => {:ok, []},
      "10.0.0.3" => {:error, {:timeout, "epmd on 10.0.0.3:4369 did not answer within 5s"}}
    }

    listed = [:"app@10.0.0.1", :"app2@10.0.0.1", :"app@10.0.0.2", :"app@10.0.0.3", :"app@10.0.0.1"]

    assert EpmdProbe.compare(listed, answers) == %{
             registered: [:"app@10.0.0.1"],
             absent: [{:"app2@10.0.0.1", ["app", "other"]}, {:"app@10.0.0.2", []}],
             unanswered: [{"10.0.0.3", :timeout, "epmd on 10.0.0.3:4369 did not answer within 5s"}]
           }
  end

  test "nodes: every name the answers show, as name@host" do
    answers = %{"h1" => {:ok, ["b", "a"]}, "h2" => {:error, {:refused, "no"}}, "h3" => {:ok, ["c"]}}
    assert EpmdProbe.nodes(answers) == [:a@h1, :b@h1, :c@h3]
  end

  test "ask: a real epmd on 127.0.0.1 answers; a closed port is refused, each host reported" do
    # The test VM is not distributed, so epmd runs only once some earlier test started a peer:
    # start it here (`epmd -daemon` is a no-op when one already runs) and wait until it listens.
    epmd = Path.join([:code.root_dir(), "erts-#{:erlang.system_info(:version)}", "bin", "epmd"])
    epmd = if File.exists?(epmd), do: epmd, else: System.find_executable("epmd")
    {_, 0} = System.cmd(epmd, ["-daemon"])

    names =
      eventually(fn ->
        match?(%{"127.0.0.1" => {:ok, _}}, answer = EpmdProbe.ask(["127.0.0.1"], 4369, 2_000)) &&
          answer["127.0.0.1"]
      end)

    assert {:ok, names} = names
    assert is_list(names)

    {:ok, closed} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(closed)
    :ok = :gen_tcp.close(closed)
    assert %{"127.0.0.1" => {:error, {:refused, _}}} = EpmdProbe.ask(["127.0.0.1"], port, 2_000)
  end
end
