defmodule LibclusterRs.Membership.Policy do
  @moduledoc false
  # What a topology's membership wants, as plain functions of its state and the clock: which
  # nodes a discovery adds and drops, which nodes to dial now and in what order, which sightings
  # the untrusted-connect token bucket lets through, which dropped nodes start a grace period, and
  # when a nodeup must be undone. The membership process performs what these decide (tasks,
  # timers, telemetry, logs).

  alias LibclusterRs.Membership.Peers

  @doc "A complete discovery `nodes` (this node left out) against the last known set."
  @spec discovered(MapSet.t(), MapSet.t(), node()) :: %{
          nodes: MapSet.t(),
          added: MapSet.t(),
          dropped: MapSet.t()
        }
  def discovered(known, nodes, self) do
    nodes = MapSet.delete(nodes, self)
    %{nodes: nodes, added: MapSet.difference(nodes, known), dropped: MapSet.difference(known, nodes)}
  end

  @doc "Desired nodes to dial at `now`: not connected, not being dialled, due."
  @spec to_dial(MapSet.t(), MapSet.t(), MapSet.t(), Peers.t(), integer()) :: [node()]
  def to_dial(desired, listed, busy, peers, now) do
    Enum.filter(desired, fn n ->
      not MapSet.member?(listed, n) and not MapSet.member?(busy, n) and Peers.due?(peers, n, now)
    end)
  end

  @doc "Adds sighted `nodes` (`trusted?`) to those waiting, at most `cap`; junk and this node are dropped."
  @spec add_sightings(map(), [term()], boolean(), node(), pos_integer()) :: map()
  def add_sightings(sightings, nodes, trusted?, self, cap) do
    Enum.reduce(nodes, sightings, fn node, acc ->
      cond do
        not is_atom(node) or node == self -> acc
        Map.has_key?(acc, node) -> Map.update!(acc, node, &(&1 or trusted?))
        map_size(acc) >= cap -> acc
        true -> Map.put(acc, node, trusted?)
      end
    end)
  end

  @doc """
  The sightings to dial at `now`: every trusted one that is due, and untrusted ones as far as the
  token bucket (`{tokens, at}`, refilled at `rate` a second up to `rate`) allows, never-tried nodes
  first. The rest are dropped (sources that sight nodes repeat themselves). Returns the nodes, the
  bucket after, and how many were dropped.
  """
  @spec take_sightings(
          map(),
          MapSet.t(),
          MapSet.t(),
          Peers.t(),
          {float(), integer()},
          pos_integer(),
          integer()
        ) ::
          {[node()], {float(), integer()}, non_neg_integer()}
  def take_sightings(sightings, listed, busy, peers, {tokens, at}, rate, now) do
    fresh =
      for {n, trusted?} <- sightings,
          not MapSet.member?(listed, n) and not MapSet.member?(busy, n) and Peers.due?(peers, n, now),
          do: {n, trusted?}

    {trusted, untrusted} = Enum.split_with(fresh, &elem(&1, 1))
    {untrusted_new, untrusted_retry} = Enum.split_with(untrusted, fn {n, _} -> not Map.has_key?(peers, n) end)

    tokens = min(rate * 1.0, tokens + (now - at) * rate / 1000)
    granted = min(trunc(tokens), length(untrusted))
    allowed = Enum.take(untrusted_new ++ untrusted_retry, granted)
    {Enum.map(trusted ++ allowed, &elem(&1, 0)), {tokens - granted, now}, length(untrusted) - granted}
  end

  @doc "Queues `nodes` for dialling, never-tried ones first (a newcomer never waits behind failing peers)."
  @spec enqueue([node()], MapSet.t(), Peers.t(), [node()]) :: {[node()], MapSet.t()}
  def enqueue(queue, busy, peers, nodes) do
    new = nodes |> Enum.uniq() |> Enum.reject(&MapSet.member?(busy, &1))
    {fresh, retries} = Enum.split_with(new, &(not Map.has_key?(peers, &1)))
    {fresh ++ queue ++ retries, Enum.into(new, busy)}
  end

  @doc "Dropped nodes not yet missing start their grace period at `now`: returns the map and those."
  @spec missing(map(), MapSet.t(), integer()) :: {map(), [node()]}
  def missing(missing, dropped, now) do
    Enum.reduce(dropped, {missing, []}, fn node, {acc, started} ->
      if Map.has_key?(acc, node), do: {acc, started}, else: {Map.put(acc, node, now), [node | started]}
    end)
  end

  @doc """
  Whether the nodeup of a node whose connect attempt a prune killed at `cancelled_at` must be undone:
  it came within `connect_timeout` of the kill and the node is not desired again.
  """
  @spec undo_nodeup?(integer() | nil, integer(), pos_integer(), boolean()) :: boolean()
  def undo_nodeup?(cancelled_at, now, connect_timeout, desired?) do
    is_integer(cancelled_at) and now - cancelled_at < connect_timeout and not desired?
  end
end
