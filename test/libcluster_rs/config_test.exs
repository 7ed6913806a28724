defmodule LibclusterRs.ConfigTest do
  # {:system, ...} config values and the ArgumentErrors of the static strategies.
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog

  alias LibclusterRs.Config
  alias Cluster.Strategy.{Epmd, ErlangHosts, LocalEpmd, State}

  @var "LIBCLUSTER_RS_CORE2_CONFIG_TEST"

  setup do
    on_exit(fn -> System.delete_env(@var) end)
    System.delete_env(@var)
    {:ok, t: :"cfg_#{System.unique_integer([:positive])}"}
  end

  doctest LibclusterRs.Config

  describe "the one wording of a bad value" do
    test "invalid!/5 raises an ArgumentError naming the topology and the key", %{t: t} do
      e = assert_raise ArgumentError, fn -> Config.invalid!(t, :port, "an integer in 1..65535", 0) end

      assert e.message ==
               "invalid config for topology #{inspect(t)}: expected :port to be an integer in 1..65535, got: 0"

      e =
        assert_raise ArgumentError, fn ->
          Config.invalid!(t, "PGPORT", "a port", "x", "an environment variable")
        end

      assert e.message =~ "expected PGPORT to be a port, got: \"x\" (an environment variable)"
    end

    test "check!/4 and required!/4 word it the same way", %{t: t} do
      e = assert_raise ArgumentError, fn -> Config.check!(t, :n, -1, Config.pos_integer()) end
      assert e.message =~ "expected :n to be a positive integer, got: -1"

      e = assert_raise ArgumentError, fn -> Config.required!(%{q: nil}, :q, t, "a non-empty string") end
      assert e.message =~ "expected :q to be a non-empty string, got: nil (the key is required)"
    end

    test "backoff_range!/2: :backoff_max at least :backoff_min, the one check", %{t: t} do
      assert Config.backoff_range!(%{backoff_min: 5, backoff_max: 5}, t) == %{backoff_min: 5, backoff_max: 5}

      e =
        assert_raise ArgumentError, fn -> Config.backoff_range!(%{backoff_min: 500, backoff_max: 100}, t) end

      assert e.message =~ "expected :backoff_max to be at least :backoff_min (500), got: 100"
      assert e.message =~ inspect(t)

      # Its two users: the membership and Postgres.
      assert_raise ArgumentError, ~r/:backoff_max/, fn ->
        LibclusterRs.Membership.validate_opts!(t, backoff_min: 500, backoff_max: 100)
      end

      assert_raise ArgumentError, ~r/expected :backoff_max to be at least :backoff_min/, fn ->
        Cluster.Strategy.Postgres.init(%State{
          topology: t,
          config: [database: "d", username: "u", backoff_min: 500, backoff_max: 100, env: %{}]
        })
      end
    end

    test "env/1: the :env option, else the process environment", %{t: t} do
      System.put_env(@var, "from-the-process")
      assert Config.env(%{env: %{"A" => "1"}}) == %{"A" => "1"}
      assert Config.env(env: %{"A" => "1"}) == %{"A" => "1"}
      assert Config.env(%{env: nil})[@var] == "from-the-process"
      assert Config.env([])[@var] == "from-the-process"

      schema = [{:x, 1, Config.pos_integer()}, Config.env_key()]
      assert Config.validate!([env: %{"A" => "1"}], schema, t, __MODULE__).env == %{"A" => "1"}

      e = assert_raise ArgumentError, fn -> Config.validate!([env: %{"A" => 1}], schema, t, __MODULE__) end
      assert e.message =~ "expected :env to be a map of string names to string values"
    end
  end

  describe "{:system, ...} values" do
    test "{:system, var} and {:system, var, default} are strings" do
      assert Config.resolve_value!({:system, @var, "dflt"}) == "dflt"
      System.put_env(@var, "42")
      assert Config.resolve_value!({:system, @var}) == "42"
      assert Config.resolve_value!({:system, @var, "dflt"}) == "42"
    end

    test "typed forms convert, and fall back to the default when unset or empty" do
      assert Config.resolve_value!({:system, :integer, @var, 5_000}) == 5_000
      System.put_env(@var, "")
      assert Config.resolve_value!({:system, :integer, @var, 5_000}) == 5_000

      System.put_env(@var, " 1234 ")
      assert Config.resolve_value!({:system, :integer, @var, 5_000}) == 1234
      System.put_env(@var, "myapp")
      assert Config.resolve_value!({:system, :atom, @var, :dflt}) == :myapp
      assert Config.resolve_value!({:system, :string, @var, "x"}) == "myapp"
      System.put_env(@var, "true")
      assert Config.resolve_value!({:system, :boolean, @var, false}) == true
      System.put_env(@var, "0")
      assert Config.resolve_value!({:system, :boolean, @var, true}) == false
    end

    test "a value that cannot be converted is an ArgumentError naming the variable" do
      System.put_env(@var, "12abc")

      e = assert_raise ArgumentError, fn -> Config.resolve_value!({:system, :integer, @var, 1}) end
      assert e.message =~ @var and e.message =~ "integer" and e.message =~ "12abc"

      System.put_env(@var, "maybe")
      e = assert_raise ArgumentError, fn -> Config.resolve_value!({:system, :boolean, @var, true}) end
      assert e.message =~ @var and e.message =~ "boolean"

      e = assert_raise ArgumentError, fn -> Config.resolve_value!({:system, :float, @var, 1.0}) end
      assert e.message =~ @var and e.message =~ ":float"
    end

    test "an unset {:system, var} (it has no default) is an ArgumentError naming the variable and the key" do
      e = assert_raise ArgumentError, fn -> Config.resolve_system!([query: {:system, @var}], :dns) end
      assert e.message =~ @var and e.message =~ ":query" and e.message =~ ":dns"
      assert e.message =~ "not set"
    end

    test "a value that cannot be converted names the key and the topology too" do
      System.put_env(@var, "12abc")

      e =
        assert_raise ArgumentError, fn ->
          Config.resolve_system!([polling_interval: {:system, :integer, @var, 1}], :dns)
        end

      assert e.message =~ @var and e.message =~ ":polling_interval" and e.message =~ ":dns"
      assert e.message =~ "12abc"
    end

    test "an unknown type is an error even while the variable is unset" do
      e =
        assert_raise ArgumentError, fn -> Config.resolve_system!([port: {:system, :float, @var, 1.0}], :g) end

      assert e.message =~ @var and e.message =~ ":float" and e.message =~ ":port"
    end

    test "other values pass through; only the top level of a config is resolved" do
      System.put_env(@var, "7")
      nested = [{:system, @var}]

      assert Config.resolve_system!(a: {:system, :integer, @var, 1}, b: nested, c: :x) ==
               [a: 7, b: nested, c: :x]
    end

    test "resolved at start: a strategy receives the converted value", %{t: t} do
      System.put_env(@var, "2500")

      spec = [
        strategy: LibclusterRs.ConfigTest.Echo,
        config: [test: self(), interval: {:system, :integer, @var, 5_000}, name: {:system, @var, "x"}]
      ]

      start_supervised!({Cluster.Supervisor, [[{t, spec}]]})
      assert_receive {:started, %State{config: config}}
      assert config[:interval] == 2500
      assert config[:name] == "2500"
    end

    test "a bad environment value fails the start with the variable named", %{t: t} do
      System.put_env(@var, "soon")
      spec = [strategy: LibclusterRs.ConfigTest.Echo, config: [interval: {:system, :integer, @var, 5_000}]]
      assert {:error, reason} = start_supervised({Cluster.Supervisor, [[{t, spec}]]})
      assert inspect(reason) =~ @var
      e = assert_raise ArgumentError, fn -> Cluster.Supervisor.get_configured_topologies([{t, spec}]) end
      assert e.message =~ @var and e.message =~ ":interval" and e.message =~ inspect(t)
    end

    test "DNSPoll whose query comes from an unset variable does not boot unclustered", %{t: t} do
      # Before: the variable resolved to nil, and DNSPoll booted with "got: nil" and connected nothing.
      spec = [
        strategy: Cluster.Strategy.DNSPoll,
        config: [query: {:system, @var}, node_basename: "app", resolver: fn _ -> [] end]
      ]

      assert {:error, reason} = start_supervised({Cluster.Supervisor, [[{t, spec}]]})
      assert inspect(reason) =~ @var and inspect(reason) =~ ":query"
    end
  end

  describe "static strategies reject bad values naming the key" do
    defp init!(module, t, config), do: module.init(%State{topology: t, config: config})

    defp rejects(module, t, config, key) do
      e = assert_raise ArgumentError, fn -> init!(module, t, config) end
      assert e.message =~ inspect(key), "#{inspect(config)}: #{e.message}"
      assert e.message =~ inspect(t)
      assert e.message =~ "expected"
    end

    test "Epmd", %{t: t} do
      rejects(Epmd, t, [hosts: :a@h], :hosts)
      rejects(Epmd, t, [hosts: ["a@h"]], :hosts)
      rejects(Epmd, t, [hosts: [:no_host_part]], :hosts)
      rejects(Epmd, t, [hosts: [:a@h], timeout: 0], :timeout)
      rejects(Epmd, t, [hosts: [:a@h], timeout: "5000"], :timeout)
      rejects(Epmd, t, [hosts: [:a@h], polling_interval: -1], :polling_interval)

      assert init!(Epmd, t, hosts: []) == :ignore
      assert {:ok, [:a@h], opts} = init!(Epmd, t, hosts: [:a@h])
      assert opts[:interval] == :infinity
      assert {:ok, _, opts} = init!(Epmd, t, hosts: [:a@h], timeout: 1_000)
      assert opts[:interval] == 1_000
    end

    test "LocalEpmd", %{t: t} do
      rejects(LocalEpmd, t, [polling_interval: 0], :polling_interval)
      rejects(LocalEpmd, t, [epmd_port: 70_000], :epmd_port)
      rejects(LocalEpmd, t, [timeout: :infinity], :timeout)
      assert {:ok, _, opts} = init!(LocalEpmd, t, polling_interval: :infinity)
      assert opts[:interval] == :infinity
    end

    test "ErlangHosts", %{t: t} do
      rejects(ErlangHosts, t, [timeout: "x"], :timeout)
      rejects(ErlangHosts, t, [polling_interval: 0], :polling_interval)
      rejects(ErlangHosts, t, [epmd_timeout: 0], :epmd_timeout)
      rejects(ErlangHosts, t, [epmd_port: 0], :epmd_port)
      rejects(ErlangHosts, t, [hosts_file: 123], :hosts_file)
      rejects(ErlangHosts, t, [hosts_file: {:not, :a, :path}], :hosts_file)
    end

    @tag :tmp_dir
    test "ErlangHosts: a missing or unusable hosts file is a warning and :ignore", %{t: t, tmp_dir: dir} do
      log = capture_log(fn -> assert init!(ErlangHosts, t, hosts_file: Path.join(dir, "nope")) == :ignore end)
      assert log =~ "[libcluster:#{t}]" and log =~ ".hosts.erlang"

      bad = Path.join(dir, "bad")
      File.write!(bad, "{1, 2}.\n")
      capture_log(fn -> assert init!(ErlangHosts, t, hosts_file: bad) == :ignore end)

      good = Path.join(dir, "good")
      File.write!(good, "'localhost'.\n\"127.0.0.1\".\n")
      assert {:ok, %{hosts: ["localhost", "127.0.0.1"]}, _} = init!(ErlangHosts, t, hosts_file: good)
    end

    test "unknown keys log a warning naming the key", %{t: t} do
      log = capture_log(fn -> assert {:ok, _, _} = init!(Epmd, t, hosts: [:a@h], hostz: [:b@h]) end)
      assert log =~ "[libcluster:#{t}]" and log =~ ":hostz" and log =~ "Cluster.Strategy.Epmd"

      log = capture_log(fn -> init!(LocalEpmd, t, polling: 5) end)
      assert log =~ ":polling"
    end
  end
end

defmodule LibclusterRs.ConfigTest.Echo do
  @moduledoc false
  # A custom strategy that reports the state it was started with.
  use Cluster.Strategy

  def start_link([state]) do
    if pid = state.config[:test], do: send(pid, {:started, state})
    Agent.start_link(fn -> state end)
  end
end
