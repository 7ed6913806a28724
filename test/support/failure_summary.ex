defmodule LibclusterRs.Test.FailureSummary do
  @moduledoc false
  # An ExUnit formatter that runs beside the CLI one and writes what a failing run must name, so
  # that `script/test` can end with it whatever was printed before (CI shows only the tail of a
  # run). `script/mix-test LANE` adds it and sets LIBCLUSTER_RS_TEST_SUMMARY to the lane's file;
  # `script/test-summary` prints the files of every lane. Without that variable it does nothing.
  #
  # The file is written as the run goes, one line per record, so a run that dies midway (a killed
  # VM, a compile error) still leaves what it had, and no `finished` line:
  #
  #   seed 123456
  #   failure test/cluster/foo_test.exs:42<TAB>Cluster.FooTest<TAB>test the name<TAB>first line of the error
  #   finished 432 tests, 1 failure, 17 skipped, 3 excluded

  use GenServer

  @impl true
  def init(opts) do
    path = System.get_env("LIBCLUSTER_RS_TEST_SUMMARY")
    s = %{path: path, tests: 0, failures: 0, skipped: 0, excluded: 0, invalid: 0}
    if path, do: File.mkdir_p!(Path.dirname(path))
    if path, do: append(s, "seed #{opts[:seed]}")
    {:ok, s}
  end

  @impl true
  def handle_cast(_event, %{path: nil} = s), do: {:noreply, s}

  def handle_cast({:test_finished, %ExUnit.Test{state: state} = test}, s) do
    s = %{s | tests: s.tests + 1}

    case state do
      {:failed, failures} ->
        record(s, test.tags[:file], test.tags[:line], test.module, test.name, failures)
        {:noreply, %{s | failures: s.failures + 1}}

      {:invalid, _module} ->
        # its module's setup_all failed: that failure is recorded once, by module_finished
        {:noreply, %{s | invalid: s.invalid + 1}}

      {:skipped, _} ->
        {:noreply, %{s | skipped: s.skipped + 1}}

      {:excluded, _} ->
        {:noreply, %{s | excluded: s.excluded + 1}}

      nil ->
        {:noreply, s}
    end
  end

  def handle_cast({:module_finished, %ExUnit.TestModule{state: {:failed, failures}} = module}, s) do
    record(s, module.file, nil, module.name, :"setup_all (every test of the module)", failures)
    {:noreply, %{s | failures: s.failures + 1}}
  end

  def handle_cast({:suite_finished, _times}, s) do
    counts =
      [
        "#{s.tests - s.excluded} tests",
        plural(s.failures, "failure"),
        s.invalid > 0 && "#{s.invalid} invalid",
        s.skipped > 0 && "#{s.skipped} skipped",
        s.excluded > 0 && "#{s.excluded} excluded"
      ]
      |> Enum.filter(& &1)
      |> Enum.join(", ")

    append(s, "finished #{counts}")
    {:noreply, s}
  end

  def handle_cast(_event, s), do: {:noreply, s}

  defp record(s, file, line, module, name, failures) do
    where = Path.relative_to_cwd(to_string(file)) <> if(line, do: ":#{line}", else: "")
    append(s, Enum.join(["failure", where, inspect(module), to_string(name), first_line(failures)], "\t"))
  end

  # The first line of the first failure's message (an assertion's message, an exception's), so the
  # summary says what kind of failure it was; the full report is in the CLI output above it.
  defp first_line([{kind, reason, stack} | _]) do
    text =
      case {kind, reason} do
        {:error, %ExUnit.AssertionError{message: message}} -> message
        _ -> Exception.format_banner(kind, reason, stack)
      end

    text
    |> String.split("\n", trim: true)
    |> List.first("")
    |> String.replace("\t", " ")
    |> String.slice(0, 160)
  end

  defp first_line(_), do: ""

  defp plural(1, word), do: "1 #{word}"
  defp plural(n, word), do: "#{n} #{word}s"

  defp append(s, line), do: File.write!(s.path, line <> "\n", [:append])
end
