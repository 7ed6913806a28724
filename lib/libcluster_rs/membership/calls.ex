defmodule LibclusterRs.Membership.Calls do
  @moduledoc false
  # The calls of a topology's user MFAs, as they run inside the membership's supervised tasks
  # (never in the membership process itself): one connect attempt, a `list_nodes` answer, and
  # libcluster's disconnect of dropped nodes. Every user MFA is contained here: raising, exiting,
  # throwing or returning garbage becomes a `{:fault, description}` naming what it did, which the
  # membership counts (LibclusterRs.Membership.Faults) as a failed round or attempt. Hanging is
  # bounded by the membership's deadline timers, which kill the task.

  @doc "`list_nodes`: `{:ok, MapSet}` or `{:fault, description}`."
  def list_nodes({mod, fun, args}) do
    case apply(mod, fun, args) do
      list when is_list(list) -> {:ok, MapSet.new(list)}
      other -> {:fault, "returned #{inspect(other, limit: 5)} (expected a list of nodes)"}
    end
  catch
    kind, reason -> {:fault, fault_text(kind, reason, __STACKTRACE__)}
  end

  @doc """
  One connect attempt, then `list_nodes` to check that the node really is connected (a peer that
  accepts and then drops, or a hidden connect, is a failure: no redial storm). Returns
  `{:dialled, monotonic_ms, result}`, `result` being `:ok` or `{:error, reason, fault}`, where
  `fault` is `{mfa_kind, :ok}` when the MFA behaved and `{mfa_kind, description}` when it
  misbehaved. Failures are not logged here: the membership warns once per failure streak.
  """
  def connect(topology, connect, list_nodes, node) do
    # When the MFA really runs (a task may start late on a loaded VM): the redial floor counts from here.
    dialled_at = System.monotonic_time(:millisecond)
    {:dialled, dialled_at, connect_result(topology, connect, list_nodes, node)}
  end

  defp connect_result(topology, connect, list_nodes, node) do
    result =
      try do
        Cluster.Strategy.connect_node(topology, connect, node, quiet_failure: true, quiet_success: true)
      catch
        kind, reason -> {:fault, fault_text(kind, reason, __STACKTRACE__)}
      end

    case result do
      :ok ->
        case list_nodes(list_nodes) do
          {:ok, set} ->
            if MapSet.member?(set, node), do: :ok, else: {:error, :not_listed, {:connect, :ok}}

          {:fault, error} ->
            {:error, :list_nodes_failed, {:list_nodes, error}}
        end

      {:error, reason} when reason in [false, :ignored] ->
        {:error, reason, {:connect, :ok}}

      {:error, other} ->
        {:error, other, {:connect, "returned #{inspect(other, limit: 5)} (expected true, false or :ignored)"}}

      {:fault, error} ->
        {:error, :connect_failed, {:connect, error}}
    end
  end

  @doc """
  libcluster's `disconnect_nodes`: `list_nodes` first, then the disconnect MFA for each listed
  node. Returns what each MFA did: `[{mfa_kind, :ok | description}]`.
  """
  def disconnect(topology, disconnect, list_nodes, nodes) do
    case list_nodes(list_nodes) do
      {:fault, error} ->
        [{:list_nodes, error}]

      {:ok, listed} ->
        faults =
          for node <- nodes, node != Node.self(), MapSet.member?(listed, node) do
            try do
              case Cluster.Strategy.disconnect_node(topology, disconnect, node) do
                :ok ->
                  {:disconnect, :ok}

                {:error, value} ->
                  {:disconnect, "returned #{inspect(value, limit: 5)} (expected true or false)"}
              end
            catch
              kind, reason -> {:disconnect, fault_text(kind, reason, __STACKTRACE__)}
            end
          end

        [{:list_nodes, :ok} | faults]
    end
  end

  defp fault_text(:error, reason, stacktrace) do
    e = Exception.normalize(:error, reason, stacktrace)
    "raised #{inspect(e.__struct__)}: #{Exception.message(e)}"
  end

  defp fault_text(:exit, reason, _), do: "exited: #{inspect(reason, limit: 5)}"
  defp fault_text(:throw, value, _), do: "threw #{inspect(value, limit: 5)}"
end
