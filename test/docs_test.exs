defmodule Cluster.DocsTest do
  # The `config :libcluster` snippets of the guides evaluate, and each topology in them passes the
  # validation done at start (for the strategies available in this build).
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog

  @guides Path.wildcard("docs/*.md")

  defp config_snippets do
    for path <- @guides,
        [block] <- Regex.scan(~r/```elixir\n(.*?)```/s, File.read!(path), capture: :all_but_first),
        block =~ ~r/^config :libcluster/m,
        do: {path, block}
  end

  test "the guides exist" do
    for guide <-
          ~w(kubernetes dns gossip erlang migrating telemetry releasing ec2 consul postgres digitalocean) do
      assert "docs/#{guide}.md" in @guides
    end
  end

  test "every config snippet evaluates and its topologies validate" do
    snippets = config_snippets()
    assert length(snippets) >= 6

    for {path, block} <- snippets do
      # Snippets read secrets from the environment (System.fetch_env!): give them placeholders
      # while the snippet is evaluated, and leave the environment as it was.
      placeholders =
        for [var] <- Regex.scan(~r/System\.fetch_env!\("(\w+)"\)/, block, capture: :all_but_first),
            System.get_env(var) == nil,
            do: var

      for var <- placeholders, do: System.put_env(var, "placeholder")

      config =
        try do
          Config.Reader.eval!(path, "import Config\n" <> block)
        after
          for var <- placeholders, do: System.delete_env(var)
        end

      topologies = get_in(config, [:libcluster, :topologies])
      assert Keyword.keyword?(topologies) and topologies != [], "#{path}: no topologies in\n#{block}"

      # Strategies of other issues may not be in this build yet; validate those that are.
      for {name, spec} <- topologies, Code.ensure_loaded?(spec[:strategy]) do
        {strategy, state} = Cluster.Supervisor.topology_state!(name, spec)

        if function_exported?(strategy, :discover, 2) do
          capture_log(fn ->
            try do
              strategy.init(state)
            rescue
              e in ArgumentError -> flunk("#{path}: topology #{inspect(name)}: #{Exception.message(e)}")
            end
          end)
        end
      end
    end
  end

  test "dns.md lists every DNS resolver option with the default in the code" do
    guide = File.read!("docs/dns.md")

    for {key, default, _validator} <- LibclusterRs.DNS.schema() do
      text = if is_integer(default), do: underscored(default), else: inspect(default)
      assert guide =~ ~r/\| `#{key}` \|[^\n]*\(`#{Regex.escape(text)}`\) \|/, "#{key}: (`#{text}`)"
    end

    # libcluster's defaults: prune at once, apply an empty answer at once
    assert LibclusterRs.DNS.default_prune(5_000) == :immediate
    assert guide =~ ~r/the default\s+prune policy is `:immediate`/
    assert LibclusterRs.DNS.confirm_empty() == 1
    assert guide =~ "by default it is applied at once"

    # the recommended options for partial or rotating answers
    assert guide =~ "{:grace_period, max(3 * polling_interval, 30_000)}"
    assert LibclusterRs.DNS.recommended_grace(5_000) == {:grace_period, 30_000}
    assert LibclusterRs.DNS.recommended_grace(20_000) == {:grace_period, 60_000}
    assert guide =~ "confirm_empty: 2"
  end

  defp underscored(n) when n < 1000, do: Integer.to_string(n)

  defp underscored(n) do
    underscored(div(n, 1000)) <> "_" <> String.pad_leading(Integer.to_string(rem(n, 1000)), 3, "0")
  end
end
