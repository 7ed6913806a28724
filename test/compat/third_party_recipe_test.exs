defmodule Cluster.Compat.ThirdPartyRecipeTest do
  # The recipe of docs/migrating.md ("Third-party strategy packages"), run as a user would: a fresh
  # app depends on libcluster_rs, on the stub package compat/libcluster (override: true) and on a
  # third-party strategy package that depends on `{:libcluster, "~> 3.0"}` and `use`s
  # Cluster.Strategy. It must compile, build a release, and two nodes of that release must form a
  # cluster through the third-party strategy, running on libcluster_rs's Cluster.Strategy.
  #
  # hex.pm is unreachable here, so the stand-ins are local: the third-party package reaches its
  # "libcluster 3.5" by a path (a stand-in with libcluster's module names whose helpers refuse to
  # run), which is replaced by the stub exactly as a hex dependency is (override: true works across
  # SCMs). Builds run in MIX_ENV=dev with this repository's cargo target dir, and libcluster_rs is
  # declared with `env: :dev` (the only departure from the documented recipe): Mix builds
  # dependencies in :prod by default, which would build the release NIF from scratch here; in :dev
  # cargo reuses the debug build of this checkout.
  use ExUnit.Case, async: false

  # compiles fresh apps and builds releases: the packaging lane (README, "Tests")
  @moduletag :packaging
  @moduletag :tmp_dir
  @moduletag timeout: 900_000

  @root Path.expand("../..", __DIR__)
  @cookie "recipe_cookie"

  describe "path dependencies" do
    test "compiles in the right order, builds a release with one :libcluster, and clusters", %{tmp_dir: dir} do
      write_third_party!(dir)

      app =
        write_app!(dir, """
            {:libcluster_rs, path: #{inspect(@root)}, override: true, env: :dev},
            {:libcluster, path: #{inspect(Path.join(@root, "compat/libcluster"))}, override: true},
            {:libcluster_static, path: "../libcluster_static"}
        """)

      check_recipe!(app)
    end
  end

  describe "without the stub" do
    test "the stand-in reproduces the problem: mix release fails with duplicated modules", %{tmp_dir: dir} do
      write_third_party!(dir)

      app =
        write_app!(dir, """
            {:libcluster_rs, path: #{inspect(@root)}, env: :dev},
            {:libcluster_static, path: "../libcluster_static"}
        """)

      {out, status} = mix!(app, ["compile"])
      assert status == 0, out
      {out, status} = mix!(app, ["release", "--overwrite"])
      assert status != 0
      assert out =~ "Duplicated modules"
      assert out =~ "Elixir.Cluster.Strategy"
    end
  end

  describe "libcluster_rs alone (no third-party package, no stub)" do
    test "config :libcluster reaches a release, which holds one :libcluster and no libcluster.app", %{
      tmp_dir: dir
    } do
      app =
        write_app!(
          dir,
          """
              {:libcluster_rs, path: #{inspect(@root)}, env: :dev}
          """,
          "strategy: Cluster.Strategy.Epmd, config: [hosts: nodes]"
        )

      {out, status} = mix!(app, ["release", "--overwrite"])
      assert status == 0, out
      rel = Path.join(app, "_build/dev/rel/recipe_app")
      assert Path.wildcard(Path.join(rel, "lib/*/ebin/libcluster.app")) == []
      refute File.exists?(Path.join(rel, "lib/libcluster-3.5.0"))

      report = two_nodes!(rel)
      assert report.b in report.nodes, inspect(report)
      assert report.libcluster_apps == [~c"3.5.0-libcluster_rs"]
      assert report.topologies_configured
      assert report.status_strategy == Cluster.Strategy.Epmd
    end
  end

  describe "git dependencies" do
    test "the same recipe with git (file://) and sparse: compat/libcluster", %{tmp_dir: dir} do
      repo = git_snapshot!(Path.join(dir, "libcluster_rs.git"))
      write_third_party!(dir)
      url = "file://" <> repo

      app =
        write_app!(dir, """
            {:libcluster_rs, git: #{inspect(url)}, branch: "main", override: true, env: :dev},
            {:libcluster, git: #{inspect(url)}, branch: "main", sparse: "compat/libcluster", override: true},
            {:libcluster_static, path: "../libcluster_static"}
        """)

      {out, 0} = mix!(app, ["deps.get"])
      assert out =~ "libcluster"
      check_recipe!(app)
    end
  end

  ## The checks

  defp check_recipe!(app) do
    {out, status} = mix!(app, ["compile"])
    assert status == 0, out
    # Mix compiles libcluster_rs (through the stub) before the package that uses Cluster.Strategy.
    assert position(out, "==> libcluster_rs") < position(out, "==> libcluster_static"), out
    refute out =~ "Duplicated modules"

    {out, status} = mix!(app, ["release", "--overwrite"])
    assert status == 0, out
    refute out =~ "Duplicated modules"

    rel = Path.join(app, "_build/dev/rel/recipe_app")
    app_files = Path.wildcard(Path.join(rel, "lib/*/ebin/libcluster.app"))
    assert [one] = app_files, "expected exactly one libcluster.app in the release, got: #{inspect(app_files)}"
    assert one =~ "/lib/libcluster-3.5.0/ebin/"
    assert Path.wildcard(Path.join(rel, "lib/libcluster-3.5.0/ebin/*.beam")) == []

    report = two_nodes!(rel)
    b = report.b
    assert b in report.nodes, inspect(report)
    # The third-party strategy ran, on libcluster_rs's Cluster.Strategy.
    assert report.strategy_loaded_from =~ "/lib/libcluster_static-0.1.0/"
    assert report.cluster_strategy_from =~ "/lib/libcluster_rs-0.1.0/"
    # One :libcluster application, the stub, and `config :libcluster` reached it.
    assert report.libcluster_apps == [~c"3.5.0"]
    assert report.topologies_configured
    assert report.status_strategy == ClusterStatic.Strategy
  end

  # Starts two nodes of the release, each with a topology listing both; returns what the first sees.
  defp two_nodes!(rel) do
    suffix = System.unique_integer([:positive])
    a = :"recipe_a_#{suffix}@127.0.0.1"
    b = :"recipe_b_#{suffix}@127.0.0.1"
    nodes = "#{a},#{b}"
    start_release!(rel, a, nodes)
    start_release!(rel, b, nodes)
    Map.put(rpc_until!(rel, a, b), :b, b)
  end

  ## Packages

  defp write_third_party!(dir) do
    # A stand-in for libcluster 3.5 as a third-party package would fetch it: libcluster's module
    # names. Its helpers refuse to run, so a build where this copy wins cannot form a cluster.
    write!(dir, "upstream_libcluster/mix.exs", """
    defmodule UpstreamLibcluster.MixProject do
      use Mix.Project
      def project, do: [app: :libcluster, version: "3.5.0", deps: []]
      def application, do: [extra_applications: [:logger]]
    end
    """)

    write!(dir, "upstream_libcluster/lib/strategy.ex", """
    defmodule Cluster.Strategy do
      @callback start_link([term()]) :: term()
      defmacro __using__(_), do: quote(do: @behaviour Cluster.Strategy)
      def connect_nodes(_, _, _, _), do: raise("the upstream libcluster stand-in ran")
    end

    defmodule Cluster.Strategy.State do
      defstruct [:topology, :connect, :disconnect, :list_nodes, :config, :meta]
    end

    defmodule Cluster.Logger do
      def debug(_, _), do: raise("the upstream libcluster stand-in ran")
    end
    """)

    # The third-party package: a libcluster-style strategy (as libcluster_ec2 and others are
    # written), depending on {:libcluster, "~> 3.0"}.
    write!(dir, "libcluster_static/mix.exs", """
    defmodule LibclusterStatic.MixProject do
      use Mix.Project

      def project do
        [app: :libcluster_static, version: "0.1.0",
         deps: [{:libcluster, "~> 3.0", path: "../upstream_libcluster"}]]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    write!(dir, "libcluster_static/lib/strategy.ex", """
    defmodule ClusterStatic.Strategy do
      use GenServer
      use Cluster.Strategy
      alias Cluster.Strategy.State

      def start_link([%State{} = state]), do: GenServer.start_link(__MODULE__, state)

      @impl true
      def init(%State{} = state) do
        send(self(), :load)
        {:ok, state}
      end

      @impl true
      def handle_info(:load, %State{config: config} = state) do
        nodes = Keyword.fetch!(config, :nodes)
        Cluster.Strategy.connect_nodes(state.topology, state.connect, state.list_nodes, nodes)
        Cluster.Logger.debug(state.topology, "asked for \#{inspect(nodes)}")
        Process.send_after(self(), :load, Keyword.get(config, :polling_interval, 200))
        {:noreply, state}
      end
    end
    """)
  end

  defp write_app!(dir, deps, topology \\ "strategy: ClusterStatic.Strategy, config: [nodes: nodes]") do
    app = Path.join(dir, "recipe_app")

    write!(app, "mix.exs", """
    defmodule RecipeApp.MixProject do
      use Mix.Project

      def project do
        [app: :recipe_app, version: "0.1.0", deps: deps(),
         releases: [recipe_app: [include_erts: false]]]
      end

      def application, do: [extra_applications: [:logger], mod: {RecipeApp.Application, []}]

      defp deps do
        [
    #{deps}    ]
      end
    end
    """)

    write!(app, "lib/application.ex", """
    defmodule RecipeApp.Application do
      use Application

      def start(_type, _args) do
        topologies = Application.get_env(:libcluster, :topologies)
        children = [{Cluster.Supervisor, [topologies, [name: RecipeApp.ClusterSupervisor]]}]
        Supervisor.start_link(children, strategy: :one_for_one, name: RecipeApp.Supervisor)
      end
    end
    """)

    write!(app, "config/config.exs", """
    import Config
    config :logger, level: :warning
    """)

    write!(app, "config/runtime.exs", """
    import Config

    nodes =
      System.get_env("RECIPE_NODES", "")
      |> String.split(",", trim: true)
      |> Enum.map(&String.to_atom/1)

    config :libcluster,
      topologies: [static: [#{topology}]]
    """)

    app
  end

  # A git repository holding this worktree's files as they are now (committed or not).
  defp git_snapshot!(repo) do
    {files, 0} =
      System.cmd("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"], cd: @root)

    for file <- String.split(files, <<0>>, trim: true), File.regular?(Path.join(@root, file)) do
      dest = Path.join(repo, file)
      File.mkdir_p!(Path.dirname(dest))
      File.cp!(Path.join(@root, file), dest)
    end

    git = fn args -> {_, 0} = System.cmd("git", args, cd: repo, stderr_to_stdout: true) end
    git.(["init", "-q", "-b", "main"])
    git.(["add", "-A"])
    git.(["-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "snapshot"])
    repo
  end

  ## Running things

  defp mix!(app, args) do
    System.cmd("mix", args,
      cd: app,
      stderr_to_stdout: true,
      env: [
        {"MIX_ENV", "dev"},
        {"CARGO_TARGET_DIR", Path.join(@root, "target")},
        {"MIX_BUILD_PATH", nil},
        {"MIX_DEPS_PATH", nil}
      ]
    )
  end

  defp release_env(rel, node, nodes) do
    [
      {"RELEASE_DISTRIBUTION", "name"},
      {"RELEASE_NODE", Atom.to_string(node)},
      {"RELEASE_COOKIE", @cookie},
      {"RELEASE_TMP", Path.join(rel, "tmp/#{node}")},
      {"RECIPE_NODES", nodes},
      {"MIX_ENV", nil}
    ]
  end

  defp start_release!(rel, node, nodes) do
    bin = Path.join(rel, "bin/recipe_app")

    env =
      for {k, v} <- release_env(rel, node, nodes),
          do: {String.to_charlist(k), if(v, do: String.to_charlist(v), else: false)}

    port =
      Port.open({:spawn_executable, bin}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["start"],
        env: env
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    # `bin/recipe_app start` execs the VM, so this is the node's OS process.
    on_exit(fn -> System.cmd("kill", ["-9", Integer.to_string(os_pid)]) end)
    port
  end

  # Asks node `a` (over `bin/recipe_app rpc`) until it sees `b` or 60 s pass; returns what it saw.
  defp rpc_until!(rel, a, b) do
    code = """
    deadline = System.monotonic_time(:millisecond) + 20_000
    wait = fn wait ->
      if #{inspect(b)} in Node.list() or System.monotonic_time(:millisecond) > deadline,
        do: :ok, else: (Process.sleep(100); wait.(wait))
    end
    wait.(wait)
    {:ok, status} = Cluster.status(:static)
    report = %{
      nodes: Node.list(),
      strategy_loaded_from: List.to_string(:code.which(status.strategy)),
      cluster_strategy_from: List.to_string(:code.which(Cluster.Strategy)),
      libcluster_apps: for({:libcluster, _, vsn} <- Application.loaded_applications(), do: vsn),
      topologies_configured: Application.get_env(:libcluster, :topologies) != nil,
      status_strategy: status.strategy
    }
    IO.puts("REPORT " <> Base.encode64(:erlang.term_to_binary(report)))
    """

    deadline = System.monotonic_time(:millisecond) + 60_000
    rpc_loop(rel, a, code, deadline)
  end

  defp rpc_loop(rel, a, code, deadline) do
    {out, status} =
      System.cmd(Path.join(rel, "bin/recipe_app"), ["rpc", code],
        env: release_env(rel, a, ""),
        stderr_to_stdout: true
      )

    case Regex.run(~r/REPORT (\S+)/, out) do
      [_, encoded] ->
        encoded |> Base.decode64!() |> :erlang.binary_to_term()

      nil ->
        if System.monotonic_time(:millisecond) > deadline,
          do: flunk("node #{a} did not answer (status #{status}): #{out}"),
          else: rpc_loop(rel, a, code, deadline)
    end
  end

  defp write!(dir, file, text) do
    path = Path.join(dir, file)
    File.mkdir_p!(Path.dirname(path))
    File.write!(path, text)
  end

  defp position(out, text) do
    case :binary.match(out, text) do
      {pos, _} -> pos
      :nomatch -> flunk("#{inspect(text)} not in the output:\n#{out}")
    end
  end
end
