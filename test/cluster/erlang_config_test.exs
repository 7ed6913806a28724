defmodule Cluster.ErlangConfigTest do
  # The sys.config form and the Erlang shell session of docs/erlang.md, run for real.
  use ExUnit.Case, async: false
  import LibclusterRs.Test.Eventually
  alias LibclusterRs.Test.Peer

  @doc_path "docs/erlang.md"

  defp erlang_blocks do
    Regex.scan(~r/```erlang\n(.*?)```/s, File.read!(@doc_path), capture: :all_but_first) |> List.flatten()
  end

  @tag :tmp_dir
  @tag timeout: 60_000
  test "two nodes cluster from the documented sys.config", %{tmp_dir: dir} do
    [sys_config] = Enum.filter(erlang_blocks(), &String.contains?(&1, "%% config/sys.config"))
    n = System.unique_integer([:positive])
    {a, b} = {"erlguide#{n}a", "erlguide#{n}b"}
    text = sys_config |> String.replace("app1@", "#{a}@") |> String.replace("app2@", "#{b}@")
    path = Path.join(dir, "sys.config")
    File.write!(path, text)

    # It is a valid sys.config with the shape the doc describes.
    assert {:ok, [[{:libcluster_rs, [{:topologies, [{:example, spec}]}]}]]} = :file.consult(to_charlist(path))
    assert spec[:strategy] == Cluster.Strategy.Epmd

    args = [~c"-config", to_charlist(Path.rootname(path))]
    {p1, n1} = Peer.start(a, "127.0.0.1", args: args)
    on_exit(fn -> Peer.stop(p1) end)
    {p2, n2} = Peer.start(b, "127.0.0.1", args: args)
    on_exit(fn -> Peer.stop(p2) end)

    # The shell session: nodes(), Cluster:status(example), Cluster:await/1.
    eventually(fn -> Peer.call(p2, :erlang, :nodes, []) == [n1] end)
    {:ok, status} = Peer.call(p2, Cluster, :status, [:example])
    assert status.connected == [n1]
    assert status.strategy == Cluster.Strategy.Epmd
    assert Peer.call(p1, Cluster, :await, [[min_nodes: 1, timeout: 5_000]]) == :ok
    assert Peer.call(p1, :erlang, :nodes, []) == [n2]
  end

  test "every other Erlang snippet of the guide parses" do
    for block <- erlang_blocks(), not String.contains?(block, "%% config/sys.config") do
      source = String.trim_trailing(block)
      source = if String.ends_with?(source, "."), do: source, else: source <> "."
      {:ok, tokens, _} = :erl_scan.string(to_charlist(source))

      for chunk <- chunk_at_dots(tokens) do
        parsed =
          with {:error, _} <- :erl_parse.parse_form(chunk),
               {:error, _} <- :erl_parse.parse_exprs(chunk),
               do: :error

        assert parsed != :error, "does not parse in:\n#{block}"
      end
    end
  end

  defp chunk_at_dots(tokens) do
    tokens
    |> Enum.chunk_while(
      [],
      fn
        {:dot, _} = dot, acc -> {:cont, Enum.reverse([dot | acc]), []}
        token, acc -> {:cont, [token | acc]}
      end,
      fn acc -> {:cont, acc} end
    )
    |> Enum.reject(&(&1 == []))
  end
end
