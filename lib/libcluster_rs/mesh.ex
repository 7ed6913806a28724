defmodule LibclusterRs.Mesh do
  @moduledoc false
  # The bounded mesh check behind `Cluster.mesh/1` and `mix libcluster.mesh`: ask every node of the
  # cluster for its own view (`:erlang.nodes/0`, over `:erpc`, all at once, each within a deadline),
  # widen the set with the nodes those views name (at most `:max_nodes`, at most `:rounds` times),
  # then name every link that is missing. Nothing of libcluster_rs needs to run on the nodes asked.

  @defaults [timeout: 5_000, max_nodes: 1_000, rounds: 3]

  def check(opts) do
    opts = Keyword.merge(@defaults, opts)
    timeout = pos_integer!(opts, :timeout)
    max_nodes = pos_integer!(opts, :max_nodes)
    rounds = pos_integer!(opts, :rounds)

    {members, views, unreachable, truncated} =
      case Keyword.fetch(opts, :seeds) do
        {:ok, seeds} when is_list(seeds) and seeds != [] ->
          unless Enum.all?(seeds, &is_atom/1),
            do: raise(ArgumentError, "expected :seeds to be a list of node atoms, got: #{inspect(seeds)}")

          # asked from outside: this node is not one of the members
          {start, cut} = grow(MapSet.new(), seeds, max_nodes)
          explore(start, %{}, %{}, timeout, max_nodes, rounds, cut)

        {:ok, seeds} ->
          raise ArgumentError, "expected :seeds to be a non-empty list of node atoms, got: #{inspect(seeds)}"

        :error ->
          if Node.alive?() do
            views = %{node() => MapSet.new(Node.list())}
            {start, cut} = grow(MapSet.new([node()]), Node.list(), max_nodes)
            explore(start, views, %{}, timeout, max_nodes, rounds, cut)
          else
            {MapSet.new([node()]), %{node() => MapSet.new()}, %{}, false}
          end
      end

    answered = Map.keys(views)

    missing = for a <- answered, b <- members, b != a, not MapSet.member?(views[a], b), do: {a, b}

    missing = Enum.sort(missing)

    %{
      nodes: Enum.sort(members),
      full_mesh: missing == [] and unreachable == %{},
      missing: missing,
      asymmetric: for({a, b} <- missing, b in answered, MapSet.member?(views[b], a), do: {a, b}),
      unreachable: unreachable,
      truncated: truncated
    }
  end

  # Asks every member not yet asked for its view; repeats with the nodes the answers named. A
  # member asks a node it is not connected to through a node that sees it (asking directly would
  # connect the two and mend the very link it looks for); a checker outside the mesh (`:seeds`)
  # asks directly, which is why `mix libcluster.mesh` runs as a hidden node.
  defp explore(members, views, unreachable, timeout, max_nodes, rounds, truncated) do
    ask =
      members
      |> Enum.reject(&(Map.has_key?(views, &1) or Map.has_key?(unreachable, &1)))
      |> Enum.sort()

    if ask == [] or rounds == 0 do
      {members, views, unreachable, truncated}
    else
      {views, unreachable} =
        ask
        |> Enum.zip(ask(ask, views, members, timeout))
        |> Enum.reduce({views, unreachable}, fn
          {n, {:ok, seen}}, {v, u} when is_list(seen) -> {Map.put(v, n, MapSet.new(seen)), u}
          {n, other}, {v, u} -> {v, Map.put(u, n, reason(other))}
        end)

      named =
        views
        |> Map.values()
        |> Enum.reduce(MapSet.new(), &MapSet.union/2)
        |> MapSet.difference(members)
        |> MapSet.delete(node_if_outside(members))

      {learned, cut} = grow(members, Enum.sort(named), max_nodes)
      explore(learned, views, unreachable, timeout, max_nodes, rounds - 1, truncated or cut)
    end
  end

  defp ask(nodes, views, members, timeout) do
    direct = not MapSet.member?(members, node()) or not Node.alive?()
    connected = MapSet.new(Node.list(:connected))

    nodes
    |> Task.async_stream(
      fn n ->
        relay =
          if not direct and not MapSet.member?(connected, n) do
            Enum.find(
              Map.keys(views),
              &(&1 != node() and MapSet.member?(connected, &1) and MapSet.member?(views[&1], n))
            )
          end

        try do
          {:ok,
           if(relay,
             do: :erpc.call(relay, :erpc, :call, [n, :erlang, :nodes, [], timeout], timeout + 1_000),
             else: :erpc.call(n, :erlang, :nodes, [], timeout)
           )}
        catch
          :error, {:erpc, _} = reason -> {:error, reason}
          :error, {:exception, {:erpc, _} = reason, _} -> {:error, reason}
          kind, reason -> {kind, reason}
        end
      end,
      max_concurrency: 64,
      timeout: 2 * timeout + 2_000,
      on_timeout: :kill_task
    )
    |> Enum.map(fn
      {:ok, result} -> result
      {:exit, reason} -> {:exit, reason}
    end)
  end

  # Adds the `new` nodes, in their order, to `members`, up to `max` in all (the members already
  # there stay); true when some were left out.
  defp grow(members, new, max) do
    new = Enum.uniq(new)
    added = Enum.take(new, max(max - MapSet.size(members), 0))
    {MapSet.union(members, MapSet.new(added)), length(added) < length(new)}
  end

  # Asked from outside (seeds), this node sees itself in the members' views: it is not a member.
  defp node_if_outside(members), do: if(MapSet.member?(members, node()), do: nil, else: node())

  defp reason({:error, {:erpc, reason}}), do: reason
  defp reason({:error, {:exception, {:erpc, reason}, _}}), do: reason
  defp reason({:error, reason}), do: reason
  defp reason({:throw, v}), do: {:throw, v}
  defp reason({:exit, reason}), do: reason
  defp reason(other), do: other

  defp pos_integer!(opts, key) do
    case LibclusterRs.Config.pos_integer().(opts[key]) do
      {:ok, n} ->
        n

      {:error, expected} ->
        raise ArgumentError, "expected #{inspect(key)} to be #{expected}, got: #{inspect(opts[key])}"
    end
  end
end
