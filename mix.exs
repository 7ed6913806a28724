defmodule LibclusterRs.MixProject do
  use Mix.Project

  @version "0.1.0"
  # The repository: `source_url`, the package links and the default download location of the
  # precompiled NIFs (its GitHub release of tag v<version>) derive from it.
  @source_url "https://github.com/libcluster-rs/libcluster_rs"

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
      source_url: @source_url,
      package: package(),
      docs: [
        main: "readme",
        source_ref: "v#{@version}",
        extras: ["README.md", "CHANGELOG.md" | Path.wildcard("docs/*.md")]
      ],
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

  # The fake Kubernetes API server of the tests speaks HTTPS; some tests are HTTP clients (:httpc).
  # Listed, because Elixir 1.15 and later keep the code paths of unlisted OTP applications out.
  defp test_applications(:test), do: [:ssl, :inets]
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
      links: %{"GitHub" => @source_url, "Changelog" => "#{@source_url}/blob/v#{@version}/CHANGELOG.md"},
      files: package_files()
    ]
  end

  # Exactly what a build needs, precompiled or from source (test/mix/package_test.exs checks it
  # against the tree; test/mix/precompiled_test.exs builds a copy made of these files only).
  @doc false
  def package_files do
    ~w(lib native/core/src native/core/Cargo.toml native/nif/src native/nif/Cargo.toml
       Cargo.toml Cargo.lock checksum-libcluster_nif.exs
       priv/rbac docs mix.exs README.md LICENSE CHANGELOG.md)
  end

  @doc false
  def version, do: @version

  # Where the precompiled NIFs of this version are downloaded from, unless LIBCLUSTER_RS_BASE_URL
  # says otherwise: the assets of the GitHub release (docs/releasing.md).
  @doc false
  def default_base_url, do: "#{@source_url}/releases/download/v#{@version}"
end

defmodule LibclusterRs.Precompiled do
  @moduledoc false
  # Precompiled NIFs, in rustler_precompiled's conventions: the target triple and NIF version of
  # the running VM, artifact names, download (https, http, file), SHA-256 verification against the
  # checksum file shipped in the package, and a per-user cache. It lives in mix.exs because a
  # dependency's compilers run before its lib/ is compiled. No hex dependency: OTP's :httpc, :ssl.
  #
  # Environment variables (all optional):
  #
  #   * LIBCLUSTER_RS_BUILD=1 - build from source with cargo (as `config :libcluster_rs,
  #     build_from_source: true`)
  #   * LIBCLUSTER_RS_BASE_URL - where the artifacts are (https://, http:// or file://)
  #   * LIBCLUSTER_RS_CACERTFILE - a PEM file of extra CA certificates (a private mirror)
  #   * LIBCLUSTER_RS_CACHE_DIR - the download cache (default: the user's cache dir)
  #   * LIBCLUSTER_RS_TARGET - the target triple, instead of the one detected
  #   * HTTPS_PROXY / HTTP_PROXY / NO_PROXY (or lower case) - proxies

  @crate "libcluster_nif"
  # The NIF versions artifacts are built for (the rustler feature `nif_version_2_15` of
  # native/nif/Cargo.toml): 2.15 loads on OTP 22 and later.
  @nif_versions ["2.15"]
  # Kept in step with .github/workflows/release.yml.
  @targets ~w(aarch64-apple-darwin aarch64-unknown-linux-gnu aarch64-unknown-linux-musl
              x86_64-apple-darwin x86_64-unknown-linux-gnu x86_64-unknown-linux-musl)

  def crate, do: @crate
  def targets, do: @targets
  def nif_versions, do: @nif_versions
  def checksum_file_name, do: "checksum-#{@crate}.exs"

  @doc "libcluster_nif-v0.1.0-nif-2.15-x86_64-unknown-linux-gnu.so.tar.gz"
  def artifact_name(version, nif_version, target),
    do: "#{@crate}-v#{version}-nif-#{nif_version}-#{target}.so.tar.gz"

  def all_artifact_names(version) do
    for target <- @targets, nif <- @nif_versions, do: artifact_name(version, nif, target)
  end

  ## Target

  def target do
    case System.get_env("LIBCLUSTER_RS_TARGET") do
      t when t in [nil, ""] -> detect_target(List.to_string(:erlang.system_info(:system_architecture)))
      t -> t
    end
  end

  # From OTP's system architecture ("x86_64-pc-linux-gnu", "aarch64-alpine-linux-musl",
  # "aarch64-apple-darwin23.4.0") to a Rust target triple.
  def detect_target(arch_string) do
    arch =
      case arch_string |> String.split("-") |> hd() do
        "amd64" -> "x86_64"
        "arm64" -> "aarch64"
        other -> other
      end

    cond do
      arch_string =~ "darwin" ->
        "#{arch}-apple-darwin"

      arch_string =~ "linux" ->
        "#{arch}-unknown-linux-" <> if(arch_string =~ "musl", do: "musl", else: "gnu")

      true ->
        arch_string
    end
  end

  # The highest artifact NIF version the running VM loads: same major, minor not above its own.
  def nif_version(current \\ List.to_string(:erlang.system_info(:nif_version)), available \\ @nif_versions) do
    {major, minor} = parse_nif_version(current)

    available
    |> Enum.filter(fn v -> match?({^major, m} when m <= minor, parse_nif_version(v)) end)
    |> Enum.max_by(&parse_nif_version/1, fn -> nil end)
  end

  defp parse_nif_version(v) do
    [major, minor] = v |> String.split(".") |> Enum.map(&String.to_integer/1)
    {major, minor}
  end

  ## Checksums

  def read_checksums(path) do
    with {:ok, text} <- File.read(path),
         {map, _} when is_map(map) <- Code.eval_string(text, [], file: path),
         true <- Enum.all?(map, fn {k, v} -> is_binary(k) and is_binary(v) end) do
      map
    else
      {:error, reason} -> Mix.raise("libcluster_rs: cannot read #{path}: #{:file.format_error(reason)}")
      _ -> Mix.raise("libcluster_rs: #{path} must hold a map of artifact name => \"sha256:<hex>\"")
    end
  end

  def write_checksums!(path, checksums) do
    lines = checksums |> Enum.sort() |> Enum.map(fn {k, v} -> "  #{inspect(k)} => #{inspect(v)},\n" end)

    File.write!(path, [
      "# SHA-256 of each precompiled NIF artifact of this version, written by\n",
      "# `mix libcluster_rs.checksum` (docs/releasing.md). The compiler refuses any artifact\n",
      "# that is not listed here or does not match.\n",
      "%{\n",
      lines,
      "}\n"
    ])
  end

  def checksum(binary), do: "sha256:" <> Base.encode16(:crypto.hash(:sha256, binary), case: :lower)

  ## Download

  def join_url(base, name), do: String.trim_trailing(base, "/") <> "/" <> name

  # Credentials in a mirror URL stay out of messages.
  def redact(url) do
    case URI.parse(url) do
      %URI{userinfo: nil} -> url
      uri -> URI.to_string(%{uri | userinfo: "***"})
    end
  end

  def fetch(url) do
    case URI.parse(url) do
      %URI{scheme: "file", path: path} when is_binary(path) ->
        case File.read(URI.decode(path)) do
          {:ok, body} -> {:ok, body}
          {:error, reason} -> {:error, :file.format_error(reason) |> List.to_string()}
        end

      %URI{scheme: scheme, host: host} when scheme in ["https", "http"] and is_binary(host) ->
        http_get(url)

      _ ->
        {:error, "not an https://, http:// or file:// URL"}
    end
  end

  @profile :libcluster_rs_precompiled

  # Since Elixir 1.15, Mix keeps the code paths of OTP applications that the project being compiled
  # does not list out of the VM; this dependency compiler runs inside the user's project, which
  # need not list :inets or :ssl. Mix.ensure_application!/1 (1.15+) puts them and what they need
  # back; on 1.14 nothing was pruned.
  defp ensure_code_paths(apps) do
    if function_exported?(Mix, :ensure_application!, 1),
      do: Enum.each(apps, &apply(Mix, :ensure_application!, [&1]))
  end

  defp http_get(url) do
    ensure_code_paths([:inets, :ssl])
    {:ok, _} = Application.ensure_all_started(:inets)
    {:ok, _} = Application.ensure_all_started(:ssl)

    case :inets.start(:httpc, profile: @profile) do
      {:ok, _} -> :ok
      {:error, {:already_started, _}} -> :ok
    end

    :ok = :httpc.set_options(proxy_options(), @profile)
    http_options = [ssl: ssl_options(), connect_timeout: 15_000, timeout: 180_000, autoredirect: true]

    case :httpc.request(:get, {String.to_charlist(url), []}, http_options, [body_format: :binary], @profile) do
      {:ok, {{_, 200, _}, _headers, body}} -> {:ok, body}
      {:ok, {{_, status, reason}, _headers, _body}} -> {:error, "HTTP #{status} #{reason}"}
      {:error, reason} -> {:error, describe_http_error(reason)}
    end
  end

  defp describe_http_error({:failed_connect, attempts}) do
    reasons = for {:inet, _, reason} <- attempts, do: inspect(reason)
    "cannot connect (#{Enum.join(reasons, ", ")})"
  end

  defp describe_http_error(reason), do: inspect(reason)

  defp proxy_options do
    no_proxy =
      (System.get_env("NO_PROXY") || System.get_env("no_proxy") || "")
      |> String.split(",", trim: true)
      |> Enum.map(&(&1 |> String.trim() |> String.to_charlist()))

    for {key, vars} <- [proxy: ["HTTP_PROXY", "http_proxy"], https_proxy: ["HTTPS_PROXY", "https_proxy"]],
        value = Enum.find_value(vars, &System.get_env/1),
        value not in [nil, ""] do
      case URI.parse(if value =~ "://", do: value, else: "http://" <> value) do
        %URI{host: host, port: port} when is_binary(host) and host != "" ->
          {key, {{String.to_charlist(host), port}, no_proxy}}

        _ ->
          Mix.raise("libcluster_rs: #{hd(vars)} is not a proxy URL: #{inspect(value)}")
      end
    end
  end

  defp ssl_options do
    [
      verify: :verify_peer,
      cacerts: os_cacerts() ++ extra_cacerts(),
      depth: 10,
      customize_hostname_check: [match_fun: :public_key.pkix_verify_hostname_match_fun(:https)]
    ]
  end

  defp os_cacerts do
    :public_key.cacerts_get()
  rescue
    _ -> []
  catch
    _, _ -> []
  end

  defp extra_cacerts do
    case System.get_env("LIBCLUSTER_RS_CACERTFILE") do
      file when file in [nil, ""] ->
        []

      file ->
        pem =
          case File.read(file) do
            {:ok, pem} ->
              pem

            {:error, r} ->
              Mix.raise("libcluster_rs: LIBCLUSTER_RS_CACERTFILE #{file}: #{:file.format_error(r)}")
          end

        case for({:Certificate, der, _} <- :public_key.pem_decode(pem), do: der) do
          [] -> Mix.raise("libcluster_rs: LIBCLUSTER_RS_CACERTFILE #{file} holds no PEM certificate")
          ders -> ders
        end
    end
  end

  ## Cache

  def cache_dir do
    case System.get_env("LIBCLUSTER_RS_CACHE_DIR") do
      dir when dir in [nil, ""] -> :filename.basedir(:user_cache, ~c"libcluster_rs") |> List.to_string()
      dir -> Path.expand(dir)
    end
  end

  # A cached artifact is used only when it still matches the checksum.
  def cached(name, expected) do
    with {:ok, body} <- File.read(Path.join(cache_dir(), name)),
         ^expected <- checksum(body) do
      {:ok, body}
    else
      _ -> :miss
    end
  end

  # Best effort: a cache that cannot be written costs a download next time, nothing more.
  def cache_put(name, body) do
    dir = cache_dir()
    tmp = Path.join(dir, ".#{name}.#{System.unique_integer([:positive])}.tmp")

    with :ok <- File.mkdir_p(dir),
         :ok <- File.write(tmp, body),
         :ok <- File.rename(tmp, Path.join(dir, name)) do
      :ok
    else
      {:error, reason} ->
        File.rm(tmp)
        Mix.shell().info("libcluster_rs: not cached in #{dir}: #{:file.format_error(reason)}")
    end
  end

  ## Artifacts

  # The tarball holds one file: the NIF library.
  def extract_library(tarball) do
    case :erl_tar.extract({:binary, tarball}, [:memory, :compressed]) do
      {:ok, [{_name, library}]} -> {:ok, library}
      {:ok, files} -> {:error, "expected one file in the archive, found #{length(files)}"}
      {:error, reason} -> {:error, "not a .tar.gz archive (#{inspect(reason)})"}
    end
  end
end

defmodule Mix.Tasks.Compile.LibclusterRsNative do
  @moduledoc false
  # Installs the NIF as <app build dir>/priv/native/libcluster_nif.so: the build dir of the Mix env
  # being compiled, never the source tree, so that a read-only checkout works and dev, test and
  # prod keep their own NIF.
  #
  #   * As a dependency: the precompiled artifact for this machine, checksum-verified
  #     (LibclusterRs.Precompiled), unless LIBCLUSTER_RS_BUILD=1 or `config :libcluster_rs,
  #     build_from_source: true`; a target without an artifact falls back to cargo when cargo is
  #     on the PATH.
  #   * As the root project (developing libcluster_rs itself): always from source, no download.
  #
  # A source build runs `cargo build -p libcluster_nif` (`--release` in :prod) with the target
  # directory CARGO_TARGET_DIR, or else <host project>/_build/<env>/libcluster_rs_cargo, and
  # streams cargo's output.
  use Mix.Task.Compiler

  alias LibclusterRs.Precompiled

  @crate "libcluster_nif"
  @manifest "compile.libcluster_rs_native"

  @impl true
  def run(_args) do
    result =
      case mode() do
        {:source, why} ->
          build_from_source!(why)

        :precompiled ->
          case precompiled_artifact() do
            {:ok, name, expected} ->
              install_precompiled!(name, expected)

            {:unavailable, reason} ->
              if System.find_executable("cargo") do
                Mix.shell().info("libcluster_rs: #{reason}; building the NIF from source with cargo")
                build_from_source!(:fallback)
              else
                Mix.raise(unavailable_message(reason))
              end
          end
      end

    remove_libcluster_app!()
    result
  end

  @impl true
  def manifests, do: [manifest_path()]

  @impl true
  def clean do
    File.rm(manifest_path())
    File.rm(manifest_path() <> ".so")
    File.rm(nif_path())
    :ok
  end

  @doc false
  def mode do
    cond do
      not dependency?() -> {:source, :root}
      System.get_env("LIBCLUSTER_RS_BUILD") in ["1", "true"] -> {:source, :forced}
      Application.get_env(:libcluster_rs, :build_from_source) == true -> {:source, :forced}
      true -> :precompiled
    end
  end

  # Mix gives a dependency's project config the path of its app in the host's _build: `:app_path`
  # up to Elixir 1.14, `:deps_app_path` in later versions (checked on 1.18 and 1.20). A root
  # project has neither.
  defp dependency? do
    config = Mix.Project.config()
    config[:app_path] != nil or config[:deps_app_path] != nil
  end

  @doc false
  def cargo_target_dir(
        env_value \\ System.get_env("CARGO_TARGET_DIR"),
        build_path \\ Mix.Project.build_path()
      ) do
    if env_value in [nil, ""], do: Path.join(build_path, "libcluster_rs_cargo"), else: env_value
  end

  defp nif_path, do: Path.join([Mix.Project.app_path(), "priv", "native", "#{@crate}.so"])
  defp manifest_path, do: Path.join(Mix.Project.manifest_path(), @manifest)
  defp project_dir, do: Path.dirname(Mix.Project.project_file())

  ## Precompiled

  defp precompiled_artifact do
    target = Precompiled.target()
    vm_nif = List.to_string(:erlang.system_info(:nif_version))
    nif = Precompiled.nif_version()
    checksum_file = Path.join(project_dir(), Precompiled.checksum_file_name())
    checksums = Precompiled.read_checksums(checksum_file)

    cond do
      target not in Precompiled.targets() ->
        {:unavailable, "no precompiled NIF for target #{target}"}

      nif == nil ->
        {:unavailable, "no precompiled NIF for this VM's NIF version #{vm_nif}"}

      checksums == %{} ->
        {:unavailable,
         "no precompiled artifact checksums in this package version (#{checksum_file} is empty)"}

      true ->
        name = Precompiled.artifact_name(Mix.Project.config()[:version], nif, target)

        case Map.fetch(checksums, name) do
          {:ok, expected} -> {:ok, name, expected}
          :error -> {:unavailable, "no checksum for #{name} in #{checksum_file}"}
        end
    end
  end

  defp unavailable_message(reason) do
    supported = Enum.map_join(Precompiled.targets(), "\n", &"    #{&1}")

    """
    libcluster_rs: #{reason}, and `cargo` is not on the PATH to build it from source.

    Precompiled NIFs (NIF version #{Enum.join(Precompiled.nif_versions(), ", ")}) exist for:
    #{supported}

    To build the NIF from source, install Rust 1.85 or later (https://rustup.rs) and set
    LIBCLUSTER_RS_BUILD=1 (or `config :libcluster_rs, build_from_source: true`).
    Nothing was written.
    """
  end

  defp install_precompiled!(name, expected) do
    dest = nif_path()

    if File.read(manifest_path()) == {:ok, "precompiled #{name} #{expected}\n"} and installed?(dest) do
      {:noop, []}
    else
      tarball =
        case Precompiled.cached(name, expected) do
          {:ok, body} ->
            Mix.shell().info("libcluster_rs: using #{name} from the cache #{Precompiled.cache_dir()}")
            body

          :miss ->
            download!(name, expected)
        end

      library =
        case Precompiled.extract_library(tarball) do
          {:ok, library} -> library
          {:error, why} -> Mix.raise("libcluster_rs: #{name}: #{why}. Nothing was written.")
        end

      install!(library, dest, "precompiled #{name} #{expected}\n")
      {:ok, []}
    end
  end

  defp download!(name, expected) do
    base = System.get_env("LIBCLUSTER_RS_BASE_URL") || LibclusterRs.MixProject.default_base_url()
    url = Precompiled.join_url(base, name)
    Mix.shell().info("libcluster_rs: downloading #{Precompiled.redact(url)}")

    case Precompiled.fetch(url) do
      {:ok, body} ->
        case Precompiled.checksum(body) do
          ^expected ->
            Precompiled.cache_put(name, body)
            body

          actual ->
            Mix.raise("""
            libcluster_rs: checksum mismatch for #{Precompiled.redact(url)}:
                expected #{expected} (#{Precompiled.checksum_file_name()})
                got      #{actual}
            The artifact was refused and nothing was written.
            """)
        end

      {:error, why} ->
        Mix.raise("""
        libcluster_rs: cannot download the precompiled NIF #{Precompiled.redact(url)}: #{why}.
        Nothing was written, and #{name} is not in the cache #{Precompiled.cache_dir()}.
        Check LIBCLUSTER_RS_BASE_URL (a mirror), HTTPS_PROXY and LIBCLUSTER_RS_CACERTFILE, or
        build from source with LIBCLUSTER_RS_BUILD=1 (needs Rust 1.85 or later).
        """)
    end
  end

  ## Source

  defp build_from_source!(why) do
    cargo = System.find_executable("cargo") || missing_cargo!(why)
    profile = if Mix.env() == :prod, do: "release", else: "debug"
    target_dir = cargo_target_dir()
    # As a dependency, the checkout may be read-only: cargo must not rewrite Cargo.lock.
    locked = if why == :root, do: [], else: ["--locked"]
    args = ["build", "-p", @crate, "--target-dir", target_dir] ++ release_flag(profile) ++ locked

    Mix.shell().info("==> cargo #{Enum.join(args, " ")}")

    case System.cmd(cargo, args, cd: project_dir(), into: IO.stream(:stdio, :line), stderr_to_stdout: true) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("cargo build of the libcluster_rs NIF failed (exit status #{status})")
    end

    built = Path.join([target_dir, profile, library_file()])
    unless File.exists?(built), do: Mix.raise("cargo reported success but #{built} is missing")
    library = File.read!(built)
    stamp = "source #{Precompiled.checksum(library)}\n"

    if File.read(manifest_path()) == {:ok, stamp} and installed?(nif_path()) do
      {:noop, []}
    else
      install!(library, nif_path(), stamp)
      {:ok, []}
    end
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

  defp missing_cargo!(why) do
    hint =
      if why == :root,
        do: "Developing libcluster_rs itself always builds its NIF from source.",
        else: "Unset LIBCLUSTER_RS_BUILD (and `build_from_source`) to use a precompiled NIF."

    Mix.raise("""
    libcluster_rs needs the Rust toolchain to build its NIF, and `cargo` is not on the PATH.
    Install Rust 1.85 or later (https://rustup.rs, or your distribution's `cargo` package) and
    run `mix compile` again. #{hint}
    """)
  end

  ## Install

  # The installed library matches what the manifest recorded (the manifest is written last).
  defp installed?(dest) do
    case {File.read(manifest_path() <> ".so"), File.read(dest)} do
      {{:ok, sum}, {:ok, library}} -> sum == Precompiled.checksum(library)
      _ -> false
    end
  end

  defp install!(library, dest, stamp) do
    priv = own_priv!()
    native = Path.join(priv, "native")
    File.mkdir_p!(native)
    # Replace through a rename: overwriting a loaded .so in place can crash a running VM.
    tmp = Path.join(native, ".#{@crate}.so.#{System.unique_integer([:positive])}.tmp")

    try do
      File.write!(tmp, library)
      File.rename!(tmp, dest)
    after
      File.rm(tmp)
    end

    File.mkdir_p!(Path.dirname(manifest_path()))
    File.write!(manifest_path() <> ".so", Precompiled.checksum(library))
    File.write!(manifest_path(), stamp)
  end

  # Mix links <build>/lib/libcluster_rs/priv to the source priv/ (priv/rbac). The NIF must not land
  # in the source tree, so the build dir gets a priv/ of its own: a copy of the source priv/
  # (Mix keeps refreshing that copy on later compiles) plus native/.
  defp own_priv! do
    Mix.Project.build_structure()
    priv = Path.join(Mix.Project.app_path(), "priv")

    case :file.read_link(priv) do
      {:ok, _} -> File.rm!(priv)
      {:error, _} -> :ok
    end

    File.mkdir_p!(priv)
    source = Path.join(project_dir(), "priv")

    entries = if File.dir?(source), do: File.ls!(source), else: []

    for entry <- entries, entry != "native" do
      File.cp_r!(Path.join(source, entry), Path.join(priv, entry))
    end

    priv
  end

  # libcluster_rs ships no `libcluster.app`: the :libcluster application is loaded from an
  # in-memory spec at run time (LibclusterRs.LibclusterApp), or is the stub package compat/libcluster.
  # Earlier builds wrote one into this ebin; remove it, or a release with the stub would hold two.
  defp remove_libcluster_app! do
    stale = Path.join(Mix.Project.compile_path(), "libcluster.app")
    if File.exists?(stale), do: File.rm!(stale)
    :ok
  end
end

defmodule Mix.Tasks.LibclusterRs.Checksum do
  @shortdoc "Writes checksum-libcluster_nif.exs from a directory or a URL of NIF artifacts"
  @moduledoc """
  Writes `checksum-libcluster_nif.exs`, the SHA-256 of every precompiled NIF artifact of this
  version, which the package ships and the compiler checks each download against.

      mix libcluster_rs.checksum --dir dist
      mix libcluster_rs.checksum --base-url https://github.com/OWNER/libcluster_rs/releases/download/v0.1.0

  It reads every artifact the release workflow builds (each target of
  `LibclusterRs.Precompiled.targets/0` and NIF version), from `--dir` (the output of
  `script/build-nif`) or from `--base-url` (https, http or file; HTTPS_PROXY and
  LIBCLUSTER_RS_CACERTFILE apply). A missing artifact is an error unless `--ignore-missing`.

  Options: `--output PATH` (default: `checksum-libcluster_nif.exs` next to mix.exs), `--print`
  (also print the checksums).

  It is defined in mix.exs, so it runs without compiling the project (no cargo build).
  """
  use Mix.Task

  alias LibclusterRs.Precompiled

  @switches [dir: :string, base_url: :string, output: :string, ignore_missing: :boolean, print: :boolean]

  @impl true
  def run(args) do
    {opts, rest} = OptionParser.parse!(args, strict: @switches)
    if rest != [], do: Mix.raise("mix libcluster_rs.checksum: unexpected arguments #{inspect(rest)}")

    read =
      case {opts[:dir], opts[:base_url]} do
        {dir, nil} when is_binary(dir) -> &File.read(Path.join(dir, &1))
        {nil, url} when is_binary(url) -> &Precompiled.fetch(Precompiled.join_url(url, &1))
        _ -> Mix.raise("mix libcluster_rs.checksum: give exactly one of --dir and --base-url")
      end

    version = Mix.Project.config()[:version]

    {found, missing} =
      version
      |> Precompiled.all_artifact_names()
      |> Enum.map(fn name -> {name, read.(name)} end)
      |> Enum.split_with(&match?({_, {:ok, _}}, &1))

    if missing != [] and !opts[:ignore_missing] do
      Mix.raise(
        "mix libcluster_rs.checksum: missing artifacts (--ignore-missing to skip them):\n" <>
          Enum.map_join(missing, "\n", fn {name, {:error, why}} -> "  #{name}: #{inspect(why)}" end)
      )
    end

    if found == [], do: Mix.raise("mix libcluster_rs.checksum: no artifact of version #{version} found")

    checksums = Map.new(found, fn {name, {:ok, body}} -> {name, Precompiled.checksum(body)} end)

    output =
      opts[:output] || Path.join(Path.dirname(Mix.Project.project_file()), Precompiled.checksum_file_name())

    Precompiled.write_checksums!(output, checksums)
    if opts[:print], do: Enum.each(Enum.sort(checksums), fn {k, v} -> Mix.shell().info("#{v}  #{k}") end)
    Mix.shell().info("Wrote #{map_size(checksums)} checksum(s) to #{output}")
  end
end
