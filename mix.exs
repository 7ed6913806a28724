defmodule LibclusterRs.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    load_libcluster_app()

    [
      app: :libcluster_rs,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:libcluster_rs_native | Mix.compilers()],
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      description: description(),
      package: package(),
      docs: [main: "readme", extras: ["README.md" | Path.wildcard("docs/*.md")]],
      test_coverage: [ignore_modules: [~r/^LibclusterRs\.Test\./]]
    ]
  end

  def application do
    [
      extra_applications: [:logger, :crypto] ++ test_applications(Mix.env()),
      mod: {LibclusterRs.App, []}
    ]
  end

  # Existing users keep `config :libcluster, ...`. Mix warns about configuration for an application
  # that is not loaded, so load an empty application named :libcluster (from an inline spec, nothing
  # on disk) whenever Mix reads this project, including as a dependency of the user's project. At
  # run time LibclusterRs.LibclusterApp loads the same spec (a test keeps the two equal), unless the app
  # depends on the stub package compat/libcluster, which then is the one :libcluster application.
  @libcluster_app {:application, :libcluster,
                   [
                     description:
                       ~c"libcluster_rs: holds `config :libcluster` for libcluster 3.5 compatibility",
                     vsn: ~c"3.5.0-libcluster_rs",
                     modules: [],
                     registered: [],
                     applications: [:kernel, :stdlib, :libcluster_rs]
                   ]}

  @doc false
  def libcluster_app, do: @libcluster_app

  defp load_libcluster_app do
    case :application.load(@libcluster_app) do
      :ok -> :ok
      {:error, {:already_loaded, :libcluster}} -> :ok
      {:error, _} -> :ok
    end
  end

  # The fake Kubernetes API server of the tests speaks HTTPS.
  defp test_applications(:test), do: [:ssl]
  defp test_applications(_), do: []

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  defp description do
    "Forms and heals clusters of Erlang/Elixir nodes. A drop-in replacement for libcluster 3.5 " <>
      "whose discovery (DNS, Kubernetes, Rancher, gossip) runs in a Rust NIF."
  end

  defp package do
    [
      licenses: ["Apache-2.0"],
      links: %{},
      files: ~w(lib native/core/src native/core/Cargo.toml native/nif/src native/nif/Cargo.toml
                Cargo.toml Cargo.lock mix.exs README.md LICENSE docs priv/rbac)
    ]
  end
end

defmodule Mix.Tasks.Compile.LibclusterRsNative do
  @moduledoc false
  # Builds the cargo workspace and installs the NIF as priv/native/libcluster_nif.so.
  # Streams cargo's output and fails loudly; `MIX_ENV=prod` builds with --release.
  use Mix.Task.Compiler

  @crate "libcluster_nif"

  @impl true
  def run(_args) do
    cargo = System.find_executable("cargo") || missing_cargo!()
    root = File.cwd!()
    profile = if Mix.env() == :prod, do: "release", else: "debug"
    target_dir = System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")
    args = ["build", "-p", @crate, "--target-dir", target_dir] ++ release_flag(profile)

    Mix.shell().info("==> cargo #{Enum.join(args, " ")}")

    case System.cmd(cargo, args, cd: root, into: IO.stream(:stdio, :line), stderr_to_stdout: true) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("cargo build of the libcluster_rs NIF failed (exit status #{status})")
    end

    install!(Path.join([target_dir, profile, library_file()]))
    remove_libcluster_app!()
    {:ok, []}
  end

  defp release_flag("release"), do: ["--release"]
  defp release_flag(_), do: []

  defp library_file do
    case :os.type() do
      {:unix, :darwin} -> "lib#{@crate}.dylib"
      {:win32, _} -> "#{@crate}.dll"
      _ -> "lib#{@crate}.so"
    end
  end

  defp install!(built) do
    unless File.exists?(built), do: Mix.raise("cargo reported success but #{built} is missing")
    priv = Path.join(File.cwd!(), "priv/native")
    File.mkdir_p!(priv)
    dest = Path.join(priv, "#{@crate}.so")

    # Replace through a rename: overwriting a loaded .so in place can crash a running VM.
    if stale?(built, dest) do
      tmp = dest <> ".tmp"
      File.cp!(built, tmp)
      File.rename!(tmp, dest)
    end

    # After priv/ exists, so that _build links (or, embedded, copies) it.
    Mix.Project.build_structure()
  end

  # libcluster_rs ships no `libcluster.app`: the :libcluster application is loaded from an
  # in-memory spec at run time (LibclusterRs.LibclusterApp), or is the stub package compat/libcluster.
  # Earlier builds wrote one into this ebin; remove it, or a release with the stub would hold two.
  defp remove_libcluster_app! do
    stale = Path.join(Mix.Project.compile_path(), "libcluster.app")
    if File.exists?(stale), do: File.rm!(stale)
    :ok
  end

  defp stale?(built, dest) do
    case {File.stat(built), File.stat(dest)} do
      {{:ok, a}, {:ok, b}} -> a.mtime > b.mtime or a.size != b.size
      _ -> true
    end
  end

  defp missing_cargo! do
    Mix.raise("""
    libcluster_rs needs the Rust toolchain to build its NIF, and `cargo` is not on the PATH.
    Install Rust 1.85 or later (https://rustup.rs, or your distribution's `cargo` package) and
    run `mix compile` again.
    """)
  end
end
