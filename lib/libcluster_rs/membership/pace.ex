defmodule LibclusterRs.Membership.Pace do
  @moduledoc false
  # The pacing of first dials, pure: in what order a membership dials nodes it has never dialled,
  # and which queued nodes start now.
  #
  #   * first dials (a node without a backoff entry) go in ring order: the names sorted, starting
  #     with the first name after this node's own, so that N nodes starting together do not all
  #     dial the same peer first, and node i's first dials are not node i+1's (two nodes dialling
  #     each other at once collide in the distribution's simultaneous-connect arbitration)
  #   * at most `pace` first dials hold a slot at once; a slot is freed when its dial ends or when
  #     the membership's hold timer fires (`:pace_hold`), so a dial that hangs on a dead peer holds
  #     back the next one for that long at most, and then goes on concurrently within its deadline
  #   * retries (nodes with a backoff entry) are not paced: their backoff already spaces them
  #   * a queued node that is connected by the time its turn comes (the peer dialled us, or
  #     `global` connected it transitively) is not dialled: libcluster's connect_nodes skips
  #     listed nodes too
  #
  # `max_concurrency` still bounds all attempts in flight, paced or not.

  alias LibclusterRs.Membership.Peers

  @doc "`nodes` in ring order from `self`: sorted, the names after `self` first, then the rest."
  @spec ring(Enumerable.t(), node()) :: [node()]
  def ring(nodes, self) do
    {low, high} = nodes |> Enum.sort() |> Enum.split_with(&(&1 <= self))
    high ++ low
  end

  @doc """
  Which queued nodes start now. `free` attempts may start in all, `paced_free` of them first
  dials (`:infinity` when pacing is off); nodes in `listed` are dropped from the queue. Returns
  `{starts, skipped, queue}`: `starts` are `{node, paced?}` in queue order, `skipped` the listed
  nodes dropped, `queue` what still waits, in its order.
  """
  @spec take([node()], Peers.t(), MapSet.t(), non_neg_integer(), non_neg_integer() | :infinity) ::
          {[{node(), boolean()}], [node()], [node()]}
  def take(queue, peers, listed, free, paced_free) do
    {starts, skipped, rest, _, _} =
      Enum.reduce(queue, {[], [], [], free, paced_free}, fn node, {starts, skipped, rest, free, paced} ->
        first? = not Map.has_key?(peers, node)

        cond do
          MapSet.member?(listed, node) -> {starts, [node | skipped], rest, free, paced}
          free == 0 -> {starts, skipped, [node | rest], free, paced}
          first? and paced == 0 -> {starts, skipped, [node | rest], free, paced}
          first? -> {[{node, paced != :infinity} | starts], skipped, rest, free - 1, dec(paced)}
          true -> {[{node, false} | starts], skipped, rest, free - 1, paced}
        end
      end)

    {Enum.reverse(starts), Enum.reverse(skipped), Enum.reverse(rest)}
  end

  defp dec(:infinity), do: :infinity
  defp dec(n), do: n - 1
end
