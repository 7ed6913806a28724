defmodule Cluster.Compat.LibclusterAppTest do
  # The one :libcluster application: the in-memory spec (mix.exs at Mix time, LibclusterRs.LibclusterApp
  # at run time) and the stub package compat/libcluster; and the migration guide that explains them.
  use ExUnit.Case, async: true

  test "mix.exs and LibclusterRs.LibclusterApp load the same in-memory :libcluster spec" do
    assert LibclusterRs.MixProject.libcluster_app() == LibclusterRs.LibclusterApp.spec()
    assert {:application, :libcluster, props} = LibclusterRs.LibclusterApp.spec()
    assert props[:modules] == []
  end

  test ":libcluster is loaded once libcluster_rs runs, so `config :libcluster` applies" do
    assert :ok = LibclusterRs.LibclusterApp.load()
    assert {:libcluster, _, _} = List.keyfind(Application.loaded_applications(), :libcluster, 0)
  end

  test "libcluster_rs's build ships no libcluster.app (a release with the stub would hold two)" do
    ebin = Path.join(Mix.Project.app_path(), "ebin")
    assert File.exists?(Path.join(ebin, "libcluster_rs.app"))
    refute File.exists?(Path.join(ebin, "libcluster.app"))
  end

  test "the stub package: :libcluster 3.5.0, no code, depends on libcluster_rs at the repository root" do
    stub = File.read!("compat/libcluster/mix.exs")
    assert stub =~ ~s(app: :libcluster,)
    assert stub =~ ~s(version: "3.5.0",)
    assert stub =~ ~s({:libcluster_rs, path: "../.."})
    assert Path.wildcard("compat/libcluster/lib/**") == []
    assert Version.match?("3.5.0", "~> 3.0") and Version.match?("3.5.0", "~> 3.3")
  end

  test "docs/migrating.md agrees with the README on how to depend on libcluster_rs (not on hex.pm)" do
    guide = File.read!("docs/migrating.md")
    readme = File.read!("README.md")

    for text <- [guide, readme] do
      assert text =~ "not on hex.pm yet"
      # the plain dependency line itself is checked by LibclusterRs.PackageTest
      assert text =~ ~s({:libcluster_rs, path: "../libcluster_rs", override: true})
      refute text =~ ~r/\{:libcluster_rs, "~>/
    end

    # The recipe section names the stub that exists, with both dependency forms.
    assert guide =~ "## Third-party strategy packages"
    assert guide =~ ~s({:libcluster, path: "../libcluster_rs/compat/libcluster", override: true})
    assert guide =~ ~s(sparse: "compat/libcluster", override: true)
    assert guide =~ "## Differences from libcluster 3.5"
  end
end
