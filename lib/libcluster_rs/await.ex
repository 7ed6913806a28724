defmodule LibclusterRs.Await do
  @moduledoc false
  # The `await:` topology option: a temporary child, started right after its topology, whose start
  # waits (bounded) for the topology's peers and then returns :ignore, so no process remains.

  @spec child_spec(atom(), Keyword.t()) :: Supervisor.child_spec()
  def child_spec(topology, opts) do
    opts = Cluster.validate_await!(Keyword.put(opts, :topology, topology))

    %{
      id: {__MODULE__, topology},
      start: {__MODULE__, :start_link, [opts]},
      restart: :temporary,
      # The wait happens in start_link; shutdown only matters if it is killed during it.
      shutdown: :brutal_kill
    }
  end

  @doc false
  def start_link(opts) do
    topology = Keyword.fetch!(opts, :topology)

    case Cluster.await(opts) do
      :ok ->
        :ignore

      {:error, :timeout} ->
        Cluster.Logger.warn(
          topology,
          "await: fewer than #{opts[:min_nodes]} connected node(s) after #{opts[:timeout]} ms; starting anyway"
        )

        :ignore
    end
  end
end
