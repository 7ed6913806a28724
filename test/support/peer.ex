defmodule LibclusterRs.Test.Peer do
  @moduledoc false
  # Real BEAM nodes for tests, started with OTP's :peer and controlled over stdio (so the test node
  # itself needs no distribution, and a peer in a network namespace is controlled the same way).
  # Each peer gets this project's code paths and the given cookie, and starts :libcluster_rs.

  @doc """
  Starts a peer named `name@host`. Options:

    * `:netns` - run it inside this network namespace (`ip netns exec`)
    * `:cookie` - default `:libcluster_rs_test`
    * `:env` - extra environment variables `[{"VAR", "value"}]`
    * `:args` - extra `erl` arguments (charlists)
    * `:app_env` - `[{app, key, value}]` set before :libcluster_rs starts

  Returns `{peer_pid, node}`.
  """
  def start(name, host, opts \\ []) do
    cookie = Keyword.get(opts, :cookie, :libcluster_rs_test)
    paths = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)
    erl = System.find_executable("erl") |> to_charlist()

    exec =
      case Keyword.get(opts, :netns) do
        nil -> erl
        ns -> {System.find_executable("ip") |> to_charlist(), [~c"netns", ~c"exec", to_charlist(ns), erl]}
      end

    {:ok, pid, node} =
      :peer.start_link(%{
        name: to_charlist(name),
        host: to_charlist(host),
        longnames: true,
        connection: :standard_io,
        exec: exec,
        args:
          [~c"-setcookie", to_charlist(cookie), ~c"-kernel", ~c"logger_level", ~c"warning"] ++
            paths ++ Keyword.get(opts, :args, []),
        env: Enum.map(Keyword.get(opts, :env, []), fn {k, v} -> {to_charlist(k), to_charlist(v)} end),
        wait_boot: 30_000
      })

    for {app, key, value} <- Keyword.get(opts, :app_env, []) do
      :ok = :peer.call(pid, :application, :set_env, [app, key, value])
    end

    {:ok, _} = :peer.call(pid, :application, :ensure_all_started, [:libcluster_rs], 30_000)
    {pid, node}
  end

  @doc "Calls `m.f(a)` on the peer."
  def call(pid, m, f, a, timeout \\ 15_000), do: :peer.call(pid, m, f, a, timeout)

  @doc "The peer's connected nodes."
  def nodes(pid), do: call(pid, :erlang, :nodes, [:connected])

  @doc """
  Starts `Cluster.Supervisor` with `topologies` on the peer, unlinked from the rpc process so it
  outlives the call.
  """
  def start_cluster(pid, topologies) do
    call(pid, __MODULE__, :start_cluster_here, [topologies])
  end

  @doc false
  def start_cluster_here(topologies) do
    {:ok, sup} = Cluster.Supervisor.start_link([topologies])
    Process.unlink(sup)
    {:ok, sup}
  end

  @doc "Stops the peer (clean shutdown)."
  def stop(pid) do
    try do
      :peer.stop(pid)
    catch
      :exit, _ -> :ok
    end
  end

  @doc "LibclusterRs.Test.Eventually.eventually/2, under its older name."
  defdelegate wait_until(fun, timeout \\ 10_000), to: LibclusterRs.Test.Eventually, as: :eventually
end
