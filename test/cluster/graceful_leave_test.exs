defmodule Cluster.GracefulLeaveTest do
  # A real peer whose application drains at shutdown. Async: nothing global here.
  use ExUnit.Case, async: true
  import LibclusterRs.Test.Eventually
  alias LibclusterRs.Test.Peer

  @tag timeout: 60_000
  @tag :tmp_dir
  test "while the application drains at shutdown, its topologies re-dial nothing", %{tmp_dir: dir} do
    Process.flag(:trap_exit, true)
    path = Path.join(dir, "dials.log")
    File.write!(path, "")
    name = "drain#{System.unique_integer([:positive])}"
    {peer, _node} = Peer.start(name, "127.0.0.1")

    # A peer that never comes: the topology re-dials it every 10-20 ms.
    :ok =
      Peer.call(peer, LibclusterRs.Test.DrainApp, :load_and_start, [path, [:"ghost_#{name}@127.0.0.1"], 500])

    eventually(fn -> count(path, "dial ") >= 5 end, 10_000)

    # The node stops: the application's drainer takes 500 ms, during which the topology still runs.
    # (The peer may go before its reply does.)
    try do
      Peer.call(peer, :init, :stop, [])
    catch
      :exit, _ -> :ok
    end

    assert_receive {:EXIT, ^peer, _}, 20_000

    log = File.read!(path)
    assert log =~ "drained\n"
    [before, during] = String.split(log, "drain\n", parts: 2)
    assert count_in(before, "dial ") >= 5
    assert count_in(during, "dial ") == 0, "re-dialled during the drain:\n#{log}"
  end

  defp count(path, word), do: path |> File.read!() |> count_in(word)
  defp count_in(text, word), do: length(String.split(text, word)) - 1
end
