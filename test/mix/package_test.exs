defmodule LibclusterRs.PackageTest do
  # The package's `files` against the tree, the checksum file it ships, the precompiled-NIF
  # conventions (target, NIF version, names) and where this project's own build puts its NIF.
  use ExUnit.Case, async: true

  # the packaging lane (README, "Tests"), with the tests that build and install the package
  @moduletag :packaging

  alias LibclusterRs.Precompiled
  alias Mix.Tasks.Compile.LibclusterRsNative, as: Compiler

  @root File.cwd!()

  # Tracked files that a build of the package does not need, by top-level entry (or exact path).
  # (cargo builds the NIF without the examples native/core/Cargo.toml names.)
  @not_packaged ~w(.ci .github .formatter.exs .gitignore bench compat fuzz script test native/core/examples
                   priv/.gitkeep)

  test "package files: every entry exists, and every tracked file is packaged or deliberately left out" do
    files = LibclusterRs.MixProject.package_files()

    for entry <- files, do: assert(File.exists?(Path.join(@root, entry)), "#{entry} is listed but missing")

    {tracked, 0} = System.cmd("git", ["ls-files"], cd: @root)

    unaccounted =
      for file <- String.split(tracked, "\n", trim: true),
          not Enum.any?(files, &(file == &1 or String.starts_with?(file, &1 <> "/"))),
          not Enum.any?(@not_packaged, &(file == &1 or String.starts_with?(file, &1 <> "/"))),
          do: file

    assert unaccounted == [], "neither packaged nor left out on purpose: #{inspect(unaccounted)}"

    # What a build needs.
    for needed <- ~w(mix.exs lib Cargo.toml Cargo.lock native/core/src native/nif/src priv/rbac
                     checksum-libcluster_nif.exs README.md LICENSE CHANGELOG.md docs) do
      assert needed in files
    end

    # Build output never ships.
    refute Enum.any?(files, &(&1 in ["priv", "priv/native", "target", "_build", "dist"]))
  end

  test "the shipped checksum file lists only artifacts of this version" do
    checksums = Precompiled.read_checksums(Path.join(@root, Precompiled.checksum_file_name()))
    names = Precompiled.all_artifact_names(LibclusterRs.MixProject.version())

    for {name, sum} <- checksums do
      assert name in names
      assert sum =~ ~r/^sha256:[0-9a-f]{64}$/
    end
  end

  test "README and docs/migrating.md give one way to depend on it, at the project's repository" do
    # (Dependency lines, not an elided `{:libcluster_rs, ...}`.)
    deps = fn path ->
      Regex.scan(~r/\{:libcluster_rs, [^.}\n][^}\n]*\}/, File.read!(Path.join(@root, path)))
    end

    # The third-party recipe's lines (`override: true`) are a second, documented form.
    plain = fn path -> path |> deps.() |> List.flatten() |> Enum.reject(&(&1 =~ "override: true")) end
    readme = plain.("README.md")
    migrating = plain.("docs/migrating.md")

    assert [dep] = Enum.uniq(readme ++ migrating)
    assert readme != [] and migrating != []
    assert dep =~ Mix.Project.config()[:source_url]
  end

  test "the LICENSE is the whole Apache-2.0 text" do
    license = File.read!(Path.join(@root, "LICENSE"))
    assert license =~ "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"
    assert license =~ "9. Accepting Warranty or Additional Liability."
    assert license =~ "END OF TERMS AND CONDITIONS"
  end

  test "targets from OTP's system architecture" do
    assert Precompiled.detect_target("x86_64-pc-linux-gnu") == "x86_64-unknown-linux-gnu"
    assert Precompiled.detect_target("aarch64-unknown-linux-gnu") == "aarch64-unknown-linux-gnu"
    assert Precompiled.detect_target("x86_64-pc-linux-musl") == "x86_64-unknown-linux-musl"
    assert Precompiled.detect_target("aarch64-alpine-linux-musl") == "aarch64-unknown-linux-musl"
    assert Precompiled.detect_target("aarch64-apple-darwin23.4.0") == "aarch64-apple-darwin"
    assert Precompiled.detect_target("x86_64-apple-darwin21.6.0") == "x86_64-apple-darwin"
    assert Precompiled.detect_target("arm64-apple-darwin22.1.0") == "aarch64-apple-darwin"
    assert Precompiled.detect_target("win32") == "win32"
  end

  test "the highest artifact NIF version the VM loads" do
    assert Precompiled.nif_version("2.16", ["2.15"]) == "2.15"
    assert Precompiled.nif_version("2.16", ["2.15", "2.16", "2.17"]) == "2.16"
    assert Precompiled.nif_version("2.17", ["2.15", "2.16"]) == "2.16"
    assert Precompiled.nif_version("2.14", ["2.15"]) == nil
    assert Precompiled.nif_version("3.0", ["2.15"]) == nil
    # This VM loads what the release builds.
    assert Precompiled.nif_version() in Precompiled.nif_versions()
  end

  test "artifact names follow rustler_precompiled's, for every target the release builds" do
    assert Precompiled.artifact_name("0.1.0", "2.15", "x86_64-unknown-linux-gnu") ==
             "libcluster_nif-v0.1.0-nif-2.15-x86_64-unknown-linux-gnu.so.tar.gz"

    workflow = File.read!(Path.join(@root, ".github/workflows/release.yml"))
    for target <- Precompiled.targets(), do: assert(workflow =~ "target: #{target}")
  end

  test "a source build's cargo target dir: CARGO_TARGET_DIR, else the host project's _build" do
    assert Compiler.cargo_target_dir(nil, "/app/_build/prod") == "/app/_build/prod/libcluster_rs_cargo"
    assert Compiler.cargo_target_dir("", "/app/_build/prod") == "/app/_build/prod/libcluster_rs_cargo"
    assert Compiler.cargo_target_dir("/ci/target", "/app/_build/prod") == "/ci/target"
  end

  test "developing libcluster_rs itself (the root project) always builds from source, never downloads" do
    assert Compiler.mode() == {:source, :root}
  end

  test "this project's NIF is its Mix env's, in the build dir, not in the source tree" do
    priv = List.to_string(:code.priv_dir(:libcluster_rs))
    assert priv == Path.join(Mix.Project.app_path(), "priv")
    assert {:error, _} = :file.read_link(priv)
    assert File.regular?(Path.join(priv, "native/libcluster_nif.so"))
    assert File.regular?(Path.join(priv, "rbac/pods.json"))
  end
end
