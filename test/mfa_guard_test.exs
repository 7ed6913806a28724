defmodule LibclusterRs.MFAGuardTest do
  # Every literal MFA the tests pass as a topology's `connect`, `disconnect` or `list_nodes` exists
  # with the arity the library calls it with (LibclusterRs.Test.MFA): an MFA that does not exist
  # raises at every call, the topology contains the raise, and the test's refutes about it prove
  # nothing. The MFAs built at run time are checked by the topology helpers.
  #
  # Not async: some MFAs name modules defined inside test files (e.g. an overlay stand-in), which
  # exist only once those files are loaded. ExUnit may start async tests while test files are
  # still loading (seen on Elixir 1.18), but runs sync modules only after all of them are loaded.
  # (Run alone, the files it scans are not loaded, and their own modules show as missing.)
  use ExUnit.Case, async: false

  alias LibclusterRs.Test.MFA

  # (this file's own samples are broken on purpose)
  @sources Path.wildcard("test/**/*.{ex,exs}") -- [Path.relative_to_cwd(__ENV__.file)]

  test "the scan sees the test sources" do
    assert length(@sources) > 50
    assert "test/cluster/strategy/postgres_test.exs" in @sources
  end

  test "every literal connect/disconnect/list_nodes MFA in test/ exists with its arity" do
    found = Enum.flat_map(@sources, &mfas(File.read!(&1), &1))
    # (the scan is not vacuous: the sources hold dozens of them)
    assert length(found) > 30, inspect(found)
    bad = for {where, kind, mfa} <- found, problem = problem(mfa, kind), do: "#{where}: #{problem}"
    assert bad == [], Enum.join(bad, "\n")
  end

  test "the scan finds the broken forms: Kernel.send/3, a missing module, a wrong arity" do
    source = """
    defmodule Sample do
      alias LibclusterRs.Test.FakeDist
      def topology(_dist) do
        [
          a: [connect: {Kernel, :send, [self(), :connect]}, disconnect: {Kernel, :send, [self()]}],
          b: [connect: {NoSuchModule, :connect, []}, list_nodes: {FakeDist, :list_nodes, []}],
          c: %{connect: {__MODULE__, :connect, [1]}, list_nodes: {:erlang, :nodes, [:connected]}}
        ]
      end
      def connect(_, _), do: true
    end
    """

    Code.compile_string(source)

    problems =
      for {where, kind, mfa} <- mfas(source, "sample.exs"),
          problem = problem(mfa, kind),
          do: {where, problem}

    assert [
             {"sample.exs:5",
              "the connect MFA {Kernel, :send, [self(), :connect]} would call Kernel.send/3" <> _},
             {"sample.exs:6",
              "the connect MFA {NoSuchModule, :connect, []} would call NoSuchModule.connect/1" <> _},
             {"sample.exs:6", "the list_nodes MFA {LibclusterRs.Test.FakeDist, :list_nodes, []}" <> _}
           ] = problems
  after
    :code.purge(Sample)
    :code.delete(Sample)
  end

  test "the runtime check raises on the same forms, and the recorder exists" do
    assert_raise ArgumentError, ~r/Kernel.send\/3, which does not exist/, fn ->
      MFA.check_topology!(connect: {Kernel, :send, [self(), :connect]})
    end

    assert MFA.check!({Kernel, :send, [self()]}, :connect)
    assert MFA.check!(MFA.recorder(self(), :connect), :connect)
    {m, f, a} = MFA.recorder(self(), :disconnect, false)
    assert apply(m, f, a ++ [:n@h]) == false
    assert_received {:disconnect, :n@h}
  end

  defp problem({m, f, a} = mfa, kind) do
    MFA.check!({m, f, a}, kind)
    nil
  rescue
    e in ArgumentError -> String.replace(e.message, inspect(mfa), shown(mfa))
  end

  # The MFA as the source wrote it (its args are AST: `self()` rather than a pid).
  defp shown({m, f, a}), do: "{#{inspect(m)}, #{inspect(f)}, [#{Enum.map_join(a, ", ", &Macro.to_string/1)}]}"

  # {"file:line", kind, {module, fun, args_ast}} for every `kind: {Mod, :fun, [args]}` in `source`
  # whose module is known at compile time (an atom, an alias or __MODULE__).
  defp mfas(source, file) do
    ast = Code.string_to_quoted!(source, file: file)
    aliases = aliases(ast)
    walk(ast, nil, aliases, file)
  end

  defp walk({:defmodule, _, [name, body]}, _module, aliases, file),
    do: walk(body, expand(name, nil, aliases), aliases, file)

  defp walk({kind, {:{}, meta, [m, f, args]}} = node, module, aliases, file)
       when is_atom(f) and is_list(args) do
    here =
      with true <- kind in MFA.keys(),
           mod when is_atom(mod) and mod != nil <- expand(m, module, aliases) do
        [{"#{file}:#{meta[:line]}", kind, {mod, f, args}}]
      else
        _ -> []
      end

    here ++ walk(Tuple.to_list(node), module, aliases, file)
  end

  defp walk(node, module, aliases, file) when is_list(node),
    do: Enum.flat_map(node, &walk(&1, module, aliases, file))

  defp walk({a, b}, module, aliases, file), do: walk([a, b], module, aliases, file)

  defp walk({_, _, args}, module, aliases, file) when is_list(args), do: walk(args, module, aliases, file)
  defp walk(_, _, _, _), do: []

  defp expand(m, _module, _aliases) when is_atom(m), do: m
  defp expand({:__MODULE__, _, _}, module, _aliases), do: module

  defp expand({:__aliases__, _, [first | rest]}, _module, aliases) when is_atom(first),
    do: Module.concat([Map.get(aliases, first, first) | rest])

  defp expand(_, _, _), do: nil

  # `alias A.B`, `alias A.{B, C}`, `alias A.B, as: C` anywhere in the file (a file-wide approximation).
  defp aliases(ast) do
    {_, acc} =
      Macro.prewalk(ast, %{}, fn
        {:alias, _, [{{:., _, [{:__aliases__, _, base}, :{}]}, _, names} | _]} = node, acc ->
          {node,
           Enum.reduce(names, acc, fn {:__aliases__, _, parts}, acc -> put_alias(acc, base ++ parts, nil) end)}

        {:alias, _, [{:__aliases__, _, parts}, [as: {:__aliases__, _, [as]}]]} = node, acc ->
          {node, put_alias(acc, parts, as)}

        {:alias, _, [{:__aliases__, _, parts}]} = node, acc ->
          {node, put_alias(acc, parts, nil)}

        node, acc ->
          {node, acc}
      end)

    acc
  end

  defp put_alias(acc, parts, as), do: Map.put(acc, as || List.last(parts), Module.concat(parts))
end
