defmodule LibclusterRs.PrecompiledTest do
  # The install path of a team: a fresh app depends on a copy of the package (exactly its `files`),
  # whose checksum file lists an artifact that script/build-nif built once for this run. The app is
  # compiled by a real `mix` on a PATH without cargo or rustc, fetching from a local HTTPS server
  # (a CA made here), a file:// directory, or the cache; the NIF it installs is loaded by two real
  # BEAM nodes that form a cluster. Then the failures, each with nothing written, and a forced
  # source build of a read-only copy.
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog

  alias LibclusterRs.Precompiled

  @moduletag :packaging
  @moduletag timeout: 1_200_000

  @root File.cwd!()

  setup_all do
    tmp = Path.join(System.tmp_dir!(), "libcluster_rs_pkg_#{System.unique_integer([:positive])}")
    File.mkdir_p!(tmp)
    on_exit(fn -> File.rm_rf!(tmp) end)

    # One artifact per run, in the target dir the rest of the run shares. A debug build: what these
    # tests check (download, checksum, cache, install, load) does not depend on the profile, and a
    # cold release build with fat LTO would add minutes to every CI run.
    dist = Path.join(tmp, "dist")

    {out, status} =
      cmd(Path.join(@root, "script/build-nif"), ["--out", dist, "--debug"], @root, [
        {"CARGO_TARGET_DIR", shared_target()}
      ])

    assert status == 0, "script/build-nif failed:\n#{out}"
    [tarball] = Path.wildcard(Path.join(dist, "*.so.tar.gz"))
    name = Path.basename(tarball)
    host_target = Precompiled.target()
    assert name == Precompiled.artifact_name(LibclusterRs.MixProject.version(), "2.15", host_target)
    assert File.read!(tarball <> ".sha256") == "#{Precompiled.checksum(File.read!(tarball))}  #{name}\n"

    # The package as published: the `files` list, nothing else; its checksum file written by the task.
    lib = Path.join(tmp, "pkg/libcluster_rs")

    for entry <- LibclusterRs.MixProject.package_files() do
      File.mkdir_p!(Path.dirname(Path.join(lib, entry)))
      File.cp_r!(Path.join(@root, entry), Path.join(lib, entry))
    end

    {out, 0} =
      cmd("mix", ~w(libcluster_rs.checksum --dir #{dist} --ignore-missing), lib, [{"MIX_ENV", "prod"}])

    assert out =~ "Wrote 1 checksum(s)"

    assert Precompiled.read_checksums(Path.join(lib, Precompiled.checksum_file_name())) == %{
             name => Precompiled.checksum(File.read!(tarball))
           }

    bin = no_cargo_bin!(Path.join(tmp, "bin"))
    certs = LibclusterRs.Test.TestCA.shared!()
    app = new_app!(Path.join(tmp, "app"), lib)

    # Compiles the app's Elixir code once; each test then reinstalls only the NIF.
    ctx = %{tmp: tmp, dist: dist, name: name, tarball: tarball, lib: lib, bin: bin, certs: certs, app: app}
    {out, status} = compile(ctx, base_url: "file://" <> dist, cache: Path.join(tmp, "cache0"))
    assert status == 0, out
    assert File.exists?(nif(app))

    {:ok, ctx}
  end

  setup ctx do
    File.rm(nif(ctx.app))
    cache = Path.join(ctx.tmp, "cache_#{System.unique_integer([:positive])}")
    {:ok, cache: cache}
  end

  test "a fresh app without cargo installs the NIF from an HTTPS mirror, loads it, forms a cluster; " <>
         "then builds from the cache with the server down",
       ctx do
    server = https_server!(ctx.dist, ctx.certs)
    url = "https://localhost:#{server.port}/"

    {out, status} = compile(ctx, base_url: url, cache: ctx.cache, cacertfile: ctx.certs.ca)
    assert status == 0, out
    assert out =~ "downloading #{url}#{ctx.name}"
    assert File.read!(nif(ctx.app)) == library_in(ctx.tarball)
    # In the app's build dir, a priv/ of its own; nothing in the package's tree.
    assert {:error, _} = :file.read_link(Path.join(app_build(ctx.app), "priv"))
    assert File.exists?(Path.join(app_build(ctx.app), "priv/rbac/pods.json"))
    refute File.exists?(Path.join(ctx.lib, "priv/native"))
    assert File.ls!(ctx.cache) == [ctx.name]

    two_node_cluster!(ctx.app)

    # Without the CA file, the mirror's certificate is refused.
    File.rm(nif(ctx.app))
    # (The server logs the client's alert.)
    capture_log(fn -> send(self(), compile(ctx, base_url: url, cache: ctx.cache <> "_nocafile")) end)
    assert_received {out, status}
    assert status != 0
    assert out =~ "cannot download the precompiled NIF"
    assert out =~ "unknown_ca"
    refute File.exists?(nif(ctx.app))

    :ok = :inets.stop(:httpd, server.pid)
    File.rm(nif(ctx.app))
    {out, status} = compile(ctx, base_url: url, cache: ctx.cache, cacertfile: ctx.certs.ca)
    assert status == 0, out
    assert out =~ "using #{ctx.name} from the cache"
    refute out =~ "downloading"
    assert File.read!(nif(ctx.app)) == library_in(ctx.tarball)
  end

  test "installs from a file:// directory", ctx do
    {out, status} = compile(ctx, base_url: "file://" <> ctx.dist, cache: ctx.cache)
    assert status == 0, out
    assert File.read!(nif(ctx.app)) == library_in(ctx.tarball)
    # Unchanged since: a second compile does nothing.
    {out, 0} = compile(ctx, base_url: "file:///nonexistent", cache: ctx.cache)
    refute out =~ "libcluster_rs:"

    # A release carries it.
    {out, status} =
      compile(ctx, base_url: "file:///nonexistent", cache: ctx.cache, task: ~w(release --overwrite))

    assert status == 0, out

    [released] =
      Path.wildcard(
        Path.join(ctx.app, "_build/dev/rel/pkg_app/lib/libcluster_rs-*/priv/native/libcluster_nif.so")
      )

    assert File.read!(released) == library_in(ctx.tarball)
  end

  test "the package as shipped before its first release (no checksums), without cargo: a clear error", ctx do
    lib = Path.join(ctx.tmp, "pkg_no_checksums/libcluster_rs")
    File.mkdir_p!(lib)
    File.cp_r!(ctx.lib, lib)
    File.write!(Path.join(lib, Precompiled.checksum_file_name()), "%{}\n")
    app = new_app!(Path.join(ctx.tmp, "app_no_checksums"), lib)

    {out, status} = compile(%{ctx | app: app}, base_url: "file://" <> ctx.dist, cache: ctx.cache)
    assert status != 0
    assert out =~ "no precompiled artifact checksums in this package version"
    assert out =~ "LIBCLUSTER_RS_BUILD=1"
    assert_nothing_written(%{ctx | app: app})
  end

  test "a tampered artifact is refused, nothing written", ctx do
    mirror = Path.join(ctx.tmp, "tampered")
    File.mkdir_p!(mirror)
    File.write!(Path.join(mirror, ctx.name), File.read!(ctx.tarball) <> "x")

    {out, status} = compile(ctx, base_url: "file://" <> mirror, cache: ctx.cache)
    assert status != 0
    assert out =~ "checksum mismatch for file://#{mirror}/#{ctx.name}"
    assert out =~ "nothing was written"
    assert_nothing_written(ctx)
  end

  test "a server that is down, with nothing in the cache, is a clear error, nothing written", ctx do
    {:ok, listener} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(listener)
    :ok = :gen_tcp.close(listener)

    {out, status} =
      compile(ctx, base_url: "https://localhost:#{port}", cache: ctx.cache, cacertfile: ctx.certs.ca)

    assert status != 0
    assert out =~ "cannot download the precompiled NIF https://localhost:#{port}/#{ctx.name}"
    assert out =~ "econnrefused"
    assert out =~ "LIBCLUSTER_RS_BUILD=1"
    assert_nothing_written(ctx)
  end

  test "an unknown target lists the supported ones and the variable that forces a build", ctx do
    {out, status} =
      compile(ctx, base_url: "file://" <> ctx.dist, cache: ctx.cache, target: "riscv64gc-unknown-linux-gnu")

    assert status != 0
    assert out =~ "no precompiled NIF for target riscv64gc-unknown-linux-gnu"
    assert out =~ "`cargo` is not on the PATH"
    for t <- Precompiled.targets(), do: assert(out =~ t)
    assert out =~ "LIBCLUSTER_RS_BUILD=1"
    assert_nothing_written(ctx)
  end

  test "a target missing from the checksum file is an error, nothing written", ctx do
    other = Enum.find(Precompiled.targets(), &(&1 != Precompiled.target()))
    # Even with the artifact on the mirror, it is not trusted without its checksum.
    mirror = Path.join(ctx.tmp, "other_target")
    File.mkdir_p!(mirror)
    other_name = Precompiled.artifact_name(LibclusterRs.MixProject.version(), "2.15", other)
    File.cp!(ctx.tarball, Path.join(mirror, other_name))

    {out, status} = compile(ctx, base_url: "file://" <> mirror, cache: ctx.cache, target: other)
    assert status != 0
    assert out =~ "no checksum for #{other_name}"
    assert out =~ "LIBCLUSTER_RS_BUILD=1"
    assert_nothing_written(ctx)
  end

  test "LIBCLUSTER_RS_BUILD=1 builds a read-only copy of the package with cargo, into the app's _build; " <>
         "so does a target without an artifact when cargo is there",
       ctx do
    ro = read_only!(ctx.lib, Path.join(ctx.tmp, "ro/libcluster_rs"))
    before = tree(ctx.lib)
    # `env: :dev`: a debug build, which shares the dependencies' build with this project's own
    # (the same CARGO_TARGET_DIR); the package's own two crates are built again.
    app = new_app!(Path.join(ctx.tmp, "app_ro"), ro, env: :dev)

    {out, status} =
      cmd("mix", ["compile"], app, [
        {"MIX_ENV", "dev"},
        {"LIBCLUSTER_RS_BUILD", "1"},
        {"LIBCLUSTER_RS_BASE_URL", "file:///nonexistent"},
        {"LIBCLUSTER_RS_CACHE_DIR", ctx.cache},
        {"CARGO_TARGET_DIR", shared_target()},
        {"CARGO_NET_OFFLINE", "true"}
      ])

    assert status == 0, out
    assert out =~ "==> cargo build -p libcluster_nif --target-dir #{shared_target()}"
    assert out =~ "Compiling libcluster_nif v"
    refute out =~ "downloading"
    assert File.exists?(nif(app))
    assert tree(ctx.lib) == before
    refute File.exists?(Path.join(ro, "priv/native"))

    [p] = start_peers(app, 1)
    assert is_binary(:peer.call(p, LibclusterRs.Native, :gossip_encode_v1, ["a@127.0.0.1", nil]))
    :peer.stop(p)

    # Not forced, but no artifact for the target: with cargo on the PATH, a source build.
    File.rm!(nif(app))

    {out, status} =
      cmd("mix", ["compile"], app, [
        {"MIX_ENV", "dev"},
        {"LIBCLUSTER_RS_TARGET", "riscv64gc-unknown-linux-gnu"},
        {"LIBCLUSTER_RS_BASE_URL", "file:///nonexistent"},
        {"LIBCLUSTER_RS_CACHE_DIR", ctx.cache},
        {"CARGO_TARGET_DIR", shared_target()},
        {"CARGO_NET_OFFLINE", "true"}
      ])

    assert status == 0, out

    assert out =~
             "no precompiled NIF for target riscv64gc-unknown-linux-gnu; building the NIF from source with cargo"

    assert out =~ "==> cargo build -p libcluster_nif"
    assert File.exists?(nif(app))
    assert tree(ctx.lib) == before
  end

  ## Helpers

  defp shared_target, do: System.get_env("CARGO_TARGET_DIR") || Path.join(@root, "target")

  defp app_build(app), do: Path.join(app, "_build/dev/lib/libcluster_rs")
  defp nif(app), do: Path.join(app_build(app), "priv/native/libcluster_nif.so")

  defp library_in(tarball) do
    {:ok, library} = Precompiled.extract_library(File.read!(tarball))
    library
  end

  defp assert_nothing_written(ctx) do
    refute File.exists?(nif(ctx.app))
    assert File.ls(Path.join(app_build(ctx.app), "priv/native")) in [{:ok, []}, {:error, :enoent}]
    assert File.ls(ctx.cache) in [{:ok, []}, {:error, :enoent}]
  end

  defp compile(ctx, opts) do
    env = [
      {"MIX_ENV", "dev"},
      {"PATH", ctx.bin},
      {"LIBCLUSTER_RS_BASE_URL", opts[:base_url]},
      {"LIBCLUSTER_RS_CACHE_DIR", opts[:cache]},
      {"LIBCLUSTER_RS_CACERTFILE", opts[:cacertfile]},
      {"LIBCLUSTER_RS_TARGET", opts[:target]}
    ]

    cmd("mix", opts[:task] || ["compile"], ctx.app, env)
  end

  defp cmd(exe, args, dir, env) do
    # Nothing of the caller's environment decides for the child.
    clear =
      for var <-
            ~w(LIBCLUSTER_RS_BUILD LIBCLUSTER_RS_BASE_URL LIBCLUSTER_RS_CACHE_DIR LIBCLUSTER_RS_CACERTFILE
                    LIBCLUSTER_RS_TARGET HTTPS_PROXY https_proxy HTTP_PROXY http_proxy MIX_BUILD_PATH
                    MIX_BUILD_ROOT MIX_DEPS_PATH),
          do: {var, nil}

    exe = if String.contains?(exe, "/"), do: exe, else: System.find_executable(exe) || flunk("no #{exe}")
    env = clear |> Map.new() |> Map.merge(Map.new(env)) |> Enum.to_list()
    System.cmd(exe, args, cd: dir, env: env, stderr_to_stdout: true)
  end

  defp new_app!(dir, lib, dep_opts \\ []) do
    File.mkdir_p!(dir)
    dep = {:libcluster_rs, [path: lib] ++ dep_opts}

    File.write!(Path.join(dir, "mix.exs"), """
    defmodule PkgApp.MixProject do
      use Mix.Project
      def project, do: [app: :pkg_app, version: "0.1.0", deps: [#{inspect(dep)}]]
      def application, do: [extra_applications: [:logger]]
    end
    """)

    dir
  end

  # Every executable of the PATH except the Rust toolchain's.
  defp no_cargo_bin!(bin) do
    File.mkdir_p!(bin)

    for dir <- System.get_env("PATH") |> String.split(":", trim: true),
        File.dir?(dir),
        file <- File.ls!(dir),
        not String.match?(file, ~r/^(cargo|rustc|rustup|rustdoc|rust-)/),
        target = Path.join(dir, file),
        link = Path.join(bin, file),
        not File.exists?(link) do
      File.ln_s(target, link)
    end

    for tool <- ~w(mix elixir erl), do: assert(File.exists?(Path.join(bin, tool)))
    refute File.exists?(Path.join(bin, "cargo")) or File.exists?(Path.join(bin, "rustc"))
    bin
  end

  # OTP's httpd over TLS, serving `root` on 127.0.0.1.
  defp https_server!(root, certs) do
    {:ok, _} = Application.ensure_all_started(:inets)
    {:ok, _} = Application.ensure_all_started(:ssl)
    server_root = Path.join(Path.dirname(root), "httpd_#{System.unique_integer([:positive])}")
    File.mkdir_p!(server_root)

    {:ok, pid} =
      :inets.start(:httpd,
        port: 0,
        bind_address: {127, 0, 0, 1},
        server_name: ~c"localhost",
        server_root: to_charlist(server_root),
        document_root: to_charlist(root),
        modules: [:mod_get, :mod_head],
        socket_type: {:ssl, certfile: to_charlist(certs.cert), keyfile: to_charlist(certs.key)}
      )

    [port: port] = :httpd.info(pid, [:port])
    %{pid: pid, port: port}
  end

  defp read_only!(source, mount) do
    File.mkdir_p!(mount)

    if System.cmd("id", ["-u"]) == {"0\n", 0} do
      # root writes through file modes: a read-only bind mount is what a Nix store or a
      # read-only Docker layer is.
      {_, 0} = System.cmd("mount", ["--bind", source, mount], stderr_to_stdout: true)
      on_exit(fn -> System.cmd("umount", [mount], stderr_to_stdout: true) end)
      {_, 0} = System.cmd("mount", ["-o", "remount,ro,bind", mount], stderr_to_stdout: true)
    else
      File.rmdir!(mount)
      File.cp_r!(source, mount)
      {_, 0} = System.cmd("chmod", ["-R", "a-w", mount])
      on_exit(fn -> System.cmd("chmod", ["-R", "u+w", mount]) end)
    end

    assert {:error, _} = File.write(Path.join(mount, "probe"), "x")
    mount
  end

  # Every file under `dir` with its size and content hash.
  defp tree(dir) do
    for path <- Path.wildcard(Path.join(dir, "**"), match_dot: true), File.regular?(path), into: %{} do
      {Path.relative_to(path, dir), :crypto.hash(:sha256, File.read!(path))}
    end
  end

  # Real BEAM nodes on the app's code paths (and Elixir's), not this project's.
  defp start_peers(app, count) do
    elixir = for a <- [:elixir, :logger], do: Path.join(:code.lib_dir(a), "ebin")
    paths = Path.wildcard(Path.join(app, "_build/dev/lib/*/ebin")) ++ elixir
    cookie = ~c"pkg_test"

    for i <- 1..count do
      {:ok, p, _node} =
        :peer.start_link(%{
          name: ~c"pkg#{i}_#{System.unique_integer([:positive])}",
          host: ~c"127.0.0.1",
          longnames: true,
          connection: :standard_io,
          args:
            [~c"-setcookie", cookie, ~c"-kernel", ~c"logger_level", ~c"warning"] ++
              Enum.flat_map(paths, &[~c"-pa", to_charlist(&1)]),
          wait_boot: 30_000
        })

      assert :peer.call(p, :code, :priv_dir, [:libcluster_rs]) ==
               to_charlist(Path.join(app_build(app), "priv"))

      p
    end
  end

  defp two_node_cluster!(app) do
    peers = start_peers(app, 2)
    nodes = for p <- peers, do: :peer.call(p, :erlang, :node, [])
    topologies = [pkg: [strategy: Cluster.Strategy.Epmd, config: [hosts: nodes]]]

    for p <- peers do
      :ok = :peer.call(p, :application, :set_env, [:libcluster_rs, :topologies, topologies])
      {:ok, _} = :peer.call(p, :application, :ensure_all_started, [:libcluster_rs])
      # The NIF the app installed is the one loaded.
      assert is_binary(:peer.call(p, LibclusterRs.Native, :gossip_encode_v1, ["a@127.0.0.1", nil]))
    end

    [a, b] = peers
    [na, nb] = nodes

    assert wait_until(fn -> nb in :peer.call(a, :erlang, :nodes, []) end, 20_000),
           "no cluster of #{inspect(nodes)}"

    assert na in :peer.call(b, :erlang, :nodes, [])
    Enum.each(peers, &:peer.stop/1)
  end

  defp wait_until(fun, ms) do
    cond do
      fun.() -> true
      ms <= 0 -> false
      true -> Process.sleep(50) && wait_until(fun, ms - 50)
    end
  end
end
