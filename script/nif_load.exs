# Loads a precompiled NIF artifact (script/build-nif's .so.tar.gz) with the running OTP and makes
# it do real work; exits non-zero if anything fails. script/matrix runs it in each lane, .ci/run
# on the host, so that the one artifact of each target is proven on every OTP we test.
#
#   elixir --name nif_load@127.0.0.1 script/nif_load.exs ARTIFACT.so.tar.gz EBIN_DIR
#
# EBIN_DIR: the compiled libcluster_rs (e.g. _build/test/lib/libcluster_rs/ebin). The script lays
# out a throwaway libcluster_rs application (those .beam files, the artifact's library as
# priv/native/libcluster_nif.so), so that LibclusterRs.Native's own @on_load loads the artifact as
# a user's install would. Needs epmd running (the check asks it for this node's name).
[artifact, ebin] =
  case System.argv() do
    [a, e] -> [Path.expand(a), Path.expand(e)]
    _ -> raise "usage: elixir --name NAME script/nif_load.exs ARTIFACT.so.tar.gz EBIN_DIR"
  end

fail = fn msg ->
  IO.puts(:stderr, "nif_load: FAILED: " <> msg)
  System.halt(1)
end

Node.alive?() || fail.("run me distributed (elixir --name nif_load@127.0.0.1 ...)")
File.exists?(Path.join(ebin, "Elixir.LibclusterRs.Native.beam")) || fail.("no LibclusterRs.Native in #{ebin}")

app = Path.join(System.tmp_dir!(), "nif_load_#{System.unique_integer([:positive])}/libcluster_rs")
File.mkdir_p!(Path.join(app, "priv/native"))
File.cp_r!(ebin, Path.join(app, "ebin"))

# The artifact holds exactly one file, the library under its artifact name (rustler_precompiled's layout).
{:ok, [{_, so}]} = :erl_tar.extract(to_charlist(artifact), [:compressed, :memory])
File.write!(Path.join(app, "priv/native/libcluster_nif.so"), so)

true = :code.add_patha(to_charlist(Path.join(app, "ebin")))

native =
  case Code.ensure_loaded(LibclusterRs.Native) do
    {:module, native} -> native
    {:error, why} -> fail.("LibclusterRs.Native did not load with the artifact's library: #{inspect(why)}")
  end

loaded_from = :code.which(native) |> to_string()
String.starts_with?(loaded_from, app) || fail.("LibclusterRs.Native came from #{loaded_from}, not #{app}")

# A plain NIF call.
case LibclusterRs.Native.node_names_check(["a@127.0.0.1", "no host"]) do
  {["a@127.0.0.1"], ["no host"]} -> :ok
  other -> fail.("node_names_check returned #{inspect(other)}")
end

# A task on the NIF's tokio runtime that answers by message: ask epmd for this node's name.
[name, _host] = node() |> Atom.to_string() |> String.split("@")
tag = make_ref()
handle = LibclusterRs.Native.epmd_names_start(tag, ["127.0.0.1"], 4369, 5_000)

names =
  receive do
    {:libcluster_rs, ^tag, {:epmd_names, "127.0.0.1", {:ok, names}}} -> names
    {:libcluster_rs, ^tag, other} -> fail.("epmd_names: #{inspect(other)}")
  after
    10_000 -> fail.("no answer from the NIF within 10 s")
  end

LibclusterRs.Native.discovery_stop(handle)
name in names || fail.("epmd's names #{inspect(names)} lack this node's #{name}")
File.rm_rf!(Path.dirname(app))

IO.puts(
  "nif_load: #{Path.basename(artifact)} loads and runs on OTP #{System.otp_release()} " <>
    "(erts #{:erlang.system_info(:version)}, NIF #{:erlang.system_info(:nif_version)}, " <>
    "Elixir #{System.version()}); epmd named #{inspect(names)}"
)
