defmodule LibclusterRs.LibclusterApp do
  @moduledoc false
  # The one `:libcluster` application of a node, so that existing `config :libcluster, ...`
  # (`topologies`, `debug`) keeps working: OTP applies an application's config (sys.config, a
  # release's runtime.exs) only to an application that is loaded.
  #
  #   * When the app depends on the stub package `compat/libcluster` (the recipe for third-party
  #     strategy packages), that package is the `:libcluster` application: it is in the release and
  #     is loaded from its own `libcluster.app`.
  #   * Otherwise this empty application is loaded from the spec below, which exists in memory only:
  #     libcluster_rs ships no `libcluster.app` file, so a release never holds two.
  #
  # The spec depends on :libcluster_rs, as the stub does, so that a package depending on :libcluster
  # starts after libcluster_rs also where this spec stands in for the stub (under Mix, which loads it
  # when it reads libcluster_rs's mix.exs, before the stub's own spec could be loaded).
  #
  # mix.exs loads the same spec when Mix reads the project (`LibclusterRs.MixProject.libcluster_app/0`;
  # a test keeps the two equal), so that Mix does not warn about `config :libcluster`.

  @spec_ {:application, :libcluster,
          [
            description: ~c"libcluster_rs: holds `config :libcluster` for libcluster 3.5 compatibility",
            vsn: ~c"3.5.0-libcluster_rs",
            modules: [],
            registered: [],
            applications: [:kernel, :stdlib, :libcluster_rs]
          ]}

  @doc "The in-memory `:libcluster` application spec."
  @spec spec() :: tuple()
  def spec, do: @spec_

  @doc "Loads the stub package's `:libcluster` when it is on the code path, else the in-memory spec."
  @spec load() :: :ok | {:error, term()}
  def load do
    case Application.load(:libcluster) do
      :ok -> :ok
      {:error, {:already_loaded, :libcluster}} -> :ok
      {:error, _no_app_file} -> loaded(:application.load(@spec_))
    end
  end

  defp loaded({:error, {:already_loaded, :libcluster}}), do: :ok
  defp loaded(other), do: other
end
