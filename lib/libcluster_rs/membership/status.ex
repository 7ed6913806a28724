defmodule LibclusterRs.Membership.Status do
  @moduledoc false
  # The snapshot `LibclusterRs.Membership.status/2` returns (the `membership` part of
  # `Cluster.status/1`), built from the membership's state, pure.

  # Sighted (not discovered) nodes in backoff shown, at most: a flood of fake gossip names must
  # not make the status huge.
  @sighted_shown 50

  @doc "The status map of membership state `m` at monotonic ms `now`."
  def build(m, now) do
    connected = m.listed

    {wanted, sighted} =
      m.peers
      |> Enum.reject(fn {node, _} -> MapSet.member?(connected, node) end)
      |> Enum.split_with(fn {node, _} -> MapSet.member?(m.desired, node) end)

    sighted =
      sighted
      |> Enum.filter(fn {n, p} -> p.failures > 0 or MapSet.member?(m.busy, n) end)
      |> Enum.take(@sighted_shown)

    pending =
      for {node, peer} <- wanted ++ sighted, into: %{} do
        {node,
         %{
           failures: peer.failures,
           last_error: peer.last_error,
           next_attempt_in: max(peer.next_at - now, 0),
           in_flight: MapSet.member?(m.busy, node)
         }}
      end

    %{
      topology: m.topology,
      known: m.known,
      known_at: m.known_at,
      desired: m.desired,
      connected: MapSet.intersection(connected, MapSet.union(m.desired, m.known)),
      pending: pending,
      missing: Map.keys(m.missing),
      last_error: m.last_error,
      discoveries: m.discoveries,
      errors: m.errors,
      leaving: m.leaving,
      mfa_errors: m.mfa_errors,
      list_nodes_age: if(m.listed_at, do: now - m.listed_at),
      sightings_dropped: m.sightings_dropped,
      disconnects_made: m.disconnects_made,
      heal_probe: heal_probe(m.probe_counters),
      opts: m.opts
    }
  end

  defp heal_probe(nil), do: nil
  defp heal_probe({method, counters}), do: LibclusterRs.Membership.Probe.stats_of(method, counters)
end
