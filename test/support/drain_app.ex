defmodule LibclusterRs.Test.DrainApp do
  @moduledoc false
  # A user application for the graceful-leave test, run on a peer: its tree is a Cluster.Supervisor
  # (started first, so stopped last) and a child that takes `drain_ms` to stop, like an endpoint
  # draining connections. Every dial and the drain are appended to the file at `path`.
  use Application

  def load_and_start(path, hosts, drain_ms) do
    spec = [
      mod: {__MODULE__, {path, hosts, drain_ms}},
      applications: [:kernel, :stdlib, :elixir, :libcluster_rs],
      modules: [__MODULE__],
      vsn: ~c"0.0.1",
      description: ~c"drain test",
      registered: []
    ]

    :ok = :application.load({:application, :drain_test, spec})
    {:ok, _} = Application.ensure_all_started(:drain_test)
    :ok
  end

  @impl true
  def start(_type, {path, hosts, drain_ms}) do
    topologies = [
      drain: [
        strategy: Cluster.Strategy.Epmd,
        config: [hosts: hosts],
        connect: {__MODULE__, :dial, [path]},
        membership: [backoff_min: 10, backoff_max: 20]
      ]
    ]

    children = [
      {Cluster.Supervisor, [topologies]},
      %{
        id: :drainer,
        start: {GenServer, :start_link, [__MODULE__.Drainer, {path, drain_ms}]},
        shutdown: 10_000
      }
    ]

    Supervisor.start_link(children, strategy: :one_for_one)
  end

  def dial(path, node) do
    File.write!(path, "dial #{node}\n", [:append])
    false
  end

  defmodule Drainer do
    @moduledoc false
    use GenServer

    @impl true
    def init({path, ms}) do
      Process.flag(:trap_exit, true)
      {:ok, {path, ms}}
    end

    @impl true
    def terminate(_reason, {path, ms}) do
      File.write!(path, "drain\n", [:append])
      Process.sleep(ms)
      File.write!(path, "drained\n", [:append])
    end
  end
end
