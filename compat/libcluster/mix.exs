defmodule LibclusterRs.LibclusterStub.MixProject do
  # An application named :libcluster with no code of its own, for apps that depend on a
  # third-party strategy package (other than the four libcluster_rs replaces natively)
  # whose own dependency is `{:libcluster, "~> 3.x"}`. Point that dependency here with
  # `override: true` (see docs/migrating.md, "Third-party strategy packages"):
  #
  #   * no module of its own, so no "Duplicated modules" in `mix release`: `Cluster.Strategy`,
  #     `Cluster.Strategy.State`, `Cluster.Logger`... come from libcluster_rs;
  #   * it depends on libcluster_rs, so Mix compiles libcluster_rs before the package that
  #     `use`s `Cluster.Strategy`, and starts it before that package;
  #   * it is the one `:libcluster` application of the release: `config :libcluster` is applied to
  #     it, and libcluster_rs then loads no `:libcluster` application of its own.
  #
  # Its version is libcluster's, 3.5.0, so that the packages' requirements (`~> 3.0`, `~> 3.3`...)
  # are met.
  use Mix.Project

  def project do
    [
      app: :libcluster,
      version: "3.5.0",
      elixir: "~> 1.14",
      description: "libcluster_rs's stand-in for libcluster 3.5 (no code; depends on libcluster_rs)",
      # Inside the libcluster_rs repository this is the repository root. With a git dependency
      # checked out with `sparse:`, the root is not there: the app's own libcluster_rs dependency
      # (declared with `override: true`) replaces this one.
      deps: [{:libcluster_rs, path: "../.."}]
    ]
  end

  def application do
    [description: ~c"libcluster_rs's stand-in for libcluster 3.5 (no code; depends on libcluster_rs)"]
  end
end
